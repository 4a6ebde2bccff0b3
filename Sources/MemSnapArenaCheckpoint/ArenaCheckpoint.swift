#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapArena
import MemSnapCheckpoint

/// Arenas that move between machines: a checkpoint of an arena holds its heap (up to the
/// allocator's top) as of its last completed sync, with that sync's commit counter, epoch,
/// event and roots, its capacity and its recorded base; restoring it makes a new arena that
/// opens with the same objects, roots and epoch/event (`Arena.create(path:image:state:)`).
///
/// Incremental checkpoints of an arena follow its syncs by comparison: every page of the synced
/// heap is hashed and compared with the page hashes stored in the parent chain (see
/// `Checkpoint.write(image:comparingWith:...)`), so the pages written are exactly those that
/// differ from the parent's image, whatever happened in between (any number of syncs, opens,
/// compactions or processes). The arena's files record no such history: its log is emptied at
/// every checkpoint, and its format stays as it is.
///
/// Thread safety: each call is independent; an `Arena` passed in is used from the calling
/// thread only, as arenas require.
public enum ArenaCheckpoint {
    /// Checkpoints the arena at `path` (opened read-only: a shared lock, so no writer may hold
    /// it, and nothing is written to it), in full, or with `chain` as an incremental checkpoint
    /// over its tip.
    /// - Throws: as `Arena.open` (read-only), `Arena.withSyncedImage`, and
    ///   `Checkpoint.write(image:to:options:arenaState:progress:)` or
    ///   `Checkpoint.write(image:comparingWith:...)`.
    @discardableResult
    public static func write(
        arenaAt path: String, to destination: CheckpointOutputDestination, comparingWith chain: CheckpointChain? = nil,
        options: CheckpointOptions = CheckpointOptions(), progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let arena = try Arena.open(path: path, access: .readOnly, configuration: Arena.Configuration(tracking: .explicit))
        defer { try? arena.close() }
        return try write(arena, to: destination, comparingWith: chain, options: options, progress: progress)
    }

    /// Checkpoints the open `arena` as of its last completed sync (writes since then are not in
    /// it: see `Arena.withSyncedImage`), in full or over `chain`. With `options.formatVersion`
    /// 1 (for readers older than format 2, which has no room for it) the arena's state is not
    /// recorded: the file holds the heap alone and restores as a raw image only.
    /// - Throws: as `write(arenaAt:to:comparingWith:options:progress:)`.
    @discardableResult
    public static func write(
        _ arena: Arena, to destination: CheckpointOutputDestination, comparingWith chain: CheckpointChain? = nil,
        options: CheckpointOptions = CheckpointOptions(), progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try arena.withSyncedImage { (heap, state) throws(MemSnapError) -> CheckpointSummary in
            let recorded = options.formatVersion < 2 ? nil : CheckpointArenaState(
                capacity: state.capacity, recordedBase: state.recordedBase, commit: state.commit, epoch: state.epoch, event: state.event,
                roots: state.roots)
            if let chain {
                return try Checkpoint.write(image: heap, comparingWith: chain, to: destination, options: options, arenaState: recorded,
                                            progress: progress)
            }
            return try Checkpoint.write(image: heap, to: destination, options: options, arenaState: recorded, progress: progress)
        }
    }

    /// Restores the arena checkpoint `checkpoint` (with its chain, from `links` or next to it)
    /// as a new arena at `arenaPath`, open read-write (see `restore(_:toArenaAt:threads:configuration:)`).
    /// - Throws: as `CheckpointChain.init(tip:links:search:)` and `restore(_:toArenaAt:threads:configuration:)`.
    public static func restore(
        from checkpoint: String, links: [String] = [], toArenaAt arenaPath: String, threads: Int = 2,
        configuration: Arena.Configuration = Arena.Configuration()
    ) throws(MemSnapError) -> Arena {
        try restore(CheckpointChain(tip: checkpoint, links: links), toArenaAt: arenaPath, threads: threads, configuration: configuration)
    }

    /// Restores the image of `chain` (whose tip must record an arena's state) into memory, then
    /// creates the arena `arenaPath` from it with `Arena.create(path:image:state:configuration:)`,
    /// which refuses an image that fails the arena's check. Nothing is created unless the chain
    /// verified.
    /// - Throws: `.invalidArgument` if the tip records no arena state; `.systemCall(..., EEXIST)`
    ///   if `arenaPath` or `arenaPath-wal` exists (checked first); as `CheckpointChain.restore`
    ///   and `Arena.create(path:image:state:configuration:)`.
    public static func restore(
        _ chain: CheckpointChain, toArenaAt arenaPath: String, threads: Int = 2,
        configuration: Arena.Configuration = Arena.Configuration()
    ) throws(MemSnapError) -> Arena {
        let operation = "restore checkpoint \(chain.tip.path) as arena \(arenaPath)"
        guard let recorded = chain.tip.arenaState else {
            throw MemSnapError(operation, .invalidArgument("the checkpoint records no arena state: it is not a checkpoint of an arena"))
        }
        for name in [arenaPath, arenaPath + "-wal"] {
            var status = stat()
            if lstat(name, &status) == 0 { throw MemSnapError(operation, .systemCall("create \(name)", .fileExists)) }
        }
        let target = try MemoryImageTarget(name: "memsnap-arena-restore")
        try chain.restore(into: target, threads: threads)
        let image = try Snapshot(adopting: target.file, size: chain.imageSize)
        let state = ArenaImageState(capacity: recorded.capacity, recordedBase: recorded.recordedBase, commit: recorded.commit,
                                    epoch: recorded.epoch, event: recorded.event, roots: recorded.roots)
        return try image.withUnsafeBytes { (heap) throws(MemSnapError) -> Arena in
            try Arena.create(path: arenaPath, image: heap, state: state, configuration: configuration)
        }
    }
}
