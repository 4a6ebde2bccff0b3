/// Fork/join of workers from one snapshot: the core loop of a serverless or WebAssembly host.
///
/// Each worker has its own `VirtualRegion`, mapped copy-on-write from the snapshot and tracked
/// by its own `DirtyTracker`; so does the main thread (`mainMemory`). Each worker also has its
/// own OS thread, started with the pool and woken for every round (a persistent thread, not one
/// started per round). `run` calls each body on its worker's thread with the worker's memory,
/// then, still on that thread, so that this work runs in parallel, collects the worker's dirty
/// pages, diffs them against the snapshot and restores the memory in place (below). At the join
/// the main thread's diffs are applied first and then each worker's in index order, in one
/// atomic apply: the merge order, and so the result of overlapping bytewise writes, is the same
/// on every run. Every region then shows the merged snapshot again, its tracker armed, ready
/// for the next round.
///
/// Restoring costs what a region wrote, not its size: a region maps the snapshot's memfd
/// privately, so dropping its own copies of the pages it wrote (`MADV_DONTNEED`) makes it read
/// the merged snapshot everywhere (pages it never wrote already share the snapshot's), and the
/// tracker's registration stays in place, the dropped pages still armed (see
/// `DirtyTracker.restoreInPlace`). A worker drops its pages on its own thread as soon as its
/// diffs are taken, before the merge: a private mapping shows the file's current content
/// wherever it holds no copy, so the merge's writes into the snapshot appear in the dropped
/// pages as they do in the pages never written.
///
/// Tracking: with no mode chosen (see `poolTracking`), the pool tracks `private-copies`: a
/// memory's dirty pages are simply the copies it holds (one `PAGEMAP_SCAN`), which restoring it
/// drops, so nothing is protected or re-armed, a write costs the one copy-on-write fault it
/// would cost untracked, and a memory that wrote nothing costs a scan of nearly empty page
/// tables. Any other mode can be chosen through `tracking` or `MEMSNAP_DIRTY_TRACKING`.
///
/// A region is remapped and its tracker re-armed instead when the snapshot grew or the region's committed size differs from it (growth, shrink), when it wrote
/// more than `inPlaceRestoreLimit` of its pages (one remap is then cheaper than dropping them
/// run by run), when its mechanism cannot tell which pages it copied (`none`), and on every
/// failure path. `JoinReport.remappedMemories` says which were remapped.
///
/// The join applies its own round's diffs directly: it never reads, adds to or empties the
/// snapshot's public diff queue (`queueDiffs`), whose batches stay for the caller's own
/// `applyQueuedDiffs()`.
///
/// A merge that fails (a worker grew its memory past the snapshot's `maxSize`, or any diff
/// `Snapshot.apply` refuses) discards the whole round, nothing of it merged, and restores every
/// region, the main memory included, to the snapshot: the next round starts clean. The main
/// memory's writes since the last join are discarded then too, because its tracker was already
/// collected and reset for that merge: kept, those writes would stay in the main memory while
/// no later join could see them, so the main memory and the snapshot would silently disagree.
///
/// Ownership: owns the regions and trackers; the snapshot is shared.
/// Thread safety: `run`, `runWithoutMerging`, `merge` and `join` may be called from any thread
/// and are serialised: a call waits until the round or join in progress has finished. A worker's
/// body must not call them (it would wait for its own round). The memory a worker receives is
/// its own during `run` and must not be used after it returns. `mainMemory` is raw memory the
/// pool reads and restores during a join: write it between rounds, from the thread that calls
/// `join`/`run` (or after synchronising with it), never while one is in progress.
public final class SnapshotWorkers: Sendable {
    /// What a worker's body receives.
    public struct Worker: Sendable {
        public let index: Int
        /// The worker's memory: the snapshot, copy-on-write, as of the last join.
        public let memory: VirtualRegion
    }

