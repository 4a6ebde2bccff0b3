#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapCheckpoint
import SystemPackage

/// The one-pass stream reader: any input either restores or is rejected with an error.
enum CheckpointStreamFuzzing {
    /// Restores `bytes` as a checkpoint stream with `Checkpoint.restore(readingFrom:into:)` into a
    /// memfd-backed image. The input is a memfd read from its start (a pipe would need a writer
    /// thread, or deadlock on inputs larger than its buffer).
    static func exercise(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let input = FuzzInputFile(bytes) else { return false }
        do {
            _ = try Checkpoint.restore(readingFrom: FileDescriptor(rawValue: input.descriptor), into: MemoryImageTarget(name: "fuzz-stream-restore"))
            return true
        } catch {
            return false
        }
    }
}
