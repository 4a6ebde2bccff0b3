import CMemSnapCodecs
import MemSnap


/// The checkpoint file format, versions 1 and 2. docs/FORMAT.md describes them byte by byte.
///
/// Version 2 adds, in the header's and footer's reserved bytes, flags and a parent's identity,
/// and an image map section before the footer (whose footer is 8 bytes longer). Version 1 files
/// are read exactly as before.
enum CheckpointFormat {
    static let magic: UInt64 = 0x3130_5450_4B43_534D  // "MSCKPT01"
    /// The version a reader of version 1 alone knew; `CheckpointFooter` of version 1 uses it.
    static let version: UInt16 = 1
    /// The version writers produce by default.
    static let currentVersion: UInt16 = 2
    static let versions: ClosedRange<UInt16> = 1...2
    static let headerSize = 64
    static let frameHeaderSize = 48
    static let frameMagic: UInt32 = 0x4D41_5246  // "FRAM"
    static let indexMagic: UInt32 = 0x5844_4E49  // "INDX"
    static let indexEntrySize = 40
    static let footerMagic: UInt32 = 0x544F_4F46  // "FOOT"
    /// The version-1 footer; version 2's is `footerSize(version: 2)`, 88 bytes.
    static let footerSize = 80
    static func footerSize(version: UInt16) -> Int { version == 1 ? 80 : 88 }
    static let mapMagic: UInt32 = 0x5041_4D49  // "IMAP"
    /// The unit of changed pages and page hashes.
    static let pageSize = 4096
    /// Page numbers and counts in an image map stay at or below this (every page of an image
    /// of up to `Int.max` bytes), so sums of them never overflow `Int`.
    static let maxPageCount = Int.max / pageSize + 1
    static let maxParentNameLength = 255
    static let arenaStateSize = 40 + 32 * 8
    /// Pages of `imageSize` bytes, the last one possibly partial.
    static func pageCount(_ imageSize: Int) -> Int { imageSize / pageSize + (imageSize % pageSize == 0 ? 0 : 1) }
    /// The byte offset where page `page` starts, `Int.max` when that is past `Int.max` (the end
    /// of the last page of the largest images).
    static func byteOffset(ofPage page: Int) -> Int {
        let (offset, overflow) = max(0, page).multipliedReportingOverflow(by: pageSize)
        return overflow ? Int.max : offset
    }
    /// Bytes of page `page` in an image of `imageSize` bytes (0 past the end).
    static func pageLength(_ page: Int, imageSize: Int) -> Int {
        let start = byteOffset(ofPage: page)
        return start >= imageSize ? 0 : min(pageSize, imageSize - start)
    }
    static let extentEntrySize = 24
    /// Upper bounds a reader enforces before allocating anything.
    static let maxInfoLength = 1 << 20
    static let maxChunkSize = 64 << 20
    /// A frame's raw payload (extent table plus bytes) never exceeds twice the chunk size: the
    /// planner closes frames before that, and readers refuse more before allocating anything.
    static func maxRawSize(chunkSize: Int) -> Int { 2 * chunkSize }

    static func xxh3(_ bytes: UnsafeRawBufferPointer) -> UInt64 { memsnap_xxh3(bytes.baseAddress, bytes.count) }
    static func xxh3(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { xxh3($0) } }
}

func corrupt(_ operation: String, _ text: String) -> MemSnapError {
    MemSnapError(operation, .corrupt(text))
}

/// Byte sizes in messages: "8.0 MiB" for large offsets, exact bytes below 1 KiB.
func at(_ offset: Int) -> String { offset < 1024 ? "offset \(offset)" : "offset \(ByteCount(offset)) (\(offset))" }

extension ByteWriter {
    /// Appends XXH3 of everything written so far.
    mutating func checksum() { u64(CheckpointFormat.xxh3(bytes)) }
}

