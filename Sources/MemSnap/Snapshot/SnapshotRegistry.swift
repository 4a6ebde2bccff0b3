/// A thread-safe map from key to `Snapshot`.
///
/// The registry holds one strong reference per key. `delete` drops it: when nothing else holds
/// the snapshot, its memory and memfd are released right there; a worker still holding the
/// snapshot keeps it alive until it lets go.
///
/// Thread safety: every method may be called from any thread; each is atomic.
public final class SnapshotRegistry: Sendable {
    private let snapshots = Locked<[String: Snapshot]>([:])

    public init() {}

    /// Registers `snapshot` under `key`, replacing (and returning) any snapshot already there.
    /// - Throws: `.emptyKey`.
    @discardableResult
    public func register(_ snapshot: Snapshot, as key: String) throws(MemSnapError) -> Snapshot? {
        guard !key.isEmpty else { throw MemSnapError("register snapshot", .emptyKey) }
        return snapshots.withLock { $0.updateValue(snapshot, forKey: key) }
    }

    /// The snapshot registered under `key`.
    /// - Throws: `.emptyKey`; `.notFound` if nothing is registered under it.
    public func snapshot(for key: String) throws(MemSnapError) -> Snapshot {
        guard !key.isEmpty else { throw MemSnapError("get snapshot", .emptyKey) }
        guard let snapshot = snapshots.withLock({ $0[key] }) else {
            throw MemSnapError("get snapshot", .notFound(key: key))
        }
        return snapshot
    }

    /// Whether a snapshot is registered under `key`.
    public func contains(_ key: String) -> Bool {
        snapshots.withLock { $0[key] != nil }
    }

    /// Removes the snapshot under `key` and drops the registry's reference to it.
    /// - Returns: whether one was registered.
    /// - Throws: `.emptyKey`.
    @discardableResult
    public func delete(_ key: String) throws(MemSnapError) -> Bool {
        guard !key.isEmpty else { throw MemSnapError("delete snapshot", .emptyKey) }
        // Release outside the lock: deinit unmaps memory, which need not block other callers.
        let removed = snapshots.withLock { $0.removeValue(forKey: key) }
        return removed != nil
    }

    /// Removes every snapshot.
    public func removeAll() {
        // As in delete: the snapshots are released after the lock is dropped.
        let removed = snapshots.withLock { table in
            defer { table = [:] }
            return table
        }
        withExtendedLifetime(removed) {}
    }

    /// The registered keys, sorted.
    public var keys: [String] {
        snapshots.withLock { Array($0.keys) }.sorted()
    }

    /// The number of registered snapshots.
    public var count: Int {
        snapshots.withLock { $0.count }
    }
}
