#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// `segfault`: `mprotect(PROT_READ)` plus memsnap's C SIGSEGV handler.
///
/// The first write to a protected page faults; the handler (async-signal-safe, in C) makes the
/// page writable, marks it in the record's bitmap (and the writing thread's, if attached) and
/// returns, and the write runs again. Faults that are not memsnap's are chained to the previous
/// handler. Costs: a signal and an mprotect per first write, and every mprotect splits VMAs under
/// the mmap lock held for writing.
///
/// Limits, reported rather than hidden:
/// - Kernel writes (`read(2)` into a protected page) fail with EFAULT and are not recorded.
/// - Each written page can split a VMA; at `vm.max_map_count` mprotect fails with ENOMEM. The
///   handler then unprotects the whole range and gives up, and the next collect throws.
final class SegfaultMechanism: DirtyTrackingMechanism {
    private let region: VirtualRegion
    private let record: PageRecord
    /// The record's owner until `stop()` destroys it, after removing it from the handler's table.
    private var recordOwner: PageRecordHandle?
    private let threadSlots: Int
    private var stopped = false

    var attributesWritesToThreads: Bool { true }

    init(region: VirtualRegion, threadSlots: Int) throws(MemSnapError) {
        let operation = "start segfault tracking of \(ByteCount(region.maxSize))"
        let status = memsnap_segv_install()
        guard status == 0 else { throw MemSnapError(operation, .systemCall("sigaction", Errno(rawValue: status))) }
        self.region = region
        self.threadSlots = threadSlots
        let owner = try PageRecordHandle(region: region, threadSlots: threadSlots, during: operation)
        guard memsnap_segv_add(owner.record.pointer) == 0 else {
            owner.destroy()
            throw MemSnapError(operation, .invalidArgument(
                "\(MEMSNAP_SEGV_MAX_RECORDS) regions are tracked with segfault already; stop one first"))
        }
        record = owner.record
        recordOwner = consume owner
    }

    deinit {
        stop(pageCount: 0)
    }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        memsnap_record_clear_failure(record.pointer)
        _ = record.take(pageCount: region.maxSize >> Page.shift, clear: true)
        // Only ever raise the end here: lowering it while pages are still read-only would send
        // a write to them to the next handler in the chain, which kills the process.
        try protect(pageCount: pageCount, operation: "arm segfault tracking")
    }

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        let operation = "collect segfault-tracked dirty pages"
        try throwIfHandlerGaveUp(operation: operation)
        let written = record.take(pageCount: pageCount, clear: reset).runs
        // The handler may have given up while we took: then pages written since are unmarked.
        try throwIfHandlerGaveUp(operation: operation)
        if reset { try protect(pageCount: pageCount, operation: operation) }
        return written
    }

    /// Order matters: publish the tracked end before protecting, so the first fault is ours. The
    /// end is only ever raised here: growth may have armed pages past `pageCount` meanwhile.
    private func protect(pageCount: Int, operation: String) throws(MemSnapError) {
        let length = pageCount << Page.shift
        memsnap_record_raise_tracked_end(record.pointer, UInt(bitPattern: region.base) + UInt(length))
        guard length == 0 || mprotect(region.base, length, PROT_READ) == 0 else {
            let error = MemSnapError.systemCall("mprotect", during: operation)
            // Writable first, then untracked: never a read-only page outside the tracked range.
            _ = mprotect(region.base, length, PROT_READ | PROT_WRITE)
            memsnap_record_set_tracked_end(record.pointer, UInt(bitPattern: region.base))
            throw error
        }
    }

    private func throwIfHandlerGaveUp(operation: String) throws(MemSnapError) {
        var address: UInt = 0
        var marked = 0
        let failure = memsnap_record_failure(record.pointer, &address, &marked)
        guard failure != 0 else { return }
        let limit = SystemReport.readFile("/proc/sys/vm/max_map_count")?.trimmingCharacters(in: "\n") ?? "?"
        let offset = Int(bitPattern: address &- UInt(bitPattern: region.base))
        throw MemSnapError(
            "\(operation): the SIGSEGV handler gave up after \(marked) pages, at offset \(offset), "
            + "because mprotect could not split the mapping any further (vm.max_map_count = \(limit)); "
            + "the region is untracked until reset(); use uffd-async tracking or a full copy for regions this fragmented",
            .systemCall("mprotect", Errno(rawValue: failure)))
    }

    func regionMappingChanged(_ change: VirtualRegion.MappingChange) {
        let base = UInt(bitPattern: region.base)
        switch change {
        case let .released(range):
            // Released pages turn PROT_NONE: the handler must not make them writable again.
            memsnap_record_lower_tracked_end(record.pointer, base + UInt(range.lowerBound))
        case .replaced:
            // Fresh writable mappings never fault; the rest of the region stays tracked.
            break
        case let .committedByOwner(range):
            // Written or not before the owner's growth was reported: nothing tells; say written,
            // then track the pages from now on as grown ones.
            record.markWritten(range)
            regionMappingChanged(.committed(range))
        case let .committed(range):
            // Grown pages join the tracked range if they extend it; otherwise (tracking was cut
            // short by a release or a failure) they are reported as written.
            if memsnap_record_tracked_end(record.pointer) == base + UInt(range.lowerBound),
               mprotect(region.base + range.lowerBound, range.count, PROT_READ) == 0 {
                memsnap_record_raise_tracked_end(record.pointer, base + UInt(range.upperBound))
            } else {
                record.markWritten(range)
            }
        }
    }

    func stop(pageCount: Int) {
        guard !stopped else { return }
        stopped = true
        let trackedEnd = Int(bitPattern: memsnap_record_tracked_end(record.pointer) &- UInt(bitPattern: region.base))
        // Everything in the committed prefix is writable by the region's contract. Unprotect
        // before removing the record, so a write racing stop() is still handled.
        let writable = min(trackedEnd, pageCount << Page.shift)
        if writable > 0 { _ = mprotect(region.base, writable, PROT_READ | PROT_WRITE) }
        memsnap_segv_remove(record.pointer)
        if let owner = recordOwner.take() { owner.destroy() }
    }

    func attachThread(_ tid: Int) throws(MemSnapError) {
        try record.attach(thread: tid, slots: threadSlots, during: "start thread-local segfault tracking")
    }

    func detachThread(_ tid: Int) {
        memsnap_record_detach_thread(record.pointer, tid)
    }

    func collectThread(_ tid: Int, pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        let operation = "collect thread-local segfault-tracked pages"
        try throwIfHandlerGaveUp(operation: operation)
        return try record.take(thread: tid, pageCount: pageCount, clear: reset, during: operation).runs
    }
}
