#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// One way of finding written pages, driven by `DirtyTracker`, which serialises every call except
/// `regionMappingChanged` (that one comes from whichever thread grows or remaps the region, with
/// the region's lock held: it must not call back into the tracker or the region, and may only
/// touch state that is atomic or behind its own leaf lock).
///
/// Page counts are of the region's committed prefix, and the tracker holds the region's commit
/// lock during `arm`, `collect` and `stop`, so the region cannot grow or be remapped meanwhile.
protocol DirtyTrackingMechanism: AnyObject {
    /// Starts a fresh interval over the first `pageCount` pages, forgetting earlier writes.
    /// `afterMappingChange`: the region was remapped since the last arm (registrations are gone).
    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError)

    /// Pages written among the first `pageCount` since the last arm or reset, as sorted runs.
    /// With `reset`, the same step starts a new interval over those `pageCount` pages, so that
    /// every write is reported by this call or a later one.
    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>]

    /// Pages committed by growth are armed here at once, so growth is tracked exactly.
    func regionMappingChanged(_ change: VirtualRegion.MappingChange)

    /// Ends tracking and leaves the region's first `pageCount` (committed) pages writable.
    /// Idempotent.
    func stop(pageCount: Int)

    /// The pages among the first `pageCount` that the region holds its own copies of, given the
    /// runs the last collect-and-reset reported and no write since: what
    /// `DirtyTracker.restoreInPlace` drops. The runs may also cover pages that hold no copy
    /// (dropping those changes no content, only page tables: `private-copies` widens runs to
    /// whole page-table spans so the kernel can free them). nil where the mechanism cannot tell
    /// (the region is then remapped instead).
    func privatePages(reported: [Range<Int>], pageCount: Int) -> [Range<Int>]?

    /// After `DirtyTracker.restoreInPlace` dropped `dropped` and the file under the region
    /// changed in `changedUnderneath` (page runs, both within `pageCount`): brings the
    /// mechanism's state in line, so the next collect reports exactly the pages written from now.
    func restoredInPlace(dropped: [Range<Int>], changedUnderneath: [Range<Int>], pageCount: Int) throws(MemSnapError)

    /// Whether the mechanism keeps its own copy of the region's content, which a write to the
    /// file under the region (not through the region) leaves stale: `restoreInPlace` needs the
    /// ranges that changed underneath then, and only then.
    var keepsCopyOfContent: Bool { get }

    /// Whether writes can be attributed to the thread that made them.
    var attributesWritesToThreads: Bool { get }
    func attachThread(_ tid: Int) throws(MemSnapError)
    func detachThread(_ tid: Int)
    func collectThread(_ tid: Int, pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>]
}

extension DirtyTrackingMechanism {
    /// Mechanisms that see every write report a superset of the pages written since the last
    /// reset, and a region copies a page of its file only by writing it.
    func privatePages(reported: [Range<Int>], pageCount: Int) -> [Range<Int>]? { reported }
    /// The collect-and-reset before the drop armed the pages again, and dropping keeps them
    /// armed (uffd-wp leaves a marker in place of a protected page; an mprotect'ed or
    /// soft-dirty-cleared page is refaulted on its next write): nothing to do.
    func restoredInPlace(dropped: [Range<Int>], changedUnderneath: [Range<Int>], pageCount: Int) throws(MemSnapError) {}
    var keepsCopyOfContent: Bool { false }
    var attributesWritesToThreads: Bool { false }
    func regionMappingChanged(_ change: VirtualRegion.MappingChange) {}
    func attachThread(_ tid: Int) throws(MemSnapError) {}
    func detachThread(_ tid: Int) {}
    func collectThread(_ tid: Int, pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] { [] }
}

/// The owner of a `memsnap_page_record` (the bitmaps the segfault handler and the uffd handler
/// thread mark): exactly one, since it is `~Copyable`, and `destroy()` consumes it, so the record
/// cannot be used through its owner after release. A handle dropped without `destroy()` destroys
/// the record in its deinit.
///
/// The mechanisms hand `record` (a non-owning view) to their handlers; they must make sure no
/// handler can still reach it before they destroy the owner (segfault: removed from the handler's
/// table; uffd: handler thread joined).
struct PageRecordHandle: ~Copyable {
    let record: PageRecord

    /// Creates a record for the whole reservation of `region`.
    init(region: VirtualRegion, threadSlots: Int, during operation: String) throws(MemSnapError) {
        guard let pointer = memsnap_record_create(
            UInt(bitPattern: region.base), region.maxSize >> Page.shift, UInt32(Page.shift), max(0, threadSlots))
        else {
            throw MemSnapError(operation, .systemCall("calloc", .noMemory))
        }
        record = PageRecord(pointer: pointer)
    }

    /// Frees the record.
    consuming func destroy() {
        memsnap_record_destroy(record.pointer)
        discard self
    }

    deinit {
        memsnap_record_destroy(record.pointer)
    }
}

/// A non-owning view of a `memsnap_page_record` that may cross threads: every field the pointer
/// reaches is atomic. Valid until its `PageRecordHandle` is destroyed.
struct PageRecord: @unchecked Sendable {
    let pointer: OpaquePointer

    /// The global bitmap of the first `pageCount` pages, cleared (with every thread bitmap) if `clear`.
    func take(pageCount: Int, clear: Bool) -> PageBitmap {
        var words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        words.withUnsafeMutableBufferPointer { memsnap_record_take(pointer, $0.baseAddress, pageCount, clear ? 1 : 0) }
        return PageBitmap(pageCount: pageCount, words: words)
    }

    func attach(thread tid: Int, slots: Int, during operation: String) throws(MemSnapError) {
        switch memsnap_record_attach_thread(pointer, tid) {
        case 0, EEXIST: return
        case ENOSPC:
            throw MemSnapError(operation, .invalidArgument(
                "all \(slots) thread slots are in use; raise DirtyTracker.Configuration.threadSlots"))
        default:
            throw MemSnapError(operation, .systemCall("calloc", .noMemory))
        }
    }

    func take(thread tid: Int, pageCount: Int, clear: Bool, during operation: String) throws(MemSnapError) -> PageBitmap {
        var words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        let status = words.withUnsafeMutableBufferPointer {
            memsnap_record_take_thread(pointer, tid, $0.baseAddress, pageCount, clear ? 1 : 0)
        }
        guard status == 0 else {
            throw MemSnapError(operation, .invalidArgument(
                "thread \(tid) has not started thread-local tracking on this tracker"))
        }
        return PageBitmap(pageCount: pageCount, words: words)
    }
}

extension VirtualRegion {
    /// The first `pages` pages of the region as a raw buffer (for ioctl ranges, not for access).
    func pagePrefix(_ pages: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base, count: pages << Page.shift)
    }

    /// The whole reservation as a raw buffer (for ioctl ranges, not for access).
    var reservation: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: maxSize) }
}

extension PageRecord {
    /// Marks every page of the byte range `range` written: the safe answer for pages that could
    /// not be armed.
    func markWritten(_ range: Range<Int>) {
        for page in (range.lowerBound >> Page.shift)..<((range.upperBound + Page.size - 1) >> Page.shift) {
            memsnap_record_mark(pointer, page, 0)
        }
    }
}
