#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapWasm
import Testing
import WasmKit

/// Whether WasmKit keeps linear memory in reservations here: not under AddressSanitizer, which
/// makes WasmKit fall back to malloc'd buffers (software bounds checking) that memsnap refuses
/// to adopt (`WasmMemoryAdoptionTests` checks that refusal in every build).
let reservedMemoryAvailable = Engine().configuration.memoryBoundsChecking == .mprotect
let reservedMemoryUnavailableReason: Comment =
    "WasmKit uses software bounds checking (malloc'd memory) in this build, e.g. under AddressSanitizer: memsnap refuses to fork such instances"

extension Value {
    /// The value as a signed integer (i32 sign-extended), or nil for other types.
    var integer: Int64? {
        switch self {
        case let .i32(bits): Int64(Int32(bitPattern: bits))
        case let .i64(bits): Int64(bitPattern: bits)
        default: nil
        }
    }

    var double: Double? {
        if case let .f64(bits) = self { return Double(bitPattern: bits) }
        return nil
    }
}

extension WasmInstance {
    /// Calls a function that returns one integer.
    func integer(_ function: String, _ arguments: [Value] = []) throws -> Int64 {
        try #require(try call(function, arguments).first?.integer)
    }
}

extension WasmWorkers {
    func mainInteger(_ function: String, _ arguments: [Value] = []) throws -> Int64 {
        try #require(try callMain(function, arguments).first?.integer)
    }
}

/// The probe guest, with its host import `probe.observe(worker)` answered by `observe`.
func probeProgram(observe: @escaping @Sendable (Int) -> Void = { _ in }) throws -> WasmProgram {
    try WasmGuest.probe.program { store, imports in
        imports.define(module: "probe", name: "observe", Function(store: store, parameters: [.i32], results: []) { _, arguments in
            if case let .i32(worker)? = arguments.first { observe(Int(worker)) }
            return []
        })
    }
}

/// Waits until `parties` threads have arrived (or 60 s have passed: a test never hangs).
final class Barrier: @unchecked Sendable {
    private let parties: Int
    private let arrived = Locked(0)

    init(parties: Int) { self.parties = parties }

    /// Returns true if everyone arrived in time.
    @discardableResult
    func arriveAndWait() -> Bool {
        arrived.withLock { $0 += 1 }
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        let deadline = spec.tv_sec + 60
        while arrived.withLock({ $0 }) < parties {
            clock_gettime(CLOCK_MONOTONIC, &spec)
            if spec.tv_sec > deadline { return false }
            usleep(100)
        }
        return true
    }
}

/// Reads a little-endian Int64 of the snapshot.
func snapshotInt64(_ snapshot: Snapshot, at offset: Int) throws -> Int64 {
    try snapshot.read(at: offset, count: 8).withUnsafeBytes { $0.loadUnaligned(as: Int64.self) }
}

/// An error's text, or "nothing was thrown".
func describe(_ error: (any Error)?) -> String {
    error.map { "\($0)" } ?? "nothing was thrown"
}

/// The `memsnap` executable built next to this test bundle, nil if it was not built.
let memsnapExecutable: String? = {
    let bundle = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    let path = bundle.deletingLastPathComponent().appendingPathComponent("memsnap").path
    return access(path, X_OK) == 0 ? path : nil
}()

/// The repository's Guests/ folder.
let guestsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Guests")

/// Runs the memsnap executable; its exit status (or -signal) and output. Stopped after 120 s.
func runMemsnap(_ arguments: [String]) throws -> (status: Int32, signalled: Bool, output: String) {
    let executable = try #require(memsnapExecutable)
    let child = try ChildProcess(executable: executable, arguments: arguments, standardOutput: .pipe, standardError: .standardOutput)
    let run = try child.collectOutput(killingAfter: .seconds(120))
    let text = String(decoding: run.output, as: UTF8.self)
    switch run.termination {
    case let .exited(status): return (status, false, text)
    case let .signaled(signal): return (signal, true, text)
    case .reapedElsewhere: return (-1, true, text)
    }
}
