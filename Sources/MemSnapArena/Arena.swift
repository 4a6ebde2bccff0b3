#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap

/// A persistent memory arena: a heap kept in a file, with an allocator, 32 roots and a
/// crash-consistent `sync`.
///
/// After a crash at any instant (a killed process or a power loss), opening yields the state of
/// the last completed `sync`, bit for bit (roots, epoch, event and every byte of the heap). See
/// ArenaFormat for the files and the protocol: a sync appends one write-ahead-log record
/// holding every page written since the previous sync and makes it durable with one fdatasync;
/// its cost follows the pages written, with no limit on how many. Pages are found by a
/// `DirtyTracker` (uffd-async here), or, with `Configuration.tracking = .explicit`, declared
/// with `markDirty`.
///
/// Files: an arena is two files, `PATH` and `PATH-wal`. Only `create` (and `openOrCreate` when
/// `PATH` is missing) makes them; neither is ever followed through a symbolic link, and a
/// failed create removes what it made. A read-only open (`access: .readOnly`) recovers the last
/// completed sync in memory and writes nothing.
///
/// Locking: a read-write open takes an exclusive `flock` on `PATH`, a read-only open a shared
/// one: a writer excludes every other open, readers exclude writers, also opens in the same
/// process; a conflicting open fails (EWOULDBLOCK) after `Configuration.lockTimeout`. Caveats, as LMDB's: the lock is
/// advisory (a process that ignores it, or truncates the files, can still damage the arena or
/// make the mapped heap fault); a child of `fork` inherits the descriptors and the lock but
/// must not use the arena (its mapping is a copy and its syncs would interleave with the
/// parent's), and until it execs or exits it keeps the lock even after the parent closes the
/// arena; `flock` over NFS is emulated or absent, and the durability of `fdatasync` there is the
/// server's: keep arenas on local disks.
///
/// Addresses: the heap is mapped at the address recorded when the arena was created if that
/// range is free, else elsewhere (`isAtRecordedBase` tells). Store offsets (`ArenaOffset`) in the
/// arena, not raw pointers, unless you check `isAtRecordedBase`.
///
/// Untrusted files: metapages, log records and the allocator's structures are validated before
/// use; a damaged or crafted arena is a `.corrupt` error naming the structure, never a crash
/// or a write outside the heap.
///
/// Ownership: the arena owns its files, mapping and tracker; `close()` (or deinit) checkpoints
/// the log into the heap file and releases them: the heap is unmapped, so pointers into it
/// must not be used after `close`. Writes made after the last `sync` are lost.
/// Thread safety: none, and the type says so: `Arena` is not `Sendable`. Use an arena from one
/// thread (like LMDB's single writer); the heap memory itself may be written by any thread
/// between syncs if the caller orders those writes before the sync.
public final class Arena {
    public enum Access: Sendable {
        /// Allocate, write, sync; an exclusive lock.
        case readWrite
        /// Inspect only: recovery happens in memory, nothing is written; a shared lock.
        case readOnly
    }

