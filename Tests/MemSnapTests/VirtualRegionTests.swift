import MemSnap
import MemSnapTestSupport
import Testing

@Suite("VirtualRegion: reserve, commit, grow in place, release")
struct VirtualRegionTests {
    @Test func reservesCommitsAPrefixAndGrowsInPlace() throws {
        let region = try VirtualRegion(maxSize: 64 * pageSize, committing: 4 * pageSize)
        #expect(region.maxSize == 64 * pageSize)
        #expect(region.committedSize == 4 * pageSize)
        let base = region.baseAddress

        region.store(0xFEED, at: 3 * pageSize)
        try region.grow(to: 10 * pageSize + 1)
        #expect(region.committedSize == 11 * pageSize, "growth rounds up to whole pages")
        #expect(region.baseAddress == base, "growth never moves the region")
        #expect(region.load(at: 3 * pageSize) == 0xFEED, "growth keeps the contents")
        #expect(region.load(at: 10 * pageSize) == 0, "new pages read as zero")
        region.store(7, at: 10 * pageSize)
        #expect(region.load(at: 10 * pageSize) == 7)

        try region.grow(to: 2 * pageSize)
        #expect(region.committedSize == 11 * pageSize, "growing to a smaller size changes nothing")
    }

    @Test func growthPastTheMaximumFailsAndChangesNothing() throws {
        let region = try VirtualRegion(maxSize: 8 * pageSize, committing: 2 * pageSize)
        region.store(42, at: 0)
        expectReason(.exceedsMaximum(what: "size", requested: 8 * pageSize + 1, maximum: 8 * pageSize)) {
            try region.grow(to: 8 * pageSize + 1)
        }
        #expect(region.committedSize == 2 * pageSize)
        #expect(region.load(at: 0) == 42)
        try region.grow(to: 8 * pageSize)
        #expect(region.committedSize == 8 * pageSize, "growing to exactly the maximum works")
    }

    @Test func aFourGiBReservationIsCheapAndLazy() throws {
        let region = try VirtualRegion(maxSize: 4 << 30, committing: 64 << 10)
        #expect(region.maxSize == 4 << 30)
        #expect(region.committedSize == 64 << 10)
        try region.grow(to: 4 << 30)
        region.store(1, at: (4 << 30) - 8)
        #expect(region.load(at: (4 << 30) - 8) == 1)
    }

    @Test func decommitReleasesPagesWhichReadAsZeroWhenCommittedAgain() throws {
        let region = try VirtualRegion(maxSize: 16 * pageSize, committing: 8 * pageSize)
        region.store(11, at: 0)
        region.store(99, at: 6 * pageSize)
        try region.decommit(from: 2 * pageSize)
        #expect(region.committedSize == 2 * pageSize)
        #expect(region.load(at: 0) == 11, "pages before the cut keep their contents")
        try region.grow(to: 8 * pageSize)
        #expect(region.load(at: 6 * pageSize) == 0)
    }

    @Test func containsTellsWhetherAnAddressIsInsideTheReservation() throws {
        let region = try VirtualRegion(maxSize: 4 * pageSize, committing: pageSize)
        region.withUnsafeBytes { memory in
            #expect(region.contains(memory.baseAddress!))
            #expect(region.contains(memory.baseAddress! + 4 * pageSize - 1), "uncommitted but reserved")
            #expect(!region.contains(memory.baseAddress! + 4 * pageSize))
        }
    }

    @Test func trackedRegionsGetNoHugePageAdvice() throws {
        let region = try VirtualRegion(maxSize: 64 << 20, committing: 4 << 20)
        #expect(vmFlags(containing: region.baseAddress)?.contains("nh") == true)
        let plain = try VirtualRegion(maxSize: 64 << 20, committing: 4 << 20, hugePages: .systemDefault)
        #expect(vmFlags(containing: plain.baseAddress)?.contains("nh") == false)
    }

    @Test func accessAdviceReachesTheKernelAndBadRangesAreErrors() throws {
        let region = try VirtualRegion(maxSize: 16 * pageSize, committing: 8 * pageSize)
        region.store(42, at: pageSize)
        try region.advise(.random, range: 0..<8 * pageSize)
        #expect(vmFlags(containing: region.baseAddress)?.contains("rr") == true, "VM_RAND_READ shows as rr in smaps")
        #expect(region.load(at: pageSize) == 42, "advice changes no contents")
        try region.advise(.normal, range: 0..<8 * pageSize)
        #expect(vmFlags(containing: region.baseAddress)?.contains("rr") == false)
        let outside = "the range must be page-aligned and inside the committed \(ByteCount(8 * pageSize))"
        expectReason(.invalidArgument(outside)) { try region.advise(.random, range: 0..<9 * pageSize) }
        expectReason(.invalidArgument(outside)) { try region.advise(.random, range: 1..<pageSize) }
    }

    @Test func badSizesAreErrorsNotTraps() {
        expectReason(.invalidRange(offset: 0, length: -1)) { _ = try VirtualRegion(maxSize: -1) }
        expectReason(.invalidRange(offset: 0, length: Int.max)) { _ = try VirtualRegion(maxSize: Int.max) }
        expectReason(.invalidArgument("cannot reserve 0 bytes")) { _ = try VirtualRegion(maxSize: 0) }
        expectReason(.exceedsMaximum(what: "initial size", requested: 3 * pageSize, maximum: 2 * pageSize)) {
            _ = try VirtualRegion(maxSize: 2 * pageSize, committing: 3 * pageSize)
        }
        expectReason(.exceedsMaximum(what: "initial size", requested: pageSize, maximum: 1),
                     "sizes are compared as given, before rounding") {
            _ = try VirtualRegion(maxSize: 1, committing: pageSize)
        }
    }

    @Test func anImpossibleReservationNamesTheOperationAndTheErrno() {
        // 1 PiB is more than the 128 TiB of user address space on x86_64.
        let error = expectMemSnapError { _ = try VirtualRegion(maxSize: 1 << 50) }
        #expect(error?.errno == .noMemory)
        #expect(error?.description == "reserve 1024.0 TiB: mmap failed: ENOMEM (Cannot allocate memory)")
    }
}
