/// How a worker's change to a range is merged back into the snapshot.
///
/// The raw values are an ABI shared with guest code (a wasm module names its regions with them)
/// and with encoded diffs: they never change. New operations get new values.
public enum MergeOperation: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The worker's bytes replace the snapshot's (last writer wins).
    case bytewise = 0
    /// Each worker's change (updated - original) is added: concurrent sums add up.
    case sum = 1
    /// Each worker's factor (updated / original) multiplies the value.
    case product = 2
    /// Each worker's decrease (original - updated) is subtracted.
    case subtract = 3
    /// The largest of the snapshot's and the workers' values wins.
    case max = 4
    /// The smallest wins.
    case min = 5
    /// Changes to the range are dropped.
    case ignore = 6
    /// The worker's bytes XOR the original are XORed in.
    case xor = 7

    public var description: String {
        switch self {
        case .bytewise: "bytewise"
        case .sum: "sum"
        case .product: "product"
        case .subtract: "subtract"
        case .max: "max"
        case .min: "min"
        case .ignore: "ignore"
        case .xor: "xor"
        }
    }

    /// Whether the operation works on typed numeric values rather than on bytes.
    public var isArithmetic: Bool {
        switch self {
        case .sum, .product, .subtract, .max, .min: true
        case .bytewise, .ignore, .xor: false
        }
    }
}

/// What the bytes of a merge region hold. Raw values are an ABI, like `MergeOperation`'s.
public enum MergeDataType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case raw = 0
    case bool = 1
    /// Little-endian Int32.
    case int32 = 2
    /// Little-endian Int64.
    case int64 = 3
    /// Little-endian IEEE 754 binary32.
    case float = 4
    /// Little-endian IEEE 754 binary64.
    case double = 5

    public var description: String {
        switch self {
        case .raw: "raw"
        case .bool: "bool"
        case .int32: "int32"
        case .int64: "int64"
        case .float: "float"
        case .double: "double"
        }
    }

    /// Bytes per value: 1 for raw and bool.
    public var width: Int {
        switch self {
        case .raw, .bool: 1
        case .int32, .float: 4
        case .int64, .double: 8
        }
    }

    /// Whether arithmetic merge operations apply to it.
    public var isNumeric: Bool { self != .raw && self != .bool }
}
