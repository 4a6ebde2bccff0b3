import Dispatch
import Foundation
import MemSnap

/// Decodes a whole push's frames on threads of its own while the call's task reads the next
/// messages, so checking, decompressing and copying a frame overlap receiving the next one and
/// use more than one core. At most `window` frames wait or are being decoded: a sender faster
/// than the decoders is slowed by `submit` (and HTTP/2 flow control behind it), and the server
/// never holds more than `window` messages of one push.
///
/// Ownership: owns its threads; they end at `close()` (or deinit), after the frame in hand.
/// Thread safety: `submit` and `drain` are called by one task (the push's handler); the
/// decoder threads are internal.
final class FrameDecodePipeline: @unchecked Sendable {
    private struct State {
        var queue: [Data] = []
        /// Frames queued or being decoded.
        var pending = 0
        var failure: MemSnapError?
        var closed = false
        var roomWaiters: [CheckedContinuation<Void, Never>] = []
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Locked(State())
    private let work = DispatchSemaphore(value: 0)
    private let threads: Int
    private let window: Int

    /// Starts `threads` decoders writing into `push`.
    /// - Throws: `.systemCall("pthread_create", ...)` if a thread cannot start (the ones that
    ///   did are stopped).
    init(push: StagedPush, threads: Int, window: Int) throws(MemSnapError) {
        self.threads = max(1, threads)
        self.window = max(self.threads, window)
        let state = self.state, work = self.work
        for thread in 0..<self.threads {
            do {
                // Detached: `close()` stops the decoders through the shared state.
                try OSThread(name: "memsnap-recv\(thread)") {
                    Self.decode(into: push, state: state, work: work)
                }.detach()
            } catch {
                close(startedThreads: thread)
                throw error
            }
        }
    }

    deinit { close() }

    /// Queues `frame`, after waiting for room in the window.
    /// - Throws: the first decoding failure of this push (a frame that did not verify), at the
    ///   first call after it happened; `.unavailable` once closed.
    func submit(_ frame: Data) async throws(MemSnapError) {
        while true {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let waitForRoom = state.withLock { state in
                    guard state.failure == nil, !state.closed, state.pending >= window else { return false }
                    state.roomWaiters.append(continuation)
                    return true
                }
                if !waitForRoom { continuation.resume() }
            }
            let queued = try state.withLock { (state) throws(MemSnapError) -> Bool in
                if let failure = state.failure { throw failure }
                guard !state.closed else { throw MemSnapError("decode pushed frames", .unavailable("the push was closed")) }
                guard state.pending < window else { return false }
                state.queue.append(frame)
                state.pending += 1
                return true
            }
            if queued {
                work.signal()
                return
            }
        }
    }

    /// Waits until every frame submitted is decoded.
    /// - Throws: the first decoding failure of this push.
    func drain() async throws(MemSnapError) {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = state.withLock { state in
                guard state.pending > 0, !state.closed else { return false }
                state.drainWaiters.append(continuation)
                return true
            }
            if !wait { continuation.resume() }
        }
        try state.withLock { (state) throws(MemSnapError) in
            if let failure = state.failure { throw failure }
            guard !state.closed else { throw MemSnapError("decode pushed frames", .unavailable("the push was closed")) }
        }
    }

    /// Stops the decoders: frames still queued are dropped, the ones in hand finish. Idempotent.
    func close() { close(startedThreads: threads) }

    private func close(startedThreads: Int) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            guard !state.closed else { return [] }
            state.closed = true
            state.pending -= state.queue.count
            state.queue = []
            defer { state.roomWaiters = []; state.drainWaiters = [] }
            return state.roomWaiters + state.drainWaiters
        }
        for _ in 0..<startedThreads { work.signal() }
        for waiter in waiters { waiter.resume() }
    }

    private static func decode(into push: StagedPush, state: Locked<State>, work: DispatchSemaphore) {
        var scratch: [UInt8] = []
        while true {
            work.wait()
            let next = state.withLock { state -> (frame: Data, skip: Bool)? in
                guard !state.closed, !state.queue.isEmpty else { return nil }
                return (state.queue.removeFirst(), state.failure != nil)
            }
            guard let next else { return }
            var failure: MemSnapError?
            if !next.skip {
                do {
                    try next.frame.withUnsafeBytes { bytes in
                        Result { () throws(MemSnapError) in try push.receive(bytes, scratch: &scratch) }
                    }.get()
                } catch {
                    failure = error
                }
            }
            let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.pending -= 1
                if let failure, state.failure == nil { state.failure = failure }
                var waiters: [CheckedContinuation<Void, Never>] = []
                if state.failure != nil {
                    waiters = state.roomWaiters
                    state.roomWaiters = []
                } else if !state.roomWaiters.isEmpty {
                    waiters.append(state.roomWaiters.removeFirst())
                }
                if state.pending == 0 {
                    waiters += state.drainWaiters
                    state.drainWaiters = []
                }
                return waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }
}
