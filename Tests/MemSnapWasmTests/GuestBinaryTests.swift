#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import MemSnapTestSupport
import MemSnapWasm
import Testing

/// The committed Guests/NAME.wasm are what their sources compile to, and the bytes MemSnapWasm
/// embeds are those files (`make wasm-guests` rebuilds both).
@Suite("Committed guest binaries match their sources")
struct GuestBinaryTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let guests = repository.appendingPathComponent("Guests")
    /// Keep in sync with scripts/build-wasm-guests.sh.
    static let compilerArguments = ["--target=wasm32", "-nostdlib", "-O2", "-mbulk-memory", "-Wl,--no-entry"]

    /// The clang that can build wasm32 modules here, nil with the reason if there is none.
    static let clang: (path: String?, reason: String) = {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(directory)/clang"
            guard access(path, X_OK) == 0 else { continue }
            let probe = run(path, ["-print-targets"])
            guard probe.status == 0, probe.output.contains("wasm32") else {
                return (nil, "clang at \(path) has no WebAssembly target")
            }
            let directoryURL = URL(fileURLWithPath: path).deletingLastPathComponent()
            guard access(directoryURL.appendingPathComponent("wasm-ld").path, X_OK) == 0 else {
                return (nil, "clang at \(path) has no wasm-ld beside it")
            }
            // The producers section names the compiler: another clang version generates other code.
            let version = run(path, ["--version"]).output.split(separator: "\n").first.map(String.init) ?? ""
            let producer = version.replacingOccurrences(of: "clang version ", with: "clang_")
            let committed = (try? Data(contentsOf: guests.appendingPathComponent(WasmGuest.reduction.fileName))) ?? Data()
            guard String(decoding: committed, as: UTF8.self).contains(producer) else {
                return (nil, "the committed guests were built by another clang than this one (\(version)): code generation differs")
            }
            return (path, "")
        }
        return (nil, "no clang on PATH")
    }()

    static func run(_ executable: String, _ arguments: [String], in directory: URL? = nil) -> (status: Int32, output: String) {
        guard let child = try? ChildProcess(executable: executable, arguments: arguments, directory: directory?.path,
                                            standardOutput: .pipe, standardError: .standardOutput),
              let run = try? child.collectOutput(killingAfter: .seconds(600)) else { return (-1, "cannot run \(executable)") }
        return (run.termination.exitStatus ?? -1, String(decoding: run.output, as: UTF8.self))
    }

    @Test(arguments: WasmGuest.allCases)
    func theEmbeddedBytesAreTheCommittedBinary(guest: WasmGuest) throws {
        let file = try Data(contentsOf: Self.guests.appendingPathComponent(guest.fileName))
        #expect([UInt8](file) == guest.bytes, "run `make wasm-guests` after changing Guests/")
    }

    @Test(.enabled(if: clang.path != nil, Comment(rawValue: clang.reason)), arguments: WasmGuest.allCases)
    func theCommittedBinaryIsWhatClangBuildsFromItsSource(guest: WasmGuest) throws {
        let clang = try #require(Self.clang.path)
        let committed = try Data(contentsOf: Self.guests.appendingPathComponent(guest.fileName))
        let directory = TemporaryDirectory()
        let work = URL(fileURLWithPath: directory.path)
        for name in ["memsnap.h", "\(guest.rawValue).c"] {
            try FileManager.default.copyItem(at: Self.guests.appendingPathComponent(name), to: work.appendingPathComponent(name))
        }
        let build = Self.run(clang, Self.compilerArguments + ["-o", guest.fileName, "\(guest.rawValue).c"], in: work)
        #expect(build.status == 0, "\(build.output)")
        let built = try Data(contentsOf: work.appendingPathComponent(guest.fileName))
        #expect(built == committed, "Guests/\(guest.fileName) is stale: run `make wasm-guests`")
    }
}
