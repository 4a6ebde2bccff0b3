import MemSnap
import MemSnapTestSupport
import Testing

@Suite("ByteRangeSet: a union of byte ranges, sorted and coalesced")
struct ByteRangeSetTests {
    /// The definition: the bytes covered, as maximal runs (touching ranges join).
    static func union(_ ranges: [Range<Int>]) -> [Range<Int>] {
        var covered = Set<Int>()
        for range in ranges { covered.formUnion(range) }
        var result: [Range<Int>] = []
        for byte in covered.sorted() {
            if let last = result.last, last.upperBound == byte {
                result[result.count - 1] = last.lowerBound..<byte + 1
            } else {
                result.append(byte..<byte + 1)
            }
        }
        return result
    }

    @Test("formUnion of batches made of ascending runs (many workers' diffs), overlapping and touching, equals the union of their bytes")
    func formUnionEqualsTheUnionOfBytes() {
        var random = TestSeed.generator()
        for trial in 0..<200 {
            var set = ByteRangeSet()
            var everything: [Range<Int>] = []
            for _ in 0..<1 + Int(random.next() % 3) {
                var batch: [Range<Int>] = []
                for _ in 0..<Int(random.next() % 6) {  // ascending runs, like one worker's diffs each
                    var offset = Int(random.next() % 50)
                    for _ in 0..<Int(random.next() % 12) {
                        let length = Int(random.next() % 6)  // empty ranges included
                        batch.append(offset..<offset + length)
                        offset += length + Int(random.next() % 4)
                    }
                }
                set.formUnion(batch)
                everything += batch
                #expect(set.ranges == Self.union(everything), "trial \(trial)")
            }
            #expect(ByteRangeSet.coalescing(everything) == Self.union(everything), "trial \(trial)")
        }
    }
}
