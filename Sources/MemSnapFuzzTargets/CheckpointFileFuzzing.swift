#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import MemSnapCheckpoint

/// The checkpoint file reader: any input either opens, verifies and restores, or is rejected.
enum CheckpointFileFuzzing {
    /// Opens `bytes` as a checkpoint (through a memfd, so no disk), verifies it and restores it.
    static func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let input = FuzzInputFile(bytes) else { return false }
        do {
            let file = try CheckpointFile(path: input.path)
            try file.verify(threads: 2)
            // Restoring is capped: a valid header may claim a huge image.
            guard file.imageSize <= 64 << 20 else { return true }
            try file.restore(into: MemoryImageTarget(name: "fuzz-restore"), threads: 2)
            return true
        } catch {
            return false
        }
    }
}

/// Fuzz input in a memfd (no disk), reachable by path through /proc/self/fd. Owns the descriptor.
final class FuzzInputFile {
    let descriptor: Int32
    var path: String { "/proc/self/fd/\(descriptor)" }

    init?(_ bytes: UnsafeRawBufferPointer) {
        descriptor = memsnap_memfd_create("fuzz-input", MEMSNAP_MFD_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        var written = 0
        while written < bytes.count, let base = bytes.baseAddress {
            let result = write(descriptor, base + written, bytes.count - written)
            if result <= 0 { return nil }
            written += result
        }
        guard lseek(descriptor, 0, SEEK_SET) == 0 else { return nil }
    }

    deinit { close(descriptor) }
}
