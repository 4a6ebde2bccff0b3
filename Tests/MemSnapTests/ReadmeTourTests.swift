import MemSnap
import Testing

/// The README's tour, verbatim, so that the README stays true. If this test needs editing,
/// edit the README the same way.
@Suite("README tour")
struct ReadmeTourTests {
    @Test func theTourRunsAndSaysWhatItClaims() throws {
        // A snapshot: data in a memfd, 256 MiB now, able to grow in place to 1 GiB.
        let snapshot = try Snapshot(size: 256 << 20, maxSize: 1 << 30, name: "main")
        try snapshot.write(Array("hello".utf8), at: 0)
        try snapshot.update(at: 4096, count: 8) { $0.storeBytes(of: 42, as: UInt64.self) }
        let changed = snapshot.takeChangedRanges()   // [0..<5, 4096..<4104]: what to push on

        // A worker: 4 GiB of reserved address space (a wasm32 memory), nothing committed yet.
        let worker = try VirtualRegion(maxSize: 4 << 30)
        try snapshot.mapCopyOnWrite(into: worker)    // O(1): worker now equals the snapshot
        worker.withUnsafeMutableBytes { memory in
            memory.storeBytes(of: 7, toByteOffset: 0, as: UInt64.self)   // private to this worker
        }
        try worker.grow(to: 512 << 20)               // in place: addresses never move
        try snapshot.mapCopyOnWrite(into: worker)    // restore: every worker write is gone

        // Which pages did the worker write? The best mechanism this kernel allows, chosen at run time
        // (uffd-async here; MEMSNAP_DIRTY_TRACKING=segfault|uffd|soft-dirty|compare|private-copies|none
        // overrides).
        let tracker = try DirtyTracker(tracking: worker)
        worker.withUnsafeMutableBytes { $0.storeBytes(of: 1, toByteOffset: 3 * 4096, as: UInt64.self) }
        let written = try tracker.collectAndReset()   // written.runs == [3..<4], and a new interval began
        if tracker.prefersFullCopy(written) { /* past ~25 % of pages, copy everything instead */ }

        // Fork/join: workers start from the snapshot, their changes merge back at the join. Sum regions
        // add up across workers instead of the last writer winning.
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .sum))
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 4)
        try pool.run { worker in
            worker.memory.withUnsafeMutableBytes { memory in
                let total = memory.load(as: Int64.self)
                memory.storeBytes(of: total + 1, as: Int64.self)     // each worker adds 1: the sum gains 4
            }
        }

        // Or by hand: diff any tracked memory against the snapshot, queue from any thread, apply once.
        worker.withUnsafeMutableBytes { $0.storeBytes(of: 9, toByteOffset: 5 * 4096, as: UInt64.self) }
        let diffs = try snapshot.diff(worker, dirtyPages: try tracker.collectAndReset())   // page 5's change only
        let wire = try SnapshotDiff.encode(diffs)                  // versioned, checksummed (docs/FORMAT.md)
        snapshot.queueDiffs(try SnapshotDiff.decode(wire))
        try snapshot.applyQueuedDiffs()   // the snapshot holds the 9; on failure: names the batch (queuedDiffBatches, discardQueuedDiffs())

        // Share snapshots between threads by key.
        let registry = SnapshotRegistry()
        try registry.register(snapshot, as: "main")
        let same = try registry.snapshot(for: "main")

        // What the tour's comments claim:
        #expect(same === snapshot)
        #expect(written.runs == [3..<4])
        #expect(!tracker.prefersFullCopy(written))
        let sumBytes = try snapshot.read(at: 0, count: 8)
        let helloAsInt64 = Array("hello".utf8) + [0, 0, 0]
        let start = helloAsInt64.withUnsafeBytes { $0.load(as: Int64.self) }
        #expect(sumBytes.withUnsafeBytes { $0.load(as: Int64.self) } == start + 4, "each of 4 workers added 1")
        #expect(changed == [0..<5, 4096..<4104])
        #expect(!diffs.isEmpty)
        #expect(diffs.allSatisfy { $0.range.overlaps(5 * 4096..<6 * 4096) },
                "page 3 was collected before, so only page 5's write is diffed: \(diffs)")
        #expect(try snapshot.read(at: 5 * 4096, count: 8) == [9, 0, 0, 0, 0, 0, 0, 0], "the applied diff is in the snapshot")
        #expect(snapshot.queuedDiffBatches.isEmpty)
        tracker.stop()
    }
}
