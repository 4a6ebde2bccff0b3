#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import MemSnapArena

/// The arena opener: a real arena's files (metapages, heap with the allocator's structures, a
/// log holding unreplayed records), patched by the input, opened read-only and read-write and
/// used. Any input must end in a typed error or a working arena.
///
/// Input: byte 0 holds flags (bit 0: re-seal both metapages' CRC32C after patching; bit 1:
/// re-seal every log record's CRC32C; bit 2: also open read-write, allocate, free, sync and
/// reopen). Then patches, each `target u8, offset u32 LE, length u8, bytes`: target % 4 is 0
/// (write into the heap file at offset % its size), 1 (into the log), 2 (truncate the heap
/// file to offset % (size + 1)), 3 (resize the log to offset % (2 x size + 1)). Re-sealing
/// matters: without it almost every patch stops at a checksum and the structural checks the
/// issue is about are never reached.
enum ArenaFuzzing {
    static func exercise(_ input: UnsafeRawBufferPointer) -> Bool {
        guard let base = baseFiles, let directory = workspace else { return false }
        let flags = input.first ?? 0
        var heap = base.heap, log = base.log
        var position = 1
        while input.count - position >= 6 {
            let target = input[position] % 4
            let offset = Int(UInt32(input[position + 1]) | UInt32(input[position + 2]) << 8
                             | UInt32(input[position + 3]) << 16 | UInt32(input[position + 4]) << 24)
            let length = min(Int(input[position + 5]), input.count - position - 6)
            let patch = input[(position + 6)..<(position + 6 + length)]
            position += 6 + length
            switch target {
            case 0: apply(patch, to: &heap, at: offset)
            case 1: apply(patch, to: &log, at: offset)
            case 2: heap.removeLast(heap.count - offset % (heap.count + 1))
            default: resize(&log, to: offset % (2 * log.count + 1))
            }
        }
        if flags & 1 != 0 { resealMetapages(&heap) }
        if flags & 2 != 0 { resealLog(&log) }
        let path = "\(directory)/fuzz-\(pthread_self()).arena"  // one pair of files per thread: calls are independent
        guard write(heap, to: path), write(log, to: path + "-wal") else { return false }
        var configuration = Arena.Configuration(tracking: .explicit, checkpointLogBytes: 64 << 10)
        configuration.lockTimeout = .zero
        var accepted = inspect(path, configuration)
        if flags & 4 != 0 { accepted = use(path, configuration) && accepted }
        unlink(path)
        unlink(path + "-wal")
        return accepted
    }

    /// Read-only: what `memsnap arena info`, `check` and `checkpoint` do.
    private static func inspect(_ path: String, _ configuration: Arena.Configuration) -> Bool {
        do {
            let arena = try Arena.open(path: path, access: .readOnly, configuration: configuration)
            defer { try? arena.close() }
            let statistics = try arena.statistics
            _ = try? arena.check()
            for index in 0..<32 { _ = try arena.root(index) }
            let checksum = arena.withUnsafeHeapBytes { heap in
                memsnap_crc32c(0, heap.baseAddress, min(heap.count, statistics.usedBytes))
            }
            return checksum != 1  // keeps the read
        } catch {
            return false
        }
    }

    /// Read-write: recovery into the file, allocation, free, sync, reopen.
    private static func use(_ path: String, _ configuration: Arena.Configuration) -> Bool {
        do {
            let arena = try Arena.open(path: path, configuration: configuration)
            var offsets: [ArenaOffset] = []
            for size in [24, 700, 5000] {
                if let offset = try? arena.allocate(byteCount: size) {
                    try arena.address(of: offset, byteCount: size).initializeMemory(as: UInt8.self, repeating: 0x5A, count: size)
                    arena.markDirty(Int(offset.rawValue)..<Int(offset.rawValue) + size)
                    offsets.append(offset)
                }
            }
            if let first = offsets.first { _ = try? arena.free(first) }
            _ = try? arena.sync(epoch: arena.epoch, event: arena.event &+ 1)
            try arena.close()
            let reopened = try Arena.open(path: path, access: .readOnly, configuration: configuration)
            _ = try? reopened.check()
            try reopened.close()
            return true
        } catch {
            return false
        }
    }

    // MARK: Input files

    private static func apply(_ patch: Slice<UnsafeRawBufferPointer>, to file: inout [UInt8], at offset: Int) {
        guard !file.isEmpty else { return }
        let start = offset % file.count
        for (index, byte) in patch.enumerated() where start + index < file.count { file[start + index] = byte }
    }

