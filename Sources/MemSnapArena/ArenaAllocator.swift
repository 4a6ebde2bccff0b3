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
/// Thread safety: none; the arena serialises access.
struct ArenaAllocator {
    static let headerMagic: UInt64 = 0x5043_4F4C_4C41_534D  // "MSALLOCP"
    static let classes: [Int] = [16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    static let slabHeaderSize = 64
    static let bucketCount = 32

    enum Kind: UInt32 {
        case untouched = 0, freeHead = 1, freeTail = 2, runHead = 3, runInterior = 4, slab = 5, metadata = 6, pendingRun = 7, freeInterior = 8
    }

    /// Pages the allocator wrote, kept only when nothing else finds its writes (explicit
    /// tracking): the arena takes them at each sync.
    final class WrittenPages {
        private(set) var pages = Set<Int>()
        func insert(_ range: ClosedRange<Int>) { for page in range { pages.insert(page) } }
        func take() -> [Range<Int>] {
            defer { pages.removeAll(keepingCapacity: true) }
            return pages.map { $0..<$0 + 1 }
        }
    }

    let base: UnsafeMutableRawPointer
    let pageCount: Int
    /// Nil when a dirty-page tracker sees every write anyway.
    let written: WrittenPages?
    private var pageSize: Int { Page.size }

    // Header fields (page 0).
    private static let magicOffset = 0, pageCountOffset = 8, mapPagesOffset = 16, topOffset = 24, pendingOffset = 32
    private static let statsOffset = 40  // allocated bytes u64, allocation count u64
    private static let bucketsOffset = 64  // 32 x u32 heads
    private static let partialOffset = 64 + 4 * 32  // classes x u32 heads

    init(base: UnsafeMutableRawPointer, capacity: Int, recordingWrites: Bool) {
        self.base = base
        self.pageCount = capacity / Page.size
        self.written = recordingWrites ? WrittenPages() : nil
    }

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

    var isFormatted: Bool { u64(Self.magicOffset) == Self.headerMagic }
    var mapPages: Int { Int(u64(Self.mapPagesOffset)) }
    var top: Int { Int(u64(Self.topOffset)) }
    var allocatedBytes: Int { Int(u64(Self.statsOffset)) }
    var allocationCount: Int { Int(u64(Self.statsOffset + 8)) }

    /// Lays out a fresh header and page map.
    func format() throws(MemSnapError) {
        let mapPages = (pageCount * 4 + pageSize - 1) / pageSize
        guard 1 + mapPages < pageCount else {
            throw MemSnapError("format arena allocator", .tooSmall(what: "capacity", required: (2 + mapPages) * pageSize,
                                                                  capacity: pageCount * pageSize))
        }
        setU64(Self.magicOffset, Self.headerMagic)
        setU64(Self.pageCountOffset, UInt64(pageCount))
        setU64(Self.mapPagesOffset, UInt64(mapPages))
        setU64(Self.topOffset, UInt64(1 + mapPages))
        for page in 0..<(1 + mapPages) { setEntry(page, .metadata, 0) }
    }

    // MARK: Page map

    private func entry(_ page: Int) -> (kind: Kind, value: Int) {
        let raw = u32(pageSize + page * 4)
        return (Kind(rawValue: raw >> 28) ?? .untouched, Int(raw & 0x0FFF_FFFF))
    }

    private func setEntry(_ page: Int, _ kind: Kind, _ value: Int) {
        setU32(pageSize + page * 4, kind.rawValue << 28 | UInt32(value & 0x0FFF_FFFF))
    }

    // MARK: Allocation

    /// Offset (from the heap's start) of `byteCount` fresh bytes aligned to `alignment`.
    mutating func allocate(byteCount: Int, alignment: Int) throws(MemSnapError) -> Int {
        let operation = "allocate \(byteCount) bytes aligned to \(alignment) in the arena"
        guard byteCount > 0 else { throw MemSnapError(operation, .invalidArgument("cannot allocate 0 bytes")) }
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= pageSize else {
            throw MemSnapError(operation, .invalidArgument("alignment must be a power of two up to \(pageSize)"))
        }
        let offset: Int
        if alignment <= 16, let classIndex = Self.classes.firstIndex(where: { $0 >= byteCount }) {
            offset = try allocateSlot(classIndex, during: operation)
            bumpStats(bytes: Self.classes[classIndex], count: 1)
        } else {
            guard let pages = Page.count(covering: byteCount), pages < pageCount else {
                throw MemSnapError(operation, .exceedsMaximum(what: "size", requested: byteCount, maximum: pageCount * pageSize))
            }
            offset = try allocatePages(pages, during: operation) * pageSize
            bumpStats(bytes: pages * pageSize, count: 1)
        }
        return offset
    }

    private func bumpStats(bytes: Int, count: Int) {
        setU64(Self.statsOffset, UInt64(Int(u64(Self.statsOffset)) + bytes))
        setU64(Self.statsOffset + 8, UInt64(Int(u64(Self.statsOffset + 8)) + count))
    }

    private func bucket(forLength length: Int) -> Int { min(Self.bucketCount - 1, Int.bitWidth - 1 - length.leadingZeroBitCount) }

    private mutating func allocatePages(_ count: Int, during operation: String) throws(MemSnapError) -> Int {
        for bucketIndex in bucket(forLength: count)..<Self.bucketCount {
            var page = Int(u32(Self.bucketsOffset + bucketIndex * 4))
            while page != 0 {
                let length = entry(page).value
                if length >= count {
                    removeFreeRun(page, length: length)
                    if length > count { insertFreeRun(page + count, length: length - count) }
                    markRun(page, count)
                    return page
                }
                page = Int(u32(page * pageSize))  // next
            }
        }
        guard top + count <= pageCount else {
            throw MemSnapError(operation, .tooSmall(what: "arena", required: (top + count) * pageSize, capacity: pageCount * pageSize))
        }
        let page = top
        setU64(Self.topOffset, UInt64(top + count))
        markRun(page, count)
        return page
    }

    private func markRun(_ page: Int, _ count: Int) {
        setEntry(page, .runHead, count)
        for interior in 1..<max(1, count) { setEntry(page + interior, .runInterior, interior) }
    }

    private func insertFreeRun(_ page: Int, length: Int) {
        let head = Self.bucketsOffset + bucket(forLength: length) * 4
        let next = u32(head)
        setU32(page * pageSize, next)  // next
        setU32(page * pageSize + 4, 0)  // prev
        if next != 0 { setU32(Int(next) * pageSize + 4, UInt32(page)) }
        setU32(head, UInt32(page))
        setEntry(page, .freeHead, length)
        if length > 1 {
            for interior in 1..<(length - 1) { setEntry(page + interior, .freeInterior, 0) }
            setEntry(page + length - 1, .freeTail, length)
        }
    }

    private func removeFreeRun(_ page: Int, length: Int) {
        let next = u32(page * pageSize), previous = u32(page * pageSize + 4)
        if previous != 0 { setU32(Int(previous) * pageSize, next) } else { setU32(Self.bucketsOffset + bucket(forLength: length) * 4, next) }
        if next != 0 { setU32(Int(next) * pageSize + 4, previous) }
    }

    /// Makes `count` pages at `page` free, merging with free neighbours, and returns trailing
    /// free space to the untouched region above `top`.
    private func releasePages(_ page: Int, _ count: Int) {
        var start = page, length = count
        if start > 0 {
            let left = entry(start - 1)
            let leftHead = left.kind == .freeTail ? start - left.value : (left.kind == .freeHead && left.value == 1 ? start - 1 : -1)
            if leftHead >= 0 {
                let leftLength = entry(leftHead).value
                removeFreeRun(leftHead, length: leftLength)
                start = leftHead
                length += leftLength
            }
        }
        if start + length < top, entry(start + length).kind == .freeHead {
            let rightLength = entry(start + length).value
            removeFreeRun(start + length, length: rightLength)
            length += rightLength
        }
        if start + length == top {
            for page in start..<start + length { setEntry(page, .untouched, 0) }
            setU64(Self.topOffset, UInt64(start))
        } else {
            insertFreeRun(start, length: length)
        }
    }

    // MARK: Slabs

    private func slotBase(_ page: Int) -> Int { page * pageSize + Self.slabHeaderSize }
    private func slotCount(_ classIndex: Int) -> Int { (pageSize - Self.slabHeaderSize) / Self.classes[classIndex] }

    private mutating func allocateSlot(_ classIndex: Int, during operation: String) throws(MemSnapError) -> Int {
        let partialHead = Self.partialOffset + classIndex * 4
        var page = Int(u32(partialHead))
        if page == 0 {
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
            linkPartial(page, classIndex)
        }
        let header = page * pageSize
        let freeHead = Int(u16(header + 6))
        let slot = freeHead - 1
        let offset = slotBase(page) + slot * Self.classes[classIndex]
        setU16(header + 6, u16(offset))
        setU16(header + 4, u16(header + 4) + 1)
        setBit(page, slot, true)
        if u16(header + 6) == 0 { unlinkPartial(page, classIndex) }
        noteWrite(offset, Self.classes[classIndex])
        base.advanced(by: offset).initializeMemory(as: UInt8.self, repeating: 0, count: Self.classes[classIndex])
        return offset
    }

    private func linkPartial(_ page: Int, _ classIndex: Int) {
        let head = Self.partialOffset + classIndex * 4
        let next = u32(head)
        setU32(page * pageSize + 8, next)
        setU32(page * pageSize + 12, 0)
        if next != 0 { setU32(Int(next) * pageSize + 12, UInt32(page)) }
        setU32(head, UInt32(page))
    }

    private func unlinkPartial(_ page: Int, _ classIndex: Int) {
        let next = u32(page * pageSize + 8), previous = u32(page * pageSize + 12)
        if previous != 0 { setU32(Int(previous) * pageSize + 8, next) } else { setU32(Self.partialOffset + classIndex * 4, next) }
        if next != 0 { setU32(Int(next) * pageSize + 12, previous) }
        setU32(page * pageSize + 8, 0)
        setU32(page * pageSize + 12, 0)
    }

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

    /// The allocation at `offset`: its size class or page count, or nil if `offset` is not the
    /// start of a live allocation.
    func allocationSize(at offset: Int) -> Int? {
        guard offset >= 0, offset < top * pageSize else { return nil }
        let page = offset / pageSize
        let state = entry(page)
        switch state.kind {
        case .slab:
            let relative = offset - slotBase(page)
            let size = Self.classes[state.value]
            guard relative >= 0, relative % size == 0, relative / size < slotCount(state.value), bit(page, relative / size) else { return nil }
            return size
        case .runHead:
            return offset % pageSize == 0 ? state.value * pageSize : nil
        default:
            return nil
        }
    }

    /// Parks the allocation at `offset` on the pending list.
    /// - Throws: `.invalidArgument` for a double free or an offset that is not a live allocation.
    mutating func free(offset: Int) throws(MemSnapError) {
        let operation = "free arena offset \(offset)"
        guard let size = allocationSize(at: offset) else {
            let page = offset / pageSize
            let state = offset >= 0 && page < pageCount ? entry(page) : (.untouched, 0)
            let why: String
            switch state.kind {
            case .pendingRun, .freeHead, .freeTail, .freeInterior, .untouched: why = "it is not allocated (double free?)"
            case .slab: why = "it is not the start of an allocated slot (double free or an interior pointer)"
            case .runInterior: why = "it points inside an allocation, not at its start"
            case .metadata: why = "it points into the allocator's own metadata"
            case .runHead: why = "it is not page-aligned like the allocation there"
            }
            throw MemSnapError(operation, .invalidArgument(why))
        }
        let page = offset / pageSize
        if entry(page).kind == .slab {
            setBit(page, (offset - slotBase(page)) / size, false)
        } else {
            setEntry(page, .pendingRun, size / pageSize)
        }
        setU64(offset, u64(Self.pendingOffset))  // pending list through the freed memory (>= 16 bytes)
        setU64(Self.pendingOffset, UInt64(offset + 1))
        bumpStats(bytes: -size, count: -1)
    }

    /// Makes everything freed before the last durable sync reusable.
    /// - Throws: `.corrupt` if a pending entry does not match the allocator's state (a damaged
    ///   heap file); the entries before it have been released.
    mutating func releasePending() throws(MemSnapError) {
        var link = u64(Self.pendingOffset)
        setU64(Self.pendingOffset, 0)
        var visited = 0
        while link != 0 {
            func fail(_ why: String) -> MemSnapError {
                MemSnapError("release freed arena space", .corrupt("pending free at offset \(link - 1): \(why)"))
            }
            visited += 1
            guard link - 1 < UInt64(top * pageSize), visited <= pageCount * (pageSize / 16) else { throw fail("outside the heap, or the list loops") }
            let offset = Int(link - 1)
            link = u64(offset)
            let page = offset / pageSize
            let state = entry(page)
            if state.kind == .pendingRun {
                guard state.value >= 1, page + state.value <= top, offset % pageSize == 0 else { throw fail("a bad pending run") }
                releasePages(page, state.value)
            } else if state.kind == .slab, state.value < Self.classes.count {
                let header = page * pageSize
                let size = Self.classes[state.value]
                let used = u16(header + 4)
                let relative = offset - slotBase(page)
                guard used > 0, relative >= 0, relative % size == 0, relative / size < slotCount(state.value),
                      !bit(page, relative / size) else { throw fail("a slot its slab does not hold as freed") }
                let wasFull = u16(header + 6) == 0
                setU16(offset, u16(header + 6))
                setU16(header + 6, UInt16(relative / size + 1))
                setU16(header + 4, used - 1)
                if wasFull { linkPartial(page, state.value) }
                if used - 1 == 0 {
                    unlinkPartial(page, state.value)
                    releasePages(page, 1)
                }
            } else {
                throw fail("its page is neither a pending run nor a slab")
            }
        }
    }

    /// Page ranges whose contents do not matter: the interiors of free runs (their first page
    /// holds the run's list links) and everything from `top` to the end.
    func disposablePages() -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var page = 1 + mapPages
        while page < top {
            let state = entry(page)
            let length = max(1, state.value)
            if state.kind == .freeHead && length > 1 { ranges.append(page + 1..<page + length) }
            page += state.kind == .slab ? 1 : length
        }
        if top < pageCount { ranges.append(top..<pageCount) }
        return ranges
    }

