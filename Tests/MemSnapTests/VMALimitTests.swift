#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

/// Exhausting vm.max_map_count is process-wide: other tests running in parallel would see their
/// mmaps fail. So the real test runs in a child process (this test binary, filtered to the child
/// test below), and the parent checks that it reported success.
@Suite("segfault tracking past the VMA limit")
struct VMALimitTests {
    static let childVariable = "MEMSNAP_TEST_CHILD"
    static let successMarker = "VMA-LIMIT-CHILD-OK"

    @Test func aRegionLargerThanTheVMALimitAllowsGivesAClearErrorNotAnEndlessFault() throws {
        guard workingModes.contains(.segfault) else { return }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        child.arguments = ["--testing-library", "swift-testing", "--filter", "segfaultVMALimitChild"]
        child.environment = ProcessInfo.processInfo.environment.merging([Self.childVariable: "vma-limit"]) { $1 }
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        try child.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        #expect(child.terminationStatus == 0, "child output:\n\(text)")
        #expect(text.contains(Self.successMarker), "child output:\n\(text)")
    }

    /// Runs only inside the child started above.
    @Test func segfaultVMALimitChild() throws {
        guard ProcessInfo.processInfo.environment[Self.childVariable] == "vma-limit" else { return }
        // Every other page of 600 MiB written: each isolated writable page splits off two VMAs,
        // far past vm.max_map_count (65530 here).
        let size = 600 << 20
        let region = try VirtualRegion(maxSize: size, committing: size)
        let tracker = try DirtyTracker(tracking: region, mode: .segfault)
        defer { tracker.stop() }
        let pages = size / pageSize
        for page in stride(from: 0, to: pages, by: 2) { region.store(UInt64(page), at: page * pageSize) }
        let everyWriteLanded = stride(from: 0, to: pages, by: 2).allSatisfy { region.load(at: $0 * pageSize) == UInt64($0) }
        #expect(everyWriteLanded, "the handler gave up without losing or looping on a write")

        let error = expectMemSnapError { _ = try tracker.collect() }
        #expect(error?.errno == .noMemory)
        #expect(error?.description.contains("vm.max_map_count") == true, "\(String(describing: error))")
        #expect(error?.description.contains("use uffd-async tracking or a full copy") == true)

        try tracker.reset()
        region.store(1, at: 5 * pageSize)
        #expect(try tracker.collect().runs == [5..<6], "after reset, tracking works again")
        if everyWriteLanded, error?.errno == .noMemory {
            print(Self.successMarker)
        }
    }
}
