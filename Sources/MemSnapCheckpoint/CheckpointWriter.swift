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
    /// One past the highest byte of any extent (zero pages included), or the image's size for
    /// an image checkpoint.
    public var imageSize: Int
    /// Nonzero extent bytes stored (before compression).
    public var extentBytes: Int
    /// Bytes of the whole checkpoint file or stream.
    public var fileSize: Int
    /// The file's identity (what a child names as its parent; see `CheckpointIdentity`).
    public var identity: CheckpointIdentity
    /// For an incremental checkpoint, the pages it holds (changed since its parent); nil for a full one.
    public var changedPages: Int?

    init(style: CheckpointStyle, codec: CheckpointCodec, frameCount: Int, imageSize: Int, extentBytes: Int, fileSize: Int,
         identity: CheckpointIdentity, changedPages: Int?) {
        self.style = style
        self.codec = codec
        self.frameCount = frameCount
        self.imageSize = imageSize
        self.extentBytes = extentBytes
        self.fileSize = fileSize
        self.identity = identity
        self.changedPages = changedPages
    }

    /// What the file `file` holds.
    public init(_ file: CheckpointFile) {
        self.init(style: file.style, codec: file.codec, frameCount: file.frameCount, imageSize: file.imageSize,
                  extentBytes: file.extentBytes, fileSize: file.fileSize, identity: file.identity,
                  changedPages: file.isIncremental ? file.map.changedRuns.pageCount : nil)
    }
}

/// What a version-2 checkpoint says about its image besides the extents.
struct ImageDescription {
    /// The parent of an incremental checkpoint: the extents are the changed pages (whole pages
    /// of tag 0; a page an extent touches is replaced whole, zeros where no extent has bytes).
    var parent: CheckpointParent?
    var arenaState: CheckpointArenaState?
    /// Store a hash of every nonzero page (extents must all have tag 0).
    var pageHashes = false
    /// The image's size when the extents end before it (an unchanged end of an incremental
    /// image); 0 to take it from the extents.
    var imageSize = 0

    static let plain = ImageDescription()
}

/// Writes a checkpoint: header, info, frames (encoded in parallel, written in order), index,
/// image map (version 2), footer. Feed extents with `add`; bytes an extent points to may be
/// reused only after `releaseBorrowedBytes()` (which writes or copies everything that still
/// points at them).
final class CheckpointWriter {
    let options: CheckpointOptions
    let output: CheckpointOutput
    let operation: String
    let description: ImageDescription
    private let version: UInt16
    private let flags: CheckpointFlags
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
    /// Header and info section as written, for the identity.
    private let prefix: [UInt8]
    /// Pages an incremental checkpoint replaces.
    private var changed = ByteRangeSet()
    /// Hashes of whole pages, in frame order, and pages covered in part, joined by page.
    private var wholePageHashes: [(page: Int, hash: UInt64)] = []
    private var partialPages: [Int: [UInt8]] = [:]
    /// At least this many bytes of image, whatever the extents reach.
    private var declaredImageSize: Int

