/// Runs work on a fixed number of OS threads and waits for all of them.
///
/// For CPU-bound batch work whose thread count is part of the contract (checkpoint writers and
/// readers take `--threads N`), which Dispatch's `concurrentPerform` does not let callers choose.
package enum ParallelWork {
    /// Calls `body(worker)` for worker 0..<threads, each on its own thread (worker 0 on the
    /// calling thread), and returns when all have returned.
    /// - Throws: `.systemCall("pthread_create", ...)` if a thread cannot start; the workers that
    ///   did start are waited for first.
    package static func run(threads: Int, _ body: @escaping @Sendable (Int) -> Void) throws(MemSnapError) {
        var started = OSThreadGroup()
        var failure: MemSnapError?
        for worker in 1..<max(1, threads) {
            do {
                try started.start(name: "memsnap-work\(worker)") { body(worker) }
            } catch {
                failure = error
                break
            }
        }
        if failure == nil { body(0) }
        started.joinAll()
        if let failure { throw failure }
    }

    /// Runs `main` on the calling thread while `helper(worker)` runs for worker 1...helpers, each
    /// on its own thread; once `main` returns or throws, calls `stop` and waits for the helpers.
    /// For pipelines whose stages wait for each other (a writer taking, in order, what helpers
    /// encode): `stop` must make every helper return soon (cancel what they wait on).
    /// - Throws: what `main` throws; `.systemCall("pthread_create", ...)` if a helper cannot start
    ///   (then `main` does not run; `stop` is called and the helpers that started are waited for).
    package static func run<Result>(
        helpers: Int, _ helper: @escaping @Sendable (Int) -> Void, stop: () -> Void,
        alongside main: () throws(MemSnapError) -> Result
    ) throws(MemSnapError) -> Result {
        var started = OSThreadGroup()
        var startFailure: MemSnapError?
        for worker in stride(from: 1, through: helpers, by: 1) {
            do {
                try started.start(name: "memsnap-work\(worker)") { helper(worker) }
            } catch {
                startFailure = error
                break
            }
        }
        let outcome: Swift.Result<Result, MemSnapError> =
            if let startFailure { .failure(startFailure) } else { Swift.Result(catching: main) }
        stop()
        started.joinAll()
        return try outcome.get()
    }

    /// Hands out 0..<count to `threads` workers, each index exactly once, lowest first.
    /// Thread safety: `claim()` may be called from any thread (the next index is behind a lock).
    package final class Counter: Sendable {
        private let next = Locked(0)
        private let count: Int
        package init(count: Int) { self.count = count }
        /// The next unclaimed index, or nil when all are taken.
        package func claim() -> Int? {
            next.withLock { value in
                guard value < count else { return nil }
                defer { value += 1 }
                return value
            }
        }
    }
}
