#if canImport(Glibc)
import Glibc
#endif

/// A fixed set of OS threads, started once, that each run one task per round: waking a thread
/// that waits costs a few microseconds, where starting and joining one costs tens (16 threads
/// took 0.5 to 1 ms per round to start and join here; BENCHMARKS.md, "Fork/join rounds").
///
/// `run(_:)` hands `task(index)` to thread `index` for every index at once and returns when all
/// of them have returned. Thread `index` is the same OS thread every round, so work that keeps
/// per-thread state (a worker's memory, its faults) stays on one thread.
///
/// Ownership: owns its threads; they are stopped and joined when the pool is released (an idle
/// thread waits on a condition variable and uses no CPU).
/// Thread safety: `run` may be called from any thread but not concurrently with itself (callers
/// serialise rounds; a second caller would wait for the first round, which is what
/// `SnapshotWorkers` does with its own lock) and never from inside a task (it would wait for
/// its own round forever). The pool must not be released from inside one of its tasks.
package final class WorkerThreadPool: Sendable {
    /// The round handed to the threads, behind `mutex`.
    private final class Rendezvous: @unchecked Sendable {
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        /// Signalled when a round starts or the pool stops.
        let roundStarted = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        /// Signalled when the last task of a round returns.
        let roundFinished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        // Guarded by `mutex`:
        var round: UInt64 = 0
        var task: (@Sendable (Int) -> Void)?
        var unfinished = 0
        var stopping = false

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(roundStarted, nil)
            pthread_cond_init(roundFinished, nil)
        }

        deinit {
            pthread_cond_destroy(roundFinished)
            pthread_cond_destroy(roundStarted)
            pthread_mutex_destroy(mutex)
            roundFinished.deallocate()
            roundStarted.deallocate()
            mutex.deallocate()
        }

        /// A thread's loop: wait for a round newer than the last one it ran, run its task, report.
        func serve(index: Int) {
            var lastRound: UInt64 = 0
            while true {
                pthread_mutex_lock(mutex)
                while round == lastRound && !stopping { pthread_cond_wait(roundStarted, mutex) }
                if stopping {
                    pthread_mutex_unlock(mutex)
                    return
                }
                lastRound = round
                var current = task
                pthread_mutex_unlock(mutex)
                current?(index)
                // Released before the round is reported finished: once `run` returns, no pool
                // thread holds what the task captured (were it the pool's owner, its deinit would
                // otherwise run here, on a thread it must join).
                current = nil
                pthread_mutex_lock(mutex)
                unfinished -= 1
                if unfinished == 0 { pthread_cond_signal(roundFinished) }
                pthread_mutex_unlock(mutex)
            }
        }
    }

    private let rendezvous = Rendezvous()
    private let threads: Locked<[pthread_t]>
    /// How many threads the pool runs: every round calls its task once per index `0..<count`.
    package let count: Int

    /// Starts `count` threads named `"\(name)\(index)"` (cut to Linux's 15 bytes).
    /// - Throws: `.invalidArgument` for a count below 1; `.systemCall("pthread_create", ...)` if a
    ///   thread cannot start (the threads already started are stopped and joined first).
    package init(count: Int, name: String) throws(MemSnapError) {
        guard count >= 1 else {
            throw MemSnapError("start a pool of \(count) threads", .invalidArgument("need at least one thread"))
        }
        self.count = count
        var group = OSThreadGroup()
        let rendezvous = self.rendezvous
        var failure: MemSnapError?
        for index in 0..<count {
            do {
                try group.start(name: "\(name)\(index)") { rendezvous.serve(index: index) }
            } catch {
                failure = error
                break
            }
        }
        threads = Locked(group.releaseHandles())
        if let failure {
            stopAndJoin()
            throw failure
        }
    }

    deinit {
        stopAndJoin()
    }

    /// Calls `task(index)` for every index `0..<count`, each on its own pool thread, all at once,
    /// and returns when every call has returned. `task` is released before `run` returns.
    /// `alongside` runs on the calling thread meanwhile (it would otherwise only wait).
    package func run(_ task: @escaping @Sendable (Int) -> Void, alongside: () -> Void = {}) {
        let shared = rendezvous
        pthread_mutex_lock(shared.mutex)
        shared.task = task
        shared.unfinished = count
        shared.round &+= 1
        pthread_cond_broadcast(shared.roundStarted)
        pthread_mutex_unlock(shared.mutex)
        alongside()
        pthread_mutex_lock(shared.mutex)
        while shared.unfinished > 0 { pthread_cond_wait(shared.roundFinished, shared.mutex) }
        shared.task = nil
        pthread_mutex_unlock(shared.mutex)
    }

    private func stopAndJoin() {
        pthread_mutex_lock(rendezvous.mutex)
        rendezvous.stopping = true
        pthread_cond_broadcast(rendezvous.roundStarted)
        pthread_mutex_unlock(rendezvous.mutex)
        let handles = threads.withLock { handles in
            defer { handles = [] }
            return handles
        }
        for handle in handles { pthread_join(handle, nil) }
    }
}
