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
/// Ownership: the region is the only owner of its reservation and unmaps all of it in `deinit`,
/// except an adopted region (`init(adoptingReservationAt:...)`): that one works on a reservation
/// some other code made (a WebAssembly engine's linear memory), may remap and track its pages,
/// but never unmaps it, never changes which pages are accessible (the foreign owner commits, the
/// region follows with `followOwnerGrowth(to:)`), and keeps the object given as its owner alive.
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
    /// Set for an adopted region: who owns the reservation. nil: the region owns it.
    private let foreignOwner: ForeignOwner?

    /// The owner of an adopted reservation: kept alive as long as the region, and named in errors.
    private struct ForeignOwner {
        let name: String
        /// Never read: holding it is the point (the owner must not unmap the reservation first).
        let keepAlive: AnyObject?
    }

    /// A change to the region's mappings, reported to its tracker: replacements and releases
    /// just before they happen, commits just after.
    enum MappingChange: Sendable {
        /// The byte range was just committed (readable, writable, zero) by growth.
        case committed(Range<Int>)
        /// The byte range gets a new mapping (readable and writable, untracked).
        case replaced(Range<Int>)
        /// The byte range and everything after it becomes inaccessible.
        case released(Range<Int>)
        /// The foreign owner of an adopted region committed the byte range (readable, writable)
        /// at some point before `followOwnerGrowth(to:)` reported it: its pages may already hold
        /// writes.
        case committedByOwner(Range<Int>)
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
        self.foreignOwner = nil
        applyHugePagePolicy(0..<reserved)
        if initial > 0 {
            // deinit runs on throw and releases the reservation.
            try grow(to: initial)
        }
    }

    /// Adopts a reservation memsnap did not make: `reservedSize` bytes at `address`, of which the
    /// first `committedSize` are readable and writable and the rest inaccessible, as a WebAssembly
    /// engine reserves a linear memory (WasmKit: 4 GiB + a guard with `PROT_NONE`, committed by
    /// `mprotect` as the memory grows, the base never moving).
    ///
    /// The claim is checked against /proc/self/maps (the PROCMAP_QUERY ioctl where the kernel has
    /// it: a few microseconds) before anything is touched: every page of
    /// the range must be private anonymous memory (no file, no shared mapping, not `[heap]` or
    /// `[stack]`), read-write below `committedSize` and inaccessible from there to the end. A
    /// malloc'd buffer (what WasmKit uses with software bounds checking, under AddressSanitizer,
    /// or when its reservation fails) is refused: the memory around it is the allocator's, and
    /// mapping over it would corrupt the heap. The kernel merges neighbouring areas of the same
    /// kind, so memsnap cannot see where a reservation ends: that the range is one reservation
    /// of exactly this size remains the caller's promise.
    ///
    /// What changes with adoption: the region may map files over the committed prefix
    /// (`Snapshot.mapCopyOnWrite(into:)`, `MemoryFile.map`), a `DirtyTracker` may track it, and
    /// it is diffed like any region; but it never unmaps the reservation (not in `deinit` either),
    /// never commits or releases pages (`grow` past `committedSize` and `decommit` are refused:
    /// the owner's bookkeeping of its size would be wrong), and a mapping may not extend past the
    /// owner's committed prefix. Restoring a snapshot smaller than the committed prefix leaves
    /// the rest of it accessible and zero-filled. When the owner commits more, call
    /// `followOwnerGrowth(to:)` so that trackers and diffs see it.
    ///
    /// Lifetime: the foreign owner must keep the reservation mapped for as long as the region
    /// lives; the region keeps `owner` alive for exactly that reason (pass the object whose
    /// lifetime decides the reservation's, e.g. WasmKit's `Store`). Unmapping it earlier would
    /// let the region map files over address space that belongs to someone else.
    ///
    /// - Parameters:
    ///   - address: the first byte of the foreign reservation (page-aligned).
    ///   - reservedSize: the reservation's size in bytes (page multiple, above 0).
    ///   - committedSize: how many bytes from `address` the owner has made read-write (page multiple).
    ///   - owner: the object whose lifetime decides the reservation's; kept alive by the region.
    ///   - ownerName: names the owner in errors ("WasmKit linear memory").
    ///   - hugePages: `.disabled` applies `MADV_NOHUGEPAGE` to the whole range (advisory).
    /// - Throws: `.unaligned` if `address`, `reservedSize` or `committedSize` is not a page
    ///   multiple; `.invalidRange` for negative or overflowing sizes or `reservedSize` 0;
    ///   `.exceedsMaximum` if `committedSize > reservedSize`; `.invalidArgument` naming the first
    ///   page that is not as claimed (unmapped, shared, file-backed, a special area, or with the
    ///   wrong protection); errors reading /proc/self/maps.
    public init(
        adoptingReservationAt address: UnsafeMutableRawPointer, reservedSize: Int, committedSize: Int,
        owner: AnyObject?, ownerName: String, hugePages: HugePages = .disabled
    ) throws(MemSnapError) {
        let start = UInt(bitPattern: address)
        let operation = "adopt \(ownerName) at 0x\(String(start, radix: 16)) (\(ByteCount(reservedSize)) reserved, "
            + "\(ByteCount(committedSize)) committed)"
        guard start % UInt(Page.size) == 0 else {
            throw MemSnapError(operation, .unaligned(what: "address", value: Int(bitPattern: start), alignment: Page.size))
        }
        guard reservedSize > 0, committedSize >= 0 else {
            throw MemSnapError(operation, .invalidRange(offset: 0, length: min(reservedSize, committedSize)))
        }
        try Page.requireAligned(reservedSize, "reserved size", during: operation)
        try Page.requireAligned(committedSize, "committed size", during: operation)
        guard committedSize <= reservedSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "committed size", requested: committedSize, maximum: reservedSize))
        }
        let (end, overflow) = start.addingReportingOverflow(UInt(reservedSize))
        guard !overflow else { throw MemSnapError(operation, .invalidRange(offset: Int(bitPattern: start), length: reservedSize)) }
        try VirtualRegion.verifyReservation(start..<end, committedEnd: start + UInt(committedSize),
                                            in: try ProcessMapping.overlapping(start..<end), during: operation)
        self.base = address
        self.maxSize = reservedSize
        self.hugePages = hugePages
        self.committed = Locked(committedSize)
        self.foreignOwner = ForeignOwner(name: ownerName, keepAlive: owner)
        applyHugePagePolicy(0..<reservedSize)
    }

    /// Checks that `mappings` cover `range` with private anonymous memory, read-write up to
    /// `committedEnd` and inaccessible after it; throws `.invalidArgument` naming the first
    /// offset that is not.
    static func verifyReservation(
        _ range: Range<UInt>, committedEnd: UInt, in mappings: [ProcessMapping], during operation: String
    ) throws(MemSnapError) {
        func offsetText(_ address: UInt) -> String { "offset \(ByteCount(Int(bitPattern: address &- range.lowerBound)))" }
        var cursor = range.lowerBound
        for mapping in mappings.sorted(by: { $0.start < $1.start }) where mapping.end > cursor && mapping.start < range.upperBound {
            guard mapping.start <= cursor else {
                throw MemSnapError(operation, .invalidArgument(
                    "nothing is mapped at \(offsetText(cursor)) (up to \(offsetText(min(mapping.start, range.upperBound)))): "
                    + "the claimed reservation is not one mapping of that size"))
            }
            guard mapping.isPrivateAnonymous else {
                throw MemSnapError(operation, .invalidArgument(
                    "\(offsetText(cursor)) lies in \(mapping), which is not private anonymous memory: "
                    + (mapping.path == "[heap]"
                        ? "it is malloc's heap (a malloc'd buffer, not a reservation; mapping over it would corrupt the heap)"
                        : "only a reservation can be adopted")))
            }
            let overlapEnd = min(mapping.end, range.upperBound)
            // The part below the committed end must be read-write, the part above inaccessible:
            // an area straddling the committed end fails one of the two.
            if cursor < committedEnd {
                guard mapping.readable && mapping.writable else {
                    throw MemSnapError(operation, .invalidArgument(
                        "\(offsetText(cursor)) lies in \(mapping), but the committed prefix must be readable and writable"))
                }
            }
            if overlapEnd > committedEnd {
                guard !mapping.readable && !mapping.writable && !mapping.executable else {
                    throw MemSnapError(operation, .invalidArgument(
                        "\(offsetText(max(cursor, committedEnd))) lies in \(mapping), but past the committed prefix a "
                        + "reservation is inaccessible: this is other memory (a malloc'd buffer is followed by more of the "
                        + "allocator's memory), not a reservation"))
                }
            }
            cursor = overlapEnd
            if cursor >= range.upperBound { return }
        }
        guard cursor >= range.upperBound else {
            throw MemSnapError(operation, .invalidArgument(
                "nothing is mapped at \(offsetText(cursor)) (up to the claimed end, \(offsetText(range.upperBound))): "
                + "the claimed reservation is not one mapping of that size"))
        }
    }

    deinit {
        if foreignOwner == nil { munmap(base, maxSize) }
    }

    /// Whether the region adopted a reservation it does not own (see
    /// `init(adoptingReservationAt:...)`).
    public var isAdopted: Bool { foreignOwner != nil }

    /// Tells an adopted region that its owner committed the reservation up to `newSize` bytes
    /// (readable, writable; a page multiple). The tracker, if any, arms the new pages and reports
    /// those that may have been written before this call (exactly with `uffd-async` and
    /// `compare`; all of them, to be safe, with `segfault` and `uffd`). Sizes equal to
    /// `committedSize` change nothing. Thread-safe.
    /// - Throws: `.invalidArgument` for a region memsnap owns (use `grow(to:)`) or a size below
    ///   `committedSize` (owners of adopted memory never give pages back while it is adopted);
    ///   `.unaligned` for a size that is not a page multiple; `.exceedsMaximum` past `maxSize`.
    public func followOwnerGrowth(to newSize: Int) throws(MemSnapError) {
        let operation = "follow owner growth of region to \(ByteCount(newSize))"
        guard foreignOwner != nil else {
            throw MemSnapError(operation, .invalidArgument("the region owns its reservation; grow it with grow(to:)"))
        }
        try Page.requireAligned(newSize, "size", during: operation)
        guard newSize <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: newSize, maximum: maxSize))
        }
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            guard newSize >= current else {
                throw MemSnapError(operation, .invalidArgument(
                    "the region already follows \(ByteCount(current)) committed; an adopted reservation never shrinks"))
            }
            guard newSize > current else { return }
            notifyMappingChange(.committedByOwner(current..<newSize))
            current = newSize
        }
    }

    /// Throws for an adopted region: only its owner commits or releases its pages.
    private func refuseForeignCommitChange(_ what: String, during operation: String) throws(MemSnapError) {
        if let foreignOwner {
            throw MemSnapError(operation, .invalidArgument(
                "the region adopts memory owned by \(foreignOwner.name), which alone \(what) its pages; "
                + "do it through the owner, then call followOwnerGrowth(to:)"))
        }
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
    ///   negative size; `.systemCall("mprotect", ...)` if the kernel refuses (nothing changes);
    ///   `.invalidArgument` for an adopted region (its owner commits; see `followOwnerGrowth`).
    public func grow(to size: Int) throws(MemSnapError) {
        let operation = "grow region to \(ByteCount(size))"
        let target = try Page.roundUp(size, during: operation)
        guard target <= maxSize else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: size, maximum: maxSize))
        }
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            guard target > current else { return }
            try refuseForeignCommitChange("commits", during: operation)
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
    ///   refuses; `.invalidArgument` for an adopted region (only its owner releases pages).
    public func decommit(from size: Int) throws(MemSnapError) {
        let operation = "decommit region from \(ByteCount(size))"
        let start = try Page.roundUp(size, during: operation)
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            guard start < current else { return }
            try refuseForeignCommitChange("releases", during: operation)
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
    /// maps them at offset 0 and releases every committed page after them. An adopted region
    /// keeps its owner's committed size: `length` must fit in it, and the pages after `length`
    /// are replaced with zero-filled ones instead of released.
    func replaceContents(
        with descriptor: Int32, length: Int, shared: Bool, during operation: String
    ) throws(MemSnapError) {
        guard length >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: length)) }
        guard length <= maxSize else {
            throw MemSnapError(operation, .tooSmall(what: "region", required: length, capacity: maxSize))
        }
        try committed.withLock { (current: inout Int) throws(MemSnapError) in
            if let foreignOwner {
                guard length <= current else {
                    throw MemSnapError(operation, .tooSmall(
                        what: "memory committed by its owner (\(foreignOwner.name); grow it there first)",
                        required: length, capacity: current))
                }
                if length > 0 {
                    try mapFileLocked(descriptor, fileOffset: 0, at: 0, length: length, shared: shared,
                                      committed: &current, during: operation)
                }
                if current > length { try zeroFillLocked(length..<current, during: operation) }
                return
            }
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
        if let foreignOwner, range.upperBound > current {
            throw MemSnapError(operation, .invalidArgument(
                "the mapping would end at \(range.upperBound), past the \(current) bytes \(foreignOwner.name) committed; "
                + "an adopted region never extends its owner's memory"))
        }
        let flags = (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED
        notifyMappingChange(.replaced(range))
        let result = mmap(base + offset, length, PROT_READ | PROT_WRITE, flags, descriptor, off_t(fileOffset))
        guard result != MAP_FAILED else {
            let error = MemSnapError.systemCall("mmap", during: operation)
            if foreignOwner != nil {
                // The owner's memory must stay accessible: put zero-filled pages back instead
                // of a hole (the previous contents may be gone already).
                _ = mmap(base + offset, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
                throw error
            }
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

    /// Replaces the committed pages of `range` with fresh zero-filled private anonymous ones
    /// (an adopted region's pages stay accessible). Call with the commit lock held.
    private func zeroFillLocked(_ range: Range<Int>, during operation: String) throws(MemSnapError) {
        notifyMappingChange(.replaced(range))
        let result = mmap(base + range.lowerBound, range.count, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        guard result != MAP_FAILED else {
            throw MemSnapError.systemCall("mmap", during: operation)
        }
        applyHugePagePolicy(range)
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

    // MARK: - Dropping pages in place (DirtyTracker.restoreInPlace)

    /// Ranges handed to one `process_madvise` call: the kernel's UIO_MAXIOV.
    private static let rangesPerCall = 1024
    /// Cleared the first time the kernel refuses `process_madvise` on the caller's own process
    /// (before 6.15); `madvise` per run from then on.
    private static let vectorAdviceWorks = Locked(true)

    /// Drops the region's copies of the pages of `pages` (runs of page indices) with
    /// `MADV_DONTNEED`: a page of a private file mapping reads the file's current content again,
    /// a page of an anonymous mapping reads zero. Mappings stay as they are, so a tracker's
    /// registration and its write-protection of the pages survive (userfaultfd keeps a marker
    /// for a protected page it drops; mprotect's protection is the mapping's). Costs one system
    /// call per 1024 runs (`process_madvise`, Linux 6.15) or per run on older kernels, plus
    /// the freed pages; nothing per untouched page.
    ///
    /// Call holding the commit lock (`withCommittedSizeLocked`), `committedSize` being its value.
    /// - Throws: `.outOfBounds` for a run outside the committed prefix (nothing is dropped);
    ///   `.systemCall("madvise", ...)`, after which a prefix of the runs may have been dropped.
    func dropPagesLocked(_ pages: [Range<Int>], committedSize: Int, during operation: String) throws(MemSnapError) {
        let limit = committedSize >> Page.shift
        for run in pages where run.lowerBound < 0 || run.upperBound > limit || run.lowerBound > run.upperBound {
            throw MemSnapError(operation, .outOfBounds(offset: run.lowerBound, length: run.count, size: limit))
        }
        var batch: [memsnap_address_range] = []
        batch.reserveCapacity(Swift.min(pages.count, VirtualRegion.rangesPerCall))
        for run in pages where !run.isEmpty {
            batch.append(memsnap_address_range(start: base + (run.lowerBound << Page.shift), length: run.count << Page.shift))
            if batch.count == VirtualRegion.rangesPerCall {
                try dropRanges(batch, during: operation)
                batch.removeAll(keepingCapacity: true)
            }
        }
        if !batch.isEmpty { try dropRanges(batch, during: operation) }
    }

    private func dropRanges(_ ranges: [memsnap_address_range], during operation: String) throws(MemSnapError) {
        var first = 0
        if VirtualRegion.vectorAdviceWorks.withLock({ $0 }) {
            let total = ranges.reduce(0) { $0 + $1.length }
            let advised = ranges.withUnsafeBufferPointer { vector in
                valueOrErrno { memsnap_madvise_ranges(vector.baseAddress, vector.count, MEMSNAP_MADV_DONTNEED) }
            }
            switch advised {
            case let .success(bytes) where bytes == total:
                return
            case let .success(bytes):
                // A short count: the ranges before `bytes` are done; finish the rest one by one
                // (a range cut in the middle is simply advised again whole: dropping is idempotent).
                var done = 0
                while first < ranges.count, done + ranges[first].length <= bytes {
                    done += ranges[first].length
                    first += 1
                }
            case .failure:
                // EBADF (no PIDFD_SELF_THREAD), EINVAL (DONTNEED refused), ENOSYS: an older kernel.
                VirtualRegion.vectorAdviceWorks.withLock { $0 = false }
            }
        }
        for range in ranges[first...] {
            _ = try systemCall("madvise", during: operation) { madvise(range.start, range.length, MEMSNAP_MADV_DONTNEED) }
        }
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
