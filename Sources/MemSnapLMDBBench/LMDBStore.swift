#if canImport(Glibc)
import Glibc
#endif
import CLMDB
import MemSnap

/// An LMDB environment holding one 4 KiB value per page, keyed by page number: the other side
/// of `memsnap bench arena`.
///
/// Ownership: owns the environment (closed on deinit). Thread safety: none.
final class LMDBStore {
    private var environment: OpaquePointer?
    private var database: MDB_dbi = 0

    /// Creates the store in the existing directory `path` with `pages` zeroed values.
    init(path: String, pages: Int) throws(MemSnapError) {
        try check(mdb_env_create(&environment), "mdb_env_create")
        // A 4 KiB value takes a two-page overflow run, and copy-on-write needs room for new runs.
        try check(mdb_env_set_mapsize(environment, pages * Page.size * 6 + (256 << 20)), "mdb_env_set_mapsize")
        try check(mdb_env_open(environment, path, 0, 0o644), "mdb_env_open")
        var transaction: OpaquePointer?
        try check(mdb_txn_begin(environment, nil, 0, &transaction), "mdb_txn_begin")
        try check(mdb_dbi_open(transaction, nil, UInt32(MDB_INTEGERKEY), &database), "mdb_dbi_open")
        var zero = [UInt8](repeating: 0, count: Page.size)
        for page in 0..<pages {
            var key = page
            let status = withUnsafeMutableBytes(of: &key) { keyBytes in
                zero.withUnsafeMutableBytes { valueBytes in
                    var keyValue = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
                    var value = MDB_val(mv_size: valueBytes.count, mv_data: valueBytes.baseAddress)
                    return mdb_put(transaction, database, &keyValue, &value, UInt32(MDB_APPEND))
                }
            }
            try check(status, "mdb_put")
        }
        try check(mdb_txn_commit(transaction), "mdb_txn_commit")
    }

    deinit { mdb_env_close(environment) }

    /// Applies 8-byte updates (slot = byte offset / 8) in one write transaction and commits it.
    /// - Returns: the seconds of the whole round and of `mdb_txn_commit` alone.
    func update(_ updates: [(slot: Int, value: UInt64)]) throws(MemSnapError) -> (round: Double, commit: Double) {
        let start = monotonicSeconds()
        var transaction: OpaquePointer?
        try check(mdb_txn_begin(environment, nil, 0, &transaction), "mdb_txn_begin")
        for update in updates {
            var key = update.slot * 8 / Page.size
            var current = MDB_val()
            let status = withUnsafeMutableBytes(of: &key) { keyBytes -> (Int32, String) in
                var keyValue = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
                let found = mdb_get(transaction, database, &keyValue, &current)
                guard found == 0 else { return (found, "mdb_get") }
                var copy = [UInt8](UnsafeRawBufferPointer(start: current.mv_data, count: current.mv_size))
                guard copy.count == Page.size else { return (MDB_CORRUPTED, "mdb_get (a value is not one page)") }
                copy.withUnsafeMutableBytes { $0.storeBytes(of: update.value, toByteOffset: (update.slot * 8) % Page.size, as: UInt64.self) }
                return copy.withUnsafeMutableBytes { valueBytes in
                    var value = MDB_val(mv_size: valueBytes.count, mv_data: valueBytes.baseAddress)
                    return (mdb_put(transaction, database, &keyValue, &value, 0), "mdb_put")
                }
            }
            try check(status.0, status.1)
        }
        let commitStart = monotonicSeconds()
        try check(mdb_txn_commit(transaction), "mdb_txn_commit")
        let end = monotonicSeconds()
        return (end - start, end - commitStart)
    }

    private func check(_ status: Int32, _ call: String) throws(MemSnapError) {
        guard status == 0 else {
            throw MemSnapError("LMDB \(call)", .invalidArgument(String(cString: mdb_strerror(status))))
        }
    }
}

/// CLOCK_MONOTONIC in seconds.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
