#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// An owned userfaultfd, opened with `UFFD_USER_MODE_ONLY` (enough for write-protect tracking
/// and allowed unprivileged) and closed when its owner goes away.
///
/// Fork: a userfaultfd acts on the address space of the process that opened it, whoever calls
/// its ioctls. In a forked child (which inherits the descriptor but not the registrations),
/// registering and write-protecting throw and unregistering and waking do nothing, so that a
/// child never changes its parent's tracking.
///
/// Thread safety: the ioctls are safe from any thread; the owner serialises lifetime.
struct Userfaultfd: ~Copyable {
    let descriptor: Int32
    /// Features UFFDIO_API reported: every feature the kernel supports, not only those asked for.
    let features: UInt64
    /// The process whose memory the ioctls act on.
    let openedBy: pid_t

    /// Opens a userfaultfd and performs the API handshake asking for `features`.
    /// - Throws: `.unavailable` explaining ENOSYS, EPERM or EINVAL from userfaultfd(2);
    ///   `.systemCall("UFFDIO_API", ...)` if the kernel refuses the features.
    init(features requested: UInt64, during operation: String) throws(MemSnapError) {
        let fd = memsnap_userfaultfd(O_CLOEXEC | O_NONBLOCK | MEMSNAP_UFFD_USER_MODE_ONLY)
        guard fd >= 0 else {
            let errno = Errno(rawValue: Glibc.errno)
            throw MemSnapError(operation, .unavailable(Userfaultfd.explain(errno)))
        }
        var api = memsnap_uffdio_api(api: MEMSNAP_UFFD_API, features: requested, ioctls: 0)
        guard memsnap_ioctl(fd, MEMSNAP_UFFDIO_API, &api) == 0 else {
            let error = MemSnapError.systemCall("UFFDIO_API", during: operation)
            close(fd)
            throw error
        }
        self.descriptor = fd
        self.features = api.features
        self.openedBy = getpid()
    }

    /// Whether the caller is the process that opened the userfaultfd (not a forked child).
    var callerOwnsMemory: Bool { getpid() == openedBy }

    private func requireOwningProcess(_ request: String, during operation: () -> String) throws(MemSnapError) {
        guard callerOwnsMemory else {
            throw MemSnapError(operation(), .unavailable(
                "\(request) refused in process \(getpid()): the userfaultfd was opened by process \(openedBy), "
                    + "whose memory it would change (a forked child keeps the descriptor, not the registrations); "
                    + "track the child's memory with a tracker started in the child"))
        }
    }

    deinit { close(descriptor) }

    /// The features this kernel offers, from a throwaway handshake that asks for none.
    static func availableFeatures() -> Result<UInt64, MemSnapError> {
        Result { () throws(MemSnapError) -> UInt64 in
            try Userfaultfd(features: 0, during: "probe userfaultfd").features
        }
    }

    static func explain(_ errno: Errno) -> String {
        switch errno {
        case .noFunction:
            return "userfaultfd(2) failed with ENOSYS: the kernel is built without CONFIG_USERFAULTFD"
        case .notPermitted:
            return "userfaultfd(2) failed with EPERM: forbidden here (a seccomp profile such as Docker's default, "
                + "or vm.unprivileged_userfaultfd=0 without UFFD_USER_MODE_ONLY)"
        case .invalidArgument:
            return "userfaultfd(2) failed with EINVAL: the kernel predates UFFD_USER_MODE_ONLY (Linux 5.11)"
        default:
            return "userfaultfd(2) failed: \(errno.symbolicDescription)"
        }
    }

    func register(_ range: UnsafeRawBufferPointer, during operation: @autoclosure () -> String) throws(MemSnapError) {
        try requireOwningProcess("UFFDIO_REGISTER", during: operation)
        var argument = memsnap_uffdio_register(
            range: memsnap_uffdio_range(start: UInt64(UInt(bitPattern: range.baseAddress)), len: UInt64(range.count)),
            mode: MEMSNAP_UFFDIO_REGISTER_MODE_WP, ioctls: 0)
        guard memsnap_ioctl(descriptor, MEMSNAP_UFFDIO_REGISTER, &argument) == 0 else {
            throw MemSnapError.systemCall("UFFDIO_REGISTER", during: operation())
        }
    }

    /// Unregisters; failures are ignored because the range may already be gone (remapped). In a
    /// forked child, nothing (the child's memory holds no registration).
    func unregister(_ range: UnsafeRawBufferPointer) {
        guard callerOwnsMemory else { return }
        var argument = memsnap_uffdio_range(start: UInt64(UInt(bitPattern: range.baseAddress)), len: UInt64(range.count))
        _ = memsnap_ioctl(descriptor, MEMSNAP_UFFDIO_UNREGISTER, &argument)
    }

    /// Write-protects (`protect`) or unprotects a range; `wake` wakes threads blocked on it.
    func writeProtect(
        _ range: UnsafeRawBufferPointer, protect: Bool, wake: Bool = true, during operation: @autoclosure () -> String
    ) throws(MemSnapError) {
        try requireOwningProcess("UFFDIO_WRITEPROTECT", during: operation)
        var mode: UInt64 = protect ? MEMSNAP_UFFDIO_WRITEPROTECT_MODE_WP : 0
        if !wake { mode |= MEMSNAP_UFFDIO_WRITEPROTECT_MODE_DONTWAKE }
        var argument = memsnap_uffdio_writeprotect(
            range: memsnap_uffdio_range(start: UInt64(UInt(bitPattern: range.baseAddress)), len: UInt64(range.count)),
            mode: mode)
        guard memsnap_ioctl(descriptor, MEMSNAP_UFFDIO_WRITEPROTECT, &argument) == 0 else {
            throw MemSnapError.systemCall("UFFDIO_WRITEPROTECT", during: operation())
        }
    }

    /// Wakes threads blocked on faults in `range` (in a forked child, nothing: none can be).
    func wake(_ range: UnsafeRawBufferPointer) {
        guard callerOwnsMemory else { return }
        var argument = memsnap_uffdio_range(start: UInt64(UInt(bitPattern: range.baseAddress)), len: UInt64(range.count))
        _ = memsnap_ioctl(descriptor, MEMSNAP_UFFDIO_WAKE, &argument)
    }
}
