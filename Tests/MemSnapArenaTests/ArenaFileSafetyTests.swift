#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import SystemPackage
import Testing

@Suite("Arena files: inspecting changes nothing, only create makes files, locks, links, full disks")
struct ArenaFileSafetyTests {
    // MARK: Inspecting never creates or changes anything

    @Test func openingAMissingArenaCreatesNothing() throws {
        let directory = ArenaDirectory()
        for access in [Arena.Access.readWrite, .readOnly] {
            let error = expectMemSnapError { _ = try Arena.open(path: directory.arena, access: access) }
            #expect(error?.errno == .noSuchFileOrDirectory)
        }
        #expect(!Arena.isArena(path: directory.arena))
        #expect(directory.entries.isEmpty)
    }

    @Test func openingAFileThatIsNotAnArenaLeavesItAsItWasAndNoLog() throws {
        let directory = ArenaDirectory()
        let text = Array("not an arena\n".utf8) + [UInt8](repeating: 7, count: 10_000)
        _ = FileManager.default.createFile(atPath: directory.arena, contents: Data(text))
        for access in [Arena.Access.readWrite, .readOnly] {
            let error = expectMemSnapError { _ = try Arena.open(path: directory.arena, access: access) }
            guard case .corrupt(let why)? = error?.reason else { Issue.record("expected .corrupt, got \(String(describing: error))"); continue }
            #expect(why.hasPrefix("both metapages are damaged or missing"))
        }
        #expect(directory.entries == ["heap.arena"], "no -wal left behind")
        #expect(fileBytes(directory.arena) == text)
    }

    @Test func aReadOnlyOpenRecoversTheLastSyncInMemoryAndWritesNothing() throws {
        let sample = try SampleArena.make(abandoned: true)
        let heap = fileBytes(sample.path), log = fileBytes(sample.directory.log)
        let arena = try Arena.open(path: sample.path, access: .readOnly)
        #expect(arena.isReadOnly)
        #expect(arena.commitCounter == 3 && arena.epoch == 1 && arena.event == 2)
        #expect(try arena.bytes(sample.run, count: 3 * pageSize) == [UInt8](repeating: 0x44, count: 2 * pageSize) + [UInt8](repeating: 0x33, count: pageSize))
        #expect(try arena.check().allocations == 4)
        #expect(try arena.root(0) == sample.run.rawValue)
        let readOnly = MemSnapError.Reason.invalidArgument("the arena is open read-only")
        expectReason(readOnly) { _ = try arena.allocate(byteCount: 8) }
        expectReason(readOnly) { try arena.free(sample.small) }
        expectReason(readOnly) { try arena.setRoot(1, to: 1) }
        expectReason(readOnly) { try arena.sync(epoch: 9, event: 9) }
        try arena.close()
        #expect(fileBytes(sample.path) == heap && fileBytes(sample.directory.log) == log, "not a byte written")
    }

    // MARK: Locks

    @Test func aWriterExcludesEveryOtherOpenAndReadersShare() throws {
        let sample = try SampleArena.make()
        var failFast = Arena.Configuration()
        failFast.lockTimeout = .zero
        let writer = try Arena.open(path: sample.path)
        for access in [Arena.Access.readWrite, .readOnly] {
            let error = expectMemSnapError { _ = try Arena.open(path: sample.path, access: access, configuration: failFast) }
            #expect(error?.errno == .wouldBlock)
        }
        try writer.close()
        let first = try Arena.open(path: sample.path, access: .readOnly)
        let second = try Arena.open(path: sample.path, access: .readOnly)
        let error = expectMemSnapError { _ = try Arena.open(path: sample.path, configuration: failFast) }
        #expect(error?.errno == .wouldBlock)
        #expect(error?.description.contains("another open of the arena holds it") == true)
        try first.close()
        try second.close()
        try Arena.open(path: sample.path).close()
    }

    @Test func anOpenWaitsUpToItsLockTimeoutForAHolderToLetGo() throws {
        let sample = try SampleArena.make()
        // The writer lives on its own thread from open to close (an arena is not Sendable).
        let path = sample.path
        let opened = DispatchSemaphore(value: 0)
        let holder = Thread {
            let writer = try? Arena.open(path: path)
            opened.signal()
            usleep(100_000)
            try? writer?.close()
        }
        holder.start()
        opened.wait()
        var patient = Arena.Configuration()
        patient.lockTimeout = .seconds(30)
        let reader = try Arena.open(path: sample.path, access: .readOnly, configuration: patient)
        #expect(reader.event == 2)
        try reader.close()
    }

    // MARK: Links and existing files