    /// The outcome of a join.
    public struct JoinReport: Sendable, Equatable {
        /// Dirty pages collected from the main memory (index 0) and each worker (1...).
        public var dirtyPageCounts: [Int]
        public var diffCount: Int
        public var diffBytes: Int
        /// Snapshot byte ranges the merge wrote.
        public var writtenRanges: [Range<Int>]
        /// The memories restored by a remap rather than in place (0 is the main memory, `i + 1`
        /// worker `i`), ascending: the snapshot grew, a memory grew or wrote more than
        /// `inPlaceRestoreLimit` of its pages, or its tracking mode cannot restore in place.
        public var remappedMemories: [Int]
    }

    /// Above this fraction of its pages written, a memory is remapped rather than restored in
    /// place: one mmap then replaces madvise over thousands of runs, and re-arming the whole
    /// region costs about what protecting that many pages one by one does (BENCHMARKS.md,
    /// "Fork/join rounds").
    public static let inPlaceRestoreLimit = 0.5

    /// Marks an error thrown by a worker's body, as opposed to by tracking or diffing.
    private struct BodyFailure: Error {
        let underlying: any Error
    }

    /// A worker's body threw; nothing from that round was merged.
    public struct WorkerFailure: Error, CustomStringConvertible {
        public let worker: Int
        public let underlying: any Error
        public var description: String { "worker \(worker) failed: \(underlying); the round was discarded" }
    }

    public let snapshot: Snapshot
    public let options: DiffOptions
    /// The main thread's own memory, merged at every join like a worker's.
    public let mainMemory: VirtualRegion
    public let workerMemories: [VirtualRegion]
    private let mainTracker: DirtyTracker
    private let workerTrackers: [DirtyTracker]
    /// One thread per worker, woken every round.
    private let threads: WorkerThreadPool
    /// Held for the whole of every round and join: they read and restore every region.
    private let rounds = Locked(())
    /// Each region's committed size right after its last remap, by region (the main memory's
    /// under its base address): a region whose committed size moved since holds pages that are
    /// not the snapshot's file (grown ones are anonymous), which dropping would turn into zeros.
    private let mappedSizes = Locked<[UInt: Int]>([:])

    /// Maps the snapshot into `count` worker regions and a main region of `memoryMaxSize` bytes
    /// each (default: the snapshot's maximum) and starts tracking them, with `tracking`'s mode
    /// or, when it names none, `private-copies` where it works (see `poolTracking`).
    /// Starts one thread per worker, which waits (using no CPU) between rounds and ends with the pool.
    /// - Throws: `.invalidArgument` for a count below 1; mapping and tracking failures;
    ///   `.systemCall("pthread_create", ...)` if the worker threads cannot start.
    public init(
        snapshot: Snapshot, count: Int, memoryMaxSize: Int? = nil,
        tracking: DirtyTracker.Configuration = DirtyTracker.Configuration(), options: DiffOptions = DiffOptions()
    ) throws(MemSnapError) {
        let operation = "start \(count) workers from snapshot \"\(snapshot.name)\""
        guard count >= 1 else { throw MemSnapError(operation, .invalidArgument("need at least one worker, not \(count)")) }
        try options.validate(during: operation)
        let maxSize = Swift.max(memoryMaxSize ?? snapshot.maxSize, Page.size)
        let tracking = try SnapshotWorkers.poolTracking(tracking)
        func trackedRegion() throws(MemSnapError) -> (VirtualRegion, DirtyTracker) {
            let region = try VirtualRegion(maxSize: maxSize)
            try snapshot.mapCopyOnWrite(into: region)
            return (region, try DirtyTracker(tracking: region, configuration: tracking))
        }
        let main = try trackedRegion()
        var regions: [VirtualRegion] = []
        var trackers: [DirtyTracker] = []
        for _ in 0..<count {
            let (region, tracker) = try trackedRegion()
            regions.append(region)
            trackers.append(tracker)
        }
        self.threads = try WorkerThreadPool(count: count, name: "memsnap-w")
        self.snapshot = snapshot
        self.options = options
        self.mainMemory = main.0
        self.mainTracker = main.1
        self.workerMemories = regions
        self.workerTrackers = trackers
        self.mappedSizes.withLock { sizes in
            for region in [main.0] + regions { sizes[region.baseAddress] = region.committedSize }
        }
    }

