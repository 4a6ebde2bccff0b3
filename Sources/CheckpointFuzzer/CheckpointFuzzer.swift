// Fuzz target for the checkpoint reader.
//
// Built two ways from this one file:
// - `make fuzz` compiles it with -sanitize=fuzzer,address -DFUZZING: libFuzzer supplies main
//   and calls LLVMFuzzerTestOneInput with mutated checkpoints.
// - a normal build makes `checkpoint-fuzzer-replay`: it runs the same check over files given on
//   the command line (a corpus, or a crash libFuzzer found).
//
// The property: any input either opens, verifies and restores, or is rejected with a
// MemSnapError; never a crash, a hang or a sanitizer report.
#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import MemSnapCheckpoint

/// Opens `bytes` as a checkpoint (through a memfd, so no disk), verifies it and restores it.
/// Returns whether it was accepted.
func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
    let fd = memsnap_memfd_create("fuzz-input", MEMSNAP_MFD_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var written = 0
    while written < bytes.count {
        let result = write(fd, bytes.baseAddress! + written, bytes.count - written)
        if result <= 0 { return false }
        written += result
    }
    do {
        let file = try CheckpointFile(path: "/proc/self/fd/\(fd)")
        try file.verify(threads: 2)
        // Restoring is capped: a valid header may claim a huge image.
        guard file.imageSize <= 64 << 20 else { return true }
        try file.restore(into: MemoryImageTarget(name: "fuzz-restore"), threads: 2)
        return true
    } catch {
        return false
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCheckpoint(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    _ = exercise(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM points the executable's `main` at this symbol; hand control to libFuzzer's driver.
@_cdecl("checkpoint_fuzzer_replay_main")
public func fuzzerEntry(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzCheckpoint(data, size) }
}
#else
@main
struct CheckpointFuzzerReplay {
    static func main() {
        let paths = CommandLine.arguments.dropFirst()
        if paths.isEmpty {
            print("usage: checkpoint-fuzzer-replay FILE...  (runs the fuzz target's check on each file)")
            return
        }
        for path in paths {
            guard let file = fopen(path, "rb") else {
                print("\(path): cannot open")
                continue
            }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = fread(&buffer, 1, buffer.count, file)
                if count == 0 { break }
                bytes += buffer.prefix(count)
            }
            fclose(file)
            let accepted = bytes.withUnsafeBytes { exercise($0) }
            print("\(path): \(accepted ? "accepted" : "rejected")")
        }
    }
}
#endif
