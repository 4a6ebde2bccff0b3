#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import Testing

/// An arena with something of each kind in it: slab slots of two classes, a page run, a free
/// run and roots; closed cleanly (the log empty) or abandoned with records still in its log.
struct SampleArena {
    static let capacity = 4 << 20  // 1024 pages: the page map is 1 page, data starts at page 2
    let directory = ArenaDirectory()
    var path: String { directory.arena }
    var small = ArenaOffset(rawValue: 0), other = ArenaOffset(rawValue: 0), run = ArenaOffset(rawValue: 0)

    /// With `abandoned`, the log holds records 1 (creation), 2 and 3 (two syncs) and the heap
    /// file none of them.
    static func make(abandoned: Bool = false) throws -> SampleArena {
        var sample = SampleArena()
        let arena = try Arena.create(path: sample.path, capacity: capacity)
        sample.small = try arena.allocate(byteCount: 40)
        sample.other = try arena.allocate(byteCount: 200)
        sample.run = try arena.allocate(byteCount: 3 * pageSize)
        let freed = try arena.allocate(byteCount: 5 * pageSize)
        _ = try arena.allocate(byteCount: 2 * pageSize)  // keeps the freed run below top
        try arena.fill(sample.small, count: 40, with: 0x11)
        try arena.fill(sample.other, count: 200, with: 0x22)
        try arena.fill(sample.run, count: 3 * pageSize, with: 0x33)
        try arena.setRoot(0, to: sample.run.rawValue)
        try arena.sync(epoch: 1, event: 1)
        try arena.free(freed)
        try arena.fill(sample.run, count: 2 * pageSize, with: 0x44)
        try arena.sync(epoch: 1, event: 2)
        if abandoned { arena.abandon() } else { try arena.close() }
        return sample
    }

    var smallPage: Int { Int(small.rawValue) / pageSize }
}

@Suite("Arena files are untrusted: wrong values under valid checksums are typed errors, never signals")
struct ArenaUntrustedFileTests {
    static let pages = SampleArena.capacity / pageSize

    // MARK: Metapages

    @Test(arguments: [MetaField.checkpointCommit, .counter])
    func aMetapageCounterAtUInt64MaxIsRefused(field: MetaField) throws {
        let sample = try SampleArena.make()
        resealMetapages(sample.path, field, to: .max)
        let counter = readU64(sample.path, at: MetaField.counter.rawValue)
        let commit = readU64(sample.path, at: MetaField.checkpointCommit.rawValue)
        let why = "counter \(counter) or checkpoint commit \(commit) is 2^63 or more"
        for access in [Arena.Access.readWrite, .readOnly] {
            expectReason(.corrupt("both metapages are damaged or missing (slot 0: \(why); slot 1: \(why)); not an arena, or destroyed")) {
                _ = try Arena.open(path: sample.path, access: access)
            }
        }
        #expect(Arena.isArena(path: sample.path), "still recognised as an arena, so tools report its error")
    }

    @Test func oneMetapageWithImpossibleValuesFallsBackToTheOtherAndIsRepaired() throws {
        let sample = try SampleArena.make()
        resealMetapages(sample.path, .checkpointCommit, to: .max, slots: [0])
        let arena = try Arena.open(path: sample.path)
        #expect(arena.event == 2)
        #expect(try arena.bytes(sample.run, count: 1) == [0x44])
        try arena.close()
        #expect(readU64(sample.path, at: MetaField.checkpointCommit.rawValue) < 1 << 63, "slot 0 rewritten from slot 1")
    }

    @Test(arguments: [-4096, 4096])
    func aMetapageCapacityThatDisagreesWithTheHeapFileIsRefused(change: Int) throws {
        let sample = try SampleArena.make()
        let capacity = SampleArena.capacity + change
        resealMetapages(sample.path, .capacity, to: UInt64(capacity))
        for access in [Arena.Access.readWrite, .readOnly] {
            expectReason(.corrupt("the heap file holds \(8192 + SampleArena.capacity) bytes, its metapage says 8192 + capacity \(capacity)")) {
                _ = try Arena.open(path: sample.path, access: access)
            }
        }
    }

