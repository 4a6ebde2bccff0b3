#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapCheckpoint
import MemSnapRemote

struct RemoteBenchmarkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote",
        abstract: "Push a heap-like image to a second process on loopback, whole and by updates, and run fork/join rounds there; "
            + "compare with plain TCP and with the same round run locally, in one run."
    )

    @Option(help: "Image size.", transform: parseByteCount)
    var size: Int = 1 << 30

    @Option(help: "Pages changed between updates, and written by each worker in a round.", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "Workers in a fork/join round.")
    var workers: Int = 4

    @Option(help: "Loopback address of the second process.")
    var address: String = "127.0.0.2"

    @Option(help: "Repetitions per measurement; medians are reported.")
    var repetitions: Int = 3

    @Option(name: .customLong("codec"), help: "Codec of the whole push's frames: lz4 or zstd. (default: lz4)")
    var codecArgument: CheckpointCodec?
    var codec: CheckpointCodec { codecArgument ?? .lz4 }

    @Option(help: "Codec level: LZ4 acceleration (1 = best ratio), zstd level (1...22).")
    var level: Int32?

    @Option(help: "Bytes per pushed chunk (64 KiB to 16 MiB).", transform: parseByteCount)
    var chunkSize: Int = 1 << 20

    @Option(help: "Threads compressing chunks for the whole push.")
    var pushThreads: Int = 2

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1...64") }
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be 1...50") }
        guard address.hasPrefix("127.") else { throw ValidationError("--address must be a loopback address (127.x.y.z)") }
        // The image here and its copy in the server, plus workers' private pages on both sides.
        try validateSize(size, memoryCopies: 3)
    }

    func run() async throws {
        var options = RemoteHost.PushOptions()
        options.codec = codec
        options.level = level
        options.chunkSize = chunkSize
        options.threads = pushThreads
        let report = try await RemoteBenchmark(size: size, dirty: dirty, workers: workers, address: address, repetitions: repetitions,
                                               pushOptions: options).run()
        try report.emit(json: json)
    }
}

struct RemoteReport: Codable, BenchmarkReport {
    var date: String
    var imageBytes: Int
    var workers: Int
    var dirtyFraction: Double
    var memcpySeconds: Double
    var rawTCPSeconds: Double
    /// CPU time of both processes (user and system), for the same bytes.
    var rawTCPCPUSeconds: Double
    var wholePushSeconds: Double
    var wholePushCPUSeconds: Double
    var wholePushWireBytes: Int
    var updatePushSeconds: Double
    var updateBytes: Int
    var localRoundSeconds: Double
    var remoteRoundSeconds: Double
    var remoteRoundPushSeconds: Double

    /// Image bytes per second of the whole push against the raw TCP send's.
    var wholePushVsRawTCP: Double
    /// The remote round's time against the local one's.
    var remoteVsLocalRound: Double

    func table() -> String {
        let gigabytes = Double(imageBytes) / 1e9
        var table = Table(columns: ["step", "time", "throughput", "note"])
        table.append(["memcpy of the image", formatDuration(memcpySeconds), format(gigabytes / memcpySeconds, decimals: 2) + " GB/s", "in this process"])
        table.append(["raw TCP send of the image", formatDuration(rawTCPSeconds), format(gigabytes / rawTCPSeconds, decimals: 2) + " GB/s",
                      "to the second process: the limit here; \(formatDuration(rawTCPCPUSeconds)) CPU in both"])
        table.append(["whole push (lz4 frames)", formatDuration(wholePushSeconds), format(gigabytes / wholePushSeconds, decimals: 2) + " GB/s",
                      "\(ByteCount(wholePushWireBytes)) on the wire; \(format(wholePushVsRawTCP, decimals: 2))x raw TCP in image bytes/s; "
                      + "\(formatDuration(wholePushCPUSeconds)) CPU in both"])
        table.append(["update push (\(format(dirtyFraction * 100, decimals: 1)) % of pages)", formatDuration(updatePushSeconds), "-",
                      "\(ByteCount(updateBytes)) of diff batches"])
        table.append(["fork/join round, \(workers) workers here", formatDuration(localRoundSeconds), "-", "run + diff + merge"])
        table.append(["fork/join round, \(workers) workers remote", formatDuration(remoteRoundSeconds), "-",
                      "\(format(remoteVsLocalRound, decimals: 2))x the local round (update push of the last merge: \(formatDuration(remoteRoundPushSeconds)))"])
        return ["\(ByteCount(imageBytes)) heap-like image, a `memsnap serve` process on loopback; medians", "", table.rendered()].joined(separator: "\n")
    }
}

