import MemSnap

/// Keeps every heap page the allocator hands out backed by the file system, so that a store
/// into it cannot fault for lack of space (on a full tmpfs a first touch of a page the file
/// system cannot back raises SIGBUS); the allocation fails with ENOSPC instead.
///
/// Pages taken above the allocator's top are reserved ahead, in steps of 1 MiB (one
/// `posix_fallocate` per step, not per page: the cost of reserving page by page was a third of
/// a small allocation's time); pages taken from a free run are reserved exactly (compaction may
/// have punched them out).
///
/// Ownership: shares the arena's heap file. Thread safety: none; the arena serialises it.
final class HeapBacking {
    let file: any ArenaFile
    let pageCount: Int
    /// Every page from the allocator's top up to here is reserved...
    private(set) var reservedTop: Int
    /// ...as long as top has not gone below this (the top after the last growth seen): when
    /// freeing lowers top, the pages it gives back may be holes that compaction punched.
    private var grownTop: Int
    static let step = (1 << 20) / 4096

    /// `reservedTop`: the first page from which nothing is known to be reserved.
    init(file: any ArenaFile, pageCount: Int, reservedTop: Int) {
        self.file = file
        self.pageCount = pageCount
        self.reservedTop = reservedTop
        self.grownTop = reservedTop
    }

    /// Everything below `top` that is in use is reserved; nothing above it is known to be.
    func resetReservedTop(_ top: Int) {
        reservedTop = top
        grownTop = top
    }

    /// Reserves heap `pages`; `aboveTop` when they come from growing the allocator's top (then
    /// `pages.lowerBound` is the current top).
    func reserve(_ pages: Range<Int>, aboveTop: Bool, during operation: String) throws(MemSnapError) {
        guard aboveTop else { return try reserveExactly(pages, during: operation) }
        if pages.lowerBound < grownTop { reservedTop = min(reservedTop, pages.lowerBound) }
        grownTop = pages.upperBound
        guard pages.upperBound > reservedTop else { return }
        let start = max(pages.lowerBound, reservedTop)
        let ahead = min(pageCount, max(pages.upperBound, start + Self.step))
        do {
            try reserveExactly(start..<ahead, during: operation)
            reservedTop = ahead
        } catch where ahead > pages.upperBound {
            try reserveExactly(start..<pages.upperBound, during: operation)
            reservedTop = pages.upperBound
        }
    }

    private func reserveExactly(_ pages: Range<Int>, during operation: String) throws(MemSnapError) {
        let offset = ArenaFormat.heapFileOffset
        try file.reserve(offset + pages.lowerBound * Page.size..<offset + pages.upperBound * Page.size, during: operation)
    }
}
