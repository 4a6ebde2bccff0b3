#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnapFuzzTargets
import Testing

/// Every input a fuzzer ever kept (or crashed on) is replayed by the suite: a crash found once
/// stays a regression test, and `make test` exercises each target without libFuzzer.
@Suite("Fuzz corpora replay through their targets")
struct CorpusReplayTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    @Test(arguments: FuzzTarget.allCases)
    func everyCorpusFileIsAcceptedOrRejectedWithoutCrashing(target: FuzzTarget) throws {
        let directory = "\(Self.packageRoot)/\(target.corpusDirectory)"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(!names.isEmpty, "\(directory) holds the seeds of \(target.rawValue)")
        for name in names {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")))
            _ = bytes.withUnsafeBytes { target.exercise($0) }
        }
    }

    /// The diff-batch seeds are real encoded batches of every operation and type: each is
    /// accepted (decoded, applied, and reproduced by the differ), except the ones built to be
    /// refused, so the fuzzer starts from inputs that reach every path.
    @Test func theDiffBatchSeedsDecodeAndApply() throws {
        let directory = "\(Self.packageRoot)/\(FuzzTarget.diffBatch.corpusDirectory)"
        let seeds = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("seed-") }.sorted()
        #expect(seeds.count >= 8)
        for name in seeds {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")))
            let refused = name.contains("refused") || name == "seed-checksum-mismatch"
            #expect(bytes.withUnsafeBytes { FuzzTarget.diffBatch.exercise($0) } == !refused, "\(name)")
        }
    }

    /// The arena seeds patch a real arena's files where the issue found crashes: the ones named
    /// `accept-` open and work, the ones named `reject-` are refused with an error.
    @Test func theArenaSeedsAreAcceptedOrRefusedAsNamed() throws {
        let directory = "\(Self.packageRoot)/\(FuzzTarget.arena.corpusDirectory)"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(names.filter { $0.hasPrefix("accept-") }.count >= 3 && names.filter { $0.hasPrefix("reject-") }.count >= 8)
        for name in names where name.hasPrefix("accept-") || name.hasPrefix("reject-") {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")))
            let accepted = bytes.withUnsafeBytes { FuzzTarget.arena.exercise($0) }
            #expect(accepted == name.hasPrefix("accept-"), "\(name) was \(accepted ? "accepted" : "refused")")
        }
    }

    /// The format-2 checkpoint seeds (full files of every style, an arena's, incremental ones,
    /// chains bundled as `MSCHAIN1`, crafted damage; written by CheckpointFuzzSeeds): `accept-`
    /// ones restore, `reject-` ones are refused with an error.
    @Test(arguments: [FuzzTarget.checkpointFile, .checkpointStream])
    func theCheckpointSeedsAreAcceptedOrRefusedAsNamed(target: FuzzTarget) throws {
        let directory = "\(Self.packageRoot)/\(target.corpusDirectory)"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(names.filter { $0.hasPrefix("accept-") }.count >= 5 && names.filter { $0.hasPrefix("reject-") }.count >= 4)
        for name in names where name.hasPrefix("accept-") || name.hasPrefix("reject-") {
            let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name)")))
            let accepted = bytes.withUnsafeBytes { target.exercise($0) }
            #expect(accepted == name.hasPrefix("accept-"), "\(name) was \(accepted ? "accepted" : "refused")")
        }
    }
}
