#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing
import SystemPackage

/// A heap-like image with zero pages, and a partial last page.
func heapImage(size: Int, seed: UInt64 = 7) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.withUnsafeMutableBytes { SyntheticHeap(seed: seed).fill($0) }
    return bytes
}

let fixedInfo = CheckpointInfo([("host", "test"), ("time", "2026-11-21T00:00:00Z"), ("user", "tester"), ("application", "tests")])

func options(
    _ style: CheckpointStyle, _ codec: CheckpointCodec? = nil, threads: Int = 2, chunk: Int = 64 << 10, format: UInt16 = 2
) -> CheckpointOptions {
    CheckpointOptions(style: style, codec: codec, chunkSize: chunk, threads: threads, info: fixedInfo, formatVersion: format)
}

/// Records every extent restored, for exact comparisons.
final class RecordingTarget: CheckpointRestoreTarget, @unchecked Sendable {
    let extents = Locked<[UInt64: [UInt8]]>([:])  // tag -> image
    let committed = Locked<Int?>(nil)
    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        extents.withLock { images in
            var image = images[tag] ?? []
            if image.count < offset + bytes.count { image += [UInt8](repeating: 0, count: offset + bytes.count - image.count) }
            image.replaceSubrange(offset..<offset + bytes.count, with: bytes)
            images[tag] = image
        }
    }
    func commit(imageSize: Int) throws(MemSnapError) { committed.withLock { $0 = imageSize } }
}

func restoredImage(_ path: String, threads: Int) throws -> [UInt8] {
    let snapshot = try Checkpoint.restoreSnapshot(from: path, threads: threads)
    return try snapshot.read(at: 0, count: snapshot.size)
}

func fileBytes(_ path: String) -> [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }

struct StyleCodec: Sendable, CustomTestStringConvertible {
    var style: CheckpointStyle
    var codec: CheckpointCodec?
    var testDescription: String { codec.map { "\(style)/\($0)" } ?? "\(style)" }
}

let styleCodecs = [StyleCodec(style: .v1), StyleCodec(style: .v2), StyleCodec(style: .v3, codec: .lz4), StyleCodec(style: .v3, codec: .zstd)]

