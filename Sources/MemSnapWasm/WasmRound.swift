import MemSnap
import WasmKit

/// What one `WasmWorkers` round (or join) did, with its timings.
public struct WasmRound: Sendable {
    /// The round's number: 1 for the pool's first round (a `join()` alone reports the number of
    /// rounds run so far).
    public var number: Int
    /// Each worker's results, by worker index (empty for a join).
    public var results: [[Value]]
    /// Pages collected from the main instance (index 0) and each worker (1...).
    public var dirtyPageCounts: [Int]
    public var diffCount: Int
    public var diffBytes: Int
    /// Snapshot byte ranges the merge wrote.
    public var writtenRanges: [Range<Int>]
    /// The snapshot's size after the merge (larger than before if an instance's memory grew).
    public var snapshotSize: Int
    /// Wall time of the parallel phase: every worker's call, collect, diff and in-place restore.
    public var runSeconds: Double
    /// Each worker's call alone.
    public var callSeconds: [Double]
    /// Each worker's collect, diff and in-place restore (after its call, still on its own thread).
    public var diffSeconds: [Double]
    /// The join: the main instance's collect and diff, applying every diff, and restoring the
    /// instances not restored yet (the main instance always) onto the merged snapshot.
    public var mergeSeconds: Double
    /// Instances the join remapped, or replaced by a fresh fork (a main instance that had
    /// trapped, say), instead of restoring them in place: 0 the main instance, 1... the workers
    /// (see `WasmWorkers` on when that happens).
    public var remappedInstances: [Int] = []
}
