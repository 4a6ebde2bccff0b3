import CMemSnap

/// The diffs of one `Snapshot.diffBatch` call: every diff's bytes in one payload, each diff a
/// run described by offsets into it. Building one costs a table entry and a copy of the bytes
/// per diff: no allocation, no reference count and no copy per diff.
///
/// A collection of `SnapshotDiff`: element `i` is made when it is read, its `bytes` a slice of
/// the payload (no copy). `Array(batch)` is exactly what `Snapshot.diff` returns for the same
/// memory, and `SnapshotDiff.encode(Array(batch))` its encoding (docs/FORMAT.md, "Diff batches").
/// `Snapshot.apply(batches:)` merges batches without making those elements.
///
/// Ownership: a value; the payload is shared, copy-on-write, by the batch and every diff read
/// from it (keeping one diff keeps the whole payload alive).
/// Thread safety: a value type.
public struct SnapshotDiffBatch: RandomAccessCollection, Sendable {
    /// One diff: `count` bytes of the payload from `payloadStart`, to merge at `offset`.
    struct Run: Sendable, Equatable {
        var offset: Int
        var payloadStart: Int
        var count: Int
        var dataType: MergeDataType
        var operation: MergeOperation
    }

    /// Every diff's bytes, in diff order, back to back.
    public let payload: [UInt8]
    let runs: [Run]

    init(payload: [UInt8], runs: [Run]) {
        self.payload = payload
        self.runs = runs
    }

    /// An empty batch.
    public init() {
        self.init(payload: [], runs: [])
    }

    /// The batch holding `diffs` in order (their bytes copied into one payload).
    public init(_ diffs: [SnapshotDiff]) {
        var payload: [UInt8] = []
        payload.reserveCapacity(diffs.reduce(0) { $0 + $1.bytes.count })
        var runs: [Run] = []
        runs.reserveCapacity(diffs.count)
        for diff in diffs {
            runs.append(Run(offset: diff.offset, payloadStart: payload.count, count: diff.bytes.count,
                            dataType: diff.dataType, operation: diff.operation))
            payload.append(contentsOf: diff.bytes)
        }
        self.init(payload: payload, runs: runs)
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { runs.count }

    /// Diff `position` (0..<count). Like an array's subscript, traps outside the batch.
    public subscript(position: Int) -> SnapshotDiff {
        let run = runs[position]
        return SnapshotDiff(offset: run.offset, dataType: run.dataType, operation: run.operation,
                            bytes: payload[run.payloadStart..<run.payloadStart + run.count])
    }

    /// Bytes of every diff together (headers not counted).
    public var byteCount: Int { payload.count }
}

/// Collects a batch's diffs while the differ scans: bytes go straight into one growing buffer
/// (preallocated from the dirty size, doubled when a batch outgrows it), each diff one entry
/// of the batch's table, which is written once: the kernel's runs are converted in a small
/// scratch on the stack and appended a slice at a time (no per-diff append, no second copy of
/// the table). `finish()` hands both over as a `SnapshotDiffBatch`.
///
/// Ownership: owns its buffer until `finish()` (or deinit) releases it.
struct DiffBatchBuilder: ~Copyable {
    private var storage: UnsafeMutableRawPointer
    private var capacity: Int
    private var used = 0
    private var runs: [SnapshotDiffBatch.Run] = []

    /// `payloadHint` bytes are allocated up front, room for `runHint` diffs reserved.
    init(payloadHint: Int, runHint: Int) {
        capacity = max(256, payloadHint)
        storage = .allocate(byteCount: capacity, alignment: 16)
        runs.reserveCapacity(max(16, runHint))
    }

    deinit { storage.deallocate() }

    /// `count` bytes of room at the end of the payload.
    @inline(__always)
    private mutating func room(for count: Int) -> UnsafeMutableRawPointer {
        if capacity - used < count { grow(toHold: count) }
        return storage + used
    }

    /// Out of line: the rare path, kept out of the per-diff loop.
    @inline(never)
    private mutating func grow(toHold count: Int) {
        var newCapacity = capacity * 2
        while newCapacity - used < count { newCapacity *= 2 }
        let grown = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        grown.copyMemory(from: storage, byteCount: used)
        storage.deallocate()
        storage = grown
        capacity = newCapacity
    }

    /// Table entries converted per slice in `appendRuns` (8 KiB of stack: stays in L1).
    static let runSlice = 256

    /// A bytewise (new bytes) or xor (new XOR original) diff of `run`.
    mutating func appendBytes(
        _ operation: MergeOperation, original: UnsafeRawPointer, updated: UnsafeRawPointer, run: Range<Int>
    ) {
        let count = run.count
        let target = room(for: count)
        if operation == .xor {
            memsnap_xor_bytes(target, original + run.lowerBound, updated + run.lowerBound, count)
        } else {
            target.copyMemory(from: updated + run.lowerBound, byteCount: count)
        }
        runs.append(SnapshotDiffBatch.Run(offset: run.lowerBound, payloadStart: used, count: count,
                                          dataType: .raw, operation: operation))
        used &+= count
    }

