import CMemSnapCodecs
import MemSnap

/// The whole-image digest of a snapshot push (docs/FORMAT.md, "Remote pushes"): XXH3-64 of,
/// for every frame in chunk order, its index (u32 LE) and payload checksum (u64 LE), then the
/// image size (u64 LE). With every frame's own checksum verified, it proves the receiver has
/// exactly the frames the sender made, no more, no fewer, none from another push.
struct ImageDigest {
    private var bytes: [UInt8] = []

    mutating func add(chunk: Int, payloadChecksum: UInt64) {
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: chunk).littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: payloadChecksum.littleEndian) { bytes.append(contentsOf: $0) }
    }

    func finish(imageSize: Int) -> UInt64 {
        var all = bytes
        withUnsafeBytes(of: UInt64(imageSize).littleEndian) { all.append(contentsOf: $0) }
        return all.withUnsafeBytes { memsnap_xxh3($0.baseAddress, $0.count) }
    }
}

/// A set of chunk numbers as PushHeader.frames encodes it: bit i of byte i / 8.
struct ChunkBitmap: Equatable {
    private(set) var bytes: [UInt8]
    let count: Int

    init(count: Int) {
        self.count = count
        bytes = [UInt8](repeating: 0, count: (count + 7) / 8)
    }

    /// nil unless `bytes` is exactly the size for `count` chunks with no bit set past them.
    init?(bytes: [UInt8], count: Int) {
        guard count >= 0, bytes.count == (count + 7) / 8 else { return nil }
        if count % 8 != 0, let last = bytes.last, last >> UInt8(count % 8) != 0 { return nil }
        self.bytes = bytes
        self.count = count
    }

    func contains(_ chunk: Int) -> Bool {
        chunk >= 0 && chunk < count && bytes[chunk / 8] & (1 << UInt8(chunk % 8)) != 0
    }

    mutating func insert(_ chunk: Int) {
        guard chunk >= 0, chunk < count else { return }
        bytes[chunk / 8] |= 1 << UInt8(chunk % 8)
    }

    var members: [Int] { (0..<count).filter(contains) }

    /// Members of `self` that `other` lacks.
    func subtracting(_ other: ChunkBitmap) -> ChunkBitmap {
        var result = ChunkBitmap(count: count)
        for index in result.bytes.indices { result.bytes[index] = bytes[index] & ~(index < other.bytes.count ? other.bytes[index] : 0) }
        return result
    }

    var memberCount: Int { bytes.reduce(0) { $0 + $1.nonzeroBitCount } }
}
