import WasmKit

/// A call into a guest failed: the guest trapped (`unreachable`, an out-of-bounds access, a
/// division by zero, a call stack exhausted...), or a host function it called threw (a refused
/// `memsnap.merge_region` declaration, say).
///
/// After a trap the instance's mutable globals (its stack pointer among them) are wherever the
/// trap left them, so the instance is marked (`WasmInstance.hasTrapped`) and a `WasmWorkers`
/// pool replaces it with a fresh fork of the snapshot before using it again.
public struct WasmTrap: Error, CustomStringConvertible {
    /// The instance, as the caller named it ("worker 3", "main", "zygote").
    public let instance: String
    public let function: String
    public let arguments: [Value]
    /// What WasmKit (or the host function) threw.
    public let underlying: any Error

    public var description: String {
        "\(instance): \(function)(\(arguments.map(WasmTrap.text).joined(separator: ", "))) trapped: \(underlying)"
    }

    static func text(_ value: Value) -> String {
        switch value {
        case let .i32(bits): return "\(Int32(bitPattern: bits))"
        case let .i64(bits): return "\(Int64(bitPattern: bits))"
        case let .f32(bits): return "\(Float(bitPattern: bits))"
        case let .f64(bits): return "\(Double(bitPattern: bits))"
        default: return "\(value)"
        }
    }
}
