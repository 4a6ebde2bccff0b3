#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import Foundation
import MemSnap
@testable import MemSnapArena
import MemSnapTestSupport
import SystemPackage
import Testing

/// A temporary directory holding one arena.
final class ArenaDirectory {
    private let directory = TemporaryDirectory(prefix: "memsnap-arena-test")
    var path: String { directory.path }
    var arena: String { directory.file("heap.arena") }
    var log: String { arena + "-wal" }
    var entries: [String] { directory.entries }
    func file(_ name: String) -> String { directory.file(name) }
}

let pageSize = Page.size

extension Arena {
    func fill(_ offset: ArenaOffset, count: Int, with byte: UInt8) throws {
        try address(of: offset, byteCount: count).initializeMemory(as: UInt8.self, repeating: byte, count: count)
    }
    func bytes(_ offset: ArenaOffset, count: Int) throws -> [UInt8] {
        [UInt8](UnsafeRawBufferPointer(start: try address(of: offset, byteCount: count), count: count))
    }
}

// MARK: Raw files

/// The bytes of a whole file (empty if it is missing).
func fileBytes(_ path: String) -> [UInt8] {
    (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? []
}

/// Overwrites `bytes` at `offset` of the file at `path`.
func patchFile(_ path: String, at offset: Int, _ bytes: [UInt8]) {
    let descriptor = open(path, O_RDWR)
    #expect(descriptor >= 0, "open \(path)")
    defer { close(descriptor) }
    let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
    #expect(written == bytes.count)
}

func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

func readU64(_ path: String, at offset: Int) -> UInt64 {
    let bytes = fileBytes(path)
    return bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
}

/// Metapage field offsets (docs/FORMAT.md).
enum MetaField: Int {
    case capacity = 16, recordedBase = 24, counter = 32, checkpointCommit = 40, epoch = 48, event = 56
}

/// Sets `field` in both metapage slots and recomputes each slot's CRC32C, so the damage reaches
/// the structural checks instead of stopping at the checksum.
func resealMetapages(_ path: String, _ field: MetaField, to value: UInt64, slots: [Int] = [0, 1]) {
    for slot in slots {
        let base = slot * ArenaFormat.slotSize
        patchFile(path, at: base + field.rawValue, littleEndian(value))
        let bytes = fileBytes(path)
        let crc = bytes.withUnsafeBytes { ArenaFormat.crc(UnsafeRawBufferPointer(rebasing: $0[base..<base + ArenaFormat.metaBytes])) }
        patchFile(path, at: base + ArenaFormat.metaBytes, littleEndian(crc))
    }
}

/// The log records of the file at `path`, from offset 0 on: (position, header).
func logRecords(_ path: String, pageLimit: Int) -> [(position: Int, header: ArenaRecordHeader)] {
    let bytes = fileBytes(path)
    var records: [(Int, ArenaRecordHeader)] = []
    var position = 0
    while bytes.count - position >= ArenaFormat.recordHeaderSize,
          let header = bytes.withUnsafeBytes({ ArenaRecordHeader.decode(UnsafeRawBufferPointer(rebasing: $0[position...]), pageLimit: pageLimit) }),
          header.recordBytes <= bytes.count - position {
        records.append((position, header))
        position += header.recordBytes
    }
    return records
}

/// Recomputes the CRC32C trailer of the log record at `position` (after a test changed it).
func resealLogRecord(_ path: String, at position: Int, recordBytes: Int) {
    let bytes = fileBytes(path)
    let crc = bytes.withUnsafeBytes { ArenaFormat.crc(UnsafeRawBufferPointer(rebasing: $0[position..<position + recordBytes - 4])) }
    patchFile(path, at: position + recordBytes - 4, littleEndian(crc))
}

/// Heap offsets of the allocator's header fields (heap page 0; docs/FORMAT.md).
enum AllocatorField: Int {
    case top = 24, pendingHead = 32, allocatedBytes = 40, allocationCount = 48
}

/// Writes `value` into the allocator header field of a closed arena's heap file.
func patchAllocator(_ path: String, _ field: AllocatorField, to value: UInt64) {
    patchFile(path, at: ArenaFormat.heapFileOffset + field.rawValue, littleEndian(value))
}

/// Writes the page-map entry of heap page `page` of a closed arena's heap file.
func patchPageMap(_ path: String, page: Int, kind: UInt32, value: UInt32) {
    patchFile(path, at: ArenaFormat.heapFileOffset + pageSize + page * 4, littleEndian(kind << 28 | value))
}

// MARK: Fault injection

/// What a `FaultyFile` operation is.
enum FileOperation: String, Sendable, CaseIterable {
    case write, synchronize, reserve, resize, punchHole
}

/// Failures to inject: the `failAt`-th matching operation (counting from 1) of `role` throws
/// `errno` (and every later one too when `sticky`).
final class FaultPlan: @unchecked Sendable {
    struct Rule {
        var role: ArenaFileRole?
        /// nil: any operation.
        var operation: FileOperation?
        /// Only writes that touch these file offsets count.
        var offsets: Range<Int>?
        /// Only writes of exactly this many bytes count.
        var length: Int?
        /// A failing write first writes this many of its bytes (a torn write), else none.
        var partial: Int?
        var failAt: Int
        var errno: Errno
        var sticky: Bool
        var seen = 0
    }
    private let lock = NSLock()
    private var rules: [Rule] = []
    private(set) var injected = 0
    /// Every operation seen, in order, for tests that fail each one in turn.
    private(set) var operationCount = 0

    /// Fails the `count`-th `operation` (any operation if nil) of the file `role` (either if
    /// nil), only counting writes that touch `offsets` when given.
    func fail(_ operation: FileOperation?, of role: ArenaFileRole? = nil, offsets: Range<Int>? = nil, length: Int? = nil,
              partial: Int? = nil, at count: Int = 1, with errno: Errno, sticky: Bool = false) {
        lock.withLock {
            rules.append(Rule(role: role, operation: operation, offsets: offsets, length: length, partial: partial, failAt: count,
                              errno: errno, sticky: sticky))
        }
    }

    func clear() { lock.withLock { rules.removeAll() } }

    /// The errno to fail this operation with (and for a write, how many of its bytes to write
    /// first), if any.
    func check(_ operation: FileOperation, _ role: ArenaFileRole, touching range: Range<Int>? = nil) -> (errno: Errno, partial: Int?)? {
        lock.withLock {
            operationCount += 1
            for index in rules.indices where (rules[index].operation ?? operation) == operation && (rules[index].role ?? role) == role {
                if let offsets = rules[index].offsets, !(range.map { $0.overlaps(offsets) } ?? false) { continue }
                if let length = rules[index].length, range?.count != length { continue }
                rules[index].seen += 1
                if rules[index].seen == rules[index].failAt || (rules[index].sticky && rules[index].seen > rules[index].failAt) {
                    injected += 1
                    return (rules[index].errno, rules[index].partial)
                }
            }
            return nil
        }
    }

    var layer: ArenaFileLayer {
        ArenaFileLayer { file, role in FaultyFile(file, role: role, plan: self) }
    }
}

/// An arena file that does the real thing, and lets a test intercept each change: `before`
/// may fail it (nothing is done), `after` sees it once it succeeded.
class InterceptedFile: ArenaFile {
    let inner: PosixArenaFile
    let role: ArenaFileRole

    init(_ inner: PosixArenaFile, role: ArenaFileRole) {
        self.inner = inner
        self.role = role
    }

    var path: String { inner.path }
    var descriptor: FileDescriptor { inner.descriptor }
    var allocatedBytes: Int { inner.allocatedBytes }

    /// Called before each change to the file (`range`: the bytes a write covers); throwing
    /// fails the change.
    func before(_ operation: FileOperation, touching range: Range<Int>?, during text: @autoclosure () -> String) throws(MemSnapError) {}
    /// Called after each change succeeded, with what it did.
    func after(_ change: DiskJournal.Operation) {}

    func size(during operation: @autoclosure () -> String) throws(MemSnapError) -> Int { try inner.size(during: operation()) }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int, during operation: @autoclosure () -> String) throws(MemSnapError) -> Int {
        try inner.read(into: buffer, at: offset, during: operation())
    }
    func write(_ buffers: [UnsafeRawBufferPointer], at offset: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        let count = buffers.reduce(0) { $0 + $1.count }
        try before(.write, touching: offset..<offset + max(1, count), during: operation())
        try inner.write(buffers, at: offset, during: operation())
        after(.write(role, offset: offset, bytes: buffers.flatMap { Array($0) }))
    }
    func synchronize(during operation: @autoclosure () -> String) throws(MemSnapError) {
        try before(.synchronize, touching: nil, during: operation())
        try inner.synchronize(during: operation())
        after(.flush(role))
    }
    func reserve(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        try before(.reserve, touching: range, during: operation())
        try inner.reserve(range, during: operation())
        after(.reserve(role, end: range.upperBound))
    }
    func resize(to size: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        try before(.resize, touching: nil, during: operation())
        try inner.resize(to: size, during: operation())
        after(.resize(role, size: size))
    }
    func punchHole(_ range: Range<Int>, during operation: @autoclosure () -> String) throws(MemSnapError) {
        try before(.punchHole, touching: range, during: operation())
        try inner.punchHole(range, during: operation())
        after(.punch(role, range))
    }
}

