import CMemSnap
import MemSnap
import MemSnapTestSupport
import Testing

/// `batch` with its CRC32C trailer recomputed: a damaged field then reaches the decoder's
/// structural checks instead of stopping at the checksum, as a faulty or hostile peer's would.
func resealed(_ batch: [UInt8]) -> [UInt8] {
    var bytes = batch
    let end = bytes.count - 4
    let crc = bytes.withUnsafeBytes { memsnap_crc32c(0, $0.baseAddress, end) }
    bytes.put(crc, at: end)
    return bytes
}

extension Array where Element == UInt8 {
    /// Stores `value` little-endian at `offset`.
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { for (index, byte) in $0.enumerated() { self[offset + index] = byte } }
    }
}

@Suite("Diff batch decoding: every structural field damaged, checksum re-sealed")
struct DiffDecodingTests {
    /// Layout (byte offsets): header 0..<16 (count at 8, reserved at 12); diff 0 header at 16
    /// (offset 16, length 24, type 32, operation 33, reserved 34), its 3 bytes at 36; diff 1
    /// header at 39 (offset 39, length 47, type 55, operation 56), its 12 bytes at 59; CRC at 71.
    static let diffs: [SnapshotDiff] = [
        SnapshotDiff(offset: 8, dataType: .raw, operation: .bytewise, bytes: [1, 2, 3]),
        SnapshotDiff(offset: 4096, dataType: .int32, operation: .sum, bytes: [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]),
    ]

    static func batch() throws -> [UInt8] { try SnapshotDiff.encode(diffs) }

    /// Applies `damage` to the sample, re-seals it and expects exactly `.corrupt(text)`.
    func expectCorrupt(_ text: String, sourceLocation: SourceLocation = #_sourceLocation, _ damage: (inout [UInt8]) -> Void) throws {
        var bytes = try Self.batch()
        damage(&bytes)
        let damaged = resealed(bytes)
        let error = expectMemSnapError({ _ = try SnapshotDiff.decode(damaged) }, sourceLocation: sourceLocation)
        #expect(error?.reason == .corrupt(text), sourceLocation: sourceLocation)
        #expect(error?.operation == "decode diff batch of \(damaged.count) bytes", sourceLocation: sourceLocation)
    }

    @Test func theSampleDecodesAndHasTheDocumentedLayout() throws {
        let bytes = try Self.batch()
        #expect(bytes.count == 75)
        #expect(bytes[32] == MergeDataType.raw.rawValue && bytes[55] == MergeDataType.int32.rawValue)
        #expect(try SnapshotDiff.decode(bytes) == Self.diffs)
        #expect(try SnapshotDiff.decode(resealed(bytes)) == Self.diffs, "re-sealing an intact batch changes nothing")
    }

    @Test func aCountLargerThanTheBatchCanHoldIsRefusedBeforeAnyDiffIsRead() throws {
        try expectCorrupt("at byte 8: count 3 is more than the 2 diff headers the 55 bytes after the header can hold") {
            $0.put(UInt32(3), at: 8)
        }
        try expectCorrupt("at byte 8: count 4294967295 is more than the 2 diff headers the 55 bytes after the header can hold") {
            $0.put(UInt32.max, at: 8)
        }
    }

    @Test func aCountThatFitsTheHeadersButNotTheBytesRunsPastTheEnd() throws {
        // One diff of 25 bytes: 45 bytes after the header could hold two headers, but not after
        // the first diff's bytes.
        var bytes = try SnapshotDiff.encode([SnapshotDiff(offset: 0, dataType: .raw, operation: .bytewise,
                                                          bytes: [UInt8](repeating: 7, count: 25))])
        bytes.put(UInt32(2), at: 8)
        let damaged = resealed(bytes)
        expectReason(.corrupt("at byte 61: diff 1 of 2: header runs past the end")) { _ = try SnapshotDiff.decode(damaged) }
    }

