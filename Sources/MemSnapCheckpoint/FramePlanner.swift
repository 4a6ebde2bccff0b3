import MemSnap

/// A slice of an extent that goes into a frame: nonzero bytes only.
struct Piece {
    var tag: UInt64
    var offset: UInt64
    var bytes: UnsafeRawBufferPointer
}

/// Turns extents into frames, the same way whatever the source or the thread count.
///
/// Rule (documented in docs/FORMAT.md): each extent is cut at every absolute multiple of the
/// page size; all-zero pages are dropped; what is left is joined into maximal runs that never
/// cross an absolute multiple of the chunk size (so no piece is larger than a chunk); pieces are
/// packed in order into frames of at most `chunkSize` extent bytes, a frame closing when the next
/// piece does not fit (its extent bytes would pass the chunk size, or table plus bytes would
/// pass twice the chunk size). Because every cut is at an absolute offset, feeding the same image in
/// windows (a pipe) or whole (a file) gives the same frames, as long as windows are cut at
/// multiples of the chunk size.
struct FramePlanner {
    let chunkSize: Int
    private(set) var pending: [Piece] = []
    private var pendingBytes = 0

    init(chunkSize: Int) { self.chunkSize = chunkSize }

    /// Feeds one extent; returns the frames it completed (each a list of pieces).
    mutating func add(_ extent: CheckpointExtent) -> [[Piece]] {
        var completed: [[Piece]] = []
        guard let base = extent.bytes.baseAddress, extent.bytes.count > 0 else { return completed }
        let pageSize = UInt64(Page.size)
        let chunk = UInt64(chunkSize)
        var position = 0
        var runStart: Int? = nil
        func flushRun(to end: Int) {
            guard let start = runStart, end > start else { runStart = nil; return }
            let piece = Piece(tag: extent.tag, offset: extent.offset + UInt64(start),
                              bytes: UnsafeRawBufferPointer(start: base + start, count: end - start))
            let rawAfter = (pending.count + 1) * CheckpointFormat.extentEntrySize + pendingBytes + piece.bytes.count
            if !pending.isEmpty && (pendingBytes + piece.bytes.count > chunkSize
                                    || rawAfter > CheckpointFormat.maxRawSize(chunkSize: chunkSize)) {
                completed.append(takeFrame())
            }
            pending.append(piece)
            pendingBytes += piece.bytes.count
            runStart = nil
        }
        while position < extent.bytes.count {
            let absolute = extent.offset + UInt64(position)
            let nextPage = (absolute / pageSize + 1) * pageSize
            let length = Int(min(nextPage - absolute, UInt64(extent.bytes.count - position)))
            let zero = isZero(base + position, length)
            if zero {
                flushRun(to: position)
            } else {
                if runStart == nil { runStart = position }
            }
            position += length
            // Never let a run cross an absolute chunk boundary.
            if (extent.offset + UInt64(position)) % chunk == 0 { flushRun(to: position) }
        }
        flushRun(to: position)
        return completed
    }

    /// Replaces each pending piece's bytes with `copy(bytes)`; returns how many were moved.
    mutating func repointPending(_ copy: (UnsafeRawBufferPointer) -> UnsafeRawBufferPointer) -> Int {
        for index in pending.indices { pending[index].bytes = copy(pending[index].bytes) }
        return pending.count
    }

    /// The last, partial frame (empty if nothing is pending).
    mutating func finish() -> [[Piece]] {
        pending.isEmpty ? [] : [takeFrame()]
    }

    private mutating func takeFrame() -> [Piece] {
        defer { pending = []; pendingBytes = 0 }
        return pending
    }

    private func isZero(_ bytes: UnsafeRawPointer, _ count: Int) -> Bool {
        var offset = 0
        var accumulated: UInt64 = 0
        while offset + 8 <= count {
            accumulated |= bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            offset += 8
            if offset & 511 == 0 && accumulated != 0 { return false }
        }
        while offset < count {
            accumulated |= UInt64(bytes.load(fromByteOffset: offset, as: UInt8.self))
            offset += 1
        }
        return accumulated == 0
    }
}

