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
    /// The descriptor, for `mmap` and `flock`, which do not go through the seam. Borrowed: the
    /// file's owner closes it.
    var descriptor: FileDescriptor { get }
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
