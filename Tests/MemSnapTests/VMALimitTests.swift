#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

/// How large a region must be to run out of mappings under segfault tracking on this machine.
///
/// Writing every other page of a read-only region splits off two mappings per write, so
/// `vm.max_map_count / 2` writes exhaust it; a quarter more, plus room for the mappings the
/// process already has, makes sure the limit is reached. Each written page costs a page of
/// memory, so machines whose limit is very high are skipped rather than filled.
struct VMALimitPlan: Sendable {
    /// The most memory the written pages may take.
    static let memoryBudget = 1 << 30

    var maxMapCount: Int?
    /// Pages in the region (twice the writes), or nil when the test cannot run here.
    var pages: Int?
    /// Why the test does not run here.
    var skipReason: String

    static let current: VMALimitPlan = {
        let text = (try? String(contentsOfFile: "/proc/sys/vm/max_map_count", encoding: .utf8)) ?? ""
        guard let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), limit > 0 else {
            return VMALimitPlan(maxMapCount: nil, pages: nil,
                                skipReason: "/proc/sys/vm/max_map_count is not readable here (\"\(text)\")")
        }
        let writes = limit / 2 + limit / 8 + 1024
        let written = writes * pageSize
        guard written <= memoryBudget else {
            return VMALimitPlan(maxMapCount: limit, pages: nil, skipReason:
                "vm.max_map_count = \(limit): reaching it takes \(writes) written pages (\(ByteCount(written))), "
                + "more than the \(ByteCount(memoryBudget)) this test allows itself")
        }
        return VMALimitPlan(maxMapCount: limit, pages: 2 * writes, skipReason: "")
    }()

    var runnable: Bool { pages != nil }
}

/// Exhausting vm.max_map_count is process-wide: other tests running in parallel would see their
/// mmaps fail. So the real test runs in a child process (this test binary, filtered to the child
/// test below), and the parent checks that it reported success.
@Suite("segfault tracking past the VMA limit")
struct VMALimitTests {
    static let childVariable = "MEMSNAP_TEST_CHILD"
    static let successMarker = "VMA-LIMIT-CHILD-OK"

    @Test(.enabled(if: workingModes.contains(.segfault),
                   "segfault tracking does not work here: \(DirtyTrackingMode.segfault.availability)"),
          .enabled(if: VMALimitPlan.current.runnable, Comment(rawValue: VMALimitPlan.current.skipReason)))
    func aRegionLargerThanTheVMALimitAllowsGivesAClearErrorNotAnEndlessFault() throws {
        let child = try ChildTestProcess.run("segfaultVMALimitChild", environment: [Self.childVariable: "vma-limit"])
        #expect(child.status == 0, "child output:\n\(child.output)")
        #expect(child.output.contains(Self.successMarker), "child output:\n\(child.output)")
    }

    /// Runs only inside the child started above.
    @Test func segfaultVMALimitChild() throws {
        guard ProcessInfo.processInfo.environment[Self.childVariable] == "vma-limit" else { return }
        let plan = VMALimitPlan.current
        let pages = try #require(plan.pages, Comment(rawValue: plan.skipReason))
        print("vm.max_map_count = \(plan.maxMapCount ?? 0): writing every other page of \(pages) (\(ByteCount(pages * pageSize)))")
        let size = pages * pageSize
        let region = try VirtualRegion(maxSize: size, committing: size)
        let tracker = try DirtyTracker(tracking: region, mode: .segfault)
        defer { tracker.stop() }
        for page in stride(from: 0, to: pages, by: 2) { region.store(UInt64(page), at: page * pageSize) }
        let everyWriteLanded = stride(from: 0, to: pages, by: 2).allSatisfy { region.load(at: $0 * pageSize) == UInt64($0) }
        #expect(everyWriteLanded, "the handler gave up without losing or looping on a write")

        let error = expectMemSnapError { _ = try tracker.collect() }
        #expect(error?.errno == .noMemory)
        #expect(error?.description.contains("vm.max_map_count = \(plan.maxMapCount ?? 0)") == true, "\(String(describing: error))")
        #expect(error?.description.contains("use uffd-async tracking or a full copy") == true)

        try tracker.reset()
        region.store(1, at: 5 * pageSize)
        #expect(try tracker.collect().runs == [5..<6], "after reset, tracking works again")
        if everyWriteLanded, error?.errno == .noMemory {
            print(Self.successMarker)
        }
    }
}
