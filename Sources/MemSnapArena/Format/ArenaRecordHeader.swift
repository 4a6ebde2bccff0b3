import CMemSnap
import MemSnap

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
