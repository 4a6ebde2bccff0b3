#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `private-copies`: the pages the region holds its own copies of, asked of the kernel with one
/// `PAGEMAP_SCAN` (Linux 6.7) and no protection at all.
///
/// A private mapping of a file shows the file's pages until a page is written; the write fault
/// gives the region an anonymous copy. So the region's anonymous pages (present, or swapped out)
/// are exactly the pages written since it was mapped or since its copies were last dropped, and
/// finding them costs one walk of the populated page tables: no write-protection to arm, no
/// marker that makes a write fault twice, no TLB shootdown to re-arm after a collect. In
/// anonymous memory the same query finds the pages written since they were committed (a read
/// maps the shared zero page, which is not a copy). Kernel writes make copies too.
///
/// What it cannot do is forget: a reset cannot undo a copy without discarding its data, so a
/// collect reports every page copied since the region was last restored in place
/// (`restoredInPlace`, after `VirtualRegion.dropPagesLocked`) or remapped. `SnapshotWorkers`
/// restores every memory after each collect, which is what makes the collects exact there.
/// Writes through a shared mapping make no copy and would be missed: arming refuses a region
/// whose committed prefix holds one. KSM could turn a copy of zeros into the shared zero page
/// (with `use_zero_pages`), hiding that write: arming marks the committed prefix unmergeable.
/// Guard regions (`MADV_GUARD_INSTALL`) look like swapped-out pages to the scan on their own;
/// where the kernel reports them (6.15), they are neither copies nor dropped.
///
/// Restoring drops whole page-table spans where it can: a span that held copies and nothing
/// else the region mapped (no page of the file or zero page that reads mapped) is dropped from
/// end to end, which lets the kernel free its page table (CONFIG_PT_RECLAIM, Linux 6.14). The
/// next collect then skips the span outright instead of walking its 512 empty entries, so a
/// round that wrote nothing costs almost no scan. Spans where reads mapped pages keep them:
/// only their copies are dropped, and reads do not fault again.
final class PrivateCopyMechanism: DirtyTrackingMechanism {
    private let region: VirtualRegion
    private let scanner: PagemapScanner
    /// Spans (absolute page index / `spanPages`) in which the last collect saw pages mapped from
    /// the file or the zero page, or guard regions. Only the tracker's serialised calls touch it.
    private var spansWithMappedReads: Set<Int> = []

    /// Pages one page-table page maps (a PMD's reach: 512, 2 MiB, with 4 KiB pages).
    static let spanPages = Page.size / 8
    /// The categories a collect asks for: `PAGE_IS_GUARD` too where the kernel knows it (6.15;
    /// older kernels refuse the bit with EINVAL). Asked once per process, of one scratch page.
    private static let returnedCategories: UInt64 = {
        let categories = MEMSNAP_PAGE_IS_FILE | MEMSNAP_PAGE_IS_PFNZERO | MEMSNAP_PAGE_IS_PRESENT | MEMSNAP_PAGE_IS_SWAPPED
        do throws(MemSnapError) {
            let operation = "probe PAGEMAP_SCAN's guard category"
            let scratch = try VirtualRegion(maxSize: Page.size, committing: Page.size)
            try PagemapScanner(during: operation).forEachRegion(
                scratch.pagePrefix(1), categories: 0, writeProtectMatches: false, requireAsyncRegistration: false,
                returning: categories | MEMSNAP_PAGE_IS_GUARD, anyOf: MEMSNAP_PAGE_IS_PRESENT | MEMSNAP_PAGE_IS_SWAPPED,
                during: operation) { _, _ in }
            return categories | MEMSNAP_PAGE_IS_GUARD
        } catch {
            // EINVAL: no guard category; anything else fails every collect too, and says why there.
            return categories
        }
    }()

