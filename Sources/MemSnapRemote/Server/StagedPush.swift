import MemSnap
import MemSnapCheckpoint

/// A whole-snapshot push being received: the image staged in a memfd of its own, the frames
/// received so far, and their checksums for the image digest. Nothing of it is visible until
/// `finish` builds the snapshot.
///
/// Ownership: owns its staging file (released with the value, or handed to the
/// snapshot by `finish`). Thread safety: `receive` may run from several calls at once (a push
/// resumed while the first connection still drains); state changes are locked.
final class StagedPush: @unchecked Sendable {
    struct Header: Equatable {
        var key: String
        var epoch: UInt64
        var pushID: String
        var imageSize: Int
        var maxSize: Int
        var codec: CheckpointCodec
        var chunkSize: Int
        var mergeRegions: [MergeRegion]

        var chunkCount: Int { (imageSize + chunkSize - 1) / chunkSize }
    }

    let header: Header
    private let file: MemoryFile
    private let state = Locked(State())

    private struct State {
        var received = ChunkBitmap(count: 0)
        var checksums: [Int: UInt64] = [:]
        var lastTouched = ContinuousClock.now
    }

    /// Stages a push described by `header` (already checked against the server's limits).
    init(header: Header) throws(MemSnapError) {
        self.header = header
        // The header was checked: the image size is at most the server's maximum, far below Int.max.
        let mapped = Page.roundUp(max(header.imageSize, 1)) ?? Page.size
        file = try MemoryFile(name: "memsnap-push", size: mapped)
        state.withLock { $0.received = ChunkBitmap(count: header.chunkCount) }
    }

    var lastTouched: ContinuousClock.Instant { state.withLock { $0.lastTouched } }

    /// The frames received and verified so far.
    var received: ChunkBitmap { state.withLock { $0.received } }

    /// Checks `frame` and writes its pages into the staging image. `scratch` is the decoder's
    /// buffer (see `CheckpointFrames.decode`): one per thread calling.
    /// - Throws: `.corrupt` for a frame that does not verify; `.systemCall("pwritev", ENOSPC)`
    ///   when the server has no memory left for the image's pages.
    func receive(_ frame: UnsafeRawBufferPointer, scratch: inout [UInt8]) throws(MemSnapError) {
        let operation = "receive a frame of push \(header.pushID) for snapshot \"\(header.key)\""
        let descriptor = file.descriptor.rawValue
        // The decoder checks every extent against the image size before calling back. pwrite,
        // not a copy into a mapping: tmpfs zeroes a page it allocates for a fault but not one
        // that a write fills (a tenth of a push's CPU), and a full memory is an error, not SIGBUS.
        let decoded = try CheckpointFrames.decode(
            frame, chunkSize: header.chunkSize, codec: header.codec, imageSize: header.imageSize, scratch: &scratch, during: operation
        ) { (offset, bytes) throws(MemSnapError) in
            try writeAll(descriptor, [bytes], at: offset, during: operation)
        }
        state.withLock {
            $0.received.insert(decoded.index)
            $0.checksums[decoded.index] = decoded.payloadChecksum
            $0.lastTouched = .now
        }
    }

    /// The snapshot, once the frames received are exactly `frames` and their digest is
    /// `imageDigest`.
    /// - Throws: `.invalidArgument` naming how many frames are missing (the push stays staged);
    ///   `.corrupt` for frames received that the commit does not list, or a digest mismatch.
    func finish(frames: ChunkBitmap, imageDigest: UInt64) throws(MemSnapError) -> Snapshot {
        let operation = "commit push \(header.pushID) for snapshot \"\(header.key)\""
        let (received, checksums) = state.withLock { ($0.received, $0.checksums) }
        let missing = frames.subtracting(received)
        guard missing.memberCount == 0 else {
            throw MemSnapError(operation, .invalidArgument("\(missing.memberCount) of \(frames.memberCount) frames are missing"))
        }
        guard received.subtracting(frames).memberCount == 0 else {
            throw MemSnapError(operation, .corrupt("frames arrived for chunks the commit says are empty"))
        }
        var digest = ImageDigest()
        for chunk in frames.members { digest.add(chunk: chunk, payloadChecksum: checksums[chunk] ?? 0) }
        guard digest.finish(imageSize: header.imageSize) == imageDigest else {
            throw MemSnapError(operation, .corrupt("the image digest does not match the frames received"))
        }
        let snapshot = try Snapshot(adopting: file, size: header.imageSize, maxSize: header.maxSize)
        for region in header.mergeRegions { try snapshot.addMergeRegion(region) }
        return snapshot
    }
}
