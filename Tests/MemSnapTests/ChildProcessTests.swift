#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import SystemPackage
import Testing

/// `ChildProcess`: what the child gets (arguments, environment, directory, streams, descriptors,
/// signals) and how it ends (status, signal, timeout, the owner going away).
@Suite("ChildProcess")
struct ChildProcessTests {
    /// `/bin/sh -c script`, its standard error interleaved with its output in one pipe.
    func shell(_ script: String, environment: [String: String]? = nil, directory: String? = nil,
               input: ChildProcess.Stream = .inherit) throws -> ChildProcess {
        try ChildProcess(executable: "/bin/sh", arguments: ["-c", script], environment: environment, directory: directory,
                         standardInput: input, standardOutput: .pipe, standardError: .standardOutput)
    }

    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test("an exit status and a signal are told apart")
    func exitStatusAndSignal() throws {
        #expect(try shell("exit 7").collectOutput(killingAfter: .seconds(60)).termination == .exited(7))
        #expect(try shell("kill -TERM $$").collectOutput(killingAfter: .seconds(60)).termination == .signaled(SIGTERM))
        #expect(ChildProcess.Termination.exited(7).exitStatus == 7)
        #expect(ChildProcess.Termination.signaled(SIGTERM).exitStatus == nil)
    }

    @Test("output and standard error interleave in one pipe, as written")
    func interleavedOutput() throws {
        let run = try shell("echo one; echo two >&2; echo three").collectOutput(killingAfter: .seconds(60))
        #expect(run.termination == .exited(0))
        #expect(text(run.output) == "one\ntwo\nthree\n")
        #expect(!run.timedOut)
    }

    @Test("the environment given is the whole environment; none given passes this process's")
    func environment() throws {
        let exact = try ChildProcess(executable: "/usr/bin/env", arguments: [], environment: ["ONLY": "1=2"],
                                     standardOutput: .pipe).collectOutput(killingAfter: .seconds(60))
        #expect(text(exact.output) == "ONLY=1=2\n")
        let inherited = try shell("printf %s \"$PATH\"").collectOutput(killingAfter: .seconds(60))
        #expect(text(inherited.output) == ProcessInfo.processInfo.environment["PATH"])
    }

    @Test("arguments arrive unchanged, and the child runs in the directory given")
    func argumentsAndDirectory() throws {
        let arguments = ["", "two words", "quote\"s", "$HOME", "é"]
        let run = try ChildProcess(executable: "/bin/sh", arguments: ["-c", "for a in \"$@\"; do printf '[%s]' \"$a\"; done; pwd", "sh"] + arguments,
                                   directory: "/proc", standardOutput: .pipe).collectOutput(killingAfter: .seconds(60))
        #expect(text(run.output) == arguments.map { "[\($0)]" }.joined() + "/proc\n")
    }

    @Test("a descriptor open here without close-on-exec does not reach the child")
    func descriptorsAreNotInherited() throws {
        let descriptor = open("/proc/self/stat", O_RDONLY)  // deliberately without O_CLOEXEC
        try #require(descriptor >= 3)
        defer { close(descriptor) }
        let run = try shell("if [ -e /proc/self/fd/\(descriptor) ]; then echo inherited; else echo closed; fi")
            .collectOutput(killingAfter: .seconds(60))
        #expect(text(run.output) == "closed\n")
    }

