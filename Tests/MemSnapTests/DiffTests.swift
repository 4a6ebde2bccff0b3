#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapTestSupport
import Testing

/// Little-endian bytes of `values` as `type` (values chosen exactly representable in all types).
func encodeValues(_ values: [Double], as type: MergeDataType) -> [UInt8] {
    values.flatMap { value -> [UInt8] in
        switch type {
        case .int32: withUnsafeBytes(of: Int32(value).littleEndian) { Array($0) }
        case .int64: withUnsafeBytes(of: Int64(value).littleEndian) { Array($0) }
        case .float: withUnsafeBytes(of: Float(value).bitPattern.littleEndian) { Array($0) }
        case .double: withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) }
        case .raw, .bool: [UInt8(value)]
        }
    }
}

func decodeValues(_ slice: some Collection<UInt8>, as type: MergeDataType) -> [Double] {
    let bytes = Array(slice)
    return stride(from: 0, to: bytes.count, by: type.width).map { offset in
        bytes.withUnsafeBytes { raw -> Double in
            switch type {
            case .int32: Double(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int32.self)))
            case .int64: Double(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: Int64.self)))
            case .float: Double(Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))))
            case .double: Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
            case .raw, .bool: Double(raw[offset])
            }
        }
    }
}

/// A worker memory mapped copy-on-write from `snapshot`, with `bytes` written at `offset`.
func workerMemory(of snapshot: Snapshot, writing bytes: [UInt8] = [], at offset: Int = 0) throws -> VirtualRegion {
    let region = try VirtualRegion(maxSize: snapshot.maxSize + 4 * pageSize)
    try snapshot.mapCopyOnWrite(into: region)
    region.withUnsafeMutableBytes { memory in
        for (index, byte) in bytes.enumerated() { memory[offset + index] = byte }
    }
    return region
}

func allPages(of snapshot: Snapshot) -> DirtyPages {
    let pages = Page.count(covering: snapshot.size) ?? 0
    return DirtyPages(pageCount: pages, runs: [0..<pages])
}

@Suite("Merge regions and typed merge operations")
struct MergeOperationTests {
    struct Scenario: Sendable, CustomTestStringConvertible {
        var operation: MergeOperation
        var original: [Double]
        var workerA: [Double]
        var workerB: [Double]
        var merged: [Double]
        var testDescription: String { "\(operation)" }
    }

    static let scenarios: [Scenario] = [
        Scenario(operation: .sum, original: [6, 10], workerA: [9, 12], workerB: [8, 15], merged: [11, 17]),
        Scenario(operation: .subtract, original: [20, 10], workerA: [18, 10], workerB: [15, 9], merged: [13, 9]),
        Scenario(operation: .product, original: [2, 3], workerA: [4, 3], workerB: [6, 9], merged: [12, 9]),
        Scenario(operation: .max, original: [5, 5], workerA: [7, 4], workerB: [6, 9], merged: [7, 9]),
        Scenario(operation: .min, original: [5, 5], workerA: [3, 6], workerB: [4, 1], merged: [3, 1]),
    ]

    static let numericTypes: [MergeDataType] = [.int32, .int64, .float, .double]

    @Test("two workers merge arithmetically", arguments: numericTypes, scenarios)
    func everyOperationForEveryNumericType(type: MergeDataType, scenario: Scenario) throws {
        let offset = 128
        let snapshot = try Snapshot(size: 2 * pageSize)
        try snapshot.write(encodeValues(scenario.original, as: type), at: offset)
        try snapshot.addMergeRegion(MergeRegion(offset: offset, length: 2 * type.width, dataType: type, operation: scenario.operation))
        for values in [scenario.workerA, scenario.workerB] {
            let worker = try workerMemory(of: snapshot, writing: encodeValues(values, as: type), at: offset)
            let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
            #expect(diffs.count == 1)
            #expect(diffs.first?.dataType == type)
            #expect(diffs.first?.operation == scenario.operation)
            snapshot.queueDiffs(diffs)
        }
        let written = try snapshot.applyQueuedDiffs()
        #expect(written == [offset..<offset + 2 * type.width])
        #expect(decodeValues(try snapshot.read(at: offset, count: 2 * type.width), as: type) == scenario.merged)
    }

