#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import MemSnap
import Foundation
import MemSnapArena
import MemSnapArenaCheckpoint
import MemSnapCheckpoint
import SystemPackage

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
        discussion: """
        An arena SOURCE is checkpointed as of its last completed sync: its heap up to the allocator's top, \
        with its roots, commit counter, epoch and event (memsnap restore CKPT --arena PATH makes it an arena again). \
        With --parent, only the pages that differ from BASE's image are written (found by the page hashes BASE's \
        chain stores, or by restoring it and comparing when a link has none); restoring it needs BASE. \
        With --time or SOURCE_DATE_EPOCH the same image gives the same file, whenever and with any --threads.
        """
    )

    @Argument(help: "A raw image file, an arena, or - to read an image from stdin.")
    var source: String

    @Argument(help: "The checkpoint file to write, or - for stdout.")
    var output: String

    @Option(help: "Write an incremental checkpoint over this checkpoint (full or incremental itself).")
    var parent: String?

    @Option(help: "A checkpoint of BASE's chain that is not next to it (repeatable).")
    var link: [String] = []

    // Optional with the default in the help text: for a raw-valued enum, ArgumentParser would
    // print the raw value ("default: 3", "default: 1").
    @Option(name: .customLong("style"), help: "v1 (stream), v2 (framed) or v3 (framed, compressed). (default: v3)")
    var styleArgument: CheckpointStyle?
    var style: CheckpointStyle { styleArgument ?? .v3 }

    @Option(name: .customLong("codec"), help: "v3 compressor: lz4 or zstd. (default: lz4)")
    var codecArgument: CheckpointCodec?
    var codec: CheckpointCodec { codecArgument ?? .lz4 }

    @Option(help: "zstd level (1-22, default 3) or lz4 acceleration (default 1).")
    var level: Int32?

    @Option(help: "Threads compressing frames (the output does not depend on it).")
    var threads: Int = 2

    @Option(help: "Uncompressed bytes per frame (a multiple of the page size).", transform: parseByteCount)
    var chunkSize: Int = 1 << 20

    @Option(help: "Text stored in the info section as 'application'.")
    var application: String = "memsnap"

    @Option(help: "The time stored in the info section: seconds since 1970 or ISO 8601 UTC (default: SOURCE_DATE_EPOCH, else now).")
    var time: String?

    @Option(help: "File format: 2, or 1 for readers older than format 2 (no --parent, page hashes or arena state).")
    var formatVersion: UInt16 = 2

    @Flag(help: "Do not store page hashes (8 bytes a page; without them a later --parent over this file restores it to compare).")
    var noPageHashes = false

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
        guard formatVersion == 1 || formatVersion == 2 else { throw ValidationError("--format-version \(formatVersion) must be 1 or 2") }
        if formatVersion == 1 && parent != nil { throw ValidationError("--parent needs --format-version 2") }
        _ = try checkpointTime(time)
    }

    func run() throws {
        let options = CheckpointOptions(style: style, codec: codec, level: style == .v3 ? level : nil, chunkSize: chunkSize,
                                        threads: threads, info: .current(application: application, time: try checkpointTime(time)),
                                        formatVersion: formatVersion, pageHashes: !noPageHashes)
        let chain = try parent.map { try CheckpointChain(tip: $0, links: link) }
        let progress = ProgressBar("checkpoint")
        let destination: CheckpointOutputDestination = output == "-" ? .descriptor(.standardOutput) : .file(path: output, force: force)
        let (summary, seconds) = try Stopwatch.time { () throws -> CheckpointSummary in
            if source == "-" {
                if let chain {
                    return try Checkpoint.write(readingFrom: .standardInput, comparingWith: chain, to: destination, options: options,
                                                progress: progress.handler)
                }
                return try Checkpoint.write(readingFrom: .standardInput, to: destination, options: options, progress: progress.handler)
            }
            // Only a regular file can be an arena; probing a FIFO would open it and take its writer.
            if isRegularFile(source), Arena.isArena(path: source) {
                return try ArenaCheckpoint.write(arenaAt: source, to: destination, comparingWith: chain, options: options,
                                                 progress: progress.handler)
            }
            // A regular file, a FIFO, /dev/stdin, <(...), a device: the library reads each as it must.
            if let chain {
                return try Checkpoint.write(contentsOfFileAt: source, comparingWith: chain, to: destination, options: options,
                                            progress: progress.handler)
            }
            return try Checkpoint.write(contentsOfFileAt: source, to: destination, options: options, progress: progress.handler)
        }
        progress.finish()
        let over = parent.map { ", incremental over \($0): \(summary.changedPages ?? 0) changed pages" } ?? ""
        FileHandleOutput.standardError(
            "wrote \(output == "-" ? "stdout" : output): \(summary.style)\(summary.codec == .none ? "" : "/\(summary.codec)"), "
            + "\(summary.frameCount) frames, image \(ByteCount(summary.imageSize)), nonzero \(ByteCount(summary.extentBytes)), "
            + "file \(ByteCount(summary.fileSize))\(over) in \(formatDuration(seconds)) "
            + "(\(formatBandwidth(bytes: summary.imageSize, seconds: seconds))); identity \(summary.identity)\n")
    }
}