    init(region: VirtualRegion) throws(MemSnapError) {
        self.region = region
        scanner = try PagemapScanner(during: "start private-copies tracking of \(ByteCount(region.maxSize))")
    }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        spansWithMappedReads = []
        let operation = "start private-copies tracking"
        guard pageCount > 0 else { return }
        // EINVAL: a kernel without KSM, which cannot merge anything.
        if madvise(region.base, pageCount << Page.shift, MEMSNAP_MADV_UNMERGEABLE) != 0, errno != EINVAL {
            throw MemSnapError.systemCall("madvise MADV_UNMERGEABLE", during: operation)
        }
        let start = region.baseAddress
        let areas = try ProcessMapping.overlapping(start..<start + UInt(pageCount << Page.shift))
        if let shared = areas.first(where: \.shared) {
            let offset = shared.start > start ? Int(shared.start - start) : 0
            throw MemSnapError(operation, .unavailable(
                "the region's committed pages hold a shared mapping (at offset \(offset)): writes to it make no "
                + "private copy, so private-copies tracking would miss them; use uffd-async or another mode"))
        }
    }

    /// Every page copied since the last restore; `reset` changes nothing (see the type's doc).
    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        var copies: [Range<Int>] = []
        var mappedReads: Set<Int> = []
        let basePage = Int(bitPattern: region.baseAddress) >> Page.shift
        let span = PrivateCopyMechanism.spanPages
        try scanner.forEachRegion(
            region.pagePrefix(pageCount), categories: 0, writeProtectMatches: false, requireAsyncRegistration: false,
            returning: PrivateCopyMechanism.returnedCategories,
            anyOf: MEMSNAP_PAGE_IS_PRESENT | MEMSNAP_PAGE_IS_SWAPPED, during: "collect private-copies dirty pages"
        ) { run, categories in
            // Pages mapped from the file or the zero page by reads, and guard regions: no copy,
            // and their span is not dropped whole.
            guard categories & (MEMSNAP_PAGE_IS_FILE | MEMSNAP_PAGE_IS_PFNZERO | MEMSNAP_PAGE_IS_GUARD) == 0 else {
                var spanIndex = (basePage + run.lowerBound) / span
                let lastSpan = (basePage + run.upperBound - 1) / span
                while spanIndex <= lastSpan {
                    mappedReads.insert(spanIndex)
                    spanIndex += 1
                }
                return
            }
            copies.appendJoining(run)
        }
        spansWithMappedReads = mappedReads
        return copies
    }

    func stop(pageCount: Int) {}

    /// The copies `reported` (the last collect's, which found every copy), each widened to its
    /// whole span where the span lies within the first `pageCount` pages and the last collect saw
    /// no read mapping in it: dropping a span whole lets the kernel free its page table.
    func privatePages(reported: [Range<Int>], pageCount: Int) -> [Range<Int>]? {
        let basePage = Int(bitPattern: region.baseAddress) >> Page.shift
        let span = PrivateCopyMechanism.spanPages
        var dropped: [Range<Int>] = []
        dropped.reserveCapacity(reported.count)
        for run in reported where run.lowerBound >= 0 && run.upperBound <= pageCount {
            var start = run.lowerBound
            while start < run.upperBound {
                let spanIndex = (basePage + start) / span
                let spanStart = spanIndex * span - basePage
                let spanEnd = spanStart + span
                let pieceEnd = Swift.min(run.upperBound, spanEnd)
                if spanStart >= 0, spanEnd <= pageCount, !spansWithMappedReads.contains(spanIndex) {
                    dropped.appendJoining(spanStart..<spanEnd)
                } else {
                    dropped.appendJoining(start..<pieceEnd)
                }
                start = pieceEnd
            }
        }
        return dropped
    }

    /// The dropped pages read the file again and hold no copy: nothing to re-arm.
    func restoredInPlace(dropped: [Range<Int>], changedUnderneath: [Range<Int>], pageCount: Int) throws(MemSnapError) {
        spansWithMappedReads = []
    }
}
