#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import Testing

/// What the disk saw: every write, size change and flush of the arena's two files, in order.
final class DiskJournal: @unchecked Sendable {
    enum Operation {
        case write(ArenaFileRole, offset: Int, bytes: [UInt8])
        case flush(ArenaFileRole)
        case resize(ArenaFileRole, size: Int)
        case reserve(ArenaFileRole, end: Int)
        case punch(ArenaFileRole, Range<Int>)

        var role: ArenaFileRole {
            switch self {
            case let .write(role, _, _), let .flush(role), let .resize(role, _), let .reserve(role, _), let .punch(role, _): role
            }
        }
    }

    private let lock = NSLock()
    private(set) var operations: [Operation] = []
    var count: Int { lock.withLock { operations.count } }
    func append(_ operation: Operation) { lock.withLock { operations.append(operation) } }

    var layer: ArenaFileLayer { ArenaFileLayer { file, role in RecordingFile(file, role: role, journal: self) } }
}

/// A power loss in the manner of CrashMonkey and ALICE: the arena's writes and flushes are
/// recorded during a randomized workload, then the disk states a power loss can leave are built
/// from the record (for each file, everything up to its last completed flush, plus any subset
/// of the 512-byte sectors written after it, torn writes included, and any of the size changes)
/// and each is opened. Every recovered state must equal one completed sync: not before the last
/// sync that returned, not after the last one that started.
@Suite("Arena power loss: every disk state a crash can leave recovers one completed sync")
struct ArenaPowerLossTests {
    static let sector = 512
    static let capacity = 512 << 10

    /// The expected state after a sync: roots and every live object's (size, fill byte).
    struct Model: Equatable {
        var roots = [UInt64](repeating: 0, count: 32)
        var objects: [ArenaOffset: (size: Int, byte: UInt8)] = [:]
        static func == (lhs: Model, rhs: Model) -> Bool {
            lhs.roots == rhs.roots && lhs.objects.mapValues { "\($0.size)/\($0.byte)" } == rhs.objects.mapValues { "\($0.size)/\($0.byte)" }
        }
    }