/// The info section's time: `--time` if given, else SOURCE_DATE_EPOCH if set, else nil (now).
func checkpointTime(_ option: String?) throws -> Date? {
    do throws(MemSnapError) {
        if let option { return try CheckpointInfo.parseTime(option, what: "--time") }
        return try CheckpointInfo.sourceDateEpoch()
    } catch {
        throw ValidationError("\(error.reason)" + (option == nil ? " (SOURCE_DATE_EPOCH)" : " (--time)"))
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a checkpoint (a file, or - for stdin) to a raw image OUT (a file, or - for stdout), or as an arena.",
        discussion: """
        Nothing is written to OUT unless the whole checkpoint verifies: a file is restored under a \
        temporary name and renamed at the end; stdout receives the image only after verification. \
        An incremental checkpoint is restored with its chain: each parent is found by identity among the \
        --link files, then next to the checkpoint that names it; a missing or different parent is an error \
        before anything is written. With --arena, a checkpoint of an arena becomes a new arena at PATH \
        (refused unless its allocator passes the arena's check).
        """
    )

    @Argument(help: "The checkpoint file, or - to read it from stdin (one pass, full checkpoints only).")
    var checkpoint: String

    @Argument(help: "The raw image to write, or - for stdout (not with --arena).")
    var output: String?

    @Option(help: "Create a new arena at this path from a checkpoint of an arena.")
    var arena: String?

    @Option(help: "A checkpoint of the chain that is not next to the one that names it (repeatable).")
    var link: [String] = []

    @Option(help: "Threads restoring frames (any number, whatever the checkpoint was written with).")
    var threads: Int = 2

    @Flag(help: "Replace OUT if it exists (an arena is never replaced).")
    var force = false

    func validate() throws {
        try validateThreads(threads)
        guard (output == nil) != (arena == nil) else {
            throw ValidationError("give either OUT or --arena PATH")
        }
        if arena != nil && checkpoint == "-" { throw ValidationError("--arena restores from a file, not from stdin") }
    }

    func run() throws {
        if let arena {
            let (restored, seconds) = try Stopwatch.time { () throws -> Arena in
                try ArenaCheckpoint.restore(from: checkpoint, links: link, toArenaAt: arena, threads: threads)
            }
            defer { try? restored.close() }
            let statistics = try restored.statistics
            FileHandleOutput.standardError(
                "restored arena \(arena): commit \(restored.commitCounter), epoch \(restored.epoch), event \(restored.event), "
                + "\(statistics.allocations) allocations of \(ByteCount(statistics.allocatedBytes)), checked, "
                + "in \(formatDuration(seconds))\n")
            return
        }
        let output = self.output ?? "-"
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
                return try Checkpoint.restore(readingFrom: .standardInput, into: target, progress: progress.handler).imageSize
            }
            // A regular file restores in parallel, with its chain; a FIFO or <(...) is read as a stream.
            return try Checkpoint.restore(contentsOfFileAt: checkpoint, into: target, links: link, threads: threads,
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
            let count = try systemCall("pread", during: operation) {
                buffer.withUnsafeMutableBytes { pread(file.descriptor.rawValue, $0.baseAddress, min($0.count, size - offset), off_t(offset)) }
            }
            guard count > 0 else { throw MemSnapError(operation, .corrupt("the restored image ends at \(offset) of \(size) bytes")) }
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
        commandName: "info",
        abstract: "Describe a checkpoint from its header, info, index, image map and footer (no frame is read), and its chain.")

    @Argument(help: "The checkpoint file.")
    var checkpoint: String

    @Option(help: "A checkpoint of the chain that is not next to the one that names it (repeatable).")
    var link: [String] = []

    @Option(help: "0: summary; 1: plus the info section; 2: plus every frame.")
    var verbose: Int = 1

    func validate() throws {
        guard (0...2).contains(verbose) else { throw ValidationError("--verbose \(verbose) must be 0, 1 or 2") }
    }

    func run() throws {
        let file = try CheckpointFile(path: checkpoint)
        print("\(checkpoint): memsnap checkpoint, format \(file.formatVersion), style \(file.style) (\(file.style.summary))")
        print("identity \(file.identity)")
        print("codec \(file.codec)\(file.codec == .none ? "" : " level \(file.level)"), chunk \(ByteCount(file.chunkSize)), "
              + "\(file.frameCount) frames")
        print("image \(ByteCount(file.imageSize)) (\(file.imageSize) bytes), nonzero \(ByteCount(file.extentBytes)), "
              + "file \(ByteCount(file.fileSize))"
              + (file.extentBytes > 0 ? ", ratio \(format(Double(file.extentBytes) / Double(file.fileSize), decimals: 2))" : ""))
        if let parent = file.parent {
            let changed = file.changedPages.reduce(0) { $0 + $1.count }
            // The name comes from the file: never let it drive the terminal.
            print("incremental over \(TerminalText.escaped(parent.name)) (identity \(parent.identity), image \(parent.imageSize) bytes): "
                  + "\(changed) changed pages in \(file.changedPages.count) runs")
        } else {
            print("full checkpoint")
        }
        if file.formatVersion >= 2 {
            print(file.hasPageHashes ? "page hashes: \(file.hashedPages.reduce(0) { $0 + $1.count }) pages" : "page hashes: none")
        }
        if let arena = file.arenaState {
            print("arena: capacity \(ByteCount(arena.capacity)), commit \(arena.commit), epoch \(arena.epoch), event \(arena.event), "
                  + "recorded base 0x\(String(arena.recordedBase, radix: 16))")
            let roots = arena.roots.enumerated().filter { $0.element != 0 }.map { "\($0.offset)=\($0.element)" }
            print("  roots: \(roots.isEmpty ? "all zero" : roots.joined(separator: " "))")
        }
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
        if file.isIncremental {
            // Resolved last: a missing parent is reported (and is the exit status) after the file itself.
            let chain = try CheckpointChain(tip: file, links: try link.map { try CheckpointFile(path: $0) })
            print("chain of \(chain.links.count) links, base first:")
            var table = Table(columns: ["link", "file", "identity", "kind", "image", "file size"])
            for (index, link) in chain.links.enumerated() {
                let kind = link.parent == nil ? "full" : "\(link.changedPages.reduce(0) { $0 + $1.count }) pages"
                table.append(["\(index)", TerminalText.escaped(link.path), "\(link.identity)", kind, "\(ByteCount(link.imageSize))",
                              "\(ByteCount(link.fileSize))"])
            }
            print(table.rendered())
        }
    }
}

struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every checksum, size and extent of a checkpoint (and of its chain) without restoring it.")

    @Argument(help: "The checkpoint file.")
    var checkpoint: String

    @Option(help: "A checkpoint of the chain that is not next to the one that names it (repeatable).")
    var link: [String] = []

    @Option(help: "Threads verifying frames.")
    var threads: Int = 2

    func validate() throws { try validateThreads(threads) }

    func run() throws {
        let (chain, seconds) = try Stopwatch.time { () throws -> CheckpointChain in
            let chain = try CheckpointChain(tip: checkpoint, links: link)
            try chain.verify(threads: threads)
            return chain
        }
        let frames = chain.links.reduce(0) { $0 + $1.frameCount }
        let bytes = chain.links.reduce(0) { $0 + $1.extentBytes }
        print("\(checkpoint): ok, \(chain.links.count > 1 ? "\(chain.links.count) links, " : "")\(frames) frames, "
              + "\(ByteCount(bytes)) of extents verified in \(formatDuration(seconds))")
    }
}

struct SquashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "squash",
        abstract: "Fold a checkpoint and its chain into one full checkpoint OUT (a file, or - for stdout).",
        discussion: """
        OUT is the same file a full checkpoint of the chain's image would be with the same settings (and the \
        tip's arena state). Settings not given are the tip's. The image is restored into memory first.
        """
    )

    @Argument(help: "The checkpoint (the tip of the chain).")
    var checkpoint: String

    @Argument(help: "The full checkpoint to write, or - for stdout.")
    var output: String

    @Option(help: "A checkpoint of the chain that is not next to the one that names it (repeatable).")
    var link: [String] = []

    @Option(help: "v1, v2 or v3 (default: the tip's).")
    var style: CheckpointStyle?

    @Option(help: "v3 compressor: lz4 or zstd (default: the tip's, or lz4).")
    var codec: CheckpointCodec?

    @Option(help: "zstd level or lz4 acceleration (default: the tip's with its codec, else the codec's default).")
    var level: Int32?

    @Option(help: "Uncompressed bytes per frame (default: the tip's).", transform: parseByteCount)
    var chunkSize: Int?

    @Option(help: "Threads restoring and compressing.")
    var threads: Int = 2

    @Option(help: "Text stored in the info section as 'application'.")
    var application: String = "memsnap"

    @Option(help: "The time stored in the info section: seconds since 1970 or ISO 8601 UTC (default: SOURCE_DATE_EPOCH, else now).")
    var time: String?

    @Flag(help: "Replace OUT if it exists.")
    var force = false

    func validate() throws {
        try validateThreads(threads)
        if let chunkSize, chunkSize < Page.size || chunkSize > 64 << 20 || chunkSize % Page.size != 0 {
            throw ValidationError("--chunk-size \(chunkSize) must be a multiple of \(Page.size) from 4KiB to 64MiB")
        }
        _ = try checkpointTime(time)
    }

    func run() throws {
        let chain = try CheckpointChain(tip: checkpoint, links: link)
        let tip = chain.tip
        let style = self.style ?? tip.style
        let codec = self.codec ?? (tip.codec == .none ? .lz4 : tip.codec)
        let level = self.level ?? (codec == tip.codec ? tip.level : nil)
        let options = CheckpointOptions(style: style, codec: codec, level: style == .v3 ? level : nil, chunkSize: chunkSize ?? tip.chunkSize,
                                        threads: threads, info: .current(application: application, time: try checkpointTime(time)))
        let destination: CheckpointOutputDestination = output == "-" ? .descriptor(.standardOutput) : .file(path: output, force: force)
        let (summary, seconds) = try Stopwatch.time { () throws -> CheckpointSummary in
            try chain.squash(to: destination, options: options)
        }
        FileHandleOutput.standardError(
            "squashed \(chain.links.count) links into \(output == "-" ? "stdout" : output): \(summary.style)"
            + "\(summary.codec == .none ? "" : "/\(summary.codec)"), image \(ByteCount(summary.imageSize)), "
            + "file \(ByteCount(summary.fileSize)) in \(formatDuration(seconds)); identity \(summary.identity)\n")
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
