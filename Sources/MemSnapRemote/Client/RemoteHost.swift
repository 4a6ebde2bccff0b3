import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import MemSnap
import MemSnapCheckpoint

/// A connection to one snapshot server (`memsnap serve`, or an embedded `SnapshotServer`): push
/// snapshots there, whole or by their changes, and run batches of workers there.
///
///     let host = try RemoteHost(host: "127.0.0.2", port: 7070, security: security)
///     try await host.push(snapshot, as: "heap", epoch: 1)
///     let batch = try await host.runBatch(key: "heap", epoch: 1, body: "add-one", workers: [0, 1], workerCount: 2)
///
/// Every error names the host and what was being done: the server's refusals (a wrong token, an
/// epoch it does not hold, a limit) and the connection's failures alike.
///
/// Ownership: owns its connection; `close()` (or deinit) shuts it down once calls in flight end.
/// Thread safety: all methods may be called from any task, concurrently.
public final class RemoteHost: Sendable {
    /// "host:port", as errors name it.
    public let name: String
    public let limits: RemoteLimits
    /// The generated client (tests send crafted messages through it).
    package let client: any Memsnap_V1_SnapshotService.ClientProtocol
    private let shutdown: @Sendable () -> Void

    /// Connects (lazily, at the first call) to the server at `host:port`.
    /// - Throws: `.invalidArgument` for an address the transport cannot use.
    public convenience init(host: String, port: Int, security: RemoteSecurity, limits: RemoteLimits = RemoteLimits()) throws(MemSnapError) {
        var config = HTTP2ClientTransport.Posix.Config.defaults
        config.http2.targetWindowSize = limits.windowBytes
        config.http2.maxFrameSize = min((1 << 24) - 1, max(1 << 14, limits.frameBytes))
        let transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity
        if let tls = security.tls {
            transportSecurity = .mTLS(certificateChain: [.file(path: tls.certificateChainPath, format: .pem)],
                                      privateKey: .file(path: tls.privateKeyPath, format: .pem)) {
                $0.trustRoots = .certificates([.file(path: tls.trustedCertificatesPath, format: .pem)])
                $0.serverCertificateVerification = tls.serverHostname == nil ? .noHostnameVerification : .fullVerification
            }
        } else {
            transportSecurity = .plaintext
        }
        if let hostname = security.tls?.serverHostname { config.http2.authority = hostname }
        let transport: HTTP2ClientTransport.Posix
        do {
            transport = try HTTP2ClientTransport.Posix(target: .ipv4(address: host, port: port), transportSecurity: transportSecurity,
                                                       config: config)
        } catch {
            throw MemSnapError("connect to \(host):\(port)", .invalidArgument("\(error)"))
        }
        self.init(transport: transport, name: "\(host):\(port)", security: security, limits: limits)
    }

    /// A host reached through any transport (the in-process one in tests).
    package init<Transport: ClientTransport>(transport: Transport, name: String, security: RemoteSecurity, limits: RemoteLimits = RemoteLimits()) {
        self.name = name
        self.limits = limits
        let grpc = GRPCClient(transport: transport, interceptors: [BearerTokenClientInterceptor(value: security.authorizationValue)])
        client = Memsnap_V1_SnapshotService.Client(wrapping: grpc)
        shutdown = { grpc.beginGracefulShutdown() }
        Task { try? await grpc.runConnections() }
    }

    deinit { shutdown() }

    /// Ends the connection once calls in flight have finished.
    public func close() { shutdown() }

    private var callOptions: CallOptions {
        var options = CallOptions.defaults
        options.maxRequestMessageBytes = limits.maxMessageBytes
        options.maxResponseMessageBytes = limits.maxMessageBytes
        return options
    }

    // MARK: Info

    /// What the server says of itself.
    public struct Info: Sendable, Equatable {
        public var version: String
        public var maxMessageBytes: Int
        public var maxSnapshotBytes: Int
        public var workerBodies: [String]
        public var snapshots: [Snapshot]

