#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import Testing

@Suite("Arena: a persistent heap with an allocator, roots and crash-consistent sync")
struct ArenaTests {
    @Test func syncedStateSurvivesCloseAndReopenAndUnsyncedWritesDoNot() throws {
        let directory = ArenaDirectory()
        var blob: ArenaOffset
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 16 << 20)
            blob = try arena.allocate(byteCount: 3 * pageSize + 100)
            try arena.fill(blob, count: 3 * pageSize + 100, with: 0xAB)
            try arena.setRoot(0, to: blob.rawValue)
            try arena.setRoot(31, to: 77)
            try arena.sync(epoch: 1, event: 1)
            try arena.fill(blob, count: 10, with: 0xCD)  // never synced
            try arena.setRoot(31, to: 78)
            try arena.close()
        }
        let arena = try Arena.open(path: directory.arena)
        #expect(arena.commitCounter == 2, "creation is commit 1")
        #expect(arena.epoch == 1 && arena.event == 1)
        #expect(try arena.root(0) == blob.rawValue)
        #expect(try arena.root(31) == 77, "the unsynced root change is gone")
        #expect(try arena.bytes(blob, count: 3 * pageSize + 100) == [UInt8](repeating: 0xAB, count: 3 * pageSize + 100))
        #expect(try arena.check().allocations == 1)
        try arena.close()
    }

    @Test func syncRefusesAnEpochAndEventThatDoNotIncrease() throws {
        let directory = ArenaDirectory()
        let arena = try Arena.create(path: directory.arena, capacity: 1 << 20)
        try arena.sync(epoch: 2, event: 5)
        expectReason(.invalidArgument("epoch/event (2, 5) does not increase past (2, 5)")) { try arena.sync(epoch: 2, event: 5) }
        expectReason(.invalidArgument("epoch/event (1, 9) does not increase past (2, 5)")) { try arena.sync(epoch: 1, event: 9) }
        try arena.sync(epoch: 3, event: 0)
        #expect(arena.epoch == 3 && arena.event == 0)
        expectReason(.outOfBounds(offset: 32, length: 1, size: 32)) { try arena.setRoot(32, to: 1) }
    }

    @Test func doubleFreesAndForeignPointersAreErrorsNotCorruption() throws {
        let directory = ArenaDirectory()
        let arena = try Arena.create(path: directory.arena, capacity: 4 << 20)
        let small = try arena.allocate(byteCount: 40)
        let large = try arena.allocate(byteCount: 3 * pageSize)
        try arena.free(small)
        expectReason(.invalidArgument("it is not the start of an allocated slot (double free or an interior pointer)")) { try arena.free(small) }
        try arena.free(large)
        expectReason(.invalidArgument("it is not allocated (double free?)")) { try arena.free(large) }
        let other = try arena.allocate(byteCount: 2 * pageSize)
        expectReason(.invalidArgument("it points inside an allocation, not at its start")) {
            try arena.free(ArenaOffset(rawValue: other.rawValue + UInt64(pageSize)))
        }
        expectReason(.invalidArgument("it points into the allocator's own metadata")) { try arena.free(ArenaOffset(rawValue: 8)) }
        expectReason(.invalidArgument("it lies outside the arena")) { try arena.free(ArenaOffset(rawValue: 1 << 40)) }
        var outside = 0
        #expect(!arena.contains(&outside))
        #expect(arena.contains(try arena.address(of: other)))
        _ = try arena.check()
    }

    @Test func freedSpaceIsReusedOnlyAfterTheFreeingSync() throws {
        let directory = ArenaDirectory()
        let arena = try Arena.create(path: directory.arena, capacity: 4 << 20)
        let first = try arena.allocate(byteCount: 5 * pageSize)
        try arena.sync(epoch: 0, event: 1)
        try arena.free(first)
        let second = try arena.allocate(byteCount: 5 * pageSize)
        #expect(second != first, "not reused before the free is durable")
        try arena.sync(epoch: 0, event: 2)
        let third = try arena.allocate(byteCount: 5 * pageSize)
        #expect(third == first, "reused after it")
    }

    /// With `.explicit` tracking the test declares only its own writes: the allocator's must
    /// reach the log without being declared. With automatic tracking it declares nothing, so a
    /// write the tracker misses shows up after a reopen.
    @Test(arguments: TrackingUnderTest.allCases)
    func aRandomizedWorkloadKeepsEveryAllocationIntactAcrossSyncsAndReopens(tracking: TrackingUnderTest) throws {
        let directory = ArenaDirectory()
        let configuration = tracking.configuration
        var arena = try Arena.create(path: directory.arena, capacity: 64 << 20, configuration: configuration)
        var live: [ArenaOffset: (size: Int, byte: UInt8)] = [:]
        var random = TestSeed.generator()
        var event: UInt64 = 0
        for step in 0..<12_000 {
            let roll = random.next() % 100
            if roll < 55 || live.isEmpty {
                let size = roll < 45 ? Int(1 + random.next() % 1024) : Int(1 + random.next() % (6 * UInt64(pageSize)))
                let alignment = [1, 8, 16, 64, 4096][Int(random.next() % 5)]
                let offset = try arena.allocate(byteCount: size, alignment: alignment)
                #expect(offset.rawValue % UInt64(alignment) == 0)
                let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                try arena.fill(offset, count: size, with: byte)
                if tracking.declaresWrites { arena.markDirty(Int(offset.rawValue)..<Int(offset.rawValue) + size) }
                live[offset] = (size, byte)
            } else if roll < 70 {  // rewrite in place: often an object in a chunk no sync saw written lately
                let target = live.keys.sorted()[Int(random.next() % UInt64(live.count))]
                let size = live[target]!.size
                let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                try arena.fill(target, count: size, with: byte)
                if tracking.declaresWrites { arena.markDirty(Int(target.rawValue)..<Int(target.rawValue) + size) }
                live[target] = (size, byte)
            } else {
                let victim = live.keys.sorted()[Int(random.next() % UInt64(live.count))]
                let (size, byte) = live.removeValue(forKey: victim)!
                #expect(try arena.bytes(victim, count: size).allSatisfy { $0 == byte }, "step \(step): another allocation overlapped it")
                try arena.free(victim)
            }
            if step % 100 == 99 {
                event += 1
                try arena.sync(epoch: 0, event: event)
                #expect(try arena.check().allocations == live.count)
            }
            if step % 4000 == 3999 {
                try arena.close()
                arena = try Arena.open(path: directory.arena, configuration: configuration)
                #expect(try arena.check().allocations == live.count, "after reopening")
                for (offset, value) in live {
                    #expect(try arena.bytes(offset, count: value.size).allSatisfy { $0 == value.byte }, "after reopening")
                }
            }
        }
        try arena.close()
    }

    @Test func aFlippedBitInEitherMetapageFallsBackToTheOtherCopy() throws {
        let directory = ArenaDirectory()
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 2 << 20)
            try arena.setRoot(3, to: 333)
            try arena.sync(epoch: 1, event: 1)
            try arena.close()
        }
        for slot in 0..<2 {
            let fd = open(directory.arena, O_RDWR)
            var byte: UInt8 = 0
            pread(fd, &byte, 1, off_t(slot * 4096 + 100))
            byte ^= 0x10
            pwrite(fd, &byte, 1, off_t(slot * 4096 + 100))
            let arena = try Arena.open(path: directory.arena)
            #expect(try arena.root(3) == 333, "slot \(slot) damaged")
            try arena.close()  // rewrites both copies
            close(fd)
        }
        // Both copies damaged: a clear error.
        let fd = open(directory.arena, O_RDWR)
        var zeros = [UInt8](repeating: 0, count: 64)
        pwrite(fd, &zeros, 64, 0)
        pwrite(fd, &zeros, 64, 4096)
        close(fd)
        expectReason(.corrupt("both metapages are damaged or missing (slot 0: no metapage magic; slot 1: no metapage magic); "
                              + "not an arena, or destroyed")) {
            _ = try Arena.open(path: directory.arena)
        }
    }

    @Test func aTornLogTailIsIgnoredAndTheLastCompleteSyncWins() throws {
        let directory = ArenaDirectory()
        let blob: ArenaOffset
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 2 << 20)
            blob = try arena.allocate(byteCount: 8)
            try arena.fill(blob, count: 8, with: 1)
            try arena.sync(epoch: 0, event: 1)
            try arena.fill(blob, count: 8, with: 2)
            try arena.sync(epoch: 0, event: 2)
            // Simulate a crash: the log is left as is (no close, no checkpoint), then its last
            // record is cut short.
            let logEnd = try arena.statistics.logBytes
            arena.abandon()
            #expect(truncate(directory.arena + "-wal", off_t(logEnd - 100)) == 0)
        }
        let arena = try Arena.open(path: directory.arena)
        #expect(arena.event == 1)
        #expect(try arena.bytes(blob, count: 8) == [UInt8](repeating: 1, count: 8))
        try arena.close()
    }

    @Test func aDamagedLastRecordFailsItsChecksumAndIsIgnored() throws {
        let directory = ArenaDirectory()
        let blob: ArenaOffset
        var logEnd = 0
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 2 << 20)
            blob = try arena.allocate(byteCount: 8)
            try arena.fill(blob, count: 8, with: 1)
            try arena.sync(epoch: 0, event: 1)
            try arena.fill(blob, count: 8, with: 2)
            try arena.sync(epoch: 0, event: 2)
            logEnd = try arena.statistics.logBytes
            arena.abandon()
        }
        // Flip one byte in the last page image of the last record: its length is intact, so only
        // the CRC32C can tell (as after a power loss that reordered writes).
        let fd = open(directory.arena + "-wal", O_RDWR)
        let size = logEnd
        var byte: UInt8 = 0
        pread(fd, &byte, 1, off_t(size - 4 - 100))
        byte ^= 0xFF
        pwrite(fd, &byte, 1, off_t(size - 4 - 100))
        close(fd)
        let arena = try Arena.open(path: directory.arena)
        #expect(arena.event == 1)
        #expect(try arena.bytes(blob, count: 8) == [UInt8](repeating: 1, count: 8))
        try arena.close()
    }

    @Test func aSyncOf100000DirtyPagesWorks() throws {
        let directory = ArenaDirectory()
        let pages = 100_000
        let arena = try Arena.create(path: directory.arena, capacity: (pages + 1024) * pageSize)
        let blob = try arena.allocate(byteCount: pages * pageSize)
        for page in 0..<pages { try arena.address(of: blob, byteCount: pages * pageSize).storeBytes(of: UInt64(page), toByteOffset: page * pageSize + 8, as: UInt64.self) }
        try arena.sync(epoch: 0, event: 1)
        try arena.close()
        let reopened = try Arena.open(path: directory.arena)
        for page in stride(from: 0, to: pages, by: 997) {
            #expect(try reopened.address(of: blob, byteCount: pages * pageSize).load(fromByteOffset: page * pageSize + 8, as: UInt64.self) == UInt64(page))
        }
        try reopened.close()
    }

    @Test func compactionGivesFreeSpaceBackAndKeepsEveryLiveByte() throws {
        let directory = ArenaDirectory()
        var kept: [ArenaOffset] = []
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 64 << 20)
            var freed: [ArenaOffset] = []
            for index in 0..<40 {
                let offset = try arena.allocate(byteCount: 256 << 10)
                try arena.fill(offset, count: 256 << 10, with: UInt8(index + 1))
                if index % 2 == 0 { kept.append(offset) } else { freed.append(offset) }
            }
            let small = try arena.allocate(byteCount: 100)
            try arena.fill(small, count: 100, with: 0xEE)
            kept.append(small)
            try arena.sync(epoch: 0, event: 1)
            for offset in freed { try arena.free(offset) }
            try arena.sync(epoch: 0, event: 2)
            try arena.close()
        }
        let (before, after) = try Arena.compact(path: directory.arena)
        #expect(after < before - (4 << 20), "about 5 MiB of freed runs went back (\(before) -> \(after))")
        let arena = try Arena.open(path: directory.arena)
        #expect(try arena.check().allocations == kept.count)
        for (index, offset) in kept.dropLast().enumerated() {
            #expect(try arena.bytes(offset, count: 256 << 10).allSatisfy { $0 == UInt8(index * 2 + 1) })
        }
        #expect(try arena.bytes(kept.last!, count: 100).allSatisfy { $0 == 0xEE })
        #expect(arena.event == 2, "compaction does not change the epoch or event")
        try arena.close()
    }

    @Test func explicitTrackingSyncsOnlyDeclaredPages() throws {
        let directory = ArenaDirectory()
        let blob: ArenaOffset
        do {
            let arena = try Arena.create(path: directory.arena, capacity: 2 << 20, configuration: .init(tracking: .explicit))
            blob = try arena.allocate(byteCount: 2 * pageSize)
            try arena.fill(blob, count: 2 * pageSize, with: 9)
            arena.markDirty(Int(blob.rawValue)..<Int(blob.rawValue) + pageSize)  // only the first page
            try arena.sync(epoch: 0, event: 1)
            try arena.close()
        }
        let arena = try Arena.open(path: directory.arena, configuration: .init(tracking: .explicit))
        #expect(try arena.bytes(blob, count: 1) == [9])
        #expect(try arena.bytes(ArenaOffset(rawValue: blob.rawValue + UInt64(pageSize)), count: 1) == [0], "undeclared writes are not synced")
        #expect(try arena.statistics.allocations == 1, "the allocator's own writes are synced without being declared")
        #expect(try arena.check().allocations == 1)
        try arena.free(blob)
        try arena.sync(epoch: 0, event: 2)
        try arena.close()
        let reopened = try Arena.open(path: directory.arena, configuration: .init(tracking: .explicit))
        #expect(try reopened.statistics.allocations == 0, "a free is synced without being declared")
        #expect(try reopened.check().allocations == 0)
        try reopened.close()
    }
}

