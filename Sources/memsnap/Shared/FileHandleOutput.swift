#if canImport(Glibc)
import Glibc
#endif

/// Output on the process's standard descriptors without Foundation's buffering: progress lines
/// and notes on stderr appear at once, between the lines stdout prints.
enum FileHandleOutput {
    /// Writes `text` to stderr as it is (no newline added). A failed or short write is dropped:
    /// progress output is never worth failing a command for.
    static func standardError(_ text: String) {
        var bytes = Array(text.utf8)
        _ = bytes.withUnsafeMutableBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
