// A persistent key-value store on a memsnap arena: a fixed hash table of UInt64 keys and values
// in a file-backed heap, found again through root 0 after a restart, and crash-consistent:
// after a crash, reopening finds exactly the last completed `sync`.
//
//     swift run example-kv-store store.arena put 7 49
//     swift run example-kv-store store.arena get 7
//     swift run example-kv-store store.arena list
//
// What to copy: `Arena.openOrCreate`, an allocation whose offset is kept in a root (offsets, not
// pointers, survive a restart), `address(of:byteCount:)` (bounds-checked) to reach it, and
// `sync(epoch:event:)` to make every write since the last sync durable at once.
#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapArena

/// Open addressing with linear probing; key 0 marks an empty slot.
struct Table {
    static let slots = 1024
    static let byteCount = slots * 16
    let base: UnsafeMutableRawPointer

    func slot(for key: UInt64) -> Int? {
        var index = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 54) % Table.slots
        for _ in 0..<Table.slots {
            let stored = base.load(fromByteOffset: index * 16, as: UInt64.self)
            if stored == key || stored == 0 { return index }
            index = (index + 1) % Table.slots
        }
        return nil
    }

    func get(_ key: UInt64) -> UInt64? {
        guard let index = slot(for: key), base.load(fromByteOffset: index * 16, as: UInt64.self) == key else { return nil }
        return base.load(fromByteOffset: index * 16 + 8, as: UInt64.self)
    }

    func put(_ key: UInt64, _ value: UInt64) -> Bool {
        guard let index = slot(for: key) else { return false }
        base.storeBytes(of: key, toByteOffset: index * 16, as: UInt64.self)
        base.storeBytes(of: value, toByteOffset: index * 16 + 8, as: UInt64.self)
        return true
    }

    var entries: [(key: UInt64, value: UInt64)] {
        (0..<Table.slots).compactMap { index in
            let key = base.load(fromByteOffset: index * 16, as: UInt64.self)
            return key == 0 ? nil : (key, base.load(fromByteOffset: index * 16 + 8, as: UInt64.self))
        }.sorted { $0.key < $1.key }
    }
}

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2 else {
    print("usage: example-kv-store PATH put KEY VALUE | get KEY | list")
    exit(2)
}
do {
    let arena = try Arena.openOrCreate(path: arguments[0], capacity: 16 << 20)
    // Root 0 holds the table's offset; 0 means "not created yet".
    var tableOffset = try arena.root(0)
    if tableOffset == 0 {
        let allocation = try arena.allocate(byteCount: Table.byteCount)
        try arena.address(of: allocation, byteCount: Table.byteCount).initializeMemory(as: UInt8.self, repeating: 0, count: Table.byteCount)
        try arena.setRoot(0, to: allocation.rawValue)
        try arena.sync(epoch: 1, event: 0)
        tableOffset = allocation.rawValue
    }
    let table = Table(base: try arena.address(of: ArenaOffset(rawValue: tableOffset), byteCount: Table.byteCount))
    switch (arguments[1], arguments.count) {
    case ("put", 4):
        guard let key = UInt64(arguments[2]), key != 0, let value = UInt64(arguments[3]) else {
            print("keys are nonzero UInt64s, values UInt64s")
            exit(2)
        }
        guard table.put(key, value) else {
            print("the table is full")
            exit(1)
        }
        try arena.sync(epoch: arena.epoch + 1, event: key)   // durable from here on
        print("put \(key) = \(value) (sync \(arena.commitCounter))")
    case ("get", 3):
        guard let key = UInt64(arguments[2]), let value = table.get(key) else {
            print("not found: \(arguments[2])")
            exit(1)
        }
        print("\(key) = \(value)")
    case ("list", 2):
        for (key, value) in table.entries { print("\(key) = \(value)") }
        print("\(table.entries.count) keys")
    default:
        print("usage: example-kv-store PATH put KEY VALUE | get KEY | list")
        exit(2)
    }
    try arena.close()
} catch {
    print("kv-store failed: \(error)")
    exit(1)
}