    public struct Configuration: Sendable {
        public enum Tracking: Sendable {
            /// A `DirtyTracker` finds written pages (MEMSNAP_DIRTY_TRACKING, or auto).
            case automatic
            /// Pages declared with `markDirty` are synced, plus the pages the arena's allocator
            /// wrote (it records them itself).
            case explicit
        }
        /// Which part of the heap a sync with `.automatic` tracking scans for written pages.
        public enum SyncScan: Sendable {
            /// The whole heap, every sync: the cost of a sync's scan follows the heap's size
            /// (about 0.35 ms per GiB of heap here), and every write is found, system calls'
            /// (`read(2)` into the heap) included.
            case wholeHeap
            /// Only the chunks of the heap (2 MiB each) written since the last sync, plus those
            /// the program rewrites so often that they are left writable: a chunk is
            /// write-protected again by the sync that scans its write (or, for a chunk that
            /// keeps faulting back in soon after, once it has gone up to 64 syncs unwritten), and
            /// its next first write takes a fault (a signal and an mprotect, a few microseconds
            /// plus a walk of the chunk's page-table entries) that puts it back in the scan. A
            /// sync's scan then costs what was written lately, not the heap; under a high write
            /// rate no chunk stays protected and a sync scans the whole heap.
            ///
            /// Choose it for large heaps synced often with few writes per sync (below about one
            /// chunk in ten written per sync), where the whole-heap scan would dominate a small
            /// sync, and where nothing but the program's own stores writes into the heap.
            /// Costs: a system call that writes into a protected chunk (`read(2)` or `recv(2)`
            /// into the heap) fails with EFAULT instead of being tracked, so write such buffers
            /// from the program first or use `.wholeHeap`; the first store to a cold chunk pays
            /// the fault; opening protects the whole heap once (an mprotect walk).
            /// Used only where uffd-async tracking works and memsnap's SIGSEGV handler is the
            /// first to see faults (a handler installed after it could swallow them); otherwise
            /// syncs scan the whole heap.
            case recentlyWrittenChunks
        }
        public var tracking: Tracking
        /// With `.automatic` tracking: what a sync scans (`.wholeHeap` unless set).
        public var syncScan: SyncScan = .wholeHeap
        /// `.recentlyWrittenChunks`: the chunk size as a power of two (tests use small chunks).
        package var chunkShift = 21
        /// `.recentlyWrittenChunks`: the most syncs in a row that must find a chunk unwritten
        /// before it is protected. Each chunk's own threshold adapts between 0 (protected by the
        /// sync that scans its write) and this, growing while the chunk faults back in soon after
        /// each protection (see `ChunkProtection`).
        package var maximumIdleSyncsBeforeProtecting = 64
        /// The log is checkpointed into the heap file when it grows past this many bytes.
        public var checkpointLogBytes: Int
        /// How long an open waits for a conflicting lock to go away before it fails with
        /// EWOULDBLOCK. The default rides out a child process that this process forks while an
        /// arena is open: the child holds inherited descriptors, and with them the lock, until it
        /// execs or exits. `.zero` fails at once.
        public var lockTimeout: Duration = .seconds(1)
        /// How the arena reaches its files (tests inject faults and record writes here).
        package var fileLayer = ArenaFileLayer.posix
        /// The largest step by which the log's reserved space grows.
        package var logReservationStep = 64 << 20

        public init(tracking: Tracking = .automatic, syncScan: SyncScan = .wholeHeap, checkpointLogBytes: Int = 256 << 20) {
            self.tracking = tracking
            self.syncScan = syncScan
            self.checkpointLogBytes = checkpointLogBytes
        }
    }

    /// The state a completed sync made durable.
    struct CommittedState {
        var commit: UInt64
        var epoch: UInt64
        var event: UInt64
        var roots: [UInt64]
    }

    public let path: String
    public let capacity: Int
    public let access: Access
    public let configuration: Configuration
    /// The heap's address space. Internal: decommitting or remapping it under the arena would
    /// lose the heap or make the tracker miss writes, so callers reach the heap only through
    /// `address(of:byteCount:)`, `unsafeAddress(of:)`, `offset(of:)` and `withUnsafeHeapBytes`.
    let region: VirtualRegion
    public let recordedBase: UInt
    public var isAtRecordedBase: Bool { region.baseAddress == recordedBase }

    let heapFile: any ArenaFile
    var log: ArenaLog
    var meta: ArenaMeta
    var committed: CommittedState
    var workingRoots: [UInt64]
    var tracker: ArenaWriteTracker?
    /// Set when an fdatasync failed: the kernel may have dropped the dirty pages and a retry
    /// could report success for data that never reached the disk, so no more syncs.
    var failedFlush: MemSnapError?
    /// Pages declared written (and pages of a failed sync, kept for the retry).
    var declared = ByteRangeSet()
    var allocator: ArenaAllocator
    /// Which heap pages the file system backs (set by `create` and a read-write open).
    let backing: HeapBacking
    var isClosed = false
    /// The descriptors to release at close (the seam may wrap them).
    let ownedFiles: [PosixArenaFile]