/// A frame ready to write: its header record and stored payload, and the page hashes of what
/// it holds.
struct EncodedFrame {
    var record: FrameRecord
    /// The stored payload: compressed bytes (v3), or nil when the payload is written straight
    /// from the extent table and the source memory (v1, v2: no copy).
    var compressed: [UInt8]?
    var table: [UInt8]
    var pieces: [Piece]
    var hashes = PageHashes()
}

/// Page hashes found while encoding frames: XXH3-64 of every 4096-byte page a piece covers
/// whole, and the bytes of pages pieces cover only in part (the writer joins those, since the
/// rest of such a page may come from another extent, and hashes them at the end).
struct PageHashes {
    var whole: [(page: Int, hash: UInt64)] = []
    var fragments: [(page: Int, offset: Int, bytes: [UInt8])] = []

    /// The hashes of the tag-0 pieces of a frame.
    init(of pieces: [Piece]) {
        let pageSize = CheckpointFormat.pageSize
        for piece in pieces where piece.tag == 0 && !piece.bytes.isEmpty {
            // Piece offsets and ends are below Int.max (checked when the extents were added).
            let start = Int(piece.offset), end = start + piece.bytes.count
            var page = start / pageSize
            while CheckpointFormat.byteOffset(ofPage: page) < end {
                let pageStart = CheckpointFormat.byteOffset(ofPage: page)
                let from = max(start, pageStart), to = min(end, pageStart + min(pageSize, Int.max - pageStart))
                let bytes = UnsafeRawBufferPointer(rebasing: piece.bytes[(from - start)..<(to - start)])
                if from == pageStart && to - from == pageSize {
                    whole.append((page, CheckpointFormat.xxh3(bytes)))
                } else {
                    fragments.append((page, from - pageStart, [UInt8](bytes)))
                }
                page += 1
            }
        }
    }

    init() {}
}

enum FrameEncoder {
    /// The extent table (tag, offset, length per piece) that starts a frame's raw payload.
    static func table(_ pieces: [Piece]) -> [UInt8] {
        var writer = ByteWriter()
        for piece in pieces {
            writer.u64(piece.tag)
            writer.u64(piece.offset)
            writer.u64(UInt64(piece.bytes.count))
        }
        return writer.bytes
    }

    /// Builds frame `index`: table, checksum, (v3) the compressed payload, and with
    /// `hashingPages` the hashes of its pages.
    static func encode(
        _ pieces: [Piece], index: Int, codec: CheckpointCodec, level: Int32, hashingPages: Bool = false
    ) throws(MemSnapError) -> EncodedFrame {
        let table = table(pieces)
        let rawSize = table.count + pieces.reduce(0) { $0 + $1.bytes.count }
        if codec == .none {
            let hashes = hashingPages ? PageHashes(of: pieces) : PageHashes()
            let hasher = XXH3Hasher()
            table.withUnsafeBytes { hasher.update($0) }
            for piece in pieces { hasher.update(piece.bytes) }
            let record = FrameRecord(index: index, offset: 0, storedSize: rawSize, rawSize: rawSize,
                                     extentCount: pieces.count, payloadChecksum: hasher.digest())
            return EncodedFrame(record: record, compressed: nil, table: table, pieces: pieces, hashes: hashes)
        }
        var raw = [UInt8]()
        raw.reserveCapacity(rawSize)
        raw.append(contentsOf: table)
        for piece in pieces { raw.append(contentsOf: piece.bytes) }
        // Hashed from the frame's copy, still in cache, rather than from the source: a pass over
        // memory less (it cost a full checkpoint 15 % at this machine's memory bandwidth).
        let hashes = hashingPages ? raw.withUnsafeBytes { copy in
            var position = table.count
            return PageHashes(of: pieces.map { piece in
                defer { position += piece.bytes.count }
                return Piece(tag: piece.tag, offset: piece.offset,
                             bytes: UnsafeRawBufferPointer(rebasing: copy[position..<position + piece.bytes.count]))
            })
        } : PageHashes()
        let stored = try withBytes(raw) { (bytes) throws(MemSnapError) in try FrameCodec.compress(bytes, codec: codec, level: level) }
        let record = FrameRecord(index: index, offset: 0, storedSize: stored.count, rawSize: rawSize,
                                 extentCount: pieces.count, payloadChecksum: CheckpointFormat.xxh3(stored))
        return EncodedFrame(record: record, compressed: stored, table: [], pieces: [], hashes: hashes)
    }
}
