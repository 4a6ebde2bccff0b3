#if canImport(Glibc)
import Glibc
#endif
import SystemPackage

/// A write that stopped on an error: which errno, after how many bytes had been written.
package struct PartialWriteFailure: Error {
    package let errno: Errno
    package let bytesWritten: Int
}

/// Writes every byte of `buffers`, in order, to `descriptor`: at `offset` with pwritev, or at
/// the descriptor's position with writev when `offset` is nil (pipes, sockets). Retries short
/// writes and EINTR; empty buffers are skipped. The buffers are only read, and only during the
/// call. Not atomic: on failure the first `bytesWritten` bytes are in place.
///
/// - Throws: `PartialWriteFailure` with the errno of the failing call; EFBIG (nothing more
///   written) when a write would reach past file offset `Int.max`.
package func writeAll(
    _ descriptor: Int32, _ buffers: [UnsafeRawBufferPointer], at offset: Int?
) throws(PartialWriteFailure) {
    var vectors = buffers.filter { !$0.isEmpty }.map {
        iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count)
    }
    var done = 0
    var first = 0
    while first < vectors.count {
        let batch = min(vectors.count - first, 1024)  // IOV_MAX on Linux
        var position: Int?
        if let offset {
            let (sum, overflow) = offset.addingReportingOverflow(done)
            guard !overflow else { throw PartialWriteFailure(errno: .fileTooLarge, bytesWritten: done) }
            position = sum
        }
        let result = valueOrErrno {
            vectors.withUnsafeMutableBufferPointer { vector in
                let start = vector.baseAddress.map { $0 + first }
                return if let position { pwritev(descriptor, start, Int32(batch), off_t(position)) }
                       else { writev(descriptor, start, Int32(batch)) }
            }
        }
        let written: Int
        switch result {
        case let .success(count): written = count
        case let .failure(errno): throw PartialWriteFailure(errno: errno, bytesWritten: done)
        }
        done += written
        var remaining = written
        while remaining > 0 && first < vectors.count {
            if remaining >= vectors[first].iov_len {
                remaining -= vectors[first].iov_len
                first += 1
            } else {
                vectors[first].iov_base += remaining
                vectors[first].iov_len -= remaining
                remaining = 0
            }
        }
    }
}

/// `writeAll(_:_:at:)` of one buffer, without building an iovec array: for callers that write
/// once per extent or chunk, tens of thousands of times (restore targets). A write that makes no
/// progress fails with ENOSPC rather than being retried forever.
///
/// - Throws: `PartialWriteFailure` as `writeAll(_:_:at:)`.
package func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int?) throws(PartialWriteFailure) {
    guard let base = bytes.baseAddress else { return }
    var done = 0
    while done < bytes.count {
        var position: off_t?
        if let offset {
            let (sum, overflow) = offset.addingReportingOverflow(done)
            guard !overflow, let exact = off_t(exactly: sum) else {
                throw PartialWriteFailure(errno: .fileTooLarge, bytesWritten: done)
            }
            position = exact
        }
        let result = valueOrErrno {
            if let position { pwrite(descriptor, base + done, bytes.count - done, position) }
            else { write(descriptor, base + done, bytes.count - done) }
        }
        switch result {
        case let .success(written) where written > 0: done += written
        case .success: throw PartialWriteFailure(errno: .noSpace, bytesWritten: done)
        case let .failure(errno): throw PartialWriteFailure(errno: errno, bytesWritten: done)
        }
    }
}

/// `writeAll(_:_:at:)` at a file offset, its failure reported as `pwritev` failing during
/// `operation`.
package func writeAll(
    _ descriptor: Int32, _ buffers: [UnsafeRawBufferPointer], at offset: Int, during operation: @autoclosure () -> String
) throws(MemSnapError) {
    do throws(PartialWriteFailure) {
        try writeAll(descriptor, buffers, at: offset)
    } catch {
        throw MemSnapError(operation(), .systemCall("pwritev", error.errno))
    }
}

/// `Array.withUnsafeBytes` for typed throws (the standard one rethrows untyped errors).
package func withBytes<Result>(
    _ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(MemSnapError) -> Result
) throws(MemSnapError) -> Result {
    try array.withUnsafeBytes { bytes in Swift.Result { () throws(MemSnapError) -> Result in try body(bytes) } }.get()
}
