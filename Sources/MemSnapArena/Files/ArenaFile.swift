#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// One of an arena's two files, as the arena uses it: positioned reads and writes, flushes,
/// space reservation, size changes and hole punching, each a typed error on failure.
///
/// Every arena file operation goes through this protocol: it is the seam where the tests inject
/// faults (ENOSPC, EIO, a failed fdatasync) and record the writes and flushes a power loss
/// could tear apart. The arena itself uses `PosixArenaFile`.
///
/// Ownership: an implementation owns its descriptor (or wraps one that does).
/// Thread safety: none; the arena serialises its file operations.
protocol ArenaFile: AnyObject {
    /// The path the file was opened at (for messages).
    var path: String { get }
    /// The descriptor, for `mmap` and `flock`, which do not go through the seam.
    var descriptor: Int32 { get }
    /// The file's size in bytes.
    func size(during operation: @autoclosure () -> String) throws(MemSnapError) -> Int
    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (fewer only at
    /// the end of the file). Retries EINTR and short reads.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
              during operation: @autoclosure () -> String) throws(MemSnapError) -> Int
    /// Writes every byte of `buffers`, in order, starting at `offset`. Not atomic: after a
    /// failure any prefix may be in place.
    func write(_ buffers: [UnsafeRawBufferPointer], at offset: Int,
               during operation: @autoclosure () -> String) throws(MemSnapError)
    /// fdatasync: everything written before is durable when this returns.
    func synchronize(during operation: @autoclosure () -> String) throws(MemSnapError)
    /// posix_fallocate: the byte range is backed by the file system (extending the file if it
    /// ends past it), so later writes to it (and mapped stores) cannot fail for lack of space.
    func reserve(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError)
    /// ftruncate.
    func resize(to size: Int, during operation: @autoclosure () -> String) throws(MemSnapError)
    /// Gives the blocks of `range` back to the file system; the range then reads as zeros.
    func punchHole(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError)
    /// Bytes the file system has allocated to the file (st_blocks x 512), or 0 if unknown.
    var allocatedBytes: Int { get }
}

/// What an arena file is for, so a test's file layer can treat the heap and the log apart.
enum ArenaFileRole: Sendable {
    case heap
    case log
}

/// How an arena reaches its files: plain POSIX calls, or (in tests) a layer wrapped around them
/// that injects faults or records writes and flushes.
package struct ArenaFileLayer: Sendable {
    let wrap: @Sendable (PosixArenaFile, ArenaFileRole) -> any ArenaFile

    /// The files themselves.
    package static let posix = ArenaFileLayer { file, _ in file }
}

/// An arena file on a POSIX descriptor it owns (closed by `close()` or deinit).
final class PosixArenaFile: ArenaFile {
    /// Where the file is (updated when `Arena.create` renames it into place).
    var path: String
    private(set) var descriptor: Int32

    /// Takes ownership of `descriptor`.
    init(path: String, descriptor: Int32) {
        self.path = path
        self.descriptor = descriptor
    }

    deinit { close() }

    /// Releases the descriptor (and with it any flock held through it). Idempotent.
    func close() {
        if descriptor >= 0 { Glibc.close(descriptor) }
        descriptor = -1
    }

    func size(during operation: @autoclosure () -> String) throws(MemSnapError) -> Int {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .systemCall("fstat \(path)", during: operation()) }
        return Int(status.st_size)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
              during operation: @autoclosure () -> String) throws(MemSnapError) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var done = 0
        while done < buffer.count {
            let got = pread(descriptor, base + done, buffer.count - done, off_t(offset + done))
            if got < 0 {
                if errno == EINTR { continue }
                throw .systemCall("pread \(path) at offset \(offset + done)", during: operation())
            }
            if got == 0 { break }
            done += got
        }
        return done
    }

    func write(_ buffers: [UnsafeRawBufferPointer], at offset: Int,
               during operation: @autoclosure () -> String) throws(MemSnapError) {
        do throws(PartialWriteFailure) {
            try writeAll(descriptor, buffers, at: offset)
        } catch {
            throw MemSnapError(operation(), .systemCall("pwritev \(path) at offset \(offset + error.bytesWritten)", error.errno))
        }
    }

    func synchronize(during operation: @autoclosure () -> String) throws(MemSnapError) {
        while fdatasync(descriptor) != 0 {
            if errno == EINTR { continue }
            throw .systemCall("fdatasync \(path)", during: operation())
        }
    }

    func reserve(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !range.isEmpty else { return }
        let status = posix_fallocate(descriptor, off_t(range.lowerBound), off_t(range.count))
        guard status == 0 else {
            throw MemSnapError(operation(), .systemCall("posix_fallocate \(path) bytes \(range)", Errno(rawValue: status)))
        }
    }

    func resize(to size: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard ftruncate(descriptor, off_t(size)) == 0 else { throw .systemCall("ftruncate \(path) to \(size) bytes", during: operation()) }
    }

    func punchHole(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !range.isEmpty else { return }
        guard memsnap_punch_hole(descriptor, Int64(range.lowerBound), Int64(range.count)) == 0 else {
            throw .systemCall("fallocate (punch hole) \(path) bytes \(range)", during: operation())
        }
    }

    var allocatedBytes: Int {
        var status = stat()
        return fstat(descriptor, &status) == 0 ? Int(status.st_blocks) * 512 : 0
    }
}

extension ArenaFile {
    /// Reads exactly `buffer.count` bytes at `offset`; false if the file ends first.
    func readExactly(into buffer: UnsafeMutableRawBufferPointer, at offset: Int,
                     during operation: @autoclosure () -> String) throws(MemSnapError) -> Bool {
        try read(into: buffer, at: offset, during: operation()) == buffer.count
    }

    /// `count` bytes at `offset`, or nil if the file ends first.
    func bytes(_ count: Int, at offset: Int, during operation: @autoclosure () -> String) throws(MemSnapError) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let complete = try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(MemSnapError) -> Bool in try readExactly(into: buffer, at: offset, during: operation()) }
        }.get()
        return complete ? bytes : nil
    }

    func write(_ bytes: [UInt8], at offset: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        try withBytes(bytes) { (buffer) throws(MemSnapError) in try write([buffer], at: offset, during: operation()) }
    }
}
