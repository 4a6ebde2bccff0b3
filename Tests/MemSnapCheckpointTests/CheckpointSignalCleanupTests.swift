#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapCheckpoint
import MemSnapTestSupport
import Testing
import SystemPackage

/// SIGINT, SIGTERM or SIGHUP during a checkpoint or a restore (Ctrl-C, a service manager, a
/// closed terminal) removes its temporary file; the process still dies of the signal. A child
/// process (this test binary, filtered to `signalCleanupChild`) runs the operation on a pipe that
/// never ends; the parent waits for the temporary file, signals the child and looks.
@Suite("A signal during checkpoint or restore leaves no temporary file")
struct CheckpointSignalCleanupTests {
    static let childVariable = "MEMSNAP_SIGNAL_CLEANUP_CHILD"

    struct Case: Sendable, CustomTestStringConvertible {
        var operation: String  // "checkpoint" or "restore"
        var signal: Int32
        var testDescription: String { "\(operation), signal \(signal)" }
    }

    static let cases = ["checkpoint", "restore"].flatMap { operation in
        [SIGTERM, SIGINT, SIGHUP].map { Case(operation: operation, signal: $0) }
    }

    @Test("the temporary file is removed and the process dies of the signal", arguments: cases)
    func aSignalRemovesTheTemporaryFile(testCase: Case) throws {
        let directory = TemporaryDirectory()
        let child = try ChildProcess(
            executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
            arguments: ["--testing-library", "swift-testing", "--filter", "signalCleanupChild"],
            environment: ProcessInfo.processInfo.environment.merging(
                [Self.childVariable: "\(testCase.operation):\(directory.path)"]) { $1 },
            standardOutput: .null, standardError: .null)
        let deadline = Date().addingTimeInterval(60)
        while directory.entries.isEmpty && child.isRunning && Date() < deadline { usleep(2_000) }
        let entries = directory.entries
        #expect(entries.count == 1 && entries[0].hasPrefix(".out.") && entries[0].contains(".tmp-"),
                "the child created its temporary file: \(entries)")
        child.signal(testCase.signal)
        var ended = child.wait(timeout: .seconds(30))
        if ended == nil {
            Issue.record("the child survived signal \(testCase.signal)")
            child.signal(SIGKILL)
            ended = child.wait()
        }
        #expect(ended == .signaled(testCase.signal), "died of signal \(testCase.signal): \(ended.map { "\($0)" } ?? "still running")")
        #expect(directory.entries.isEmpty, "nothing left: \(directory.entries)")
    }

    /// Runs only inside the child: installs the handlers (as the memsnap tool does), then blocks
    /// in a checkpoint or restore whose input pipe never ends.
    @Test func signalCleanupChild() throws {
        guard let value = ProcessInfo.processInfo.environment[Self.childVariable],
              let colon = value.firstIndex(of: ":") else { return }
        let operation = value[..<colon], directory = String(value[value.index(after: colon)...])
        try TemporaryFileCleanup.installHandlers()
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else { return }
        // The write end stays open and silent: every read blocks until the signal.
        if operation == "checkpoint" {
            try Checkpoint.write(readingFrom: FileDescriptor(rawValue: ends[0]), to: .file(path: "\(directory)/out.ckpt", force: false),
                                 options: CheckpointOptions(style: .v1))
        } else {
            _ = try Checkpoint.restore(readingFrom: FileDescriptor(rawValue: ends[0]), into: ImageFileTarget(path: "\(directory)/out.raw", force: false))
        }
    }
}
