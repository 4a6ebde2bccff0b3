import MemSnap
import MemSnapWasm
import Testing
import WasmKit

/// faabric's repeated reduction and the other guests' workloads: exact results over many rounds.
@Suite("WebAssembly workers merge exactly, round after round", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmReductionTests {
    @Test(arguments: [1, 4, 16])
    func everyWorkerAddsToSharedSumsAndTheTotalsAreExact(workers: Int) throws {
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try WasmGuest.reduction.program()), count: workers)
        let rounds = 25
        for round in 0..<rounds {
            let report = try pool.run("work")
            #expect(report.number == round + 1)
            // Each worker saw the merged count of the rounds before, plus its own 1.
            #expect(report.results.map { $0.first?.integer } == Array(repeating: Int64(round * workers + 1), count: workers))
        }
        let n = Int64(workers), r = Int64(rounds)
        #expect(try pool.mainInteger("result") == r * n)
        #expect(try pool.mainInteger("index_total") == r * n * (n - 1) / 2)
        #expect(try pool.mainInteger("weighted_total") == r * 3 * n * (n + 1) / 2)
        #expect(try pool.callMain("halves_total").first?.double == Double(r * n) * 0.5)
        #expect(try pool.mainInteger("highest_value") == 10 * (n - 1) + (r - 1))
        for worker in 0..<workers {
            #expect(try pool.mainInteger("visits_of", [.i32(UInt32(worker))]) == r, "worker \(worker)'s slot")
        }
        #expect(try pool.mainInteger("visits_of", [.i32(UInt32(workers))]) == (workers < 64 ? 0 : -1))
    }

    @Test(arguments: [1, 3, 16])
    func theHistogramsBinsSumToExactlyTheHostsCounts(workers: Int) throws {
        let zygote = try WasmZygote(program: try WasmGuest.histogram.program())
        let pool = try WasmWorkers(zygote: zygote, count: workers)
        let values = Int(try pool.mainInteger("value_count"))
        var expected = [Int64](repeating: 0, count: 64)
        var random = SplitMix64(seed: 0x6869_7374)
        for _ in 0..<values { expected[Int(random.next() >> 58)] += 1 }
        let rounds = 3
        for _ in 0..<rounds {
            let report = try pool.run("work")
            #expect(report.results.compactMap { $0.first?.integer }.reduce(0, +) == Int64(values))
        }
        for bin in 0..<64 {
            #expect(try pool.mainInteger("bin", [.i32(UInt32(bin))]) == Int64(rounds) * expected[bin], "bin \(bin)")
        }
        #expect(try pool.mainInteger("result") == Int64(rounds * values))
    }

    @Test func theMonteCarloCountsAreExactlyWhatTheHostComputes() throws {
        let workers = 4, rounds = 3
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try WasmGuest.pi.program()), count: workers)
        let samples = Int(try pool.mainInteger("samples_per_worker"))
        var expectedHits: Int64 = 0
        for round in 0..<rounds {
            let report = try pool.run("work")
            for worker in 0..<workers {
                var random = SplitMix64(seed: UInt64(round) << 32 | UInt64(worker))
                var hits: Int64 = 0
                for _ in 0..<samples {
                    let x = random.next() >> 33, y = random.next() >> 33
                    if x * x + y * y < 1 << 62 { hits += 1 }
                }
                #expect(report.results[worker].first?.integer == hits, "round \(round), worker \(worker)")
                expectedHits += hits
            }
        }
        #expect(try pool.mainInteger("hit_count") == expectedHits)
        #expect(try pool.mainInteger("sample_count") == Int64(rounds * workers * samples))
        let estimate = try #require(try pool.callMain("result").first?.double)
        #expect(estimate == 4 * Double(expectedHits) / Double(rounds * workers * samples))
        #expect(abs(estimate - Double.pi) < 0.05)
    }

    @Test func theMainInstancesWritesMergeFirstAndItSeesTheMergedSnapshot() throws {
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try probeProgram()), count: 3)
        try pool.callMain("add", [.i64(100)])
        try pool.run("add") { worker, _ in [.i64(UInt64(worker + 1))] }
        #expect(try pool.mainInteger("result") == 100 + 1 + 2 + 3, "main's and every worker's additions")
        try pool.callMain("add", [.i64(5)])
        let joined = try pool.join()
        #expect(joined.dirtyPageCounts.count == 1)
        #expect(try snapshotInt64(pool.snapshot, at: Int(try pool.mainInteger("shared_sum_address"))) == 111)
    }
}
