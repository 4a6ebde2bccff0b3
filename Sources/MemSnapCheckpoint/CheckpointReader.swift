#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A checkpoint file opened for reading with pread (never mapped, so a file that shrinks while
/// it is read is a thrown error, not SIGBUS): its header, info, footer and index are read and
/// checked on open (a v1 file's frame headers are walked to build the index).
///
/// Ownership: owns the descriptor (closed in deinit).
/// Thread safety: immutable after open; `verify` and `restore` may run from any thread, and
/// several at once (each restore thread reads its frames into its own buffers).
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
    private let input: InputFile

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

    /// Opens and checks `path`, which must be a regular file (a stream, such as a pipe, is read
    /// with `Checkpoint.restore(readingFrom:into:)` or `Checkpoint.restore(contentsOfFileAt:into:)`).
    /// - Throws: `.systemCall` if it cannot be opened or read; `.invalidArgument` if it is not a
    ///   regular file; `.corrupt` naming the part and offset for a wrong magic, a checksum
    ///   mismatch, a truncated file (also one that shrinks while it is read), an index pointing
    ///   outside the file, or frames that do not tile the data section.
    public convenience init(path: String) throws(MemSnapError) {
        let operation = "open checkpoint \(path)"
        let input = try InputFile(path: path, blocking: false, during: operation)
        guard input.isRegular else {
            throw MemSnapError(operation, .invalidArgument(
                "not a regular file (a pipe or a device): read it as a stream (Checkpoint.restore(readingFrom:into:))"))
        }
        try self.init(input: input, during: operation)
    }

    /// Checks the already opened regular file `input` and takes it over.
    init(input: InputFile, during operation: String) throws(MemSnapError) {
        let size = input.size
        let minimum = CheckpointFormat.headerSize + 8 + CheckpointFormat.footerSize
        guard size >= minimum else {
            throw corrupt(operation, "\(size) bytes is shorter than the smallest checkpoint (\(minimum)): truncated")
        }
        (style, codec, level, chunkSize, info, imageSize, extentBytes, frames) =
            try CheckpointFile.parse(input, during: operation)
        self.path = input.path
        self.fileSize = size
        self.input = input
    }

    private static func parse(_ input: InputFile, during operation: String) throws(MemSnapError) -> (
        CheckpointStyle, CheckpointCodec, Int32, Int, CheckpointInfo, Int, Int, [FrameRecord]
    ) {
        let size = input.size
        let headerBytes = try input.read(CheckpointFormat.headerSize, at: 0, place: "header at offset 0", during: operation)
        let header = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in try CheckpointHeader.decode(bytes, during: operation) }
        let footerOffset = size - CheckpointFormat.footerSize
        let footerBytes = try input.read(CheckpointFormat.footerSize, at: footerOffset, place: "footer at \(at(footerOffset))",
                                         during: operation)
        let footer = try withBytes(footerBytes) { (bytes) throws(MemSnapError) in
            try CheckpointFooter.decode(bytes, at: footerOffset, during: operation)
        }
        guard footer.fileSize == size else {
            throw corrupt(operation, "footer at \(at(footerOffset)): records \(footer.fileSize) bytes but the file has \(size)")
        }
        guard footer.style == header.style, footer.codec == header.codec, footer.level == header.level,
              footer.chunkSize == header.chunkSize else {
            throw corrupt(operation, "footer at \(at(footerOffset)): settings differ from the header")
        }
        // infoLength is at most 1 MiB (checked by the header), so none of this overflows.
        let infoEnd = CheckpointFormat.headerSize + header.infoLength
        let dataStart = infoEnd + 8
        guard dataStart <= footerOffset else { throw corrupt(operation, "info section runs past the footer") }
        let infoBytes = try input.read(header.infoLength + 8, at: CheckpointFormat.headerSize,
                                       place: "info section at offset \(CheckpointFormat.headerSize)", during: operation)
        let info = try withBytes(infoBytes) { (bytes) throws(MemSnapError) in
            try CheckpointInfo.decode(UnsafeRawBufferPointer(rebasing: bytes[0..<header.infoLength]),
                                      checksum: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: header.infoLength, as: UInt64.self)),
                                      during: operation)
        }
        var frames: [FrameRecord]
        let dataEnd: Int
        if header.style == .v1 {
            guard footer.indexOffset == 0 else { throw corrupt(operation, "footer: a v1 stream has no index") }
            frames = []
            var position = dataStart
            while position < footerOffset {
                let place = "checkpoint frame \(frames.count) at \(at(position))"
                guard footerOffset - position >= CheckpointFormat.frameHeaderSize else {
                    throw corrupt(operation, "\(place): header truncated")
                }
                let headerBytes = try input.read(CheckpointFormat.frameHeaderSize, at: position, place: place, during: operation)
                let frame = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in
                    try FrameRecord.decodeHeader(bytes, at: position, expectedIndex: frames.count, chunkSize: header.chunkSize,
                                                 codec: header.codec, during: operation)
                }
                // The stored size is at most a compress bound of twice 64 MiB (checked), so `end` cannot overflow.
                guard frame.end <= footerOffset else {
                    throw corrupt(operation, "\(place): payload runs past the end (truncated)")
                }
                frames.append(frame)
                position = frame.end
            }
            dataEnd = position
        } else {
            guard footer.indexOffset >= dataStart, footer.indexOffset <= footerOffset else {
                throw corrupt(operation, "footer: index offset \(footer.indexOffset) points outside the data section")
            }
            // Check the index's length against the frames it could list before reading it, so a
            // damaged footer cannot make this allocate more than the data section could need.
            let indexLength = footerOffset - footer.indexOffset
            let entriesLength = indexLength - CheckpointIndex.size(frameCount: 0)
            guard entriesLength >= 0, entriesLength % CheckpointFormat.indexEntrySize == 0,
                  entriesLength / CheckpointFormat.indexEntrySize <= (footer.indexOffset - dataStart) / CheckpointFormat.frameHeaderSize else {
                throw corrupt(operation, "index at \(at(footer.indexOffset)): \(indexLength) bytes cannot be the index of the "
                              + "\(footer.indexOffset - dataStart)-byte data section before it")
            }
            let place = "index at \(at(footer.indexOffset))"
            let indexBuffer = ReusableBuffer()
            let indexBytes = try indexBuffer.bytes(count: indexLength, during: "\(operation): \(place)")
            try input.read(into: indexBytes, at: footer.indexOffset, place: place, during: operation)
            frames = try CheckpointIndex.decode(UnsafeRawBufferPointer(indexBytes), at: footer.indexOffset, chunkSize: header.chunkSize,
                                                codec: header.codec, during: operation)
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

    /// Reads, decompresses and checks every frame without writing anything, including that no
    /// two extents overlap, within a frame or across frames.
    /// - Throws: `.invalidArgument` for a thread count outside 1...256; the first `.corrupt` by
    ///   frame order (a file that shrank since it was opened: "truncated while reading: the file
    ///   shrank"); `.systemCall` for a failed read or buffer allocation.
    public func verify(threads: Int = 2) throws(MemSnapError) {
        try process(threads: threads, target: nil, progress: nil)
    }

    /// Restores every extent into `target` with `threads` threads (a work queue over frames; any
    /// thread count, whatever the checkpoint was written with), then commits the target. Nothing
    /// is committed unless every frame verified and no two extents overlap; on error the target
    /// is discarded (`CheckpointRestoreTarget.discard()`) and never committed.
    /// - Throws: as `verify`, plus whatever the target's `prepare`, `write` and `commit` throw.
    public func restore(
        into target: CheckpointRestoreTarget, threads: Int = 2,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) {
        guard (1...256).contains(threads) else {
            throw MemSnapError("restore checkpoint \(path)", .invalidArgument("thread count \(threads) must be 1...256"))
        }
        do throws(MemSnapError) {
            try target.prepare(imageSize: imageSize)
            try process(threads: threads, target: target, progress: progress)
            try target.commit(imageSize: imageSize)
        } catch {
            target.discard()
            throw error
        }
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
        let coverage = Locked(ExtentCoverage())
        let context = FrameContext(file: self, target: target, operation: operation)
        let totalRaw = frames.reduce(0) { $0 &+ $1.rawSize }  // each is at most 2 x chunk size (checked on open)
        try ParallelWork.run(threads: min(threads, max(1, frames.count))) { _ in
            let workspace = FrameWorkspace()
            var covered = ExtentCoverage()
            while let index = counter.claim() {
                if let failed = failures.withLock({ $0 }), failed.frame < index { break }
                do throws(MemSnapError) {
                    let bytes = try context.restoreFrame(index, workspace: workspace, coverage: &covered)
                    let done = restored.withLock { totals in
                        totals.extentBytes &+= bytes
                        totals.rawBytes &+= context.file.frames[index].rawSize
                        return totals.rawBytes
                    }
                    progress?(CheckpointProgress(bytesDone: done, bytesTotal: totalRaw))
                } catch {
                    failures.withLock { current in
                        if let current, current.frame < index { return }
                        current = (index, error)
                    }
                }
            }
            let finished = covered
            coverage.withLock { $0.merge(finished) }
        }
        if let failed = failures.withLock({ $0 }) { throw failed.error }
        try coverage.withLock { $0 }.checkDisjoint(place: { "checkpoint frame \($0) at \(at(frames[$0].offset))" }, during: operation)
        let stored = restored.withLock { $0.extentBytes }
        guard stored == extentBytes else {
            throw corrupt(operation, "frames hold \(stored) extent bytes, the footer records \(extentBytes)")
        }
    }
}

