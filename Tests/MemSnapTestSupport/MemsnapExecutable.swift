#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The `memsnap` executable SwiftPM built next to the running test bundle (it puts every product
/// of the package in one directory), for tests of the command line; nil if it was not built.
/// `BuiltExecutable` finds and runs the package's other executables (the examples) the same way.
public enum MemsnapExecutable {
    public static let path: String? = BuiltExecutable.path(of: "memsnap")

    public static let notBuiltReason = BuiltExecutable.notBuiltReason("memsnap")

    /// Runs `memsnap arguments`: see `BuiltExecutable.run(_:_:in:environment:timeout:)`.
    public static func run(
        _ arguments: [String], in directory: String? = nil, environment: [String: String] = [:], timeout: Double = 120
    ) throws -> (status: Int32?, output: String) {
        try BuiltExecutable.run("memsnap", arguments, in: directory, environment: environment, timeout: timeout)
    }
}

/// An executable product of this package, found next to the running test bundle.
public enum BuiltExecutable {
    /// The executable `name`'s path, nil if it was not built.
    public static func path(of name: String) -> String? {
        let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let path = bundle.deletingLastPathComponent().appendingPathComponent(name).path
        return access(path, X_OK) == 0 ? path : nil
    }

    public static func notBuiltReason(_ name: String) -> String {
        "the \(name) executable is not built next to the tests (swift build builds it)"
    }

    /// Runs `name arguments` in `directory` with `environment` added to this process's, and
    /// returns its exit status (nil if a signal ended it) and its output (stdout then stderr,
    /// interleaved as written). Stops it after `timeout` seconds.
    public static func run(
        _ name: String, _ arguments: [String], in directory: String? = nil, environment: [String: String] = [:],
        timeout: Double = 120
    ) throws -> (status: Int32?, output: String) {
        guard let path = path(of: name) else { return (nil, notBuiltReason(name)) }
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
