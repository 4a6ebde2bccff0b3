import Foundation
import MemSnap
@testable import MemSnapRemote
import MemSnapTestSupport
import Testing

@Suite("Fork/join across hosts (in-process servers)")
struct DistributedWorkersTests {
    /// The sum region at 0 gains (1 + 2 + ... + n) per round, whichever host each worker ran on.
    @Test func aSumRegionAddsUpAcrossEveryHostOverManyRoundsAndUpdatesCarryOnlyChanges() async throws {
        let first = try InProcessCluster(), second = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 256)
        let workers = try DistributedWorkers(snapshot: snapshot, key: "heap", localWorkers: 2,
                                             remote: [.init(host: first.host, workers: 3), .init(host: second.host, workers: 2)])
        workers.register("add-index", body: TestBodies.addIndex)
        let rounds = 12
        var pushes: [[String]] = []
        for _ in 0..<rounds { pushes.append(try await workers.run("add-index").pushes) }
        #expect(snapshot.withUnsafeBytes { $0.load(as: Int64.self) } == Int64(rounds * (1...7).reduce(0, +)))
        for index in 0..<7 {
            #expect(snapshot.withUnsafeBytes { $0.load(fromByteOffset: 4096 + 8 * index, as: UInt64.self) } == UInt64(index) | 0xAB00,
                    "worker \(index)'s bytewise write reached the snapshot")
        }
        #expect(pushes[0] == ["whole", "whole"] && pushes.dropFirst().allSatisfy { $0 == ["update", "update"] })
        for cluster in [first, second] {
            let held = await cluster.server.store.hosted("heap")
            #expect(held?.epoch == UInt64(rounds - 1), "every round but the last changed what the remote holds")
        }
    }

    @Test func aRemoteWorkerThatThrowsFailsTheRoundAndTheSnapshotIsUnchanged() async throws {
        let remote = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 64)
        let workers = try DistributedWorkers(snapshot: snapshot, key: "heap", localWorkers: 1, remote: [.init(host: remote.host, workers: 2)])
        workers.register("add-index", body: TestBodies.addIndex)
        workers.register("fail-in-worker-one", body: TestBodies.failInWorkerOne)
        try await workers.run("add-index")
        let before = bytes(of: snapshot)
        let failure = await #expect(throws: RemoteHost.RemoteWorkerFailure.self) { try await workers.run("fail-in-worker-one") }
        #expect(failure?.worker == 1 && failure?.host == "in-process")
        let unchanged = bytes(of: snapshot) == before
        #expect(unchanged, "nothing of the failed round was merged")
        let report = try await workers.run("add-index")
        #expect(report.pushes == ["current"], "the host was fine: no push needed")
        #expect(snapshot.withUnsafeBytes { $0.load(as: Int64.self) } == 12)
    }

    @Test func theMainMemorysWritesMergeFirstAndReachTheRemotesNextRound() async throws {
        let remote = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 64)
        let workers = try DistributedWorkers(snapshot: snapshot, key: "heap", localWorkers: 0, remote: [.init(host: remote.host, workers: 2)])
        workers.mainMemory.withUnsafeMutableBytes { $0.storeBytes(of: 100, as: Int64.self) }
        workers.mainMemory.withUnsafeMutableBytes { $0.storeBytes(of: 0x77, toByteOffset: 9000, as: UInt8.self) }
        try await workers.run("add-index")
        #expect(snapshot.withUnsafeBytes { $0.load(as: Int64.self) } == 103)
        try await workers.run("add-index")
        #expect(snapshot.withUnsafeBytes { $0.load(as: Int64.self) } == 106)
        let held = try #require(await remote.server.store.hosted("heap"))
        #expect(try held.snapshot.read(at: 9000, count: 1) == [0x77], "the remote got the main memory's write by update")
    }

    @Test func aRemoteWorkerThatGrowsItsMemoryGrowsTheSnapshotThroughAnExtensionDiff() async throws {
        let grow: BatchWorkerBody = { worker in
            try worker.memory.grow(to: 20 * Page.size)
            worker.memory.withUnsafeMutableBytes { $0.storeBytes(of: 0xFEED, toByteOffset: $0.count - 8, as: UInt64.self) }
        }
        let remote = try InProcessCluster(bodies: ["grow": grow])
        let snapshot = try patternSnapshot(pages: 16, maxPages: 32)
        let workers = try DistributedWorkers(snapshot: snapshot, key: "heap", localWorkers: 0, remote: [.init(host: remote.host, workers: 1)])
        try await workers.run("grow")
        #expect(snapshot.size == 20 * Page.size)
        #expect(try snapshot.read(at: 20 * Page.size - 8, count: 8) == [0xED, 0xFE, 0, 0, 0, 0, 0, 0])
    }
}
