import MemSnap

/// Sizes that bound what crosses the wire: every message stays below `maxMessageBytes`, so a
/// 1 MiB frame or diff batch (plus its envelope) streams without stalls and a peer cannot make
/// the other side allocate more for one message.
///
/// Thread safety: a value type.
public struct RemoteLimits: Sendable {
    /// The largest message either side sends or accepts. Diff batches larger than this are
    /// split; snapshot chunks are at most 16 MiB and must fit with room to spare.
    public var maxMessageBytes: Int = 32 << 20
    /// The HTTP/2 flow-control window each side offers: large enough that a few chunks are in
    /// flight at once (the default of 64 KiB stalls a 1 MiB chunk for round trips).
    public var windowBytes: Int = 16 << 20
    /// The largest HTTP/2 frame, for fewer frames per chunk.
    public var frameBytes: Int = 1 << 20

    public init() {}

    /// The most diff bytes one batch carries, leaving room for headers in a message.
    var diffBatchBytes: Int { max(64 << 10, maxMessageBytes / 2) }
}