    // MARK: Checking

    /// Walks every structure and throws `.corrupt` at the first inconsistency; returns the live
    /// allocation count and bytes it found.
    func check() throws(MemSnapError) -> (allocations: Int, bytes: Int) {
        func fail(_ text: String) -> MemSnapError { MemSnapError("check arena allocator", .corrupt(text)) }
        guard isFormatted else { throw fail("header magic missing") }
        guard top <= pageCount, mapPages == (pageCount * 4 + pageSize - 1) / pageSize else { throw fail("header sizes are wrong") }
        var allocations = 0, bytes = 0, freePages = Set<Int>()
        var page = 1 + mapPages
        while page < top {
            let state = entry(page)
            switch state.kind {
            case .runHead, .pendingRun:
                guard state.value >= 1, page + state.value <= top else { throw fail("run at page \(page) has length \(state.value)") }
                for interior in 1..<max(1, state.value) where entry(page + interior) != (.runInterior, interior) {
                    throw fail("page \(page + interior) is not interior to the run at \(page)")
                }
                if state.kind == .runHead { allocations += 1; bytes += state.value * pageSize }
                page += state.value
            case .freeHead:
                guard state.value >= 1, page + state.value <= top else { throw fail("free run at page \(page) has length \(state.value)") }
                if state.value > 1 && entry(page + state.value - 1) != (.freeTail, state.value) { throw fail("free run at \(page) has no tail") }
                freePages.insert(page)
                page += state.value
            case .slab:
                let header = page * pageSize
                let used = Int(u16(header + 4)), slots = slotCount(state.value)
                guard state.value < Self.classes.count, Int(u16(header + 2)) == slots, used <= slots else { throw fail("slab at page \(page) has a bad header") }
                let live = (0..<slots).filter { bit(page, $0) }.count
                allocations += live
                bytes += live * Self.classes[state.value]
                page += 1
            default:
                throw fail("page \(page) below top has kind \(state.kind)")
            }
        }
        for bucketIndex in 0..<Self.bucketCount {
            var run = Int(u32(Self.bucketsOffset + bucketIndex * 4)), seen = 0
            while run != 0 {
                guard freePages.remove(run) != nil, bucket(forLength: entry(run).value) == bucketIndex else {
                    throw fail("free list \(bucketIndex) holds page \(run), which is not a free run of its size")
                }
                run = Int(u32(run * pageSize))
                seen += 1
                if seen > pageCount { throw fail("free list \(bucketIndex) loops") }
            }
        }
        guard freePages.isEmpty else { throw fail("free runs at pages \(freePages.sorted().prefix(5)) are on no list") }
        guard allocations == allocationCount, bytes == allocatedBytes else {
            throw fail("counted \(allocations) allocations of \(bytes) bytes, the header says \(allocationCount) of \(allocatedBytes)")
        }
        return (allocations, bytes)
    }
}
