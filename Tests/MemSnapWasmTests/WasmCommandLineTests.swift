import Foundation
import MemSnapWasm
import Testing

/// `memsnap wasm run` and `memsnap bench wasm` refuse bad values with a usage error naming them
/// (exit status 64), and report a module they cannot use as an error (exit status 1).
@Suite("memsnap wasm command-line values are validated",
       .enabled(if: memsnapExecutable != nil, "the memsnap executable is not built next to the tests (swift build builds it)"))
struct WasmCommandLineTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var arguments: [String]
        var status: Int32
        var message: String
        /// The refusal comes after the module is loaded, which needs reserved memory.
        var loadsTheModule = false
        var testDescription: String { arguments.joined(separator: " ") }
    }

    static let module = guestsDirectory.appendingPathComponent("reduction.wasm").path

    static let cases: [Case] = [
        Case(arguments: ["wasm", "run", module, "--function", "work", "--workers", "0"], status: 64, message: "--workers must be 1...1024, not 0"),
        Case(arguments: ["wasm", "run", module, "--function", "work", "--workers", "5000"], status: 64, message: "--workers must be 1...1024"),
        Case(arguments: ["wasm", "run", module, "--function", "work", "--rounds", "0"], status: 64, message: "--rounds must be 1...1000000, not 0"),
        Case(arguments: ["wasm", "run", module, "--function", "work", "--rounds=-2"], status: 64, message: "--rounds must be 1...1000000"),
        Case(arguments: ["wasm", "run", module, "--function", ""], status: 64, message: "--function names no export"),
        Case(arguments: ["wasm", "run", module], status: 64, message: "Missing expected argument '--function <function>'"),
        Case(arguments: ["wasm", "run", module, "--function", "work", "--tracking", "fast"], status: 64,
             message: "'fast' is not a tracking mode"),
        Case(arguments: ["wasm", "run", module, "--function", "work", "--zygote-arg", "x"], status: 64, message: "zygote-arg"),
        Case(arguments: ["wasm", "run", "/nonexistent.wasm", "--function", "work"], status: 1, message: "open failed: ENOENT"),
        Case(arguments: ["wasm", "run", "/etc/hostname", "--function", "work"], status: 1, message: "not a valid WebAssembly module", loadsTheModule: true),
        Case(arguments: ["wasm", "run", module, "--function", "nope"], status: 1, message: "the module exports no function named \"nope\"", loadsTheModule: true),
        Case(arguments: ["wasm", "run", module, "--function", "visits_of", "--zygote", "zygote", "--result", "nope"], status: 64,
             message: "--result nope: the module exports no function of that name", loadsTheModule: true),
        Case(arguments: ["wasm", "run", module, "--function", "halves_total", "--zygote", "missing"], status: 1,
             message: "the module exports no function named \"missing\"", loadsTheModule: true),
        Case(arguments: ["bench", "wasm", "--size", "1000"], status: 64, message: "--size must be a whole number of MiB"),
        Case(arguments: ["bench", "wasm", "--size", "8GiB"], status: 64, message: "--size must be a whole number of MiB from 1 MiB to 3 GiB"),
        Case(arguments: ["bench", "wasm", "--workers", "0"], status: 64, message: "--workers must be 1...64"),
        Case(arguments: ["bench", "wasm", "--dirty", "0%"], status: 64, message: "'0%' is not a percentage between 0 and 100"),
        Case(arguments: ["bench", "wasm", "--repetitions", "0"], status: 64, message: "--repetitions must be 1...50"),
    ]

    @Test(arguments: cases.filter { !$0.loadsTheModule })
    func aBadValueIsRefusedNamingIt(_ testCase: Case) throws {
        try check(testCase)
    }

    @Test(.enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason), arguments: cases.filter { $0.loadsTheModule })
    func aModuleThatCannotDoWhatIsAskedIsRefusedNamingWhy(_ testCase: Case) throws {
        try check(testCase)
    }

    @Test(.disabled(if: reservedMemoryAvailable, "WasmKit keeps memory in reservations in this build"))
    func withoutReservedMemoryTheCommandSaysWhy() throws {
        let run = try runMemsnap(["wasm", "run", Self.module, "--function", "work"])
        #expect(run.status == 1 && run.output.contains("memoryBoundsChecking: .mprotect"), "\(run.output)")
    }

    private func check(_ testCase: Case) throws {
        let run = try runMemsnap(testCase.arguments)
        #expect(!run.signalled, "killed by a signal: \(run.output)")
        #expect(run.status == testCase.status, "\(run.output)")
        #expect(run.output.contains(testCase.message), "\(run.output)")
    }
}
