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