struct RemoteBenchmark {
    let size: Int
    let dirty: Double
    let workers: Int
    let address: String
    let repetitions: Int
    let pushOptions: RemoteHost.PushOptions

    func run() async throws -> RemoteReport {
        let token = "bench-\(UInt64.random(in: 0 ... .max))"
        let server = try ServerChild(address: address, token: token, maxSnapshot: size * 2, rawSink: true)
        defer { server.stop() }
        let security = try RemoteSecurity(token: token)
        let host = try RemoteHost(host: address, port: server.port, security: security)
        defer { host.close() }

        let snapshot = try Snapshot(size: size)
        try snapshot.update(at: 0, count: size) { SyntheticHeap(seed: 2026).fill($0) }
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .sum))
        _ = snapshot.takeChangedRanges()

        // The limits: a memcpy here, a plain TCP send to the other process.
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: Page.size)
        defer { copy.deallocate() }
        copy.initializeMemory(as: UInt8.self, repeating: 0)
        let memcpySeconds = snapshot.withUnsafeBytes { image in
            Stopwatch.median(repetitions: repetitions) { copy.baseAddress!.copyMemory(from: image.baseAddress!, byteCount: size) }
        }
        func bothCPU() -> Double { ProcessCPU.seconds(of: "self") + ProcessCPU.seconds(of: "\(server.process.processIdentifier)") }
        var rawSamples: [Double] = [], rawCPU: [Double] = []
        for _ in 0..<repetitions {
            let cpu = bothCPU()
            rawSamples.append(try snapshot.withUnsafeBytes { try RawTCPSink.send($0, host: address, port: server.sinkPort) })
            rawCPU.append(bothCPU() - cpu)
        }

        // Whole pushes.
        var pushSamples: [Double] = [], pushCPU: [Double] = [], wire = 0
        var epoch: UInt64 = 0
        for _ in 0..<repetitions {
            epoch += 1
            let cpu = bothCPU()
            let start = Stopwatch.now()
            let report = try await host.push(snapshot, as: "bench", epoch: epoch, options: pushOptions)
            pushSamples.append(Double(Stopwatch.now() - start) / 1e9)
            pushCPU.append(bothCPU() - cpu)
            wire = report.bytesSent
        }

        // Updates of `dirty` of the pages.
        let pages = size / Page.size
        var random = SplitMix64(seed: 7)
        var updateSamples: [Double] = [], updateBytes = 0
        for _ in 0..<repetitions {
            // Small writes, as a program's heap changes: each one is recorded as 8 changed bytes.
            for _ in 0..<max(1, Int(Double(pages) * dirty)) {
                let offset = Int(random.next() % UInt64(pages)) * Page.size + 64
                try snapshot.update(at: offset, count: 8) { $0.storeBytes(of: random.next(), as: UInt64.self) }
            }
            let changed = snapshot.takeChangedRanges()
            let diffs = try snapshot.withUnsafeBytes { (image) throws(MemSnapError) in
                changed.map { SnapshotDiff(offset: $0.lowerBound, dataType: .raw, operation: .bytewise, bytes: [UInt8](UnsafeRawBufferPointer(rebasing: image[$0]))) }
            }
            let start = Stopwatch.now()
            let report = try await host.pushUpdate(key: "bench", from: epoch, to: epoch + 1, diffs: diffs, mergeRegions: snapshot.mergeRegions)
            updateSamples.append(Double(Stopwatch.now() - start) / 1e9)
            updateBytes = report.bytesSent
            epoch += 1
        }

        // A fork/join round of touch-pages: all workers here, then all on the other process.
        // A new seed each round: the same writes again would merge as no change at all.
        var round: UInt64 = 0
        func arguments() -> [UInt8] {
            round += 1
            return StandardWorkerBodies.arguments(UInt32(max(1, Int(Double(pages) * dirty)))) + StandardWorkerBodies.arguments(round)
        }
        let local = try DistributedWorkers(snapshot: snapshot, key: "local", localWorkers: workers, remote: [])
        local.register("memsnap.touch-pages", body: StandardWorkerBodies.touchPages)
        try await local.run("memsnap.touch-pages", arguments: arguments())
        var localSamples: [Double] = []
        for _ in 0..<repetitions {
            let start = Stopwatch.now()
            try await local.run("memsnap.touch-pages", arguments: arguments())
            localSamples.append(Double(Stopwatch.now() - start) / 1e9)
        }
        let remote = try DistributedWorkers(snapshot: snapshot, key: "round", localWorkers: 0, remote: [.init(host: host, workers: workers)])
        try await remote.run("memsnap.touch-pages", arguments: arguments())  // the whole push happens here
        var remoteSamples: [Double] = [], remotePushSamples: [Double] = []
        for _ in 0..<repetitions {
            let start = Stopwatch.now()
            let report = try await remote.run("memsnap.touch-pages", arguments: arguments())
            remoteSamples.append(Double(Stopwatch.now() - start) / 1e9)
            remotePushSamples.append(report.pushSeconds)
        }
        return RemoteReport(date: isoDate(), imageBytes: size, workers: workers, dirtyFraction: dirty, memcpySeconds: memcpySeconds,
                            rawTCPSeconds: median(rawSamples), rawTCPCPUSeconds: median(rawCPU), wholePushSeconds: median(pushSamples),
                            wholePushCPUSeconds: median(pushCPU), wholePushWireBytes: wire,
                            updatePushSeconds: median(updateSamples), updateBytes: updateBytes, localRoundSeconds: median(localSamples),
                            remoteRoundSeconds: median(remoteSamples), remoteRoundPushSeconds: median(remotePushSamples),
                            wholePushVsRawTCP: median(rawSamples) / median(pushSamples), remoteVsLocalRound: median(remoteSamples) / median(localSamples))
    }
}

