import MemSnap
import MemSnapTestSupport
import Testing

/// Modes a `SnapshotWorkers` pool can run with here: soft-dirty allows one tracker per process
/// (its reset is process-wide), and a pool needs one per memory; `private-copies`, which only
/// forgets writes when a memory is restored, is the pool's own default.
let poolModes = workingModes.filter { $0 != .softDirty }
    + (DirtyTrackingMode.privateCopies.availability == .available ? [.privateCopies] : [])

@Suite("SnapshotWorkers restores a round in place: what a round costs follows what it wrote")
struct RoundRestoreTests {
    static let pages = 48
    static let workerCount = 3
    /// Worker `i` owns bytes `slot(i) ..< slot(i) + 16` of every page (the main memory slot 0,
    /// worker i slot i + 1): far enough apart (more than DiffOptions.mergeGap) that no diff of
    /// one memory carries another's bytes, so the merged snapshot is exactly each byte's last
    /// writer in merge order.
    static func slot(_ memory: Int) -> Int { 64 + memory * 256 }

    /// The writes of one memory in one round: pages, and whether the values are new or the
    /// bytes already there (a same-value write: the page is copied, nothing changes).
    struct Plan: Sendable {
        var pages: [Int]
        var sameValuePages: [Int]
        var value: UInt8
    }

    static func plan(_ random: inout SplitMix64, round: Int, memory: Int) -> Plan {
        var chosen = Set<Int>()
        let count = 1 + Int(random.next() % 6)
        while chosen.count < count { chosen.insert(Int(random.next() % UInt64(pages))) }
        var same = Set<Int>()
        while same.count < 2 {
            let page = Int(random.next() % UInt64(pages))
            if !chosen.contains(page) { same.insert(page) }
        }
        return Plan(pages: chosen.sorted(), sameValuePages: same.sorted(), value: UInt8(truncatingIfNeeded: round * 16 + memory + 1))
    }

    static func write(_ plan: Plan, memory index: Int, into region: VirtualRegion) {
        region.withUnsafeMutableBytes { bytes in
            for page in plan.pages {
                for offset in 0..<16 { bytes[page * pageSize + slot(index) + offset] = plan.value &+ UInt8(offset) }
            }
            for page in plan.sameValuePages {
                let at = page * pageSize + slot(index)
                bytes[at] = opaque(bytes[at])
            }
        }
    }

    static func apply(_ plan: Plan, memory index: Int, to model: inout [UInt8]) {
        for page in plan.pages {
            for offset in 0..<16 { model[page * pageSize + slot(index) + offset] = plan.value &+ UInt8(offset) }
        }
    }

    /// Pages the memory's tracker must report: every page written, except that compare sees
    /// changed pages only and `none` reports everything.
    static func expectedDirtyCount(_ plan: Plan, mode: DirtyTrackingMode, model: [UInt8], memory index: Int) -> Int {
        switch mode {
        case .none: return pages
        case .compare:
            // A page whose new bytes equal what it held (an earlier round wrote the same) is unchanged.
            return plan.pages.filter { page in
                (0..<16).contains { model[page * pageSize + slot(index) + $0] != plan.value &+ UInt8($0) }
            }.count
        default: return plan.pages.count + plan.sameValuePages.count
        }
    }

