#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import SystemPackage
import Testing

/// Every way a sync can fail, injected through the arena's file layer: what the call reports,
/// what a retry does, and what a reopen recovers.
@Suite("Arena sync failures: ENOSPC, EIO and failed flushes, injected")
struct ArenaSyncFailureTests {
    /// An arena whose files fail as `plan` says, with one 3-page object synced as event 1
    /// (filled with 1).
    struct Setup {
        let directory = ArenaDirectory()
        let plan = FaultPlan()
        let arena: Arena
        let object: ArenaOffset

        init(tracking: Arena.Configuration.Tracking = .automatic, checkpointLogBytes: Int = 256 << 20) throws {
            var configuration = Arena.Configuration(tracking: tracking, checkpointLogBytes: checkpointLogBytes)
            configuration.fileLayer = plan.layer
            arena = try Arena.create(path: directory.arena, capacity: 16 << 20, configuration: configuration)
            object = try arena.allocate(byteCount: 3 * pageSize)
            try arena.fill(object, count: 3 * pageSize, with: 1)
            arena.markDirty(Int(object.rawValue)..<Int(object.rawValue) + 3 * pageSize)
            try arena.sync(epoch: 0, event: 1)
        }

        /// Reopens the files (without faults) and returns the event and the object's first byte.
        func reopened(allocations: Int = 1) throws -> (event: UInt64, byte: UInt8) {
            let arena = try Arena.open(path: directory.arena, access: .readOnly)
            defer { try? arena.close() }
            #expect(try arena.check().allocations == allocations)
            let bytes = try arena.bytes(object, count: 3 * pageSize)
            #expect(Set(bytes).count == 1, "the object is one sync's, not a mix")
            return (arena.event, bytes[0])
        }
    }

