#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// A joinable POSIX thread running one closure: for the work that must not run on Swift
/// concurrency's cooperative pool (fault handlers that block, workers that fault on purpose).
///
/// Ownership: the thread must be joined exactly once; `join()` does it and is idempotent.
/// Thread safety: `join` may be called from any one thread other than the spawned one.
package final class OSThread: @unchecked Sendable {
    private var handle: pthread_t
    private var joined = false

    /// Starts `body` on a new thread.
    /// - Throws: `.systemCall("pthread_create", ...)`, e.g. EAGAIN when out of threads.
    package init(name: String, _ body: @escaping @Sendable () -> Void) throws(MemSnapError) {
        let context = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            box.body()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Box>.fromOpaque(context).release()
            Glibc.errno = status
            throw MemSnapError.systemCall("pthread_create", during: "start thread \"\(name)\"")
        }
        handle = thread
        // Linux limits thread names to 15 bytes; longer ones are refused, so cut them.
        _ = memsnap_thread_set_name(thread, String(decoding: name.utf8.prefix(15), as: UTF8.self))
    }

    /// Waits for the thread to finish.
    package func join() {
        guard !joined else { return }
        joined = true
        pthread_join(handle, nil)
    }

    deinit {
        if !joined { pthread_detach(handle) }
    }

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}
