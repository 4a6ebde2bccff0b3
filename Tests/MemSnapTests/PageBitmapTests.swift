import MemSnap
import MemSnapTestSupport
import Testing

@Suite("PageBitmap and DirtyPages")
struct PageBitmapTests {
    /// The runs of a set of pages, computed the slow, obvious way.
    func naiveRuns(_ pages: Set<Int>, pageCount: Int) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var page = 0
        while page < pageCount {
            if pages.contains(page) {
                let start = page
                while page < pageCount && pages.contains(page) { page += 1 }
                runs.append(start..<page)
            } else {
                page += 1
            }
        }
        return runs
    }

    @Test(arguments: [1, 63, 64, 65, 127, 128, 1000])
    func runsMatchTheObviousComputation(pageCount: Int) {
        var random = TestSeed.generator()
        for density in [0, 1, 10, 50, 90, 100] {
            var bitmap = PageBitmap(pageCount: pageCount)
            var pages = Set<Int>()
            for page in 0..<pageCount where Int(random.next() % 100) < density {
                bitmap.insert(page)
                pages.insert(page)
            }
            #expect(bitmap.runs == naiveRuns(pages, pageCount: pageCount), "density \(density)%")
            #expect(bitmap.count == pages.count)
            #expect(PageBitmap(pageCount: pageCount, runs: bitmap.runs) == bitmap, "runs round-trip")
        }
    }

    @Test func rangeInsertionCrossesWordBoundariesAndClipsAtTheEnd() {
        var bitmap = PageBitmap(pageCount: 200)
        bitmap.insert(60..<130)
        bitmap.insert(190..<300)
        bitmap.insert(-5..<1)
        #expect(bitmap.runs == [0..<1, 60..<130, 190..<200])
        #expect(bitmap.contains(64) && bitmap.contains(129) && !bitmap.contains(130))
        #expect(!bitmap.contains(200) && !bitmap.contains(-1))
    }

    @Test func unionCoversTheLargerBitmap() {
        let small = PageBitmap(pageCount: 10, runs: [1..<3])
        let large = PageBitmap(pageCount: 100, runs: [2..<4, 90..<100])
        let union = small.union(large)
        #expect(union.pageCount == 100)
        #expect(union.runs == [1..<4, 90..<100])
    }

    @Test func dirtyPagesCoalesceAndAnswerQuestions() {
        let pages = DirtyPages(pageCount: 20, runs: [5..<7, 1..<2, 6..<9, 9..<10, 18..<25])
        #expect(pages.runs == [1..<2, 5..<10, 18..<20])
        #expect(pages.count == 8)
        #expect(pages.pages == [1, 5, 6, 7, 8, 9, 18, 19])
        #expect(pages.contains(9) && !pages.contains(10) && !pages.contains(0))
        #expect(pages.byteRanges == [pageSize..<2 * pageSize, 5 * pageSize..<10 * pageSize, 18 * pageSize..<20 * pageSize])
        #expect(pages.fraction == 0.4)
        #expect(pages.bitmap.runs == pages.runs)
        #expect(pages.union(DirtyPages(pageCount: 30, runs: [2..<5])).runs == [1..<10, 18..<20])
    }
}