    /// The configuration the pool's trackers use: `configuration` as given, except that with no
    /// mode chosen (neither `configuration.mode` nor `MEMSNAP_DIRTY_TRACKING`, or `auto`) a pool
    /// tracks `private-copies` where it works. A pool restores every memory after each collect,
    /// which is all that mode needs to be exact, and its writes then cost one copy-on-write
    /// fault, as in an untracked mapping (BENCHMARKS.md, "Fork/join rounds").
    /// `WasmWorkers` chooses the same way: it, too, restores every instance after each round.
    package static func poolTracking(_ configuration: DirtyTracker.Configuration) throws(MemSnapError) -> DirtyTracker.Configuration {
        guard try configuration.requestedMode() == .auto, DirtyTrackingMode.privateCopies.availability == .available else { return configuration }
        var chosen = configuration
        chosen.mode = .privateCopies
        return chosen
    }

    deinit {
        mainTracker.stop()
        for tracker in workerTrackers { tracker.stop() }
    }

    public var count: Int { workerMemories.count }

    /// The mode every memory of the pool is tracked with (`poolTracking`'s choice).
    public var trackingMode: DirtyTrackingMode { mainTracker.mode }

    /// A round's diffs, not merged: what `runWithoutMerging` returns, and what a host that
    /// runs part of a batch for another (MemSnapRemote) sends back.
    public struct RoundDiffs: Sendable {
        /// Each worker's diffs against the snapshot, by worker index.
        public var workers: [[SnapshotDiff]]
        /// Dirty pages collected from each worker.
        public var dirtyPageCounts: [Int]

        public init(workers: [[SnapshotDiff]], dirtyPageCounts: [Int]) {
            self.workers = workers
            self.dirtyPageCounts = dirtyPageCounts
        }
    }

    /// Runs `body` once per worker as `run` does, but merges nothing: returns each worker's
    /// diffs and restores every worker to the snapshot. The main memory is left alone (its
    /// writes wait for the next join or merge). Use `merge(workerDiffs:)` to apply diffs
    /// gathered this way, possibly with other hosts' workers', in the order of your choosing.
    /// - Throws: as `run`: `WorkerFailure` for the lowest-numbered worker whose body threw, or
    ///   `MemSnapError` from tracking or diffing; every worker is restored either way.
    public func runWithoutMerging(_ body: @escaping @Sendable (Worker) throws -> Void) throws -> RoundDiffs {
        try rounds.withLock { _ in
            let round = try runBodies(body)
            _ = try restoreWorkers(round, changedUnderneath: [])
            return RoundDiffs(workers: round.batches.map { Array($0) }, dirtyPageCounts: round.written.map(\.count))
        }
    }

    /// Merges the main memory's writes and `workerDiffs` (in the order given: main memory
    /// first, then each batch) in one atomic apply, then remaps everything, like `join()`.
    /// `workerDiffs` are typically rounds of `runWithoutMerging`, here and on other hosts, in
    /// the batch's worker order; `names` name each batch in errors ("worker 3 on 127.0.0.2").
    /// - Throws: as `join()`: nothing is merged and every region is restored.
    @discardableResult
    public func merge(workerDiffs: [[SnapshotDiff]], names: [String]? = nil) throws(MemSnapError) -> JoinReport {
        try rounds.withLock { (_) throws(MemSnapError) -> JoinReport in
            try merge(workerBatches: workerDiffs.map { SnapshotDiffBatch($0) }, round: nil, names: names)
        }
    }

    /// Runs `body` once per worker, each on its own thread, then joins (see the type's doc).
    /// - Throws: `WorkerFailure` for the lowest-numbered worker whose body threw (every worker
    ///   is restored to the snapshot and nothing from the round is merged; the main memory keeps
    ///   its writes for the next join); `MemSnapError` from tracking or diffing a worker (workers
    ///   restored, the main memory keeps its writes), or from the merge, as `join()` throws.
    @discardableResult
    public func run(_ body: @escaping @Sendable (Worker) throws -> Void) throws -> JoinReport {
        try rounds.withLock { _ in
            var mainAhead: MainMemoryAhead?
            let round = try runBodies(body) { mainAhead = collectMainMemoryAhead() }
            return try merge(workerBatches: round.batches, round: round, names: nil, mainAhead: mainAhead)
        }
    }

