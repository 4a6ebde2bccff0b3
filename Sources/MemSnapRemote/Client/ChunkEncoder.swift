import Dispatch
import Foundation
import MemSnap
import MemSnapCheckpoint

/// Encodes a snapshot's chunks into frames on background threads, ahead of the sender, for a
/// whole push: the frames arrive on `frames` as they are ready (in no fixed order), at most
/// `window` of them waiting, so compression overlaps sending and memory stays bounded.
///
/// Each chunk is read under the snapshot's read lock, from its first `imageSize` bytes: the
/// snapshot must not change during a push (a write would make the frames mix two states).
///
/// Ownership: the threads end when every chunk is encoded or the stream is dropped.
/// Thread safety: the stream may be consumed from any task.
final class ChunkEncoder: @unchecked Sendable {
    struct Chunk: Sendable {
        var index: Int
        /// Header and stored payload; nil for an all-zero chunk (no frame).
        var frame: Data?
        var payloadChecksum: UInt64
    }

    let frames: AsyncThrowingStream<Chunk, any Error>
    private let continuation: AsyncThrowingStream<Chunk, any Error>.Continuation
    private let room: DispatchSemaphore
    private let stopped = Locked(false)
    private let window: Int

    init(snapshot: Snapshot, imageSize: Int, chunkSize: Int, codec: CheckpointCodec, level: Int32,
         threads: Int, window: Int) throws(MemSnapError) {
        (frames, continuation) = AsyncThrowingStream.makeStream(of: Chunk.self)
        self.window = max(1, window)
        room = DispatchSemaphore(value: max(1, window))
        let chunkCount = (imageSize + chunkSize - 1) / chunkSize
        let counter = ParallelWork.Counter(count: chunkCount)
        let remaining = Locked(chunkCount)
        let continuation = self.continuation, room = self.room, stopped = self.stopped
        continuation.onTermination = { [weak self] _ in self?.stop() }
        if chunkCount == 0 { continuation.finish() }
        for thread in 0..<max(1, threads) where chunkCount > 0 {
            // Detached: the threads end when the chunks run out or `stop()` is called.
            try OSThread(name: "memsnap-push\(thread)") {
                var scratch = CheckpointFrames.EncodeScratch()
                while let index = counter.claim() {
                    room.wait()
                    if stopped.withLock({ $0 }) { return }
                    do {
                        let encoded = try snapshot.withUnsafeBytes { (image) throws(MemSnapError) in
                            try CheckpointFrames.encode(chunk: index, of: UnsafeRawBufferPointer(rebasing: image[0..<min(imageSize, image.count)]),
                                                        chunkSize: chunkSize, codec: codec, level: level, scratch: &scratch) { header, payload, checksum in
                                // The message's bytes field: built once, here, off the sending task.
                                var frame = Data(capacity: header.count + payload.count)
                                frame.append(contentsOf: header)
                                frame.append(contentsOf: payload)
                                return (frame, checksum)
                            }
                        }
                        continuation.yield(Chunk(index: index, frame: encoded?.0, payloadChecksum: encoded?.1 ?? 0))
                    } catch {
                        continuation.finish(throwing: error)
                        return
                    }
                    if remaining.withLock({ value in value -= 1; return value == 0 }) { continuation.finish() }
                }
            }.detach()
        }
    }

    /// The consumer took a chunk: one more may be encoded.
    func consumed() { room.signal() }

    /// Stops the threads (they finish the chunk in hand).
    func stop() {
        stopped.withLock { $0 = true }
        for _ in 0..<window * 2 { room.signal() }
    }
}
