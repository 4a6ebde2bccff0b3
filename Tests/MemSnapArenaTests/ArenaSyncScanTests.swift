#if canImport(Glibc)
import Glibc
#endif
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import Testing

/// `SyncScan.recentlyWrittenChunks`: syncs scan only chunks written lately; idle chunks are
/// write-protected and fault back into the scan. Nothing the program writes may be missed.
@Suite("Arena syncs that scan only recently written chunks")
struct ArenaSyncScanTests {
    static let capacity = 4 << 20
    static let blobBytes = 2 << 20

    /// Whether uffd-async tracking (which the narrowed scans need) works here.
    static var narrowingWorks: Bool {
        guard let region = try? VirtualRegion(maxSize: 1 << 20, committing: 1 << 20, hugePages: .disabled),
              let tracker = try? DirtyTracker(tracking: region, mode: .uffdAsync) else { return false }
        tracker.stop()
        return true
    }

    @Test(arguments: [TrackingUnderTest.recentChunks, .recentChunksAdaptive])
    func writesToChunksProtectedForBeingIdleAreSyncedAfterFaultingBackIn(tracking: TrackingUnderTest) throws {
        let directory = ArenaDirectory()
        let configuration = tracking.configuration
        let arena = try Arena.create(path: directory.arena, capacity: Self.capacity, configuration: configuration)
        // False where uffd-async is missing or another SIGSEGV handler was installed after
        // memsnap's (other suites install theirs): then syncs scan the whole heap, and this test
        // checks that nothing is lost either way.
        let narrowed = arena.tracker?.scansRecentChunksOnly ?? false
        let blob = try arena.allocate(byteCount: Self.blobBytes, alignment: pageSize)
        try arena.fill(blob, count: Self.blobBytes, with: 0)
        try arena.setRoot(0, to: blob.rawValue)
        var shadow = [UInt8](repeating: 0, count: Self.blobBytes)
        var random = TestSeed.generator()
        var event: UInt64 = 0
        // A few chunks are rewritten in most rounds (their thresholds grow), the others now and then.
        let hotChunks = (0..<4).map { _ in Int(random.next() % UInt64(Self.blobBytes >> configuration.chunkShift)) }
        for round in 0..<60 {
            for chunk in hotChunks where random.next() % 8 != 0 {
                let offset = chunk << configuration.chunkShift | Int(random.next() % UInt64(1 << configuration.chunkShift))
                let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                try arena.address(of: ArenaOffset(rawValue: blob.rawValue + UInt64(offset))).storeBytes(of: byte, as: UInt8.self)
                shadow[offset] = byte
            }
            // A few writes at random places (most in chunks that have been idle and protected),
            // sometimes none, so chunks keep turning cold and written again.
            for _ in 0..<Int(random.next() % 6) {
                let offset = Int(random.next() % UInt64(Self.blobBytes))
                let byte = UInt8(truncatingIfNeeded: random.next() | 1)
                try arena.address(of: ArenaOffset(rawValue: blob.rawValue + UInt64(offset))).storeBytes(of: byte, as: UInt8.self)
                shadow[offset] = byte
            }
            event += 1
            try arena.sync(epoch: 0, event: event)
            if narrowed {
                #expect(arena.tracker?.scansRecentChunksOnly == true, "round \(round): syncs still scan recent chunks only")
            }
            if round % 15 == 14 {
                // What a crash now would recover: read back from the files, not from memory.
                let start = Int(blob.rawValue)
                let stored = try arena.withSyncedImage { (heap, _) throws(MemSnapError) in [UInt8](heap[start..<start + Self.blobBytes]) }
                let wrong = (0..<Self.blobBytes).filter { stored[$0] != shadow[$0] }
                #expect(wrong.isEmpty, "round \(round): \(wrong.count) bytes differ from what was written, first at offset \(wrong.first ?? -1)")
            }
        }
        try arena.close()
    }

    @Test func aWriteToEveryChunkAfterAllWereProtectedIsSynced() throws {
        let directory = ArenaDirectory()
        let arena = try Arena.create(path: directory.arena, capacity: Self.capacity,
                                     configuration: TrackingUnderTest.recentChunks.configuration)
        let blob = try arena.allocate(byteCount: Self.blobBytes, alignment: pageSize)
        for event in 1...3 { try arena.sync(epoch: 0, event: UInt64(event)) }  // every chunk idle, then protected
        let chunkBytes = 1 << TrackingUnderTest.recentChunks.configuration.chunkShift
        for chunk in 0..<Self.blobBytes / chunkBytes {
            try arena.address(of: ArenaOffset(rawValue: blob.rawValue + UInt64(chunk * chunkBytes + chunk % 97)))
                .storeBytes(of: UInt8(chunk % 255 + 1), as: UInt8.self)
        }
        try arena.sync(epoch: 0, event: 4)
        try arena.close()
        let reopened = try Arena.open(path: directory.arena, access: .readOnly)
        let stored = try reopened.bytes(blob, count: Self.blobBytes)
        for chunk in 0..<Self.blobBytes / chunkBytes {
            #expect(stored[chunk * chunkBytes + chunk % 97] == UInt8(chunk % 255 + 1), "chunk \(chunk)")
        }
        try reopened.close()
    }

