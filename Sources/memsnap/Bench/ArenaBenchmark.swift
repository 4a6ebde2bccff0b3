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
        abstract: "Random 8-byte updates over an arena with a sync every 1, 100 and 10 000 updates (automatic tracking scanning the whole heap or recently written chunks, and markDirty), against LMDB and a raw write + fdatasync.",
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
        // Three arenas, LMDB (whose 4 KiB values take two pages each) and the raw file.
        try validateFreeSpace(Double(size) * 6, in: directory, for: "--size \(ByteCount(size))")
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
    /// One way of syncing measured over the batch's rounds.
    struct Syncs: Codable {
        var medianSeconds: Double
        /// Mean sync, which tail latencies (fdatasync outliers, log checkpoints) pull above the median.
        var meanSeconds: Double
        /// Mean time of one round's stores (first touches, write-protect and chunk faults).
        var storeMeanSeconds: Double
        /// Updates per second over stores and syncs.
        var updatesPerSecond: Double
    }
    struct Row: Codable {
        var updatesPerSync: Int
        var syncs: Int
        var dirtyPagesPerSync: Double
        /// Automatic tracking, every sync scanning the whole heap (`SyncScan.wholeHeap`).
        var wholeHeap: Syncs
        /// Automatic tracking, syncs scanning recently written chunks (`SyncScan.recentlyWrittenChunks`).
        var recentChunks: Syncs
        /// `markDirty` per update instead of automatic tracking.
        var markDirty: Syncs
        /// `mdb_txn_commit` alone (medians and means of commits; updates/s over whole
        /// transactions); nil when memsnap-lmdb-bench is not built.
        var lmdb: Syncs?
        var rawWriteAndSyncSeconds: Double
    }
    var date: String
    var sizeBytes: Int
    var directory: String
    /// Why LMDB was not measured (nil when it was).
    var lmdbMissing: String?
    var rows: [Row]

    func table() -> String {
        var table = Table(columns: ["updates/sync", "pages/sync", "sync: whole heap", "mean", "sync: recent chunks", "mean",
                                    "stores: recent chunks", "stores: whole heap", "sync: markDirty", "mean", "LMDB commit", "mean", "raw write+fdatasync",
                                    "recent vs LMDB", "mean vs mean", "whole vs LMDB", "mean vs mean",
                                    "updates/s: recent", "LMDB"])
        func ratio(_ mine: Double, _ theirs: Double?) -> String { theirs.map { format(mine / $0, decimals: 2) + "x" } ?? "-" }
        for row in rows {
            table.append([
                "\(row.updatesPerSync)", format(row.dirtyPagesPerSync, decimals: 1),
                formatDuration(row.wholeHeap.medianSeconds), formatDuration(row.wholeHeap.meanSeconds),
                formatDuration(row.recentChunks.medianSeconds), formatDuration(row.recentChunks.meanSeconds),
                formatDuration(row.recentChunks.storeMeanSeconds), formatDuration(row.wholeHeap.storeMeanSeconds),
                formatDuration(row.markDirty.medianSeconds), formatDuration(row.markDirty.meanSeconds),
                row.lmdb.map { formatDuration($0.medianSeconds) } ?? "not built", row.lmdb.map { formatDuration($0.meanSeconds) } ?? "-",
                formatDuration(row.rawWriteAndSyncSeconds),
                ratio(row.recentChunks.medianSeconds, row.lmdb?.medianSeconds), ratio(row.recentChunks.meanSeconds, row.lmdb?.meanSeconds),
                ratio(row.wholeHeap.medianSeconds, row.lmdb?.medianSeconds), ratio(row.wholeHeap.meanSeconds, row.lmdb?.meanSeconds),
                format(row.recentChunks.updatesPerSecond, decimals: 0), row.lmdb.map { format($0.updatesPerSecond, decimals: 0) } ?? "-",
            ])
        }
        return ["\(ByteCount(sizeBytes)) of data in \(directory); sync and commit latencies per round (median, mean); "
                + "LMDB stores each 4 KiB page as a value and commits with its default (full) durability", "",
                table.rendered()]
            .joined(separator: "\n") + (lmdbMissing.map { "\nLMDB not measured: \($0)" } ?? "")
    }
}

