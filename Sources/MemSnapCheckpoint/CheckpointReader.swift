#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A checkpoint file opened for reading: mapped read-only, its header, info, footer and index
/// checked on open (a v1 stream's frames are walked to build the index).
///
/// Ownership: owns the mapping (and through it the descriptor).
/// Thread safety: immutable after open; `verify` and `restore` may run from any thread.
public final class CheckpointFile: @unchecked Sendable {
    public let path: String
    public let style: CheckpointStyle
    public let codec: CheckpointCodec
    public let level: Int32
    public let chunkSize: Int
    public let info: CheckpointInfo
    public let imageSize: Int
    public let extentBytes: Int
    public let fileSize: Int
    let frames: [FrameRecord]
    private let mapping: ReadOnlyFileMapping

    public var frameCount: Int { frames.count }

    /// One line of the index, for `memsnap info --verbose 2`.
    public struct FrameSummary: Sendable {
        public let index: Int
        public let offset: Int
        public let storedSize: Int
        public let rawSize: Int
        public let extentCount: Int
        public let checksum: UInt64
    }

    public var frameSummaries: [FrameSummary] {
        frames.map { FrameSummary(index: $0.index, offset: $0.offset, storedSize: $0.storedSize, rawSize: $0.rawSize,
                                  extentCount: $0.extentCount, checksum: $0.payloadChecksum) }
    }

    /// Opens and checks `path`.
    /// - Throws: `.systemCall` if it cannot be opened or mapped; `.corrupt` naming the part and
    ///   offset for a wrong magic, a checksum mismatch, a truncated file, an index pointing
    ///   outside the file, or frames that do not tile the data section.
    public init(path: String) throws(MemSnapError) {
        let operation = "open checkpoint \(path)"
        let mapping = try ReadOnlyFileMapping(path: path)
        let size = mapping.bytes.count
        let minimum = CheckpointFormat.headerSize + 8 + CheckpointFormat.footerSize
        guard size >= minimum else {
            throw corrupt(operation, "\(size) bytes is shorter than the smallest checkpoint (\(minimum)): truncated")
        }
        (style, codec, level, chunkSize, info, imageSize, extentBytes, frames) =
            try CheckpointFile.parse(mapping.bytes, during: operation)
        self.path = path
        self.fileSize = size
        self.mapping = mapping
    }


