/// The fuzz targets: each takes arbitrary bytes and must either accept them or reject them with
/// a `MemSnapError`; never crash, hang, leak or trip a sanitizer.
///
/// `make fuzz FUZZ_TARGET=NAME` runs libFuzzer on one of them (the `memsnap-fuzz` executable
/// built with -sanitize=fuzzer,address); `make fuzz-smoke` runs each for a bounded time, as CI
/// does. The test suite replays every corpus file (Tests/Fuzz/corpus/NAME/) through its target,
/// so a crash found once stays a regression test.
///
/// Thread safety: `exercise` may be called from any thread; each call is independent.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// `CheckpointFile` and `CheckpointChain`: open, verify and restore a checkpoint file, or a
    /// chain of them (input `MSCHAIN1`, a count, then length-prefixed files; see
    /// CheckpointFileFuzzing), and compare an image with it.
    case checkpointFile = "checkpoint-file"
    /// `Checkpoint.restore(readingFrom:into:)`: restore a checkpoint stream in one pass.
    case checkpointStream = "checkpoint-stream"
    /// `SnapshotDiff.decode` and `Snapshot.apply`: decode a diff batch (first byte: bit 0 set
    /// re-seals its CRC32C) and apply it to a small snapshot.
    case diffBatch = "diff-batch"
    /// `Arena.open` (read-only and read-write) and use, on a real arena's files patched by the
    /// input, with checksums re-sealed on request (see ArenaFuzzing).
    case arena = "arena"

    /// Runs the target's property on `bytes`. Returns whether the input was accepted (the
    /// answer matters only for reporting; rejecting with an error is a pass).
    public func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .checkpointFile: CheckpointFileFuzzing.exercise(bytes)
        case .checkpointStream: CheckpointStreamFuzzing.exercise(bytes)
        case .diffBatch: DiffBatchFuzzing.exercise(bytes)
        case .arena: ArenaFuzzing.exercise(bytes)
        }
    }

    /// The corpus folder of this target, relative to the package root.
    public var corpusDirectory: String { "Tests/Fuzz/corpus/\(rawValue)" }
}
