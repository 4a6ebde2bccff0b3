import MemSnapTestSupport
import Testing

/// Every program under Examples/ runs and prints what its comments promise. If one of these
/// needs editing, edit the example (and its header comment) the same way.
@Suite("Examples")
struct ExamplesTests {
    @Test(.enabled(if: BuiltExecutable.path(of: "example-fork-join") != nil, "\(BuiltExecutable.notBuiltReason("example-fork-join"))"))
    func theForkJoinExampleServesEveryRoundFromTheSnapshotAndSumsTheWorkersResults() throws {
        let (status, output) = try BuiltExecutable.run("example-fork-join", [])
        #expect(status == 0, "\(output)")
        #expect(output == """
            snapshot: 1024 KiB, initialised once
            round 1: 8 workers, requests served 8, worker id sum 28
            round 2: 8 workers, requests served 16, worker id sum 56
            round 3: 8 workers, requests served 24, worker id sum 84
            scratch merged back: false

            """)
    }

    @Test(.enabled(if: BuiltExecutable.path(of: "example-kv-store") != nil, "\(BuiltExecutable.notBuiltReason("example-kv-store"))"))
    func theKeyValueStoreExampleKeepsWhatWasPutAcrossProcesses() throws {
        let directory = TemporaryDirectory(prefix: "memsnap-example-kv")
        let store = directory.file("store.arena")
        func run(_ arguments: String...) throws -> (Int32?, String) {
            try BuiltExecutable.run("example-kv-store", [store] + arguments)
        }
        #expect(try run("put", "7", "49") == (0, "put 7 = 49 (sync 3)\n"))
        #expect(try run("put", "3", "9") == (0, "put 3 = 9 (sync 4)\n"))
        #expect(try run("put", "7", "50") == (0, "put 7 = 50 (sync 5)\n"))
        #expect(try run("get", "7") == (0, "7 = 50\n"))
        #expect(try run("get", "8") == (1, "not found: 8\n"))
        #expect(try run("list") == (0, "3 = 9\n7 = 50\n2 keys\n"))
        #expect(try run("put", "0", "1") == (2, "keys are nonzero UInt64s, values UInt64s\n"))
    }

    @Test(.enabled(if: BuiltExecutable.path(of: "example-checkpoint") != nil, "\(BuiltExecutable.notBuiltReason("example-checkpoint"))"))
    func theCheckpointExampleRestoresAnIncrementalChainByteForByte() throws {
        let directory = TemporaryDirectory(prefix: "memsnap-example-checkpoint")
        let (status, output) = try BuiltExecutable.run("example-checkpoint", [directory.path])
        #expect(status == 0, "\(output)")
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.count == 4, "\(output)")
        #expect(lines.first?.hasPrefix("full checkpoint: 4194304 bytes of image in ") == true, "\(output)")
        #expect(lines.dropFirst().first == "incremental checkpoint: 2 changed ranges, 4194304 bytes of image")
        #expect(lines.dropFirst(2).first == "restored 4194304 bytes: identical true")
        #expect(lines.last == "text at 12288: hello, checkpoint")
        #expect(directory.entries == ["heap.ckpt", "next.ckpt"])
    }
}
