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
        let child = try ChildTestProcess.run("forkedChildTrackingChild", environment: [Self.childVariable: "forked-tracking"])
        #expect(child.status == 0, "child output:\n\(child.output)")
        #expect(child.output.contains(Self.successMarker), "child output:\n\(child.output)")
    }

    /// Runs only inside the child test process started above: it forks once more.
    @Test func forkedChildTrackingChild() throws {
        guard ProcessInfo.processInfo.environment[Self.childVariable] == "forked-tracking" else { return }
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        region.store(3, at: 3 * pageSize)
        #expect(try tracker.collect().runs == [.page(3)])
        // userfaultfd registrations do not pass to a child (no UFFD_FEATURE_EVENT_FORK), but
        // the descriptor does and acts on the parent's memory: in the child a uffd-async
        // collect and reset must fail, and stopping either uffd tracker must leave the
        // parent's tracking (and the uffd handler thread) as it was.
        let asyncRegion = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let asyncTracker = DirtyTrackingMode.uffdAsync.availability == .available
            ? try DirtyTracker(tracking: asyncRegion, mode: .uffdAsync) : nil
        defer { asyncTracker?.stop() }
        let syncRegion = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let syncTracker = DirtyTrackingMode.uffd.availability == .available
            ? try DirtyTracker(tracking: syncRegion, mode: .uffd) : nil
        defer { syncTracker?.stop() }
        // Modes whose state is the process's own memory (a calloc'd record with the inherited
        // SIGSEGV handler and protections; a saved copy): each process sees only its writes.
        let segfaultRegion = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let segfaultTracker = try DirtyTracker(tracking: segfaultRegion, mode: .segfault)
        defer { segfaultTracker.stop() }
        segfaultRegion.store(2, at: 2 * pageSize)
        let compareRegion = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let compareTracker = try DirtyTracker(tracking: compareRegion, mode: .compare)
        defer { compareTracker.stop() }
        compareRegion.store(4, at: 4 * pageSize)

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
                    FileHandle.standardError.write(Data("uffd-async collect in the child: \(error)\n".utf8))
                }
                do {
                    try asyncTracker.reset()
                    _exit(4)
                } catch {
                    FileHandle.standardError.write(Data("uffd-async reset in the child: \(error)\n".utf8))
                }
                asyncTracker.stop()
            }
            syncTracker?.stop()
            segfaultRegion.store(5, at: 5 * pageSize)
            guard (try? segfaultTracker.collect().runs) == [.page(2), .page(5)] else { _exit(5) }
            compareRegion.store(7, at: 7 * pageSize)
            guard (try? compareTracker.collect().runs) == [.page(4), .page(7)] else { _exit(6) }
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
                "the forked child reported \(exitCode) (1: wrong pages, 2: collect failed, 3: uffd-async collected, 4: uffd-async reset, 5: segfault pages, 6: compare pages), status \(status)")
        #expect(try tracker.collect().runs == [.page(3)], "the child's write is not the parent's")
        #expect(region.load(at: 6 * pageSize) == 0)
        #expect(try segfaultTracker.collect().runs == [.page(2)], "segfault: the child's write is not the parent's")
        #expect(segfaultRegion.load(at: 5 * pageSize) == 0)
        #expect(try compareTracker.collect().runs == [.page(4)], "compare: the child's write is not the parent's")
        #expect(compareRegion.load(at: 7 * pageSize) == 0)
        if let asyncTracker {
            asyncRegion.store(2, at: 2 * pageSize)
            #expect(try asyncTracker.collect().runs == [.page(2)], "the child's stop left the parent's registration")
        }
        if let syncTracker {
            // If the child had ended the parent's fault handler, this write would block for
            // ever: it runs on its own thread, waited for with a deadline.
            let written = DispatchSemaphore(value: 0)
            let writer = Thread { syncRegion.store(1, at: pageSize); written.signal() }
            writer.start()
            #expect(written.wait(timeout: .now() + 10) == .success, "the parent's uffd handler still serves faults")
            #expect(try syncTracker.collect().runs == [.page(1)])
        }
        print(Self.successMarker)
    }
}
