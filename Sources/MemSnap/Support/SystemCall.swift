#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// The one way memsnap makes a system call that reports failure as -1 and `errno`: swift-system's
/// `valueOrErrno` pattern. The call is repeated while it fails with EINTR (a signal arrived before
/// it did anything, so repeating it is always correct for the calls memsnap makes), and errno is
/// captured immediately after the failing call, before anything can clobber it.
///
/// `body` runs on the calling thread, synchronously, once per attempt; it must be safe to repeat.
///
/// - Returns: the call's result (never -1), or the `Errno` it failed with (never EINTR).
@inlinable
package func valueOrErrno<Value: FixedWidthInteger>(_ body: () -> Value) -> Result<Value, Errno> {
    while true {
        let value = body()
        if value != -1 { return .success(value) }
        let code = Glibc.errno
        if code == EINTR { continue }
        return .failure(Errno(rawValue: code))
    }
}

/// `valueOrErrno(_:)` for callers that throw: a failure becomes
/// `MemSnapError(operation, .systemCall(call, errno))`. `operation` is built only on failure.
///
/// - Throws: `MemSnapError` with reason `.systemCall(call, errno)`, errno never EINTR.
@inlinable
package func systemCall<Value: FixedWidthInteger>(
    _ call: String, during operation: @autoclosure () -> String, _ body: () -> Value
) throws(MemSnapError) -> Value {
    switch valueOrErrno(body) {
    case let .success(value): return value
    case let .failure(errno): throw MemSnapError(operation(), .systemCall(call, errno))
    }
}
