#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing
import SystemPackage

/// Whatever a library caller passes is either done or refused with a typed error: never a trap,
/// never a file no reader accepts, never a temporary file left behind.
@Suite("Checkpoint arguments out of range are typed errors")
struct CheckpointArgumentTests {
    func expectRefused(_ options: CheckpointOptions, _ reason: MemSnapError.Reason, sourceLocation: SourceLocation = #_sourceLocation) {
        let directory = TemporaryDirectory()
        let bytes = [UInt8](repeating: 1, count: 4096)
        let error = expectMemSnapError({
            try bytes.withUnsafeBytes { _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: directory.file("out.ckpt"), options: options) }
        }, sourceLocation: sourceLocation)
        #expect(error?.reason == reason, sourceLocation: sourceLocation)
        #expect(directory.entries.isEmpty, sourceLocation: sourceLocation)
    }

    @Test func absurdOptionsAreRefused() {
        var options = options(.v3, .zstd)
        for chunk in [0, -4096, 4095, 4097, 128 << 20, Int.max, Int.min] {
            options.chunkSize = chunk
            expectRefused(options, .invalidArgument("chunk size \(chunk) must be a multiple of 4096 from 4096 to 64 MiB"))
        }
        options.chunkSize = 1 << 20
        for threads in [0, -1, 257, Int.max, Int.min] {
            options.threads = threads
            expectRefused(options, .invalidArgument("thread count \(threads) must be 1...256"))
        }
        options.threads = 2
        for level in [Int32.min, -1, 0, 23] {
            options.level = level
            expectRefused(options, .invalidArgument("zstd level \(level) must be 1...22"))
        }
        options.codec = .lz4
        options.level = 0
        expectRefused(options, .invalidArgument("lz4 acceleration 0 must be 1...65537"))
        options.codec = .none
        expectRefused(options, .invalidArgument("style v3 needs a codec (lz4 or zstd)"))
        var v1 = CheckpointOptions(style: .v1, info: fixedInfo)
        v1.codec = .lz4  // a v1 header with a codec is one every reader refuses
        expectRefused(v1, .invalidArgument("style v1 stores frames uncompressed: its codec must be none, not lz4"))
        let manyEntries = CheckpointInfo((0..<200_000).map { _ in ("", "") })
        expectRefused(CheckpointOptions(style: .v2, info: manyEntries),
                      .invalidArgument("the info section has 200000 entries; at most 1048576 bytes can be read back"))
    }

    @Test func extentsWhoseSizesOverflowAreRefusedBeforeAnythingIsRead() throws {
        let directory = TemporaryDirectory()
        // Never read: refused from their sizes alone.
        let huge = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: 0x1000), count: 1 << 62)
        let error = expectMemSnapError {
            _ = try Checkpoint.write([CheckpointExtent(tag: 0, offset: 0, bytes: huge), CheckpointExtent(tag: 1, offset: 0, bytes: huge),
                                      CheckpointExtent(tag: 2, offset: 0, bytes: huge)],
                                     to: directory.file("out.ckpt"), options: options(.v2))
        }
        #expect(error?.reason == .invalidArgument("the extents' sizes add up to more than Int.max bytes"))
        let past = expectMemSnapError {
            _ = try Checkpoint.write([CheckpointExtent(offset: UInt64.max - 10, bytes: huge)], toDescriptor: FileDescriptor(rawValue: -1), options: options(.v2))
        }
        #expect(past?.reason == .invalidArgument("extent 0: offset \(UInt64.max - 10) with \(1 << 62) bytes ends past Int.max"))
        #expect(directory.entries.isEmpty)
    }

    @Test("a one-pass checkpoint with the largest chunks and 256 threads reads bounded windows")
    func theLargestOptionsStayBounded() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 300 << 10, seed: 2)
        let imagePath = directory.file("image.raw")
        _ = FileManager.default.createFile(atPath: imagePath, contents: Data(image))
        // chunk x 4 x threads would be 64 GiB; the window is capped (256 MiB of address space).
        let largest = options(.v3, .lz4, threads: 256, chunk: 64 << 20)
        let input = open(imagePath, O_RDONLY | O_CLOEXEC)
        defer { close(input) }
        let summary = try Checkpoint.write(readingFrom: FileDescriptor(rawValue: input), to: .file(path: directory.file("out.ckpt"), force: false), options: largest)
        #expect(summary.imageSize == image.count)
        #expect(try restoredImage(directory.file("out.ckpt"), threads: 256) == image)
    }

    @Test func restoreAndVerifyRefuseThreadCountsOutsideTheirRange() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("small.ckpt")
        _ = try Checkpoint.write([], to: path, options: options(.v2))
        let file = try CheckpointFile(path: path)
        for threads in [0, -3, 257, Int.max] {
            expectReason(.invalidArgument("thread count \(threads) must be 1...256")) { try file.verify(threads: threads) }
            expectReason(.invalidArgument("thread count \(threads) must be 1...256")) { try file.restore(into: RecordingTarget(), threads: threads) }
        }
    }

    @Test func restoreTargetsRefuseNegativeSizes() throws {
        let directory = TemporaryDirectory()
        let target = try ImageFileTarget(path: directory.file("out.raw"), force: false)
        expectReason(.invalidRange(offset: 0, length: -1)) { try target.prepare(imageSize: -1) }
        expectReason(.invalidRange(offset: 0, length: -5)) { try MemoryImageTarget().prepare(imageSize: -5) }
        target.discard()
        #expect(directory.entries.isEmpty)
        expectReason(.invalidArgument("the output was already discarded or committed")) {
            try target.write(tag: 0, offset: 0, bytes: UnsafeRawBufferPointer(start: nil, count: 0))
        }
    }
}