    /// A round's diffs, the pages each worker wrote (what restoring it in place drops), and
    /// which workers their own threads already restored in place.
    private struct Round {
        /// Each worker's diffs, by worker index.
        var batches: [SnapshotDiffBatch]
        var written: [DirtyPages]
        var restoredInPlace: [Bool]
    }

    /// The main memory's writes and diffs, taken while the workers run (the calling thread would
    /// only wait) without starting a new interval: a round that fails leaves the main memory's
    /// writes to the next join, as if nothing had been collected.
    private struct MainMemoryAhead {
        var dirty: DirtyPages
        var diffs: SnapshotDiffBatch
    }

    /// Most runs re-armed one by one after a collect ahead: past this, one scan of the whole
    /// memory costs less than a scan per run.
    private static let aheadRunLimit = 64

    /// Collects and diffs the main memory without resetting its tracker, where the tracker can
    /// later re-arm exactly those runs (uffd-async) or has nothing to re-arm (private-copies,
    /// whose collect is a scan and nothing more); nil otherwise or on any error (the merge
    /// then collects as a join does, and reports the error itself).
    private func collectMainMemoryAhead() -> MainMemoryAhead? {
        guard mainTracker.mode == .uffdAsync || mainTracker.mode == .privateCopies,
              let dirty = try? mainTracker.collect(),
              let diffs = try? snapshot.diffBatch(mainMemory, dirtyPages: dirty, options: options) else { return nil }
        return MainMemoryAhead(dirty: dirty, diffs: diffs)
    }

    /// The main memory's writes since the last join and their diffs, its tracker reset. With a
    /// collect ahead of few runs, only those runs are re-armed; otherwise the whole memory is
    /// collected again, and the diffs ahead are kept if it wrote nothing since (which the
    /// contract promises; anything written since is collected and diffed all the same).
    private func collectMainMemory(ahead: MainMemoryAhead?) throws(MemSnapError) -> (DirtyPages, SnapshotDiffBatch) {
        if let ahead, mainTracker.mode == .uffdAsync, ahead.dirty.runs.count <= SnapshotWorkers.aheadRunLimit {
            let rearmed = try mainTracker.collectAndReset(within: ahead.dirty.runs)
            if rearmed == ahead.dirty.runs { return (ahead.dirty, ahead.diffs) }
            let rest = try mainTracker.collectAndReset()
            let dirty = DirtyPages(pageCount: rest.pageCount, runs: ahead.dirty.runs + rearmed + rest.runs)
            return (dirty, try snapshot.diffBatch(mainMemory, dirtyPages: dirty, options: options))
        }
        let dirty = try mainTracker.collectAndReset()
        if let ahead, dirty == ahead.dirty { return (dirty, ahead.diffs) }
        return (dirty, try snapshot.diffBatch(mainMemory, dirtyPages: dirty, options: options))
    }

