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
}
