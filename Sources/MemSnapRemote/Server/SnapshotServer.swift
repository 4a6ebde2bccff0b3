import GRPCCore
import GRPCNIOTransportHTTP2
import MemSnap

/// A snapshot server: holds snapshots by key and epoch, receives whole and incremental pushes,
/// runs batches of workers forked from them and streams the workers' diffs back (the service
/// in Protos/memsnap/v1/snapshot_service.proto). `memsnap serve` runs one; a runtime embeds
/// one the same way, registering the worker bodies its batches may name.
///
///     let server = SnapshotServer(configuration: SnapshotServerConfiguration(security: security))
///     try server.register("add-one") { worker in ... }
///     try await server.serve(host: "127.0.0.1", port: 7070)
///
/// Security: every call must carry the configuration's token (UNAUTHENTICATED otherwise); with
/// `security.tls` the connection is TLS and the caller must present a certificate signed by a
/// trusted one (mutual TLS). The default host is 127.0.0.1: listen elsewhere only on purpose.
/// Everything a peer sends is checked against the configuration's limits before use.
///
/// Ownership: owns the snapshots it received. Thread safety: all methods may be called from
/// any thread; `register` must happen before `serve`.
public final class SnapshotServer: Sendable {
    public let configuration: SnapshotServerConfiguration
    let store: SnapshotStore
    private let bodies = Locked<[String: BatchWorkerBody]>([:])
    private let running = Locked<(@Sendable () -> Void)?>(nil)
    private let activity = ServerActivity()

    /// Seconds since the last call ended (0 while one runs): for servers that exit when idle.
    public var secondsSinceLastCall: Double { activity.secondsIdle }

    public init(configuration: SnapshotServerConfiguration) {
        self.configuration = configuration
        self.store = SnapshotStore(configuration: configuration)
    }

    /// Registers `body` under `name`, for batches that name it.
    /// - Throws: `.invalidArgument` for an empty or taken name (1 to 64 bytes).
    public func register(_ name: String, body: @escaping BatchWorkerBody) throws(MemSnapError) {
        guard !name.isEmpty, name.utf8.count <= 64 else {
            throw MemSnapError("register worker body", .invalidArgument("a body name is 1 to 64 bytes"))
        }
        try bodies.withLock { (bodies: inout [String: BatchWorkerBody]) throws(MemSnapError) in
            guard bodies[name] == nil else {
                throw MemSnapError("register worker body \"\(name)\"", .invalidArgument("a body of that name is registered"))
            }
            bodies[name] = body
        }
    }

    /// Serves on `host:port` (port 0 picks a free one) until `shutDown()` or until the task is
    /// cancelled. `onListening` receives the address actually bound, once.
    /// - Throws: `.unavailable` if it cannot listen (the address is taken, TLS files do not
    ///   load) or the transport fails.
    public func serve(host: String = "127.0.0.1", port: Int = 0,
                      onListening: @escaping @Sendable (_ host: String, _ port: Int) -> Void = { _, _ in }) async throws {
        var config = HTTP2ServerTransport.Posix.Config.defaults
        config.http2.targetWindowSize = configuration.limits.windowBytes
        config.http2.maxFrameSize = min((1 << 24) - 1, max(1 << 14, configuration.limits.frameBytes))
        config.rpc.maxRequestPayloadSize = configuration.limits.maxMessageBytes
        let security: HTTP2ServerTransport.Posix.TransportSecurity
        if let tls = configuration.security.tls {
            security = .mTLS(certificateChain: [.file(path: tls.certificateChainPath, format: .pem)],
                             privateKey: .file(path: tls.privateKeyPath, format: .pem)) {
                $0.trustRoots = .certificates([.file(path: tls.trustedCertificatesPath, format: .pem)])
                $0.clientCertificateVerification = .noHostnameVerification
            }
        } else {
            security = .plaintext
        }
        let transport = HTTP2ServerTransport.Posix(address: .ipv4(host: host, port: port), transportSecurity: security, config: config)
        try await serve(transport: transport) {
            if let address = try? await transport.listeningAddress, let ipv4 = address.ipv4 {
                onListening(ipv4.host, ipv4.port)
            }
        }
    }

    /// Serves on any transport (the in-process one in tests), calling `whenListening` once the
    /// server runs.
    package func serve<Transport: ServerTransport>(
        transport: Transport, whenListening: @escaping @Sendable () async -> Void = {}
    ) async throws {
        let service = SnapshotService(store: store, bodies: bodies.withLock { $0 }, activity: activity)
        let server = GRPCServer(transport: transport, services: [service],
                                interceptors: [BearerTokenServerInterceptor(token: configuration.security.token)])
        running.withLock { $0 = { server.beginGracefulShutdown() } }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
            group.addTask { await whenListening() }
        }
    }

    /// Stops accepting calls; `serve` returns once the calls in flight have finished.
    public func shutDown() {
        running.withLock { $0?() }
    }
}