/// An arena file that fails where its plan says, and otherwise does the real thing. A failed
/// write writes nothing; a failed flush happens after the data reached the page cache (as a
/// real EIO from fdatasync does).
final class FaultyFile: InterceptedFile {
    let plan: FaultPlan

    init(_ inner: PosixArenaFile, role: ArenaFileRole, plan: FaultPlan) {
        self.plan = plan
        super.init(inner, role: role)
    }

    override func before(_ operation: FileOperation, touching range: Range<Int>?, during text: @autoclosure () -> String) throws(MemSnapError) {
        guard let fault = plan.check(operation, role, touching: operation == .write ? range : nil) else { return }
        if let partial = fault.partial, let range {  // a torn write: a prefix lands, then the error
            pendingTornWrite = (range.lowerBound, min(partial, range.count))
        }
        throw MemSnapError(text(), .systemCall("\(operation.rawValue) \(path) (injected)", fault.errno))
    }

    /// Where a torn write's prefix goes: `write` lands it before rethrowing.
    private var pendingTornWrite: (offset: Int, count: Int)?

    override func write(_ buffers: [UnsafeRawBufferPointer], at offset: Int, during operation: @autoclosure () -> String) throws(MemSnapError) {
        do {
            try super.write(buffers, at: offset, during: operation())
        } catch {
            if let torn = pendingTornWrite {
                pendingTornWrite = nil
                let bytes = Array(buffers.flatMap { Array($0) }.prefix(torn.count))
                try? inner.write(bytes, at: torn.offset, during: operation())
            }
            throw error
        }
    }
}

