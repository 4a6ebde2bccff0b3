#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapTestSupport
import Testing

/// A reservation made outside memsnap (as a WebAssembly engine makes one for a linear memory),
/// mapped here with mmap the way WasmKit does: PROT_NONE, then a read-write prefix.
final class ForeignReservation {
    let base: UnsafeMutableRawPointer
    let size: Int
    private(set) var committed: Int

    init(size: Int, committed: Int) throws {
        let address = mmap(nil, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let address, address != MAP_FAILED else { throw MemSnapError.systemCall("mmap", during: "test reservation") }
        base = address
        self.size = size
        self.committed = 0
        try commit(to: committed)
    }

    /// What the owner does to grow: mprotect more of the reservation read-write.
    func commit(to newSize: Int) throws {
        guard newSize > committed else { return }
        guard mprotect(base + committed, newSize - committed, PROT_READ | PROT_WRITE) == 0 else {
            throw MemSnapError.systemCall("mprotect", during: "test commit")
        }
        committed = newSize
    }

    func store(_ value: UInt64, at offset: Int) { (base + offset).storeBytes(of: value, as: UInt64.self) }
    func load(at offset: Int) -> UInt64 { (base + offset).load(as: UInt64.self) }

    deinit { munmap(base, size) }
}

@Suite("VirtualRegion adopting a foreign reservation")
struct AdoptedRegionTests {
    let page = Page.size

    @Test func anAdoptedReservationIsMappedTrackedAndDiffedButNeverUnmapped() throws {
        let owner = try ForeignReservation(size: 64 * page, committed: 4 * page)
        owner.store(7, at: 0)
        var region: VirtualRegion? = try VirtualRegion(
            adoptingReservationAt: owner.base, reservedSize: 64 * page, committedSize: 4 * page,
            owner: owner, ownerName: "test reservation")
        let adopted = try #require(region)
        #expect(adopted.isAdopted && adopted.committedSize == 4 * page && adopted.baseAddress == UInt(bitPattern: owner.base))
        #expect(adopted.withUnsafeBytes { $0.load(as: UInt64.self) } == 7, "the owner's bytes, not a copy")

        let snapshot = try Snapshot(size: 2 * page, maxSize: 64 * page)
        try snapshot.write([1, 2, 3], at: 0)
        try snapshot.mapCopyOnWrite(into: adopted)
        #expect(adopted.committedSize == 4 * page, "the owner's size is kept")
        #expect(owner.load(at: 0) & 0xFF_FFFF == 0x03_0201)
        #expect(owner.load(at: 3 * page) == 0, "past the snapshot: zero, and still accessible")
        owner.store(9, at: 3 * page)

        let tracker = try DirtyTracker(tracking: adopted)
        owner.store(5, at: page)
        // The owner grows and writes the new pages before memsnap hears of it.
        try owner.commit(to: 8 * page)
        owner.store(6, at: 6 * page)
        try adopted.followOwnerGrowth(to: 8 * page)
        let dirty = try tracker.collectAndReset()
        #expect(dirty.contains(1) && dirty.contains(6), "\(dirty.pages): the write and the grown page written before the call")
        let diffs = try snapshot.diff(adopted, dirtyPages: dirty)
        try snapshot.apply(diffs)
        #expect(snapshot.size == 8 * page, "the grown memory arrives as an extension")
        #expect(try snapshot.read(at: 6 * page, count: 8) == [6, 0, 0, 0, 0, 0, 0, 0])
        tracker.stop()

        region = nil
        _ = adopted
        owner.store(11, at: 7 * page)
        #expect(owner.load(at: 7 * page) == 11, "the reservation outlives the region: memsnap never unmaps it")
    }