@Suite("Checkpoint round trips")
struct CheckpointRoundTripTests {
    @Test("every style and codec, written and restored with 1, 2, 4 and 8 threads", arguments: styleCodecs)
    func roundTrips(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: (3 << 20) + 1000)
        for threads in [1, 2, 4, 8] {
            let path = directory.file("image-\(threads).ckpt")
            let summary = try image.withUnsafeBytes { bytes in
                try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path,
                                     options: options(styleCodec.style, styleCodec.codec, threads: threads))
            }
            #expect(summary.imageSize == image.count)
            #expect(summary.extentBytes < image.count, "zero pages are not stored")
            for restoreThreads in [1, 3, 8] {
                #expect(try restoredImage(path, threads: restoreThreads) == image, "written with \(threads), restored with \(restoreThreads)")
            }
        }
        let reference = fileBytes(directory.file("image-1.ckpt"))
        for threads in [2, 4, 8] {
            #expect(fileBytes(directory.file("image-\(threads).ckpt")) == reference, "bit-identical with \(threads) threads")
        }
    }

    @Test(arguments: styleCodecs)
    func anEmptyImageRoundTrips(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let path = directory.file("empty.ckpt")
        let summary = try Checkpoint.write([], to: path, options: options(styleCodec.style, styleCodec.codec))
        #expect(summary.frameCount == 0 && summary.imageSize == 0)
        #expect(try restoredImage(path, threads: 2) == [])
        let zeros = [UInt8](repeating: 0, count: 3 * 4096)
        try zeros.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: directory.file("zeros.ckpt"),
                                     options: options(styleCodec.style, styleCodec.codec))
        }
        let file = try CheckpointFile(path: directory.file("zeros.ckpt"))
        #expect(file.frameCount == 0 && file.imageSize == zeros.count, "all-zero pages store nothing but the size")
        #expect(try restoredImage(directory.file("zeros.ckpt"), threads: 1) == zeros)
    }

    @Test func oneHugeExtentSpreadsOverManyFrames() throws {
        let directory = TemporaryDirectory()
        var image = [UInt8](repeating: 0, count: 8 << 20)
        var random = SplitMix64(seed: 3)
        for index in stride(from: 0, to: image.count, by: 8) {
            image.withUnsafeMutableBytes { $0.storeBytes(of: random.next(), toByteOffset: index, as: UInt64.self) }
        }
        let path = directory.file("huge.ckpt")
        let summary = try image.withUnsafeBytes { bytes in
            try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path, options: options(.v3, .lz4, threads: 4, chunk: 256 << 10))
        }
        #expect(summary.frameCount == 32, "8 MiB in 256 KiB frames")
        #expect(try restoredImage(path, threads: 4) == image)
    }

    @Test func manyTinyTaggedExtentsRoundTripExactly() throws {
        let directory = TemporaryDirectory()
        var random = SplitMix64(seed: 11)
        var storage: [[UInt8]] = []
        var placements: [(tag: UInt64, offset: UInt64)] = []
        for index in 0..<2000 {
            let length = 1 + Int(random.next() % 100)
            storage.append((0..<length).map { _ in UInt8(1 + random.next() % 255) })
            placements.append((UInt64(index % 3), UInt64(index / 3) * 128))
        }
        let path = directory.file("tiny.ckpt")
        try withExtendedLifetime(storage) {
            let extents = storage.indices.map { index in
                storage[index].withUnsafeBytes {
                    CheckpointExtent(tag: placements[index].tag, offset: placements[index].offset, bytes: $0)
                }
            }
            _ = try Checkpoint.write(extents, to: path, options: options(.v3, .zstd, threads: 3, chunk: 4096))
        }
        let target = RecordingTarget()
        try CheckpointFile(path: path).restore(into: target, threads: 4)
        for index in storage.indices {
            let image = target.extents.withLock { $0[placements[index].tag] } ?? []
            let offset = Int(placements[index].offset)
            #expect(Array(image[offset..<offset + storage[index].count]) == storage[index], "extent \(index)")
        }
    }

    @Test(arguments: styleCodecs)
    func aPipeRoundTripMatchesTheFile(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 2 << 20, seed: 21)
        let filePath = directory.file("file.ckpt")
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: filePath, options: options(styleCodec.style, styleCodec.codec))
        }
        // The image goes in through a pipe and the checkpoint comes out through another.
        var imageEnds: [Int32] = [0, 0], checkpointEnds: [Int32] = [0, 0]
        #expect(pipe(&imageEnds) == 0 && pipe(&checkpointEnds) == 0)
        let imagePipe = imageEnds, checkpointPipe = checkpointEnds
        let feeder = Thread {
            image.withUnsafeBytes { var done = 0; while done < $0.count { done += max(0, write(imagePipe[1], $0.baseAddress! + done, $0.count - done)) } }
            close(imagePipe[1])
        }
        let styleOptions = options(styleCodec.style, styleCodec.codec)
        let writerDone = DispatchSemaphore(value: 0)
        let writerResult = Locked<String?>(nil)
        let writer = Thread {
            do {
                _ = try Checkpoint.write(readingFrom: FileDescriptor(rawValue: imagePipe[0]), to: .descriptor(FileDescriptor(rawValue: checkpointPipe[1])), options: styleOptions)
            } catch {
                writerResult.withLock { $0 = "\(error)" }
            }
            close(checkpointPipe[1])
            writerDone.signal()
        }
        feeder.start()
        writer.start()
        let target = try MemoryImageTarget()
        let summary = try Checkpoint.restore(readingFrom: FileDescriptor(rawValue: checkpointPipe[0]), into: target)
        writerDone.wait()
        close(imagePipe[0]); close(checkpointPipe[0])
        #expect(writerResult.withLock { $0 } == nil)
        #expect(summary.imageSize == image.count)
        let restored = try Snapshot(adopting: target.file, size: summary.imageSize)
        #expect(try restored.read(at: 0, count: restored.size) == image)
        #expect(summary.fileSize == fileBytes(filePath).count, "the streamed checkpoint has the file's size")
    }

    @Test func aStreamedImageGivesTheSameFileAsAnImageInMemory() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: (5 << 20) + 12345, seed: 5)
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: directory.file("memory.ckpt"), options: options(.v3, .lz4, threads: 2))
        }
        let imagePath = directory.file("image.raw")
        _ = FileManager.default.createFile(atPath: imagePath, contents: Data(image))
        let input = open(imagePath, O_RDONLY)
        defer { close(input) }
        try Checkpoint.write(readingFrom: FileDescriptor(rawValue: input), to: .file(path: directory.file("stream.ckpt"), force: false), options: options(.v3, .lz4, threads: 3))
        #expect(fileBytes(directory.file("stream.ckpt")) == fileBytes(directory.file("memory.ckpt")))
    }

    @Test func snapshotsCheckpointAndRestore() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 1 << 20, seed: 9)
        let snapshot = try Snapshot(copying: image, maxSize: 4 << 20)
        try Checkpoint.write(snapshot, to: directory.file("snap.ckpt"), options: options(.v3, .zstd))
        let restored = try Checkpoint.restoreSnapshot(from: directory.file("snap.ckpt"), maxSize: 4 << 20, threads: 3)
        #expect(restored.size == image.count && restored.maxSize == 4 << 20)
        #expect(try restored.read(at: 0, count: image.count) == image)
    }
}