    @Test func aHeapFileTruncatedBelowItsCapacityIsRefused() throws {
        let sample = try SampleArena.make()
        #expect(truncate(sample.path, off_t(8192 + SampleArena.capacity - 3 * pageSize)) == 0)
        expectReason(.corrupt("the heap file holds \(8192 + SampleArena.capacity - 3 * pageSize) bytes, its metapage says 8192 + capacity \(SampleArena.capacity)")) {
            _ = try Arena.open(path: sample.path, access: .readOnly)
        }
    }

    @Test(arguments: [UInt64(0), 4097, 1 << 50, .max])
    func aCapacityNoArenaCanHaveIsRefused(capacity: UInt64) throws {
        let sample = try SampleArena.make()
        resealMetapages(sample.path, .capacity, to: capacity)
        let why = "capacity \(capacity) is not a multiple of 4096 between 262144 and 1099511627776"
        expectReason(.corrupt("both metapages are damaged or missing (slot 0: \(why); slot 1: \(why)); not an arena, or destroyed")) {
            _ = try Arena.open(path: sample.path)
        }
    }

    // MARK: Log records

    /// The second entry of a record's page table is made impossible (the first stays valid, so
    /// a reader that applies as it goes writes it before noticing), and the record is re-sealed.
    @Test(arguments: [UInt64(pages), 1 << 63, 0])
    func aSealedLogRecordNamingAnImpossiblePageIsRefusedBeforeAnythingIsWritten(page: UInt64) throws {
        let sample = try SampleArena.make(abandoned: true)
        let records = logRecords(sample.directory.log, pageLimit: Self.pages)
        #expect(records.map(\.header.commit) == [1, 2, 3])
        let (position, header) = records[1]
        #expect(header.pageCount >= 2)
        patchFile(sample.directory.log, at: position + ArenaFormat.recordHeaderSize + 8, littleEndian(page))
        resealLogRecord(sample.directory.log, at: position, recordBytes: header.recordBytes)
        let heapBefore = fileBytes(sample.path), logBefore = fileBytes(sample.directory.log)
        let firstPage = readU64(sample.directory.log, at: position + ArenaFormat.recordHeaderSize)
        let why = page == 0
            ? "page table entry 1 names page 0 after page \(firstPage)"
            : "page table entry 1 names page \(page), past the heap's \(Self.pages) pages"
        for access in [Arena.Access.readWrite, .readOnly] {
            expectReason(.corrupt("log record 2 at offset \(position): \(why)")) { _ = try Arena.open(path: sample.path, access: access) }
        }
        #expect(fileBytes(sample.path) == heapBefore, "no page of any record reached the heap file")
        #expect(fileBytes(sample.directory.log) == logBefore)
    }

    @Test func aSealedLogRecordWhoseEpochGoesBackIsRefused() throws {
        let sample = try SampleArena.make(abandoned: true)
        let (position, header) = logRecords(sample.directory.log, pageLimit: Self.pages)[2]
        patchFile(sample.directory.log, at: position + 24, littleEndian(UInt64(0)))  // epoch 1 -> 0, after record 2's (1, 1)
        resealLogRecord(sample.directory.log, at: position, recordBytes: header.recordBytes)
        expectReason(.corrupt("log record 3 at offset \(position): epoch/event (0, 2) goes back from (1, 1)")) {
            _ = try Arena.open(path: sample.path)
        }
    }

    @Test func aTornRecordStillEndsRecoveryQuietlyAtTheLastCompleteSync() throws {
        let sample = try SampleArena.make(abandoned: true)
        let (position, _) = logRecords(sample.directory.log, pageLimit: Self.pages)[2]
        patchFile(sample.directory.log, at: position + ArenaFormat.recordHeaderSize + 8 + 100, [0xFF])  // no reseal: torn
        let arena = try Arena.open(path: sample.path, access: .readOnly)
        #expect(arena.event == 1)
        #expect(try arena.bytes(sample.run, count: 1) == [0x33])
    }

    // MARK: The allocator's own structures

