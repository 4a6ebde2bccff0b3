#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap

struct DiffBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Diff time and bytes against a memcmp of the same dirty bytes; merging many workers' diffs."
    )

    @Option(help: "Snapshot size.", transform: parseByteCount)
    var size: Int = 256 << 20

    @Option(help: "Fraction of pages each worker writes (e.g. 1%, 10%, 100%).", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "Compare block sizes to measure (comma-separated).")
    var blockSizes: String = "32,64,128,256"

    @Option(help: "Workers whose diffs are merged in the merge measurement.")
    var workers: Int = 16

    @Option(help: "Repetitions per measurement; medians are reported.")
    var repetitions: Int = 5

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1...64") }
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be 1...50") }
        // The snapshot, plus private copies of the dirty pages: the worker's, its twin's and the
        // merge workers'.
        try validateSize(size, memoryCopies: 1 + dirty * Double(2 + workers))
    }

    func run() throws {
        let blocks = try blockSizes.split(separator: ",").map { text -> Int in
            guard let value = Int(text), value >= 16, value & (value - 1) == 0, value <= Page.size else {
                throw ValidationError("'\(text)' is not a power-of-two block size from 16 to \(Page.size)")
            }
            return value
        }
        let report = try DiffBenchmark(size: size, dirtyFraction: dirty, repetitions: repetitions)
            .run(blockSizes: blocks, workers: workers)
        try report.emit(json: json)
    }
}

struct DiffReport: Codable, BenchmarkReport {
    struct BlockResult: Codable {
        var blockSize: Int
        var diffSeconds: Double
        var diffCount: Int
        var diffBytes: Int
        var fractionOfMemcmpBandwidth: Double
        /// The scan alone, no diff produced: the worker's own dirty pages with its stores undone
        /// (so equal to the snapshot), the bytes the diff and `memcmpSeconds` read.
        var scanOnlySeconds: Double
        /// The scan alone over the twin's pages (the figure called "scan alone" before
        /// 2026-11-30 evening).
        var scanOnlyTwinSeconds: Double
        /// diffSeconds against `memcmpTwinSeconds`, the anchor used before 2026-11-30 evening.
        var fractionOfMemcmpTwinBandwidth: Double
        /// The same diffs as an array of `SnapshotDiff` (`Snapshot.diff`) instead of one batch
        /// (`Snapshot.diffBatch`, what `diffSeconds` measures).
        var arraySeconds: Double
        /// Medians of a memcmp of the twin's pages and a diff taken in turn, repetition after
        /// repetition (added 2026-11-30 night): the two see the same machine. On these shared
        /// hosts the bandwidth left by neighbours drifts within seconds, and the blocks of
        /// repetitions behind `memcmpSeconds` and `diffSeconds` are measured seconds apart. Each
        /// of the pair reads memory the other pushed out of the core's caches, so both take
        /// longer than in their blocks: the ratio is the figure, not the times.
        var interleavedMemcmpSeconds: Double
        var interleavedDiffSeconds: Double
        /// Median over the repetitions of memcmp time / diff time, each pair measured back to back.
        var fractionOfMemcmpInterleaved: Double
        /// In turn on the worker's own pages (added 2026-12-01): each repetition undoes the
        /// worker's stores, takes the memcmp, redoes them and takes the diff, so both read the
        /// same physical pages right after the same stores into them: the anchor of
        /// `memcmpSeconds`, paired like `fractionOfMemcmpInterleaved`.
        var interleavedOwnMemcmpSeconds: Double
        var interleavedOwnDiffSeconds: Double
        var fractionOfMemcmpInterleavedOwnPages: Double
    }

    var date: String
    var snapshotBytes: Int
    var dirtyFraction: Double
    var dirtyPages: Int
    var dirtyBytes: Int
    var repetitions: Int
    /// memcmp of the worker's own dirty pages (its stores undone) against the snapshot's: the
    /// bytes the diff reads, in the memory it reads them from. The anchor of every ratio.
    var memcmpSeconds: Double
    /// memcmp of a twin's pages (equal private copies made by memcpy) against the snapshot's:
    /// the anchor before 2026-11-30 evening, kept for comparison.
    var memcmpTwinSeconds: Double
    var blocks: [BlockResult]
    var workers: Int
    var mergeDiffCount: Int
    var mergeDiffBytes: Int
    /// Every worker's batch merged by one `Snapshot.apply(batches:)`.
    var mergeSeconds: Double
    /// The same diffs as `[SnapshotDiff]` arrays, queued and merged by `applyQueuedDiffs()`.
    var mergeArraySeconds: Double

