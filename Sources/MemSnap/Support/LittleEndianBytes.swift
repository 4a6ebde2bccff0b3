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

/// Little-endian reads from a buffer the caller has bounds-checked (reading past its end traps:
/// check the length first). The buffer is borrowed: it must outlive the reader.
package struct ByteReader {
    package let bytes: UnsafeRawBufferPointer
    package var position = 0
    package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }
    package mutating func u8() -> UInt8 { defer { position += 1 }; return bytes[position] }
    package mutating func u16() -> UInt16 { read() }
    package mutating func u32() -> UInt32 { read() }
    package mutating func u64() -> UInt64 { read() }
    package mutating func i32() -> Int32 { Int32(bitPattern: read()) }
    private mutating func read<T: FixedWidthInteger>() -> T {
        defer { position += MemoryLayout<T>.size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: position, as: T.self))
    }
    package mutating func slice(_ count: Int) -> UnsafeRawBufferPointer {
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: bytes[position..<position + count])
    }
}
