/// A range of a snapshot with a rule for merging workers' changes to it.
///
/// Arithmetic operations (`sum`, `product`, `subtract`, `max`, `min`) need a numeric type and
/// treat the range as an array of values of that type (usually one). Byte operations
/// (`bytewise`, `xor`, `ignore`) accept any type.
///
/// Thread safety: a value type.
public struct MergeRegion: Sendable, Hashable, CustomStringConvertible {
    public let offset: Int
    /// Bytes covered; 0 means "to the end of the snapshot", whatever its size at diff time.
    public let length: Int
    public let dataType: MergeDataType
    public let operation: MergeOperation

    /// - Throws: `.invalidRange` for a negative offset or length or an overflowing end;
    ///   `.invalidArgument` for raw or bool data with an arithmetic operation, or an arithmetic
    ///   region whose length is not a multiple of its type's width.
    public init(offset: Int, length: Int, dataType: MergeDataType, operation: MergeOperation) throws(MemSnapError) {
        let operationText = "merge region \(dataType) \(operation) at offset \(offset) of \(length) bytes"
        guard offset >= 0, length >= 0, !offset.addingReportingOverflow(length).overflow else {
            throw MemSnapError(operationText, .invalidRange(offset: offset, length: length))
        }
        if operation.isArithmetic {
            guard dataType.isNumeric else {
                throw MemSnapError(operationText, .invalidArgument(
                    "\(operation) needs a numeric type (int32, int64, float, double), not \(dataType)"))
            }
            guard length % dataType.width == 0 else {
                throw MemSnapError(operationText, .invalidArgument(
                    "\(length) bytes is not a whole number of \(dataType.width)-byte \(dataType) values"))
            }
        }
        self.offset = offset
        self.length = length
        self.dataType = dataType
        self.operation = operation
    }

    public var description: String {
        "\(dataType) \(operation) [\(offset), \(length == 0 ? "end" : String(offset + length)))"
    }

    /// The bytes covered when the snapshot holds `size` bytes (clipped to it).
    func range(inSnapshotOf size: Int) -> Range<Int> {
        let end = length == 0 ? size : Swift.min(offset + length, size)
        return offset < end ? offset..<end : offset..<offset
    }
}
