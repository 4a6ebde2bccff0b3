#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap

struct RoundsBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rounds",
        abstract: "Fork/join rounds of SnapshotWorkers: empty rounds and sparse writers, against the workers' own "
            + "copy-on-write faults plus diff and merge."
    )

    @Option(help: "Snapshot size.", transform: parseByteCount)
    var size: Int = 256 << 20

    @Option(help: "Workers per round.")
    var workers: Int = 16

    @Option(help: "Fraction of pages each worker writes in the writing rounds (e.g. 1%).", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "Tracking mode of the pool (default: auto).", transform: parseModes)
    var mode: [DirtyTrackingMode] = []

    @Option(help: "Rounds per measurement; medians are reported.")
    var repetitions: Int = 9

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1...64") }
        guard (1...100).contains(repetitions) else { throw ValidationError("--repetitions must be 1...100") }
        guard mode.count <= 1 else { throw ValidationError("--mode takes one mode") }
        // The snapshot, plus each memory's private copies, twice (the pool's and the anchor's).
        try validateSize(size, memoryCopies: 1 + dirty * Double(2 * (workers + 1)))
    }

    func run() throws {
        let benchmark = RoundsBenchmark(size: size, workers: workers, dirtyFraction: dirty, repetitions: repetitions,
                                        mode: mode.first)
        try benchmark.run().emit(json: json)
    }
}

struct RoundsReport: Codable, BenchmarkReport {
    var date: String
    var mode: String
    var snapshotBytes: Int
    var workers: Int
    var dirtyFraction: Double
    var pagesPerWorker: Int
    var repetitions: Int
    /// Starting and joining `workers` threads that do nothing: what a round cost before the
    /// pool kept its threads.
    var threadsOnlySeconds: Double
    /// Waking `workers` pool threads that do nothing and waiting for them: part of every round.
    var wakeThreadsSeconds: Double
    /// A round whose bodies write nothing: its whole time is overhead.
    var emptyRoundSeconds: Double
    /// A round whose bodies write `pagesPerWorker` pages each.
    var dirtyRoundSeconds: Double
    /// The same writes into fresh untracked copy-on-write mappings and their diffs, one thread
    /// per worker, and the merge of those diffs: the work a round cannot avoid.
    var anchorWriteAndDiffSeconds: Double
    var anchorMergeSeconds: Double
    var anchorSeconds: Double
    var dirtyRoundOverAnchor: Double
    /// Memories remapped (not restored in place) over all measured rounds.
    var remappedMemories: Int

    func table() -> String {
        [
            "snapshot \(ByteCount(snapshotBytes)) of synthetic heap, \(workers) workers + the main memory, \(mode) tracking; "
                + "medians of \(repetitions) rounds",
            "start and join \(workers) threads that do nothing:   \(formatDuration(threadsOnlySeconds))",
            "wake \(workers) waiting threads that do nothing:     \(formatDuration(wakeThreadsSeconds))",
            "empty round (bodies write nothing):         \(formatDuration(emptyRoundSeconds))",
            "round with \(format(dirtyFraction * 100, decimals: 1)) % writers (\(pagesPerWorker) pages each, 4 stores per page): "
                + "\(formatDuration(dirtyRoundSeconds))",
            "anchor: the same writes on fresh copy-on-write mappings + their diffs (\(workers) waiting threads) "
                + "\(formatDuration(anchorWriteAndDiffSeconds)) + merge \(formatDuration(anchorMergeSeconds)) = "
                + "\(formatDuration(anchorSeconds))",
            "round / anchor: \(format(dirtyRoundOverAnchor, decimals: 2))x; memories remapped instead of restored in place: "
                + "\(remappedMemories)",
        ].joined(separator: "\n")
    }
}

struct RoundsBenchmark {
    var size: Int
    var workers: Int
    var dirtyFraction: Double
    var repetitions: Int
    var mode: DirtyTrackingMode?

    var pageCount: Int { size / Page.size }
    var pagesPerWorker: Int { max(1, Int((Double(pageCount) * dirtyFraction).rounded())) }

    /// The pages a worker writes in a round, sorted (the same for the pool and the anchor).
    func pages(worker: Int, round: Int) -> [Int] {
        var random = SplitMix64(seed: UInt64(round) &* 1000 &+ UInt64(worker))
        var chosen = Set<Int>()
        let count = min(pagesPerWorker, pageCount)
        while chosen.count < count { chosen.insert(Int(random.next() % UInt64(pageCount))) }
        return chosen.sorted()
    }

