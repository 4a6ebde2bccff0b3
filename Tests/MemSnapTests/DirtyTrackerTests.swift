#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("DirtyTracker: exact page sets for every mode that works here")
struct DirtyTrackerTests {
    /// What a mode reports after pages 1 and 3 of 6 were written.
    func expectedAfterWritingPages1And3(_ mode: DirtyTrackingMode) -> [Range<Int>] {
        mode == .none ? [0..<6] : [.page(1), .page(3)]
    }

    @Test("write pages 1 and 3 of 6, collect exactly {1, 3}", arguments: workingModes, MemoryKind.allCases)
    func writesToPagesOneAndThreeAreCollectedExactly(mode: DirtyTrackingMode, kind: MemoryKind) throws {
        let region = try kind.makeRegion(pages: 6)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        #expect(tracker.mode == mode)
        region.store(11, at: 1 * pageSize + 8)
        region.store(33, at: 3 * pageSize)
        let written = try tracker.collect()
        #expect(written.runs == expectedAfterWritingPages1And3(mode))
        #expect(written.pageCount == 6)
        #expect(try tracker.collect() == written, "collect alone does not reset")
        #expect(region.load(at: 1 * pageSize + 8) == 11, "tracking never changes what was written")
    }

    @Test("reset, then track again", arguments: workingModes, MemoryKind.allCases)
    func resetStartsANewInterval(mode: DirtyTrackingMode, kind: MemoryKind) throws {
        let region = try kind.makeRegion(pages: 6)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        region.store(1, at: 1 * pageSize)
        region.store(3, at: 3 * pageSize)
        #expect(try tracker.collectAndReset().runs == expectedAfterWritingPages1And3(mode))
        #expect(try tracker.collect().runs == (mode == .none ? [0..<6] : []), "nothing written since the reset")
        region.store(5, at: 5 * pageSize)
        region.store(4, at: 3 * pageSize)  // a page written in the previous interval too
        #expect(try tracker.collectAndReset().runs == (mode == .none ? [0..<6] : [.page(3), .page(5)]))
        region.store(9, at: 0)
        try tracker.reset()
        #expect(try tracker.collect().runs == (mode == .none ? [0..<6] : []))
    }

    @Test("a collect within ranges reports and re-arms only those ranges; the rest waits for a later collect",
          .enabled(if: workingModes.contains(.uffdAsync), "uffd-async tracking is unavailable here"),
          arguments: MemoryKind.allCases)
    func collectWithinRangesLeavesTheRestForLater(kind: MemoryKind) throws {
        let region = try kind.makeRegion(pages: 8)
        let tracker = try DirtyTracker(tracking: region, mode: .uffdAsync)
        defer { tracker.stop() }
        region.store(1, at: 1 * pageSize)
        region.store(2, at: 6 * pageSize)
        #expect(try tracker.collectAndReset(within: [0..<4]) == [.page(1)])
        #expect(try tracker.collectAndReset(within: [0..<4]).isEmpty, "page 1 was re-armed")
        #expect(try tracker.collectAndReset().runs == [.page(6)], "page 6, outside the ranges, is still reported")
        expectReason(.unavailable("only uffd-async tracking can scan part of a region")) {
            let other = try MemoryKind.anonymous.makeRegion(pages: 2)
            let compare = try DirtyTracker(tracking: other, mode: .compare)
            defer { compare.stop() }
            _ = try compare.collectAndReset(within: [0..<1])
        }
    }