    @Test func diffsCarryWhatTheApplySideNeeds() throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.write(encodeValues([150000, 7, 9, 40], as: .int32), at: 0)
        for (index, operation) in [MergeOperation.sum, .product, .subtract, .max].enumerated() {
            try snapshot.addMergeRegion(MergeRegion(offset: index * 4, length: 4, dataType: .int32, operation: operation))
        }
        let worker = try workerMemory(of: snapshot, writing: encodeValues([123456, 21, 5, 41], as: .int32))
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
        #expect(diffs.map { decodeValues($0.bytes, as: .int32) } == [[-26544], [3], [4], [41]],
                "sum: updated - original; product: the factor; subtract: original - updated; max: the new value")
        #expect(diffs.map(\.offset) == [0, 4, 8, 12])
    }

    @Test func integersWrapOnOverflow() throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.write(encodeValues([Double(Int32.max)], as: .int32), at: 0)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 4, dataType: .int32, operation: .sum))
        for _ in 0..<2 {
            let plusOne = withUnsafeBytes(of: (Int32.max &+ 1).littleEndian) { Array($0) }
            snapshot.queueDiffs(try snapshot.diff(try workerMemory(of: snapshot, writing: plusOne), dirtyPages: allPages(of: snapshot)))
        }
        try snapshot.applyQueuedDiffs()
        let merged = try snapshot.read(at: 0, count: 4).withUnsafeBytes { $0.load(as: Int32.self) }
        #expect(merged == Int32.min &+ 1, "Int32.max + 1 + 1 wraps")

        let product = try Snapshot(size: pageSize)
        try product.write(withUnsafeBytes(of: Int64.max.littleEndian) { Array($0) }, at: 0)
        try product.apply([SnapshotDiff(offset: 0, dataType: .int64, operation: .product,
                                        bytes: withUnsafeBytes(of: Int64(2).littleEndian) { Array($0) })])
        #expect(try product.read(at: 0, count: 8).withUnsafeBytes { $0.load(as: Int64.self) } == -2)
    }

    @Test func integerProductUsesIntegerDivision() throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.write(encodeValues([3], as: .int64), at: 0)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .product))
        try snapshot.apply(try snapshot.diff(try workerMemory(of: snapshot, writing: encodeValues([10], as: .int64)),
                                             dirtyPages: allPages(of: snapshot)))
        #expect(decodeValues(try snapshot.read(at: 0, count: 8), as: .int64) == [9], "10 / 3 = 3, the remainder is lost")
    }

    @Test(arguments: numericTypes)
    func productOfAZeroOriginalSendsTheNewValue(type: MergeDataType) throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.write(encodeValues([0, 2], as: type), at: 0)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 2 * type.width, dataType: type, operation: .product))
        let first = try snapshot.diff(try workerMemory(of: snapshot, writing: encodeValues([5, 4], as: type)),
                                      dirtyPages: allPages(of: snapshot))
        #expect(first.map(\.operation) == [.product, .bytewise])
        #expect(decodeValues(first[0].bytes, as: type) == [1, 2], "no factor for 0: the identity")
        #expect(first[1].offset == 0 && decodeValues(first[1].bytes, as: type) == [5])
        let second = try snapshot.diff(try workerMemory(of: snapshot, writing: encodeValues([7, 2], as: type)),
                                       dirtyPages: allPages(of: snapshot))
        snapshot.queueDiffs(first)
        snapshot.queueDiffs(second)
        try snapshot.applyQueuedDiffs()
        #expect(decodeValues(try snapshot.read(at: 0, count: 2 * type.width), as: type) == [7, 4],
                "the zero element takes the last worker's value; the other multiplies")
    }

    @Test func nanPropagatesThroughMaxMinAndSum() throws {
        for operation in [MergeOperation.max, .min, .sum] {
            let snapshot = try Snapshot(size: pageSize)
            try snapshot.write(encodeValues([1, 1], as: .double), at: 0)
            try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 16, dataType: .double, operation: operation))
            let worker = try workerMemory(of: snapshot, writing: encodeValues([.nan, 3], as: .double))
            try snapshot.apply(try snapshot.diff(worker, dirtyPages: allPages(of: snapshot)))
            let merged = decodeValues(try snapshot.read(at: 0, count: 16), as: .double)
            #expect(merged[0].isNaN, "\(operation)")
            #expect(merged[1] == (operation == .min ? 1 : 3), "\(operation)")
        }
    }

    @Test func unchangedInfinitiesStayInfinite() throws {
        for operation in [MergeOperation.sum, .product, .subtract] {
            let snapshot = try Snapshot(size: pageSize)
            try snapshot.write(encodeValues([.infinity, 2], as: .float), at: 0)
            try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .float, operation: operation))
            let updated: Double = operation == .product ? 8 : (operation == .sum ? 5 : 1)
            let worker = try workerMemory(of: snapshot, writing: encodeValues([.infinity, updated], as: .float))
            try snapshot.apply(try snapshot.diff(worker, dirtyPages: allPages(of: snapshot)))
            #expect(decodeValues(try snapshot.read(at: 0, count: 8), as: .float) == [.infinity, updated], "\(operation)")
        }
    }

    @Test func invalidRegionsAreRejectedWhenAdded() throws {
        for operation in [MergeOperation.sum, .product, .subtract, .max, .min] {
            for type in [MergeDataType.raw, .bool] {
                let error = expectMemSnapError { _ = try MergeRegion(offset: 0, length: 4, dataType: type, operation: operation) }
                #expect(error?.reason == .invalidArgument("\(operation) needs a numeric type (int32, int64, float, double), not \(type)"))
            }
        }
        expectReason(.invalidArgument("6 bytes is not a whole number of 4-byte int32 values")) {
            _ = try MergeRegion(offset: 0, length: 6, dataType: .int32, operation: .sum)
        }
        expectReason(.invalidRange(offset: -4, length: 4)) { _ = try MergeRegion(offset: -4, length: 4, dataType: .raw, operation: .bytewise) }
        _ = try MergeRegion(offset: 3, length: 5, dataType: .bool, operation: .bytewise)
        _ = try MergeRegion(offset: 3, length: 6, dataType: .int32, operation: .xor)

        let snapshot = try Snapshot(size: 100, maxSize: pageSize)
        try snapshot.addMergeRegion(MergeRegion(offset: 8, length: 8, dataType: .int64, operation: .sum))
        expectReason(.invalidArgument("it overlaps merge region int64 sum [8, 16)")) {
            try snapshot.addMergeRegion(MergeRegion(offset: 12, length: 4, dataType: .int32, operation: .max))
        }
        expectReason(.exceedsMaximum(what: "end", requested: pageSize + 4, maximum: pageSize)) {
            try snapshot.addMergeRegion(MergeRegion(offset: pageSize, length: 4, dataType: .int32, operation: .sum))
        }
        snapshot.clearMergeRegions()
        #expect(snapshot.mergeRegions.isEmpty)
    }
}

