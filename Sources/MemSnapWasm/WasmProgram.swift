#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import WasmKit
import WasmParser

/// A WebAssembly module that MemSnapWasm can instantiate, snapshot and fork: the parsed module,
/// the engine that runs it, and the host functions its instances import.
///
/// Checked at creation, so that every later failure is about running, not about the module:
/// - the engine keeps linear memory in a reservation (`memoryBoundsChecking == .mprotect`, the
///   default on Linux x86_64 and arm64). With software bounds checking (requested, or forced by
///   AddressSanitizer or token threading) WasmKit keeps memory in a malloc'd buffer that moves
///   when it grows; memsnap refuses to map over it.
/// - the module exports its memory (under `memoryExport`, "memory" as clang names it), a 32-bit
///   memory that is not shared.
///
/// What a snapshot of an instance holds: its linear memory only. Mutable globals live outside
/// it; a module built by clang has one, the stack pointer, which is back at its initial value
/// at every call boundary, so a snapshot taken between calls is complete. `mutableGlobalCount`
/// says how many the module defines: any beyond the stack pointer keep the value instantiation
/// gives them in every fork, whatever the zygote set them to. A start function
/// (`hasStartFunction`) runs at every instantiation, so also in `WasmZygote.fork()` (its effect
/// on memory is then replaced by the snapshot's).
///
/// Imports: every instance gets the host module `memsnap` (`merge_region`,
/// `clear_merge_regions`; see Guests/memsnap.h), plus what `hostImports` defines for its store.
///
/// Thread safety: a value; instances made from it may run on different threads at once (each
/// has its own store). `hostImports` is called on the thread that instantiates.
public struct WasmProgram: @unchecked Sendable {
    /// Defines extra imports for a new instance's store; called once per instance.
    public typealias HostImports = @Sendable (_ store: Store, _ imports: inout Imports) throws -> Void

    /// Shown in errors and reports.
    public let name: String
    public let engine: Engine
    public let module: Module
    /// The name under which the module exports its linear memory.
    public let memoryExport: String
    /// Mutable globals the module defines (not imports): 1 for a clang-built module (the stack
    /// pointer). Their values are not part of a snapshot.
    public let mutableGlobalCount: Int
    /// Whether the module has a start function (it runs at every instantiation).
    public let hasStartFunction: Bool
    /// The declared maximum of the exported memory in bytes, or 4 GiB when it declares none.
    public let memoryLimit: Int
    let hostImports: HostImports?

    /// The most a wasm32 memory can hold: 65 536 pages of 64 KiB.
    public static let maximumMemorySize = 1 << 32
    /// A WebAssembly page.
    public static let wasmPageSize = 1 << 16

    /// Parses and checks `bytes`.
    /// - Throws: `.unavailable` if `engine` keeps memory in malloc'd buffers (software bounds
    ///   checking); `.corrupt` if the bytes are not a valid module; `.invalidArgument` if the
    ///   module exports no memory named `memoryExport`, or it is shared or 64-bit.
    public init(
        bytes: [UInt8], name: String = "module", engine: Engine = Engine(), memoryExport: String = "memory",
        hostImports: HostImports? = nil
    ) throws(MemSnapError) {
        let operation = "load WebAssembly module \"\(name)\" (\(ByteCount(bytes.count)))"
        try WasmProgram.requireReservedMemory(engine, during: operation)
        let module: Module
        do {
            module = try parseWasm(bytes: bytes, features: engine.configuration.features)
        } catch {
            throw MemSnapError(operation, .corrupt("not a valid WebAssembly module: \(error)"))
        }
        let layout = try WasmProgram.inspect(bytes, features: engine.configuration.features, during: operation)
        let exported = module.exports.first { $0.name == memoryExport }
        guard let exported, case let .memory(index) = exported.descriptor else {
            let memories = module.exports.compactMap { export -> String? in
                if case .memory = export.descriptor { return "\"\(export.name)\"" } else { return nil }
            }
            throw MemSnapError(operation, .invalidArgument(
                "the module exports no memory named \"\(memoryExport)\" "
                + (memories.isEmpty ? "(it exports no memory: build it without --import-memory)"
                                    : "(it exports \(memories.joined(separator: ", ")))")))
        }
        guard let memoryType = layout.memories.indices.contains(Int(index)) ? layout.memories[Int(index)] : nil else {
            throw MemSnapError(operation, .corrupt("the exported memory \(index) is not defined or imported"))
        }
        guard !memoryType.isMemory64 else {
            throw MemSnapError(operation, .invalidArgument(
                "memory \"\(memoryExport)\" is a 64-bit memory; WasmKit keeps those in malloc'd buffers, which memsnap cannot map over"))
        }
        guard !memoryType.shared else {
            throw MemSnapError(operation, .invalidArgument(
                "memory \"\(memoryExport)\" is shared: its threads already share one memory, there is nothing to fork"))
        }
        self.name = name
        self.engine = engine
        self.module = module
        self.memoryExport = memoryExport
        self.mutableGlobalCount = layout.mutableGlobals
        self.hasStartFunction = layout.hasStart
        self.hostImports = hostImports
        if let maximum = memoryType.max, maximum < UInt64(WasmProgram.maximumMemorySize / WasmProgram.wasmPageSize) {
            self.memoryLimit = Int(maximum) * WasmProgram.wasmPageSize
        } else {
            self.memoryLimit = WasmProgram.maximumMemorySize
        }
    }

