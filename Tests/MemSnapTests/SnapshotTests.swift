import Dispatch
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("Snapshot: memfd data, copy-on-write workers, restore, growth, changed ranges")
struct SnapshotTests {
    /// A snapshot of `pages` pages where every 8-byte word holds its own offset.
    func numberedSnapshot(pages: Int, maxPages: Int? = nil) throws -> Snapshot {
        let snapshot = try Snapshot(size: pages * pageSize, maxSize: maxPages.map { $0 * pageSize })
        try snapshot.update(at: 0, count: pages * pageSize) { memory in
            for offset in stride(from: 0, to: memory.count, by: 8) {
                memory.storeBytes(of: UInt64(offset), toByteOffset: offset, as: UInt64.self)
            }
        }
        snapshot.clearChangedRanges()
        return snapshot
    }

    @Test func readsAndWritesAtOffsets() throws {
        let snapshot = try Snapshot(size: 100, maxSize: 10 * pageSize)
        try snapshot.write([1, 2, 3], at: 10)
        #expect(try snapshot.read(at: 9, count: 5) == [0, 1, 2, 3, 0])
        #expect(snapshot.size == 100)
        #expect(snapshot.maxSize == 10 * pageSize)
    }

    @Test func fourCopyOnWriteMappingsAndTheSnapshotStayIsolated() throws {
        let snapshot = try numberedSnapshot(pages: 6)
        let workers = try (0..<4).map { _ in try VirtualRegion(maxSize: 16 * pageSize) }
        for worker in workers { try snapshot.mapCopyOnWrite(into: worker) }

        for (index, worker) in workers.enumerated() {
            #expect(worker.committedSize == 6 * pageSize)
            #expect(worker.load(at: 5 * pageSize) == UInt64(5 * pageSize), "starts equal to the snapshot")
            worker.store(UInt64(1000 + index), at: pageSize)  // all write the same word
            worker.store(UInt64(2000 + index), at: (index + 2) * pageSize)  // and one page of their own
        }
        for (index, worker) in workers.enumerated() {
            #expect(worker.load(at: pageSize) == UInt64(1000 + index))
            for page in 2..<6 {
                let expected = page == index + 2 ? UInt64(2000 + index) : UInt64(page * pageSize)
                #expect(worker.load(at: page * pageSize) == expected)
            }
        }
        #expect(try snapshot.read(at: pageSize, count: 8) == bytes(of: UInt64(pageSize)))
        #expect(snapshot.changedRanges.isEmpty, "worker writes are not snapshot writes")
    }

    @Test func mappingAgainRestoresAndDiscardsEdits() throws {
        let snapshot = try numberedSnapshot(pages: 4)
        let worker = try VirtualRegion(maxSize: 64 * pageSize)
        try snapshot.mapCopyOnWrite(into: worker)
        worker.store(0xDEAD, at: 0)
        try worker.grow(to: 10 * pageSize)
        worker.store(0xBEEF, at: 9 * pageSize)

        try snapshot.mapCopyOnWrite(into: worker)
        #expect(worker.load(at: 0) == 0)
        #expect(worker.committedSize == 4 * pageSize, "pages grown past the snapshot are released")
        try worker.grow(to: 10 * pageSize)
        #expect(worker.load(at: 9 * pageSize) == 0, "and read as zero when grown again")
    }

    @Test func snapshotWritesShowThroughPagesAWorkerHasNotWritten() throws {
        // Documented MAP_PRIVATE behaviour: remap after changing the snapshot for a stable view.
        let snapshot = try numberedSnapshot(pages: 2)
        let worker = try VirtualRegion(maxSize: 2 * pageSize)
        try snapshot.mapCopyOnWrite(into: worker)
        worker.store(1, at: 0)
        try snapshot.write(bytes(of: UInt64(77)), at: 0)
        try snapshot.write(bytes(of: UInt64(88)), at: pageSize)
        #expect(worker.load(at: 0) == 1, "a page the worker wrote is its own copy")
        #expect(worker.load(at: pageSize) == 88, "an unwritten page still shares the snapshot's page")
    }

    @Test func growsInPlaceAndKeepsItsAddress() throws {
        let snapshot = try Snapshot(size: pageSize + 10, maxSize: 64 * pageSize)
        let before = snapshot.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        try snapshot.write([9, 9, 9, 9], at: 20 * pageSize - 2)
        #expect(snapshot.size == 20 * pageSize + 2, "size is the exact end of the write")
        let after = snapshot.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(before == after)
        #expect(try snapshot.read(at: 20 * pageSize - 4, count: 6) == [0, 0, 9, 9, 9, 9])

        let worker = try VirtualRegion(maxSize: 64 * pageSize)
        try snapshot.mapCopyOnWrite(into: worker)
        #expect(worker.committedSize == 21 * pageSize)
        worker.withUnsafeBytes { #expect($0[20 * pageSize + 1] == 9) }
    }

    @Test func aWritePastTheMaximumIsAnErrorThatChangesNothing() throws {
        let snapshot = try Snapshot(size: pageSize, maxSize: 2 * pageSize)
        try snapshot.write([1], at: 0)
        snapshot.clearChangedRanges()
        let error = expectMemSnapError { try snapshot.write([1, 2, 3, 4], at: 2 * pageSize - 2) }
        #expect(error?.reason == .exceedsMaximum(what: "end", requested: 2 * pageSize + 2, maximum: 2 * pageSize))
        #expect(error?.description == "snapshot write 4 B at offset 8190: end 8.0 KiB (8194 bytes) exceeds "
            + "the maximum 8.0 KiB (8192 bytes)")
        #expect(snapshot.size == pageSize)
        #expect(snapshot.changedRanges.isEmpty)
        #expect(try snapshot.read(at: 0, count: 1) == [1])
    }

