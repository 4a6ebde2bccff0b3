#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap

/// Where restored extents go. Restore never writes a caller's data in place: targets stage
/// everything (a temporary file, a fresh memfd) and `commit` publishes it only after every frame
/// verified. A target that is never committed throws its staging away in deinit.
///
/// Thread safety: `write` is called from several restore threads at once, for ranges that are
/// disjoint in every checkpoint this library writes (a crafted file with extents overlapping
/// across frames restores them in an unspecified order).
public protocol CheckpointRestoreTarget: AnyObject, Sendable {
    /// Called once before any write when the image size is known in advance (file restores;
    /// not one-pass stream restores). Targets may size and map their staging here.
    func prepare(imageSize: Int) throws(MemSnapError)
    /// Writes `bytes` at `offset` of the address space `tag`.
    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError)
    /// Sets the final size (zero pages at the end are not stored) and publishes the result.
    func commit(imageSize: Int) throws(MemSnapError)
}

extension CheckpointRestoreTarget {
    public func prepare(imageSize: Int) throws(MemSnapError) {}
}

/// Stages a raw image in a memfd: for restoring into a Snapshot or out to a stream.
public final class MemoryImageTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let file: MemoryFile
    private var staging: SharedStaging?

    public init(name: String = "memsnap-restore") throws(MemSnapError) {
        file = try MemoryFile(name: name)
    }

    public func prepare(imageSize: Int) throws(MemSnapError) {
        try file.resize(to: imageSize)
        staging = try SharedStaging(descriptor: file.descriptor.rawValue, size: imageSize, during: "restore into memory image")
    }

    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        if let staging {
            try staging.write(tag: tag, offset: offset, bytes: bytes, during: "restore into memory image")
        } else {
            try writeImage(file.descriptor.rawValue, tag: tag, offset: offset, bytes: bytes, during: "restore into memory image")
        }
    }

    public func commit(imageSize: Int) throws(MemSnapError) {
        staging = nil
        try file.resize(to: imageSize)
    }
}

/// A staging file mapped shared: restore threads copy into it in parallel (pwrite to one file
/// serialises on the inode lock, which halved restore speed on tmpfs).
final class SharedStaging: @unchecked Sendable {
    let memory: UnsafeMutableRawBufferPointer

    init(descriptor: Int32, size: Int, during operation: String) throws(MemSnapError) {
        guard size > 0 else {
            memory = UnsafeMutableRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, descriptor, 0), address != MAP_FAILED else {
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
        if let source = bytes.baseAddress, !bytes.isEmpty { (memory.baseAddress! + offset).copyMemory(from: source, byteCount: bytes.count) }
    }
}

/// Stages a raw image in a temporary file next to `path` and renames it into place on commit
/// (replacing an existing file only with `force`).
public final class ImageFileTarget: CheckpointRestoreTarget, @unchecked Sendable {
    public let path: String
    private let output: CheckpointOutput
    private var staging: SharedStaging?

    public init(path: String, force: Bool) throws(MemSnapError) {
        self.path = path
        output = try CheckpointOutput.file(path, force: force)
    }

    public func prepare(imageSize: Int) throws(MemSnapError) {
        guard ftruncate(output.descriptor, off_t(imageSize)) == 0 else {
            throw MemSnapError.systemCall("ftruncate", during: "restore into \(path)")
        }
        staging = try SharedStaging(descriptor: output.descriptor, size: imageSize, during: "restore into \(path)")
    }

    public func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        if let staging {
            try staging.write(tag: tag, offset: offset, bytes: bytes, during: "restore into \(path)")
        } else {
            try writeImage(output.descriptor, tag: tag, offset: offset, bytes: bytes, during: "restore into \(path)")
        }
    }

    public func commit(imageSize: Int) throws(MemSnapError) {
        staging = nil
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
    do throws(PartialWriteFailure) {
        try writeAll(descriptor, [bytes], at: offset)
    } catch {
        throw MemSnapError(operation(), .systemCall("pwrite", error.errno))
    }
}
