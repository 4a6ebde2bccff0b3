#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

@Suite("Reproducible checkpoints: the same image gives the same file, with any thread count, at any time")
struct CheckpointReproducibilityTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    @Test func aFixedTimeGivesTheSameFullAndIncrementalFilesWithAnyThreadCountAndInAnyRun() throws {
        var random = TestSeed.generator()
        let image = heapImage(size: (2 << 20) + 777, seed: random.next())
        let change = mutated(image, random: &random)
        let time = Date(timeIntervalSince1970: 1_700_000_000)
        var files: [[UInt8]] = []
        for (run, threads) in [1, 2, 4, 8, 3].enumerated() {
            if run == 4 { usleep(1_100_000) }  // another second: only the stored time could differ
            let directory = TemporaryDirectory()
            let settings = CheckpointOptions(style: .v3, codec: .lz4, chunkSize: 256 << 10, threads: threads,
                                             info: .current(application: "tests", time: time))
            let paths = try writeChain(base: image, changes: [change], in: directory, options: settings, sources: [.comparedInMemory])
            files.append(fileBytes(paths[0]) + fileBytes(paths[1]))
            #expect(try CheckpointFile(path: paths[0]).info["time"] == "2023-11-14T22:13:20Z")
        }
        #expect(files.allSatisfy { $0 == files[0] })
    }

    @Test func timesAreSecondsSince1970OrISO8601AndNothingElse() throws {
        #expect(try CheckpointInfo.parseTime("0") == Date(timeIntervalSince1970: 0))
        #expect(try CheckpointInfo.parseTime("2026-11-21T00:00:00Z") == Date(timeIntervalSince1970: 1_795_219_200))
        for bad in ["-1", "253402300800", "yesterday", "1.5", "", "2026-13-01T00:00:00Z"] {
            let error = expectMemSnapError { _ = try CheckpointInfo.parseTime(bad, what: "--time") }
            #expect(error?.operation == "read --time", "\(bad)")
        }
    }

    @Test("memsnap checkpoint with SOURCE_DATE_EPOCH or --time writes the same file in two runs with different thread counts",
          .enabled(if: MemsnapExecutable.path != nil, Comment(rawValue: MemsnapExecutable.notBuiltReason)))
    func theCommandLineIsReproducible() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 3 << 20, seed: 77)
        var changed = image
        changed[1 << 20] ^= 0xFF
        // Same names in every run (a child stores its parent's name): one directory per run.
        let runs = [("epoch-threads-1", ["SOURCE_DATE_EPOCH": "1700000000"], ["--threads", "1"]),
                    ("epoch-threads-4", ["SOURCE_DATE_EPOCH": "1700000000"], ["--threads", "4"]),
                    ("time-threads-3", [:], ["--threads", "3", "--time", "2023-11-14T22:13:20Z"])]
        for (index, (name, environment, extra)) in runs.enumerated() {
            if index == 1 { usleep(1_100_000) }  // another second: only the stored time could differ
            let folder = directory.file(name)
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
            _ = FileManager.default.createFile(atPath: "\(folder)/image.raw", contents: Data(image))
            _ = FileManager.default.createFile(atPath: "\(folder)/changed.raw", contents: Data(changed))
            for arguments in [["checkpoint", "image.raw", "base.ckpt"] + extra,
                              ["checkpoint", "changed.raw", "next.ckpt", "--parent", "base.ckpt"] + extra] {
                let result = try MemsnapExecutable.run(arguments, in: folder, environment: environment)
                #expect(result.status == 0, "\(arguments): \(result.output)")
            }
        }
        for file in ["base.ckpt", "next.ckpt"] {
            let first = fileBytes(directory.file("\(runs[0].0)/\(file)"))
            #expect(!first.isEmpty)
            for run in runs.dropFirst() { #expect(fileBytes(directory.file("\(run.0)/\(file)")) == first, "\(run.0)/\(file)") }
        }
        let bad = try MemsnapExecutable.run(["checkpoint", "image.raw", "bad.ckpt"], in: directory.file(runs[0].0),
                                            environment: ["SOURCE_DATE_EPOCH": "soon"])
        #expect(bad.status == 64 && bad.output.contains("SOURCE_DATE_EPOCH"), "\(bad.output)")
    }

    /// The version-1 files in the fuzz corpora were written before format version 2 existed:
    /// they still open, verify and restore, and writing their image again as version 1 with
    /// their settings and info gives them back byte for byte.
    @Test func versionOneFilesAreReadAndWrittenBitForBitAsBefore() throws {
        let directory = TemporaryDirectory()
        var checked = 0
        for corpus in ["checkpoint-file", "checkpoint-stream"] {
            let folder = "\(Self.packageRoot)/Tests/Fuzz/corpus/\(corpus)"
            for name in try FileManager.default.contentsOfDirectory(atPath: folder).sorted() where name.hasPrefix("v") {
                let path = "\(folder)/\(name)"
                let file = try CheckpointFile(path: path)
                guard file.formatVersion == 1 else { continue }
                try file.verify(threads: 2)
                let image = try restoredImage(path, threads: 3)
                let again = directory.file("\(corpus)-\(name)")
                try image.withUnsafeBytes { bytes in
                    _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: bytes)], to: again, options: CheckpointOptions(
                        style: file.style, codec: file.codec, level: file.level, chunkSize: file.chunkSize, threads: 2,
                        info: file.info, formatVersion: 1))
                }
                #expect(fileBytes(again) == fileBytes(path), "\(corpus)/\(name)")
                checked += 1
            }
        }
        #expect(checked == 8)
    }
}
