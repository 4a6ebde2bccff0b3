import CMemSnapCodecs
import MemSnap

/// Compression of frame payloads. One call per frame, no state across frames, so any thread can
/// handle any frame and the output depends only on the frame's bytes and the settings.
enum FrameCodec {
    /// `raw` compressed with `codec` at `level`.
    /// - Throws: `.invalidArgument` if the compressor fails (it produced nothing for input).
    static func compress(_ raw: UnsafeRawBufferPointer, codec: CheckpointCodec, level: Int32) throws(MemSnapError) -> [UInt8] {
        let stored = compressOrEmpty(raw, codec: codec, level: level)
        guard stored.count > 0 || raw.isEmpty || codec == .none else {
            throw MemSnapError("compress a frame of \(raw.count) bytes with \(codec)",
                               .invalidArgument("the compressor failed"))
        }
        return stored
    }

    /// `raw` compressed with `codec` at `level` into `output` (grown to the codec's bound when
    /// smaller, and reused call after call); returns how many bytes of it were written.
    /// - Throws: `.invalidArgument` if the compressor fails; `.none` is not a compression.
    static func compress(
        _ raw: UnsafeRawBufferPointer, into output: inout [UInt8], codec: CheckpointCodec, level: Int32
    ) throws(MemSnapError) -> Int {
        let bound: Int = switch codec {
        case .none: raw.count
        case .lz4: Int(LZ4_compressBound(Int32(raw.count)))
        case .zstd: ZSTD_compressBound(raw.count)
        }
        if output.count < max(bound, 1) { output = [UInt8](repeating: 0, count: max(bound, 1)) }
        let written = output.withUnsafeMutableBytes { buffer -> Int in
            switch codec {
            case .none:
                if let source = raw.baseAddress, let target = buffer.baseAddress, !raw.isEmpty { target.copyMemory(from: source, byteCount: raw.count) }
                return raw.count
            case .lz4:
                return Int(LZ4_compress_fast(raw.baseAddress?.assumingMemoryBound(to: CChar.self),
                                             buffer.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(raw.count), Int32(bound), level))
            case .zstd:
                let written = ZSTD_compress(buffer.baseAddress, bound, raw.baseAddress, raw.count, level)
                return ZSTD_isError(written) != 0 ? 0 : written
            }
        }
        guard written > 0 || raw.isEmpty || codec == .none else {
            throw MemSnapError("compress a frame of \(raw.count) bytes with \(codec)", .invalidArgument("the compressor failed"))
        }
        return written
    }

    private static func compressOrEmpty(_ raw: UnsafeRawBufferPointer, codec: CheckpointCodec, level: Int32) -> [UInt8] {
        switch codec {
        case .none:
            return [UInt8](raw)
        case .lz4:
            let bound = Int(LZ4_compressBound(Int32(raw.count)))
            return [UInt8](unsafeUninitializedCapacity: max(bound, 1)) { output, count in
                // Frames hold at most twice the 64 MiB chunk size, far inside LZ4's Int32 sizes.
                let destination = UnsafeMutableRawPointer(output.baseAddress)?.assumingMemoryBound(to: CChar.self)
                count = Int(LZ4_compress_fast(
                    raw.baseAddress?.assumingMemoryBound(to: CChar.self), destination, Int32(raw.count), Int32(bound), level))
            }
        case .zstd:
            let bound = ZSTD_compressBound(raw.count)
            return [UInt8](unsafeUninitializedCapacity: max(bound, 1)) { output, count in
                let written = ZSTD_compress(output.baseAddress, bound, raw.baseAddress, raw.count, level)
                count = ZSTD_isError(written) != 0 ? 0 : written
            }
        }
    }

    /// Decompresses `stored` into `output`, which must be exactly the frame's raw size.
    /// - Throws: `.corrupt` if the data does not decompress to exactly that many bytes.
    static func decompress(
        _ stored: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, codec: CheckpointCodec,
        where place: @autoclosure () -> String, during operation: String
    ) throws(MemSnapError) {
        switch codec {
        case .none:
            guard stored.count == output.count else {
                throw corrupt(operation, "\(place()): stored size \(stored.count) differs from raw size \(output.count)")
            }
            if let base = output.baseAddress, let source = stored.baseAddress, !stored.isEmpty {
                base.copyMemory(from: source, byteCount: stored.count)
            }
        case .lz4:
            let produced = LZ4_decompress_safe(
                stored.baseAddress?.assumingMemoryBound(to: CChar.self), output.baseAddress?.assumingMemoryBound(to: CChar.self),
                Int32(stored.count), Int32(output.count))
            guard produced == Int32(output.count) else {
                throw corrupt(operation, "\(place()): lz4 data decompressed to \(produced) bytes, expected \(output.count)")
            }
        case .zstd:
            let produced = ZSTD_decompress(output.baseAddress, output.count, stored.baseAddress, stored.count)
            if ZSTD_isError(produced) != 0 {
                throw corrupt(operation, "\(place()): zstd: \(String(cString: ZSTD_getErrorName(produced)))")
            }
            guard produced == output.count else {
                throw corrupt(operation, "\(place()): zstd data decompressed to \(produced) bytes, expected \(output.count)")
            }
        }
    }
}
