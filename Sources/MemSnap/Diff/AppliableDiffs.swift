/// What `Snapshot.apply` reads from a batch of diffs, so that an array of `SnapshotDiff` and a
/// `SnapshotDiffBatch` go through one set of checks and one merge loop (specialised for each).
protocol AppliableDiffs {
    var diffCount: Int { get }
    /// Diff `index`'s header (`payloadStart` is meaningful only where the storage is a payload).
    func diffRun(at index: Int) -> SnapshotDiffBatch.Run
    /// Whether the bytes `run` names lie inside the batch's storage. Checked before any merge.
    func holdsBytes(of run: SnapshotDiffBatch.Run) -> Bool
    /// Diff `index` as a value, for error messages.
    func diff(at index: Int) -> SnapshotDiff
    /// Calls `body` with each diff in order, its header and its bytes. Only for batches whose
    /// runs all passed `holdsBytes`.
    func forEachDiff(_ body: (Int, SnapshotDiffBatch.Run, UnsafeRawBufferPointer) -> Void)
}

extension Array: AppliableDiffs where Element == SnapshotDiff {
    var diffCount: Int { count }

    func diffRun(at index: Int) -> SnapshotDiffBatch.Run {
        let diff = self[index]
        return SnapshotDiffBatch.Run(offset: diff.offset, payloadStart: 0, count: diff.bytes.count,
                                     dataType: diff.dataType, operation: diff.operation)
    }

    func holdsBytes(of run: SnapshotDiffBatch.Run) -> Bool { true }  // each diff owns its bytes

    func diff(at index: Int) -> SnapshotDiff { self[index] }

    func forEachDiff(_ body: (Int, SnapshotDiffBatch.Run, UnsafeRawBufferPointer) -> Void) {
        for index in indices {
            let diff = self[index]
            let run = SnapshotDiffBatch.Run(offset: diff.offset, payloadStart: 0, count: diff.bytes.count,
                                            dataType: diff.dataType, operation: diff.operation)
            diff.bytes.withUnsafeBytes { body(index, run, $0) }
        }
    }
}

extension SnapshotDiffBatch: AppliableDiffs {
    var diffCount: Int { runs.count }

    func diffRun(at index: Int) -> Run { runs[index] }

    func holdsBytes(of run: Run) -> Bool {
        let (end, overflow) = run.payloadStart.addingReportingOverflow(run.count)
        return run.payloadStart >= 0 && run.count >= 0 && !overflow && end <= payload.count
    }

    func diff(at index: Int) -> SnapshotDiff { self[index] }

    func forEachDiff(_ body: (Int, Run, UnsafeRawBufferPointer) -> Void) {
        payload.withUnsafeBytes { payload in
            runs.withUnsafeBufferPointer { runs in
                for index in runs.indices {
                    let run = runs[index]
                    // Checked by holdsBytes before the merge started.
                    body(index, run, UnsafeRawBufferPointer(rebasing: payload[run.payloadStart..<run.payloadStart + run.count]))
                }
            }
        }
    }
}
