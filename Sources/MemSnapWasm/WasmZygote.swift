import MemSnap
import WasmKit

/// A snapshot of a WebAssembly instance's linear memory taken right after its initialisation,
/// from which any number of instances are forked without running that initialisation again:
/// Faasm's "zygote".
///
/// Creation instantiates the program once, calls the zygote export once (the module's own
/// start-up: filling tables, parsing data, declaring merge regions), and copies the memory into
/// a memfd-backed `Snapshot` (the one copy). Merge regions the guest declared meanwhile
/// (`memsnap.merge_region`) are added to the snapshot. That instance is then dropped.
///
/// `fork()` makes a new instance equal to the snapshot: instantiation (which rewrites the
/// module's small data segments, then overwritten) plus a copy-on-write map of the snapshot
/// over the memory, O(1) in the memory's size; `restore(_:)` does the map alone for an instance
/// that exists. Forks see later changes to the snapshot through pages they have not written
/// (see `Snapshot.mapCopyOnWrite(into:)`): restore them after changing it, as `WasmWorkers` does.
///
/// Ownership: owns the snapshot (shared with pools and forks, which keep it alive).
/// Thread safety: `fork()` and `restore(_:)` may be called from any thread; each fork is then
/// used from one thread at a time.
public final class WasmZygote: @unchecked Sendable {
    public let program: WasmProgram
    public let snapshot: Snapshot
    /// What the zygote export returned.
    public let zygoteResults: [Value]

    /// Runs `zygote` (an export; nil runs nothing: the snapshot is the memory as instantiated)
    /// with `arguments` on a fresh instance and snapshots its memory. The snapshot may grow up
    /// to the memory's declared maximum (4 GiB when none).
    /// - Throws: `MemSnapError` from instantiating, snapshotting, or adding a declared merge
    ///   region; `WasmTrap` if the zygote traps.
    public init(program: WasmProgram, zygote: String? = "zygote", arguments: [Value] = []) throws {
        let instance = try WasmInstance(program: program, label: "zygote")
        zygoteResults = try zygote.map { try instance.call($0, arguments) } ?? []
        let snapshot = try instance.memory.withUnsafeBytes { (bytes) throws(MemSnapError) -> Snapshot in
            try Snapshot(copying: bytes, maxSize: program.memoryLimit, name: "wasm-\(program.name)")
        }
        for region in instance.mergeRegions.pending { try snapshot.addMergeRegion(region) }
        self.program = program
        self.snapshot = snapshot
    }

    /// A new instance whose memory is the snapshot (copy-on-write). Its merge-region
    /// declarations go to the snapshot with the given role (see `GuestMergeRegions`).
    /// - Throws: as `WasmInstance.init(program:label:)` and `WasmInstance.restore(from:)`.
    public func fork(label: String = "fork") throws(MemSnapError) -> WasmInstance {
        try fork(label: label, role: .worker)
    }

    func fork(label: String, role: GuestMergeRegions.Role) throws(MemSnapError) -> WasmInstance {
        let instance = try WasmInstance(program: program, label: label)
        instance.mergeRegions.attach(to: snapshot, as: role)
        try instance.restore(from: snapshot)
        return instance
    }

    /// Makes `instance`'s memory the snapshot again, discarding its writes: a copy-on-write map,
    /// nothing copied (see `WasmInstance.restore(from:)`).
    public func restore(_ instance: WasmInstance) throws(MemSnapError) {
        try instance.restore(from: snapshot)
    }
}
