import MemSnap
import MemSnapWasm
import Testing
import WasmKit

/// Restoring instances between rounds: in place (their own copies dropped, no remap) where the
/// tracking mode can, and always back to the merged snapshot byte for byte.
@Suite("WebAssembly rounds restore instances in place", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmRoundRestoreTests {
    /// Modes that can tell which pages an instance copied, so that nothing is remapped (`compare`
    /// can only with PAGEMAP_SCAN: not counted on).
    static func restoresInPlace(_ mode: DirtyTrackingMode) -> Bool {
        mode != .none && mode != .compare
    }

    /// The modes a pool can track WebAssembly memory with here (`segfault` is left to the
    /// handler-order tests: it depends on WasmKit's signal handler).
    static let poolModes: [DirtyTrackingMode] = [.privateCopies, .uffdAsync, .uffd, .compare].filter {
        $0.availability == .available
    }

    static func pool(_ zygote: WasmZygote, count: Int, mode: DirtyTrackingMode) throws -> WasmWorkers {
        try WasmWorkers(zygote: zygote, count: count, configuration: .init(tracking: .init(mode: mode)))
    }

    /// Every instance's memory equals the snapshot byte for byte.
    static func expectEveryInstanceEqualsTheSnapshot(_ pool: WasmWorkers, _ context: String) throws {
        let snapshot = try pool.snapshot.read(at: 0, count: pool.snapshot.size)
        for instance in [pool.main] + pool.workers {
            let memory = instance.memory.withUnsafeBytes { Array($0.prefix(snapshot.count)) }
            #expect(memory == snapshot, "\(instance.label) after \(context)")
        }
    }

    @Test(arguments: poolModes)
    func roundsRestoreEveryInstanceInPlaceToTheMergedSnapshot(mode: DirtyTrackingMode) throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try Self.pool(zygote, count: 3, mode: mode)
        #expect(pool.trackingMode == mode)
        let inPlace = Self.restoresInPlace(mode)
        let common = UInt32(try pool.mainInteger("common_address"))
        let slots = Int(try pool.mainInteger("slots_address"))
        for roundIndex in 0..<4 {
            // The main instance writes `common` between rounds; each worker writes its own slot.
            try pool.callMain("write64", [.i32(common), .i64(UInt64(500 + roundIndex))])
            let round = try pool.run("write64") { worker, round in
                [.i32(UInt32(slots + 8 * worker)), .i64(UInt64(100 * (round + 1) + worker))]
            }
            if inPlace { #expect(round.remappedInstances == [], "round \(roundIndex) in \(pool.trackingMode)") }
            try Self.expectEveryInstanceEqualsTheSnapshot(pool, "round \(roundIndex)")
            for worker in 0..<3 {
                #expect(try snapshotInt64(zygote.snapshot, at: slots + 8 * worker) == Int64(100 * (roundIndex + 1) + worker))
            }
            #expect(try snapshotInt64(zygote.snapshot, at: Int(common)) == Int64(500 + roundIndex))
            // Each round reports exactly its own writes, one page per instance: a restore that left
            // a copy behind, or a stale saved copy (`compare`), would add pages.
            #expect(round.dirtyPageCounts == [1, 1, 1, 1], "round \(roundIndex)")
        }
    }

    @Test func aJoinRestoresWorkersInPlaceDiscardingWhatTheHostWroteIntoThem() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 2)
        let common = UInt32(try pool.mainInteger("common_address"))
        // Writes into a worker between rounds are not the worker's round: the join drops them.
        try pool.workers[1].call("write64", [.i32(common), .i64(42)])
        try pool.callMain("write64", [.i32(common + 8), .i64(43)])
        let joined = try pool.join()
        if Self.restoresInPlace(pool.trackingMode) { #expect(joined.remappedInstances == []) }
        #expect(try snapshotInt64(zygote.snapshot, at: Int(common)) == 1000, "the worker's write was not merged")
        #expect(try snapshotInt64(zygote.snapshot, at: Int(common) + 8) == 43, "the main instance's was")
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the join")
    }

    @Test func aWorkerTheHostRestoredItselfIsRemappedAtTheJoinWithoutFailingIt() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 2)
        let common = UInt32(try pool.mainInteger("common_address"))
        try pool.workers[0].call("write64", [.i32(common), .i64(7)])
        try zygote.restore(pool.workers[0])  // a remap behind the pool's back: its tracker must be reset
        try pool.callMain("write64", [.i32(common), .i64(8)])
        let joined = try pool.join()
        #expect(joined.remappedInstances.contains(1), "worker 0 could only be remapped")
        #expect(try snapshotInt64(zygote.snapshot, at: Int(common)) == 8)
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the join")
        let round = try pool.run("write64") { worker, _ in [.i32(common + 8 * UInt32(worker + 1)), .i64(1)] }
        #expect(round.dirtyPageCounts == [0, 1, 1], "worker 0 is tracked again")
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the next round")
    }

    @Test func growthRemapsEveryInstanceOnceAndLaterRoundsAreInPlaceAgain() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 2)
        let before = zygote.snapshot.size
        let grown = try pool.run("grow_and_write") { worker, _ in [.i32(worker == 0 ? 1 : 0), .i64(9)] }
        #expect(grown.remappedInstances == [0, 1, 2], "the snapshot grew: every instance is mapped again at the new size")
        #expect(zygote.snapshot.size == before + WasmProgram.wasmPageSize)
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the growing round")
        let next = try pool.run("write64") { worker, _ in [.i32(UInt32(before + 8 * worker)), .i64(UInt64(worker + 1))] }
        if Self.restoresInPlace(pool.trackingMode) { #expect(next.remappedInstances == []) }
        #expect(try snapshotInt64(zygote.snapshot, at: before + 8) == 2)
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the round after growth")
    }

    @Test func aTrappedWorkerIsReplacedAndTheOthersRestoredToTheUnchangedSnapshot() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 3)
        let before = try zygote.snapshot.read(at: 0, count: zygote.snapshot.size)
        let victim = pool.workers[2]
        #expect(throws: WasmWorkerFailure.self) {
            try pool.run("trap_if") { worker, _ in [.i32(UInt32(worker)), .i32(2)] }
        }
        #expect(try zygote.snapshot.read(at: 0, count: zygote.snapshot.size) == before, "nothing of the round merged")
        #expect(pool.workers[2] !== victim, "the trapped worker is a fresh fork")
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the failed round")
        // The pool goes on: the next round merges and restores as usual.
        let round = try pool.run("add") { _, _ in [.i64(5)] }
        #expect(round.dirtyPageCounts.count == 4)
        try Self.expectEveryInstanceEqualsTheSnapshot(pool, "the round after the failure")
    }
}
