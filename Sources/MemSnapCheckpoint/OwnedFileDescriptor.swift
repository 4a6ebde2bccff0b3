#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// An open file descriptor with exactly one owner, closed exactly once: by `close()`, or when
/// its owner is destroyed. Not copyable, so no second owner can close it again (or close a
/// number the kernel has since handed to someone else).
///
/// Thread safety: `descriptor` may be used from any thread while the owner is alive.
struct OwnedFileDescriptor: ~Copyable, Sendable {
    let descriptor: FileDescriptor

    /// Takes ownership of `descriptor`.
    init(taking descriptor: FileDescriptor) {
        self.descriptor = descriptor
    }

    /// Closes the descriptor now. An error from close is ignored: on Linux the descriptor is
    /// released whatever close reports (even EINTR), so retrying could close someone else's.
    consuming func close() {
        _ = Glibc.close(descriptor.rawValue)
        discard self
    }

    deinit { _ = Glibc.close(descriptor.rawValue) }
}
