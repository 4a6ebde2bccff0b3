#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// A child process started by posix_spawn(3) and watched through a pidfd (pidfd_open, Linux
/// 5.3; waitid(P_PIDFD), 5.4): how memsnap's command line (benchmarks, the arena soak) and its
/// tests start other programs.
///
/// Why not Foundation's `Process`: on Linux it shares each child's state (`isRunning`, the run
/// loop source) between a manager thread, which reaps the child from a run loop, and the
/// caller's thread, in plain properties. Reading `terminationStatus` right after
/// `waitUntilExit()` can fail its "task still running" precondition, and the manager thread's
/// run loop work races with `waitUntilExit()` (swift-corelibs-foundation issue 4589, pull
/// requests 3126 and 4740). Here the caller's thread reaps the child with one waitid(2) and the
/// result is kept under a lock; signals go through the pidfd, so a signal can never reach another
/// process that was given the child's number after it was reaped.
///
/// The child gets `executable` as argv[0] and `arguments` after it; `environment` (this
/// process's when nil); `directory` as its working directory (this process's when nil); its
/// standard streams as asked; no other descriptor (every descriptor from 3 up is closed in the
/// child); an empty signal mask and every signal at its default action (so a signal this
/// process ignores, such as SIGPIPE, is not ignored in the child). It stays in this process's
/// process group (Foundation's `Process` makes a new one), so a Ctrl-C at the terminal reaches
/// it too.
///
/// The pidfd is opened right after the spawn. If something else in this process reaps children
/// it did not start (SIGCHLD set to SIG_IGN, a wait for any child), a child that ends within
/// that instant is gone before it can be watched: `init` then throws ESRCH from pidfd_open.
///
/// Ownership: owns the pidfd and this process's ends of the pipes it made. `deinit` closes them,
/// and first kills (SIGKILL) and reaps a child still running, so that neither a zombie nor an
/// orphan outlives the value.
/// Thread safety: every method may be called from any thread. Reading the output consumes it:
/// one reader at a time gets a coherent stream (concurrent readers are serialised, each getting
/// whole chunks). Writes to the input are serialised too.
package final class ChildProcess: Sendable {
    /// How a child ended.
    package enum Termination: Equatable, Sendable, CustomStringConvertible {
        /// exit(status) or a return from main (status 0 to 255).
        case exited(Int32)
        /// Ended by this signal (with or without a core dump).
        case signaled(Int32)
        /// Ended, but something else in this process reaped it first (a wait for any child, or
        /// SIGCHLD set to SIG_IGN): its status is lost.
        case reapedElsewhere

        /// The exit status, nil if the child did not exit by itself.
        package var exitStatus: Int32? {
            if case let .exited(status) = self { return status }
            return nil
        }

        package var description: String {
            switch self {
            case let .exited(status): return "exited with status \(status)"
            case let .signaled(signal): return "killed by signal \(signal)"
            case .reapedElsewhere: return "ended (reaped elsewhere, status unknown)"
            }
        }
    }

    /// Where a standard stream of the child goes.
    package enum Stream: Sendable, Equatable {
        /// This process's own descriptor (0, 1 or 2).
        case inherit
        /// /dev/null.
        case null
        /// A pipe to this process: `writeInput` and `closeInput` for the input, the `read...`
        /// methods for the output. The standard error's pipe is the output's (one pipe, both
        /// streams interleaved, as with `.standardOutput`).
        case pipe
        /// For the standard error only: the same descriptor as the standard output, so that
        /// both interleave as written (in the pipe, if the output is `.pipe`).
        case standardOutput
    }

    /// The child's process id. Valid for signals only through this value (`signal(_:)`): once
    /// the child is reaped the number may be given to another process.
    package let processIdentifier: pid_t
    private let pidfd: Int32
    /// This process's end of the child's standard input, -1 if not `.pipe` or closed.
    private let input: Locked<Int32>
    /// This process's end of the child's standard output, -1 if not `.pipe`; bytes read from it
    /// but not yet returned (a partial line), and whether it reached its end.
    private let output: Locked<OutputState>
    private let ended = Locked<Termination?>(nil)

    private struct OutputState {
        var descriptor: Int32
        var pending: [UInt8] = []
        var ended = false
    }

    /// Starts `executable` (a path, no search of PATH; a relative one is taken from `directory`
    /// when that is given). `environment` nil passes this process's environment as it is.
    /// - Throws: `.systemCall("posix_spawn", errno)` when the child cannot be started (ENOENT:
    ///   no such executable, EACCES: not executable, E2BIG: arguments too long; the child's
    ///   exec failure is reported here, not as an exit status); `.systemCall` for pipe2,
    ///   pidfd_open (ENOSYS before Linux 5.3; ESRCH, see above; the child is otherwise killed
    ///   and reaped) or a spawn attribute; `.unavailable` before Linux 5.4 (the child is killed
    ///   and reaped); `.invalidArgument` for `.standardOutput` given as anything but the
    ///   standard error, or a NUL byte inside an argument or the environment.
    package init(
        executable: String, arguments: [String], environment: [String: String]? = nil, directory: String? = nil,
        standardInput: Stream = .inherit, standardOutput: Stream = .inherit, standardError: Stream = .inherit
    ) throws(MemSnapError) {
        let operation = "start \(executable)"
        guard standardInput != .standardOutput, standardOutput != .standardOutput else {
            throw MemSnapError(operation, .invalidArgument("only the standard error can go to the standard output"))
        }
        let environmentEntries = (environment ?? [:]).map { "\($0.key)=\($0.value)" }.sorted()
        for text in [executable] + arguments + environmentEntries + (directory.map { [$0] } ?? []) where text.utf8.contains(0) {
            throw MemSnapError(operation, .invalidArgument("an argument, path or environment entry holds a NUL byte"))
        }

        // The pipes: index 0 is read, 1 is write. The child's ends are closed here after the
        // spawn; ours are kept (and closed on every error path).
        var inputPipe: [Int32] = [-1, -1]
        var outputPipe: [Int32] = [-1, -1]
        func closeAll(_ descriptors: [Int32]) { for descriptor in descriptors where descriptor >= 0 { _ = Glibc.close(descriptor) } }
        if standardInput == .pipe {
            guard memsnap_pipe_cloexec(&inputPipe) == 0 else { throw MemSnapError.systemCall("pipe2", during: operation) }
        }
        if standardOutput == .pipe || standardError == .pipe {
            guard memsnap_pipe_cloexec(&outputPipe) == 0 else {
                let error = MemSnapError.systemCall("pipe2", during: operation)
                closeAll(inputPipe)
                throw error
            }
        }

        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        var setupError: Int32 = 0
        func record(_ result: Int32) { if setupError == 0 && result != 0 { setupError = result } }
        func route(_ stream: Stream, to target: Int32, pipeEnd: Int32) {
            switch stream {
            case .inherit: break
            case .null: record(posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0))
            case .pipe: record(posix_spawn_file_actions_adddup2(&actions, pipeEnd, target))
            case .standardOutput: record(posix_spawn_file_actions_adddup2(&actions, 1, target))
            }
        }
        route(standardInput, to: 0, pipeEnd: inputPipe[0])
        route(standardOutput, to: 1, pipeEnd: outputPipe[1])
        route(standardError, to: 2, pipeEnd: outputPipe[1])
        record(memsnap_spawn_close_from(&actions, 3))
        if let directory { record(memsnap_spawn_change_directory(&actions, directory)) }
        var noSignals = sigset_t()
        var everySignal = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&everySignal)
        record(posix_spawnattr_setsigmask(&attributes, &noSignals))
        record(posix_spawnattr_setsigdefault(&attributes, &everySignal))
        record(posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)))
        guard setupError == 0 else {
            closeAll(inputPipe + outputPipe)
            throw MemSnapError(operation, .systemCall("posix_spawn_file_actions", Errno(rawValue: setupError)))
        }

        let argumentStrings = ([executable] + arguments).map { strdup($0) }
        let environmentStrings = environmentEntries.map { strdup($0) }
        defer {
            for string in argumentStrings { free(string) }
            for string in environmentStrings { free(string) }
        }
        guard !argumentStrings.contains(nil), !environmentStrings.contains(nil) else {
            closeAll(inputPipe + outputPipe)
            throw MemSnapError(operation, .systemCall("strdup", Errno(rawValue: ENOMEM)))
        }
        var pid: pid_t = 0
        var argv = argumentStrings + [nil]
        var envp = environmentStrings + [nil]
        let spawnResult = environment == nil
            ? posix_spawn(&pid, executable, &actions, &attributes, &argv, environ)
            : posix_spawn(&pid, executable, &actions, &attributes, &argv, &envp)
        // The child's ends belong to the child now (or to nobody, if the spawn failed).
        closeAll([inputPipe[0], outputPipe[1]])
        guard spawnResult == 0 else {
            closeAll([inputPipe[1], outputPipe[0]])
            throw MemSnapError(operation, .systemCall("posix_spawn", Errno(rawValue: spawnResult)))
        }
        let descriptor = memsnap_pidfd_open(pid)
        guard descriptor >= 0 else {
            let error = MemSnapError.systemCall("pidfd_open", during: operation)
            // ESRCH: the child already ended and something else reaped it (SIGCHLD ignored): its
            // number may be another process's by now, so no kill.
            if error.errno != .noSuchProcess { Self.killAndReap(pid) }
            closeAll([inputPipe[1], outputPipe[0]])
            throw error
        }
        // One wait that cannot block, which also tells whether the kernel reaps through a pidfd.
        let first = Self.reapIfEnded(descriptor)
        if case .failure(.invalidArgument) = first {
            _ = memsnap_pidfd_send_signal(descriptor, SIGKILL)
            Self.killAndReap(pid)
            closeAll([descriptor, inputPipe[1], outputPipe[0]])
            throw MemSnapError(operation, .unavailable("waiting for a child through a pidfd needs Linux 5.4"))
        }
        processIdentifier = pid
        pidfd = descriptor
        input = Locked(inputPipe[1])
        output = Locked(OutputState(descriptor: outputPipe[0]))
        if case let .success(termination?) = first { ended.withLock { $0 = termination } }
    }

    /// waitid(P_PIDFD, WNOHANG) of the child behind `pidfd`: how it ended (it is now reaped),
    /// nil while it runs, or the errno of a failed wait.
    private static func reapIfEnded(_ pidfd: Int32) -> Result<Termination?, Errno> {
        var reaped: Int32 = 0
        var code: Int32 = 0
        var status: Int32 = 0
        switch valueOrErrno({ memsnap_pidfd_wait(pidfd, 1, &reaped, &code, &status) }) {
        case let .failure(errno): return .failure(errno)
        case .success: return .success(reaped == 0 ? nil : code == CLD_EXITED ? .exited(status) : .signaled(status))
        }
    }

    /// SIGKILL to `pid` and a wait for it: for a child not (yet) watched through a pidfd, which
    /// nothing else has reaped, so its number is still its own.
    private static func killAndReap(_ pid: pid_t) {
        _ = kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
    }

    deinit {
        if reap(blocking: false) == nil {
            _ = memsnap_pidfd_send_signal(pidfd, SIGKILL)
            _ = reap(blocking: true)
        }
        _ = Glibc.close(pidfd)
        input.withLock { if $0 >= 0 { _ = Glibc.close($0) } }
        output.withLock { if $0.descriptor >= 0 { _ = Glibc.close($0.descriptor) } }
    }

    // MARK: Ending

    /// Sends `signal` to the child; nothing once it has been reaped (the pidfd never reaches
    /// another process). Errors (ESRCH after the reap, EINVAL for a number that is no signal) are
    /// ignored: there is nobody left to tell, or nothing to do.
    package func signal(_ signal: Int32) {
        _ = memsnap_pidfd_send_signal(pidfd, signal)
    }

    /// How the child ended, nil while it runs. Reaps it if it has ended. Never blocks.
    package var termination: Termination? { reap(blocking: false) }

    /// Whether the child still runs (false once it has ended, reaped or not).
    package var isRunning: Bool { termination == nil }

    /// Waits for the child to end (reaping it) and returns how it ended.
    package func wait() -> Termination {
        // reap(blocking: true) returns nil only if poll(2) fails for another reason than EINTR,
        // which it cannot for a valid descriptor; never spin on it.
        while true {
            if let ended = reap(blocking: true) { return ended }
            usleep(1_000)
        }
    }

    /// `wait()` for at most `timeout`; nil if the child still runs then.
    package func wait(timeout: Duration) -> Termination? {
        let deadline = Self.deadline(after: timeout)
        while true {
            if let ended = reap(blocking: false) { return ended }
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else { return nil }
            _ = Self.poll([pidfd], timeout: left)
        }
    }

    /// Reaps the child if it has ended; with `blocking`, first waits for that (without holding
    /// the lock, so that other threads can still ask). The result is kept: later calls return it.
    private func reap(blocking: Bool) -> Termination? {
        if let known = ended.withLock({ $0 }) { return known }
        if blocking { _ = Self.poll([pidfd], timeout: nil) }
        return ended.withLock { ended -> Termination? in
            if let ended { return ended }
            switch Self.reapIfEnded(pidfd) {
            case let .success(termination): ended = termination
            // ECHILD: someone else reaped it; any other error leaves it for the next call.
            case .failure(.noChildProcess): ended = .reapedElsewhere
            case .failure: break
            }
            return ended
        }
    }

    // MARK: Standard input

    /// Writes all of `bytes` to the child's standard input (a `.pipe`), blocking while the pipe
    /// is full (`closeInput()` from another thread waits for it too). SIGPIPE is blocked on the
    /// calling thread meanwhile: a child that closed its input is an error, not a signal.
    /// - Throws: `.systemCall("write", EPIPE)` once the child has closed its input (or ended);
    ///   `.invalidArgument` if the input is not a pipe or was closed by `closeInput()`.
    package func writeInput(_ bytes: [UInt8]) throws(MemSnapError) {
        try input.withLock { (descriptor: inout Int32) throws(MemSnapError) in
            guard descriptor >= 0 else {
                throw MemSnapError("write to the input of process \(processIdentifier)",
                                   .invalidArgument("its input is not an open pipe"))
            }
            let open = descriptor
            // A write to a pipe without a reader raises SIGPIPE for the writing thread: blocked
            // here for the write, and consumed if the write raised it, so that the caller gets
            // EPIPE, not the death of its process. One already pending stays pending.
            var pipeSignal = sigset_t()
            sigemptyset(&pipeSignal)
            sigaddset(&pipeSignal, SIGPIPE)
            var pending = sigset_t()
            sigpending(&pending)
            let alreadyPending = sigismember(&pending, SIGPIPE) == 1
            var previousMask = sigset_t()
            pthread_sigmask(SIG_BLOCK, &pipeSignal, &previousMask)
            defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }
            let failure = bytes.withUnsafeBytes { buffer -> Errno? in
                guard let base = buffer.baseAddress else { return nil }
                var written = 0
                while written < buffer.count {
                    switch valueOrErrno({ Glibc.write(open, base + written, buffer.count - written) }) {
                    case let .success(count): written += count
                    case let .failure(errno): return errno
                    }
                }
                return nil
            }
            if failure == .brokenPipe && !alreadyPending {
                var noWait = timespec(tv_sec: 0, tv_nsec: 0)
                while sigtimedwait(&pipeSignal, nil, &noWait) == -1 && errno == EINTR {}
            }
            if let failure {
                throw MemSnapError("write to the input of process \(processIdentifier)", .systemCall("write", failure))
            }
        }
    }

    /// Closes the child's standard input (it reads end of file). Idempotent.
    package func closeInput() {
        input.withLock { descriptor in
            if descriptor >= 0 { _ = Glibc.close(descriptor) }
            descriptor = -1
        }
    }

    // MARK: Standard output

    /// The next line the child wrote to its output pipe, without its newline. Nil when no whole
    /// line came within `timeout` (nil: no limit; counted from when the reader has the output to
    /// itself, see the type's thread safety) or the output ended first (the child closed it,
    /// usually by ending); the bytes of a partial line stay for the next read.
    /// - Throws: `.systemCall("read", ...)` if reading the pipe fails; `.invalidArgument` if
    ///   the output is not a pipe.
    package func readOutputLine(timeout: Duration? = nil) throws(MemSnapError) -> String? {
        let deadline = timeout.map { Self.deadline(after: $0) }
        return try output.withLock { (state: inout OutputState) throws(MemSnapError) -> String? in
            while true {
                if let newline = state.pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: state.pending[..<newline], as: UTF8.self)
                    state.pending.removeSubrange(...newline)
                    return line
                }
                guard !state.ended else { return nil }
                let left = deadline.map { ContinuousClock.now.duration(to: $0) }
                if let left, left <= .zero { return nil }
                guard try readChunk(&state, timeout: left) else { return nil }
            }
        }
    }

    /// Everything the child writes to its output pipe until it ends (and, for at most a second
    /// more, until the pipe's end of file, which a process the child started may delay); the
    /// child is killed (SIGKILL) if it still runs `timeout` after the call. Also reaps it.
    /// - Returns: how it ended, its output (any partial line left by `readOutputLine` first),
    ///   and whether it still ran at the deadline (and was killed).
    /// - Throws: as `readOutputLine(timeout:)`; the child is then still owned (deinit kills it).
    package func collectOutput(killingAfter timeout: Duration) throws(MemSnapError)
        -> (termination: Termination, output: [UInt8], timedOut: Bool)
    {
        let deadline = Self.deadline(after: timeout)
        var timedOut = false
        let bytes = try output.withLock { (state: inout OutputState) throws(MemSnapError) -> [UInt8] in
            try requirePipe(state)
            // Until the child ends: read what it writes, and kill it at the deadline.
            while reap(blocking: false) == nil {
                let left = ContinuousClock.now.duration(to: deadline)
                if left <= .zero {
                    if !timedOut {
                        timedOut = true
                        signal(SIGKILL)
                    }
                    _ = Self.poll([pidfd], timeout: .milliseconds(100))
                } else if state.ended {
                    // It closed its output and runs on.
                    _ = Self.poll([pidfd], timeout: left)
                } else if Self.poll([state.descriptor, pidfd], timeout: left) == 0 {
                    _ = try readChunk(&state, timeout: .zero)
                }
            }
            // It ended, so what it wrote is in the pipe: read to end of file, but for a second at
            // most (a process it started may hold the pipe open, and even keep writing).
            let drainDeadline = ContinuousClock.now.advanced(by: .seconds(1))
            while !state.ended {
                let left = ContinuousClock.now.duration(to: drainDeadline)
                guard left > .zero, try readChunk(&state, timeout: min(left, .milliseconds(100))) else { break }
            }
            defer { state.pending = [] }
            return state.pending
        }
        return (wait(), bytes, timedOut)
    }

    /// - Throws: `.invalidArgument` if the child's output is not a pipe.
    private func requirePipe(_ state: OutputState) throws(MemSnapError) {
        guard state.descriptor < 0 else { return }
        throw MemSnapError("read the output of process \(processIdentifier)", .invalidArgument("its output is not a pipe"))
    }

    /// Reads what the pipe has (waiting up to `timeout`, nil: no limit) into `state.pending`;
    /// sets `state.ended` at end of file. Returns whether bytes came or the output ended.
    private func readChunk(_ state: inout OutputState, timeout: Duration?) throws(MemSnapError) -> Bool {
        try requirePipe(state)
        let operation = "read the output of process \(processIdentifier)"
        guard Self.poll([state.descriptor], timeout: timeout) != nil else { return false }
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let descriptor = state.descriptor
        let result = chunk.withUnsafeMutableBytes { buffer in valueOrErrno { Glibc.read(descriptor, buffer.baseAddress, buffer.count) } }
        let count: Int
        switch result {
        case let .success(read): count = read
        case let .failure(errno): throw MemSnapError(operation, .systemCall("read", errno))
        }
        if count == 0 {
            state.ended = true
        } else {
            state.pending += chunk[..<count]
        }
        return true
    }

    /// `left` for poll(2): rounded up, so that a wait never ends before its deadline; a day at
    /// most per call (callers loop), so the arithmetic cannot overflow. A deadline just passed
    /// has 0 seconds and negative attoseconds: it must give 0, not -1 (which is "forever").
    private static func milliseconds(_ left: Duration) -> Int32 {
        if left <= .zero { return 0 }
        if left >= .seconds(86_400) { return 86_400_000 }
        let (seconds, attoseconds) = left.components
        return Int32(seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    /// Now plus `timeout`, with `timeout` taken as 0 if negative and as 30 years at most, so
    /// that no caller's value can overflow the clock's arithmetic.
    private static func deadline(after timeout: Duration) -> ContinuousClock.Instant {
        ContinuousClock.now.advanced(by: min(max(timeout, .zero), .seconds(1_000_000_000)))
    }

    /// poll(2) of `descriptors` for input (or hang-up/error) within `timeout` (nil: no limit),
    /// repeated on EINTR. Returns the index of the first one ready, nil when the time is up (or
    /// poll fails otherwise, which it cannot for valid descriptors).
    private static func poll(_ descriptors: [Int32], timeout: Duration?) -> Int? {
        let deadline = timeout.map { Self.deadline(after: $0) }
        var entries = descriptors.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while true {
            let wait = deadline.map { Self.milliseconds(ContinuousClock.now.duration(to: $0)) } ?? -1
            let ready = Glibc.poll(&entries, nfds_t(entries.count), wait)
            if ready > 0 { return entries.firstIndex { $0.revents != 0 } }
            if ready == 0 || errno != EINTR { return nil }
        }
    }
}
