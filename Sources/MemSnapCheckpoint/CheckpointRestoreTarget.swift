#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// Where restored extents go. Restore never writes a caller's data in place: targets stage
/// everything (a temporary file, a fresh memfd) and `commit` publishes it only after every frame
/// verified. A target that is never committed throws its staging away in `discard()` (which
/// restores call when they fail) or at the latest in deinit.
///
/// Thread safety: `write` is called from several restore threads at once. Readers reject
/// checkpoints whose extents overlap, within a frame or across frames (docs/FORMAT.md), but an
/// overlap across frames is found only once every frame was read: until then a crafted file can
/// make two threads write the same bytes, in any order. Such a restore always fails and the
/// target is discarded, never committed, so the staged bytes do not matter; a target must only
/// stay memory-safe under such writes.
public protocol CheckpointRestoreTarget: AnyObject, Sendable {
    /// Called once before any write when the image size is known in advance (file restores;
    /// not one-pass stream restores). Targets may size, reserve and map their staging here.
    func prepare(imageSize: Int) throws(MemSnapError)
    /// Writes `bytes` at `offset` of the address space `tag`.
    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError)
    /// Sets the final size (zero pages at the end are not stored) and publishes the result.
    func commit(imageSize: Int) throws(MemSnapError)
    /// Throws the staging away at once (a failed restore calls it, so a restore that ran out of
    /// disk gives the space back before returning its error). Later writes and commits fail.
    func discard()
}

extension CheckpointRestoreTarget {
    public func prepare(imageSize: Int) throws(MemSnapError) {}
    public func discard() {}
}

/// Stages a raw image in a memfd: for restoring into a Snapshot or out to a stream.
///
/// Restore threads write with pwrite (the memfd's pages are allocated by the writes, never
/// zeroed first and never mapped here), so a write the memory cannot back is a thrown error.
///
/// Ownership: owns the memfd (`file`).
public final class MemoryImageTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let file: MemoryFile
    /// The size given to `prepare`, which writes must stay within; nil before it (stream restores).
    private var preparedSize: Int?
    private var discarded = false

    /// - Throws: `.systemCall` if the memfd cannot be created.
    public init(name: String = "memsnap-restore") throws(MemSnapError) {
        file = try MemoryFile(name: name)
    }

    /// Sizes the memfd.
    /// - Throws: `.invalidArgument` after `discard()`; `.invalidRange` for a negative size; resize failures.
    public func prepare(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into memory image"
        guard !discarded else { throw MemSnapError(operation, .invalidArgument("the target was discarded")) }
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        try file.resize(to: imageSize)
        preparedSize = imageSize
    }

    /// - Throws: `.invalidArgument` for a tag other than 0 or after `discard()`; `.outOfBounds`
    ///   past a prepared size; pwrite failures.
    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        let operation = "restore into memory image"
        guard !discarded else { throw MemSnapError(operation, .invalidArgument("the target was discarded")) }
        if let preparedSize {
            try checkBounds(offset: offset, count: bytes.count, size: preparedSize, during: operation)
        }
        try writeImage(file.descriptor, tag: tag, offset: offset, bytes: bytes, during: operation)
    }

    /// - Throws: `.invalidArgument` after `discard()`; resize failures.
    public func commit(imageSize: Int) throws(MemSnapError) {
        guard !discarded else { throw MemSnapError("restore into memory image", .invalidArgument("the target was discarded")) }
        try file.resize(to: imageSize)
    }

    /// Empties the memfd, giving its memory back.
    public func discard() {
        discarded = true
        try? file.resize(to: 0)
    }
}

