#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// Checkpoint and restore: portable, checksummed, parallel, compressed files (docs/FORMAT.md).
///
/// Writing: the same input, options and info give the same bytes for any thread count. A file is
/// written under a temporary name and renamed when complete. Reading: `CheckpointFile` maps a
/// file and restores it with any number of threads; `restore(readingFrom:into:)` restores a
/// stream (a pipe) in one pass. Restores stage their output and publish it only after every
/// frame verified, so a damaged checkpoint never touches the target.
///
/// Thread safety: every function may be called from any thread; each call is independent.
public enum Checkpoint {
    // MARK: Writing

    /// Checkpoints `extents` (in order) to the file `path`.
    /// - Throws: `.invalidArgument` if `path` exists and `force` is false, or for bad options;
    ///   system call failures (nothing is left behind).
    @discardableResult
    public static func write(
        _ extents: [CheckpointExtent], to path: String, options: CheckpointOptions = CheckpointOptions(),
        force: Bool = false, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try write(extents, output: CheckpointOutput.file(path, force: force), options: options,
                  operation: "write checkpoint \(path)", progress: progress)
    }

    /// Checkpoints `extents` to a descriptor (a pipe, a socket, stdout), sequentially.
    @discardableResult
    public static func write(
        _ extents: [CheckpointExtent], toDescriptor descriptor: Int32, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try write(extents, output: .stream(descriptor), options: options,
                  operation: "write checkpoint to descriptor \(descriptor)", progress: progress)
    }

    /// Checkpoints a snapshot (one extent, tag 0), holding its read lock throughout.
    @discardableResult
    public static func write(
        _ snapshot: Snapshot, to path: String, options: CheckpointOptions = CheckpointOptions(), force: Bool = false,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        try snapshot.withUnsafeBytes { (image) throws(MemSnapError) -> CheckpointSummary in
            try write([CheckpointExtent(offset: 0, bytes: image)], to: path, options: options, force: force, progress: progress)
        }
    }