/// The fixed 64-byte header at offset 0. Version 2 uses the reserved bytes of version 1 for
/// flags (32) and the parent's identity (40: low then high half).
struct CheckpointHeader: Equatable {
    var version: UInt16 = CheckpointFormat.version
    var style: CheckpointStyle
    var codec: CheckpointCodec
    var level: Int32
    var chunkSize: Int
    var infoLength: Int
    var flags = CheckpointFlags()
    var parent = CheckpointIdentity.none

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.u64(CheckpointFormat.magic)
        writer.u16(version)
        writer.u8(style.rawValue)
        writer.u8(codec.rawValue)
        writer.i32(level)
        writer.u64(UInt64(chunkSize))
        writer.u64(UInt64(infoLength))
        writer.u32(flags.rawValue)
        writer.u32(0)
        writer.u64(parent.low)
        writer.u64(parent.high)
        writer.checksum()
        return writer.bytes
    }

    static func decode(_ bytes: UnsafeRawBufferPointer, during operation: String) throws(MemSnapError) -> CheckpointHeader {
        guard bytes.count >= CheckpointFormat.headerSize else {
            throw corrupt(operation, "header at offset 0: \(bytes.count) bytes, shorter than the \(CheckpointFormat.headerSize)-byte header")
        }
        var reader = ByteReader(bytes)
        guard reader.u64() == CheckpointFormat.magic else {
            throw corrupt(operation, "header at offset 0: wrong magic, not a memsnap checkpoint")
        }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 56, as: UInt64.self))
        guard CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: bytes[0..<56])) == stored else {
            throw corrupt(operation, "header at offset 0: checksum mismatch")
        }
        let version = reader.u16()
        guard CheckpointFormat.versions.contains(version) else {
            throw corrupt(operation, "header at offset 0: unsupported format version \(version) (this build reads 1 and 2)")
        }
        let rawStyle = reader.u8()
        let rawCodec = reader.u8()
        guard let style = CheckpointStyle(rawValue: rawStyle) else { throw corrupt(operation, "header: unknown style \(rawStyle)") }
        guard let codec = CheckpointCodec(rawValue: rawCodec) else { throw corrupt(operation, "header: unknown codec \(rawCodec)") }
        guard (style == .v3) == (codec != .none) else {
            throw corrupt(operation, "header: style \(style) cannot use codec \(codec)")
        }
        let level = reader.i32()
        let chunkSize = reader.u64()
        let infoLength = reader.u64()
        guard chunkSize >= UInt64(Page.size), chunkSize <= UInt64(CheckpointFormat.maxChunkSize),
              chunkSize % UInt64(Page.size) == 0 else {
            throw corrupt(operation, "header: chunk size \(chunkSize) is not a multiple of \(Page.size) up to \(CheckpointFormat.maxChunkSize)")
        }
        guard infoLength <= UInt64(CheckpointFormat.maxInfoLength) else {
            throw corrupt(operation, "header: info length \(infoLength) exceeds \(CheckpointFormat.maxInfoLength)")
        }
        let flags = CheckpointFlags(rawValue: reader.u32())
        let reserved = reader.u32()
        let parentLow = reader.u64(), parentHigh = reader.u64()
        let parent = CheckpointIdentity(high: parentHigh, low: parentLow)
        guard reserved == 0, version >= 2 || (flags.rawValue == 0 && parent == .none) else {
            throw corrupt(operation, "header: reserved bytes are not zero")
        }
        guard flags.isSubset(of: .known) else {
            throw corrupt(operation, "header: unknown flags 0x\(String(flags.subtracting(.known).rawValue, radix: 16))")
        }
        guard flags.contains(.incremental) == (parent != .none) else {
            throw corrupt(operation, "header: " + (parent == .none ? "an incremental checkpoint without a parent identity"
                                                   : "a parent identity without the incremental flag"))
        }
        return CheckpointHeader(version: version, style: style, codec: codec, level: level, chunkSize: Int(chunkSize),
                                infoLength: Int(infoLength), flags: flags, parent: parent)
    }
}