    /// 4 scattered 8-byte stores per page, as a heap updating object fields would.
    static func write(_ pages: [Int], into memory: UnsafeMutableRawBufferPointer, seed: UInt64) {
        var random = SplitMix64(seed: seed)
        for page in pages {
            for _ in 0..<4 {
                let offset = page * Page.size + Int(random.next() % UInt64(Page.size / 8)) * 8
                memory.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
            }
        }
    }

    func run() throws -> RoundsReport {
        let snapshot = try Snapshot(size: size, name: "bench-rounds")
        try snapshot.update(at: 0, count: size) { SyntheticHeap().fill($0) }
        let pool = try SnapshotWorkers(snapshot: snapshot, count: workers, tracking: DirtyTracker.Configuration(mode: mode))
        let workerCount = workers
        let threadsOnly = try Stopwatch.median(repetitions: repetitions) {
            var threads = OSThreadGroup()
            for index in 0..<workerCount { try threads.start(name: "bench-t\(index)") {} }
            threads.joinAll()
        }
        // The anchor's threads, as the pool's: started once, woken for every round.
        let anchorThreads = try WorkerThreadPool(count: workerCount, name: "bench-a")
        let wakeThreads = Stopwatch.median(repetitions: repetitions) { anchorThreads.run { _ in } }
        var remapped = 0
        // Warm up both kinds of round (first faults of the page tables, thread stacks).
        try pool.run { _ in }
        // Every round's pages are chosen before any is timed.
        let plannedRounds = 2 * repetitions + 1
        let allPlans = (0..<plannedRounds).map { round in (0..<workerCount).map { pages(worker: $0, round: round) } }
        var round = 0
        func writingRound() throws {
            let current = round
            round += 1
            let plans = allPlans[current % plannedRounds]
            let report = try pool.run { worker in
                worker.memory.withUnsafeMutableBytes {
                    RoundsBenchmark.write(plans[worker.index], into: $0, seed: UInt64(current * 100 + worker.index))
                }
            }
            remapped += report.remappedMemories.count
        }
        try writingRound()
        remapped = 0
        let empty = try Stopwatch.median(repetitions: repetitions) {
            remapped += try pool.run { _ in }.remappedMemories.count
        }
        let dirtyRound = try Stopwatch.median(repetitions: repetitions) { try writingRound() }

        // The anchor: the same kind of writes into fresh untracked copy-on-write mappings of the
        // same snapshot, each diffed on its own thread, then one merge of every worker's diffs.
        let regions = try (0..<workerCount).map { _ in try VirtualRegion(maxSize: size) }
        var writeAndDiff: [Double] = []
        var merge: [Double] = []
        for _ in 0..<repetitions {
            for region in regions { try snapshot.mapCopyOnWrite(into: region) }
            let current = round
            round += 1
            let plans = allPlans[current % plannedRounds]
            let outcomes = Locked<[Int: Result<SnapshotDiffBatch, MemSnapError>]>([:])
            let seconds = Stopwatch.time {
                anchorThreads.run { index in
                    let region = regions[index]
                    region.withUnsafeMutableBytes {
                        RoundsBenchmark.write(plans[index], into: $0, seed: UInt64(current * 100 + index))
                    }
                    let dirty = DirtyPages(pageCount: pageCount, runs: plans[index].map { $0..<$0 + 1 })
                    let outcome = Result { () throws(MemSnapError) in try snapshot.diffBatch(region, dirtyPages: dirty) }
                    outcomes.withLock { $0[index] = outcome }
                }
            }.seconds
            writeAndDiff.append(seconds)
            var batches: [SnapshotDiffBatch] = []
            for index in 0..<workerCount {
                guard let outcome = outcomes.withLock({ $0[index] }) else {
                    throw ValidationError("anchor worker \(index) ended without a result")
                }
                batches.append(try outcome.get())
            }
            merge.append(try Stopwatch.time { try snapshot.apply(batches: batches) }.seconds)
        }
        let anchorWrite = median(writeAndDiff)
        let anchorMerge = median(merge)
        return RoundsReport(
            date: isoDate(), mode: pool.trackingMode.rawValue,
            snapshotBytes: size, workers: workers, dirtyFraction: dirtyFraction, pagesPerWorker: pagesPerWorker,
            repetitions: repetitions, threadsOnlySeconds: threadsOnly, wakeThreadsSeconds: wakeThreads, emptyRoundSeconds: empty,
            dirtyRoundSeconds: dirtyRound, anchorWriteAndDiffSeconds: anchorWrite, anchorMergeSeconds: anchorMerge,
            anchorSeconds: anchorWrite + anchorMerge, dirtyRoundOverAnchor: dirtyRound / (anchorWrite + anchorMerge),
            remappedMemories: remapped)
    }
}
