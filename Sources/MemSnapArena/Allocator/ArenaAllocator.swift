import MemSnap

/// The allocator whose every byte of state lives in the arena's heap, so it persists (and is
/// synced and recovered) exactly like the data.
///
/// Layout: page 0 is the header; pages 1..<1+mapPages are the page map, one UInt32 per page of
/// the heap (kind in the top 4 bits, a count below): O(1) from any pointer to its page's state,
/// with no fixed entry limit (the map grows with the capacity chosen at creation). Pages past
/// `top` have never been used.
///
/// - Small requests (up to 1024 bytes, alignment up to 16) come from slab pages of one size
///   class each: a 64-byte slab header (class, counts, free-slot list, partial-slab links, an
///   allocation bitmap), then the slots.
/// - Larger requests, and alignments from 32 to the page size, take runs of whole pages. Free
///   runs sit in 32 lists by power-of-two length; freeing coalesces with free neighbours and
///   gives runs at the top back to the untouched space.
/// - `free` checks the pointer (a slot start with its bitmap bit set, or a run's first page) and
///   parks it on the pending list; `releasePending` (called by `sync` once the sync is durable)
///   makes it reusable. So freed space is never reused before the free is durable.
///
/// Untrusted state: the heap is ordinary memory that a stray store can damage, and a file that
/// a crafted or damaged file can fill. So nothing read from it is trusted: every page number read
/// from a list is checked to lie in the allocated pages and to have the expected kind, every
/// kind, class, count and run length against the layout, and every list walk is bounded (and
/// free lists checked link by link, so a loop ends at once). A value that fails is a `.corrupt`
/// error naming the structure, and no read or write ever leaves the heap. `allocate`, `free` and
/// the release of page runs check every structure they will change before they change any;
/// releasing a pending slot of a damaged slab can stop half way.
///
/// Backing: before pages are handed out, `reserveBacking` is called with them (and whether they
/// come from above `top`), so the file system commits space for the heap file's pages first (a
/// store into a page the file system cannot back would otherwise raise SIGBUS on a full tmpfs);
/// if it throws, nothing changed.
///
/// Thread safety: none; the arena serialises access.
struct ArenaAllocator {
    static let headerMagic: UInt64 = 0x5043_4F4C_4C41_534D  // "MSALLOCP"
    static let classes: [Int] = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    static let slabHeaderSize = 64
    static let bucketCount = 32

    enum Kind: UInt32, CustomStringConvertible {
        case untouched = 0, freeHead = 1, freeTail = 2, runHead = 3, runInterior = 4, slab = 5, metadata = 6, pendingRun = 7, freeInterior = 8

        var description: String {
            switch self {
            case .untouched: "untouched"
            case .freeHead: "free run head"
            case .freeTail: "free run tail"
            case .runHead: "allocated run"
            case .runInterior: "allocated run interior"
            case .slab: "slab"
            case .metadata: "allocator metadata"
            case .pendingRun: "pending free run"
            case .freeInterior: "free run interior"
            }
        }
    }

    struct Entry: Equatable {
        var kind: Kind
        var value: Int
    }

    /// Pages the allocator wrote, kept only when nothing else finds its writes (explicit
    /// tracking): the arena takes them at each sync.
    final class WrittenPages {
        private var pages = ByteRangeSet()
        func insert(_ range: ClosedRange<Int>) { pages.insert(range.lowerBound..<range.upperBound + 1) }
        /// The pages written since the last take, as sorted, coalesced runs.
        func take() -> [Range<Int>] {
            defer { pages = ByteRangeSet() }
            return pages.ranges
        }
    }

    let base: UnsafeMutableRawPointer
    let pageCount: Int
    /// Nil when a dirty-page tracker sees every write anyway.
    let written: WrittenPages?
    let reserveBacking: (Range<Int>, Bool, String) throws(MemSnapError) -> Void
    private var pageSize: Int { Page.size }
    /// Page-map pages, derived from the capacity (the header's copy is checked against it).
    let mapPages: Int
    var firstDataPage: Int { 1 + mapPages }
    /// Slots cannot be smaller than 16 bytes, so no heap holds more allocations than this.
    var allocationLimit: Int { pageCount * (pageSize / 16) }

    // Header fields (page 0).
    private static let magicOffset = 0, pageCountOffset = 8, mapPagesOffset = 16, topOffset = 24, pendingOffset = 32
    private static let statsOffset = 40  // allocated bytes u64, allocation count u64
    private static let bucketsOffset = 64  // 32 x u32 heads
    private static let partialOffset = 64 + 4 * 32  // classes x u32 heads

    /// `capacity` must be a valid arena capacity (`ArenaFormat.capacityProblem` is nil).
    init(base: UnsafeMutableRawPointer, capacity: Int, recordingWrites: Bool,
         reserveBacking: @escaping (Range<Int>, Bool, String) throws(MemSnapError) -> Void) {
        self.base = base
        self.pageCount = capacity / Page.size
        self.mapPages = (pageCount * 4 + Page.size - 1) / Page.size
        self.written = recordingWrites ? WrittenPages() : nil
        self.reserveBacking = reserveBacking
    }