extension CheckpointInfo {
    /// count u32, then per entry key length u16, key, value length u32, value (UTF-8); the
    /// section is followed by its XXH3 (not counted in the header's info length).
    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(UInt32(truncatingIfNeeded: entries.count))  // bounded by CheckpointOptions.validate
        for (key, value) in entries {
            let keyBytes = Array(CheckpointInfo.prefix(key, utf8Bytes: Int(UInt16.max)).utf8)
            let valueBytes = Array(CheckpointInfo.prefix(value, utf8Bytes: 1 << 16).utf8)
            writer.u16(UInt16(keyBytes.count)); writer.raw(keyBytes)
            writer.u32(UInt32(valueBytes.count)); writer.raw(valueBytes)
        }
        return writer.bytes
    }

    /// The longest prefix of whole characters that fits `utf8Bytes`.
    static func prefix(_ text: String, utf8Bytes limit: Int) -> String {
        guard text.utf8.count > limit else { return text }
        var result = ""
        var used = 0
        for character in text {
            let size = character.utf8.count
            if used + size > limit { break }
            result.append(character)
            used += size
        }
        return result
    }

    static func decode(_ bytes: UnsafeRawBufferPointer, checksum: UInt64, during operation: String) throws(MemSnapError) -> CheckpointInfo {
        let where_ = "info section at offset \(CheckpointFormat.headerSize)"
        guard CheckpointFormat.xxh3(bytes) == checksum else { throw corrupt(operation, "\(where_): checksum mismatch") }
        guard bytes.count >= 4 else { throw corrupt(operation, "\(where_): too short") }
        var reader = ByteReader(bytes)
        let count = Int(reader.u32())
        var entries: [(key: String, value: String)] = []
        for index in 0..<count {
            guard bytes.count - reader.position >= 2 else { throw corrupt(operation, "\(where_): entry \(index) runs past the end") }
            let keyLength = Int(reader.u16())
            guard bytes.count - reader.position >= keyLength + 4 else { throw corrupt(operation, "\(where_): entry \(index) runs past the end") }
            let key = String(decoding: reader.slice(keyLength), as: UTF8.self)
            let valueLength = Int(reader.u32())
            guard bytes.count - reader.position >= valueLength else { throw corrupt(operation, "\(where_): entry \(index) runs past the end") }
            entries.append((key, String(decoding: reader.slice(valueLength), as: UTF8.self)))
        }
        guard reader.position == bytes.count else { throw corrupt(operation, "\(where_): \(bytes.count - reader.position) trailing bytes") }
        return CheckpointInfo(entries)
    }
}

/// One frame's 48-byte header, and its entry in the index.
struct FrameRecord: Equatable {
    var index: Int
    var offset: Int  // of the frame header in the file
    var storedSize: Int
    var rawSize: Int
    var extentCount: Int
    var payloadChecksum: UInt64

    var end: Int { offset + CheckpointFormat.frameHeaderSize + storedSize }

    func encodedHeader() -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(CheckpointFormat.frameMagic)
        writer.u32(UInt32(index))
        writer.u64(UInt64(storedSize))
        writer.u64(UInt64(rawSize))
        writer.u32(UInt32(extentCount))
        writer.u32(0)
        writer.u64(payloadChecksum)
        writer.checksum()
        return writer.bytes
    }

    /// Checks the sizes a frame declares against the format's limits, before anything is
    /// allocated for it: raw size at most twice the chunk size, at least 25 bytes per extent
    /// (a 24-byte table entry and one byte), stored size equal to the raw size without a codec
    /// and within the codec's compress bound with one.
    static func validateSizes(
        storedSize: UInt64, rawSize: UInt64, extentCount: UInt64, chunkSize: Int, codec: CheckpointCodec,
        where place: String, during operation: String
    ) throws(MemSnapError) {
        let rawLimit = UInt64(CheckpointFormat.maxRawSize(chunkSize: chunkSize))
        guard rawSize <= rawLimit, extentCount <= rawSize / UInt64(CheckpointFormat.extentEntrySize + 1) else {
            throw corrupt(operation, "\(place): raw size \(rawSize) with \(extentCount) extents is out of range")
        }
        let storedLimit: UInt64
        switch codec {
        case .none: storedLimit = rawSize
        case .lz4: storedLimit = UInt64(LZ4_compressBound(Int32(rawSize)))
        case .zstd: storedLimit = UInt64(ZSTD_compressBound(Int(rawSize)))
        }
        guard codec == .none ? storedSize == rawSize : storedSize <= storedLimit else {
            throw corrupt(operation, "\(place): stored size \(storedSize) does not fit raw size \(rawSize) with codec \(codec)")
        }
    }

    /// Decodes a frame header found at `offset`, checking what can be checked without the payload.
    static func decodeHeader(
        _ bytes: UnsafeRawBufferPointer, at offset: Int, expectedIndex: Int, chunkSize: Int, codec: CheckpointCodec,
        during operation: String
    ) throws(MemSnapError) -> FrameRecord {
        let where_ = "checkpoint frame \(expectedIndex) at \(at(offset))"
        guard bytes.count >= CheckpointFormat.frameHeaderSize else { throw corrupt(operation, "\(where_): header truncated") }
        var reader = ByteReader(bytes)
        guard reader.u32() == CheckpointFormat.frameMagic else { throw corrupt(operation, "\(where_): not a frame header") }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 40, as: UInt64.self))
        guard CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: bytes[0..<40])) == stored else {
            throw corrupt(operation, "\(where_): header checksum mismatch")
        }
        let index = Int(reader.u32())
        guard index == expectedIndex else { throw corrupt(operation, "\(where_): says it is frame \(index)") }
        let storedSize = reader.u64()
        let rawSize = reader.u64()
        let extentCount = Int(reader.u32())
        guard reader.u32() == 0 else { throw corrupt(operation, "\(where_): reserved bytes are not zero") }
        let payloadChecksum = reader.u64()
        try validateSizes(storedSize: storedSize, rawSize: rawSize, extentCount: UInt64(extentCount), chunkSize: chunkSize,
                          codec: codec, where: where_, during: operation)
        return FrameRecord(index: index, offset: offset, storedSize: Int(storedSize), rawSize: Int(rawSize),
                           extentCount: extentCount, payloadChecksum: payloadChecksum)
    }
}