@Suite("Checkpoint integrity: damage is detected, never applied")
struct CheckpointIntegrityTests {
    /// A small v3 checkpoint with a few frames.
    func smallCheckpoint(_ directory: TemporaryDirectory, style: CheckpointStyle = .v3, format: UInt16 = 2) throws -> (path: String, image: [UInt8]) {
        let image = heapImage(size: 40 << 10, seed: 17)
        let path = directory.file("small.ckpt")
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path,
                                     options: options(style, style == .v3 ? .lz4 : nil, chunk: 8192, format: format))
        }
        return (path, image)
    }

    /// Opening, verifying and restoring `bytes` must all fail, leaving `existing` as it was.
    func expectRejected(_ bytes: [UInt8], in directory: TemporaryDirectory, _ comment: String) {
        let damaged = directory.file("damaged.ckpt")
        _ = FileManager.default.createFile(atPath: damaged, contents: Data(bytes))
        let existing = directory.file("existing.raw")
        _ = FileManager.default.createFile(atPath: existing, contents: Data("precious".utf8))
        do {
            let file = try CheckpointFile(path: damaged)
            try file.verify(threads: 2)
            try file.restore(into: ImageFileTarget(path: existing, force: true), threads: 2)
            Issue.record("not detected: \(comment)")
        } catch {
            #expect(error.description.contains("damaged.ckpt"), "the error names the file: \(error)")
        }
        #expect(fileBytes(existing) == Array("precious".utf8), "target untouched: \(comment)")
        #expect(directory.entries == ["damaged.ckpt", "existing.raw", "small.ckpt"], "no temporary file left: \(comment)")
    }

    /// Every byte after the frames: the index, the image map (format 2) and the footer.
    @Test(arguments: [CheckpointStyle.v1, .v2, .v3], [UInt16(1), 2])
    func everyByteFlipInHeaderIndexAndFooterIsDetected(style: CheckpointStyle, format: UInt16) throws {
        let directory = TemporaryDirectory()
        let (path, _) = try smallCheckpoint(directory, style: style, format: format)
        let original = fileBytes(path)
        let file = try CheckpointFile(path: path)
        let metadataStart = file.frames.last!.end
        let positions = Array(0..<(CheckpointFormat.headerSize + 8)) + Array(metadataStart..<original.count)
        for position in positions {
            var damaged = original
            damaged[position] ^= 0x01
            expectRejected(damaged, in: directory, "flip at \(position)")
        }
    }

    @Test func randomFlipsInFrameDataAreDetected() throws {
        let directory = TemporaryDirectory()
        let (path, _) = try smallCheckpoint(directory)
        let original = fileBytes(path)
        let file = try CheckpointFile(path: path)
        var random = SplitMix64(seed: 1)
        let dataRange = file.frames.first!.offset..<file.frames.last!.end
        for _ in 0..<200 {
            var damaged = original
            let position = dataRange.lowerBound + Int(random.next() % UInt64(dataRange.count))
            damaged[position] ^= UInt8(1 << (random.next() % 8))
            expectRejected(damaged, in: directory, "flip at \(position)")
        }
    }

    @Test func everyTruncationNearTheEndsIsDetected() throws {
        let directory = TemporaryDirectory()
        let (path, _) = try smallCheckpoint(directory)
        let original = fileBytes(path)
        for length in Array(0..<200) + Array(original.count - 200..<original.count) {
            expectRejected(Array(original.prefix(length)), in: directory, "truncated to \(length)")
        }
    }

    @Test func errorsNameTheFrameAndOffset() throws {
        let directory = TemporaryDirectory()
        let (path, _) = try smallCheckpoint(directory)
        var bytes = fileBytes(path)
        let file = try CheckpointFile(path: path)
        let frame = file.frames[2]
        bytes[frame.offset + CheckpointFormat.frameHeaderSize + 5] ^= 0xFF
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let error = expectMemSnapError { try CheckpointFile(path: path).verify() }
        #expect(error?.reason == .corrupt("checkpoint frame 2 at offset \(ByteCount(frame.offset)) (\(frame.offset)): checksum mismatch"))
    }

    @Test func aWrongMagicIsNamed() throws {
        let directory = TemporaryDirectory()
        let (path, _) = try smallCheckpoint(directory)
        var bytes = fileBytes(path)
        bytes[0] = 0x58
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let error = expectMemSnapError { _ = try CheckpointFile(path: path) }
        #expect(error?.reason == .corrupt("header at offset 0: wrong magic, not a memsnap checkpoint"))
    }

    @Test func anExistingOutputIsNotOverwrittenWithoutForceAndAFailedCheckpointLeavesNothing() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("out.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data("keep".utf8))
        let bytes = [UInt8](repeating: 1, count: 8192)
        let error = expectMemSnapError {
            try bytes.withUnsafeBytes { _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: path, options: options(.v2)) }
        }
        #expect(error?.reason == .invalidArgument("\(path) exists; pass --force (force: true) to replace it"))
        #expect(fileBytes(path) == Array("keep".utf8))
        try bytes.withUnsafeBytes { _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: path, options: options(.v2), force: true) }
        #expect(try restoredImage(path, threads: 1) == bytes)
        // A failure midway (an extent past Int.max) leaves no file behind.
        let failing = directory.file("failing.ckpt")
        _ = expectMemSnapError {
            try bytes.withUnsafeBytes {
                _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0), CheckpointExtent(offset: UInt64.max - 10, bytes: $0)],
                                         to: failing, options: options(.v2))
            }
        }
        #expect(directory.entries == ["out.ckpt"])
    }
}