    /// Runs the bodies on the workers' threads, diffs each worker and restores it in place where
    /// it can; on any failure restores the workers and throws. `alongside` runs on the calling
    /// thread meanwhile.
    private func runBodies(_ body: @escaping @Sendable (Worker) throws -> Void, alongside: () -> Void = {}) throws -> Round {
        let workerCount = count
        let outcomes = Locked<[Result<SnapshotDiffBatch, any Error>?]>(Array(repeating: nil, count: workerCount))
        let dirtySets = Locked<[DirtyPages?]>(Array(repeating: nil, count: workerCount))
        let restoredEarly = Locked<[Bool]>(Array(repeating: false, count: workerCount))
        let memories = workerMemories
        let trackers = workerTrackers
        let snapshot = self.snapshot
        let options = self.options
        let mappedSizes = self.mappedSizes
        threads.run { index in
            let worker = Worker(index: index, memory: memories[index])
            let tracker = trackers[index]
            let outcome = Result { () throws -> SnapshotDiffBatch in
                do { try body(worker) } catch { throw BodyFailure(underlying: error) }
                let dirty = try tracker.collectAndReset()
                dirtySets.withLock { $0[index] = dirty }
                let diffs = try snapshot.diffBatch(worker.memory, dirtyPages: dirty, options: options)
                // The diffs hold copies of the written bytes: the memory can go back to the
                // snapshot now, in parallel with the other workers, rather than after the merge.
                let mappedSize = mappedSizes.withLock { $0[worker.memory.baseAddress] }
                if SnapshotWorkers.restoreInPlace(worker.memory, tracker, mappedSize: mappedSize, written: dirty,
                                                  changedUnderneath: [], snapshotSize: snapshot.size) {
                    restoredEarly.withLock { $0[index] = true }
                }
                return diffs
            }
            outcomes.withLock { $0[index] = outcome }
        } alongside: {
            alongside()
        }
        let results = outcomes.withLock { $0 }
        var workerDiffs: [SnapshotDiffBatch] = []
        for index in 0..<count {
            switch results[index] {
            case let .success(diffs)?:
                workerDiffs.append(diffs)
            case let .failure(error)?:
                try restoreWorkers()
                // The body's own errors (whatever their type) are the worker's failure; errors
                // from tracking or diffing the worker's memory are memsnap's and stay as they are.
                if let failure = error as? BodyFailure { throw WorkerFailure(worker: index, underlying: failure.underlying) }
                throw error
            case nil:
                try restoreWorkers()
                throw MemSnapError("run worker \(index)", .invalidArgument("the worker thread ended without a result"))
            }
        }
        let written = dirtySets.withLock { $0 }.map { $0 ?? DirtyPages(pageCount: 0, runs: []) }
        return Round(batches: workerDiffs, written: written,
                     restoredInPlace: restoredEarly.withLock { $0 })
    }

    /// Merges the main memory's writes (with no workers running) and remaps everything.
    /// - Throws: `MemSnapError` if collecting or diffing the main memory fails, or if the merge
    ///   does (its operation names the source and the diff: "apply worker 1's diff 0 (...)" or
    ///   "apply main memory's diff 0 (...)"). Nothing of the round is merged then, and every
    ///   region, the main memory included, is restored to the snapshot (see the type's doc); if
    ///   that restore fails too, its error is thrown instead and the pool should be dropped.
    @discardableResult
    public func join() throws(MemSnapError) -> JoinReport {
        try rounds.withLock { (_) throws(MemSnapError) -> JoinReport in
            try merge(workerBatches: [], round: nil, names: nil)
        }
    }

    /// `round`: the round that produced `workerBatches`, nil when the workers did not run since
    /// they were last restored (a join, or a merge of diffs from `runWithoutMerging`).
    /// `mainAhead`: the main memory's writes collected during the round, if they were.
    private func merge(
        workerBatches: [SnapshotDiffBatch], round: Round?, names: [String]?, mainAhead: MainMemoryAhead? = nil
    ) throws(MemSnapError) -> JoinReport {
        let mainDirty: DirtyPages
        let batches: [SnapshotDiffBatch]
        let written: [Range<Int>]
        do {
            let mainDiffs: SnapshotDiffBatch
            (mainDirty, mainDiffs) = try collectMainMemory(ahead: mainAhead)
            batches = [mainDiffs] + workerBatches
            written = try snapshot.apply(batches: batches) { index in
                if index == 0 { return "main memory's " }
                if let names, index - 1 < names.count { return "\(names[index - 1])'s " }
                return "worker \(index - 1)'s "
            }
        } catch {
            try restoreAll()
            throw error
        }
        var remapped: [Int] = []
        if try restore(mainMemory, mainTracker, written: mainDirty, changedUnderneath: written) { remapped.append(0) }
        remapped += try restoreWorkers(round, changedUnderneath: written).map { $0 + 1 }
        return JoinReport(
            dirtyPageCounts: [mainDirty.count] + (round?.written.map(\.count) ?? []),
            diffCount: batches.reduce(0) { $0 + $1.count },
            diffBytes: batches.reduce(0) { $0 + $1.byteCount },
            writtenRanges: written,
            remappedMemories: remapped)
    }

