#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import Testing

@Suite("Arena crash consistency: SIGKILL at random moments, reopen, exactly one completed sync")
struct ArenaCrashTests {
    static let childVariable = "MEMSNAP_ARENA_CRASH_CHILD"
    /// The child's tracking (a `TrackingUnderTest` raw value).
    static let trackingVariable = "MEMSNAP_ARENA_CRASH_TRACKING"
    static let cycles = 200
    /// The child creates PATH + this just before it opens the arena.
    static let readySuffix = ".child-ready"

    /// The soak workload writes without declaring anything: automatic tracking must find it all.
    @Test(arguments: [TrackingUnderTest.wholeHeap, .recentChunks, .recentChunksAdaptive])
    func killingTheWriterAtRandomMomentsAlwaysLeavesTheLastCompletedSync(tracking: TrackingUnderTest) throws {
        let directory = ArenaDirectory()
        try ArenaSoak.create(directory.arena)
        let seed = TestSeed.current("arena crash (\(tracking))")
        var random = SplitMix64(seed: seed)
        var lastStep = 0
        var progressed = 0
        for cycle in 0..<Self.cycles {
            let child = try ChildProcess(
                executable: URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path,
                arguments: ["--testing-library", "swift-testing", "--filter", "arenaCrashChild"],
                environment: ProcessInfo.processInfo.environment.merging(
                    [Self.childVariable: directory.arena, Self.trackingVariable: tracking.rawValue]) { $1 },
                standardOutput: .null, standardError: .null)
            // Time from the child's start-up, which varies tenfold (sanitizers, a busy machine),
            // would leave most kills landing before the first write: wait until it is ready.
            let ready = directory.arena + Self.readySuffix
            let deadline = Date().addingTimeInterval(60)
            while access(ready, F_OK) != 0 && child.isRunning && Date() < deadline { usleep(1_000) }
            unlink(ready)
            usleep(UInt32(5_000 + random.next() % 60_000))  // 5 to 65 ms of opening, writes and syncs
            child.signal(SIGKILL)
            _ = child.wait()
            let arena = try Arena.open(path: directory.arena)
            let step = ArenaSoak.completedStep(arena)
            let problems = try ArenaSoak.problems(arena)
            #expect(problems.isEmpty, "seed \(seed), cycle \(cycle), after step \(step): \(problems)")
            #expect(step >= lastStep, "seed \(seed), cycle \(cycle): a completed sync was lost (\(step) < \(lastStep))")
            if step > lastStep { progressed += 1 }
            lastStep = step
            try arena.close()
            if !problems.isEmpty { break }
        }
        #expect(progressed > Self.cycles / 4, "the child made progress in most cycles (\(progressed) of \(Self.cycles))")
    }

    /// Runs only inside the child: steps and syncs until killed.
    @Test func arenaCrashChild() throws {
        guard let path = ProcessInfo.processInfo.environment[Self.childVariable] else { return }
        close(open(path + Self.readySuffix, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644))
        let tracking = ProcessInfo.processInfo.environment[Self.trackingVariable].flatMap(TrackingUnderTest.init(rawValue:)) ?? .wholeHeap
        var configuration = tracking.configuration
        configuration.checkpointLogBytes = 256 << 10
        try ArenaSoak.runUntilKilled(path, configuration: configuration)
    }
}
