import Foundation
import GRPCCore
import MemSnap
import MemSnapCheckpoint

/// The handlers of `memsnap.v1.SnapshotService` (Protos/memsnap/v1/snapshot_service.proto).
/// Every value a peer sends is checked before use; a MemSnapError becomes a status with its text.
struct SnapshotService: Memsnap_V1_SnapshotService.SimpleServiceProtocol {
    static let version = "memsnap 1 (memsnap.v1)"
    static let maxKeyBytes = 256
    static let maxPushIDBytes = 64

    let store: SnapshotStore
    let bodies: [String: BatchWorkerBody]
    /// Calls in flight and the end of the last, for a server that exits when idle.
    let activity: ServerActivity
    var configuration: SnapshotServerConfiguration { store.configuration }

    // MARK: Info

    func getServerInfo(request: Memsnap_V1_GetServerInfoRequest, context: ServerContext) async throws -> Memsnap_V1_ServerInfo {
        let summaries = await store.summaries()
        return .with { info in
            info.version = Self.version
            info.maxMessageBytes = UInt64(configuration.limits.maxMessageBytes)
            info.maxSnapshotBytes = UInt64(configuration.maxSnapshotBytes)
            info.workerBodies = bodies.keys.sorted()
            info.snapshots = summaries.map { summary in
                .with { $0.key = summary.key; $0.epoch = summary.epoch; $0.size = UInt64(summary.size); $0.maxSize = UInt64(summary.maxSize) }
            }
        }
    }

    // MARK: Whole pushes

    func pushSnapshot(
        request: RPCAsyncSequence<Memsnap_V1_PushSnapshotMessage, any Error>, context: ServerContext
    ) async throws -> Memsnap_V1_PushSnapshotResult {
        try await answering {
            var messages = request.makeAsyncIterator()
            guard case .header(let wire)? = try await messages.next()?.kind else {
                throw MemSnapError("push a snapshot", .invalidArgument("a push starts with its header"))
            }
            let header = try checkedHeader(wire)
            let push = try await store.stage(header)
            var received: UInt32 = 0
            let decoders = try FrameDecodePipeline(push: push, threads: configuration.receiveThreads, window: 2 * configuration.receiveThreads)
            defer { decoders.close() }
            // Frames that arrived before the stream broke are kept for a resume: decode them first.
            func nextMessage() async throws -> Memsnap_V1_PushSnapshotMessage? {
                do {
                    return try await messages.next()
                } catch {
                    try? await decoders.drain()
                    throw error
                }
            }
            while let message = try await nextMessage() {
                switch message.kind {
                case .frame(let frame)?:
                    try await decoders.submit(frame)
                    received &+= 1
                case .commit(let commit)?:
                    try await decoders.drain()
                    guard let frames = ChunkBitmap(bytes: [UInt8](commit.frames), count: header.chunkCount) else {
                        throw MemSnapError("commit push \(header.pushID)", .invalidArgument(
                            "the frame map has \(commit.frames.count) bytes, \((header.chunkCount + 7) / 8) for \(header.chunkCount) chunks"))
                    }
                    let snapshot = try push.finish(frames: frames, imageDigest: commit.imageDigest)
                    try await store.publish(push, snapshot: snapshot)
                    return .with {
                        $0.key = header.key
                        $0.epoch = header.epoch
                        $0.imageSize = UInt64(header.imageSize)
                        $0.framesReceived = received
                    }
                case .header?, nil:
                    throw MemSnapError("push snapshot \"\(header.key)\"", .invalidArgument("only frames and a commit follow the header"))
                }
            }
            try await decoders.drain()
            throw RPCError(code: .failedPrecondition, message: "push \(header.pushID) for snapshot \"\(header.key)\" ended without a commit: "
                           + "it stays staged with \(push.received.memberCount) frames")
        }
    }

