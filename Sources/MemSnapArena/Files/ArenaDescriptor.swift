#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import SystemPackage

/// The one owner of one of an arena's file descriptors (and of the `flock` held through it).
///
/// Noncopyable, so the descriptor cannot be closed twice or outlive its owner by accident: it is
/// closed exactly once, by the consuming `close()` or, if that never runs, by deinit.
/// Thread safety: none needed; it is never shared.
struct ArenaDescriptor: ~Copyable {
    let descriptor: FileDescriptor

    /// Takes ownership of `descriptor`.
    init(taking descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    /// Opens `path` with `flags` (creating it with mode 0644 if `O_CREAT` is among them),
    /// retrying EINTR.
    /// - Throws: the errno of the failed open.
    static func open(_ path: String, flags: Int32) throws(Errno) -> ArenaDescriptor {
        switch valueOrErrno({ Glibc.open(path, flags, 0o644) }) {
        case let .success(raw): return ArenaDescriptor(taking: FileDescriptor(rawValue: raw))
        case let .failure(errno): throw errno
        }
    }

    /// Closes the descriptor. A failed close is not reported: the descriptor is released either
    /// way (Linux closes it even when close returns an error), and every write that mattered was
    /// flushed before.
    consuming func close() {
        _ = Glibc.close(descriptor.rawValue)
        discard self
    }

    deinit { _ = Glibc.close(descriptor.rawValue) }
}
