#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A file mapped read-only, for checkpointing a raw image without reading it into memory.
/// Owns the mapping and the descriptor.
final class MappedFile {
    let bytes: UnsafeRawBufferPointer
    private let descriptor: Int32

    init(path: String) throws {
        let operation = "map \(path)"
        descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw MemSnapError.systemCall("open", during: operation) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            let error = MemSnapError.systemCall("fstat", during: operation)
            close(descriptor)
            throw error
        }
        let size = Int(status.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let address = mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0), address != MAP_FAILED else {
            let error = MemSnapError.systemCall("mmap", during: operation)
            close(descriptor)
            throw error
        }
        _ = madvise(address, size, MADV_SEQUENTIAL)
        bytes = UnsafeRawBufferPointer(start: address, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
        close(descriptor)
    }
}
