import MemSnap
import Testing

@Suite("Page geometry and byte counts")
struct PageTests {
    @Test func pageSizeIsAPowerOfTwoFromSysconf() {
        #expect(Page.size == 4096)
        #expect(1 << Page.shift == Page.size)
    }

    @Test func roundingUpAndDown() {
        #expect(Page.roundUp(0) == 0)
        #expect(Page.roundUp(1) == pageSize)
        #expect(Page.roundUp(pageSize) == pageSize)
        #expect(Page.roundUp(pageSize + 1) == 2 * pageSize)
        #expect(Page.roundDown(2 * pageSize - 1) == pageSize)
        #expect(Page.count(covering: 3 * pageSize + 5) == 4)
        #expect(Page.isAligned(8 * pageSize))
        #expect(!Page.isAligned(8 * pageSize + 8))
    }

    @Test func roundingNeverOverflowsSilently() {
        #expect(Page.roundUp(Int.max) == nil)
        #expect(Page.roundUp(Int.max - pageSize + 2) == nil)
        #expect(Page.roundUp(-1) == nil)
        #expect(Page.roundDown(-1) == nil)
        #expect(Page.count(covering: Int.max) == nil)
        #expect(Page.roundUp(10, toMultipleOf: 3) == nil, "alignment must be a power of two")
        #expect(Page.roundUp(10, toMultipleOf: 0) == nil)
        #expect(Page.roundUp(10, toMultipleOf: 64) == 64)
    }

    @Test func byteCountsPrintInBinaryUnits() {
        #expect(ByteCount(512).description == "512 B")
        #expect(ByteCount(4 << 30).description == "4.0 GiB")
        #expect(ByteCount(256 << 20).description == "256.0 MiB")
        #expect(ByteCount(1536).description == "1.5 KiB")
    }

    @Test func byteCountsParseCommonSpellings() {
        #expect(ByteCount(parsing: "4096")?.bytes == 4096)
        #expect(ByteCount(parsing: "64k")?.bytes == 64 << 10)
        #expect(ByteCount(parsing: "256MiB")?.bytes == 256 << 20)
        #expect(ByteCount(parsing: "4 GiB")?.bytes == 4 << 30)
        #expect(ByteCount(parsing: "1.5GiB")?.bytes == 3 << 29)
        #expect(ByteCount(parsing: "") == nil)
        #expect(ByteCount(parsing: "12 parsecs") == nil)
        #expect(ByteCount(parsing: "-4k") == nil)
        #expect(ByteCount(parsing: "99999999999T") == nil, "overflow is rejected, not wrapped")
    }
}