    @Test("the child starts with no blocked signal and none ignored")
    func signalsStartAtTheirDefaults() throws {
        // Blocked on this thread (a spawn copies the calling thread's mask) and ignored in this
        // process: the child must still die of both.
        var usr1 = sigset_t()
        sigemptyset(&usr1)
        sigaddset(&usr1, SIGUSR1)
        var previousMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &usr1, &previousMask)
        let blocked: ChildProcess
        do {
            defer { pthread_sigmask(SIG_SETMASK, &previousMask, nil) }
            blocked = try shell("kill -USR1 $$; echo survived")
        }
        #expect(try blocked.collectOutput(killingAfter: .seconds(60)).termination == .signaled(SIGUSR1))
        // SIGUSR2: nothing else in this test process handles it.
        let previousAction = signal(SIGUSR2, SIG_IGN)
        let ignoredChild: ChildProcess
        do {
            defer { signal(SIGUSR2, previousAction) }
            ignoredChild = try shell("kill -USR2 $$; echo survived")
        }
        let ignored = try ignoredChild.collectOutput(killingAfter: .seconds(60))
        #expect(ignored.termination == .signaled(SIGUSR2), "\(text(ignored.output))")
    }

    @Test("input written to the pipe comes back line by line; closing it ends the child")
    func inputAndLines() throws {
        let cat = try ChildProcess(executable: "/bin/cat", arguments: [], standardInput: .pipe, standardOutput: .pipe)
        try cat.writeInput(Array("hello\nwor".utf8))
        #expect(try cat.readOutputLine(timeout: .seconds(60)) == "hello")
        // No whole line yet: nothing within the timeout, and the partial line is kept.
        #expect(try cat.readOutputLine(timeout: .milliseconds(50)) == nil)
        try cat.writeInput(Array("ld\nlast".utf8))
        #expect(try cat.readOutputLine(timeout: .seconds(60)) == "world")
        cat.closeInput()
        cat.closeInput()
        #expect(throws: MemSnapError.self) { try cat.writeInput([1]) }
        #expect(try cat.readOutputLine() == nil)  // the output ended before a newline
        let rest = try cat.collectOutput(killingAfter: .seconds(60))
        #expect(rest.termination == .exited(0))
        #expect(text(rest.output) == "last")
    }

    @Test("writing to a child that closed its input is EPIPE, not a SIGPIPE for this process")
    func writeAfterTheReaderIsGone() throws {
        let child = try ChildProcess(executable: "/bin/true", arguments: [], standardInput: .pipe)
        #expect(child.wait() == .exited(0))
        #expect(throws: MemSnapError("write to the input of process \(child.processIdentifier)", .systemCall("write", .brokenPipe))) {
            try child.writeInput(Array("nobody reads this".utf8))
        }
        // The signal the write raised was consumed: none is left pending on this thread.
        var pending = sigset_t()
        sigpending(&pending)
        #expect(sigismember(&pending, SIGPIPE) == 0)
    }

    @Test("a process the child started may keep the pipe: the output is collected when the child ends")
    func grandchildHoldingThePipe() throws {
        let run = try shell("sleep 3 & echo parent done").collectOutput(killingAfter: .seconds(60))
        #expect(run.termination == .exited(0))
        #expect(!run.timedOut)
        #expect(text(run.output) == "parent done\n")
    }

    @Test("any timeout is valid: negative is none, huge is no limit")
    func extremeTimeouts() throws {
        let sleeper = try ChildProcess(executable: "/bin/sleep", arguments: ["60"], standardOutput: .pipe)
        #expect(sleeper.wait(timeout: .seconds(-5)) == nil)
        #expect(sleeper.wait(timeout: .nanoseconds(1)) == nil)
        #expect(try sleeper.readOutputLine(timeout: .seconds(-1)) == nil)
        #expect(try sleeper.readOutputLine(timeout: .nanoseconds(1)) == nil)
        sleeper.signal(SIGKILL)
        #expect(sleeper.wait(timeout: .seconds(Int64.max)) == .signaled(SIGKILL))
        let quick = try shell("echo one")
        #expect(try quick.readOutputLine(timeout: .seconds(1e19)) == "one")
        #expect(try quick.collectOutput(killingAfter: .seconds(Int64.max)).termination == .exited(0))
    }

    @Test("a child that outlives the timeout is killed, and its output so far is kept")
    func timeoutKills() throws {
        let run = try shell("echo started; exec sleep 60").collectOutput(killingAfter: .milliseconds(200))
        #expect(run.termination == .signaled(SIGKILL))
        #expect(run.timedOut)
        #expect(text(run.output) == "started\n")
    }

    @Test("a child that closes its output but goes on running is still killed at the timeout")
    func timeoutAfterTheOutputEnds() throws {
        let run = try shell("echo closing; exec >&- 2>&-; exec sleep 60").collectOutput(killingAfter: .milliseconds(300))
        #expect(run.termination == .signaled(SIGKILL))
        #expect(run.timedOut)
        #expect(text(run.output) == "closing\n")
    }

    @Test("waiting with a timeout, signalling, and signalling again after the reap")
    func waitAndSignal() throws {
        let sleeper = try ChildProcess(executable: "/bin/sleep", arguments: ["60"])
        #expect(sleeper.wait(timeout: .milliseconds(50)) == nil)
        #expect(sleeper.isRunning)
        #expect(sleeper.termination == nil)
        sleeper.signal(SIGTERM)
        #expect(sleeper.wait() == .signaled(SIGTERM))
        #expect(!sleeper.isRunning)
        sleeper.signal(SIGKILL)  // reaped: the pidfd reaches nobody
        #expect(sleeper.wait(timeout: .zero) == .signaled(SIGTERM))
    }

    @Test("releasing a running child kills and reaps it: no zombie, no orphan")
    func releaseKillsAndReaps() throws {
        var pid: pid_t = 0
        do {
            let sleeper = try ChildProcess(executable: "/bin/sleep", arguments: ["60"])
            pid = sleeper.processIdentifier
            #expect(kill(pid, 0) == 0)
        }
        // Reaped: the number no longer names a process (not even a zombie).
        #expect(kill(pid, 0) == -1 && errno == ESRCH)
    }

    @Test("a child that cannot start is an error, not an exit status")
    func startFailures() throws {
        #expect(throws: MemSnapError("start /nonexistent/memsnap-child", .systemCall("posix_spawn", .noSuchFileOrDirectory))) {
            try ChildProcess(executable: "/nonexistent/memsnap-child", arguments: [])
        }
        #expect(throws: MemSnapError("start /proc", .systemCall("posix_spawn", .permissionDenied))) {
            try ChildProcess(executable: "/proc", arguments: [])
        }
        #expect(throws: MemSnapError("start /bin/echo", .invalidArgument("an argument, path or environment entry holds a NUL byte"))) {
            try ChildProcess(executable: "/bin/echo", arguments: ["a\u{0}b"])
        }
        #expect(throws: MemSnapError("start /bin/echo", .invalidArgument("only the standard error can go to the standard output"))) {
            try ChildProcess(executable: "/bin/echo", arguments: [], standardOutput: .standardOutput)
        }
        let silent = try ChildProcess(executable: "/bin/echo", arguments: ["x"], standardOutput: .null)
        #expect(throws: MemSnapError("read the output of process \(silent.processIdentifier)", .invalidArgument("its output is not a pipe"))) {
            try silent.readOutputLine()
        }
        #expect(silent.wait() == .exited(0))
    }
}
