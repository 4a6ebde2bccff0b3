/// What an arena's heap image needs besides its bytes to become an arena again: the state of the
/// sync it holds. Read with `Arena.withSyncedImage`, used by `Arena.create(path:image:state:)`.
public struct ArenaImageState: Sendable, Equatable {
    /// The heap's capacity (a multiple of 4096 from 256 KiB to 1 TiB).
    public var capacity: Int
    /// The address the heap was created at; a new arena prefers it (`Arena.isAtRecordedBase`).
    public var recordedBase: UInt64
    /// The commit counter, epoch and event of the sync the image holds.
    public var commit: UInt64
    public var epoch: UInt64
    public var event: UInt64
    /// Its 32 roots.
    public var roots: [UInt64]

    public init(capacity: Int, recordedBase: UInt64, commit: UInt64, epoch: UInt64, event: UInt64, roots: [UInt64]) {
        self.capacity = capacity
        self.recordedBase = recordedBase
        self.commit = commit
        self.epoch = epoch
        self.event = event
        self.roots = roots
    }
}
