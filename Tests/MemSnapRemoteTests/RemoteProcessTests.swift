import Foundation
import MemSnap
import MemSnapRemote
import MemSnapTestSupport
import Testing

/// Real processes: `memsnap serve` hosts on loopback addresses, this process as the main host.
@Suite("Fork/join across memsnap serve processes on loopback",
       .enabled(if: MemsnapExecutable.path != nil, Comment(rawValue: MemsnapExecutable.notBuiltReason)),
       .timeLimit(.minutes(3)))
struct RemoteProcessTests {
    @Test func threeHostsAddUpASumRegionOverManyRoundsExactly() async throws {
        let second = try ServerProcess(address: "127.0.0.2"), third = try ServerProcess(address: "127.0.0.3")
        let snapshot = try Snapshot(size: 64 << 20, maxSize: 128 << 20)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 16 * 8, dataType: .int64, operation: .sum))
        let workers = try DistributedWorkers(snapshot: snapshot, key: "reduction", localWorkers: 2,
                                             remote: [.init(host: try second.host(), workers: 2), .init(host: try third.host(), workers: 3)])
        workers.register("memsnap.add-index", body: StandardWorkerBodies.addIndex)
        let rounds = 25
        for round in 1...rounds {
            let report = try await workers.run("memsnap.add-index", arguments: StandardWorkerBodies.arguments(UInt32(16)))
            #expect(report.pushes == (round == 1 ? ["whole", "whole"] : ["update", "update"]), "round \(round)")
        }
        let perRound = Int64((1...7).reduce(0, +))
        for slot in 0..<16 {
            #expect(snapshot.withUnsafeBytes { $0.load(fromByteOffset: slot * 8, as: Int64.self) } == Int64(rounds) * perRound)
        }
        for index in 0..<7 {
            #expect(snapshot.withUnsafeBytes { $0.load(fromByteOffset: 4096 + 8 * index, as: UInt64.self) } == UInt64(index) | 0xAB00)
        }
    }

    @Test func aPushKilledHalfWayLeavesNothingAndResumesWithTheMissingFramesOnly() async throws {
        let server = try ServerProcess(address: "127.0.0.4")
        let host = try server.host()
        let snapshot = try Snapshot(size: 32 << 20)
        try snapshot.update(at: 0, count: 32 << 20) { SyntheticHeap(seed: 11).fill($0) }
        var options = RemoteHost.PushOptions()
        options.pushID = "killed-push"
        options.failAfterFrames = 10
        await #expect(throws: MemSnapError.self) { try await host.push(snapshot, as: "heap", epoch: 1, options: options) }
        #expect(try await host.info().snapshots.isEmpty, "nothing visible")
        options.failAfterFrames = nil
        let report = try await host.push(snapshot, as: "heap", epoch: 1, options: options)
        #expect(report.framesSent == report.frameCount - 10)
        #expect(try await host.info().snapshots == [.init(key: "heap", epoch: 1, size: 32 << 20, maxSize: 32 << 20)])
    }

    @Test func aServerKilledMidBatchFailsTheRoundNamingItAndLeavesTheSnapshotUnchanged() async throws {
        let doomed = try ServerProcess(address: "127.0.0.5")
        let snapshot = try Snapshot(size: 4 << 20)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .sum))
        let workers = try DistributedWorkers(snapshot: snapshot, key: "heap", localWorkers: 1, remote: [.init(host: try doomed.host(), workers: 2)])
        workers.register("memsnap.sleep", body: StandardWorkerBodies.sleep)
        try await workers.run("memsnap.sleep", arguments: StandardWorkerBodies.arguments(UInt32(1)))
        let before = snapshot.withUnsafeBytes { [UInt8]($0) }
        Task.detached { try? await Task.sleep(for: .milliseconds(400)); doomed.kill() }
        let error = await #expect(throws: (any Error).self) {
            try await workers.run("memsnap.sleep", arguments: StandardWorkerBodies.arguments(UInt32(3000)))
        }
        #expect("\(error.map { "\($0)" } ?? "")".contains("127.0.0.5:\(doomed.port)"), "the error names the host")
        let unchanged = snapshot.withUnsafeBytes { [UInt8]($0) } == before
        #expect(unchanged, "nothing of the failed round was merged")
    }

    @Test func aWrongTokenIsRefused() async throws {
        let server = try ServerProcess(address: "127.0.0.6")
        let error = await #expect(throws: MemSnapError.self) { _ = try await server.host(token: "not-the-token").info() }
        #expect(error?.description.contains("the server refused the credentials") == true)
        #expect(try await server.host().info().workerBodies.contains("memsnap.add-index"))
    }
}