    func table() -> String {
        var lines = [
            "snapshot \(ByteCount(snapshotBytes)) of synthetic heap; \(dirtyPages) dirty pages "
                + "(\(format(dirtyFraction * 100, decimals: 1)) %), 4 scattered 8-byte stores each; medians of \(repetitions)",
            "memcmp of the same \(ByteCount(dirtyBytes)) of dirty pages, the worker's own (stores undone) against "
                + "the snapshot's: \(formatDuration(memcmpSeconds)) "
                + "(\(formatBandwidth(bytes: dirtyBytes, seconds: memcmpSeconds)))",
            "memcmp of a twin's equal private copies of those pages (the anchor before 2026-11-30 evening): "
                + "\(formatDuration(memcmpTwinSeconds)) "
                + "(\(formatBandwidth(bytes: dirtyBytes, seconds: memcmpTwinSeconds)))",
            "",
        ]
        var table = Table(columns: ["block", "diff (batch)", "vs memcmp bandwidth", "vs twin memcmp",
                                    "in turn with twin memcmp", "in turn, own pages", "diffs",
                                    "bytes produced", "scan only (stores undone)", "scan only (twin)",
                                    "as [SnapshotDiff]"])
        for block in blocks {
            table.append(["\(block.blockSize) B", formatDuration(block.diffSeconds),
                          format(block.fractionOfMemcmpBandwidth * 100, decimals: 0) + " %",
                          format(block.fractionOfMemcmpTwinBandwidth * 100, decimals: 0) + " %",
                          format(block.fractionOfMemcmpInterleaved * 100, decimals: 0) + " % ("
                            + formatDuration(block.interleavedDiffSeconds) + " / "
                            + formatDuration(block.interleavedMemcmpSeconds) + ")",
                          format(block.fractionOfMemcmpInterleavedOwnPages * 100, decimals: 0) + " % ("
                            + formatDuration(block.interleavedOwnDiffSeconds) + " / "
                            + formatDuration(block.interleavedOwnMemcmpSeconds) + ")",
                          "\(block.diffCount)", "\(ByteCount(block.diffBytes))",
                          formatDuration(block.scanOnlySeconds) + " ("
                            + format(memcmpSeconds / block.scanOnlySeconds * 100, decimals: 0) + " %)",
                          formatDuration(block.scanOnlyTwinSeconds) + " ("
                            + format(memcmpTwinSeconds / block.scanOnlyTwinSeconds * 100, decimals: 0) + " %)",
                          formatDuration(block.arraySeconds) + " ("
                            + format(memcmpSeconds / block.arraySeconds * 100, decimals: 0) + " %)"])
        }
        lines.append(table.rendered())
        lines.append("")
        lines.append("merge \(workers) workers' diffs (\(mergeDiffCount) diffs, \(ByteCount(mergeDiffBytes))) "
            + "into the snapshot at one sync point: \(formatDuration(mergeSeconds)) as batches (apply(batches:)), "
            + "\(formatDuration(mergeArraySeconds)) as [SnapshotDiff] arrays (queueDiffs + applyQueuedDiffs)")
        return lines.joined(separator: "\n")
    }
}

struct DiffBenchmark {
    var size: Int
    var dirtyFraction: Double
    var repetitions: Int

    var pageCount: Int { size / Page.size }

    /// Each worker writes 4 scattered 8-byte values on each of its dirty pages, as a heap
    /// updating object fields would.
    func dirty(_ memory: VirtualRegion, seed: UInt64) -> [Int] {
        var random = SplitMix64(seed: seed)
        var pages = Set<Int>()
        let count = max(1, Int((Double(pageCount) * dirtyFraction).rounded()))
        if count >= pageCount {
            pages = Set(0..<pageCount)
        } else {
            while pages.count < count { pages.insert(Int(random.next() % UInt64(pageCount))) }
        }
        let sorted = pages.sorted()
        memory.withUnsafeMutableBytes { bytes in
            for page in sorted {
                for _ in 0..<4 {
                    let offset = page * Page.size + Int(random.next() % UInt64(Page.size / 8)) * 8
                    bytes.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
                }
            }
        }
        return sorted
    }

    /// The 8-byte words of a worker's dirty pages that differ from the snapshot, with the values
    /// the worker wrote: what the anchor undoes and redoes.
    struct ChangedWords {
        var offsets: [Int] = []
        var values: [UInt64] = []

        /// Gives every changed word the snapshot's value back: the pages equal the snapshot's.
        func restore(_ memory: VirtualRegion, from snapshot: Snapshot) {
            snapshot.withUnsafeBytes { image in
                memory.withUnsafeMutableBytes { bytes in
                    for offset in offsets {
                        bytes.storeBytes(of: image.load(fromByteOffset: offset, as: UInt64.self),
                                         toByteOffset: offset, as: UInt64.self)
                    }
                }
            }
        }

