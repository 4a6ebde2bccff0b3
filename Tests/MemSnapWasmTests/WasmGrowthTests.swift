import MemSnap
import MemSnapWasm
import Testing
import WasmKit

@Suite("Memory that grows during a round", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmGrowthTests {
    @Test func aWorkerThatGrowsItsMemoryContributesAnExtensionDiffAndEveryInstanceGrowsWithTheSnapshot() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 3)
        let before = zygote.snapshot.size
        let page = WasmProgram.wasmPageSize
        // Worker 1 grows by 2 pages and marks the new memory's first and last word; the others
        // do not grow (a 0-page grow).
        let round = try pool.run("grow_and_write") { worker, _ in
            [.i32(worker == 1 ? 2 : 0), .i64(0x5EED)]
        }
        #expect(round.results.map { $0.first?.integer } == Array(repeating: Int64(before / page), count: 3),
                "memory.grow returned the old size in pages")
        #expect(zygote.snapshot.size == before + 2 * page, "the extension diff grew the snapshot")
        #expect(round.snapshotSize == before + 2 * page)
        #expect(round.writtenRanges.contains { $0.upperBound == before + 2 * page })
        #expect(try snapshotInt64(zygote.snapshot, at: before) == 0x5EED)
        #expect(try snapshotInt64(zygote.snapshot, at: before + 2 * page - 8) == 0x5EED)
        #expect(try zygote.snapshot.read(at: before + 8, count: 2 * page - 16).allSatisfy { $0 == 0 })
        for instance in [pool.main] + pool.workers {
            #expect(instance.memoryByteCount == before + 2 * page, "\(instance.label) grew to the snapshot")
            #expect(instance.memory.committedSize == before + 2 * page)
            #expect(try instance.integer("read64", [.i32(UInt32(before))]) == 0x5EED)
        }
        // The next round runs on the grown memory, and growth is tracked from then on.
        try pool.run("write64") { worker, _ in [.i32(UInt32(before + 64 + 8 * worker)), .i64(UInt64(worker + 10))] }
        for worker in 0..<3 {
            #expect(try snapshotInt64(zygote.snapshot, at: before + 64 + 8 * worker) == Int64(worker + 10))
        }
    }

    @Test func theMainInstanceMayGrowBetweenRounds() throws {
        let zygote = try WasmZygote(program: try probeProgram())
        let pool = try WasmWorkers(zygote: zygote, count: 2)
        let before = zygote.snapshot.size
        try pool.callMain("grow_and_write", [.i32(1), .i64(77)])
        #expect(pool.main.memory.committedSize == before + WasmProgram.wasmPageSize, "the adopted region followed")
        try pool.join()
        #expect(zygote.snapshot.size == before + WasmProgram.wasmPageSize)
        #expect(try snapshotInt64(zygote.snapshot, at: before) == 77)
        #expect(pool.workers.allSatisfy { $0.memoryByteCount == before + WasmProgram.wasmPageSize })
    }
}
