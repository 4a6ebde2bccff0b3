/// Little-endian encoding of the on-disk formats (checkpoints, arenas), independent of the host.
package struct ByteWriter {
    package var bytes: [UInt8] = []
    package init() {}
    package mutating func u8(_ value: UInt8) { bytes.append(value) }
    package mutating func u16(_ value: UInt16) { append(value) }
    package mutating func u32(_ value: UInt32) { append(value) }
    package mutating func u64(_ value: UInt64) { append(value) }
    package mutating func i32(_ value: Int32) { append(UInt32(bitPattern: value)) }
    package mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }
    /// Zeros up to `count` bytes in all (nothing if already that long).
    package mutating func pad(to count: Int) {
        if bytes.count < count { bytes.append(contentsOf: repeatElement(0, count: count - bytes.count)) }
    }
    private mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Little-endian reads from a borrowed buffer (it must outlive the reader), bounds-checked in
/// every build: a read never touches memory outside `bytes`, whatever `position` or a length is.
///
/// A read that does not fit (past the end, a negative length, a `position` set outside the
/// buffer) returns zero (an empty slice), leaves `position` where it was and sets `overran`,
/// which stays set. Callers either check the remaining length before reading, as decoders of
/// untrusted data do to report *where* a structure is short, or read and then check `overran`
/// once; the throwing `require` turns a short buffer into the caller's error. Each read costs
/// one comparison.
package struct ByteReader {
    package let bytes: UnsafeRawBufferPointer
    /// The offset of the next read. May be set anywhere; a read from outside the buffer overruns.
    package var position = 0
    /// Whether any read did not fit in the buffer (and returned zero or an empty slice).
    package private(set) var overran = false

    package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Bytes from `position` to the end (0 when `position` is outside the buffer).
    package var remaining: Int { position >= 0 && position <= bytes.count ? bytes.count - position : 0 }

    /// Throws `error` unless `count` more bytes can be read.
    package func require(_ count: Int, else error: @autoclosure () -> MemSnapError) throws(MemSnapError) {
        guard count >= 0, count <= remaining else { throw error() }
    }

    package mutating func u8() -> UInt8 { read() }
    package mutating func u16() -> UInt16 { read() }
    package mutating func u32() -> UInt32 { read() }
    package mutating func u64() -> UInt64 { read() }
    package mutating func i32() -> Int32 { Int32(bitPattern: read()) }

    /// The next `count` bytes, borrowed from `bytes`; empty (and `overran` set) when they do not fit.
    package mutating func slice(_ count: Int) -> UnsafeRawBufferPointer {
        guard let start = claim(count), let base = bytes.baseAddress else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + start, count: count)
    }

    /// The start of the next `count` bytes, advancing past them; nil (overran) if they do not fit.
    @inline(__always)
    private mutating func claim(_ count: Int) -> Int? {
        let start = position
        // Both sides are non-negative once the first two hold, so nothing here can overflow.
        guard start >= 0, count >= 0, start <= bytes.count, count <= bytes.count - start else {
            overran = true
            return nil
        }
        position = start + count
        return start
    }

    @inline(__always)
    private mutating func read<T: FixedWidthInteger>() -> T {
        guard let start = claim(MemoryLayout<T>.size), let base = bytes.baseAddress else { return 0 }
        return T(littleEndian: (base + start).loadUnaligned(as: T.self))
    }
}
