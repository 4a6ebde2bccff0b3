#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import MemSnap
import MemSnapArena
import MemSnapCheckpoint

extension CheckpointStyle: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "v1": self = .v1
        case "v2": self = .v2
        case "v3": self = .v3
        default: return nil
        }
    }
    public static var allValueStrings: [String] { ["v1", "v2", "v3"] }
}

extension CheckpointCodec: ExpressibleByArgument {
    public init?(argument: String) {
        switch argument {
        case "lz4": self = .lz4
        case "zstd": self = .zstd
        default: return nil
        }
    }
    public static var allValueStrings: [String] { ["lz4", "zstd"] }
}

struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Write a checkpoint of a raw image or an arena (a file, or - for stdin) to OUT (a file, or - for stdout).",
        discussion: "An arena SOURCE is recovered if needed, and its heap (up to the allocator's top) is checkpointed as one extent."
    )

    @Argument(help: "A raw image file, an arena, or - to read an image from stdin.")
    var source: String

    @Argument(help: "The checkpoint file to write, or - for stdout.")
    var output: String

    @Option(help: "v1 (stream), v2 (framed) or v3 (framed, compressed).")
    var style: CheckpointStyle = .v3

    @Option(help: "v3 compressor: lz4 or zstd.")
    var codec: CheckpointCodec = .lz4

    @Option(help: "zstd level (1-22, default 3) or lz4 acceleration (default 1).")
    var level: Int32?

    @Option(help: "Threads compressing frames (the output does not depend on it).")
    var threads: Int = 2

    @Option(help: "Uncompressed bytes per frame (a multiple of the page size).", transform: parseByteCount)
    var chunkSize: Int = 1 << 20

    @Option(help: "Text stored in the info section as 'application'.")
    var application: String = "memsnap"

    @Flag(help: "Replace OUT if it exists.")
    var force = false

    func validate() throws {
        try validateThreads(threads)
        guard chunkSize >= Page.size, chunkSize <= 64 << 20, chunkSize % Page.size == 0 else {
            throw ValidationError("--chunk-size \(chunkSize) must be a multiple of \(Page.size) from 4KiB to 64MiB")
        }
        if let level, style == .v3 {
            let range: ClosedRange<Int32> = codec == .zstd ? 1...22 : 1...65537
            guard range.contains(level) else {
                throw ValidationError("--level \(level) must be \(range.lowerBound)...\(range.upperBound) for \(codec)")
            }
        }
    }

    func run() throws {
        let options = CheckpointOptions(style: style, codec: codec, level: style == .v3 ? level : nil, chunkSize: chunkSize,
                                        threads: threads, info: .current(application: application))
        let progress = ProgressBar("checkpoint")
        let destination: CheckpointOutputDestination = output == "-" ? .descriptor(STDOUT_FILENO) : .file(path: output, force: force)
        let (summary, seconds) = try Stopwatch.time { () throws -> CheckpointSummary in
            if source == "-" {
                return try Checkpoint.write(readingFrom: STDIN_FILENO, to: destination, options: options, progress: progress.handler)
            }
            func write(_ extents: [CheckpointExtent]) throws -> CheckpointSummary {
                switch destination {
                case let .file(path, force):
                    return try Checkpoint.write(extents, to: path, options: options, force: force, progress: progress.handler)
                case let .descriptor(descriptor):
                    return try Checkpoint.write(extents, toDescriptor: descriptor, options: options, progress: progress.handler)
                }
            }
            // Only a regular file can be an arena; probing a FIFO would open it and take its writer.
            if isRegularFile(source), Arena.isArena(path: source) {
                let arena = try Arena.open(path: source, access: .readOnly, configuration: .init(tracking: .explicit))
                defer { try? arena.close() }
                let used = try arena.statistics.usedBytes
                return try arena.withUnsafeHeapBytes { heap in
                    try write([CheckpointExtent(offset: 0, bytes: UnsafeRawBufferPointer(rebasing: heap[0..<used]))])
                }
            }
            // A regular file, a FIFO, /dev/stdin, <(...), a device: the library reads each as it must.
            return try Checkpoint.write(contentsOfFileAt: source, to: destination, options: options, progress: progress.handler)
        }
        progress.finish()
        FileHandleOutput.standardError(
            "wrote \(output == "-" ? "stdout" : output): \(summary.style)\(summary.codec == .none ? "" : "/\(summary.codec)"), "
            + "\(summary.frameCount) frames, image \(ByteCount(summary.imageSize)), nonzero \(ByteCount(summary.extentBytes)), "
            + "file \(ByteCount(summary.fileSize)) in \(formatDuration(seconds)) "
            + "(\(formatBandwidth(bytes: summary.imageSize, seconds: seconds)))\n")
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a checkpoint (a file, or - for stdin) to a raw image OUT (a file, or - for stdout).",
        discussion: """
        Nothing is written to OUT unless the whole checkpoint verifies: a file is restored under a \
        temporary name and renamed at the end; stdout receives the image only after verification.
        """
    )

    @Argument(help: "The checkpoint file, or - to read it from stdin (one pass).")
    var checkpoint: String

    @Argument(help: "The raw image to write, or - for stdout.")
    var output: String

    @Option(help: "Threads restoring frames (any number, whatever the checkpoint was written with).")
    var threads: Int = 2

    @Flag(help: "Replace OUT if it exists.")
    var force = false

    func validate() throws { try validateThreads(threads) }

    func run() throws {
        let progress = ProgressBar("restore")
        let target: CheckpointRestoreTarget
        let memory: MemoryImageTarget?
        if output == "-" {
            let image = try MemoryImageTarget()
            memory = image
            target = image
        } else {
            memory = nil
            target = try ImageFileTarget(path: output, force: force)
        }
        let (imageSize, seconds) = try Stopwatch.time { () throws -> Int in
            if checkpoint == "-" {
                return try Checkpoint.restore(readingFrom: STDIN_FILENO, into: target, progress: progress.handler).imageSize
            }
            // A regular file restores in parallel; a FIFO or <(...) is read as a stream.
            return try Checkpoint.restore(contentsOfFileAt: checkpoint, into: target, threads: threads,
                                          progress: progress.handler).imageSize
        }
        progress.finish()
        if let memory { try copyToStandardOutput(memory.file, size: imageSize) }
        FileHandleOutput.standardError("restored \(ByteCount(imageSize)) to \(output == "-" ? "stdout" : output) "
            + "in \(formatDuration(seconds)) (\(formatBandwidth(bytes: imageSize, seconds: seconds)))\n")
    }

    private func copyToStandardOutput(_ file: MemoryFile, size: Int) throws {
        let operation = "copy the restored image to stdout"
        var offset = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while offset < size {
            let count = try buffer.withUnsafeMutableBytes { bytes -> Int in
                while true {
                    let got = pread(file.descriptor.rawValue, bytes.baseAddress, min(bytes.count, size - offset), off_t(offset))
                    if got < 0 && errno == EINTR { continue }
                    guard got >= 0 else { throw MemSnapError.systemCall("pread", during: operation) }
                    guard got > 0 else { throw MemSnapError(operation, .corrupt("the restored image ends at \(offset) of \(size) bytes")) }
                    return got
                }
            }
            try buffer.withUnsafeBytes { bytes in
                do throws(PartialWriteFailure) {
                    try writeAll(STDOUT_FILENO, [UnsafeRawBufferPointer(rebasing: bytes[0..<count])], at: nil)
                } catch {
                    throw MemSnapError(operation, .systemCall("write", error.errno))
                }
            }
            offset += count
        }
    }
}

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Describe a checkpoint from its header, info, index and footer (no frame is read).")

    @Argument(help: "The checkpoint file.")
    var checkpoint: String

    @Option(help: "0: summary; 1: plus the info section; 2: plus every frame.")
    var verbose: Int = 1

    func validate() throws {
        guard (0...2).contains(verbose) else { throw ValidationError("--verbose \(verbose) must be 0, 1 or 2") }
    }

    func run() throws {
        let file = try CheckpointFile(path: checkpoint)
        print("\(checkpoint): memsnap checkpoint, style \(file.style) (\(file.style.summary))")
        print("codec \(file.codec)\(file.codec == .none ? "" : " level \(file.level)"), chunk \(ByteCount(file.chunkSize)), "
              + "\(file.frameCount) frames")
        print("image \(ByteCount(file.imageSize)) (\(file.imageSize) bytes), nonzero \(ByteCount(file.extentBytes)), "
              + "file \(ByteCount(file.fileSize))"
              + (file.extentBytes > 0 ? ", ratio \(format(Double(file.extentBytes) / Double(file.fileSize), decimals: 2))" : ""))
        if verbose >= 1 {
            // Keys and values come from the file: never let them drive the terminal.
            for (key, value) in file.info.entries { print("  \(TerminalText.escaped(key)): \(TerminalText.escaped(value))") }
        }
        if verbose >= 2 {
            var table = Table(columns: ["frame", "offset", "stored", "raw", "extents", "xxh3"])
            for frame in file.frameSummaries {
                table.append(["\(frame.index)", "\(frame.offset)", "\(frame.storedSize)", "\(frame.rawSize)",
                              "\(frame.extentCount)", String(frame.checksum, radix: 16)])
            }
            print(table.rendered())
        }
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check every checksum, size and extent of a checkpoint without restoring it.")

    @Argument(help: "The checkpoint file.")
    var checkpoint: String

    @Option(help: "Threads verifying frames.")
    var threads: Int = 2

    func validate() throws { try validateThreads(threads) }

    func run() throws {
        let (file, seconds) = try Stopwatch.time { () throws -> CheckpointFile in
            let file = try CheckpointFile(path: checkpoint)
            try file.verify(threads: threads)
            return file
        }
        print("\(checkpoint): ok, \(file.frameCount) frames, \(ByteCount(file.extentBytes)) of extents verified "
              + "in \(formatDuration(seconds))")
    }
}

/// The thread counts checkpoint commands accept (the library's limit), as a usage error.
func validateThreads(_ threads: Int) throws {
    guard (1...256).contains(threads) else { throw ValidationError("--threads \(threads) must be 1...256") }
}

/// Whether `path` names a regular file (stat, so a FIFO is not opened).
func isRegularFile(_ path: String) -> Bool {
    var status = stat()
    return stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFREG
}

struct StylesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "styles", abstract: "List checkpoint styles and codecs.")

    func run() {
        for style in CheckpointStyle.allCases { print("\(style)  \(style.summary)") }
        print("codecs for v3: lz4 (default, acceleration 1), zstd (level 1-22, default 3)")
    }
}
