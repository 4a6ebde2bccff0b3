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
        guard access(path, F_OK) != 0 else { throw ValidationError("\(path) exists") }
        let arena = try Arena.open(path: path, capacity: capacity)
        let statistics = arena.statistics
        try arena.close()
        print("created \(path): capacity \(ByteCount(statistics.capacity)), allocator metadata \(ByteCount(statistics.usedBytes))")
    }
}

struct ArenaInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Describe an arena (recovering it first if needed).")

    @Argument(help: "The arena file.")
    var path: String

    func run() throws {
        let arena = try Arena.open(path: path, capacity: 0, configuration: .init(tracking: .explicit))
        defer { try? arena.close() }
        let statistics = arena.statistics
        print("\(path): memsnap arena")
        print("capacity \(ByteCount(statistics.capacity)), used \(ByteCount(statistics.usedBytes)), "
              + "\(statistics.allocations) allocations of \(ByteCount(statistics.allocatedBytes))")
        print("commit \(arena.commitCounter), epoch \(arena.epoch), event \(arena.event)")
        print("recorded base 0x\(String(arena.recordedBase, radix: 16)), mapped there: \(arena.isAtRecordedBase ? "yes" : "no")")
        for (index, root) in arena.committedRoots.enumerated() where root != 0 { print("  root \(index): \(root)") }
    }
}

struct ArenaCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check", abstract: "Check every allocator structure of an arena.")

    @Argument(help: "The arena file.")
    var path: String

    func run() throws {
        let arena = try Arena.open(path: path, capacity: 0, configuration: .init(tracking: .explicit))
        defer { try? arena.close() }
        let counted = try arena.check()
        print("\(path): ok, \(counted.allocations) allocations of \(ByteCount(counted.bytes)), commit \(arena.commitCounter)")
    }
}

struct ArenaCompactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "compact", abstract: "Give the disk space of free pages back (hole punching).")

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

    @Option(help: "Kill-and-check cycles.")
    var cycles: Int = 1000

    @Option(help: "Longest time a writer runs before it is killed, in milliseconds.")
    var maxMilliseconds: Int = 100

    func run() throws {
        if access(path, F_OK) != 0 { try ArenaSoak.create(path) }
        do {  // refuse an arena soak did not create before starting any writer on it
            let arena = try Arena.open(path: path, capacity: 0, configuration: .init(tracking: .explicit))
            defer { try? arena.close() }
            _ = try ArenaSoak.problems(arena)
        }
        var random = SystemRandomNumberGenerator()
        var lastStep = 0
        let start = Stopwatch.now()
        for cycle in 1...max(1, cycles) {
            let writer = Process()
            writer.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            writer.arguments = ["arena", "soak-writer", path]
            try writer.run()
            usleep(UInt32(1000 * (5 + Int(random.next() % UInt64(max(1, maxMilliseconds - 5))))))
            kill(writer.processIdentifier, SIGKILL)
            writer.waitUntilExit()
            let arena = try Arena.open(path: path, capacity: 0, configuration: .init(tracking: .explicit))
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