    init(path: String, access: Access, configuration: Configuration, meta: ArenaMeta, region: VirtualRegion,
         heapFile: any ArenaFile, logFile: any ArenaFile, ownedFiles: [PosixArenaFile]) {
        self.path = path
        self.access = access
        self.configuration = configuration
        self.capacity = meta.capacity
        self.region = region
        self.recordedBase = UInt(meta.recordedBase)
        self.heapFile = heapFile
        self.log = ArenaLog(file: logFile, reservationStep: max(Page.size, configuration.logReservationStep))
        self.meta = meta
        self.committed = CommittedState(commit: meta.checkpointCommit, epoch: meta.epoch, event: meta.event, roots: meta.roots)
        self.workingRoots = meta.roots
        self.ownedFiles = ownedFiles
        let backing = HeapBacking(file: heapFile, pageCount: meta.capacity / Page.size, reservedTop: meta.capacity / Page.size)
        self.backing = backing
        self.allocator = ArenaAllocator(
            base: region.base, capacity: meta.capacity, recordingWrites: configuration.tracking == .explicit,
            reserveBacking: { (pages: Range<Int>, aboveTop: Bool, operation: String) throws(MemSnapError) in
                try backing.reserve(pages, aboveTop: aboveTop, during: operation)
            })
    }

    deinit {
        if !isClosed { try? close() }
    }

    // MARK: State

    /// The number of completed syncs since creation.
    public var commitCounter: UInt64 { committed.commit }
    /// The epoch and event of the last completed sync.
    public var epoch: UInt64 { committed.epoch }
    public var event: UInt64 { committed.event }
    /// The committed roots (as of the last sync).
    public var committedRoots: [UInt64] { committed.roots }
    public var isReadOnly: Bool { access == .readOnly }

    /// Root slot `index` (0..<32) as set since the last sync (committed by the next one).
    public func root(_ index: Int) throws(MemSnapError) -> UInt64 {
        try checkRoot(index)
        return workingRoots[index]
    }

    /// Sets root slot `index`; durable at the next `sync`.
    /// - Throws: `.outOfBounds` for an index outside 0..<32; `.invalidArgument` if read-only or closed.
    public func setRoot(_ index: Int, to value: UInt64) throws(MemSnapError) {
        try checkRoot(index)
        try ensureWritable("set arena root \(index)")
        workingRoots[index] = value
    }

    private func checkRoot(_ index: Int) throws(MemSnapError) {
        guard (0..<ArenaFormat.rootCount).contains(index) else {
            throw MemSnapError("arena root \(index)", .outOfBounds(offset: index, length: 1, size: ArenaFormat.rootCount))
        }
    }

    // MARK: Memory

    /// `byteCount` bytes aligned to `alignment` (a power of two up to the page size). Contents
    /// are unspecified, as with malloc (small objects come zeroed; page runs hold what their
    /// pages last held). The file system reserves space for new pages first, so a store into the
    /// result never faults for lack of disk.
    /// - Throws: `.invalidArgument` for a zero size or a bad alignment, or when read-only;
    ///   `.tooSmall` when the arena is full; `.exceedsMaximum` for a size past the heap;
    ///   `.systemCall("posix_fallocate ...", ENOSPC)` when the file system is full; `.corrupt`
    ///   when the allocator's structures are damaged. Nothing changes on error.
    public func allocate(byteCount: Int, alignment: Int = 16) throws(MemSnapError) -> ArenaOffset {
        let operation = "allocate \(byteCount) bytes aligned to \(alignment) in arena \(path)"
        try ensureWritable(operation)
        return ArenaOffset(rawValue: UInt64(try allocator.allocate(byteCount: byteCount, alignment: alignment, during: operation)))
    }