    @Test func writesAreRecordedAsCoalescedChangedRanges() throws {
        let snapshot = try Snapshot(size: 1000, maxSize: 4 * pageSize)
        #expect(snapshot.changedRanges.isEmpty, "construction is not a change")
        try snapshot.write([1, 1], at: 100)
        try snapshot.write([2, 2], at: 102)  // adjacent: coalesced
        try snapshot.write([3], at: 10)
        try snapshot.write([4, 4, 4], at: 101)  // overlapping
        try snapshot.write([5], at: 2000)  // grows
        try snapshot.write([], at: 500)  // empty: nothing
        #expect(snapshot.changedRanges == [10..<11, 100..<104, 2000..<2001])
        #expect(snapshot.takeChangedRanges() == [10..<11, 100..<104, 2000..<2001])
        #expect(snapshot.changedRanges.isEmpty, "take clears")
        try snapshot.write([6], at: 0)
        snapshot.clearChangedRanges()
        #expect(snapshot.changedRanges.isEmpty)
    }

    @Test func concurrentWritersAndReadersNeverLoseARecordedChange() throws {
        let snapshot = try Snapshot(size: 0, maxSize: 64 * pageSize)
        DispatchQueue.concurrentPerform(iterations: 64) { index in
            try? snapshot.write([UInt8](repeating: UInt8(index), count: pageSize), at: index * pageSize)
            _ = try? snapshot.read(at: 0, count: min(snapshot.size, pageSize))
        }
        #expect(snapshot.size == 64 * pageSize)
        #expect(snapshot.changedRanges == [0..<64 * pageSize])
        for index in 0..<64 {
            #expect(try snapshot.read(at: index * pageSize + 17, count: 1) == [UInt8(index)])
        }
    }

    @Test func mappingIntoATooSmallRegionIsAnErrorThatLeavesTheRegionAlone() throws {
        let snapshot = try numberedSnapshot(pages: 8)
        let region = try VirtualRegion(maxSize: 4 * pageSize, committing: pageSize)
        region.store(5, at: 0)
        expectReason(.tooSmall(what: "region", required: 8 * pageSize, capacity: 4 * pageSize)) {
            try snapshot.mapCopyOnWrite(into: region)
        }
        #expect(region.committedSize == pageSize)
        #expect(region.load(at: 0) == 5)
    }

    @Test func anEmptySnapshotMapsToAnEmptyRegion() throws {
        let snapshot = try Snapshot(size: 0, maxSize: pageSize)
        let region = try VirtualRegion(maxSize: pageSize, committing: pageSize)
        try snapshot.mapCopyOnWrite(into: region)
        #expect(region.committedSize == 0)
    }

    @Test func badOffsetsAndSizesAreErrorsNotTraps() throws {
        let snapshot = try Snapshot(size: 100, maxSize: pageSize)
        expectReason(.outOfBounds(offset: 90, length: 20, size: 100)) { _ = try snapshot.read(at: 90, count: 20) }
        expectReason(.invalidRange(offset: -1, length: 4)) { _ = try snapshot.read(at: -1, count: 4) }
        expectReason(.invalidRange(offset: Int.max, length: 2)) { _ = try snapshot.read(at: Int.max, count: 2) }
        expectReason(.invalidRange(offset: Int.max, length: 1)) { try snapshot.write([1], at: Int.max) }
        expectReason(.invalidRange(offset: -8, length: 1)) { try snapshot.write([1], at: -8) }
        expectReason(.exceedsMaximum(what: "size", requested: 2 * pageSize, maximum: pageSize)) {
            try snapshot.grow(to: 2 * pageSize)
        }
        expectReason(.exceedsMaximum(what: "size", requested: 10, maximum: 5)) {
            _ = try Snapshot(size: 10, maxSize: 5)
        }
        expectReason(.invalidRange(offset: 0, length: -1)) { _ = try Snapshot(size: -1, maxSize: 5) }
    }

    @Test func anEmptySnapshotWithNoRoomToGrowIsLegalAndRefusesWrites() throws {
        let snapshot = try Snapshot(size: 0)
        #expect(snapshot.size == 0)
        #expect(snapshot.maxSize == 0)
        expectReason(.exceedsMaximum(what: "end", requested: 1, maximum: 0)) { try snapshot.write([1], at: 0) }
        expectReason(.invalidRange(offset: 0, length: -1)) { _ = try Snapshot(size: 0, maxSize: -1) }
    }

    @Test func copyingConstructorHoldsTheBytes() throws {
        let snapshot = try Snapshot(copying: [1, 2, 3, 4, 5], maxSize: pageSize)
        #expect(snapshot.size == 5)
        #expect(try snapshot.read(at: 0, count: 5) == [1, 2, 3, 4, 5])
        let empty = try Snapshot(copying: [UInt8](), maxSize: pageSize)
        #expect(empty.size == 0)
    }
}

func bytes(of value: UInt64) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0) }
}
