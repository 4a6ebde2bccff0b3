#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import SystemPackage

/// Checkpoint and restore: portable, checksummed, parallel, compressed files (docs/FORMAT.md).
///
/// Writing: the same input, options and info give the same bytes for any thread count, and for
/// the same image from memory, a file or a stream. A file is written under a temporary name and
/// renamed when complete. Reading: `CheckpointFile` reads a file with pread and restores it with
/// any number of threads; `restore(readingFrom:into:)` restores a stream (a pipe) in one pass.
/// Restores stage their output and publish it only after every frame verified, so a damaged
/// checkpoint never touches the target.
///
/// Thread safety: every function may be called from any thread; each call is independent.
public enum Checkpoint {
    // MARK: Writing

    /// Checkpoints `extents` (in order) to the file `path`.
    ///
    /// Extents must not overlap (within a tag) and are only read during the call.
    /// - Throws: `.invalidArgument` if `path` exists and `force` is false, for bad options, for
    ///   overlapping extents, or for extents whose offsets or total size overflow `Int`;
    ///   system call failures, such as ENOSPC (nothing is left behind).
    @discardableResult
    public static func write(
        _ extents: [CheckpointExtent], to path: String, options: CheckpointOptions = CheckpointOptions(),
        force: Bool = false, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write checkpoint \(path)"
        let totalBytes = try checkExtents(extents, during: operation)
        return try write(extents, totalBytes: totalBytes, output: CheckpointOutput.file(path, force: force), options: options,
                         operation: operation, progress: progress)
    }

    /// Checkpoints `extents` to a descriptor (a pipe, a socket, stdout), sequentially. The
    /// descriptor stays the caller's: it is written from its current position and not closed.
    /// - Throws: as `write(_:to:options:force:progress:)`, and write failures of the descriptor.
    @discardableResult
    public static func write(
        _ extents: [CheckpointExtent], toDescriptor descriptor: FileDescriptor, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write checkpoint to descriptor \(descriptor.rawValue)"
        let totalBytes = try checkExtents(extents, during: operation)
        return try write(extents, totalBytes: totalBytes, output: .stream(descriptor), options: options,
                         operation: operation, progress: progress)
    }

    /// Checkpoints a snapshot (one extent, tag 0), holding its read lock throughout.
    /// - Throws: as `write(_:to:options:force:progress:)`.
    @discardableResult
    public static func write(
        _ snapshot: Snapshot, to path: String, options: CheckpointOptions = CheckpointOptions(), force: Bool = false,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try snapshot.withUnsafeBytes { (image) throws(MemSnapError) -> CheckpointSummary in
            try write([CheckpointExtent(offset: 0, bytes: image)], to: path, options: options, force: force, progress: progress)
        }
    }

    /// Checkpoints a raw image read from `input` (a pipe or any readable descriptor, read from
    /// its current position to its end) to `output` in one pass with bounded memory: windows of
    /// `chunkSize x 4 x threads` bytes, at most 256 MiB (and at least one chunk). The descriptor
    /// is not closed. The file is the same as for the same bytes from memory.
    /// - Throws: `.invalidArgument` for bad options or an existing output without `force`;
    ///   `.systemCall` for read or write failures (nothing is left behind).
    @discardableResult
    public static func write(
        readingFrom input: FileDescriptor, to output: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write checkpoint of descriptor \(input.rawValue) to \(output)"
        return try write(windowsOf: .stream(input), to: output, options: options, operation: operation, progress: progress)
    }

    /// Checkpoints whatever `path` names, as a raw image: a regular file is read with pread (its
    /// size when opened; a file that shrinks meanwhile is an error, never a short image); anything
    /// else (a FIFO, /dev/stdin, a process substitution, a character or block device, a socket)
    /// is read as a stream to its end, like `write(readingFrom:to:)`. Memory stays bounded as
    /// there. The file is the same as for the same bytes from memory.
    ///
    /// Opening a FIFO waits for a writer, as any reader of a FIFO does.
    /// - Throws: `.invalidArgument` for bad options or an existing output without `force`;
    ///   `.corrupt` "... truncated while reading: the file shrank" for a regular file cut while it
    ///   is read; `.systemCall` for open, read or write failures (EISDIR for a directory). Nothing
    ///   is left behind.
    @discardableResult
    public static func write(
        contentsOfFileAt path: String, to output: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write checkpoint of \(path) to \(output)"
        let input = try InputFile(path: path, blocking: true, during: operation)
        return try write(windowsOf: input.isRegular ? .regularFile(input) : .stream(input.descriptor), to: output,
                         options: options, operation: operation, progress: progress)
    }