    /// Frees an allocation. Its space is reused only after the next `sync` is durable.
    /// - Throws: `.invalidArgument` for a double free or an offset that is not an allocation, or
    ///   when read-only; `.corrupt` when the allocator's structures are damaged. Nothing changes
    ///   on error.
    public func free(_ offset: ArenaOffset) throws(MemSnapError) {
        let operation = "free arena offset \(offset.rawValue)"
        try ensureWritable(operation)
        guard offset.rawValue < UInt64(capacity) else {
            throw MemSnapError(operation, .invalidArgument("it lies outside the arena"))
        }
        try allocator.free(offset: Int(offset.rawValue), during: operation)
    }

    /// Whether `pointer` lies inside the arena's heap.
    public func contains(_ pointer: UnsafeRawPointer) -> Bool { region.contains(pointer) }

    /// The address of `byteCount` bytes at `offset` in this process, valid while the arena is
    /// open, after checking that they lie inside the heap: the checked half of the pair (as
    /// Firedancer's `fd_wksp_laddr`), for offsets read from the heap or from anywhere else that
    /// could be wrong. `unsafeAddress(of:)` is the fast half.
    /// - Throws: `.outOfBounds` (or `.invalidRange` for a negative count) otherwise;
    ///   `.invalidArgument` once the arena is closed.
    public func address(of offset: ArenaOffset, byteCount: Int = 1) throws(MemSnapError) -> UnsafeMutableRawPointer {
        try ensureOpen("arena address of offset \(offset.rawValue)")
        guard offset.rawValue <= UInt64(Int.max) else {
            throw MemSnapError("arena address of offset \(offset.rawValue)", .outOfBounds(offset: Int.max, length: byteCount, size: capacity))
        }
        let range = try checkedRange(offset: Int(offset.rawValue), length: byteCount, within: capacity,
                                     during: "arena address of offset \(offset.rawValue)")
        return region.base + range.lowerBound
    }

