import MemSnap

/// Checkpoint frames as a unit of transfer: the remote snapshot service (MemSnapRemote) sends a
/// snapshot image as one frame per chunk, each checked on its own by the receiver, in any order.
///
/// The frame is the checkpoint file's (docs/FORMAT.md, "Frame": a 48-byte header with sizes
/// and checksums, then the stored payload), with one more rule: frame i holds the nonzero pages
/// of chunk i of the image (bytes `i * chunkSize ..< (i + 1) * chunkSize`) and nothing outside
/// it, so frames never overlap and an all-zero chunk has no frame.
///
/// Thread safety: stateless; call from any thread.
package enum CheckpointFrames {
    /// Chunk sizes a transfer may use: a multiple of the page size from 64 KiB to 16 MiB.
    package static let chunkSizes = (64 << 10)...(16 << 20)

    /// Buffers `encode` reuses frame after frame: one per thread encoding.
    package struct EncodeScratch {
        var raw: [UInt8] = []
        var stored: [UInt8] = []

        package init() {}
    }

    /// Frame `chunk` of `image`, handed to `emit` as its 48-byte header and its stored payload
    /// (both valid during the call only) with the payload checksum; nil without calling `emit`
    /// when the chunk is all zero pages. `image` is only read, during the call.
    /// - Throws: `.invalidArgument` for a chunk outside the image or a bad chunk size;
    ///   `.invalidArgument` if the compressor fails.
    package static func encode<Result>(
        chunk: Int, of image: UnsafeRawBufferPointer, chunkSize: Int, codec: CheckpointCodec, level: Int32,
        scratch: inout EncodeScratch,
        emit: (_ header: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer, _ payloadChecksum: UInt64) -> Result
    ) throws(MemSnapError) -> Result? {
        let operation = "encode chunk \(chunk) of a \(ByteCount(image.count)) image"
        try validate(chunkSize: chunkSize, during: operation)
        let chunkCount = (image.count + chunkSize - 1) / chunkSize
        guard chunk >= 0, chunk < chunkCount, let base = image.baseAddress else {
            throw MemSnapError(operation, .invalidArgument("the image has \(chunkCount) chunks"))
        }
        let start = chunk * chunkSize
        let bytes = UnsafeRawBufferPointer(start: base + start, count: min(chunkSize, image.count - start))
        var planner = FramePlanner(chunkSize: chunkSize)
        let frames = planner.add(CheckpointExtent(offset: UInt64(start), bytes: bytes)) + planner.finish()
        // The planner cuts at absolute chunk multiples, so one chunk is at most one frame.
        guard let pieces = frames.first else { return nil }
        // The payload before compression: the extent table, then the pieces' bytes.
        let table = FrameEncoder.table(pieces)
        let rawSize = pieces.reduce(table.count) { $0 + $1.bytes.count }
        if scratch.raw.count < rawSize { scratch.raw = [UInt8](repeating: 0, count: rawSize) }
        scratch.raw.withUnsafeMutableBytes { raw in
            guard let target = raw.baseAddress else { return }
            var position = 0
            table.withUnsafeBytes { if let source = $0.baseAddress { target.copyMemory(from: source, byteCount: $0.count) } }
            position += table.count
            for piece in pieces {
                if let source = piece.bytes.baseAddress { (target + position).copyMemory(from: source, byteCount: piece.bytes.count) }
                position += piece.bytes.count
            }
        }
        let storedSize = try withBytes(scratch.raw) { (raw) throws(MemSnapError) in
            try FrameCodec.compress(UnsafeRawBufferPointer(rebasing: raw[0..<rawSize]), into: &scratch.stored, codec: codec, level: level)
        }
        return scratch.stored.withUnsafeBytes { stored in
            let payload = UnsafeRawBufferPointer(rebasing: stored[0..<storedSize])
            let checksum = CheckpointFormat.xxh3(payload)
            let record = FrameRecord(index: chunk, offset: 0, storedSize: storedSize, rawSize: rawSize,
                                     extentCount: pieces.count, payloadChecksum: checksum)
            return record.encodedHeader().withUnsafeBytes { header in emit(header, payload, checksum) }
        }
    }

    /// `encode` into a new array (header, then payload), with fresh buffers.
    package static func encode(
        chunk: Int, of image: UnsafeRawBufferPointer, chunkSize: Int, codec: CheckpointCodec, level: Int32
    ) throws(MemSnapError) -> (bytes: [UInt8], payloadChecksum: UInt64)? {
        var scratch = EncodeScratch()
        return try encode(chunk: chunk, of: image, chunkSize: chunkSize, codec: codec, level: level, scratch: &scratch) { header, payload, checksum in
            ([UInt8](header) + [UInt8](payload), checksum)
        }
    }

    /// Checks a received frame and hands each of its extents to `write(offset, bytes)` (the
    /// bytes valid during the call), after checking all of them: the header and its checksum,
    /// the sizes against `chunkSize` and `codec`, the payload checksum, the decompressed size,
    /// the extent table, and that every extent lies inside the frame's own chunk of an image of
    /// `imageSize` bytes. Nothing is written unless the whole frame verifies.
    /// `scratch` holds the decompressed payload: pass the same array frame after frame and it
    /// is allocated once (it grows to the largest payload, at most a chunk and its table).
    /// - Returns: the frame's index (its chunk) and payload checksum.
    /// - Throws: `.corrupt` naming what is wrong; `write`'s errors.
    package static func decode(
        _ frame: UnsafeRawBufferPointer, chunkSize: Int, codec: CheckpointCodec, imageSize: Int, scratch: inout [UInt8],
        during operation: String, write: (Int, UnsafeRawBufferPointer) throws(MemSnapError) -> Void
    ) throws(MemSnapError) -> (index: Int, payloadChecksum: UInt64) {
        try validate(chunkSize: chunkSize, during: operation)
        guard imageSize >= 0, frame.count >= CheckpointFormat.frameHeaderSize, let base = frame.baseAddress else {
            throw corrupt(operation, "a frame of \(frame.count) bytes is shorter than its \(CheckpointFormat.frameHeaderSize)-byte header")
        }
        let chunkCount = (imageSize + chunkSize - 1) / chunkSize
        let index = Int(UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
        guard index < chunkCount else {
            throw corrupt(operation, "frame \(index) names a chunk past the image's \(chunkCount)")
        }
        let record = try FrameRecord.decodeHeader(
            UnsafeRawBufferPointer(start: base, count: CheckpointFormat.frameHeaderSize), at: 0, expectedIndex: index,
            chunkSize: chunkSize, codec: codec, during: operation)
        let place = "frame \(index)"
        guard record.storedSize == frame.count - CheckpointFormat.frameHeaderSize else {
            throw corrupt(operation, "\(place): declares \(record.storedSize) stored bytes, carries \(frame.count - CheckpointFormat.frameHeaderSize)")
        }
        let payload = UnsafeRawBufferPointer(start: base + CheckpointFormat.frameHeaderSize, count: record.storedSize)
        guard CheckpointFormat.xxh3(payload) == record.payloadChecksum else { throw corrupt(operation, "\(place): checksum mismatch") }
        // decodeHeader bounded rawSize by the chunk size and its extent table.
        if scratch.count < record.rawSize { scratch = [UInt8](repeating: 0, count: record.rawSize) }
        let chunkStart = index * chunkSize, chunkEnd = min(imageSize, chunkStart + chunkSize)
        try scratch.withUnsafeMutableBytes { whole in
            let buffer = UnsafeMutableRawBufferPointer(rebasing: whole[0..<record.rawSize])
            return Result { () throws(MemSnapError) in
                try FrameCodec.decompress(payload, into: buffer, codec: codec, where: place, during: operation)
                var coverage = ExtentCoverage()
                let target = ChunkCollector(range: chunkStart..<chunkEnd)
                _ = try applyExtents(UnsafeRawBufferPointer(buffer), count: record.extentCount, frame: index, rules: .plain(imageSize: imageSize),
                                     target: target, coverage: &coverage, place: place, operation: operation)
                if let outside = target.outside {
                    throw corrupt(operation, "\(place): an extent at offset \(outside) lies outside its chunk \(chunkStart)..<\(chunkEnd)")
                }
                for extent in target.extents { try write(extent.offset, extent.bytes) }
            }
        }.get()
        return (index, record.payloadChecksum)
    }

    private static func validate(chunkSize: Int, during operation: String) throws(MemSnapError) {
        guard chunkSizes.contains(chunkSize), chunkSize % Page.size == 0 else {
            throw MemSnapError(operation, .invalidArgument("chunk size \(chunkSize) is not a page multiple from 64 KiB to 16 MiB"))
        }
    }
}

/// Collects a frame's extents (their bytes point into the decompressed payload, valid while it
/// is) instead of writing them, and notes any that falls outside the frame's chunk or has a tag
/// other than 0.
private final class ChunkCollector: CheckpointRestoreTarget, @unchecked Sendable {
    let range: Range<Int>
    var extents: [(offset: Int, bytes: UnsafeRawBufferPointer)] = []
    var outside: Int?

    init(range: Range<Int>) { self.range = range }

    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        // `offset + count` cannot overflow: applyExtents checked every extent against the image size.
        guard tag == 0, offset >= range.lowerBound, offset + bytes.count <= range.upperBound else {
            if outside == nil { outside = offset }
            return
        }
        extents.append((offset, bytes))
    }

    func commit(imageSize: Int) throws(MemSnapError) {}
}