    /// Reads and checks the module in the file at `path`.
    /// - Throws: `.systemCall("open"/"read"/"fstat", ...)` if the file cannot be read;
    ///   `.exceedsMaximum` for a file over 1 GiB; as `init(bytes:...)`.
    public init(
        contentsOfFile path: String, engine: Engine = Engine(), memoryExport: String = "memory",
        hostImports: HostImports? = nil
    ) throws(MemSnapError) {
        let bytes = try WasmProgram.readFile(path)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        try self.init(bytes: bytes, name: name, engine: engine, memoryExport: memoryExport, hostImports: hostImports)
    }

    /// Throws `.unavailable` unless `engine` keeps linear memories in reservations.
    static func requireReservedMemory(_ engine: Engine, during operation: String) throws(MemSnapError) {
        guard engine.configuration.memoryBoundsChecking == .mprotect else {
            throw MemSnapError(operation, .unavailable(
                "the engine checks memory bounds in software, so WasmKit keeps each linear memory in a malloc'd buffer "
                + "that moves when it grows (software bounds checking is used when requested, under AddressSanitizer, "
                + "or with token threading); memsnap maps snapshots only over reserved memory: use an engine with "
                + "memoryBoundsChecking: .mprotect (the default on Linux x86_64 and arm64, without AddressSanitizer)"))
        }
    }

    /// What the module's sections say about its memories, globals and start function.
    private struct Layout {
        var memories: [MemoryType] = []
        var mutableGlobals = 0
        var hasStart = false
    }

    private static func inspect(_ bytes: [UInt8], features: WasmFeatureSet, during operation: String) throws(MemSnapError) -> Layout {
        var layout = Layout()
        var parser = WasmParser.Parser(bytes: bytes, features: features)
        do {
            while let payload = try parser.parseNext() {
                switch payload {
                case let .importSection(imports):
                    for entry in imports {
                        if case let .memory(type) = entry.descriptor { layout.memories.append(type) }
                    }
                case let .memorySection(memories):
                    layout.memories += memories.map(\.type)
                case let .globalSection(globals):
                    layout.mutableGlobals += globals.filter { $0.type.mutability == .variable }.count
                case .startSection:
                    layout.hasStart = true
                default:
                    break
                }
            }
        } catch {
            throw MemSnapError(operation, .corrupt("not a valid WebAssembly module: \(error)"))
        }
        return layout
    }

    private static func readFile(_ path: String) throws(MemSnapError) -> [UInt8] {
        let operation = "read WebAssembly module \(path)"
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw MemSnapError.systemCall("open", during: operation) }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw MemSnapError.systemCall("fstat", during: operation) }
        let limit = 1 << 30
        guard status.st_size <= limit else {
            throw MemSnapError(operation, .exceedsMaximum(what: "module size", requested: Int(status.st_size), maximum: limit))
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = try systemCall("read", during: operation) {
                chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            }
            if count == 0 { break }
            guard bytes.count + count <= limit else {
                throw MemSnapError(operation, .exceedsMaximum(what: "module size", requested: bytes.count + count, maximum: limit))
            }
            bytes.append(contentsOf: chunk[0..<count])
        }
        return bytes
    }
}
