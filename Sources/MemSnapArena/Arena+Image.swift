#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap

/// Moving an arena: its heap as of the last completed sync, out (for a checkpoint), and a new
/// arena made from such an image, in. The on-disk format is the one `create` and `sync` write.
extension Arena {
    /// Calls `body` with the heap, from its start to the allocator's top, and the state of the
    /// last completed sync, exactly as a crash-recovering open would find them: read from the
    /// files (the heap file and the log records after its metapage, replayed into a private
    /// mapping), so writes since that sync, in this open or by the allocator, are not in it.
    /// The bytes are valid during the call only.
    ///
    /// Works on read-only and read-write arenas; costs a mapping of the heap file and a copy of
    /// the pages the log holds.
    /// - Throws: `.invalidArgument` once closed; `.unavailable` after a failed fdatasync (the
    ///   files may not hold the last sync); `.corrupt` for a damaged log record or allocator
    ///   header; mapping and read failures; whatever `body` throws.
    public func withSyncedImage<Result>(
        _ body: (UnsafeRawBufferPointer, ArenaImageState) throws(MemSnapError) -> Result
    ) throws(MemSnapError) -> Result {
        let operation = "read the synced image of arena \(path)"
        try ensureOpen(operation)
        if let failedFlush {
            throw MemSnapError(operation, .unavailable("an earlier fdatasync failed (\(failedFlush)); reopen the arena"))
        }
        let image = try VirtualRegion(maxSize: capacity, hugePages: .disabled)
        try image.map(fileDescriptor: heapFile.descriptor.rawValue, fileOffset: ArenaFormat.heapFileOffset, at: 0, length: capacity,
                      sharing: .copyOnWrite)
        let records = try log.recordsToReplay(after: meta, pageLimit: capacity / Page.size, during: operation)
        let base = image.base
        for record in records {
            try log.replay(record, during: operation) { (page, images) throws(MemSnapError) in
                if let source = images.baseAddress { (base + page * Page.size).copyMemory(from: source, byteCount: images.count) }
            }
        }
        let synced = records.last?.header
        let state = ArenaImageState(capacity: capacity, recordedBase: meta.recordedBase,
                                    commit: synced?.commit ?? meta.checkpointCommit, epoch: synced?.epoch ?? meta.epoch,
                                    event: synced?.event ?? meta.event, roots: synced?.roots ?? meta.roots)
        let allocator = ArenaAllocator(base: base, capacity: capacity, recordingWrites: false,
                                       reserveBacking: { (_: Range<Int>, _: Bool, _: String) throws(MemSnapError) in })
        try allocator.validateHeader(during: operation)
        let top = try allocator.top(during: operation)
        return try body(UnsafeRawBufferPointer(start: base, count: top * Page.size), state)
    }

