#if canImport(Glibc)
import Glibc
#endif
import Foundation
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

    func add(_ extent: CheckpointExtent) throws(MemSnapError) {
        guard extent.offset <= UInt64(Int.max - extent.bytes.count) else {
            throw MemSnapError(operation, .invalidRange(offset: Int(truncatingIfNeeded: extent.offset), length: extent.bytes.count))
        }
        let end = Int(extent.offset) + extent.bytes.count
        imageSize = max(imageSize, end)
        ready += planner.add(extent)
        consumed &+= extent.bytes.count  // progress only; callers check their totals
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

    /// Encodes the ready frames on `options.threads` threads while this thread writes them, in
    /// order, as they complete: a pipeline with at most `window` frames encoded ahead of the
    /// writer (bounded memory). The bytes written do not depend on the thread count.
    private func writeReady() throws(MemSnapError) {
        guard !ready.isEmpty else { return }
        let batch = ready
        ready = []
        let firstIndex = frames.count
        // Frame headers store their index as a u32 (an image of 16 TiB in 4 KiB chunks).
        guard batch.count <= Int(UInt32.max) + 1 - firstIndex else {
            throw MemSnapError(operation, .invalidArgument("more than 2^32 frames; use a larger chunk size"))
        }
        // Only compression is worth other threads: an uncompressed frame is hashed (XXH3, tens of
        // GB/s) and written by this thread while its bytes are still in cache; hashing it on a
        // worker made v2 slower than v1 (the writer then re-read every frame from memory).
        let workers = options.codec == .none ? 0 : min(options.threads, batch.count)
        let pipeline = FramePipeline(frames: BorrowedFrames(batch), firstIndex: firstIndex, codec: options.codec,
                                     level: options.level, window: max(4, options.threads * 4))
        var threads: [Thread] = []
        for _ in 0..<workers {
            let thread = Thread { pipeline.encodeUntilDone() }
            thread.stackSize = 1 << 20
            threads.append(thread)
            thread.start()
        }
        defer {
            pipeline.cancel()
            pipeline.waitForWorkers(workers)
        }
        for index in 0..<batch.count {
            // Without workers (v1, v2) this thread encodes each frame itself, in order.
            var encoded = workers == 0
                ? try FrameEncoder.encode(batch[index], index: firstIndex + index, codec: options.codec, level: options.level)
                : try pipeline.take(index).get()
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
            if index % 16 == 15 { progress?(CheckpointProgress(bytesDone: consumed, bytesTotal: totalBytes)) }
        }
        progress?(CheckpointProgress(bytesDone: consumed, bytesTotal: totalBytes))
    }
}

/// Workers claim frames in order and encode them; the writer takes each in order. A worker
/// waits while it is `window` frames ahead of the writer.
private final class FramePipeline: @unchecked Sendable {
    private let frames: BorrowedFrames
    private let firstIndex: Int
    private let codec: CheckpointCodec
    private let level: Int32
    private let window: Int
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var nextToClaim = 0
    private var taken = 0
    private var results: [Int: Result<EncodedFrame, MemSnapError>] = [:]
    private var cancelled = false
    private var finishedWorkers = 0

    init(frames: BorrowedFrames, firstIndex: Int, codec: CheckpointCodec, level: Int32, window: Int) {
        self.frames = frames
        self.firstIndex = firstIndex
        self.codec = codec
        self.level = level
        self.window = window
    }

    func encodeUntilDone() {
        defer {
            condition.lock()
            finishedWorkers += 1
            condition.broadcast()
            condition.unlock()
        }
        while true {
            condition.lock()
            while !cancelled && nextToClaim < frames.frames.count && nextToClaim >= taken + window { condition.wait() }
            guard !cancelled, nextToClaim < frames.frames.count else {
                condition.unlock()
                return
            }
            let index = nextToClaim
            nextToClaim += 1
            condition.unlock()
            let encoded = Result { () throws(MemSnapError) -> EncodedFrame in
                try FrameEncoder.encode(frames.frames[index], index: firstIndex + index, codec: codec, level: level)
            }
            condition.lock()
            results[index] = encoded
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Waits for frame `index` (taken in order) and hands it over.
    func take(_ index: Int) -> Result<EncodedFrame, MemSnapError> {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let frame = results.removeValue(forKey: index) {
                taken = index + 1
                condition.broadcast()
                return frame
            }
            condition.wait()
        }
    }

    /// Stops workers from claiming more frames (after an error, or when all are taken).
    func cancel() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
    }

    func waitForWorkers(_ count: Int) {
        condition.lock()
        while finishedWorkers < count { condition.wait() }
        condition.unlock()
    }
}

/// Frames of pieces handed to worker threads; the pieces point into memory the writer's caller
/// keeps alive for the whole call.
private struct BorrowedFrames: @unchecked Sendable {
    let frames: [[Piece]]
    init(_ frames: [[Piece]]) { self.frames = frames }
}
