#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapTestSupport
import Testing

@Suite("MemoryFile: memfd mapped shared or copy-on-write inside memsnap's reservations")
struct MemoryFileTests {
    @Test func isCloseOnExecAndResizable() throws {
        let file = try MemoryFile(name: "test", size: 3 * pageSize)
        #expect(file.size == 3 * pageSize)
        #expect(fcntl(file.descriptor.rawValue, F_GETFD) & FD_CLOEXEC != 0)
        try file.resize(to: 5 * pageSize + 7)
        #expect(file.size == 5 * pageSize + 7)
        var status = stat()
        #expect(fstat(file.descriptor.rawValue, &status) == 0)
        #expect(Int(status.st_size) == 5 * pageSize + 7)
    }

    @Test func sharedMappingsSeeEachOthersWrites() throws {
        let file = try MemoryFile(size: 4 * pageSize)
        let first = try VirtualRegion(maxSize: 8 * pageSize)
        let second = try VirtualRegion(maxSize: 8 * pageSize)
        try file.map(into: first, length: 4 * pageSize, sharing: .shared)
        try file.map(into: second, length: 4 * pageSize, sharing: .shared)
        #expect(first.committedSize == 4 * pageSize)
        first.store(0xABCD, at: 2 * pageSize)
        #expect(second.load(at: 2 * pageSize) == 0xABCD)
    }

    @Test func copyOnWriteMappingsKeepTheirWritesPrivate() throws {
        let file = try MemoryFile(size: 2 * pageSize)
        let shared = try VirtualRegion(maxSize: 2 * pageSize)
        let privateCopy = try VirtualRegion(maxSize: 2 * pageSize)
        try file.map(into: shared, length: 2 * pageSize, sharing: .shared)
        try file.map(into: privateCopy, length: 2 * pageSize, sharing: .copyOnWrite)
        shared.store(1, at: 0)
        privateCopy.store(2, at: pageSize)
        #expect(shared.load(at: pageSize) == 0, "private writes never reach the file")
        #expect(privateCopy.load(at: 0) == 1, "unwritten private pages still show the file")
    }

    @Test func mapsAtAnOffsetInsideTheRegionAndFromAFileOffset() throws {
        let file = try MemoryFile(size: 4 * pageSize)
        let writer = try VirtualRegion(maxSize: 4 * pageSize)
        try file.map(into: writer, length: 4 * pageSize, sharing: .shared)
        writer.store(0x5151, at: 3 * pageSize)

        let region = try VirtualRegion(maxSize: 8 * pageSize, committing: 2 * pageSize)
        try file.map(into: region, at: 2 * pageSize, fileOffset: 3 * pageSize, length: pageSize, sharing: .shared)
        #expect(region.committedSize == 3 * pageSize)
        #expect(region.load(at: 2 * pageSize) == 0x5151)
    }

    @Test func refusesMappingsThatWouldFaultOrEscapeTheReservation() throws {
        let file = try MemoryFile(size: 2 * pageSize)
        let region = try VirtualRegion(maxSize: 4 * pageSize, committing: pageSize)
        expectReason(.outOfBounds(offset: pageSize, length: 2 * pageSize, size: 2 * pageSize),
                     "pages past the end of the file would raise SIGBUS") {
            try file.map(into: region, fileOffset: pageSize, length: 2 * pageSize, sharing: .shared)
        }
        expectReason(.unaligned(what: "file offset", value: 100, alignment: pageSize)) {
            try file.map(into: region, fileOffset: 100, length: pageSize, sharing: .shared)
        }
        expectReason(.unaligned(what: "region offset", value: 10, alignment: pageSize)) {
            try file.map(into: region, at: 10, length: pageSize, sharing: .shared)
        }
        expectReason(.outOfBounds(offset: 3 * pageSize, length: 2 * pageSize, size: 4 * pageSize)) {
            try file.map(into: region, at: 3 * pageSize, length: 2 * pageSize, sharing: .shared)
        }
        expectReason(.invalidArgument("mapping at offset \(3 * pageSize) would leave a hole after the committed \(pageSize) bytes")) {
            try file.map(into: region, at: 3 * pageSize, length: pageSize, sharing: .shared)
        }
        #expect(region.committedSize == pageSize, "failed mappings change nothing")
    }

    @Test func negativeSizesAreErrors() throws {
        let file = try MemoryFile()
        expectReason(.invalidRange(offset: 0, length: -5)) { try file.resize(to: -5) }
    }
}

// Lets a test name why a case exists without a comment drifting from it.
func expectReason(
    _ reason: MemSnapError.Reason, _ why: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    let error = expectMemSnapError(body, sourceLocation: sourceLocation)
    #expect(error?.reason == reason, Comment(rawValue: why), sourceLocation: sourceLocation)
}
