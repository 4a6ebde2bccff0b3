#if canImport(Glibc)
import Glibc
#endif

/// A memory image held in a memfd: the state that workers start from and merge back into.
///
/// The data lives in a `MemoryFile` mapped shared into a reservation of `maxSize` bytes, so the
/// snapshot grows in place (its address never changes) and any number of regions can map it
/// copy-on-write in O(1) with `mapCopyOnWrite(into:)`.
///
/// Size: `size` is the logical size in bytes (not necessarily a page multiple); bytes between
/// `size` and the end of its last page read as zero. A write that ends past `size` grows the
/// snapshot to that end; one that would end past `maxSize` throws and changes nothing.
///
/// Changed ranges: writes made through this API (`write`, `update`) are recorded as a coalesced,
/// sorted set of byte ranges, so that only what changed needs to be sent on. The content given at
/// construction is not recorded. `changedRanges` reads them, `takeChangedRanges()` reads and
/// clears them in one step.
///
/// Ownership: the snapshot owns its memory file and its reservation; both are released when the
/// last reference goes. Regions it was mapped into keep their pages until they are remapped.
/// Buffers passed to the `with...` closures are valid only during the call.
///
/// Thread safety: all methods may be called from any thread. Reads run concurrently; writes and
/// growth take an exclusive lock, so a reader never sees a write half done.
public final class Snapshot: @unchecked Sendable {
    /// The most bytes the snapshot can ever hold (a page multiple), reserved at creation.
    public let maxSize: Int
    private let file: MemoryFile
    let memory: VirtualRegion
    let lock = ReadWriteLock()
    // Guarded by `lock`.
    var logicalSize: Int
    var changes = ByteRangeSet()
    /// Merge regions, sorted by offset (see Snapshot+Merging.swift). A leaf lock.
    let mergeRegionList = Locked<[MergeRegion]>([])
    /// Diffs queued for the next sync point, in arrival order. A leaf lock.
    let diffQueue = Locked<[[SnapshotDiff]]>([])

