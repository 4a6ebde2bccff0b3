#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// Creating and opening arenas: files, locks, validation, recovery, mapping.
extension Arena {
    /// Creates a new arena at `path` (and its log `PATH-wal`) with `capacity` bytes of heap
    /// (rounded up to a page; at least 256 KiB, at most 1 TiB), open for reading and writing.
    /// The heap file is sparse: only pages in use take disk space.
    ///
    /// Both files are made under temporary names and renamed into place only when complete
    /// (the log first, then `PATH`, neither replacing anything), so no other process ever sees a
    /// half-made arena, and a create that fails at any step leaves no file behind.
    ///
    /// - Throws: `.systemCall(..., EEXIST)` if either name is taken (nothing is ever created over
    ///   an existing file or through a symbolic link); `.exceedsMaximum` / `.invalidRange` for a
    ///   capacity out of range; system call failures such as ENOSPC.
    public static func create(path: String, capacity requested: Int, configuration: Configuration = Configuration()) throws(MemSnapError) -> Arena {
        let operation = "create arena \(path)"
        guard let capacity = Page.roundUp(max(requested, ArenaFormat.minimumCapacity)) else {
            throw MemSnapError(operation, .invalidRange(offset: 0, length: requested))
        }
        guard capacity <= ArenaFormat.maximumCapacity else {
            throw MemSnapError(operation, .exceedsMaximum(what: "capacity", requested: requested, maximum: ArenaFormat.maximumCapacity))
        }
        let logPath = path + "-wal"
        for name in [path, logPath] {  // fail at once, before any work; the renames below refuse atomically
            var status = stat()
            if lstat(name, &status) == 0 { throw MemSnapError(operation, .systemCall("create \(name)", .fileExists)) }
        }
        var random = SystemRandomNumberGenerator()
        let suffix = ".creating-\(String(random.next() & 0xFFFF_FFFF, radix: 16))"
        var created: [(path: String, file: PosixArenaFile)] = []
        var arena: Arena? = nil
        do throws(MemSnapError) {
            let heap = try openFile(path + suffix, writable: true, creating: true, during: operation)
            created.append((path + suffix, heap))
            try lock(heap, exclusive: true, timeout: .zero, during: operation)
            let log = try openFile(logPath + suffix, writable: true, creating: true, during: operation)
            created.append((logPath + suffix, log))
            let heapFile = configuration.fileLayer.wrap(heap, .heap)
            let logFile = configuration.fileLayer.wrap(log, .log)
            let mapPages = (capacity / Page.size * 4 + Page.size - 1) / Page.size
            try heapFile.resize(to: ArenaFormat.heapFileOffset + capacity, during: operation)
            // The metapages and the allocator's header and page map are written from the start.
            try heapFile.reserve(0..<ArenaFormat.heapFileOffset + (1 + mapPages) * Page.size, during: operation)
            let region = try VirtualRegion(maxSize: capacity, hugePages: .disabled)
            let meta = ArenaMeta(counter: 1, capacity: capacity, recordedBase: UInt64(region.baseAddress), checkpointCommit: 0,
                                 epoch: 0, event: 0, roots: [UInt64](repeating: 0, count: ArenaFormat.rootCount))
            try writeMeta(meta, to: heapFile, lastSlot: nil, during: operation) { (file) throws(MemSnapError) in
                try file.synchronize(during: operation)
            }
            let opened = Arena(path: path, access: .readWrite, configuration: configuration, meta: meta, region: region,
                               heapFile: heapFile, logFile: logFile, ownedFiles: [heap, log])
            arena = opened
            try opened.mapHeap(during: operation)
            try opened.startTracking()
            opened.backing.resetReservedTop(1 + opened.allocator.mapPages)
            try opened.allocator.format(during: operation)
            opened.declared.insert(0..<1 + opened.allocator.mapPages)
            try opened.commitDirty(epoch: 0, event: 0, during: operation)
            for (index, final) in [(1, logPath), (0, path)] {
                guard memsnap_rename_noreplace(created[index].path, final) == 0 else {
                    throw MemSnapError.systemCall("rename \(created[index].path) to \(final)", during: operation)
                }
                created[index].path = final
                created[index].file.path = final
            }
            try syncDirectory(of: path, during: operation)
            return opened
        } catch {
            for (path, file) in created.reversed() { removeIfStillOurs(path, file) }
            arena?.abandon()
            throw error
        }
    }

