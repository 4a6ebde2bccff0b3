#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import SystemPackage

/// A file opened for reading with read/pread (never mapped: a mapped file that shrinks under the
/// reader kills it with SIGBUS), and what fstat said about it when it was opened.
///
/// Ownership: the one owner of the descriptor (closed when the InputFile goes).
/// Thread safety: `read(into:at:...)` (pread) may be called from several threads at once;
/// `readStream` uses a descriptor's file position: one thread at a time per descriptor.
final class InputFile: Sendable {
    let path: String
    private let owned: OwnedFileDescriptor
    /// A regular file (random access, a known size); anything else is read as a stream.
    let isRegular: Bool
    /// For a regular file, its size when opened; 0 otherwise.
    let size: Int

    var descriptor: FileDescriptor { owned.descriptor }

    /// Opens `path` read-only. With `blocking` false a FIFO opens at once instead of waiting for
    /// a writer (for callers that refuse anything but regular files).
    /// - Throws: `.systemCall` naming open or fstat.
    init(path: String, blocking: Bool, during operation: @autoclosure () -> String) throws(MemSnapError) {
        let raw = try systemCall("open", during: operation()) { open(path, O_RDONLY | O_CLOEXEC | (blocking ? 0 : O_NONBLOCK)) }
        let owned = OwnedFileDescriptor(taking: FileDescriptor(rawValue: raw))
        var status = stat()
        _ = try systemCall("fstat", during: operation()) { fstat(raw, &status) }
        self.path = path
        self.owned = owned
        isRegular = status.st_mode & S_IFMT == S_IFREG
        // st_size of a regular file is never negative; a negative one would be a kernel bug.
        size = isRegular ? max(0, Int(status.st_size)) : 0
    }

    /// Reads exactly `buffer.count` bytes at `offset` (pread, retrying short reads and EINTR).
    /// - Throws: `.corrupt` "PLACE: truncated while reading: the file shrank ..." when the file
    ///   ends first (it was cut after it was opened and checked); `.systemCall("pread")`.
    func read(
        into buffer: UnsafeMutableRawBufferPointer, at offset: Int, place: @autoclosure () -> String,
        during operation: @autoclosure () -> String
    ) throws(MemSnapError) {
        guard offset >= 0, buffer.count <= Int.max - offset else {
            throw MemSnapError(operation(), .invalidRange(offset: offset, length: buffer.count))
        }
        guard let base = buffer.baseAddress else { return }
        let raw = descriptor.rawValue
        var done = 0
        while done < buffer.count {
            let got = try systemCall("pread", during: "\(operation()): \(place())") {
                pread(raw, base + done, buffer.count - done, off_t(offset + done))
            }
            if got == 0 {
                throw MemSnapError(operation(), .corrupt(
                    "\(place()): truncated while reading: the file shrank (a \(buffer.count)-byte read at "
                    + "\(at(offset)) found \(done) bytes; the file had \(size) when opened)"))
            }
            done += got
        }
    }

    /// For bytes read whole from `offset ..< offset + count` that then failed a check
    /// (`finding`, the error's text): the "file shrank" error instead, if this is a regular file
    /// now shorter than the read's end; nil otherwise (also when fstat fails: the finding stands).
    /// A truncation that races with a read need not make the read short: the kernel zeroes the
    /// cut part of the last page it keeps, and a read already past the size check copies those
    /// zeros (seen under ThreadSanitizer: a frame read whole, then "not a frame header").
    func shrinkError(readAt offset: Int, count: Int, place: String, finding: String, during operation: String) -> MemSnapError? {
        guard isRegular, offset >= 0, count >= 0, offset <= Int.max - count else { return nil }
        var status = stat()
        guard fstat(descriptor.rawValue, &status) == 0 else { return nil }
        let now = max(0, Int(status.st_size))
        guard now < offset + count else { return nil }
        return MemSnapError(operation, .corrupt(
            "\(place): truncated while reading: the file shrank (to \(now) bytes, during a \(count)-byte read at \(at(offset)) "
            + "whose bytes then failed a check: \(finding); the file had \(size) when opened)"))
    }

    /// `read(into:at:...)` of `count` bytes into a new array.
    func read(_ count: Int, at offset: Int, place: @autoclosure () -> String, during operation: @autoclosure () -> String) throws(MemSnapError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let placeText = place(), operationText = operation()
        try bytes.withUnsafeMutableBytes { buffer in
            Result { () throws(MemSnapError) in try read(into: buffer, at: offset, place: placeText, during: operationText) }
        }.get()
        return bytes
    }

    /// Reads from `descriptor`'s position until `buffer` is full or the input ends (read, retrying
    /// short reads and EINTR). Returns the bytes read: fewer than `buffer.count` only at the end.
    /// - Throws: `.systemCall("read")` naming `offset`, the stream position of the buffer's start.
    static func readStream(
        _ descriptor: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, offset: Int, during operation: @autoclosure () -> String
    ) throws(MemSnapError) -> Int {
        guard let base = buffer.baseAddress else { return 0 }
        var filled = 0
        while filled < buffer.count {
            let count = try systemCall("read", during: "\(operation()) at \(at(offset + filled))") {
                Glibc.read(descriptor.rawValue, base + filled, buffer.count - filled)
            }
            if count == 0 { break }
            filled += count
        }
        return filled
    }
}
