#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A whole file mapped read-only (MAP_PRIVATE), for reading checkpoints and raw images without
/// copying them into memory.
///
/// Ownership: owns the descriptor and the mapping; releases both in deinit. `bytes` is valid for
/// the mapping's lifetime. An empty file maps to an empty buffer.
public final class ReadOnlyFileMapping: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private let descriptor: Int32

    /// - Throws: `.systemCall` naming open, fstat or mmap.
    public init(path: String, sequential: Bool = false) throws(MemSnapError) {
        let operation = "map \(path)"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MemSnapError.systemCall("open", during: operation) }
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            let error = MemSnapError.systemCall("fstat", during: operation)
            close(fd)
            throw error
        }
        let size = Int(status.st_size)
        self.path = path
        self.descriptor = fd
        guard size > 0 else {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), address != MAP_FAILED else {
            let error = MemSnapError.systemCall("mmap", during: operation)
            close(fd)
            throw error
        }
        if sequential { _ = madvise(address, size, MADV_SEQUENTIAL) }
        bytes = UnsafeRawBufferPointer(start: address, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
        close(descriptor)
    }
}