/// One restore thread's buffers, reused from frame to frame: the frame as read (header and
/// stored payload), and its decompressed payload (v3 only).
private final class FrameWorkspace {
    let stored = ReusableBuffer()
    let raw = ReusableBuffer()
}

/// What a restore thread needs; the file and target outlive the threads.
private struct FrameContext: @unchecked Sendable {
    let file: CheckpointFile
    let target: CheckpointRestoreTarget?
    let operation: String

    /// Reads, checks, decompresses and (with a target) writes frame `index`; returns its extent
    /// bytes and adds its extents to `coverage`.
    func restoreFrame(_ index: Int, workspace: FrameWorkspace, coverage: inout ExtentCoverage) throws(MemSnapError) -> Int {
        let expected = file.frames[index]
        let place = "checkpoint frame \(index) at \(at(expected.offset))"
        // The frame's sizes were checked on open: 48 + stored size, within the file.
        let frameBytes = try workspace.stored.bytes(count: CheckpointFormat.frameHeaderSize + expected.storedSize,
                                                    during: "\(operation): \(place)")
        try file.readFrame(into: frameBytes, at: expected.offset, place: place, during: operation)
        let header = try FrameRecord.decodeHeader(
            UnsafeRawBufferPointer(rebasing: frameBytes[0..<CheckpointFormat.frameHeaderSize]),
            at: expected.offset, expectedIndex: index, chunkSize: file.chunkSize, codec: file.codec, during: operation)
        guard header == expected else { throw corrupt(operation, "\(place): header disagrees with the index") }
        let payload = UnsafeRawBufferPointer(rebasing: frameBytes[CheckpointFormat.frameHeaderSize...])
        guard CheckpointFormat.xxh3(payload) == expected.payloadChecksum else {
            throw corrupt(operation, "\(place): checksum mismatch")
        }
        let raw: UnsafeRawBufferPointer
        if file.codec == .none {
            raw = payload  // stored size equals raw size without a codec (checked on open)
        } else {
            let output = try workspace.raw.bytes(count: expected.rawSize, during: "\(operation): \(place)")
            try FrameCodec.decompress(payload, into: output, codec: file.codec, where: place, during: operation)
            raw = UnsafeRawBufferPointer(output)
        }
        return try applyExtents(raw, count: expected.extentCount, frame: index, imageSize: file.imageSize, target: target,
                                coverage: &coverage, place: place, operation: operation)
    }
}

