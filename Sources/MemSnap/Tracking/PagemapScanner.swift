#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `PAGEMAP_SCAN` on an owned `/proc/self/pagemap` descriptor (Linux 6.7).
///
/// Fork: `/proc/self` is resolved when the descriptor is opened, so a child process that
/// inherits it would scan (and write-protect in) its parent's address space. A scan from any
/// other process than the one that opened the descriptor opens its own for the call.
///
/// Ownership: owns the descriptor and closes it on deinit.
/// Thread safety: scans may run from any thread; the caller serialises them per range.
struct PagemapScanner: ~Copyable {
    let descriptor: Int32
    /// The process whose address space `descriptor` reads.
    let openedBy: pid_t

    init(during operation: @autoclosure () -> String) throws(MemSnapError) {
        descriptor = try PagemapScanner.openPagemap(during: operation())
        openedBy = getpid()
    }

    deinit { close(descriptor) }

    private static func openPagemap(during operation: @autoclosure () -> String) throws(MemSnapError) -> Int32 {
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MemSnapError.systemCall("open /proc/self/pagemap", during: operation()) }
        return fd
    }

    /// Page runs (indices relative to `range`'s start) of pages in `range` that have every
    /// category in `categories`. With `writeProtectMatches`, the same call write-protects exactly
    /// the pages it reports, atomically per page. With `requireAsyncRegistration`, a range not
    /// registered for async write-protect fails with EPERM instead of reporting every page.
    ///
    /// With `reportingOnlyAnyOf` non-zero, every matching page is still protected (if asked), but
    /// only regions that also have one of those categories are returned. `inverted` categories
    /// match where the page does not have them; `anyOf` requires at least one of its categories.
    ///
    /// The output vector is capped at MEMSNAP_PAGEMAP_SCAN_MAX_VEC entries (kernel 6.18 returns a
    /// wrong walk_end past its 512-entry bounce buffer); a full vector resumes from walk_end.
    func scan(
        _ range: UnsafeRawBufferPointer, categories: UInt64, writeProtectMatches: Bool,
        requireAsyncRegistration: Bool, reportingOnlyAnyOf filter: UInt64 = 0,
        inverted: UInt64 = 0, anyOf: UInt64 = 0,
        during operation: @autoclosure () -> String
    ) throws(MemSnapError) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        try forEachRegion(
            range, categories: categories, writeProtectMatches: writeProtectMatches,
            requireAsyncRegistration: requireAsyncRegistration, returning: categories | anyOf | filter,
            inverted: inverted, anyOf: anyOf, during: operation()
        ) { run, found in
            guard filter == 0 || found & filter != 0 else { return }
            runs.appendJoining(run)
        }
        return runs
    }

    /// The kernel's answer as it comes: each region of pages in `range` that match (page
    /// indices relative to `range`'s start, ascending, not merged) with its categories masked
    /// by `returning`. Neighbouring regions differ in those categories or were cut by the
    /// vector's end. The other parameters are `scan`'s.
    func forEachRegion(
        _ range: UnsafeRawBufferPointer, categories: UInt64, writeProtectMatches: Bool,
        requireAsyncRegistration: Bool, returning returnMask: UInt64, inverted: UInt64 = 0, anyOf: UInt64 = 0,
        during operation: @autoclosure () -> String,
        _ body: (_ pages: Range<Int>, _ categories: UInt64) -> Void
    ) throws(MemSnapError) {
        guard let base = range.baseAddress, range.count > 0 else { return }
        // getpid is a system call (about 0.1 µs): nothing against a scan's page-table walk.
        let inChild = getpid() != openedBy
        let pagemap = inChild ? try PagemapScanner.openPagemap(during: operation()) : descriptor
        defer { if inChild { close(pagemap) } }
        let start = UInt64(UInt(bitPattern: base))
        let end = start + UInt64(range.count)
        var flags: UInt64 = 0
        if writeProtectMatches { flags |= MEMSNAP_PM_SCAN_WP_MATCHING }
        if requireAsyncRegistration { flags |= MEMSNAP_PM_SCAN_CHECK_WPASYNC }
        let capacity = Int(MEMSNAP_PAGEMAP_SCAN_MAX_VEC)
        var regions = [memsnap_page_region](repeating: memsnap_page_region(), count: capacity)
        var cursor = start
        while cursor < end {
            let returned: Int32 = regions.withUnsafeMutableBufferPointer { vector in
                var argument = memsnap_pm_scan_arg(
                    size: UInt64(MemoryLayout<memsnap_pm_scan_arg>.size), flags: flags,
                    start: cursor, end: end, walk_end: 0,
                    vec: UInt64(UInt(bitPattern: vector.baseAddress)), vec_len: UInt64(capacity),
                    max_pages: 0, category_inverted: inverted, category_mask: categories,
                    category_anyof_mask: anyOf, return_mask: returnMask)
                let result = memsnap_ioctl(pagemap, MEMSNAP_PAGEMAP_SCAN, &argument)
                if result >= 0 { cursor = max(argument.walk_end, cursor) }
                return result
            }
            guard returned >= 0 else { throw MemSnapError.systemCall("PAGEMAP_SCAN", during: operation()) }
            let shift = UInt64(Page.shift)
            // The kernel only reports regions within [start, end); a region outside (which a
            // broken kernel could return) is skipped rather than trusted.
            for region in regions.prefix(Int(returned)) where region.start >= start && region.start < region.end && region.end <= end {
                body(Int((region.start - start) >> shift)..<Int((region.end - start) >> shift), region.categories)
            }
            // A vector that was not filled means the walk reached `end`.
            if Int(returned) < capacity { break }
        }
    }
}
