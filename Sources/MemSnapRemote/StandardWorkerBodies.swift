#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// Worker bodies every `memsnap serve` registers, for the demo, the benchmark and the tests (a
/// runtime registers its own): a reduction, a page toucher, a failure and a sleeper. Arguments
/// are little-endian integers, documented per body; missing ones take their defaults, and a
/// body refuses arguments that would make it write outside its memory.
public enum StandardWorkerBodies {
    /// `memsnap.add-index`: adds the worker's index + 1 to each of the first `slots` Int64 values
    /// (argument u32 at 0, default 1; a sum region there makes them add up across workers), and
    /// writes `0xAB00 | index` as a UInt64 at byte 4096 + 8 x index (a page of bytewise slots).
    /// Faabric's repeated reduction.
    public static let addIndex: BatchWorkerBody = { worker in
        let slots = Int(argument(worker.arguments, at: 0, default: UInt32(1)))
        try worker.memory.withUnsafeMutableBytes { (memory) throws(MemSnapError) in
            guard slots * 8 <= memory.count, 4096 + 8 * (worker.index + 1) <= memory.count else {
                throw MemSnapError("memsnap.add-index", .outOfBounds(offset: 0, length: max(slots * 8, 4096 + 8 * (worker.index + 1)), size: memory.count))
            }
            for slot in 0..<slots {
                let value = memory.load(fromByteOffset: slot * 8, as: Int64.self)
                memory.storeBytes(of: value &+ Int64(worker.index + 1), toByteOffset: slot * 8, as: Int64.self)
            }
            memory.storeBytes(of: UInt64(worker.index) | 0xAB00, toByteOffset: 4096 + 8 * worker.index, as: UInt64.self)
        }
    }

    /// `memsnap.touch-pages`: writes 8 bytes into each of `pages` pages (argument u32 at 0,
    /// default 1 % of the memory) chosen by a generator seeded with `seed` (u64 at 4, default 1)
    /// and the worker's index, never page 0 or 1: a sparse writer, for measuring rounds.
    public static let touchPages: BatchWorkerBody = { worker in
        worker.memory.withUnsafeMutableBytes { memory in
            let pageCount = memory.count / Page.size
            guard pageCount > 2 else { return }
            let pages = Int(argument(worker.arguments, at: 0, default: UInt32(max(1, pageCount / 100))))
            var random = SplitMix64(seed: argument(worker.arguments, at: 4, default: UInt64(1)) &+ UInt64(worker.index) &* 0x9E37_79B9_7F4A_7C15)
            for _ in 0..<min(pages, pageCount) {
                let page = 2 + Int(random.next() % UInt64(pageCount - 2))
                memory.storeBytes(of: random.next(), toByteOffset: page * Page.size + 8 * (worker.index % 64), as: UInt64.self)
            }
        }
    }

    /// `memsnap.fail`: throws in the worker whose index is the argument (u32 at 0, default 0),
    /// does `memsnap.add-index` in the others.
    public static let fail: BatchWorkerBody = { worker in
        if worker.index == Int(argument(worker.arguments, at: 0, default: UInt32(0))) {
            throw MemSnapError("worker \(worker.index)", .invalidArgument("memsnap.fail: this worker fails on purpose"))
        }
        try addIndex(worker)
    }

    /// `memsnap.sleep`: sleeps for the argument's milliseconds (u32 at 0, default 1000, at most
    /// 60 000), then does `memsnap.add-index`: for tests that stop a host during a batch.
    public static let sleep: BatchWorkerBody = { worker in
        let milliseconds = min(60_000, argument(worker.arguments, at: 0, default: UInt32(1000)))
        usleep(milliseconds * 1000)
        try addIndex(worker)
    }

    /// Every standard body by name.
    public static let all: [String: BatchWorkerBody] = [
        "memsnap.add-index": addIndex, "memsnap.touch-pages": touchPages, "memsnap.fail": fail, "memsnap.sleep": sleep,
    ]

    /// The little-endian integer at `offset` of `arguments`, or `fallback` if they are shorter.
    static func argument<Value: FixedWidthInteger>(_ arguments: [UInt8], at offset: Int, default fallback: Value) -> Value {
        guard offset >= 0, arguments.count - offset >= MemoryLayout<Value>.size else { return fallback }
        return arguments.withUnsafeBytes { Value(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: Value.self)) }
    }

    /// Arguments as the bodies read them: each value little-endian, one after the other.
    public static func arguments<Value: FixedWidthInteger>(_ values: Value...) -> [UInt8] {
        values.flatMap { value in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
    }
}