extension CheckpointFile {
    fileprivate func readFrame(
        into buffer: UnsafeMutableRawBufferPointer, at offset: Int, place: String, during operation: String
    ) throws(MemSnapError) {
        try input.read(into: buffer, at: offset, place: place, during: operation)
    }
}

/// Parses a frame's raw payload (extent table, then data), checks it, adds its extents to
/// `coverage` and writes each extent to `target`. Returns the extent bytes. Every length and
/// offset is checked before anything is written.
func applyExtents(
    _ raw: UnsafeRawBufferPointer, count: Int, frame: Int, imageSize: Int?, target: CheckpointRestoreTarget?,
    coverage: inout ExtentCoverage, place: String, operation: String
) throws(MemSnapError) -> Int {
    // count is at most raw size / 25 (checked with the frame header), so this cannot overflow.
    let tableSize = count * CheckpointFormat.extentEntrySize
    guard count >= 0, tableSize <= raw.count else { throw corrupt(operation, "\(place): extent table runs past the frame") }
    var reader = ByteReader(raw)
    var extents: [(tag: UInt64, offset: Int, length: Int)] = []
    extents.reserveCapacity(count)
    var total = 0
    for entry in 0..<count {
        let tag = reader.u64(), offset = reader.u64(), length = reader.u64()
        guard offset <= UInt64(Int.max), length <= UInt64(raw.count), offset <= UInt64(Int.max) - length else {
            throw corrupt(operation, "\(place): extent \(entry) has an impossible offset or length")
        }
        if let imageSize, offset + length > UInt64(imageSize) {
            throw corrupt(operation, "\(place): extent \(entry) ends at \(offset + length), past the image size \(imageSize)")
        }
        extents.append((tag, Int(offset), Int(length)))
        total += Int(length)  // at most count x raw size: far from overflowing
    }
    guard !reader.overran, tableSize + total == raw.count else {
        throw corrupt(operation, "\(place): extents hold \(total) bytes but the frame has \(raw.count - tableSize)")
    }
    // No two extents may overlap: not in one frame (checked here), nor across frames (the
    // coverage, checked before anything is committed), so the result never depends on which
    // restore thread writes first.
    // Empty extents cover nothing; sorted non-empty ones overlap only if two neighbours do.
    var sorted = extents.filter { $0.length > 0 }
    if !sorted.indices.dropFirst().allSatisfy({ (sorted[$0 - 1].tag, sorted[$0 - 1].offset) <= (sorted[$0].tag, sorted[$0].offset) }) {
        sorted.sort { ($0.tag, $0.offset) < ($1.tag, $1.offset) }
    }
    for (previous, next) in zip(sorted, sorted.dropFirst()) where previous.tag == next.tag && previous.offset + previous.length > next.offset {
        throw corrupt(operation, "\(place): extents overlap at offset \(next.offset) of tag \(next.tag)")
    }
    coverage.add(frame: frame, sortedExtents: sorted)
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
