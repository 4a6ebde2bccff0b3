import MemSnap

/// Fork/join across hosts: a batch of workers spread over this process and snapshot servers,
/// all starting from one snapshot and merged back into it at the sync point, with the same
/// order and typed merges as `SnapshotWorkers` (sum regions add up across every host).
///
/// A round:
/// 1. Every remote host is brought to the snapshot's current epoch: the first time, and after
///    anything went wrong there, by a whole push; afterwards by an update holding only the byte
///    ranges that changed since (`Snapshot.takeChangedRanges`), with the merge regions. A host
///    that no longer holds the epoch it had gets a whole push.
/// 2. The remote batches start, each host forking its workers from its copy; the local workers
///    run meanwhile on threads here.
/// 3. Each remote worker's diffs are kept as they arrive. When every worker is done, the main
///    memory's diffs, then every worker's by its index in the batch (local workers first, then
///    each host's, in the order given), are applied in one atomic merge, and every local region
///    is remapped onto the result.
///
/// A worker whose body throws, here or on a remote host, and a remote host that fails or
/// disconnects during the round, fail the round: nothing of it is merged, the snapshot is
/// unchanged, local workers are restored, and the error names the host (a failed host gets a
/// whole push next round). The main memory keeps its writes for the next round, as with
/// `SnapshotWorkers.run`.
///
/// Ownership: owns its local workers; shares the snapshot and the hosts. The snapshot's
/// changed ranges belong to this type from `init` on (it takes them every round); between
/// rounds the snapshot may be written (those writes reach the remotes with the next update).
/// Thread safety: one round at a time (`run` is not reentrant).
public final class DistributedWorkers: @unchecked Sendable {
    /// Workers to run on a remote host.
    public struct Placement: Sendable {
        public let host: RemoteHost
        public let workers: Int
        public init(host: RemoteHost, workers: Int) {
            self.host = host
            self.workers = workers
        }
    }

    public let snapshot: Snapshot
    /// The key the snapshot has on every remote host.
    public let key: String
    public let localCount: Int
    public let placements: [Placement]
    public var workerCount: Int { localCount + placements.reduce(0) { $0 + $1.workers } }
    /// The main thread's own memory (like `SnapshotWorkers.mainMemory`), merged first.
    public var mainMemory: VirtualRegion { local.mainMemory }
    /// The snapshot's epoch: the number of rounds (and direct writes) the remotes have seen.
    public private(set) var epoch: UInt64 = 0
    public let pushOptions: RemoteHost.PushOptions

    private let local: SnapshotWorkers
    private let options: DiffOptions
    private var bodies: [String: BatchWorkerBody] = [:]
    /// The epoch each remote host is known to hold (nil: unknown, push the whole snapshot).
    private var held: [UInt64?]

    /// What a round did, with the time of each phase.
    public struct RoundReport: Sendable {
        public var epoch: UInt64
        /// Per remote host, in placement order: "whole", "update" or "current".
        public var pushes: [String]
        public var pushSeconds: Double
        public var runSeconds: Double
        public var mergeSeconds: Double
        public var join: SnapshotWorkers.JoinReport
    }

    /// Sets up `localWorkers` workers here (0 for none) and the remote placements.
    /// - Throws: `.invalidArgument` for no workers at all or an empty key; as `SnapshotWorkers`.
    public init(snapshot: Snapshot, key: String, localWorkers: Int, remote placements: [Placement],
                tracking: DirtyTracker.Configuration = DirtyTracker.Configuration(), options: DiffOptions = DiffOptions(),
                pushOptions: RemoteHost.PushOptions = RemoteHost.PushOptions()) throws(MemSnapError) {
        let operation = "start distributed workers on snapshot \"\(key)\""
        guard !key.isEmpty else { throw MemSnapError(operation, .emptyKey) }
        guard localWorkers >= 0, placements.allSatisfy({ $0.workers >= 1 }),
              localWorkers + placements.reduce(0, { $0 + $1.workers }) >= 1 else {
            throw MemSnapError(operation, .invalidArgument("need at least one worker; every placement runs at least one"))
        }
        self.snapshot = snapshot
        self.key = key
        self.localCount = localWorkers
        self.placements = placements
        self.options = options
        self.pushOptions = pushOptions
        // SnapshotWorkers needs one worker; with none here it only serves the main memory and the merge.
        local = try SnapshotWorkers(snapshot: snapshot, count: max(1, localWorkers), tracking: tracking, options: options)
        held = placements.map { _ in nil }
        _ = snapshot.takeChangedRanges()  // the first push sends everything
    }

    /// Registers the body that batches naming `name` run here (the remote hosts need a body of
    /// the same name registered on their servers).
    public func register(_ name: String, body: @escaping BatchWorkerBody) {
        bodies[name] = body
    }