    private func checkedHeader(_ wire: Memsnap_V1_PushHeader) throws(MemSnapError) -> StagedPush.Header {
        let operation = "push snapshot \"\(TerminalText.escaped(String(wire.key.prefix(Self.maxKeyBytes))))\""
        try checkKey(wire.key, during: operation)
        guard !wire.pushID.isEmpty, wire.pushID.utf8.count <= Self.maxPushIDBytes else {
            throw MemSnapError(operation, .invalidArgument("a push id is 1 to \(Self.maxPushIDBytes) bytes"))
        }
        guard wire.maxSize <= UInt64(configuration.maxSnapshotBytes), wire.imageSize <= wire.maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "snapshot size", requested: Int(clamping: wire.maxSize),
                                                          maximum: configuration.maxSnapshotBytes))
        }
        guard let codecValue = UInt8(exactly: wire.codec), let codec = CheckpointCodec(rawValue: codecValue) else {
            throw MemSnapError(operation, .invalidArgument("unknown codec \(wire.codec)"))
        }
        guard wire.chunkSize <= UInt64(CheckpointFrames.chunkSizes.upperBound), CheckpointFrames.chunkSizes.contains(Int(wire.chunkSize)),
              Int(wire.chunkSize) % Page.size == 0, Int(wire.chunkSize) <= configuration.limits.maxMessageBytes / 2 else {
            throw MemSnapError(operation, .invalidArgument("chunk size \(wire.chunkSize) is not a page multiple from 64 KiB to 16 MiB that fits a message"))
        }
        let regions = try checkedRegions(wire.mergeRegions, maxSize: Int(wire.maxSize), during: operation)
        return StagedPush.Header(key: wire.key, epoch: wire.epoch, pushID: wire.pushID, imageSize: Int(wire.imageSize),
                                 maxSize: Int(wire.maxSize), codec: codec, chunkSize: Int(wire.chunkSize), mergeRegions: regions)
    }

    func getPushStatus(request: Memsnap_V1_GetPushStatusRequest, context: ServerContext) async throws -> Memsnap_V1_PushStatus {
        try await answering {
            guard let push = await store.stagedPush(key: request.key, pushID: request.pushID) else { return .with { $0.staged = false } }
            let received = push.received
            return .with {
                $0.staged = true
                $0.receivedFrames = Data(received.bytes)
                $0.receivedCount = UInt32(clamping: received.memberCount)
            }
        }
    }

    // MARK: Updates

    func pushUpdate(
        request: RPCAsyncSequence<Memsnap_V1_PushUpdateMessage, any Error>, context: ServerContext
    ) async throws -> Memsnap_V1_PushUpdateResult {
        try await answering {
            var messages = request.makeAsyncIterator()
            guard case .header(let header)? = try await messages.next()?.kind else {
                throw MemSnapError("update a snapshot", .invalidArgument("an update starts with its header"))
            }
            let operation = "update snapshot \"\(TerminalText.escaped(String(header.key.prefix(Self.maxKeyBytes))))\" "
                + "from epoch \(header.baseEpoch) to \(header.newEpoch)"
            try checkKey(header.key, during: operation)
            guard header.newEpoch > header.baseEpoch else {
                throw MemSnapError(operation, .invalidArgument("the new epoch must be greater than the base epoch"))
            }
            let snapshot = try await store.beginUpdate(key: header.key, baseEpoch: header.baseEpoch)
            var applied: UInt64? = nil
            do {
                let regions = try checkedRegions(header.mergeRegions, maxSize: snapshot.maxSize, during: operation)
                var diffs: [SnapshotDiff] = []
                var bytes = 0
                receiving: while let message = try await messages.next() {
                    switch message.kind {
                    case .diffBatch(let batch)?:
                        let decoded = try SnapshotDiff.decode([UInt8](batch))
                        bytes += batch.count  // each batch is below the message limit
                        guard bytes <= configuration.maxUpdateBytes else {
                            throw MemSnapError(operation, .exceedsMaximum(what: "update", requested: bytes, maximum: configuration.maxUpdateBytes))
                        }
                        diffs += decoded
                    case .commit?:
                        try snapshot.apply(diffs)
                        snapshot.clearMergeRegions()
                        for region in regions { try snapshot.addMergeRegion(region) }
                        applied = UInt64(diffs.count)
                        break receiving
                    case .header?, nil:
                        throw MemSnapError(operation, .invalidArgument("only diff batches and a commit follow the header"))
                    }
                }
                guard let applied else { throw MemSnapError(operation, .invalidArgument("the update ended without a commit; nothing was applied")) }
                await store.finishUpdate(key: header.key, snapshot: snapshot, newEpoch: header.newEpoch)
                return .with {
                    $0.key = header.key
                    $0.epoch = header.newEpoch
                    $0.diffsApplied = applied
                    $0.bytesApplied = UInt64(bytes)
                }
            } catch {
                await store.finishUpdate(key: header.key, snapshot: snapshot, newEpoch: nil)
                throw error
            }
        }
    }

    // MARK: Batches

    func runBatch(
        request: Memsnap_V1_RunBatchRequest, response: RPCWriter<Memsnap_V1_RunBatchResponse>, context: ServerContext
    ) async throws {
        try await answering {
            let start = ContinuousClock.now
            let operation = "run batch \"\(TerminalText.escaped(String(request.body.prefix(64))))\" on snapshot "
                + "\"\(TerminalText.escaped(String(request.key.prefix(Self.maxKeyBytes))))\""
            try checkKey(request.key, during: operation)
            guard let body = bodies[request.body] else {
                throw MemSnapError(operation, .invalidArgument("no worker body of that name; the server has \(bodies.keys.sorted())"))
            }
            let count = Int(request.workerCount)
            let workers = request.workers.map { Int($0) }
            guard count >= 1, !workers.isEmpty, workers.count <= configuration.maxWorkersPerBatch, Set(workers).count == workers.count,
                  workers.allSatisfy({ $0 < count }) else {
                throw MemSnapError(operation, .invalidArgument(
                    "\(workers.count) workers (at most \(configuration.maxWorkersPerBatch) here), distinct and below the batch's \(count)"))
            }
            guard request.arguments.count <= configuration.maxArgumentBytes else {
                throw MemSnapError(operation, .exceedsMaximum(what: "arguments", requested: request.arguments.count,
                                                              maximum: configuration.maxArgumentBytes))
            }
            guard let fillValue = UInt8(exactly: request.fillOperation), let fill = MergeOperation(rawValue: fillValue),
                  fill == .bytewise || fill == .xor else {
                throw MemSnapError(operation, .invalidArgument("fill operation \(request.fillOperation) is not bytewise (0) or xor (7)"))
            }
            let poolKey = SnapshotStore.PoolKey(workers: workers.count, fill: fill)
            let lease = try await store.beginBatch(key: request.key, epoch: request.epoch, pool: poolKey)
            var pool = lease.pool
            do {
                let tracking = configuration.tracking
                let arguments = [UInt8](request.arguments)
                let snapshot = lease.snapshot
                let outcome: Result<SnapshotWorkers.RoundDiffs, any Error> = try await onDedicatedThread(named: "memsnap-batch") { [pool] in
                    let workersPool = try pool ?? SnapshotWorkers(snapshot: snapshot, count: workers.count, tracking: tracking,
                                                                  options: DiffOptions(fillOperation: fill))
                    let round = Result {
                        try workersPool.runWithoutMerging { worker in
                            try body(BatchWorker(index: workers[worker.index], count: count, memory: worker.memory, arguments: arguments))
                        }
                    }
                    return PoolAndRound(pool: workersPool, round: round)
                }.unpacked(into: &pool)
                switch outcome {
                case .success(let round):
                    for (local, diffs) in round.workers.enumerated() {
                        let batches = try DiffBatching.encode(diffs, maxBytes: configuration.limits.diffBatchBytes, during: operation)
                        for (index, batch) in batches.enumerated() {
                            try await response.write(.with {
                                $0.diffs = .with {
                                    $0.worker = UInt32(workers[local])
                                    $0.diffBatch = Data(batch)
                                    $0.last = index == batches.count - 1
                                    $0.dirtyPages = UInt64(round.dirtyPageCounts[local])
                                }
                            })
                        }
                    }
                case .failure(let error):
                    let failure = error as? SnapshotWorkers.WorkerFailure
                    try await response.write(.with {
                        $0.failed = .with {
                            $0.worker = UInt32(failure.map { workers[$0.worker] } ?? workers[0])
                            $0.message = "\(failure.map { "\($0.underlying)" } ?? "\(error)")"
                        }
                    })
                }
                try await response.write(.with { $0.done = .with { $0.elapsedNanoseconds = (ContinuousClock.now - start).nanosecondCount } })
                await store.endBatch(key: request.key, snapshot: lease.snapshot, pool: pool, poolKey: poolKey)
            } catch {
                await store.endBatch(key: request.key, snapshot: lease.snapshot, pool: pool, poolKey: poolKey)
                throw error
            }
        }
    }

    // MARK: Deleting

    func deleteSnapshot(request: Memsnap_V1_DeleteSnapshotRequest, context: ServerContext) async throws -> Memsnap_V1_DeleteSnapshotResult {
        try await answering {
            try checkKey(request.key, during: "delete snapshot")
            let deleted = await store.delete(key: request.key)
            return .with { $0.deleted = deleted }
        }
    }

    // MARK: Checks

    private func checkKey(_ key: String, during operation: String) throws(MemSnapError) {
        guard !key.isEmpty else { throw MemSnapError(operation, .emptyKey) }
        guard key.utf8.count <= Self.maxKeyBytes else {
            throw MemSnapError(operation, .invalidArgument("a key is at most \(Self.maxKeyBytes) bytes"))
        }
    }

    private func checkedRegions(_ wire: [Memsnap_V1_MergeRegion], maxSize: Int, during operation: String) throws(MemSnapError) -> [MergeRegion] {
        guard wire.count <= 4096 else { throw MemSnapError(operation, .invalidArgument("at most 4096 merge regions")) }
        var regions: [MergeRegion] = []
        for region in wire {
            guard let offset = Int(exactly: region.offset), let length = Int(exactly: region.length),
                  let type = UInt8(exactly: region.dataType).flatMap(MergeDataType.init(rawValue:)),
                  let operationValue = UInt8(exactly: region.operation).flatMap(MergeOperation.init(rawValue:)) else {
                throw MemSnapError(operation, .invalidArgument("merge region at \(region.offset): unknown type \(region.dataType) or operation \(region.operation), or out of range"))
            }
            regions.append(try MergeRegion(offset: offset, length: length, dataType: type, operation: operationValue))
        }
        // The rules of Snapshot.addMergeRegion, checked before anything is changed: inside the
        // maximum size, no two overlapping (a region of length 0 runs to the end).
        let ordered = regions.sorted { $0.offset < $1.offset }
        for (index, region) in ordered.enumerated() {
            let end = region.length == 0 ? maxSize : region.offset + region.length  // no overflow: MergeRegion checked it
            guard region.offset < maxSize, end <= maxSize else {
                throw MemSnapError(operation, .exceedsMaximum(what: "merge region end", requested: end, maximum: maxSize))
            }
            if index + 1 < ordered.count, ordered[index + 1].offset < end {
                throw MemSnapError(operation, .invalidArgument("merge regions \(region) and \(ordered[index + 1]) overlap"))
            }
        }
        return regions
    }

    /// Runs a handler, turning its MemSnapError and EpochMismatch into statuses.
    private func answering<Value>(_ body: () async throws -> Value) async throws -> Value {
        activity.begin()
        defer { activity.end() }
        do {
            return try await body()
        } catch let error as MemSnapError {
            throw RemoteErrors.status(for: error)
        } catch let error as EpochMismatch {
            throw RPCError(code: .failedPrecondition, message: error.description)
        }
    }
}

/// A pool (kept for the next batch) and what its round produced.
private struct PoolAndRound: @unchecked Sendable {
    let pool: SnapshotWorkers
    let round: Result<SnapshotWorkers.RoundDiffs, any Error>

    func unpacked(into pool: inout SnapshotWorkers?) -> Result<SnapshotWorkers.RoundDiffs, any Error> {
        pool = self.pool
        return round
    }
}
