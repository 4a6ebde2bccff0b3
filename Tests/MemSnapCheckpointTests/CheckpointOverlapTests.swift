#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// Frames are restored in parallel, so two frames writing the same byte would make the result
/// depend on timing: readers reject extents that overlap anywhere, before committing anything.
@Suite("Checkpoint extents never overlap, within or across frames")
struct CheckpointOverlapTests {
    /// Four pages of distinct nonzero bytes in 4 KiB chunks: frame i holds exactly page i.
    func fourFrames(_ directory: TemporaryDirectory, _ styleCodec: StyleCodec) throws -> CraftedCheckpoint {
        let image: [UInt8] = (0..<4 * 4096).map { (index: Int) -> UInt8 in UInt8(1 + (index / 4096) * 50 + index % 7) }
        let path = directory.file("four.ckpt")
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path,
                                     options: options(styleCodec.style, styleCodec.codec, chunk: 4096))
        }
        let crafted = try CraftedCheckpoint(path: path)
        #expect(crafted.frames.map { $0.map(\.offset) } == [[0], [4096], [8192], [12288]])
        unlink(path)
        return crafted
    }

    /// Verify, a parallel file restore, a one-thread file restore into a file and a stream
    /// restore must all fail with `expected`, committing nothing and leaving nothing behind.
    func expectRejectedEverywhere(_ bytes: [UInt8], _ expected: (_ operation: String) -> MemSnapError,
                                  in directory: TemporaryDirectory, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = directory.file("crafted.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let file = try CheckpointFile(path: path)
        let verifyError = expectMemSnapError({ try file.verify(threads: 3) }, sourceLocation: sourceLocation)
        #expect(verifyError == expected("verify checkpoint \(path)"), sourceLocation: sourceLocation)
        let recording = RecordingTarget()
        let restoreError = expectMemSnapError({ try file.restore(into: recording, threads: 4) }, sourceLocation: sourceLocation)
        #expect(restoreError == expected("restore checkpoint \(path)"), sourceLocation: sourceLocation)
        #expect(recording.committed.withLock { $0 } == nil, "never committed", sourceLocation: sourceLocation)
        // Into a file too, on one thread (the parallel restore above used a recording target).
        let existing = directory.file("existing.raw")
        _ = FileManager.default.createFile(atPath: existing, contents: Data("precious".utf8))
        let fileError = expectMemSnapError({ try file.restore(into: ImageFileTarget(path: existing, force: true), threads: 1) },
                                           sourceLocation: sourceLocation)
        #expect(fileError == expected("restore checkpoint \(path)"), sourceLocation: sourceLocation)
        #expect(fileBytes(existing) == Array("precious".utf8), sourceLocation: sourceLocation)
        #expect(directory.entries == ["crafted.ckpt", "existing.raw"], "no temporary file left", sourceLocation: sourceLocation)
        let streamError = try restoreFromPipe(bytes)
        #expect(streamError?.reason == expected("").reason, "stream restore", sourceLocation: sourceLocation)
    }

    @Test("an extent moved onto the next frame's bytes is rejected, naming both frames", arguments: styleCodecs)
    func anOverlapWithTheNeighbouringFrameIsRejected(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        var crafted = try fourFrames(directory, styleCodec)
        crafted.frames[2][0].offset = 4096 + 100  // now 4196..<8292: into frame 1's page
        let offsets = try crafted.write(to: directory.file("probe.ckpt"))
        unlink(directory.file("probe.ckpt"))
        try expectRejectedEverywhere(try crafted.encoded(), { operation in
            MemSnapError(operation, .corrupt("checkpoint frame 2 at \(at(offsets[2])): extent bytes 4196..<8192 of tag 0 "
                                             + "are also in checkpoint frame 1 at \(at(offsets[1])); extents must not overlap"))
        }, in: directory)
    }

    @Test("an overlap between distant frames is found too", arguments: styleCodecs)
    func anOverlapBetweenDistantFramesIsRejected(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        var crafted = try fourFrames(directory, styleCodec)
        crafted.frames[3][0].offset = 10  // 10..<4106: over frame 0's page and frame 1's first bytes
        let offsets = try crafted.write(to: directory.file("probe.ckpt"))
        unlink(directory.file("probe.ckpt"))
        try expectRejectedEverywhere(try crafted.encoded(), { operation in
            MemSnapError(operation, .corrupt("checkpoint frame 3 at \(at(offsets[3])): extent bytes 10..<4096 of tag 0 "
                                             + "are also in checkpoint frame 0 at \(at(offsets[0])); extents must not overlap"))
        }, in: directory)
    }

    @Test func theSameOffsetsInDifferentTagsDoNotOverlap() throws {
        let directory = TemporaryDirectory()
        var crafted = try fourFrames(directory, StyleCodec(style: .v2))
        crafted.frames[1][0].offset = 0
        crafted.frames[1][0].tag = 7
        let path = directory.file("tags.ckpt")
        try crafted.write(to: path)
        let target = RecordingTarget()
        try CheckpointFile(path: path).restore(into: target, threads: 2)
        #expect(target.extents.withLock { $0[7] } == crafted.frames[1][0].bytes)
    }

    @Test func aWriterRefusesOverlappingExtentsAndLeavesNothing() throws {
        let directory = TemporaryDirectory()
        let first = [UInt8](repeating: 1, count: 8192), second = [UInt8](repeating: 2, count: 100)
        let error = expectMemSnapError {
            try first.withUnsafeBytes { firstBytes in
                try second.withUnsafeBytes { secondBytes in
                    _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: firstBytes), CheckpointExtent(tag: 1, offset: 0, bytes: secondBytes),
                                              CheckpointExtent(offset: 8000, bytes: secondBytes)],
                                             to: directory.file("out.ckpt"), options: options(.v2))
                }
            }
        }
        #expect(error?.reason == .invalidArgument("extents 0 and 2 overlap: bytes 8000..<8100 of tag 0"))
        #expect(directory.entries.isEmpty)
    }

    /// Feeds `bytes` to a one-pass restore through a pipe; returns its error (nil if accepted).
    func restoreFromPipe(_ bytes: [UInt8]) throws -> MemSnapError? {
        try CheckpointCraftedFileTests().restoreFromPipe(bytes)
    }
}
