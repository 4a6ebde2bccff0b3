#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// A writer-preferring pthread reader-writer lock.
///
/// Readers run together; a waiting writer blocks new readers, so a steady stream of readers
/// cannot starve the writer that applies diffs at a sync point.
///
/// Ownership: the lock owns its heap-allocated pthread_rwlock_t and destroys it in `deinit`.
/// Thread safety: that is its purpose. It is not recursive: taking it again on the same thread is
/// a programming error that stops the process (glibc reports EDEADLK; carrying on would run the
/// inner section unlocked and then release the outer lock).
final class ReadWriteLock: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        memsnap_rwlock_init_prefer_writer(lock)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withReadLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let status = pthread_rwlock_rdlock(lock)
        precondition(status == 0, "memsnap: read lock failed with \(status): re-entrant use of a locked object")
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func withWriteLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let status = pthread_rwlock_wrlock(lock)
        precondition(status == 0, "memsnap: write lock failed with \(status): re-entrant use of a locked object")
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