        public struct Snapshot: Sendable, Equatable {
            public var key: String
            public var epoch: UInt64
            public var size: Int
            public var maxSize: Int

            public init(key: String, epoch: UInt64, size: Int, maxSize: Int) {
                self.key = key
                self.epoch = epoch
                self.size = size
                self.maxSize = maxSize
            }
        }
    }

    public func info() async throws(MemSnapError) -> Info {
        let operation = "ask \(name) for its info"
        do {
            let info = try await client.getServerInfo(request: ClientRequest(message: Memsnap_V1_GetServerInfoRequest()), options: callOptions)
            return Info(version: info.version, maxMessageBytes: Int(clamping: info.maxMessageBytes), maxSnapshotBytes: Int(clamping: info.maxSnapshotBytes),
                        workerBodies: info.workerBodies,
                        snapshots: info.snapshots.map { .init(key: $0.key, epoch: $0.epoch, size: Int(clamping: $0.size), maxSize: Int(clamping: $0.maxSize)) })
        } catch {
            throw RemoteErrors.error(error, during: operation)
        }
    }

    // MARK: Whole pushes

    /// How a whole push goes.
    public struct PushOptions: Sendable {
        /// Compression of each chunk (the checkpoint codecs).
        public var codec: CheckpointCodec = .lz4
        public var level: Int32? = nil
        /// Bytes per chunk (a page multiple from 64 KiB to 16 MiB).
        public var chunkSize = 1 << 20
        /// Threads compressing chunks ahead of the sender.
        public var threads = 2
        /// Set it to resume a push that an earlier process or call left staged under this id:
        /// only the frames the server lacks are sent. Nil picks a fresh id.
        public var pushID: String? = nil
        /// How many times a push that fails part way is resumed before giving up.
        public var resumeAttempts = 2
        /// Tests only: the push's stream fails after this many frames, as if the sender died.
        package var failAfterFrames: Int? = nil

        public init() {}
    }

    /// What a push sent.
    public struct PushReport: Sendable {
        public var imageSize: Int
        public var chunkCount: Int
        /// Frames (nonzero chunks) of the image, and those sent in the end (fewer on a resume).
        public var frameCount: Int
        public var framesSent: Int
        /// Bytes of frames sent (compressed).
        public var bytesSent: Int
        public var pushID: String
        public var attempts: Int
        public var seconds: Double
    }

