import ArgumentParser
import Foundation

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that also measure the physical limit (memcpy) in the same run.",
        subcommands: [TrackingBenchmarkCommand.self, DiffBenchmarkCommand.self, CheckpointBenchmarkCommand.self, ArenaBenchmarkCommand.self]
    )
}

/// Parses "1%", "0.5%", "25" (percent) into a fraction.
func parsePercentage(_ text: String) throws -> Double {
    let number = text.hasSuffix("%") ? String(text.dropLast()) : text
    guard let value = Double(number), value > 0, value <= 100 else {
        throw ValidationError("'\(text)' is not a percentage between 0 and 100 (example: 1%)")
    }
    return value / 100
}

/// A benchmark's results: printed as a table, or as JSON with `--json`.
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