    @Test(arguments: TrackingUnderTest.allCases)
    func everyDiskStateAPowerLossCanLeaveRecoversExactlyOneCompletedSync(tracking: TrackingUnderTest) throws {
        let seed = TestSeed.current("power loss (\(tracking))")
        var random = SplitMix64(seed: seed)
        let directory = ArenaDirectory()
        try Arena.create(path: directory.arena, capacity: Self.capacity).close()
        let initial = (heap: fileBytes(directory.arena), log: fileBytes(directory.log))

        // The workload, recorded.
        let journal = DiskJournal()
        var configuration = tracking.configuration
        configuration.checkpointLogBytes = 40 << 10
        configuration.fileLayer = journal.layer
        var models = [Model()]  // models[k]: the state after sync k (0: as created)
        var syncs: [(start: Int, end: Int)] = [(0, 0)]
        let arena = try Arena.open(path: directory.arena, configuration: configuration)
        var model = Model()
        for event in 1...36 {
            for _ in 0..<Int(1 + random.next() % 4) {
                if model.objects.isEmpty || random.next() % 3 != 0 {
                    let size = random.next() % 4 == 0 ? Int(1 + random.next() % UInt64(3 * pageSize)) : Int(1 + random.next() % 600)
                    let offset = try arena.allocate(byteCount: size)
                    let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                    try arena.fill(offset, count: size, with: byte)
                    if tracking.declaresWrites { arena.markDirty(Int(offset.rawValue)..<Int(offset.rawValue) + size) }
                    model.objects[offset] = (size, byte)
                } else {
                    let victim = model.objects.keys.sorted()[Int(random.next() % UInt64(model.objects.count))]
                    if random.next() % 2 == 0 {
                        try arena.free(victim)
                        model.objects[victim] = nil
                    } else {  // rewrite in place
                        let size = model.objects[victim]!.size
                        let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                        try arena.fill(victim, count: size, with: byte)
                        if tracking.declaresWrites { arena.markDirty(Int(victim.rawValue)..<Int(victim.rawValue) + size) }
                        model.objects[victim] = (size, byte)
                    }
                }
            }
            let root = Int(random.next() % 32)
            model.roots[root] = random.next()
            try arena.setRoot(root, to: model.roots[root])
            let start = journal.count
            try arena.sync(epoch: 1, event: UInt64(event))
            syncs.append((start, journal.count))
            models.append(model)
        }
        try arena.close()
        let operations = journal.operations
        #expect(operations.contains { if case .flush(.heap) = $0 { true } else { false } }, "the workload checkpointed")

        // Every crash point, each with the pending writes persisted not at all, fully, and at random.
        var checked = 0
        for point in 0...operations.count {
            for variant in 0..<4 {
                let persist: () -> Bool = variant == 0 ? { false } : variant == 1 ? { true } : { random.next() % 2 == 0 }
                let disk = Self.diskState(initial, operations.prefix(point), persist: persist)
                let lastCompleted = syncs.lastIndex { $0.end <= point } ?? 0
                let lastStarted = syncs.lastIndex { $0.start < point } ?? 0
                let crashed = ArenaDirectory()
                Self.writeSparse(disk.heap, to: crashed.arena)
                Self.writeSparse(disk.log, to: crashed.log)
                let recovered: Arena
                do {
                    recovered = try Arena.open(path: crashed.arena, access: variant == 3 ? .readWrite : .readOnly,
                                               configuration: .init(tracking: .explicit))
                } catch {
                    Issue.record("seed \(seed), crash after operation \(point) (variant \(variant)): the arena does not open: \(error)")
                    continue
                }
                let event = recovered.epoch == 1 ? Int(recovered.event) : 0
                #expect((lastCompleted...max(lastCompleted, lastStarted)).contains(event),
                        "seed \(seed), crash after operation \(point): recovered sync \(event), expected \(lastCompleted)...\(lastStarted)")
                if (0..<models.count).contains(event) {
                    let problems = try Self.problems(recovered, expected: models[event])
                    #expect(problems.isEmpty, "seed \(seed), crash after operation \(point) (variant \(variant)), sync \(event): \(problems)")
                }
                try recovered.close()
                checked += 1
            }
        }
        print("power loss (\(tracking)): \(operations.count) operations, \(checked) disk states recovered")
        #expect(checked > 200)
    }

    /// The files a power loss after `operations` can leave: per file, what was flushed, plus the
    /// later writes' sectors and size changes that `persist` picks.
    static func diskState(_ initial: (heap: [UInt8], log: [UInt8]), _ operations: ArraySlice<DiskJournal.Operation>,
                          persist: () -> Bool) -> (heap: [UInt8], log: [UInt8]) {
        func state(of role: ArenaFileRole, _ initial: [UInt8]) -> [UInt8] {
            var bytes = initial
            let mine = operations.filter { $0.role == role }
            let durable = mine.lastIndex { if case .flush = $0 { true } else { false } }.map { $0 + 1 } ?? 0
            for (index, operation) in mine.enumerated() {
                let pending = index >= durable
                switch operation {
                case let .write(_, offset, written):
                    if bytes.count < offset + written.count { bytes += [UInt8](repeating: 0, count: offset + written.count - bytes.count) }
                    var sector = 0
                    while sector < written.count {  // sectors of the file, so a write is torn at the device's unit
                        let end = min(written.count, (offset + sector) / sector512 * sector512 + sector512 - offset)
                        if !pending || persist() {
                            bytes.withUnsafeMutableBytes { target in
                                written.withUnsafeBytes { source in
                                    (target.baseAddress! + offset + sector).copyMemory(from: source.baseAddress! + sector, byteCount: end - sector)
                                }
                            }
                        }
                        sector = end
                    }
                case let .resize(_, size):
                    if !pending || persist() {
                        if size < bytes.count { bytes.removeLast(bytes.count - size) } else { bytes += [UInt8](repeating: 0, count: size - bytes.count) }
                    }
                case let .reserve(_, end):
                    if (!pending || persist()) && end > bytes.count { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
                case let .punch(_, range):
                    if !pending || persist() {
                        bytes.replaceSubrange(range.clamped(to: 0..<bytes.count), with: repeatElement(0, count: range.clamped(to: 0..<bytes.count).count))
                    }
                case .flush:
                    break
                }
            }
            return bytes
        }
        return (state(of: .heap, initial.heap), state(of: .log, initial.log))
    }

    static let sector512 = sector

    /// Writes `bytes` as a file of their size, skipping all-zero pages (holes read as zeros).
    static func writeSparse(_ bytes: [UInt8], to path: String) {
        let descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        defer { close(descriptor) }
        #expect(ftruncate(descriptor, off_t(bytes.count)) == 0)
        let zeros = [UInt8](repeating: 0, count: pageSize)
        bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            for start in stride(from: 0, to: buffer.count, by: pageSize) {
                let count = min(pageSize, buffer.count - start)
                if memcmp(base + start, zeros, count) != 0 { _ = pwrite(descriptor, base + start, count, off_t(start)) }
            }
        }
    }

    /// Differences between `arena` and `expected`.
    static func problems(_ arena: Arena, expected: Model) throws -> [String] {
        var problems: [String] = []
        if arena.committedRoots != expected.roots { problems.append("roots differ") }
        for (offset, object) in expected.objects where try !arena.bytes(offset, count: object.size).allSatisfy({ $0 == object.byte }) {
            problems.append("object at \(offset.rawValue) is not all \(object.byte)")
        }
        let counted = try arena.check()
        if counted.allocations != expected.objects.count { problems.append("\(counted.allocations) allocations, expected \(expected.objects.count)") }
        return problems
    }
}
