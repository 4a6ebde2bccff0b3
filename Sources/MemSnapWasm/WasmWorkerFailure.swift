/// A worker of a `WasmWorkers` round failed, and the round was discarded: nothing of it was
/// merged, the snapshot is as it was before the round, and every instance was restored to it
/// (the failed one, and any whose memory grew, replaced by a fresh fork).
public struct WasmWorkerFailure: Error, CustomStringConvertible {
    /// The lowest-numbered worker that failed.
    public let worker: Int
    /// The round's number (1 for the pool's first round).
    public let round: Int
    /// Usually a `WasmTrap`.
    public let underlying: any Error

    public var description: String {
        "round \(round): worker \(worker) failed: \(underlying); the round was discarded and the snapshot is unchanged"
    }
}