    /// Checkpoints a raw image read from `input` (a pipe or any readable descriptor) to `output`
    /// in one pass with bounded memory: windows of `chunkSize x 4 x threads` bytes.
    @discardableResult
    public static func write(
        readingFrom input: Int32, to output: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let destination = try output.open()
        let operation = "write checkpoint of descriptor \(input) to \(output)"
        let writer = try CheckpointWriter(options: options, output: destination, totalBytes: 0, operation: operation, progress: progress)
        let window = options.chunkSize * max(4, options.threads * 4)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: window, alignment: Page.size)
        defer { buffer.deallocate() }
        var offset = 0
        while true {
            var filled = 0
            while filled < window {
                let count = read(input, buffer.baseAddress! + filled, window - filled)
                if count < 0 {
                    if errno == EINTR { continue }
                    throw MemSnapError.systemCall("read", during: "\(operation) at \(at(offset + filled))")
                }
                if count == 0 { break }
                filled += count
            }
            if filled == 0 { break }
            try writer.add(CheckpointExtent(offset: UInt64(offset), bytes: UnsafeRawBufferPointer(rebasing: buffer[0..<filled])))
            try writer.releaseBorrowedBytes()
            offset += filled
            if filled < window { break }
        }
        return try writer.finish()
    }

    private static func write(
        _ extents: [CheckpointExtent], output: CheckpointOutput, options: CheckpointOptions, operation: String,
        progress: (@Sendable (CheckpointProgress) -> Void)?
    ) throws(MemSnapError) -> CheckpointSummary {
        let writer = try CheckpointWriter(options: options, output: output, totalBytes: extents.reduce(0) { $0 + $1.bytes.count },
                                          operation: operation, progress: progress)
        for extent in extents { try writer.add(extent) }
        return try writer.finish()
    }

    // MARK: Restoring

    /// Restores a checkpoint file into a new snapshot (extents must have tag 0), with `threads`
    /// threads. The snapshot's maximum is `maxSize` (default: the image size).
    public static func restoreSnapshot(
        from path: String, maxSize: Int? = nil, threads: Int = 2, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> Snapshot {
        let file = try CheckpointFile(path: path)
        let target = try MemoryImageTarget(name: "restore")
        try file.restore(into: target, threads: threads, progress: progress)
        return try Snapshot(adopting: target.file, size: file.imageSize, maxSize: maxSize ?? file.imageSize)
    }

    /// Restores a checkpoint read from `input` (a pipe) in one pass into `target`, verifying every
    /// frame, the index and the footer; commits the target only at the very end.
    /// - Throws: `.corrupt` naming the frame and offset; read failures.
    @discardableResult
    public static func restore(
        readingFrom input: Int32, into target: CheckpointRestoreTarget,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "restore checkpoint from descriptor \(input)"
        var stream = InputStream(descriptor: input, operation: operation)
        let headerBytes = try stream.read(CheckpointFormat.headerSize)
        let header = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in try CheckpointHeader.decode(bytes, during: operation) }
        let infoBytes = try stream.read(header.infoLength)
        let infoChecksum = try stream.read(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        _ = try withBytes(infoBytes) { (bytes) throws(MemSnapError) in
            try CheckpointInfo.decode(bytes, checksum: infoChecksum, during: operation)
        }
        var frames: [FrameRecord] = []
        var extentBytes = 0
        var imageEnd = 0
        var raw: [UInt8] = []
        let sizeTracker = ImageEnd()
        var indexPosition: Int?
        while true {
            let position = stream.position
            let magicBytes = try stream.read(4)
            let magic = magicBytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
            if magic == CheckpointFormat.frameMagic || magic == CheckpointFormat.indexMagic, let indexPosition {
                throw corrupt(operation, "at \(at(position)): data after the index at \(at(indexPosition)); expected the footer")
            }
            if magic == CheckpointFormat.frameMagic {
                let headerBytes = magicBytes + (try stream.read(CheckpointFormat.frameHeaderSize - 4))
                let frame = try withBytes(headerBytes) { (bytes) throws(MemSnapError) in
                    try FrameRecord.decodeHeader(bytes, at: position, expectedIndex: frames.count, chunkSize: header.chunkSize,
                                                 codec: header.codec, during: operation)
                }
                let payload = try stream.read(frame.storedSize)
                let place = "checkpoint frame \(frame.index) at \(at(position))"
                guard CheckpointFormat.xxh3(payload) == frame.payloadChecksum else {
                    throw corrupt(operation, "\(place): checksum mismatch")
                }
                if raw.count < frame.rawSize { raw = [UInt8](repeating: 0, count: frame.rawSize) }
                let counting = CountingTarget(target, end: sizeTracker)
                extentBytes += try raw.withUnsafeMutableBytes { buffer in
                    Result { () throws(MemSnapError) -> Int in
                        let output = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<frame.rawSize])
                        try withBytes(payload) { (stored) throws(MemSnapError) in
                            try FrameCodec.decompress(stored, into: output, codec: header.codec, where: place, during: operation)
                        }
                        return try applyExtents(UnsafeRawBufferPointer(output), count: frame.extentCount, imageSize: nil,
                                                target: counting, place: place, operation: operation)
                    }
                }.get()
                frames.append(frame)
                progress?(CheckpointProgress(bytesDone: stream.position, bytesTotal: 0))
            } else if magic == CheckpointFormat.indexMagic {
                guard header.style != .v1 else { throw corrupt(operation, "index at \(at(position)): a v1 stream has no index") }
                let countBytes = try stream.read(12)
                let count = countBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: UInt64.self)) }
                guard count == UInt64(frames.count) else {
                    throw corrupt(operation, "index at \(at(position)): lists \(count) frames, the stream had \(frames.count)")
                }
                let rest = try stream.read(CheckpointIndex.size(frameCount: frames.count) - 16)
                let decoded = try withBytes(magicBytes + countBytes + rest) { (bytes) throws(MemSnapError) in
                    try CheckpointIndex.decode(bytes, at: position, chunkSize: header.chunkSize, codec: header.codec, during: operation)
                }
                guard decoded == frames else { throw corrupt(operation, "index at \(at(position)): disagrees with the frames") }
                indexPosition = position
            } else if magic == CheckpointFormat.footerMagic {
                let footerBytes = magicBytes + (try stream.read(CheckpointFormat.footerSize - 4))
                let footer = try withBytes(footerBytes) { (bytes) throws(MemSnapError) in
                    try CheckpointFooter.decode(bytes, at: position, during: operation)
                }
                imageEnd = sizeTracker.value
                let expectedIndexOffset = header.style == .v1 ? 0 : indexPosition
                guard footer.indexOffset == expectedIndexOffset else {
                    throw corrupt(operation, "footer at \(at(position)): "
                                  + (expectedIndexOffset == nil ? "a \(header.style) stream has no index" : "index offset \(footer.indexOffset) is not where the index was"))
                }
                guard footer.fileSize == stream.position, footer.frameCount == frames.count, footer.extentBytes == extentBytes,
                      footer.imageSize >= imageEnd, footer.style == header.style, footer.codec == header.codec,
                      footer.chunkSize == header.chunkSize, footer.level == header.level else {
                    throw corrupt(operation, "footer at \(at(position)): totals or settings disagree with the stream")
                }
                guard try stream.atEnd() else { throw corrupt(operation, "bytes follow the footer at \(at(stream.position))") }
                try target.commit(imageSize: footer.imageSize)
                return CheckpointSummary(style: header.style, codec: header.codec, frameCount: frames.count,
                                         imageSize: footer.imageSize, extentBytes: extentBytes, fileSize: footer.fileSize)
            } else {
                throw corrupt(operation, "at \(at(position)): expected a frame, the index or the footer")
            }
        }
    }
}

/// Where `Checkpoint.write(readingFrom:to:)` writes.
public enum CheckpointOutputDestination: CustomStringConvertible, Sendable {
    case file(path: String, force: Bool)
    case descriptor(Int32)

    func open() throws(MemSnapError) -> CheckpointOutput {
        switch self {
        case let .file(path, force): try CheckpointOutput.file(path, force: force)
        case let .descriptor(descriptor): CheckpointOutput.stream(descriptor)
        }
    }

    public var description: String {
        switch self {
        case let .file(path, _): path
        case let .descriptor(descriptor): "descriptor \(descriptor)"
        }
    }
}

/// Sequential reads of exact sizes from a descriptor.
private struct InputStream {
    let descriptor: Int32
    let operation: String
    private(set) var position = 0

    init(descriptor: Int32, operation: String) {
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
            let limit = bytes.count
            let got = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + filled, limit - filled) }
            if got < 0 {
                if errno == EINTR { continue }
                throw MemSnapError.systemCall("read", during: "\(operation) at \(at(position + filled))")
            }
            if got == 0 { throw corrupt(operation, "stream ends at \(at(position + filled)) inside a \(count)-byte read: truncated") }
            filled += got
        }
        position += count
        return bytes
    }

    mutating func atEnd() throws(MemSnapError) -> Bool {
        var byte: UInt8 = 0
        while true {
            let got = Glibc.read(descriptor, &byte, 1)
            if got < 0 && errno == EINTR { continue }
            if got < 0 { throw MemSnapError.systemCall("read", during: operation) }
            return got == 0
        }
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
