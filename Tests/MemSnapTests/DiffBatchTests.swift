import MemSnap
import MemSnapTestSupport
import Testing

@Suite("Diff batches: every diff in one payload, the same diffs as before")
struct DiffBatchTests {
    /// The definition, byte by byte: runs of differing bytes inside each dirty range, joined
    /// across at most `mergeGap` equal bytes, carrying the new bytes (bytewise) or new XOR old.
    static func referenceDiffs(original: [UInt8], updated: [UInt8], dirty: DirtyPages, options: DiffOptions) -> [SnapshotDiff] {
        var diffs: [SnapshotDiff] = []
        func emit(_ run: Range<Int>) {
            let bytes = run.map { options.fillOperation == .xor ? original[$0] ^ updated[$0] : updated[$0] }
            diffs.append(SnapshotDiff(offset: run.lowerBound, dataType: .raw, operation: options.fillOperation, bytes: bytes))
        }
        for range in dirty.byteRanges {
            var open: Range<Int>?
            for index in range where index < original.count && original[index] != updated[index] {
                if let current = open, index - current.upperBound <= options.mergeGap {
                    open = current.lowerBound..<index + 1
                } else {
                    if let current = open { emit(current) }
                    open = index..<index + 1
                }
            }
            if let open { emit(open) }
        }
        return diffs
    }

    @Test("random changes: diff equals the byte-by-byte definition, and diffBatch holds the same diffs with the same encoding")
    func batchesHoldExactlyTheDefinedDiffs() throws {
        var random = TestSeed.generator()
        let pages = 24
        for trial in 0..<40 {
            var original = [UInt8](repeating: 0, count: pages * pageSize)
            for index in original.indices where random.next() % 3 == 0 { original[index] = UInt8(truncatingIfNeeded: random.next()) }
            var updated = original
            var written = Set<Int>()
            for _ in 0..<Int(random.next() % 40) {
                let page = Int(random.next() % UInt64(pages))
                written.insert(page)
                let start = page * pageSize + Int(random.next() % UInt64(pageSize))
                let length = 1 + Int(random.next() % 48)
                for index in start..<min(start + length, updated.count) where random.next() % 4 != 0 {
                    updated[index] = UInt8(truncatingIfNeeded: random.next())
                    written.insert(index / pageSize)
                }
            }
            let options = DiffOptions(blockSize: [16, 32, 64, 128, 256, 4096][Int(random.next() % 6)],
                                      mergeGap: Int(random.next() % 40),
                                      fillOperation: random.next() % 2 == 0 ? .bytewise : .xor)
            let dirty = DirtyPages(pageCount: pages, runs: written.map { $0..<$0 + 1 })
            let snapshot = try Snapshot(copying: original)
            let expected = Self.referenceDiffs(original: original, updated: updated, dirty: dirty, options: options)
            let (diffs, batch) = try updated.withUnsafeBytes { memory in
                (try snapshot.diff(memory, dirtyPages: dirty, options: options),
                 try snapshot.diffBatch(memory, dirtyPages: dirty, options: options))
            }
            #expect(diffs == expected, "trial \(trial), \(options)")
            #expect(Array(batch) == diffs, "trial \(trial)")
            #expect(batch.byteCount == diffs.reduce(0) { $0 + $1.bytes.count })
            #expect(try SnapshotDiff.encode(Array(batch)) == SnapshotDiff.encode(diffs))
            #expect(Array(SnapshotDiffBatch(diffs)) == diffs, "a batch made from diffs holds them unchanged")
        }
    }

    @Test func anEmptyBatchHoldsNothing() {
        let batch = SnapshotDiffBatch()
        #expect(batch.isEmpty && batch.byteCount == 0 && Array(batch) == [])
    }
}