    /// Runs one round of body `name` with `arguments` on every worker (see the type's doc).
    /// - Throws: `SnapshotWorkers.WorkerFailure` for a local body that threw;
    ///   `RemoteHost.RemoteWorkerFailure` for a remote one; `MemSnapError` naming the host for a
    ///   push, batch or connection that failed, or from diffing and merging.
    @discardableResult
    public func run(_ name: String, arguments: [UInt8] = []) async throws -> RoundReport {
        let operation = "run distributed round \"\(name)\" on snapshot \"\(key)\""
        guard localCount == 0 || bodies[name] != nil else {
            throw MemSnapError(operation, .invalidArgument("no local body registered under that name"))
        }
        let pushStart = ContinuousClock.now
        let pushes = try await publish()
        let runStart = ContinuousClock.now
        let epoch = self.epoch, key = self.key, count = workerCount, fill = options.fillOperation
        var first = localCount
        var remoteRanges: [Range<Int>] = []
        for placement in placements {
            remoteRanges.append(first..<first + placement.workers)
            first += placement.workers
        }
        let local = self.local, body = bodies[name], localCount = self.localCount, placements = self.placements
        // Every remote batch and the local one run at once; each remote outcome is kept apart,
        // so a failure is tied to its host.
        let (localOutcome, remoteOutcomes) = await withTaskGroup(of: (Int, Result<RemoteHost.BatchResult, any Error>).self) { group in
            for (index, placement) in placements.enumerated() {
                let workers = Array(remoteRanges[index])
                group.addTask {
                    do {
                        return (index, .success(try await placement.host.runBatch(
                            key: key, epoch: epoch, body: name, workers: workers, workerCount: count, arguments: arguments, fill: fill)))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var localOutcome = Result<SnapshotWorkers.RoundDiffs, any Error>.success(.init(workers: [], dirtyPageCounts: []))
            if localCount > 0, let body {
                do {
                    localOutcome = .success(try await onDedicatedThread(named: "memsnap-local") {
                        try local.runWithoutMerging { worker in
                            try body(BatchWorker(index: worker.index, count: count, memory: worker.memory, arguments: arguments))
                        }
                    })
                } catch {
                    localOutcome = .failure(error)
                }
            }
            var outcomes = [Result<RemoteHost.BatchResult, any Error>?](repeating: nil, count: placements.count)
            for await (index, outcome) in group { outcomes[index] = outcome }
            return (localOutcome, outcomes)
        }
        // A host whose batch failed for any reason but its own worker's body is in an unknown
        // state (disconnected, restarted): it gets the whole snapshot next round.
        for index in remoteOutcomes.indices {
            guard case .failure(let error)? = remoteOutcomes[index] else { continue }
            if !(error is RemoteHost.RemoteWorkerFailure) { held[index] = nil }
        }
        let localRound = try localOutcome.get()
        var remoteResults: [RemoteHost.BatchResult] = []
        for outcome in remoteOutcomes {
            guard let outcome else { throw MemSnapError(operation, .unavailable("a remote batch ended without an outcome")) }
            remoteResults.append(try outcome.get())
        }
        let runSeconds = (ContinuousClock.now - runStart).seconds
        // Main memory first, then every worker by its index in the batch.
        var workerDiffs = localRound.workers
        var names = (0..<localCount).map { "worker \($0)" }
        for (index, result) in remoteResults.enumerated() {
            for worker in remoteRanges[index] {
                workerDiffs.append(result.diffs[worker] ?? [])
                names.append("worker \(worker) on \(placements[index].host.name)")
            }
        }
        let mergeStart = ContinuousClock.now
        let join = try local.merge(workerDiffs: workerDiffs, names: names)
        let report = RoundReport(epoch: epoch, pushes: pushes, pushSeconds: (runStart - pushStart).seconds, runSeconds: runSeconds,
                                 mergeSeconds: (ContinuousClock.now - mergeStart).seconds, join: join)
        return report
    }

    /// Merges the main memory's writes (no workers running), like `SnapshotWorkers.join`.
    @discardableResult
    public func join() throws(MemSnapError) -> SnapshotWorkers.JoinReport {
        try local.join()
    }

    /// Brings every remote host to the current epoch; returns what each needed.
    private func publish() async throws -> [String] {
        let changes = snapshot.takeChangedRanges()
        if !changes.isEmpty { epoch += 1 }
        let epoch = self.epoch, key = self.key, snapshot = self.snapshot, pushOptions = self.pushOptions
        let held = self.held
        let previous = changes.isEmpty ? nil : epoch - 1
        let needsUpdate = previous != nil && held.contains { $0 != nil && $0 != epoch }
        let diffs: [SnapshotDiff] = !needsUpdate ? [] : try snapshot.withUnsafeBytes { (image) throws(MemSnapError) in
            changes.compactMap { range in
                let clipped = range.clamped(to: 0..<image.count)
                guard !clipped.isEmpty else { return nil }
                return SnapshotDiff(offset: clipped.lowerBound, dataType: .raw, operation: .bytewise,
                                    bytes: [UInt8](UnsafeRawBufferPointer(rebasing: image[clipped])))
            }
        }
        let regions = snapshot.mergeRegions
        let outcomes: [(UInt64?, String)] = await withTaskGroup(of: (Int, UInt64?, String).self) { group in
            for (index, placement) in placements.enumerated() {
                let host = placement.host
                group.addTask {
                    if held[index] == epoch { return (index, epoch, "current") }
                    if let base = held[index], base == previous {
                        do {
                            _ = try await host.performUpdate(key: key, from: base, to: epoch, diffs: diffs, mergeRegions: regions,
                                                             during: "update snapshot \"\(key)\" on \(host.name)")
                            return (index, epoch, "update")
                        } catch {
                            // Not the epoch we thought (or the update failed): send everything.
                        }
                    }
                    do {
                        try await host.push(snapshot, as: key, epoch: epoch, options: pushOptions)
                        return (index, epoch, "whole")
                    } catch {
                        return (index, nil, "failed: \(error)")
                    }
                }
            }
            var outcomes = [(UInt64?, String)](repeating: (nil, ""), count: placements.count)
            for await (index, held, what) in group { outcomes[index] = (held, what) }
            return outcomes
        }
        self.held = outcomes.map(\.0)
        if let failed = outcomes.indices.first(where: { outcomes[$0].0 == nil }) {
            throw MemSnapError("bring snapshot \"\(key)\" to epoch \(epoch) on \(placements[failed].host.name)",
                               .unavailable(outcomes[failed].1))
        }
        return outcomes.map(\.1)
    }
}