    @Test(arguments: [
        (AllocatorField.top, UInt64(1) << 52, "top 4503599627370496 lies outside pages 2...1024"),
        (.top, 1 << 63, "top 9223372036854775808 lies outside pages 2...1024"),
        (.top, 1, "top 1 lies outside pages 2...1024"),
        (.allocationCount, 1 << 63, "statistics (9223372036854775808 allocations of 20784 bytes) exceed what 1024 pages can hold"),
        (.allocatedBytes, 1 << 63, "statistics (4 allocations of 9223372036854775808 bytes) exceed what 1024 pages can hold"),
        (.pendingHead, 1 << 40, "the pending-free list starts at offset 1099511627775, outside the allocated heap"),
    ])
    func aDamagedAllocatorHeaderIsRefusedOnEveryOpen(field: AllocatorField, value: UInt64, why: String) throws {
        let sample = try SampleArena.make()
        patchAllocator(sample.path, field, to: value)
        for access in [Arena.Access.readWrite, .readOnly] {
            expectReason(.corrupt("arena allocator: \(why)")) { _ = try Arena.open(path: sample.path, access: access) }
        }
    }

    @Test func aPageMapEntryNamingSlabClass100IsAnErrorForEveryOperation() throws {
        let sample = try SampleArena.make()
        patchPageMap(sample.path, page: sample.smallPage, kind: 5, value: 100)
        let arena = try Arena.open(path: sample.path)
        let why = MemSnapError.Reason.corrupt("arena allocator: page \(sample.smallPage) is not a slab (the page map says slab 100)")
        expectReason(why) { _ = try arena.check() }
        expectReason(why) { try arena.free(sample.small) }
        expectReason(why) { _ = try arena.allocate(byteCount: 40) }
        #expect(try arena.statistics.allocations == 4, "what does not touch the slab still works")
        try arena.close()
        let compact = expectMemSnapError { _ = try Arena.compact(path: sample.path) }
        #expect(compact?.reason == why)
        #expect(compact?.operation == "compact arena \(sample.path): refused, the arena fails its check")
    }

    @Test func aPendingFreeOnAMetadataPageIsRefusedOnOpen() throws {
        let sample = try SampleArena.make()
        patchAllocator(sample.path, .pendingHead, to: UInt64(pageSize + 16 + 1))  // offset 4112: the page map
        for access in [Arena.Access.readWrite, .readOnly] {
            expectReason(.corrupt("arena allocator: the pending-free list starts at offset 4112, outside the allocated heap")) {
                _ = try Arena.open(path: sample.path, access: access)
            }
        }
    }

    /// A page-map entry calling the allocator's header page an allocation: freeing it must not
    /// write the pending link over the header, and `check` names the lie.
    @Test func aMetadataPageDressedUpAsAnAllocationCannotBeFreed() throws {
        let sample = try SampleArena.make()
        patchPageMap(sample.path, page: 0, kind: 3, value: 1)  // page 0: "a run of one page"
        let arena = try Arena.open(path: sample.path)
        expectReason(.invalidArgument("it points into the allocator's own metadata")) { try arena.free(ArenaOffset(rawValue: 0)) }
        expectReason(.corrupt("arena allocator: page 0 holds the allocator's metadata but the page map says otherwise")) {
            _ = try arena.check()
        }
        try arena.close()
    }

    /// The case: one corrupted `top`, lowered below live allocations, made compaction
    /// punch out every live byte past it. (Lowered further, below the pending free run, it is
    /// refused on open already.)
    @Test func compactRefusesAnArenaThatFailsItsCheckAndChangesNoByte() throws {
        let sample = try SampleArena.make()
        patchAllocator(sample.path, .top, to: 12)  // the last allocation is pages 12 and 13
        let before = fileBytes(sample.path)
        let error = expectMemSnapError { _ = try Arena.compact(path: sample.path) }
        #expect(error?.operation == "compact arena \(sample.path): refused, the arena fails its check")
        #expect(error?.reason == .corrupt("arena allocator: counted 3 allocations of 12592 bytes, the header says 4 of 20784"))
        #expect(fileBytes(sample.path) == before, "not a byte punched")
        patchAllocator(sample.path, .top, to: 3)
        expectReason(.corrupt("arena allocator: the pending-free list starts at offset 28672, outside the allocated heap")) {
            _ = try Arena.compact(path: sample.path)
        }
    }

