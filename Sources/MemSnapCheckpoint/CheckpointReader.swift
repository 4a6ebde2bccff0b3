#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A checkpoint file opened for reading with pread (never mapped, so a file that shrinks while
/// it is read is a thrown error, not SIGBUS): its header, info, footer, index and (version 2)
/// image map are read and checked on open (a v1 file's frame headers are walked to build the
/// index), and its identity is computed.
///
/// An incremental file (`parent` is set) holds only the pages that changed since its parent:
/// `verify` checks it alone, but it restores only with its chain (`CheckpointChain`).
///
/// Ownership: owns the descriptor (closed in deinit).
/// Thread safety: immutable after open; `verify` and `restore` may run from any thread, and
/// several at once (each restore thread reads its frames into its own buffers).
public final class CheckpointFile: @unchecked Sendable {
    public let path: String
    /// 1 or 2 (docs/FORMAT.md); version 1 files have no parent, page hashes or arena state.
    public let formatVersion: UInt16
    public let style: CheckpointStyle
    public let codec: CheckpointCodec
    public let level: Int32
    public let chunkSize: Int
    public let info: CheckpointInfo
    public let imageSize: Int
    public let extentBytes: Int
    public let fileSize: Int
    /// What this file is, by content (see `CheckpointIdentity`).
    public let identity: CheckpointIdentity
    /// The file this one was written over, for an incremental checkpoint; nil for a full one.
    public let parent: CheckpointParent?
    /// What an arena checkpoint recorded besides the heap; nil for other images.
    public let arenaState: CheckpointArenaState?
    let frames: [FrameRecord]
    let flags: CheckpointFlags
    /// The rules shared with the stream reader, with this file's header.
    let structure: CheckpointStructure
    let map: CheckpointImageMap
    private let mapLocation: (offset: Int, checksum: UInt64)?
    private let input: InputFile

    public var frameCount: Int { frames.count }
    public var isIncremental: Bool { parent != nil }
    /// Whether the file stores a hash of every nonzero page it holds (what lets a later
    /// incremental checkpoint find changed pages without reading this file's frames).
    public var hasPageHashes: Bool { flags.contains(.pageHashes) }
    /// An incremental file's changed pages (4096-byte pages, as sorted runs); empty for a full one.
    public var changedPages: [Range<Int>] { map.changedRuns.runs }
    /// The pages that hold a hash (the nonzero pages the file stores), as sorted runs.
    public var hashedPages: [Range<Int>] { map.hashRuns.runs }

    /// One line of the index, for `memsnap info --verbose 2`.
    package struct FrameSummary: Sendable {
        package let index: Int
        package let offset: Int
        package let storedSize: Int
        package let rawSize: Int
        package let extentCount: Int
        package let checksum: UInt64
    }

    package var frameSummaries: [FrameSummary] {
        frames.map { FrameSummary(index: $0.index, offset: $0.offset, storedSize: $0.storedSize, rawSize: $0.rawSize,
                                  extentCount: $0.extentCount, checksum: $0.payloadChecksum) }
    }

