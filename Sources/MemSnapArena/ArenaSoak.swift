import MemSnap

/// A deterministic workload for crash testing (the test suite and `memsnap arena soak`; package
/// access: a test and benchmark workload, not part of the library's API): a
/// writer runs it until killed, and `problems` checks a reopened arena against the exact state
/// after its last completed step. Setup (epoch 0,
/// event 1) allocates a 64-page zeroed blob at root 1. Step k (epoch 1, event k = 1, 2, ...)
/// fills two whole blob pages with byte k & 0xFF, replaces the small allocation in ring slot
/// k % 8 (root 8 + k % 8, stored as offset + 1) by a new one of 16 + k % 300 bytes filled with
/// k & 0xFF, sets root 0 to k, and syncs.
package enum ArenaSoak {
    package static let blobPages = 64
    /// Root 2 of an arena this workload created; it refuses any other arena (its writes would
    /// land on whatever root 1 points to).
    static let marker: UInt64 = 0x4B41_4F53_5041_534D  // "MSPASOAK"

    /// Throws unless `arena` was made by `create`.
    static func requireSoakArena(_ arena: Arena) throws {
        guard try arena.root(2) == marker, try arena.root(1) != 0, arena.epoch <= 1, arena.event < 1 << 31 else {
            throw MemSnapError("run the arena soak workload", .invalidArgument(
                "\(arena.path) was not created for soaking (memsnap arena soak creates its own arena)"))
        }
    }
    static func pages(_ step: Int) -> [Int] { [step % blobPages, (step * 7 + 3) % blobPages] }
    static func size(_ step: Int) -> Int { 16 + step % 300 }

    /// Creates a fresh arena at `path` for the workload.
    package static func create(_ path: String) throws {
        let arena = try Arena.create(path: path, capacity: 8 << 20, configuration: Arena.Configuration(tracking: .automatic))
        let blob = try arena.allocate(byteCount: blobPages * Page.size, alignment: Page.size)
        try arena.address(of: blob, byteCount: blobPages * Page.size).initializeMemory(as: UInt8.self, repeating: 0, count: blobPages * Page.size)
        try arena.setRoot(1, to: blob.rawValue)
        try arena.setRoot(2, to: marker)
        try arena.sync(epoch: 0, event: 1)
        try arena.close()
    }

    /// The last completed step: 0 after setup (and for an arena `requireSoakArena` refuses).
    package static func completedStep(_ arena: Arena) -> Int { arena.epoch == 1 && arena.event < 1 << 31 ? Int(arena.event) : 0 }

    package static func step(_ arena: Arena, _ k: Int) throws {
        let blob = try arena.address(of: ArenaOffset(rawValue: try arena.root(1)), byteCount: blobPages * Page.size)
        for page in pages(k) {
            (blob + page * Page.size).initializeMemory(as: UInt8.self, repeating: UInt8(k & 0xFF), count: Page.size)
        }
        let slot = 8 + k % 8
        let old = try arena.root(slot)
        if old != 0 { try arena.free(ArenaOffset(rawValue: old - 1)) }
        let object = try arena.allocate(byteCount: size(k))
        try arena.address(of: object, byteCount: size(k)).initializeMemory(as: UInt8.self, repeating: UInt8(k & 0xFF), count: size(k))
        try arena.setRoot(slot, to: object.rawValue + 1)
        try arena.setRoot(0, to: UInt64(k))
        try arena.sync(epoch: 1, event: UInt64(k))
    }

    /// Differences between `arena` and the exact state after its last completed step.
    package static func problems(_ arena: Arena) throws -> [String] {
        try requireSoakArena(arena)
        let k = completedStep(arena)
        var problems: [String] = []
        if try arena.root(0) != UInt64(k) { problems.append("root 0 is \(try arena.root(0)), the last step is \(k)") }
        var expected = [UInt8](repeating: 0, count: blobPages)
        if k > 0 { for step in 1...k { for page in pages(step) { expected[page] = UInt8(step & 0xFF) } } }
        let blob = try arena.address(of: ArenaOffset(rawValue: try arena.root(1)), byteCount: blobPages * Page.size)
        for page in 0..<blobPages where !UnsafeRawBufferPointer(start: blob + page * Page.size, count: Page.size).allSatisfy({ $0 == expected[page] }) {
            problems.append("blob page \(page) is not all \(expected[page])")
        }
        var live = 0
        for slot in 0..<8 {
            let root = try arena.root(8 + slot)
            guard let latest = (max(1, k - 7)...max(1, k)).last(where: { $0 % 8 == slot && $0 <= k }) else {
                if root != 0 { problems.append("ring slot \(slot) should be empty") }
                continue
            }
            live += 1
            let object = UnsafeRawBufferPointer(start: try arena.address(of: ArenaOffset(rawValue: root &- 1), byteCount: size(latest)),
                                                count: size(latest))
            if !object.allSatisfy({ $0 == UInt8(latest & 0xFF) }) { problems.append("ring slot \(slot) (step \(latest)) is damaged") }
        }
        let counted = try arena.check()
        if counted.allocations != live + 1 { problems.append("\(counted.allocations) allocations, expected \(live + 1)") }
        return problems
    }

    /// Opens `path` with `configuration` and runs steps until the process is killed (the writer
    /// side of a soak).
    package static func runUntilKilled(_ path: String, configuration: Arena.Configuration = Arena.Configuration(checkpointLogBytes: 256 << 10)) throws -> Never {
        let arena = try Arena.open(path: path, configuration: configuration)
        try requireSoakArena(arena)
        var k = completedStep(arena)
        while true {
            k += 1
            try step(arena, k)
        }
    }
}
