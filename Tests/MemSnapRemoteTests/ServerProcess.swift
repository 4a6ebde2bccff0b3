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
    private let process: Process
    private let directory: TemporaryDirectory

    /// Starts a server on `address` and waits (at most 30 s) for it to listen.
    init(address: String, extraArguments: [String] = []) throws {
        let executable = try #require(MemsnapExecutable.path, "the memsnap executable is built next to the tests")
        directory = TemporaryDirectory(prefix: "memsnap-serve")
        let tokenFile = directory.file("token")
        try Self.token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["serve", "--listen", "\(address):0", "--token-file", tokenFile, "--exit-with-parent", "--idle-exit", "120"]
            + extraArguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.address = address
        var line = ""
        let deadline = Date().addingTimeInterval(30)
        while !line.contains("\n") && Date() < deadline && process.isRunning {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { usleep(10_000) } else { line += String(decoding: data, as: UTF8.self) }
        }
        guard let portText = line.split(separator: "\n").first?.split(separator: ":").last, let port = Int(portText) else {
            process.terminate()
            throw MemSnapError("start memsnap serve on \(address)", .unavailable("it did not say where it listens: \"\(line)\""))
        }
        self.port = port
    }

    func host(token: String = ServerProcess.token) throws -> RemoteHost {
        try RemoteHost(host: address, port: port, security: try RemoteSecurity(token: token))
    }

    /// SIGKILL, as a crash or a power cut would.
    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    var isRunning: Bool { process.isRunning }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
