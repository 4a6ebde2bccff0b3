import MemSnap

/// The byte ranges the frames of one checkpoint cover, collected while they are read, to reject
/// extents that overlap across frames (docs/FORMAT.md): frames are restored in parallel, so two
/// frames writing the same byte would give a result that depends on timing.
///
/// Each frame's extents (already checked disjoint and sorted) are added with adjacent ones
/// joined, so a file this library writes costs a few entries per frame. Restore threads keep
/// one each and hand it over at the end; `checkDisjoint` sorts them all and compares neighbours.
///
/// Thread safety: none; one per thread, merged by the caller.
struct ExtentCoverage {
    struct Range {
        var tag: UInt64
        var start: Int
        var end: Int
        var frame: Int
    }

    private(set) var ranges: [Range] = []

    /// Adds one frame's extents, sorted by (tag, offset) and disjoint; empty ones cover nothing.
    mutating func add(frame: Int, sortedExtents: [(tag: UInt64, offset: Int, length: Int)]) {
        var current: Range?
        for extent in sortedExtents where extent.length > 0 {
            let end = extent.offset + extent.length  // checked by the caller not to overflow
            if var joined = current, joined.tag == extent.tag, joined.end == extent.offset {
                joined.end = end
                current = joined
                continue
            }
            if let finished = current { ranges.append(finished) }
            current = Range(tag: extent.tag, start: extent.offset, end: end, frame: frame)
        }
        if let finished = current { ranges.append(finished) }
    }

    mutating func merge(_ other: ExtentCoverage) { ranges += other.ranges }

    /// Throws if any two frames cover a common byte of the same address space.
    /// - Throws: `.corrupt` naming both frames (the later one first) and the bytes they share;
    ///   among several overlaps, the one at the lowest (tag, offset), so the error does not
    ///   depend on the thread count.
    func checkDisjoint(place: (Int) -> String, during operation: String) throws(MemSnapError) {
        let sorted = ranges.sorted { ($0.tag, $0.start, $0.end, $0.frame) < ($1.tag, $1.start, $1.end, $1.frame) }
        guard var reach = sorted.first else { return }  // the range reaching furthest so far, in this tag
        for next in sorted.dropFirst() {
            if next.tag == reach.tag && next.start < reach.end {
                let (later, earlier) = next.frame > reach.frame ? (next, reach) : (reach, next)
                throw corrupt(operation, "\(place(later.frame)): extent bytes \(next.start)..<\(min(next.end, reach.end)) "
                              + "of tag \(next.tag) are also in \(place(earlier.frame)); extents must not overlap")
            }
            if next.tag != reach.tag || next.end > reach.end { reach = next }
        }
    }
}
