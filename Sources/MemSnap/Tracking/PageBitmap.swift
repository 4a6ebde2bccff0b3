/// One bit per page: bit `i % 64` of word `i / 64` is page `i`.
///
/// The layout is the one the C page records use, so bitmaps move between them without conversion.
/// Memory: `pageCount / 8` bytes, allocated up front whatever is set. A page count that memory
/// cannot hold (the bitmap of 2^51 pages is 256 TiB) fails the allocation like any array.
/// Thread safety: a value type.
public struct PageBitmap: Sendable, Equatable {
    /// Number of pages the bitmap covers; bits at and past it are always zero.
    public private(set) var pageCount: Int
    public private(set) var words: [UInt64]

    /// An empty bitmap covering `pageCount` pages; negative counts give an empty bitmap, counts
    /// above `DirtyPages.maxPageCount` are clamped to it.
    public init(pageCount: Int) {
        let count = PageBitmap.clampedPageCount(pageCount)
        self.pageCount = count
        self.words = [UInt64](repeating: 0, count: PageBitmap.wordCount(count))
    }

    /// `pageCount` in `0...DirtyPages.maxPageCount`.
    static func clampedPageCount(_ pageCount: Int) -> Int {
        min(max(0, pageCount), DirtyPages.maxPageCount)
    }

    /// Words holding `pageCount` bits, without the overflow of `(pageCount + 63) / 64`.
    static func wordCount(_ pageCount: Int) -> Int {
        pageCount / 64 + (pageCount % 64 == 0 ? 0 : 1)
    }

    /// A bitmap of `pageCount` pages with the pages of `runs` set (runs past the end are clipped).
    public init(pageCount: Int, runs: [Range<Int>]) {
        self.init(pageCount: pageCount)
        for run in runs { insert(run) }
    }

    /// Adopts raw words; bits at or past `pageCount` are cleared.
    init(pageCount: Int, words: [UInt64]) {
        self.pageCount = PageBitmap.clampedPageCount(pageCount)
        let wordCount = PageBitmap.wordCount(self.pageCount)
        var trimmed = Array(words.prefix(wordCount))
        trimmed.append(contentsOf: repeatElement(0, count: wordCount - trimmed.count))
        if self.pageCount % 64 != 0, let last = trimmed.indices.last {
            trimmed[last] &= (1 << UInt64(self.pageCount % 64)) - 1
        }
        self.words = trimmed
    }

    public func contains(_ page: Int) -> Bool {
        guard page >= 0, page < pageCount else { return false }
        return words[page >> 6] & (1 << UInt64(page & 63)) != 0
    }

    public mutating func insert(_ page: Int) {
        guard page >= 0, page < pageCount else { return }
        words[page >> 6] |= 1 << UInt64(page & 63)
    }

    /// Sets every page of `run` that lies inside the bitmap.
    public mutating func insert(_ run: Range<Int>) {
        let clipped = run.clamped(to: 0..<pageCount)
        guard !clipped.isEmpty else { return }
        var page = clipped.lowerBound
        while page < clipped.upperBound {
            let bit = page & 63
            let span = min(64 - bit, clipped.upperBound - page)
            let mask: UInt64 = span == 64 ? ~0 : ((1 << UInt64(span)) - 1) << UInt64(bit)
            words[page >> 6] |= mask
            page += span
        }
    }

    /// The pages set in either bitmap; the result covers the larger page count.
    public func union(_ other: PageBitmap) -> PageBitmap {
        var result = PageBitmap(pageCount: max(pageCount, other.pageCount))
        for index in result.words.indices {
            let mine = index < words.count ? words[index] : 0
            let theirs = index < other.words.count ? other.words[index] : 0
            result.words[index] = mine | theirs
        }
        return result
    }

    /// Number of pages set.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// The set pages as sorted, maximal runs of page indices.
    public var runs: [Range<Int>] {
        var result: [Range<Int>] = []
        var runStart: Int? = nil
        for (index, word) in words.enumerated() {
            if word == 0 {
                if let start = runStart { result.append(start..<index * 64); runStart = nil }
                continue
            }
            if word == ~0 {
                if runStart == nil { runStart = index * 64 }
                continue
            }
            var remaining = word
            var bit = 0
            while bit < 64 {
                if runStart == nil {
                    guard remaining != 0 else { break }
                    let skip = remaining.trailingZeroBitCount
                    bit += skip
                    remaining >>= UInt64(skip)
                    runStart = index * 64 + bit
                }
                let ones = (~remaining).trailingZeroBitCount
                bit += ones
                remaining = ones >= 64 ? 0 : remaining >> UInt64(ones)
                if bit < 64, let start = runStart {
                    result.append(start..<index * 64 + bit)
                    runStart = nil
                }
            }
        }
        // The last set bit is below pageCount, so the run ends there.
        if let start = runStart { result.append(start..<pageCount) }
        return result
    }
}
