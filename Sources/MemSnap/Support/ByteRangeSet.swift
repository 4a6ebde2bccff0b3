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
        // Filtering copies (and grows an array append by append): only when there is something
        // to drop.
        let incoming = ByteRangeSet.sortedByLowerBound(batch.contains(where: { $0.isEmpty }) ? batch.filter { !$0.isEmpty } : batch)
        guard !incoming.isEmpty else { return }
        let existing = ranges
        // Written through a buffer, not appended: the merge of a sync point's 40 000 ranges
        // is on the merge's critical path, and an append checks uniqueness and capacity.
        ranges = existing.withUnsafeBufferPointer { mine in
            incoming.withUnsafeBufferPointer { theirs in
                [Range<Int>](unsafeUninitializedCapacity: mine.count + theirs.count) { result, written in
                    var count = 0
                    var i = 0
                    var j = 0
                    while i < mine.count || j < theirs.count {
                        let next: Range<Int>
                        if j == theirs.count || (i < mine.count && mine[i].lowerBound <= theirs[j].lowerBound) {
                            next = mine[i]
                            i += 1
                        } else {
                            next = theirs[j]
                            j += 1
                        }
                        if count > 0, next.lowerBound <= result[count - 1].upperBound {
                            let last = result[count - 1]
                            result[count - 1] = last.lowerBound..<max(last.upperBound, next.upperBound)
                        } else {
                            result.initializeElement(at: count, to: next)
                            count += 1
                        }
                    }
                    written = count
                }
            }
        }
    }

    /// Natural merge sort: split into ascending runs, merge them pairwise until one is left,
    /// back and forth between two buffers (stable: the earlier of equal bounds stays first).
    static func sortedByLowerBound(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var bounds: [Int] = [0]
        for index in ranges.indices.dropFirst() where ranges[index].lowerBound < ranges[index - 1].lowerBound {
            bounds.append(index)
        }
        if bounds.count <= 1 { return ranges }
        bounds.append(ranges.count)
        var source = UnsafeMutableBufferPointer<Range<Int>>.allocate(capacity: ranges.count)
        var target = UnsafeMutableBufferPointer<Range<Int>>.allocate(capacity: ranges.count)
        defer {
            source.deallocate()
            target.deallocate()
        }
        _ = source.initialize(from: ranges)
        // Range<Int> is trivial: elements are overwritten in place, never deinitialized.
        _ = target.initialize(from: ranges)
        while bounds.count > 2 {
            var next: [Int] = [0]
            next.reserveCapacity(bounds.count / 2 + 2)
            var run = 0
            while run + 2 < bounds.count {
                var i = bounds[run]
                var j = bounds[run + 1]
                let leftEnd = j
                let rightEnd = bounds[run + 2]
                var out = i
                while i < leftEnd && j < rightEnd {
                    if source[i].lowerBound <= source[j].lowerBound {
                        target[out] = source[i]
                        i += 1
                    } else {
                        target[out] = source[j]
                        j += 1
                    }
                    out += 1
                }
                while i < leftEnd { target[out] = source[i]; i += 1; out += 1 }
                while j < rightEnd { target[out] = source[j]; j += 1; out += 1 }
                next.append(rightEnd)
                run += 2
            }
            if run + 1 < bounds.count {
                for index in bounds[run]..<bounds[run + 1] { target[index] = source[index] }
                next.append(bounds[run + 1])
            }
            swap(&source, &target)
            bounds = next
        }
        return Array(source)
    }

    /// The coalesced union of `batch`.
    package static func coalescing(_ batch: [Range<Int>]) -> [Range<Int>] {
        var set = ByteRangeSet()
        set.formUnion(batch)
        return set.ranges
    }
}
