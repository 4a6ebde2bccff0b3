// A serverless-style fork/join: initialise a runtime's state once, snapshot it, then serve each
// round of requests from workers that all start from that snapshot in O(1) (copy-on-write) and
// whose results merge back at the join.
//
//     swift run example-fork-join
//
// What to copy: a `Snapshot` holds the warm state; `MergeRegion`s say how concurrent writes
// combine (sums add up instead of the last writer winning; scratch is ignored); `SnapshotWorkers`
// runs one closure per worker on threads of its own and merges at the end of `run`.
#if canImport(Glibc)
import Glibc
#endif
import MemSnap

let pageSize = Page.size
let requestsServed = 0                 // Int64: requests served, summed over workers
let workerIDSum = 8                    // Int64: sum of the ids of the workers that served them
let scratch = pageSize                 // a page each worker may scribble on; never merged
let configuration = 2 * pageSize       // "expensive" initialisation, read by every request

do {
    // Initialise once: this is the cold start that every later request skips.
    let snapshot = try Snapshot(size: 1 << 20, name: "function")
    try snapshot.update(at: configuration, count: 256) { table in
        for index in 0..<256 { table[index] = UInt8(truncatingIfNeeded: index &* 7) }
    }
    try snapshot.addMergeRegion(MergeRegion(offset: requestsServed, length: 8, dataType: .int64, operation: .sum))
    try snapshot.addMergeRegion(MergeRegion(offset: workerIDSum, length: 8, dataType: .int64, operation: .sum))
    try snapshot.addMergeRegion(MergeRegion(offset: scratch, length: pageSize, dataType: .raw, operation: .ignore))
    print("snapshot: \(snapshot.size >> 10) KiB, initialised once")

    let workers = try SnapshotWorkers(snapshot: snapshot, count: 8)
    for round in 1...3 {
        _ = try workers.run { worker in
            worker.memory.withUnsafeMutableBytes { memory in
                // Each request sees the initialised configuration...
                let checksum = (0..<256).reduce(0) { $0 &+ Int(memory[configuration + $1]) }
                precondition(checksum == 32_640, "the worker did not start from the snapshot")
                // ...scribbles on its private copy...
                memory.storeBytes(of: UInt64(worker.index), toByteOffset: scratch, as: UInt64.self)
                // ...and reports through the sum regions.
                let served = memory.load(fromByteOffset: requestsServed, as: Int64.self)
                memory.storeBytes(of: served + 1, toByteOffset: requestsServed, as: Int64.self)
                let ids = memory.load(fromByteOffset: workerIDSum, as: Int64.self)
                memory.storeBytes(of: ids + Int64(worker.index), toByteOffset: workerIDSum, as: Int64.self)
            }
        }
        let served = try snapshot.read(at: requestsServed, count: 8).withUnsafeBytes { $0.load(as: Int64.self) }
        let ids = try snapshot.read(at: workerIDSum, count: 8).withUnsafeBytes { $0.load(as: Int64.self) }
        print("round \(round): \(workers.count) workers, requests served \(served), worker id sum \(ids)")
    }
    let scratchAfter = try snapshot.read(at: scratch, count: 8)
    print("scratch merged back: \(scratchAfter != [UInt8](repeating: 0, count: 8))")
} catch {
    print("fork-join failed: \(error)")
    exit(1)
}
