#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import MemSnap

/// `memsnap bench`: how close memsnap comes to the physical limit on this machine. Each benchmark
/// measures its anchor (memcpy, memcmp, lz4, LMDB, raw TCP) in the same run and reports ratios;
/// these are the figures in BENCHMARKS.md. For catching regressions between commits (statistics,
/// CPU and syscall counts, baselines) use the package-benchmark suite in Benchmarks/ instead.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that also measure the physical limit (memcpy) in the same run.",
        subcommands: [TrackingBenchmarkCommand.self, DiffBenchmarkCommand.self, RoundsBenchmarkCommand.self, CheckpointBenchmarkCommand.self, ArenaBenchmarkCommand.self,
                      RemoteBenchmarkCommand.self, WasmBenchmarkCommand.self]
    )
}

/// A benchmark's results: printed as a table, or as JSON with `--json`.
/// One timed step of a benchmark table (the checkpoint benches' rows): what ran, its median time,
/// the bytes it wrote if it wrote a file, and what the reader should know about it.
struct TimedStepRow: Codable {
    var name: String
    var seconds: Double
    var outputBytes: Int?
    var note: String
}

protocol BenchmarkReport: Encodable {
    func table() -> String
}

extension BenchmarkReport {
    func emit(json: Bool) throws {
        guard json else {
            print(table())
            return
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(self), as: UTF8.self))
    }
}

/// This machine's physical memory in bytes, nil if the system does not say.
func physicalMemory() -> Int? {
    let pages = sysconf(Int32(_SC_PHYS_PAGES))
    guard pages > 0 else { return nil }
    let (bytes, overflow) = pages.multipliedReportingOverflow(by: Page.size)
    return overflow ? Int.max : bytes
}

/// Free bytes for an unprivileged writer in the file system holding `directory` (or its
/// nearest existing ancestor), nil if it cannot be found.
func freeSpace(in directory: String) -> Int? {
    var path = directory.isEmpty ? "." : directory
    var status = statvfs()
    while statvfs(path, &status) != 0 {
        guard path != "/", path != "." else { return nil }
        path = (path as NSString).deletingLastPathComponent
        if path.isEmpty { path = "." }
    }
    let (bytes, overflow) = Int(clamping: status.f_bavail).multipliedReportingOverflow(by: Int(clamping: status.f_frsize))
    return overflow ? Int.max : bytes
}

/// Checks a `--size`: at least `minimumPages` pages, and `memoryCopies` times it (what the
/// command holds in memory at once) within physical memory, so that a typo such as `--size 1TiB`
/// is an error rather than an out-of-memory kill minutes later.
func validateSize(_ size: Int, minimumPages: Int = 16, memoryCopies: Double) throws {
    let minimum = minimumPages * Page.size
    guard size >= minimum else {
        throw ValidationError("--size \(ByteCount(size)) is below the minimum of \(minimumPages) pages (\(ByteCount(minimum)))")
    }
    if let memory = physicalMemory(), Double(size) * memoryCopies > Double(memory) {
        throw ValidationError("--size \(ByteCount(size)) needs about \(format(memoryCopies, decimals: 1)) times that in memory, "
            + "more than this machine's \(ByteCount(memory))")
    }
}

/// Checks that `directory` has room for `bytes` of files.
func validateFreeSpace(_ bytes: Double, in directory: String, for what: String) throws {
    guard let free = freeSpace(in: directory) else {
        throw ValidationError("--directory \(directory): cannot read its file system's free space")
    }
    guard bytes <= Double(free) else {
        throw ValidationError("--directory \(directory) has \(ByteCount(free)) free; \(what) needs about "
            + "\(ByteCount(Int(min(bytes, Double(Int.max / 2)))))")
    }
}
