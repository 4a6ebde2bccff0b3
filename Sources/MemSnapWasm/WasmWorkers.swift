#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import WasmKit

/// Fork/join of WebAssembly instances from a zygote's snapshot: `SnapshotWorkers`' semantics
/// with instances of a module as the workers, as Faasm runs a function's threads.
///
/// The pool forks a main instance and `count` workers from the snapshot and tracks each one's
/// memory with its own `DirtyTracker` (with no mode chosen, `private-copies` where it works, as
/// in `SnapshotWorkers`; otherwise the mode from `WasmTracking.resolve`). A round
/// (`run`) starts one OS thread per worker; each calls the exported function with its
/// arguments, then, still on its own thread, collects its dirty pages and diffs its memory
/// against the snapshot. At the join the main instance's diffs are applied first, then each
/// worker's in index order, in one atomic apply: the result of overlapping bytewise writes is
/// the same on every run, and merge regions (declared by the host with
/// `Snapshot.addMergeRegion`, or by the guest with `memsnap.merge_region`) make sums, products,
/// maxima... of the workers' changes. Every instance then shows the merged snapshot again, its
/// tracker armed, ready for the next round.
///
/// Restoring costs what an instance wrote, as in `SnapshotWorkers`: its memory maps the
/// snapshot's memfd privately, so dropping its own copies of the pages it wrote
/// (`DirtyTracker.restoreInPlace`) makes it read the merged snapshot everywhere, and the
/// tracker's registration stays. A worker drops its pages on its own thread as soon as its diffs
/// are taken, before the merge (whose writes then show through, as in the pages never written).
/// An instance is remapped (a copy-on-write map of the snapshot) and its tracker re-armed
/// instead when its memory or the snapshot changed size, when it wrote more than
/// `SnapshotWorkers.inPlaceRestoreLimit` of its pages, when its tracking mode cannot tell which
/// pages it copied, and on every failure path; `WasmRound.remappedInstances` says which.
///
/// Growth: an instance whose memory grew during a round (`memory.grow`) contributes an
/// extension diff, and applying it grows the snapshot; every instance is grown to the new size
/// when it is restored.
///
/// Failure: a worker that traps (or any diff the snapshot refuses) discards the whole round:
/// nothing of it is merged, the snapshot is left as it was, and every instance is restored to
/// it. An instance that trapped, or whose memory grew past the snapshot (WebAssembly memory
/// cannot shrink), is replaced by a fresh fork. A failed merge also discards the main
/// instance's writes since the last join, as `SnapshotWorkers` does.
///
/// The main instance: the host may call it between rounds (`callMain`), for instance to set up
/// a round's input or read results (it sees the merged snapshot). Its writes are merged first at
/// the next join, and its `memsnap.merge_region` declarations reach the snapshot at once.
///
/// Ownership: owns its instances and trackers; the zygote (and its snapshot) is shared.
/// Thread safety: `run`, `join` and `callMain` may be called from any thread and are serialised
/// (a call waits for the one in progress). `main` and `workers` are the current instances: an
/// instance may be replaced after a failure, so do not keep them across calls, and do not use
/// them while a call is in progress.
public final class WasmWorkers: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The tracker configuration; its mode goes through `WasmTracking.resolve`, after a pool
        /// with none chosen picks `private-copies` where it works (`SnapshotWorkers.poolTracking`).
        public var tracking: DirtyTracker.Configuration
        public var diff: DiffOptions

        public init(tracking: DirtyTracker.Configuration = DirtyTracker.Configuration(), diff: DiffOptions = DiffOptions()) {
            self.tracking = tracking
            self.diff = diff
        }
    }

    /// An instance and the tracker of its memory.
    private struct Member {
        var instance: WasmInstance
        var tracker: DirtyTracker
        /// The memory's committed size when the snapshot was last mapped over it: an in-place
        /// restore needs the memory to be that one mapping still.
        var mappedSize: Int
    }

    public let zygote: WasmZygote
    public var snapshot: Snapshot { zygote.snapshot }
    public let configuration: Configuration
    /// The tracking mode in use (resolved, never `auto`).
    public let trackingMode: DirtyTrackingMode
    /// Held for the whole of `run`, `join` and `callMain`; guards `main`, `workerMembers`, `rounds`.
    private let serial = Locked(())
    private var mainMember: Member
    private var workerMembers: [Member]
    private var rounds = 0
    /// One thread per worker, started once and woken for every round.
    private let threads: WorkerThreadPool

    /// Forks a main instance and `count` workers from `zygote` and starts tracking them.
    /// - Throws: `.invalidArgument` for a count outside 1...1024; `MemSnapError` from forking,
    ///   from `WasmTracking.resolve` (e.g. segfault tracking with WasmKit's handler in front),
    ///   or from starting a tracker; `.systemCall("pthread_create", ...)` if the workers' threads
    ///   (one per worker, waiting between rounds) cannot start.
    public init(zygote: WasmZygote, count: Int, configuration: Configuration = Configuration()) throws(MemSnapError) {
        let operation = "start \(count) WebAssembly workers of \(zygote.program.name)"
        guard (1...1024).contains(count) else {
            throw MemSnapError(operation, .invalidArgument("need 1 to 1024 workers, not \(count)"))
        }
        // A pool restores every instance after each round: with no mode chosen, the copies an
        // instance holds are its writes (`private-copies`), as in `SnapshotWorkers`.
        var tracking = try SnapshotWorkers.poolTracking(configuration.tracking)
        tracking.mode = try WasmTracking.resolve(tracking.mode, engine: zygote.program.engine)
        self.zygote = zygote
        self.configuration = configuration
        self.trackingMode = tracking.mode ?? .auto
        func member(_ label: String, _ role: GuestMergeRegions.Role) throws(MemSnapError) -> Member {
            let instance = try zygote.fork(label: label, role: role)
            return Member(instance: instance, tracker: try DirtyTracker(tracking: instance.memory, configuration: tracking),
                          mappedSize: instance.memory.committedSize)
        }
        mainMember = try member("main", .main)
        var workers: [Member] = []
        for index in 0..<count { workers.append(try member("worker \(index)", .worker)) }
        workerMembers = workers
        threads = try WorkerThreadPool(count: count, name: "memsnap-wasm")
    }

    deinit {
        mainMember.tracker.stop()
        for member in workerMembers { member.tracker.stop() }
    }

    public var count: Int { workerMembers.count }
    /// The main instance now (see the type's doc on replacement).
    public var main: WasmInstance { serial.withLock { _ in mainMember.instance } }
    /// The worker instances now, by index.
    public var workers: [WasmInstance] { serial.withLock { _ in workerMembers.map(\.instance) } }
    /// Rounds run so far (failed rounds included).
    public var roundsRun: Int { serial.withLock { _ in rounds } }

    /// Calls `function` on the main instance (between rounds).
    /// - Throws: as `WasmInstance.call`; after a `WasmTrap` the main instance has been replaced by
    ///   a fresh fork of the snapshot: its writes since the last join are gone.
    @discardableResult
    public func callMain(_ function: String, _ arguments: [Value] = []) throws -> [Value] {
        try serial.withLock { _ throws -> [Value] in
            do {
                return try mainMember.instance.call(function, arguments)
            } catch let trap as WasmTrap {
                try replaceMain()
                throw trap
            }
        }
    }

    /// The arguments `run(_:)` passes: the worker's index, the worker count and the round's
    /// number minus one (0 for the first round), as
    /// i32, as many as `function` takes (the guests in Guests/ take `(worker, workers[, round])`).
    /// - Throws: `.invalidArgument` if `function` is not exported or takes more than three
    ///   parameters or any that is not an i32.
    public func standardArguments(for function: String) throws(MemSnapError) -> @Sendable (_ worker: Int, _ round: Int) -> [Value] {
        let operation = "call \(function) on \(count) workers"
        guard let type = main.functionType(function) else {
            throw MemSnapError(operation, .invalidArgument("the module exports no function named \"\(function)\""))
        }
        guard type.parameters.count <= 3, type.parameters.allSatisfy({ $0 == .i32 }) else {
            throw MemSnapError(operation, .invalidArgument(
                "\(function) takes \(type.parameters); a worker function takes up to three i32: worker, workers, round"))
        }
        let parameterCount = type.parameters.count
        let workers = count
        return { worker, round in
            [worker, workers, round].prefix(parameterCount).map { .i32(UInt32(truncatingIfNeeded: $0)) }
        }
    }

    /// Runs one round calling `function` with `standardArguments(for:)`.
    @discardableResult
    public func run(_ function: String) throws -> WasmRound {
        let arguments = try standardArguments(for: function)
        return try run(function, arguments: arguments)
    }

    /// Runs one round: every worker calls `function` with `arguments(worker, round)` (round: the
    /// round's number minus one) on its own
    /// thread, then the join merges main and workers (see the type's doc).
    /// - Throws: `WasmWorkerFailure` for the lowest-numbered worker whose call failed (usually
    ///   with a `WasmTrap`): the round was discarded, the snapshot is unchanged, every instance
    ///   restored; `MemSnapError` from tracking or diffing a worker (round discarded likewise),
    ///   or from the merge, as `join()` throws. If restoring the instances fails too, that error
    ///   is thrown instead, and the pool should be dropped.
    @discardableResult
    public func run(_ function: String, arguments: @escaping @Sendable (_ worker: Int, _ round: Int) -> [Value]) throws -> WasmRound {
        try serial.withLock { _ throws -> WasmRound in
            rounds += 1
            let round = rounds
            let start = WasmWorkers.now()
            let outcomes = try runWorkers(function, round: round - 1, arguments: arguments)
            let runSeconds = WasmWorkers.seconds(since: start)
            var workerDiffs: [SnapshotDiffBatch] = []
            for (index, outcome) in outcomes.enumerated() {
                switch outcome {
                case let .success(finished):
                    workerDiffs.append(finished.diffs)
                case let .failure(error):
                    try restoreWorkers()
                    if let failure = error as? CallFailure {
                        throw WasmWorkerFailure(worker: index, round: round, underlying: failure.underlying)
                    }
                    throw error
                }
            }
            let finished = outcomes.compactMap { try? $0.get() }
            var report = try merge(workerDiffs: workerDiffs, workers: finished.map { ($0.written, $0.restoredInPlace) })
            report.number = round
            report.results = finished.map(\.results)
            report.runSeconds = runSeconds
            report.callSeconds = finished.map(\.callSeconds)
            report.diffSeconds = finished.map(\.diffSeconds)
            return report
        }
    }

    /// Merges the main instance's writes since the last join (no workers run) and restores every
    /// instance onto the snapshot.
    /// - Throws: `MemSnapError` if collecting, diffing or applying fails: nothing is merged, and
    ///   every instance is restored to the snapshot (the main instance's writes are discarded).
    @discardableResult
    public func join() throws(MemSnapError) -> WasmRound {
        try serial.withLock { (_) throws(MemSnapError) -> WasmRound in
            var report = try merge(workerDiffs: [], workers: nil)
            report.number = rounds
            return report
        }
    }

    // MARK: - The round

    /// A worker's finished part of a round.
    private struct Finished: Sendable {
        var results: [Value]
        var diffs: SnapshotDiffBatch
        /// What the worker's collect returned: the pages it wrote.
        var written: DirtyPages
        /// Whether its thread restored it in place after taking its diffs.
        var restoredInPlace: Bool
        var callSeconds: Double
        var diffSeconds: Double
    }

    /// Marks an error from the worker's call, as opposed to from tracking or diffing.
    private struct CallFailure: Error {
        let underlying: any Error
    }

    private func runWorkers(
        _ function: String, round: Int, arguments: @escaping @Sendable (Int, Int) -> [Value]
    ) throws -> [Result<Finished, any Error>] {
        let outcomes = Locked<[Int: Result<Finished, any Error>]>([:])
        let snapshot = self.snapshot
        let options = configuration.diff
        let members = workerMembers.map { (instance: $0.instance, tracker: $0.tracker, mappedSize: $0.mappedSize) }
        threads.run { index in
            let (instance, tracker, mappedSize) = members[index]
            let outcome = Result { () throws -> Finished in
                let callStart = WasmWorkers.now()
                let results: [Value]
                do { results = try instance.call(function, arguments(index, round)) } catch { throw CallFailure(underlying: error) }
                let diffStart = WasmWorkers.now()
                let dirty = try tracker.collectAndReset()
                let diffs = try snapshot.diffBatch(instance.memory, dirtyPages: dirty, options: options)
                // The diffs hold copies of the written bytes: the memory can go back to the
                // snapshot now, in parallel with the other workers, rather than after the merge.
                let restoredInPlace = SnapshotWorkers.restoreInPlace(
                    instance.memory, tracker, mappedSize: mappedSize, written: dirty, changedUnderneath: [],
                    snapshotSize: snapshot.size)
                return Finished(results: results, diffs: diffs, written: dirty, restoredInPlace: restoredInPlace,
                                callSeconds: WasmWorkers.seconds(from: callStart, to: diffStart),
                                diffSeconds: WasmWorkers.seconds(since: diffStart))
            }
            outcomes.withLock { $0[index] = outcome }
        }
        return (0..<workerMembers.count).map { index in
            outcomes.withLock { $0[index] } ?? .failure(MemSnapError(
                "run worker \(index)", .invalidArgument("the worker thread ended without a result")))
        }
    }

    /// `workers`: each worker's written pages and whether its thread restored it in place, by
    /// index, when the workers ran a round; nil for a join (they ran nothing since their restore).
    private func merge(
        workerDiffs: [SnapshotDiffBatch], workers: [(written: DirtyPages, restoredInPlace: Bool)]?
    ) throws(MemSnapError) -> WasmRound {
        let start = WasmWorkers.now()
        let mainDirty: DirtyPages
        let batches: [SnapshotDiffBatch]
        let written: [Range<Int>]
        var remappedIndices: [Int] = []
        do {
            if mainMember.instance.hasTrapped {
                // A trap left its globals mid-call: nothing it wrote since the last join is trusted.
                try replaceMain()
                remappedIndices.append(0)
            }
            try mainMember.instance.followGrowth()
            mainDirty = try mainMember.tracker.collectAndReset()
            let mainDiffs = try snapshot.diffBatch(mainMember.instance.memory, dirtyPages: mainDirty, options: configuration.diff)
            batches = [mainDiffs] + workerDiffs
            written = try snapshot.apply(batches: batches) { $0 == 0 ? "main instance's " : "worker \($0 - 1)'s " }
        } catch {
            try restoreAll()
            throw error
        }
        if try restore(&mainMember, role: .main, written: mainDirty, changedUnderneath: written), remappedIndices.isEmpty {
            remappedIndices.append(0)
        }
        for index in workerMembers.indices {
            let worker = workers.flatMap { index < $0.count ? $0[index] : nil }
            let restoredEarly = worker?.restoredInPlace ?? false
            let member = workerMembers[index]
            if restoredEarly, written.isEmpty || !member.tracker.needsChangesUnderneath,
               member.instance.memory.committedSize == member.mappedSize,
               member.mappedSize == Page.roundUp(snapshot.size) {
                continue
            }
            // Restored early, it holds no copies: only `compare`'s saved content needs the
            // merge's ranges. After a round, it wrote what its collect returned. At a join, what
            // the host wrote into it since its last restore is collected now, to be dropped; a
            // collect that fails (the host remapped it itself, say) leaves a remap.
            let pages: DirtyPages
            if restoredEarly {
                pages = DirtyPages(pageCount: member.mappedSize >> Page.shift, runs: [])
            } else if let worker {
                pages = worker.written
            } else if let collected = try? member.tracker.collectAndReset() {
                pages = collected
            } else {
                workerMembers[index] = try remapped(member, role: .worker)
                remappedIndices.append(index + 1)
                continue
            }
            if try restore(&workerMembers[index], role: .worker, written: pages, changedUnderneath: written) {
                remappedIndices.append(index + 1)
            }
        }
        return WasmRound(
            number: 0, results: [],
            dirtyPageCounts: [mainDirty.count] + (workers ?? []).map(\.written.count),
            diffCount: batches.reduce(0) { $0 + $1.count },
            diffBytes: batches.reduce(0) { $0 + $1.byteCount },
            writtenRanges: written, snapshotSize: snapshot.size, runSeconds: 0, callSeconds: [], diffSeconds: [],
            mergeSeconds: WasmWorkers.seconds(since: start), remappedInstances: remappedIndices)
    }

    // MARK: - Restoring

    /// Remaps every instance onto the snapshot (or replaces it) and re-arms its tracker: the way
    /// back from a failure, whatever the memories hold.
    private func restoreAll() throws(MemSnapError) {
        mainMember = try remapped(mainMember, role: .main)
        try restoreWorkers()
    }

    private func restoreWorkers() throws(MemSnapError) {
        for index in workerMembers.indices {
            workerMembers[index] = try remapped(workerMembers[index], role: .worker)
        }
    }

    private func replaceMain() throws(MemSnapError) {
        mainMember = try replaced(mainMember, role: .main)
    }

    /// Restores `member` to the snapshot: in place where it can (`SnapshotWorkers.restoreInPlace`),
    /// else by `remapped`. `written`: what its last collect returned. Returns whether it was
    /// remapped or replaced.
    private func restore(
        _ member: inout Member, role: GuestMergeRegions.Role, written: DirtyPages, changedUnderneath: [Range<Int>]
    ) throws(MemSnapError) -> Bool {
        if !member.instance.hasTrapped,
           SnapshotWorkers.restoreInPlace(member.instance.memory, member.tracker, mappedSize: member.mappedSize,
                                          written: written, changedUnderneath: changedUnderneath, snapshotSize: snapshot.size) {
            return false
        }
        member = try remapped(member, role: role)
        return true
    }

    /// `member` remapped onto the snapshot and its tracker re-armed, or a fresh fork in its place
    /// if it trapped or its memory is larger than the snapshot's (memory never shrinks).
    private func remapped(_ member: Member, role: GuestMergeRegions.Role) throws(MemSnapError) -> Member {
        let snapshotPages = (snapshot.size + WasmProgram.wasmPageSize - 1) / WasmProgram.wasmPageSize
        if member.instance.hasTrapped || member.instance.memoryByteCount > snapshotPages * WasmProgram.wasmPageSize {
            return try replaced(member, role: role)
        }
        try member.instance.restore(from: snapshot)
        try member.tracker.reset()
        var restored = member
        restored.mappedSize = member.instance.memory.committedSize
        return restored
    }

    private func replaced(_ member: Member, role: GuestMergeRegions.Role) throws(MemSnapError) -> Member {
        member.tracker.stop()
        let instance = try zygote.fork(label: member.instance.label, role: role)
        return Member(instance: instance,
                      tracker: try DirtyTracker(tracking: instance.memory, configuration: member.tracker.configuration),
                      mappedSize: instance.memory.committedSize)
    }

    // MARK: - Time

    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
    }

    static func seconds(since start: UInt64) -> Double { seconds(from: start, to: now()) }

    static func seconds(from start: UInt64, to end: UInt64) -> Double { Double(end &- start) / 1e9 }
}