    // MARK: Raw access (offsets are always inside the heap: callers derive them from checked pages)

    private func noteWrite(_ offset: Int, _ count: Int) {
        written?.insert(offset >> Page.shift...(offset + count - 1) >> Page.shift)
    }
    private func u64(_ offset: Int) -> UInt64 { base.load(fromByteOffset: offset, as: UInt64.self) }
    private func setU64(_ offset: Int, _ value: UInt64) {
        noteWrite(offset, 8)
        base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
    }
    private func u32(_ offset: Int) -> UInt32 { base.load(fromByteOffset: offset, as: UInt32.self) }
    private func setU32(_ offset: Int, _ value: UInt32) {
        noteWrite(offset, 4)
        base.storeBytes(of: value, toByteOffset: offset, as: UInt32.self)
    }
    private func u16(_ offset: Int) -> UInt16 { base.load(fromByteOffset: offset, as: UInt16.self) }
    private func setU16(_ offset: Int, _ value: UInt16) {
        noteWrite(offset, 2)
        base.storeBytes(of: value, toByteOffset: offset, as: UInt16.self)
    }

    private func corrupt(_ operation: String, _ text: String) -> MemSnapError {
        MemSnapError(operation, .corrupt("arena allocator: \(text)"))
    }

    // MARK: Header

    var isFormatted: Bool { u64(Self.magicOffset) == Self.headerMagic }

    /// Checks every header field (magic, sizes, top, pending head, statistics, list heads).
    func validateHeader(during operation: String) throws(MemSnapError) {
        guard isFormatted else { throw corrupt(operation, "the heap's header magic is missing") }
        guard u64(Self.pageCountOffset) == UInt64(pageCount), u64(Self.mapPagesOffset) == UInt64(mapPages) else {
            throw corrupt(operation, "header sizes (\(u64(Self.pageCountOffset)) pages, \(u64(Self.mapPagesOffset)) map pages) "
                          + "disagree with the capacity (\(pageCount) pages, \(mapPages) map pages)")
        }
        let top = try top(during: operation)
        _ = try pendingHead(top: top, during: operation)
        _ = try statistics(during: operation)
        for bucket in 0..<Self.bucketCount {
            _ = try link(u32(Self.bucketsOffset + bucket * 4), top: top, "free list \(bucket) head", during: operation)
        }
        for classIndex in Self.classes.indices {
            _ = try link(u32(Self.partialOffset + classIndex * 4), top: top, "partial slab list \(classIndex) head", during: operation)
        }
    }

    func top(during operation: String) throws(MemSnapError) -> Int {
        let raw = u64(Self.topOffset)
        guard raw >= UInt64(firstDataPage), raw <= UInt64(pageCount) else {
            throw corrupt(operation, "top \(raw) lies outside pages \(firstDataPage)...\(pageCount)")
        }
        return Int(raw)
    }

    private func setTop(_ page: Int) { setU64(Self.topOffset, UInt64(page)) }

    /// Live allocations and their bytes, as the header counts them.
    func statistics(during operation: String) throws(MemSnapError) -> (allocations: Int, bytes: Int) {
        let bytes = u64(Self.statsOffset), count = u64(Self.statsOffset + 8)
        guard bytes <= UInt64(pageCount * pageSize), count <= UInt64(allocationLimit) else {
            throw corrupt(operation, "statistics (\(count) allocations of \(bytes) bytes) exceed what \(pageCount) pages can hold")
        }
        return (Int(count), Int(bytes))
    }

    /// The statistics after adding `bytes` and `count` (negative to remove), checked; store
    /// them with `setStatistics` once the operation can no longer fail.
    private func adjustedStatistics(bytes: Int, count: Int, during operation: String) throws(MemSnapError) -> (Int, Int) {
        let current = try statistics(during: operation)
        let newBytes = current.bytes + bytes, newCount = current.allocations + count  // both far from overflow
        guard newBytes >= 0, newCount >= 0, newBytes <= pageCount * pageSize, newCount <= allocationLimit else {
            throw corrupt(operation, "statistics (\(current.allocations) allocations of \(current.bytes) bytes) cannot "
                          + "change by \(count) allocations of \(bytes) bytes")
        }
        return (newBytes, newCount)
    }

    private func setStatistics(_ statistics: (bytes: Int, count: Int)) {
        setU64(Self.statsOffset, UInt64(statistics.bytes))
        setU64(Self.statsOffset + 8, UInt64(statistics.count))
    }

    /// The pending list's head: 0, or 1 + the offset of a freed allocation below top.
    private func pendingHead(top: Int, during operation: String) throws(MemSnapError) -> UInt64 {
        let head = u64(Self.pendingOffset)
        guard head == 0 || (head - 1 >= UInt64(firstDataPage * pageSize) && head - 1 < UInt64(top * pageSize) && (head - 1) % 16 == 0) else {
            throw corrupt(operation, "the pending-free list starts at offset \(head &- 1), outside the allocated heap")
        }
        return head
    }

