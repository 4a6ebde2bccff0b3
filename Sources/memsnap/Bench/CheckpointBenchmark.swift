#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapCheckpoint

struct CheckpointBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Checkpoint and restore a large heap-like image; compare with lz4 -1/-d, zstd -1 -T2/-d and memcpy in the same run.",
        discussion: """
        With --incremental: a heap-like image (1 GiB by default) of which --dirty of the pages change between \
        checkpoints; a full checkpoint, incremental ones with a dirty tracker's pages, one by comparison from a \
        file (the command line's way), and the restore of a --links-link chain against one full file.
        """
    )

    @Option(help: "Image size (default 512 MiB, or 1 GiB with --incremental).", transform: parseByteCount)
    var size: Int?

    @Flag(help: "Measure incremental checkpoints and chain restores instead.")
    var incremental = false

    @Option(help: "With --incremental: pages changed between checkpoints (default 1%).", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "With --incremental: links of the restored chain (a full checkpoint and links - 1 incremental ones).")
    var links: Int = 10

    @Option(help: "Threads for memsnap checkpoint and restore.")
    var threads: Int = 2

    @Option(help: "Where the image and the checkpoints go (tmpfs keeps the disk out of it).")
    var directory: String = "/dev/shm"

    @Option(help: "Repetitions per measurement; medians are reported.")
    var repetitions: Int = 3

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    var imageSize: Int { size ?? (incremental ? 1 << 30 : 512 << 20) }

    func validate() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be 1...256") }
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be 1...50") }
        if incremental {
            guard (2...64).contains(links) else { throw ValidationError("--links must be 2...64") }
            // The image and its memcpy copy in memory; in --directory: the raw image, two full
            // checkpoints, the links and a restored copy.
            try validateSize(imageSize, memoryCopies: 2)
            try validateFreeSpace(Double(imageSize) * 3, in: directory, for: "--size \(ByteCount(imageSize))")
            return
        }
        // The image and its memcpy copy in memory; in --directory at once: the raw image, the
        // v1 and v2 checkpoints (about its size), the compressed ones and two restored copies.
        try validateSize(imageSize, memoryCopies: 2)
        try validateFreeSpace(Double(imageSize) * 6, in: directory, for: "--size \(ByteCount(imageSize))")
    }

    func run() throws {
        if incremental {
            let report = try IncrementalCheckpointBenchmark(size: imageSize, dirtyFraction: dirty, links: links, threads: threads,
                                                            directory: directory, repetitions: repetitions).run()
            try report.emit(json: json)
            return
        }
        let report = try CheckpointBenchmark(size: imageSize, threads: threads, directory: directory, repetitions: repetitions).run()
        try report.emit(json: json)
    }
}

struct CheckpointReport: Codable, BenchmarkReport {
    typealias Row = TimedStepRow
    var date: String
    var imageBytes: Int
    var nonzeroBytes: Int
    var threads: Int
    var repetitions: Int
    var rows: [Row]
    var checkpointVsLZ4Throughput: Double?
    var sizeVsLZ4: Double?
    /// `lz4 -d` time over the v3/lz4 restore's, both to a new file in the same directory.
    var restoreVsLZ4Decompress: Double?
    /// `zstd -d --no-asyncio` time over the v3/zstd restore's, both to a new file in the same directory.
    var restoreVsZstdDecompress: Double?
    var v2VsMemcpy: Double
    var v2VsFileWrite: Double

    func table() -> String {
        var table = Table(columns: ["step", "time", "throughput", "output", "ratio", "note"])
        for row in rows {
            table.append([row.name, formatDuration(row.seconds), formatBandwidth(bytes: imageBytes, seconds: row.seconds),
                          row.outputBytes.map { "\(ByteCount($0))" } ?? "-",
                          row.outputBytes.map { format(Double(imageBytes) / Double(max($0, 1)), decimals: 2) } ?? "-", row.note])
        }
        var lines = [
            "image \(ByteCount(imageBytes)) of synthetic heap (\(ByteCount(nonzeroBytes)) in nonzero pages), "
                + "\(threads) threads, medians of \(repetitions)", "", table.rendered(), ""]
        if let checkpointVsLZ4Throughput, let sizeVsLZ4 {
            lines.append("v3/lz4 checkpoint: \(format(checkpointVsLZ4Throughput, decimals: 2))x the throughput of lz4 -1, "
                         + "output \(format((sizeVsLZ4 - 1) * 100, decimals: 1)) % \(sizeVsLZ4 >= 1 ? "larger" : "smaller")")
        }
        if let restoreVsLZ4Decompress {
            lines.append("v3/lz4 restore to a file: \(format(restoreVsLZ4Decompress, decimals: 2))x the speed of lz4 -d")
        }
        if let restoreVsZstdDecompress {
            lines.append("v3/zstd restore to a file: \(format(restoreVsZstdDecompress, decimals: 2))x the speed of zstd -d --no-asyncio")
        }
        lines.append("v2 checkpoint: \(format(v2VsMemcpy, decimals: 2))x the time of a memcpy of the image, "
                     + "\(format(v2VsFileWrite, decimals: 2))x the time of writing it to a new file there")
        return lines.joined(separator: "\n")
    }
}