    /// The address of `offset` without any check: the fast half of the pair (as Firedancer's
    /// `fd_wksp_laddr_fast`), one addition, for offsets the caller knows lie inside the heap
    /// (ones `allocate` returned and nothing since could have changed). Never traps; an offset
    /// outside the heap gives a pointer outside it, and a closed arena a pointer into unmapped
    /// memory: neither may be used. When in doubt, use `address(of:byteCount:)`.
    public func unsafeAddress(of offset: ArenaOffset) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: region.baseAddress &+ UInt(truncatingIfNeeded: offset.rawValue)) ?? region.base
    }

    /// The offset of `pointer`, or nil if it is not inside the heap.
    public func offset(of pointer: UnsafeRawPointer) -> ArenaOffset? {
        contains(pointer) ? ArenaOffset(rawValue: UInt64(UInt(bitPattern: pointer) - region.baseAddress)) : nil
    }

    /// Calls `body` with the whole heap (`capacity` bytes), read-only, valid during the call
    /// (empty once the arena is closed).
    public func withUnsafeHeapBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: region.base, count: isClosed ? 0 : capacity))
    }

    /// Declares bytes the caller wrote: needed with `.explicit` tracking (the allocator's own
    /// writes are recorded without it), harmless otherwise. Ranges are clipped to the heap.
    public func markDirty(_ range: Range<Int>) {
        guard let first = Page.roundDown(max(0, range.lowerBound)), let end = Page.roundUp(min(capacity, range.upperBound)),
              end > first else { return }
        declared.insert(first >> Page.shift..<end >> Page.shift)
    }

    /// What the arena holds now.
    public struct Statistics: Sendable, Equatable {
        public var capacity: Int
        /// Bytes from the heap's start to the highest page ever allocated (the allocator's top).
        public var usedBytes: Int
        public var allocations: Int
        public var allocatedBytes: Int
        /// Bytes of write-ahead log written since the last checkpoint by this open (0 when
        /// read-only: a read-only open replays the log in memory and leaves it as it is).
        public var logBytes: Int
    }

    /// - Throws: `.corrupt` when the allocator's header is damaged; `.invalidArgument` once closed.
    public var statistics: Statistics {
        get throws(MemSnapError) {
            let operation = "arena \(path) statistics"
            try ensureOpen(operation)
            let counted = try allocator.statistics(during: operation)
            return Statistics(capacity: capacity, usedBytes: try allocator.top(during: operation) * Page.size,
                              allocations: counted.allocations, allocatedBytes: counted.bytes, logBytes: log.end)
        }
    }

    /// Live allocations and their bytes, after checking every allocator structure.
    /// - Throws: `.corrupt` naming the first inconsistency.
    public func check() throws(MemSnapError) -> (allocations: Int, bytes: Int) {
        try ensureOpen("check arena \(path)")
        return try allocator.check(during: "check arena \(path)")
    }

    // MARK: Sync

    /// Makes everything written since the last sync durable, atomically, as commit
    /// `commitCounter + 1` with this epoch and event.
    /// - Throws: `.invalidArgument` unless (epoch, event) is greater than the last sync's, or when
    ///   read-only; system call failures (ENOSPC, EIO). After a failed sync the file holds the
    ///   last completed sync, or (like a commit whose acknowledgement was lost) this one if its
    ///   record did reach the disk; the dirty pages are kept, so a retry writes them again. A
    ///   failed fdatasync is final: later syncs throw `.unavailable` and the arena must be
    ///   reopened, because after such a failure the kernel may already have dropped the pages it
    ///   could not write. If the commit is durable but the checkpoint that follows it fails, the
    ///   error says so, and `commitCounter`, `epoch` and `event` show the new commit.
    public func sync(epoch: UInt64, event: UInt64) throws(MemSnapError) {
        let operation = "sync arena \(path) (epoch \(epoch), event \(event))"
        try ensureWritable(operation)
        guard (epoch, event) > (committed.epoch, committed.event) else {
            throw MemSnapError(operation, .invalidArgument(
                "epoch/event (\(epoch), \(event)) does not increase past (\(committed.epoch), \(committed.event))"))
        }
        try commitDirty(epoch: epoch, event: event, during: operation)
        do {
            if log.end > configuration.checkpointLogBytes { try checkpoint(during: operation) }
            try allocator.releasePending(during: operation)
        } catch {
            throw MemSnapError("\(operation): commit \(committed.commit) is durable, but what follows it failed", error.reason)
        }
    }

    // MARK: Closing

    /// Checkpoints the log into the heap file (read-write arenas) and releases the files and
    /// their lock. Unsynced writes are lost. Idempotent.
    /// - Throws: checkpoint failures; the files are released anyway (the log keeps every
    ///   completed sync for the next open).
    public func close() throws(MemSnapError) {
        guard !isClosed else { return }
        isClosed = true
        tracker?.stop()
        defer { release() }
        if access == .readWrite && failedFlush == nil { try checkpoint(during: "close arena \(path)") }
    }

    /// Drops the arena as a crash would (no checkpoint), releasing its files: for tests and the
    /// fuzzer, which need an arena whose log still holds records.
    package func abandon() {
        isClosed = true
        tracker?.stop()
        release()
    }

    /// Unmaps the heap and closes the files. The mapping holds the heap file open (and with it
    /// the flock) until it is gone, so it goes first.
    private func release() {
        try? region.decommit(from: 0)
        for file in ownedFiles { file.close() }
    }

    func ensureOpen(_ operation: @autoclosure () -> String) throws(MemSnapError) {
        guard !isClosed else { throw MemSnapError(operation(), .invalidArgument("the arena is closed")) }
    }

    func ensureWritable(_ operation: @autoclosure () -> String) throws(MemSnapError) {
        try ensureOpen(operation())
        guard access == .readWrite else { throw MemSnapError(operation(), .invalidArgument("the arena is open read-only")) }
    }
}
