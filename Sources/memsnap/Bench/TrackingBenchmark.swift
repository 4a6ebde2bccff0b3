#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap

struct TrackingBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tracking",
        abstract: "Cost of each dirty-tracking mode: arm, first write, collect-and-reset; against memcpy."
    )

    @Option(help: "Tracked region size.", transform: parseByteCount)
    var size: Int = 256 << 20

    @Option(help: "Fraction of pages written at random in the sparse case (e.g. 1%).", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "Repetitions per measurement; medians are reported.")
    var repetitions: Int = 3

    @Option(help: "Modes to measure (comma-separated); default: every mode.", transform: parseModes)
    var modes: [DirtyTrackingMode] = DirtyTrackingMode.allCases.filter { $0 != .auto && $0.resetForgetsEarlierWrites }

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be 1...50") }
        guard !modes.isEmpty else { throw ValidationError("--modes names no mode") }
        if let cumulative = modes.first(where: { !$0.resetForgetsEarlierWrites }) {
            // This benchmark resets and writes again without restoring the region.
            throw ValidationError("\(cumulative.rawValue) only forgets writes when the memory is restored: "
                + "measure it with `memsnap bench rounds --mode \(cumulative.rawValue)`")
        }
        // Source, target and the tracked region, populated; compare mode keeps a copy too.
        try validateSize(size, memoryCopies: 4)
    }

    func run() throws {
        let benchmark = TrackingBenchmark(size: size, dirtyFraction: dirty, repetitions: repetitions)
        let report = try benchmark.run(modes: modes)
        try report.emit(json: json)
    }
}

/// "uffd-async,segfault" into modes; `auto` is not a mechanism and is refused.
func parseModes(_ text: String) throws -> [DirtyTrackingMode] {
    try text.split(separator: ",").map {
        guard let mode = DirtyTrackingMode(rawValue: String($0)), mode != .auto else {
            let modes = DirtyTrackingMode.allCases.filter { $0 != .auto }.map(\.rawValue).joined(separator: ", ")
            throw ValidationError("'\($0)' is not a tracking mode (\(modes))")
        }
        return mode
    }
}

/// Measurements of one tracking mode; times in seconds.
struct TrackingModeResult: Codable {
    var mode: String
    var available: Bool
    var unavailableReason: String?
    var armSeconds: Double?
    var sparsePages: Int?
    var sparseExtraPerFirstWriteSeconds: Double?
    var sparseCollectAndResetSeconds: Double?
    var sparseCollectedExactly: Bool?
    var sparseSnapshotSeconds: Double?
    var sparseSnapshotOverMemcpy: Double?
    var fullExtraPerFirstWriteSeconds: Double?
    var fullCollectAndResetSeconds: Double?
    var fullCollectedExactly: Bool?
    /// The fraction of written pages above which tracking + copying them costs more than one
    /// memcpy of the region: memcpy / (pages × (extra first-write cost + copy cost per page)).
    var breakEvenFraction: Double?
}

struct TrackingReport: Codable, BenchmarkReport {
    var date: String
    var kernel: String
    var regionBytes: Int
    var dirtyFraction: Double
    var repetitions: Int
    var memcpySeconds: Double
    var memcpyBytesPerSecond: Double
    var sparseUntrackedWriteSeconds: Double
    var fullUntrackedWriteSeconds: Double
    var modes: [TrackingModeResult]

    func table() -> String {
        var lines = [
            "region \(ByteCount(regionBytes)), \(format(dirtyFraction * 100, decimals: 1)) % random pages (sparse) "
                + "and 100 % sequential (full), medians of \(repetitions); kernel \(kernel)",
            "memcpy of the region: \(formatDuration(memcpySeconds)) "
                + "(\(format(memcpyBytesPerSecond / 1e9, decimals: 1)) GB/s)",
            "",
        ]
        var table = Table(columns: [
            "mode", "arm", "sparse: +per 1st write", "collect+reset", "exact", "snapshot cost (vs memcpy)",
            "full: +per 1st write", "collect+reset", "exact", "break-even",
        ])
        var unavailable: [String] = []
        for result in modes {
            guard result.available else {
                unavailable.append("\(result.mode): unavailable: \(result.unavailableReason ?? "?")")
                continue
            }
            func time(_ value: Double?) -> String { value.map(formatDuration) ?? "-" }
            func yes(_ value: Bool?) -> String { value.map { $0 ? "yes" : "NO" } ?? "-" }
            table.append([
                result.mode, time(result.armSeconds), time(result.sparseExtraPerFirstWriteSeconds),
                time(result.sparseCollectAndResetSeconds), yes(result.sparseCollectedExactly),
                "\(time(result.sparseSnapshotSeconds)) (\(result.sparseSnapshotOverMemcpy.map { format($0, decimals: 3) + "x" } ?? "-"))",
                time(result.fullExtraPerFirstWriteSeconds), time(result.fullCollectAndResetSeconds),
                yes(result.fullCollectedExactly),
                result.breakEvenFraction.map { format(min($0, 1) * 100, decimals: 0) + " %" } ?? "-",
            ])
        }
        lines.append(table.rendered())
        lines.append(contentsOf: unavailable)
        lines.append("")
        lines.append("snapshot cost = extra first-write time + collect-and-reset + copying the written pages: "
            + "what an incremental snapshot of the sparse case costs, against copying the whole region.")
        lines.append("break-even = the written fraction above which copying everything is cheaper "
            + "(DirtyTracker.Configuration.fullCopyFraction).")
        return lines.joined(separator: "\n")
    }
}

