#if canImport(Glibc)
import Glibc
#endif

/// The system page and overflow-checked rounding to it.
///
/// Every helper returns nil, or throws, rather than wrapping: `Page.roundUp(Int.max)` is nil,
/// never a negative number.
///
/// Thread safety: immutable after first use; safe from any thread.
public enum Page {
    /// The page size reported by `sysconf(_SC_PAGESIZE)` (4096 on x86_64 Linux).
    public static let size: Int = {
        let reported = sysconf(Int32(_SC_PAGESIZE))
        // POSIX guarantees a positive power of two; 4096 is the only safe guess if a broken
        // libc says otherwise.
        return reported > 0 && reported & (reported - 1) == 0 ? reported : 4096
    }()

    /// log2 of `size`, for shifting addresses to page numbers.
    public static let shift: Int = size.trailingZeroBitCount

    /// `bytes` rounded up to a multiple of the page size; nil if negative or if it would overflow.
    public static func roundUp(_ bytes: Int) -> Int? { roundUp(bytes, toMultipleOf: size) }

    /// `bytes` rounded down to a multiple of the page size; nil if negative.
    public static func roundDown(_ bytes: Int) -> Int? {
        bytes < 0 ? nil : bytes & ~(size - 1)
    }

    /// Whether `bytes` is a multiple of the page size.
    public static func isAligned(_ bytes: Int) -> Bool { bytes & (size - 1) == 0 }

    /// Number of pages needed to hold `bytes`; nil if negative or if rounding would overflow.
    public static func count(covering bytes: Int) -> Int? {
        roundUp(bytes).map { $0 >> shift }
    }

    /// `value` rounded up to a multiple of `alignment` (a positive power of two); nil if `value`
    /// is negative, `alignment` is not a positive power of two, or the result would overflow.
    public static func roundUp(_ value: Int, toMultipleOf alignment: Int) -> Int? {
        guard value >= 0, alignment > 0, alignment & (alignment - 1) == 0 else { return nil }
        let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
        return overflow ? nil : sum & ~(alignment - 1)
    }

    /// Page-rounded `bytes` or a thrown `.invalidRange` naming `operation`.
    static func roundUp(_ bytes: Int, during operation: String) throws(MemSnapError) -> Int {
        guard let rounded = roundUp(bytes) else {
            throw MemSnapError(operation, .invalidRange(offset: 0, length: bytes))
        }
        return rounded
    }

    /// Throws `.unaligned` unless `value` is a page multiple.
    static func requireAligned(_ value: Int, _ what: String, during operation: String) throws(MemSnapError) {
        guard value >= 0, isAligned(value) else {
            throw MemSnapError(operation, .unaligned(what: what, value: value, alignment: size))
        }
    }
}

/// `offset..<offset+length` after checking that it is non-negative, does not overflow and lies
/// inside `0..<limit`; otherwise the matching error for `operation`.
package func checkedRange(
    offset: Int, length: Int, within limit: Int, during operation: String
) throws(MemSnapError) -> Range<Int> {
    guard offset >= 0, length >= 0 else {
        throw MemSnapError(operation, .invalidRange(offset: offset, length: length))
    }
    let (end, overflow) = offset.addingReportingOverflow(length)
    guard !overflow else { throw MemSnapError(operation, .invalidRange(offset: offset, length: length)) }
    guard end <= limit else {
        throw MemSnapError(operation, .outOfBounds(offset: offset, length: length, size: limit))
    }
    return offset..<end
}
