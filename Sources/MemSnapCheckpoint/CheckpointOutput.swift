#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// Where a checkpoint (or a restored image) goes.
///
/// A path is written under a temporary name in the same directory (`.NAME.tmp-RANDOM`),
/// flushed with fsync and renamed into place only when complete, so a failed or interrupted
/// write leaves nothing behind: the temporary file is unlinked by `discard()`, on error and in
/// deinit, and it is registered with `TemporaryFileCleanup` from creation to rename, so a
/// SIGINT, SIGTERM or SIGHUP (with the handlers installed, as the `memsnap` tool does) removes
/// it too. An existing file is replaced only with `force`; without it the rename refuses
/// atomically (RENAME_NOREPLACE). A descriptor (pipe, socket, stdout) is written sequentially as is.
///
/// Ownership: owns the temporary file's descriptor; never closes a descriptor it was given.
final class CheckpointOutput {
    /// A caller's descriptor (a stream), never closed here.
    private let given: FileDescriptor?
    /// The temporary file's descriptor, until `discard()` or `commit` closes it.
    private var temporary: OwnedFileDescriptor?
    private(set) var position = 0
    let finalPath: String?
    private let temporaryPath: String?
    private let force: Bool
    private var registration: TemporaryFileCleanup.Registration?
    /// The temporary file was renamed (committed) or removed (discarded): nothing more to do.
    private var finished = false

    private init(given: FileDescriptor?, temporary: consuming OwnedFileDescriptor?, finalPath: String?, temporaryPath: String?,
                 force: Bool) {
        self.given = given
        self.temporary = temporary
        self.finalPath = finalPath
        self.temporaryPath = temporaryPath
        self.force = force
    }

    static func file(_ path: String, force: Bool) throws(MemSnapError) -> CheckpointOutput {
        let operation = "write checkpoint \(path)"
        if !force && access(path, F_OK) == 0 {
            throw MemSnapError(operation, .invalidArgument("\(path) exists; pass --force (force: true) to replace it"))
        }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[...$0]) } ?? ""
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var random = SystemRandomNumberGenerator()
        for _ in 0..<16 {
            let temporary = "\(directory).\(name).tmp-\(String(random.next() % 0xFFFF_FFFF, radix: 16))"
            // Registered before the file exists, so there is no instant when it is on disk and a
            // signal would leave it. (Should the name be taken, it is unregistered at once: only a
            // signal in that instant, on a random name another writer happens to use, could hit it.)
            let registration = TemporaryFileCleanup.register(temporary)
            switch valueOrErrno({ open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }) {
            case let .success(fd):
                let output = CheckpointOutput(given: nil, temporary: OwnedFileDescriptor(taking: FileDescriptor(rawValue: fd)),
                                              finalPath: path, temporaryPath: temporary, force: force)
                output.registration = registration
                return output
            case let .failure(errno):
                if let registration { TemporaryFileCleanup.unregister(registration) }
                if errno != .fileExists { throw MemSnapError(operation, .systemCall("open \(temporary)", errno)) }
            }
        }
        throw MemSnapError(operation, .invalidArgument("could not find a free temporary name next to \(path)"))
    }

    static func stream(_ descriptor: FileDescriptor) -> CheckpointOutput {
        CheckpointOutput(given: descriptor, temporary: nil, finalPath: nil, temporaryPath: nil, force: false)
    }

    deinit { discard() }

    /// The descriptor to write to, unless the temporary file was already removed or renamed.
    /// - Throws: `.invalidArgument` after `discard()` or `commit`.
    func liveDescriptor(during operation: @autoclosure () -> String) throws(MemSnapError) -> FileDescriptor {
        if let given { return given }
        guard !finished, let descriptor = temporary?.descriptor else {
            throw MemSnapError(operation(), .invalidArgument("the output was already discarded or committed"))
        }
        return descriptor
    }

    /// Closes and removes the temporary file now (giving its space back), if it is still there.
    func discard() {
        guard let temporaryPath, !finished else { return }
        finished = true
        temporary.take()?.close()
        unlink(temporaryPath)
        // Only after the unlink: a signal in between finds the path gone, which is harmless.
        if let registration { TemporaryFileCleanup.unregister(registration) }
        registration = nil
    }

    /// Writes every byte of `buffers` in order (retrying short writes and EINTR).
    func write(_ buffers: [UnsafeRawBufferPointer], during operation: @autoclosure () -> String) throws(MemSnapError) {
        let descriptor = try liveDescriptor(during: operation())
        do throws(PartialWriteFailure) {
            try writeAll(descriptor.rawValue, buffers, at: nil)
            for buffer in buffers { position += buffer.count }
        } catch {
            position += error.bytesWritten
            throw MemSnapError("\(operation()) at \(at(position))", .systemCall("write", error.errno))
        }
    }

    func write(_ bytes: [UInt8], during operation: @autoclosure () -> String) throws(MemSnapError) {
        let text = operation()
        try withBytes(bytes) { (buffer) throws(MemSnapError) in try write([buffer], during: text) }
    }

    /// Makes the file durable and gives it its name. Streams need nothing.
    func commit(during operation: String) throws(MemSnapError) {
        guard let temporaryPath, let finalPath else { return }
        let descriptor = try liveDescriptor(during: operation)
        _ = try systemCall("fsync", during: operation) { fsync(descriptor.rawValue) }
        let force = force
        let renamed = valueOrErrno { force ? rename(temporaryPath, finalPath) : memsnap_rename_noreplace(temporaryPath, finalPath) }
        if case let .failure(errno) = renamed {
            if errno == .fileExists {
                throw MemSnapError(operation, .invalidArgument("\(finalPath) appeared while writing; pass --force to replace it"))
            }
            throw MemSnapError(operation, .systemCall("rename", errno))
        }
        finished = true
        temporary.take()?.close()
        // After the rename: a signal in between unlinks a name that no longer exists.
        if let registration { TemporaryFileCleanup.unregister(registration) }
        registration = nil
        // Make the rename itself durable.
        let directory = finalPath.lastIndex(of: "/").map { String(finalPath[...$0]) } ?? "."
        if case let .success(directoryDescriptor) = valueOrErrno({ open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }) {
            let owned = OwnedFileDescriptor(taking: FileDescriptor(rawValue: directoryDescriptor))
            _ = valueOrErrno { fsync(directoryDescriptor) }
            owned.close()
        }
    }
}