struct CheckpointBenchmark {
    var size: Int
    var threads: Int
    var directory: String
    var repetitions: Int

    func run() throws -> CheckpointReport {
        let workspace = "\(directory)/memsnap-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let image = try VirtualRegion(maxSize: size, committing: size)
        image.withUnsafeMutableBytes { SyntheticHeap().fill($0) }
        let imagePath = "\(workspace)/image.raw"
        try image.withUnsafeBytes { bytes in try Data(bytes).write(to: URL(fileURLWithPath: imagePath)) }
        var rows: [CheckpointReport.Row] = []

        let copy = try VirtualRegion(maxSize: size, committing: size)
        copy.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        let memcpySeconds = Stopwatch.median(repetitions: repetitions) {
            image.withUnsafeBytes { from in copy.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, from.baseAddress!, from.count) } }
        }
        rows.append(.init(name: "memcpy of the image", seconds: memcpySeconds, outputBytes: nil, note: "between prefaulted buffers"))
        // Writing the same bytes to a new file in the same directory: the limit of the medium
        // (tmpfs allocates and clears every page of a new file).
        let copyPath = "\(workspace)/copy.raw"
        let fileWriteSeconds = Stopwatch.median(repetitions: repetitions) {
            unlink(copyPath)
            let fd = open(copyPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            image.withUnsafeBytes { bytes in
                var done = 0
                while done < bytes.count {
                    let written = write(fd, bytes.baseAddress! + done, min(1 << 20, bytes.count - done))
                    if written <= 0 { break }
                    done += written
                }
            }
            close(fd)
        }
        unlink(copyPath)
        rows.append(.init(name: "write the image to a new file", seconds: fileWriteSeconds, outputBytes: nil, note: "the medium's limit"))

        func memsnap(_ name: String, _ options: CheckpointOptions) throws -> (seconds: Double, bytes: Int, path: String) {
            let path = "\(workspace)/\(name).ckpt"
            var summary: CheckpointSummary?
            let seconds = try Stopwatch.median(repetitions: repetitions) {
                try image.withUnsafeBytes { bytes in
                    summary = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: path, options: options, force: true)
                }
            }
            return (seconds, summary?.fileSize ?? 0, path)
        }
        let info = CheckpointInfo([("application", "bench")])
        let v3 = try memsnap("v3-lz4", CheckpointOptions(style: .v3, codec: .lz4, threads: threads, info: info))
        rows.append(.init(name: "memsnap checkpoint v3/lz4", seconds: v3.seconds, outputBytes: v3.bytes, note: "\(threads) threads"))
        let v3zstd = try memsnap("v3-zstd", CheckpointOptions(style: .v3, codec: .zstd, level: 1, threads: threads, info: info))
        rows.append(.init(name: "memsnap checkpoint v3/zstd -1", seconds: v3zstd.seconds, outputBytes: v3zstd.bytes, note: "\(threads) threads"))
        let v1 = try memsnap("v1", CheckpointOptions(style: .v1, threads: 1, info: info))
        rows.append(.init(name: "memsnap checkpoint v1", seconds: v1.seconds, outputBytes: v1.bytes, note: "single stream"))
        let v2 = try memsnap("v2", CheckpointOptions(style: .v2, threads: threads, info: info))
        rows.append(.init(name: "memsnap checkpoint v2", seconds: v2.seconds, outputBytes: v2.bytes, note: "uncompressed, zero pages skipped"))

        let lz4Path = "\(workspace)/image.lz4", zstdPath = "\(workspace)/image.zst"
        var lz4Throughput: Double?, lz4Size: Int?
        let lz4 = which("lz4"), zstd = which("zstd")
        if let lz4 {
            let seconds = try Stopwatch.median(repetitions: repetitions) { try runTool(lz4, ["-1", "-f", "-q", imagePath, lz4Path]) }
            lz4Size = fileSize(lz4Path)
            lz4Throughput = seconds
            rows.append(.init(name: "lz4 -1", seconds: seconds, outputBytes: lz4Size, note: "1 thread (the lz4 tool has no threads)"))
        } else {
            rows.append(.init(name: "lz4 -1", seconds: .nan, outputBytes: nil, note: "lz4 not installed (scripts/install-deps.sh)"))
        }
        if let zstd {
            let seconds = try Stopwatch.median(repetitions: repetitions) { try runTool(zstd, ["-1", "-T2", "-f", "-q", imagePath, "-o", zstdPath]) }
            rows.append(.init(name: "zstd -1 -T2", seconds: seconds, outputBytes: fileSize(zstdPath), note: "2 threads"))
        }

        // Each restore is timed interleaved with the decompression tool it is compared with, both
        // writing a new file in the same directory, so both see the same machine load.
        let restorePath = "\(workspace)/restored.raw", toolPath = "\(workspace)/tool-restored.raw"
        func restoreToFile(_ checkpoint: String) throws {
            try CheckpointFile(path: checkpoint).restore(into: ImageFileTarget(path: restorePath, force: true), threads: threads)
        }
        func compare(_ name: String, checkpoint: String, tool: String?, toolArguments: [String], toolName: String,
                     toolNote: String) throws -> Double? {
            var restoreSamples: [Double] = [], toolSamples: [Double] = []
            for _ in 0..<repetitions {
                // Both write a new file: freeing a replaced one's pages is not part of either.
                unlink(restorePath)
                restoreSamples.append(try Stopwatch.time { try restoreToFile(checkpoint) }.seconds)
                guard let tool else { continue }
                unlink(toolPath)
                toolSamples.append(try Stopwatch.time { try runTool(tool, toolArguments) }.seconds)
            }
            let restoreSeconds = median(restoreSamples)
            rows.append(.init(name: "memsnap restore \(name) to a file", seconds: restoreSeconds, outputBytes: nil,
                              note: "\(threads) threads, verified"))
            guard FileManager.default.contentsEqual(atPath: restorePath, andPath: imagePath) else {
                throw MemSnapError("bench checkpoint", .corrupt("the image restored from \(name) differs from the original"))
            }
            let snapshotSeconds = try Stopwatch.median(repetitions: repetitions) {
                _ = try Checkpoint.restoreSnapshot(from: checkpoint, threads: threads)
            }
            rows.append(.init(name: "memsnap restore \(name) to a snapshot", seconds: snapshotSeconds, outputBytes: nil,
                              note: "\(threads) threads, verified"))
            guard tool != nil else { return nil }
            let toolSeconds = median(toolSamples)
            rows.append(.init(name: toolName, seconds: toolSeconds, outputBytes: nil, note: toolNote))
            return toolSeconds / restoreSeconds
        }
        let restoreVsLZ4 = try compare("v3/lz4", checkpoint: v3.path, tool: lz4,
                                       toolArguments: ["-d", "-f", "-q", lz4Path, toolPath], toolName: "lz4 -d",
                                       toolNote: "1 thread, to a new file (interleaved with the restore above)")
        let restoreVsZstd = try compare("v3/zstd -1", checkpoint: v3zstd.path, tool: zstd,
                                        toolArguments: ["-d", "-f", "-q", "--no-asyncio", zstdPath, "-o", toolPath],
                                        toolName: "zstd -d --no-asyncio",
                                        toolNote: "1 thread, to a new file (interleaved with the restore above)")
        if let zstd {
            // zstd's default: its reads and writes on a second thread, beside decompression.
            let seconds = try Stopwatch.median(repetitions: repetitions) {
                unlink(toolPath)
                try runTool(zstd, ["-d", "-f", "-q", zstdPath, "-o", toolPath])
            }
            rows.append(.init(name: "zstd -d", seconds: seconds, outputBytes: nil, note: "asynchronous I/O (2 threads), to a new file"))
        }
        unlink(toolPath)

        let nonzero = try CheckpointFile(path: v2.path).extentBytes
        return CheckpointReport(
            date: isoDate(), imageBytes: size, nonzeroBytes: nonzero, threads: threads, repetitions: repetitions, rows: rows,
            checkpointVsLZ4Throughput: lz4Throughput.map { $0 / v3.seconds },
            sizeVsLZ4: lz4Size.map { Double(v3.bytes) / Double($0) },
            restoreVsLZ4Decompress: restoreVsLZ4, restoreVsZstdDecompress: restoreVsZstd,
            v2VsMemcpy: v2.seconds / memcpySeconds, v2VsFileWrite: v2.seconds / fileWriteSeconds)
    }

    private func which(_ tool: String) -> String? {
        for directory in ["/usr/bin", "/usr/local/bin", "/bin"] where access("\(directory)/\(tool)", X_OK) == 0 {
            return "\(directory)/\(tool)"
        }
        return nil
    }

    private func runTool(_ path: String, _ arguments: [String]) throws {
        let ended = try ChildProcess(executable: path, arguments: arguments).wait()
        guard ended == .exited(0) else {
            throw MemSnapError("run \(path) \(arguments.joined(separator: " "))", .invalidArgument("it \(ended)"))
        }
    }

    private func median(_ samples: [Double]) -> Double {
        let sorted = samples.sorted()
        return sorted.isEmpty ? .nan : sorted[sorted.count / 2]
    }

    private func fileSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? NSNumber)?.intValue ?? 0
    }
}
