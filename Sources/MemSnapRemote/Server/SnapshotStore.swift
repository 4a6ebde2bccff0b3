import MemSnap
import MemSnapCheckpoint

/// A server's state: the snapshots it holds by key, each at an epoch; the pushes being staged;
/// and which snapshots are busy. A snapshot changes only when nothing runs on it: an update
/// waits for no batch and no other update (and is refused otherwise), so a worker never sees a
/// mix of two epochs; a whole push replaces the snapshot object, so batches already running
/// keep the one they started with.
///
/// Worker pools (regions and trackers, costly to set up) are kept per snapshot, worker count and
/// fill operation, and reused by later batches.
///
/// Thread safety: an actor; the heavy work (frames, workers) happens outside it.
actor SnapshotStore {
    struct Hosted {
        var snapshot: Snapshot
        var epoch: UInt64
        var batches = 0
        var updating = false
        var idlePools: [PoolKey: [SnapshotWorkers]] = [:]
    }

    struct PoolKey: Hashable {
        var workers: Int
        var fill: MergeOperation
    }

    struct StagedKey: Hashable {
        var key: String
        var pushID: String
    }

    /// What a batch needs: the snapshot as of its epoch, and a pool if one is idle.
    struct BatchLease: @unchecked Sendable {
        let snapshot: Snapshot
        let pool: SnapshotWorkers?
    }

    let configuration: SnapshotServerConfiguration
    private var hosted: [String: Hosted] = [:]
    private var staged: [StagedKey: StagedPush] = [:]

    init(configuration: SnapshotServerConfiguration) {
        self.configuration = configuration
    }

    // MARK: Pushes

    /// The staged push for `header` (a resumed one if the key and id match), or a new one.
    /// - Throws: `.invalidArgument` if a different push is staged under the same id;
    ///   `.exceedsMaximum` when staging it would pass the limits even after dropping expired ones.
    func stage(_ header: StagedPush.Header) throws(MemSnapError) -> StagedPush {
        let operation = "stage push \(header.pushID) for snapshot \"\(header.key)\""
        let stagedKey = StagedKey(key: header.key, pushID: header.pushID)
        if let existing = staged[stagedKey] {
            guard existing.header == header else {
                throw MemSnapError(operation, .invalidArgument("a different push is staged under this id"))
            }
            return existing
        }
        let now = ContinuousClock.now
        for (key, push) in staged where now - push.lastTouched > configuration.stagedPushLifetime { staged[key] = nil }
        let stagedBytes = staged.values.reduce(0) { $0 + $1.header.imageSize }
        guard staged.count < configuration.maxStagedPushes else {
            throw MemSnapError(operation, .exceedsMaximum(what: "staged pushes", requested: staged.count + 1, maximum: configuration.maxStagedPushes))
        }
        guard header.imageSize <= configuration.maxStagedBytes - stagedBytes else {
            throw MemSnapError(operation, .exceedsMaximum(what: "staged bytes", requested: stagedBytes + header.imageSize,
                                                          maximum: configuration.maxStagedBytes))
        }
        let push = try StagedPush(header: header)
        staged[stagedKey] = push
        return push
    }

    func stagedPush(key: String, pushID: String) -> StagedPush? {
        staged[StagedKey(key: key, pushID: pushID)]
    }

    /// Makes `snapshot` (built from `push`) the one held under the push's key, at its epoch.
    func publish(_ push: StagedPush, snapshot: Snapshot) throws(MemSnapError) {
        let key = push.header.key
        guard hosted[key] != nil || hosted.count < configuration.maxSnapshots else {
            throw MemSnapError("publish snapshot \"\(key)\"", .exceedsMaximum(what: "snapshots", requested: hosted.count + 1,
                                                                              maximum: configuration.maxSnapshots))
        }
        hosted[key] = Hosted(snapshot: snapshot, epoch: push.header.epoch)  // batches on the old object end unnoticed
        staged[StagedKey(key: key, pushID: push.header.pushID)] = nil
    }

    // MARK: Updates

    /// Marks the snapshot under `key` as updating, after checking that it is at `baseEpoch`
    /// and idle; returns it.
    /// - Throws: `.notFound`; `EpochMismatch` (FAILED_PRECONDITION on the wire) for another epoch;
    ///   `.unavailable` while a batch or another update runs on it.
    func beginUpdate(key: String, baseEpoch: UInt64) throws -> Snapshot {
        guard var entry = hosted[key] else { throw EpochMismatch(key: key, expected: baseEpoch, held: nil) }
        guard entry.epoch == baseEpoch else { throw EpochMismatch(key: key, expected: baseEpoch, held: entry.epoch) }
        guard entry.batches == 0, !entry.updating else {
            throw MemSnapError("update snapshot \"\(key)\"", .unavailable("a batch or another update is running on it"))
        }
        entry.updating = true
        hosted[key] = entry
        return entry.snapshot
    }

    /// Ends an update: the snapshot moves to `newEpoch` if it was applied.
    func finishUpdate(key: String, snapshot: Snapshot, newEpoch: UInt64?) {
        guard var entry = hosted[key], entry.snapshot === snapshot else { return }
        entry.updating = false
        if let newEpoch { entry.epoch = newEpoch }
        hosted[key] = entry
    }

    // MARK: Batches

    func beginBatch(key: String, epoch: UInt64, pool poolKey: PoolKey) throws -> BatchLease {
        guard var entry = hosted[key] else { throw EpochMismatch(key: key, expected: epoch, held: nil) }
        guard entry.epoch == epoch else { throw EpochMismatch(key: key, expected: epoch, held: entry.epoch) }
        guard !entry.updating else {
            throw MemSnapError("run a batch on snapshot \"\(key)\"", .unavailable("an update is being applied to it"))
        }
        entry.batches += 1
        let pool = entry.idlePools[poolKey]?.popLast()
        hosted[key] = entry
        return BatchLease(snapshot: entry.snapshot, pool: pool)
    }

    /// Ends a batch; its pool goes back for reuse if the snapshot is still the one held.
    func endBatch(key: String, snapshot: Snapshot, pool: SnapshotWorkers?, poolKey: PoolKey) {
        guard var entry = hosted[key], entry.snapshot === snapshot else { return }
        entry.batches -= 1
        if let pool { entry.idlePools[poolKey, default: []].append(pool) }
        hosted[key] = entry
    }

    // MARK: Listing and deleting

    func summaries() -> [(key: String, epoch: UInt64, size: Int, maxSize: Int)] {
        hosted.sorted { $0.key < $1.key }.map { ($0.key, $0.value.epoch, $0.value.snapshot.size, $0.value.snapshot.maxSize) }
    }

    /// The snapshot held under `key` and its epoch (tests look inside a server with this).
    func hosted(_ key: String) -> (snapshot: Snapshot, epoch: UInt64)? {
        hosted[key].map { ($0.snapshot, $0.epoch) }
    }

    func delete(key: String) -> Bool {
        for stagedKey in staged.keys where stagedKey.key == key { staged[stagedKey] = nil }
        return hosted.removeValue(forKey: key) != nil
    }
}

/// The server does not hold the snapshot at the epoch the caller assumed (FAILED_PRECONDITION
/// on the wire): the caller pushes the whole snapshot instead.
struct EpochMismatch: Error, CustomStringConvertible {
    let key: String
    let expected: UInt64
    let held: UInt64?

    var description: String {
        "snapshot \"\(key)\": the caller assumed epoch \(expected), the server holds " + (held.map { "epoch \($0)" } ?? "no such snapshot")
    }
}
