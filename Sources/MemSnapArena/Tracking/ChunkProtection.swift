#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import MemSnap
import SystemPackage

/// The cold-chunk half of `ArenaWriteTracker`: which heap chunks are write-protected, which are
/// writable, for how many syncs each writable one has gone unwritten and how many it may go
/// before it is protected, and the C page record (one bit per chunk) in which memsnap's SIGSEGV
/// handler marks the cold chunks that a write made writable.
///
/// Every chunk below `chunkCount` is in the handler's tracked range, so a write fault in any of
/// them is resolved (the chunk made writable, then marked), whether this object believes the
/// chunk cold or not: a protection that failed half way is never a crash, only a chunk that is
/// scanned though writable.
///
/// Per sync, the work is proportional to the chunks written lately (the writable list), plus
/// one word per 64 chunks to take the handler's marks: never a pass over every chunk.
///
/// Ownership: owns the record; `stop()` (idempotent, also from deinit) unprotects the range and
/// removes the record from the handler before freeing it.
/// Thread safety: none; `ArenaWriteTracker` serialises it. The handler runs on any thread.
final class ChunkProtection {
    let base: UnsafeMutableRawPointer
    let chunkCount: Int
    let chunkShift: Int
    var chunkPages: Int { 1 << (chunkShift - Page.shift) }
    /// The most idle syncs a chunk's threshold grows to (a chunk written less often than this
    /// is protected between its writes).
    let maximumIdleSyncs: Int
    private var record: OpaquePointer?
    /// Per chunk: -1 when protected, else the syncs in a row whose scan found it unwritten.
    private var idleSyncs: [Int32]
    /// Per chunk: how many idle syncs it is left writable before it is protected. Starts at 0
    /// (protected by the sync that scans its write), grows for chunks that fault back in soon
    /// after being protected, shrinks for chunks that stay cold long after. See `adaptThreshold`.
    private var idleSyncsBeforeProtecting: [UInt8]
    /// Per chunk: `syncCount` when it was last protected (wrapping; only differences are used).
    private var protectedAtSync: [UInt32]
    /// The chunks this object believes writable (idleSyncs >= 0), unsorted between syncs.
    private var writable: [Int] = []
    /// Buffers reused by every sync (the handler's marks; the runs to protect).
    private var markWords: [UInt64]
    private var runsToProtect: [Range<Int>] = []
    private var syncCount: UInt32 = 0
    /// False once the handler gave up (or after `stop()`): the whole range is writable.
    private(set) var isActive = true
    /// False after an mprotect failed: chunks are no longer protected (the mapping has as many
    /// pieces as the system allows), only un-protected by faults.
    private var mayProtect = true

    /// A protection, plus the fault that ends it, costs a sync about as much as this many scans
    /// of a writable chunk (an mprotect walks the chunk's page-table entries, a scan of a chunk is
    /// one PAGEMAP_SCAN of them). A chunk written again sooner after being protected would have
    /// been cheaper to leave writable; one that stays cold several times longer was worth it.
    static let protectionCostInScans: UInt32 = 8