/// Runs the measurements. Each region is populated before tracking starts, as a live heap is.
struct TrackingBenchmark {
    var size: Int
    var dirtyFraction: Double
    var repetitions: Int

    var pageCount: Int { size / Page.size }

    /// Distinct random pages, the same for every mode.
    var sparsePages: [Int] {
        let count = max(1, Int((Double(pageCount) * dirtyFraction).rounded()))
        var random = SplitMix64(seed: 0xD1A7)
        var chosen = Set<Int>()
        while chosen.count < count { chosen.insert(Int(random.next() % UInt64(pageCount))) }
        return chosen.shuffled(using: &random)
    }

    func populatedRegion() throws -> VirtualRegion {
        let region = try VirtualRegion(maxSize: size, committing: size)
        region.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 1, $0.count) }
        return region
    }

    func write(_ pages: [Int], into region: VirtualRegion, value: UInt64) {
        region.withUnsafeMutableBytes { memory in
            for page in pages { memory.storeBytes(of: value, toByteOffset: page << Page.shift, as: UInt64.self) }
        }
    }

    func run(modes: [DirtyTrackingMode]) throws -> TrackingReport {
        let sparse = sparsePages
        let everyPage = Array(0..<pageCount)
        let source = try populatedRegion()
        let target = try populatedRegion()
        let memcpySeconds = Stopwatch.median(repetitions: repetitions) {
            source.withUnsafeBytes { from in
                target.withUnsafeMutableBytes { to in _ = memcpy(to.baseAddress!, from.baseAddress!, from.count) }
            }
        }
        var value: UInt64 = 2
        let sparseUntracked = Stopwatch.median(repetitions: repetitions) {
            value += 1
            write(sparse, into: source, value: value)
        }
        let fullUntracked = Stopwatch.median(repetitions: repetitions) {
            value += 1
            write(everyPage, into: source, value: value)
        }
        var results: [TrackingModeResult] = []
        for mode in modes {
            var result = TrackingModeResult(mode: mode.rawValue, available: mode.availability == .available)
            guard result.available else {
                result.unavailableReason = mode.availability.description
                results.append(result)
                continue
            }
            var arm: [Double] = [], sparseWrite: [Double] = [], sparseCollect: [Double] = []
            var sparseSnapshot: [Double] = [], fullWrite: [Double] = [], fullCollect: [Double] = []
            var sparseExact = true, fullExact = true
            for repetition in 0..<repetitions {
                let region = try populatedRegion()
                let (tracker, armSeconds) = try Stopwatch.time { try DirtyTracker(tracking: region, mode: mode) }
                defer { tracker.stop() }
                arm.append(armSeconds)

                let marker = UInt64(100 + repetition)
                let (_, writeSeconds) = Stopwatch.time { write(sparse, into: region, value: marker) }
                let (collected, collectSeconds) = try Stopwatch.time { try tracker.collectAndReset() }
                let expected = mode == .none ? pageCount : sparse.count
                sparseExact = sparseExact && collected.count == expected
                let (_, copySeconds) = Stopwatch.time {
                    region.withUnsafeBytes { memory in
                        target.withUnsafeMutableBytes { copy in
                            for range in collected.byteRanges {
                                _ = memcpy(copy.baseAddress! + range.lowerBound, memory.baseAddress! + range.lowerBound, range.count)
                            }
                        }
                    }
                }
                sparseWrite.append(writeSeconds)
                sparseCollect.append(collectSeconds)
                sparseSnapshot.append(max(0, writeSeconds - sparseUntracked) + collectSeconds + copySeconds)

                let (_, fullSeconds) = Stopwatch.time { write(everyPage, into: region, value: marker + 1) }
                let (all, fullCollectSeconds) = try Stopwatch.time { try tracker.collectAndReset() }
                fullExact = fullExact && all.count == pageCount
                fullWrite.append(fullSeconds)
                fullCollect.append(fullCollectSeconds)
            }
            result.armSeconds = median(arm)
            result.sparsePages = sparse.count
            result.sparseExtraPerFirstWriteSeconds = max(0, median(sparseWrite) - sparseUntracked) / Double(sparse.count)
            result.sparseCollectAndResetSeconds = median(sparseCollect)
            result.sparseCollectedExactly = sparseExact
            result.sparseSnapshotSeconds = median(sparseSnapshot)
            result.sparseSnapshotOverMemcpy = median(sparseSnapshot) / memcpySeconds
            result.fullExtraPerFirstWriteSeconds = max(0, median(fullWrite) - fullUntracked) / Double(pageCount)
            result.fullCollectAndResetSeconds = median(fullCollect)
            result.fullCollectedExactly = fullExact
            let copyPerPage = memcpySeconds / Double(pageCount)
            let perPage = (result.fullExtraPerFirstWriteSeconds ?? 0) + copyPerPage
            result.breakEvenFraction = max(0, memcpySeconds - median(sparseCollect)) / (Double(pageCount) * perPage)
            results.append(result)
        }
        return TrackingReport(
            date: isoDate(), kernel: SystemReport.kernelRelease(), regionBytes: size, dirtyFraction: dirtyFraction,
            repetitions: repetitions, memcpySeconds: memcpySeconds,
            memcpyBytesPerSecond: Double(size) / memcpySeconds,
            sparseUntrackedWriteSeconds: sparseUntracked, fullUntrackedWriteSeconds: fullUntracked, modes: results)
    }
}
