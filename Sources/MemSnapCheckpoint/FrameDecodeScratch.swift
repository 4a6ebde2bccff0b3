import CMemSnapCodecs
import MemSnap

/// What one thread reuses while it decompresses frame after frame: the buffer for the raw
/// payload, and a zstd decompression context (ZSTD_decompress would allocate and free one,
/// about 160 KiB, for every frame).
///
/// Ownership: owns both; released in deinit. Thread safety: none; one per thread.
final class FrameDecodeScratch {
    private let raw = ReusableBuffer()
    private var zstdContext: OpaquePointer?

    init() {}

    deinit {
        if let zstdContext { ZSTD_freeDCtx(zstdContext) }
    }

    /// Decompresses `stored` into the first `rawSize` bytes of the buffer and returns them
    /// (valid until the next call); as `FrameCodec.decompress`, which this is with reused memory.
    /// - Throws: `.corrupt` if the data does not decompress to exactly `rawSize` bytes;
    ///   `.systemCall("mmap")` if the buffer cannot grow; `.invalidArgument` if no zstd context can be had.
    func decompress(
        _ stored: UnsafeRawBufferPointer, rawSize: Int, codec: CheckpointCodec, where place: String, during operation: String
    ) throws(MemSnapError) -> UnsafeRawBufferPointer {
        let output = try raw.bytes(count: rawSize, during: "\(operation): \(place)")
        guard codec == .zstd else {
            try FrameCodec.decompress(stored, into: output, codec: codec, where: place, during: operation)
            return UnsafeRawBufferPointer(output)
        }
        if zstdContext == nil { zstdContext = ZSTD_createDCtx() }
        guard let zstdContext else {
            throw MemSnapError("\(operation): \(place)", .invalidArgument("zstd could not allocate a decompression context"))
        }
        let produced = ZSTD_decompressDCtx(zstdContext, output.baseAddress, output.count, stored.baseAddress, stored.count)
        if ZSTD_isError(produced) != 0 {
            throw corrupt(operation, "\(place): zstd: \(String(cString: ZSTD_getErrorName(produced)))")
        }
        guard produced == output.count else {
            throw corrupt(operation, "\(place): zstd data decompressed to \(produced) bytes, expected \(output.count)")
        }
        return UnsafeRawBufferPointer(output)
    }
}
