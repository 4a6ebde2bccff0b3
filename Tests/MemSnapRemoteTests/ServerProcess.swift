#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapRemote
import MemSnapTestSupport
import Testing

/// A `memsnap serve` process on a loopback address of its own (127.0.0.2, 127.0.0.3, ...), on
/// a port it picks. It dies with the test process (--exit-with-parent), after two minutes
/// without calls (--idle-exit), or when the value goes away.
final class ServerProcess: @unchecked Sendable {
    static let token = "integration-test-token"
    let address: String
    let port: Int
    private let process: ChildProcess
    private let directory: TemporaryDirectory

    /// Starts a server on `address` and waits (at most 30 s) for it to listen.
    init(address: String, extraArguments: [String] = []) throws {
        let executable = try #require(MemsnapExecutable.path, "the memsnap executable is built next to the tests")
        directory = TemporaryDirectory(prefix: "memsnap-serve")
        let tokenFile = directory.file("token")
        try Self.token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        process = try ChildProcess(
            executable: executable,
            arguments: ["serve", "--listen", "\(address):0", "--token-file", tokenFile, "--exit-with-parent", "--idle-exit", "120"]
                + extraArguments,
            standardOutput: .pipe, standardError: .null)
        self.address = address
        // "memsnap serve: listening on HOST:PORT"
        let line = try process.readOutputLine(timeout: .seconds(30)) ?? ""
        guard let portText = line.split(separator: ":").last, let port = Int(portText) else {
            throw MemSnapError("start memsnap serve on \(address)", .unavailable("it did not say where it listens: \"\(line)\" (\(process.termination.map { "\($0)" } ?? "still running"))"))
        }
        self.port = port
    }

    func host(token: String = ServerProcess.token) throws -> RemoteHost {
        try RemoteHost(host: address, port: port, security: try RemoteSecurity(token: token))
    }

    /// SIGKILL, as a crash or a power cut would.
    func kill() {
        process.signal(SIGKILL)
        _ = process.wait()
    }

    var isRunning: Bool { process.isRunning }

    deinit {
        if process.isRunning {
            process.signal(SIGTERM)
            _ = process.wait()
        }
    }
}