    @Test func aLogThatIsASymbolicLinkIsNeverFollowed() throws {
        let directory = ArenaDirectory()
        let victim = directory.file("victim")
        let precious = [UInt8](repeating: 0x5A, count: 3000)
        _ = FileManager.default.createFile(atPath: victim, contents: Data(precious))
        #expect(symlink(victim, directory.log) == 0)
        // Create: refused, and the half-made heap file removed.
        let created = expectMemSnapError { _ = try Arena.create(path: directory.arena, capacity: 1 << 20) }
        #expect(created?.errno == .fileExists)
        #expect(directory.entries == ["heap.arena-wal", "victim"])
        // Open of a real arena whose log was replaced by a link: refused.
        unlink(directory.log)
        try Arena.create(path: directory.arena, capacity: 1 << 20).close()
        unlink(directory.log)
        #expect(symlink(victim, directory.log) == 0)
        for access in [Arena.Access.readWrite, .readOnly] {
            let opened = expectMemSnapError { _ = try Arena.open(path: directory.arena, access: access) }
            #expect(opened?.errno == .tooManySymbolicLinkLevels)
        }
        #expect(fileBytes(victim) == precious)
    }

    @Test func anArenaPathThatIsASymbolicLinkIsNeverFollowed() throws {
        let sample = try SampleArena.make()
        let link = sample.directory.file("link.arena")
        #expect(symlink(sample.path, link) == 0)
        #expect(symlink(sample.directory.log, link + "-wal") == 0)
        let error = expectMemSnapError { _ = try Arena.open(path: link, access: .readOnly) }
        #expect(error?.errno == .tooManySymbolicLinkLevels)
        #expect(!Arena.isArena(path: link))
    }

    @Test func createNeverReplacesAFileAndAStaleLogIsLeftAlone() throws {
        let directory = ArenaDirectory()
        _ = FileManager.default.createFile(atPath: directory.arena, contents: Data([1, 2, 3]))
        #expect(expectMemSnapError { _ = try Arena.create(path: directory.arena, capacity: 1 << 20) }?.errno == .fileExists)
        #expect(fileBytes(directory.arena) == [1, 2, 3])
        #expect(directory.entries == ["heap.arena"])
        unlink(directory.arena)
        _ = FileManager.default.createFile(atPath: directory.log, contents: Data([4, 5]))
        #expect(expectMemSnapError { _ = try Arena.create(path: directory.arena, capacity: 1 << 20) }?.errno == .fileExists)
        #expect(directory.entries == ["heap.arena-wal"])
        #expect(fileBytes(directory.log) == [4, 5])
        #expect(expectMemSnapError { _ = try Arena.openOrCreate(path: directory.arena, capacity: 1 << 20) }?.errno == .fileExists)
    }

    @Test(.timeLimit(.minutes(1)))
    func aDirectoryAFifoOrADeviceIsNotAnArenaAndNoneOfThemBlocks() throws {
        let directory = ArenaDirectory()
        #expect(mkdir(directory.arena, 0o755) == 0)
        expectReason(.invalidArgument("\(directory.arena) is not a regular file")) { _ = try Arena.open(path: directory.arena, access: .readOnly) }
        expectReason(.invalidArgument("/dev/null is not a regular file")) { _ = try Arena.open(path: "/dev/null", access: .readOnly) }
        let fifo = directory.file("fifo.arena")
        #expect(mkfifo(fifo, 0o600) == 0)
        for access in [Arena.Access.readOnly, .readWrite] {  // an open without a writer would wait for one
            expectReason(.invalidArgument("\(fifo) is not a regular file")) { _ = try Arena.open(path: fifo, access: access) }
        }
        #expect(!Arena.isArena(path: fifo))
    }

    // MARK: A create that fails leaves nothing

    /// Fails the first, second, third... file operation of a create with ENOSPC until one
    /// succeeds: every failed create leaves the directory empty. (A failure the create can work
    /// around, a log reservation larger than needed, makes a good arena.)
    @Test func aCreateThatFailsAtAnyStepLeavesNothingBehind() throws {
        let directory = ArenaDirectory()
        var failures = 0
        for step in 1...100 {
            let plan = FaultPlan()
            plan.fail(nil, at: step, with: .noSpace)
            var configuration = Arena.Configuration(tracking: .explicit)
            configuration.fileLayer = plan.layer
            do {
                let arena = try Arena.create(path: directory.arena, capacity: 1 << 20, configuration: configuration)
                let injected = plan.injected
                plan.clear()
                try arena.close()
                #expect(try Arena.open(path: directory.arena, access: .readOnly).check().allocations == 0)
                if injected == 0 { break }
                unlink(directory.arena)
                unlink(directory.log)
            } catch {
                failures += 1
                #expect(error.errno == .noSpace, "step \(step): \(error)")
                #expect(directory.entries.isEmpty, "step \(step): a failed create left \(directory.entries)")
            }
        }
        #expect(failures >= 5, "a create has at least five file operations that can fail")
    }

    // MARK: Full file systems

