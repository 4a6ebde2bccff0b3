/// The arithmetic of typed merge operations, per value type.
///
/// Defined behaviour (documented on `Snapshot.diff` and tested):
/// - Integers wrap on overflow (two's complement), in both the diff and the apply.
/// - `product` on integers carries updated / original with integer division (a remainder is
///   lost: multiply integer product regions by integers).
/// - Where the original value is 0 a product has no factor; see `Differ` (the new value is sent
///   as a bytewise diff of that element instead).
/// - Floats follow IEEE 754; a NaN on either side of `max` or `min` gives NaN (it propagates, as in
///   IEEE 754-2019 `maximum`/`minimum`, instead of being silently dropped).
/// - "Changed" compares bit patterns: -0.0 differs from 0.0, a NaN equal to itself is unchanged.
protocol MergeArithmetic {
    static var byteWidth: Int { get }
    init(littleEndianAt pointer: UnsafeRawPointer)
    func storeLittleEndian(at pointer: UnsafeMutableRawPointer)
    func sameBits(as other: Self) -> Bool
    var isZero: Bool { get }
    /// What a diff carries for `operation` (an arithmetic one), from original to updated.
    static func diffValue(_ operation: MergeOperation, original: Self, updated: Self) -> Self
    /// The merged value when a diff carrying `diff` is applied to `original`.
    static func applied(_ operation: MergeOperation, original: Self, diff: Self) -> Self
    /// What an unchanged element carries: the value that leaves any original as it is.
    static func identity(_ operation: MergeOperation, original: Self) -> Self
}

protocol WrappingMergeInteger: MergeArithmetic, FixedWidthInteger {}

extension WrappingMergeInteger {
    static var byteWidth: Int { MemoryLayout<Self>.size }
    init(littleEndianAt pointer: UnsafeRawPointer) { self.init(littleEndian: pointer.loadUnaligned(as: Self.self)) }
    func storeLittleEndian(at pointer: UnsafeMutableRawPointer) { pointer.storeBytes(of: littleEndian, as: Self.self) }
    func sameBits(as other: Self) -> Bool { self == other }
    var isZero: Bool { self == 0 }

    static func diffValue(_ operation: MergeOperation, original: Self, updated: Self) -> Self {
        switch operation {
        case .sum: return updated &- original
        case .subtract: return original &- updated
        case .product: return original == 0 ? 1 : updated.dividedReportingOverflow(by: original).partialValue
        default: return updated
        }
    }

    static func applied(_ operation: MergeOperation, original: Self, diff: Self) -> Self {
        switch operation {
        case .sum: return original &+ diff
        case .subtract: return original &- diff
        case .product: return original &* diff
        case .max: return Swift.max(original, diff)
        case .min: return Swift.min(original, diff)
        default: return diff
        }
    }
}

extension MergeArithmetic where Self: Numeric {
    static func identity(_ operation: MergeOperation, original: Self) -> Self {
        switch operation {
        case .sum, .subtract: return 0
        case .product: return 1
        default: return original
        }
    }
}

extension Int32: WrappingMergeInteger {}
extension Int64: WrappingMergeInteger {}

protocol IEEEMergeFloat: MergeArithmetic, BinaryFloatingPoint {
    associatedtype Bits: FixedWidthInteger
    var bitPattern: Bits { get }
    init(bitPattern: Bits)
}

extension IEEEMergeFloat {
    static var byteWidth: Int { MemoryLayout<Self>.size }
    init(littleEndianAt pointer: UnsafeRawPointer) {
        self.init(bitPattern: Bits(littleEndian: pointer.loadUnaligned(as: Bits.self)))
    }
    func storeLittleEndian(at pointer: UnsafeMutableRawPointer) {
        pointer.storeBytes(of: bitPattern.littleEndian, as: Bits.self)
    }
    func sameBits(as other: Self) -> Bool { bitPattern == other.bitPattern }
    var isZero: Bool { self == 0 }

    static func diffValue(_ operation: MergeOperation, original: Self, updated: Self) -> Self {
        switch operation {
        case .sum: return updated - original
        case .subtract: return original - updated
        case .product: return original == 0 ? 1 : updated / original
        default: return updated
        }
    }

    static func applied(_ operation: MergeOperation, original: Self, diff: Self) -> Self {
        switch operation {
        case .sum: return original + diff
        case .subtract: return original - diff
        case .product: return original * diff
        case .max: return original.isNaN || diff.isNaN ? .nan : Swift.max(original, diff)
        case .min: return original.isNaN || diff.isNaN ? .nan : Swift.min(original, diff)
        default: return diff
        }
    }
}

extension Float: IEEEMergeFloat {}
extension Double: IEEEMergeFloat {}
