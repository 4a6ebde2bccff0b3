import MemSnap

/// The rules that tie a checkpoint's parts to each other (docs/FORMAT.md, "Reading"), written
/// once for both readers: `CheckpointFile` (random access with pread; its frames verified by
/// `ChainRestore`) and the one-pass stream restore (`Checkpoint.restore(readingFrom:into:)`).
/// Each reader finds and decodes the parts its own way (the decoders check each part alone) and
/// hands them here, so the same damage fails on the same rule, in the same words, whichever
/// reader meets it. Rules only one reader can check (where the file's index says the frames
/// are, the order of parts in a stream) stay with that reader.
///
/// Thread safety: a value; `verifyFrame` may run on several threads at once, each with its own
/// buffer and coverage.
struct CheckpointStructure {
    /// The header, which every later part must agree with.
    let header: CheckpointHeader

    /// The footer repeats the header's settings.
    func checkSettings(of footer: CheckpointFooter, at offset: Int, during operation: String) throws(MemSnapError) {
        guard footer.style == header.style, footer.codec == header.codec, footer.level == header.level,
              footer.chunkSize == header.chunkSize, footer.flags == header.flags else {
            throw corrupt(operation, "footer at \(at(offset)): settings differ from the header")
        }
    }

    /// The footer records the checkpoint's own size.
    func checkSize(of footer: CheckpointFooter, at offset: Int, actual: Int, during operation: String) throws(MemSnapError) {
        guard footer.fileSize == actual else {
            throw corrupt(operation, "footer at \(at(offset)): records \(footer.fileSize) bytes but the checkpoint has \(actual)")
        }
    }

    /// A v1 checkpoint has no index: its footer's index offset is 0.
    func checkNoIndex(in footer: CheckpointFooter, at offset: Int, during operation: String) throws(MemSnapError) {
        guard header.style != .v1 || footer.indexOffset == 0 else {
            throw corrupt(operation, "footer at \(at(offset)): a v1 stream has no index")
        }
    }

    /// The footer counts the frames found.
    func checkFrameCount(of footer: CheckpointFooter, at offset: Int, found: Int, during operation: String) throws(MemSnapError) {
        guard footer.frameCount == found else {
            throw corrupt(operation, "footer at \(at(offset)): records \(footer.frameCount) frames, found \(found)")
        }
    }

    /// The frames' extents hold as many bytes as the footer records.
    static func checkExtentBytes(
        recorded: Int, found: Int, placePrefix: String = "", during operation: String
    ) throws(MemSnapError) {
        guard recorded == found else {
            throw corrupt(operation, "\(placePrefix)frames hold \(found) extent bytes, the footer records \(recorded)")
        }
    }

    /// A frame's header says what its index entry says.
    func checkFrameHeader(_ frame: FrameRecord, matches entry: FrameRecord, place: String, during operation: String) throws(MemSnapError) {
        guard frame == entry else { throw corrupt(operation, "\(place): header disagrees with the index") }
    }

    /// Verifies a frame's stored payload and applies its extents: the payload checksum, that it
    /// decompresses to exactly the raw size (with `scratch`, reused frame after frame; without a
    /// codec the payload is used as it is), then everything `applyExtents` checks, before it
    /// writes them to `target` (nil to verify only). Returns the frame's extent bytes.
    /// - Throws: `.corrupt` naming `place`; buffer allocation failures; the target's errors.
    func verifyFrame(
        _ frame: FrameRecord, payload: UnsafeRawBufferPointer, scratch: FrameDecodeScratch, rules: ExtentRules,
        target: CheckpointRestoreTarget?, coverage: inout ExtentCoverage, place: String, during operation: String
    ) throws(MemSnapError) -> Int {
        guard payload.count == frame.storedSize, CheckpointFormat.xxh3(payload) == frame.payloadChecksum else {
            throw corrupt(operation, "\(place): checksum mismatch")
        }
        let bytes: UnsafeRawBufferPointer
        if header.codec == .none {
            // Stored size equals raw size without a codec (checked with the frame header).
            guard payload.count == frame.rawSize else {
                throw corrupt(operation, "\(place): stored size \(payload.count) differs from raw size \(frame.rawSize)")
            }
            bytes = payload
        } else {
            bytes = try scratch.decompress(payload, rawSize: frame.rawSize, codec: header.codec, where: place, during: operation)
        }
        return try applyExtents(bytes, count: frame.extentCount, frame: frame.index, rules: rules, target: target,
                                coverage: &coverage, place: place, operation: operation)
    }
}
