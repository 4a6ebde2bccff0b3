import MemSnap
import WasmKit

/// Chooses how WebAssembly linear memory is tracked: the fastest `DirtyTrackingMode` that works
/// on memory WasmKit also guards with signals.
///
/// `uffd-async` (the default where the kernel has it) needs no signal and is unaffected by
/// WasmKit. `segfault` needs memsnap's SIGSEGV handler to see write faults first, but WasmKit
/// installs its own handler on its first guarded call, and that handler turns every fault in
/// linear memory into an out-of-bounds trap without passing it on. The order of installation
/// decides:
/// - WasmKit's handler first, memsnap's after it (memsnap passes on every fault outside its
///   records, so WasmKit still sees real out-of-bounds accesses): segfault tracking works.
///   `resolve` arranges this order itself when it can: it makes one guarded call (installing
///   WasmKit's handler) before installing memsnap's.
/// - memsnap's first (segfault tracking was used earlier in this process, or its probe ran):
///   WasmKit's sits in front and would turn every tracked write into a trap, so `segfault` is
///   refused with an error saying so, and `auto` moves on to the next mode.
///
/// Thread safety: callable from any thread.
public enum WasmTracking {
    /// The mode to track instances of `engine` with: `requested`, or `MEMSNAP_DIRTY_TRACKING`
    /// when it is nil, or the first of `DirtyTrackingMode.preferenceOrder` that works for
    /// WebAssembly memory when that is `auto`.
    /// - Throws: `.unavailable` naming why the requested mode cannot track WebAssembly memory
    ///   here (for `segfault`: the handler order above); `.invalidArgument` for a bad
    ///   `MEMSNAP_DIRTY_TRACKING`.
    public static func resolve(_ requested: DirtyTrackingMode?, engine: Engine) throws(MemSnapError) -> DirtyTrackingMode {
        let mode: DirtyTrackingMode
        if let requested { mode = requested } else { mode = try DirtyTrackingMode.fromEnvironment() }
        switch mode {
        case .auto:
            for candidate in DirtyTrackingMode.preferenceOrder {
                if candidate == .segfault {
                    if (try? requireSegfaultTracking(engine: engine)) != nil { return .segfault }
                } else if candidate.availability == .available {
                    return candidate
                }
            }
            throw MemSnapError("choose a dirty tracking mode for WebAssembly memory", .unavailable("no tracking mode works here"))
        case .segfault:
            try requireSegfaultTracking(engine: engine)
            return .segfault
        default:
            return try mode.resolved()
        }
    }

    /// Installs WasmKit's handler (one guarded call), then memsnap's, and checks that memsnap's
    /// is in front.
    /// - Throws: `.unavailable` if segfault tracking does not work here or memsnap's handler is
    ///   behind WasmKit's.
    static func requireSegfaultTracking(engine: Engine) throws(MemSnapError) {
        let operation = "start segfault tracking of WebAssembly memory"
        try installWasmKitHandler(engine: engine)
        try SegfaultHandler.install()
        if case let .unavailable(reason) = DirtyTrackingMode.segfault.availability {
            throw MemSnapError(operation, .unavailable(reason))
        }
        guard SegfaultHandler.isOutermost else {
            throw MemSnapError(operation, .unavailable(
                "memsnap's SIGSEGV handler was installed before WasmKit's (segfault tracking was used earlier in this "
                + "process), so WasmKit's handler sees every fault first and would turn each tracked write to linear "
                + "memory into an out-of-bounds trap; use uffd-async tracking (the default where the kernel has it), "
                + "or start segfault tracking only after the process's first WebAssembly call"))
        }
    }

    private static let wasmKitHandlerInstalled = Locked(false)

    /// Makes one guarded WasmKit call (once per process), which installs WasmKit's handler.
    static func installWasmKitHandler(engine: Engine) throws(MemSnapError) {
        let operation = "install WasmKit's signal handler"
        try WasmProgram.requireReservedMemory(engine, during: operation)
        try wasmKitHandlerInstalled.withLock { (installed: inout Bool) throws(MemSnapError) in
            guard !installed else { return }
            let store = Store(engine: engine)
            let memory: Memory
            do {
                memory = try Memory(store: store, type: MemoryType(min: 0, max: nil))
            } catch {
                throw MemSnapError(operation, .invalidArgument("WasmKit could not create a memory: \(error)"))
            }
            try LinearMemoryGrower(store: store, memory: memory, during: operation).touch(during: operation)
            installed = true
        }
    }
}
