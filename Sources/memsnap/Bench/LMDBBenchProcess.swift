#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

/// The LMDB side of `memsnap bench arena`: `memsnap-lmdb-bench`, a benchmark executable built
/// next to `memsnap` (the installed tool does not link LMDB), run as a child process and driven
/// one request at a time (its protocol is described in Sources/MemSnapLMDBBench/main.swift), so
/// LMDB's rounds interleave with the arena's.
///
/// Ownership: owns the child (and through it both pipe ends); `finish()` (or deinit) closes its
/// input, which ends it, and waits for it. Thread safety: none.
final class LMDBBenchProcess {
    /// `memsnap-lmdb-bench` is not next to this executable.
    struct NotBuilt: Error, CustomStringConvertible {
        let path: String
        var description: String {
            "\(path) is not built (swift build -c release builds it; or swift build -c release --product memsnap-lmdb-bench)"
        }
    }

    private let child: ChildProcess

    /// Starts the child, which creates an LMDB environment of `pages` values in `directory`.
    /// - Throws: `NotBuilt`; `MemSnapError` when the child cannot start or fails.
    init(directory: String, pages: Int) throws {
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("memsnap-lmdb-bench").path
        guard access(executable, X_OK) == 0 else { throw NotBuilt(path: executable) }
        child = try ChildProcess(executable: executable, arguments: [directory, "\(pages)"],
                                 standardInput: .pipe, standardOutput: .pipe)
        try expect("ready", after: "start \(executable)")
    }

    deinit { finish() }

    /// Starts batch `size` (the child seeds its updates as the arena's are seeded).
    func startBatch(_ size: Int) throws {
        try send("batch \(size)")
        try expect("ok", after: "batch \(size)")
    }

    /// One round of the batch: (seconds of the whole transaction, of its commit alone).
    func round() throws -> (Double, Double) {
        try send("round")
        let reply = try line(after: "round")
        let fields = reply.split(separator: " ").compactMap { Double($0) }
        guard fields.count == 2 else { throw failure("round", "replied '\(reply)'") }
        return (fields[0], fields[1])
    }

    /// Ends the child (closing its input) and waits for it. Idempotent.
    func finish() {
        child.closeInput()
        _ = child.wait()
    }

    private func send(_ request: String) throws {
        try child.writeInput(Array((request + "\n").utf8))
    }

    private func expect(_ reply: String, after request: String) throws {
        let got = try line(after: request)
        guard got == reply else { throw failure(request, "replied '\(got)', not '\(reply)'") }
    }

    /// The child's next line of output.
    private func line(after request: String) throws -> String {
        guard let line = try child.readOutputLine() else { throw failure(request, "\(child.wait())") }
        return line
    }

    private func failure(_ request: String, _ what: String) -> MemSnapError {
        MemSnapError("memsnap-lmdb-bench (\(request))", .unavailable("it \(what); its errors are on stderr"))
    }
}
