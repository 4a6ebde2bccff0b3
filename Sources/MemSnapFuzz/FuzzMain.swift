// The fuzzing executable, built two ways from this one file:
// - `make fuzz` compiles it with -sanitize=fuzzer,address -DFUZZING: libFuzzer supplies the loop
//   and calls the target named by MEMSNAP_FUZZ_TARGET with mutated inputs.
// - a normal build makes a replayer: `memsnap-fuzz TARGET FILE...` runs the same check over
//   files (a corpus, or a crash libFuzzer found).
#if canImport(Glibc)
import Glibc
#endif
import MemSnapFuzzTargets

#if FUZZING
/// The target named by MEMSNAP_FUZZ_TARGET, read once (nil when unset or unknown).
private let selectedTarget: FuzzTarget? = getenv("MEMSNAP_FUZZ_TARGET").flatMap { FuzzTarget(rawValue: String(cString: $0)) }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    _ = selectedTarget?.exercise(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM points the executable's `main` at this symbol; hand control to libFuzzer's driver.
@_cdecl("memsnap_fuzz_main")
public func fuzzerEntry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    guard selectedTarget != nil else {
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
        print("memsnap-fuzz: set MEMSNAP_FUZZ_TARGET to one of: \(names)")
        return 2
    }
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}
#else
@main
struct FuzzReplay {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            print("usage: memsnap-fuzz \(names) FILE...  (runs the fuzz target's check on each file)")
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let bytes = readFile(path) else {
                print("\(path): cannot read")
                continue
            }
            let accepted = bytes.withUnsafeBytes { target.exercise($0) }
            print("\(path): \(accepted ? "accepted" : "rejected")")
        }
    }

    static func readFile(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count == 0 { break }
            bytes += buffer.prefix(count)
        }
        return bytes
    }
}
#endif
