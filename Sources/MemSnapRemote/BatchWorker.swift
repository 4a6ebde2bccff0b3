import MemSnap

/// What a worker body receives, on whichever host it runs: its place in the batch, its memory
/// (the snapshot, copy-on-write, as of the batch's epoch), and the batch's arguments.
///
/// The memory is the worker's own during the body and must not be used after it returns.
public struct BatchWorker: Sendable {
    /// The worker's index in the whole batch (all hosts), which fixes its place in the merge.
    public let index: Int
    /// Workers in the whole batch.
    public let count: Int
    public let memory: VirtualRegion
    /// The same bytes for every worker of the batch.
    public let arguments: [UInt8]

    package init(index: Int, count: Int, memory: VirtualRegion, arguments: [UInt8]) {
        self.index = index
        self.count = count
        self.memory = memory
        self.arguments = arguments
    }
}

/// A worker body: registered by name on every host that runs the batch (`SnapshotServer` and
/// `DistributedWorkers`), so a batch names what to run without shipping code. A body that
/// throws fails its worker, and with it the batch.
public typealias BatchWorkerBody = @Sendable (BatchWorker) throws -> Void
