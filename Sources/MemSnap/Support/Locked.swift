#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a pthread mutex.
///
/// Used instead of `Synchronization.Mutex`, whose Linux futex implementation is invisible to the
/// thread sanitizer: every access it guards would be reported as a race, drowning real ones.
///
/// Ownership: owns its heap-allocated mutex and destroys it in `deinit`.
/// Thread safety: that is its purpose, so it is `Sendable` when `Value` is (as NIO's
/// `NIOLockedValueBox`): a lock cannot make a non-Sendable value safe to share, since `body` could
/// let a reference to it escape. Not recursive: calling `withLock` from inside `body` deadlocks.
package final class Locked<Value> {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// `body` under the lock if no other thread holds it now; nil, without waiting or calling
    /// `body`, if one does.
    package func withLockIfAvailable<Result, Failure: Error>(
        _ body: (inout Value) throws(Failure) -> Result
    ) throws(Failure) -> Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

// The mutex serialises every access to `value`; see the type's thread-safety note.
extension Locked: @unchecked Sendable where Value: Sendable {}
