import Dispatch
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("SnapshotRegistry: a thread-safe map from key to snapshot")
struct SnapshotRegistryTests {
    @Test func registersGetsListsCountsAndDeletes() throws {
        let registry = SnapshotRegistry()
        let first = try Snapshot(size: 10)
        let second = try Snapshot(size: 20)
        #expect(try registry.register(first, as: "b") == nil)
        try registry.register(second, as: "a")
        #expect(registry.count == 2)
        #expect(registry.keys == ["a", "b"])
        #expect(try registry.snapshot(for: "b") === first)
        #expect(registry.contains("a"))

        #expect(try registry.register(second, as: "b") === first, "register replaces and returns the old one")
        #expect(try registry.snapshot(for: "b") === second)

        #expect(try registry.delete("a"))
        #expect(try !registry.delete("a"), "deleting a missing key reports false")
        #expect(registry.keys == ["b"])
        registry.removeAll()
        #expect(registry.count == 0)
    }

    @Test func missingAndEmptyKeysAreClearErrors() throws {
        let registry = SnapshotRegistry()
        let missing = expectMemSnapError { _ = try registry.snapshot(for: "main_7") }
        #expect(missing?.description == "get snapshot: no snapshot is registered under key \"main_7\"")
        expectReason(.emptyKey) { _ = try registry.snapshot(for: "") }
        expectReason(.emptyKey) { try registry.register(try Snapshot(size: 1), as: "") }
        expectReason(.emptyKey) { try registry.delete("") }
    }

    @Test func deleteReleasesTheSnapshotWhenNothingElseHoldsIt() throws {
        let registry = SnapshotRegistry()
        weak var released: Snapshot?
        try {
            let snapshot = try Snapshot(size: 64 * pageSize)
            released = snapshot
            try registry.register(snapshot, as: "gone")
        }()
        #expect(released != nil, "the registry keeps it alive")
        try registry.delete("gone")
        #expect(released == nil, "memory and memfd are released on delete")
    }

    @Test func manyThreadsRegisterGetAndDeleteConcurrently() throws {
        let registry = SnapshotRegistry()
        let snapshots = try (0..<16).map { try Snapshot(copying: [UInt8($0)]) }
        DispatchQueue.concurrentPerform(iterations: 400) { iteration in
            let key = "key-\(iteration % 32)"
            switch iteration % 4 {
            case 0, 1: _ = try? registry.register(snapshots[iteration % 16], as: key)
            case 2: _ = try? registry.snapshot(for: key)
            default: _ = registry.keys
            }
        }
        // Every key that was written was written by iterations 0,1 mod 4 with iteration % 32 fixed.
        #expect(registry.count == 16)
        for key in registry.keys {
            let index = Int(key.dropFirst(4))! % 16
            #expect(try registry.snapshot(for: key).read(at: 0, count: 1) == [UInt8(index)])
        }
        DispatchQueue.concurrentPerform(iterations: 32) { iteration in
            _ = try? registry.delete("key-\(iteration)")
        }
        #expect(registry.count == 0)
    }
}
