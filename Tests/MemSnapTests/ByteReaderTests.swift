import MemSnap
import MemSnapTestSupport
import Testing

/// `ByteReader` decodes untrusted files: a read past the end, a negative length or a position
/// outside the buffer returns zero or an empty slice and records the overrun; it never reads
/// outside the buffer, in any build.
@Suite("Little-endian reads never leave their buffer")
struct ByteReaderTests {
    @Test func readsInsideTheBufferAreLittleEndian() {
        let bytes: [UInt8] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xAA]
        bytes.withUnsafeBytes { buffer in
            var reader = ByteReader(buffer)
            #expect(reader.u64() == 0x0807_0605_0403_0201)
            #expect(reader.i32() == -1)
            #expect(reader.u8() == 0xAA)
            #expect(reader.remaining == 0 && !reader.overran)
        }
    }

    @Test func aReadPastTheEndReturnsZeroAndRecordsTheOverrun() {
        let bytes: [UInt8] = [1, 2, 3, 4]
        bytes.withUnsafeBytes { buffer in
            var reader = ByteReader(buffer)
            #expect(reader.u64() == 0, "8 bytes do not fit in 4")
            #expect(reader.overran && reader.position == 0)
            #expect(reader.u32() == 0x0403_0201, "what fits is still read")
            #expect(reader.u8() == 0 && reader.u16() == 0)
            #expect(reader.slice(1).isEmpty && reader.slice(0).isEmpty)
        }
    }

    @Test func badLengthsAndPositionsNeverReadOutside() {
        let bytes: [UInt8] = [9, 9, 9, 9, 9, 9, 9, 9]
        bytes.withUnsafeBytes { buffer in
            var reader = ByteReader(buffer)
            #expect(reader.slice(-1).isEmpty && reader.overran)
            reader = ByteReader(buffer)
            #expect(reader.slice(Int.max).isEmpty && reader.overran, "a huge length cannot overflow the bounds check")
            reader = ByteReader(buffer)
            reader.position = Int.max
            #expect(reader.u8() == 0 && reader.overran && reader.remaining == 0)
            reader = ByteReader(buffer)
            reader.position = -8
            #expect(reader.u64() == 0 && reader.overran)
            reader = ByteReader(buffer)
            reader.position = 4
            #expect(reader.slice(4).count == 4 && !reader.overran)
        }
        var empty = ByteReader(UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(empty.u32() == 0 && empty.overran)
    }

    @Test func requireThrowsTheCallersErrorWhenBytesAreMissing() throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 3, alignment: 1)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: [1, 2, 3])
        var reader = ByteReader(UnsafeRawBufferPointer(buffer))
        _ = reader.u8()
        expectReason(.corrupt("short")) { [reader] in
            try reader.require(3, else: MemSnapError("decode", .corrupt("short")))
        }
        expectReason(.corrupt("negative")) { [reader] in
            try reader.require(-1, else: MemSnapError("decode", .corrupt("negative")))
        }
        try reader.require(2, else: MemSnapError("decode", .corrupt("short")))
    }
}
