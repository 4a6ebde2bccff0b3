#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("WorkerThreadPool: threads started once, woken every round")
struct WorkerThreadPoolTests {
    @Test("each round calls the task once per index, each on its own thread, and returns after all of them")
    func oneCallPerIndexPerRound() throws {
        let pool = try WorkerThreadPool(count: 8, name: "test-pool")
        let calls = Locked<[Int: [pid_t]]>([:])
        for _ in 0..<5 {
            let finished = Locked(0)
            pool.run { index in
                calls.withLock { $0[index, default: []].append(pid_t(memsnap_gettid())) }
                finished.withLock { $0 += 1 }
            }
            // `run` returned: every task of the round has returned.
            #expect(finished.withLock { $0 } == 8)
        }
        let byIndex = calls.withLock { $0 }
        #expect(byIndex.keys.sorted() == Array(0..<8))
        for (_, threads) in byIndex {
            #expect(threads.count == 5)
            // Index i runs on the same OS thread every round.
            #expect(Set(threads).count == 1)
        }
        // Eight different threads, none of them the caller's.
        let threads = Set(byIndex.values.compactMap(\.first))
        #expect(threads.count == 8)
        #expect(!threads.contains(pid_t(memsnap_gettid())))
    }

    @Test("tasks of one round run at the same time: one can wait for another")
    func tasksRunConcurrently() throws {
        let pool = try WorkerThreadPool(count: 2, name: "test-pool")
        let arrived = Locked(0)
        pool.run { _ in
            arrived.withLock { $0 += 1 }
            // Each waits until both have arrived, which needs both running at once.
            while arrived.withLock({ $0 }) < 2 { sched_yield() }
        }
        #expect(arrived.withLock { $0 } == 2)
    }

    @Test("releasing the pool stops and joins its threads")
    func releaseJoinsThreads() throws {
        let threads = Locked<[pid_t]>([])
        // A thread-specific value whose destructor counts: destructors run as a thread exits,
        // before a join of it can return.
        let exited = Locked(0)
        var created = pthread_key_t()
        try #require(pthread_key_create(&created) { value in
            guard let value else { return }
            Unmanaged<Locked<Int>>.fromOpaque(value).takeUnretainedValue().withLock { $0 += 1 }
        } == 0)
        let key = created
        defer { pthread_key_delete(key) }
        do {
            let pool = try WorkerThreadPool(count: 6, name: "test-pool")
            pool.run { _ in
                threads.withLock { $0.append(pid_t(memsnap_gettid())) }
                pthread_setspecific(key, Unmanaged.passUnretained(exited).toOpaque())
            }
            for thread in threads.withLock({ $0 }) { #expect(access("/proc/self/task/\(thread)", F_OK) == 0) }
            #expect(exited.withLock { $0 } == 0)
        }
        // The deinit joined them: every thread has exited.
        #expect(exited.withLock { $0 } == 6)
        // pthread_join returns once the kernel clears a thread's id, early in its exit; its /proc
        // entry goes when the kernel releases it, a little later (much later under a debugger).
        let ended = threads.withLock { $0 }
        #expect(ended.count == 6)
        var remaining = ended
        for _ in 0..<1000 where !remaining.isEmpty {
            remaining.removeAll { access("/proc/self/task/\($0)", F_OK) != 0 }
            if !remaining.isEmpty { usleep(5_000) }
        }
        #expect(remaining.isEmpty, "threads still listed 5 s after the pool was released: \(remaining)")
    }

    @Test("a pool needs at least one thread")
    func refusesZeroThreads() {
        expectReason(.invalidArgument("need at least one thread")) { () throws(MemSnapError) in
            _ = try WorkerThreadPool(count: 0, name: "test-pool")
        }
    }
}
