/// The pages of a region written since a point in time, as collected by a `DirtyTracker`.
///
/// Pages are indices into the region (page `i` covers bytes `i * Page.size ..< (i + 1) * Page.size`).
/// Thread safety: a value type.
public struct DirtyPages: Sendable, Equatable {
    /// Pages the collect looked at: the region's committed pages at that moment.
    public let pageCount: Int
    /// Written pages as sorted, non-overlapping, non-adjacent runs of page indices.
    public let runs: [Range<Int>]

    /// The most pages anything can have: `Int.max / Page.size`, so that every page's byte range
    /// (`byteRanges`) is a valid `Range<Int>`.
    public static let maxPageCount = Int.max >> Page.shift

    /// Pages `runs` (in any order, overlapping or not) of `pageCount` pages.
    ///
    /// Any values are accepted: `pageCount` is clamped to `0...maxPageCount`, and runs are
    /// clipped to `0..<pageCount` (negative pages and pages past the end are dropped).
    public init(pageCount: Int, runs: [Range<Int>]) {
        let limit = Swift.min(Swift.max(0, pageCount), DirtyPages.maxPageCount)
        self.pageCount = limit
        self.runs = DirtyPages.coalesce(runs, limit: limit)
    }

    init(_ bitmap: PageBitmap) {
        self.pageCount = bitmap.pageCount
        self.runs = bitmap.runs
    }

    /// Number of written pages.
    public var count: Int { runs.reduce(0) { $0 + $1.count } }

    public var isEmpty: Bool { runs.isEmpty }

    /// Written page indices, ascending. Holds `count` integers: for huge sets use `runs`.
    public var pages: [Int] { runs.flatMap { Array($0) } }

    /// The same set as a bitmap (`pageCount / 8` bytes, however few pages are set).
    public var bitmap: PageBitmap { PageBitmap(pageCount: pageCount, runs: runs) }

    /// Written pages as byte ranges of the region. Never overflows: pages are below
    /// `maxPageCount`.
    public var byteRanges: [Range<Int>] {
        runs.map { ($0.lowerBound << Page.shift)..<($0.upperBound << Page.shift) }
    }

    /// Fraction of the looked-at pages that were written (0 for an empty region).
    public var fraction: Double { pageCount == 0 ? 0 : Double(count) / Double(pageCount) }

    public func contains(_ page: Int) -> Bool {
        var low = 0
        var high = runs.count
        while low < high {
            let middle = (low + high) / 2
            if runs[middle].upperBound <= page { low = middle + 1 } else { high = middle }
        }
        return low < runs.count && runs[low].contains(page)
    }

    /// The union of two collects (e.g. thread-local results); covers the larger page count.
    public func union(_ other: DirtyPages) -> DirtyPages {
        DirtyPages(pageCount: max(pageCount, other.pageCount), runs: runs + other.runs)
    }

    /// Sorts, clips to `0..<limit` and merges overlapping or adjacent runs.
    static func coalesce(_ runs: [Range<Int>], limit: Int) -> [Range<Int>] {
        let sorted = runs.map { $0.clamped(to: 0..<max(0, limit)) }.filter { !$0.isEmpty }
            .sorted { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = []
        merged.reserveCapacity(sorted.count)
        for run in sorted { merged.appendJoining(run) }
        return merged
    }
}
