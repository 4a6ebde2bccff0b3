#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `uffd-async`: userfaultfd write-protect in asynchronous mode plus `PAGEMAP_SCAN` (Linux 6.7).
///
/// The kernel resolves a write fault on a protected page by itself (about 1 µs, no signal, no
/// thread) and clears the page's uffd-wp bit; one `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`
/// reports the pages without the bit and re-protects exactly those, atomically per page. A page
/// that was never populated counts as written until a scan protects it (which installs a marker),
/// so pages committed by growth are scanned the moment they are committed. Kernel writes
/// (`read(2)` into the region) are tracked too. The whole reservation is registered once.
final class AsyncWriteProtectMechanism: DirtyTrackingMechanism {
    private let region: VirtualRegion
    private let userfaultfd: Userfaultfd
    private let scanner: PagemapScanner
    /// Pages found written while arming newly committed ranges (possible only if the program
    /// wrote to them before `grow` returned); reported by the next collect.
    private let writtenWhileArming = Locked<[Range<Int>]>([])

    init(region: VirtualRegion) throws(MemSnapError) {
        let operation = "start uffd-async tracking of \(ByteCount(region.maxSize))"
        self.region = region
        // The kernel turns WP_UNPOPULATED on with WP_ASYNC anyway; asking says what we rely on.
        userfaultfd = try Userfaultfd(
            features: MEMSNAP_UFFD_FEATURE_WP_ASYNC | MEMSNAP_UFFD_FEATURE_WP_UNPOPULATED, during: operation)
        scanner = try PagemapScanner(during: operation)
        try userfaultfd.register(region.reservation, during: operation)
    }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        if afterMappingChange {
            // Remapped ranges are new VMAs without registration; the old ones accept it again.
            try userfaultfd.register(region.reservation, during: "re-register uffd-async tracking after a remap")
        }
        writtenWhileArming.withLock { $0 = [] }
        _ = try scan(region.pagePrefix(pageCount), reset: true, operation: "arm uffd-async tracking")
    }

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        let written = try scan(region.pagePrefix(pageCount), reset: reset, operation: "collect uffd-async dirty pages")
        let pending = writtenWhileArming.withLock { pending in
            defer { if reset { pending = pending.filter { $0.upperBound > pageCount }.map { max($0.lowerBound, pageCount)..<$0.upperBound } } }
            return pending.filter { $0.lowerBound < pageCount }
        }
        return written + pending
    }

    /// `collect(pageCount:reset: true)` limited to `pageRanges` (sorted, disjoint): one scan per
    /// range, so the cost follows the ranges' page-table entries, not the region's.
    func collectAndReset(within pageRanges: [Range<Int>], pageCount: Int) throws(MemSnapError) -> [Range<Int>] {
        var written: [Range<Int>] = []
        for range in pageRanges {
            let pages = max(0, range.lowerBound)..<min(pageCount, range.upperBound)
            guard !pages.isEmpty else { continue }
            let bytes = UnsafeRawBufferPointer(start: region.base + (pages.lowerBound << Page.shift), count: pages.count << Page.shift)
            for run in try scan(bytes, reset: true, operation: "collect uffd-async dirty pages") {
                written.append(run.lowerBound + pages.lowerBound..<run.upperBound + pages.lowerBound)
            }
        }
        // Pages found written while growth armed them: reported once, wherever they are.
        let pending = writtenWhileArming.withLock { pending in
            defer { pending = pending.filter { $0.upperBound > pageCount }.map { max($0.lowerBound, pageCount)..<$0.upperBound } }
            return pending.filter { $0.lowerBound < pageCount }
        }
        return written + pending
    }

    func regionMappingChanged(_ change: VirtualRegion.MappingChange) {
        // Pages an adopted region's owner committed earlier may hold writes already: the scan
        // below finds exactly those (they hold data), as it does for any fresh page.
        let range: Range<Int>
        switch change {
        case let .committed(committed), let .committedByOwner(committed): range = committed
        case .replaced, .released: return
        }
        let pages = UnsafeRawBufferPointer(start: region.base + range.lowerBound, count: range.count)
        let firstPage = range.lowerBound >> Page.shift
        let found: [Range<Int>]
        do {
            // Fresh pages are holes that count as written until this scan protects them; only
            // pages that hold data (present or swapped) were really written.
            found = try scanner.scan(pages, categories: MEMSNAP_PAGE_IS_WRITTEN, writeProtectMatches: true,
                                     requireAsyncRegistration: true,
                                     reportingOnlyAnyOf: MEMSNAP_PAGE_IS_PRESENT | MEMSNAP_PAGE_IS_SWAPPED,
                                     during: "arm uffd-async tracking of grown pages")
                .map { ($0.lowerBound + firstPage)..<($0.upperBound + firstPage) }
        } catch {
            found = [firstPage..<(range.upperBound >> Page.shift)]
        }
        if !found.isEmpty { writtenWhileArming.withLock { $0 += found } }
    }

    private func scan(_ pages: UnsafeRawBufferPointer, reset: Bool, operation: String) throws(MemSnapError) -> [Range<Int>] {
        do {
            return try scanner.scan(pages, categories: MEMSNAP_PAGE_IS_WRITTEN,
                                    writeProtectMatches: reset, requireAsyncRegistration: true, during: operation)
        } catch let error where error.errno == .notPermitted {
            throw MemSnapError(operation, .invalidArgument(
                "PAGEMAP_SCAN failed with EPERM: part of the region is no longer registered for tracking "
                + "(remapped outside memsnap, or in a forked child); call reset() after remapping"))
        }
    }

    func stop(pageCount: Int) {
        userfaultfd.unregister(region.reservation)
    }
}
