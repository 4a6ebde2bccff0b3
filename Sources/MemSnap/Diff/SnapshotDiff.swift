import CMemSnap

/// One change to merge into a snapshot: bytes at an offset, with the rule to merge them by.
///
/// What `bytes` hold depends on the operation (see `Snapshot.diff`): the new bytes for
/// `bytewise`, new XOR original for `xor`, and little-endian values of `dataType` for the
/// arithmetic operations: the delta (updated - original) for `sum`, the factor for `product`,
/// original - updated for `subtract`, the new values for `max` and `min`.
///
/// Ownership: a diff owns its bytes (a value; copy-on-write), so it can outlive the memory it
/// came from and cross threads and processes (`encode`/`decode`). The diffs made by one
/// `Snapshot.diff` call, or one `decode`, share a single buffer, each holding a slice of it:
/// one allocation per batch instead of one per diff. Keeping any diff keeps that buffer alive;
/// copy with `Array(diff.bytes)` to hold a few diffs of a large batch for long.
public struct SnapshotDiff: Sendable, Hashable, CustomStringConvertible {
    public let offset: Int
    public let dataType: MergeDataType
    public let operation: MergeOperation
    /// The diff's bytes. A slice: its indices need not start at 0.
    public let bytes: ArraySlice<UInt8>

    public init(offset: Int, dataType: MergeDataType, operation: MergeOperation, bytes: ArraySlice<UInt8>) {
        self.offset = offset
        self.dataType = dataType
        self.operation = operation
        self.bytes = bytes
    }

    public init(offset: Int, dataType: MergeDataType, operation: MergeOperation, bytes: [UInt8]) {
        self.init(offset: offset, dataType: dataType, operation: operation, bytes: bytes[...])
    }

    /// The snapshot bytes the diff touches. A diff whose end would pass `Int.max` gives
    /// `offset..<Int.max` (no snapshot reaches that far: `apply` refuses such a diff).
    public var range: Range<Int> {
        let (end, overflow) = offset.addingReportingOverflow(bytes.count)
        return offset..<(overflow ? Int.max : end)
    }

    public var description: String {
        "\(dataType) \(operation) at \(offset), \(bytes.count) bytes"
    }
}

// MARK: - Binary encoding

extension SnapshotDiff {
    /// "MSDF", little-endian.
    static let encodingMagic: UInt32 = 0x4644_534D
    static let encodingVersion: UInt16 = 1
    static let batchHeaderSize = 16
    static let diffHeaderSize = 20
    static let trailerSize = 4

    /// Encodes `diffs` as one batch (format in docs/FORMAT.md, "Diff batches"): a 16-byte header
    /// (magic "MSDF", version 1, flags 0, count, reserved 0), per diff a 20-byte header (offset
    /// u64, length u64, data type u8, operation u8, reserved u16 = 0) and its bytes, then the
    /// CRC32C of everything before it. All integers little-endian.
    /// - Throws: `.invalidRange` for a diff with a negative offset (the format holds offsets
    ///   0...2^63 - 1) or whose end passes `Int.max` (`decode` would refuse it);
    ///   `.exceedsMaximum` for more than 2^32 - 1 diffs. Nothing is encoded then.
    public static func encode(_ diffs: [SnapshotDiff]) throws(MemSnapError) -> [UInt8] {
        let operation = "encode \(diffs.count) diffs"
        guard let count = UInt32(exactly: diffs.count) else {
            throw MemSnapError(operation, .exceedsMaximum(what: "diff count", requested: diffs.count, maximum: Int(UInt32.max)))
        }
        var size = batchHeaderSize + trailerSize
        for (index, diff) in diffs.enumerated() {
            guard diff.offset >= 0, !diff.offset.addingReportingOverflow(diff.bytes.count).overflow else {
                throw MemSnapError("\(operation): diff \(index) (\(diff))", .invalidRange(offset: diff.offset, length: diff.bytes.count))
            }
            // Only an impossible batch (more bytes than memory) could overflow the total.
            size = size.addingReportingOverflow(diffHeaderSize + diff.bytes.count).partialValue
        }
        var writer = ByteWriter()
        writer.bytes.reserveCapacity(size)
        writer.u32(encodingMagic)
        writer.u16(encodingVersion)
        writer.u16(0)
        writer.u32(count)
        writer.u32(0)
        for diff in diffs {
            writer.u64(UInt64(diff.offset))  // checked non-negative above
            writer.u64(UInt64(diff.bytes.count))
            writer.u8(diff.dataType.rawValue)
            writer.u8(diff.operation.rawValue)
            writer.u16(0)
            writer.raw(diff.bytes)
        }
        writer.u32(writer.bytes.withUnsafeBytes { memsnap_crc32c(0, $0.baseAddress, $0.count) })
        return writer.bytes
    }

