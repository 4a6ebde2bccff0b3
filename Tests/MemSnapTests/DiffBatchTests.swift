import CMemSnap
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

    @Test("a diff with more runs than one kernel call's table holds (a changed byte every 32 bytes of 48 pages: 6 144 runs) equals the definition, every block size, bytewise and xor")
    func aDiffOfManyRunsRefillsTheTableExactly() throws {
        let pages = 48
        var random = TestSeed.generator()
        let original = (0..<pages * pageSize).map { _ in UInt8(truncatingIfNeeded: random.next()) }
        var updated = original
        for index in stride(from: 5, to: updated.count, by: 32) { updated[index] ^= 0x5a }
        let dirty = DirtyPages(pageCount: pages, runs: [0..<pages])
        let snapshot = try Snapshot(copying: original)
        for blockSize in [16, 128, 4096] {
            for fill in [MergeOperation.bytewise, .xor] {
                let options = DiffOptions(blockSize: blockSize, mergeGap: 20, fillOperation: fill)
                let expected = Self.referenceDiffs(original: original, updated: updated, dirty: dirty, options: options)
                let batch = try updated.withUnsafeBytes { try snapshot.diffBatch($0, dirtyPages: dirty, options: options) }
                #expect(expected.count == pages * pageSize / 32)
                let diffs = Array(batch)
                // The first difference, not thousands of diffs, when they disagree.
                let firstDifference = diffs.indices.first { $0 >= expected.count || diffs[$0] != expected[$0] }
                #expect(diffs.count == expected.count && firstDifference == nil,
                        "block \(blockSize), \(fill): \(diffs.count) diffs, first difference at \(String(describing: firstDifference))")
            }
        }
    }

    /// The byte-by-byte runs of `start..<end`, joined across at most `gap` equal bytes.
    static func referenceRuns(_ original: [UInt8], _ updated: [UInt8], _ start: Int, _ end: Int, gap: Int) -> [Range<Int>] {
        var runs: [Range<Int>] = []
        var open: Range<Int>?
        for index in start..<end where original[index] != updated[index] {
            if let current = open, index - current.upperBound <= gap {
                open = current.lowerBound..<index + 1
            } else {
                if let current = open { runs.append(current) }
                open = index..<index + 1
            }
        }
        if let open { runs.append(open) }
        return runs
    }

    /// A value the kernels never write, one slot past the tables the tests give them.
    static let sentinel = memsnap_changed_run(start: 0xDEAD, end: 0xBEEF)

    /// Runs `kernel` (0 words, 1 AVX2, 2 AVX-512) over `start..<end` with a table of `capacity`,
    /// emptying it after every call and checking that the slot past it is never written; nil if
    /// the CPU lacks the kernel.
    static func kernelRuns(
        _ kernel: Int32, _ original: UnsafeRawBufferPointer, _ updated: UnsafeRawBufferPointer,
        _ start: Int, _ end: Int, blockSize: Int, gap: Int, capacity: Int
    ) -> [Range<Int>]? {
        var scan = memsnap_changed_run_scan(position: start, end: end, block_size: blockSize,
                                            merge_gap: gap, open_start: 0, open_end: 0, has_open_run: 0)
        var table = [memsnap_changed_run](repeating: memsnap_changed_run(), count: capacity + 1)
        var runs: [Range<Int>] = []
        for _ in 0..<100_000 {
            table[capacity] = sentinel
            let found = table.withUnsafeMutableBufferPointer {
                memsnap_changed_runs_using(kernel, original.baseAddress, updated.baseAddress, &scan, $0.baseAddress, capacity)
            }
            if found < 0 { return nil }  // SIZE_MAX: no such kernel here
            #expect(table[capacity].start == sentinel.start && table[capacity].end == sentinel.end,
                    "kernel \(kernel) wrote past its table of \(capacity)")
            runs += table[0..<found].map { $0.start..<$0.end }
            if scan.position == scan.end && scan.has_open_run == 0 { return runs }
        }
        Issue.record("the kernel made no progress (at \(scan.position) of \(start)..<\(end))")
        return runs
    }

    /// `kernelRuns` for memsnap_changed_runs_in_ranges_using over `ranges`, with no payload:
    /// the table emptied after every call and the slot past it checked; nil if the CPU lacks
    /// the kernel.
    static func kernelRunsOverRanges(
        _ kernel: Int32, _ original: UnsafeRawBufferPointer, _ updated: UnsafeRawBufferPointer,
        _ ranges: [memsnap_changed_run], blockSize: Int, gap: Int, capacity: Int
    ) -> [Range<Int>]? {
        var scan = memsnap_changed_run_scan(position: 0, end: 0, block_size: blockSize, merge_gap: gap,
                                            open_start: 0, open_end: 0, has_open_run: 0)
        var nextRange = 0
        var table = [memsnap_changed_run](repeating: memsnap_changed_run(), count: capacity + 1)
        var runs: [Range<Int>] = []
        for _ in 0..<100_000 {
            table[capacity] = sentinel
            let found = table.withUnsafeMutableBufferPointer { table in
                ranges.withUnsafeBufferPointer { ranges in
                    memsnap_changed_runs_in_ranges_using(kernel, original.baseAddress, updated.baseAddress, ranges.baseAddress,
                                                         ranges.count, &nextRange, &scan, table.baseAddress, capacity, nil)
                }
            }
            if found < 0 { return nil }  // SIZE_MAX: no such kernel here
            #expect(table[capacity].start == sentinel.start && table[capacity].end == sentinel.end,
                    "kernel \(kernel) wrote past its table of \(capacity)")
            runs += table[0..<found].map { $0.start..<$0.end }
            if nextRange == ranges.count && scan.position >= scan.end && scan.has_open_run == 0 { return runs }
        }
        Issue.record("the kernel made no progress (range \(nextRange) of \(ranges.count), at \(scan.position))")
        return runs
    }

    @Test("every kernel (64-bit words, AVX2, AVX-512) finds the byte-by-byte runs: across 64-byte lanes, blocks and pages, up to the last byte, resuming from a full table")
    func everyKernelFindsTheDefinedRuns() {
        var random = TestSeed.generator()
        for trial in 0..<300 {
            // Exactly sized buffers: a read past `count` is a heap overflow AddressSanitizer reports.
            let count = 1 + Int(random.next() % UInt64(3 * pageSize))
            let original = (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            var updated = original
            let blockSize = 16 << Int(random.next() % 9)
            // Changes placed where the kernel's steps meet: the last bytes of a 64-byte lane, a
            // block or a page and the first of the next, the region's last byte, and random ones.
            var places: [Int] = [count - 1]
            for boundary in stride(from: 64, to: count, by: 64) where random.next() % 4 == 0 {
                places.append(boundary - 1 - Int(random.next() % 3))
                places.append(boundary + Int(random.next() % 3))
            }
            for boundary in stride(from: blockSize, to: count, by: blockSize) where random.next() % 3 == 0 { places.append(boundary - 1) }
            for _ in 0..<Int(random.next() % 20) {
                let start = Int(random.next() % UInt64(count))
                for index in start..<min(count, start + 1 + Int(random.next() % 150)) where random.next() % 3 != 0 { places.append(index) }
            }
            for index in places where index >= 0 && index < count { updated[index] = ~original[index] }
            let start = random.next() % 2 == 0 ? 0 : Int(random.next() % UInt64(count))
            let end = random.next() % 2 == 0 ? count : start + Int(random.next() % UInt64(count - start + 1))
            let gap = [0, 0, 1, 7, 20, 63, 64, 200][Int(random.next() % 8)]
            let minimum = memsnap_changed_runs_minimum_capacity(blockSize)
            let capacity = random.next() % 2 == 0 ? minimum : minimum + Int(random.next() % 4096)
            let expected = Self.referenceRuns(original, updated, start, end, gap: gap)
            original.withUnsafeBytes { old in
                updated.withUnsafeBytes { new in
                    for kernel: Int32 in 0...2 {
                        guard let runs = Self.kernelRuns(kernel, old, new, start, end, blockSize: blockSize, gap: gap,
                                                         capacity: capacity) else { continue }  // not on this CPU
                        #expect(runs == expected, "trial \(trial), kernel \(kernel), \(count) bytes, \(start)..<\(end), block \(blockSize), gap \(gap), table \(capacity)")
                    }
                }
            }
        }
    }

    @Test("the densest changes (every other byte, merge gap 0) with the tightest tables (a block then starts with exactly its runs' room left): every kernel, alone and over ranges, finds the byte-by-byte runs and never writes past the table")
    func theDensestChangesFitTheLeastTable() {
        let count = 3 * pageSize + 100
        let original = [UInt8](repeating: 0, count: count)
        let updated = (0..<count).map { UInt8($0 % 2) }
        let ranges = [memsnap_changed_run(start: 0, end: pageSize + 50), memsnap_changed_run(start: pageSize + 50, end: count)]
        let expected = ranges.flatMap { Self.referenceRuns(original, updated, $0.start, $0.end, gap: 0) }
        original.withUnsafeBytes { old in
            updated.withUnsafeBytes { new in
                for kernel: Int32 in 0...2 {
                    for blockSize in [16, 128, 4096] {
                        // Each block makes blockSize / 2 runs (one fewer when no run is open): every
                        // table size up to a block's runs more than the least (a few for 4 KiB
                        // blocks) leaves some later block exactly the least room the kernel accepts.
                        let minimum = memsnap_changed_runs_minimum_capacity(blockSize)
                        let capacities = blockSize <= 128 ? Array(minimum...(minimum + blockSize))
                            : [minimum, minimum + 1, blockSize - 2, blockSize - 1, blockSize, blockSize + 1, blockSize + 2]
                        for capacity in capacities {
                            // Both helpers keep a sentinel one slot past the table and check it.
                            let eachAlone = ranges.map {
                                Self.kernelRuns(kernel, old, new, $0.start, $0.end, blockSize: blockSize, gap: 0, capacity: capacity)
                            }
                            let overRanges = Self.kernelRunsOverRanges(kernel, old, new, ranges, blockSize: blockSize, gap: 0,
                                                                       capacity: capacity)
                            guard eachAlone.allSatisfy({ $0 != nil }), let overRanges else { continue }  // not on this CPU
                            let alone = eachAlone.flatMap { $0 ?? [] }
                            #expect(expected.count == count / 2)
                            #expect(alone == expected, "kernel \(kernel), block \(blockSize), table \(capacity), alone: \(alone.count) runs")
                            #expect(overRanges == expected,
                                    "kernel \(kernel), block \(blockSize), table \(capacity), over ranges: \(overRanges.count) runs")
                        }
                    }
                }
            }
        }
    }

    @Test("every kernel over a list of ranges finds each range's byte-by-byte runs (never joined across ranges): empty, ragged and adjacent ranges, batches of many, resuming from a full table; with a payload it copies a prefix of them, bytewise or xor, as far as the room allows")
    func everyKernelOverRangesFindsEachRangesRuns() {
        var random = TestSeed.generator()
        for trial in 0..<150 {
            // Exactly sized buffers: a read past `count` is a heap overflow AddressSanitizer reports.
            let count = 1 + Int(random.next() % UInt64(24 * pageSize))
            let original = (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            var updated = original
            for _ in 0..<Int(random.next() % 120) {
                let start = Int(random.next() % UInt64(count))
                let length = 1 + Int(random.next() % (random.next() % 5 == 0 ? 3000 : 24))
                for index in start..<min(count, start + length) where random.next() % 5 != 0 { updated[index] = ~original[index] }
            }
            // Sorted, disjoint ranges: pages, ragged lengths, empty ones and ranges touching the next.
            var ranges: [memsnap_changed_run] = []
            var cursor = 0
            while ranges.count < 40 {
                if random.next() % 3 != 0 { cursor += Int(random.next() % UInt64(3 * pageSize)) }
                if random.next() % 4 == 0 { cursor -= cursor % pageSize }
                let length = random.next() % 4 == 0 ? 0
                    : random.next() % 2 == 0 ? pageSize * (1 + Int(random.next() % 3)) : Int(random.next() % 9000)
                guard cursor + length <= count else { break }
                ranges.append(memsnap_changed_run(start: cursor, end: cursor + length))
                cursor += length
            }
            let blockSize = 16 << Int(random.next() % 9)
            let gap = [0, 1, 7, 20, 64, 200, 5000][Int(random.next() % 7)]
            let minimum = memsnap_changed_runs_minimum_capacity(blockSize)
            let capacity = random.next() % 2 == 0 ? minimum + Int(random.next() % 8) : minimum + Int(random.next() % 4096)
            let expected = ranges.flatMap { Self.referenceRuns(original, updated, $0.start, $0.end, gap: gap) }
            original.withUnsafeBytes { old in
                updated.withUnsafeBytes { new in
                    for kernel: Int32 in 0...2 {
                        var scan = memsnap_changed_run_scan(position: 0, end: 0, block_size: blockSize, merge_gap: gap,
                                                            open_start: 0, open_end: 0, has_open_run: 0)
                        var nextRange = 0
                        var table = [memsnap_changed_run](repeating: memsnap_changed_run(), count: capacity)
                        var runs: [Range<Int>] = []
                        var finished = false
                        var available = true
                        let xor = random.next() % 2 == 0
                        for _ in 0..<100_000 {
                            // No payload, no room, room for a few runs, or room for all: exactly
                            // sized, so a write past the room is a heap overflow ASan reports.
                            let room = [nil, 0, Int(random.next() % 200), count + 64][Int(random.next() % 4)]
                            var bytes = [UInt8](repeating: 0xA5, count: room ?? 0)
                            var payload = memsnap_run_payload(bytes: nil, capacity: room ?? 0, limit: count,
                                                              xor_original: xor ? 1 : 0, copied: 0, used: 0)
                            let found = table.withUnsafeMutableBufferPointer { table in
                                ranges.withUnsafeBufferPointer { ranges in
                                    bytes.withUnsafeMutableBufferPointer { bytes in
                                        payload.bytes = bytes.baseAddress
                                        return withUnsafeMutablePointer(to: &payload) { payloadPointer in
                                            memsnap_changed_runs_in_ranges_using(
                                                kernel, old.baseAddress, new.baseAddress, ranges.baseAddress, ranges.count,
                                                &nextRange, &scan, table.baseAddress, capacity, room == nil ? nil : payloadPointer)
                                        }
                                    }
                                }
                            }
                            if found < 0 { available = false; break }  // SIZE_MAX: not on this CPU
                            if room != nil {
                                // A prefix is copied, back to back; the first run left out did not fit.
                                let copied = table[0..<payload.copied]
                                let expectedBytes = copied.flatMap { run in
                                    (run.start..<run.end).map { xor ? original[$0] ^ updated[$0] : updated[$0] }
                                }
                                #expect(payload.copied <= found && payload.used == expectedBytes.count)
                                let mismatch = (0..<min(payload.used, expectedBytes.count)).first { bytes[$0] != expectedBytes[$0] }
                                #expect(mismatch == nil, "trial \(trial), kernel \(kernel): payload byte \(mismatch ?? 0) differs")
                                if payload.copied < found {
                                    let next = table[payload.copied]
                                    #expect(payload.capacity - payload.used < next.end - next.start + Int(MEMSNAP_COPY_RUNS_SLACK))
                                }
                            }
                            runs += table[0..<found].map { $0.start..<$0.end }
                            if nextRange == ranges.count && scan.position >= scan.end && scan.has_open_run == 0 {
                                finished = true
                                break
                            }
                        }
                        guard available else { continue }
                        #expect(finished, "trial \(trial), kernel \(kernel): no progress")
                        #expect(runs == expected, "trial \(trial), kernel \(kernel), \(ranges.count) ranges, block \(blockSize), gap \(gap), table \(capacity)")
                    }
                }
            }
        }
    }

    @Test("a table smaller than the block size needs is refused without advancing")
    func aTooSmallTableIsRefused() {
        let original = [UInt8](repeating: 0, count: 256)
        let updated = [UInt8](repeating: 1, count: 256)
        original.withUnsafeBytes { old in
            updated.withUnsafeBytes { new in
                var scan = memsnap_changed_run_scan(position: 0, end: 256, block_size: 128, merge_gap: 0,
                                                    open_start: 0, open_end: 0, has_open_run: 0)
                var table = [memsnap_changed_run](repeating: memsnap_changed_run(), count: 65)
                let found = memsnap_changed_runs(old.baseAddress, new.baseAddress, &scan, &table, 65)
                #expect(found == 0 && scan.position == 0 && scan.has_open_run == 0)
            }
        }
    }

    @Test("changes at lane, block and page edges and at the memory's last byte, every block size, gap and fill: diff equals the definition")
    func edgesOfTheScanAreDiffedExactly() throws {
        let size = 3 * pageSize - 5  // the last page is ragged: the tail shorter than a block
        var original = [UInt8](repeating: 0, count: size)
        for index in original.indices { original[index] = UInt8(truncatingIfNeeded: index &* 7) }
        var updated = original
        for index in [0, 63, 64, 127, 128, 129, 200, 255, 256, pageSize - 1, pageSize, pageSize + 1, 2 * pageSize - 64,
                      2 * pageSize - 1, 2 * pageSize, size - 70, size - 2, size - 1] {
            updated[index] &+= 1
        }
        for index in 1000..<1200 { updated[index] ^= 0x5a }  // a run over several lanes and blocks
        let dirty = DirtyPages(pageCount: 3, runs: [0..<1, 1..<3])
        let snapshot = try Snapshot(copying: original)
        for blockSize in [16, 32, 64, 128, 256, 512, 1024, 2048, 4096] {
            for gap in [0, 1, 20, 64, 5000] {
                for fill in [MergeOperation.bytewise, .xor] {
                    let options = DiffOptions(blockSize: blockSize, mergeGap: gap, fillOperation: fill)
                    let expected = Self.referenceDiffs(original: original, updated: updated, dirty: dirty, options: options)
                    let batch = try updated.withUnsafeBytes { try snapshot.diffBatch($0, dirtyPages: dirty, options: options) }
                    #expect(Array(batch) == expected, "\(options)")
                }
            }
        }
    }

    @Test("apply(batches:) writes the same bytes and ranges as apply of the same diffs, batch after batch")
    func applyingBatchesEqualsApplyingTheirDiffs() throws {
        var random = TestSeed.generator()
        for trial in 0..<20 {
            let size = 8 * pageSize
            let original = (0..<size).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            var batches: [SnapshotDiffBatch] = []
            let base = try Snapshot(copying: original, maxSize: 2 * size)
            try base.addMergeRegion(MergeRegion(offset: 0, length: 64, dataType: .int64, operation: .sum))
            for _ in 0..<1 + Int(random.next() % 4) {
                var updated = original
                for _ in 0..<Int(random.next() % 30) {
                    let index = Int(random.next() % UInt64(size))
                    updated[index] = UInt8(truncatingIfNeeded: random.next())
                }
                if random.next() % 4 == 0 { updated += [1, 2, 3] }  // an extension diff: the batch grows the snapshot
                let fill: MergeOperation = random.next() % 2 == 0 ? .bytewise : .xor
                batches.append(try updated.withUnsafeBytes {
                    try base.diffBatch($0, dirtyPages: DirtyPages(pageCount: 9, runs: [0..<9]),
                                       options: DiffOptions(mergeGap: Int(random.next() % 30), fillOperation: fill))
                })
            }
            let byBatches = try Snapshot(copying: original, maxSize: 2 * size)
            let byArray = try Snapshot(copying: original, maxSize: 2 * size)
            let batchWritten = try byBatches.apply(batches: batches)
            let arrayWritten = try byArray.apply(batches.flatMap { Array($0) })
            #expect(batchWritten == arrayWritten, "trial \(trial)")
            #expect(byBatches.changedRanges == byArray.changedRanges)
            #expect(try byBatches.read(at: 0, count: byBatches.size) == byArray.read(at: 0, count: byArray.size), "trial \(trial)")
        }
    }

    @Test("apply(batches:) refuses a batch with a diff outside the snapshot, names batch and diff, and applies nothing")
    func applyingBatchesChecksEveryDiffFirst() throws {
        let snapshot = try Snapshot(copying: [UInt8](repeating: 7, count: pageSize), maxSize: 2 * pageSize)
        let good = SnapshotDiffBatch([SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3])])
        let cases: [(SnapshotDiff, MemSnapError.Reason)] = [
            (SnapshotDiff(offset: 2 * pageSize - 1, dataType: .raw, operation: .bytewise, bytes: [1, 2]),
             .exceedsMaximum(what: "bytewise diff end", requested: 2 * pageSize + 1, maximum: 2 * pageSize)),
            (SnapshotDiff(offset: -1, dataType: .raw, operation: .bytewise, bytes: [1]), .invalidRange(offset: -1, length: 1)),
            (SnapshotDiff(offset: Int.max, dataType: .raw, operation: .bytewise, bytes: [1]), .invalidRange(offset: Int.max, length: 1)),
            (SnapshotDiff(offset: pageSize, dataType: .raw, operation: .xor, bytes: [1]), .outOfBounds(offset: pageSize, length: 1, size: pageSize)),
        ]
        for (diff, reason) in cases {
            let bad = SnapshotDiffBatch([SnapshotDiff(offset: 9, dataType: .raw, operation: .ignore, bytes: [0]), diff])
            let batchError = expectMemSnapError { try snapshot.apply(batches: [good, bad]) }
            let arrayError = expectMemSnapError { try snapshot.apply([diff]) }
            #expect(batchError?.reason == reason, "\(diff)")
            #expect(batchError?.reason == arrayError?.reason, "the same reason as the array form")
            #expect(batchError?.operation.hasPrefix("apply batch 1, diff 1 (") == true, "\(String(describing: batchError))")
            #expect(try snapshot.read(at: 0, count: 3) == [7, 7, 7] && snapshot.size == pageSize && snapshot.changedRanges.isEmpty)
        }
        // Ignore diffs are skipped whatever their offset, as in the array form.
        let ignored = SnapshotDiffBatch([SnapshotDiff(offset: Int.max, dataType: .raw, operation: .ignore, bytes: [1])])
        #expect(try snapshot.apply(batches: [ignored, good]) == [0..<3])
        #expect(try snapshot.read(at: 0, count: 4) == [1, 2, 3, 7])
    }

    @Test func anEmptyBatchHoldsNothing() {
        let batch = SnapshotDiffBatch()
        #expect(batch.isEmpty && batch.byteCount == 0 && Array(batch) == [])
    }
}