    @Test func damageWrittenIntoTheHeapWhileOpenBecomesATypedErrorNamingTheStructure() throws {
        let sample = try SampleArena.make()
        let arena = try Arena.open(path: sample.path, configuration: .init(tracking: .explicit))
        let header = try arena.address(of: ArenaOffset(rawValue: 0), byteCount: pageSize)
        // A free-list head pointing past top.
        let bucket = 64 + 2 * 4  // the list of 4- to 7-page runs, where the freed 5 pages sit
        let saved = header.load(fromByteOffset: bucket, as: UInt32.self)
        header.storeBytes(of: UInt32(900), toByteOffset: bucket, as: UInt32.self)
        expectReason(.corrupt("arena allocator: free list 2 head links to page 900, outside the allocated pages 2..<14")) {
            _ = try arena.allocate(byteCount: 5 * pageSize)
        }
        header.storeBytes(of: saved, toByteOffset: bucket, as: UInt32.self)
        // The slab's free-slot list naming a slot that is allocated.
        let slab = try arena.address(of: ArenaOffset(rawValue: UInt64(sample.smallPage * pageSize)), byteCount: 64)
        slab.storeBytes(of: UInt16(1), toByteOffset: 6, as: UInt16.self)
        expectReason(.corrupt("arena allocator: the free-slot list of the slab at page \(sample.smallPage) names slot 0, which is allocated")) {
            _ = try arena.allocate(byteCount: 40)
        }
        // top itself.
        header.storeBytes(of: UInt64.max, toByteOffset: 24, as: UInt64.self)
        let why = MemSnapError.Reason.corrupt("arena allocator: top 18446744073709551615 lies outside pages 2...1024")
        expectReason(why) { _ = try arena.allocate(byteCount: 5000) }
        expectReason(why) { try arena.free(sample.run) }
        expectReason(why) { _ = try arena.statistics }
        expectReason(why) { _ = try arena.check() }
        arena.abandon()
    }

    @Test func aCommitCounterAtTheLimitRefusesFurtherSyncsWithAnError() throws {
        let sample = try SampleArena.make()
        let limit = UInt64(1) << 63
        resealMetapages(sample.path, .checkpointCommit, to: limit - 2)
        let arena = try Arena.open(path: sample.path)
        try arena.sync(epoch: 9, event: 1)
        #expect(arena.commitCounter == limit - 1)
        expectReason(.unavailable("the commit counter has reached 2^63 - 1: no reader would accept another commit")) {
            try arena.sync(epoch: 9, event: 2)
        }
        try arena.close()
        let reopened = try Arena.open(path: sample.path, access: .readOnly)
        #expect(reopened.epoch == 9 && reopened.event == 1 && reopened.commitCounter == limit - 1)
    }

    // MARK: Addresses

    @Test func addressesOutsideTheHeapAreErrorsAndTheFastPathNeverTraps() throws {
        let sample = try SampleArena.make()
        let arena = try Arena.open(path: sample.path, access: .readOnly)
        expectReason(.outOfBounds(offset: SampleArena.capacity - 8, length: 16, size: SampleArena.capacity)) {
            _ = try arena.address(of: ArenaOffset(rawValue: UInt64(SampleArena.capacity - 8)), byteCount: 16)
        }
        expectReason(.outOfBounds(offset: Int.max, length: 1, size: SampleArena.capacity)) {
            _ = try arena.address(of: ArenaOffset(rawValue: .max))
        }
        expectReason(.invalidRange(offset: 0, length: -1)) { _ = try arena.address(of: ArenaOffset(rawValue: 0), byteCount: -1) }
        #expect(!arena.contains(arena.unsafeAddress(of: ArenaOffset(rawValue: .max))))
        #expect(try arena.address(of: sample.run) == arena.unsafeAddress(of: sample.run))
        try arena.close()
        expectReason(.invalidArgument("the arena is closed")) { _ = try arena.address(of: sample.run) }
    }
}
