import MemSnap
import WasmKit

/// One instance of a `WasmProgram`, in a store of its own, whose linear memory memsnap has
/// adopted: snapshots can be mapped over it copy-on-write (`restore(from:)`), and it can be
/// tracked and diffed like any `VirtualRegion` (`memory`).
///
/// Memory: WasmKit reserves 4 GiB plus a guard for the memory and commits it with `mprotect` as
/// it grows; the base never moves. `memory` adopts that reservation (4 GiB claimed; the guard
/// is left alone) after checking it in /proc/self/maps, and follows WasmKit's growth after every
/// call made through `call(_:_:)`. The region keeps the store alive, so WasmKit cannot unmap the
/// memory while memsnap may still map over it.
///
/// Ownership: the instance owns its store (and with it the linear memory) and its adopted
/// region. Keep the instance, not only `memory`, for as long as the memory is used.
/// Thread safety: not thread-safe. A WasmKit store is confined to one thread at a time: use an
/// instance from one thread at a time (different instances may run on different threads at
/// once). `memory`'s own methods are thread-safe as `VirtualRegion`'s are.
public final class WasmInstance: @unchecked Sendable {
    public let program: WasmProgram
    /// Names the instance in errors ("worker 3", "main").
    public let label: String
    /// The instance's WasmKit store: for host functions and exports beyond what this type offers.
    public let store: Store
    public let instance: Instance
    /// The instance's linear memory, adopted (`VirtualRegion.isAdopted`): its committed size is
    /// the memory's size as of the last call through this type.
    public let memory: VirtualRegion
    let wasmMemory: Memory
    let mergeRegions = GuestMergeRegions()
    private let grower: LinearMemoryGrower
    private var stack: ExecutionStack
    /// Set by a trap (see `WasmTrap`).
    public private(set) var hasTrapped = false

    /// Instantiates `program` in a new store, with the `memsnap` host module and the program's
    /// host imports, and adopts its memory.
    /// - Throws: `.unavailable` if the engine uses software bounds checking; `.invalidArgument`
    ///   if instantiation fails (a missing import, a trap in the start function) or the memory
    ///   is not a reservation memsnap can adopt (WasmKit fell back to a malloc'd buffer, for
    ///   example when the 4 GiB reservation failed): the reason names what /proc/self/maps showed.
    public init(program: WasmProgram, label: String = "instance") throws(MemSnapError) {
        let operation = "instantiate \(program.name) (\(label))"
        try WasmProgram.requireReservedMemory(program.engine, during: operation)
        let store = Store(engine: program.engine)
        var imports = Imports()
        mergeRegions.define(in: &imports, store: store)
        let instance: Instance
        do {
            try program.hostImports?(store, &imports)
            instance = try program.module.instantiate(store: store, imports: imports)
        } catch {
            throw MemSnapError(operation, .invalidArgument("WasmKit could not instantiate the module: \(error)"))
        }
        guard let wasmMemory = instance.exports[memory: program.memoryExport] else {
            throw MemSnapError(operation, .invalidArgument("the instance exports no memory named \"\(program.memoryExport)\""))
        }
        let grower = try LinearMemoryGrower(store: store, memory: wasmMemory, during: operation)
        let byteCount = wasmMemory.byteCount
        guard let base = wasmMemory.withUnsafeMutableBufferPointer(offset: 0, count: 0, { $0.baseAddress }) else {
            throw MemSnapError(operation, .invalidArgument("WasmKit gave no address for the memory"))
        }
        self.memory = try VirtualRegion(
            adoptingReservationAt: base, reservedSize: WasmProgram.maximumMemorySize, committedSize: byteCount,
            owner: store, ownerName: "WasmKit linear memory of \(program.name) (\(label))")
        self.program = program
        self.label = label
        self.store = store
        self.instance = instance
        self.wasmMemory = wasmMemory
        self.grower = grower
        self.stack = ExecutionStack(engine: program.engine)
    }

    /// The memory's size in bytes, as WasmKit reports it now (a multiple of 64 KiB).
    public var memoryByteCount: Int { wasmMemory.byteCount }

