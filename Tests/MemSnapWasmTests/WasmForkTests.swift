import MemSnap
import MemSnapTestSupport
import MemSnapWasm
import Testing
import WasmKit

@Suite("WebAssembly instances fork from a zygote's snapshot", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmForkTests {
    @Test func theZygoteRunsOnceAndForksStartFromItsMemoryWithoutRunningItAgain() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let first = try zygote.fork()
        let second = try zygote.fork()
        for fork in [first, second] {
            #expect(try fork.integer("zygote_run_count") == 1, "the zygote ran once, before the snapshot")
            #expect(try fork.integer("read64", [.i32(UInt32(try fork.integer("common_address")))]) == 1000)
            #expect(fork.memory.isAdopted)
            #expect(fork.memoryByteCount == zygote.snapshot.size)
        }
    }

    @Test func aForksWritesStayPrivateAndRestoreDiscardsThem() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let one = try zygote.fork(), two = try zygote.fork()
        let common = UInt32(try one.integer("common_address"))
        try one.call("write64", [.i32(common), .i64(7)])
        #expect(try one.integer("read64", [.i32(common)]) == 7)
        #expect(try two.integer("read64", [.i32(common)]) == 1000, "another fork does not see it")
        #expect(try snapshotInt64(zygote.snapshot, at: Int(common)) == 1000, "nor does the snapshot")
        try zygote.restore(one)
        #expect(try one.integer("read64", [.i32(common)]) == 1000, "restore is the snapshot again")
    }

    @Test(arguments: [2, 4, 16])
    func workersNeverSeeEachOthersWritesNorReachTheSnapshotBeforeTheJoin(workers: Int) throws {
        let barrier = Barrier(parties: workers)
        let seenDuringRound = Locked<[Int64]>([])
        let program = try probeProgram { _ in
            // Every worker has written its marks when the barrier opens, then each reads.
            barrier.arriveAndWait()
            seenDuringRound.withLock { $0.append(1) }
        }
        let zygote = try WasmZygote(program: program)
        let pool = try WasmWorkers(zygote: zygote, count: workers)
        let commonAddress = Int(try pool.mainInteger("common_address"))
        let slotsAddress = Int(try pool.mainInteger("slots_address"))
        let round = try pool.run("isolate")
        #expect(round.results.map { $0.first?.integer } == Array(repeating: 0, count: workers),
                "each worker saw only its own writes (0), never another's (1 + worker) or a changed common (-1)")
        #expect(seenDuringRound.withLock { $0.count } == workers)
        // After the join: every worker's slot (bytewise, disjoint) and the last writer's common.
        for worker in 0..<workers {
            #expect(try snapshotInt64(zygote.snapshot, at: slotsAddress + 8 * worker) == Int64(worker + 1))
        }
        #expect(try snapshotInt64(zygote.snapshot, at: commonAddress) == Int64(workers),
                "main first, then workers by index: the highest index writes last")
    }

    @Test func nothingAWorkerWritesReachesTheSnapshotUntilTheJoin() throws {
        let snapshotBox = Locked<Snapshot?>(nil)
        let unchanged = Locked<[Bool]>([])
        let original = Locked<[UInt8]>([])
        let barrier = Barrier(parties: 4)
        let program = try probeProgram { _ in
            barrier.arriveAndWait()
            guard let snapshot = snapshotBox.withLock({ $0 }),
                  let bytes = try? snapshot.read(at: 0, count: snapshot.size) else { return }
            unchanged.withLock { $0.append(bytes == original.withLock { $0 }) }
        }
        let zygote = try WasmZygote(program: program)
        snapshotBox.withLock { $0 = zygote.snapshot }
        original.withLock { $0 = (try? zygote.snapshot.read(at: 0, count: zygote.snapshot.size)) ?? [] }
        let pool = try WasmWorkers(zygote: zygote, count: 4)
        try pool.run("isolate")
        #expect(unchanged.withLock { $0 } == [true, true, true, true],
                "while all four workers had written, the snapshot was byte for byte the zygote's")
    }
}
