#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("private-copies tracking: the written pages are the copies a memory holds",
       .enabled(if: DirtyTrackingMode.privateCopies.availability == .available,
                Comment(rawValue: DirtyTrackingMode.privateCopies.availability.description)))
struct PrivateCopyTrackingTests {
    @Test func inACopyOnWriteMappingWrittenPagesAreReportedAndReadPagesAreNot() throws {
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 8)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        #expect(region.load(at: 0) == 0 && region.load(at: 2 * pageSize) == 0, "reads map the file's pages")
        region.store(11, at: 1 * pageSize + 8)
        region.store(region.load(at: 3 * pageSize), at: 3 * pageSize)  // the same value: still a copy
        #expect(region.load(at: 5 * pageSize) == 0)
        region.store(55, at: 5 * pageSize)  // read first, then written
        #expect(try tracker.collect().runs == [.page(1), .page(3), .page(5)])
    }

    @Test func inAnonymousMemoryReadsMapTheZeroPageAndAreNotReported() throws {
        let region = try MemoryKind.anonymous.makeRegion(pages: 6)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        #expect(region.load(at: 0) == 0 && region.load(at: 4 * pageSize) == 0)
        region.store(2, at: 2 * pageSize)
        #expect(try tracker.collect().runs == [.page(2)])
    }

    @Test func aResetDoesNotForgetACopyOnlyRestoringTheMemoryDoes() throws {
        #expect(!DirtyTrackingMode.privateCopies.resetForgetsEarlierWrites)
        #expect(DirtyTrackingMode.allCases.filter { !$0.resetForgetsEarlierWrites } == [.privateCopies])
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 6)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        region.store(1, at: 1 * pageSize)
        #expect(try tracker.collectAndReset().runs == [.page(1)])
        region.store(4, at: 4 * pageSize)
        try tracker.reset()
        #expect(try tracker.collect().runs == [.page(1), .page(4)], "collects are cumulative until a restore")
    }

    @Test func kernelWritesMakeCopiesAndAreReported() throws {
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        let outcome = region.withUnsafeMutableBytes { kernelWrite(into: $0.baseAddress! + 2 * pageSize + 16, count: 100) }
        #expect(outcome.result == 100)
        #expect(try tracker.collect().runs == [.page(2)])
    }

    @Test func pagesCommittedByGrowthAreTrackedAsTheyAreWritten() throws {
        let region = try VirtualRegion(maxSize: 16 * pageSize, committing: 4 * pageSize)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        try region.grow(to: 8 * pageSize)
        #expect(region.load(at: 5 * pageSize) == 0)
        region.store(6, at: 6 * pageSize)
        #expect(try tracker.collect() == DirtyPages(pageCount: 8, runs: [.page(6)]))
    }

    @Test func guardPagesAreNeitherCopiesNorScanned() throws {
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        let madviseGuardInstall: Int32 = 102  // MADV_GUARD_INSTALL, Linux 6.13
        guard madvise(region.withUnsafeBytes { UnsafeMutableRawPointer(mutating: $0.baseAddress!) } + pageSize,
                      pageSize, madviseGuardInstall) == 0 else {
            #expect(errno == EINVAL, "only a kernel without guard regions may refuse them")
            return
        }
        region.store(2, at: 2 * pageSize)
        #expect(try tracker.collect().runs == [.page(2)], "the guard page is not a copy (reading it would fault)")
    }

    @Test func aSharedMappingIsRefusedBecauseItsWritesMakeNoCopy() throws {
        let region = try MemoryKind.memfdShared.makeRegion(pages: 4)
        expectReason(.unavailable(
            "the region's committed pages hold a shared mapping (at offset 0): writes to it make no private copy, "
            + "so private-copies tracking would miss them; use uffd-async or another mode")) {
            _ = try DirtyTracker(tracking: region, mode: .privateCopies)
        }
    }

    @Test func aRegionRemappedSharedIsRefusedAtItsReset() throws {
        let region = try MemoryKind.memfdCopyOnWrite.makeRegion(pages: 4)
        let tracker = try DirtyTracker(tracking: region, mode: .privateCopies)
        defer { tracker.stop() }
        let file = try MemoryFile(name: "shared-later", size: 4 * pageSize)
        try file.map(into: region, length: 4 * pageSize, sharing: .shared)
        expectReason(.unavailable(
            "the region's committed pages hold a shared mapping (at offset 0): writes to it make no private copy, "
            + "so private-copies tracking would miss them; use uffd-async or another mode")) {
            try tracker.reset()
        }
    }

    @Test func aPoolWithNoModeChosenTracksPrivateCopies() throws {
        let snapshot = try Snapshot(size: 4 * pageSize, name: "pool-default")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 1)
        let chosen = try DirtyTrackingMode.fromEnvironment()
        #expect(pool.trackingMode == (chosen == .auto ? .privateCopies : chosen))
        let explicit = try SnapshotWorkers(snapshot: snapshot, count: 1, tracking: DirtyTracker.Configuration(mode: .compare))
        #expect(explicit.trackingMode == .compare)
    }

    /// Spans of 512 pages (2 MiB with 4 KiB pages): each is one page table, dropped whole where
    /// the worker only wrote in it, page by page where its reads mapped the file's pages.
    @Test("rounds that write in every page-table span and read in some restore every memory exactly, span by span",
          arguments: [DirtyTrackingMode.privateCopies, .uffdAsync].filter { $0.availability == .available })
    func roundsAcrossPageTableSpansRestoreExactly(mode: DirtyTrackingMode) throws {
        let span = pageSize / 8
        let pages = 4 * span + 3  // a partial span at the end, and an unaligned start in general
        var model = [UInt8](repeating: 0, count: pages * pageSize)
        for index in stride(from: 0, to: model.count, by: 8) { model[index] = UInt8(truncatingIfNeeded: (index &* 2_654_435_761) >> 13) }
        let snapshot = try Snapshot(copying: model, name: "spans-\(mode.rawValue)")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 2, tracking: DirtyTracker.Configuration(mode: mode))
        for round in 0..<4 {
            let written = (0..<2).map { worker in (0..<12).map { ($0 * pages / 12 + worker * 5 + round * 3) % pages } }
            let read = (0..<40).map { $0 * 13 % (2 * span) }  // reads in the first two spans only
            let report = try pool.run { worker in
                worker.memory.withUnsafeMutableBytes { bytes in
                    if worker.index == 0 { for page in read { _ = RoundRestoreTests.opaque(bytes[page * pageSize + 1]) } }
                    for page in written[worker.index] { bytes[page * pageSize + 16 + worker.index] = UInt8(truncatingIfNeeded: round + 1) }
                }
            }
            for worker in 0..<2 {
                for page in written[worker] { model[page * pageSize + 16 + worker] = UInt8(truncatingIfNeeded: round + 1) }
            }
            #expect(report.dirtyPageCounts == [0] + written.map { Set($0).count }, "round \(round)")
            #expect(report.remappedMemories == [], "round \(round): restored in place")
            #expect(try snapshot.read(at: 0, count: model.count) == model, "round \(round): the merge is exact")
            for (index, memory) in pool.workerMemories.enumerated() {
                let equal = memory.withUnsafeBytes { bytes in model.indices.allSatisfy { bytes[$0] == model[$0] } }
                #expect(equal, "round \(round): worker \(index) shows the merged snapshot again")
            }
        }
        let idle = try pool.run { _ in }
        #expect(idle.dirtyPageCounts == [0, 0, 0], "after restoring, nothing is reported")
    }
}
