#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import MemSnapCheckpoint
import SystemPackage

/// The checkpoint file reader: any input either opens, verifies and restores, or is rejected.
///
/// Input: one checkpoint file, or a chain: the magic `MSCHAIN1`, a count n (u8, 1 to 8), then n
/// files, each a u32 LE length and its bytes; the last is the tip, the others are the links
/// given to `CheckpointChain` (never looked for in a directory).
enum CheckpointFileFuzzing {
    static let chainMagic = Array("MSCHAIN1".utf8)

    /// Opens the input (through memfds, so no disk), verifies it and restores it, alone or as a
    /// chain; with page hashes, also compares a small image with it.
    static func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count >= chainMagic.count, Array(bytes[0..<chainMagic.count]) == chainMagic else {
            guard let input = FuzzInputFile(bytes) else { return false }
            return exerciseChain(tip: input, links: [])
        }
        var files: [FuzzInputFile] = []
        var position = chainMagic.count
        guard position < bytes.count else { return false }
        let count = Int(bytes[position])
        position += 1
        guard (1...8).contains(count) else { return false }
        for _ in 0..<count {
            guard bytes.count - position >= 4 else { return false }
            let length = Int(UInt32(bytes[position]) | UInt32(bytes[position + 1]) << 8 | UInt32(bytes[position + 2]) << 16
                             | UInt32(bytes[position + 3]) << 24)
            position += 4
            guard length <= bytes.count - position, let file = FuzzInputFile(UnsafeRawBufferPointer(rebasing: bytes[position..<position + length]))
            else { return false }
            files.append(file)
            position += length
        }
        return exerciseChain(tip: files[files.count - 1], links: Array(files.dropLast()))
    }

    private static func exerciseChain(tip: FuzzInputFile, links: [FuzzInputFile]) -> Bool {
        do {
            let file = try CheckpointFile(path: tip.path)
            try file.verify(threads: 2)
            var given: [CheckpointFile] = []
            for link in links {
                let opened = try CheckpointFile(path: link.path)
                try opened.verify(threads: 2)
                given.append(opened)
            }
            let chain = try CheckpointChain(tip: file, links: given, search: .givenLinksOnly)
            try chain.verify(threads: 2)
            // Restoring is capped: a valid footer may claim a huge image.
            guard chain.links.allSatisfy({ $0.imageSize <= 64 << 20 }) else { return true }
            try chain.restore(into: MemoryImageTarget(name: "fuzz-restore"), threads: 2)
            if chain.imageSize <= 1 << 20, let null = FuzzNull() {
                // A comparison with the chain: its page hashes (or a second restore).
                let image = [UInt8](repeating: 0x5A, count: chain.imageSize / 2 + 1)
                _ = try image.withUnsafeBytes {
                    try Checkpoint.write(image: $0, comparingWith: chain, to: .descriptor(FileDescriptor(rawValue: null.descriptor)),
                                         options: CheckpointOptions(style: .v2, info: CheckpointInfo()))
                }
            }
            return true
        } catch {
            return false
        }
    }
}

/// /dev/null, opened for writing. Owns the descriptor.
final class FuzzNull {
    let descriptor: Int32
    init?() {
        descriptor = open("/dev/null", O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
    }
    deinit { close(descriptor) }
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
