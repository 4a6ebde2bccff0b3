#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapArena
import MemSnapCheckpoint
import MemSnapRemote
import MemSnapWasm
import WasmKit

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Walk through memsnap end to end on a workspace it creates, with timings."
    )

    @Option(help: "Snapshot size (e.g. 256MiB).", transform: parseByteCount)
    var size: Int = 256 << 20

    @Option(help: "Number of copy-on-write workers.")
    var workers: Int = 4

    func validate() throws {
        guard (1...64).contains(workers) else { throw ValidationError("--workers must be between 1 and 64") }
        // The snapshot, a memcpy target, checkpoints in /dev/shm and a restored copy at a time.
        try validateSize(size, memoryCopies: 4)
    }

    func run() async throws {
        print("memsnap demo: \(ByteCount(size)) snapshot, \(workers) workers, page size \(Page.size)")
        print("\n1. Snapshot, copy-on-write workers, restore\n")
        var timings = Table(columns: ["step", "time", "note"])
        let snapshot = try snapshotStage(&timings)
        print(timings.rendered())
        print("\n2. Dirty-page tracking: one worker writes 1 % of its pages, each mode collects them\n")
        try trackingStage(snapshot: snapshot)
        print("\n3. Fork/join: \(workers) workers add to a shared int64 sum and update 1 % of their heap, merged every round\n")
        try forkJoinStage(snapshot: snapshot)
        print("\n4. Checkpoint the merged snapshot to a file and restore it, verified, with 2 threads\n")
        try checkpointStage(snapshot: snapshot)
        print("\n5. A persistent arena: allocate, write, sync, reopen; crash-consistent\n")
        try arenaStage()
        print("\n6. Across hosts: a second host (memsnap serve on 127.0.0.2) runs half the workers; sums add up across both\n")
        try await remoteStage()
        print("\n7. WebAssembly: instances forked from a snapshot of an initialised \(ByteCount(size)) heap, workers merged back\n")
        try wasmStage()
    }

    /// Starts `memsnap serve` on 127.0.0.2, runs rounds of 2 local and 2 remote workers adding
    /// to 8 shared sums, and checks the totals.
    private func remoteStage() async throws {
        let token = "demo-\(UInt64.random(in: 0 ... .max))"
        let (server, serverSeconds) = try Stopwatch.time { try ServerChild(address: "127.0.0.2", token: token, maxSnapshot: 1 << 30, rawSink: false) }
        defer { server.stop() }
        let host = try RemoteHost(host: "127.0.0.2", port: server.port, security: try RemoteSecurity(token: token))
        defer { host.close() }
        let snapshot = try Snapshot(size: 64 << 20, maxSize: 128 << 20, name: "demo-remote")
        try snapshot.update(at: 0, count: 64 << 20) { SyntheticHeap(seed: 6).fill($0) }
        try snapshot.update(at: 0, count: 64) { $0.initializeMemory(as: UInt8.self, repeating: 0) }
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 64, dataType: .int64, operation: .sum))
        let workers = try DistributedWorkers(snapshot: snapshot, key: "demo", localWorkers: 2, remote: [.init(host: host, workers: 2)])
        workers.register("memsnap.add-index", body: StandardWorkerBodies.addIndex)
        var table = Table(columns: ["step", "time", "note"])
        table.append(["start memsnap serve on 127.0.0.2", formatDuration(serverSeconds), "a second process on its own loopback address"])
        let rounds = 5
        for round in 1...rounds {
            let report = try await workers.run("memsnap.add-index", arguments: StandardWorkerBodies.arguments(UInt32(8)))
            table.append(["round \(round): push, run, merge", formatDuration(report.pushSeconds + report.runSeconds + report.mergeSeconds),
                          "push to 127.0.0.2: \(report.pushes[0]) (\(formatDuration(report.pushSeconds))), "
                          + "\(report.join.diffCount) diffs merged"])
        }
        print(table.rendered())
        let expected = Int64(rounds * (1...4).reduce(0, +))
        let sums = snapshot.withUnsafeBytes { image in (0..<8).map { image.load(fromByteOffset: $0 * 8, as: Int64.self) } }
        print("the 8 sums are \(Set(sums).sorted()): \(rounds) rounds x (1 + 2 + 3 + 4), from 2 local and 2 remote workers")
        guard sums.allSatisfy({ $0 == expected }) else { throw DemoFailure("the sums are not \(expected)") }
    }

    /// A WasmKit instance initialises a heap of the demo's size once; forks start from its
    /// snapshot (against instantiating and copying); then faabric's repeated reduction and a
    /// Monte Carlo pi run as rounds of workers, with exact totals.
    private func wasmStage() throws {
        let engine = Engine()
        guard engine.configuration.memoryBoundsChecking == .mprotect else {
            print("skipped: WasmKit uses software bounds checking in this build (malloc'd memory memsnap cannot map over)")
            return
        }
        var table = Table(columns: ["step", "time", "note"])
        let heap = try WasmGuest.heap.program(engine: engine)
        let mebibytes = max(1, size >> 20)
        let (zygote, zygoteSeconds) = try Stopwatch.time {
            try WasmZygote(program: heap, arguments: [.i32(UInt32(clamping: mebibytes))])
        }
        table.append(["zygote: instantiate, fill the heap, snapshot", formatDuration(zygoteSeconds),
                      "\(ByteCount(zygote.snapshot.size)) of linear memory, run once"])
        var forks: [WasmInstance] = []
        let (_, forkSeconds) = try Stopwatch.time {
            for index in 0..<workers { forks.append(try zygote.fork(label: "fork \(index)")) }
        }
        let checksum = try forks[0].call("result")
        let equal = try forks.allSatisfy { try $0.call("result") == checksum }
        table.append(["fork \(workers) instances (copy-on-write)", formatDuration(forkSeconds),
                      "\(formatDuration(forkSeconds / Double(workers))) each; every fork's heap checksum equal: \(equal ? "yes" : "NO")"])
        forks.removeAll()
        let (_, copySeconds) = try Stopwatch.time {
            let instance = try WasmInstance(program: heap, label: "copy")
            try instance.growMemory(toAtLeast: zygote.snapshot.size)
            zygote.snapshot.withUnsafeBytes { image in
                instance.memory.withUnsafeMutableBytes { _ = memcpy($0.baseAddress!, image.baseAddress!, image.count) }
            }
        }
        table.append(["without memsnap: instantiate and copy one", formatDuration(copySeconds),
                      "fork is \(format(copySeconds / max(forkSeconds / Double(workers), 1e-9), decimals: 0))x faster"])

        let reduction = try WasmWorkers(zygote: try WasmZygote(program: try WasmGuest.reduction.program(engine: engine)),
                                        count: workers)
        let rounds = 20
        let (_, reductionSeconds) = try Stopwatch.time { for _ in 0..<rounds { try reduction.run("work") } }
        let count = try reduction.callMain("result").first.map(WasmRunCommand.text) ?? "?"
        let indexSum = try reduction.callMain("index_total").first.map(WasmRunCommand.text) ?? "?"
        let exact = count == "\(rounds * workers)" && indexSum == "\(rounds * workers * (workers - 1) / 2)"
        table.append(["reduction: \(rounds) rounds of \(workers) workers", formatDuration(reductionSeconds),
                      "count \(count), index sum \(indexSum) (exact: \(exact ? "yes" : "NO")); tracking \(reduction.trackingMode)"])
        let pi = try WasmWorkers(zygote: try WasmZygote(program: try WasmGuest.pi.program(engine: engine)), count: workers)
        let (_, piSeconds) = try Stopwatch.time { for _ in 0..<3 { try pi.run("work") } }
        let estimate = try pi.callMain("result").first.map(WasmRunCommand.text) ?? "?"
        table.append(["Monte Carlo pi: 3 rounds of \(workers) workers", formatDuration(piSeconds),
                      "pi ~ \(estimate) from \(try pi.callMain("sample_count").first.map(WasmRunCommand.text) ?? "?") samples"])
        print(table.rendered())
        print("`memsnap wasm run Guests/NAME.wasm --zygote zygote --function work` runs any of the guests; `memsnap bench wasm` measures")
        if !equal || !exact { throw DemoFailure("the WebAssembly stage did not behave as expected (see the table)") }
    }

    /// Builds a linked list in an arena, syncs it as events, writes more without syncing,
    /// reopens (as after a crash) and walks the list: exactly the last synced state.
    private func arenaStage() throws {
        let workspace = "/tmp/memsnap-demo-arena-\(getpid())"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        let path = "\(workspace)/demo.arena"
        var table = Table(columns: ["step", "time", "note"])
        let nodes = 10_000
        do {
            let (arena, openSeconds) = try Stopwatch.time { try Arena.create(path: path, capacity: 256 << 20) }
            table.append(["create a 256 MiB arena", formatDuration(openSeconds), "a sparse file and its write-ahead log"])
            // A singly linked list of 64-byte nodes: (next offset, value, padding); root 0 = head.
            var head: UInt64 = 0
            let (_, buildSeconds) = try Stopwatch.time {
                for value in 0..<nodes {
                    let node = try arena.allocate(byteCount: 64)
                    let memory = try arena.address(of: node, byteCount: 16)
                    memory.storeBytes(of: head, as: UInt64.self)
                    memory.storeBytes(of: UInt64(value), toByteOffset: 8, as: UInt64.self)
                    head = node.rawValue
                }
                try arena.setRoot(0, to: head)
            }
            table.append(["allocate and link \(nodes) nodes", formatDuration(buildSeconds), "64 bytes each"])
            let (_, syncSeconds) = try Stopwatch.time { try arena.sync(epoch: 1, event: 1) }
            table.append(["sync (event 1)", formatDuration(syncSeconds), "\(ByteCount(try arena.statistics.logBytes)) logged"])
            let first = ArenaOffset(rawValue: head)
            let (_, smallSyncSeconds) = try Stopwatch.time {
                try arena.address(of: first, byteCount: 16).storeBytes(of: UInt64(424_242), toByteOffset: 8, as: UInt64.self)
                try arena.sync(epoch: 1, event: 2)
            }
            table.append(["update one node, sync (event 2)", formatDuration(smallSyncSeconds), "one dirty page"])
            try arena.address(of: first, byteCount: 16).storeBytes(of: UInt64(999), toByteOffset: 8, as: UInt64.self)  // never synced
            try arena.close()
        }
        let (reopened, reopenSeconds) = try Stopwatch.time { try Arena.open(path: path) }
        var count = 0, sum: UInt64 = 0, cursor = try reopened.root(0)
        while cursor != 0 {
            let node = try reopened.address(of: ArenaOffset(rawValue: cursor), byteCount: 16)
            sum &+= node.load(fromByteOffset: 8, as: UInt64.self)
            cursor = node.load(as: UInt64.self)
            count += 1
        }
        let expected = UInt64((nodes - 1) * nodes / 2 - (nodes - 1) + 424_242)
        let exact = count == nodes && sum == expected && reopened.event == 2
        table.append(["reopen and walk the list", formatDuration(reopenSeconds),
                      "\(count) nodes, event \(reopened.event), unsynced write gone: \(exact ? "yes" : "NO")"])
        let checked = try reopened.check()
        table.append(["check the allocator", "-", "\(checked.allocations) allocations, every structure consistent"])
        try reopened.close()
        print(table.rendered())
        print("`memsnap arena soak PATH` kills a writer at random moments and checks every reopen")
        if !exact { throw DemoFailure("the reopened arena is not the last synced state") }
    }

    /// Writes the snapshot as a v3/lz4 and a v3/zstd checkpoint in a workspace of its own,
    /// verifies and restores each, and checks the restored bytes.
    private func checkpointStage(snapshot: Snapshot) throws {
        let workspace = (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp") + "/memsnap-demo-\(getpid())"
        try FileManager.default.createDirectory(atPath: workspace, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workspace) }
        var table = Table(columns: ["step", "time", "throughput", "note"])
        for (codec, level) in [(CheckpointCodec.lz4, Int32(1)), (.zstd, 3)] {
            let path = "\(workspace)/demo-\(codec).ckpt"
            let options = CheckpointOptions(style: .v3, codec: codec, level: level, threads: 2, info: .current(application: "memsnap demo"))
            let (summary, writeSeconds) = try Stopwatch.time { try Checkpoint.write(snapshot, to: path, options: options) }
            table.append(["checkpoint v3/\(codec)", formatDuration(writeSeconds), formatBandwidth(bytes: summary.imageSize, seconds: writeSeconds),
                          "\(summary.frameCount) frames, \(ByteCount(summary.fileSize)) "
                          + "(ratio \(format(Double(summary.imageSize) / Double(summary.fileSize), decimals: 2)))"])
            let (_, verifySeconds) = try Stopwatch.time { try CheckpointFile(path: path).verify(threads: 2) }
            table.append(["  verify", formatDuration(verifySeconds), formatBandwidth(bytes: summary.imageSize, seconds: verifySeconds),
                          "every checksum, size and extent"])
            let (restored, restoreSeconds) = try Stopwatch.time { try Checkpoint.restoreSnapshot(from: path, threads: 2) }
            let equal = restored.withUnsafeBytes { copy in
                snapshot.withUnsafeBytes { original in copy.count == original.count && memcmp(copy.baseAddress!, original.baseAddress!, copy.count) == 0 }
            }
            table.append(["  restore to a new snapshot", formatDuration(restoreSeconds),
                          formatBandwidth(bytes: summary.imageSize, seconds: restoreSeconds), equal ? "identical to the original" : "MISMATCH"])
            if !equal { throw DemoFailure("the restored snapshot differs from the original") }
        }
        print(table.rendered())
        print("checkpoints were written under \(workspace) and removed; see `memsnap checkpoint --help`")
    }

    /// Workers run from the snapshot, each adds to one int64 sum region and rewrites values on 1 %
    /// of its pages; each round's diffs are merged into the snapshot and every worker is remapped.
    private func forkJoinStage(snapshot: Snapshot) throws {
        let counterOffset = 0
        try snapshot.write([UInt8](repeating: 0, count: 8), at: counterOffset)
        try snapshot.addMergeRegion(MergeRegion(offset: counterOffset, length: 8, dataType: .int64, operation: .sum))
        defer { snapshot.clearMergeRegions() }
        let pool = try SnapshotWorkers(snapshot: snapshot, count: workers)
        let pageCount = Page.count(covering: snapshot.size) ?? 1
        let rounds = 5
        var table = Table(columns: ["round", "dirty pages per worker", "diffs", "diff bytes", "run + diff + merge", "sum"])
        var expected: Int64 = 0
        for round in 0..<rounds {
            let (report, seconds) = try Stopwatch.time {
                try pool.run { worker in
                    worker.memory.withUnsafeMutableBytes { memory in
                        let sum = memory.load(fromByteOffset: counterOffset, as: Int64.self)
                        memory.storeBytes(of: sum + Int64(worker.index + 1) * 1000, toByteOffset: counterOffset, as: Int64.self)
                        var random = SplitMix64(seed: UInt64(round * 100 + worker.index))
                        // Pages 1..<pageCount (page 0 holds the sum); validate() asks for 16 pages.
                        for _ in 0..<max(1, pageCount / 100) where pageCount > 1 {
                            let page = 1 + Int(random.next() % UInt64(pageCount - 1))
                            memory.storeBytes(of: random.next(), toByteOffset: page * Page.size + 64, as: UInt64.self)
                        }
                    }
                }
            }
            expected += Int64((1...workers).reduce(0, +) * 1000)
            let sum = try snapshot.read(at: counterOffset, count: 8).withUnsafeBytes { $0.load(as: Int64.self) }
            let perWorker = report.dirtyPageCounts.dropFirst()
            table.append(["\(round + 1)", "\(perWorker.min() ?? 0)-\(perWorker.max() ?? 0)", "\(report.diffCount)",
                          "\(ByteCount(report.diffBytes))", formatDuration(seconds), "\(sum)"])
            if sum != expected { throw DemoFailure("round \(round + 1): the sum is \(sum), expected \(expected)") }
        }
        print(table.rendered())
        print("the sum is exact: \(expected) = \(rounds) rounds x (1 + ... + \(workers)) x 1000")
    }

    /// Build a heap-like snapshot, fork copy-on-write workers from it, show their writes stay
    /// private, restore one, and compare restore with a memcpy of the same bytes.
    private func snapshotStage(_ timings: inout Table) throws -> Snapshot {
        let snapshot = try Snapshot(size: size, maxSize: size * 2, name: "demo")
        let (_, buildSeconds) = try Stopwatch.time {
            try snapshot.update(at: 0, count: size) { SyntheticHeap().fill($0) }
        }
        snapshot.clearChangedRanges()
        timings.append(["build snapshot (synthetic heap)", formatDuration(buildSeconds),
                        formatBandwidth(bytes: size, seconds: buildSeconds) + " generated"])

        let regions = try (0..<workers).map { _ in try VirtualRegion(maxSize: size * 2) }
        let (_, mapSeconds) = try Stopwatch.time {
            for region in regions { try snapshot.mapCopyOnWrite(into: region) }
        }
        timings.append(["map copy-on-write into \(workers) workers", formatDuration(mapSeconds),
                        "\(formatDuration(mapSeconds / Double(workers))) per worker"])

        // Every worker writes its own id at the same offsets: one word on every 64th page.
        let probeOffsets = stride(from: 0, to: size - 8, by: Page.size * 64).map { $0 }
        let (_, writeSeconds) = Stopwatch.time {
            for (index, region) in regions.enumerated() {
                region.withUnsafeMutableBytes { memory in
                    for offset in probeOffsets { memory.storeBytes(of: UInt64(index + 1), toByteOffset: offset, as: UInt64.self) }
                }
            }
        }
        timings.append(["workers write \(probeOffsets.count) pages each", formatDuration(writeSeconds),
                        "first write to a page copies it (copy-on-write fault)"])

        let original = try probeOffsets.map { try snapshot.read(at: $0, count: 8) }
        let isolated = regions.enumerated().allSatisfy { index, region in
            region.withUnsafeBytes { memory in
                probeOffsets.allSatisfy { memory.load(fromByteOffset: $0, as: UInt64.self) == UInt64(index + 1) }
            }
        }
        let snapshotUntouched = try probeOffsets.enumerated().allSatisfy { index, offset in
            try snapshot.read(at: offset, count: 8) == original[index]
        } && snapshot.changedRanges.isEmpty
        timings.append(["check isolation", "-",
                        "each worker sees only its own writes: \(isolated ? "yes" : "NO"); "
                        + "snapshot unchanged: \(snapshotUntouched ? "yes" : "NO")"])

        let (_, restoreSeconds) = try Stopwatch.time { try snapshot.mapCopyOnWrite(into: regions[0]) }
        let (equal, verifySeconds) = Stopwatch.time {
            snapshot.withUnsafeBytes { image in
                regions[0].withUnsafeBytes { memory in memcmp(image.baseAddress!, memory.baseAddress!, image.count) == 0 }
            }
        }
        let restoreNote = equal ? "worker 0 equals the snapshot again" : "MISMATCH after restore"
        timings.append(["restore worker 0 (remap)", formatDuration(restoreSeconds), restoreNote])
        timings.append(["  then read all of it (memcmp)", formatDuration(verifySeconds),
                        "pages are mapped lazily on first touch"])

        let copyTarget = try VirtualRegion(maxSize: size, committing: size)
        copyTarget.withUnsafeMutableBytes { target in _ = memset(target.baseAddress!, 0, target.count) }  // prefault
        let memcpySeconds = Stopwatch.median(repetitions: 3) {
            snapshot.withUnsafeBytes { image in
                copyTarget.withUnsafeMutableBytes { target in _ = memcpy(target.baseAddress!, image.baseAddress!, image.count) }
            }
        }
        timings.append(["memcpy of the same bytes (restore by copying)", formatDuration(memcpySeconds),
                        formatBandwidth(bytes: size, seconds: memcpySeconds)
                        + "; remap restore is \(format(memcpySeconds / max(restoreSeconds, 1e-9), decimals: 0))x faster"])
        if !(isolated && snapshotUntouched && equal) {
            throw DemoFailure("the snapshot stage did not behave as expected (see the table)")
        }
        return snapshot
    }

    /// Restore a worker from the snapshot, track it with every mode in turn, write the same 1 %
    /// of its pages, and show what each mode collected and what that cost.
    private func trackingStage(snapshot: Snapshot) throws {
        let worker = try VirtualRegion(maxSize: size * 2)
        let pageCount = Page.count(covering: snapshot.size) ?? 0
        var random = SplitMix64(seed: 42)
        var chosen = Set<Int>()
        while chosen.count < max(1, pageCount / 100) { chosen.insert(Int(random.next() % UInt64(pageCount))) }
        let pages = chosen.sorted()
        let automatic = (try? DirtyTrackingMode.auto.resolved())?.rawValue ?? "none"
        var table = Table(columns: ["mode", "arm", "worker writes", "collect+reset", "pages collected", "exact"])
        var notes: [String] = []
        var allExact = true
        for mode in DirtyTrackingMode.allCases where mode != .auto {
            guard mode.availability == .available else {
                notes.append("\(mode.rawValue): unavailable here: \(mode.availability)")
                continue
            }
            try snapshot.mapCopyOnWrite(into: worker)  // restore: every mode starts from the same state
            worker.withUnsafeBytes { memory in  // populate, as a running worker's memory would be
                var sum: UInt64 = 0
                for offset in stride(from: 0, to: memory.count, by: Page.size) { sum &+= UInt64(memory[offset]) }
                _ = sum
            }
            let (tracker, armSeconds) = try Stopwatch.time { try DirtyTracker(tracking: worker, mode: mode) }
            let (_, writeSeconds) = Stopwatch.time {
                worker.withUnsafeMutableBytes { memory in
                    for page in pages { memory.storeBytes(of: UInt64(0xC0FFEE), toByteOffset: page << Page.shift, as: UInt64.self) }
                }
            }
            let (collected, collectSeconds) = try Stopwatch.time { try tracker.collectAndReset() }
            tracker.stop()
            let exact = mode == .none ? collected.count == pageCount : collected.pages == pages
            allExact = allExact && exact
            table.append([mode.rawValue + (mode.rawValue == automatic ? " (auto)" : ""), formatDuration(armSeconds),
                          formatDuration(writeSeconds), formatDuration(collectSeconds),
                          "\(collected.count) of \(pageCount)", exact ? "yes" : "NO"])
        }
        print(table.rendered())
        for note in notes { print(note) }
        print("the worker wrote \(pages.count) pages; `none` reports every page by design")
        if !allExact { throw DemoFailure("a tracking mode collected the wrong pages (see the table)") }
    }
}

struct DemoFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
