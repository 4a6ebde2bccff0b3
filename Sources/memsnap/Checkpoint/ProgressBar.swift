#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapCheckpoint

/// A one-line progress bar on stderr, shown only when stderr is a terminal (nothing otherwise,
/// so logs and pipes stay clean). Safe to call from any thread.
final class ProgressBar: Sendable {
    let label: String
    let enabled = isatty(STDERR_FILENO) == 1
    private let last = Locked((time: UInt64(0), percent: -1))

    init(_ label: String) { self.label = label }

    var handler: (@Sendable (CheckpointProgress) -> Void)? {
        guard enabled else { return nil }
        let update: @Sendable (CheckpointProgress) -> Void = { [self] progress in self.update(progress) }
        return update
    }

    func update(_ progress: CheckpointProgress) {
        let now = Stopwatch.now()
        // In Double: the totals come from the file, and bytesDone * 100 could overflow Int.
        let percent = progress.bytesTotal > 0
            ? Int(min(100, max(0, Double(progress.bytesDone) * 100 / Double(progress.bytesTotal)))) : -1
        let shouldDraw = last.withLock { state -> Bool in
            guard now - state.time > 100_000_000 || (percent == 100 && state.percent != 100) else { return false }
            state = (now, percent)
            return true
        }
        guard shouldDraw else { return }
        let line: String
        if percent >= 0 {
            let filled = percent * 30 / 100
            line = "\r\(label) [\(String(repeating: "#", count: filled))\(String(repeating: " ", count: 30 - filled))] \(percent) % "
                + "\(ByteCount(progress.bytesDone))"
        } else {
            line = "\r\(label) \(ByteCount(progress.bytesDone))"
        }
        FileHandleOutput.standardError(line)
    }

    func finish() {
        if enabled { FileHandleOutput.standardError("\r\u{1B}[K") }
    }
}