    /// Opens the existing arena at `path`, recovering the last completed sync: read-write (an
    /// exclusive lock; the log is checkpointed into the heap file) or read-only (a shared lock;
    /// recovery happens in memory and no file is written).
    ///
    /// - Throws: `.systemCall("open ...", ENOENT)` if `PATH` or `PATH-wal` is missing (nothing is
    ///   created); ELOOP for a symbolic link; `.invalidArgument` for a file that is not a regular
    ///   file; `.systemCall("flock ...", EWOULDBLOCK)` when another open holds a conflicting lock
    ///   for longer than `configuration.lockTimeout`; `.corrupt` naming the structure when the
    ///   metapages, the heap file's size, a sealed log record or the allocator's header are
    ///   wrong; `.unavailable` when automatic tracking cannot start; other system call failures.
    public static func open(path: String, access: Access = .readWrite, configuration: Configuration = Configuration()) throws(MemSnapError) -> Arena {
        let writable = access == .readWrite
        let operation = "open arena \(path)\(writable ? "" : " read-only")"
        let heap = try openFile(path, writable: writable, creating: false, during: operation)
        try lock(heap, exclusive: writable, timeout: configuration.lockTimeout, during: operation)
        let heapFile = configuration.fileLayer.wrap(heap, .heap)
        var (meta, bothIntact, newestSlot) = try readMeta(heapFile, during: operation)
        let size = try heapFile.size(during: operation)
        guard size == ArenaFormat.heapFileOffset + meta.capacity else {
            throw MemSnapError(operation, .corrupt(
                "the heap file holds \(size) bytes, its metapage says \(ArenaFormat.heapFileOffset) + capacity \(meta.capacity)"))
        }
        let log = try openFile(path + "-wal", writable: writable, creating: false, during: operation)
        let logFile = configuration.fileLayer.wrap(log, .log)
        if writable && !bothIntact {
            // One copy is torn or damaged: rewrite both from the good one, so the next damage
            // still has a copy to fall back on.
            meta.counter += 1
            try writeMeta(meta, to: heapFile, lastSlot: newestSlot, during: operation) { (file) throws(MemSnapError) in
                try file.synchronize(during: operation)
            }
        }
        let region = try VirtualRegion(maxSize: meta.capacity, hugePages: .disabled,
                                       preferredAddress: meta.recordedBase == 0 ? nil : UInt(meta.recordedBase))
        let arena = Arena(path: path, access: access, configuration: configuration, meta: meta, region: region,
                          heapFile: heapFile, logFile: logFile, ownedFiles: [heap, log])
        do {
            if writable { try arena.checkpoint(during: operation) }  // recovery: replay whatever the log holds
            try arena.mapHeap(during: operation)
            if !writable { try arena.replayInMemory(during: operation) }
            try arena.allocator.validateHeader(during: operation)
            if writable {
                try arena.reserveBackingForPagesInUse(during: operation)
                try arena.startTracking()
                try arena.allocator.releasePending(during: operation)
            }
            return arena
        } catch {
            arena.abandon()
            throw error
        }
    }

    /// Opens the arena at `path` read-write, creating it with `capacity` bytes first if `PATH`
    /// does not exist (`capacity` is ignored otherwise: it was fixed at creation).
    /// - Throws: as `create` and `open`.
    public static func openOrCreate(path: String, capacity: Int, configuration: Configuration = Configuration()) throws(MemSnapError) -> Arena {
        var status = stat()
        if lstat(path, &status) != 0 && errno == ENOENT {
            do {
                return try create(path: path, capacity: capacity, configuration: configuration)
            } catch {
                // Another process created it meanwhile: open theirs. (A stale PATH-wal alone is
                // the create's error.)
                guard error.errno == .fileExists, lstat(path, &status) == 0 else { throw error }
            }
        }
        return try open(path: path, configuration: configuration)
    }

    /// Whether the file at `path` starts like an arena: the metapage magic in either slot,
    /// intact or not (so a damaged arena is reported as one by `open`, rather than taken for
    /// some other kind of file). Reads only; never follows a symbolic link.
    public static func isArena(path: String) -> Bool {
        guard let file = try? openFile(path, writable: false, creating: false, during: "probe \(path)"),
              let slots = try? file.bytes(ArenaFormat.slotSize + 8, at: 0, during: "probe \(path)") else { return false }
        return slots.withUnsafeBytes { bytes in
            [0, ArenaFormat.slotSize].contains { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: $0, as: UInt64.self)) == ArenaFormat.metaMagic }
        }
    }

    // MARK: Mapping and recovery

    func mapHeap(during operation: String) throws(MemSnapError) {
        try region.map(fileDescriptor: heapFile.descriptor.rawValue, fileOffset: ArenaFormat.heapFileOffset, at: 0, length: capacity,
                       sharing: .copyOnWrite)
        // A heap is touched at random: without this, each first touch of a page read-ahead
        // zero-fills a whole window of the sparse file (measured: 3.8 ms per store, not 30 µs).
        try region.advise(.random, range: 0..<capacity)
    }

    func startTracking() throws(MemSnapError) {
        if configuration.tracking == .automatic {
            tracker = try ArenaWriteTracker(region: region, pageCount: capacity / Page.size, configuration: configuration)
        }
    }

    /// Read-only recovery: the sealed records newer than the metapage are copied into the
    /// private mapping, never into the file.
    func replayInMemory(during operation: String) throws(MemSnapError) {
        let records = try log.recordsToReplay(after: meta, pageLimit: capacity / Page.size, during: operation)
        let heap = region.base
        for record in records {
            try log.replay(record, during: operation) { (page, images) throws(MemSnapError) in
                if let source = images.baseAddress { (heap + page * Page.size).copyMemory(from: source, byteCount: images.count) }
            }
        }
        if let last = records.last?.header {
            committed = CommittedState(commit: last.commit, epoch: last.epoch, event: last.event, roots: last.roots)
            workingRoots = last.roots
        }
    }

    /// Makes the file system back every page whose contents matter, so a store into the heap
    /// cannot fault for lack of space (arenas made before allocations reserved their pages, or
    /// pages punched by compaction and reused).
    func reserveBackingForPagesInUse(during operation: String) throws(MemSnapError) {
        for pages in try allocator.pagesInUse(during: operation) {
            try backing.reserve(pages, aboveTop: false, during: operation)
        }
        backing.resetReservedTop(try allocator.top(during: operation))
    }
}