    /// Lays out a fresh header and page map.
    func format(during operation: String) throws(MemSnapError) {
        guard firstDataPage < pageCount else {
            throw MemSnapError(operation, .tooSmall(what: "capacity", required: (1 + firstDataPage) * pageSize, capacity: pageCount * pageSize))
        }
        setU64(Self.magicOffset, Self.headerMagic)
        setU64(Self.pageCountOffset, UInt64(pageCount))
        setU64(Self.mapPagesOffset, UInt64(mapPages))
        setTop(firstDataPage)
        for page in 0..<firstDataPage { setEntry(page, .metadata, 0) }
    }

    // MARK: Page map

    /// The page map's entry for `page` (which must be below `pageCount`).
    func entry(_ page: Int, during operation: String) throws(MemSnapError) -> Entry {
        guard page >= 0, page < pageCount else { throw corrupt(operation, "page \(page) lies outside the \(pageCount)-page heap") }
        let raw = u32(pageSize + page * 4)
        guard let kind = Kind(rawValue: raw >> 28) else {
            throw corrupt(operation, "the page map gives page \(page) the unknown kind \(raw >> 28)")
        }
        return Entry(kind: kind, value: Int(raw & 0x0FFF_FFFF))
    }

    /// `page` is below `pageCount` and `value` below 2^28 (every caller's page and length is
    /// checked against the heap, which has fewer pages than that).
    private func setEntry(_ page: Int, _ kind: Kind, _ value: Int) {
        setU32(pageSize + page * 4, kind.rawValue << 28 | UInt32(truncatingIfNeeded: value & 0x0FFF_FFFF))
    }

    /// A page number read from the heap (a list link): nil for 0 ("none"), else a data page
    /// below `top`.
    private func link(_ raw: UInt32, top: Int, _ what: @autoclosure () -> String, during operation: String) throws(MemSnapError) -> Int? {
        guard raw != 0 else { return nil }
        guard raw >= UInt32(firstDataPage), Int(raw) < top else {
            throw corrupt(operation, "\(what()) links to page \(raw), outside the allocated pages \(firstDataPage)..<\(top)")
        }
        return Int(raw)
    }

    // MARK: Allocation