    @Test(arguments: [Errno.noSpace, .ioError], [Arena.Configuration.Tracking.automatic, .explicit])
    func aFailedLogWriteFailsTheSyncAndARetryWritesEverything(errno: Errno, tracking: Arena.Configuration.Tracking) throws {
        let setup = try Setup(tracking: tracking)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.arena.markDirty(Int(setup.object.rawValue)..<Int(setup.object.rawValue) + 3 * pageSize)
        setup.plan.fail(.write, of: .log, with: errno)
        let error = expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }
        #expect(error?.errno == errno)
        #expect(setup.arena.event == 1 && setup.arena.commitCounter == 2)
        try setup.arena.sync(epoch: 0, event: 2)  // the pages of the failed sync are kept for it
        try setup.arena.close()
        #expect(try setup.reopened() == (2, 2))
    }

    @Test func aLogThatCannotGrowFailsTheSyncAndARetryAfterSpaceIsFreedSucceeds() throws {
        let setup = try Setup()
        let big = try setup.arena.allocate(byteCount: 2 << 20)  // a record larger than the reserved 1 MiB
        try setup.arena.fill(big, count: 2 << 20, with: 7)
        setup.plan.fail(.reserve, of: .log, with: .noSpace, sticky: true)
        #expect(expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }?.errno == .noSpace)
        setup.plan.clear()
        try setup.arena.sync(epoch: 0, event: 2)
        #expect(try setup.arena.bytes(big, count: 2 << 20).allSatisfy { $0 == 7 })
        try setup.arena.close()
        #expect(try setup.reopened(allocations: 2).event == 2)
    }

    @Test func whenTheDoubledReservationDoesNotFitOnlyWhatIsNeededIsReserved() throws {
        let setup = try Setup()
        let big = try setup.arena.allocate(byteCount: 2 << 20)
        try setup.arena.fill(big, count: 2 << 20, with: 7)
        setup.plan.fail(.reserve, of: .log, with: .noSpace)  // the first attempt only
        try setup.arena.sync(epoch: 0, event: 2)
        #expect(setup.plan.injected == 1)
        try setup.arena.close()
        #expect(try setup.reopened(allocations: 2).event == 2)
    }

    /// fsyncgate: after a failed fdatasync the kernel may have dropped the pages, so the arena
    /// refuses to sync again; the reopened arena holds one of the two states, never a mix.
    @Test func aFailedLogFlushStopsLaterSyncsAndReopenRecoversACompleteState() throws {
        let setup = try Setup()
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.plan.fail(.synchronize, of: .log, with: .ioError)
        #expect(expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }?.errno == .ioError)
        let later = expectMemSnapError { try setup.arena.sync(epoch: 0, event: 3) }
        guard case .unavailable(let why)? = later?.reason else { Issue.record("expected .unavailable, got \(String(describing: later))"); return }
        #expect(why.contains("reopen the arena"))
        try setup.arena.close()  // no checkpoint after a failed flush
        let state = try setup.reopened()
        #expect(state == (1, 1) || state == (2, 2), "one completed sync, not \(state)")
    }

    @Test func aCheckpointFailingAfterADurableCommitSaysSoAndTheNextSyncCompletesIt() throws {
        let setup = try Setup(checkpointLogBytes: 0)  // checkpoint at every sync
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.plan.fail(.write, of: .heap, with: .noSpace)
        let error = expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }
        #expect(error?.errno == .noSpace)
        #expect(error?.operation == "sync arena \(setup.directory.arena) (epoch 0, event 2): commit 3 is durable, but what follows it failed")
        #expect(setup.arena.event == 2 && setup.arena.commitCounter == 3)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 3)
        try setup.arena.sync(epoch: 0, event: 3)
        try setup.arena.close()
        #expect(try setup.reopened() == (3, 3))
    }

    /// Emptying the log after a checkpoint zeroes its first record header; a write that tears
    /// half way must not leave later syncs behind a header the next recovery cannot read.
    @Test func aTornZeroingOfTheLogLosesNoLaterSync() throws {
        let setup = try Setup(checkpointLogBytes: 0)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.plan.fail(.write, of: .log, offsets: 0..<ArenaFormat.recordHeaderSize, length: ArenaFormat.recordHeaderSize,
                        partial: 100, with: .ioError)
        let error = expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }
        #expect(error?.errno == .ioError)
        #expect(error?.operation.hasSuffix("commit 3 is durable, but what follows it failed") == true)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 3)
        try setup.arena.sync(epoch: 0, event: 3)
        setup.arena.abandon()  // a crash: what the log holds must bring back event 3
        #expect(try setup.reopened() == (3, 3))
    }

    @Test func aFailedHeapFlushDuringACheckpointStopsSyncsAndTheLogStillRecoversTheCommit() throws {
        let setup = try Setup(checkpointLogBytes: 0)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.plan.fail(.synchronize, of: .heap, with: .ioError)
        #expect(expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }?.errno == .ioError)
        #expect(expectMemSnapError { try setup.arena.sync(epoch: 0, event: 3) }?.errno == nil, "refused, not attempted")
        try setup.arena.close()
        #expect(try setup.reopened() == (2, 2))
    }

    @Test func aFailedMetapageWriteLeavesTheOldMetapageAndARetryCompletesTheCheckpoint() throws {
        let setup = try Setup(checkpointLogBytes: 0)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 2)
        setup.plan.fail(.write, of: .heap, offsets: 0..<ArenaFormat.heapFileOffset, with: .ioError)
        #expect(expectMemSnapError { try setup.arena.sync(epoch: 0, event: 2) }?.errno == .ioError)
        try setup.arena.fill(setup.object, count: 3 * pageSize, with: 3)
        try setup.arena.sync(epoch: 0, event: 3)
        try setup.arena.close()
        #expect(try setup.reopened() == (3, 3))
    }

    /// Pages above top are reserved 1 MiB ahead, pages from a free run exactly (compaction may
    /// have punched them): an allocation the file system cannot back fails either way.
    @Test func anAllocationTheFileSystemCannotBackFailsAndChangesNothing() throws {
        let setup = try Setup()
        let freed = try setup.arena.allocate(byteCount: 3 * pageSize)
        _ = try setup.arena.allocate(byteCount: pageSize)  // keeps the freed run below top
        try setup.arena.free(freed)
        try setup.arena.sync(epoch: 0, event: 2)  // the free run is reusable now
        let before = try setup.arena.statistics
        setup.plan.fail(.reserve, of: .heap, with: .noSpace, sticky: true)
        for size in [3 * pageSize, 2 << 20] {  // from the free run; past the space reserved ahead
            let error = expectMemSnapError { _ = try setup.arena.allocate(byteCount: size) }
            #expect(error?.errno == .noSpace)
        }
        #expect(try setup.arena.statistics == before)
        #expect(try setup.arena.check().allocations == 2)
        setup.plan.clear()
        #expect(try setup.arena.allocate(byteCount: 3 * pageSize) == freed)
        _ = try setup.arena.allocate(byteCount: 2 << 20)
        #expect(try setup.arena.check().allocations == 4)
    }
}
