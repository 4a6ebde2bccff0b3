#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// The cold-chunk half of `ArenaWriteTracker`: which heap chunks are write-protected, which are
/// writable and for how many syncs they have gone unwritten, and the C page record (one bit per
/// chunk) in which memsnap's SIGSEGV handler marks the cold chunks that a write made writable.
///
/// Every chunk below `chunkCount` is in the handler's tracked range, so a write fault in any of
/// them is resolved (the chunk made writable, then marked), whether this object believes the
/// chunk cold or not: a protection that failed half way is never a crash, only a chunk that is
/// scanned though writable.
///
/// Ownership: owns the record; `stop()` (idempotent, also from deinit) unprotects the range and
/// removes the record from the handler before freeing it.
/// Thread safety: none; `ArenaWriteTracker` serialises it. The handler runs on any thread.
final class ChunkProtection {
    let base: UnsafeMutableRawPointer
    let chunkCount: Int
    let chunkShift: Int
    var chunkPages: Int { 1 << (chunkShift - Page.shift) }
    private var chunkBytes: Int { 1 << chunkShift }
    let idleSyncsBeforeProtecting: Int
    private var record: OpaquePointer?
    /// Per chunk: -1 when protected, else the syncs in a row that found it unwritten.
    private var idleSyncs: [Int32]
    /// False once the handler gave up (or after `stop()`): the whole range is writable.
    private(set) var isActive = true
    /// False after an mprotect failed: chunks are no longer protected (the mapping has as many
    /// pieces as the system allows), only un-protected by faults.
    private var mayProtect = true

    /// Registers the record with the SIGSEGV handler and protects every chunk.
    /// - Throws: `.unavailable` when another SIGSEGV handler was installed after memsnap's (it
    ///   would see the faults first); `.systemCall` for sigaction, calloc or mprotect failures.
    init(base: UnsafeMutableRawPointer, chunkCount: Int, chunkShift: Int, idleSyncsBeforeProtecting: Int) throws(MemSnapError) {
        let operation = "write-protect \(chunkCount) idle heap chunks of \(ByteCount(1 << chunkShift))"
        self.base = base
        self.chunkCount = chunkCount
        self.chunkShift = chunkShift
        self.idleSyncsBeforeProtecting = idleSyncsBeforeProtecting
        idleSyncs = [Int32](repeating: -1, count: chunkCount)
        let status = memsnap_segv_install()
        guard status == 0 else { throw MemSnapError(operation, .systemCall("sigaction", Errno(rawValue: status))) }
        guard memsnap_segv_is_outermost() == 1 else {
            throw MemSnapError(operation, .unavailable("another SIGSEGV handler was installed after memsnap's and would see the faults first"))
        }
        guard let record = memsnap_record_create(UInt(bitPattern: base), chunkCount, UInt32(chunkShift), 0) else {
            throw MemSnapError(operation, .systemCall("calloc", .noMemory))
        }
        guard memsnap_segv_add(record) == 0 else {
            memsnap_record_destroy(record)
            throw MemSnapError(operation, .unavailable("\(MEMSNAP_SEGV_MAX_RECORDS) ranges are write-protected by memsnap already"))
        }
        self.record = record
        // The handler must own the range before the first chunk is protected.
        memsnap_record_set_tracked_end(record, UInt(bitPattern: base) + UInt(chunkCount << chunkShift))
        guard chunkCount == 0 || mprotect(base, chunkCount << chunkShift, PROT_READ) == 0 else {
            let error = MemSnapError.systemCall("mprotect", during: operation)
            stop()
            throw error
        }
    }

    deinit { stop() }

    /// Protects the chunks that have been idle long enough, then takes the handler's marks, and
    /// returns the runs of chunks the sync must scan: every writable chunk and every chunk just
    /// protected. Leaves `isActive` false (and the whole range writable) if the handler gave up.
    func chunksToScan() throws(MemSnapError) -> [Range<Int>] {
        guard let record, isActive else { return [] }
        var justProtected: [Range<Int>] = []
        if mayProtect {
            for run in runs(where: { $0 >= Int32(idleSyncsBeforeProtecting) }) {
                guard mprotect(base + (run.lowerBound << chunkShift), run.count << chunkShift, PROT_READ) == 0 else {
                    // Out of mapping pieces (ENOMEM at vm.max_map_count): the chunks stay writable
                    // as far as this object knows (scanned every sync); any that did turn read-only
                    // fault into the handler, which is always correct.
                    mayProtect = false
                    break
                }
                for chunk in run { idleSyncs[chunk] = -1 }
                justProtected.append(run)
            }
        }
        var failedAddress: UInt = 0
        var marked = 0
        if memsnap_record_failure(record, &failedAddress, &marked) != 0 {
            isActive = false
            return []
        }
        var words = [UInt64](repeating: 0, count: (chunkCount + 63) / 64)
        words.withUnsafeMutableBufferPointer { memsnap_record_take(record, $0.baseAddress, chunkCount, 1) }
        for (index, word) in words.enumerated() where word != 0 {
            var bits = word
            while bits != 0 {
                let chunk = index * 64 + bits.trailingZeroBitCount
                bits &= bits - 1
                if chunk < chunkCount { idleSyncs[chunk] = 0 }
            }
        }
        var scanned = ByteRangeSet()
        scanned.formUnion(runs(where: { $0 >= 0 }) + justProtected)
        return scanned.ranges
    }

    /// After the scan of `scanned` (chunk runs) found `written` (page runs): chunks written are
    /// idle for 0 syncs, the other writable ones for one more.
    func noteScanned(_ scanned: [Range<Int>], written: [Range<Int>]) {
        for run in scanned {
            for chunk in run where idleSyncs[chunk] >= 0 && idleSyncs[chunk] < Int32.max { idleSyncs[chunk] += 1 }
        }
        for pages in written where !pages.isEmpty {
            let first = pages.lowerBound / chunkPages
            let last = min(chunkCount - 1, (pages.upperBound - 1) / chunkPages)
            guard first <= last else { continue }
            for chunk in first...last where idleSyncs[chunk] >= 0 { idleSyncs[chunk] = 0 }
        }
    }

    /// Runs of consecutive chunks whose idle count satisfies `test`.
    private func runs(where test: (Int32) -> Bool) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var start: Int? = nil
        for chunk in 0...chunkCount {
            let matches = chunk < chunkCount && test(idleSyncs[chunk])
            if matches, start == nil { start = chunk }
            if !matches, let first = start {
                result.append(first..<chunk)
                start = nil
            }
        }
        return result
    }

    /// Makes the range writable and removes the record from the handler. Idempotent.
    func stop() {
        isActive = false
        guard let record else { return }
        self.record = nil
        // Writable before the record goes: a write racing this is still resolved by the handler.
        if chunkCount > 0 { _ = mprotect(base, chunkCount << chunkShift, PROT_READ | PROT_WRITE) }
        memsnap_segv_remove(record)
        memsnap_record_destroy(record)
    }
}