    @Test func aCountSmallerThanTheBatchLeavesTrailingBytes() throws {
        try expectCorrupt("at byte 39: 32 bytes after the last of 1 diffs") { $0.put(UInt32(1), at: 8) }
        try expectCorrupt("at byte 16: 55 bytes after the last of 0 diffs") { $0.put(UInt32(0), at: 8) }
    }

    @Test func aLengthPastTheEndIsRefused() throws {
        try expectCorrupt("at byte 47: diff 1: length 13 runs past the end of the batch (12 bytes left)") {
            $0.put(UInt64(13), at: 47)
        }
        try expectCorrupt("at byte 47: diff 1: length 18446744073709551615 runs past the end of the batch (12 bytes left)") {
            $0.put(UInt64.max, at: 47)
        }
        try expectCorrupt("at byte 24: diff 0: length 9223372036854775808 runs past the end of the batch (35 bytes left)") {
            $0.put(UInt64(1) << 63, at: 24)
        }
    }

    @Test func anOffsetAbove2To63Minus1IsRefused() throws {
        try expectCorrupt("at byte 16: diff 0: offset 9223372036854775808 is above 2^63 - 1") { $0.put(UInt64(1) << 63, at: 16) }
        try expectCorrupt("at byte 39: diff 1: offset 18446744073709551615 is above 2^63 - 1") { $0.put(UInt64.max, at: 39) }
    }

    @Test func anOffsetWhoseEndOverflowsIsRefusedAndTheLastValidEndIsAccepted() throws {
        try expectCorrupt("at byte 16: diff 0: offset 9223372036854775806 + length 3 is above 2^63 - 1") {
            $0.put(UInt64(Int.max - 1), at: 16)
        }
        try expectCorrupt("at byte 16: diff 0: offset 9223372036854775805 + length 3 is above 2^63 - 1") {
            $0.put(UInt64(Int.max - 2), at: 16)
        }
        var bytes = try Self.batch()
        bytes.put(UInt64(Int.max - 3), at: 16)
        let decoded = try SnapshotDiff.decode(resealed(bytes))
        #expect(decoded[0].offset == Int.max - 3)
        #expect(decoded[0].range == Int.max - 3..<Int.max, "ends exactly at Int.max")
    }

    @Test func unknownDataTypesAndOperationsAreRefused() throws {
        // Data types are 0...5 and operations 0...7 (docs/FORMAT.md).
        for value: UInt8 in [6, 7, 0x80, 0xFF] {
            try expectCorrupt("at byte 32: diff 0: unknown data type \(value)") { $0[32] = value }
        }
        for value: UInt8 in [8, 9, 0x80, 0xFF] {
            try expectCorrupt("at byte 56: diff 1: unknown operation \(value)") { $0[56] = value }
        }
    }

    @Test func nonzeroReservedBytesAreRefusedInTheHeaderAndInEachDiff() throws {
        for index in 12..<16 {
            try expectCorrupt("at byte 12: reserved header bytes are not zero") { $0[index] = 1 }
        }
        try expectCorrupt("at byte 34: diff 0: reserved bytes are not zero") { $0[34] = 1 }
        try expectCorrupt("at byte 34: diff 0: reserved bytes are not zero") { $0[35] = 0x80 }
        try expectCorrupt("at byte 57: diff 1: reserved bytes are not zero") { $0[58] = 1 }
    }

    @Test(arguments: [MergeOperation.sum, .product, .subtract, .max, .min])
    func arithmeticOnRawOrBoolDataIsRefused(operation: MergeOperation) throws {
        for type in [MergeDataType.raw, .bool] {
            try expectCorrupt("at byte 55: diff 1: \(operation) needs a numeric data type, not \(type)") {
                $0[55] = type.rawValue
                $0[56] = operation.rawValue
            }
        }
    }