    /// Opens and checks `path`, which must be a regular file (a stream, such as a pipe, is read
    /// with `Checkpoint.restore(readingFrom:into:)` or `Checkpoint.restore(contentsOfFileAt:into:)`).
    /// - Throws: `.systemCall` if it cannot be opened or read; `.invalidArgument` if it is not a
    ///   regular file; `.corrupt` naming the part and offset for a wrong magic, a checksum
    ///   mismatch, a truncated file (also one that shrinks while it is read), an index pointing
    ///   outside the file, frames that do not tile the data section, or an image map whose
    ///   counts, runs, name or arena state break the format's limits.
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
        let parsed = try CheckpointFile.parse(input, during: operation)
        formatVersion = parsed.header.version
        style = parsed.header.style
        codec = parsed.header.codec
        level = parsed.header.level
        chunkSize = parsed.header.chunkSize
        flags = parsed.header.flags
        structure = CheckpointStructure(header: parsed.header)
        info = parsed.info
        imageSize = parsed.footer.imageSize
        extentBytes = parsed.footer.extentBytes
        frames = parsed.frames
        identity = parsed.identity
        map = parsed.map
        mapLocation = parsed.mapLocation
        parent = parsed.header.flags.contains(.incremental)
            ? CheckpointParent(identity: parsed.header.parent, imageSize: parsed.map.parentImageSize, name: parsed.map.parentName) : nil
        arenaState = parsed.map.arenaState
        self.path = input.path
        self.fileSize = size
        self.input = input
    }

    private struct Parsed {
        var header: CheckpointHeader
        var footer: CheckpointFooter
        var info: CheckpointInfo
        var frames: [FrameRecord]
        var identity: CheckpointIdentity
        var map: CheckpointImageMap
        var mapLocation: (offset: Int, checksum: UInt64)?
    }

    private static func parse(_ input: InputFile, during operation: String) throws(MemSnapError) -> Parsed {
        let size = input.size
        let identity = IdentityHasher()
        let headerBytes = try input.read(CheckpointFormat.headerSize, at: 0, place: "header at offset 0", during: operation)
        let header = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in try CheckpointHeader.decode(bytes, during: operation) }
        let footerSize = CheckpointFormat.footerSize(version: header.version)
        guard size >= CheckpointFormat.headerSize + 8 + footerSize else {
            throw corrupt(operation, "\(size) bytes is shorter than the smallest version-\(header.version) checkpoint: truncated")
        }
        let footerOffset = size - footerSize
        let footerBytes = try input.read(footerSize, at: footerOffset, place: "footer at \(at(footerOffset))", during: operation)
        let footer = try withBytes(footerBytes) { (bytes) throws(MemSnapError) in
            try CheckpointFooter.decode(bytes, at: footerOffset, version: header.version, during: operation)
        }
        let structure = CheckpointStructure(header: header)
        try structure.checkSize(of: footer, at: footerOffset, actual: size, during: operation)
        try structure.checkSettings(of: footer, at: footerOffset, during: operation)
        try structure.checkNoIndex(in: footer, at: footerOffset, during: operation)
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
        identity.update(headerBytes)
        identity.update(infoBytes)
        // Version 2: the image map sits between the frames (or the index) and the footer.
        let sectionEnd: Int
        if header.version >= 2 {
            guard footer.mapOffset >= dataStart, footer.mapOffset <= footerOffset else {
                throw corrupt(operation, "footer: image map offset \(footer.mapOffset) points outside the data section")
            }
            sectionEnd = footer.mapOffset
        } else {
            sectionEnd = footerOffset
        }
        var frames: [FrameRecord]
        let dataEnd: Int
        var indexBytes: [UInt8] = []
        if header.style == .v1 {
            frames = []
            var position = dataStart
            while position < sectionEnd {
                let place = "checkpoint frame \(frames.count) at \(at(position))"
                guard sectionEnd - position >= CheckpointFormat.frameHeaderSize else {
                    throw corrupt(operation, "\(place): header truncated")
                }
                let headerBytes = try input.read(CheckpointFormat.frameHeaderSize, at: position, place: place, during: operation)
                let frame = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in
                    try FrameRecord.decodeHeader(bytes, at: position, expectedIndex: frames.count, chunkSize: header.chunkSize,
                                                 codec: header.codec, during: operation)
                }
                // The stored size is at most a compress bound of twice 64 MiB (checked), so `end` cannot overflow.
                guard frame.end <= sectionEnd else {
                    throw corrupt(operation, "\(place): payload runs past the end (truncated)")
                }
                frames.append(frame)
                position = frame.end
            }
            dataEnd = position
        } else {
            guard footer.indexOffset >= dataStart, footer.indexOffset <= sectionEnd else {
                throw corrupt(operation, "footer: index offset \(footer.indexOffset) points outside the data section")
            }
            // Check the index's length against the frames it could list before reading it, so a
            // damaged footer cannot make this allocate more than the data section could need.
            let indexLength = sectionEnd - footer.indexOffset
            let entriesLength = indexLength - CheckpointIndex.size(frameCount: 0)
            guard entriesLength >= 0, entriesLength % CheckpointFormat.indexEntrySize == 0,
                  entriesLength / CheckpointFormat.indexEntrySize <= (footer.indexOffset - dataStart) / CheckpointFormat.frameHeaderSize else {
                throw corrupt(operation, "index at \(at(footer.indexOffset)): \(indexLength) bytes cannot be the index of the "
                              + "\(footer.indexOffset - dataStart)-byte data section before it")
            }
            let place = "index at \(at(footer.indexOffset))"
            let indexBuffer = ReusableBuffer()
            let indexMemory = try indexBuffer.bytes(count: indexLength, during: "\(operation): \(place)")
            try input.read(into: indexMemory, at: footer.indexOffset, place: place, during: operation)
            frames = try CheckpointIndex.decode(UnsafeRawBufferPointer(indexMemory), at: footer.indexOffset, chunkSize: header.chunkSize,
                                                codec: header.codec, during: operation)
            indexBytes = [UInt8](UnsafeRawBufferPointer(indexMemory))
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
        try structure.checkFrameCount(of: footer, at: footerOffset, found: frames.count, during: operation)
        identity.update(frames: frames)
        identity.update(indexBytes)
        var map = CheckpointImageMap.none
        var mapLocation: (offset: Int, checksum: UInt64)?
        if header.version >= 2 {
            let read = try readImageMap(input, at: footer.mapOffset, length: footerOffset - footer.mapOffset, flags: header.flags,
                                        imageSize: footer.imageSize, identity: identity, collectHashes: false, during: operation)
            map = read.map
            mapLocation = (footer.mapOffset, read.checksum)
        }
        identity.update(footerBytes)
        return Parsed(header: header, footer: footer, info: info, frames: frames, identity: identity.digest(), map: map,
                      mapLocation: mapLocation)
    }

    /// Reads and checks the image map of `length` bytes at `offset`, passing its bytes to
    /// `identity`; with `collectHashes`, returns the page hashes too.
    private static func readImageMap(
        _ input: InputFile, at offset: Int, length: Int, flags: CheckpointFlags, imageSize: Int, identity: IdentityHasher?,
        collectHashes: Bool, during operation: String
    ) throws(MemSnapError) -> (map: CheckpointImageMap, checksum: UInt64, hashes: [UInt64]) {
        var decoder = ImageMapDecoder(flags: flags, at: offset, during: operation)
        let place = "image map at \(at(offset))"
        guard length >= CheckpointImageMap.fixedSize else { throw corrupt(operation, "\(place): truncated") }
        let fixed = try input.read(CheckpointImageMap.fixedSize, at: offset, place: place, during: operation)
        try withBytes(fixed) { (bytes) throws(MemSnapError) in
            try decoder.fixedPart(bytes, pageLimit: CheckpointFormat.pageCount(imageSize))
        }
        guard decoder.length == length else {
            throw corrupt(operation, "\(place): its counts need \(decoder.length) bytes but it has \(length) before the footer")
        }
        identity?.update(fixed)
        // Every length below is within the section, which is within the file.
        var position = offset + CheckpointImageMap.fixedSize
        let runs = try input.read(decoder.runsLength, at: position, place: place, during: operation)
        try withBytes(runs) { (bytes) throws(MemSnapError) in try decoder.runs(bytes) }
        identity?.update(runs)
        position += runs.count
        var hashes: [UInt64] = []
        if collectHashes { hashes.reserveCapacity(decoder.hashCount) }
        let buffer = ReusableBuffer()
        var remaining = decoder.hashesLength
        while remaining > 0 {
            let piece = try buffer.bytes(count: min(remaining, 1 << 20), during: "\(operation): \(place)")
            try input.read(into: piece, at: position, place: place, during: operation)
            let bytes = UnsafeRawBufferPointer(piece)
            decoder.hashes(bytes)
            identity?.update(bytes)
            if collectHashes {
                for slot in 0..<bytes.count / 8 { hashes.append(UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: slot * 8, as: UInt64.self))) }
            }
            position += piece.count
            remaining -= piece.count
        }
        let tail = try input.read(decoder.tailLength, at: position, place: place, during: operation)
        let checksum = try withBytes(tail) { (bytes) throws(MemSnapError) in try decoder.tail(bytes) }
        identity?.update(tail)
        try decoder.validate(imageSize: imageSize)
        return (decoder.map, checksum, hashes)
    }

    /// The stored page hashes, one per page of `hashedPages` in order, read from the file again
    /// and checked against the checksum seen when it was opened.
    /// - Throws: `.corrupt` if the file has none, or changed since it was opened; read failures.
    func pageHashes() throws(MemSnapError) -> [UInt64] {
        let operation = "read the page hashes of checkpoint \(path)"
        guard let mapLocation, flags.contains(.pageHashes) else {
            throw MemSnapError(operation, .invalidArgument("the file stores no page hashes"))
        }
        let footerOffset = fileSize - CheckpointFormat.footerSize(version: formatVersion)
        let read = try CheckpointFile.readImageMap(input, at: mapLocation.offset, length: footerOffset - mapLocation.offset,
                                                   flags: flags, imageSize: imageSize, identity: nil, collectHashes: true,
                                                   during: operation)
        guard read.checksum == mapLocation.checksum, read.map == map else {
            throw corrupt(operation, "image map at \(at(mapLocation.offset)): the file changed since it was opened")
        }
        return read.hashes
    }

    /// Reads, decompresses and checks every frame without writing anything, including that no
    /// two extents overlap, within a frame or across frames, and (for an incremental file) that
    /// every extent lies in its changed pages.
    /// - Throws: `.invalidArgument` for a thread count outside 1...256; the first `.corrupt` by
    ///   frame order (a file that shrank since it was opened: "truncated while reading: the file
    ///   shrank"); `.systemCall` for a failed read or buffer allocation.
    public func verify(threads: Int = 2) throws(MemSnapError) {
        try ChainRestore.run([RestoreLink(self, owned: nil)], imageSize: imageSize, target: nil, threads: threads, progress: nil,
                             operation: "verify checkpoint \(path)")
    }

    /// Restores every extent into `target` with `threads` threads (a work queue over frames; any
    /// thread count, whatever the checkpoint was written with), then commits the target. Nothing
    /// is committed unless every frame verified and no two extents overlap; on error the target
    /// is discarded (`CheckpointRestoreTarget.discard()`) and never committed.
    /// - Throws: `.invalidArgument` for an incremental file (restore its `CheckpointChain`, or
    ///   use `Checkpoint.restore(contentsOfFileAt:into:)`, which resolves it), before the target
    ///   is prepared; as `verify`, plus whatever the target's `prepare`, `write` and `commit` throw.
    public func restore(
        into target: CheckpointRestoreTarget, threads: Int = 2,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) {
        let operation = "restore checkpoint \(path)"
        do throws(MemSnapError) {
            guard (1...256).contains(threads) else {
                throw MemSnapError(operation, .invalidArgument("thread count \(threads) must be 1...256"))
            }
            if let parent {
                throw MemSnapError(operation, .invalidArgument(
                    "an incremental checkpoint over \(parent.name) (identity \(parent.identity)) restores only with its chain "
                    + "(CheckpointChain, or Checkpoint.restore(contentsOfFileAt:into:), which finds it)"))
            }
            try target.prepare(imageSize: imageSize)
            try ChainRestore.run([RestoreLink(self, owned: nil)], imageSize: imageSize, target: target, threads: threads,
                                 progress: progress, operation: operation)
            try target.commit(imageSize: imageSize)
        } catch {
            target.discard()
            throw error
        }
    }

    /// Reads the frame at `offset` (header and stored payload) into `buffer`.
    func readFrame(into buffer: UnsafeMutableRawBufferPointer, at offset: Int, place: String, during operation: String) throws(MemSnapError) {
        try input.read(into: buffer, at: offset, place: place, during: operation)
    }

    /// `InputFile.shrinkError`: the "file shrank" error for a frame read whole whose bytes then
    /// failed a check, if the file is now shorter than the frame's end.
    func shrinkError(readAt offset: Int, count: Int, place: String, finding: String, during operation: String) -> MemSnapError? {
        input.shrinkError(readAt: offset, count: count, place: place, finding: finding, during: operation)
    }
}