/// Crafted files a review used to crash, hang or fool the reader, kept as specifications.
@Suite("Checkpoint reader against crafted files")
struct CheckpointCraftedFileTests {
    func v2Checkpoint(_ directory: TemporaryDirectory) throws -> (path: String, bytes: [UInt8], file: CheckpointFile) {
        let image = heapImage(size: 40 << 10, seed: 31)
        let path = directory.file("v2.ckpt")
        // Version 1: the positions below are those of its layout (the index ends at the footer).
        try image.withUnsafeBytes {
            _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: path, options: options(.v2, chunk: 8192, format: 1))
        }
        return (path, fileBytes(path), try CheckpointFile(path: path))
    }

    func store(_ value: UInt64, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + 8, with: $0) }
    }

    func reseal(index bytes: inout [UInt8], from start: Int, to end: Int) {
        store(CheckpointFormat.xxh3(Array(bytes[start..<end - 8])), at: end - 8, in: &bytes)
    }

    @Test func hugeRawSizesInAResealedIndexAreRejectedOnOpen() throws {
        let directory = TemporaryDirectory()
        var (path, bytes, file) = try v2Checkpoint(directory)
        let indexStart = file.frames.last!.end
        let indexEnd = bytes.count - CheckpointFormat.footerSize
        for entry in 0..<2 { store(1 << 62, at: indexStart + 16 + entry * 40 + 16, in: &bytes) }
        reseal(index: &bytes, from: indexStart, to: indexEnd)
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        let error = expectMemSnapError { try CheckpointFile(path: path).verify() }
        guard case let .corrupt(text)? = error?.reason else { Issue.record("expected corrupt, got \(String(describing: error))"); return }
        #expect(text.contains("entry 0: raw size 4611686018427387904"))
    }

    @Test func aStreamDeclaringAHugeFrameIsRejectedBeforeReadingIt() throws {
        let directory = TemporaryDirectory()
        let (_, bytes, file) = try v2Checkpoint(directory)
        var damaged = Array(bytes[0..<file.frames[0].offset + CheckpointFormat.frameHeaderSize])
        let header = file.frames[0].offset
        store(256 << 20, at: header + 8, in: &damaged)  // stored size
        store(256 << 20, at: header + 16, in: &damaged)  // raw size
        store(CheckpointFormat.xxh3(Array(damaged[header..<header + 40])), at: header + 40, in: &damaged)
        let error = try restoreFromPipe(damaged)
        #expect(error?.description.contains("checkpoint frame 0") == true, "\(String(describing: error))")
        #expect(error?.description.contains("out of range") == true, "\(String(describing: error))")
    }

    @Test func aV2StreamWithoutItsIndexIsRejected() throws {
        let directory = TemporaryDirectory()
        let (_, bytes, file) = try v2Checkpoint(directory)
        let indexStart = file.frames.last!.end
        let footerStart = bytes.count - CheckpointFormat.footerSize
        var footer = CheckpointFooter(style: .v2, codec: .none, level: 1, chunkSize: 8192, imageSize: file.imageSize,
                                      extentBytes: file.extentBytes, frameCount: file.frameCount, indexOffset: 0,
                                      fileSize: indexStart + CheckpointFormat.footerSize)
        _ = footerStart
        let damaged = Array(bytes[0..<indexStart]) + footer.encoded()
        let error = try restoreFromPipe(damaged)
        #expect(error?.reason == .corrupt("footer at offset \(ByteCount(indexStart)) (\(indexStart)): a v2 stream has no index"))
        footer.indexOffset = 1
        #expect(try restoreFromPipe(Array(bytes[0..<indexStart]) + footer.encoded()) != nil)
    }

    @Test func aWriterRefusesAnInfoSectionNoReaderWouldAccept() throws {
        let directory = TemporaryDirectory()
        let big = String(repeating: "x", count: 70_000)
        let info = CheckpointInfo((0..<20).map { ("key\($0)", big) })
        let error = expectMemSnapError {
            _ = try Checkpoint.write([], to: directory.file("info.ckpt"), options: CheckpointOptions(style: .v2, info: info))
        }
        guard case let .invalidArgument(text)? = error?.reason else { Issue.record("expected invalidArgument"); return }
        #expect(text.contains("at most 1048576 can be read back"))
        #expect(directory.entries.isEmpty, "nothing is left behind")
        #expect(CheckpointInfo.prefix("aé€", utf8Bytes: 4) == "aé", "info text is cut at character boundaries")
    }

    /// Feeds `bytes` to a one-pass restore through a pipe; returns its error (nil if accepted).
    func restoreFromPipe(_ bytes: [UInt8]) throws -> MemSnapError? {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let input = ends
        let feeder = Thread {
            bytes.withUnsafeBytes { buffer in
                var done = 0
                while done < buffer.count {
                    let written = write(input[1], buffer.baseAddress! + done, buffer.count - done)
                    if written <= 0 { break }
                    done += written
                }
            }
            close(input[1])
        }
        feeder.start()
        defer { close(input[0]) }
        do {
            _ = try Checkpoint.restore(readingFrom: FileDescriptor(rawValue: input[0]), into: MemoryImageTarget())
            return nil
        } catch {
            var drain = [UInt8](repeating: 0, count: 65536)
            while read(input[0], &drain, drain.count) > 0 {}
            return error
        }
    }
}
