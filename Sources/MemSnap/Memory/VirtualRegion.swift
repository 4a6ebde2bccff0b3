#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// A range of virtual address space reserved up front, committed as a growing prefix, never moved.
///
/// The region reserves `maxSize` bytes with `PROT_NONE | MAP_NORESERVE`, which costs address
/// space but no memory: a 4 GiB reservation (a wasm32 memory) takes a few microseconds. The first
/// `committedSize` bytes are readable and writable; everything after them faults. Growing commits
/// more of the reservation in place, so addresses handed out earlier stay valid. Memory files can be
/// mapped over part of it (`MemoryFile.map(into:...)`, `Snapshot.mapCopyOnWrite(into:)`), but
/// only here, never over address space memsnap did not reserve.
///
/// Invariant: the accessible part is always the prefix `0..<committedSize`, a page multiple.
///
/// Ownership: the region is the only owner of its reservation and unmaps all of it in `deinit`.
/// Memory reached through `withUnsafeMutableBytes` is valid only inside the closure.
///
/// Huge pages: with `.disabled` (the default) every mapping in the region gets `MADV_NOHUGEPAGE`,
/// because a transparent huge page turns a 1-byte write into a 2 MiB dirty page for trackers.
///
/// Thread safety: all methods may be called from any thread. Growth is serialised internally.
/// Shrinking or remapping while another thread touches the affected pages is the caller's race,
/// exactly as with `munmap`: that thread faults.
public final class VirtualRegion: @unchecked Sendable {
    public enum HugePages: Sendable {
        /// `MADV_NOHUGEPAGE` on every mapping: what dirty-page tracking needs.
        case disabled
        /// Leave the system's transparent-huge-page policy alone.
        case systemDefault
    }

    /// Start of the reservation. Stable for the region's whole life.
    package let base: UnsafeMutableRawPointer
    /// Bytes reserved, a page multiple: the most the region can ever commit.
    public let maxSize: Int
    public let hugePages: HugePages
    /// Committed bytes (a page multiple); mutations happen under this lock.
    private let committed: Locked<Int>
    /// The tracker watching this region, told before any mapping in it is replaced. A leaf lock:
    /// the observer must not call back into the region.
    private let mappingObserver = Locked<(@Sendable (MappingChange) -> Void)?>(nil)

    /// A change to the region's mappings, reported to its tracker: replacements and releases
    /// just before they happen, commits just after.
    enum MappingChange: Sendable {
        /// The byte range was just committed (readable, writable, zero) by growth.
        case committed(Range<Int>)
        /// The byte range gets a new mapping (readable and writable, untracked).
        case replaced(Range<Int>)
        /// The byte range and everything after it becomes inaccessible.
        case released(Range<Int>)
    }

    /// Reserves `maxSize` bytes (rounded up to a page) and commits the first `initialSize` bytes
    /// (rounded up to a page) read-write and zero-filled.
    ///
    /// - Throws: `.invalidRange` if a size is negative or rounding overflows;
    ///   `.exceedsMaximum` if `initialSize > maxSize`; `.systemCall("mmap", ENOMEM)` if the address
    ///   space cannot be reserved; `.systemCall("mprotect", ...)` if the prefix cannot be committed.
    public convenience init(maxSize: Int, committing initialSize: Int = 0, hugePages: HugePages = .disabled) throws(MemSnapError) {
        try self.init(maxSize: maxSize, committing: initialSize, hugePages: hugePages, preferredAddress: nil)
    }