    @Test("after every round each memory holds exactly the merged snapshot, and the next round reports exactly the pages written",
          arguments: poolModes)
    func roundsRestoreExactlyInPlace(mode: DirtyTrackingMode) throws {
        var random = TestSeed.generator()
        var model = [UInt8](repeating: 0, count: Self.pages * pageSize)
        for index in model.indices { model[index] = UInt8(truncatingIfNeeded: random.next()) }
        let snapshot = try Snapshot(copying: model, name: "rounds-\(mode.rawValue)")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: Self.workerCount,
                                       tracking: DirtyTracker.Configuration(mode: mode))
        for round in 0..<8 {
            let mainPlan = Self.plan(&random, round: round, memory: 0)
            let workerPlans = (0..<Self.workerCount).map { Self.plan(&random, round: round, memory: $0 + 1) }
            let expectedCounts = [Self.expectedDirtyCount(mainPlan, mode: mode, model: model, memory: 0)]
                + workerPlans.enumerated().map { Self.expectedDirtyCount($1, mode: mode, model: model, memory: $0 + 1) }
            Self.write(mainPlan, memory: 0, into: pool.mainMemory)
            let before = model
            let mismatches = Locked<[String]>([])
            let report = try pool.run { worker in
                // Each worker starts from the snapshot as the last join left it.
                let differing = worker.memory.withUnsafeBytes { bytes in
                    before.indices.first { bytes[$0] != before[$0] }
                }
                if let differing { mismatches.withLock { $0.append("worker \(worker.index) differs at byte \(differing)") } }
                Self.write(workerPlans[worker.index], memory: worker.index + 1, into: worker.memory)
            }
            Self.apply(mainPlan, memory: 0, to: &model)
            for (index, plan) in workerPlans.enumerated() { Self.apply(plan, memory: index + 1, to: &model) }

            #expect(mismatches.withLock { $0 }.isEmpty, "round \(round): \(mismatches.withLock { $0 })")
            #expect(report.dirtyPageCounts == expectedCounts, "round \(round): each memory reports exactly what it wrote")
            #expect(try snapshot.read(at: 0, count: model.count) == model, "round \(round): the merge is exact")
            for (index, memory) in ([pool.mainMemory] + pool.workerMemories).enumerated() {
                let differing = memory.withUnsafeBytes { bytes in model.indices.first { bytes[$0] != model[$0] } }
                #expect(differing == nil, "round \(round): memory \(index) differs from the merged snapshot at byte \(differing ?? -1)")
            }
            #expect(report.remappedMemories == (mode == .none ? Array(0...Self.workerCount) : []),
                    "round \(round): restored in place unless the mode reports every page")
        }
        // A round that writes nothing reports nothing (except `none`, which reports everything).
        let report = try pool.run { _ in }
        #expect(report.dirtyPageCounts == Array(repeating: mode == .none ? Self.pages : 0, count: Self.workerCount + 1))
    }

    @Test("a round that grows the snapshot remaps every memory, and the next round is in place again", arguments: poolModes)
    func growthFallsBackToARemap(mode: DirtyTrackingMode) throws {
        let snapshot = try Snapshot(size: 4 * pageSize, maxSize: 16 * pageSize, name: "growing-\(mode.rawValue)")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 2, tracking: DirtyTracker.Configuration(mode: mode))
        let grown = try pool.run { worker in
            worker.memory.withUnsafeMutableBytes { $0[worker.index * 100] = 0x11 }
            guard worker.index == 1 else { return }
            try worker.memory.grow(to: 6 * pageSize)
            worker.memory.withUnsafeMutableBytes { $0[5 * pageSize + 3] = 0x77 }
        }
        #expect(grown.remappedMemories == [0, 1, 2], "the snapshot grew: every memory is remapped onto it")
        #expect(snapshot.size == 6 * pageSize)
        var expected = [UInt8](repeating: 0, count: 6 * pageSize)
        expected[0] = 0x11
        expected[100] = 0x11
        expected[5 * pageSize + 3] = 0x77
        #expect(try snapshot.read(at: 0, count: expected.count) == expected)

        let merged = expected
        let next = try pool.run { worker in
            if worker.memory.withUnsafeBytes({ [UInt8]($0) }) != merged { throw WorkerSawStaleBytes() }
            worker.memory.withUnsafeMutableBytes { $0[5 * pageSize + 8 + worker.index] = 0x22 }
        }
        #expect(next.remappedMemories == (mode == .none ? [0, 1, 2] : []), "nothing grew: restored in place")
        #expect(next.dirtyPageCounts == (mode == .none ? [6, 6, 6] : [0, 1, 1]))
        #expect(try snapshot.read(at: 5 * pageSize + 8, count: 2) == [0x22, 0x22])
    }

    @Test("a memory that grew its own region past the snapshot without merging is remapped back to the snapshot's size",
          arguments: poolModes)
    func aMemoryThatGrewAloneIsShrunkByARemap(mode: DirtyTrackingMode) throws {
        let snapshot = try Snapshot(size: 2 * pageSize, maxSize: 8 * pageSize, name: "shrink-\(mode.rawValue)")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 2, tracking: DirtyTracker.Configuration(mode: mode))
        let round = try pool.runWithoutMerging { worker in
            guard worker.index == 0 else { return }
            try worker.memory.grow(to: 4 * pageSize)
            worker.memory.withUnsafeMutableBytes { $0[3 * pageSize] = 1 }
        }
        #expect(round.workers[0].count == 1, "the growth is one extension diff")
        #expect(pool.workerMemories[0].committedSize == 2 * pageSize, "the worker is back to the snapshot's size")
        let report = try pool.join()
        #expect(report.remappedMemories == (mode == .none ? [0, 1, 2] : []), "workers restored by runWithoutMerging stay in place")
    }

    @Test("a memory that wrote more than half of its pages is remapped rather than restored page by page", arguments: poolModes)
    func heavyWritersAreRemapped(mode: DirtyTrackingMode) throws {
        let snapshot = try Snapshot(size: 8 * pageSize, name: "heavy-\(mode.rawValue)")
        let pool = try SnapshotWorkers(snapshot: snapshot, count: 2, tracking: DirtyTracker.Configuration(mode: mode))
        let report = try pool.run { worker in
            let pages = worker.index == 0 ? 5 : 4
            worker.memory.withUnsafeMutableBytes { bytes in
                for page in 0..<pages { bytes[page * pageSize + 8 * worker.index] = 0x40 }
            }
        }
        #expect(report.remappedMemories == (mode == .none ? [0, 1, 2] : [1]), "5 of 8 pages is past the limit, 4 is not")
        let pages = try snapshot.read(at: 0, count: 8 * pageSize)
        for page in 0..<8 {
            #expect(pages[page * pageSize] == (page < 5 ? 0x40 : 0) && pages[page * pageSize + 8] == (page < 4 ? 0x40 : 0))
        }
        let next = try pool.run { worker in
            worker.memory.withUnsafeMutableBytes { $0[7 * pageSize + 100 + worker.index] = 1 }
        }
        #expect(next.dirtyPageCounts == (mode == .none ? [8, 8, 8] : [0, 1, 1]), "either way the next round reports exactly its writes")
    }

    struct WorkerSawStaleBytes: Error {}

    /// Its argument, where the optimizer cannot see it: storing a byte just loaded must stay a
    /// store (a page write the trackers see).
    @inline(never) @_optimize(none)
    static func opaque(_ byte: UInt8) -> UInt8 { byte }
}
