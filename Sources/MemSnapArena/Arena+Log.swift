import MemSnap

/// Commits (log appends) and checkpoints (log replays): the order of writes and flushes that makes a crash at any
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
            if let tracker { pages.formUnion(try tracker.collectAndReset()) }
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
}