    @Test("two regions tracked at once stay independent", arguments: workingModes.filter { $0 != .softDirty })
    func twoRegionsTrackedAtOnce(mode: DirtyTrackingMode) throws {
        let first = try MemoryKind.anonymous.makeRegion(pages: 8)
        let second = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let firstTracker = try DirtyTracker(tracking: first, mode: mode)
        let secondTracker = try DirtyTracker(tracking: second, mode: mode)
        defer { firstTracker.stop(); secondTracker.stop() }
        first.store(1, at: 2 * pageSize)
        second.store(1, at: 7 * pageSize)
        second.store(1, at: 0)
        #expect(try firstTracker.collectAndReset().runs == (mode == .none ? [0..<8] : [.page(2)]))
        #expect(try secondTracker.collectAndReset().runs == (mode == .none ? [0..<8] : [.page(0), .page(7)]))
        first.store(2, at: 5 * pageSize)
        #expect(try secondTracker.collect().runs == (mode == .none ? [0..<8] : []),
                "resetting or writing one region does not touch the other")
        #expect(try firstTracker.collect().runs == (mode == .none ? [0..<8] : [.page(5)]))
    }

    @Test("8 threads on disjoint pages: thread-local collects are exact, the global one is the union",
          arguments: attributingModes)
    func threadLocalCollectsAreExactAndTheGlobalIsTheUnion(mode: DirtyTrackingMode) throws {
        let threads = 8
        let pagesPerThread = 4
        let region = try MemoryKind.anonymous.makeRegion(pages: threads * pagesPerThread * 2)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        let results = Locked<[Int: Result<DirtyPages, MemSnapError>]>([:])
        runOnThreads(threads) { index in
            let outcome = Result { () throws(MemSnapError) -> DirtyPages in
                try tracker.startThreadLocalTracking()
                defer { tracker.stopThreadLocalTracking() }
                // Thread i writes pages 2i*4 ... 2i*4+3, twice each.
                for round in 0..<2 {
                    for page in 0..<pagesPerThread {
                        region.store(UInt64(round), at: (index * 2 * pagesPerThread + page) * pageSize + 64 * index)
                    }
                }
                return try tracker.collectThreadLocal()
            }
            results.withLock { $0[index] = outcome }
        }
        var union: [Range<Int>] = []
        for index in 0..<threads {
            let first = index * 2 * pagesPerThread
            let own = try #require(results.withLock { $0[index] }).get()
            #expect(own.runs == [first..<first + pagesPerThread], "thread \(index)")
            union += own.runs
        }
        #expect(try tracker.collect().runs == union)
    }

    @Test("modes that cannot attribute writes say so", arguments: workingModes.filter { !$0.attributesWritesToThreads })
    func threadLocalTrackingIsRefusedWhereWritesCannotBeAttributed(mode: DirtyTrackingMode) throws {
        let region = try MemoryKind.anonymous.makeRegion(pages: 2)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        let error = expectMemSnapError { try tracker.startThreadLocalTracking() }
        guard case .unavailable = error?.reason else {
            Issue.record("expected .unavailable, got \(String(describing: error))")
            return
        }
    }

    @Test("read() into tracked memory", arguments: workingModes)
    func kernelWritesIntoTrackedMemory(mode: DirtyTrackingMode) throws {
        let region = try MemoryKind.anonymous.makeRegion(pages: 4)
        region.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0, $0.count) }  // populate every page
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        let outcome = region.withUnsafeMutableBytes { kernelWrite(into: $0.baseAddress! + 2 * pageSize + 16, count: 100) }
        let written = try tracker.collect()
        switch mode {
        case .uffdAsync, .softDirty, .compare, .privateCopies:
            // The kernel's write is tracked like any other.
            #expect(outcome.result == 100)
            #expect(written.runs == [.page(2)])
        case .segfault, .uffd:
            // The kernel cannot take the fault for us: read(2) fails and nothing is written.
            #expect(outcome.result == -1)
            #expect(outcome.errno == EFAULT)
            #expect(written.runs == [])
        case .none:
            #expect(outcome.result == 100)
            #expect(written.runs == [0..<4])
        case .auto:
            Issue.record("auto is never a tracker's mode")
        }
    }

    /// Soft-dirty needs CONFIG_MEM_SOFT_DIRTY (x86_64, not arm64): where the probe saw it work,
    /// a tracker must work too; where not, the mode must say why and refuse to start.
    @Test func softDirtyWorksWhereTheProbeSaysSoAndOtherwiseSaysWhyNot() throws {
        switch DirtyTrackingMode.softDirty.availability {
        case .available:
            #expect(workingModes.contains(.softDirty))
            #expect(try DirtyTrackingMode.softDirty.resolved() == .softDirty)
            let region = try MemoryKind.anonymous.makeRegion(pages: 4)
            let tracker = try startTracking(region, mode: .softDirty)
            defer { tracker.stop() }
            region.store(1, at: 2 * pageSize)
            #expect(try tracker.collect().contains(2))
        case let .unavailable(reason):
            #expect(!workingModes.contains(.softDirty))
            #expect(reason.contains("CONFIG_MEM_SOFT_DIRTY") || reason.contains("clear_refs") || reason.contains("pagemap"),
                    "the reason names what is missing: \(reason)")
            let region = try MemoryKind.anonymous.makeRegion(pages: 2)
            expectReason(.unavailable(reason)) { _ = try DirtyTracker(tracking: region, mode: .softDirty) }
            expectReason(.unavailable(reason)) { _ = try DirtyTrackingMode.softDirty.resolved() }
        }
    }

    @Test func autoPicksTheFirstModeThatWorksHere() throws {
        let expected = try #require(DirtyTrackingMode.preferenceOrder.first { workingModes.contains($0) },
                                    "compare works everywhere")
        #expect(try DirtyTrackingMode.auto.resolved() == expected)
        let region = try MemoryKind.anonymous.makeRegion(pages: 2)
        let tracker = try DirtyTracker(tracking: region, configuration: .init(mode: .auto))
        defer { tracker.stop() }
        #expect(tracker.mode == expected)
    }

    @Test func modesAreNamedAsInTheEnvironmentVariable() throws {
        #expect(DirtyTrackingMode.environmentVariable == "MEMSNAP_DIRTY_TRACKING")
        #expect(DirtyTrackingMode.allCases.map(\.rawValue) == ["auto", "uffd-async", "segfault", "uffd", "soft-dirty", "compare", "private-copies", "none"])
        #expect(try DirtyTrackingMode(parsing: nil) == .auto)
        #expect(try DirtyTrackingMode(parsing: "") == .auto)
        #expect(try DirtyTrackingMode(parsing: "segfault") == .segfault)
        let error = expectMemSnapError { _ = try DirtyTrackingMode(parsing: "dirty-bits") }
        #expect(error?.description == "read MEMSNAP_DIRTY_TRACKING: \"dirty-bits\" is not a tracking mode; "
            + "expected one of auto, uffd-async, segfault, uffd, soft-dirty, compare, private-copies, none")
    }

    @Test("a remapped region must be reset before collecting again", arguments: workingModes)
    func remappingInvalidatesUntilReset(mode: DirtyTrackingMode) throws {
        let snapshot = try Snapshot(size: 4 * pageSize)
        let region = try VirtualRegion(maxSize: 8 * pageSize)
        try snapshot.mapCopyOnWrite(into: region)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        region.store(1, at: pageSize)
        try snapshot.mapCopyOnWrite(into: region)  // restore: a new mapping
        let error = expectMemSnapError { _ = try tracker.collect() }
        #expect(error?.description.contains("call reset()") == true)
        try tracker.reset()
        region.store(2, at: 2 * pageSize)
        #expect(try tracker.collect().runs == (mode == .none ? [0..<4] : [.page(2)]))
    }

    @Test("growth while tracked", arguments: workingModes)
    func pagesCommittedWhileTrackedAreReported(mode: DirtyTrackingMode) throws {
        let region = try VirtualRegion(maxSize: 16 * pageSize, committing: 4 * pageSize)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        try region.grow(to: 8 * pageSize)
        region.store(5, at: 6 * pageSize)
        let written = try tracker.collectAndReset()
        #expect(written.pageCount == 8)
        #expect(written.runs == (mode == .none ? [0..<8] : [.page(6)]), "growth is tracked exactly")
        region.store(6, at: 7 * pageSize)
        #expect(try tracker.collect().runs == (mode == .none ? [0..<8] : [.page(7)]), "after a reset they are tracked")
    }

    @Test("collect-and-reset loses no write while other threads keep writing",
          arguments: workingModes.filter { [.uffdAsync, .segfault, .uffd].contains($0) })
    func collectAndResetLosesNothingUnderConcurrentWrites(mode: DirtyTrackingMode) throws {
        let pages = 256
        let region = try MemoryKind.anonymous.makeRegion(pages: pages)
        let tracker = try startTracking(region, mode: mode)
        defer { tracker.stop() }
        let writesPerThread = mode == .uffd ? 300 : 3000
        let writers = 2
        let seed = TestSeed.current()
        // Each writer records, per page, the last value it wrote; the collector keeps a shadow copy
        // of the region refreshed only from the pages it is told about. If a write were lost, the
        // shadow would miss it.
        let shadow = try VirtualRegion(maxSize: pages * pageSize, committing: pages * pageSize)
        let done = Locked(0)
        let collectorFailure = Locked<String?>(nil)
        @Sendable func refreshShadow(_ written: DirtyPages) {
            region.withUnsafeBytes { memory in
                shadow.withUnsafeMutableBytes { copy in
                    for range in written.byteRanges {
                        (copy.baseAddress! + range.lowerBound)
                            .copyMemory(from: memory.baseAddress! + range.lowerBound, byteCount: range.count)
                    }
                }
            }
        }
        runOnThreads(writers + 1) { index in
            if index == writers {
                while done.withLock({ $0 }) < writers {
                    do { refreshShadow(try tracker.collectAndReset()) } catch {
                        collectorFailure.withLock { $0 = "\(error)" }
                        return
                    }
                }
                return
            }
            var random = SplitMix64(seed: seed &+ UInt64(index))
            for sequence in 1...writesPerThread {
                let page = Int(random.next() % UInt64(pages))
                region.store(UInt64(sequence), at: page * pageSize + index * 8)
            }
            done.withLock { $0 += 1 }
        }
        #expect(collectorFailure.withLock { $0 } == nil)
        refreshShadow(try tracker.collectAndReset())
        let identical = region.withUnsafeBytes { memory in
            shadow.withUnsafeBytes { memcmp(memory.baseAddress!, $0.baseAddress!, pages * pageSize) == 0 }
        }
        #expect(identical, "the shadow rebuilt from collected pages equals the region")
    }

    @Test func aRegionCanHaveOnlyOneTracker() throws {
        let region = try MemoryKind.anonymous.makeRegion(pages: 2)
        let tracker = try DirtyTracker(tracking: region, mode: .compare)
        expectReason(.invalidArgument("the region is already tracked by another DirtyTracker; stop that one first")) {
            _ = try DirtyTracker(tracking: region, mode: .compare)
        }
        tracker.stop()
        let next = try DirtyTracker(tracking: region, mode: .compare)
        next.stop()
    }

    @Test("stop leaves the region writable and the tracker unusable", arguments: workingModes)
    func stopLeavesTheRegionWritable(mode: DirtyTrackingMode) throws {
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let tracker = try startTracking(region, mode: mode)
        tracker.stop()
        tracker.stop()
        #expect(tracker.isStopped)
        region.store(42, at: 3 * pageSize)
        #expect(region.load(at: 3 * pageSize) == 42)
        expectReason(.invalidArgument("the tracker was stopped")) { _ = try tracker.collect() }
    }

    @Test func uffdCanCopyEachPageBeforeItsFirstWrite() throws {
        guard workingModes.contains(.uffd) else { return }
        let region = try MemoryKind.anonymous.makeRegion(pages: 4)
        region.store(0x0123, at: 2 * pageSize)
        let copies = Locked<[Int: UInt64]>([:])
        let tracker = try DirtyTracker(tracking: region, configuration: .init(mode: .uffd, copyBeforeWrite: { page, contents in
            let before = contents.load(as: UInt64.self)
            copies.withLock { $0[page] = before }
        }))
        defer { tracker.stop() }
        region.store(0x4567, at: 2 * pageSize)
        region.store(0x89AB, at: 2 * pageSize)
        #expect(copies.withLock { $0 } == [2: 0x0123], "the hook saw the page once, before the first write")
        #expect(try tracker.collect().runs == [.page(2)])
    }

    @Test func fullCopyIsPreferredPastTheConfiguredFraction() throws {
        let region = try MemoryKind.anonymous.makeRegion(pages: 8)
        let tracker = try DirtyTracker(tracking: region, configuration: .init(mode: .compare, fullCopyFraction: 0.25))
        defer { tracker.stop() }
        #expect(!tracker.prefersFullCopy(DirtyPages(pageCount: 8, runs: [0..<2])))
        #expect(tracker.prefersFullCopy(DirtyPages(pageCount: 8, runs: [0..<3])))
    }
}

/// Shared-state helper for tests (a pthread mutex, visible to the thread sanitizer).
final class Locked<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
