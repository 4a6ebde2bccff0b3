import CMemSnap
import MemSnap

/// The diff batch decoder and `Snapshot.apply`: any bytes either decode to diffs that re-encode
/// to exactly those bytes, or are refused with `.corrupt`; decoded diffs either apply or are
/// refused with the snapshot unchanged.
///
/// Input: the first byte is a control byte; bit 0 set means "re-seal": the CRC32C trailer of
/// the rest is recomputed before decoding, so mutations reach the structural checks behind the
/// checksum (as a faulty or hostile peer's batch would). The rest is the batch.
enum DiffBatchFuzzing {
    static let snapshotSize = 64 << 10
    static let snapshotMaxSize = 1 << 20

    static func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let control = bytes.first else { return false }
        var batch = [UInt8](bytes.dropFirst())
        if control & 1 != 0, batch.count >= 4 {
            let end = batch.count - 4
            let crc = batch.withUnsafeBytes { memsnap_crc32c(0, $0.baseAddress, end) }
            withUnsafeBytes(of: crc.littleEndian) { for (index, byte) in $0.enumerated() { batch[end + index] = byte } }
        }
        let diffs: [SnapshotDiff]
        do {
            diffs = try SnapshotDiff.decode(batch)
        } catch {
            guard case .corrupt = error.reason else { fatalError("diff-batch: decode threw \(error), not .corrupt") }
            return false
        }
        // The format is canonical: whatever decodes re-encodes byte for byte.
        guard (try? SnapshotDiff.encode(diffs)) == batch else { fatalError("diff-batch: the decoded diffs re-encode differently") }
        return apply(diffs)
    }

    /// A 64 KiB snapshot (able to grow to 1 MiB) of patterned bytes, with an int64 sum region
    /// at 0..<64 and a double max region at 4096..<4160.
    static func patternedSnapshot() throws(MemSnapError) -> Snapshot {
        let snapshot = try Snapshot(size: snapshotSize, maxSize: snapshotMaxSize, name: "fuzz-diff-batch")
        try snapshot.update(at: 0, count: snapshotSize) { memory in
            for index in 0..<memory.count { memory[index] = UInt8(truncatingIfNeeded: index &* 31) }
        }
        snapshot.clearChangedRanges()
        try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 64, dataType: .int64, operation: .sum))
        try snapshot.addMergeRegion(MergeRegion(offset: 4096, length: 64, dataType: .double, operation: .max))
        return snapshot
    }

    /// `apply(batches:)` of `diffs` as one `SnapshotDiffBatch` (split in two, so the merge
    /// crosses a batch boundary) must do what `apply` of the array did: the same bytes and
    /// written ranges, or the same reason of refusal with the snapshot unchanged.
    static func applyAsBatch(
        _ diffs: [SnapshotDiff], expecting expected: Result<([UInt8], [Range<Int>]), MemSnapError>, before: [UInt8]
    ) throws(MemSnapError) {
        let snapshot = try patternedSnapshot()
        let half = diffs.count / 2
        let batches = [SnapshotDiffBatch(Array(diffs[..<half])), SnapshotDiffBatch(Array(diffs[half...]))]
        switch (expected, Result { () throws(MemSnapError) in try snapshot.apply(batches: batches) }) {
        case (.success(let (bytes, written)), .success(let batchWritten)):
            guard batchWritten == written, snapshot.changedRanges == written,
                  (try? snapshot.read(at: 0, count: snapshot.size)) == bytes else {
                fatalError("diff-batch: apply(batches:) wrote other bytes or ranges than apply")
            }
        case (.failure(let error), .failure(let batchError)):
            guard batchError.reason == error.reason, snapshot.size == snapshotSize, snapshot.changedRanges.isEmpty,
                  (try? snapshot.read(at: 0, count: snapshotSize)) == before else {
                fatalError("diff-batch: apply(batches:) refused with \(batchError), apply with \(error), or changed the snapshot")
            }
        case (.success, .failure(let batchError)):
            fatalError("diff-batch: apply(batches:) refused (\(batchError)) what apply accepted")
        case (.failure(let error), .success):
            fatalError("diff-batch: apply(batches:) accepted what apply refused (\(error))")
        }
    }

    /// Applies `diffs` to a patterned snapshot: true if they applied, and then the differ must
    /// reproduce the result (diffing it against a fresh snapshot and applying those diffs gives
    /// the same bytes, except in the max region, where max keeps the larger value); if refused,
    /// the snapshot must be exactly as before.
    static func apply(_ diffs: [SnapshotDiff]) -> Bool {
        do throws(MemSnapError) {
            let snapshot = try patternedSnapshot()
            let before = try snapshot.read(at: 0, count: snapshotSize)
            let written: [Range<Int>]
            do {
                written = try snapshot.apply(diffs)
            } catch {
                guard snapshot.size == snapshotSize, snapshot.changedRanges.isEmpty,
                      (try? snapshot.read(at: 0, count: snapshotSize)) == before else {
                    fatalError("diff-batch: a refused apply (\(error)) changed the snapshot")
                }
                try applyAsBatch(diffs, expecting: .failure(error), before: before)
                return false
            }
            guard snapshot.changedRanges == written else { fatalError("diff-batch: changed ranges differ from the written ones") }
            let after = try snapshot.read(at: 0, count: snapshot.size)
            try applyAsBatch(diffs, expecting: .success((after, written)), before: before)
            let fresh = try patternedSnapshot()
            let pages = Page.count(covering: after.count) ?? 0
            let redo = try withBytes(after) { (memory) throws(MemSnapError) -> [SnapshotDiff] in
                try fresh.diff(memory, dirtyPages: DirtyPages(pageCount: pages, runs: [0..<pages]))
            }
            do {
                try fresh.apply(redo)
            } catch {
                fatalError("diff-batch: diffs made by Snapshot.diff were refused: \(error)")
            }
            var redone = try fresh.read(at: 0, count: fresh.size)
            var expected = after
            guard redone.count == expected.count else { fatalError("diff-batch: the re-diffed snapshot has another size") }
            for index in 4096..<4160 where index < expected.count {
                redone[index] = 0
                expected[index] = 0
            }
            guard redone == expected else { fatalError("diff-batch: diffing the applied snapshot does not reproduce it") }
            return true
        } catch {
            return false  // a snapshot could not be made (out of memory or descriptors)
        }
    }
}
