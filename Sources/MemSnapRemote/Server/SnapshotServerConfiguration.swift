import Foundation
import MemSnap

/// What a `SnapshotServer` accepts, and how it runs workers. Every limit bounds what a peer can
/// make the server allocate or do.
///
/// Thread safety: a value type.
public struct SnapshotServerConfiguration: Sendable {
    public var security: RemoteSecurity
    public var limits = RemoteLimits()
    /// The largest snapshot (its maximum size) the server holds.
    public var maxSnapshotBytes = 64 << 30
    /// Bytes of pushes staged at once (each counts its image size), and how many.
    public var maxStagedBytes = 64 << 30
    public var maxStagedPushes = 8
    /// A staged push nobody touched for this long is dropped when room is needed.
    public var stagedPushLifetime: Duration = .seconds(600)
    /// Snapshots held at once.
    public var maxSnapshots = 64
    /// Workers one batch may run here.
    public var maxWorkersPerBatch = 256
    /// Bytes of arguments a batch may carry.
    public var maxArgumentBytes = 1 << 20
    /// Bytes of diffs one update may carry, in all.
    public var maxUpdateBytes = 4 << 30
    /// Threads checking and decompressing one whole push's frames while more arrive.
    public var receiveThreads = min(4, max(1, ProcessInfo.processInfo.activeProcessorCount))
    /// How the server's workers are tracked.
    public var tracking = DirtyTracker.Configuration()

    public init(security: RemoteSecurity) {
        self.security = security
    }
}