    /// Like `init(maxSize:committing:hugePages:)`, but tries to place the reservation at
    /// `preferredAddress` (page-aligned) first, without ever replacing an existing mapping
    /// (MAP_FIXED_NOREPLACE). If that range is taken the reservation lands anywhere: check
    /// `baseAddress` to see which happened.
    public init(
        maxSize: Int, committing initialSize: Int = 0, hugePages: HugePages = .disabled, preferredAddress: UInt?
    ) throws(MemSnapError) {
        let operation = "reserve \(ByteCount(maxSize))"
        let reserved = try Page.roundUp(maxSize, during: operation)
        let initial = try Page.roundUp(initialSize, during: operation)
        guard reserved > 0 else { throw MemSnapError(operation, .invalidArgument("cannot reserve 0 bytes")) }
        guard initialSize <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "initial size", requested: initialSize, maximum: maxSize))
        }
        var address: UnsafeMutableRawPointer? = nil
        if let preferredAddress, preferredAddress % UInt(Page.size) == 0, let hint = UnsafeMutableRawPointer(bitPattern: preferredAddress) {
            let placed = mmap(hint, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MEMSNAP_MAP_FIXED_NOREPLACE, -1, 0)
            if let placed, placed != MAP_FAILED {
                if placed == hint { address = placed } else { munmap(placed, reserved) }  // kernels before 4.17 ignore the flag
            }
        }
        if address == nil {
            let anywhere = mmap(nil, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if anywhere != MAP_FAILED { address = anywhere }
        }
        guard let address else {
            throw MemSnapError.systemCall("mmap", during: operation)
        }
        self.base = address
        self.maxSize = reserved
        self.hugePages = hugePages
        self.committed = Locked(0)
        applyHugePagePolicy(0..<reserved)
        if initial > 0 {
            // deinit runs on throw and releases the reservation.
            try grow(to: initial)
        }
    }

    deinit {
        munmap(base, maxSize)
    }

    /// Bytes currently readable and writable, from the start of the region (a page multiple).
    public var committedSize: Int { committed.withLock { $0 } }

    /// Whether `address` lies inside the reservation (committed or not).
    public func contains(_ address: UnsafeRawPointer) -> Bool {
        let start = UInt(bitPattern: base)
        let value = UInt(bitPattern: address)
        return value >= start && value - start < UInt(maxSize)
    }

    /// The start address as a number, for display and for comparing identities. Not a pointer:
    /// use `withUnsafeMutableBytes` to touch the memory.
    public var baseAddress: UInt { UInt(bitPattern: base) }

    /// Commits the region up to `size` bytes (rounded up to a page), in place.
    ///
    /// Sizes at or below `committedSize` change nothing. New pages read as zero.
    /// - Throws: `.exceedsMaximum` if `size > maxSize` (nothing changes); `.invalidRange` for a
    ///   negative size; `.systemCall("mprotect", ...)` if the kernel refuses (nothing changes).
    public func grow(to size: Int) throws(MemSnapError) {
        let operation = "grow region to \(ByteCount(size))"
        let target = try Page.roundUp(size, during: operation)
        guard target <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: size, maximum: maxSize))
        }
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            guard target > current else { return }
            guard mprotect(base + current, target - current, PROT_READ | PROT_WRITE) == 0 else {
                throw MemSnapError.systemCall("mprotect", during: operation)
            }
            notifyMappingChange(.committed(current..<target))
            current = target
        }
    }

    /// Releases every page from `size` (rounded up to a page) to the end of the committed prefix:
    /// their memory goes back to the system and their addresses fault until committed again,
    /// when they read as zero. The reservation itself is kept.
    ///
    /// - Throws: `.invalidRange` for a negative size; `.systemCall("mmap", ...)` if the kernel
    ///   refuses.
    public func decommit(from size: Int) throws(MemSnapError) {
        let operation = "decommit region from \(ByteCount(size))"
        let start = try Page.roundUp(size, during: operation)
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            guard start < current else { return }
            try releasePages(start..<current, during: operation)
            current = start
        }
    }

    /// Calls `body` with the committed memory. The buffer is valid only during the call; growth
    /// from inside `body` (or another thread) does not invalidate it, shrinking does.
    public func withUnsafeMutableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeMutableRawBufferPointer(start: base, count: committedSize))
    }

    /// Calls `body` with the committed memory, read-only. Same lifetime rules as
    /// `withUnsafeMutableBytes`.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: committedSize))
    }

    /// Maps `length` bytes (rounded up to a page) of any file, from `fileOffset`, at `offset`
    /// in the region; see `MemoryFile.map(into:...)` for the rules (page-aligned offsets, no hole
    /// after the committed prefix, inside the reservation). The caller keeps the file at least
    /// as long as the mapping's pages are touched: pages past the file's end raise SIGBUS.
    public func map(
        fileDescriptor: Int32, fileOffset: Int, at offset: Int, length: Int, sharing: MemoryFile.Sharing
    ) throws(MemSnapError) {
        let operation = "map descriptor \(fileDescriptor) (\(ByteCount(length)) at file offset \(fileOffset)) into region at offset \(offset)"
        let mappedLength = try Page.roundUp(length, during: operation)
        try mapFile(fileDescriptor, fileOffset: fileOffset, at: offset, length: mappedLength, shared: sharing == .shared, during: operation)
    }

    /// How the pages of a file mapping will be touched, passed to the kernel with `madvise`.
    public enum AccessPattern: Sendable {
        /// The kernel's default: a fault on a file page also reads the pages around it.
        case normal
        /// Faults read only the page touched. What a heap wants: around a random store, read-ahead
        /// only costs (on a sparse file it zero-fills whole large folios of holes per fault).
        case random
        /// Aggressive read-ahead, pages behind the reader may be dropped early.
        case sequential
    }

    /// Tells the kernel how `range` (page-aligned, inside the committed prefix) will be accessed.
    /// Advisory only: it changes no contents. Thread-safe.
    ///
    /// - Throws: `MemSnapError` if the range is not page-aligned or lies outside the committed
    ///   prefix, or if `madvise` fails.
    public func advise(_ pattern: AccessPattern, range: Range<Int>) throws(MemSnapError) {
        let operation = "advise \(pattern) access for region offsets \(range)"
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            // Bounds first: `range.count` of a range such as Int.min..<Int.max would overflow.
            guard range.lowerBound >= 0, range.upperBound <= current, Page.isAligned(range.lowerBound),
                  Page.isAligned(range.upperBound) else {
                throw MemSnapError(operation, .invalidArgument(
                    "the range must be page-aligned and inside the committed \(ByteCount(current))"))
            }
            guard !range.isEmpty else { return }
            let advice: Int32 = switch pattern {
            case .normal: MEMSNAP_MADV_NORMAL
            case .random: MEMSNAP_MADV_RANDOM
            case .sequential: MEMSNAP_MADV_SEQUENTIAL
            }
            guard madvise(base + range.lowerBound, range.count, advice) == 0 else {
                throw .systemCall("madvise", during: operation)
            }
        }
    }

    // MARK: - Used by MemoryFile and Snapshot

    /// Maps `length` bytes of `descriptor` from `fileOffset` at `offset` in the region with
    /// `MAP_FIXED`, replacing what was there. Offsets and length must be page multiples, the
    /// mapping must start inside or right after the committed prefix (no holes), and it must end
    /// inside the reservation. The committed prefix grows to cover it.
    func mapFile(
        _ descriptor: Int32, fileOffset: Int, at offset: Int, length: Int, shared: Bool, during operation: String
    ) throws(MemSnapError) {
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            try mapFileLocked(descriptor, fileOffset: fileOffset, at: offset, length: length, shared: shared,
                              committed: &current, during: operation)
        }
    }

    /// Makes the region's whole committed content the first `length` bytes of `descriptor`:
    /// maps them at offset 0 and releases every committed page after them.
    func replaceContents(
        with descriptor: Int32, length: Int, shared: Bool, during operation: String
    ) throws(MemSnapError) {
        guard length >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: length)) }
        guard length <= maxSize else {
            throw MemSnapError(operation, .tooSmall(what: "region", required: length, capacity: maxSize))
        }
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            if length > 0 {
                try mapFileLocked(descriptor, fileOffset: 0, at: 0, length: length, shared: shared,
                                  committed: &current, during: operation)
            }
            if current > length {
                try releasePages(length..<current, during: operation)
            }
            current = length
        }
    }

    private func mapFileLocked(
        _ descriptor: Int32, fileOffset: Int, at offset: Int, length: Int, shared: Bool,
        committed current: inout Int, during operation: String
    ) throws(MemSnapError) {
        try Page.requireAligned(offset, "region offset", during: operation)
        try Page.requireAligned(fileOffset, "file offset", during: operation)
        try Page.requireAligned(length, "length", during: operation)
        guard length > 0 else { throw MemSnapError(operation, .invalidArgument("cannot map 0 bytes")) }
        let range = try checkedRange(offset: offset, length: length, within: maxSize, during: operation)
        guard offset <= current else {
            throw MemSnapError(operation, .invalidArgument(
                "mapping at offset \(offset) would leave a hole after the committed \(current) bytes"))
        }
        let flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED
        notifyMappingChange(.replaced(range))
        let result = mmap(base + offset, length, PROT_READ | PROT_WRITE, flags, descriptor, off_t(fileOffset))
        guard result != MAP_FAILED else {
            let error = MemSnapError.systemCall("mmap", during: operation)
            // Older kernels may unmap the target before failing: take the hole back so no other
            // mapping can land inside the reservation, and stop counting those pages committed.
            notifyMappingChange(.released(offset..<Swift.max(current, offset + length)))
            _ = mmap(base + offset, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
            current = min(current, offset)
            throw error
        }
        applyHugePagePolicy(range)
        current = max(current, range.upperBound)
    }

    private func releasePages(_ range: Range<Int>, during operation: String) throws(MemSnapError) {
        notifyMappingChange(.released(range))
        let result = mmap(base + range.lowerBound, range.count, PROT_NONE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0)
        guard result != MAP_FAILED else {
            throw MemSnapError.systemCall("mmap", during: operation)
        }
        applyHugePagePolicy(range)
    }

    // MARK: - Used by DirtyTracker

    /// Registers the one tracker of this region. `onMappingChange` runs (on the thread that
    /// remaps, before the change) whenever a mapping in the region is replaced or released.
    /// - Throws: `.invalidArgument` if another tracker is attached.
    func attachTracker(
        _ onMappingChange: @escaping @Sendable (MappingChange) -> Void, during operation: String
    ) throws(MemSnapError) {
        try mappingObserver.withLock { (observer: inout (@Sendable (MappingChange) -> Void)?) throws(MemSnapError) in
            guard observer == nil else {
                throw MemSnapError(operation, .invalidArgument(
                    "the region is already tracked by another DirtyTracker; stop that one first"))
            }
            observer = onMappingChange
        }
    }

    func detachTracker() {
        mappingObserver.withLock { $0 = nil }
    }

    /// Calls the observer inside its lock, so `detachTracker` waits for a notification in flight.
    private func notifyMappingChange(_ change: MappingChange) {
        mappingObserver.withLock { $0?(change) }
    }

    /// Runs `body` with the committed size, holding the commit lock: the region cannot grow,
    /// shrink or be remapped until it returns. `body` must not call back into the region.
    func withCommittedSizeLocked<Result, Failure: Error>(
        _ body: (Int) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try committed.withLock { (size: inout Int) throws(Failure) -> Result in try body(size) }
    }

    private func applyHugePagePolicy(_ range: Range<Int>) {
        guard hugePages == .disabled, !range.isEmpty else { return }
        // Advisory: kernels built without THP reject it with EINVAL, and then there is nothing
        // to disable.
        _ = madvise(base + range.lowerBound, range.count, MEMSNAP_MADV_NOHUGEPAGE)
    }
}
