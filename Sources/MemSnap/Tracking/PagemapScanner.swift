#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `PAGEMAP_SCAN` on an owned `/proc/self/pagemap` descriptor (Linux 6.7).
///
/// Ownership: owns the descriptor and closes it on deinit.
/// Thread safety: scans may run from any thread; the caller serialises them per range.
struct PagemapScanner: ~Copyable {
    let descriptor: Int32

    init(during operation: @autoclosure () -> String) throws(MemSnapError) {
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MemSnapError.systemCall("open /proc/self/pagemap", during: operation()) }
        descriptor = fd
    }

    deinit { close(descriptor) }

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
        guard let base = range.baseAddress, range.count > 0 else { return [] }
        let start = UInt64(UInt(bitPattern: base))
        let end = start + UInt64(range.count)
        var flags: UInt64 = 0
        if writeProtectMatches { flags |= MEMSNAP_PM_SCAN_WP_MATCHING }
        if requireAsyncRegistration { flags |= MEMSNAP_PM_SCAN_CHECK_WPASYNC }
        let capacity = Int(MEMSNAP_PAGEMAP_SCAN_MAX_VEC)
        var regions = [memsnap_page_region](repeating: memsnap_page_region(), count: capacity)
        var runs: [Range<Int>] = []
        var cursor = start
        while cursor < end {
            let returned: Int32 = regions.withUnsafeMutableBufferPointer { vector in
                var argument = memsnap_pm_scan_arg(
                    size: UInt64(MemoryLayout<memsnap_pm_scan_arg>.size), flags: flags,
                    start: cursor, end: end, walk_end: 0,
                    vec: UInt64(UInt(bitPattern: vector.baseAddress)), vec_len: UInt64(capacity),
                    max_pages: 0, category_inverted: inverted, category_mask: categories,
                    category_anyof_mask: anyOf, return_mask: categories | anyOf | filter)
                let result = memsnap_ioctl(descriptor, MEMSNAP_PAGEMAP_SCAN, &argument)
                if result >= 0 { cursor = max(argument.walk_end, cursor) }
                return result
            }
            guard returned >= 0 else { throw MemSnapError.systemCall("PAGEMAP_SCAN", during: operation()) }
            let shift = UInt64(Page.shift)
            for region in regions.prefix(Int(returned)) where filter == 0 || region.categories & filter != 0 {
                let first = Int((region.start - start) >> shift)
                let last = Int((region.end - start) >> shift)
                if let previous = runs.last, previous.upperBound == first {
                    runs[runs.count - 1] = previous.lowerBound..<last
                } else {
                    runs.append(first..<last)
                }
            }
            // A vector that was not filled means the walk reached `end`.
            if Int(returned) < capacity { break }
        }
        return runs
    }
}