@Suite("Diffing: byte-precise runs, regions, gaps, dirty pages, extensions")
struct DiffingTests {
    @Test func regionsAddedOutOfOrderAdjacentAtZeroAndAtTheLastFourBytes() throws {
        let size = 2 * pageSize
        let snapshot = try Snapshot(size: size)
        try snapshot.write(encodeValues([1], as: .int32), at: 0)
        try snapshot.write(encodeValues([100, 200], as: .int32), at: 100)
        try snapshot.write(encodeValues([7], as: .int32), at: size - 4)
        try snapshot.addMergeRegion(MergeRegion(offset: size - 4, length: 4, dataType: .int32, operation: .sum))
        try snapshot.addMergeRegion(MergeRegion(offset: 104, length: 4, dataType: .int32, operation: .max))
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 4, dataType: .int32, operation: .sum))
        try snapshot.addMergeRegion(MergeRegion(offset: 100, length: 4, dataType: .int32, operation: .sum))
        #expect(snapshot.mergeRegions.map(\.offset) == [0, 100, 104, size - 4])

        let worker = try workerMemory(of: snapshot)
        worker.withUnsafeMutableBytes { memory in
            let bytes = encodeValues([11], as: .int32) + [UInt8](repeating: 0, count: 96) + encodeValues([150, 250], as: .int32)
            for (index, byte) in bytes.enumerated() { memory[index] = byte }
            for (index, byte) in encodeValues([10], as: .int32).enumerated() { memory[size - 4 + index] = byte }
        }
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
        #expect(diffs.map(\.offset) == [0, 100, 104, size - 4])
        #expect(diffs.map { decodeValues($0.bytes, as: .int32) } == [[10], [50], [250], [3]])
    }

    @Test func aLengthZeroRegionRunsToTheEndOfTheSnapshot() throws {
        let snapshot = try Snapshot(size: 64, maxSize: pageSize)
        try snapshot.addMergeRegion(MergeRegion(offset: 32, length: 0, dataType: .int64, operation: .sum))
        let worker = try workerMemory(of: snapshot, writing: encodeValues([5], as: .int64), at: 56)
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
        #expect(diffs.count == 1)
        #expect(diffs.first?.range == 32..<64, "four int64 values, to the end")
        #expect(diffs.first.map { decodeValues($0.bytes, as: .int64) } == [0, 0, 0, 5])
    }

    @Test func ignoreYieldsNothing() throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 0, dataType: .raw, operation: .ignore))
        let worker = try workerMemory(of: snapshot, writing: [1, 2, 3], at: 50)
        #expect(try snapshot.diff(worker, dirtyPages: allPages(of: snapshot)).isEmpty)
    }

    @Test func onlyRegionsOnDirtyPagesProduceDiffs() throws {
        let snapshot = try Snapshot(size: 4 * pageSize)
        for page in [0, 2, 3] {
            try snapshot.addMergeRegion(MergeRegion(offset: page * pageSize + 8, length: 4, dataType: .int32, operation: .sum))
        }
        let worker = try workerMemory(of: snapshot)
        for page in [0, 2, 3] { worker.store(0x0102_0304_0506_0708, at: page * pageSize + 8) }
        worker.store(9, at: pageSize + 100)
        let diffs = try snapshot.diff(worker, dirtyPages: DirtyPages(pageCount: 4, runs: [1..<3]))
        #expect(diffs.map(\.offset) == [pageSize + 100, 2 * pageSize + 8, 2 * pageSize + 12],
                "page 0's and page 3's changes are not read; page 1's bytes and page 2's region are")
        #expect(diffs.map(\.operation) == [.bytewise, .sum, .bytewise])
    }

    /// Also with changes in the last bytes of a dirty page before an inaccessible one: a short
    /// run's bytes move as a fixed 32 bytes only when those stay inside the run's page.
    @Test(arguments: [MergeOperation.bytewise, .xor])
    func theDiffNeverReadsACleanPage(fill: MergeOperation) throws {
        let snapshot = try Snapshot(size: 8 * pageSize)
        try snapshot.addMergeRegion(MergeRegion(offset: 6 * pageSize, length: 8, dataType: .int64, operation: .sum))
        let worker = try workerMemory(of: snapshot)
        worker.store(1, at: 2 * pageSize + 16)
        worker.store(3, at: 3 * pageSize - 8)
        worker.store(2, at: 5 * pageSize + 40)
        worker.withUnsafeMutableBytes { $0[6 * pageSize - 1] = 4 }
        // Every clean page becomes inaccessible: reading one would crash this test.
        let clean = [0, 1, 3, 4, 6, 7]
        worker.withUnsafeMutableBytes { memory in
            for page in clean { #expect(mprotect(memory.baseAddress! + page * pageSize, pageSize, PROT_NONE) == 0) }
        }
        let diffs = try snapshot.diff(worker, dirtyPages: DirtyPages(pageCount: 8, runs: [2..<3, 5..<6]),
                                      options: DiffOptions(fillOperation: fill))
        worker.withUnsafeMutableBytes { memory in
            for page in clean { #expect(mprotect(memory.baseAddress! + page * pageSize, pageSize, PROT_READ | PROT_WRITE) == 0) }
        }
        #expect(diffs.map(\.offset) == [2 * pageSize + 16, 3 * pageSize - 8, 5 * pageSize + 40, 6 * pageSize - 1])
        #expect(diffs[1].bytes.count == 1 && diffs[3].bytes == [4])
    }

    @Test func bytewiseRunsAreBytePreciseAndTinyGapsAreMerged() throws {
        let snapshot = try Snapshot(size: 2 * pageSize)
        let worker = try workerMemory(of: snapshot)
        worker.withUnsafeMutableBytes { memory in
            memory[10] = 1; memory[12] = 2  // a 1-byte gap: merged
            memory[60] = 3; memory[70] = 4  // across a 64-byte block boundary, 9-byte gap: merged
            memory[200] = 5  // 130 bytes later: separate
            memory[pageSize - 2] = 6; memory[pageSize + 1] = 7  // across a page boundary
        }
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
        #expect(diffs.map(\.range) == [10..<13, 60..<71, 200..<201, pageSize - 2..<pageSize + 2])
        #expect(diffs[0].bytes == [1, 0, 2])
        let tight = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot), options: DiffOptions(mergeGap: 0))
        #expect(tight.map(\.range) == [10..<11, 12..<13, 60..<61, 70..<71, 200..<201, pageSize - 2..<pageSize - 1, pageSize + 1..<pageSize + 2])
    }

    @Test(arguments: [MergeOperation.bytewise, .xor])
    func gapsBetweenRegionsAreFilled(fill: MergeOperation) throws {
        let snapshot = try Snapshot(size: pageSize)
        try snapshot.write([UInt8](repeating: 0xF0, count: 300), at: 0)
        snapshot.clearChangedRanges()
        try snapshot.addMergeRegion(MergeRegion(offset: 100, length: 4, dataType: .int32, operation: .sum))
        try snapshot.addMergeRegion(MergeRegion(offset: 104, length: 4, dataType: .raw, operation: .ignore))
        let worker = try workerMemory(of: snapshot, writing: [1, 2, 3], at: 50)
        worker.withUnsafeMutableBytes { memory in
            memory[105] = 9  // ignored
            memory[250] = 0x0F
        }
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot), options: DiffOptions(fillOperation: fill))
        #expect(diffs.map(\.range) == [50..<53, 250..<251])
        #expect(diffs.allSatisfy { $0.operation == fill && $0.dataType == .raw })
        #expect(diffs[0].bytes == (fill == .xor ? [0xF1, 0xF2, 0xF3] : [1, 2, 3]))
        try snapshot.apply(diffs)
        #expect(try snapshot.read(at: 50, count: 3) == [1, 2, 3])
        #expect(try snapshot.read(at: 250, count: 1) == [0x0F])
        #expect(try snapshot.read(at: 105, count: 1) == [0xF0])
        expectReason(.invalidArgument("gaps between merge regions can be filled with bytewise or xor, not sum")) {
            _ = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot), options: DiffOptions(fillOperation: .sum))
        }
    }

    @Test func extensionDiffsInFourLayouts() throws {
        // 1. Only an extension: the page-aligned snapshot's memory grew by a page.
        let aligned = try Snapshot(size: pageSize, maxSize: 4 * pageSize)
        let grown = try workerMemory(of: aligned)
        try grown.grow(to: 2 * pageSize)
        grown.store(0xAB, at: pageSize + 8)
        var diffs = try aligned.diff(grown, dirtyPages: DirtyPages(pageCount: 2, runs: [1..<2]))
        #expect(diffs.map(\.range) == [pageSize..<2 * pageSize])
        try aligned.apply(diffs)
        #expect(aligned.size == 2 * pageSize)
        #expect(try aligned.read(at: pageSize + 8, count: 1) == [0xAB])

        // 2. Changes inside the snapshot and an extension.
        let both = try Snapshot(size: pageSize, maxSize: 4 * pageSize)
        let memory = try workerMemory(of: both, writing: [5], at: 10)
        try memory.grow(to: 3 * pageSize)
        memory.store(7, at: 2 * pageSize)
        diffs = try both.diff(memory, dirtyPages: DirtyPages(pageCount: 3, runs: [0..<1, 2..<3]))
        #expect(diffs.map(\.range) == [10..<11, pageSize..<3 * pageSize])
        try both.apply(diffs)
        #expect(both.size == 3 * pageSize)

        // 3. A snapshot whose size is not a page multiple: the extension starts at its exact end.
        let ragged = try Snapshot(size: 100, maxSize: pageSize)
        let buffer = [UInt8](repeating: 0, count: 100) + [1, 2, 3]
        diffs = try buffer.withUnsafeBytes { try ragged.diff($0, dirtyPages: DirtyPages(pageCount: 1, runs: [0..<1])) }
        #expect(diffs == [SnapshotDiff(offset: 100, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3])])
        try ragged.apply(diffs)
        #expect(ragged.size == 103)

        // 4. An extension past the snapshot's maximum is refused when applied, and nothing changes.
        let small = try Snapshot(size: pageSize, maxSize: pageSize)
        let big = [UInt8](repeating: 0, count: pageSize + 8)
        diffs = try big.withUnsafeBytes { try small.diff($0, dirtyPages: DirtyPages(pageCount: 2, runs: [0..<2])) }
        #expect(diffs.map(\.range) == [pageSize..<pageSize + 8])
        expectReason(.exceedsMaximum(what: "bytewise diff end", requested: pageSize + 8, maximum: pageSize)) {
            try small.apply(diffs)
        }
        #expect(small.size == pageSize)
    }

    @Test func applyIsAllOrNothingAndAFailedSyncKeepsTheQueue() throws {
        let snapshot = try Snapshot(size: 64, maxSize: pageSize)
        let good = SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [9])
        let outside = SnapshotDiff(offset: 62, dataType: .int32, operation: .sum, bytes: [1, 0, 0, 0])
        snapshot.queueDiffs([good])
        snapshot.queueDiffs([outside])
        let error = expectMemSnapError { try snapshot.applyQueuedDiffs() }
        #expect(error?.reason == .outOfBounds(offset: 62, length: 4, size: 64))
        #expect(error?.operation == "apply queued batch 1, diff 0 (int32 sum at 62, 4 bytes) to snapshot \"memsnap-snapshot\"",
                "the error names the batch to inspect or discard")
        #expect(try snapshot.read(at: 0, count: 1) == [0], "nothing applied")
        #expect(snapshot.queuedDiffCount == 2, "nothing lost")
        #expect(snapshot.queuedDiffBatches == [[good], [outside]])
        expectReason(.invalidArgument("sum diff of 4 bytes of raw at 0 is not valid")) {
            try snapshot.apply([SnapshotDiff(offset: 0, dataType: .raw, operation: .sum, bytes: [1, 0, 0, 0])])
        }
    }

    @Test func writesMadeDirectlyToTheSnapshotAreNotWorkerChanges() throws {
        let snapshot = try Snapshot(size: pageSize)
        let worker = try workerMemory(of: snapshot)
        worker.store(1, at: 0)  // the worker's own copy of page 0
        try snapshot.write([5], at: 100)  // page 0 of the snapshot changes after the worker copied it
        let diffs = try snapshot.diff(worker, dirtyPages: allPages(of: snapshot))
        #expect(diffs.map(\.range) == [0..<1, 100..<101],
                "the worker's stale page 0 differs at 100 too: remap workers after writing to the snapshot")
    }
}