    /// Creates a new arena at `path` (and `PATH-wal`) holding `image` as its heap (from the
    /// heap's start; the rest of the capacity is untouched) with the commit counter, epoch,
    /// event and roots of `state`, and opens it read-write: it opens with the same objects,
    /// roots and epoch/event as the arena the image came from, and its next sync is commit
    /// `state.commit + 1`.
    ///
    /// The image is untrusted: before any file is made, it must pass `check()` (every allocator
    /// structure) in memory; the files are then made under temporary names, opened and checked
    /// again, and renamed into place only then (like `create`, nothing half-made is ever
    /// visible, nothing is made over an existing file or through a link, and a failure leaves
    /// no file behind).
    /// - Throws: `.invalidArgument` for a state no arena can have (capacity, roots, a commit at
    ///   2^63, an unaligned base) or an image larger than the capacity; `.corrupt` naming the
    ///   structure when the image fails its check; `.systemCall(..., EEXIST)` when either name
    ///   is taken; system call failures such as ENOSPC.
    public static func create(
        path: String, image: UnsafeRawBufferPointer, state: ArenaImageState, configuration: Configuration = Configuration()
    ) throws(MemSnapError) -> Arena {
        let operation = "create arena \(path) from a \(ByteCount(image.count)) image"
        guard state.capacity >= 0, ArenaFormat.capacityProblem(UInt64(state.capacity)) == nil else {
            throw MemSnapError(operation, .invalidArgument(
                ArenaFormat.capacityProblem(UInt64(max(0, state.capacity))) ?? "capacity \(state.capacity) is negative"))
        }
        guard image.count <= state.capacity else {
            throw MemSnapError(operation, .tooSmall(what: "the arena's capacity", required: image.count, capacity: state.capacity))
        }
        guard state.roots.count == ArenaFormat.rootCount, state.commit < ArenaFormat.counterLimit,
              state.recordedBase % UInt64(Page.size) == 0 else {
            throw MemSnapError(operation, .invalidArgument(
                "the state has \(state.roots.count) roots (not \(ArenaFormat.rootCount)), commit \(state.commit) "
                + "(at most 2^63 - 1) or an unaligned recorded base \(state.recordedBase)"))
        }
        let logPath = path + "-wal"
        for name in [path, logPath] {
            var status = stat()
            if lstat(name, &status) == 0 { throw MemSnapError(operation, .systemCall("create \(name)", .fileExists)) }
        }
        try checkImage(image, capacity: state.capacity, during: operation)

        var random = SystemRandomNumberGenerator()
        let staging = "\(path).importing-\(String(random.next() & 0xFFFF_FFFF, radix: 16))"
        var created: [(path: String, file: PosixArenaFile)] = []  // files made, under their current names
        do throws(MemSnapError) {
            let heap = try openFile(staging, writable: true, creating: true, during: operation)
            created.append((staging, heap))
            try lock(heap, exclusive: true, timeout: .zero, during: operation)
            let log = try openFile(staging + "-wal", writable: true, creating: true, during: operation)
            created.append((staging + "-wal", log))
            let heapFile = configuration.fileLayer.wrap(heap, .heap)
            let logFile = configuration.fileLayer.wrap(log, .log)
            try heapFile.resize(to: ArenaFormat.heapFileOffset + state.capacity, during: operation)
            try writeNonzeroPages(of: image, to: heapFile, during: operation)
            try heapFile.synchronize(during: operation)
            let meta = ArenaMeta(counter: 1, capacity: state.capacity, recordedBase: state.recordedBase,
                                 checkpointCommit: state.commit, epoch: state.epoch, event: state.event, roots: state.roots)
            try writeMeta(meta, to: heapFile, lastSlot: nil, during: operation) { (file) throws(MemSnapError) in
                try file.synchronize(during: operation)
            }
            try logFile.synchronize(during: operation)
            heap.close()
            log.close()
            // The files as any open will see them: recovered, reserved, and checked once more.
            var checking = Configuration(tracking: .explicit)
            checking.lockTimeout = .zero
            checking.fileLayer = configuration.fileLayer
            let opened = try Arena.open(path: staging, configuration: checking)
            do {
                _ = try opened.check()
                try opened.close()
            } catch {
                opened.abandon()
                throw error
            }
            for (index, final) in [(1, logPath), (0, path)] {
                guard memsnap_rename_noreplace(created[index].path, final) == 0 else {
                    throw MemSnapError.systemCall("rename \(created[index].path) to \(final)", during: operation)
                }
                created[index].path = final
            }
            try syncDirectory(of: path, during: operation)
        } catch {
            // Our files (random names, made with O_EXCL, or renamed by us without replacing anything).
            for (path, _) in created.reversed() { unlink(path) }
            throw error
        }
        return try open(path: path, configuration: configuration)
    }

    /// Runs the allocator's full check over `image` placed at the start of a heap of `capacity`
    /// bytes (in anonymous memory: nothing is written anywhere).
    private static func checkImage(_ image: UnsafeRawBufferPointer, capacity: Int, during operation: String) throws(MemSnapError) {
        let heap = try VirtualRegion(maxSize: capacity, committing: capacity, hugePages: .disabled)
        if let source = image.baseAddress, !image.isEmpty { heap.base.copyMemory(from: source, byteCount: image.count) }
        let allocator = ArenaAllocator(base: heap.base, capacity: capacity, recordingWrites: false,
                                       reserveBacking: { (_: Range<Int>, _: Bool, _: String) throws(MemSnapError) in })
        do {
            _ = try allocator.check(during: operation)
        } catch {
            throw MemSnapError("\(operation): refused, the image fails the arena's check", error.reason)
        }
    }

    /// Writes the image's pages that are not all zero at their place in the heap file (the rest
    /// stays a hole, as in an arena's sparse file).
    private static func writeNonzeroPages(of image: UnsafeRawBufferPointer, to file: any ArenaFile, during operation: String) throws(MemSnapError) {
        guard let base = image.baseAddress else { return }
        var page = 0
        let pages = (image.count + Page.size - 1) / Page.size
        func isZero(_ page: Int) -> Bool {
            let start = page * Page.size, end = min(image.count, start + Page.size)
            var offset = start
            var accumulated: UInt64 = 0
            while offset + 8 <= end {
                accumulated |= base.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                offset += 8
            }
            while offset < end {
                accumulated |= UInt64(base.load(fromByteOffset: offset, as: UInt8.self))
                offset += 1
            }
            return accumulated == 0
        }
        while page < pages {
            guard !isZero(page) else { page += 1; continue }
            var end = page + 1
            while end < pages, !isZero(end), end - page < 256 { end += 1 }
            let start = page * Page.size, stop = min(image.count, end * Page.size)
            try file.write([UnsafeRawBufferPointer(start: base + start, count: stop - start)], at: ArenaFormat.heapFileOffset + start,
                           during: operation)
            page = end
        }
    }
}
