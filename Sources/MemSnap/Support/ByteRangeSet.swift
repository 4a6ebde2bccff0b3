/// A set of integer ranges kept sorted, non-overlapping and non-adjacent.
///
/// Single inserts cost a binary search and one splice; `formUnion` of a batch sorts the batch
/// once and merges in linear time (the standard library's `RangeSet` inserts one by one, which
/// made merging 40 000 diffs quadratic).
///
/// Thread safety: a value type.
package struct ByteRangeSet: Sendable, Equatable {
    package private(set) var ranges: [Range<Int>] = []

    package init() {}

    package var isEmpty: Bool { ranges.isEmpty }

    package mutating func insert(_ range: Range<Int>) {
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

    /// Adds every range of `batch` (in any order): O(n + m log k) for a batch made of k
    /// ascending runs (diffs from k workers, each in offset order), O(n + m log m) at worst.
    package mutating func formUnion(_ batch: [Range<Int>]) {
        guard !batch.isEmpty else { return }
        let incoming = ByteRangeSet.sortedByLowerBound(batch.filter { !$0.isEmpty })
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

    /// Natural merge sort: split into ascending runs, merge them pairwise until one is left.
    static func sortedByLowerBound(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var runs: [ArraySlice<Range<Int>>] = []
        var start = 0
        for index in 1..<max(1, ranges.count + 1) where index == ranges.count || ranges[index].lowerBound < ranges[index - 1].lowerBound {
            runs.append(ranges[start..<index])
            start = index
        }
        if runs.count <= 1 { return ranges }
        while runs.count > 1 {
            var next: [ArraySlice<Range<Int>>] = []
            next.reserveCapacity((runs.count + 1) / 2)
            var index = 0
            while index + 1 < runs.count {
                next.append(merge(runs[index], runs[index + 1])[...])
                index += 2
            }
            if index < runs.count { next.append(runs[index]) }
            runs = next
        }
        return Array(runs[0])
    }

    private static func merge(_ left: ArraySlice<Range<Int>>, _ right: ArraySlice<Range<Int>>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        result.reserveCapacity(left.count + right.count)
        var i = left.startIndex
        var j = right.startIndex
        while i < left.endIndex && j < right.endIndex {
            if left[i].lowerBound <= right[j].lowerBound { result.append(left[i]); i += 1 } else { result.append(right[j]); j += 1 }
        }
        result.append(contentsOf: left[i...])
        result.append(contentsOf: right[j...])
        return result
    }

    /// The coalesced union of `batch`.
    package static func coalescing(_ batch: [Range<Int>]) -> [Range<Int>] {
        var set = ByteRangeSet()
        set.formUnion(batch)
        return set.ranges
    }
}
