#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

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
        return try runProcess(path, arguments, in: directory, environment: environment, timeout: timeout)
    }

    /// Runs the executable at `path`: see `run(_:_:in:environment:timeout:)`.
    static func runProcess(
        _ path: String, _ arguments: [String], in directory: String? = nil, environment: [String: String],
        timeout: Double
    ) throws -> (status: Int32?, output: String) {
        let child = try ChildProcess(executable: path, arguments: arguments,
                                     environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                     directory: directory, standardOutput: .pipe, standardError: .standardOutput)
        let run = try child.collectOutput(killingAfter: .seconds(timeout))
        return (run.termination.exitStatus, String(decoding: run.output, as: UTF8.self))
    }
}

/// This test binary run again with only one test, for a test whose work must not share a process
/// with the parallel runner (a fork, a process-wide limit, a signal handler installed first).
/// `environment` is added to this process's; the child test checks it and does nothing without
/// it, so that the test also passes, empty, in the parent's own run.
public enum ChildTestProcess {
    /// Runs the test `name` (a `--filter` of Swift Testing) in a child process and returns its
    /// exit status (nil if a signal ended it) and its output. Stops it after `timeout` seconds.
    public static func run(
        _ name: String, environment: [String: String], timeout: Double = 600
    ) throws -> (status: Int32?, output: String) {
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        return try BuiltExecutable.runProcess(binary, ["--testing-library", "swift-testing", "--filter", name],
                                              environment: environment, timeout: timeout)
    }
}
