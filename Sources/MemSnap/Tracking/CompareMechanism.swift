#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// `compare`: keep a copy of the region and compare page by page.
///
/// Works everywhere with no cost per write, but arming copies the region and every collect reads
/// it all (bandwidth-bound: about a memcpy per collect), and it doubles the memory. It finds pages
/// whose bytes *changed*, not pages written: a write of the same value is not reported, kernel
/// writes are. Growth is exact (new pages are compared against zero). Collect-and-reset compares
/// and refreshes each page in one pass but is not atomic against concurrent writers: a write that
/// lands on a page between its compare and its copy is lost. Pause writers around it.
final class CompareMechanism: DirtyTrackingMechanism {
    private let region: VirtualRegion
    private let copy: VirtualRegion
    private var savedPages = 0

    init(region: VirtualRegion) throws(MemSnapError) {
        self.region = region
        copy = try VirtualRegion(maxSize: region.maxSize, hugePages: .systemDefault)
    }

    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {
        try copy.decommit(from: 0)
        try copy.grow(to: pageCount << Page.shift)
        if pageCount > 0 {
            copy.base.copyMemory(from: region.base, byteCount: pageCount << Page.shift)
        }
        savedPages = pageCount
    }

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        if reset && pageCount > savedPages {
            try copy.grow(to: pageCount << Page.shift)  // new pages of the copy read as zero
        }
        let pageSize = Page.size
        var bitmap = PageBitmap(pageCount: pageCount)
        for page in 0..<pageCount {
            let current = region.base + page * pageSize
            let saved = copy.base + page * pageSize
            let changed = page < savedPages
                ? memcmp(current, saved, pageSize) != 0
                : !CompareMechanism.isZero(UnsafeRawPointer(current), count: pageSize)
            guard changed else { continue }
            bitmap.insert(page)
            if reset { saved.copyMemory(from: current, byteCount: pageSize) }
        }
        if reset { savedPages = max(savedPages, pageCount) }
        return bitmap.runs
    }

    func stop(pageCount: Int) {}

    /// Compare reports changed pages, not written ones: a page written with the bytes it held is
    /// a private copy no collect reports. Ask the kernel instead which pages are not the file's
    /// (anonymous copies, present or swapped out); nil without PAGEMAP_SCAN (before Linux 6.7).
    func privatePages(reported: [Range<Int>], pageCount: Int) -> [Range<Int>]? {
        do {
            let scanner = try PagemapScanner(during: "find the private pages of a compare-tracked region")
            return try scanner.scan(
                region.pagePrefix(pageCount), categories: MEMSNAP_PAGE_IS_FILE, writeProtectMatches: false,
                requireAsyncRegistration: false, inverted: MEMSNAP_PAGE_IS_FILE,
                anyOf: MEMSNAP_PAGE_IS_PRESENT | MEMSNAP_PAGE_IS_SWAPPED,
                during: "find the private pages of a compare-tracked region")
        } catch {
            return nil
        }
    }

    /// The saved copy must equal the region again: the dropped pages read the file now, and
    /// the file changed under the region's shared pages.
    var keepsCopyOfContent: Bool { true }

    func restoredInPlace(dropped: [Range<Int>], changedUnderneath: [Range<Int>], pageCount: Int) throws(MemSnapError) {
        let limit = min(pageCount, savedPages)
        for run in DirtyPages.coalesce(dropped + changedUnderneath, limit: limit) {
            let offset = run.lowerBound << Page.shift
            (copy.base + offset).copyMemory(from: region.base + offset, byteCount: run.count << Page.shift)
        }
    }

    static func isZero(_ bytes: UnsafeRawPointer, count: Int) -> Bool {
        var offset = 0
        while offset + 8 <= count {
            if bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self) != 0 { return false }
            offset += 8
        }
        while offset < count {
            if bytes.load(fromByteOffset: offset, as: UInt8.self) != 0 { return false }
            offset += 1
        }
        return true
    }
}

/// `none`: no tracking; every committed page is reported written. For callers that always copy
/// everything, and for comparing the other modes against.
final class NoTrackingMechanism: DirtyTrackingMechanism {
    func arm(pageCount: Int, afterMappingChange: Bool) throws(MemSnapError) {}

    func collect(pageCount: Int, reset: Bool) throws(MemSnapError) -> [Range<Int>] {
        pageCount > 0 ? [0..<pageCount] : []
    }

    func stop(pageCount: Int) {}

    /// Every page is reported: nothing tells which ones the region copied.
    func privatePages(reported: [Range<Int>], pageCount: Int) -> [Range<Int>]? { nil }
}