    private static func resize(_ file: inout [UInt8], to size: Int) {
        if size < file.count { file.removeLast(file.count - size) } else { file += [UInt8](repeating: 0, count: size - file.count) }
    }

    /// Recomputes each metapage slot's CRC32C over its first 320 bytes (docs/FORMAT.md).
    private static func resealMetapages(_ heap: inout [UInt8]) {
        for slot in [0, 4096] where heap.count >= slot + 324 {
            let crc = heap.withUnsafeBytes { memsnap_crc32c(0, $0.baseAddress! + slot, 320) }
            withUnsafeBytes(of: crc.littleEndian) { for index in 0..<4 { heap[slot + 320 + index] = $0[index] } }
        }
    }

    /// Walks the records from offset 0 by their size fields and recomputes each one's CRC32C.
    private static func resealLog(_ log: inout [UInt8]) {
        var position = 0
        while log.count - position >= 320 {
            let size = log.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: position + 40, as: UInt64.self)) }
            guard size >= 324, size <= UInt64(log.count - position) else { return }
            let end = position + Int(size)
            let crc = log.withUnsafeBytes { memsnap_crc32c(0, $0.baseAddress! + position, end - 4 - position) }
            withUnsafeBytes(of: crc.littleEndian) { for index in 0..<4 { log[end - 4 + index] = $0[index] } }
            position = end
        }
    }

    private static func write(_ bytes: [UInt8], to path: String) -> Bool {
        let descriptor = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var done = 0
        while done < bytes.count {
            let result = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            guard result > 0 else { return false }
            done += result
        }
        return true
    }

    private static func read(_ path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 { return nil }
            if count == 0 { return bytes }
            bytes += chunk[0..<count]
        }
    }

    // MARK: The base arena

    /// A directory of this process's own in /dev/shm (or /tmp) for the patched files.
    private static let workspace: String? = {
        for root in ["/dev/shm", "/tmp"] {
            let path = "\(root)/memsnap-fuzz-arena-\(getpid())"
            if mkdir(path, 0o700) == 0 || errno == EEXIST { return path }
        }
        return nil
    }()

    /// A 64-page arena whose heap file holds a first session (slab slots of two classes, page
    /// runs, a free run, roots) and whose log holds two more syncs, never checkpointed
    /// (rewritten pages and a root). The log is cut after its last record.
    static let baseFiles: (heap: [UInt8], log: [UInt8])? = {
        guard let directory = workspace else { return nil }
        let path = "\(directory)/base.arena"
        unlink(path)
        unlink(path + "-wal")
        defer {
            unlink(path)
            unlink(path + "-wal")
        }
        do {
            let configuration = Arena.Configuration(tracking: .explicit)
            let arena = try Arena.create(path: path, capacity: 64 * Page.size, configuration: configuration)
            var kept: [ArenaOffset] = []
            for size in [40, 40, 300, 3 * Page.size, 5 * Page.size, 2 * Page.size] {
                let offset = try arena.allocate(byteCount: size)
                try arena.address(of: offset, byteCount: size).initializeMemory(as: UInt8.self, repeating: UInt8(size & 0xFF), count: size)
                arena.markDirty(Int(offset.rawValue)..<Int(offset.rawValue) + size)
                kept.append(offset)
            }
            try arena.setRoot(0, to: kept[3].rawValue)
            try arena.sync(epoch: 1, event: 1)
            try arena.free(kept[4])
            try arena.sync(epoch: 1, event: 2)
            try arena.sync(epoch: 1, event: 3)  // makes the release of that free durable: a free run
            try arena.close()
            // The second session writes data pages and roots only, so the allocator's
            // structures are the heap file's (patches to them are not overwritten by replay).
            let again = try Arena.open(path: path, configuration: configuration)
            try again.address(of: kept[2], byteCount: 300).initializeMemory(as: UInt8.self, repeating: 7, count: 300)
            again.markDirty(Int(kept[2].rawValue)..<Int(kept[2].rawValue) + 300)
            try again.sync(epoch: 1, event: 4)
            try again.address(of: kept[3], byteCount: 2 * Page.size).initializeMemory(as: UInt8.self, repeating: 9, count: 2 * Page.size)
            again.markDirty(Int(kept[3].rawValue)..<Int(kept[3].rawValue) + 2 * Page.size)
            try again.setRoot(1, to: kept[2].rawValue)
            try again.sync(epoch: 1, event: 5)
            let logBytes = try again.statistics.logBytes
            again.abandon()
            guard let heap = read(path), let log = read(path + "-wal") else { return nil }
            return (heap, Array(log.prefix(logBytes)))
        } catch {
            return nil
        }
    }()
}
