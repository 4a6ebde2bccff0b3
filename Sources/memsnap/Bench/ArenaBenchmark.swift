#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapArena

struct ArenaBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "arena",
        abstract: "Random 8-byte updates over an arena with a sync every 1, 100 and 10 000 updates, against LMDB and a raw write + fdatasync.",
        discussion: """
            LMDB runs in memsnap-lmdb-bench, a benchmark executable built next to memsnap (swift build -c release \
            builds it; the memsnap tool itself does not link LMDB); without it the LMDB columns say so.
            """
    )

    @Option(help: "Arena heap (and LMDB data) size.", transform: parseByteCount)
    var size: Int = 1 << 30

    @Option(help: "Directory for the files (a real disk: fdatasync is part of what is measured).")
    var directory: String = "/tmp"

    @Option(help: "Updates per sync to measure (comma-separated).")
    var batches: String = "1,100,10000"

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    /// Updates per sync are held in memory as one array: a million is plenty.
    static let largestBatch = 1_000_000

    func validate() throws {
        _ = try batchSizes()
        // Arena capacity and LMDB map size are multiples of it; keep that arithmetic far from
        // overflow (and the benchmark's run time finite).
        guard size <= 1 << 40 else { throw ValidationError("--size must be at most 1 TiB, not \(ByteCount(size))") }
        try validateSize(size, memoryCopies: 1)
        // Two arenas, LMDB (whose 4 KiB values take two pages each) and the raw file.
        try validateFreeSpace(Double(size) * 5, in: directory, for: "--size \(ByteCount(size))")
    }

    func batchSizes() throws -> [Int] {
        let sizes = try batches.split(separator: ",").map { text -> Int in
            guard let value = Int(text), (1...Self.largestBatch).contains(value) else {
                throw ValidationError("'\(text)' is not a batch size from 1 to \(Self.largestBatch)")
            }
            return value
        }
        guard !sizes.isEmpty else { throw ValidationError("--batches names no batch size") }
        return sizes
    }

    func run() throws {
        try ArenaBenchmark(size: size, directory: directory).run(batches: try batchSizes()).emit(json: json)
    }
}

struct ArenaReport: Codable, BenchmarkReport {
    struct Row: Codable {
        var updatesPerSync: Int
        var syncs: Int
        var dirtyPagesPerSync: Double
        var arenaSyncSeconds: Double
        /// Mean sync, which tail latencies (fdatasync outliers) pull above the median.
        var arenaSyncMeanSeconds: Double
        /// Mean time of one round's stores into the tracked heap (first touches and write-protect faults).
        var arenaStoreMeanSeconds: Double
        var arenaUpdatesPerSecond: Double
        /// The same with `markDirty` per update instead of the dirty-page tracker.
        var explicitSyncSeconds: Double
        /// Nil when memsnap-lmdb-bench is not built.
        var lmdbCommitSeconds: Double?
        var lmdbUpdatesPerSecond: Double?
        var rawWriteAndSyncSeconds: Double
    }
    var date: String
    var sizeBytes: Int
    var directory: String
    /// Why LMDB was not measured (nil when it was).
    var lmdbMissing: String?
    var rows: [Row]

    func table() -> String {
        var table = Table(columns: ["updates/sync", "pages/sync", "arena sync", "arena sync mean", "arena stores mean",
                                    "arena updates/s", "arena sync (markDirty)",
                                    "LMDB commit", "LMDB updates/s", "raw write+fdatasync", "arena vs LMDB", "arena vs raw",
                                    "markDirty vs LMDB", "markDirty vs raw"])
        for row in rows {
            table.append([
                "\(row.updatesPerSync)", format(row.dirtyPagesPerSync, decimals: 1), formatDuration(row.arenaSyncSeconds),
                formatDuration(row.arenaSyncMeanSeconds), formatDuration(row.arenaStoreMeanSeconds),
                format(row.arenaUpdatesPerSecond, decimals: 0), formatDuration(row.explicitSyncSeconds),
                row.lmdbCommitSeconds.map(formatDuration) ?? "not built",
                row.lmdbUpdatesPerSecond.map { format($0, decimals: 0) } ?? "-", formatDuration(row.rawWriteAndSyncSeconds),
                row.lmdbCommitSeconds.map { format(row.arenaSyncSeconds / $0, decimals: 2) + "x" } ?? "-",
                format(row.arenaSyncSeconds / row.rawWriteAndSyncSeconds, decimals: 2) + "x",
                row.lmdbCommitSeconds.map { format(row.explicitSyncSeconds / $0, decimals: 2) + "x" } ?? "-",
                format(row.explicitSyncSeconds / row.rawWriteAndSyncSeconds, decimals: 2) + "x",
            ])
        }
        return ["\(ByteCount(sizeBytes)) of data in \(directory); latencies are medians per sync or commit; "
                + "LMDB stores each 4 KiB page as a value and commits with its default (full) durability", "",
                table.rendered()]
            .joined(separator: "\n") + (lmdbMissing.map { "\nLMDB not measured: \($0)" } ?? "")
    }
}

struct ArenaBenchmark {
    var size: Int
    var directory: String