    /// Where windows of a raw image come from.
    enum WindowSource {
        /// read() from the current position to the end.
        case stream(FileDescriptor)
        /// pread() up to the size the file had when opened.
        case regularFile(InputFile)
    }

    static func write(
        windowsOf source: WindowSource, to output: CheckpointOutputDestination, options: CheckpointOptions,
        comparingWith parent: ParentComparison? = nil, operation: String, progress: (@Sendable (CheckpointProgress) -> Void)?
    ) throws(MemSnapError) -> CheckpointSummary {
        try options.validate(during: operation)
        let totalBytes: Int
        if case let .regularFile(file) = source { totalBytes = file.size } else { totalBytes = 0 }
        let image = ImageDescription(parent: parent?.parent, pageHashes: options.pageHashes)
        let writer = try CheckpointWriter(options: options, output: output.open(), totalBytes: totalBytes, operation: operation,
                                          progress: progress, image: image)
        // Windows are whole chunks, so the planner cuts the image exactly as it would in memory.
        let window = options.chunkSize * max(1, min(max(4, options.threads * 4), maxWindowBytes / options.chunkSize))
        let buffer = ReusableBuffer()
        let bytes = try buffer.bytes(count: window, during: operation)
        var offset = 0
        while true {
            let filled: Int
            switch source {
            case let .stream(descriptor):
                filled = try InputFile.readStream(descriptor, into: bytes, offset: offset, during: operation)
            case let .regularFile(file):
                filled = min(window, file.size - offset)
                try file.read(into: UnsafeMutableRawBufferPointer(rebasing: bytes[0..<filled]), at: offset,
                              place: "\(file.path) at \(at(offset))", during: operation)
            }
            if filled == 0 { break }
            let windowBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<filled])
            if let parent {
                // Only the pages that differ from the parent's (a window holds whole pages, but
                // the last, which is whole or the image's end).
                try parent.addChangedPages(of: windowBytes, at: offset, to: writer, threads: options.threads)
            } else {
                try writer.add(CheckpointExtent(offset: UInt64(offset), bytes: windowBytes))
            }
            try writer.releaseBorrowedBytes()
            offset += filled
            if filled < window { break }
        }
        writer.declareImageSize(offset)
        return try writer.finish()
    }

    /// The largest window a one-pass checkpoint reads at once.
    static let maxWindowBytes = 256 << 20

    private static func write(
        _ extents: [CheckpointExtent], totalBytes: Int, output: @autoclosure () throws(MemSnapError) -> CheckpointOutput,
        options: CheckpointOptions, operation: String, progress: (@Sendable (CheckpointProgress) -> Void)?
    ) throws(MemSnapError) -> CheckpointSummary {
        try options.validate(during: operation)
        // Page hashes describe one image: only when every extent is of tag 0.
        let image = ImageDescription(pageHashes: options.pageHashes && extents.allSatisfy { $0.tag == 0 })
        let writer = try CheckpointWriter(options: options, output: output(), totalBytes: totalBytes,
                                          operation: operation, progress: progress, image: image)
        for extent in extents { try writer.add(extent) }
        return try writer.finish()
    }

    /// Checks a caller's extents before anything is created: each fits below `Int.max`, their
    /// sizes add up without overflow, and no two overlap in the same tag. Returns the total size.
    static func checkExtents(_ extents: [CheckpointExtent], during operation: String) throws(MemSnapError) -> Int {
        var total = 0
        for (index, extent) in extents.enumerated() {
            guard extent.offset <= UInt64(Int.max - extent.bytes.count) else {
                throw MemSnapError(operation, .invalidArgument(
                    "extent \(index): offset \(extent.offset) with \(extent.bytes.count) bytes ends past Int.max"))
            }
            let (sum, overflow) = total.addingReportingOverflow(extent.bytes.count)
            guard !overflow else {
                throw MemSnapError(operation, .invalidArgument("the extents' sizes add up to more than Int.max bytes"))
            }
            total = sum
        }
        let order = extents.indices.filter { !extents[$0].bytes.isEmpty }
            .sorted { (extents[$0].tag, extents[$0].offset, $0) < (extents[$1].tag, extents[$1].offset, $1) }
        for (previous, next) in zip(order, order.dropFirst()) {
            let first = extents[previous], second = extents[next]
            let firstEnd = first.offset + UInt64(first.bytes.count)
            if first.tag == second.tag && firstEnd > second.offset {
                throw MemSnapError(operation, .invalidArgument(
                    "extents \(min(previous, next)) and \(max(previous, next)) overlap: bytes "
                    + "\(second.offset)..<\(min(firstEnd, second.offset + UInt64(second.bytes.count))) of tag \(second.tag)"))
            }
        }
        return total
    }

    // MARK: Restoring

    /// Restores a checkpoint file (with its chain, if it is incremental: see
    /// `CheckpointChain.init(tip:links:search:)`) into a new snapshot (extents must have tag 0),
    /// with `threads` threads. The snapshot's maximum is `maxSize` (default: the image size).
    /// - Throws: as `CheckpointChain.init(tip:links:search:)` and `CheckpointChain.restore`;
    ///   snapshot creation failures.
    public static func restoreSnapshot(
        from path: String, links: [String] = [], maxSize: Int? = nil, threads: Int = 2,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> Snapshot {
        let chain = try CheckpointChain(tip: path, links: links)
        let target = try MemoryImageTarget(name: "restore")
        try chain.restore(into: target, threads: threads, progress: progress)
        return try Snapshot(adopting: target.file, size: chain.imageSize, maxSize: maxSize ?? chain.imageSize)
    }

    /// Restores whatever `path` names: a regular file as a `CheckpointChain` (an incremental
    /// checkpoint with its parents, found among `links` or next to it; parallel, with `threads`
    /// threads), anything else (a FIFO, /dev/stdin, a process substitution) as a stream in one
    /// pass (`restore(readingFrom:into:)`; `threads` is then unused). On any error the target is
    /// discarded; a missing or mismatched parent is found before the target is prepared.
    /// Opening a FIFO waits for a writer.
    /// - Throws: as those; `.systemCall` if `path` cannot be opened.
    @discardableResult
    public static func restore(
        contentsOfFileAt path: String, into target: CheckpointRestoreTarget, links: [String] = [], threads: Int = 2,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "restore checkpoint \(path)"
        do throws(MemSnapError) {
            let input = try InputFile(path: path, blocking: true, during: operation)
            guard input.isRegular else {
                return try restore(readingFrom: input.descriptor, into: target, progress: progress, operation: operation)
            }
            let file = try CheckpointFile(input: input, during: "open checkpoint \(path)")
            var given: [CheckpointFile] = []
            for link in links { given.append(try CheckpointFile(path: link)) }
            let chain = try CheckpointChain(tip: file, links: given)
            try chain.restore(into: target, threads: threads, progress: progress)
            return CheckpointSummary(file)
        } catch {
            target.discard()
            throw error
        }
    }

    /// Restores a checkpoint read from `input` (a pipe) in one pass into `target`, verifying every
    /// frame, that no two extents overlap (within or across frames), the index and the footer;
    /// commits the target only at the very end, and discards it on any error. The descriptor is
    /// not closed; it is read up to the end of the input (which must follow the footer).
    /// - Throws: `.corrupt` naming the frame and offset; read failures; whatever the target throws.
    @discardableResult
    public static func restore(
        readingFrom input: FileDescriptor, into target: CheckpointRestoreTarget,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try restore(readingFrom: input, into: target, progress: progress,
                    operation: "restore checkpoint from descriptor \(input.rawValue)")
    }

    private static func restore(
        readingFrom input: FileDescriptor, into target: CheckpointRestoreTarget,
        progress: (@Sendable (CheckpointProgress) -> Void)?, operation: String
    ) throws(MemSnapError) -> CheckpointSummary {
        do throws(MemSnapError) {
            var restore = StreamRestore(input: input, target: target, progress: progress, operation: operation)
            return try restore.run()
        } catch {
            target.discard()
            throw error
        }
    }
}