/// Stages a raw image in a temporary file next to `path` and renames it into place on commit
/// (replacing an existing file only with `force`).
///
/// Restore threads write with pwrite, each first reserving the file's blocks under what it
/// writes (posix_fallocate, in slices of `BlockReservation.sliceSize`), so reserving overlaps
/// decompressing instead of preceding it; `commit` reserves the slices no extent touched. A full
/// disk is therefore a thrown ENOSPC naming `posix_fallocate` and the image size (never a fault:
/// nothing is written through a mapping), and the restored file is fully allocated (not sparse).
///
/// Ownership: owns the temporary file (through `CheckpointOutput`).
public final class ImageFileTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let path: String
    private let output: CheckpointOutput
    /// Built once: `write` runs once per extent, tens of thousands of times per image.
    private let operation: String
    /// Set by `prepare`; nil for stream restores, which write without reserving.
    private var reservation: BlockReservation?

    /// Creates the temporary file.
    /// - Throws: `.invalidArgument` if `path` exists and `force` is false; open failures.
    public init(path: String, force: Bool) throws(MemSnapError) {
        self.path = path
        operation = "restore into \(path)"
        output = try CheckpointOutput.file(path, force: force)
    }

    /// Makes ready to write `imageSize` bytes: later writes reserve the blocks they need.
    /// - Throws: `.invalidArgument` after `discard()`; `.invalidRange` for a negative size.
    public func prepare(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into \(path)"
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        reservation = BlockReservation(descriptor: try output.liveDescriptor(during: operation), imageSize: imageSize)
    }

    /// - Throws: `.invalidArgument` for a tag other than 0 or after `discard()`; `.outOfBounds`
    ///   past the prepared size; `.systemCall("posix_fallocate IMAGE-SIZE", ENOSPC)` when the
    ///   file system cannot hold the image; pwrite failures.
    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        let descriptor = try output.liveDescriptor(during: operation)
        guard tag == 0 else {
            throw MemSnapError(operation, .invalidArgument("an extent with tag \(tag) cannot be restored into a raw image"))
        }
        if let reservation {
            try checkBounds(offset: offset, count: bytes.count, size: reservation.imageSize, during: operation)
            try reservation.reserve(offset..<offset + bytes.count, during: operation)
        }
        try writeImage(descriptor, tag: tag, offset: offset, bytes: bytes, during: operation)
    }

    /// Reserves what no write did, sets the final size, makes the file durable and renames it to `path`.
    /// - Throws: `.invalidArgument` after `discard()` or if `path` appeared meanwhile (without
    ///   `force`); posix_fallocate (ENOSPC), ftruncate, fsync or rename failures.
    public func commit(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into \(path)"
        let descriptor = try output.liveDescriptor(during: operation)
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        try reservation?.reserveRemaining(during: operation)
        _ = try systemCall("ftruncate", during: operation) { ftruncate(descriptor.rawValue, off_t(imageSize)) }
        try output.commit(during: operation)
    }

    /// Removes the temporary file.
    public func discard() {
        output.discard()
    }
}

/// The file blocks of a staged image, reserved slice by slice with posix_fallocate as restore
/// threads reach them. Reserving a slice twice (two threads at once) is harmless: the second
/// call finds the blocks allocated.
///
/// Thread safety: `reserve` may be called from several threads at once.
final class BlockReservation: Sendable {
    /// Large enough that a 512 MiB image takes 256 calls, small enough that two threads writing
    /// neighbouring frames rarely wait for each other's.
    static let sliceSize = 2 << 20
    let imageSize: Int
    private let descriptor: FileDescriptor
    private let reserved: Locked<[Bool]>

    init(descriptor: FileDescriptor, imageSize: Int) {
        self.descriptor = descriptor
        self.imageSize = imageSize
        reserved = Locked([Bool](repeating: false, count: imageSize / Self.sliceSize + 1))
    }

    /// Reserves every slice that `range` (within the image) touches.
    func reserve(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !range.isEmpty else { return }
        for slice in range.lowerBound / Self.sliceSize...(range.upperBound - 1) / Self.sliceSize {
            try reserveSlice(slice, during: operation())
        }
    }

    /// Reserves the slices no write reserved (an image's all-zero stretches).
    func reserveRemaining(during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard imageSize > 0 else { return }
        for slice in 0...(imageSize - 1) / Self.sliceSize { try reserveSlice(slice, during: operation()) }
    }

    private func reserveSlice(_ slice: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        if self.reserved.withLock({ $0[slice] }) { return }
        let start = slice * Self.sliceSize  // slice <= imageSize / sliceSize: no overflow
        let length = min(Self.sliceSize, imageSize - start)
        guard length > 0 else { return }
        let raw = descriptor.rawValue
        // posix_fallocate returns its error instead of setting errno: adapted to valueOrErrno.
        let reserved = valueOrErrno { () -> Int32 in
            let result = posix_fallocate(raw, off_t(start), off_t(length))
            if result != 0 { Glibc.errno = result }
            return result == 0 ? 0 : -1
        }
        if case let .failure(errno) = reserved {
            throw MemSnapError(operation(), .systemCall("posix_fallocate \(ByteCount(imageSize))", errno))
        }
        self.reserved.withLock { $0[slice] = true }
    }
}

/// Checks that `count` bytes at `offset` lie within `size`.
private func checkBounds(offset: Int, count: Int, size: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
    guard offset >= 0, count <= size, offset <= size - count else {
        throw MemSnapError(operation(), .outOfBounds(offset: offset, length: count, size: size))
    }
}

/// pwrite of an extent into a raw image (tag 0 only), retrying short writes, without an iovec
/// array: restores call this once per extent, tens of thousands of times. The caller checked that
/// `offset + bytes.count` is within the image.
private func writeImage(
    _ descriptor: FileDescriptor, tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer,
    during operation: @autoclosure () -> String
) throws(MemSnapError) {
    guard tag == 0 else {
        throw MemSnapError(operation(), .invalidArgument("an extent with tag \(tag) cannot be restored into a raw image"))
    }
    do throws(PartialWriteFailure) {
        try writeAll(descriptor.rawValue, bytes, at: offset)
    } catch {
        throw MemSnapError(operation(), .systemCall("pwrite", error.errno))
    }
}