    /// Registers the record with the SIGSEGV handler and protects every chunk.
    /// - Throws: `.unavailable` when another SIGSEGV handler was installed after memsnap's (it
    ///   would see the faults first); `.systemCall` for sigaction, calloc or mprotect failures.
    init(base: UnsafeMutableRawPointer, chunkCount: Int, chunkShift: Int, maximumIdleSyncs: Int) throws(MemSnapError) {
        let operation = "write-protect \(chunkCount) idle heap chunks of \(ByteCount(1 << chunkShift))"
        self.base = base
        self.chunkCount = chunkCount
        self.chunkShift = chunkShift
        self.maximumIdleSyncs = min(Int(UInt8.max), max(0, maximumIdleSyncs))
        idleSyncs = [Int32](repeating: -1, count: chunkCount)
        idleSyncsBeforeProtecting = [UInt8](repeating: 0, count: chunkCount)
        protectedAtSync = [UInt32](repeating: 0, count: chunkCount)
        markWords = [UInt64](repeating: 0, count: (chunkCount + 63) / 64)
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

    /// Takes the handler's marks, protects the writable chunks that have been idle long enough,
    /// and returns the runs of chunks the sync must scan: every chunk that was writable when the
    /// sync began or was marked, the ones just protected included. Leaves `isActive` false (and
    /// the whole range writable) if the handler gave up.
    ///
    /// Why no write is missed: a write to a chunk while it is writable is found by the next scan
    /// of the chunk, and a writable chunk is scanned by every sync, the one that protects it
    /// included (after protecting it, so a write just before the protection is seen). A write to
    /// a protected chunk faults first; the handler makes the chunk writable and then marks it, and
    /// the sync that takes the mark scans the chunk. A write that completed before `sync` was
    /// called therefore has its chunk marked or writable by then.
    func chunksToScan() throws(MemSnapError) -> [Range<Int>] {
        guard let record, isActive else { return [] }
        guard !handlerGaveUp(record) else { return [] }
        syncCount &+= 1
        markWords.withUnsafeMutableBufferPointer { memsnap_record_take(record, $0.baseAddress, chunkCount, 1) }
        for index in markWords.indices where markWords[index] != 0 {
            var bits = markWords[index]
            while bits != 0 {
                let chunk = index &* 64 &+ bits.trailingZeroBitCount
                bits &= bits &- 1
                guard chunk < chunkCount else { continue }
                if idleSyncs[chunk] < 0 {
                    adaptThreshold(of: chunk, coldForSyncs: syncCount &- protectedAtSync[chunk])
                    writable.append(chunk)
                }
                idleSyncs[chunk] = 0
            }
        }
        writable.sort()
        let scanned = Self.runs(of: writable)
        guard mayProtect else { return scanned }

        runsToProtect.removeAll(keepingCapacity: true)
        for chunk in writable where Int(idleSyncs[chunk]) >= Int(idleSyncsBeforeProtecting[chunk]) {
            if let last = runsToProtect.last, last.upperBound == chunk {
                runsToProtect[runsToProtect.count - 1] = last.lowerBound..<chunk + 1
            } else {
                runsToProtect.append(chunk..<chunk + 1)
            }
        }
        guard !runsToProtect.isEmpty else { return scanned }
        for run in runsToProtect {
            guard mprotect(base + (run.lowerBound << chunkShift), run.count << chunkShift, PROT_READ) == 0 else {
                // Out of mapping pieces (ENOMEM at vm.max_map_count): the chunks stay writable
                // as far as this object knows (scanned every sync); any that did turn read-only
                // fault into the handler, which is always correct.
                mayProtect = false
                break
            }
            for chunk in run {
                idleSyncs[chunk] = -1
                protectedAtSync[chunk] = syncCount
            }
        }
        writable.removeAll { idleSyncs[$0] < 0 }
        // The handler may have given up while chunks were being protected: it made the whole
        // range writable, but a chunk protected after that would stay read-only with nobody to
        // resolve its faults. Making the range writable again undoes that.
        if handlerGaveUp(record) { return [] }
        return scanned
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

    /// The switch by dirty rate, per chunk (a ski-rental rule): a chunk that faults back in soon
    /// after it was protected is rewritten often, and is left writable for longer next time (up
    /// to `maximumIdleSyncs`, where it is protected only if it goes that long unwritten); one
    /// that stayed cold for long is protected sooner next time, down to the sync that scans its
    /// write. A chunk in a hot region settles writable (no faults, scanned every sync); a chunk
    /// written once in a while settles at 0 (one fault per write burst, never scanned between).
    private func adaptThreshold(of chunk: Int, coldForSyncs: UInt32) {
        let current = Int(idleSyncsBeforeProtecting[chunk])
        let next: Int
        if coldForSyncs < Self.protectionCostInScans {
            next = min(maximumIdleSyncs, max(Int(Self.protectionCostInScans), current * 2))
        } else if coldForSyncs >= 4 * Self.protectionCostInScans {
            next = current / 2
        } else {
            next = current
        }
        idleSyncsBeforeProtecting[chunk] = UInt8(truncatingIfNeeded: next)
    }

    /// Whether the handler gave up on the record (an mprotect of its own failed); if so, makes
    /// the range writable and leaves `isActive` false: every sync then scans the whole heap.
    private func handlerGaveUp(_ record: OpaquePointer) -> Bool {
        var failedAddress: UInt = 0
        var marked = 0
        guard memsnap_record_failure(record, &failedAddress, &marked) != 0 else { return false }
        isActive = false
        if chunkCount > 0 { _ = mprotect(base, chunkCount << chunkShift, PROT_READ | PROT_WRITE) }
        return true
    }

    /// Runs of consecutive chunks in `chunks` (sorted, distinct).
    private static func runs(of chunks: [Int]) -> [Range<Int>] {
        var result: [Range<Int>] = []
        for chunk in chunks {
            if let last = result.last, last.upperBound == chunk {
                result[result.count - 1] = last.lowerBound..<chunk + 1
            } else {
                result.append(chunk..<chunk + 1)
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
