#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import SystemPackage

/// The arena's own file-system calls outside the `ArenaFile` seam: opening its files, locking
/// them, and making directory entries durable. System calls go through `valueOrErrno` and
/// `systemCall`, which retry EINTR and capture errno.
extension Arena {
    /// Opens (or with `creating`, exclusively creates) a regular file, never through a link.
    /// O_NONBLOCK keeps a FIFO or a device from blocking the open (it changes nothing for the
    /// regular file this insists on).
    static func openFile(_ path: String, writable: Bool, creating: Bool, during operation: String) throws(MemSnapError) -> PosixArenaFile {
        let flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | (creating ? O_CREAT | O_EXCL : 0)
        let file: PosixArenaFile
        do {
            file = PosixArenaFile(path: path, owner: try ArenaDescriptor.open(path, flags: flags))
        } catch .tooManySymbolicLinkLevels {
            throw MemSnapError(operation, .systemCall("open \(path) (a symbolic link: arenas never follow links)", .tooManySymbolicLinkLevels))
        } catch {
            throw MemSnapError(operation, .systemCall("open \(path)", error))
        }
        var status = stat()
        _ = try systemCall("fstat \(path)", during: operation) { fstat(file.descriptor.rawValue, &status) }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw MemSnapError(operation, .invalidArgument("\(path) is not a regular file"))
        }
        return file
    }

    /// flock: exclusive for a writer, shared for readers, retried until `timeout` has passed.
    static func lock(_ file: PosixArenaFile, exclusive: Bool, timeout: Duration, during operation: String) throws(MemSnapError) {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        var pause = Duration.milliseconds(1)
        while case let .failure(errno) = valueOrErrno({ flock(file.descriptor.rawValue, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) }) {
            guard errno == .wouldBlock && clock.now < deadline else {
                let why = exclusive ? "another open of the arena holds it (a writer or readers)" : "a writer holds the arena"
                throw MemSnapError(operation, .systemCall("flock \(file.path) (\(why))", errno))
            }
            let (seconds, attoseconds) = pause.components
            var wait = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
            nanosleep(&wait, nil)
            pause = min(pause * 2, .milliseconds(20))
        }
    }

    /// Unlinks `path` if it is still the file `file` created (not one put there since). Call
    /// while `file` is open.
    static func removeIfStillOurs(_ path: String, _ file: PosixArenaFile) {
        var ours = stat(), there = stat()
        if fstat(file.descriptor.rawValue, &ours) == 0, lstat(path, &there) == 0, ours.st_dev == there.st_dev, ours.st_ino == there.st_ino {
            unlink(path)
        }
    }

    /// Makes new directory entries in the directory of `path` durable.
    static func syncDirectory(of path: String, during operation: String) throws(MemSnapError) {
        let directory = path.lastIndex(of: "/").map { String(path[...$0]) } ?? "."
        let owner: ArenaDescriptor
        do {
            owner = try ArenaDescriptor.open(directory, flags: O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        } catch {
            throw MemSnapError(operation, .systemCall("open directory \(directory)", error))
        }
        let raw = owner.descriptor.rawValue
        let synced = valueOrErrno { fsync(raw) }
        owner.close()
        if case let .failure(errno) = synced {
            throw MemSnapError(operation, .systemCall("fsync directory \(directory)", errno))
        }
    }
}
