#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// `Checkpoint.write(contentsOfFileAt:)` checkpoints whatever a path names: a regular file, a
/// FIFO, a pipe behind /dev/fd (what `<(...)` and /dev/stdin are), a character device. Each gives
/// exactly the file the same bytes give from memory.
@Suite("Checkpointing whatever a path names")
struct CheckpointSourceTests {
    /// The checkpoint of `image` from memory, the reference every source must match.
    func reference(_ image: [UInt8], _ options: CheckpointOptions, in directory: TemporaryDirectory) throws -> [UInt8] {
        let path = directory.file("reference.ckpt")
        defer { unlink(path) }
        try image.withUnsafeBytes { bytes in
            _ = try Checkpoint.write(bytes.isEmpty ? [] : [CheckpointExtent(offset: 0, bytes: bytes)], to: path, options: options)
        }
        return fileBytes(path)
    }

    /// Starts a thread that opens `path` for writing, writes `bytes` in pieces and closes it.
    func feed(_ bytes: [UInt8], toPathOpenedLater path: String) -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let descriptor = open(path, O_WRONLY | O_CLOEXEC)
            bytes.withUnsafeBytes { buffer in
                var written = 0
                while written < buffer.count, let base = buffer.baseAddress {
                    let count = write(descriptor, base + written, min(buffer.count - written, 7777))
                    if count <= 0 { break }
                    written += count
                }
            }
            close(descriptor)
            done.signal()
        }
        thread.start()
        return done
    }

    static let seed: UInt64 = ProcessInfo.processInfo.environment["MEMSNAP_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64(time(nil))

    @Test("a FIFO fed by another thread gives the same checkpoint as the bytes in memory", arguments: styleCodecs)
    func aFifoMatchesMemory(styleCodec: StyleCodec) throws {
        print("CheckpointSourceTests seed \(Self.seed) (replay with MEMSNAP_TEST_SEED=\(Self.seed))")
        var random = SplitMix64(seed: Self.seed)
        let directory = TemporaryDirectory()
        for round in 0..<3 {
            // Sizes that end mid-page and mid-chunk, chunks from one page up, several thread counts.
            let size = Int(random.next() % (3 << 20))
            let chunk = 4096 << Int(random.next() % 6)
            let threads = 1 + Int(random.next() % 4)
            let image = heapImage(size: size, seed: random.next())
            let styleOptions = options(styleCodec.style, styleCodec.codec, threads: threads, chunk: chunk)
            let fifo = directory.file("image.fifo")
            #expect(mkfifo(fifo, 0o600) == 0)
            let fed = feed(image, toPathOpenedLater: fifo)
            let output = directory.file("fifo.ckpt")
            let summary = try Checkpoint.write(contentsOfFileAt: fifo, to: .file(path: output, force: true), options: styleOptions)
            fed.wait()
            let comment: Comment = "round \(round): \(size) bytes, chunk \(chunk), \(threads) threads"
            #expect(summary.imageSize == size, comment)
            #expect(fileBytes(output) == (try reference(image, styleOptions, in: directory)), comment)
            unlink(fifo)
            unlink(output)
        }
    }

    @Test("a pipe reached through /dev/fd (as <(...) and /dev/stdin are) is read as a stream")
    func aPipeThroughDevFdMatchesMemory() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: (2 << 20) + 333, seed: 8)
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let readEnd = ends[0], writeEnd = ends[1]
        defer { close(readEnd) }
        let fed = DispatchSemaphore(value: 0)
        Thread {
            image.withUnsafeBytes { buffer in
                var written = 0
                while written < buffer.count, let base = buffer.baseAddress {
                    let count = write(writeEnd, base + written, buffer.count - written)
                    if count <= 0 { break }
                    written += count
                }
            }
            close(writeEnd)
            fed.signal()
        }.start()
        let styleOptions = options(.v3, .zstd, threads: 2)
        try Checkpoint.write(contentsOfFileAt: "/dev/fd/\(readEnd)", to: .file(path: directory.file("pipe.ckpt"), force: false),
                             options: styleOptions)
        fed.wait()
        #expect(fileBytes(directory.file("pipe.ckpt")) == (try reference(image, styleOptions, in: directory)))
    }

    @Test("/dev/null, a character device, is an empty image", arguments: styleCodecs)
    func aCharacterDeviceIsReadAsAStream(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let styleOptions = options(styleCodec.style, styleCodec.codec)
        let summary = try Checkpoint.write(contentsOfFileAt: "/dev/null", to: .file(path: directory.file("null.ckpt"), force: false),
                                           options: styleOptions)
        #expect(summary.imageSize == 0 && summary.frameCount == 0)
        #expect(fileBytes(directory.file("null.ckpt")) == (try reference([], styleOptions, in: directory)))
    }

    @Test("a regular file gives the same checkpoint as the bytes in memory", arguments: styleCodecs)
    func aRegularFileMatchesMemory(styleCodec: StyleCodec) throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: (5 << 20) + 12345, seed: 12)
        _ = FileManager.default.createFile(atPath: directory.file("image.raw"), contents: Data(image))
        let styleOptions = options(styleCodec.style, styleCodec.codec, threads: 3, chunk: 256 << 10)
        let summary = try Checkpoint.write(contentsOfFileAt: directory.file("image.raw"),
                                           to: .file(path: directory.file("file.ckpt"), force: false), options: styleOptions)
        #expect(summary.imageSize == image.count)
        #expect(fileBytes(directory.file("file.ckpt")) == (try reference(image, styleOptions, in: directory)))
    }

    @Test func aDirectoryIsRefusedAndNothingIsLeft() throws {
        let directory = TemporaryDirectory()
        let output = directory.file("dir.ckpt")
        let error = expectMemSnapError {
            try Checkpoint.write(contentsOfFileAt: directory.path, to: .file(path: output, force: false), options: options(.v1))
        }
        #expect(error?.errno == .isDirectory)
        #expect(directory.entries.isEmpty)
    }

    @Test func aCheckpointThroughAFifoRestoresAsAStream() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 1 << 20, seed: 4)
        let checkpoint = directory.file("image.ckpt")
        try image.withUnsafeBytes { _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: checkpoint, options: options(.v3, .lz4)) }
        let fifo = directory.file("checkpoint.fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        // A CheckpointFile needs random access: a FIFO is refused at once (not waited on).
        let error = expectMemSnapError { _ = try CheckpointFile(path: fifo) }
        guard case .invalidArgument? = error?.reason else { Issue.record("expected invalidArgument, got \(String(describing: error))"); return }
        let fed = feed(fileBytes(checkpoint), toPathOpenedLater: fifo)
        let target = try MemoryImageTarget()
        let summary = try Checkpoint.restore(contentsOfFileAt: fifo, into: target, threads: 2)
        fed.wait()
        let restored = try Snapshot(adopting: target.file, size: summary.imageSize)
        #expect(try restored.read(at: 0, count: restored.size) == image)
    }
}
