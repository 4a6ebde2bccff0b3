import MemSnap

/// Diffs cut into encoded batches (docs/FORMAT.md, "Diff batches") of at most a given size, so
/// that no message passes the transport's limit however much a worker changed.
enum DiffBatching {
    static let batchOverhead = 20  // 16-byte header and 4-byte CRC32C
    static let diffOverhead = 20

    /// `diffs` in order, as encoded batches of at most `maxBytes` each (at least one batch, so an
    /// empty list still says "no diffs"). A diff too large for one batch is cut at value
    /// boundaries (bytewise and xor at any byte; arithmetic diffs at their type's width).
    static func encode(_ diffs: [SnapshotDiff], maxBytes: Int, during operation: String) throws(MemSnapError) -> [[UInt8]] {
        let payloadLimit = max(4096, maxBytes - batchOverhead - diffOverhead)
        var batches: [[UInt8]] = []
        var current: [SnapshotDiff] = []
        var currentBytes = batchOverhead
        func flush() throws(MemSnapError) {
            batches.append(try SnapshotDiff.encode(current))
            current = []
            currentBytes = batchOverhead
        }
        for diff in diffs {
            for piece in cut(diff, payloadLimit: payloadLimit) {
                let size = diffOverhead + piece.bytes.count
                if currentBytes + size > maxBytes && !current.isEmpty { try flush() }
                current.append(piece)
                currentBytes += size
            }
        }
        if !current.isEmpty || batches.isEmpty { try flush() }
        return batches
    }

    private static func cut(_ diff: SnapshotDiff, payloadLimit: Int) -> [SnapshotDiff] {
        guard diff.bytes.count > payloadLimit else { return [diff] }
        let width = diff.operation.isArithmetic ? diff.dataType.width : 1
        let step = max(width, payloadLimit / width * width)
        var pieces: [SnapshotDiff] = []
        var start = diff.bytes.startIndex
        while start < diff.bytes.endIndex {
            let end = min(diff.bytes.endIndex, start + step)
            let offset = diff.offset + (start - diff.bytes.startIndex)
            pieces.append(SnapshotDiff(offset: offset, dataType: diff.dataType, operation: diff.operation, bytes: diff.bytes[start..<end]))
            start = end
        }
        return pieces
    }
}