    private static func parse(_ bytes: UnsafeRawBufferPointer, during operation: String) throws(MemSnapError) -> (
        CheckpointStyle, CheckpointCodec, Int32, Int, CheckpointInfo, Int, Int, [FrameRecord]
    ) {
        let size = bytes.count
        let header = try CheckpointHeader.decode(UnsafeRawBufferPointer(rebasing: bytes[0..<CheckpointFormat.headerSize]), during: operation)
        let footerOffset = size - CheckpointFormat.footerSize
        let footer = try CheckpointFooter.decode(UnsafeRawBufferPointer(rebasing: bytes[footerOffset...]), at: footerOffset, during: operation)
        guard footer.fileSize == size else {
            throw corrupt(operation, "footer at \(at(footerOffset)): records \(footer.fileSize) bytes but the file has \(size)")
        }
        guard footer.style == header.style, footer.codec == header.codec, footer.level == header.level,
              footer.chunkSize == header.chunkSize else {
            throw corrupt(operation, "footer at \(at(footerOffset)): settings differ from the header")
        }
        let infoEnd = CheckpointFormat.headerSize + header.infoLength
        let dataStart = infoEnd + 8
        guard dataStart <= footerOffset else { throw corrupt(operation, "info section runs past the footer") }
        let infoChecksum = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: infoEnd, as: UInt64.self))
        let info = try CheckpointInfo.decode(UnsafeRawBufferPointer(rebasing: bytes[CheckpointFormat.headerSize..<infoEnd]),
                                             checksum: infoChecksum, during: operation)
        var frames: [FrameRecord]
        let dataEnd: Int
        if header.style == .v1 {
            guard footer.indexOffset == 0 else { throw corrupt(operation, "footer: a v1 stream has no index") }
            frames = []
            var position = dataStart
            while position < footerOffset {
                guard footerOffset - position >= CheckpointFormat.frameHeaderSize else {
                    throw corrupt(operation, "checkpoint frame \(frames.count) at \(at(position)): header truncated")
                }
                let frame = try FrameRecord.decodeHeader(
                    UnsafeRawBufferPointer(rebasing: bytes[position..<position + CheckpointFormat.frameHeaderSize]),
                    at: position, expectedIndex: frames.count, chunkSize: header.chunkSize, codec: header.codec, during: operation)
                guard frame.end <= footerOffset else {
                    throw corrupt(operation, "checkpoint frame \(frame.index) at \(at(position)): payload runs past the end (truncated)")
                }
                frames.append(frame)
                position = frame.end
            }
            dataEnd = position
        } else {
            guard footer.indexOffset >= dataStart, footer.indexOffset <= footerOffset else {
                throw corrupt(operation, "footer: index offset \(footer.indexOffset) points outside the data section")
            }
            frames = try CheckpointIndex.decode(UnsafeRawBufferPointer(rebasing: bytes[footer.indexOffset..<footerOffset]),
                                                at: footer.indexOffset, chunkSize: header.chunkSize, codec: header.codec,
                                                during: operation)
            var expected = dataStart
            for frame in frames {
                guard frame.offset == expected, frame.storedSize <= footer.indexOffset - frame.offset - CheckpointFormat.frameHeaderSize else {
                    throw corrupt(operation, "index at \(at(footer.indexOffset)): frame \(frame.index) at \(at(frame.offset)) "
                                  + "does not follow the previous frame or runs past the index")
                }
                expected = frame.end
            }
            dataEnd = expected
            guard dataEnd == footer.indexOffset else {
                throw corrupt(operation, "index at \(at(footer.indexOffset)): frames end at \(at(dataEnd)), not at the index")
            }
        }
        guard frames.count == footer.frameCount else {
            throw corrupt(operation, "footer: records \(footer.frameCount) frames, found \(frames.count)")
        }
        return (header.style, header.codec, header.level, header.chunkSize, info, footer.imageSize, footer.extentBytes, frames)
    }

    /// Decompresses and checks every frame without writing anything.
    /// - Throws: the first `.corrupt` by frame order.
    public func verify(threads: Int = 2) throws(MemSnapError) {
        try process(threads: threads, target: nil, progress: nil)
    }

    /// Restores every extent into `target` with `threads` threads (a work queue over frames; any
    /// thread count, whatever the checkpoint was written with), then commits the target. Nothing
    /// is committed unless every frame verified; on error the target is left uncommitted.
    public func restore(
        into target: CheckpointRestoreTarget, threads: Int = 2,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) {
        guard (1...256).contains(threads) else {
            throw MemSnapError("restore checkpoint \(path)", .invalidArgument("thread count \(threads) must be 1...256"))
        }
        try target.prepare(imageSize: imageSize)
        try process(threads: threads, target: target, progress: progress)
        try target.commit(imageSize: imageSize)
    }

    private func process(
        threads: Int, target: CheckpointRestoreTarget?, progress: (@Sendable (CheckpointProgress) -> Void)?
    ) throws(MemSnapError) {
        let operation = target == nil ? "verify checkpoint \(path)" : "restore checkpoint \(path)"
        guard (1...256).contains(threads) else {
            throw MemSnapError(operation, .invalidArgument("thread count \(threads) must be 1...256"))
        }
        let counter = ParallelWork.Counter(count: frames.count)
        let failures = Locked<(frame: Int, error: MemSnapError)?>(nil)
        let restored = Locked((extentBytes: 0, rawBytes: 0))
        let context = FrameContext(file: self, target: target, operation: operation)
        let totalRaw = frames.reduce(0) { $0 &+ $1.rawSize }  // each is at most 2 x chunk size (checked on open)
        try ParallelWork.run(threads: min(threads, max(1, frames.count))) { _ in
            var buffer: [UInt8] = []
            while let index = counter.claim() {
                if let failed = failures.withLock({ $0 }), failed.frame < index { return }
                do throws(MemSnapError) {
                    let bytes = try context.restoreFrame(index, buffer: &buffer)
                    let done = restored.withLock { totals in
                        totals.extentBytes += bytes
                        totals.rawBytes += context.file.frames[index].rawSize
                        return totals.rawBytes
                    }
                    progress?(CheckpointProgress(bytesDone: done, bytesTotal: totalRaw))
                } catch {
                    failures.withLock { current in
                        if current == nil || current!.frame > index { current = (index, error) }
                    }
                }
            }
        }
        if let failed = failures.withLock({ $0 }) { throw failed.error }
        let stored = restored.withLock { $0.extentBytes }
        guard stored == extentBytes else {
            throw corrupt(operation, "frames hold \(stored) extent bytes, the footer records \(extentBytes)")
        }
    }

    fileprivate func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: mapping.bytes[range])
    }
}

