#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// A file cut while it is read (another process truncating it, a full disk being cleaned) must
/// be a thrown error, never SIGBUS: checkpoints and raw images are read with pread, not mapped.
@Suite("Files that shrink while they are read")
struct CheckpointShrinkingFileTests {
    func checkpoint(_ directory: TemporaryDirectory, _ styleCodec: StyleCodec) throws -> String {
        let image = heapImage(size: 256 << 10, seed: 41)
        let path = directory.file("shrinking.ckpt")
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path,
                                     options: options(styleCodec.style, styleCodec.codec, chunk: 8192))
        }
        return path
    }

    func expectShrank(_ error: MemSnapError?, _ comment: Comment, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case let .corrupt(text)? = error?.reason else {
            Issue.record("expected a corrupt error, got \(String(describing: error)): \(comment)", sourceLocation: sourceLocation)
            return
        }
        #expect(text.contains("truncated while reading: the file shrank"), "\(text): \(comment)", sourceLocation: sourceLocation)
    }

    @Test("a checkpoint cut after it was opened fails verify and restore with a typed error", arguments: styleCodecs)
    func aCheckpointCutAfterOpeningIsATypedError(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let path = try checkpoint(directory, styleCodec)
        let file = try CheckpointFile(path: path)
        let lastFrame = file.frames[file.frameCount - 1]
        #expect(truncate(path, off_t(lastFrame.offset + 10)) == 0)
        let verifyError = expectMemSnapError { try file.verify(threads: 2) }
        expectShrank(verifyError, "verify")
        #expect(verifyError?.reason == .corrupt(
            "checkpoint frame \(lastFrame.index) at \(at(lastFrame.offset)): truncated while reading: the file shrank (a "
            + "\(CheckpointFormat.frameHeaderSize + lastFrame.storedSize)-byte read at \(at(lastFrame.offset)) found 10 bytes; "
            + "the file had \(file.fileSize) when opened)"))
        let output = directory.file("restored.raw")
        expectShrank(expectMemSnapError { try file.restore(into: ImageFileTarget(path: output, force: false), threads: 3) }, "restore")
        #expect(directory.entries == ["shrinking.ckpt"], "no restored image and no temporary file")
    }

    @Test("a checkpoint truncated by another thread while restore threads read it", arguments: styleCodecs)
    func aCheckpointCutDuringARestoreIsATypedError(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let path = try checkpoint(directory, styleCodec)
        let file = try CheckpointFile(path: path)
        // The first frame restored cuts the file to its header: frames still to come are gone.
        let cut = Locked(false)
        let progress: @Sendable (CheckpointProgress) -> Void = { _ in
            cut.withLock { done in
                if !done { _ = truncate(path, 64) }
                done = true
            }
        }
        let target = RecordingTarget()
        expectShrank(expectMemSnapError { try file.restore(into: target, threads: 2, progress: progress) }, "restore")
        #expect(target.committed.withLock { $0 } == nil)
    }

    @Test("a frame read whole whose bytes fail a check is the shrink when the file is now shorter than the frame")
    func aFrameCutDuringItsReadIsTheShrink() throws {
        // A truncation racing with a read can leave the read whole but zeroed (the kernel zeroes
        // the cut part of the page it keeps): the check that fails then must name the shrink.
        let directory = TemporaryDirectory()
        let path = try checkpoint(directory, StyleCodec(style: .v3, codec: .lz4))
        let file = try CheckpointFile(path: path)
        let frame = file.frames[1]
        let length = CheckpointFormat.frameHeaderSize + frame.storedSize
        #expect(file.shrinkError(readAt: frame.offset, count: length, place: "checkpoint frame 1", finding: "not a frame header",
                                 during: "restore") == nil, "the file is whole: the finding stands")
        #expect(truncate(path, off_t(frame.offset + length - 1)) == 0)
        #expect(file.shrinkError(readAt: frame.offset, count: length, place: "checkpoint frame 1", finding: "not a frame header",
                                 during: "restore") == MemSnapError("restore", .corrupt(
            "checkpoint frame 1: truncated while reading: the file shrank (to \(frame.offset + length - 1) bytes, during a "
            + "\(length)-byte read at \(at(frame.offset)) whose bytes then failed a check: not a frame header; the file had "
            + "\(file.fileSize) when opened)")))
        #expect(file.shrinkError(readAt: file.frames[0].offset, count: CheckpointFormat.frameHeaderSize + file.frames[0].storedSize,
                                 place: "checkpoint frame 0", finding: "not a frame header", during: "restore") == nil,
                "frame 0 is still whole: its finding stands")
    }

    @Test("a raw image cut while it is checkpointed is an error, not a shorter checkpoint")
    func aSourceCutWhileItIsCheckpointedIsATypedError() throws {
        let directory = TemporaryDirectory()
        let imagePath = directory.file("image.raw")
        _ = FileManager.default.createFile(atPath: imagePath, contents: Data(heapImage(size: 1 << 20, seed: 43)))
        // Windows of 4 chunks of 4 KiB: the first window written cuts the image.
        let cut = Locked(false)
        let progress: @Sendable (CheckpointProgress) -> Void = { _ in
            cut.withLock { done in
                if !done { _ = truncate(imagePath, 4096) }
                done = true
            }
        }
        let error = expectMemSnapError {
            try Checkpoint.write(contentsOfFileAt: imagePath, to: .file(path: directory.file("out.ckpt"), force: false),
                                 options: options(.v2, threads: 1, chunk: 4096), progress: progress)
        }
        expectShrank(error, "checkpoint of a shrinking source")
        #expect(directory.entries == ["image.raw"], "no checkpoint and no temporary file")
    }
}