    @Test func onlyTheOwnerCommitsOrReleasesAnAdoptedRegionsPages() throws {
        let owner = try ForeignReservation(size: 16 * page, committed: 2 * page)
        let region = try VirtualRegion(adoptingReservationAt: owner.base, reservedSize: 16 * page, committedSize: 2 * page,
                                       owner: owner, ownerName: "test reservation")
        for body: () throws -> Void in [{ try region.grow(to: 3 * page) }, { try region.decommit(from: page) }] {
            let error = expectMemSnapError(body)
            guard case let .invalidArgument(text)? = error?.reason else {
                Issue.record("expected .invalidArgument, got \(String(describing: error))")
                continue
            }
            #expect(text.contains("test reservation"), "\(text)")
        }
        try region.grow(to: page)  // within the committed prefix: nothing to do
        let snapshot = try Snapshot(size: 3 * page)
        expectReason(.tooSmall(what: "memory committed by its owner (test reservation; grow it there first)",
                               required: 3 * page, capacity: 2 * page)) {
            try snapshot.mapCopyOnWrite(into: region)
        }
        let file = try MemoryFile(size: 4 * page)
        #expect(throws: MemSnapError.self) { try file.map(into: region, at: page, length: 2 * page, sharing: .copyOnWrite) }
        expectReason(.invalidArgument("the region already follows 8.0 KiB committed; an adopted reservation never shrinks")) {
            try region.followOwnerGrowth(to: page)
        }
        expectReason(.exceedsMaximum(what: "size", requested: 17 * page, maximum: 16 * page)) {
            try region.followOwnerGrowth(to: 17 * page)
        }
        let owned = try VirtualRegion(maxSize: 4 * page)
        #expect(throws: MemSnapError.self) { try owned.followOwnerGrowth(to: page) }
    }

    @Test func claimsThatAreNotAReservationAreRefusedNamingWhatIsThere() throws {
        let owner = try ForeignReservation(size: 16 * page, committed: 4 * page)
        func refusal(_ base: UnsafeMutableRawPointer, _ reserved: Int, _ committed: Int) -> String {
            let error = expectMemSnapError {
                _ = try VirtualRegion(adoptingReservationAt: base, reservedSize: reserved, committedSize: committed,
                                      owner: nil, ownerName: "claim")
            }
            return error.map { "\($0.reason)" } ?? ""
        }
        // Claiming more than is mapped (the reservation is 16 pages).
        #expect(refusal(owner.base, 64 * page, 4 * page).contains("offset \(ByteCount(16 * page))"))
        // Wrong committed size: read-write pages claimed inaccessible, and the reverse.
        #expect(refusal(owner.base, 16 * page, 2 * page).contains("past the committed prefix a reservation is inaccessible"))
        #expect(refusal(owner.base, 16 * page, 6 * page).contains("must be readable and writable"))
        // Unaligned, and a file mapping.
        #expect(refusal(owner.base + 16, 16 * page, 0).contains("is not a multiple of \(page)"))
        let file = try MemoryFile(size: 4 * page)
        let fileMapping = mmap(nil, 4 * page, PROT_READ | PROT_WRITE, MAP_SHARED, file.descriptor.rawValue, 0)
        let mapped = try #require(fileMapping == MAP_FAILED ? nil : fileMapping)
        defer { munmap(mapped, 4 * page) }
        #expect(refusal(mapped, 4 * page, 4 * page).contains("not private anonymous memory"))
        // The exact claim is accepted.
        _ = try VirtualRegion(adoptingReservationAt: owner.base, reservedSize: 16 * page, committedSize: 4 * page,
                              owner: nil, ownerName: "claim")
    }

    @Test func procSelfMapsLinesParse() throws {
        let line = "7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0                          [anon:wasm memory]"
        let mapping = try #require(ProcessMapping.parse(Array(line.utf8)))
        #expect(mapping.description == "0x7f1c2a000000-0x7f1c2a021000 rw-p [anon:wasm memory]")
        #expect(mapping.isPrivateAnonymous && mapping.readable && mapping.writable && !mapping.executable)
        #expect(ProcessMapping.parse(Array("not a mapping".utf8)) == nil)
        let mappings = try ProcessMapping.current()
        #expect(mappings.contains { $0.path == "[stack]" })
        // The ioctl and the text agree on a range (the kernel's PROCMAP_QUERY, or its fallback).
        let owner = try ForeignReservation(size: 16 * page, committed: 4 * page)
        let start = UInt(bitPattern: owner.base)
        let queried = try ProcessMapping.overlapping(start..<start + UInt(16 * page))
        #expect(queried.first?.start ?? .max <= start && queried.last?.end ?? 0 >= start + UInt(16 * page))
        #expect(queried.allSatisfy { $0.isPrivateAnonymous })
        let stack = try #require(mappings.first { $0.path == "[stack]" })
        #expect(try ProcessMapping.overlapping(stack.start..<stack.end) == [stack])
    }
}
