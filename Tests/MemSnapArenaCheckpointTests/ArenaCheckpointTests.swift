#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapArena
import MemSnapArenaCheckpoint
import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// An arena filled with random objects, some freed, roots set, synced several times: what a
/// round trip must keep. `objects` maps each live allocation to its bytes.
struct ArenaWorkload {
    var objects: [ArenaOffset: [UInt8]] = [:]
    var random: SplitMix64

    mutating func run(on arena: Arena, rounds: Int, epoch: UInt64) throws {
        for round in 0..<rounds {
            for _ in 0..<40 {
                let size = random.next() % 5 == 0 ? 4096 + Int(random.next() % 20_000) : 1 + Int(random.next() % 900)
                let offset = try arena.allocate(byteCount: size)
                let bytes = (0..<size).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                try arena.address(of: offset, byteCount: size).copyMemory(from: bytes, byteCount: size)
                arena.markDirty(Int(offset.rawValue)..<Int(offset.rawValue) + size)
                objects[offset] = bytes
            }
            for offset in objects.keys.sorted(by: { $0.rawValue < $1.rawValue }) where random.next() % 6 == 0 {
                try arena.free(offset)
                objects[offset] = nil
            }
            for root in 0..<4 {
                let live = objects.keys.sorted { $0.rawValue < $1.rawValue }
                try arena.setRoot(root, to: live.isEmpty ? 0 : live[Int(random.next() % UInt64(live.count))].rawValue)
            }
            try arena.sync(epoch: epoch, event: UInt64(round + 1))
        }
    }

    /// Every object, root, counter and statistic of `arena` equals `original`'s.
    func expectSame(_ arena: Arena, as original: (roots: [UInt64], commit: UInt64, epoch: UInt64, event: UInt64, statistics: Arena.Statistics),
                    sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try arena.check().allocations == objects.count, sourceLocation: sourceLocation)
        for (offset, bytes) in objects {
            let stored = [UInt8](UnsafeRawBufferPointer(start: try arena.address(of: offset, byteCount: bytes.count), count: bytes.count))
            #expect(stored == bytes, "object at \(offset.rawValue)", sourceLocation: sourceLocation)
        }
        #expect(arena.committedRoots == original.roots, sourceLocation: sourceLocation)
        #expect((arena.commitCounter, arena.epoch, arena.event) == (original.commit, original.epoch, original.event), sourceLocation: sourceLocation)
        var statistics = try arena.statistics
        statistics.logBytes = original.statistics.logBytes
        #expect(statistics == original.statistics, sourceLocation: sourceLocation)
    }
}

@Suite("Arenas move between machines through checkpoints")
struct ArenaCheckpointTests {
    func state(_ arena: Arena) throws -> (roots: [UInt64], commit: UInt64, epoch: UInt64, event: UInt64, statistics: Arena.Statistics) {
        (arena.committedRoots, arena.commitCounter, arena.epoch, arena.event, try arena.statistics)
    }

