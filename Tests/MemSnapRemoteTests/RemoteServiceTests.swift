import Foundation
import GRPCCore
import MemSnap
import MemSnapCheckpoint
@testable import MemSnapRemote
import MemSnapTestSupport
import Testing

@Suite("Remote snapshot service over the in-process transport")
struct RemoteServiceTests {
    /// The server's copy of `key`, as bytes, with its epoch and merge regions.
    static func held(_ cluster: InProcessCluster, _ key: String) async -> (bytes: [UInt8], epoch: UInt64, regions: [MergeRegion], maxSize: Int)? {
        guard let hosted = await cluster.server.store.hosted(key) else { return nil }
        return (bytes(of: hosted.snapshot), hosted.epoch, hosted.snapshot.mergeRegions, hosted.snapshot.maxSize)
    }

    @Test(arguments: [CheckpointCodec.lz4, .zstd, .none])
    func aWholePushArrivesByteForByteWithItsSizeAndMergeRegions(codec: CheckpointCodec) async throws {
        let cluster = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 700)
        try snapshot.write([1, 2, 3], at: 700 * Page.size - 3)  // a last chunk that is not full
        var options = RemoteHost.PushOptions()
        options.codec = codec
        options.chunkSize = 64 << 10
        let report = try await cluster.host.push(snapshot, as: "heap", epoch: 7, options: options)
        #expect(report.chunkCount == 44 && report.framesSent == report.frameCount && report.frameCount < 44, "all-zero chunks are not sent")
        let held = try #require(await Self.held(cluster, "heap"))
        let same = held.bytes == bytes(of: snapshot)
        #expect(same, "the server's copy is byte for byte the snapshot")
        #expect(held.epoch == 7 && held.maxSize == snapshot.maxSize && held.regions == snapshot.mergeRegions)
        let info = try await cluster.host.info()
        #expect(info.snapshots == [.init(key: "heap", epoch: 7, size: 700 * Page.size, maxSize: 1400 * Page.size)])
        #expect(info.workerBodies.contains("add-index"))
    }

    @Test func aPushThatDiesHalfWayLeavesNothingVisibleAndResumesWithTheMissingFramesOnly() async throws {
        let cluster = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 2048)
        var options = RemoteHost.PushOptions()
        options.chunkSize = 64 << 10
        options.pushID = "resumable-1"
        options.failAfterFrames = 5
        let failed = await #expect(throws: MemSnapError.self) { try await cluster.host.push(snapshot, as: "heap", epoch: 1, options: options) }
        #expect(failed?.description.contains("stopped after 5 frames") == true, "\(String(describing: failed))")
        #expect(await Self.held(cluster, "heap") == nil, "nothing visible")
        options.failAfterFrames = nil
        let resumed = try await cluster.host.push(snapshot, as: "heap", epoch: 1, options: options)
        #expect(resumed.framesSent == resumed.frameCount - 5, "only the missing frames are sent")
        let same = await Self.held(cluster, "heap")?.bytes == bytes(of: snapshot)
        #expect(same, "the resumed push is byte for byte the snapshot")
    }

    @Test func anUpdateMovesTheEpochAtomicallyAndAWrongBaseChangesNothing() async throws {
        let cluster = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 64, maxPages: 256)
        try await cluster.host.push(snapshot, as: "heap", epoch: 1)
        try snapshot.write([UInt8](repeating: 0xEE, count: 5000), at: 10_000)
        try snapshot.write([9, 9], at: 100 * Page.size)  // grows the snapshot
        try snapshot.addMergeRegion(MergeRegion(offset: 8, length: 8, dataType: .int64, operation: .max))
        let diffs = snapshot.takeChangedRanges().map { range in
            SnapshotDiff(offset: range.lowerBound, dataType: .raw, operation: .bytewise,
                         bytes: (try? snapshot.read(at: range.lowerBound, count: range.count)) ?? [])
        }
        let refused = await #expect(throws: MemSnapError.self) {
            try await cluster.host.pushUpdate(key: "heap", from: 4, to: 5, diffs: diffs, mergeRegions: snapshot.mergeRegions)
        }
        #expect(refused?.description.contains("failedPrecondition") == true && refused?.description.contains("holds epoch 1") == true)
        #expect(await Self.held(cluster, "heap")?.epoch == 1)
        try await cluster.host.pushUpdate(key: "heap", from: 1, to: 2, diffs: diffs, mergeRegions: snapshot.mergeRegions)
        let held = try #require(await Self.held(cluster, "heap"))
        let same = held.bytes == bytes(of: snapshot)
        #expect(held.epoch == 2 && same && held.regions == snapshot.mergeRegions)
    }

    @Test func anUpdateTheSnapshotCannotTakeIsRefusedAndNothingOfItIsApplied() async throws {
        let cluster = try InProcessCluster()
        let snapshot = try patternSnapshot(pages: 8, maxPages: 8)
        try await cluster.host.push(snapshot, as: "heap", epoch: 1)
        let before = await Self.held(cluster, "heap")?.bytes
        let diffs = [SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3]),
                     SnapshotDiff(offset: 9 * Page.size, dataType: .raw, operation: .bytewise, bytes: [4])]  // past maxSize
        await #expect(throws: MemSnapError.self) {
            try await cluster.host.pushUpdate(key: "heap", from: 1, to: 2, diffs: diffs, mergeRegions: [])
        }
        let held = await Self.held(cluster, "heap")
        let unchanged = held?.bytes == before
        #expect(held?.epoch == 1 && unchanged, "all or nothing")
    }

    @Test func aWorkersDiffsLargerThanAMessageAreSplitAndArriveWhole() async throws {
        let rewrite: BatchWorkerBody = { worker in  // 6 MiB of changed bytes: a dozen batches at least
            worker.memory.withUnsafeMutableBytes { memory in
                _ = (memory.baseAddress! + 2 * Page.size).initializeMemory(as: UInt8.self, repeating: 0x5C, count: 6 << 20)
            }
        }
        let cluster = try InProcessCluster(bodies: ["rewrite": rewrite]) { $0.limits.maxMessageBytes = 1 << 20 }
        let snapshot = try patternSnapshot(pages: 2048)
        var options = RemoteHost.PushOptions()
        options.chunkSize = 256 << 10
        try await cluster.host.push(snapshot, as: "heap", epoch: 1, options: options)
        let batch = try await cluster.host.runBatch(key: "heap", epoch: 1, body: "rewrite", workers: [3], workerCount: 4)
        let diffs = try #require(batch.diffs[3])
        try snapshot.apply(diffs)
        #expect(try snapshot.read(at: 2 * Page.size, count: 6 << 20).allSatisfy { $0 == 0x5C })
        #expect(batch.dirtyPages[3] == (6 << 20) / Page.size)
    }

    @Test func aBatchRefusesWhatItCannotRunAndNamesWhy() async throws {
        let cluster = try InProcessCluster { $0.maxWorkersPerBatch = 4 }
        let snapshot = try patternSnapshot(pages: 16)
        try await cluster.host.push(snapshot, as: "heap", epoch: 3)
        func refusal(_ call: () async throws -> Void) async -> String {
            do {
                try await call()
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "heap", epoch: 3, body: "no-such", workers: [0], workerCount: 1) }
            .contains("no worker body of that name"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "heap", epoch: 2, body: "add-index", workers: [0], workerCount: 1) }
            .contains("holds epoch 3"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "other", epoch: 3, body: "add-index", workers: [0], workerCount: 1) }
            .contains("no such snapshot"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "heap", epoch: 3, body: "add-index", workers: [0, 1, 2, 3, 4], workerCount: 5) }
            .contains("at most 4 here"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "heap", epoch: 3, body: "add-index", workers: [0, 0], workerCount: 2) }
            .contains("distinct"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "heap", epoch: 3, body: "add-index", workers: [0], workerCount: 1,
                                                                     arguments: [UInt8](repeating: 0, count: 2 << 20)) }
            .contains("arguments"))
        #expect(await refusal { _ = try await cluster.host.runBatch(key: "", epoch: 3, body: "add-index", workers: [0], workerCount: 1) }
            .contains("the key is empty"))
    }

    @Test func aBodyThatThrowsFailsTheBatchWithTheWorkerAndItsMessage() async throws {
        let cluster = try InProcessCluster()
        try await cluster.host.push(try patternSnapshot(pages: 16), as: "heap", epoch: 1)
        let failure = await #expect(throws: RemoteHost.RemoteWorkerFailure.self) {
            _ = try await cluster.host.runBatch(key: "heap", epoch: 1, body: "fail-in-worker-one", workers: [0, 1, 2], workerCount: 3)
        }
        #expect(failure?.worker == 1 && failure?.message == "worker one refuses" && failure?.host == "in-process")
    }

    @Test func aWrongTokenIsRefusedOnEveryCall() async throws {
        let cluster = try InProcessCluster(token: "right", clientToken: "wrong")
        let error = await #expect(throws: MemSnapError.self) { _ = try await cluster.host.info() }
        #expect(error?.description.contains("the server refused the credentials") == true)
        await #expect(throws: MemSnapError.self) { try await cluster.host.push(try patternSnapshot(pages: 4), as: "heap", epoch: 1) }
        #expect(await Self.held(cluster, "heap") == nil)
    }
}
