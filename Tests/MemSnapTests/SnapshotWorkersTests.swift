import MemSnap
import MemSnapTestSupport
import Testing

@Suite("SnapshotWorkers: fork/join from one snapshot")
struct SnapshotWorkersTests {
    struct WorkerError: Error {}

    func loadInt32(_ snapshot: Snapshot, at offset: Int) throws -> Int32 {
        try snapshot.read(at: offset, count: 4).withUnsafeBytes { $0.load(as: Int32.self) }
    }

    /// Layout: two int32 sum counters on separate pages, then an array where worker i owns
    /// 16 int32 values at 2 * pageSize + 64 * i (merged bytewise by the gap filler).
    static let counterA = 0
    static let counterB = pageSize
    static let arrayStart = 2 * pageSize

    func reductionSnapshot(workers: Int) throws -> Snapshot {
        let snapshot = try Snapshot(size: 3 * pageSize, name: "reduction")
        try snapshot.addMergeRegion(MergeRegion(offset: Self.counterA, length: 4, dataType: .int32, operation: .sum))
        try snapshot.addMergeRegion(MergeRegion(offset: Self.counterB, length: 4, dataType: .int32, operation: .sum))
        return snapshot
    }

    @Test("repeated reduction: workers x 20 rounds give the exact totals and the exact array", arguments: [4, 16])
    func repeatedReduction(workerCount: Int) throws {
        let snapshot = try reductionSnapshot(workers: workerCount)
        let workers = try SnapshotWorkers(snapshot: snapshot, count: workerCount)
        let rounds = 20
        for round in 0..<rounds {
            let report = try workers.run { worker in
                worker.memory.withUnsafeMutableBytes { memory in
                    let a = memory.load(fromByteOffset: Self.counterA, as: Int32.self)
                    memory.storeBytes(of: a + Int32(worker.index + 1), toByteOffset: Self.counterA, as: Int32.self)
                    let b = memory.load(fromByteOffset: Self.counterB, as: Int32.self)
                    memory.storeBytes(of: b + Int32(round), toByteOffset: Self.counterB, as: Int32.self)
                    for slot in 0..<16 {
                        memory.storeBytes(of: Int32(round * 1000 + worker.index * 16 + slot),
                                          toByteOffset: Self.arrayStart + worker.index * 64 + slot * 4, as: Int32.self)
                    }
                }
            }
            #expect(report.dirtyPageCounts == [0] + Array(repeating: 3, count: workerCount), "round \(round)")
        }
        let perRoundA = (1...workerCount).reduce(0, +)
        #expect(try loadInt32(snapshot, at: Self.counterA) == Int32(rounds * perRoundA))
        #expect(try loadInt32(snapshot, at: Self.counterB) == Int32(workerCount * (0..<rounds).reduce(0, +)))
        for index in 0..<workerCount {
            for slot in 0..<16 {
                #expect(try loadInt32(snapshot, at: Self.arrayStart + index * 64 + slot * 4)
                        == Int32((rounds - 1) * 1000 + index * 16 + slot))
            }
        }
        let beyondArray = try snapshot.read(at: Self.arrayStart + workerCount * 64, count: 64)
        #expect(beyondArray.allSatisfy { $0 == 0 })
        // Every worker starts the next round from the merged snapshot.
        try workers.run { worker in
            let a = worker.memory.withUnsafeBytes { $0.load(fromByteOffset: Self.counterA, as: Int32.self) }
            if a != Int32(rounds * perRoundA) { throw WorkerError() }
        }
    }

    @Test func theMainThreadsOwnWritesAreFoldedIn() throws {
        let snapshot = try reductionSnapshot(workers: 2)
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 2)
        workers.mainMemory.withUnsafeMutableBytes { memory in
            memory.storeBytes(of: Int32(1000), toByteOffset: Self.counterA, as: Int32.self)
            memory[Self.arrayStart + 500] = 0xEE
        }
        let report = try workers.run { worker in
            worker.memory.withUnsafeMutableBytes { memory in
                let a = memory.load(fromByteOffset: Self.counterA, as: Int32.self)
                memory.storeBytes(of: a + 1, toByteOffset: Self.counterA, as: Int32.self)
            }
        }
        #expect(report.dirtyPageCounts == [2, 1, 1])
        #expect(try loadInt32(snapshot, at: Self.counterA) == 1002)
        #expect(try snapshot.read(at: Self.arrayStart + 500, count: 1) == [0xEE])
        #expect(workers.mainMemory.withUnsafeBytes { $0.load(fromByteOffset: Self.counterA, as: Int32.self) } == 1002,
                "the main memory is remapped onto the merged snapshot too")

        workers.mainMemory.withUnsafeMutableBytes { $0.storeBytes(of: Int32(1), toByteOffset: Self.counterB, as: Int32.self) }
        try workers.join()
        #expect(try loadInt32(snapshot, at: Self.counterB) == 1, "join merges the main memory alone")
    }

    @Test func overlappingBytewiseWritesMergeInWorkerOrder() throws {
        let snapshot = try Snapshot(size: pageSize)
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 3)
        for round in 0..<5 {
            try workers.run { worker in
                worker.memory.withUnsafeMutableBytes { $0[100] = UInt8(round * 10 + worker.index) }
            }
            #expect(try snapshot.read(at: 100, count: 1) == [UInt8(round * 10 + 2)], "the highest-numbered worker is applied last")
        }
    }

    @Test func aFailingWorkerDiscardsTheRound() throws {
        let snapshot = try reductionSnapshot(workers: 2)
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 2)
        do {
            try workers.run { worker in
                worker.memory.withUnsafeMutableBytes { $0.storeBytes(of: Int32(5), toByteOffset: Self.counterA, as: Int32.self) }
                if worker.index == 1 { throw WorkerError() }
            }
            Issue.record("expected a WorkerFailure")
        } catch let failure as SnapshotWorkers.WorkerFailure {
            #expect(failure.worker == 1)
            #expect(failure.underlying is WorkerError)
        }
        #expect(try loadInt32(snapshot, at: Self.counterA) == 0, "nothing merged")
        #expect(workers.workerMemories[0].withUnsafeBytes { $0.load(fromByteOffset: Self.counterA, as: Int32.self) } == 0,
                "workers were restored")
        try workers.run { worker in
            worker.memory.withUnsafeMutableBytes { $0.storeBytes(of: Int32(1), toByteOffset: Self.counterA, as: Int32.self) }
        }
        #expect(try loadInt32(snapshot, at: Self.counterA) == 2, "the next round works")

        // A memsnap error from the body is still the worker's failure.
        do {
            try workers.run { worker in
                if worker.index == 0 { try worker.memory.grow(to: worker.memory.maxSize + 1) }
            }
            Issue.record("expected a WorkerFailure")
        } catch let failure as SnapshotWorkers.WorkerFailure {
            #expect(failure.worker == 0)
            #expect(failure.underlying is MemSnapError)
        }
    }

    @Test func workersCanGrowTheirMemoryAndTheSnapshotGrowsWithIt() throws {
        let snapshot = try Snapshot(size: pageSize, maxSize: 8 * pageSize)
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 2)
        try workers.run { worker in
            guard worker.index == 1 else { return }
            try worker.memory.grow(to: 3 * pageSize)
            worker.memory.withUnsafeMutableBytes { $0[2 * pageSize + 7] = 0x77 }
        }
        #expect(snapshot.size == 3 * pageSize)
        #expect(try snapshot.read(at: 2 * pageSize + 7, count: 1) == [0x77])
        #expect(workers.workerMemories[0].committedSize == 3 * pageSize, "every worker sees the grown snapshot")
    }

    @Test func aWorkerThatGrowsPastTheSnapshotsMaximumFailsItsJoinAndTheNextRoundIsExact() throws {
        let snapshot = try Snapshot(size: pageSize, maxSize: 2 * pageSize, name: "bounded")
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .sum))
        // Worker memories may be larger than the snapshot can ever be.
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 3, memoryMaxSize: 8 * pageSize)
        @Sendable func addOne(_ worker: SnapshotWorkers.Worker) {
            worker.memory.withUnsafeMutableBytes { memory in
                memory.storeBytes(of: memory.load(as: Int64.self) + 1, as: Int64.self)
            }
        }
        workers.mainMemory.withUnsafeMutableBytes { $0[100] = 0x55 }  // the main memory's own write
        let error = expectMemSnapError {
            try workers.run { worker in
                addOne(worker)
                if worker.index == 1 {
                    try worker.memory.grow(to: 4 * pageSize)
                    worker.memory.withUnsafeMutableBytes { $0[3 * pageSize] = 9 }
                }
            }
        }
        #expect(error?.reason == .exceedsMaximum(what: "bytewise diff end", requested: 4 * pageSize, maximum: 2 * pageSize))
        #expect(error?.operation == "apply worker 1's diff 1 (raw bytewise at 4096, 12288 bytes) to snapshot \"bounded\"",
                "the error names the worker and its diff")
        #expect(snapshot.size == pageSize)
        #expect(try snapshot.read(at: 0, count: pageSize).allSatisfy { $0 == 0 }, "nothing of the round was merged")
        for region in [workers.mainMemory] + workers.workerMemories {
            #expect(region.committedSize == pageSize, "every region is restored to the snapshot")
            #expect(region.withUnsafeBytes { $0.allSatisfy { $0 == 0 } }, "the main memory's write is discarded with the round")
        }
        #expect(snapshot.queuedDiffCount == 0, "the join never uses the public queue")

        for round in 1...3 {
            let report = try workers.run { addOne($0) }
            #expect(report.dirtyPageCounts == [0, 1, 1, 1], "round \(round)")
            #expect(report.writtenRanges == [0..<8], "round \(round)")
            #expect(try snapshot.read(at: 0, count: 8).withUnsafeBytes { $0.load(as: Int64.self) } == Int64(3 * round),
                    "round \(round): the next rounds merge exactly")
        }
        workers.mainMemory.withUnsafeMutableBytes { $0[100] = 0x66 }
        try workers.join()
        #expect(try snapshot.read(at: 100, count: 1) == [0x66], "the main memory merges again after a failed round")
    }

    @Test func diffsQueuedByAnotherCallerAreNeitherMergedByAJoinNorLost() throws {
        let snapshot = try Snapshot(size: 2 * pageSize, name: "shared")
        let workers = try SnapshotWorkers(snapshot: snapshot, count: 2)
        let foreign = [SnapshotDiff(offset: pageSize, dataType: .raw, operation: .bytewise, bytes: [0xAA, 0xBB])]
        snapshot.queueDiffs(foreign)
        try workers.run { worker in worker.memory.withUnsafeMutableBytes { $0[worker.index] = UInt8(worker.index + 1) } }
        try workers.join()
        #expect(try snapshot.read(at: 0, count: 2) == [1, 2], "the workers' writes are merged")
        #expect(try snapshot.read(at: pageSize, count: 2) == [0, 0], "the queued batch is not part of any join")
        #expect(snapshot.queuedDiffBatches == [foreign], "and is still queued, as it was")

        // A queued batch that can never apply does not wedge the workers either.
        let impossible = [SnapshotDiff(offset: 2 * pageSize, dataType: .raw, operation: .bytewise, bytes: [1])]
        snapshot.queueDiffs(impossible)
        try workers.run { worker in worker.memory.withUnsafeMutableBytes { $0[10 + worker.index] = 7 } }
        #expect(try snapshot.read(at: 10, count: 2) == [7, 7])
        #expect(snapshot.discardQueuedDiffs() == [foreign, impossible])
    }

    @Test func badArgumentsAreErrors() throws {
        let snapshot = try Snapshot(size: pageSize)
        expectReason(.invalidArgument("need at least one worker, not 0")) { _ = try SnapshotWorkers(snapshot: snapshot, count: 0) }
    }
}
