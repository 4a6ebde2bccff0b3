#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `soft-dirty`: `echo 4 > /proc/self/clear_refs` and bit 55 of `/proc/self/pagemap`.
///
/// Needs `CONFIG_MEM_SOFT_DIRTY` (x86_64, ppc64, s390; not arm64). Kernels built without it still
/// accept the clear_refs write and never set the bit, so availability is decided by a probe
/// (`DirtyTrackingMode.softDirty.availability`), never assumed.
///
/// Limits: the reset is process-wide (every page of the process takes a fault on its next write),
/// so only one soft-dirty tracker may run at a time; collect-and-reset is two steps, and a write
/// landing between the pagemap read and the clear is lost: pause writers around it.
final class SoftDirtyMechanism: DirtyTrackingMechanism {
    private static let active = Locked(false)
    private let region: VirtualRegion
    private var stopped = false

    init(region: VirtualRegion) throws(MemSnapError) {
        let operation = "start soft-dirty tracking"
        try SoftDirtyMechanism.active.withLock { (active: inout Bool) throws(MemSnapError) in
            guard !active else {
                throw MemSnapError(operation, .invalidArgument(
                    "soft-dirty resets the whole process; only one soft-dirty tracker can run at a time"))
            }
            active = true
        }
        self.region = region
    }

    deinit { stop(pageCount: 0) }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        try SoftDirtyMechanism.clearSoftDirtyBits(during: "arm soft-dirty tracking")
    }

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        let operation = "collect soft-dirty pages"
        let written = try SoftDirtyMechanism.softDirtyPages(of: region, pageCount: pageCount, during: operation)
        if reset { try SoftDirtyMechanism.clearSoftDirtyBits(during: operation) }
        return written
    }

    func stop(pageCount: Int) {
        guard !stopped else { return }
        stopped = true
        SoftDirtyMechanism.active.withLock { $0 = false }
    }

    /// Clears the soft-dirty bit of every page of the process.
    static func clearSoftDirtyBits(during operation: @autoclosure () -> String) throws(MemSnapError) {
        let fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MemSnapError.systemCall("open /proc/self/clear_refs", during: operation()) }
        defer { close(fd) }
        let command: [UInt8] = [UInt8(ascii: "4")]
        guard command.withUnsafeBytes({ write(fd, $0.baseAddress, 1) }) == 1 else {
            throw MemSnapError.systemCall("write /proc/self/clear_refs", during: operation())
        }
    }

    /// Runs of pages among the first `pageCount` of `region` whose pagemap entry has bit 55 set.
    static func softDirtyPages(
        of region: VirtualRegion, pageCount: Int, during operation: @autoclosure () -> String
    ) throws(MemSnapError) -> [Range<Int>] {
        guard pageCount > 0 else { return [] }
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw MemSnapError.systemCall("open /proc/self/pagemap", during: operation()) }
        defer { close(fd) }
        var entries = [UInt64](repeating: 0, count: pageCount)
        let offset = off_t((UInt(bitPattern: region.base) >> UInt(Page.shift)) * 8)
        let wanted = pageCount * 8
        let got = entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, wanted, offset) }
        guard got == wanted else { throw MemSnapError.systemCall("pread /proc/self/pagemap", during: operation()) }
        var bitmap = PageBitmap(pageCount: pageCount)
        for (page, entry) in entries.enumerated() where entry & MEMSNAP_PAGEMAP_SOFT_DIRTY_BIT != 0 {
            bitmap.insert(page)
        }
        return bitmap.runs
    }
}
