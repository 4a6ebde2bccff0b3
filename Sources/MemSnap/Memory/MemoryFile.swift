#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// An anonymous in-memory file (`memfd_create` with `MFD_CLOEXEC`) that can be resized and mapped
/// shared or copy-on-write into a `VirtualRegion`.
///
/// Ownership: the file owns its descriptor and closes it in `deinit`. Mappings made from it keep
/// the memory alive on their own (the kernel holds a reference), so dropping the file while
/// regions still map it is safe. Do not close `descriptor` yourself.
///
/// Thread safety: every method may be called from any thread. Shrinking the file while a mapping
/// still covers the cut pages makes accesses to them raise SIGBUS; memsnap never shrinks a file
/// it has mapped, and callers must not either.
public final class MemoryFile: Sendable {
    /// How a mapping shares the file's pages.
    public enum Sharing: Sendable {
        /// Writes go to the file and are seen by every shared mapping (`MAP_SHARED`).
        case shared
        /// Writes stay private to the mapping (`MAP_PRIVATE`). Pages the mapping has not yet
        /// written still show later changes made to the file.
        case copyOnWrite
    }

    /// The owned descriptor. Valid for the file's lifetime.
    public let descriptor: FileDescriptor
    /// The name given to memfd_create; shown in /proc/self/maps as "/memfd:NAME (deleted)".
    public let name: String
    private let currentSize: Locked<Int>

    /// Creates an empty memory file and sizes it to `size` bytes.
    ///
    /// - Throws: `.systemCall("memfd_create", ENOSYS)` where the kernel has no memfd,
    ///   `EMFILE` when out of descriptors; `.systemCall("ftruncate", ...)` if it cannot be sized.
    public init(name: String = "memsnap", size: Int = 0) throws(MemSnapError) {
        let fd = memsnap_memfd_create(name, MEMSNAP_MFD_CLOEXEC)
        guard fd >= 0 else {
            throw MemSnapError.systemCall("memfd_create", during: "create memory file \"\(name)\"")
        }
        self.descriptor = FileDescriptor(rawValue: fd)
        self.name = name
        self.currentSize = Locked(0)
        try resize(to: size)
    }

    deinit {
        try? descriptor.close()
    }

    /// The file's size in bytes.
    public var size: Int { currentSize.withLock { $0 } }

    /// Sets the file's size. New bytes read as zero.
    /// - Throws: `.invalidRange` for a negative size; `.systemCall("ftruncate", ...)`.
    public func resize(to newSize: Int) throws(MemSnapError) {
        let operation = "resize memory file \"\(name)\" to \(ByteCount(newSize))"
        guard newSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: newSize)) }
        try currentSize.withLock { (size: inout Int) throws(MemSnapError) in
            guard size != newSize else { return }
            guard ftruncate(descriptor.rawValue, off_t(newSize)) == 0 else {
                throw MemSnapError.systemCall("ftruncate", during: operation)
            }
            size = newSize
        }
    }

    /// Maps `length` bytes of the file, from `fileOffset`, at `regionOffset` inside `region`,
    /// replacing what was there (`MAP_FIXED`, but only inside memsnap's own reservation).
    ///
    /// `length` is rounded up to a page. The bytes between the end of the file and the end of its
    /// last page read as zero.
    ///
    /// - Throws: `.unaligned` if an offset is not a page multiple; `.outOfBounds` if the mapping
    ///   would reach past the file's last page (such pages raise SIGBUS) or past the region's
    ///   reservation; `.invalidArgument` if it would leave a hole after the region's committed
    ///   prefix; `.systemCall("mmap", ...)`.
    public func map(
        into region: VirtualRegion, at regionOffset: Int = 0, fileOffset: Int = 0, length: Int, sharing: Sharing
    ) throws(MemSnapError) {
        let operation = "map memory file \"\(name)\" (\(ByteCount(length)) at file offset \(fileOffset)) "
            + "into region at offset \(regionOffset)"
        let mappedLength = try Page.roundUp(length, during: operation)
        try Page.requireAligned(fileOffset, "file offset", during: operation)
        // Hold the size lock across check and map, so a concurrent shrink cannot slip between
        // them and leave a mapping past the end of the file. Lock order: file, then region.
        try currentSize.withLock { (size: inout Int) throws(MemSnapError) in
            let fileLimit = try Page.roundUp(size, during: operation)
            _ = try checkedRange(offset: fileOffset, length: mappedLength, within: fileLimit, during: operation)
            try region.mapFile(descriptor.rawValue, fileOffset: fileOffset, at: regionOffset, length: mappedLength,
                               shared: sharing == .shared, during: operation)
        }
    }
}
