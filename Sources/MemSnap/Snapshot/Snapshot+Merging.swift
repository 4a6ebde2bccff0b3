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
    ///   the merge rule of a byte ambiguous); `.exceedsMaximum` if it starts or ends past `maxSize`.
    public func addMergeRegion(_ region: MergeRegion) throws(MemSnapError) {
        let operation = "add merge region \(region)"
        let end = region.length == 0 ? maxSize : region.offset + region.length
        guard region.offset < maxSize || (region.offset == 0 && maxSize == 0), end <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "end", requested: max(end, region.offset + 1), maximum: maxSize))
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
        let operation = "diff \(ByteCount(memory.count)) of memory against snapshot \"\(name)\""
        try options.validate(during: operation)
        let regions = mergeRegions
        return try lock.withReadLock { () throws(MemSnapError) -> [SnapshotDiff] in
            let original = UnsafeRawBufferPointer(start: self.memory.base, count: logicalSize)
            let segments = Differ.plan(regions, size: logicalSize, fill: options.fillOperation)
            return try Differ.diff(original: original, updated: memory, dirty: dirtyPages.byteRanges,
                                   segments: segments, options: options, during: operation)
        }
    }

    /// `diff` of a region's memory: its first `size` bytes (default: the snapshot's size, or
    /// the region's committed size if it grew past the snapshot's last page).
    public func diff(
        _ region: VirtualRegion, size: Int? = nil, dirtyPages: DirtyPages, options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) -> [SnapshotDiff] {
        let committed = region.committedSize
        let snapshotSize = self.size
        let defaultSize = committed > (Page.roundUp(snapshotSize) ?? snapshotSize) ? committed : min(snapshotSize, committed)
        let memorySize = size ?? defaultSize
        guard memorySize >= 0, memorySize <= committed else {
            throw MemSnapError("diff region against snapshot \"\(name)\"",
                               .outOfBounds(offset: 0, length: memorySize, size: committed))
        }
        return try region.withUnsafeBytes { (bytes) throws(MemSnapError) -> [SnapshotDiff] in
            try diff(UnsafeRawBufferPointer(rebasing: bytes[0..<memorySize]), dirtyPages: dirtyPages, options: options)
        }
    }

    // MARK: Applying

    /// Applies `diffs` in order, all or nothing, holding the write lock (readers see the snapshot
    /// before or after, never between). Bytewise diffs may grow the snapshot up to `maxSize`.
    /// The written ranges are recorded as changes.
    /// - Returns: the byte ranges written, coalesced.
    /// - Throws (nothing applied): `.exceedsMaximum` for a bytewise diff past `maxSize`;
    ///   `.outOfBounds` for another diff past the size the batch reaches; `.invalidArgument` for an
    ///   arithmetic diff on raw or bool data or not a whole number of values; `.invalidRange`.
    @discardableResult
    public func apply(_ diffs: [SnapshotDiff]) throws(MemSnapError) -> [Range<Int>] {
        try lock.withWriteLock { () throws(MemSnapError) -> [Range<Int>] in
            try applyLocked([diffs])
        }
    }

    /// Queues diffs for the next `applyQueuedDiffs()`. Callable from any thread; diffs queued in
    /// one call stay together and in order.
    public func queueDiffs(_ diffs: [SnapshotDiff]) {
        guard !diffs.isEmpty else { return }
        diffQueue.withLock { $0.append(diffs) }
    }

    /// Number of diffs waiting in the queue.
    public var queuedDiffCount: Int { diffQueue.withLock { $0.reduce(0) { $0 + $1.count } } }

    /// Applies every queued diff, in queue order, as one `apply` (all or nothing, atomic for
    /// readers), and empties the queue. Diffs queued while it runs wait for the next call.
    /// - Returns: the byte ranges written, coalesced.
    /// - Throws: as `apply`; the queue is then left as it was, nothing lost.
    @discardableResult
    public func applyQueuedDiffs() throws(MemSnapError) -> [Range<Int>] {
        let batches = diffQueue.withLock { queue in
            defer { queue = [] }
            return queue
        }
        do {
            return try lock.withWriteLock { () throws(MemSnapError) -> [Range<Int>] in try applyLocked(batches) }
        } catch {
            diffQueue.withLock { $0.insert(contentsOf: batches, at: 0) }
            throw error
        }
    }

    /// Call with the write lock held. Applies the batches in order, as one.
    private func applyLocked(_ batches: [[SnapshotDiff]]) throws(MemSnapError) -> [Range<Int>] {
        let diffs = batches.joined()
        let operation = "apply \(diffs.count) diffs to snapshot \"\(name)\""
        var reachedSize = logicalSize
        for diff in diffs where diff.operation == .bytewise {
            guard diff.offset >= 0, !diff.offset.addingReportingOverflow(diff.bytes.count).overflow else {
                throw MemSnapError(operation, .invalidRange(offset: diff.offset, length: diff.bytes.count))
            }
            let end = diff.offset + diff.bytes.count
            guard end <= maxSize else {
                throw MemSnapError(operation, .exceedsMaximum(what: "bytewise diff end", requested: end, maximum: maxSize))
            }
            reachedSize = max(reachedSize, end)
        }
        for diff in diffs where diff.operation != .bytewise && diff.operation != .ignore {
            _ = try checkedRange(offset: diff.offset, length: diff.bytes.count, within: reachedSize, during: operation)
            if diff.operation.isArithmetic {
                guard diff.dataType.isNumeric, diff.bytes.count % diff.dataType.width == 0 else {
                    throw MemSnapError(operation, .invalidArgument(
                        "\(diff.operation) diff of \(diff.bytes.count) bytes of \(diff.dataType) at \(diff.offset) is not valid"))
                }
            }
        }
        if reachedSize > logicalSize { try growLocked(to: reachedSize, during: operation) }
        var written: [Range<Int>] = []
        written.reserveCapacity(batches.reduce(0) { $0 + $1.count })
        // Diffs from many workers land all over the snapshot: each is a cache and TLB miss.
        // Prefetching a few diffs ahead overlaps those misses (the order itself must not change:
        // overlapping bytewise diffs are last-writer-wins).
        let lookahead = 16
        let base = memory.base
        for batch in batches {
            batch.withUnsafeBufferPointer { diffs in
                for index in diffs.indices {
                    if index + lookahead < diffs.count, diffs[index + lookahead].operation != .ignore {
                        memsnap_prefetch_for_write(base + diffs[index + lookahead].offset)
                    }
                    let diff = diffs[index]
                    guard diff.operation != .ignore, !diff.bytes.isEmpty else { continue }
                    let target = base + diff.offset
                    switch diff.operation {
                    case .bytewise:
                        diff.bytes.withUnsafeBytes { target.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                    case .xor:
                        diff.bytes.withUnsafeBytes { source in
                            for index in 0..<source.count {
                                target.storeBytes(of: target.load(fromByteOffset: index, as: UInt8.self) ^ source[index],
                                                  toByteOffset: index, as: UInt8.self)
                            }
                        }
                    case .sum, .product, .subtract, .max, .min:
                        Differ.applyTyped(diff, to: target)
                    case .ignore:
                        break
                    }
                    written.append(diff.range)
                }
            }
        }
        let coalesced = ByteRangeSet.coalescing(written)
        changes.formUnion(coalesced)
        return coalesced
    }
}