    /// The switch by dirty rate is per chunk: a chunk the program writes before every sync
    /// stays writable once it has faulted back in soon after a protection, while a chunk written
    /// once is protected again by the sync that scans its write. Observed through the documented
    /// hazard: `read(2)` into a protected chunk fails with EFAULT, into a writable one it works
    /// (and the sync finds the kernel's write).
    @Test(.enabled(if: narrowingWorks, "uffd-async tracking is unavailable here: syncs scan the whole heap"))
    func aChunkRewrittenEverySyncStaysWritableWhileAChunkWrittenOnceIsProtectedByItsSync() throws {
        let directory = ArenaDirectory()
        let configuration = TrackingUnderTest.recentChunksAdaptive.configuration
        let arena = try Arena.create(path: directory.arena, capacity: Self.capacity, configuration: configuration)
        guard arena.tracker?.scansRecentChunksOnly == true else { return }  // another SIGSEGV handler in front: whole-heap scans
        let chunkBytes = 1 << configuration.chunkShift
        let blob = try arena.allocate(byteCount: Self.blobBytes, alignment: pageSize)
        let hot = ArenaOffset(rawValue: blob.rawValue + UInt64(5 * chunkBytes + 100))
        let cold = ArenaOffset(rawValue: blob.rawValue + UInt64(20 * chunkBytes + 100))
        var event: UInt64 = 0
        for round in 0..<40 {
            try arena.address(of: hot).storeBytes(of: UInt8(round + 1), as: UInt8.self)
            event += 1
            try arena.sync(epoch: 0, event: event)
        }
        try arena.address(of: cold).storeBytes(of: 0xC0, as: UInt8.self)
        event += 1
        try arena.sync(epoch: 0, event: event)

        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        let message: [UInt8] = Array("kernel".utf8)
        #expect(write(pipeEnds[1], message, message.count) == message.count)
        let intoCold = read(pipeEnds[0], try arena.address(of: cold, byteCount: message.count), message.count)
        #expect(intoCold == -1 && errno == EFAULT, "the chunk written once was protected by the sync that scanned its write")
        let intoHot = read(pipeEnds[0], try arena.address(of: hot, byteCount: message.count), message.count)
        #expect(intoHot == message.count, "the chunk rewritten every sync is still writable")
        event += 1
        try arena.sync(epoch: 0, event: event)
        try arena.close()
        let reopened = try Arena.open(path: directory.arena, access: .readOnly)
        #expect(try reopened.bytes(hot, count: message.count) == message, "the kernel's write into the writable chunk was synced")
        #expect(try reopened.bytes(cold, count: 1) == [0xC0])
        try reopened.close()
    }

    /// The documented cost of protecting idle chunks: the kernel cannot take the fault, so a
    /// system call writing into a protected chunk fails; scanning the whole heap tracks it.
    @Test(.enabled(if: narrowingWorks, "uffd-async tracking is unavailable here: syncs scan the whole heap"),
          arguments: [TrackingUnderTest.wholeHeap, .recentChunks, .recentChunksAdaptive])
    func aSystemCallWritingIntoAnIdleChunk(tracking: TrackingUnderTest) throws {
        let directory = ArenaDirectory()
        let arena = try Arena.create(path: directory.arena, capacity: Self.capacity, configuration: tracking.configuration)
        let blob = try arena.allocate(byteCount: Self.blobBytes, alignment: pageSize)
        // Long enough for any chunk to be idle past its threshold (the allocator's writes may have
        // raised the threshold of the blob's first chunk).
        for event in 1...20 { try arena.sync(epoch: 0, event: UInt64(event)) }
        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        let message: [UInt8] = Array("kernel write".utf8)
        #expect(write(pipeEnds[1], message, message.count) == message.count)
        let target = try arena.address(of: blob, byteCount: message.count)
        let got = read(pipeEnds[0], target, message.count)
        // Whole-heap scans where chunks could not be protected (another SIGSEGV handler in front).
        let narrowed = arena.tracker?.scansRecentChunksOnly ?? false
        switch tracking {
        case .recentChunks where narrowed, .recentChunksAdaptive where narrowed:
            #expect(got == -1 && errno == EFAULT, "read(2) into a protected chunk fails with EFAULT")
        default:
            #expect(got == message.count)
            try arena.sync(epoch: 0, event: 21)
            try arena.close()
            let reopened = try Arena.open(path: directory.arena, access: .readOnly)
            #expect(try reopened.bytes(blob, count: message.count) == message, "the kernel's write was synced")
            try reopened.close()
        }
    }
}
