#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// The one error type memsnap throws.
///
/// Every error names the operation that failed with the arguments that matter, and why, so that
/// its `description` alone is a complete log line:
///
///     reserve 4.0 GiB: mmap failed: ENOMEM (Cannot allocate memory)
///     snapshot write 8.0 KiB at offset 1.0 GiB: 1.0 GiB + 8.0 KiB exceeds the maximum size 1.0 GiB
///
/// Errors are values: tests and callers compare `reason` rather than parse text.
public struct MemSnapError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was being done, with its arguments ("reserve 4.0 GiB", "map snapshot into region").
    public var operation: String
    /// Why it failed.
    public var reason: Reason

    public enum Reason: Sendable, Equatable, CustomStringConvertible {
        /// A system call failed with `errno`.
        case systemCall(String, Errno)
        /// A value that must be a multiple of `alignment` is not.
        case unaligned(what: String, value: Int, alignment: Int)
        /// A size or end offset past a fixed maximum.
        case exceedsMaximum(what: String, requested: Int, maximum: Int)
        /// `offset..<offset+length` does not lie inside `0..<size`.
        case outOfBounds(offset: Int, length: Int, size: Int)
        /// Arithmetic on the arguments would overflow `Int` (or they are negative).
        case invalidRange(offset: Int, length: Int)
        /// A destination cannot hold what must be placed in it.
        case tooSmall(what: String, required: Int, capacity: Int)
        /// A key that must not be empty is.
        case emptyKey
        /// Nothing is registered under the key.
        case notFound(key: String)
        /// The arguments contradict each other or the object's state; the text says how.
        case invalidArgument(String)
        /// A facility the operation needs is not available on this system; the text says why.
        case unavailable(String)
        /// Encoded data (a diff, a checkpoint) does not decode; the text says where and why.
        case corrupt(String)

        public var description: String {
            switch self {
            case let .systemCall(call, errno):
                return "\(call) failed: \(errno.symbolicDescription)"
            case let .unaligned(what, value, alignment):
                return "\(what) \(value) is not a multiple of \(alignment)"
            case let .exceedsMaximum(what, requested, maximum):
                return "\(what) \(ByteCount(requested)) (\(requested) bytes) exceeds the maximum "
                    + "\(ByteCount(maximum)) (\(maximum) bytes)"
            case let .outOfBounds(offset, length, size):
                return "range at offset \(offset) of \(length) bytes lies outside the \(size) bytes available"
            case let .invalidRange(offset, length):
                return "offset \(offset) with length \(length) is negative or overflows"
            case let .tooSmall(what, required, capacity):
                return "\(what) holds \(ByteCount(capacity)) (\(capacity) bytes) but "
                    + "\(ByteCount(required)) (\(required) bytes) are required"
            case .emptyKey:
                return "the key is empty"
            case let .notFound(key):
                return "no snapshot is registered under key \"\(key)\""
            case let .invalidArgument(text), let .unavailable(text), let .corrupt(text):
                return text
            }
        }
    }

    public init(_ operation: String, _ reason: Reason) {
        self.operation = operation
        self.reason = reason
    }

    /// The errno of a failed system call, if that is why this error was thrown.
    public var errno: Errno? {
        if case let .systemCall(_, errno) = reason { return errno }
        return nil
    }

    public var description: String { "\(operation): \(reason)" }

    /// An error for the system call `call` that just failed, taking the thread's current errno
    /// before building the operation's text (which allocates and may clobber errno).
    package static func systemCall(_ call: String, during operation: @autoclosure () -> String) -> MemSnapError {
        let errno = Errno(rawValue: Glibc.errno)
        return MemSnapError(operation(), .systemCall(call, errno))
    }
}

extension Errno {
    /// "ENOMEM (Cannot allocate memory)": the symbol for grep and the text for people.
    package var symbolicDescription: String {
        let text = String(cString: strerror(rawValue))
        guard let name = memsnap_errno_name(rawValue) else { return "errno \(rawValue) (\(text))" }
        return "\(String(cString: name)) (\(text))"
    }
}