    /// Creates a zero-filled snapshot of `size` bytes that can grow to `maxSize` (default: `size`).
    ///
    /// - Throws: `.exceedsMaximum` if `size > maxSize`; `.invalidRange` for negative sizes;
    ///   `.invalidArgument` if `maxSize` is 0; system call failures from `memfd_create`,
    ///   `ftruncate` and `mmap`.
    public init(size: Int, maxSize: Int? = nil, name: String = "memsnap-snapshot") throws(MemSnapError) {
        let operation = "create snapshot \"\(name)\" of \(ByteCount(size))"
        let limit = maxSize ?? size
        guard size >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: size)) }
        guard limit >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: limit)) }
        guard size <= limit else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: size, maximum: limit))
        }
        let mapped = try Page.roundUp(size, during: operation)
        // An empty snapshot with no room to grow is legal; it still needs a page of address space.
        let memory = try VirtualRegion(maxSize: max(limit, 1), hugePages: .disabled)
        let file = try MemoryFile(name: name, size: mapped)
        if mapped > 0 {
            try file.map(into: memory, length: mapped, sharing: .shared)
        }
        self.memory = memory
        self.file = file
        self.maxSize = try Page.roundUp(limit, during: operation)
        self.logicalSize = size
    }

    /// Takes over `file` as the snapshot's data: its first `size` bytes become the snapshot (no
    /// copy; the file is mapped). The file is resized to `size` rounded up to a page: a shorter
    /// file is extended with zeros, a longer one is cut there (so that growing the snapshot later
    /// reads zeros, not the file's old bytes). Nothing else may write the file afterwards, nor
    /// touch a mapping of its pages past that size (they are gone: SIGBUS).
    /// - Throws: as `init(size:maxSize:name:)`.
    public init(adopting file: MemoryFile, size: Int, maxSize: Int? = nil) throws(MemSnapError) {
        let operation = "adopt memory file \"\(file.name)\" as a snapshot of \(ByteCount(size))"
        let limit = maxSize ?? size
        guard size >= 0, limit >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: min(size, limit))) }
        guard size <= limit else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: size, maximum: limit))
        }
        let mapped = try Page.roundUp(size, during: operation)
        let memory = try VirtualRegion(maxSize: max(limit, 1), hugePages: .disabled)
        if file.size != mapped { try file.resize(to: mapped) }
        if mapped > 0 { try file.map(into: memory, length: mapped, sharing: .shared) }
        self.memory = memory
        self.file = file
        self.maxSize = try Page.roundUp(limit, during: operation)
        self.logicalSize = size
    }

    /// Creates a snapshot holding a copy of `bytes`, able to grow to `maxSize` (default: its size).
    public convenience init(
        copying bytes: UnsafeRawBufferPointer, maxSize: Int? = nil, name: String = "memsnap-snapshot"
    ) throws(MemSnapError) {
        try self.init(size: bytes.count, maxSize: maxSize, name: name)
        if let source = bytes.baseAddress, !bytes.isEmpty {
            memory.base.copyMemory(from: source, byteCount: bytes.count)
        }
    }

    /// Creates a snapshot holding a copy of `bytes`.
    public convenience init(
        copying bytes: [UInt8], maxSize: Int? = nil, name: String = "memsnap-snapshot"
    ) throws(MemSnapError) {
        try self.init(size: bytes.count, maxSize: maxSize, name: name)
        bytes.withUnsafeBytes { source in
            if let start = source.baseAddress, !source.isEmpty {
                memory.base.copyMemory(from: start, byteCount: source.count)
            }
        }
    }

    /// The logical size in bytes.
    public var size: Int { lock.withReadLock { logicalSize } }

    /// The name of the snapshot's memfd, as seen in /proc/self/maps.
    public var name: String { file.name }

    // MARK: Reading

    /// Copies `count` bytes starting at `offset`.
    /// - Throws: `.outOfBounds` unless `offset..<offset+count` lies inside `0..<size`;
    ///   `.invalidRange` for negative or overflowing arguments.
    public func read(at offset: Int, count: Int) throws(MemSnapError) -> [UInt8] {
        try lock.withReadLock { () throws(MemSnapError) -> [UInt8] in
            let range = try checkedRange(offset: offset, length: count, within: logicalSize,
                                         during: "snapshot read \(count) bytes at offset \(offset)")
            return [UInt8](UnsafeRawBufferPointer(start: memory.base + range.lowerBound, count: range.count))
        }
    }

    /// Copies `buffer.count` bytes starting at `offset` into `buffer`.
    /// - Throws: as `read(at:count:)`.
    public func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(MemSnapError) {
        try lock.withReadLock { () throws(MemSnapError) in
            let range = try checkedRange(offset: offset, length: buffer.count, within: logicalSize,
                                         during: "snapshot read \(buffer.count) bytes at offset \(offset)")
            if let destination = buffer.baseAddress, !range.isEmpty {
                destination.copyMemory(from: memory.base + range.lowerBound, byteCount: range.count)
            }
        }
    }

    /// Calls `body` with the whole snapshot (`size` bytes), read-only, holding the read lock:
    /// writers wait until `body` returns. `body` must not call any method of this snapshot (the
    /// lock is not re-entrant; a waiting writer would deadlock it).
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try lock.withReadLock { () throws(Failure) -> Result in
            try body(UnsafeRawBufferPointer(start: memory.base, count: logicalSize))
        }
    }

    // MARK: Writing

    /// Copies `bytes` into the snapshot at `offset`, growing it if they end past `size`.
    /// - Throws: `.exceedsMaximum` if they would end past `maxSize` (nothing is written);
    ///   `.invalidRange` for a negative offset or an overflowing end; growth failures.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(MemSnapError) {
        try update(at: offset, count: bytes.count) { destination in
            if let source = bytes.baseAddress, let target = destination.baseAddress, !bytes.isEmpty {
                target.copyMemory(from: source, byteCount: bytes.count)
            }
        }
    }

    /// Copies `bytes` into the snapshot at `offset`; see `write(_:at:)` for UnsafeRawBufferPointer.
    public func write(_ bytes: [UInt8], at offset: Int) throws(MemSnapError) {
        // Array.withUnsafeBytes rethrows untyped errors; carry the typed one out in a Result.
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(MemSnapError) in try write(buffer, at: offset) }
        }.get()
    }

    /// Lets `body` modify `count` bytes at `offset` in place, holding the write lock, and records
    /// the whole range as changed. Grows the snapshot first if the range ends past `size`.
    /// `body` must not call any method of this snapshot (the lock is not re-entrant).
    /// - Throws: as `write(_:at:)`; `body` is not called when it throws.
    @discardableResult
    public func update<Result>(
        at offset: Int, count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Result
    ) throws(MemSnapError) -> Result {
        try lock.withWriteLock { () throws(MemSnapError) -> Result in
            let operation = "snapshot write \(ByteCount(count)) at offset \(offset)"
            guard offset >= 0, count >= 0 else {
                throw MemSnapError(operation, .invalidRange(offset: offset, length: count))
            }
            let (end, overflow) = offset.addingReportingOverflow(count)
            guard !overflow else { throw MemSnapError(operation, .invalidRange(offset: offset, length: count)) }
            guard end <= maxSize else {
                throw MemSnapError(operation, .exceedsMaximum(what: "end", requested: end, maximum: maxSize))
            }
            if end > logicalSize { try growLocked(to: end, during: operation) }
            let result = body(UnsafeMutableRawBufferPointer(start: memory.base + offset, count: count))
            if count > 0 { changes.insert(offset..<end) }
            return result
        }
    }

    /// Grows the snapshot to `newSize` bytes (zero-filled), in place. Sizes at or below `size`
    /// change nothing. Not recorded as a change: the new bytes are zero, as the snapshot's
    /// consumers already assume past `size`.
    /// - Throws: `.exceedsMaximum` past `maxSize` (nothing changes); system call failures.
    public func grow(to newSize: Int) throws(MemSnapError) {
        try lock.withWriteLock { () throws(MemSnapError) in
            let operation = "grow snapshot \"\(name)\" to \(ByteCount(newSize))"
            guard newSize <= maxSize else {
                throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: newSize, maximum: maxSize))
            }
            if newSize > logicalSize { try growLocked(to: newSize, during: operation) }
        }
    }

    /// Call with the write lock held and `newSize` in `logicalSize...maxSize`.
    func growLocked(to newSize: Int, during operation: String) throws(MemSnapError) {
        let mapped = memory.committedSize
        let needed = try Page.roundUp(newSize, during: operation)
        if needed > mapped {
            // Size the file before mapping its new pages: a page past the end of the file would
            // raise SIGBUS on first touch.
            try file.resize(to: needed)
            try file.map(into: memory, at: mapped, fileOffset: mapped, length: needed - mapped, sharing: .shared)
        }
        logicalSize = newSize
    }

    // MARK: Changed ranges

    /// The byte ranges written through this API since creation or the last clear: sorted,
    /// non-overlapping, adjacent writes coalesced.
    public var changedRanges: [Range<Int>] {
        lock.withReadLock { changes.ranges }
    }

    /// Forgets the recorded changes.
    public func clearChangedRanges() {
        lock.withWriteLock { changes = ByteRangeSet() }
    }

    /// Returns the recorded changes and clears them in one step: a write that lands concurrently
    /// is either in the result or in the next call's, never lost.
    public func takeChangedRanges() -> [Range<Int>] {
        lock.withWriteLock {
            let taken = changes.ranges
            changes = ByteRangeSet()
            return taken
        }
    }

    // MARK: Copy-on-write mapping

    /// Makes `region`'s memory equal to the snapshot in O(1): maps the memfd `MAP_PRIVATE |
    /// MAP_FIXED` over the region's first `size` bytes (rounded up to a page) and releases any
    /// committed pages after them. This is also restore: mapping again discards every write the
    /// region made since.
    ///
    /// Writes through the region never reach the snapshot, and several regions may map one
    /// snapshot at once. Pages the region has not written yet share the snapshot's pages, so a
    /// later write to the snapshot shows through them; remap after changing the snapshot (as the
    /// sync point does) to give workers a consistent view.
    ///
    /// - Throws: `.tooSmall` if the region's reservation is smaller than the snapshot's mapped
    ///   size (the region is left as it was); `.systemCall("mmap", ...)`, after which the region's
    ///   committed prefix may have shrunk but its reservation is intact.
    public func mapCopyOnWrite(into region: VirtualRegion) throws(MemSnapError) {
        try lock.withReadLock { () throws(MemSnapError) in
            let operation = "map snapshot \"\(name)\" (\(ByteCount(logicalSize))) copy-on-write into region"
            let mapped = try Page.roundUp(logicalSize, during: operation)
            try region.replaceContents(with: file.descriptor.rawValue, length: mapped, shared: false,
                                       during: operation)
        }
    }
}