    func run(batches: [Int]) throws -> ArenaReport {
        let workspace = "\(directory)/memsnap-bench-arena-\(getpid())"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let pages = size / Page.size
        var rows: [ArenaReport.Row] = []
        let lmdb: LMDBBenchProcess?
        var lmdbMissing: String? = nil
        do {
            try FileManager.default.createDirectory(atPath: "\(workspace)/lmdb", withIntermediateDirectories: true)
            lmdb = try LMDBBenchProcess(directory: "\(workspace)/lmdb", pages: pages)
        } catch let error as LMDBBenchProcess.NotBuilt {
            lmdb = nil
            lmdbMissing = error.description
        }
        defer { lmdb?.finish() }
        let raw = open("\(workspace)/raw.bin", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { close(raw) }
        ftruncate(raw, off_t(size))
        for batch in batches {
            let syncs = max(10, min(500, 200_000 / batch))
            let arenaPath = "\(workspace)/arena-\(batch)"
            let arena = try Arena.create(path: arenaPath, capacity: size + (8 << 20))
            let blob = try arena.allocate(byteCount: pages * Page.size, alignment: Page.size)
            try arena.sync(epoch: 0, event: 1)
            let explicit = try Arena.create(path: arenaPath + "-explicit", capacity: size + (8 << 20),
                                            configuration: .init(tracking: .explicit))
            let explicitBlob = try explicit.allocate(byteCount: pages * Page.size, alignment: Page.size)
            try explicit.sync(epoch: 0, event: 1)
            var explicitSyncs: [Double] = []
            try lmdb?.startBatch(batch)
            var random = SplitMix64(seed: UInt64(batch))
            var arenaSyncs: [Double] = [], lmdbCommits: [Double] = [], rawSyncs: [Double] = []
            var dirtyPages = 0
            var arenaTotal = 0.0, lmdbTotal = 0.0, arenaStoreTotal = 0.0
            let page = [UInt8](repeating: 0, count: Page.size)
            for round in 0..<syncs {
                let updates = (0..<batch).map { _ in (slot: Int(random.next() % UInt64(pages * Page.size / 8)), value: random.next()) }
                let touched = Set(updates.map { $0.slot * 8 / Page.size })
                dirtyPages += touched.count
                // Arena: store, then one sync.
                let arenaStart = Stopwatch.now()
                let base = try arena.address(of: blob, byteCount: pages * Page.size)
                for update in updates { base.storeBytes(of: update.value, toByteOffset: update.slot * 8, as: UInt64.self) }
                arenaStoreTotal += Double(Stopwatch.now() - arenaStart) / 1e9
                let (_, syncSeconds) = try Stopwatch.time { try arena.sync(epoch: 0, event: UInt64(round + 2)) }
                arenaTotal += Double(Stopwatch.now() - arenaStart) / 1e9
                arenaSyncs.append(syncSeconds)
                // Arena with markDirty: the application declares what it wrote.
                let explicitBase = try explicit.address(of: explicitBlob, byteCount: pages * Page.size)
                for update in updates {
                    explicitBase.storeBytes(of: update.value, toByteOffset: update.slot * 8, as: UInt64.self)
                    let offset = Int(explicitBlob.rawValue) + update.slot * 8
                    explicit.markDirty(offset..<offset + 8)
                }
                explicitSyncs.append(try Stopwatch.time { try explicit.sync(epoch: 0, event: UInt64(round + 2)) }.seconds)
                // LMDB (in its own process): the same updates in one write transaction, one commit.
                if let lmdb {
                    let (roundSeconds, commitSeconds) = try lmdb.round()
                    lmdbTotal += roundSeconds
                    lmdbCommits.append(commitSeconds)
                }
                // Raw: write the touched pages and fdatasync once.
                let (_, rawSeconds) = Stopwatch.time {
                    for index in touched { _ = page.withUnsafeBytes { pwrite(raw, $0.baseAddress, Page.size, off_t(index * Page.size)) } }
                    _ = fdatasync(raw)
                }
                rawSyncs.append(rawSeconds)
            }
            try arena.close()
            try explicit.close()
            rows.append(.init(updatesPerSync: batch, syncs: syncs, dirtyPagesPerSync: Double(dirtyPages) / Double(syncs),
                              arenaSyncSeconds: median(arenaSyncs),
                              arenaSyncMeanSeconds: arenaSyncs.reduce(0, +) / Double(syncs),
                              arenaStoreMeanSeconds: arenaStoreTotal / Double(syncs),
                              arenaUpdatesPerSecond: Double(batch * syncs) / arenaTotal,
                              explicitSyncSeconds: median(explicitSyncs),
                              lmdbCommitSeconds: lmdb == nil ? nil : median(lmdbCommits),
                              lmdbUpdatesPerSecond: lmdb == nil ? nil : Double(batch * syncs) / lmdbTotal,
                              rawWriteAndSyncSeconds: median(rawSyncs)))
        }
        return ArenaReport(date: isoDate(), sizeBytes: size, directory: directory, lmdbMissing: lmdbMissing, rows: rows)
    }
}
