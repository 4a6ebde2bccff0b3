/// A set of integer ranges kept sorted, non-overlapping and non-adjacent.
///
/// Single inserts cost a binary search and one splice; `formUnion` of a batch sorts the batch
/// once and merges in linear time (the standard library's `RangeSet` inserts one by one, which
/// made merging 40 000 diffs quadratic).
///
/// Thread safety: a value type.
struct ByteRangeSet: Sendable, Equatable {
    private(set) var ranges: [Range<Int>] = []

    var isEmpty: Bool { ranges.isEmpty }

    mutating func insert(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        // First range whose end reaches the new one (touching counts: ranges coalesce).
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < range.lowerBound { low = middle + 1 } else { high = middle }
        }
        var end = low
        var merged = range
        while end < ranges.count && ranges[end].lowerBound <= merged.upperBound {
            merged = min(merged.lowerBound, ranges[end].lowerBound)..<max(merged.upperBound, ranges[end].upperBound)
            end += 1
        }
        ranges.replaceSubrange(low..<end, with: CollectionOfOne(merged))
    }

    /// Adds every range of `batch` (in any order): O((n + m) + m log m).
    mutating func formUnion(_ batch: [Range<Int>]) {
        guard !batch.isEmpty else { return }
        let incoming = batch.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        var result: [Range<Int>] = []
        result.reserveCapacity(ranges.count + incoming.count)
        var mine = 0
        var theirs = 0
        while mine < ranges.count || theirs < incoming.count {
            let next: Range<Int>
            if theirs == incoming.count || (mine < ranges.count && ranges[mine].lowerBound <= incoming[theirs].lowerBound) {
                next = ranges[mine]
                mine += 1
            } else {
                next = incoming[theirs]
                theirs += 1
            }
            if let last = result.last, next.lowerBound <= last.upperBound {
                result[result.count - 1] = last.lowerBound..<max(last.upperBound, next.upperBound)
            } else {
                result.append(next)
            }
        }
        ranges = result
    }

    /// The coalesced union of `batch`.
    static func coalescing(_ batch: [Range<Int>]) -> [Range<Int>] {
        var set = ByteRangeSet()
        set.formUnion(batch)
        return set.ranges
    }
}