    /// Pushes the whole of `snapshot` (its bytes, size, maximum size and merge regions) under
    /// `key` at `epoch`, as compressed checksummed frames. The server makes it visible only when
    /// every frame and the image digest verify; a push that fails part way stays staged there
    /// and is resumed (up to `options.resumeAttempts` times, sending only missing frames).
    /// The snapshot must not change during the push.
    /// - Throws: `.invalidArgument` for bad options or a refusal; `.unavailable` when the
    ///   connection fails for good; `.corrupt` if the server found a frame damaged.
    @discardableResult
    public func push(_ snapshot: Snapshot, as key: String, epoch: UInt64, options: PushOptions = PushOptions()) async throws(MemSnapError) -> PushReport {
        let operation = "push snapshot \"\(key)\" (epoch \(epoch)) to \(name)"
        let start = ContinuousClock.now
        guard CheckpointFrames.chunkSizes.contains(options.chunkSize), options.chunkSize % Page.size == 0,
              options.chunkSize <= limits.maxMessageBytes / 2, (1...64).contains(options.threads), options.resumeAttempts >= 0 else {
            throw MemSnapError(operation, .invalidArgument("chunk size \(options.chunkSize) (a page multiple from 64 KiB to 16 MiB, half a message at most) "
                                                        + "or threads \(options.threads) (1...64) out of range"))
        }
        let imageSize = snapshot.size, chunkSize = options.chunkSize
        let chunkCount = (imageSize + chunkSize - 1) / chunkSize
        let pushID = options.pushID ?? String(UInt64.random(in: 0 ... .max), radix: 16)
        let level = options.level ?? (options.codec == .zstd ? 1 : 1)
        let header = Memsnap_V1_PushHeader.with {
            $0.key = key
            $0.epoch = epoch
            $0.pushID = pushID
            $0.imageSize = UInt64(imageSize)
            $0.maxSize = UInt64(snapshot.maxSize)
            $0.codec = UInt32(options.codec.rawValue)
            $0.chunkSize = UInt64(chunkSize)
            $0.mergeRegions = snapshot.mergeRegions.map(Self.wire)
        }
        var received = ChunkBitmap(count: chunkCount)
        if options.pushID != nil, let staged = try await pushStatus(key: key, pushID: pushID, chunkCount: chunkCount, during: operation) {
            received = staged
        }
        var attempts = 0
        while true {
            attempts += 1
            let totals = Locked((frames: 0, sent: 0, bytes: 0))
            let alreadyThere = received
            let failAfter = options.failAfterFrames
            // The transport reports a producer's failure as its own ("write failed"): keep ours.
            let producerFailure = Locked<(any Error)?>(nil)
            do {
                let encoder = try ChunkEncoder(snapshot: snapshot, imageSize: imageSize, chunkSize: chunkSize, codec: options.codec,
                                               level: level, threads: options.threads, window: 4 * options.threads)
                let request = StreamingClientRequest(of: Memsnap_V1_PushSnapshotMessage.self) { writer in
                    defer { encoder.stop() }
                    do {
                        try await produce(writer)
                    } catch {
                        producerFailure.withLock { $0 = $0 ?? error }
                        throw error
                    }
                }
                @Sendable func produce(_ writer: RPCWriter<Memsnap_V1_PushSnapshotMessage>) async throws {
                    try await writer.write(.with { $0.header = header })
                    var frames = ChunkBitmap(count: chunkCount)
                    var checksums = [UInt64](repeating: 0, count: chunkCount)
                    for try await chunk in encoder.frames {
                        defer { encoder.consumed() }
                        guard let frame = chunk.frame else { continue }
                        frames.insert(chunk.index)
                        checksums[chunk.index] = chunk.payloadChecksum
                        totals.withLock { $0.frames += 1 }
                        if alreadyThere.contains(chunk.index) { continue }
                        if let failAfter, totals.withLock({ $0.sent }) >= failAfter {
                            throw MemSnapError(operation, .unavailable("the sender stopped after \(failAfter) frames (test)"))
                        }
                        try await writer.write(.with { $0.frame = frame })
                        totals.withLock { $0.sent += 1; $0.bytes += frame.count }
                    }
                    var digest = ImageDigest()
                    for chunk in frames.members { digest.add(chunk: chunk, payloadChecksum: checksums[chunk]) }
                    let imageDigest = digest.finish(imageSize: imageSize)
                    try await writer.write(.with { $0.commit = .with { $0.frames = Data(frames.bytes); $0.imageDigest = imageDigest } })
                }
                _ = try await client.pushSnapshot(request: request, options: callOptions)
                let counted = totals.withLock { $0 }
                return PushReport(imageSize: imageSize, chunkCount: chunkCount, frameCount: counted.frames, framesSent: counted.sent,
                                  bytesSent: counted.bytes, pushID: pushID, attempts: attempts,
                                  seconds: (ContinuousClock.now - start).seconds)
            } catch {
                let converted = RemoteErrors.error(producerFailure.withLock { $0 } ?? error, during: operation)
                guard attempts <= options.resumeAttempts, options.failAfterFrames == nil,
                      case .unavailable = converted.reason,
                      let staged = try? await pushStatus(key: key, pushID: pushID, chunkCount: chunkCount, during: operation) else {
                    throw converted
                }
                received = staged
            }
        }
    }

