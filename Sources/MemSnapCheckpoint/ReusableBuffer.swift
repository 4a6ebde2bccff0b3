#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// A page-aligned scratch buffer that grows on demand and is reused across frames or windows.
///
/// Anonymous memory from mmap rather than the Swift allocator, so a size that cannot be had is a
/// thrown ENOMEM instead of a trap (sizes come from files: up to twice the 64 MiB chunk size).
///
/// Ownership: owns its mapping and releases it in deinit. Pointers from `bytes(count:)` stay valid
/// until the next call to it or deinit. Thread safety: none; each thread keeps its own.
final class ReusableBuffer {
    private var memory = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    init() {}

    deinit { release() }

    /// The first `count` bytes of the buffer, growing it first when needed (contents are not kept).
    /// - Throws: `.invalidArgument` for a negative count; `.systemCall("mmap")` (ENOMEM).
    func bytes(count: Int, during operation: @autoclosure () -> String) throws(MemSnapError) -> UnsafeMutableRawBufferPointer {
        guard count >= 0 else { throw MemSnapError(operation(), .invalidArgument("buffer size \(count) is negative")) }
        if count > memory.count {
            release()
            // Round up to whole pages, and at least double, so a slowly growing size maps rarely.
            let (doubled, overflow) = memory.count.multipliedReportingOverflow(by: 2)
            let wanted = overflow ? count : max(count, doubled)
            let (rounded, roundOverflow) = wanted.addingReportingOverflow(Page.size - 1)
            guard !roundOverflow else { throw MemSnapError(operation(), .invalidArgument("buffer size \(count) overflows")) }
            let size = rounded & ~(Page.size - 1)
            guard let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                  address != MAP_FAILED else {
                throw MemSnapError.systemCall("mmap \(size) bytes of buffer", during: operation())
            }
            memory = UnsafeMutableRawBufferPointer(start: address, count: size)
        }
        guard let base = memory.baseAddress else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
        return UnsafeMutableRawBufferPointer(start: base, count: count)
    }

    private func release() {
        if let base = memory.baseAddress { munmap(base, memory.count) }
        memory = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    }
}
