#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint

/// A real checkpoint taken apart into its frames' extents, to be changed by a test and put back
/// together with every checksum re-sealed (frame payload and header, index, image map, footer),
/// so a reader gets past the checksums to the structural check under test. Works for format
/// versions 1 and 2 (whose image map is kept as bytes: `map`, re-sealed by `encoded()`).
struct CraftedCheckpoint {
    struct Extent {
        var tag: UInt64
        var offset: UInt64
        var bytes: [UInt8]
    }

    /// Header and info section (with its checksum), kept as they were.
    var prefix: [UInt8]
    var version: UInt16
    var flags: CheckpointFlags
    /// Version 2: the image map section, its checksum (the last 8 bytes) re-sealed on encoding.
    var map: [UInt8]
    /// Version 2: the footer's flags, when a test wants them to differ from the header's.
    var footerFlags: CheckpointFlags?
    var style: CheckpointStyle
    var codec: CheckpointCodec
    var level: Int32
    var chunkSize: Int
    var imageSize: Int
    var frames: [[Extent]]

    init(path: String) throws {
        let file = try CheckpointFile(path: path)
        let bytes = fileBytes(path)
        let infoLength = bytes.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: 24, as: UInt64.self)) }
        prefix = Array(bytes[0..<CheckpointFormat.headerSize + infoLength + 8])
        version = file.formatVersion
        flags = file.flags
        if version >= 2 {
            let mapOffset = bytes.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: bytes.count - 88 + 56, as: UInt64.self)) }
            map = Array(bytes[mapOffset..<bytes.count - 88])
        } else {
            map = []
        }
        style = file.style
        codec = file.codec
        level = file.level
        chunkSize = file.chunkSize
        imageSize = file.imageSize
        frames = try file.frames.map { frame in
            let stored = Array(bytes[frame.offset + CheckpointFormat.frameHeaderSize..<frame.end])
            var raw = [UInt8](repeating: 0, count: frame.rawSize)
            try stored.withUnsafeBytes { storedBytes in
                try raw.withUnsafeMutableBytes { rawBytes in
                    try FrameCodec.decompress(storedBytes, into: rawBytes, codec: file.codec, where: "crafting", during: "crafting")
                }
            }
            var extents: [Extent] = []
            var position = frame.extentCount * CheckpointFormat.extentEntrySize
            for entry in 0..<frame.extentCount {
                func field(_ index: Int) -> UInt64 {
                    raw.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: entry * 24 + index * 8, as: UInt64.self) }
                }
                let length = Int(field(2))
                extents.append(Extent(tag: field(0), offset: field(1), bytes: Array(raw[position..<position + length])))
                position += length
            }
            return extents
        }
    }

    /// The whole file, every checksum computed afresh; the footer's extent bytes are the sum of
    /// the frames' extents.
    func encoded() throws -> [UInt8] {
        var bytes = prefix
        var records: [FrameRecord] = []
        var extentBytes = 0
        for (index, extents) in frames.enumerated() {
            var raw = ByteWriter()
            for extent in extents {
                raw.u64(extent.tag)
                raw.u64(extent.offset)
                raw.u64(UInt64(extent.bytes.count))
            }
            for extent in extents { raw.raw(extent.bytes) }
            extentBytes += extents.reduce(0) { $0 + $1.bytes.count }
            let stored = try raw.bytes.withUnsafeBytes { try FrameCodec.compress($0, codec: codec, level: level) }
            let record = FrameRecord(index: index, offset: bytes.count, storedSize: stored.count, rawSize: raw.bytes.count,
                                     extentCount: extents.count, payloadChecksum: CheckpointFormat.xxh3(stored))
            bytes += record.encodedHeader() + stored
            records.append(record)
        }
        let indexOffset = style == .v1 ? 0 : bytes.count
        if style != .v1 { bytes += CheckpointIndex.encoded(records) }
        let mapOffset = bytes.count
        if version >= 2 { bytes += CraftedCheckpoint.sealed(map) }
        let footer = CheckpointFooter(version: version, style: style, codec: codec, level: level, chunkSize: chunkSize, imageSize: imageSize,
                                      extentBytes: extentBytes, frameCount: records.count, indexOffset: indexOffset,
                                      fileSize: bytes.count + CheckpointFormat.footerSize(version: version),
                                      flags: footerFlags ?? flags, mapOffset: version >= 2 ? mapOffset : 0)
        return bytes + footer.encoded()
    }

    /// `section` with its last 8 bytes replaced by the XXH3 of the rest.
    static func sealed(_ section: [UInt8]) -> [UInt8] {
        guard section.count >= 8 else { return section }
        var bytes = section
        let checksum = CheckpointFormat.xxh3(Array(bytes[0..<bytes.count - 8]))
        withUnsafeBytes(of: checksum.littleEndian) { bytes.replaceSubrange(bytes.count - 8..<bytes.count, with: $0) }
        return bytes
    }

    /// Writes `encoded()` to `path` and returns the frame offsets, for expected error texts.
    @discardableResult
    func write(to path: String) throws -> [Int] {
        _ = FileManager.default.createFile(atPath: path, contents: Data(try encoded()))
        return try CheckpointFile(path: path).frames.map(\.offset)
    }
}
