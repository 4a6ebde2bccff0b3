#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnapTestSupport
import Testing

/// Command-line values outside what a command can do are usage errors (ArgumentParser's exit
/// status 64 and a message naming the option), never a trap, an out-of-memory kill or a crash
/// minutes into a run. Only bad values are passed, so nothing here starts a benchmark.
@Suite("memsnap command-line values are validated",
       .enabled(if: MemsnapExecutable.path != nil, Comment(rawValue: MemsnapExecutable.notBuiltReason)))
struct CommandLineValidationTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var arguments: [String]
        var message: String
        var testDescription: String { arguments.joined(separator: " ") }
    }

    static let cases: [Case] = [
        Case(arguments: ["bench", "diff", "--dirty", "1000%"], message: "'1000%' is not a percentage between 0 and 100"),
        Case(arguments: ["bench", "diff", "--dirty", "nan"], message: "'nan' is not a percentage between 0 and 100"),
        Case(arguments: ["bench", "diff", "--size", "0"], message: "--size 0 B is below the minimum of 16 pages (64.0 KiB)"),
        Case(arguments: ["bench", "diff", "--size=-4096"], message: "'-4096' is not a size"),
        Case(arguments: ["bench", "diff", "--size", "8191TiB"], message: "times that in memory, more than this machine's"),
        Case(arguments: ["bench", "diff", "--workers", "0"], message: "--workers must be 1...64"),
        Case(arguments: ["bench", "diff", "--block-sizes", "24"], message: "'24' is not a power-of-two block size"),
        Case(arguments: ["bench", "tracking", "--size", "1TiB"], message: "times that in memory, more than this machine's"),
        Case(arguments: ["bench", "tracking", "--size", "9223372036854775807"], message: "times that in memory"),
        Case(arguments: ["bench", "tracking", "--repetitions", "0"], message: "--repetitions must be 1...50"),
        Case(arguments: ["bench", "tracking", "--modes", ","], message: "--modes names no mode"),
        Case(arguments: ["bench", "tracking", "--dirty", "0%"], message: "'0%' is not a percentage between 0 and 100"),
        Case(arguments: ["bench", "checkpoint", "--size", "0"], message: "--size 0 B is below the minimum of 16 pages (64.0 KiB)"),
        Case(arguments: ["bench", "checkpoint", "--threads", "0"], message: "--threads must be 1...256"),
        Case(arguments: ["bench", "checkpoint", "--repetitions=-3"], message: "--repetitions must be 1...50"),
        Case(arguments: ["bench", "checkpoint", "--size", "8191TiB"], message: "times that in memory"),
        Case(arguments: ["bench", "arena", "--size", "0"], message: "--size 0 B is below the minimum of 16 pages (64.0 KiB)"),
        Case(arguments: ["bench", "arena", "--size", "2TiB"], message: "--size must be at most 1 TiB, not 2.0 TiB"),
        Case(arguments: ["bench", "arena", "--batches", "0"], message: "'0' is not a batch size from 1 to 1000000"),
        Case(arguments: ["bench", "arena", "--batches", "99999999999999"], message: "is not a batch size from 1 to 1000000"),
        Case(arguments: ["bench", "arena", "--batches", ","], message: "--batches names no batch size"),
        Case(arguments: ["bench", "checkpoint", "--incremental", "--links", "1"], message: "--links must be 2...64"),
        Case(arguments: ["bench", "checkpoint", "--incremental", "--dirty", "0%"], message: "'0%' is not a percentage between 0 and 100"),
        Case(arguments: ["bench", "checkpoint", "--incremental", "--size", "8191TiB"], message: "times that in memory"),
        Case(arguments: ["checkpoint", "a.raw", "a.ckpt", "--format-version", "3"], message: "--format-version 3 must be 1 or 2"),
        Case(arguments: ["checkpoint", "a.raw", "a.ckpt", "--parent", "p.ckpt", "--format-version", "1"],
             message: "--parent needs --format-version 2"),
        Case(arguments: ["checkpoint", "a.raw", "a.ckpt", "--time", "soon"], message: "\"soon\" is not seconds since 1970"),
        Case(arguments: ["restore", "a.ckpt"], message: "give either OUT or --arena PATH"),
        Case(arguments: ["restore", "a.ckpt", "a.raw", "--arena", "b.arena"], message: "give either OUT or --arena PATH"),
        Case(arguments: ["squash", "a.ckpt", "b.ckpt", "--chunk-size", "1000"], message: "--chunk-size 1000 must be a multiple of"),
        Case(arguments: ["demo", "--size", "4096"], message: "--size 4.0 KiB is below the minimum of 16 pages (64.0 KiB)"),
        Case(arguments: ["demo", "--size", "9223372036854775807"], message: "times that in memory"),
        Case(arguments: ["demo", "--workers", "0"], message: "--workers must be between 1 and 64"),
    ]

    @Test(arguments: cases)
    func aBadValueIsAUsageErrorNamingIt(_ testCase: Case) throws {
        _ = try #require(MemsnapExecutable.path)
        // A command that validation let through would start real work: stopped after 60 s.
        let (status, text) = try MemsnapExecutable.run(testCase.arguments, timeout: 60)
        #expect(status == 64, "\(text)")
        #expect(text.contains(testCase.message), "\(text)")
    }
}
