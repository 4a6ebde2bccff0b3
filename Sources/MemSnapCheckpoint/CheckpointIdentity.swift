import CMemSnapCodecs
import MemSnap

/// What a checkpoint file is, by content: an XXH3-128 over every byte of the file outside its
/// frames' payloads, with each frame represented by its index entry, whose XXH3-64 covers the
/// payload (docs/FORMAT.md, "Identity"). Two files with the same identity hold the same
/// header, info, frames, index, image map and footer; a file changed anywhere either fails a
/// checksum when it is read or gets another identity.
///
/// An incremental checkpoint names its parent by identity, so a chain is checked link by link
/// whatever the files are called. Opening a file computes it (`CheckpointFile.identity`); a
/// writer returns it (`CheckpointSummary.identity`).
///
/// Not a cryptographic digest: it catches a wrong, replaced, modified or damaged file, not an
/// adversary who can write files the reader trusts (such a writer can forge any checkpoint).
public struct CheckpointIdentity: Hashable, Sendable, CustomStringConvertible {
    public let high: UInt64
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// All zeros: what the header holds when a file has no parent.
    static let none = CheckpointIdentity(high: 0, low: 0)

    /// 32 lowercase hexadecimal digits, high half first (XXH128's canonical order).
    public var description: String { hex(high) + hex(low) }

    /// Parses the 32-digit form of `description`; nil for anything else.
    public init?(_ text: String) {
        let digits = Array(text.utf8)
        guard digits.count == 32, let high = UInt64(String(text.prefix(16)), radix: 16),
              let low = UInt64(String(text.suffix(16)), radix: 16) else { return nil }
        self.init(high: high, low: low)
    }

    private func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// Streaming XXH3-128 (seed 0), for identities. Owns its libxxhash state.
final class IdentityHasher {
    private let state: OpaquePointer

    init() {
        state = XXH3_createState()
        XXH3_128bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    func update(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress, !bytes.isEmpty { XXH3_128bits_update(state, base, bytes.count) }
    }

    func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The 40-byte index entry of every frame, as the identity counts frames (the same bytes for
    /// every style, whether the file has an index or not).
    func update(frames: [FrameRecord]) {
        var writer = ByteWriter()
        for frame in frames {
            writer.u64(UInt64(frame.offset))
            writer.u64(UInt64(frame.storedSize))
            writer.u64(UInt64(frame.rawSize))
            writer.u32(UInt32(truncatingIfNeeded: frame.extentCount))
            writer.u32(0)
            writer.u64(frame.payloadChecksum)
            if writer.bytes.count >= 1 << 16 {
                update(writer.bytes)
                writer = ByteWriter()
            }
        }
        update(writer.bytes)
    }

    func digest() -> CheckpointIdentity {
        let value = XXH3_128bits_digest(state)
        return CheckpointIdentity(high: value.high64, low: value.low64)
    }
}
