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
/// Ownership: owns the memfd (`file`) and its staging mapping.
public final class MemoryImageTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let file: MemoryFile
    private var staging: SharedStaging?
    private var discarded = false

    /// - Throws: `.systemCall` if the memfd cannot be created.
    public init(name: String = "memsnap-restore") throws(MemSnapError) {
        file = try MemoryFile(name: name)
    }

    /// Sizes the memfd and maps it for parallel writes.
    /// - Throws: `.invalidArgument` for a negative size or after `discard()`; resize or mmap failures.
    public func prepare(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into memory image"
        guard !discarded else { throw MemSnapError(operation, .invalidArgument("the target was discarded")) }
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        try file.resize(to: imageSize)
        staging = try SharedStaging(descriptor: file.descriptor, size: imageSize, during: operation)
    }

    /// - Throws: `.invalidArgument` for a tag other than 0 or after `discard()`; `.outOfBounds`
    ///   past a prepared size; pwrite failures.
    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        if let staging {
            try staging.write(tag: tag, offset: offset, bytes: bytes, during: "restore into memory image")
        } else {
            guard !discarded else {
                throw MemSnapError("restore into memory image", .invalidArgument("the target was discarded"))
            }
            try writeImage(file.descriptor, tag: tag, offset: offset, bytes: bytes, during: "restore into memory image")
        }
    }

    /// - Throws: `.invalidArgument` after `discard()`; resize failures.
    public func commit(imageSize: Int) throws(MemSnapError) {
        guard !discarded else { throw MemSnapError("restore into memory image", .invalidArgument("the target was discarded")) }
        staging = nil
        try file.resize(to: imageSize)
    }

    /// Unmaps the staging and empties the memfd, giving its memory back.
    public func discard() {
        discarded = true
        staging = nil
        try? file.resize(to: 0)
    }
}

/// A staging file mapped shared: restore threads copy into it in parallel (pwrite to one file
/// serialises on the inode lock, which halved restore speed on tmpfs). The file's blocks must be
/// allocated before it is mapped (see `ImageFileTarget.prepare`): a store to a page the file
/// system cannot back is SIGBUS, not an error.
///
/// Ownership: owns the mapping (not the descriptor).
final class SharedStaging: @unchecked Sendable {
    let memory: UnsafeMutableRawBufferPointer

    init(descriptor: FileDescriptor, size: Int, during operation: String) throws(MemSnapError) {
        guard size > 0 else {
            memory = UnsafeMutableRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor.rawValue, 0), address != MAP_FAILED else {
            throw MemSnapError.systemCall("mmap", during: operation)
        }
        memory = UnsafeMutableRawBufferPointer(start: address, count: size)
    }

    deinit {
        if let base = memory.baseAddress { munmap(base, memory.count) }
    }

    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer, during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard tag == 0 else {
            throw MemSnapError(operation(), .invalidArgument("an extent with tag \(tag) cannot be restored into a raw image"))
        }
        guard offset >= 0, offset <= memory.count - bytes.count else {
            throw MemSnapError(operation(), .outOfBounds(offset: offset, length: bytes.count, size: memory.count))
        }
        if let destination = memory.baseAddress, let source = bytes.baseAddress, !bytes.isEmpty {
            (destination + offset).copyMemory(from: source, byteCount: bytes.count)
        }
    }
}

/// Stages a raw image in a temporary file next to `path` and renames it into place on commit
/// (replacing an existing file only with `force`). `prepare` reserves every block of the image
/// first (posix_fallocate), so a full disk is a thrown ENOSPC before anything is written, and the
/// restored file is fully allocated (not sparse).
///
/// Ownership: owns the temporary file (through `CheckpointOutput`) and its staging mapping.
public final class ImageFileTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let path: String
    private let output: CheckpointOutput
    private var staging: SharedStaging?

    /// Creates the temporary file.
    /// - Throws: `.invalidArgument` if `path` exists and `force` is false; open failures.
    public init(path: String, force: Bool) throws(MemSnapError) {
        self.path = path
        output = try CheckpointOutput.file(path, force: force)
    }

    /// Reserves `imageSize` bytes for the temporary file and maps it for parallel writes.
    /// - Throws: `.systemCall("posix_fallocate", ENOSPC)` when the file system cannot hold the
    ///   image (the temporary file is then removed at once); `.invalidArgument` after `discard()`;
    ///   `.invalidRange` for a negative size; mmap failures.
    public func prepare(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into \(path)"
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        let descriptor = try output.liveDescriptor(during: operation)
        if imageSize > 0 {
            // Through a shared mapping, a page the file system cannot allocate is SIGBUS at the
            // store; reserved blocks make a full disk an error here instead.
            let result = posix_fallocate(descriptor.rawValue, 0, off_t(imageSize))
            guard result == 0 else {
                output.discard()
                throw MemSnapError(operation, .systemCall("posix_fallocate \(ByteCount(imageSize))", Errno(rawValue: result)))
            }
        }
        staging = try SharedStaging(descriptor: descriptor, size: imageSize, during: operation)
    }

    /// - Throws: `.invalidArgument` for a tag other than 0 or after `discard()`; `.outOfBounds`
    ///   past the prepared size; pwrite failures (stream restores, which do not prepare).
    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        if let staging {
            try staging.write(tag: tag, offset: offset, bytes: bytes, during: "restore into \(path)")
        } else {
            let descriptor = try output.liveDescriptor(during: "restore into \(path)")
            try writeImage(descriptor, tag: tag, offset: offset, bytes: bytes, during: "restore into \(path)")
        }
    }

    /// Sets the final size, makes the file durable and renames it to `path`.
    /// - Throws: `.invalidArgument` after `discard()` or if `path` appeared meanwhile (without
    ///   `force`); ftruncate, fsync or rename failures.
    public func commit(imageSize: Int) throws(MemSnapError) {
        let operation = "restore into \(path)"
        staging = nil
        let descriptor = try output.liveDescriptor(during: operation)
        guard imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: imageSize)) }
        _ = try systemCall("ftruncate", during: operation) { ftruncate(descriptor.rawValue, off_t(imageSize)) }
        try output.commit(during: operation)
    }

    /// Unmaps the staging and removes the temporary file.
    public func discard() {
        staging = nil
        output.discard()
    }
}

/// pwrite of an extent into a raw image (tag 0 only), retrying short writes.
private func writeImage(
    _ descriptor: FileDescriptor, tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer,
    during operation: @autoclosure () -> String
) throws(MemSnapError) {
    guard tag == 0 else {
        throw MemSnapError(operation(), .invalidArgument("an extent with tag \(tag) cannot be restored into a raw image"))
    }
    do throws(PartialWriteFailure) {
        try writeAll(descriptor.rawValue, [bytes], at: offset)
    } catch {
        throw MemSnapError(operation(), .systemCall("pwrite", error.errno))
    }
}
