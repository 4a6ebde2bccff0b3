#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// The format-2 seeds of the checkpoint fuzz corpora (Tests/Fuzz/corpus/checkpoint-file and
/// checkpoint-stream): real files of every style, full, incremental, with an arena's state,
/// chains bundled for the file target (`MSCHAIN1`), and crafted ones. Written only when
/// MEMSNAP_WRITE_FUZZ_SEEDS is set (`MEMSNAP_WRITE_FUZZ_SEEDS=1 swift test --filter
/// CheckpointFuzzSeeds`); the names say what the target must do with them (`accept-`,
/// `reject-`), which the suite checks (CorpusReplayTests).
@Suite("Checkpoint fuzz seeds", .enabled(if: getenv("MEMSNAP_WRITE_FUZZ_SEEDS") != nil, "MEMSNAP_WRITE_FUZZ_SEEDS is not set"))
struct CheckpointFuzzSeeds {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/Fuzz/corpus"

    func chainBundle(_ files: [[UInt8]]) -> [UInt8] {
        var bytes = Array("MSCHAIN1".utf8) + [UInt8(files.count)]
        for file in files { bytes += withUnsafeBytes(of: UInt32(file.count).littleEndian) { Array($0) } + file }
        return bytes
    }

    func save(_ bytes: [UInt8], _ target: String, _ name: String) {
        #expect(bytes.count < 64 << 10, "\(name) is \(bytes.count) bytes")
        _ = FileManager.default.createFile(atPath: "\(Self.corpus)/\(target)/\(name)", contents: Data(bytes))
    }

    @Test func writeTheSeeds() throws {
        let directory = TemporaryDirectory()
        var random = SplitMix64(seed: 2026)
        let info = CheckpointInfo([("application", "seed")])
        let base = heapImage(size: 24_000, seed: 3)
        var images = [base]
        var changes: [(image: [UInt8], changedPages: [Range<Int>])] = []
        for _ in 0..<3 {
            var change = mutated(images[images.count - 1], random: &random, resizing: false)
            if changes.count == 1 { change.image += [UInt8](repeating: 7, count: 5000) }  // a size change
            changes.append(change)
            images.append(change.image)
        }
        for (name, style, codec) in [("v1", CheckpointStyle.v1, CheckpointCodec?.none), ("v2", .v2, nil), ("v3-lz4", .v3, .lz4),
                                     ("v3-zstd", .v3, .zstd)] {
            let run = TemporaryDirectory()
            let settings = CheckpointOptions(style: style, codec: codec, chunkSize: 8192, threads: 2, info: info)
            let paths = try writeChain(base: base, changes: changes, in: run, options: settings)
            let files = paths.map { fileBytes($0) }
            save(files[0], "checkpoint-stream", "accept-format2-\(name).ckpt")
            save(files[0], "checkpoint-file", "accept-format2-\(name).ckpt")
            save(files[2], "checkpoint-stream", "reject-incremental-\(name).ckpt")
            save(chainBundle(files), "checkpoint-file", "accept-chain-4-links-\(name)")
            save(chainBundle([files[0], files[2]]), "checkpoint-file", "reject-chain-missing-link-\(name)")
        }
        // An arena's state, and crafted damage under re-sealed checksums.
        let arenaPath = directory.file("arena.ckpt")
        try base.withUnsafeBytes {
            _ = try Checkpoint.write(image: $0, to: .file(path: arenaPath, force: false),
                                     options: CheckpointOptions(style: .v3, chunkSize: 8192, info: info),
                                     arenaState: CheckpointArenaState(capacity: 1 << 20, recordedBase: 0x7F00_0000_0000, commit: 7, epoch: 1,
                                                                      event: 2, roots: (0..<32).map { UInt64($0) }))
        }
        save(fileBytes(arenaPath), "checkpoint-file", "accept-format2-arena.ckpt")
        save(fileBytes(arenaPath), "checkpoint-stream", "accept-format2-arena.ckpt")
        let run = TemporaryDirectory()
        let paths = try writeChain(base: base, changes: changes, in: run, options: CheckpointOptions(style: .v2, chunkSize: 8192, info: info),
                                   sources: [.tracked])
        var outside = try CraftedCheckpoint(path: paths[1])
        outside.frames[0].append(.init(tag: 0, offset: UInt64(CheckpointFormat.pageCount(base.count) - 1) * 4096, bytes: [1]))
        save(chainBundle([fileBytes(paths[0]), try outside.encoded()]), "checkpoint-file", "reject-extent-outside-changed-pages")
        var unsorted = try CraftedCheckpoint(path: paths[1])
        unsorted.map.replaceSubrange(CheckpointImageMap.fixedSize..<CheckpointImageMap.fixedSize + 8, with: [UInt8](repeating: 0xFF, count: 8))
        save(chainBundle([fileBytes(paths[0]), try unsorted.encoded()]), "checkpoint-file", "reject-changed-run-out-of-range")
        var wrongSize = try CraftedCheckpoint(path: paths[1])
        wrongSize.map.replaceSubrange(8..<16, with: withUnsafeBytes(of: UInt64(4096).littleEndian) { Array($0) })
        save(chainBundle([fileBytes(paths[0]), try wrongSize.encoded()]), "checkpoint-file", "reject-parent-size-rule")
    }
}