    @Test func anArithmeticLengthThatIsNotAWholeNumberOfValuesIsRefused() throws {
        try expectCorrupt("at byte 47: diff 1: sum of 12 bytes is not a whole number of 8-byte int64 values") {
            $0[55] = MergeDataType.int64.rawValue
        }
        try expectCorrupt("at byte 47: diff 1: max of 12 bytes is not a whole number of 8-byte double values") {
            $0[55] = MergeDataType.double.rawValue
            $0[56] = MergeOperation.max.rawValue
        }
        var bytes = try Self.batch()
        bytes[55] = MergeDataType.float.rawValue
        #expect(try SnapshotDiff.decode(resealed(bytes))[1].dataType == .float, "12 bytes are three floats")
    }

    @Test func trailingBytesAreRefused() throws {
        var bytes = try Self.batch()
        bytes.insert(contentsOf: [0, 0, 0, 0, 0], at: 71)
        let damaged = resealed(bytes)
        expectReason(.corrupt("at byte 71: 5 bytes after the last of 2 diffs")) { _ = try SnapshotDiff.decode(damaged) }
    }

    @Test func flagsVersionAndMagicAreRefusedEvenWithAValidChecksum() throws {
        try expectCorrupt("at byte 6: unknown flags 0x0001") { $0.put(UInt16(1), at: 6) }
        try expectCorrupt("at byte 6: unknown flags 0x8000") { $0.put(UInt16(0x8000), at: 6) }
        try expectCorrupt("at byte 4: unsupported version 2 (this build reads 1)") { $0.put(UInt16(2), at: 4) }
        try expectCorrupt("at byte 0: not a diff batch (magic 0x4644534e)") { $0[0] = 0x4E }
    }

    /// Every byte of the header, the diff headers and the payload, set to a handful of values
    /// and re-sealed: the decoder either refuses it with `.corrupt`, or accepts exactly what
    /// re-encodes to the same bytes (a changed offset or payload byte is a different valid
    /// batch). Whatever it accepts, applying it to a snapshot is a result or an error, never a
    /// trap, and an error leaves the snapshot untouched.
    @Test func everyFieldDamagedAndResealedIsRefusedOrDecodesToWhatReencodesIdentically() throws {
        let original = try Self.batch()
        var accepted = 0
        for index in 0..<(original.count - 4) {
            for value: UInt8 in [0, 1, 2, 5, 7, 8, 0x40, 0x7F, 0x80, 0xFF, original[index] ^ 0x01] where value != original[index] {
                var bytes = original
                bytes[index] = value
                let damaged = resealed(bytes)
                let decoded: [SnapshotDiff]
                do {
                    decoded = try SnapshotDiff.decode(damaged)
                } catch {
                    guard case .corrupt = error.reason else {
                        Issue.record("byte \(index) = \(value): \(error) is not .corrupt")
                        continue
                    }
                    continue
                }
                accepted += 1
                #expect(try SnapshotDiff.encode(decoded) == damaged, "byte \(index) = \(value)")
                try expectAllOrNothing(decoded, "byte \(index) = \(value)")
            }
        }
        #expect(accepted > 0, "payload and offset bytes may change: those batches are valid")
    }
}

@Suite("Applying decoded diffs: any offset is an error or a result, never a trap")
struct DecodedDiffApplyTests {
    @Test func diffsEndingAtIntMaxDecodeAndAreRefusedWhenApplied() throws {
        let snapshot = try Snapshot(size: 64 << 10, maxSize: 1 << 20)
        for operation in MergeOperation.allCases {
            let type: MergeDataType = operation.isArithmetic ? .int64 : .raw
            let length = operation.isArithmetic ? 8 : 3
            var bytes = try SnapshotDiff.encode([SnapshotDiff(offset: 0, dataType: type, operation: operation,
                                                              bytes: [UInt8](repeating: 1, count: length))])
            bytes.put(UInt64(Int.max - length), at: 16)
            let decoded = try SnapshotDiff.decode(resealed(bytes))
            #expect(decoded[0].range == (Int.max - length)..<Int.max)
            switch operation {
            case .ignore:
                #expect(try snapshot.apply(decoded) == [], "ignore diffs are skipped wherever they point")
            case .bytewise:
                let error = expectMemSnapError { try snapshot.apply(decoded) }
                #expect(error?.reason == .exceedsMaximum(what: "bytewise diff end", requested: Int.max, maximum: 1 << 20))
                #expect(error?.operation == "apply diff 0 (raw bytewise at \(Int.max - 3), 3 bytes) to snapshot \"memsnap-snapshot\"")
            default:
                expectReason(.outOfBounds(offset: Int.max - length, length: length, size: 64 << 10)) { try snapshot.apply(decoded) }
            }
        }
        #expect(snapshot.size == 64 << 10)
        #expect(snapshot.changedRanges.isEmpty, "nothing was applied")
        #expect(try snapshot.read(at: 0, count: 64 << 10).allSatisfy { $0 == 0 })
    }

