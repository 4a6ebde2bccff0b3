#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import MemSnap
import MemSnapWasm
import WasmKit

struct WasmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wasm",
        abstract: "Run WebAssembly modules as workers forked from a snapshot and merged back.",
        subcommands: [WasmRunCommand.self]
    )
}

struct WasmRunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Snapshot a module after its zygote, fork workers from it, run rounds, merge them.",
        discussion: """
            Each round, every worker calls FUNCTION with (worker index, worker count, round), as many of \
            those i32 arguments as it takes; the workers' changes merge into the snapshot (merge regions \
            declared by the guest with memsnap.merge_region make sums, maxima...). After each round the \
            main instance, which sees the merged snapshot, calls the result function (--result, or the \
            module's `result` export if it has one taking no arguments) and its value is printed.
            Example: memsnap wasm run Guests/pi.wasm --zygote zygote --function work --workers 4 --rounds 10
            """
    )

    @Argument(help: "The WebAssembly module (.wasm).")
    var module: String

    @Option(help: "The export every worker calls each round.")
    var function: String

    @Option(help: "Workers (instances forked from the snapshot), 1...1024.")
    var workers: Int = 4

    @Option(help: "Rounds, 1...1000000.")
    var rounds: Int = 1

    @Option(help: "The export run once before the snapshot (the module's initialisation); none by default.")
    var zygote: String?

    @Option(name: .customLong("zygote-arg"), help: "An i32 argument for the zygote export (repeat for more).")
    var zygoteArguments: [Int32] = []

    @Option(help: "The export the main instance calls after each round; default: `result` if the module has it.")
    var result: String?

    @Option(help: "Dirty tracking mode (uffd-async, segfault, uffd, soft-dirty, compare, none); default: the fastest that works.",
            transform: parseTrackingMode)
    var tracking: DirtyTrackingMode?

    @Option(help: "The name under which the module exports its memory.")
    var memoryExport: String = "memory"

    func validate() throws {
        guard (1...1024).contains(workers) else { throw ValidationError("--workers must be 1...1024, not \(workers)") }
        guard (1...1_000_000).contains(rounds) else { throw ValidationError("--rounds must be 1...1000000, not \(rounds)") }
        guard !function.isEmpty else { throw ValidationError("--function names no export") }
    }

    func run() throws {
        let program = try WasmProgram(contentsOfFile: module, memoryExport: memoryExport)
        let (zygoteImage, zygoteSeconds) = try Stopwatch.time {
            try WasmZygote(program: program, zygote: zygote, arguments: zygoteArguments.map { .i32(UInt32(bitPattern: $0)) })
        }
        let configuration = WasmWorkers.Configuration(tracking: DirtyTracker.Configuration(mode: tracking))
        let (pool, poolSeconds) = try Stopwatch.time { try WasmWorkers(zygote: zygoteImage, count: workers, configuration: configuration) }
        let resultFunction = result ?? (pool.main.functionType("result")?.parameters.isEmpty == true ? "result" : nil)
        if let result, pool.main.functionType(result) == nil {
            throw ValidationError("--result \(result): the module exports no function of that name")
        }
        print("\(program.name): snapshot \(ByteCount(zygoteImage.snapshot.size)) after "
              + (zygote.map { "the zygote export \($0)" } ?? "instantiation") + " (\(formatDuration(zygoteSeconds))), "
              + "\(zygoteImage.snapshot.mergeRegions.count) merge regions; \(workers) workers + main forked in "
              + "\(formatDuration(poolSeconds)); tracking: \(pool.trackingMode)")
        if program.mutableGlobalCount > 1 {
            print("note: the module defines \(program.mutableGlobalCount) mutable globals; only linear memory is "
                  + "snapshotted, so globals other than the stack pointer start from their initial values in every fork")
        }
        let arguments = try pool.standardArguments(for: function)
        for round in 0..<rounds {
            let sizeBefore = zygoteImage.snapshot.size
            let report = try pool.run(function, arguments: arguments)
            var line = "round \(round + 1):"
            if let resultFunction {
                line += " \(resultFunction) = " + (try pool.callMain(resultFunction)).map(WasmRunCommand.text).joined(separator: ", ") + ";"
            }
            let returned = report.results.map { $0.map(WasmRunCommand.text).joined(separator: ",") }
            if returned.contains(where: { !$0.isEmpty }) {
                line += " returned " + (returned.count <= 8 ? returned.joined(separator: " ")
                                        : returned.prefix(8).joined(separator: " ") + " ...") + ";"
            }
            let workerPages = report.dirtyPageCounts.dropFirst()
            line += " dirty pages \(workerPages.min() ?? 0)-\(workerPages.max() ?? 0) per worker;"
            line += " \(report.diffCount) diffs (\(ByteCount(report.diffBytes)))"
            line += report.snapshotSize > sizeBefore ? ", snapshot grew to \(ByteCount(report.snapshotSize));" : ";"
            line += " run \(formatDuration(report.runSeconds)) (calls up to \(formatDuration(report.callSeconds.max() ?? 0)),"
            line += " diffs up to \(formatDuration(report.diffSeconds.max() ?? 0))), merge \(formatDuration(report.mergeSeconds))"
            print(line)
        }
    }

    static func text(_ value: Value) -> String {
        switch value {
        case let .i32(bits): "\(Int32(bitPattern: bits))"
        case let .i64(bits): "\(Int64(bitPattern: bits))"
        case let .f32(bits): "\(Float(bitPattern: bits))"
        case let .f64(bits): "\(Double(bitPattern: bits))"
        default: "\(value)"
        }
    }
}

/// Parses one tracking mode for --tracking.
func parseTrackingMode(_ text: String) throws -> DirtyTrackingMode {
    guard let mode = DirtyTrackingMode(rawValue: text), mode != .auto else {
        throw ValidationError("'\(text)' is not a tracking mode (uffd-async, segfault, uffd, soft-dirty, compare, none)")
    }
    return mode
}
