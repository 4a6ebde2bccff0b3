#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// An arena file on a POSIX descriptor, owned through an `ArenaDescriptor` (released by
/// `close()` or deinit). System calls go through `valueOrErrno`/`systemCall`, which retry EINTR
/// and capture errno.
///
/// Thread safety: none; the arena serialises its file operations.
final class PosixArenaFile: ArenaFile {
    /// Where the file is (updated when `Arena.create` renames it into place).
    var path: String
    /// Valid until `close()`; afterwards every call fails with EBADF.
    let descriptor: FileDescriptor
    private var owner: ArenaDescriptor?

    /// Takes ownership of `owner`'s descriptor.
    init(path: String, owner: consuming ArenaDescriptor) {
        self.path = path
        self.descriptor = owner.descriptor
        self.owner = consume owner
    }

    /// Releases the descriptor (and with it any flock held through it). Idempotent.
    func close() {
        owner.take()?.close()
    }

    private var raw: Int32 { descriptor.rawValue }

    func size(during operation: @autoclosure () -> String) throws(MemSnapError) -> Int {
        var status = stat()
        _ = try systemCall("fstat \(path)", during: operation()) { fstat(raw, &status) }
        return Int(status.st_size)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
              during operation: @autoclosure () -> String) throws(MemSnapError) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let got = try systemCall("pread \(path) at offset \(offset + done)", during: operation()) {
                pread(raw, base + done, buffer.count - done, off_t(offset + done))
            }
            if got == 0 { break }
            done += got
        }
        return done
    }

    func write(_ buffers: [UnsafeRawBufferPointer], at offset: Int,
               during operation: @autoclosure () -> String) throws(MemSnapError) {
        do throws(PartialWriteFailure) {
            try writeAll(raw, buffers, at: offset)
        } catch {
            throw MemSnapError(operation(), .systemCall("pwritev \(path) at offset \(offset + error.bytesWritten)", error.errno))
        }
    }

    func synchronize(during operation: @autoclosure () -> String) throws(MemSnapError) {
        _ = try systemCall("fdatasync \(path)", during: operation()) { fdatasync(raw) }
    }

    func reserve(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !range.isEmpty else { return }
        // posix_fallocate returns the error instead of setting errno.
        var status: Int32
        repeat { status = posix_fallocate(raw, off_t(range.lowerBound), off_t(range.count)) } while status == EINTR
        guard status == 0 else {
            throw MemSnapError(operation(), .systemCall("posix_fallocate \(path) bytes \(range)", Errno(rawValue: status)))
        }
    }

    func resize(to size: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        _ = try systemCall("ftruncate \(path) to \(size) bytes", during: operation()) { ftruncate(raw, off_t(size)) }
    }

    func punchHole(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !range.isEmpty else { return }
        _ = try systemCall("fallocate (punch hole) \(path) bytes \(range)", during: operation()) {
            memsnap_punch_hole(raw, Int64(range.lowerBound), Int64(range.count))
        }
    }

    var allocatedBytes: Int {
        var status = stat()
        return fstat(raw, &status) == 0 ? Int(status.st_blocks) * 512 : 0
    }
}
