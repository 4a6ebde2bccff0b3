#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import MemSnapWasm
import Testing
import WasmKit

/// Segfault tracking of linear memory needs memsnap's SIGSEGV handler in front of WasmKit's.
/// Which one a process installs first is process-wide state. This test binary installs memsnap's
/// while it plans the suite (the tracking tests' arguments probe every mode), so the order that
/// works is checked in a fresh `memsnap` process, and the refused order in a child of this
/// binary (filtered to `segfaultOrderChild`).
@Suite("Segfault tracking of WebAssembly memory and WasmKit's signal handler",
       .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmSegfaultOrderTests {
    static let childVariable = "MEMSNAP_WASM_SEGFAULT_ORDER_CHILD"

    @Test(.enabled(if: memsnapExecutable != nil, "the memsnap executable is not built next to the tests"))
    func withWasmKitsHandlerInstalledFirstSegfaultTrackingWorksAndRealTrapsStillTrap() throws {
        let module = guestsDirectory.appendingPathComponent("reduction.wasm").path
        let run = try runMemsnap(["wasm", "run", module, "--zygote", "zygote", "--function", "work",
                                  "--workers", "4", "--rounds", "5", "--tracking", "segfault"])
        #expect(run.status == 0 && !run.signalled, "\(run.output)")
        #expect(run.output.contains("tracking: segfault"), "\(run.output)")
        #expect(run.output.contains("round 5: result = 20;"), "\(run.output)")
        let trap = try runMemsnap(["wasm", "run", module, "--zygote", "zygote", "--function", "work_faulty",
                                   "--workers", "2", "--tracking", "segfault"])
        #expect(trap.status == 1 && !trap.signalled, "\(trap.output)")
        #expect(trap.output.contains("worker 1 failed") && trap.output.contains("out of bounds"), "\(trap.output)")
    }

    @Test func withMemsnapsHandlerInstalledFirstSegfaultTrackingIsRefused() throws {
        let child = try ChildTestProcess.run("segfaultOrderChild", environment: [Self.childVariable: "memsnap-first"])
        #expect(child.status == 0, "\(child.output)")
        #expect(child.output.contains("segfault-order memsnap-first: as specified"), "\(child.output)")
    }

    /// Runs only inside the child.
    @Test func segfaultOrderChild() throws {
        guard ProcessInfo.processInfo.environment[Self.childVariable] == "memsnap-first" else { return }
        let segfault = WasmWorkers.Configuration(tracking: DirtyTracker.Configuration(mode: .segfault))
        // Segfault tracking of ordinary memory before any WebAssembly call: memsnap's handler
        // is installed first, and WasmKit's will sit in front of it.
        let region = try VirtualRegion(maxSize: 16 * Page.size, committing: 16 * Page.size)
        let tracker = try DirtyTracker(tracking: region, mode: .segfault)
        let zygote = try WasmZygote(program: try WasmGuest.reduction.program())
        let error = expectMemSnapError { _ = try WasmWorkers(zygote: zygote, count: 2, configuration: segfault) }
        guard case let .unavailable(text)? = error?.reason else {
            Issue.record("expected .unavailable, got \(String(describing: error))")
            return
        }
        #expect(text.contains("installed before WasmKit's"), "\(text)")
        // auto picks another mode, and it works.
        let pool = try WasmWorkers(zygote: zygote, count: 2)
        #expect(pool.trackingMode != .segfault)
        try pool.run("work")
        #expect(try pool.mainInteger("result") == 2)
        // memsnap's tracking of ordinary memory still works behind WasmKit's handler.
        region.withUnsafeMutableBytes { $0.storeBytes(of: 1, toByteOffset: 5 * Page.size, as: UInt64.self) }
        #expect(try tracker.collectAndReset().runs == [5..<6])
        print("segfault-order memsnap-first: as specified")
    }
}
