#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapWasm
import WasmKit

struct WasmBenchmarkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wasm",
        abstract: "Forking WebAssembly instances from a snapshot against instantiating and copying; a round of workers."
    )

    @Option(help: "Initialised heap of the zygote (a whole number of MiB, 1MiB to 3GiB).", transform: parseByteCount)
    var size: Int = 256 << 20

    @Option(help: "Workers in the round.")
    var workers: Int = 16

    @Option(help: "Fraction of the heap's pages each worker writes in the round (e.g. 1%).", transform: parsePercentage)
    var dirty: Double = 0.01

    @Option(help: "Repetitions per measurement; medians are reported.")
    var repetitions: Int = 5

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be 1...64") }
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be 1...50") }
        guard size >= 1 << 20, size <= 3 << 30, size % (1 << 20) == 0 else {
            throw ValidationError("--size must be a whole number of MiB from 1 MiB to 3 GiB, not \(ByteCount(size))")
        }
        // The snapshot, the copy baseline's instance and memcpy target, and the workers' pages.
        try validateSize(size, memoryCopies: 3 + dirty * Double(workers))
    }

    func run() throws {
        try WasmBenchmark(size: size, workers: workers, dirtyFraction: dirty, repetitions: repetitions).run().emit(json: json)
    }
}

struct WasmReport: Codable, BenchmarkReport {
    var date: String
    var heapBytes: Int
    var snapshotBytes: Int
    var repetitions: Int
    var tracking: String
    var zygoteSeconds: Double
    /// memcpy of the whole snapshot into prefaulted memory: the physical limit of copying it.
    var memcpySeconds: Double
    /// A new instance equal to the snapshot: instantiate, grow, map copy-on-write.
    var forkSeconds: Double
    /// An existing instance (that wrote `dirty` of its pages) made equal to the snapshot again.
    var restoreSeconds: Double
    /// Without memsnap: instantiate, grow, copy the snapshot's bytes into the memory.
    var instantiateAndCopySeconds: Double
    /// Without memsnap, into an existing instance: copy the snapshot's bytes.
    var copyIntoExistingSeconds: Double
    var workers: Int
    var dirtyFraction: Double
    var dirtyPagesPerWorker: Int
    /// Medians over the rounds.
    var roundSeconds: Double
    var roundRunSeconds: Double
    var roundMergeSeconds: Double
    var roundDiffCount: Int
    var roundDiffBytes: Int
    /// memcpy of the bytes of every page the workers wrote in a round.
    var dirtyMemcpySeconds: Double

    func table() -> String {
        let dirtyBytes = workers * dirtyPagesPerWorker * Page.size
        var fork = Table(columns: ["make an instance equal to the snapshot", "time", "vs memsnap", "vs memcpy of the snapshot"])
        func row(_ name: String, _ seconds: Double, _ reference: Double) -> [String] {
            [name, formatDuration(seconds), format(seconds / reference, decimals: seconds / reference < 10 ? 1 : 0) + "x",
             format(seconds / memcpySeconds, decimals: 4) + "x"]
        }
        fork.append(row("memsnap fork: new instance + copy-on-write map", forkSeconds, forkSeconds))
        fork.append(row("without memsnap: new instance + grow + copy", instantiateAndCopySeconds, forkSeconds))
        fork.append(row("memsnap restore of an existing instance", restoreSeconds, restoreSeconds))
        fork.append(row("without memsnap: copy into an existing instance", copyIntoExistingSeconds, restoreSeconds))
        var round = Table(columns: ["\(workers)-worker round", "time", "vs memcpy of the dirty bytes"])
        round.append(["run + diff + merge (total)", formatDuration(roundSeconds), format(roundSeconds / dirtyMemcpySeconds, decimals: 1) + "x"])
        round.append(["  calls, collects and diffs in parallel", formatDuration(roundRunSeconds), ""])
        round.append(["  join: merge and restore every instance", formatDuration(roundMergeSeconds), ""])
        return [
            "heap guest: \(ByteCount(heapBytes)) initialised heap, snapshot \(ByteCount(snapshotBytes)) "
                + "(zygote + snapshot: \(formatDuration(zygoteSeconds))); tracking \(tracking); medians of \(repetitions)",
            "memcpy of the snapshot's \(ByteCount(snapshotBytes)) into prefaulted memory: \(formatDuration(memcpySeconds)) "
                + "(\(formatBandwidth(bytes: snapshotBytes, seconds: memcpySeconds)))",
            "",
            fork.rendered(),
            "",
            "fork is \(format(instantiateAndCopySeconds / forkSeconds, decimals: 0))x faster than instantiating and copying; "
                + "restore is \(format(copyIntoExistingSeconds / restoreSeconds, decimals: 0))x faster than copying",
            "",
            round.rendered(),
            "",
            "each worker wrote \(dirtyPagesPerWorker) pages (\(format(dirtyFraction * 100, decimals: 1)) %); "
                + "\(roundDiffCount) diffs, \(ByteCount(roundDiffBytes)); memcpy of the \(ByteCount(dirtyBytes)) of dirty pages: "
                + formatDuration(dirtyMemcpySeconds),
        ].joined(separator: "\n")
    }
}

