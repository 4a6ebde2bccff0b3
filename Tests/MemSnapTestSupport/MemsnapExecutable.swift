#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The `memsnap` executable SwiftPM built next to the running test bundle (it puts every product
/// of the package in one directory), for tests of the command line; nil if it was not built.
public enum MemsnapExecutable {
    public static let path: String? = {
        let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let path = bundle.deletingLastPathComponent().appendingPathComponent("memsnap").path
        return access(path, X_OK) == 0 ? path : nil
    }()

    public static let notBuiltReason = "the memsnap executable is not built next to the tests (swift build builds it)"

    /// Runs `memsnap arguments` in `directory` with `environment` added to this process's, and
    /// returns its exit status (nil if a signal ended it) and its output (stdout then stderr,
    /// interleaved as written). Stops it after `timeout` seconds.
    public static func run(
        _ arguments: [String], in directory: String? = nil, environment: [String: String] = [:], timeout: Double = 120
    ) throws -> (status: Int32?, output: String) {
        guard let path else { return (nil, notBuiltReason) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { if process.isRunning { process.terminate() } }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationReason == .exit ? process.terminationStatus : nil, text)
    }
}
