#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap

/// Finds the heap pages written since the last sync, for `Arena.Configuration.Tracking.automatic`.
///
/// A `DirtyTracker` (uffd-async where the kernel has it) always watches the whole heap: it is what
/// reports pages, exactly, and it sees kernel writes too. Its collect walks every page-table entry
/// it scans (about 0.35 ms per GiB here) however few pages changed, so with
/// `SyncScan.recentlyWrittenChunks` the tracker narrows each scan to the chunks (2 MiB, one page
/// table, by default) that can hold writes:
///
/// - A protected ("cold") chunk is read-only (`mprotect`). The first write to it faults into
///   memsnap's C SIGSEGV handler, which makes the chunk writable again and marks it in a record;
///   the write then runs.
/// - A sync takes the record's marks, then protects the writable chunks that have been idle for
///   their threshold, then scans every chunk that was writable or marked (the ones it just
///   protected included, after protecting them) and re-arms exactly them. A write is therefore in
///   a scanned chunk whatever the interleaving: written while the chunk was writable, it is found
///   by the next scan of the chunk (every sync scans a writable chunk, the one that protects it
///   included); written while the chunk was cold, it faulted first, so the chunk is marked before
///   the write completes, and the sync that takes the mark scans it.
/// - The switch by dirty rate is per chunk and adapts (`ChunkProtection.adaptThreshold`): a
///   chunk's threshold starts at 0 idle syncs (the sync that scans its write protects it again,
///   so a sync after a few writes scans only the chunks they hit), grows for chunks that fault
///   back in soon after being protected, up to `maximumIdleSyncsBeforeProtecting`, and shrinks for
///   chunks that stay cold long after. Under a high dirty rate every chunk settles writable, no
///   write faults, and a sync is the plain whole-heap scan; under a low rate a sync costs the
///   chunks written since the last sync, and a first write to a cold chunk costs a signal and an
///   mprotect, paid by the store (and one more mprotect by the sync that protects it again).
/// - If mprotect cannot split the mapping any further (vm.max_map_count), the handler makes the
///   whole range writable and gives up; the tracker then scans the whole heap from that sync on.
///
/// Costs of `.recentlyWrittenChunks`, stated where they are chosen (`Arena.Configuration.SyncScan`):
/// system calls that write into a cold chunk (`read(2)` into the heap) fail with EFAULT instead
/// of being tracked, and starting the tracker write-protects the whole heap (an mprotect walk).
///
/// Ownership: the arena owns its tracker; `stop()` (idempotent, also from deinit) makes the heap
/// writable, removes the record from the handler and stops the `DirtyTracker`.
/// Thread safety: none; the arena serialises it. Other threads may write to the heap at any time
/// (the handler and the kernel are thread-safe); a write racing a sync is reported by that sync
/// or the next one.
final class ArenaWriteTracker {
    private let tracker: DirtyTracker
    private let region: VirtualRegion
    private let pageCount: Int
    /// Set while cold chunks exist or may come to exist; nil when every sync scans the whole heap.
    private var protection: ChunkProtection?

    /// Starts tracking the first `pageCount` pages of `region` (the heap).
    /// - Throws: as `DirtyTracker.init`; `.systemCall` when the heap cannot be write-protected.
    init(region: VirtualRegion, pageCount: Int, configuration: Arena.Configuration) throws(MemSnapError) {
        self.region = region
        self.pageCount = pageCount
        tracker = try DirtyTracker(tracking: region)
        guard configuration.syncScan == .recentlyWrittenChunks, tracker.mode == .uffdAsync else { return }
        let chunkPages = 1 << max(0, configuration.chunkShift - Page.shift)
        do {
            protection = try ChunkProtection(
                base: region.base, chunkCount: pageCount / chunkPages, chunkShift: max(Page.shift, configuration.chunkShift),
                maximumIdleSyncs: configuration.maximumIdleSyncsBeforeProtecting)
        } catch {
            // Another SIGSEGV handler sits in front of memsnap's (it could swallow the chunk
            // faults), or every record slot is taken: scan the whole heap instead, as documented.
            if case .unavailable = error.reason { return }
            tracker.stop()
            throw error
        }
    }

    deinit { stop() }

    /// Whether syncs scan only recently written chunks (false: the whole heap, every time).
    var scansRecentChunksOnly: Bool { protection?.isActive ?? false }

    /// The heap's pages written since the last call (sorted or not; the caller coalesces), the
    /// tracking re-armed for them in the same step.
    /// - Throws: as `DirtyTracker.collectAndReset()`; `.systemCall` for a failed mprotect
    ///   that could not be undone.
    func collectAndReset() throws(MemSnapError) -> [Range<Int>] {
        guard let protection, protection.isActive else { return try tracker.collectAndReset().runs }
        let scanned = try protection.chunksToScan()
        guard protection.isActive else { return try tracker.collectAndReset().runs }  // the handler gave up
        var ranges = scanned.map { $0.lowerBound * protection.chunkPages..<$0.upperBound * protection.chunkPages }
        let tail = protection.chunkCount * protection.chunkPages..<pageCount
        if !tail.isEmpty { ranges.append(tail) }
        let written = try tracker.collectAndReset(within: ranges)
        protection.noteScanned(scanned, written: written)
        return written
    }

    /// Ends tracking; the heap is writable afterwards. Idempotent.
    func stop() {
        protection?.stop()
        protection = nil
        tracker.stop()
    }
}
