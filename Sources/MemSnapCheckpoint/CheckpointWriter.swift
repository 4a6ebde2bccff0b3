#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// What a finished checkpoint holds.
public struct CheckpointSummary: Sendable, Equatable {
    public var style: CheckpointStyle
    public var codec: CheckpointCodec
    public var frameCount: Int
    /// One past the highest byte of any extent (zero pages included).
    public var imageSize: Int
    /// Nonzero extent bytes stored (before compression).
    public var extentBytes: Int
    /// Bytes of the whole checkpoint file or stream.
    public var fileSize: Int
}

/// Writes a checkpoint: header, info, frames (encoded in parallel, written in order), index,
/// footer. Feed extents with `add`; bytes an extent points to may be reused only after
/// `releaseBorrowedBytes()` (which writes or copies everything that still points at them).
final class CheckpointWriter {
    let options: CheckpointOptions
    let output: CheckpointOutput
    let operation: String
    private var planner: FramePlanner
    private var ready: [[Piece]] = []
    private var frames: [FrameRecord] = []
    private var imageSize = 0
    private var extentBytes = 0
    private var consumed = 0
    private let totalBytes: Int
    private let progress: (@Sendable (CheckpointProgress) -> Void)?
    /// Copies of pending pieces taken by `releaseBorrowedBytes`, owned until the next release
    /// or deinit (by then every piece pointing at them has been written or copied again).
    private var ownedCopies: [UnsafeMutableRawBufferPointer] = []

    init(options: CheckpointOptions, output: CheckpointOutput, totalBytes: Int, operation: String,
         progress: (@Sendable (CheckpointProgress) -> Void)?) throws(MemSnapError) {
        try options.validate(during: operation)
        self.options = options
        self.output = output
        self.operation = operation
        self.totalBytes = totalBytes
        self.progress = progress
        planner = FramePlanner(chunkSize: options.chunkSize)
        let info = options.info.encoded()
        var header = CheckpointHeader(style: options.style, codec: options.codec, level: options.level,
                                      chunkSize: options.chunkSize, infoLength: info.count).encoded()
        header += info
        var checksum = ByteWriter()
        checksum.u64(CheckpointFormat.xxh3(info))
        header += checksum.bytes
        try output.write(header, during: operation)
    }

    private var batchSize: Int { options.style == .v1 ? 1 : max(4, options.threads * 4) }

    func add(_ extent: CheckpointExtent) throws(MemSnapError) {
        guard extent.offset <= UInt64(Int.max - extent.bytes.count) else {
            throw MemSnapError(operation, .invalidRange(offset: Int(truncatingIfNeeded: extent.offset), length: extent.bytes.count))
        }
        let end = Int(extent.offset) + extent.bytes.count
        imageSize = max(imageSize, end)
        ready += planner.add(extent)
        consumed += extent.bytes.count
        if ready.count >= batchSize { try writeReady() }
    }

    /// Writes every completed frame and copies the pieces of the partial frame, so the caller
    /// may reuse the memory its extents pointed to.
    func releaseBorrowedBytes() throws(MemSnapError) {
        try writeReady()
        let previous = ownedCopies
        ownedCopies = []
        _ = planner.repointPending { bytes in
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
            copy.copyMemory(from: bytes)
            ownedCopies.append(copy)
            return UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count])
        }
        for copy in previous { copy.deallocate() }
    }

    deinit {
        for copy in ownedCopies { copy.deallocate() }
    }

    func finish() throws(MemSnapError) -> CheckpointSummary {
        ready += planner.finish()
        try writeReady()
        let indexOffset = options.style == .v1 ? 0 : output.position
        if options.style != .v1 {
            try output.write(CheckpointIndex.encoded(frames), during: operation)
        }
        let fileSize = output.position + CheckpointFormat.footerSize
        let footer = CheckpointFooter(style: options.style, codec: options.codec, level: options.level,
                                      chunkSize: options.chunkSize, imageSize: imageSize, extentBytes: extentBytes,
                                      frameCount: frames.count, indexOffset: indexOffset, fileSize: fileSize)
        try output.write(footer.encoded(), during: operation)
        try output.commit(during: operation)
        return CheckpointSummary(style: options.style, codec: options.codec, frameCount: frames.count,
                                 imageSize: imageSize, extentBytes: extentBytes, fileSize: fileSize)
    }

    /// Encodes the ready frames on `options.threads` threads, then writes them in order.
    private func writeReady() throws(MemSnapError) {
        guard !ready.isEmpty else { return }
        let batch = ready
        ready = []
        let firstIndex = frames.count
        let slots = EncodedSlots(count: batch.count)
        let work = BorrowedFrames(batch)
        let counter = ParallelWork.Counter(count: batch.count)
        let codec = options.codec
        let level = options.level
        try ParallelWork.run(threads: min(options.style == .v1 ? 1 : options.threads, batch.count)) { _ in
            while let index = counter.claim() {
                slots.store(FrameEncoder.encode(work.frames[index], index: firstIndex + index, codec: codec, level: level), at: index)
            }
        }
        for index in 0..<batch.count {
            var encoded = slots.take(at: index)
            encoded.record.offset = output.position
            let header = encoded.record.encodedHeader()
            let place = "\(operation): frame \(encoded.record.index)"
            try withBytes(header) { (headerBytes) throws(MemSnapError) in
                if let compressed = encoded.compressed {
                    try withBytes(compressed) { (payload) throws(MemSnapError) in
                        try output.write([headerBytes, payload], during: place)
                    }
                } else {
                    try withBytes(encoded.table) { (table) throws(MemSnapError) in
                        try output.write([headerBytes, table] + encoded.pieces.map(\.bytes), during: place)
                    }
                }
            }
            extentBytes += batch[index].reduce(0) { $0 + $1.bytes.count }
            frames.append(encoded.record)
        }
        progress?(CheckpointProgress(bytesDone: consumed, bytesTotal: totalBytes))
    }
}

/// Frames of pieces handed to worker threads; the pieces point into memory the writer's caller
/// keeps alive for the whole call.
private struct BorrowedFrames: @unchecked Sendable {
    let frames: [[Piece]]
    init(_ frames: [[Piece]]) { self.frames = frames }
}

/// One slot per frame of a batch, each written by exactly one worker and read after they join.
private final class EncodedSlots: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<EncodedFrame?>
    private let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        slots.initialize(repeating: nil, count: count)
    }

    deinit {
        slots.deinitialize(count: count)
        slots.deallocate()
    }

    func store(_ frame: EncodedFrame, at index: Int) { slots[index] = frame }

    func take(at index: Int) -> EncodedFrame {
        guard let frame = slots[index] else { preconditionFailure("frame \(index) was not encoded") }
        return frame
    }
}

/// `Array.withUnsafeBytes` for typed throws (the standard one rethrows untyped errors).
func withBytes<Result>(
    _ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(MemSnapError) -> Result
) throws(MemSnapError) -> Result {
    try array.withUnsafeBytes { bytes in Swift.Result { () throws(MemSnapError) -> Result in try body(bytes) } }.get()
}