@Suite("Diff encoding")
struct DiffEncodingTests {
    static let sample: [SnapshotDiff] = [
        SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3]),
        SnapshotDiff(offset: 4096, dataType: .int32, operation: .sum, bytes: [1, 0, 0, 0, 255, 255, 255, 255]),
        SnapshotDiff(offset: 1 << 40, dataType: .double, operation: .max, bytes: withUnsafeBytes(of: 2.5) { Array($0) }),
        SnapshotDiff(offset: 77, dataType: .raw, operation: .xor, bytes: []),
    ]

    @Test func roundTripsExactly() throws {
        let encoded = try SnapshotDiff.encode(Self.sample)
        #expect(encoded.count == 16 + 4 * 20 + 3 + 8 + 8 + 0 + 4)
        #expect(Array(encoded.prefix(4)) == Array("MSDF".utf8))
        #expect(try SnapshotDiff.decode(encoded) == Self.sample)
        #expect(try SnapshotDiff.decode(SnapshotDiff.encode([])) == [])
        #expect(try SnapshotDiff.encode([]).count == 20)
    }

    @Test func everyTruncationIsAnError() throws {
        let encoded = try SnapshotDiff.encode(Self.sample)
        for length in 0..<encoded.count {
            #expect(throws: MemSnapError.self, "truncated to \(length)") { try SnapshotDiff.decode(Array(encoded.prefix(length))) }
        }
    }

    @Test func everySingleByteFlipIsAnError() throws {
        let encoded = try SnapshotDiff.encode(Self.sample)
        for index in encoded.indices {
            var damaged = encoded
            damaged[index] ^= 0x40
            #expect(throws: MemSnapError.self, "flip at \(index)") { try SnapshotDiff.decode(damaged) }
        }
    }

    @Test func garbageIsAnError() {
        var random = TestSeed.generator()
        for length in [0, 1, 19, 20, 64, 1000] {
            let garbage = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            #expect(throws: MemSnapError.self) { try SnapshotDiff.decode(garbage) }
        }
    }

    @Test func errorsSayWhereAndWhy() throws {
        var encoded = try SnapshotDiff.encode(Self.sample)
        encoded[20] ^= 1
        let checksum = expectMemSnapError { _ = try SnapshotDiff.decode(encoded) }
        #expect(checksum?.description.hasPrefix("decode diff batch of \(encoded.count) bytes: at byte \(encoded.count - 4): checksum mismatch") == true)
        var versioned = try SnapshotDiff.encode([])
        versioned[4] = 9
        let version = expectMemSnapError { _ = try SnapshotDiff.decode(versioned) }
        #expect(version?.reason == .corrupt("at byte 4: unsupported version 9 (this build reads 1)"))
    }
}

