import CMemSnap

/// Merge regions, diffs and the sync point.
///
/// The cycle of a fork/join host: set the merge regions, let workers run on copy-on-write
/// mappings, `diff` each worker's memory against the snapshot, `queueDiffs` from any thread, and
/// at the sync point `applyQueuedDiffs` once. `SnapshotWorkers` does all of it.
extension Snapshot {
    // MARK: Merge regions

    /// Adds a merge region. Regions persist until `clearMergeRegions()`.
    /// - Throws: `.invalidArgument` if it overlaps a region already added (overlaps would make
    ///   the merge rule of a byte ambiguous); `.exceedsMaximum` with what "end" if it ends past
    ///   `maxSize`, or with what "start" (requested: its offset) if a length-0 region starts at or
    ///   past `maxSize` (an empty snapshot with no room to grow accepts a length-0 region at 0).
    public func addMergeRegion(_ region: MergeRegion) throws(MemSnapError) {
        let operation = "add merge region \(region)"
        // MergeRegion's initializer guarantees offset + length does not overflow.
        let end = region.length == 0 ? maxSize : region.offset + region.length
        guard end <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "end", requested: end, maximum: maxSize))
        }
        guard region.offset < maxSize || (region.offset == 0 && maxSize == 0) else {
            throw MemSnapError(operation, .exceedsMaximum(what: "start", requested: region.offset, maximum: maxSize))
        }
        try mergeRegionList.withLock { (regions: inout [MergeRegion]) throws(MemSnapError) in
            for existing in regions {
                let existingEnd = existing.length == 0 ? maxSize : existing.offset + existing.length
                if region.offset < existingEnd && existing.offset < end {
                    throw MemSnapError(operation, .invalidArgument("it overlaps merge region \(existing)"))
                }
            }
            let index = regions.firstIndex { $0.offset > region.offset } ?? regions.count
            regions.insert(region, at: index)
        }
    }

    /// The merge regions, in offset order.
    public var mergeRegions: [MergeRegion] { mergeRegionList.withLock { $0 } }

    /// Removes every merge region.
    public func clearMergeRegions() { mergeRegionList.withLock { $0 = [] } }

    // MARK: Diffing

    /// The diffs that would turn the snapshot into `memory`, reading only `dirtyPages`.
    ///
    /// Bytes are governed by the merge regions, and by `options.fillOperation` where no region
    /// covers them:
    /// - `bytewise`: byte-precise runs of changed bytes (runs closer than `options.mergeGap`
    ///   joined), each carrying the new bytes.
    /// - `xor`: the same runs, each carrying new XOR original.
    /// - `ignore`: nothing.
    /// - arithmetic (`sum`, `product`, `subtract`, `max`, `min`): if any value of the region
    ///   changed (bit patterns compared), one diff carrying a value per element: the delta
    ///   (updated - original) for sum, the factor (updated / original, integer division for
    ///   integers) for product, original - updated for subtract, the new value for max and min;
    ///   unchanged elements carry the identity (0, 1, or the original). Integers wrap. Where a
    ///   product's original value is 0 there is no factor: the element's new value goes in an
    ///   extra bytewise diff (last writer wins) and the product diff carries 1 for it.
    /// - bytes of `memory` past the snapshot's size: one bytewise "extension" diff; applying it
    ///   grows the snapshot.
    ///
    /// Page `i` of `dirtyPages` is bytes `i * Page.size ..< (i + 1) * Page.size` of `memory`.
    /// Pages outside it are assumed unchanged and never read. Holds the read lock throughout.
    /// - Throws: `.invalidArgument` for bad options or an arithmetic region that is not a whole
    ///   number of values at the snapshot's current size.
    public func diff(
        _ memory: UnsafeRawBufferPointer, dirtyPages: DirtyPages, options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) -> [SnapshotDiff] {
        Array(try diffBatch(memory, dirtyPages: dirtyPages, options: options))
    }

    /// `diff(_:dirtyPages:options:)` as one `SnapshotDiffBatch`: the same diffs in the same order,
    /// without making a `SnapshotDiff` per diff (the cheap form to merge, encode or send).
    /// - Throws: as `diff(_:dirtyPages:options:)`.
    public func diffBatch(
        _ memory: UnsafeRawBufferPointer, dirtyPages: DirtyPages, options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) -> SnapshotDiffBatch {
        // Formatted only for an error: a diff of a few pages takes microseconds.
        func operation() -> String { "diff \(ByteCount(memory.count)) of memory against snapshot \"\(name)\"" }
        try options.validate(during: operation())
        let regions = mergeRegions
        return try lock.withReadLock { () throws(MemSnapError) -> SnapshotDiffBatch in
            let original = UnsafeRawBufferPointer(start: self.memory.base, count: logicalSize)
            let segments = Differ.plan(regions, size: logicalSize, fill: options.fillOperation)
            return try Differ.diff(original: original, updated: memory, dirty: dirtyPages,
                                   segments: segments, options: options, during: operation())
        }
    }

    /// `diff` of a region's memory: its first `size` bytes (default: the snapshot's size, or
    /// the region's committed size if it grew past the snapshot's last page).
    /// - Throws: `.outOfBounds` if `size` is negative or more than the region's committed size
    ///   (also when the region shrinks while the call starts); as `diff(_:dirtyPages:options:)`.
    public func diff(
        _ region: VirtualRegion, size: Int? = nil, dirtyPages: DirtyPages, options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) -> [SnapshotDiff] {
        Array(try diffBatch(region, size: size, dirtyPages: dirtyPages, options: options))
    }

    /// `diff(_:size:dirtyPages:options:)` of a region as one `SnapshotDiffBatch` (see
    /// `diffBatch(_:dirtyPages:options:)`).
    /// - Throws: as `diff(_:size:dirtyPages:options:)`.
    public func diffBatch(
        _ region: VirtualRegion, size: Int? = nil, dirtyPages: DirtyPages, options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) -> SnapshotDiffBatch {
        let committed = region.committedSize
        let snapshotSize = self.size
        let defaultSize = committed > (Page.roundUp(snapshotSize) ?? snapshotSize) ? committed : min(snapshotSize, committed)
        let memorySize = size ?? defaultSize
        return try region.withUnsafeBytes { (bytes) throws(MemSnapError) -> SnapshotDiffBatch in
            // Checked against the buffer itself: the region may have shrunk since `committed`.
            guard memorySize >= 0, memorySize <= bytes.count else {
                throw MemSnapError("diff region against snapshot \"\(name)\"",
                                   .outOfBounds(offset: 0, length: memorySize, size: bytes.count))
            }
            return try diffBatch(UnsafeRawBufferPointer(rebasing: bytes[0..<memorySize]), dirtyPages: dirtyPages, options: options)
        }
    }

    // MARK: Applying

    /// Applies `diffs` in order, all or nothing, holding the write lock (readers see the snapshot
    /// before or after, never between). Bytewise diffs may grow the snapshot up to `maxSize`.
    /// Ignore diffs are skipped whatever their offset. The written ranges are recorded as changes.
    ///
    /// Every diff is checked before any byte is written, so hand-made or decoded diffs with any
    /// offset (negative, near `Int.max`) are refused with an error, never a trap.
    /// - Returns: the byte ranges written, coalesced.
    /// - Throws (nothing applied; the operation names the diff by index): `.exceedsMaximum` for a
    ///   bytewise diff ending past `maxSize`; `.outOfBounds` for another diff past the size the
    ///   batch reaches; `.invalidArgument` for an arithmetic diff on raw or bool data or not a
    ///   whole number of values; `.invalidRange` for a negative offset or an end past `Int.max`.
    @discardableResult
    public func apply(_ diffs: [SnapshotDiff]) throws(MemSnapError) -> [Range<Int>] {
        try apply(batches: [diffs]) { _ in "" }
    }

    /// Applies `batches` in order as one `apply` (all or nothing, atomic for readers).
    /// `source(i)` names batch `i` in errors ("worker 2's ", "queued batch 1, "): the text goes
    /// right before "diff N". The fork/join merge uses it directly, never the public queue.
    package func apply(batches: [[SnapshotDiff]], source: (Int) -> String) throws(MemSnapError) -> [Range<Int>] {
        try lock.withWriteLock { () throws(MemSnapError) -> [Range<Int>] in
            try applyLocked(batches, source: source)
        }
    }

    /// Applies `batches` in order as one `apply`: the same checks, order, merge rules, result
    /// and errors as `apply(_:)` of their diffs one after another, without making a
    /// `SnapshotDiff` per diff (the merge reads each batch's payload and table directly).
    /// Batches may come from anywhere (`Snapshot.diffBatch`, `SnapshotDiffBatch(_:)` of decoded
    /// diffs): every offset and length is checked before any byte is written.
    ///
    /// Thread safety: holds the write lock, as `apply(_:)`; the batches are values.
    /// - Returns: the byte ranges written, coalesced.
    /// - Throws: as `apply(_:)` (nothing applied), the operation naming the batch and diff
    ///   ("apply batch 2, diff 7 (...)").
    @discardableResult
    public func apply(batches: [SnapshotDiffBatch]) throws(MemSnapError) -> [Range<Int>] {
        try apply(batches: batches) { "batch \($0), " }
    }

    /// `apply(batches:)` with `source(i)` naming batch `i` in errors (as `apply(batches:source:)`
    /// of diff arrays): what the fork/join merge will call.
    package func apply(batches: [SnapshotDiffBatch], source: (Int) -> String) throws(MemSnapError) -> [Range<Int>] {
        try lock.withWriteLock { () throws(MemSnapError) -> [Range<Int>] in
            try applyLocked(batches, source: source)
        }
    }

    // MARK: The diff queue

    /// Queues diffs for the next `applyQueuedDiffs()`. Callable from any thread; diffs queued in
    /// one call stay together and in order, as one batch. Empty arrays are not queued.
    ///
    /// The queue belongs to the caller: nothing in memsnap adds to it, applies it or drops it
    /// except these methods (`SnapshotWorkers` merges its rounds without it).
    public func queueDiffs(_ diffs: [SnapshotDiff]) {
        guard !diffs.isEmpty else { return }
        diffQueue.withLock { $0.append(diffs) }
    }

    /// Number of diffs waiting in the queue.
    public var queuedDiffCount: Int { diffQueue.withLock { $0.reduce(0) { $0 + $1.count } } }

    /// The queued batches, oldest first, as `queueDiffs` received them: batch `i` is the one a
    /// failed `applyQueuedDiffs()` names as "queued batch i". A copy; the queue is unchanged.
    public var queuedDiffBatches: [[SnapshotDiff]] { diffQueue.withLock { $0 } }

    /// Empties the queue and returns what it held, oldest batch first.
    ///
    /// The way out of a batch that can never apply (its diffs reach past `maxSize`, or break a
    /// rule `apply` enforces): after `applyQueuedDiffs()` names it, discard the queue and queue
    /// again the batches worth keeping. Batches queued by other threads after this call are not
    /// touched (they wait for the next `applyQueuedDiffs()`).
    @discardableResult
    public func discardQueuedDiffs() -> [[SnapshotDiff]] {
        diffQueue.withLock { queue in
            defer { queue = [] }
            return queue
        }
    }

    /// Applies every queued diff, in queue order, as one `apply` (all or nothing, atomic for
    /// readers), and empties the queue. Diffs queued while it runs wait for the next call.
    /// - Returns: the byte ranges written, coalesced.
    /// - Throws: as `apply`, the operation naming the failing batch ("queued batch 1, diff 0");
    ///   nothing is applied and the queue is left as it was, batches queued meanwhile after it:
    ///   a batch that can never apply stays until `discardQueuedDiffs()` removes it.
    @discardableResult
    public func applyQueuedDiffs() throws(MemSnapError) -> [Range<Int>] {
        let batches = discardQueuedDiffs()
        do {
            return try apply(batches: batches) { "queued batch \($0), " }
        } catch {
            diffQueue.withLock { $0.insert(contentsOf: batches, at: 0) }
            throw error
        }
    }

    /// Call with the write lock held. Checks every diff of every batch, then applies them in
    /// order, as one. Generic so that arrays of diffs and `SnapshotDiffBatch`es share one set of
    /// rules and errors (specialised for each: no per-diff dispatch).
    private func applyLocked<Batch: AppliableDiffs>(
        _ batches: [Batch], source: (Int) -> String
    ) throws(MemSnapError) -> [Range<Int>] {
        var total = 0
        for batch in batches { total += batch.diffCount }
        func failure(_ batch: Int, _ index: Int, _ diff: SnapshotDiff, _ reason: MemSnapError.Reason) -> MemSnapError {
            MemSnapError("apply \(source(batch))diff \(index) (\(diff)) to snapshot \"\(name)\"", reason)
        }
        // Bytewise diffs first: they decide the size the batch reaches, which bounds the others.
        // Each diff's bytes must lie in its batch's storage (always so for batches built by
        // memsnap; checked all the same, before anything reads them).
        var reachedSize = logicalSize
        for (batchIndex, batch) in batches.enumerated() {
            for index in 0..<batch.diffCount {
                let run = batch.diffRun(at: index)
                guard batch.holdsBytes(of: run) else {
                    throw failure(batchIndex, index, batch.diff(at: index), .invalidRange(offset: run.payloadStart, length: run.count))
                }
                guard run.operation == .bytewise else { continue }
                let (end, overflow) = run.offset.addingReportingOverflow(run.count)
                guard run.offset >= 0, !overflow else {
                    throw failure(batchIndex, index, batch.diff(at: index), .invalidRange(offset: run.offset, length: run.count))
                }
                guard end <= maxSize else {
                    throw failure(batchIndex, index, batch.diff(at: index),
                                  .exceedsMaximum(what: "bytewise diff end", requested: end, maximum: maxSize))
                }
                reachedSize = max(reachedSize, end)
            }
        }
        for (batchIndex, batch) in batches.enumerated() {
            for index in 0..<batch.diffCount {
                let run = batch.diffRun(at: index)
                guard run.operation != .bytewise && run.operation != .ignore else { continue }
                do {
                    _ = try checkedRange(offset: run.offset, length: run.count, within: reachedSize, during: "")
                } catch {
                    throw failure(batchIndex, index, batch.diff(at: index), error.reason)
                }
                if run.operation.isArithmetic {
                    guard run.dataType.isNumeric, run.count % run.dataType.width == 0 else {
                        throw failure(batchIndex, index, batch.diff(at: index), .invalidArgument(
                            "\(run.operation) diff of \(run.count) bytes of \(run.dataType) at \(run.offset) is not valid"))
                    }
                }
            }
        }
        let operation = "apply \(total) diffs to snapshot \"\(name)\""
        if reachedSize > logicalSize { try growLocked(to: reachedSize, during: operation) }
        // Every diff below that is not ignore lies inside 0..<reachedSize, now mapped, and its
        // bytes inside its batch's storage.
        var written: [Range<Int>] = []
        written.reserveCapacity(total)
        // Diffs from many workers land all over the snapshot: each is a cache and TLB miss.
        // Prefetching a few diffs ahead overlaps those misses (the order itself must not change:
        // overlapping bytewise diffs are last-writer-wins).
        let lookahead = 16
        let base = memory.base
        for batch in batches {
            let count = batch.diffCount
            batch.forEachDiff { index, run, source in
                if index + lookahead < count {
                    let ahead = batch.diffRun(at: index + lookahead)
                    if ahead.operation != .ignore { memsnap_prefetch_for_write(base + ahead.offset) }
                }
                guard run.operation != .ignore, run.count > 0, let start = source.baseAddress else { return }
                let target = base + run.offset
                switch run.operation {
                case .bytewise:
                    target.copyMemory(from: start, byteCount: run.count)
                case .xor:
                    memsnap_xor_bytes(target, target, start, run.count)
                case .sum, .product, .subtract, .max, .min:
                    Differ.applyTyped(run.dataType, run.operation, source, to: target)
                case .ignore:
                    break
                }
                written.append(run.offset..<run.offset + run.count)
            }
        }
        let coalesced = ByteRangeSet.coalescing(written)
        changes.formUnion(coalesced)
        return coalesced
    }
}
