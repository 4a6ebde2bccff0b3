#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// A joinable POSIX thread running one closure: for the work that must not run on Swift
/// concurrency's cooperative pool (fault handlers that block, workers that fault on purpose).
///
/// Ownership: the value owns the thread; `~Copyable`, so exactly one owner can join it. `join()`
/// and `detach()` consume it; a thread dropped without either is detached (it runs to its end
/// and its resources are reclaimed then, never leaked as an unjoined thread).
/// Thread safety: the owner may move it to another thread and join it there, but never from the
/// spawned thread itself.
package struct OSThread: ~Copyable {
    private let handle: pthread_t

    /// Starts `body` on a new thread.
    /// - Throws: `.systemCall("pthread_create", ...)`, e.g. EAGAIN when out of threads.
    package init(name: String, _ body: @escaping @Sendable () -> Void) throws(MemSnapError) {
        handle = try OSThread.start(name: name, body)
    }

    /// Waits for the thread to finish.
    package consuming func join() {
        pthread_join(handle, nil)
        discard self
    }

    /// Lets the thread run to its end unowned: for work that reports its result elsewhere.
    package consuming func detach() {
        pthread_detach(handle)
        discard self
    }

    /// Forgets the thread without joining or detaching it: for a forked child, whose copy of the
    /// handle names a thread that runs only in the parent.
    package consuming func abandonInForkedChild() {
        discard self
    }

    deinit {
        pthread_detach(handle)
    }

    fileprivate static func start(name: String, _ body: @escaping @Sendable () -> Void) throws(MemSnapError) -> pthread_t {
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
        // Linux limits thread names to 15 bytes; longer ones are refused, so cut them.
        _ = memsnap_thread_set_name(thread, String(decoding: name.utf8.prefix(15), as: UTF8.self))
        return thread
    }

    private final class Box {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
}

/// Threads started together and joined together (an array cannot hold `~Copyable` threads).
///
/// Ownership: owns every thread it started; `joinAll()` consumes the group; a group dropped
/// without it detaches its threads, as `OSThread` does.
/// Thread safety: one owner at a time, as `OSThread`.
package struct OSThreadGroup: ~Copyable {
    private var handles: [pthread_t] = []

    package init() {}

    /// How many threads were started.
    package var count: Int { handles.count }

    /// Starts `body` on a new thread of the group.
    /// - Throws: `.systemCall("pthread_create", ...)`; the threads already started stay in the group.
    package mutating func start(name: String, _ body: @escaping @Sendable () -> Void) throws(MemSnapError) {
        handles.append(try OSThread.start(name: name, body))
    }

    /// Waits for every thread of the group to finish.
    package consuming func joinAll() {
        for handle in handles { pthread_join(handle, nil) }
        handles = []
    }

    /// Hands the threads over to a caller that joins them itself: an owner that must join from
    /// a class's deinit, where a `~Copyable` stored value cannot be consumed. Each handle must
    /// then be joined (or detached) exactly once by that caller.
    package consuming func releaseHandles() -> [pthread_t] {
        let released = handles
        handles = []
        return released
    }

    deinit {
        for handle in handles { pthread_detach(handle) }
    }
}