    /// The type of the exported function `name`, nil if there is none.
    public func functionType(_ name: String) -> FunctionType? {
        instance.exports[function: name]?.type
    }

    /// Calls the exported function `name`, then brings `memory` up to the memory's new size if
    /// the call grew it.
    /// - Throws: `MemSnapError` (`.invalidArgument`) if there is no such export, or following the
    ///   memory's growth fails; `WasmTrap` if the guest trapped or a host function threw (the
    ///   instance is then marked `hasTrapped`).
    @discardableResult
    public func call(_ name: String, _ arguments: [Value] = []) throws -> [Value] {
        guard let function = instance.exports[function: name] else {
            throw MemSnapError("call \(name) in \(program.name) (\(label))", .invalidArgument(
                "the module exports no function named \"\(name)\""))
        }
        let results: [Value]
        do {
            results = try function.invoke(arguments, on: &stack)
        } catch {
            hasTrapped = true
            // A trap can leave the interpreter's stack mid-frame: start from a fresh one.
            stack = ExecutionStack(engine: program.engine)
            try? followGrowth()
            throw WasmTrap(instance: label, function: name, arguments: arguments, underlying: error)
        }
        try followGrowth()
        return results
    }

    /// Grows the memory (through WebAssembly's `memory.grow`) to at least `byteCount` bytes,
    /// rounded up to 64 KiB pages. Smaller sizes change nothing.
    /// - Throws: `.exceedsMaximum` past the memory's declared maximum (or 4 GiB);
    ///   `.invalidRange` for a negative size; `.invalidArgument` if WasmKit fails the call.
    public func growMemory(toAtLeast byteCount: Int) throws(MemSnapError) {
        let operation = "grow memory of \(program.name) (\(label)) to \(ByteCount(byteCount))"
        guard byteCount >= 0 else { throw MemSnapError(operation, .invalidRange(offset: 0, length: byteCount)) }
        guard byteCount <= program.memoryLimit else {
            throw MemSnapError(operation, .exceedsMaximum(what: "memory size", requested: byteCount, maximum: program.memoryLimit))
        }
        let pageSize = WasmProgram.wasmPageSize
        let wanted = (byteCount + pageSize - 1) / pageSize  // byteCount <= 4 GiB: no overflow
        let current = wasmMemory.byteCount / pageSize
        if wanted > current, let pages = UInt32(exactly: wanted - current) {
            guard try grower.grow(byPages: pages, during: operation) else {
                throw MemSnapError(operation, .exceedsMaximum(what: "memory size", requested: byteCount, maximum: program.memoryLimit))
            }
        }
        try followGrowth()
    }

    /// Makes the memory equal to `snapshot` in O(1): grows it to the snapshot's size first if it
    /// is smaller (WebAssembly memory only grows), then maps the snapshot copy-on-write over it
    /// (`Snapshot.mapCopyOnWrite(into:)`). Nothing is copied and nothing of the module runs
    /// again. A memory larger than the snapshot keeps its size, the bytes past the snapshot's
    /// zero (fork a new instance to get exactly the snapshot's size). The instance's tracker, if
    /// any, must be reset afterwards.
    /// - Throws: `.exceedsMaximum` if the snapshot is larger than the memory may grow; mapping
    ///   failures.
    public func restore(from snapshot: Snapshot) throws(MemSnapError) {
        try growMemory(toAtLeast: snapshot.size)
        try snapshot.mapCopyOnWrite(into: memory)
    }

    /// Brings `memory` up to the size WasmKit reports, checking that the memory did not move.
    func followGrowth() throws(MemSnapError) {
        let size = wasmMemory.byteCount
        guard size != memory.committedSize else { return }
        let base = wasmMemory.withUnsafeMutableBufferPointer(offset: 0, count: 0) { $0.baseAddress }
        guard let base, UInt(bitPattern: base) == memory.baseAddress else {
            throw MemSnapError("follow the growth of \(program.name) (\(label)) to \(ByteCount(size))", .invalidArgument(
                "WasmKit moved the memory: it is no longer the reservation memsnap adopted"))
        }
        try memory.followOwnerGrowth(to: size)
    }
}
