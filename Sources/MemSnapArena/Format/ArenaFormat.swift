import CMemSnap
import MemSnap

/// The arena's files (docs/FORMAT.md, "Persistent arenas"):
///
/// - `PATH`: two 4 KiB metapage slots, then the heap (`capacity` bytes, a sparse file);
/// - `PATH-wal`: the write-ahead log, one record per `sync` since the last checkpoint.
///
/// A sync appends one record (every page written since the last sync, full images, plus the
/// roots, epoch and event) and makes it durable with one fdatasync. The record's CRC32C covers
/// all of it, so a record torn by a crash fails its check and recovery stops at the previous
/// one. A checkpoint copies the logged pages into the heap file, syncs it, writes both metapage
/// slots one after the other (counter + CRC32C; a torn slot falls back to the other) and
/// empties the log.
///
/// Everything read back is untrusted, even under a valid CRC: the decoders below check every
/// size, counter and address against the limits documented here before the arena uses it.
enum ArenaFormat {
    static let metaMagic: UInt64 = 0x3141_4E45_5241_534D  // "MSARENA1"
    static let recordMagic: UInt64 = 0x4345_524C_4157_534D  // "MSWALREC"
    static let version: UInt32 = 1
    static let slotSize = 4096
    static let heapFileOffset = 2 * slotSize
    static let rootCount = 32
    static let metaBytes = 320  // the fields before the CRC32C
    static let recordHeaderSize = 64 + rootCount * 8
    /// The smallest heap: the allocator's header and page map plus room to allocate.
    static let minimumCapacity = 64 * 4096
    /// The largest heap, 1 TiB: page-map entries hold page counts in 28 bits, so no run of
    /// pages, free or allocated, may reach 2^28 pages.
    static let maximumCapacity = 1 << 40
    /// Commit numbers and metapage counters stay below this, so `+ 1` never overflows.
    static let counterLimit: UInt64 = 1 << 63

    static func crc(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        memsnap_crc32c(crc, bytes.baseAddress, bytes.count)
    }

    /// Why `capacity` cannot be an arena's, or nil if it can: a page multiple in
    /// `minimumCapacity...maximumCapacity`.
    static func capacityProblem(_ capacity: UInt64) -> String? {
        guard capacity % UInt64(4096) == 0, capacity >= UInt64(minimumCapacity), capacity <= UInt64(maximumCapacity) else {
            return "capacity \(capacity) is not a multiple of 4096 between \(minimumCapacity) and \(maximumCapacity)"
        }
        return nil
    }
}

/// One metapage slot: what the heap file holds (the state after commit `checkpointCommit`).
struct ArenaMeta: Equatable {
    var counter: UInt64
    var capacity: Int
    var recordedBase: UInt64
    var checkpointCommit: UInt64
    var epoch: UInt64
    var event: UInt64
    var roots: [UInt64]

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.u64(ArenaFormat.metaMagic); writer.u32(ArenaFormat.version); writer.u32(UInt32(Page.size))
        for field in [UInt64(capacity), recordedBase, counter, checkpointCommit, epoch, event] + roots { writer.u64(field) }
        writer.u32(writer.bytes.withUnsafeBytes { ArenaFormat.crc($0) })
        writer.pad(to: ArenaFormat.slotSize)
        return writer.bytes
    }

    /// The metapage in `slot`, or why it cannot be used: torn or damaged (wrong magic or CRC32C),
    /// or values no arena can have (a capacity out of range, a counter or commit at 2^63 or
    /// more, a recorded base that is not page-aligned).
    static func decode(_ slot: UnsafeRawBufferPointer) -> Result<ArenaMeta, Problem> {
        guard slot.count >= ArenaFormat.metaBytes + 4 else { return .failure(Problem("too short")) }
        var reader = ByteReader(slot)
        guard reader.u64() == ArenaFormat.metaMagic else { return .failure(Problem("no metapage magic")) }
        let version = reader.u32(), pageSize = reader.u32()
        let capacity = reader.u64(), base = reader.u64(), counter = reader.u64()
        let checkpoint = reader.u64(), epoch = reader.u64(), event = reader.u64()
        let roots = (0..<ArenaFormat.rootCount).map { _ in reader.u64() }
        let stored = reader.u32()
        guard stored == ArenaFormat.crc(UnsafeRawBufferPointer(rebasing: slot[0..<ArenaFormat.metaBytes])) else {
            return .failure(Problem("checksum mismatch"))
        }
        guard version == ArenaFormat.version else { return .failure(Problem("unsupported version \(version) (this build reads 1)")) }
        guard pageSize == UInt32(Page.size) else { return .failure(Problem("page size \(pageSize), this system's is \(Page.size)")) }
        if let problem = ArenaFormat.capacityProblem(capacity) { return .failure(Problem(problem)) }
        guard counter < ArenaFormat.counterLimit, checkpoint < ArenaFormat.counterLimit else {
            return .failure(Problem("counter \(counter) or checkpoint commit \(checkpoint) is 2^63 or more"))
        }
        guard base % UInt64(Page.size) == 0 else { return .failure(Problem("recorded base \(base) is not page-aligned")) }
        return .success(ArenaMeta(counter: counter, capacity: Int(capacity), recordedBase: base, checkpointCommit: checkpoint,
                                  epoch: epoch, event: event, roots: roots))
    }

    struct Problem: Error {
        let text: String
        init(_ text: String) { self.text = text }
    }
}

/// The fixed part of a log record: 64 bytes of header, then the 32 roots.
struct ArenaRecordHeader: Equatable {
    var commit: UInt64
    var pageCount: Int
    var epoch: UInt64
    var event: UInt64
    var roots: [UInt64]

    /// Header, roots, page numbers, pages, then the CRC32C of all of them. Never overflows:
    /// `pageCount` is at most 2^28 (checked when decoded, and an arena holds no more pages).
    var recordBytes: Int { ArenaFormat.recordHeaderSize + pageCount * 8 + pageCount * Page.size + 4 }

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        for field in [ArenaFormat.recordMagic, commit, UInt64(pageCount), epoch, event, UInt64(recordBytes), 0, 0] + roots {
            writer.u64(field)
        }
        return writer.bytes
    }

    /// nil unless the magic is right, the reserved words are zero, the commit is below 2^63, and
    /// the sizes are consistent for an arena of `pageLimit` pages. Says nothing about the rest
    /// of the record: its CRC32C and page numbers are checked before any of it is used.
    static func decode(_ bytes: UnsafeRawBufferPointer, pageLimit: Int) -> ArenaRecordHeader? {
        guard bytes.count >= ArenaFormat.recordHeaderSize else { return nil }
        var reader = ByteReader(bytes)
        guard reader.u64() == ArenaFormat.recordMagic else { return nil }
        let commit = reader.u64(), pageCount = reader.u64(), epoch = reader.u64(), event = reader.u64(), total = reader.u64()
        guard reader.u64() == 0, reader.u64() == 0, pageCount <= UInt64(pageLimit), commit < ArenaFormat.counterLimit else { return nil }
        let roots = (0..<ArenaFormat.rootCount).map { _ in reader.u64() }
        let header = ArenaRecordHeader(commit: commit, pageCount: Int(pageCount), epoch: epoch, event: event, roots: roots)
        return UInt64(header.recordBytes) == total ? header : nil
    }
}