    /// Decodes a batch made by `encode`. Every field is checked, in this order, and the first
    /// failure is reported: the header (length, magic, version, flags), the CRC32C, the header's
    /// reserved bytes and count, then per diff its data type, operation, reserved bytes, offset,
    /// length and type/operation pair, and finally trailing bytes. A valid checksum is not
    /// trusted: a batch from a faulty or hostile peer is refused all the same.
    ///
    /// A decoded diff may still lie outside a given snapshot (its offset can be anything up to
    /// 2^63 - 1): `Snapshot.apply` refuses it with an error, applying nothing.
    /// - Throws: `.corrupt` naming the byte offset of the bad field and what is wrong: too
    ///   short, wrong magic, unknown version or flags, checksum mismatch, nonzero reserved bytes,
    ///   a count larger than the batch can hold, a header or length that runs past the end, an
    ///   offset above 2^63 - 1 or an end that overflows it, an unknown data type or operation,
    ///   an arithmetic operation on raw or bool data or a length that is not a whole number of
    ///   values, trailing bytes.
    public static func decode(_ encoded: [UInt8]) throws(MemSnapError) -> [SnapshotDiff] {
        func corrupt(_ at: Int, _ why: String) -> MemSnapError {
            MemSnapError("decode diff batch of \(encoded.count) bytes", .corrupt("at byte \(at): \(why)"))
        }
        guard encoded.count >= batchHeaderSize + trailerSize else {
            throw corrupt(0, "\(encoded.count) bytes is shorter than an empty batch (\(batchHeaderSize + trailerSize))")
        }
        return try withBytes(encoded) { (buffer) throws(MemSnapError) -> [SnapshotDiff] in
            // Every read below is checked against `bodyEnd` first: ByteReader does not check.
            var reader = ByteReader(buffer)
            let magic = reader.u32()
            guard magic == encodingMagic else { throw corrupt(0, "not a diff batch (magic \(hex(magic)))") }
            let version = reader.u16()
            guard version == encodingVersion else { throw corrupt(4, "unsupported version \(version) (this build reads 1)") }
            let flags = reader.u16()
            guard flags == 0 else { throw corrupt(6, "unknown flags \(hex(flags))") }
            let bodyEnd = encoded.count - trailerSize
            var trailer = ByteReader(buffer)
            trailer.position = bodyEnd
            let stored = trailer.u32()
            let computed = memsnap_crc32c(0, buffer.baseAddress, bodyEnd)
            guard stored == computed else {
                throw corrupt(bodyEnd, "checksum mismatch (stored \(hex(stored)), computed \(hex(computed)))")
            }
            let count = Int(reader.u32())  // a UInt32: always fits
            let reserved = reader.u32()
            guard reserved == 0 else { throw corrupt(12, "reserved header bytes are not zero") }
            let room = (bodyEnd - batchHeaderSize) / diffHeaderSize
            guard count <= room else {
                throw corrupt(8, "count \(count) is more than the \(room) diff headers the \(bodyEnd - batchHeaderSize) "
                    + "bytes after the header can hold")
            }
            var diffs: [SnapshotDiff] = []
            diffs.reserveCapacity(count)
            for index in 0..<count {
                let start = reader.position
                guard bodyEnd - start >= diffHeaderSize else {
                    throw corrupt(start, "diff \(index) of \(count): header runs past the end")
                }
                let offset = reader.u64()
                let length = reader.u64()
                let rawType = reader.u8()
                let rawOperation = reader.u8()
                let diffReserved = reader.u16()
                guard let dataType = MergeDataType(rawValue: rawType) else {
                    throw corrupt(start + 16, "diff \(index): unknown data type \(rawType)")
                }
                guard let operation = MergeOperation(rawValue: rawOperation) else {
                    throw corrupt(start + 17, "diff \(index): unknown operation \(rawOperation)")
                }
                guard diffReserved == 0 else { throw corrupt(start + 18, "diff \(index): reserved bytes are not zero") }
                guard let snapshotOffset = Int(exactly: offset) else {
                    throw corrupt(start, "diff \(index): offset \(offset) is above 2^63 - 1")
                }
                let remaining = bodyEnd - reader.position
                guard let byteCount = Int(exactly: length), byteCount <= remaining else {
                    throw corrupt(start + 8, "diff \(index): length \(length) runs past the end of the batch "
                        + "(\(remaining) bytes left)")
                }
                guard !snapshotOffset.addingReportingOverflow(byteCount).overflow else {
                    throw corrupt(start, "diff \(index): offset \(offset) + length \(length) is above 2^63 - 1")
                }
                if operation.isArithmetic {
                    guard dataType.isNumeric else {
                        throw corrupt(start + 16, "diff \(index): \(operation) needs a numeric data type, not \(dataType)")
                    }
                    guard byteCount % dataType.width == 0 else {
                        throw corrupt(start + 8, "diff \(index): \(operation) of \(length) bytes is not a whole number "
                            + "of \(dataType.width)-byte \(dataType) values")
                    }
                }
                let bytes = encoded[reader.position..<reader.position + byteCount]  // a slice: no copy
                reader.position += byteCount
                diffs.append(SnapshotDiff(offset: snapshotOffset, dataType: dataType, operation: operation, bytes: bytes))
            }
            guard reader.position == bodyEnd else {
                throw corrupt(reader.position, "\(bodyEnd - reader.position) bytes after the last of \(count) diffs")
            }
            return diffs
        }
    }
}

func hex<T: FixedWidthInteger>(_ value: T) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: Swift.max(0, T.bitWidth / 4 - digits.count)) + digits
}
