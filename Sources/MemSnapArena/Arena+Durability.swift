import MemSnap

/// Commits, checkpoints and metapages: the order of writes and flushes that makes a crash at any
/// instant recover exactly the last completed sync.
extension Arena {
    /// Appends one log record with every dirty page and makes it durable.
    func commitDirty(epoch: UInt64, event: UInt64, during operation: String) throws(MemSnapError) {
        if let failedFlush {
            throw MemSnapError(operation, .unavailable(
                "an earlier fdatasync failed (\(failedFlush)); reopen the arena to recover its last completed sync"))
        }
        var pages = declared
        declared = ByteRangeSet()
        do throws(MemSnapError) {
            if let tracker { pages.formUnion(try tracker.collectAndReset().runs) }
            // Explicit tracking: the allocator's own writes, which the caller cannot declare.
            if let written = allocator.written { pages.formUnion(written.take()) }
            guard committed.commit + 1 < ArenaFormat.counterLimit else {
                throw MemSnapError(operation, MemSnapError.Reason.unavailable("the commit counter has reached 2^63 - 1: no reader would accept another commit"))
            }
            let header = ArenaRecordHeader(commit: committed.commit + 1, pageCount: pages.ranges.reduce(0) { $0 + $1.count },
                                           epoch: epoch, event: event, roots: workingRoots)
            try log.append(header, runs: pages.ranges, heap: region.base, during: operation)
            try flush(log.file, during: operation)
            committed = CommittedState(commit: header.commit, epoch: epoch, event: event, roots: workingRoots)
        } catch {
            declared.formUnion(pages.ranges)  // a retry must still write them
            throw error
        }
    }

    /// fdatasync of `file`; a failure is remembered (see `failedFlush`) before it is thrown.
    func flush(_ file: any ArenaFile, during operation: @autoclosure () -> String) throws(MemSnapError) {
        do {
            try file.synchronize(during: operation())
        } catch {
            failedFlush = error
            throw error
        }
    }

    /// Replays the log into the heap file, makes it durable, writes both metapages and empties
    /// the log. The same code is recovery at open: it applies exactly the sealed records newer
    /// than the metapage's checkpoint, in order, each checked whole before any of it is written.
    func checkpoint(during operation: String) throws(MemSnapError) {
        if let failedFlush {
            throw MemSnapError(operation, .unavailable("an earlier fdatasync failed (\(failedFlush)); reopen the arena"))
        }
        let records = try log.recordsToReplay(after: meta, pageLimit: capacity / Page.size, during: operation)
        if let last = records.last?.header {
            for record in records {
                try log.replay(record, during: operation) { (page, images) throws(MemSnapError) in
                    try heapFile.write([images], at: ArenaFormat.heapFileOffset + page * Page.size, during: operation)
                }
            }
            try flush(heapFile, during: operation)
            guard meta.counter + 1 < ArenaFormat.counterLimit else {
                throw MemSnapError(operation, .unavailable("the metapage counter has reached 2^63 - 1"))
            }
            var next = meta
            next.counter += 1
            next.checkpointCommit = last.commit
            next.epoch = last.epoch
            next.event = last.event
            next.roots = last.roots
            try writeMeta(next, during: operation)
            meta = next
            committed = CommittedState(commit: last.commit, epoch: last.epoch, event: last.event, roots: last.roots)
            workingRoots = last.roots
        }
        if try log.hasBytes(during: operation) {
            try log.empty(during: operation)
            try flush(log.file, during: operation)
        }
    }

    /// Writes `meta` into both slots, one after the other, each made durable before the next:
    /// a crash tears at most one slot (the other stays valid, and the log is still there to
    /// replay), and a bit flipped later in either copy falls back to an identical one.
    func writeMeta(_ meta: ArenaMeta, during operation: String) throws(MemSnapError) {
        try Arena.writeMeta(meta, to: heapFile, lastSlot: nil, during: operation) { (file) throws(MemSnapError) in
            try flush(file, during: operation)
        }
    }

    /// `lastSlot`: a slot that may hold the only intact copy (after damage found on open), so it
    /// is rewritten only once the other one is durable.
    static func writeMeta(_ meta: ArenaMeta, to file: any ArenaFile, lastSlot: Int?, during operation: String,
                          flush: (any ArenaFile) throws(MemSnapError) -> Void) throws(MemSnapError) {
        let bytes = meta.encoded()
        let first = lastSlot.map { 1 - $0 } ?? Int(meta.counter % 2)
        for slot in [first, 1 - first] {
            try file.write(bytes, at: slot * ArenaFormat.slotSize, during: operation)
            try flush(file)
        }
    }

    /// The newest valid metapage, whether both copies are valid and equal, and which slot it is in.
    /// - Throws: `.corrupt` saying why neither slot can be used.
    static func readMeta(_ file: any ArenaFile, during operation: String) throws(MemSnapError) -> (ArenaMeta, Bool, Int) {
        let slots = try file.bytes(2 * ArenaFormat.slotSize, at: 0, during: operation)
            ?? [UInt8](repeating: 0, count: 2 * ArenaFormat.slotSize)
        let decoded = slots.withUnsafeBytes { bytes in
            [0, 1].map { slot in
                ArenaMeta.decode(UnsafeRawBufferPointer(rebasing: bytes[slot * ArenaFormat.slotSize..<(slot + 1) * ArenaFormat.slotSize]))
            }
        }
        let valid = decoded.compactMap { try? $0.get() }
        let validSlots = decoded.indices.filter { (try? decoded[$0].get()) != nil }
        guard let newestSlot = validSlots.max(by: { (try? decoded[$0].get())?.counter ?? 0 < (try? decoded[$1].get())?.counter ?? 0 }),
              let newest = try? decoded[newestSlot].get() else {
            let why = decoded.enumerated().map { slot, result in
                if case let .failure(problem) = result { "slot \(slot): \(problem.text)" } else { "slot \(slot): ok" }
            }
            throw MemSnapError(operation, .corrupt(
                "both metapages are damaged or missing (\(why.joined(separator: "; "))); not an arena, or destroyed"))
        }
        return (newest, valid.count == 2 && valid[0] == valid[1], newestSlot)
    }
}