    /// The frames a staged push has, or nil if none is staged under this key and id.
    private func pushStatus(key: String, pushID: String, chunkCount: Int, during operation: String) async throws(MemSnapError) -> ChunkBitmap? {
        let request = Memsnap_V1_GetPushStatusRequest.with { $0.key = key; $0.pushID = pushID }
        let status: Memsnap_V1_PushStatus
        do {
            status = try await client.getPushStatus(request: ClientRequest(message: request), options: callOptions)
        } catch {
            throw RemoteErrors.error(error, during: operation)
        }
        guard status.staged else { return nil }
        guard let received = ChunkBitmap(bytes: [UInt8](status.receivedFrames), count: chunkCount) else {
            throw MemSnapError(operation, .corrupt("the server's frame map does not fit \(chunkCount) chunks"))
        }
        return received
    }

    // MARK: Updates

    /// What an update applied.
    public struct UpdateReport: Sendable {
        public var diffs: Int
        public var bytesSent: Int
        public var seconds: Double
    }

    /// Moves the server's snapshot `key` from `base` to `epoch` by applying `diffs` (in order,
    /// atomically: all or nothing), and replaces its merge regions with `mergeRegions`.
    /// - Throws: `.invalidArgument` if the server does not hold `key` at `base` (then push the
    ///   whole snapshot) or refuses the diffs; `.unavailable` when the connection fails (the
    ///   server then holds either epoch, never a mix).
    @discardableResult
    public func pushUpdate(key: String, from base: UInt64, to epoch: UInt64, diffs: [SnapshotDiff],
                           mergeRegions: [MergeRegion]) async throws(MemSnapError) -> UpdateReport {
        let operation = "push update of snapshot \"\(key)\" (epoch \(base) to \(epoch)) to \(name)"
        do {
            return try await performUpdate(key: key, from: base, to: epoch, diffs: diffs, mergeRegions: mergeRegions, during: operation)
        } catch {
            throw RemoteErrors.error(error, during: operation)
        }
    }

    /// `pushUpdate` with the server's status left as it came (DistributedWorkers tells an
    /// epoch mismatch from other failures).
    func performUpdate(key: String, from base: UInt64, to epoch: UInt64, diffs: [SnapshotDiff], mergeRegions: [MergeRegion],
                       during operation: String) async throws -> UpdateReport {
        let start = ContinuousClock.now
        let batches = try DiffBatching.encode(diffs, maxBytes: limits.diffBatchBytes, during: operation)
        let header = Memsnap_V1_UpdateHeader.with {
            $0.key = key
            $0.baseEpoch = base
            $0.newEpoch = epoch
            $0.mergeRegions = mergeRegions.map(Self.wire)
        }
        let request = StreamingClientRequest(of: Memsnap_V1_PushUpdateMessage.self) { writer in
            try await writer.write(.with { $0.header = header })
            for batch in batches { try await writer.write(.with { $0.diffBatch = Data(batch) }) }
            try await writer.write(.with { $0.commit = Memsnap_V1_UpdateCommit() })
        }
        let result = try await client.pushUpdate(request: request, options: callOptions)
        return UpdateReport(diffs: Int(clamping: result.diffsApplied), bytesSent: batches.reduce(0) { $0 + $1.count },
                            seconds: (ContinuousClock.now - start).seconds)
    }

    // MARK: Batches

    /// What a batch produced on this host.
    public struct BatchResult: Sendable {
        /// Each worker's diffs, by its index in the batch.
        public var diffs: [Int: [SnapshotDiff]]
        public var dirtyPages: [Int: Int]
        /// The server's time for the batch (forking, running, diffing, sending).
        public var serverSeconds: Double
    }

    /// A worker's body threw on the server: the batch failed there.
    public struct RemoteWorkerFailure: Error, CustomStringConvertible {
        public let host: String
        public let worker: Int
        public let message: String
        public var description: String { "worker \(worker) on \(host) failed: \(message)" }
    }

