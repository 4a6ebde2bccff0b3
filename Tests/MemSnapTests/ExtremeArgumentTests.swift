import MemSnap
import MemSnapTestSupport
import Testing

/// Arguments at the edges of `Int` (and of every other parameter a caller controls) are typed
/// errors or documented results, never traps. Each of these once trapped, or would have.
@Suite("Extreme arguments: typed errors, never traps")
struct ExtremeArgumentTests {
    @Test func mergeRegionsAtTheEdgeOfIntAreRefusedWithTheirOffset() throws {
        let snapshot = try Snapshot(size: 64, maxSize: pageSize)
        let atIntMax = try MergeRegion(offset: Int.max, length: 0, dataType: .raw, operation: .bytewise)
        expectReason(.exceedsMaximum(what: "start", requested: Int.max, maximum: pageSize)) {
            try snapshot.addMergeRegion(atIntMax)
        }
        expectReason(.exceedsMaximum(what: "start", requested: pageSize, maximum: pageSize)) {
            try snapshot.addMergeRegion(MergeRegion(offset: pageSize, length: 0, dataType: .int64, operation: .sum))
        }
        expectReason(.exceedsMaximum(what: "end", requested: Int.max, maximum: pageSize)) {
            try snapshot.addMergeRegion(MergeRegion(offset: Int.max - 8, length: 8, dataType: .int64, operation: .sum))
        }
        expectReason(.invalidRange(offset: Int.max, length: 1)) {
            _ = try MergeRegion(offset: Int.max, length: 1, dataType: .raw, operation: .bytewise)
        }
        expectReason(.invalidRange(offset: Int.min, length: 0)) {
            _ = try MergeRegion(offset: Int.min, length: 0, dataType: .raw, operation: .bytewise)
        }
        expectReason(.invalidRange(offset: 0, length: Int.min)) {
            _ = try MergeRegion(offset: 0, length: Int.min, dataType: .raw, operation: .bytewise)
        }
        #expect(atIntMax.description == "raw bytewise [\(Int.max), end)")
        #expect(snapshot.mergeRegions.isEmpty, "nothing was added")
        try snapshot.addMergeRegion(MergeRegion(offset: pageSize - 8, length: 0, dataType: .int64, operation: .sum))
        #expect(snapshot.mergeRegions.count == 1, "the last value of the snapshot is fine")
    }