/// One pass over a checkpoint stream: header, info, then frames, the index and the footer in
/// the order they come, each checked against what came before.
private struct StreamRestore {
    let target: CheckpointRestoreTarget
    let progress: (@Sendable (CheckpointProgress) -> Void)?
    let operation: String
    var stream: InputStream

    init(input: FileDescriptor, target: CheckpointRestoreTarget, progress: (@Sendable (CheckpointProgress) -> Void)?, operation: String) {
        self.target = target
        self.progress = progress
        self.operation = operation
        stream = InputStream(descriptor: input, operation: operation)
    }

    mutating func run() throws(MemSnapError) -> CheckpointSummary {
        let operation = operation
        let identity = IdentityHasher()
        let headerBytes = try stream.read(CheckpointFormat.headerSize)
        let header = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in try CheckpointHeader.decode(bytes, during: operation) }
        let structure = CheckpointStructure(header: header)
        if header.flags.contains(.incremental) {
            throw MemSnapError(operation, .invalidArgument(
                "an incremental checkpoint (over parent identity \(header.parent)) restores only from a file, with its chain; "
                + "save the stream to a file next to its parent and restore that"))
        }
        let infoBytes = try stream.read(header.infoLength)
        let infoChecksumBytes = try stream.read(8)
        let infoChecksum = infoChecksumBytes.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        _ = try withBytes(infoBytes) { (bytes) throws(MemSnapError) in
            try CheckpointInfo.decode(bytes, checksum: infoChecksum, during: operation)
        }
        identity.update(headerBytes)
        identity.update(infoBytes)
        identity.update(infoChecksumBytes)
        var frames: [FrameRecord] = []
        var framesCounted = false
        func countFrames() {
            if !framesCounted { identity.update(frames: frames) }
            framesCounted = true
        }
        var extentBytes = 0
        let scratch = FrameDecodeScratch()
        var coverage = ExtentCoverage()
        let imageEnd = ImageEnd()
        let counting = CountingTarget(target, end: imageEnd)
        var indexPosition: Int?
        var map: (position: Int, decoder: ImageMapDecoder)?
        while true {
            let position = stream.position
            let magicBytes = try stream.read(4)
            let magic = UInt32(magicBytes[0]) | UInt32(magicBytes[1]) << 8 | UInt32(magicBytes[2]) << 16 | UInt32(magicBytes[3]) << 24
            if magic == CheckpointFormat.frameMagic || magic == CheckpointFormat.indexMagic, let indexPosition {
                throw corrupt(operation, "at \(at(position)): data after the index at \(at(indexPosition)); expected the footer")
            }
            if magic != CheckpointFormat.footerMagic, let map {
                throw corrupt(operation, "at \(at(position)): data after the image map at \(at(map.position)); expected the footer")
            }
            if magic == CheckpointFormat.frameMagic {
                let headerBytes = magicBytes + (try stream.read(CheckpointFormat.frameHeaderSize - 4))
                let frame = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in
                    try FrameRecord.decodeHeader(bytes, at: position, expectedIndex: frames.count, chunkSize: header.chunkSize,
                                                 codec: header.codec, during: operation)
                }
                let payload = try stream.read(frame.storedSize)
                let place = "checkpoint frame \(frame.index) at \(at(position))"
                let frameBytes = try withBytes(payload) { (stored) throws(MemSnapError) in
                    try structure.verifyFrame(frame, payload: stored, scratch: scratch, rules: .plain(imageSize: nil), target: counting,
                                              coverage: &coverage, place: place, during: operation)
                }
                let (total, overflow) = extentBytes.addingReportingOverflow(frameBytes)
                guard !overflow else { throw corrupt(operation, "\(place): the stream's extent bytes pass Int.max") }
                extentBytes = total
                frames.append(frame)
                progress?(CheckpointProgress(bytesDone: stream.position, bytesTotal: 0))
            } else if magic == CheckpointFormat.indexMagic {
                guard header.style != .v1 else { throw corrupt(operation, "index at \(at(position)): a v1 stream has no index") }
                let countBytes = try stream.read(12)
                let count = countBytes[4...].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                guard count == UInt64(frames.count) else {
                    throw corrupt(operation, "index at \(at(position)): lists \(count) frames, the stream had \(frames.count)")
                }
                let rest = try stream.read(CheckpointIndex.size(frameCount: frames.count) - 16)
                let indexBytes = magicBytes + countBytes + rest
                let decoded = try withBytes(indexBytes) { (bytes) throws(MemSnapError) in
                    try CheckpointIndex.decode(bytes, at: position, chunkSize: header.chunkSize, codec: header.codec, during: operation)
                }
                for (frame, entry) in zip(frames, decoded) {
                    try structure.checkFrameHeader(frame, matches: entry, place: "checkpoint frame \(frame.index) at \(at(frame.offset))",
                                                   during: operation)
                }
                indexPosition = position
                countFrames()
                identity.update(indexBytes)
            } else if magic == CheckpointFormat.mapMagic && header.version >= 2 {
                guard header.style == .v1 || indexPosition != nil else {
                    throw corrupt(operation, "image map at \(at(position)): a \(header.style) stream has its index before it")
                }
                countFrames()
                var decoder = ImageMapDecoder(flags: header.flags, at: position, during: operation)
                let fixed = magicBytes + (try stream.read(CheckpointImageMap.fixedSize - 4))
                // The image size comes with the footer: counts are bounded here, checked against it there.
                try withBytes(fixed) { (bytes) throws(MemSnapError) in try decoder.fixedPart(bytes, pageLimit: CheckpointFormat.maxPageCount) }
                let runs = try stream.read(decoder.runsLength)
                try withBytes(runs) { (bytes) throws(MemSnapError) in try decoder.runs(bytes) }
                identity.update(fixed)
                identity.update(runs)
                var remaining = decoder.hashesLength
                while remaining > 0 {
                    let piece = try stream.read(min(remaining, 1 << 20))
                    piece.withUnsafeBytes { decoder.hashes($0) }
                    identity.update(piece)
                    remaining -= piece.count
                }
                let tail = try stream.read(decoder.tailLength)
                _ = try withBytes(tail) { (bytes) throws(MemSnapError) in try decoder.tail(bytes) }
                identity.update(tail)
                map = (position, decoder)
            } else if magic == CheckpointFormat.footerMagic {
                let footerBytes = magicBytes + (try stream.read(CheckpointFormat.footerSize(version: header.version) - 4))
                let footer = try withBytes(footerBytes) { (bytes) throws(MemSnapError) in
                    try CheckpointFooter.decode(bytes, at: position, version: header.version, during: operation)
                }
                try structure.checkNoIndex(in: footer, at: position, during: operation)
                if header.style != .v1 {
                    guard let indexPosition, footer.indexOffset == indexPosition else {
                        throw corrupt(operation, "footer at \(at(position)): "
                                      + (indexPosition == nil ? "a \(header.style) stream has no index"
                                                              : "index offset \(footer.indexOffset) is not where the index was"))
                    }
                }
                if header.version >= 2 {
                    guard let map, footer.mapOffset == map.position else {
                        throw corrupt(operation, "footer at \(at(position)): " + (map == nil ? "a version-2 stream has no image map"
                                                                                     : "image map offset \(footer.mapOffset) is not where the image map was"))
                    }
                    try map.decoder.validate(imageSize: footer.imageSize)
                }
                try structure.checkSettings(of: footer, at: position, during: operation)
                try structure.checkSize(of: footer, at: position, actual: stream.position, during: operation)
                try structure.checkFrameCount(of: footer, at: position, found: frames.count, during: operation)
                try CheckpointStructure.checkExtentBytes(recorded: footer.extentBytes, found: extentBytes, during: operation)
                // A file checks each extent against the image size as it comes; a stream learns it only here.
                guard footer.imageSize >= imageEnd.value else {
                    throw corrupt(operation, "footer at \(at(position)): image size \(footer.imageSize) ends before the extents, "
                                  + "which reach \(imageEnd.value)")
                }
                guard try stream.atEnd() else { throw corrupt(operation, "bytes follow the footer at \(at(stream.position))") }
                let framesSeen = frames
                try coverage.checkDisjoint(place: { "checkpoint frame \($0) at \(at(framesSeen[$0].offset))" }, during: operation)
                try target.commit(imageSize: footer.imageSize)
                countFrames()
                identity.update(footerBytes)
                return CheckpointSummary(style: header.style, codec: header.codec, frameCount: frames.count,
                                         imageSize: footer.imageSize, extentBytes: extentBytes, fileSize: footer.fileSize,
                                         identity: identity.digest(), changedPages: nil)
            } else {
                throw corrupt(operation, "at \(at(position)): expected a frame, the index\(header.version >= 2 ? ", the image map" : "") or the footer")
            }
        }
    }
}