/// One arena under test and what its rounds cost.
private final class MeasuredArena {
    let arena: Arena
    let blob: ArenaOffset
    let declaresWrites: Bool
    var syncs: [Double] = []
    var storeSeconds = 0.0
    var totalSeconds = 0.0

    init(path: String, capacity: Int, pages: Int, configuration: Arena.Configuration) throws {
        arena = try Arena.create(path: path, capacity: capacity, configuration: configuration)
        blob = try arena.allocate(byteCount: pages * Page.size, alignment: Page.size)
        try arena.sync(epoch: 0, event: 1)
        declaresWrites = configuration.tracking == .explicit
    }

    /// Stores `updates` into the blob (declaring them with markDirty if the arena wants that),
    /// then syncs as round `round`.
    func round(_ round: Int, _ updates: [(slot: Int, value: UInt64)], pages: Int) throws {
        let start = Stopwatch.now()
        let base = try arena.address(of: blob, byteCount: pages * Page.size)
        for update in updates {
            base.storeBytes(of: update.value, toByteOffset: update.slot * 8, as: UInt64.self)
            if declaresWrites {
                let offset = Int(blob.rawValue) + update.slot * 8
                arena.markDirty(offset..<offset + 8)
            }
        }
        storeSeconds += Double(Stopwatch.now() - start) / 1e9
        let (_, syncSeconds) = try Stopwatch.time { try arena.sync(epoch: 0, event: UInt64(round + 2)) }
        totalSeconds += Double(Stopwatch.now() - start) / 1e9
        syncs.append(syncSeconds)
    }

    func summary(updates: Int) -> ArenaReport.Syncs {
        ArenaReport.Syncs(medianSeconds: median(syncs), meanSeconds: syncs.reduce(0, +) / Double(max(1, syncs.count)),
                          storeMeanSeconds: storeSeconds / Double(max(1, syncs.count)),
                          updatesPerSecond: Double(updates) / totalSeconds)
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
            let capacity = size + (8 << 20)
            let wholeHeap = try MeasuredArena(path: arenaPath, capacity: capacity, pages: pages,
                                              configuration: .init(tracking: .automatic, syncScan: .wholeHeap))
            let recentChunks = try MeasuredArena(path: arenaPath + "-recent", capacity: capacity, pages: pages,
                                                 configuration: .init(tracking: .automatic, syncScan: .recentlyWrittenChunks))
            let markDirty = try MeasuredArena(path: arenaPath + "-explicit", capacity: capacity, pages: pages,
                                              configuration: .init(tracking: .explicit))
            try lmdb?.startBatch(batch)
            var random = SplitMix64(seed: UInt64(batch))
            var lmdbCommits: [Double] = [], rawSyncs: [Double] = []
            var dirtyPages = 0
            var lmdbTotal = 0.0
            let page = [UInt8](repeating: 0, count: Page.size)
            for round in 0..<syncs {
                let updates = (0..<batch).map { _ in (slot: Int(random.next() % UInt64(pages * Page.size / 8)), value: random.next()) }
                let touched = Set(updates.map { $0.slot * 8 / Page.size })
                dirtyPages += touched.count
                // The arenas, one after the other: store, then one sync.
                for measured in [wholeHeap, recentChunks, markDirty] { try measured.round(round, updates, pages: pages) }
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
            for measured in [wholeHeap, recentChunks, markDirty] { try measured.arena.close() }
            let lmdbSyncs = lmdb == nil ? nil : ArenaReport.Syncs(
                medianSeconds: median(lmdbCommits), meanSeconds: lmdbCommits.reduce(0, +) / Double(syncs),
                storeMeanSeconds: 0, updatesPerSecond: Double(batch * syncs) / lmdbTotal)
            rows.append(.init(updatesPerSync: batch, syncs: syncs, dirtyPagesPerSync: Double(dirtyPages) / Double(syncs),
                              wholeHeap: wholeHeap.summary(updates: batch * syncs),
                              recentChunks: recentChunks.summary(updates: batch * syncs),
                              markDirty: markDirty.summary(updates: batch * syncs),
                              lmdb: lmdbSyncs, rawWriteAndSyncSeconds: median(rawSyncs)))
        }
        return ArenaReport(date: isoDate(), sizeBytes: size, directory: directory, lmdbMissing: lmdbMissing, rows: rows)
    }
}
