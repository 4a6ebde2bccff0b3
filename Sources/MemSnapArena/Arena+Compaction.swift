import MemSnap

extension Arena {
    /// Gives the file space of free pages back to the file system (hole punching), keeping every
    /// byte that matters; the arena's contents and capacity are unchanged. Opens the arena at
    /// `path` read-write, refuses unless `check()` passes (a damaged allocator could call live
    /// data free), makes the frees of the last sync durable with a maintenance commit (same
    /// epoch and event), checkpoints, punches, and closes.
    /// - Returns: the heap file's allocated bytes before and after.
    /// - Throws: `open`'s errors; `.corrupt` from the check (nothing punched); system call
    ///   failures.
    public static func compact(path: String) throws(MemSnapError) -> (before: Int, after: Int) {
        let operation = "compact arena \(path)"
        let arena = try Arena.open(path: path, configuration: Configuration(tracking: .explicit))
        defer { try? arena.close() }
        do {
            _ = try arena.allocator.check(during: operation)
        } catch {
            throw MemSnapError("\(operation): refused, the arena fails its check", error.reason)
        }
        // Opening released the frees of the last sync in memory only (the allocator recorded
        // the pages it wrote): make that durable and checkpoint it, so holes are punched only in
        // space the durable state calls free.
        try arena.commitDirty(epoch: arena.committed.epoch, event: arena.committed.event, during: operation)
        try arena.checkpoint(during: operation)
        let before = arena.heapFile.allocatedBytes
        for pages in try arena.allocator.disposablePages(during: operation) {
            try arena.heapFile.punchHole(ArenaFormat.heapFileOffset + pages.lowerBound * Page.size..<ArenaFormat.heapFileOffset + pages.upperBound * Page.size,
                                         during: operation)
        }
        try arena.flush(arena.heapFile, during: operation)
        return (before, arena.heapFile.allocatedBytes)
    }
}