/// Where `Checkpoint.write(readingFrom:to:)` writes.
public enum CheckpointOutputDestination: CustomStringConvertible, Sendable {
    case file(path: String, force: Bool)
    /// Written sequentially from its current position; stays the caller's (never closed).
    case descriptor(FileDescriptor)

    func open() throws(MemSnapError) -> CheckpointOutput {
        switch self {
        case let .file(path, force): try CheckpointOutput.file(path, force: force)
        case let .descriptor(descriptor): CheckpointOutput.stream(descriptor)
        }
    }

    public var description: String {
        switch self {
        case let .file(path, _): path
        case let .descriptor(descriptor): "descriptor \(descriptor.rawValue)"
        }
    }
}

/// Sequential reads of exact sizes from a descriptor.
private struct InputStream {
    let descriptor: FileDescriptor
    let operation: String
    private(set) var position = 0

    init(descriptor: FileDescriptor, operation: String) {
        self.descriptor = descriptor
        self.operation = operation
    }

    /// Reads exactly `count` bytes. The buffer grows at most 1 MiB ahead of the data actually
    /// read, so a size declared by a damaged stream cannot allocate memory the stream never backs.
    mutating func read(_ count: Int) throws(MemSnapError) -> [UInt8] {
        var bytes: [UInt8] = []
        var filled = 0
        while filled < count {
            if bytes.count == filled { bytes += [UInt8](repeating: 0, count: min(count - filled, 1 << 20)) }
            let limit = bytes.count, start = filled
            let got = try bytes.withUnsafeMutableBytes { buffer in
                Result { () throws(MemSnapError) -> Int in
                    guard let base = buffer.baseAddress else { return 0 }
                    return try InputFile.readStream(descriptor, into: UnsafeMutableRawBufferPointer(start: base + start, count: limit - start),
                                                    offset: position + start, during: operation)
                }
            }.get()
            if got == 0 { throw corrupt(operation, "stream ends at \(at(position + filled)) inside a \(count)-byte read: truncated") }
            filled += got
        }
        position += count
        return bytes
    }

    /// Whether the input has ended (reads one byte to find out).
    mutating func atEnd() throws(MemSnapError) -> Bool {
        var byte: UInt8 = 0
        let got = try withUnsafeMutableBytes(of: &byte) { buffer in
            Result { () throws(MemSnapError) -> Int in try InputFile.readStream(descriptor, into: buffer, offset: position, during: operation) }
        }.get()
        return got == 0
    }
}

/// The highest extent end written so far (a stream's image size is known only at its footer).
private final class ImageEnd: @unchecked Sendable {
    var value = 0
}

private final class CountingTarget: CheckpointRestoreTarget, @unchecked Sendable {
    let target: CheckpointRestoreTarget
    let end: ImageEnd
    init(_ target: CheckpointRestoreTarget, end: ImageEnd) {
        self.target = target
        self.end = end
    }
    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        end.value = max(end.value, offset + bytes.count)
        try target.write(tag: tag, offset: offset, bytes: bytes)
    }
    func commit(imageSize: Int) throws(MemSnapError) {}
}
