#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapCheckpoint

/// `memsnap bench checkpoint --incremental`: a heap-like image of which a fraction of the pages
/// changes between checkpoints, in one run: a full checkpoint, incremental checkpoints with the
/// pages a dirty tracker collected, an incremental checkpoint of the image read from a file by
/// comparison (what `memsnap checkpoint IMAGE OUT --parent BASE` does), and the restore of a
/// chain of `links` links against the restore of one full file of the same image; memcpy of the
/// image in the same run as the physical anchor.
struct IncrementalCheckpointBenchmark {
    var size: Int
    var dirtyFraction: Double
    var links: Int
    var threads: Int
    var directory: String
    var repetitions: Int

    struct Report: Codable, BenchmarkReport {
        typealias Row = TimedStepRow
        var date: String
        var imageBytes: Int
        var changedPagesPerLink: Int
        var links: Int
        var threads: Int
        var repetitions: Int
        var trackingMode: String
        var rows: [Row]
        /// Targets: incremental (tracked pages) time / full checkpoint time, at most 0.05.
        var trackedIncrementalVsFull: Double
        /// Incremental file size / the changed pages compressed alone (lz4, same chunks), at most 1.1.
        var incrementalSizeVsChangedPagesCompressed: Double
        /// Restore of the chain / restore of one full file of the same image, at most 1.3.
        var chainRestoreVsFullRestore: Double
        var comparedIncrementalVsFull: Double
        var fullVsMemcpy: Double

        func table() -> String {
            var table = Table(columns: ["step", "time", "output", "note"])
            for row in rows {
                table.append([row.name, formatDuration(row.seconds), row.outputBytes.map { "\(ByteCount($0))" } ?? "-", row.note])
            }
            return [
                "image \(ByteCount(imageBytes)) of synthetic heap, \(changedPagesPerLink) pages changed between links, "
                    + "\(links) links, \(threads) threads, \(trackingMode) tracking, medians of \(repetitions)",
                "", table.rendered(), "",
                "incremental with the tracker's pages: \(format(trackedIncrementalVsFull, decimals: 3))x the full checkpoint's time "
                    + "(target <= 0.05), \(format(incrementalSizeVsChangedPagesCompressed, decimals: 3))x the size of the changed pages "
                    + "compressed alone (target <= 1.1)",
                "incremental by comparison (from a file): \(format(comparedIncrementalVsFull, decimals: 3))x the full checkpoint's time",
                "restore of the \(links)-link chain: \(format(chainRestoreVsFullRestore, decimals: 3))x the restore of one full file "
                    + "(target <= 1.3)",
                "full checkpoint: \(format(fullVsMemcpy, decimals: 2))x the time of a memcpy of the image",
            ].joined(separator: "\n")
        }
    }

