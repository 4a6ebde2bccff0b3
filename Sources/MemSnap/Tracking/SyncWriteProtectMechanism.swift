#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// `uffd`: synchronous userfaultfd write-protect with a handler thread.
///
/// The first write to a protected page blocks the writer and queues a message; the handler thread
/// reads it, optionally hands the page's old contents to `copyBeforeWrite` (the one mechanism that
/// can copy a page before it changes: a consistent snapshot while the program keeps running),
/// unprotects the page, marks it (and the faulting thread, with `UFFD_FEATURE_THREAD_ID`) and
/// wakes the writer. Slow here (~50 µs a fault across vCPUs), but exact and copy-before-write.
///
/// Limits: kernel writes (`read(2)` into a protected page) fail with EFAULT under
/// `UFFD_USER_MODE_ONLY`. The handler
/// thread must never write to the tracked region, and `copyBeforeWrite` must not either, nor wait
/// on anything a writer might hold.
final class SyncWriteProtectMechanism: DirtyTrackingMechanism {
    typealias CopyBeforeWrite = @Sendable (_ page: Int, _ contents: UnsafeRawBufferPointer) -> Void

    private let region: VirtualRegion
    private let userfaultfd: Userfaultfd
    private let record: PageRecord
    private let threadSlots: Int
    private let stopPipe: (read: Int32, write: Int32)
    /// What `stop()` releases, in this order: the handler thread (joined), the pipe that stops
    /// it, then the record it marks.
    private var handlerThread: OSThread?
    private var stopPipeOwner: PipeDescriptors?
    private var recordOwner: PageRecordHandle?
    private var stopped = false
    let attributesWritesToThreads: Bool

    init(region: VirtualRegion, threadSlots: Int, copyBeforeWrite: CopyBeforeWrite?) throws(MemSnapError) {
        let operation = "start uffd tracking of \(ByteCount(region.maxSize))"
        let available = try Userfaultfd.availableFeatures().get()
        let wanted = MEMSNAP_UFFD_FEATURE_WP_UNPOPULATED | MEMSNAP_UFFD_FEATURE_WP_HUGETLBFS_SHMEM
            | MEMSNAP_UFFD_FEATURE_THREAD_ID
        self.region = region
        self.threadSlots = threadSlots
        userfaultfd = try Userfaultfd(features: wanted & available, during: operation)
        attributesWritesToThreads = userfaultfd.features & MEMSNAP_UFFD_FEATURE_THREAD_ID != 0
        try userfaultfd.register(region.reservation, during: operation)
        let owner = try PageRecordHandle(region: region, threadSlots: threadSlots, during: operation)
        let pipe: PipeDescriptors
        do {
            pipe = try PipeDescriptors(during: operation)
        } catch {
            userfaultfd.unregister(region.reservation)
            owner.destroy()
            throw error
        }
        stopPipe = (pipe.readEnd, pipe.writeEnd)
        record = owner.record
        let context = FaultHandlerContext(
            userfaultfd: userfaultfd.descriptor, stopDescriptor: stopPipe.read, record: record,
            regionStart: UInt(bitPattern: region.base), copyBeforeWrite: copyBeforeWrite)
        do {
            handlerThread = try OSThread(name: "memsnap-uffd") { context.serveFaults() }
        } catch {
            userfaultfd.unregister(region.reservation)
            pipe.close()
            owner.destroy()
            throw error
        }
        stopPipeOwner = consume pipe
        recordOwner = consume owner
    }