    /// Offset (from the heap's start) of `byteCount` fresh bytes aligned to `alignment`.
    func allocate(byteCount: Int, alignment: Int, during operation: String) throws(MemSnapError) -> Int {
        guard byteCount > 0 else { throw MemSnapError(operation, .invalidArgument("cannot allocate 0 bytes")) }
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= pageSize else {
            throw MemSnapError(operation, .invalidArgument("alignment must be a power of two up to \(pageSize)"))
        }
        if alignment <= 16, let classIndex = Self.classes.firstIndex(where: { $0 >= byteCount }) {
            let statistics = try adjustedStatistics(bytes: Self.classes[classIndex], count: 1, during: operation)
            let offset = try allocateSlot(classIndex, during: operation)
            setStatistics(statistics)
            return offset
        }
        guard let pages = Page.count(covering: byteCount), pages <= pageCount - firstDataPage else {
            throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: byteCount, maximum: (pageCount - firstDataPage) * pageSize))
        }
        let statistics = try adjustedStatistics(bytes: pages * pageSize, count: 1, during: operation)
        let page = try allocatePages(pages, during: operation)
        setStatistics(statistics)
        return page * pageSize
    }

    private func bucket(forLength length: Int) -> Int { min(Self.bucketCount - 1, Int.bitWidth - 1 - length.leadingZeroBitCount) }

    /// The length of the free run at `page`, after checking its head and tail entries (and, with
    /// `bucket`, that it sits on the right list).
    private func freeRunLength(_ page: Int, top: Int, bucket expected: Int?, during operation: String) throws(MemSnapError) -> Int {
        let head = try entry(page, during: operation)
        guard head.kind == .freeHead, head.value >= 1, head.value <= top - page,
              expected.map({ bucket(forLength: head.value) == $0 }) ?? true else {
            throw corrupt(operation, expected.map { "free list \($0) holds page \(page), which is not a free run of its size" }
                          ?? "page \(page) is not the head of a free run")
        }
        if head.value > 1, try entry(page + head.value - 1, during: operation) != Entry(kind: .freeTail, value: head.value) {
            throw corrupt(operation, "the free run of \(head.value) pages at page \(page) has no tail")
        }
        return head.value
    }

    /// A free-run or partial-slab link that must name a page of `kind`.
    private func linkedPage(_ raw: UInt32, of kind: Kind, top: Int, _ what: @autoclosure () -> String,
                            during operation: String) throws(MemSnapError) -> Int? {
        guard let page = try link(raw, top: top, what(), during: operation) else { return nil }
        let found = try entry(page, during: operation).kind
        guard found == kind else { throw corrupt(operation, "\(what()) links to page \(page), a \(found) page, not a \(kind)") }
        return page
    }

    private func allocatePages(_ count: Int, during operation: String) throws(MemSnapError) -> Int {
        let top = try top(during: operation)
        for bucketIndex in bucket(forLength: count)..<Self.bucketCount {
            var cursor = try link(u32(Self.bucketsOffset + bucketIndex * 4), top: top, "free list \(bucketIndex) head", during: operation)
            var previous = 0
            var steps = 0
            while let page = cursor {
                steps += 1
                // Each run's back link must name the run before it (0 for the head): a list that
                // loops breaks this at the first repeated run, long before `steps` runs out.
                guard steps <= pageCount, u32(page * pageSize + 4) == UInt32(previous) else {
                    throw corrupt(operation, "free list \(bucketIndex) is damaged at page \(page) (its back link, or a loop)")
                }
                let length = try freeRunLength(page, top: top, bucket: bucketIndex, during: operation)
                if length >= count {
                    // Everything the change reads is checked before anything is written.
                    try validateRemoval(page, length: length, top: top, during: operation)
                    if length > count { try validateInsertion(length: length - count, top: top, during: operation) }
                    try reserveBacking(page..<page + count, false, operation)
                    try removeFreeRun(page, length: length, top: top, during: operation)
                    if length > count { try insertFreeRun(page + count, length: length - count, top: top, during: operation) }
                    markRun(page, count)
                    return page
                }
                previous = page
                cursor = try link(u32(page * pageSize), top: top, "the free run at page \(page)", during: operation)
            }
        }
        guard count <= pageCount - top else {
            throw MemSnapError(operation, .tooSmall(what: "arena", required: (top + count) * pageSize, capacity: pageCount * pageSize))
        }
        try reserveBacking(top..<top + count, true, operation)
        setTop(top + count)
        markRun(top, count)
        return top
    }

    private func markRun(_ page: Int, _ count: Int) {
        setEntry(page, .runHead, count)
        for interior in 1..<max(1, count) { setEntry(page + interior, .runInterior, interior) }
    }

    /// Throws unless a run of `length` pages can be put on its list (the list's head is sound).
    private func validateInsertion(length: Int, top: Int, during operation: String) throws(MemSnapError) {
        let head = Self.bucketsOffset + bucket(forLength: length) * 4
        _ = try linkedPage(u32(head), of: .freeHead, top: top, "free list \(bucket(forLength: length)) head", during: operation)
    }

    private func insertFreeRun(_ page: Int, length: Int, top: Int, during operation: String) throws(MemSnapError) {
        let head = Self.bucketsOffset + bucket(forLength: length) * 4
        let next = try linkedPage(u32(head), of: .freeHead, top: top, "free list \(bucket(forLength: length)) head", during: operation)
        setU32(page * pageSize, UInt32(next ?? 0))  // next
        setU32(page * pageSize + 4, 0)  // prev
        if let next { setU32(next * pageSize + 4, UInt32(page)) }
        setU32(head, UInt32(page))
        setEntry(page, .freeHead, length)
        if length > 1 {
            for interior in 1..<(length - 1) { setEntry(page + interior, .freeInterior, 0) }
            setEntry(page + length - 1, .freeTail, length)
        }
    }

    /// The free run's neighbours on its list, after checking them: each a free run, and the run
    /// the list's head when it has no previous one.
    @discardableResult
    private func validateRemoval(_ page: Int, length: Int, top: Int, during operation: String) throws(MemSnapError) -> (next: Int?, previous: Int?) {
        let next = try linkedPage(u32(page * pageSize), of: .freeHead, top: top, "the free run at page \(page) (next)", during: operation)
        let previous = try linkedPage(u32(page * pageSize + 4), of: .freeHead, top: top, "the free run at page \(page) (previous)",
                                      during: operation)
        if previous == nil, u32(Self.bucketsOffset + bucket(forLength: length) * 4) != UInt32(page) {
            throw corrupt(operation, "the free run at page \(page) has no previous run but does not head free list \(bucket(forLength: length))")
        }
        return (next, previous)
    }

    private func removeFreeRun(_ page: Int, length: Int, top: Int, during operation: String) throws(MemSnapError) {
        let (next, previous) = try validateRemoval(page, length: length, top: top, during: operation)
        let head = Self.bucketsOffset + bucket(forLength: length) * 4
        if let previous { setU32(previous * pageSize, UInt32(next ?? 0)) } else { setU32(head, UInt32(next ?? 0)) }
        if let next { setU32(next * pageSize + 4, UInt32(previous ?? 0)) }
    }

    /// Makes `count` pages at `page` free, merging with free neighbours, and returns trailing
    /// free space to the untouched region above `top`. Checks every run it will touch before it
    /// changes any.
    private func releasePages(_ page: Int, _ count: Int, during operation: String) throws(MemSnapError) {
        let top = try top(during: operation)
        var left: (head: Int, length: Int)? = nil
        if page - 1 >= firstDataPage {
            let entry = try entry(page - 1, during: operation)
            var leftHead: Int? = nil
            if entry.kind == .freeTail {
                guard entry.value >= 2, entry.value <= page - firstDataPage else {
                    throw corrupt(operation, "the free run tail at page \(page - 1) gives the length \(entry.value)")
                }
                leftHead = page - entry.value
            } else if entry.kind == .freeHead && entry.value == 1 {
                leftHead = page - 1
            }
            if let leftHead {
                let length = try freeRunLength(leftHead, top: top, bucket: nil, during: operation)
                guard leftHead + length == page else {
                    throw corrupt(operation, "the free run at page \(leftHead) does not end where its tail says")
                }
                try validateRemoval(leftHead, length: length, top: top, during: operation)
                left = (leftHead, length)
            }
        }
        var right: (head: Int, length: Int)? = nil
        if page + count < top, try entry(page + count, during: operation).kind == .freeHead {
            let length = try freeRunLength(page + count, top: top, bucket: nil, during: operation)
            try validateRemoval(page + count, length: length, top: top, during: operation)
            right = (page + count, length)
        }
        let start = left?.head ?? page
        let length = (left?.length ?? 0) + count + (right?.length ?? 0)
        if start + length != top { try validateInsertion(length: length, top: top, during: operation) }
        if let left { try removeFreeRun(left.head, length: left.length, top: top, during: operation) }
        if let right { try removeFreeRun(right.head, length: right.length, top: top, during: operation) }
        if start + length == top {
            for page in start..<start + length { setEntry(page, .untouched, 0) }
            setTop(start)
        } else {
            try insertFreeRun(start, length: length, top: top, during: operation)
        }
    }

    // MARK: Slabs

    private func slotBase(_ page: Int) -> Int { page * pageSize + Self.slabHeaderSize }
    private func slotCount(_ classIndex: Int) -> Int { (pageSize - Self.slabHeaderSize) / Self.classes[classIndex] }

    /// The class of the slab at `page` (and that it is `expected`, if given), after checking its
    /// page-map entry and its header (class, slot count, used count and free-slot head in range).
    private func slabClass(_ page: Int, expected: Int?, during operation: String) throws(MemSnapError) -> Int {
        let state = try entry(page, during: operation)
        guard state.kind == .slab, state.value < Self.classes.count else {
            throw corrupt(operation, "page \(page) is not a slab (the page map says \(state.kind) \(state.value))")
        }
        if let expected, state.value != expected {
            throw corrupt(operation, "the slab at page \(page) is of class \(state.value), found on the list of class \(expected)")
        }
        let header = page * pageSize
        let slots = slotCount(state.value)
        guard Int(u16(header)) == state.value, Int(u16(header + 2)) == slots, Int(u16(header + 4)) <= slots,
              Int(u16(header + 6)) <= slots else {
            throw corrupt(operation, "the slab at page \(page) has a bad header")
        }
        return state.value
    }

    private func allocateSlot(_ classIndex: Int, during operation: String) throws(MemSnapError) -> Int {
        let partialHead = Self.partialOffset + classIndex * 4
        var page: Int
        if let head = try link(u32(partialHead), top: try top(during: operation), "partial slab list \(classIndex) head", during: operation) {
            page = head
            _ = try slabClass(page, expected: classIndex, during: operation)
        } else {
            page = try allocatePages(1, during: operation)
            setEntry(page, .slab, classIndex)
            let header = page * pageSize
            noteWrite(header, Self.slabHeaderSize)
            base.advanced(by: header).initializeMemory(as: UInt8.self, repeating: 0, count: Self.slabHeaderSize)
            let slots = slotCount(classIndex)
            setU16(header, UInt16(classIndex)); setU16(header + 2, UInt16(slots)); setU16(header + 4, 0); setU16(header + 6, 1)
            for slot in 0..<slots {  // free list through the slots: slot i -> i + 2 (1-based), last -> 0
                setU16(slotBase(page) + slot * Self.classes[classIndex], slot + 1 < slots ? UInt16(slot + 2) : 0)
            }
            try linkPartial(page, classIndex, during: operation)
        }
        let header = page * pageSize
        let size = Self.classes[classIndex], slots = slotCount(classIndex)
        let freeHead = Int(u16(header + 6)), used = Int(u16(header + 4))
        guard freeHead >= 1, used < slots else {
            throw corrupt(operation, "the slab at page \(page) is on the partial list of class \(classIndex) but has no free slot")
        }
        let slot = freeHead - 1
        guard !bit(page, slot) else {
            throw corrupt(operation, "the free-slot list of the slab at page \(page) names slot \(slot), which is allocated")
        }
        let offset = slotBase(page) + slot * size
        let nextFree = u16(offset)
        guard Int(nextFree) <= slots else {
            throw corrupt(operation, "free slot \(slot) of the slab at page \(page) links to slot \(nextFree), past its \(slots) slots")
        }
        setU16(header + 6, nextFree)
        setU16(header + 4, UInt16(used + 1))
        setBit(page, slot, true)
        if nextFree == 0 { try unlinkPartial(page, classIndex, during: operation) }
        noteWrite(offset, size)
        base.advanced(by: offset).initializeMemory(as: UInt8.self, repeating: 0, count: size)
        return offset
    }

    private func linkPartial(_ page: Int, _ classIndex: Int, during operation: String) throws(MemSnapError) {
        let head = Self.partialOffset + classIndex * 4
        let top = try top(during: operation)
        let next = try linkedPage(u32(head), of: .slab, top: top, "partial slab list \(classIndex) head", during: operation)
        setU32(page * pageSize + 8, UInt32(next ?? 0))
        setU32(page * pageSize + 12, 0)
        if let next { setU32(next * pageSize + 12, UInt32(page)) }
        setU32(head, UInt32(page))
    }

    private func unlinkPartial(_ page: Int, _ classIndex: Int, during operation: String) throws(MemSnapError) {
        let top = try top(during: operation)
        let next = try linkedPage(u32(page * pageSize + 8), of: .slab, top: top, "the slab at page \(page) (next)", during: operation)
        let previous = try linkedPage(u32(page * pageSize + 12), of: .slab, top: top, "the slab at page \(page) (previous)",
                                      during: operation)
        let head = Self.partialOffset + classIndex * 4
        if previous == nil, u32(head) != UInt32(page) {
            throw corrupt(operation, "the slab at page \(page) has no previous slab but does not head partial list \(classIndex)")
        }
        if let previous { setU32(previous * pageSize + 8, UInt32(next ?? 0)) } else { setU32(head, UInt32(next ?? 0)) }
        if let next { setU32(next * pageSize + 12, UInt32(previous ?? 0)) }
        setU32(page * pageSize + 8, 0)
        setU32(page * pageSize + 12, 0)
    }

    /// `slot` is below the slab's slot count (at most 252 bits of the 384 the header holds).
    private func bit(_ page: Int, _ slot: Int) -> Bool {
        base.load(fromByteOffset: page * pageSize + 16 + slot / 8, as: UInt8.self) & (1 << UInt8(slot % 8)) != 0
    }

    private func setBit(_ page: Int, _ slot: Int, _ value: Bool) {
        let offset = page * pageSize + 16 + slot / 8
        var byte = base.load(fromByteOffset: offset, as: UInt8.self)
        if value { byte |= 1 << UInt8(slot % 8) } else { byte &= ~(1 << UInt8(slot % 8)) }
        noteWrite(offset, 1)
        base.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
    }

    // MARK: Freeing

    /// Parks the allocation at `offset` on the pending list.
    /// - Throws: `.invalidArgument` for a double free or an offset that is not a live allocation;
    ///   `.corrupt` if the allocator's state around it is damaged. Nothing changes on error.
    func free(offset: Int, during operation: String) throws(MemSnapError) {
        let top = try top(during: operation)
        guard offset >= 0, offset < top * pageSize else {
            throw MemSnapError(operation, .invalidArgument("it is not allocated (double free?)"))
        }
        let page = offset / pageSize
        guard page >= firstDataPage else {
            throw MemSnapError(operation, .invalidArgument("it points into the allocator's own metadata"))
        }
        let state = try entry(page, during: operation)
        let size: Int
        switch state.kind {
        case .slab:
            let classIndex = try slabClass(page, expected: nil, during: operation)
            size = Self.classes[classIndex]
            let relative = offset - slotBase(page)
            guard relative >= 0, relative % size == 0, relative / size < slotCount(classIndex), bit(page, relative / size) else {
                throw MemSnapError(operation, .invalidArgument("it is not the start of an allocated slot (double free or an interior pointer)"))
            }
        case .runHead:
            guard offset % pageSize == 0 else { throw MemSnapError(operation, .invalidArgument("it is not page-aligned like the allocation there")) }
            guard state.value >= 1, state.value <= top - page else {
                throw corrupt(operation, "the run at page \(page) has length \(state.value)")
            }
            size = state.value * pageSize
        case .runInterior:
            throw MemSnapError(operation, .invalidArgument("it points inside an allocation, not at its start"))
        case .metadata:
            throw MemSnapError(operation, .invalidArgument("it points into the allocator's own metadata"))
        case .pendingRun, .freeHead, .freeTail, .freeInterior, .untouched:
            throw MemSnapError(operation, .invalidArgument("it is not allocated (double free?)"))
        }
        let statistics = try adjustedStatistics(bytes: -size, count: -1, during: operation)
        let pending = try pendingHead(top: top, during: operation)
        if state.kind == .slab {
            setBit(page, (offset - slotBase(page)) / size, false)
        } else {
            setEntry(page, .pendingRun, size / pageSize)
        }
        setU64(offset, pending)  // the pending list runs through the freed memory (>= 16 bytes)
        setU64(Self.pendingOffset, UInt64(offset + 1))
        setStatistics(statistics)
    }

    /// Makes everything freed before the last durable sync reusable.
    /// - Throws: `.corrupt` if a pending entry does not match the allocator's state (a damaged
    ///   heap); the entries before it have been released, and the list keeps the rest.
    func releasePending(during operation: String) throws(MemSnapError) {
        var visited = 0
        while true {
            let top = try top(during: operation)
            let link = try pendingHead(top: top, during: operation)
            guard link != 0 else { return }
            visited += 1
            let offset = Int(link - 1)  // below top, 16-aligned: checked by pendingHead
            func fail(_ why: String) -> MemSnapError { corrupt(operation, "the pending free at offset \(offset): \(why)") }
            guard visited <= allocationLimit else { throw fail("the pending-free list loops") }
            let next = u64(offset)
            let page = offset / pageSize
            let state = try entry(page, during: operation)
            if state.kind == .pendingRun {
                guard state.value >= 1, state.value <= top - page, offset % pageSize == 0 else { throw fail("a bad pending run") }
                try releasePages(page, state.value, during: operation)  // checks before it changes anything
                setU64(Self.pendingOffset, next)  // checked on the next turn
            } else if state.kind == .slab {
                let classIndex = try slabClass(page, expected: nil, during: operation)
                let header = page * pageSize
                let size = Self.classes[classIndex]
                let used = Int(u16(header + 4))
                let relative = offset - slotBase(page)
                guard used > 0, relative >= 0, relative % size == 0, relative / size < slotCount(classIndex), !bit(page, relative / size) else {
                    throw fail("a slot its slab does not hold as freed")
                }
                setU64(Self.pendingOffset, next)
                let wasFull = u16(header + 6) == 0
                setU16(offset, u16(header + 6))
                setU16(header + 6, UInt16(relative / size + 1))
                setU16(header + 4, UInt16(used - 1))
                if wasFull { try linkPartial(page, classIndex, during: operation) }
                if used - 1 == 0 {
                    try unlinkPartial(page, classIndex, during: operation)
                    try releasePages(page, 1, during: operation)
                }
            } else {
                throw fail("its page is neither a pending run nor a slab")
            }
        }
    }

    // MARK: Page usage

    /// Walks the allocated pages in order, calling `body` with each unit (a run, pending run,
    /// free run, or one slab page) after checking that it fits below top.
    private func walkPages(during operation: String, _ body: (Int, Entry) throws(MemSnapError) -> Void) throws(MemSnapError) {
        let top = try top(during: operation)
        var page = firstDataPage
        while page < top {
            let state = try entry(page, during: operation)
            switch state.kind {
            case .runHead, .pendingRun, .freeHead:
                guard state.value >= 1, state.value <= top - page else {
                    throw corrupt(operation, "the \(state.kind) at page \(page) has length \(state.value)")
                }
                try body(page, state)
                page += state.value
            case .slab:
                try body(page, state)
                page += 1
            default:
                throw corrupt(operation, "page \(page) below top has kind \(state.kind)")
            }
        }
    }

    /// Page ranges whose contents do not matter: the interiors of free runs (their first page
    /// holds the run's list links) and everything from `top` to the end. Coalesced.
    func disposablePages(during operation: String) throws(MemSnapError) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        try walkPages(during: operation) { (page, state) throws(MemSnapError) in
            if state.kind == .freeHead && state.value > 1 { ranges.append(page + 1..<page + state.value) }
        }
        let top = try top(during: operation)
        if top < pageCount { ranges.append(top..<pageCount) }
        return ranges
    }

    /// Page ranges whose contents matter (the complement of `disposablePages`), coalesced.
    func pagesInUse(during operation: String) throws(MemSnapError) -> [Range<Int>] {
        var inUse: [Range<Int>] = []
        var start = 0
        for disposable in try disposablePages(during: operation) {
            if disposable.lowerBound > start { inUse.append(start..<disposable.lowerBound) }
            start = disposable.upperBound
        }
        if start < pageCount { inUse.append(start..<pageCount) }
        return inUse
    }

    // MARK: Checking

    /// Walks every structure (page map, free lists, partial-slab lists, each slab's free-slot
    /// list, the pending list, the statistics) and throws `.corrupt` at the first
    /// inconsistency; returns the live allocation count and bytes it found.
    func check(during operation: String) throws(MemSnapError) -> (allocations: Int, bytes: Int) {
        try validateHeader(during: operation)
        let top = try top(during: operation)
        for page in 0..<firstDataPage where try entry(page, during: operation).kind != .metadata {
            throw corrupt(operation, "page \(page) holds the allocator's metadata but the page map says otherwise")
        }
        var allocations = 0, bytes = 0, pendingBytes = 0
        var freeRuns = Set<Int>(), slabsWithFreeSlots = Set<Int>(), pendingRuns = Set<Int>()
        try walkPages(during: operation) { (page, state) throws(MemSnapError) in
            switch state.kind {
            case .runHead, .pendingRun:
                for interior in 1..<max(1, state.value) where try entry(page + interior, during: operation) != Entry(kind: .runInterior, value: interior) {
                    throw corrupt(operation, "page \(page + interior) is not interior to the run at \(page)")
                }
                if state.kind == .runHead {
                    allocations += 1
                    bytes += state.value * pageSize
                } else {
                    pendingRuns.insert(page)
                }
            case .freeHead:
                _ = try freeRunLength(page, top: top, bucket: nil, during: operation)
                for interior in 1..<max(1, state.value - 1) where try entry(page + interior, during: operation).kind != .freeInterior {
                    throw corrupt(operation, "page \(page + interior) is not interior to the free run at \(page)")
                }
                freeRuns.insert(page)
            case .slab:
                let classIndex = try slabClass(page, expected: nil, during: operation)
                let header = page * pageSize, slots = slotCount(classIndex)
                let live = (0..<slots).filter { bit(page, $0) }.count
                // The free-slot list: distinct unallocated slots; `used` counts the rest (live and pending).
                var free = Set<Int>(), cursor = Int(u16(header + 6))
                while cursor != 0 {
                    guard cursor <= slots, free.insert(cursor - 1).inserted, !bit(page, cursor - 1) else {
                        throw corrupt(operation, "the free-slot list of the slab at page \(page) is damaged at slot \(cursor - 1)")
                    }
                    cursor = Int(u16(slotBase(page) + (cursor - 1) * Self.classes[classIndex]))
                }
                let used = Int(u16(header + 4))
                guard used >= live, used + free.count == slots else {
                    throw corrupt(operation, "the slab at page \(page) counts \(used) used slots; \(live) are live and \(free.count) free of \(slots)")
                }
                if !free.isEmpty { slabsWithFreeSlots.insert(page) }
                pendingBytes += (used - live) * Self.classes[classIndex]
                allocations += live
                bytes += live * Self.classes[classIndex]
            default:
                break
            }
        }
        for bucketIndex in 0..<Self.bucketCount {
            var cursor = try link(u32(Self.bucketsOffset + bucketIndex * 4), top: top, "free list \(bucketIndex) head", during: operation)
            while let run = cursor {
                guard freeRuns.remove(run) != nil, try freeRunLength(run, top: top, bucket: bucketIndex, during: operation) > 0 else {
                    throw corrupt(operation, "free list \(bucketIndex) holds page \(run), which is not a free run of its size (or it loops)")
                }
                cursor = try link(u32(run * pageSize), top: top, "the free run at page \(run)", during: operation)
            }
        }
        guard freeRuns.isEmpty else { throw corrupt(operation, "free runs at pages \(freeRuns.sorted().prefix(5)) are on no list") }
        for classIndex in Self.classes.indices {
            var cursor = try link(u32(Self.partialOffset + classIndex * 4), top: top, "partial slab list \(classIndex) head", during: operation)
            while let slab = cursor {
                guard slabsWithFreeSlots.remove(slab) != nil, try slabClass(slab, expected: classIndex, during: operation) == classIndex else {
                    throw corrupt(operation, "partial slab list \(classIndex) holds page \(slab), which is not a slab of that class with free slots (or it loops)")
                }
                cursor = try link(u32(slab * pageSize + 8), top: top, "the slab at page \(slab)", during: operation)
            }
        }
        guard slabsWithFreeSlots.isEmpty else {
            throw corrupt(operation, "slabs with free slots at pages \(slabsWithFreeSlots.sorted().prefix(5)) are on no partial list")
        }
        // The pending list must name exactly the pending runs and the slots slabs hold as freed.
        var pendingSeen = 0, visited = Set<Int>(), link = try pendingHead(top: top, during: operation)
        while link != 0 {
            let offset = Int(link - 1)
            guard visited.insert(offset).inserted, pendingSeen <= pendingBytes else {
                throw corrupt(operation, "the pending-free list loops or names more than was freed")
            }
            let state = try entry(offset / pageSize, during: operation)
            if state.kind == .pendingRun {
                guard offset % pageSize == 0, pendingRuns.remove(offset / pageSize) != nil else {
                    throw corrupt(operation, "the pending-free list names offset \(offset) twice or inside a run")
                }
            } else if state.kind == .slab {
                pendingSeen += Self.classes[try slabClass(offset / pageSize, expected: nil, during: operation)]
            } else {
                throw corrupt(operation, "the pending-free list names offset \(offset), on a \(state.kind) page")
            }
            link = u64(offset)
            guard link == 0 || (link - 1 >= UInt64(firstDataPage * pageSize) && link - 1 < UInt64(top * pageSize) && (link - 1) % 16 == 0) else {
                throw corrupt(operation, "the pending-free list links to offset \(link &- 1), outside the allocated heap")
            }
        }
        guard pendingRuns.isEmpty, pendingSeen == pendingBytes else {
            throw corrupt(operation, "the pending-free list does not hold every freed allocation")
        }
        let counted = try statistics(during: operation)
        guard allocations == counted.allocations, bytes == counted.bytes else {
            throw corrupt(operation, "counted \(allocations) allocations of \(bytes) bytes, the header says \(counted.allocations) of \(counted.bytes)")
        }
        return (allocations, bytes)
    }
}
