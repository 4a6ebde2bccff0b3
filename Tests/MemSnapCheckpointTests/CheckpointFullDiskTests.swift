#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing
import SystemPackage

/// A full disk is ENOSPC, thrown, with nothing left behind: never SIGBUS from a store through a
/// mapping, never a temporary file filling the disk. Each test mounts its own 2 MiB tmpfs.
@Suite("Checkpoint and restore on a full disk", .enabled(if: SmallTmpfs.isPermitted, SmallTmpfs.notPermittedReason))
struct CheckpointFullDiskTests {
    /// 4 MiB of incompressible bytes: twice what the tmpfs holds, whatever the style.
    func randomImage() -> [UInt8] {
        var random = SplitMix64(seed: 99)
        return (0..<(4 << 20) / 8).flatMap { _ in withUnsafeBytes(of: random.next()) { Array($0) } }
    }

    func checkpoint(_ image: [UInt8], style: CheckpointStyle, in directory: TemporaryDirectory) throws -> String {
        let path = directory.file("image.ckpt")
        try image.withUnsafeBytes { _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: path, options: options(style)) }
        return path
    }

    @Test("restoring a file onto a full disk throws ENOSPC and removes its temporary file at once")
    func aFileRestoreOntoAFullDiskIsENOSPC() throws {
        guard let disk = SmallTmpfs(bytes: 2 << 20) else { Issue.record("mount failed after the probe succeeded"); return }
        let directory = TemporaryDirectory()
        let image = randomImage()
        let file = try CheckpointFile(path: try checkpoint(image, style: .v2, in: directory))
        let output = "\(disk.path)/restored.raw"
        let target = try ImageFileTarget(path: output, force: false)
        let error = expectMemSnapError { try file.restore(into: target, threads: 2) }
        #expect(error?.reason == .systemCall("posix_fallocate \(ByteCount(image.count))", .noSpace))
        #expect(disk.entries.isEmpty, "the temporary file is gone while the target still exists")
        withExtendedLifetime(target) {}
    }

    @Test("a stream restore onto a full disk throws ENOSPC and leaves nothing")
    func aStreamRestoreOntoAFullDiskIsENOSPC() throws {
        guard let disk = SmallTmpfs(bytes: 2 << 20) else { Issue.record("mount failed after the probe succeeded"); return }
        let directory = TemporaryDirectory()
        let path = try checkpoint(randomImage(), style: .v1, in: directory)
        let input = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(input) }
        let target = try ImageFileTarget(path: "\(disk.path)/restored.raw", force: false)
        let error = expectMemSnapError { try Checkpoint.restore(readingFrom: FileDescriptor(rawValue: input), into: target) }
        #expect(error?.errno == .noSpace, "\(String(describing: error))")
        #expect(disk.entries.isEmpty)
    }

    @Test("writing a checkpoint onto a full disk throws ENOSPC and leaves nothing", arguments: [CheckpointStyle.v1, .v2])
    func aCheckpointOntoAFullDiskIsENOSPC(style: CheckpointStyle) throws {
        guard let disk = SmallTmpfs(bytes: 2 << 20) else { Issue.record("mount failed after the probe succeeded"); return }
        let image = randomImage()
        let error = expectMemSnapError {
            try image.withUnsafeBytes {
                _ = try Checkpoint.write([CheckpointExtent(offset: 0, bytes: $0)], to: "\(disk.path)/image.ckpt", options: options(style))
            }
        }
        #expect(error?.errno == .noSpace, "\(String(describing: error))")
        #expect(disk.entries.isEmpty)
        // The same from a file source, read in windows.
        let directory = TemporaryDirectory()
        _ = FileManager.default.createFile(atPath: directory.file("image.raw"), contents: Data(image))
        let streamError = expectMemSnapError {
            try Checkpoint.write(contentsOfFileAt: directory.file("image.raw"), to: .file(path: "\(disk.path)/image.ckpt", force: false),
                                 options: options(style))
        }
        #expect(streamError?.errno == .noSpace, "\(String(describing: streamError))")
        #expect(disk.entries.isEmpty)
    }
}