    /// Runs `workers` (indices in a batch of `workerCount`) of body `body` on the server's
    /// snapshot `key` at `epoch`, and returns their diffs (calling `onWorker` as each worker's
    /// diffs arrive, from the receiving task).
    /// - Throws: `RemoteWorkerFailure` when a body threw there; `MemSnapError` naming the host
    ///   for a refusal (`.invalidArgument`: an unknown body, an epoch it does not hold), a
    ///   damaged answer (`.corrupt`), or a connection that failed or ended early (`.unavailable`).
    public func runBatch(key: String, epoch: UInt64, body: String, workers: [Int], workerCount: Int, arguments: [UInt8] = [],
                         fill: MergeOperation = .bytewise,
                         onWorker: @escaping @Sendable (Int, [SnapshotDiff]) -> Void = { _, _ in }) async throws -> BatchResult {
        let operation = "run batch \"\(body)\" (workers \(workers)) on snapshot \"\(key)\" at \(name)"
        guard workerCount >= 1, workerCount <= Int(UInt32.max), workers.allSatisfy({ (0..<workerCount).contains($0) }) else {
            throw MemSnapError(operation, .invalidArgument("worker indices must lie in 0..<\(workerCount)"))
        }
        let request = Memsnap_V1_RunBatchRequest.with {
            $0.key = key
            $0.epoch = epoch
            $0.body = body
            $0.workers = workers.map { UInt32($0) }
            $0.workerCount = UInt32(workerCount)
            $0.arguments = Data(arguments)
            $0.fillOperation = UInt32(fill.rawValue)
        }
        let expected = Set(workers)
        let host = name
        do {
            return try await client.runBatch(request: ClientRequest(message: request), options: callOptions) { response in
                var pending: [Int: [[UInt8]]] = [:]
                var result = BatchResult(diffs: [:], dirtyPages: [:], serverSeconds: 0)
                var done = false
                for try await message in response.messages {
                    switch message.kind {
                    case .diffs(let part)?:
                        let worker = Int(part.worker)
                        guard expected.contains(worker), result.diffs[worker] == nil, !done else {
                            throw MemSnapError(operation, .corrupt("diffs for worker \(worker), which is not pending here"))
                        }
                        pending[worker, default: []].append([UInt8](part.diffBatch))
                        if part.last {
                            var diffs: [SnapshotDiff] = []
                            for batch in pending.removeValue(forKey: worker) ?? [] { diffs += try SnapshotDiff.decode(batch) }
                            result.diffs[worker] = diffs
                            result.dirtyPages[worker] = Int(clamping: part.dirtyPages)
                            onWorker(worker, diffs)
                        }
                    case .failed(let failure)?:
                        throw RemoteWorkerFailure(host: host, worker: Int(failure.worker), message: failure.message)
                    case .done(let summary)?:
                        done = true
                        result.serverSeconds = Double(summary.elapsedNanoseconds) / 1e9
                    case nil:
                        throw MemSnapError(operation, .corrupt("an empty message"))
                    }
                }
                guard done, result.diffs.count == expected.count else {
                    throw MemSnapError(operation, .unavailable("the server ended the batch before every worker's diffs arrived"))
                }
                return result
            }
        } catch let failure as RemoteWorkerFailure {
            throw failure
        } catch {
            throw RemoteErrors.error(error, during: operation)
        }
    }

    // MARK: Deleting

    /// Makes the server forget `key`; returns whether it held it.
    @discardableResult
    public func deleteSnapshot(key: String) async throws(MemSnapError) -> Bool {
        let operation = "delete snapshot \"\(key)\" at \(name)"
        do {
            return try await client.deleteSnapshot(request: ClientRequest(message: .with { $0.key = key }), options: callOptions).deleted
        } catch {
            throw RemoteErrors.error(error, during: operation)
        }
    }

    static func wire(_ region: MergeRegion) -> Memsnap_V1_MergeRegion {
        .with {
            $0.offset = UInt64(region.offset)
            $0.length = UInt64(region.length)
            $0.dataType = UInt32(region.dataType.rawValue)
            $0.operation = UInt32(region.operation.rawValue)
        }
    }
}
