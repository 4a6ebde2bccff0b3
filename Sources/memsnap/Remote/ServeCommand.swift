#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CMemSnap
import Foundation
import MemSnap
import MemSnapRemote

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run a snapshot server: hold pushed snapshots, run worker batches from them, stream their diffs back.",
        discussion: """
        Every call must carry the shared secret: give it with --token-file (its first line) or the \
        MEMSNAP_TOKEN environment variable. The server listens on 127.0.0.1 unless told otherwise; \
        with --tls-cert, --tls-key and --tls-ca it speaks TLS and requires callers to present a \
        certificate the CA signed. It registers the standard worker bodies \
        (\(StandardWorkerBodies.all.keys.sorted().joined(separator: ", "))). Once listening it prints \
        "memsnap serve: listening on HOST:PORT" on stdout (with port 0, the port it picked).
        """)

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one).")
    var listen: String = "127.0.0.1:7070"

    @Option(help: "File whose first line is the shared secret (else MEMSNAP_TOKEN).")
    var tokenFile: String?

    @Option(help: "PEM certificate chain of this server (TLS).")
    var tlsCert: String?

    @Option(help: "PEM private key of this server (TLS).")
    var tlsKey: String?

    @Option(help: "PEM certificates that sign the callers' certificates (mutual TLS).")
    var tlsCa: String?

    @Option(help: "Largest snapshot (maximum size) to accept.", transform: parseByteCount)
    var maxSnapshot: Int = 64 << 30

    @Option(help: "Exit after this many seconds without a call in flight (0: never).")
    var idleExit: Int = 0

    @Flag(help: "Exit when the process that started this one exits (for tests and benchmarks).")
    var exitWithParent = false

    @Flag(help: ArgumentHelp("Also run a plain TCP sink on the same host (the physical limit for memsnap bench remote).", visibility: .hidden))
    var rawSink = false

    func validate() throws {
        guard parseAddress(listen) != nil else { throw ValidationError("--listen must be HOST:PORT with a port 0 to 65535, not '\(listen)'") }
        guard [tlsCert, tlsKey, tlsCa].allSatisfy({ $0 == nil }) || [tlsCert, tlsKey, tlsCa].allSatisfy({ $0 != nil }) else {
            throw ValidationError("TLS needs all three of --tls-cert, --tls-key and --tls-ca")
        }
        guard (0...86_400 * 365).contains(idleExit) else { throw ValidationError("--idle-exit must be 0 to a year in seconds") }
    }

    func run() async throws {
        if exitWithParent { _ = memsnap_exit_with_parent(SIGTERM) }
        guard let (host, port) = parseAddress(listen) else { throw ValidationError("bad --listen") }
        let token = try tokenFile.map { try RemoteSecurity.token(fromFile: $0) } ?? RemoteSecurity.token(fromEnvironment: "MEMSNAP_TOKEN")
        guard let token else { throw ValidationError("give the shared secret with --token-file or MEMSNAP_TOKEN") }
        var security = try RemoteSecurity(token: token)
        if let tlsCert, let tlsKey, let tlsCa {
            security.tls = RemoteSecurity.TLS(certificateChainPath: tlsCert, privateKeyPath: tlsKey, trustedCertificatesPath: tlsCa)
        }
        var configuration = SnapshotServerConfiguration(security: security)
        configuration.maxSnapshotBytes = maxSnapshot
        configuration.maxStagedBytes = maxSnapshot
        let server = SnapshotServer(configuration: configuration)
        for (name, body) in StandardWorkerBodies.all.sorted(by: { $0.key < $1.key }) { try server.register(name, body: body) }
        let idle = idleExit
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let sinkPort = rawSink ? try RawTCPSink.start(host: host) : nil
                try await server.serve(host: host, port: port) { boundHost, boundPort in
                    print("memsnap serve: listening on \(boundHost):\(boundPort)" + (sinkPort.map { " (raw sink on port \($0))" } ?? ""))
                    fflush(nil)
                }
            }
            if idle > 0 {
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(1))
                        if server.secondsSinceLastCall >= Double(idle) {
                            server.shutDown()
                            return
                        }
                    }
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// "HOST:PORT" with a port 0...65535.
func parseAddress(_ text: String) -> (String, Int)? {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port),
          colon != text.startIndex else { return nil }
    return (String(text[..<colon]), port)
}