@Suite("The diff queue belongs to its caller: inspect, discard, requeue")
struct DiffQueueTests {
    @Test func aBatchThatCanNeverApplyIsDiscardedAndTheRestRequeued() throws {
        let snapshot = try Snapshot(size: 64, maxSize: pageSize)
        let first = [SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise, bytes: [1])]
        let tooFar = [SnapshotDiff(offset: pageSize - 1, dataType: .raw, operation: .bytewise, bytes: [2, 2])]
        let last = [SnapshotDiff(offset: 10, dataType: .raw, operation: .xor, bytes: [3])]
        snapshot.queueDiffs(first)
        snapshot.queueDiffs([])  // not a batch
        snapshot.queueDiffs(tooFar)
        snapshot.queueDiffs(last)
        #expect(snapshot.queuedDiffBatches == [first, tooFar, last])
        for _ in 0..<2 {
            let error = expectMemSnapError { try snapshot.applyQueuedDiffs() }
            #expect(error?.reason == .exceedsMaximum(what: "bytewise diff end", requested: pageSize + 1, maximum: pageSize))
            #expect(error?.operation.hasPrefix("apply queued batch 1, diff 0 (raw bytewise at 4095, 2 bytes)") == true)
            #expect(snapshot.queuedDiffBatches == [first, tooFar, last], "a failed sync keeps the queue as it was")
        }
        let discarded = snapshot.discardQueuedDiffs()
        #expect(discarded == [first, tooFar, last])
        #expect(snapshot.queuedDiffBatches.isEmpty)
        #expect(snapshot.queuedDiffCount == 0)
        for (index, batch) in discarded.enumerated() where index != 1 { snapshot.queueDiffs(batch) }
        #expect(try snapshot.applyQueuedDiffs() == [0..<1, 10..<11])
        #expect(try snapshot.read(at: 0, count: 11) == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])
        #expect(snapshot.queuedDiffBatches.isEmpty)
        #expect(snapshot.discardQueuedDiffs().isEmpty, "discarding an empty queue returns nothing")
    }

    @Test func inspectingTheQueueChangesNothing() throws {
        let snapshot = try Snapshot(size: 64)
        let batch = [SnapshotDiff(offset: 1, dataType: .raw, operation: .bytewise, bytes: [5])]
        snapshot.queueDiffs(batch)
        #expect(snapshot.queuedDiffBatches == [batch])
        #expect(snapshot.queuedDiffBatches == [batch])
        #expect(try snapshot.applyQueuedDiffs() == [1..<2])
        #expect(snapshot.queuedDiffBatches.isEmpty)
    }
}
