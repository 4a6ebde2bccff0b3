import MemSnap
import MemSnapWasm
import Testing
import WasmKit

@Suite("A trapping worker fails its round cleanly", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmTrapTests {
    static let traps = ["trap_if", "out_of_bounds_if"]

    @Test(arguments: traps)
    func theRoundIsDiscardedTheSnapshotIsUnchangedAndTheNextRoundWorks(function: String) throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 4)
        try pool.run("add") { _, _ in [.i64(1)] }
        let before = try zygote.snapshot.read(at: 0, count: zygote.snapshot.size)
        let trapped = pool.workers[2]
        do {
            try pool.run(function) { worker, _ in [.i32(UInt32(worker)), .i32(2)] }
            Issue.record("the round should have failed")
        } catch let failure as WasmWorkerFailure {
            #expect(failure.worker == 2)
            #expect(failure.round == 2, "the pool's second round")
            let trap = try #require(failure.underlying as? WasmTrap)
            #expect(trap.function == function && trap.instance == "worker 2")
            #expect("\(failure)".contains("the round was discarded"))
        }
        #expect(try zygote.snapshot.read(at: 0, count: zygote.snapshot.size) == before,
                "nothing of the round was merged: not even the workers that finished")
        #expect(pool.workers[2] !== trapped, "the trapped worker was replaced by a fresh fork")
        let touched = Int(try pool.mainInteger("touched_address"))
        for instance in pool.workers {
            #expect(try instance.integer("read64", [.i32(UInt32(touched))]) == 0, "\(instance.label) was restored")
            #expect(!instance.hasTrapped)
        }
        try pool.run("add") { _, _ in [.i64(1)] }
        #expect(try pool.mainInteger("result") == 8, "two good rounds of 4 workers; the failed one left no trace")
    }

    @Test func workersThatGrewInAFailedRoundAreReplacedAtTheSnapshotsSize() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 3)
        let size = zygote.snapshot.size
        let before = try zygote.snapshot.read(at: 0, count: size)
        // Every worker grows by 3 pages; worker 1 then traps.
        #expect(throws: WasmWorkerFailure.self) {
            try pool.run("grow_then_trap_if") { worker, _ in [.i32(UInt32(worker)), .i32(1), .i32(3)] }
        }
        #expect(zygote.snapshot.size == size, "the failed round's growth was not merged")
        #expect(try zygote.snapshot.read(at: 0, count: size) == before)
        for instance in [pool.main] + pool.workers {
            #expect(instance.memoryByteCount == size, "\(instance.label) is back at the snapshot's size (a fresh fork)")
        }
        // The same growth without the trap merges, from every worker: the last one's mark wins.
        try pool.run("grow_then_trap_if") { worker, _ in [.i32(UInt32(worker)), .i32(99), .i32(3)] }
        #expect(zygote.snapshot.size == size + 3 * WasmProgram.wasmPageSize)
        #expect(try snapshotInt64(zygote.snapshot, at: size) == 3, "worker 2's extension is applied last")
    }

    @Test func aTrapInTheMainInstanceReplacesItWithAFreshFork() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 1)
        try pool.callMain("add", [.i64(3)])
        #expect(throws: WasmTrap.self) { try pool.callMain("trap_if", [.i32(0), .i32(0)]) }
        #expect(try pool.mainInteger("result") == 0, "main's unjoined writes are gone with it")
        try pool.join()
        #expect(try pool.mainInteger("result") == 0)
    }
}
