#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// The file reader (`CheckpointFile`: open, verify, restore) and the stream reader
/// (`Checkpoint.restore(readingFrom:into:)`) share one set of structural rules
/// (`CheckpointStructure`): the same damage, every checksum re-sealed so that the rule itself is
/// reached, is refused by both with the same reason.
@Suite("Both checkpoint readers refuse the same re-sealed damage in the same words")
struct CheckpointReadersAgreeTests {
    /// A few frames of a heap-like image, in 8 KiB chunks, format version 2.
    func checkpoint(_ styleCodec: StyleCodec, in directory: TemporaryDirectory) throws -> [UInt8] {
        let image = heapImage(size: 40 << 10, seed: 23)
        let path = directory.file("readers.ckpt")
        try image.withUnsafeBytes {
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: path,
                                     options: options(styleCodec.style, styleCodec.codec, chunk: 8192))
        }
        defer { unlink(path) }
        return fileBytes(path)
    }

    /// `bytes` with its footer changed by `change` and re-sealed; returns them and the footer's offset.
    func changingFooter(_ bytes: [UInt8], _ change: (inout CheckpointFooter) -> Void) throws -> (bytes: [UInt8], footerOffset: Int) {
        let size = CheckpointFormat.footerSize(version: 2)
        let offset = bytes.count - size
        var footer = try Array(bytes[offset...]).withUnsafeBytes { try CheckpointFooter.decode($0, at: offset, version: 2, during: "test") }
        change(&footer)
        return (Array(bytes[..<offset]) + footer.encoded(), offset)
    }

    /// Both readers must refuse `bytes` with `.corrupt(expected)`, the file reader without committing.
    func expectBothRefuse(_ bytes: [UInt8], _ expected: String, in directory: TemporaryDirectory,
                          sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = directory.file("damaged.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        defer { unlink(path) }
        let target = RecordingTarget()
        let fileError = expectMemSnapError({
            let file = try CheckpointFile(path: path)
            try file.verify(threads: 2)
            try file.restore(into: target, threads: 2)
        }, sourceLocation: sourceLocation)
        #expect(fileError?.reason == .corrupt(expected), "file reader", sourceLocation: sourceLocation)
        #expect(target.committed.withLock { $0 } == nil, "never committed", sourceLocation: sourceLocation)
        let streamError = try CheckpointCraftedFileTests().restoreFromPipe(bytes)
        #expect(streamError?.reason == .corrupt(expected), "stream reader", sourceLocation: sourceLocation)
    }

    @Test("a footer whose settings differ from the header's", arguments: styleCodecs)
    func footerSettingsMustRepeatTheHeader(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let (bytes, footerOffset) = try changingFooter(try checkpoint(styleCodec, in: directory)) { $0.level += 1 }
        try expectBothRefuse(bytes, "footer at \(at(footerOffset)): settings differ from the header", in: directory)
    }

    @Test("a footer that miscounts the frames", arguments: styleCodecs)
    func footerFrameCountMustMatch(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        var frames = 0
        let (bytes, footerOffset) = try changingFooter(try checkpoint(styleCodec, in: directory)) {
            frames = $0.frameCount
            $0.frameCount += 1
        }
        try expectBothRefuse(bytes, "footer at \(at(footerOffset)): records \(frames + 1) frames, found \(frames)", in: directory)
    }

    @Test("a footer that records another checkpoint size", arguments: styleCodecs)
    func footerSizeMustMatch(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let original = try checkpoint(styleCodec, in: directory)
        let (bytes, footerOffset) = try changingFooter(original) { $0.fileSize += 4096 }
        try expectBothRefuse(bytes, "footer at \(at(footerOffset)): records \(original.count + 4096) bytes but the checkpoint has "
                             + "\(original.count)", in: directory)
    }

    @Test("a footer that miscounts the extent bytes", arguments: styleCodecs)
    func footerExtentBytesMustMatch(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        var recorded = 0
        let (bytes, _) = try changingFooter(try checkpoint(styleCodec, in: directory)) {
            $0.extentBytes -= 1
            recorded = $0.extentBytes
        }
        try expectBothRefuse(bytes, "frames hold \(recorded + 1) extent bytes, the footer records \(recorded)", in: directory)
    }

    @Test("an index entry that disagrees with its frame's header", arguments: [StyleCodec(style: .v2), StyleCodec(style: .v3, codec: .zstd)])
    func indexEntriesMustMatchFrameHeaders(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let original = try checkpoint(styleCodec, in: directory)
        let path = directory.file("probe.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data(original))
        let file = try CheckpointFile(path: path)
        unlink(path)
        let frame = file.frames[1]
        // The entry's payload checksum (its last field), then the index's own checksum, re-sealed.
        let indexStart = file.frames.last!.end
        let indexEnd = indexStart + CheckpointIndex.size(frameCount: file.frameCount)
        var bytes = original
        let field = indexStart + 16 + 1 * CheckpointFormat.indexEntrySize + 32
        bytes[field] ^= 0x01
        let checksum = CheckpointFormat.xxh3(Array(bytes[indexStart..<indexEnd - 8]))
        withUnsafeBytes(of: checksum.littleEndian) { bytes.replaceSubrange(indexEnd - 8..<indexEnd, with: $0) }
        try expectBothRefuse(bytes, "checkpoint frame 1 at \(at(frame.offset)): header disagrees with the index", in: directory)
    }
}