    /// The free end of the payload, for the kernel to copy run bytes into (see `appendRuns`):
    /// valid until the builder next changes.
    mutating func payloadRoom() -> UnsafeMutableBufferPointer<UInt8> {
        UnsafeMutableBufferPointer(start: (storage + used).bindMemory(to: UInt8.self, capacity: capacity &- used),
                                   count: capacity &- used)
    }

    /// A bytewise (new bytes) or xor (new XOR original) diff for each of `changed` (runs
    /// start..<end inside both buffers, which hold `limit` bytes; from the kernel), in order.
    /// The bytes of the first `copiedRuns` runs, `copiedBytes` in all, are already in
    /// `payloadRoom()` (the kernel copied them while they were in the caches); the rest are
    /// copied by C here (`memsnap_copy_runs`: short runs as fixed 32-byte moves into the
    /// payload's slack, no call to memcpy).
    mutating func appendRuns(
        _ changed: UnsafeBufferPointer<memsnap_changed_run>, _ operation: MergeOperation,
        copiedRuns: Int, copiedBytes: Int, original: UnsafeRawPointer, updated: UnsafeRawPointer, limit: Int
    ) {
        guard let base = changed.baseAddress, !changed.isEmpty else { return }
        // Reserving exactly what is needed would reallocate on every call: grow geometrically.
        if runs.capacity - runs.count < changed.count {
            runs.reserveCapacity(max(runs.count + changed.count, runs.capacity * 2))
        }
        var payloadEnd = used
        withUnsafeTemporaryAllocation(of: SnapshotDiffBatch.Run.self, capacity: Self.runSlice) { slice in
            guard let sliceBase = slice.baseAddress else { return }
            var sliceStart = 0
            while sliceStart < changed.count {
                let sliceCount = min(Self.runSlice, changed.count &- sliceStart)
                for index in 0..<sliceCount {
                    let run = base[sliceStart &+ index]
                    let count = run.end &- run.start
                    (sliceBase + index).initialize(to: SnapshotDiffBatch.Run(
                        offset: run.start, payloadStart: payloadEnd, count: count, dataType: .raw, operation: operation))
                    payloadEnd &+= count
                }
                runs.append(contentsOf: UnsafeBufferPointer(start: sliceBase, count: sliceCount))
                sliceBase.deinitialize(count: sliceCount)
                sliceStart &+= sliceCount
            }
        }
        // The kernel copied the first `copiedRuns` runs back to back: their lengths add up to `copiedBytes`.
        assert(copiedRuns <= changed.count
               && changed.prefix(copiedRuns).reduce(0) { $0 &+ ($1.end &- $1.start) } == copiedBytes,
               "the kernel copied \(copiedBytes) bytes for \(copiedRuns) runs")
        used &+= copiedBytes
        if copiedRuns < changed.count {
            let target = room(for: payloadEnd &- used &+ Int(MEMSNAP_COPY_RUNS_SLACK))
            _ = memsnap_copy_runs(target, original, updated, limit, base + copiedRuns, changed.count &- copiedRuns,
                                  operation == .xor ? 1 : 0)
        }
        used = payloadEnd
    }

    /// A diff carrying `bytes` as they are (typed values computed by the caller).
    mutating func append(offset: Int, dataType: MergeDataType, operation: MergeOperation, bytes: UnsafeRawBufferPointer) {
        let target = room(for: bytes.count)
        if let source = bytes.baseAddress, !bytes.isEmpty { target.copyMemory(from: source, byteCount: bytes.count) }
        runs.append(SnapshotDiffBatch.Run(offset: offset, payloadStart: used, count: bytes.count,
                                          dataType: dataType, operation: operation))
        used += bytes.count
    }

    /// The batch: the payload copied once into its array, the table handed over.
    mutating func finish() -> SnapshotDiffBatch {
        let source = UnsafeRawPointer(storage)
        let byteCount = used
        // An empty batch must not go through `unsafeUninitializedCapacity`: with capacity 0 it
        // stores the count into the shared empty-array singleton, a write that races with every
        // other thread finishing an empty batch (ThreadSanitizer reports it).
        let payload = byteCount == 0 ? [] : [UInt8](unsafeUninitializedCapacity: byteCount) { buffer, initialized in
            if let target = buffer.baseAddress { UnsafeMutableRawPointer(target).copyMemory(from: source, byteCount: byteCount) }
            initialized = byteCount
        }
        let batch = SnapshotDiffBatch(payload: payload, runs: runs)
        runs = []
        used = 0
        return batch
    }
}