    init(options: CheckpointOptions, output: CheckpointOutput, totalBytes: Int, operation: String,
         progress: (@Sendable (CheckpointProgress) -> Void)?, image: ImageDescription = .plain) throws(MemSnapError) {
        try options.validate(during: operation)
        version = options.formatVersion
        guard version >= 2 || (image.parent == nil && image.arenaState == nil) else {
            throw MemSnapError(operation, .invalidArgument(
                "format version 1 has no room for a parent or an arena's state: write version 2"))
        }
        if let parent = image.parent {
            if let problem = CheckpointParent.nameProblem(parent.name) { throw MemSnapError(operation, .invalidArgument(problem)) }
            guard parent.imageSize >= 0, parent.identity != .none else {
                throw MemSnapError(operation, .invalidArgument("the parent's image size \(parent.imageSize) or identity is not a checkpoint's"))
            }
        }
        guard image.imageSize >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: image.imageSize)) }
        var flags = CheckpointFlags()
        if image.parent != nil { flags.insert(.incremental) }
        if image.pageHashes && version >= 2 { flags.insert(.pageHashes) }
        if image.arenaState != nil { flags.insert(.arenaState) }
        self.flags = flags
        self.options = options
        self.output = output
        self.operation = operation
        self.description = image
        self.declaredImageSize = image.imageSize
        self.totalBytes = totalBytes
        self.progress = progress
        planner = FramePlanner(chunkSize: options.chunkSize)
        let info = options.info.encoded()
        var header = CheckpointHeader(version: version, style: options.style, codec: options.codec, level: options.level,
                                      chunkSize: options.chunkSize, infoLength: info.count, flags: flags,
                                      parent: image.parent?.identity ?? .none).encoded()
        header += info
        var checksum = ByteWriter()
        checksum.u64(CheckpointFormat.xxh3(info))
        header += checksum.bytes
        prefix = header
        try output.write(header, during: operation)
    }

    func add(_ extent: CheckpointExtent) throws(MemSnapError) {
        guard extent.offset <= UInt64(Int.max - extent.bytes.count) else {
            throw MemSnapError(operation, .invalidRange(offset: Int(truncatingIfNeeded: extent.offset), length: extent.bytes.count))
        }
        let end = Int(extent.offset) + extent.bytes.count
        if !flags.isDisjoint(with: [.incremental, .pageHashes]) && extent.tag != 0 {
            throw MemSnapError(operation, .invalidArgument(
                "extent with tag \(extent.tag): an incremental checkpoint, or one with page hashes, holds one image (tag 0)"))
        }
        if flags.contains(.incremental) && !extent.bytes.isEmpty {
            changed.insert(Int(extent.offset) / CheckpointFormat.pageSize..<CheckpointFormat.pageCount(end))
        }
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

    /// Makes the image at least `size` bytes long (its end may hold no extent: an incremental
    /// checkpoint stores only the pages that changed).
    func declareImageSize(_ size: Int) { declaredImageSize = max(declaredImageSize, size) }

    func finish() throws(MemSnapError) -> CheckpointSummary {
        ready += planner.finish()
        try writeReady()
        imageSize = max(imageSize, declaredImageSize)
        let identity = IdentityHasher()
        identity.update(prefix)
        identity.update(frames: frames)
        let indexOffset = options.style == .v1 ? 0 : output.position
        if options.style != .v1 {
            let index = CheckpointIndex.encoded(frames)
            identity.update(index)
            try output.write(index, during: operation)
        }
        var mapOffset = 0
        if version >= 2 {
            let map = try imageMap()
            identity.update(map)
            mapOffset = output.position
            try output.write(map, during: operation)
        }
        let fileSize = output.position + CheckpointFormat.footerSize(version: version)
        let footer = CheckpointFooter(version: version, style: options.style, codec: options.codec, level: options.level,
                                      chunkSize: options.chunkSize, imageSize: imageSize, extentBytes: extentBytes,
                                      frameCount: frames.count, indexOffset: indexOffset, fileSize: fileSize, flags: flags,
                                      mapOffset: mapOffset).encoded()
        identity.update(footer)
        try output.write(footer, during: operation)
        try output.commit(during: operation)
        return CheckpointSummary(style: options.style, codec: options.codec, frameCount: frames.count,
                                 imageSize: imageSize, extentBytes: extentBytes, fileSize: fileSize, identity: identity.digest(),
                                 changedPages: flags.contains(.incremental) ? changed.ranges.reduce(0) { $0 + $1.count } : nil)
    }

    /// The image map: changed pages, page hashes, the parent's name and size, the arena state.
    private func imageMap() throws(MemSnapError) -> [UInt8] {
        var map = CheckpointImageMap()
        if let parent = description.parent {
            map.parentImageSize = parent.imageSize
            map.parentName = parent.name
            map.changedRuns = PageRuns(sorted: changed.ranges)
            if parent.imageSize != imageSize {
                let first = min(parent.imageSize, imageSize) / CheckpointFormat.pageSize
                let pages = first..<max(first, CheckpointFormat.pageCount(imageSize))
                guard map.changedRuns.contains(pages) else {
                    throw MemSnapError(operation, .invalidArgument(
                        "the image changes size from \(parent.imageSize) to \(imageSize) bytes: pages \(pages) must be given as changed"))
                }
            }
        }
        if let state = description.arenaState {
            if let problem = state.problem(imageSize: imageSize) {
                throw MemSnapError(operation, .invalidArgument("arena state: \(problem)"))
            }
            map.arenaState = state
        }
        var hashes: [UInt64] = []
        if flags.contains(.pageHashes) {
            var entries = wholePageHashes
            for (page, bytes) in partialPages {
                let length = CheckpointFormat.pageLength(page, imageSize: imageSize)
                entries.append((page, bytes.withUnsafeBytes { CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }))
            }
            if !entries.indices.dropFirst().allSatisfy({ entries[$0 - 1].page < entries[$0].page }) {
                entries.sort { $0.page < $1.page }
            }
            var runs: [Range<Int>] = []
            hashes.reserveCapacity(entries.count)
            for entry in entries {
                if let last = runs.last, last.upperBound == entry.page {
                    runs[runs.count - 1] = last.lowerBound..<entry.page + 1
                } else if let last = runs.last, last.upperBound > entry.page {
                    throw MemSnapError(operation, .invalidArgument("page \(entry.page) was given twice"))
                } else {
                    runs.append(entry.page..<entry.page + 1)
                }
                hashes.append(entry.hash)
            }
            map.hashRuns = PageRuns(sorted: runs)
        }
        return map.encoded(hashes: hashes)
    }

    /// Takes the page hashes of a frame just written.
    private func collect(_ hashes: PageHashes) {
        wholePageHashes += hashes.whole
        for fragment in hashes.fragments {
            var page = partialPages[fragment.page] ?? [UInt8](repeating: 0, count: CheckpointFormat.pageSize)
            page.replaceSubrange(fragment.offset..<fragment.offset + fragment.bytes.count, with: fragment.bytes)
            partialPages[fragment.page] = page
        }
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
        let hashing = flags.contains(.pageHashes)
        let pipeline = FramePipeline(frames: BorrowedFrames(batch), firstIndex: firstIndex, codec: options.codec,
                                     level: options.level, hashingPages: hashing, window: max(4, options.threads * 4))
        // Workers encode on ParallelWork helpers while this thread writes, in order.
        try ParallelWork.run(helpers: workers, { _ in pipeline.encodeUntilDone() }, stop: pipeline.cancel) { () throws(MemSnapError) in
            for index in 0..<batch.count {
                // Without workers (v1, v2) this thread encodes each frame itself, in order.
                var encoded = workers == 0
                    ? try FrameEncoder.encode(batch[index], index: firstIndex + index, codec: options.codec, level: options.level,
                                              hashingPages: hashing)
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
                collect(encoded.hashes)
                if index % 16 == 15 { progress?(CheckpointProgress(bytesDone: consumed, bytesTotal: totalBytes)) }
            }
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
    private let hashingPages: Bool
    private let window: Int
    private let condition = NSCondition()
    // Guarded by `condition`.
    private var nextToClaim = 0
    private var taken = 0
    private var results: [Int: Result<EncodedFrame, MemSnapError>] = [:]
    private var cancelled = false

    init(frames: BorrowedFrames, firstIndex: Int, codec: CheckpointCodec, level: Int32, hashingPages: Bool, window: Int) {
        self.frames = frames
        self.firstIndex = firstIndex
        self.codec = codec
        self.level = level
        self.hashingPages = hashingPages
        self.window = window
    }

    func encodeUntilDone() {
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
                try FrameEncoder.encode(frames.frames[index], index: firstIndex + index, codec: codec, level: level,
                                        hashingPages: hashingPages)
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
}

/// Frames of pieces handed to worker threads; the pieces point into memory the writer's caller
/// keeps alive for the whole call.
private struct BorrowedFrames: @unchecked Sendable {
    let frames: [[Piece]]
    init(_ frames: [[Piece]]) { self.frames = frames }
}