    /// Random batches of every operation and type with offsets from 0 to Int.max (edges of the
    /// snapshot and of Int favoured), encoded, decoded and applied: each apply either succeeds
    /// or throws with the snapshot exactly as before.
    @Test func randomBatchesWithExtremeOffsetsApplyAllOrNothing() throws {
        var random = TestSeed.generator()
        let snapshotSize = 64 << 10
        let maxSize = 1 << 20
        let interesting = [0, 1, 4095, 4096, snapshotSize - 8, snapshotSize, snapshotSize + 1, maxSize - 8, maxSize - 1,
                           maxSize, Int.max - 16, Int.max - 8, Int.max - 1, Int.max]
        for round in 0..<300 {
            var diffs: [SnapshotDiff] = []
            for _ in 0..<(1 + Int(random.next() % 6)) {
                let operation = MergeOperation.allCases[Int(random.next() % UInt64(MergeOperation.allCases.count))]
                let numeric: [MergeDataType] = [.int32, .int64, .float, .double]
                let type = operation.isArithmetic ? numeric[Int(random.next() % 4)]
                    : MergeDataType.allCases[Int(random.next() % UInt64(MergeDataType.allCases.count))]
                let count = type.width * Int(random.next() % 5)
                let base = random.next() % 3 == 0 ? Int(random.next() % UInt64(maxSize + 4096))
                    : interesting[Int(random.next() % UInt64(interesting.count))]
                let length = min(count, Int.max - base)
                let bytes = (0..<length - length % type.width).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                diffs.append(SnapshotDiff(offset: base, dataType: type, operation: operation, bytes: bytes))
            }
            let decoded = try SnapshotDiff.decode(try SnapshotDiff.encode(diffs))
            #expect(decoded == diffs)
            try expectAllOrNothing(decoded, "round \(round)", snapshotSize: snapshotSize, maxSize: maxSize)
        }
    }
}

/// Applies `diffs` to a fresh snapshot with two merge-region-like layouts: either it works, or
/// it throws a MemSnapError and the snapshot's size, bytes and changed ranges are unchanged.
func expectAllOrNothing(
    _ diffs: [SnapshotDiff], _ context: String, snapshotSize: Int = 64 << 10, maxSize: Int = 1 << 20,
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let snapshot = try Snapshot(size: snapshotSize, maxSize: maxSize)
    try snapshot.update(at: 0, count: snapshotSize) { memory in
        for index in 0..<memory.count { memory[index] = UInt8(truncatingIfNeeded: index * 7) }
    }
    snapshot.clearChangedRanges()
    let before = try snapshot.read(at: 0, count: snapshotSize)
    do {
        let written = try snapshot.apply(diffs)
        #expect(snapshot.changedRanges == written, "\(context)", sourceLocation: sourceLocation)
    } catch {
        #expect(snapshot.size == snapshotSize, "\(context): \(error)", sourceLocation: sourceLocation)
        #expect(try snapshot.read(at: 0, count: snapshotSize) == before, "\(context): \(error)", sourceLocation: sourceLocation)
        #expect(snapshot.changedRanges.isEmpty, "\(context): \(error)", sourceLocation: sourceLocation)
    }
}