    @Test(.enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason))
    func onAFullFileSystemAllocationAndSyncFailWithErrorsNotSignals() throws {
        guard let disk = SmallTmpfs(bytes: 24 << 20) else { Issue.record("mount failed"); return }
        let path = "\(disk.path)/full.arena"
        let arena = try Arena.create(path: path, capacity: 64 << 20)
        let first = try arena.allocate(byteCount: 1 << 20)
        try arena.fill(first, count: 1 << 20, with: 1)
        try arena.sync(epoch: 0, event: 1)
        let filler = disk.fill()
        // The issue's case: a store into newly allocated memory died by SIGBUS.
        let error = expectMemSnapError {
            let offset = try arena.allocate(byteCount: 4 << 20)
            try arena.fill(offset, count: 4 << 20, with: 2)
        }
        #expect(error?.errno == .noSpace)
        try arena.fill(first, count: 1 << 20, with: 3)  // memory allocated before is still there
        #expect(try arena.check().allocations == 1)
        unlink(filler)
        let second = try arena.allocate(byteCount: 4 << 20)
        try arena.fill(second, count: 4 << 20, with: 4)
        try arena.sync(epoch: 0, event: 2)
        try arena.close()
        let reopened = try Arena.open(path: path, access: .readOnly)
        #expect(try reopened.bytes(first, count: 1 << 20).allSatisfy { $0 == 3 })
        #expect(try reopened.bytes(second, count: 4 << 20).allSatisfy { $0 == 4 })
        try reopened.close()
    }

    @Test(.enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason))
    func aSyncOnAFullFileSystemFailsAndARetryAfterSpaceIsFreedKeepsEveryWrite() throws {
        guard let disk = SmallTmpfs(bytes: 16 << 20) else { Issue.record("mount failed"); return }
        let path = "\(disk.path)/full.arena"
        let arena = try Arena.create(path: path, capacity: 64 << 20)
        let blob = try arena.allocate(byteCount: 6 << 20)
        try arena.sync(epoch: 0, event: 1)
        let filler = disk.fill()
        try arena.fill(blob, count: 6 << 20, with: 9)  // a 6 MiB record the log has no room for
        let error = expectMemSnapError { try arena.sync(epoch: 0, event: 2) }
        #expect(error?.errno == .noSpace)
        #expect(arena.event == 1)
        unlink(filler)
        try arena.sync(epoch: 0, event: 2)
        try arena.close()
        let reopened = try Arena.open(path: path, access: .readOnly)
        #expect(reopened.event == 2)
        #expect(try reopened.bytes(blob, count: 6 << 20).allSatisfy { $0 == 9 })
        try reopened.close()
    }

    /// Compaction punches the interiors of free runs; when freeing later lowers top through such
    /// a run, the pages above the new top are holes again, and growing top must reserve them.
    @Test(.enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason))
    func pagesPunchedByCompactionAreReservedAgainWhenTopGrowsBackOverThem() throws {
        guard let disk = SmallTmpfs(bytes: 24 << 20) else { Issue.record("mount failed"); return }
        let path = "\(disk.path)/punched.arena"
        do {
            let arena = try Arena.create(path: path, capacity: 64 << 20, configuration: .init(tracking: .explicit))
            _ = try arena.allocate(byteCount: 10 * pageSize)
            let middle = try arena.allocate(byteCount: 2 << 20)
            _ = try arena.allocate(byteCount: pageSize)
            try arena.free(middle)
            try arena.sync(epoch: 0, event: 1)
            try arena.sync(epoch: 0, event: 2)  // the free is released: a free run of 2 MiB
            try arena.close()
        }
        _ = try Arena.compact(path: path)  // punches the run's interior
        let arena = try Arena.open(path: path, configuration: .init(tracking: .explicit))
        let statistics = try arena.statistics
        let last = ArenaOffset(rawValue: UInt64(statistics.usedBytes - pageSize))
        try arena.free(last)
        try arena.sync(epoch: 0, event: 3)
        try arena.sync(epoch: 0, event: 4)  // top falls back over the punched run
        #expect(try arena.statistics.usedBytes < statistics.usedBytes - (2 << 20) + pageSize)
        let filler = disk.fill()
        let error = expectMemSnapError {
            let again = try arena.allocate(byteCount: 2 << 20)
            try arena.fill(again, count: 2 << 20, with: 5)  // SIGBUS if its pages were not reserved
        }
        #expect(error?.errno == .noSpace)
        unlink(filler)
        let again = try arena.allocate(byteCount: 2 << 20)
        try arena.fill(again, count: 2 << 20, with: 5)
        try arena.close()
    }

    @Test(.enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason))
    func aCreateOnAFullFileSystemLeavesNothing() throws {
        guard let disk = SmallTmpfs(bytes: 4 << 20) else { Issue.record("mount failed"); return }
        disk.fill()
        let error = expectMemSnapError { _ = try Arena.create(path: "\(disk.path)/new.arena", capacity: 64 << 20) }
        #expect(error?.errno == .noSpace)
        #expect(disk.entries == ["filler"])
    }
}