    /// Remaps the main memory and every worker onto the snapshot and re-arms their trackers:
    /// the way back from a failure, whatever the regions hold.
    private func restoreAll() throws(MemSnapError) {
        try remap(mainMemory, mainTracker)
        try restoreWorkers()
    }

    private func restoreWorkers() throws(MemSnapError) {
        for index in 0..<count { try remap(workerMemories[index], workerTrackers[index]) }
    }

    /// Restores every worker (in place where it can; see the type's doc) and returns the
    /// indices of those remapped. `round` nil: the workers wrote nothing since their last
    /// restore. A worker its thread restored already needs only what changed underneath it
    /// since (nothing, unless its tracker keeps a copy of the file), or a remap if the snapshot
    /// changed size in the merge.
    private func restoreWorkers(_ round: Round?, changedUnderneath: [Range<Int>]) throws(MemSnapError) -> [Int] {
        var remapped: [Int] = []
        let mappedSize = Page.roundUp(snapshot.size) ?? -1
        for index in 0..<count {
            let memory = workerMemories[index]
            let tracker = workerTrackers[index]
            let restoredEarly = round?.restoredInPlace[index] ?? false
            if restoredEarly, changedUnderneath.isEmpty || !tracker.needsChangesUnderneath,
               memory.committedSize == mappedSize {
                continue
            }
            var pages = round?.written[index] ?? DirtyPages(pageCount: memory.committedSize >> Page.shift, runs: [])
            if restoredEarly { pages = DirtyPages(pageCount: pages.pageCount, runs: []) }
            if try restore(memory, tracker, written: pages, changedUnderneath: changedUnderneath) {
                remapped.append(index)
            }
        }
        return remapped
    }

    /// Restores `region` to the snapshot: in place where it can (see `restoreInPlace`),
    /// otherwise by a remap. Returns whether it remapped.
    private func restore(
        _ region: VirtualRegion, _ tracker: DirtyTracker, written: DirtyPages, changedUnderneath: [Range<Int>]
    ) throws(MemSnapError) -> Bool {
        if SnapshotWorkers.restoreInPlace(region, tracker, mappedSize: mappedSizes.withLock { $0[region.baseAddress] },
                                          written: written, changedUnderneath: changedUnderneath, snapshotSize: snapshot.size) {
            return false
        }
        try remap(region, tracker)
        return true
    }

    /// Restores `region` (tracked by `tracker`) in place if its committed size is still the
    /// snapshot's size in whole pages and `mappedSize`, the committed size when the snapshot was
    /// last mapped over it (nil: not known to be one such mapping), it wrote at most
    /// `inPlaceRestoreLimit` of its pages, and its tracker can (`DirtyTracker.restoreInPlace`,
    /// whose contract on `written` and `changedUnderneath` applies). False where it cannot, or if
    /// dropping pages failed (some pages may be dropped then, some not): the caller remaps.
    /// The pools' shared rule (`WasmWorkers` uses it too).
    public static func restoreInPlace(
        _ region: VirtualRegion, _ tracker: DirtyTracker, mappedSize: Int?, written: DirtyPages,
        changedUnderneath: [Range<Int>], snapshotSize: Int
    ) -> Bool {
        let committed = region.committedSize
        guard committed == (Page.roundUp(snapshotSize) ?? -1), mappedSize == committed,
              Double(written.count) <= Double(written.pageCount) * inPlaceRestoreLimit else { return false }
        return (try? tracker.restoreInPlace(written: written, changedUnderneath: changedUnderneath)) ?? false
    }

    private func remap(_ region: VirtualRegion, _ tracker: DirtyTracker) throws(MemSnapError) {
        mappedSizes.withLock { $0[region.baseAddress] = nil }
        try snapshot.mapCopyOnWrite(into: region)
        mappedSizes.withLock { $0[region.baseAddress] = region.committedSize }
        try tracker.reset()
    }
}
