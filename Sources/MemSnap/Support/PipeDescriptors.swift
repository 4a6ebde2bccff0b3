#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// Both ends of a pipe opened with O_CLOEXEC | O_NONBLOCK: for waking a thread that polls.
///
/// Ownership: `~Copyable`, the one owner of both descriptors; `close()` consumes it, and a value
/// dropped without `close()` closes both ends in its deinit. The raw descriptors may be lent to
/// a thread for as long as the owner is alive.
/// Thread safety: the ends are plain descriptors: reads and writes from any thread are the
/// kernel's business; closing is the owner's alone.
package struct PipeDescriptors: ~Copyable {
    package let readEnd: Int32
    package let writeEnd: Int32

    /// Opens a pipe.
    /// - Throws: `.systemCall("pipe2", ...)`, e.g. EMFILE when out of descriptors.
    package init(during operation: @autoclosure () -> String) throws(MemSnapError) {
        var ends: [Int32] = [-1, -1]
        guard memsnap_pipe_cloexec_nonblocking(&ends) == 0 else {
            throw MemSnapError.systemCall("pipe2", during: operation())
        }
        readEnd = ends[0]
        writeEnd = ends[1]
    }

    /// Closes both ends (close(2) is never retried on Linux: the descriptor is gone either way).
    package consuming func close() {
        _ = Glibc.close(readEnd)
        _ = Glibc.close(writeEnd)
        discard self
    }

    deinit {
        _ = Glibc.close(readEnd)
        _ = Glibc.close(writeEnd)
    }
}