        /// Writes the worker's values again.
        func redo(_ memory: VirtualRegion) {
            memory.withUnsafeMutableBytes { bytes in
                for (offset, value) in zip(offsets, values) {
                    bytes.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
                }
            }
        }
    }

    static func changedWords(in memory: VirtualRegion, against snapshot: Snapshot, pages: [Int]) -> ChangedWords {
        var words = ChangedWords()
        snapshot.withUnsafeBytes { image in
            memory.withUnsafeBytes { bytes in
                for page in pages {
                    for offset in stride(from: page * Page.size, to: (page + 1) * Page.size, by: 8) {
                        let value = bytes.load(fromByteOffset: offset, as: UInt64.self)
                        if value != image.load(fromByteOffset: offset, as: UInt64.self) {
                            words.offsets.append(offset)
                            words.values.append(value)
                        }
                    }
                }
            }
        }
        return words
    }

    func run(blockSizes: [Int], workers: Int) throws -> DiffReport {
        let snapshot = try Snapshot(size: size, maxSize: size, name: "bench-diff")
        try snapshot.update(at: 0, count: size) { SyntheticHeap().fill($0) }
        let worker = try VirtualRegion(maxSize: size)
        try snapshot.mapCopyOnWrite(into: worker)
        let pages = dirty(worker, seed: 1)
        let dirtyPages = DirtyPages(pageCount: pageCount, runs: pages.map { $0..<$0 + 1 })
        let dirtyBytes = dirtyPages.count * Page.size

        // The physical limit is memcmp of the bytes the diff reads: the worker's own dirty pages
        // against the snapshot's. memcmp stops at the first difference, so for the anchor the
        // worker's stores are undone (the changed words get the snapshot's values back) and then
        // redone: the same physical pages, the same addresses, equal contents, every byte read.
        // Before 2026-11-30 evening the anchor read a twin instead (another mapping whose dirty
        // pages were made equal by memcpy, so its private copies were allocated in page order by
        // a different pass): the twin's figures are kept next to it, nothing hidden.
        let changedWords = Self.changedWords(in: worker, against: snapshot, pages: pages)
        let twin = try VirtualRegion(maxSize: size)
        try snapshot.mapCopyOnWrite(into: twin)
        snapshot.withUnsafeBytes { image in
            twin.withUnsafeMutableBytes { target in
                for range in dirtyPages.byteRanges {
                    _ = memcpy(target.baseAddress! + range.lowerBound, image.baseAddress! + range.lowerBound, range.count)
                }
            }
        }
        let byteRanges = dirtyPages.byteRanges
        /// One memcmp of `memory`'s dirty pages against the snapshot's, which they must equal.
        func memcmpPass(_ memory: VirtualRegion) {
            var sink: Int32 = 0
            snapshot.withUnsafeBytes { image in
                memory.withUnsafeBytes { target in
                    for range in byteRanges {
                        sink |= memcmp(target.baseAddress! + range.lowerBound, image.baseAddress! + range.lowerBound, range.count)
                    }
                }
            }
            precondition(sink == 0, "the compared pages must equal the snapshot's")
        }
        func memcmpOfDirtyPages(_ memory: VirtualRegion) -> Double {
            Stopwatch.median(repetitions: repetitions) { memcmpPass(memory) }
        }
        let memcmpTwinSeconds = memcmpOfDirtyPages(twin)
        changedWords.restore(worker, from: snapshot)
        let memcmpSeconds = memcmpOfDirtyPages(worker)
        changedWords.redo(worker)

        var blocks: [DiffReport.BlockResult] = []
        for blockSize in blockSizes {
            let options = DiffOptions(blockSize: blockSize)
            // Every timing below holds one diff call: the batch it replaces is released after the
            // clock stops (dropping the last result is its consumer's cost, not the diff's).
            func timedDiff(_ memory: VirtualRegion) throws -> (SnapshotDiffBatch, seconds: Double) {
                try Stopwatch.time { try snapshot.diffBatch(memory, dirtyPages: dirtyPages, options: options) }
            }
            func medianDiff(_ memory: VirtualRegion, keeping result: inout SnapshotDiffBatch) throws -> Double {
                try Stopwatch.median(repetitions: repetitions, keepingLast: &result) {
                    try snapshot.diffBatch(memory, dirtyPages: dirtyPages, options: options)
                }
            }
            var diffs = SnapshotDiffBatch()
            let seconds = try medianDiff(worker, keeping: &diffs)
            // In turn: the twin's pages, not the worker's, so that no undoing and redoing of
            // stores (which would bring the changed lines into the caches) sits between the two.
            var interleavedMemcmp: [Double] = []
            var interleavedDiff: [Double] = []
            for _ in 0..<repetitions {
                interleavedMemcmp.append(Stopwatch.time { memcmpPass(twin) }.seconds)
                let (batch, seconds) = try timedDiff(worker)
                interleavedDiff.append(seconds)
                diffs = batch
            }
            let pairedFractions = zip(interleavedMemcmp, interleavedDiff).map { $0 / $1 }
            var ownMemcmp: [Double] = []
            var ownDiff: [Double] = []
            for _ in 0..<repetitions {
                changedWords.restore(worker, from: snapshot)
                ownMemcmp.append(Stopwatch.time { memcmpPass(worker) }.seconds)
                changedWords.redo(worker)
                let (batch, seconds) = try timedDiff(worker)
                ownDiff.append(seconds)
                diffs = batch
            }
            let ownPairedFractions = zip(ownMemcmp, ownDiff).map { $0 / $1 }
            changedWords.restore(worker, from: snapshot)
            var undone = SnapshotDiffBatch()
            let scanSeconds = try medianDiff(worker, keeping: &undone)
            changedWords.redo(worker)
            guard undone.isEmpty else { throw ValidationError("the worker with its stores undone still differs") }
            var twinScan = SnapshotDiffBatch()
            let scanTwinSeconds = try medianDiff(twin, keeping: &twinScan)
            guard twinScan.isEmpty else { throw ValidationError("the twin's pages differ from the snapshot's") }
            var array: [SnapshotDiff] = []
            let arraySeconds = try Stopwatch.median(repetitions: repetitions, keepingLast: &array) {
                try snapshot.diff(worker, dirtyPages: dirtyPages, options: options)
            }
            guard array == Array(diffs) else { throw ValidationError("diff and diffBatch disagree") }
            blocks.append(.init(
                blockSize: blockSize, diffSeconds: seconds, diffCount: diffs.count,
                diffBytes: diffs.byteCount, fractionOfMemcmpBandwidth: memcmpSeconds / seconds,
                scanOnlySeconds: scanSeconds, scanOnlyTwinSeconds: scanTwinSeconds,
                fractionOfMemcmpTwinBandwidth: memcmpTwinSeconds / seconds, arraySeconds: arraySeconds,
                interleavedMemcmpSeconds: median(interleavedMemcmp), interleavedDiffSeconds: median(interleavedDiff),
                fractionOfMemcmpInterleaved: median(pairedFractions),
                interleavedOwnMemcmpSeconds: median(ownMemcmp), interleavedOwnDiffSeconds: median(ownDiff),
                fractionOfMemcmpInterleavedOwnPages: median(ownPairedFractions)))
        }

        // Many workers' diffs merged at one sync point: their batches as made
        // (`Snapshot.apply(batches:)`), and the same diffs as arrays through the queue.
        var workerBatches: [SnapshotDiffBatch] = []
        for index in 0..<workers {
            let memory = try VirtualRegion(maxSize: size)
            try snapshot.mapCopyOnWrite(into: memory)
            let written = dirty(memory, seed: UInt64(100 + index))
            workerBatches.append(try snapshot.diffBatch(
                memory, dirtyPages: DirtyPages(pageCount: pageCount, runs: written.map { $0..<$0 + 1 })))
        }
        var mergeSamples: [Double] = []
        for _ in 0..<repetitions {
            mergeSamples.append(try Stopwatch.time { try snapshot.apply(batches: workerBatches) }.seconds)
        }
        let workerArrays = workerBatches.map { Array($0) }
        var arrayMergeSamples: [Double] = []
        for _ in 0..<repetitions {
            for diffs in workerArrays { snapshot.queueDiffs(diffs) }
            arrayMergeSamples.append(try Stopwatch.time { try snapshot.applyQueuedDiffs() }.seconds)
        }
        return DiffReport(
            date: isoDate(), snapshotBytes: size, dirtyFraction: dirtyFraction, dirtyPages: dirtyPages.count,
            dirtyBytes: dirtyBytes, repetitions: repetitions, memcmpSeconds: memcmpSeconds,
            memcmpTwinSeconds: memcmpTwinSeconds, blocks: blocks,
            workers: workers, mergeDiffCount: workerBatches.reduce(0) { $0 + $1.count },
            mergeDiffBytes: workerBatches.reduce(0) { $0 + $1.byteCount },
            mergeSeconds: median(mergeSamples), mergeArraySeconds: median(arrayMergeSamples))
    }
}
