import MemSnap

/// A set of 4096-byte pages of one image as sorted, non-empty, non-adjacent runs of page
/// numbers: the changed pages of an incremental checkpoint, the pages a file stores hashes for,
/// the pages a link of a chain restores.
///
/// Thread safety: a value type.
struct PageRuns: Equatable, Sendable {
    private(set) var runs: [Range<Int>]

    init() { runs = [] }

    /// `runs` must already be sorted, non-empty and non-adjacent (decoders check this).
    init(sorted runs: [Range<Int>]) { self.runs = runs }

    /// Any runs, in any order, overlapping or not: empty ones dropped, the rest coalesced.
    init(coalescing runs: [Range<Int>]) {
        var set = ByteRangeSet()
        set.formUnion(runs.filter { !$0.isEmpty })
        self.runs = set.ranges
    }

    /// Every page from 0 to `count`.
    static func all(_ count: Int) -> PageRuns { PageRuns(sorted: count > 0 ? [0..<count] : []) }

    var isEmpty: Bool { runs.isEmpty }
    var pageCount: Int { runs.reduce(0) { $0 + $1.count } }

    /// The index of the first run that ends after `page` (runs.count if none).
    private func firstRun(endingAfter page: Int) -> Int {
        var low = 0, high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].upperBound <= page { low = middle + 1 } else { high = middle }
        }
        return low
    }

    func contains(_ page: Int) -> Bool {
        let index = firstRun(endingAfter: page)
        return index < runs.count && runs[index].contains(page)
    }

    /// Whether every page of `pages` is in the set (an empty range always is).
    func contains(_ pages: Range<Int>) -> Bool {
        guard !pages.isEmpty else { return true }
        let index = firstRun(endingAfter: pages.lowerBound)
        return index < runs.count && runs[index].lowerBound <= pages.lowerBound && runs[index].upperBound >= pages.upperBound
    }

    /// Whether every run of `other` is in the set.
    func contains(_ other: PageRuns) -> Bool { other.runs.allSatisfy { contains($0) } }

    /// The parts of `pages` in the set, in order.
    func intersections(with pages: Range<Int>) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var index = firstRun(endingAfter: pages.lowerBound)
        while index < runs.count && runs[index].lowerBound < pages.upperBound {
            let clipped = runs[index].clamped(to: pages)
            if !clipped.isEmpty { result.append(clipped) }
            index += 1
        }
        return result
    }

    /// The pages of this set below `limit`.
    func clipped(to limit: Int) -> PageRuns {
        PageRuns(sorted: runs.compactMap { run in
            let clipped = run.clamped(to: 0..<max(0, limit))
            return clipped.isEmpty ? nil : clipped
        })
    }

    func union(_ other: PageRuns) -> PageRuns { PageRuns(coalescing: runs + other.runs) }

    /// The pages of this set that are not in `other`.
    func subtracting(_ other: PageRuns) -> PageRuns {
        var result: [Range<Int>] = []
        var cut = 0
        for run in runs {
            var start = run.lowerBound
            while cut < other.runs.count && other.runs[cut].upperBound <= start { cut += 1 }
            var index = cut
            while start < run.upperBound {
                guard index < other.runs.count, other.runs[index].lowerBound < run.upperBound else {
                    result.append(start..<run.upperBound)
                    break
                }
                let hole = other.runs[index]
                if hole.lowerBound > start { result.append(start..<hole.lowerBound) }
                start = max(start, hole.upperBound)
                index += 1
            }
        }
        return PageRuns(sorted: result)
    }
}