/// The index: every frame's offset, sizes, extent count and checksum.
enum CheckpointIndex {
    static func encoded(_ frames: [FrameRecord]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(CheckpointFormat.indexMagic)
        writer.u32(0)
        writer.u64(UInt64(frames.count))
        for frame in frames {
            writer.u64(UInt64(frame.offset))
            writer.u64(UInt64(frame.storedSize))
            writer.u64(UInt64(frame.rawSize))
            writer.u32(UInt32(frame.extentCount))
            writer.u32(0)
            writer.u64(frame.payloadChecksum)
        }
        writer.checksum()
        return writer.bytes
    }

    static func size(frameCount: Int) -> Int { 16 + frameCount * CheckpointFormat.indexEntrySize + 8 }

    static func decode(
        _ bytes: UnsafeRawBufferPointer, at offset: Int, chunkSize: Int, codec: CheckpointCodec, during operation: String
    ) throws(MemSnapError) -> [FrameRecord] {
        let where_ = "index at \(at(offset))"
        guard bytes.count >= 24 else { throw corrupt(operation, "\(where_): truncated") }
        var reader = ByteReader(bytes)
        guard reader.u32() == CheckpointFormat.indexMagic else { throw corrupt(operation, "\(where_): not an index") }
        guard reader.u32() == 0 else { throw corrupt(operation, "\(where_): reserved bytes are not zero") }
        let count = reader.u64()
        guard count <= UInt64((bytes.count - 24) / CheckpointFormat.indexEntrySize), size(frameCount: Int(count)) == bytes.count else {
            throw corrupt(operation, "\(where_): \(count) frames do not fit its \(bytes.count) bytes")
        }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self))
        guard CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: bytes[0..<bytes.count - 8])) == stored else {
            throw corrupt(operation, "\(where_): checksum mismatch")
        }
        var frames: [FrameRecord] = []
        frames.reserveCapacity(Int(count))
        for index in 0..<Int(count) {
            let frameOffset = reader.u64(), storedSize = reader.u64(), rawSize = reader.u64()
            let extentCount = reader.u32()
            guard reader.u32() == 0 else { throw corrupt(operation, "\(where_): entry \(index): reserved bytes are not zero") }
            let checksum = reader.u64()
            guard frameOffset <= UInt64(Int.max) else { throw corrupt(operation, "\(where_): entry \(index): offset out of range") }
            try FrameRecord.validateSizes(storedSize: storedSize, rawSize: rawSize, extentCount: UInt64(extentCount),
                                          chunkSize: chunkSize, codec: codec, where: "\(where_): entry \(index)", during: operation)
            frames.append(FrameRecord(index: index, offset: Int(frameOffset), storedSize: Int(storedSize), rawSize: Int(rawSize),
                                      extentCount: Int(extentCount), payloadChecksum: checksum))
        }
        return frames
    }
}