    @Test func aDiffsRangeEndsAtIntMaxInsteadOfOverflowing() {
        let diff = SnapshotDiff(offset: Int.max - 1, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3])
        #expect(diff.range == Int.max - 1..<Int.max)
        #expect(SnapshotDiff(offset: Int.max, dataType: .raw, operation: .bytewise, bytes: [1]).range == Int.max..<Int.max)
        #expect(SnapshotDiff(offset: -3, dataType: .raw, operation: .bytewise, bytes: [1]).range == -3..<(-2))
        #expect(SnapshotDiff(offset: Int.min, dataType: .raw, operation: .xor, bytes: [1]).range == Int.min..<Int.min + 1)
    }

    @Test func handMadeDiffsWithExtremeOffsetsAreRefusedAndApplyNothing() throws {
        let snapshot = try Snapshot(size: 100, maxSize: 2 * pageSize)
        try snapshot.write([7], at: 0)
        snapshot.clearChangedRanges()
        let value = [UInt8](repeating: 1, count: 8)
        let good = SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [9])
        let cases: [(SnapshotDiff, MemSnapError.Reason)] = [
            (SnapshotDiff(offset: Int.max, dataType: .raw, operation: .bytewise, bytes: value), .invalidRange(offset: Int.max, length: 8)),
            (SnapshotDiff(offset: Int.max - 8, dataType: .raw, operation: .bytewise, bytes: value),
             .exceedsMaximum(what: "bytewise diff end", requested: Int.max, maximum: 2 * pageSize)),
            (SnapshotDiff(offset: -1, dataType: .raw, operation: .bytewise, bytes: value), .invalidRange(offset: -1, length: 8)),
            (SnapshotDiff(offset: Int.min, dataType: .raw, operation: .bytewise, bytes: []), .invalidRange(offset: Int.min, length: 0)),
            (SnapshotDiff(offset: Int.max, dataType: .raw, operation: .bytewise, bytes: []),
             .exceedsMaximum(what: "bytewise diff end", requested: Int.max, maximum: 2 * pageSize)),
            (SnapshotDiff(offset: 2 * pageSize - 7, dataType: .raw, operation: .bytewise, bytes: value),
             .exceedsMaximum(what: "bytewise diff end", requested: 2 * pageSize + 1, maximum: 2 * pageSize)),
            (SnapshotDiff(offset: Int.max, dataType: .raw, operation: .xor, bytes: value), .invalidRange(offset: Int.max, length: 8)),
            (SnapshotDiff(offset: Int.max - 8, dataType: .raw, operation: .xor, bytes: value),
             .outOfBounds(offset: Int.max - 8, length: 8, size: 100)),
            (SnapshotDiff(offset: -8, dataType: .int64, operation: .sum, bytes: value), .invalidRange(offset: -8, length: 8)),
            (SnapshotDiff(offset: Int.min, dataType: .double, operation: .max, bytes: value), .invalidRange(offset: Int.min, length: 8)),
            (SnapshotDiff(offset: Int.max - 4, dataType: .int32, operation: .product, bytes: value), .invalidRange(offset: Int.max - 4, length: 8)),
            (SnapshotDiff(offset: 96, dataType: .int64, operation: .min, bytes: value), .outOfBounds(offset: 96, length: 8, size: 100)),
            (SnapshotDiff(offset: 0, dataType: .bool, operation: .subtract, bytes: value),
             .invalidArgument("subtract diff of 8 bytes of bool at 0 is not valid")),
            (SnapshotDiff(offset: 0, dataType: .int64, operation: .sum, bytes: [1, 2, 3]),
             .invalidArgument("sum diff of 3 bytes of int64 at 0 is not valid")),
        ]
        for (diff, reason) in cases {
            expectReason(reason) { try snapshot.apply([good, diff]) }
            snapshot.queueDiffs([good])
            snapshot.queueDiffs([diff])
            expectReason(reason) { try snapshot.applyQueuedDiffs() }
            #expect(snapshot.discardQueuedDiffs() == [[good], [diff]])
        }
        #expect(snapshot.size == 100)
        #expect(try snapshot.read(at: 0, count: 1) == [7], "nothing was applied")
        #expect(snapshot.changedRanges.isEmpty)
        // Ignore diffs are skipped wherever they point.
        #expect(try snapshot.apply([SnapshotDiff(offset: Int.min, dataType: .raw, operation: .ignore, bytes: value),
                                    SnapshotDiff(offset: Int.max, dataType: .raw, operation: .ignore, bytes: value)]) == [])
    }

    @Test func encodingRefusesOffsetsTheFormatCannotHold() throws {
        for (offset, length) in [(-1, 1), (Int.min, 0), (Int.max, 1)] {
            let diff = SnapshotDiff(offset: offset, dataType: .raw, operation: .bytewise, bytes: [UInt8](repeating: 0, count: length))
            let error = expectMemSnapError { _ = try SnapshotDiff.encode([diff]) }
            #expect(error?.reason == .invalidRange(offset: offset, length: length))
            #expect(error?.operation == "encode 1 diffs: diff 0 (\(diff))")
        }
        let last = SnapshotDiff(offset: Int.max, dataType: .raw, operation: .bytewise, bytes: [])
        #expect(try SnapshotDiff.decode(SnapshotDiff.encode([last])) == [last], "offset 2^63 - 1 with no bytes is valid")
    }

    @Test func diffingARegionWithAnExtremeSizeIsAnError() throws {
        let snapshot = try Snapshot(size: pageSize)
        let region = try VirtualRegion(maxSize: 4 * pageSize)
        try snapshot.mapCopyOnWrite(into: region)
        for size in [Int.min, -1, pageSize + 1, Int.max] {
            expectReason(.outOfBounds(offset: 0, length: size, size: pageSize)) {
                _ = try snapshot.diff(region, size: size, dirtyPages: DirtyPages(pageCount: 1, runs: [0..<1]))
            }
        }
        region.withUnsafeMutableBytes { $0[5] = 1 }
        // Dirty pages far past the memory are clipped to it.
        let everything = DirtyPages(pageCount: Int.max, runs: [0..<Int.max])
        #expect(try snapshot.diff(region, dirtyPages: everything).map(\.range) == [5..<6])
        #expect(try snapshot.diff(region, size: 0, dirtyPages: everything).isEmpty)
    }

    @Test func diffOptionsAtTheEdgesOfIntAreErrorsOrWork() throws {
        let snapshot = try Snapshot(size: pageSize)
        let memory = [UInt8](repeating: 1, count: pageSize)
        let dirty = DirtyPages(pageCount: 1, runs: [0..<1])
        for blockSize in [Int.min, -16, 0, 8, 24, 2 * pageSize, Int.max] {
            expectReason(.invalidArgument("block size \(blockSize) is not a power of two from 16 to \(pageSize)")) {
                _ = try memory.withUnsafeBytes { try snapshot.diff($0, dirtyPages: dirty, options: DiffOptions(blockSize: blockSize)) }
            }
        }
        expectReason(.invalidArgument("merge gap \(Int.min) is negative")) {
            _ = try memory.withUnsafeBytes { try snapshot.diff($0, dirtyPages: dirty, options: DiffOptions(mergeGap: Int.min)) }
        }
        let joined = try memory.withUnsafeBytes { try snapshot.diff($0, dirtyPages: dirty, options: DiffOptions(mergeGap: Int.max)) }
        #expect(joined.map(\.range) == [0..<pageSize])
        expectReason(.invalidArgument("block size 0 is not a power of two from 16 to \(pageSize)")) {
            _ = try SnapshotWorkers(snapshot: snapshot, count: 1, options: DiffOptions(blockSize: 0))
        }
    }

    @Test func regionArgumentsAtTheEdgesOfIntAreErrors() throws {
        let region = try VirtualRegion(maxSize: 8 * pageSize, committing: 2 * pageSize)
        let outside = "the range must be page-aligned and inside the committed \(ByteCount(2 * pageSize))"
        for range in [Int.min..<Int.max, Int.min..<0, -pageSize..<0, 0..<Int.max, Int.max - 1..<Int.max] {
            expectReason(.invalidArgument(outside)) { try region.advise(.random, range: range) }
        }
        for size in [Int.min, -1] {
            expectReason(.invalidRange(offset: 0, length: size)) { try region.grow(to: size) }
            expectReason(.invalidRange(offset: 0, length: size)) { try region.decommit(from: size) }
        }
        expectReason(.invalidRange(offset: 0, length: Int.max)) { try region.grow(to: Int.max) }
        expectReason(.invalidRange(offset: 0, length: Int.max)) { try region.decommit(from: Int.max) }
        expectReason(.invalidRange(offset: 0, length: Int.max)) {
            _ = try VirtualRegion(maxSize: pageSize, committing: Int.max)
        }
        let file = try MemoryFile(name: "extreme", size: pageSize)
        expectReason(.invalidRange(offset: 0, length: Int.max)) { try file.map(into: region, length: Int.max, sharing: .shared) }
        expectReason(.unaligned(what: "file offset", value: Int.max, alignment: pageSize)) {
            try file.map(into: region, fileOffset: Int.max, length: pageSize, sharing: .shared)
        }
        expectReason(.unaligned(what: "file offset", value: Int.min, alignment: pageSize)) {
            try file.map(into: region, fileOffset: Int.min, length: pageSize, sharing: .shared)
        }
        expectReason(.unaligned(what: "region offset", value: Int.min, alignment: pageSize)) {
            try file.map(into: region, at: Int.min, length: pageSize, sharing: .shared)
        }
        let lastPage = Int.max - (pageSize - 1)
        expectReason(.invalidRange(offset: lastPage, length: pageSize)) {
            try file.map(into: region, at: lastPage, length: pageSize, sharing: .shared)
        }
        expectReason(.invalidRange(offset: 0, length: Int.min)) { try file.resize(to: Int.min) }
        #expect(region.committedSize == 2 * pageSize, "nothing changed")
    }

    @Test func snapshotArgumentsAtTheEdgesOfIntAreErrors() throws {
        expectReason(.invalidRange(offset: 0, length: Int.max)) { _ = try Snapshot(size: Int.max) }
        expectReason(.invalidRange(offset: 0, length: Int.min)) { _ = try Snapshot(size: Int.min) }
        expectReason(.invalidRange(offset: 0, length: Int.max)) { _ = try Snapshot(size: 0, maxSize: Int.max) }
        let snapshot = try Snapshot(size: 100, maxSize: pageSize)
        expectReason(.invalidRange(offset: 0, length: Int.min)) { _ = try snapshot.read(at: 0, count: Int.min) }
        expectReason(.invalidRange(offset: Int.min, length: 1)) { _ = try snapshot.read(at: Int.min, count: 1) }
        expectReason(.invalidRange(offset: 1, length: Int.max)) { try snapshot.update(at: 1, count: Int.max) { _ in } }
        expectReason(.exceedsMaximum(what: "size", requested: Int.max, maximum: pageSize)) { try snapshot.grow(to: Int.max) }
        try snapshot.grow(to: Int.min)
        #expect(snapshot.size == 100, "growing to less than the size changes nothing")
    }

    @Test func dirtyPagesWithHugeOrNegativePageNumbersAreClipped() {
        let maxPages = Int.max >> Page.shift
        #expect(DirtyPages.maxPageCount == maxPages)
        let huge = DirtyPages(pageCount: Int.max, runs: [(1 << 50)..<(1 << 51), (Int.max - 1)..<Int.max, -5..<3])
        #expect(huge.pageCount == maxPages, "no region has more pages than Int.max bytes hold")
        #expect(huge.runs == [0..<3, (1 << 50)..<maxPages])
        #expect(huge.byteRanges == [0..<3 * pageSize, (1 << 50) * pageSize..<maxPages * pageSize])
        #expect(huge.count == 3 + maxPages - (1 << 50))
        #expect(huge.contains(1 << 50) && !huge.contains(Int.max) && !huge.contains(Int.min))
        let negative = DirtyPages(pageCount: -5, runs: [-3..<2, 0..<Int.max])
        #expect(negative.pageCount == 0)
        #expect(negative.runs.isEmpty)
        #expect(negative.fraction == 0)
        #expect(DirtyPages(pageCount: 10, runs: [Int.min..<(-1), -3..<2, 8..<Int.max]).runs == [0..<2, 8..<10])
        #expect(DirtyPages(pageCount: 10, runs: [0..<1]).union(huge).pageCount == maxPages)
    }

    @Test func pageBitmapsWithNegativeCountsOrRunsAreEmptyOrClipped() {
        var bitmap = PageBitmap(pageCount: Int.min)
        #expect(bitmap.pageCount == 0 && bitmap.words.isEmpty)
        bitmap.insert(Int.min..<Int.max)
        bitmap.insert(Int.max)
        #expect(bitmap.runs.isEmpty && !bitmap.contains(Int.max) && !bitmap.contains(Int.min))
        var small = PageBitmap(pageCount: 130, runs: [Int.min..<1, 129..<Int.max])
        #expect(small.runs == [0..<1, 129..<130])
        small.insert(Int.min)
        #expect(small.count == 2)
        #expect(PageBitmap(pageCount: 128, runs: [0..<128]).runs == [0..<128], "a run to the last word's end")
    }

    @Test func byteCountsPrintEveryIntIncludingTheExtremes() {
        #expect(ByteCount(Int.min).description == "-8388608.0 TiB")
        #expect(ByteCount(Int.max).description == "8388608.0 TiB")
        #expect(ByteCount(-1).description == "-1 B")
        #expect(ByteCount(-1536).description == "-1.5 KiB")
        #expect(ByteCount(parsing: "9223372036854775807") == ByteCount(Int.max))
        #expect(ByteCount(parsing: "9223372036854775808") == nil)
        #expect(ByteCount(parsing: "8388608TiB") == nil, "2^63 overflows")
        #expect(ByteCount(parsing: "8388607.9999999999TiB") == nil, "rounds to 2^63")
        #expect(ByteCount(parsing: "1e400") == nil)
        #expect(ByteCount(parsing: "-1") == nil)
        #expect(ByteCount(parsing: "") == nil)
    }

    @Test func syntheticHeapsWithExtremeParametersFillWithoutTrapping() {
        func filled(_ heap: SyntheticHeap) -> [UInt8] {
            var bytes = [UInt8](repeating: 1, count: 16 * pageSize + 3)
            bytes.withUnsafeMutableBytes { heap.fill($0) }
            return bytes
        }
        // Object pages only, with pointers near the top of the address space: they wrap.
        var mix = SyntheticHeap.Mix()
        mix.zero = 0
        mix.objects = Int.max
        mix.text = Int.max
        var heap = SyntheticHeap(seed: UInt64.max, mix: mix)
        heap.pretendBase = UInt64.max - 8
        let objects = filled(heap)
        #expect(objects == filled(heap), "the same parameters give the same bytes")
        #expect(objects.contains { $0 != 0 })
        // Shares past 100 in all: the first kind takes every page.
        mix.zero = Int.max
        heap.mix = mix
        #expect(filled(heap).allSatisfy { $0 == 0 })
        // Negative shares take nothing: every page is random bytes.
        mix = SyntheticHeap.Mix()
        mix.zero = Int.min
        mix.objects = Int.min
        mix.text = -1
        mix.floats = Int.min
        mix.counters = Int.min
        heap.mix = mix
        let random = filled(heap)
        #expect(random == filled(heap))
        #expect(random.contains { $0 != 0 })
    }

    @Test func trackerConfigurationsOutOfRangeAreErrors() throws {
        let region = try VirtualRegion(maxSize: 2 * pageSize, committing: pageSize)
        for slots in [Int.min, -1, DirtyTracker.Configuration.maxThreadSlots + 1, Int.max] {
            expectReason(.invalidArgument("\(slots) thread slots is not within 0...65536")) {
                _ = try DirtyTracker(tracking: region, configuration: .init(mode: .compare, threadSlots: slots))
            }
        }
        for fraction in [-0.5, 1.5, Double.nan, -Double.infinity, Double.infinity] {
            expectReason(.invalidArgument("full-copy fraction \(fraction) is not within 0...1")) {
                _ = try DirtyTracker(tracking: region, configuration: .init(mode: .compare, fullCopyFraction: fraction))
            }
        }
        let tracker = try DirtyTracker(tracking: region, configuration: .init(mode: .compare, fullCopyFraction: 1, threadSlots: 0))
        #expect(!tracker.prefersFullCopy(DirtyPages(pageCount: 1, runs: [0..<1])), "1 means never")
        tracker.stop()
    }

    @Test func registryKeysOfAnyContentWork() throws {
        let registry = SnapshotRegistry()
        let snapshot = try Snapshot(size: 8)
        let keys = ["\0", String(repeating: "k", count: 1 << 16), "ключ", "a\u{301}", "á"]
        for key in keys { try registry.register(snapshot, as: key) }
        #expect(registry.count == keys.count - 1, "\"a\u{301}\" and \"á\" are the same String")
        for key in keys { #expect(try registry.snapshot(for: key) === snapshot) }
        expectReason(.emptyKey) { try registry.register(snapshot, as: "") }
        expectReason(.notFound(key: "missing")) { _ = try registry.snapshot(for: "missing") }
    }

    @Test func workerPoolsRefuseCountsBelowOne() throws {
        let snapshot = try Snapshot(size: pageSize)
        for count in [Int.min, -1, 0] {
            expectReason(.invalidArgument("need at least one worker, not \(count)")) {
                _ = try SnapshotWorkers(snapshot: snapshot, count: count)
            }
        }
        expectReason(.invalidRange(offset: 0, length: Int.max)) {
            _ = try SnapshotWorkers(snapshot: snapshot, count: 1, memoryMaxSize: Int.max)
        }
        let larger = try Snapshot(size: 4 * pageSize)
        expectReason(.tooSmall(what: "region", required: 4 * pageSize, capacity: pageSize)) {
            _ = try SnapshotWorkers(snapshot: larger, count: 1, memoryMaxSize: Int.min)
        }
    }
}
