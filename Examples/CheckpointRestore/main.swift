// Checkpoint a snapshot to a file and restore it: a full checkpoint, then an incremental one
// holding only what changed since, and a restore of the chain on several threads.
//
//     swift run example-checkpoint DIRECTORY
//
// What to copy: `Checkpoint.write(_:to:options:)` for a full checkpoint,
// `Checkpoint.write(_:changedRanges:over:to:)` with the snapshot's changed ranges for an
// incremental one (its parent is found again by content identity, next to it), and
// `Checkpoint.restoreSnapshot(from:threads:)`, which checks the whole chain before writing.
#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapCheckpoint

guard CommandLine.arguments.count == 2 else {
    print("usage: example-checkpoint DIRECTORY")
    exit(2)
}
let directory = CommandLine.arguments[1]
let full = directory + "/heap.ckpt", next = directory + "/next.ckpt"

do {
    // A 4 MiB heap with a recognisable pattern.
    let snapshot = try Snapshot(size: 4 << 20, name: "heap")
    try snapshot.update(at: 0, count: snapshot.size) { heap in
        for index in stride(from: 0, to: heap.count, by: 8) {
            heap.storeBytes(of: UInt64(index / 8) &* 2_654_435_761, toByteOffset: index, as: UInt64.self)
        }
    }
    _ = snapshot.takeChangedRanges()   // the full checkpoint covers these

    let options = CheckpointOptions(style: .v3, codec: .lz4, threads: 2)
    let first = try Checkpoint.write(snapshot, to: full, options: options, force: true)
    print("full checkpoint: \(first.imageSize) bytes of image in \(first.frameCount) frames")

    // Change two pages, then checkpoint only those over the first file.
    try snapshot.write(Array("hello, checkpoint".utf8), at: 12_288)
    try snapshot.update(at: 1 << 20, count: 8) { $0.storeBytes(of: UInt64(42), as: UInt64.self) }
    let changed = snapshot.takeChangedRanges()
    let second = try Checkpoint.write(snapshot, changedRanges: changed, over: CheckpointParent(CheckpointFile(path: full)),
                                      to: .file(path: next, force: true), options: options)
    print("incremental checkpoint: \(changed.count) changed ranges, \(second.imageSize) bytes of image")

    // Restore the chain (heap.ckpt + next.ckpt) and compare every byte.
    let restored = try Checkpoint.restoreSnapshot(from: next, threads: 4)
    let same = snapshot.withUnsafeBytes { original in
        restored.withUnsafeBytes { copy in original.elementsEqual(copy) }
    }
    print("restored \(restored.size) bytes: identical \(same)")
    print("text at 12288: \(String(decoding: try restored.read(at: 12_288, count: 17), as: UTF8.self))")
    if !same { exit(1) }
} catch {
    print("checkpoint example failed: \(error)")
    exit(1)
}
