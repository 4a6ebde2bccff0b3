import CMemSnap
import MemSnap

/// One metapage slot: what the heap file holds (the state after commit `checkpointCommit`).
struct ArenaMeta: Equatable {
    var counter: UInt64
    var capacity: Int
    var recordedBase: UInt64
    var checkpointCommit: UInt64
    var epoch: UInt64
    var event: UInt64
    var roots: [UInt64]

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.u64(ArenaFormat.metaMagic); writer.u32(ArenaFormat.version); writer.u32(UInt32(Page.size))
        for field in [UInt64(capacity), recordedBase, counter, checkpointCommit, epoch, event] + roots { writer.u64(field) }
        writer.u32(writer.bytes.withUnsafeBytes { ArenaFormat.crc($0) })
        writer.pad(to: ArenaFormat.slotSize)
        return writer.bytes
    }

    /// The metapage in `slot`, or why it cannot be used: torn or damaged (wrong magic or CRC32C),
    /// or values no arena can have (a capacity out of range, a counter or commit at 2^63 or
    /// more, a recorded base that is not page-aligned).
    static func decode(_ slot: UnsafeRawBufferPointer) -> Result<ArenaMeta, Problem> {
        guard slot.count >= ArenaFormat.metaBytes + 4 else { return .failure(Problem("too short")) }
        var reader = ByteReader(slot)
        guard reader.u64() == ArenaFormat.metaMagic else { return .failure(Problem("no metapage magic")) }
        let version = reader.u32(), pageSize = reader.u32()
        let capacity = reader.u64(), base = reader.u64(), counter = reader.u64()
        let checkpoint = reader.u64(), epoch = reader.u64(), event = reader.u64()
        let roots = (0..<ArenaFormat.rootCount).map { _ in reader.u64() }
        let stored = reader.u32()
        guard stored == ArenaFormat.crc(UnsafeRawBufferPointer(rebasing: slot[0..<ArenaFormat.metaBytes])) else {
            return .failure(Problem("checksum mismatch"))
        }
        guard version == ArenaFormat.version else { return .failure(Problem("unsupported version \(version) (this build reads 1)")) }
        guard pageSize == UInt32(Page.size) else { return .failure(Problem("page size \(pageSize), this system's is \(Page.size)")) }
        if let problem = ArenaFormat.capacityProblem(capacity) { return .failure(Problem(problem)) }
        guard counter < ArenaFormat.counterLimit, checkpoint < ArenaFormat.counterLimit else {
            return .failure(Problem("counter \(counter) or checkpoint commit \(checkpoint) is 2^63 or more"))
        }
        guard base % UInt64(Page.size) == 0 else { return .failure(Problem("recorded base \(base) is not page-aligned")) }
        return .success(ArenaMeta(counter: counter, capacity: Int(capacity), recordedBase: base, checkpointCommit: checkpoint,
                                  epoch: epoch, event: event, roots: roots))
    }

    struct Problem: Error {
        let text: String
        init(_ text: String) { self.text = text }
    }
}
