#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap

/// Where restored extents go. Restore never writes a caller's data in place: targets stage
/// everything (a temporary file, a fresh memfd) and `commit` publishes it only after every frame
/// verified. `abort` (or deinit) throws the staging away.
///
/// Thread safety: `write` is called from several restore threads at once, for disjoint ranges.
public protocol CheckpointRestoreTarget: AnyObject, Sendable {
    /// Writes `bytes` at `offset` of the address space `tag`.
    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError)
    /// Sets the final size (zero pages at the end are not stored) and publishes the result.
    func commit(imageSize: Int) throws(MemSnapError)
}

/// Stages a raw image in a memfd: for restoring into a Snapshot or out to a stream.
public final class MemoryImageTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let file: MemoryFile

    public init(name: String = "memsnap-restore") throws(MemSnapError) {
        file = try MemoryFile(name: name)
    }

    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        try writeImage(file.descriptor.rawValue, tag: tag, offset: offset, bytes: bytes,
                       during: "restore into memory image")
    }

    public func commit(imageSize: Int) throws(MemSnapError) {
        try file.resize(to: imageSize)
    }
}

/// Stages a raw image in a temporary file next to `path` and renames it into place on commit
/// (replacing an existing file only with `force`).
public final class ImageFileTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let path: String
    private let output: CheckpointOutput

    public init(path: String, force: Bool) throws(MemSnapError) {
        self.path = path
        output = try CheckpointOutput.file(path, force: force)
    }

    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        try writeImage(output.descriptor, tag: tag, offset: offset, bytes: bytes,
                       during: "restore into \(path)")
    }

    public func commit(imageSize: Int) throws(MemSnapError) {
        guard ftruncate(output.descriptor, off_t(imageSize)) == 0 else {
            throw MemSnapError.systemCall("ftruncate", during: "restore into \(path)")
        }
        try output.commit(during: "restore into \(path)")
    }
}

/// pwrite of an extent into a raw image (tag 0 only), retrying short writes.
private func writeImage(
    _ descriptor: Int32, tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer,
    during operation: @autoclosure () -> String
) throws(MemSnapError) {
    guard tag == 0 else {
        throw MemSnapError(operation(), .invalidArgument("an extent with tag \(tag) cannot be restored into a raw image"))
    }
    var done = 0
    while done < bytes.count {
        let written = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
        if written < 0 {
            if errno == EINTR { continue }
            throw MemSnapError.systemCall("pwrite", during: operation())
        }
        done += written
    }
}