/// A `memsnap serve` child on a loopback address (with a raw TCP sink if asked), stopped by
/// `stop()`, and with this process (--exit-with-parent).
final class ServerChild {
    let process: ChildProcess
    let port: Int
    let sinkPort: Int
    private let tokenFile: String

    init(address: String, token: String, maxSnapshot: Int, rawSink: Bool) throws {
        tokenFile = "/tmp/memsnap-bench-token-\(getpid())"
        try token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        chmod(tokenFile, 0o600)
        process = try ChildProcess(
            executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
            arguments: ["serve", "--listen", "\(address):0", "--token-file", tokenFile, "--exit-with-parent",
                        "--idle-exit", "600", "--max-snapshot", "\(maxSnapshot)"] + (rawSink ? ["--raw-sink"] : []),
            standardOutput: .pipe)
        let line = try process.readOutputLine(timeout: .seconds(60)) ?? ""
        // "memsnap serve: listening on HOST:PORT" and " (raw sink on port SINK)"
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        let portIndex = rawSink ? numbers.count - 2 : numbers.count - 1
        guard numbers.count >= (rawSink ? 6 : 5), let port = numbers.indices.contains(portIndex) ? numbers[portIndex] : nil,
              let sink = rawSink ? numbers.last : 0 else {
            throw ValidationError("the second process did not start: \(line) (\(process.termination.map { "\($0)" } ?? "still running"))")
        }
        self.port = port
        self.sinkPort = sink
    }

    func stop() {
        unlink(tokenFile)
        if process.isRunning {
            process.signal(SIGTERM)
            _ = process.wait()
        }
    }
}

/// CPU time (user and system) a process has used, from /proc/PID/stat; 0 if it cannot be read.
enum ProcessCPU {
    static func seconds(of pid: String) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let afterName = stat.range(of: ") ", options: .backwards) else { return 0 }
        // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
        let fields = stat[afterName.upperBound...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}
