#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import Testing

/// Interleavings a review found (each once lost a write, crashed, or hung), kept as specifications.
@Suite("DirtyTracker under racing growth, resets and stops")
struct TrackingRaceTests {
    static let racingModes = workingModes.filter { [.uffdAsync, .segfault, .uffd].contains($0) }

    @Test("growth racing collect-and-reset loses no write", arguments: racingModes)
    func growthRacingCollectLosesNothing(mode: DirtyTrackingMode) throws {
        let maxPages = 384
        let region = try VirtualRegion(maxSize: maxPages * pageSize, committing: 8 * pageSize)
        let tracker = try DirtyTracker(tracking: region, mode: mode)
        defer { tracker.stop() }
        // The collector keeps a shadow refreshed only from reported pages; a lost write leaves
        // the shadow different from the region.
        let shadow = try VirtualRegion(maxSize: maxPages * pageSize, committing: maxPages * pageSize)
        let finished = Locked(false)
        let failure = Locked<String?>(nil)
        runOnThreads(2) { index in
            if index == 0 {
                for page in 8..<maxPages {
                    do { try region.grow(to: (page + 1) * pageSize) } catch {
                        failure.withLock { $0 = "\(error)" }
                        break
                    }
                    region.store(UInt64(page), at: page * pageSize)
                    region.store(UInt64(page), at: (page / 2) * pageSize + 8)
                }
                finished.withLock { $0 = true }
                return
            }
            while true {
                let last = finished.withLock { $0 }
                do {
                    let written = try tracker.collectAndReset()
                    region.withUnsafeBytes { memory in
                        shadow.withUnsafeMutableBytes { copy in
                            for range in written.byteRanges {
                                (copy.baseAddress! + range.lowerBound).copyMemory(
                                    from: memory.baseAddress! + range.lowerBound, byteCount: range.count)
                            }
                        }
                    }
                } catch {
                    failure.withLock { $0 = "\(error)" }
                    return
                }
                if last { return }
            }
        }
        #expect(failure.withLock { $0 } == nil)
        let identical = region.withUnsafeBytes { memory in
            shadow.withUnsafeBytes { memcmp(memory.baseAddress!, $0.baseAddress!, memory.count) == 0 }
        }
        #expect(identical)
    }

    @Test(arguments: racingModes)
    func resetsWhileAnotherThreadWritesNeverCrash(mode: DirtyTrackingMode) throws {
        let pages = 64
        let region = try MemoryKind.anonymous.makeRegion(pages: pages)
        let tracker = try DirtyTracker(tracking: region, mode: mode)
        defer { tracker.stop() }
        let stop = Locked(false)
        let resets = mode == .uffd ? 500 : 5000
        let seed = TestSeed.current()
        runOnThreads(2) { index in
            if index == 0 {
                var random = SplitMix64(seed: seed)
                while !stop.withLock({ $0 }) {
                    for _ in 0..<100 { region.store(random.next(), at: Int(random.next() % UInt64(pages)) * pageSize) }
                }
                return
            }
            for _ in 0..<resets { try? tracker.reset() }
            stop.withLock { $0 = true }
        }
        region.store(1, at: 3 * pageSize)
        #expect(try tracker.collect().contains(3))
    }

    @Test func stoppingWakesWritersBlockedInAWriteProtectFault() throws {
        guard workingModes.contains(.uffd) else { return }
        for trial in 0..<10 {
            let pages = 2048
            let region = try MemoryKind.anonymous.makeRegion(pages: pages)
            let tracker = try DirtyTracker(tracking: region, mode: .uffd)
            let done = DispatchSemaphore(value: 0)
            let writer = Thread {
                for page in 0..<pages { region.store(UInt64(page), at: page * pageSize) }
                done.signal()
            }
            writer.start()
            usleep(UInt32(1000 + trial * 700))
            tracker.stop()
            #expect(done.wait(timeout: .now() + 10) == .success, "trial \(trial): a writer stayed blocked after stop()")
            withExtendedLifetime(tracker) {}
        }
    }
}
