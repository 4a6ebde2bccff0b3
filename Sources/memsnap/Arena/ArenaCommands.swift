#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap
import MemSnapArena

struct ArenaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "arena",
        abstract: "Create, inspect, check, compact and crash-test persistent arenas.",
        subcommands: [ArenaCreateCommand.self, ArenaInfoCommand.self, ArenaCheckCommand.self, ArenaCompactCommand.self,
                      ArenaSoakCommand.self, ArenaSoakWriterCommand.self]
    )
}

struct ArenaCreateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Create an empty arena.")

    @Argument(help: "The arena file (its log is PATH-wal).")
    var path: String

    @Option(help: "Heap capacity (fixed at creation; the file is sparse).", transform: parseByteCount)
    var capacity: Int = 1 << 30

    func run() throws {
        let arena = try Arena.create(path: path, capacity: capacity)
        let statistics = try arena.statistics
        try arena.close()
        print("created \(path): capacity \(ByteCount(statistics.capacity)), allocator metadata \(ByteCount(statistics.usedBytes))")
    }
}

struct ArenaInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Describe an arena, as recovered from its last completed sync (read-only: nothing is written).")

    @Argument(help: "The arena file.")
    var path: String

    func run() throws {
        let arena = try Arena.open(path: path, access: .readOnly, configuration: .init(tracking: .explicit))
        defer { try? arena.close() }
        let statistics = try arena.statistics
        print("\(path): memsnap arena")
        print("capacity \(ByteCount(statistics.capacity)), used \(ByteCount(statistics.usedBytes)), "
              + "\(statistics.allocations) allocations of \(ByteCount(statistics.allocatedBytes))")
        print("commit \(arena.commitCounter), epoch \(arena.epoch), event \(arena.event)")
        print("recorded base 0x\(String(arena.recordedBase, radix: 16)), mapped there: \(arena.isAtRecordedBase ? "yes" : "no")")
        for (index, root) in arena.committedRoots.enumerated() where root != 0 { print("  root \(index): \(root)") }
    }
}

struct ArenaCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check", abstract: "Check every allocator structure of an arena (read-only: nothing is written).")

    @Argument(help: "The arena file.")
    var path: String

    func run() throws {
        let arena = try Arena.open(path: path, access: .readOnly, configuration: .init(tracking: .explicit))
        defer { try? arena.close() }
        let counted = try arena.check()
        print("\(path): ok, \(counted.allocations) allocations of \(ByteCount(counted.bytes)), commit \(arena.commitCounter)")
    }
}

struct ArenaCompactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compact", abstract: "Give the disk space of free pages back (hole punching); refused unless the arena passes its check.")

    @Argument(help: "The arena file.")
    var path: String

    func run() throws {
        let (before, after) = try Arena.compact(path: path)
        print("\(path): \(ByteCount(before)) on disk before, \(ByteCount(after)) after")
    }
}

struct ArenaSoakCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Crash-test an arena: run a writer, SIGKILL it at random moments, check every reopen.",
        discussion: "A longer version of the test suite's crash test. PATH is created if missing.")

    @Argument(help: "The arena file to create (or reuse).")
    var path: String

    @Option(help: "Kill-and-check cycles (1 to 1000000).")
    var cycles: Int = 1000

    @Option(help: "Longest time a writer runs before it is killed, in milliseconds (6 to 600000).")
    var maxMilliseconds: Int = 100

    func validate() throws {
        guard (1...1_000_000).contains(cycles) else { throw ValidationError("--cycles must be 1 to 1000000, not \(cycles)") }
        guard (6...600_000).contains(maxMilliseconds) else {
            throw ValidationError("--max-milliseconds must be 6 to 600000, not \(maxMilliseconds)")
        }
    }

    func run() throws {
        var status = stat()
        if lstat(path, &status) != 0 && errno == ENOENT { try ArenaSoak.create(path) }
        do {  // refuse an arena soak did not create before starting any writer on it
            let arena = try Arena.open(path: path, access: .readOnly, configuration: .init(tracking: .explicit))
            defer { try? arena.close() }
            _ = try ArenaSoak.problems(arena)
        }
        var random = SystemRandomNumberGenerator()
        var lastStep = 0
        let start = Stopwatch.now()
        for cycle in 1...cycles {
            let writer = try ChildProcess(executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
                                          arguments: ["arena", "soak-writer", path])
            usleep(useconds_t(1000 * (5 + Int(random.next() % UInt64(maxMilliseconds - 5)))))
            writer.signal(SIGKILL)
            _ = writer.wait()
            let arena = try Arena.open(path: path, access: .readOnly, configuration: .init(tracking: .explicit))
            let step = ArenaSoak.completedStep(arena)
            let problems = try ArenaSoak.problems(arena)
            try arena.close()
            guard problems.isEmpty, step >= lastStep else {
                throw ValidationError("cycle \(cycle), after step \(step) (previously \(lastStep)): \(problems)")
            }
            lastStep = step
            if cycle % 100 == 0 || cycle == cycles {
                print("\(cycle) cycles, \(step) syncs completed, every reopen exact "
                      + "(\(formatDuration(Double(Stopwatch.now() - start) / 1e9)))")
            }
        }
    }
}

struct ArenaSoakWriterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak-writer", abstract: "The writer side of `arena soak` (runs until killed).", shouldDisplay: false)

    @Argument var path: String

    func run() throws {
        try ArenaSoak.runUntilKilled(path)
    }
}
