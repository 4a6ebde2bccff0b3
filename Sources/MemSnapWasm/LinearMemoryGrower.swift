import MemSnap
import WasmKit

/// Grows an instance's linear memory from the host, which WasmKit's public API cannot do
/// (`Memory` has no `grow`): a 75-byte module, assembled here, imports the instance's exported
/// memory into the same store and runs `memory.grow` for the host.
///
///     (module
///       (import "host" "memory" (memory 0))
///       (func (export "grow") (param i32) (result i32) local.get 0 memory.grow)
///       (func (export "size") (result i32) memory.size))
///
/// Its calls are ordinary guarded WasmKit calls, so the first one also installs WasmKit's
/// signal handler (see `WasmTracking`).
///
/// Thread safety: as the store it lives in (one thread at a time).
package struct LinearMemoryGrower {
    static let moduleBytes: [UInt8] = [
        0x00, 0x61, 0x73, 0x6D, 0x01, 0x00, 0x00, 0x00,  // magic, version 1
        0x01, 0x0A, 0x02, 0x60, 0x01, 0x7F, 0x01, 0x7F, 0x60, 0x00, 0x01, 0x7F,  // types: (i32)->i32, ()->i32
        0x02, 0x10, 0x01, 0x04, 0x68, 0x6F, 0x73, 0x74, 0x06, 0x6D, 0x65, 0x6D, 0x6F, 0x72, 0x79,
        0x02, 0x00, 0x00,  // import "host" "memory" (memory 0)
        0x03, 0x03, 0x02, 0x00, 0x01,  // functions: type 0, type 1
        0x07, 0x0F, 0x02, 0x04, 0x67, 0x72, 0x6F, 0x77, 0x00, 0x00, 0x04, 0x73, 0x69, 0x7A, 0x65, 0x00, 0x01,  // exports
        0x0A, 0x0D, 0x02,  // code: 2 bodies
        0x06, 0x00, 0x20, 0x00, 0x40, 0x00, 0x0B,  // local.get 0, memory.grow 0, end
        0x04, 0x00, 0x3F, 0x00, 0x0B,  // memory.size 0, end
    ]

    private static let module: Result<Module, WasmKitError> = Result { () throws(WasmKitError) in try parseWasm(bytes: moduleBytes) }

    private let growFunction: Function
    private let sizeFunction: Function

    /// Instantiates the grower on `memory`, in `memory`'s store.
    /// - Throws: `.invalidArgument` if WasmKit refuses the module or the import (a shared or
    ///   64-bit memory).
    package init(store: Store, memory: Memory, during operation: String) throws(MemSnapError) {
        do {
            let module: Module
            switch LinearMemoryGrower.module {
            case let .success(parsed): module = parsed
            case let .failure(error):
                throw MemSnapError(operation, .invalidArgument("WasmKit does not parse memsnap's memory-growing module: \(error)"))
            }
            let instance = try module.instantiate(store: store, imports: ["host": ["memory": memory]])
            guard let grow = instance.exports[function: "grow"], let size = instance.exports[function: "size"] else {
                throw MemSnapError(operation, .invalidArgument("memsnap's memory-growing module lacks its exports"))
            }
            growFunction = grow
            sizeFunction = size
        } catch let error as MemSnapError {
            throw error
        } catch {
            throw MemSnapError(operation, .invalidArgument("cannot instantiate memsnap's memory-growing module: \(error)"))
        }
    }

    /// Grows the memory by `pages` WebAssembly pages.
    /// - Returns: false if the memory refused to grow (its maximum, or 4 GiB).
    /// - Throws: `.invalidArgument` if WasmKit fails the call.
    package func grow(byPages pages: UInt32, during operation: String) throws(MemSnapError) -> Bool {
        do {
            let results = try growFunction.invoke([.i32(pages)])
            guard case let .i32(previous)? = results.first else { return false }
            return previous != UInt32.max
        } catch {
            throw MemSnapError(operation, .invalidArgument("memory.grow failed: \(error)"))
        }
    }

    /// Makes one guarded call (`memory.size`): WasmKit installs its SIGSEGV/SIGBUS handler on its
    /// process's first guarded call.
    func touch(during operation: String) throws(MemSnapError) {
        do {
            _ = try sizeFunction.invoke([])
        } catch {
            throw MemSnapError(operation, .invalidArgument("memory.size failed: \(error)"))
        }
    }
}