    func run() throws -> Report {
        let workspace = "\(directory)/memsnap-bench-incremental-\(getpid())"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let image = try VirtualRegion(maxSize: size, committing: size)
        image.withUnsafeMutableBytes { SyntheticHeap().fill($0) }
        let pages = size / Page.size
        let changed = max(1, Int((Double(pages) * dirtyFraction).rounded()))
        var rows: [Report.Row] = []
        let info = CheckpointInfo([("application", "bench")])
        let options = CheckpointOptions(style: .v3, codec: .lz4, threads: threads, info: info)

        let copy = try VirtualRegion(maxSize: size, committing: size)
        copy.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        let memcpySeconds = Stopwatch.median(repetitions: repetitions) {
            image.withUnsafeBytes { from in copy.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, from.baseAddress!, from.count) } }
        }
        rows.append(.init(name: "memcpy of the image", seconds: memcpySeconds, outputBytes: nil, note: "between prefaulted buffers"))
        try copy.decommit(from: 0)

        // The base: a full checkpoint (with page hashes, as every format-2 checkpoint), and the
        // same without them, interleaved so that load drift falls on both alike.
        let base = "\(workspace)/link-0.ckpt"
        var unhashed = options
        unhashed.pageHashes = false
        var baseSummary: CheckpointSummary?, unhashedSummary: CheckpointSummary?
        var hashedTimes: [Double] = [], unhashedTimes: [Double] = []
        for _ in 0..<repetitions {
            // Both to fresh names: replacing a file would free its pages inside the timed rename.
            unlink(base)
            hashedTimes.append(try Stopwatch.time {
                baseSummary = try image.withUnsafeBytes { try Checkpoint.write(image: $0, to: .file(path: base, force: false), options: options) }
            }.seconds)
            unhashedTimes.append(try Stopwatch.time {
                unhashedSummary = try image.withUnsafeBytes {
                    try Checkpoint.write(image: $0, to: .file(path: "\(workspace)/unhashed.ckpt", force: false), options: unhashed)
                }
            }.seconds)
            unlink("\(workspace)/unhashed.ckpt")
        }
        let fullSeconds = median(hashedTimes)
        guard var parent = baseSummary.map({ CheckpointParent($0, path: base) }) else { throw MemSnapError("bench", .invalidArgument("no base")) }
        rows.append(.init(name: "full checkpoint v3/lz4", seconds: fullSeconds, outputBytes: baseSummary?.fileSize,
                          note: "\(threads) threads, page hashes included"))
        rows.append(.init(name: "full checkpoint v3/lz4, no page hashes", seconds: median(unhashedTimes), outputBytes: unhashedSummary?.fileSize,
                          note: "what the hashes cost"))

        // Incremental links with the tracker's pages.
        let tracker = try DirtyTracker(tracking: image)
        defer { tracker.stop() }
        var random = SplitMix64(seed: 2026)
        var paths = [base]
        var trackedTimes: [Double] = [], collectTimes: [Double] = [], sizeRatios: [Double] = []
        var linkBytes: [Int] = [], baselineBytes: [Int] = []
        for link in 1..<links {
            let dirty = changeRandomPages(image, count: changed, random: &random)
            let (collected, collectSeconds) = try Stopwatch.time { try tracker.collectAndReset() }
            guard collected.runs == DirtyPages(pageCount: pages, runs: dirty).runs else {
                throw MemSnapError("bench checkpoint --incremental", .corrupt("the tracker collected other pages than were written"))
            }
            collectTimes.append(collectSeconds)
            let path = "\(workspace)/link-\(link).ckpt"
            var summary: CheckpointSummary?
            let linkParent = parent
            trackedTimes.append(try Stopwatch.median(repetitions: repetitions) {
                summary = try image.withUnsafeBytes {
                    try Checkpoint.write(image: $0, dirtyPages: collected, over: linkParent, to: .file(path: path, force: true), options: options)
                }
            })
            guard let summary else { throw MemSnapError("bench", .invalidArgument("no link")) }
            let baseline = try image.withUnsafeBytes {
                try compressedAlone($0, pages: collected, options: options, scratch: "\(workspace)/changed-pages.ckpt")
            }
            sizeRatios.append(Double(summary.fileSize) / Double(baseline))
            linkBytes.append(summary.fileSize)
            baselineBytes.append(baseline)
            parent = CheckpointParent(summary, path: path)
            paths.append(path)
        }
        let tracked = median(trackedTimes)
        rows.append(.init(name: "collect the tracker's pages", seconds: median(collectTimes), outputBytes: nil,
                          note: "\(tracker.mode), \(changed) pages; not part of the checkpoint below"))
        rows.append(.init(name: "incremental checkpoint, tracked pages", seconds: tracked, outputBytes: Int(median(linkBytes.map(Double.init))),
                          note: "median over \(links - 1) links; file / changed pages compressed alone: "
                              + "\(format(median(sizeRatios), decimals: 3)) (\(ByteCount(Int(median(baselineBytes.map(Double.init)))))"))

        // The command line's way: the image in a file, compared with the chain's page hashes.
        let rawPath = "\(workspace)/image.raw"
        let nextChange = changeRandomPages(image, count: changed, random: &random)
        try image.withUnsafeBytes { bytes in try Data(bytes).write(to: URL(fileURLWithPath: rawPath)) }
        let comparedPath = "\(workspace)/compared.ckpt"
        var comparedSummary: CheckpointSummary?
        let tip = paths[paths.count - 1]
        let comparedSeconds = try Stopwatch.median(repetitions: repetitions) {
            let chain = try CheckpointChain(tip: tip)
            comparedSummary = try Checkpoint.write(contentsOfFileAt: rawPath, comparingWith: chain,
                                                   to: .file(path: comparedPath, force: true), options: options)
        }
        guard comparedSummary?.changedPages == nextChange.count else {
            throw MemSnapError("bench checkpoint --incremental", .corrupt("the comparison found \(comparedSummary?.changedPages ?? -1) "
                               + "changed pages, \(nextChange.count) were changed"))
        }
        rows.append(.init(name: "incremental checkpoint by comparison", seconds: comparedSeconds, outputBytes: comparedSummary?.fileSize,
                          note: "image read from a file, hashed, compared with the chain's page hashes"))
        unlink(rawPath)
        _ = try tracker.collectAndReset()

        // Restores: the chain of `links` links against one full file of the same image.
        // The chain's tip holds the image before the last change: restore the chain of `links`
        // links and compare it with a full file of that image (the chain squashed).
        let chainImage = "\(workspace)/chain-image.ckpt"
        let restored = "\(workspace)/restored.raw"
        try CheckpointChain(tip: tip).squash(to: .file(path: chainImage, force: true), options: options)
        // Interleaved (full, chain, full, chain, ...), so that drift in a shared machine's load
        // falls on both alike.
        var fullRestores: [Double] = [], chainRestores: [Double] = []
        var fullRestored = 0
        for _ in 0..<repetitions {
            // To a fresh name each time: replacing the previous copy would free it inside the timing.
            unlink(restored)
            fullRestores.append(try Stopwatch.time {
                try CheckpointFile(path: chainImage).restore(into: ImageFileTarget(path: restored, force: true), threads: threads)
            }.seconds)
            fullRestored = fileDigest(restored)
            unlink(restored)
            chainRestores.append(try Stopwatch.time {
                try CheckpointChain(tip: tip).restore(into: ImageFileTarget(path: restored, force: true), threads: threads)
            }.seconds)
            guard fileDigest(restored) == fullRestored else {
                throw MemSnapError("bench checkpoint --incremental", .corrupt("the chain restored another image than the full file"))
            }
        }
        let fullRestoreSeconds = median(fullRestores), chainRestoreSeconds = median(chainRestores)
        rows.append(.init(name: "restore one full file", seconds: fullRestoreSeconds, outputBytes: nil,
                          note: "\(threads) threads, to a new file, verified"))
        rows.append(.init(name: "restore the \(links)-link chain", seconds: chainRestoreSeconds, outputBytes: nil,
                          note: "\(threads) threads, to a new file, every link verified"))
        return Report(
            date: isoDate(), imageBytes: size, changedPagesPerLink: changed, links: links, threads: threads, repetitions: repetitions,
            trackingMode: "\(tracker.mode)", rows: rows, trackedIncrementalVsFull: tracked / fullSeconds,
            incrementalSizeVsChangedPagesCompressed: median(sizeRatios), chainRestoreVsFullRestore: chainRestoreSeconds / fullRestoreSeconds,
            comparedIncrementalVsFull: comparedSeconds / fullSeconds, fullVsMemcpy: fullSeconds / memcpySeconds)
    }

    /// Changes `count` distinct random pages (one 8-byte store each, as a heap's updates do) and
    /// returns them as runs.
    private func changeRandomPages(_ image: VirtualRegion, count: Int, random: inout SplitMix64) -> [Range<Int>] {
        let pages = size / Page.size
        var chosen = Set<Int>()
        while chosen.count < min(count, pages) { chosen.insert(Int(random.next() % UInt64(pages))) }
        image.withUnsafeMutableBytes { memory in
            for page in chosen {
                let offset = page * Page.size + Int(random.next() % UInt64(Page.size / 8)) * 8
                memory.storeBytes(of: random.next() | 1, toByteOffset: offset, as: UInt64.self)
            }
        }
        return chosen.sorted().map { $0..<$0 + 1 }
    }

    /// The changed pages alone, concatenated and compressed as a checkpoint's frames are (LZ4,
    /// the same chunks): the sum of the stored frame payloads of a checkpoint of just those bytes,
    /// the least an incremental checkpoint could hold.
    private func compressedAlone(_ image: UnsafeRawBufferPointer, pages: DirtyPages, options: CheckpointOptions, scratch: String) throws -> Int {
        var joined: [UInt8] = []
        joined.reserveCapacity(pages.count * Page.size)
        for range in pages.byteRanges { joined.append(contentsOf: image[range]) }
        var plain = options
        plain.pageHashes = false
        try joined.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: scratch, force: true), options: plain) }
        defer { unlink(scratch) }
        return try CheckpointFile(path: scratch).frameSummaries.reduce(0) { $0 + $1.storedSize }
    }

    /// A checksum of a file's bytes, to compare two restores.
    private func fileDigest(_ path: String) -> Int {
        guard let data = FileManager.default.contents(atPath: path) else { return 0 }
        var hasher = Hasher()
        hasher.combine(data)
        return hasher.finalize()
    }
}