struct WasmBenchmark {
    var size: Int
    var workers: Int
    var dirtyFraction: Double
    var repetitions: Int

    func run() throws -> WasmReport {
        let program = try WasmGuest.heap.program()
        let mebibytes = Int32(size >> 20)
        let (zygote, zygoteSeconds) = try Stopwatch.time { try WasmZygote(program: program, arguments: [.i32(UInt32(mebibytes))]) }
        let snapshot = zygote.snapshot
        let pageStride = max(1, Int((1 / dirtyFraction).rounded()))

        // The physical limit: memcpy of the snapshot into memory that is already faulted in.
        let target = try VirtualRegion(maxSize: snapshot.size, committing: snapshot.size)
        target.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }
        let memcpySeconds = Stopwatch.median(repetitions: repetitions) {
            snapshot.withUnsafeBytes { image in
                target.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, image.baseAddress!, image.count) }
            }
        }

        // memsnap: a new instance equal to the snapshot.
        var forks: [WasmInstance] = []
        let forkSeconds = try Stopwatch.median(repetitions: max(repetitions, 10)) {
            forks.append(try zygote.fork(label: "bench fork"))
        }
        // memsnap: restore an instance that wrote its share of pages.
        let instance = try zygote.fork(label: "bench restore")
        var restoreSamples: [Double] = []
        for repetition in 0..<repetitions {
            try instance.call("touch", [.i32(0), .i32(UInt32(repetition + 1)), .i32(UInt32(pageStride))])
            restoreSamples.append(try Stopwatch.time { try zygote.restore(instance) }.seconds)
        }
        forks.removeAll()

        // Without memsnap: what a WasmKit user does.
        let copySeconds = try Stopwatch.median(repetitions: repetitions) {
            let store = Store(engine: program.engine)
            let plain = try program.module.instantiate(store: store)
            guard let memory = plain.exports[memory: "memory"] else { throw ValidationError("the heap guest exports no memory") }
            let grower = try LinearMemoryGrower(store: store, memory: memory, during: "bench")
            let pages = (snapshot.size - memory.byteCount) / WasmProgram.wasmPageSize
            guard try grower.grow(byPages: UInt32(pages), during: "bench") else { throw ValidationError("memory.grow refused") }
            snapshot.withUnsafeBytes { image in
                memory.withUnsafeMutableBufferPointer(offset: 0, count: image.count) {
                    _ = memcpy($0.baseAddress!, image.baseAddress!, image.count)
                }
            }
        }
        let copyIntoExisting = try Stopwatch.median(repetitions: repetitions) {
            try instance.call("touch", [.i32(0), .i32(1), .i32(UInt32(pageStride))])
            snapshot.withUnsafeBytes { image in
                instance.memory.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, image.baseAddress!, image.count) }
            }
        }

        // A round: every worker writes its pages, diffs, merge.
        let pool = try WasmWorkers(zygote: zygote, count: workers)
        var totals: [Double] = [], runs: [Double] = [], merges: [Double] = []
        var last: WasmRound?
        for _ in 0..<repetitions {
            // A new value each round (the salt), so that every round's writes are real changes.
            let (round, seconds) = try Stopwatch.time {
                try pool.run("touch") { worker, round in [.i32(UInt32(worker)), .i32(UInt32(round + 1)), .i32(UInt32(pageStride))] }
            }
            totals.append(seconds)
            runs.append(round.runSeconds)
            merges.append(round.mergeSeconds)
            last = round
        }
        let pagesPerWorker = last?.dirtyPageCounts.dropFirst().max() ?? 0
        // memcpy of the same dirty bytes, page by page, from the snapshot into prefaulted memory.
        let dirtyPages = (0..<workers).flatMap { worker in
            Swift.stride(from: worker % pageStride, to: snapshot.size / Page.size, by: pageStride).prefix(pagesPerWorker)
        }
        let dirtyMemcpy = Stopwatch.median(repetitions: repetitions) {
            snapshot.withUnsafeBytes { image in
                target.withUnsafeMutableBytes { copy in
                    for page in dirtyPages {
                        _ = memcpy(copy.baseAddress! + page * Page.size, image.baseAddress! + page * Page.size, Page.size)
                    }
                }
            }
        }
        return WasmReport(
            date: isoDate(), heapBytes: size, snapshotBytes: snapshot.size, repetitions: repetitions,
            tracking: pool.trackingMode.rawValue, zygoteSeconds: zygoteSeconds, memcpySeconds: memcpySeconds,
            forkSeconds: forkSeconds, restoreSeconds: median(restoreSamples), instantiateAndCopySeconds: copySeconds,
            copyIntoExistingSeconds: copyIntoExisting, workers: workers, dirtyFraction: dirtyFraction,
            dirtyPagesPerWorker: pagesPerWorker, roundSeconds: median(totals), roundRunSeconds: median(runs),
            roundMergeSeconds: median(merges), roundDiffCount: last?.diffCount ?? 0, roundDiffBytes: last?.diffBytes ?? 0,
            dirtyMemcpySeconds: dirtyMemcpy)
    }
}