    deinit {
        stop(pageCount: 0)
    }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        if afterMappingChange {
            try userfaultfd.register(region.reservation, during: "re-register uffd tracking after a remap")
        }
        _ = record.take(pageCount: region.maxSize >> Page.shift, clear: true)
        try protect(pageCount: pageCount, operation: "arm uffd tracking")
    }

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        // Take the marks first, then protect again: a write between the two is on a page that is
        // in this result and still writable, so the caller's read after the call sees it.
        let written = record.take(pageCount: pageCount, clear: reset).runs
        if reset { try protect(pageCount: pageCount, operation: "collect uffd dirty pages") }
        return written
    }

    private func protect(pageCount: Int, operation: String) throws(MemSnapError) {
        if pageCount > 0 {
            try userfaultfd.writeProtect(region.pagePrefix(pageCount), protect: true, during: operation)
        }
    }

    func regionMappingChanged(_ change: VirtualRegion.MappingChange) {
        let range: Range<Int>
        switch change {
        case let .committed(committed): range = committed
        case let .committedByOwner(committed):
            // Written or not before the owner's growth was reported: nothing tells; say written.
            range = committed
            record.markWritten(range)
        case .replaced, .released: return
        }
        let pages = UnsafeRawBufferPointer(start: region.base + range.lowerBound, count: range.count)
        do {
            try userfaultfd.writeProtect(pages, protect: true, during: "arm uffd tracking of grown pages")
        } catch {
            record.markWritten(range)
        }
    }

    func stop(pageCount: Int) {
        guard !stopped else { return }
        stopped = true
        guard userfaultfd.callerOwnsMemory else {
            // A forked child: the handler thread and the registration are the parent's, and so
            // is the stop pipe's reader. The stop byte would end the parent's handler (its
            // writers would then block for ever), and a thread the child does not have cannot
            // be joined. Only the child's own copies go.
            if let thread = handlerThread.take() { thread.abandonInForkedChild() }
            if let pipe = stopPipeOwner.take() { pipe.close() }
            if let owner = recordOwner.take() { owner.destroy() }
            return
        }
        // Unregistering does not wake writers blocked on write-protect faults: wake them, and
        // they retry on memory that is no longer registered.
        userfaultfd.unregister(region.reservation)
        userfaultfd.wake(region.reservation)
        var byte: UInt8 = 1
        _ = write(stopPipe.write, &byte, 1)
        if let thread = handlerThread.take() { thread.join() }
        if let pipe = stopPipeOwner.take() { pipe.close() }
        if let owner = recordOwner.take() { owner.destroy() }
    }

    func attachThread(_ tid: Int) throws(MemSnapError) {
        let operation = "start thread-local uffd tracking"
        guard attributesWritesToThreads else {
            throw MemSnapError(operation, .unavailable("the kernel did not grant UFFD_FEATURE_THREAD_ID"))
        }
        try record.attach(thread: tid, slots: threadSlots, during: operation)
    }

    func detachThread(_ tid: Int) {
        memsnap_record_detach_thread(record.pointer, tid)
    }

    func collectThread(_ tid: Int, pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        try record.take(thread: tid, pageCount: pageCount, clear: reset,
                        during: "collect thread-local uffd pages").runs
    }
}

/// Everything the handler thread needs, by value: it never touches the mechanism object, whose
/// `stop()` joins the thread before releasing any of these resources.
private struct FaultHandlerContext: Sendable {
    let userfaultfd: Int32
    let stopDescriptor: Int32
    let record: PageRecord
    let regionStart: UInt
    let copyBeforeWrite: SyncWriteProtectMechanism.CopyBeforeWrite?

    func serveFaults() {
        var descriptors = [
            pollfd(fd: userfaultfd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stopDescriptor, events: Int16(POLLIN), revents: 0),
        ]
        var messages = [memsnap_uffd_msg](repeating: memsnap_uffd_msg(), count: 64)
        let messageSize = MemoryLayout<memsnap_uffd_msg>.stride
        while true {
            guard case .success = valueOrErrno({ poll(&descriptors, 2, -1) }) else { return }
            if descriptors[1].revents != 0 { return }
            if descriptors[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return }
            while true {
                let bytes = messages.withUnsafeMutableBytes { read(userfaultfd, $0.baseAddress, $0.count) }
                guard bytes > 0 else { break }
                for message in messages.prefix(bytes / messageSize) where message.event == MEMSNAP_UFFD_EVENT_PAGEFAULT {
                    resolve(message)
                }
            }
        }
    }

    private func resolve(_ message: memsnap_uffd_msg) {
        let pageSize = UInt(Page.size)
        let address = UInt(message.pagefault_address) & ~(pageSize - 1)
        let page = Int((address &- regionStart) >> UInt(Page.shift))
        let range = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: Page.size)
        if let copyBeforeWrite { copyBeforeWrite(page, range) }
        var argument = memsnap_uffdio_writeprotect(
            range: memsnap_uffdio_range(start: UInt64(address), len: UInt64(pageSize)),
            mode: MEMSNAP_UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
        // Unprotect before marking (as the SIGSEGV handler does), then wake the writer.
        while memsnap_ioctl(userfaultfd, MEMSNAP_UFFDIO_WRITEPROTECT, &argument) != 0 && errno == EAGAIN {}
        memsnap_record_mark(record.pointer, page, Int(message.pagefault_ptid))
        var wakeRange = memsnap_uffdio_range(start: UInt64(address), len: UInt64(pageSize))
        _ = memsnap_ioctl(userfaultfd, MEMSNAP_UFFDIO_WAKE, &wakeRange)
    }
}
