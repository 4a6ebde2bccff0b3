#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

/// A process that forks keeps its trackers in the child. `/proc/self/pagemap` names the process
/// that opened it, so a child scanning through an inherited descriptor would read its parent's
/// page tables. The fork runs in a child test process (this binary, filtered to the test below),
/// away from the parallel runner's threads.
@Suite("trackers in a forked child see the child's memory",
       .enabled(if: DirtyTrackingMode.privateCopies.availability == .available,
                Comment(rawValue: DirtyTrackingMode.privateCopies.availability.description)))
struct ForkedChildTrackingTests {
    static let childVariable = "MEMSNAP_TEST_CHILD"
    static let successMarker = "FORKED-CHILD-TRACKING-OK"

    @Test func aForkedChildCollectsItsOwnWritesAndLeavesItsParentsAlone() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        child.arguments = ["--testing-library", "swift-testing", "--filter", "forkedChildTrackingChild"]
        child.environment = ProcessInfo.processInfo.environment.merging([Self.childVariable: "forked-tracking"]) { $1 }
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        try child.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        #expect(child.terminationStatus == 0, "child output:\n\(text)")
        #expect(text.contains(Self.successMarker), "child output:\n\(text)")
    }

    /// Runs only inside the child test process started above: it forks once more.
    @Test func forkedChildTrackingChild() throws {
        guard ProcessInfo.processInfo.environment[Self.childVariable] == "forked-tracking" else { return }
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        region.store(3, at: 3 * pageSize)
        #expect(try tracker.collect().runs == [.page(3)])
        // userfaultfd registrations do not pass to a child (no UFFD_FEATURE_EVENT_FORK): a
        // uffd-async tracker must fail there, not report the parent's pages.
        let asyncRegion = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let asyncTracker = DirtyTrackingMode.uffdAsync.availability == .available
            ? try DirtyTracker(tracking: asyncRegion, mode: .uffdAsync) : nil
        defer { asyncTracker?.stop() }

        let pid = fork()
        try #require(pid >= 0, "fork failed: errno \(errno)")
        if pid == 0 {
            // The grandchild: it inherits the copy of page 3, writes page 6, and must see both,
            // read from its own page tables. Exit codes say what went wrong.
            region.store(6, at: 6 * pageSize)
            let runs = try? tracker.collect().runs
            if let asyncTracker {
                asyncRegion.store(1, at: pageSize)
                do {
                    let reported = try asyncTracker.collect().runs
                    FileHandle.standardError.write(Data("uffd-async in the child reported \(reported)\n".utf8))
                    _exit(3)
                } catch {
                    FileHandle.standardError.write(Data("uffd-async in the child: \(error)\n".utf8))
                }
            }
            _exit(runs == [.page(3), .page(6)] ? 0 : runs == nil ? 2 : 1)
        }
        var status: Int32 = 0
        var waited: pid_t = 0
        for _ in 0..<1000 {  // 10 s at most: a child stuck on a lock must not hang the suite
            waited = waitpid(pid, &status, WNOHANG)
            if waited != 0 { break }
            usleep(10_000)
        }
        if waited == 0 {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            Issue.record("the forked child did not finish in 10 s")
            return
        }
        let exitCode = (status >> 8) & 0xff
        #expect(waited == pid && status & 0x7f == 0 && exitCode == 0,
                "the forked child reported \(exitCode) (1: wrong pages, 2: collect failed, 3: uffd-async collected), status \(status)")
        #expect(try tracker.collect().runs == [.page(3)], "the child's write is not the parent's")
        #expect(region.load(at: 6 * pageSize) == 0)
        print(Self.successMarker)
    }
}