    @Test func anArenaRestoredFromItsCheckpointOnASecondPathHasEveryObjectRootAndCounter() throws {
        let here = TemporaryDirectory(), there = TemporaryDirectory()
        var workload = ArenaWorkload(random: TestSeed.generator())
        let source = here.file("state.arena")
        do {
            let arena = try Arena.create(path: source, capacity: 8 << 20, configuration: .init(tracking: .explicit))
            try workload.run(on: arena, rounds: 5, epoch: 3)
            try arena.close()
        }
        let original = try { () throws -> (roots: [UInt64], commit: UInt64, epoch: UInt64, event: UInt64, statistics: Arena.Statistics) in
            let arena = try Arena.open(path: source, access: .readOnly)
            defer { try? arena.close() }
            return try state(arena)
        }()
        let sourceBase = try { () throws -> UInt in
            let arena = try Arena.open(path: source, access: .readOnly)
            defer { try? arena.close() }
            return arena.recordedBase
        }()
        let checkpoint = here.file("state.ckpt")
        let summary = try ArenaCheckpoint.write(arenaAt: source, to: .file(path: checkpoint, force: false))
        let file = try CheckpointFile(path: checkpoint)
        #expect(file.arenaState?.roots == original.roots && file.arenaState?.commit == original.commit)
        #expect(summary.imageSize == original.statistics.usedBytes)
        try FileManager.default.copyItem(atPath: checkpoint, toPath: there.file("moved.ckpt"))
        try ArenaCheckpoint.restore(from: there.file("moved.ckpt"), toArenaAt: there.file("copy.arena")).close()
        // Both read-only: a read-write open releases the last sync's frees in memory (top may drop).
        let inspected = try Arena.open(path: there.file("copy.arena"), access: .readOnly)
        try workload.expectSame(inspected, as: original)
        #expect(UInt64(inspected.recordedBase) == file.arenaState?.recordedBase && inspected.recordedBase == sourceBase,
                "the copy prefers the original's address")
        try inspected.close()
        // It is a working arena: the next sync is the next commit, and it reopens as synced.
        let restored = try Arena.open(path: there.file("copy.arena"))
        let extra = try restored.allocate(byteCount: 100)
        try restored.sync(epoch: 3, event: 100)
        #expect(restored.commitCounter == original.commit + 1)
        try restored.close()
        let reopened = try Arena.open(path: there.file("copy.arena"), access: .readOnly)
        #expect(try reopened.check().allocations == workload.objects.count + 1)
        _ = extra
        try reopened.close()
    }

    @Test func incrementalCheckpointsOfAnArenaFollowItsSyncs() throws {
        let directory = TemporaryDirectory()
        var workload = ArenaWorkload(random: TestSeed.generator())
        let source = directory.file("state.arena")
        let arena = try Arena.create(path: source, capacity: 16 << 20)
        try workload.run(on: arena, rounds: 3, epoch: 1)
        var paths = [directory.file("0.ckpt")]
        try ArenaCheckpoint.write(arena, to: .file(path: paths[0], force: false))
        for link in 1...3 {
            try workload.run(on: arena, rounds: 2, epoch: UInt64(1 + link))
            // Written after the sync, not synced: not in the checkpoint.
            let unsynced = try arena.allocate(byteCount: 64)
            try arena.address(of: unsynced, byteCount: 8).storeBytes(of: 0xDEAD, as: UInt64.self)
            try arena.free(unsynced)
            let path = directory.file("\(link).ckpt")
            let summary = try ArenaCheckpoint.write(arena, to: .file(path: path, force: false),
                                                    comparingWith: CheckpointChain(tip: paths[paths.count - 1]))
            #expect(summary.changedPages.map { $0 < summary.imageSize / 4096 } == true, "link \(link) holds only the changed pages")
            paths.append(path)
            try arena.sync(epoch: UInt64(1 + link), event: 1000)
        }
        let expected = try state(arena)
        try arena.close()
        // The last checkpoint was taken before the last sync (of the unsynced allocation's free).
        let copy = try ArenaCheckpoint.restore(from: paths[paths.count - 1], toArenaAt: directory.file("copy.arena"))
        #expect(copy.commitCounter == expected.commit - 1 && copy.event != 1000)
        for (offset, bytes) in workload.objects {
            #expect(try [UInt8](UnsafeRawBufferPointer(start: copy.address(of: offset, byteCount: bytes.count), count: bytes.count)) == bytes)
        }
        #expect(try copy.check().allocations == workload.objects.count)
        try copy.close()
    }

    @Test func anImageThatFailsTheArenasCheckIsRefusedAndLeavesNoFile() throws {
        let directory = TemporaryDirectory()
        let source = directory.file("state.arena")
        let arena = try Arena.create(path: source, capacity: 1 << 20, configuration: .init(tracking: .explicit))
        let object = try arena.allocate(byteCount: 5000)
        try arena.sync(epoch: 1, event: 1)
        let (image, state) = try arena.withSyncedImage { (bytes, state) throws(MemSnapError) in ([UInt8](bytes), state) }
        try arena.close()
        // The page map entry of the object's first page (page map at page 1, one u32 per page).
        var damaged = image
        let entry = 4096 + Int(object.rawValue / 4096) * 4
        damaged[entry + 3] = 0x90  // kind 9: no such kind
        let target = directory.file("copy.arena")
        let error = expectMemSnapError {
            _ = try damaged.withUnsafeBytes { try Arena.create(path: target, image: $0, state: state) }
        }
        #expect(error?.operation.contains("refused, the image fails the arena's check") == true, "\(String(describing: error))")
        guard case .corrupt? = error?.reason else { Issue.record("expected corrupt: \(String(describing: error))"); return }
        var small = state
        small.capacity = 4096
        let tooSmall = expectMemSnapError { _ = try image.withUnsafeBytes { try Arena.create(path: target, image: $0, state: small) } }
        guard case .invalidArgument? = tooSmall?.reason else { Issue.record("\(String(describing: tooSmall))"); return }
        var rootless = state
        rootless.roots = [1]
        _ = expectMemSnapError { _ = try image.withUnsafeBytes { try Arena.create(path: target, image: $0, state: rootless) } }
        let taken = expectMemSnapError { _ = try image.withUnsafeBytes { try Arena.create(path: source, image: $0, state: state) } }
        #expect(taken?.errno == .fileExists)
        #expect(directory.entries == ["state.arena", "state.arena-wal"], "nothing made")
        let good = try image.withUnsafeBytes { try Arena.create(path: target, image: $0, state: state) }
        #expect(good.commitCounter == state.commit && good.committedRoots == state.roots)
        try good.close()
    }

    @Test func aVersionOneCheckpointOfAnArenaHoldsItsHeapAloneForOlderReaders() throws {
        let directory = TemporaryDirectory()
        let source = directory.file("state.arena")
        let arena = try Arena.create(path: source, capacity: 1 << 20, configuration: .init(tracking: .explicit))
        try arena.sync(epoch: 1, event: 1)
        let heap = try arena.withSyncedImage { (bytes, _) throws(MemSnapError) in [UInt8](bytes) }
        try arena.close()
        let path = directory.file("old.ckpt")
        try ArenaCheckpoint.write(arenaAt: source, to: .file(path: path, force: false), options: CheckpointOptions(formatVersion: 1))
        let file = try CheckpointFile(path: path)
        #expect(file.formatVersion == 1 && file.arenaState == nil)
        let restored = try Checkpoint.restoreSnapshot(from: path)
        #expect(try restored.read(at: 0, count: restored.size) == heap)
    }

    @Test func aCheckpointOfARawImageIsNotRestoredAsAnArena() throws {
        let directory = TemporaryDirectory()
        let path = directory.file("raw.ckpt")
        let image = [UInt8](repeating: 1, count: 8192)
        try image.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: path, force: false)) }
        let error = expectMemSnapError { _ = try ArenaCheckpoint.restore(from: path, toArenaAt: directory.file("x.arena")) }
        #expect(error?.reason == .invalidArgument("the checkpoint records no arena state: it is not a checkpoint of an arena"))
        #expect(directory.entries == ["raw.ckpt"])
    }

    /// `memsnap checkpoint ARENA OUT`, `memsnap restore OUT --arena PATH`, `memsnap arena check PATH`.
    @Test(.enabled(if: MemsnapExecutable.path != nil, Comment(rawValue: MemsnapExecutable.notBuiltReason)))
    func theCommandLineCheckpointsAnArenaAndRestoresItAsAnotherOne() throws {
        let directory = TemporaryDirectory()
        var workload = ArenaWorkload(random: TestSeed.generator())
        let arena = try Arena.create(path: directory.file("a.arena"), capacity: 4 << 20, configuration: .init(tracking: .explicit))
        try workload.run(on: arena, rounds: 3, epoch: 9)
        try arena.close()
        // Read-only, as the copies are opened below: a read-write open releases the last sync's
        // frees in memory, which may lower top.
        let inspected = try Arena.open(path: directory.file("a.arena"), access: .readOnly)
        let original = try state(inspected)
        try inspected.close()
        for arguments in [["checkpoint", "a.arena", "a.ckpt"], ["restore", "a.ckpt", "--arena", "b.arena"], ["arena", "check", "b.arena"],
                          ["checkpoint", "a.arena", "a2.ckpt", "--parent", "a.ckpt"], ["restore", "a2.ckpt", "--arena", "c.arena"]] {
            let result = try MemsnapExecutable.run(arguments, in: directory.path)
            #expect(result.status == 0, "\(arguments): \(result.output)")
        }
        let info = try MemsnapExecutable.run(["info", "a.ckpt"], in: directory.path)
        #expect(info.output.contains("arena: capacity 4.0 MiB, commit \(original.commit), epoch 9, event 3"), "\(info.output)")
        #expect(try CheckpointFile(path: directory.file("a2.ckpt")).frameCount == 0, "nothing changed since a.ckpt")
        for copy in ["b.arena", "c.arena"] {
            let restored = try Arena.open(path: directory.file(copy), access: .readOnly)
            try workload.expectSame(restored, as: original)
            try restored.close()
        }
        let refused = try MemsnapExecutable.run(["restore", "a.ckpt", "--arena", "b.arena"], in: directory.path)
        #expect(refused.status == 1 && refused.output.contains("File exists"), "\(refused.output)")
    }
}