/// An arena file that does the real thing and tells the journal what it did.
final class RecordingFile: InterceptedFile {
    let journal: DiskJournal

    init(_ inner: PosixArenaFile, role: ArenaFileRole, journal: DiskJournal) {
        self.journal = journal
        super.init(inner, role: role)
    }

    override func after(_ change: DiskJournal.Operation) { journal.append(change) }
}

// MARK: Full file systems

extension SmallTmpfs {
    /// Fills the file system until a write fails with ENOSPC; returns the filler's path.
    @discardableResult
    func fill() -> String {
        let filler = "\(path)/filler"
        let descriptor = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        defer { close(descriptor) }
        let chunk = [UInt8](repeating: 0xA5, count: 64 << 10)
        while chunk.withUnsafeBytes({ write(descriptor, $0.baseAddress, $0.count) }) > 0 {}
        var page = [UInt8](repeating: 0xA5, count: 512)
        while write(descriptor, &page, 512) > 0 {}
        return filler
    }
}

// MARK: Tracking modes

/// The ways an arena finds written pages, as the tests run them. `recentChunks` uses small
/// chunks left writable for at most one idle sync, so that a small test heap has many chunks
/// turning cold and written again; `recentChunksAdaptive` the same small chunks with the default
/// bound on idle syncs, so that chunks the workload rewrites often are left writable for longer
/// (their thresholds grow) while the others are protected by the sync that scans their write.
enum TrackingUnderTest: String, CaseIterable, CustomStringConvertible, Sendable {
    case wholeHeap, recentChunks, recentChunksAdaptive, explicit

    var description: String { rawValue }

    var configuration: Arena.Configuration {
        switch self {
        case .wholeHeap: return Arena.Configuration(tracking: .automatic)
        case .recentChunks:
            var configuration = Arena.Configuration(tracking: .automatic, syncScan: .recentlyWrittenChunks)
            configuration.chunkShift = 16
            configuration.maximumIdleSyncsBeforeProtecting = 1
            return configuration
        case .recentChunksAdaptive:
            var configuration = Arena.Configuration(tracking: .automatic, syncScan: .recentlyWrittenChunks)
            configuration.chunkShift = 16
            return configuration
        case .explicit: return Arena.Configuration(tracking: .explicit)
        }
    }

    /// Only explicit tracking needs the test to declare its writes; the others must find them.
    var declaresWrites: Bool { self == .explicit }
}