/// What a restore thread needs; the file and target outlive the threads.
private struct FrameContext: @unchecked Sendable {
    let file: CheckpointFile
    let target: CheckpointRestoreTarget?
    let operation: String

    /// Checks, decompresses and (with a target) writes frame `index`; returns its extent bytes.
    func restoreFrame(_ index: Int, buffer: inout [UInt8]) throws(MemSnapError) -> Int {
        let expected = file.frames[index]
        let place = "checkpoint frame \(index) at \(at(expected.offset))"
        let header = try FrameRecord.decodeHeader(
            file.bytes(expected.offset..<expected.offset + CheckpointFormat.frameHeaderSize),
            at: expected.offset, expectedIndex: index, chunkSize: file.chunkSize, codec: file.codec, during: operation)
        guard header == expected else { throw corrupt(operation, "\(place): header disagrees with the index") }
        let payload = file.bytes(expected.offset + CheckpointFormat.frameHeaderSize..<expected.end)
        guard CheckpointFormat.xxh3(payload) == expected.payloadChecksum else {
            throw corrupt(operation, "\(place): checksum mismatch")
        }
        if buffer.count < expected.rawSize { buffer = [UInt8](repeating: 0, count: expected.rawSize) }
        return try buffer.withUnsafeMutableBytes { raw in
            Result { () throws(MemSnapError) -> Int in
                let output = UnsafeMutableRawBufferPointer(rebasing: raw[0..<expected.rawSize])
                try FrameCodec.decompress(payload, into: output, codec: file.codec, where: place, during: operation)
                return try applyExtents(UnsafeRawBufferPointer(output), count: expected.extentCount,
                                        imageSize: file.imageSize, target: target, place: place, operation: operation)
            }
        }.get()
    }
}

/// Parses a frame's raw payload (extent table, then data) and writes each extent to `target`.
/// Returns the extent bytes. Every length and offset is checked before anything is written.
func applyExtents(
    _ raw: UnsafeRawBufferPointer, count: Int, imageSize: Int?, target: CheckpointRestoreTarget?,
    place: String, operation: String
) throws(MemSnapError) -> Int {
    let tableSize = count * CheckpointFormat.extentEntrySize
    guard tableSize <= raw.count else { throw corrupt(operation, "\(place): extent table runs past the frame") }
    var reader = ByteReader(raw)
    var extents: [(tag: UInt64, offset: Int, length: Int)] = []
    var total = 0
    for entry in 0..<count {
        let tag = reader.u64(), offset = reader.u64(), length = reader.u64()
        guard offset <= UInt64(Int.max), length <= UInt64(raw.count), offset <= UInt64(Int.max) - length else {
            throw corrupt(operation, "\(place): extent \(entry) has an impossible offset or length")
        }
        if let imageSize, Int(offset + length) > imageSize {
            throw corrupt(operation, "\(place): extent \(entry) ends at \(offset + length), past the image size \(imageSize)")
        }
        extents.append((tag, Int(offset), Int(length)))
        total += Int(length)
    }
    guard tableSize + total == raw.count else {
        throw corrupt(operation, "\(place): extents hold \(total) bytes but the frame has \(raw.count - tableSize)")
    }
    // Extents of one frame never overlap (the planner's pieces are disjoint); overlaps across
    // frames would make a parallel restore's result depend on timing and are documented as
    // unsupported input (a writer of this format never produces them).
    let sorted = extents.sorted { ($0.tag, $0.offset) < ($1.tag, $1.offset) }
    for (previous, next) in zip(sorted, sorted.dropFirst()) where previous.tag == next.tag && previous.offset + previous.length > next.offset {
        throw corrupt(operation, "\(place): extents overlap at offset \(next.offset) of tag \(next.tag)")
    }
    if let target {
        var position = tableSize
        for extent in extents {
            try target.write(tag: extent.tag, offset: extent.offset,
                             bytes: UnsafeRawBufferPointer(rebasing: raw[position..<position + extent.length]))
            position += extent.length
        }
    }
    return total
}