/// The footer at the end of the file: the header's settings again, the totals, and where the
/// index (and in version 2, the image map) is; it ends with the inverted magic. 80 bytes in
/// version 1; 88 in version 2, which adds the header's flags (in version 1's reserved word at
/// 12) and the image map's offset (56).
struct CheckpointFooter: Equatable {
    var version: UInt16 = CheckpointFormat.version
    var style: CheckpointStyle
    var codec: CheckpointCodec
    var level: Int32
    var chunkSize: Int
    var imageSize: Int
    var extentBytes: Int
    var frameCount: Int
    var indexOffset: Int  // 0 for v1 (no index)
    var fileSize: Int
    var flags = CheckpointFlags()
    var mapOffset = 0  // version 2 only

    init(version: UInt16 = CheckpointFormat.version, style: CheckpointStyle, codec: CheckpointCodec, level: Int32, chunkSize: Int,
         imageSize: Int, extentBytes: Int, frameCount: Int, indexOffset: Int, fileSize: Int,
         flags: CheckpointFlags = CheckpointFlags(), mapOffset: Int = 0) {
        self.version = version
        self.style = style
        self.codec = codec
        self.level = level
        self.chunkSize = chunkSize
        self.imageSize = imageSize
        self.extentBytes = extentBytes
        self.frameCount = frameCount
        self.indexOffset = indexOffset
        self.fileSize = fileSize
        self.flags = flags
        self.mapOffset = mapOffset
    }

    var size: Int { CheckpointFormat.footerSize(version: version) }

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(CheckpointFormat.footerMagic)
        writer.u16(version)
        writer.u8(style.rawValue)
        writer.u8(codec.rawValue)
        writer.i32(level)
        writer.u32(version >= 2 ? flags.rawValue : 0)
        writer.u64(UInt64(chunkSize))
        writer.u64(UInt64(imageSize))
        writer.u64(UInt64(extentBytes))
        writer.u64(UInt64(frameCount))
        writer.u64(UInt64(indexOffset))
        if version >= 2 { writer.u64(UInt64(mapOffset)) }
        writer.u64(UInt64(fileSize))
        writer.checksum()
        writer.u64(~CheckpointFormat.magic)
        return writer.bytes
    }

    /// Decodes the footer of a file of format `version` (from its header).
    static func decode(
        _ bytes: UnsafeRawBufferPointer, at offset: Int, version: UInt16 = CheckpointFormat.version, during operation: String
    ) throws(MemSnapError) -> CheckpointFooter {
        let where_ = "footer at \(at(offset))"
        let size = CheckpointFormat.footerSize(version: version)
        guard bytes.count == size else { throw corrupt(operation, "\(where_): truncated") }
        var reader = ByteReader(bytes)
        guard UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: size - 8, as: UInt64.self)) == ~CheckpointFormat.magic else {
            throw corrupt(operation, "\(where_): wrong closing magic (truncated or not a checkpoint)")
        }
        guard reader.u32() == CheckpointFormat.footerMagic else { throw corrupt(operation, "\(where_): not a footer") }
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: size - 16, as: UInt64.self))
        guard CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: bytes[0..<size - 16])) == stored else {
            throw corrupt(operation, "\(where_): checksum mismatch")
        }
        guard reader.u16() == version else { throw corrupt(operation, "\(where_): unsupported version") }
        guard let style = CheckpointStyle(rawValue: reader.u8()), let codec = CheckpointCodec(rawValue: reader.u8()) else {
            throw corrupt(operation, "\(where_): unknown style or codec")
        }
        let level = reader.i32()
        let flags = CheckpointFlags(rawValue: reader.u32())
        guard version >= 2 || flags.rawValue == 0 else { throw corrupt(operation, "\(where_): reserved bytes are not zero") }
        let values = (0..<(version >= 2 ? 7 : 6)).map { _ in reader.u64() }
        guard values.allSatisfy({ $0 <= UInt64(Int.max) }) else { throw corrupt(operation, "\(where_): values out of range") }
        return CheckpointFooter(version: version, style: style, codec: codec, level: level, chunkSize: Int(values[0]),
                                imageSize: Int(values[1]), extentBytes: Int(values[2]), frameCount: Int(values[3]),
                                indexOffset: Int(values[4]), fileSize: Int(values[values.count - 1]), flags: flags,
                                mapOffset: version >= 2 ? Int(values[5]) : 0)
    }
}
