#if canImport(Glibc)
import Glibc
#endif
import MemSnap

/// Finds which pages of a new image differ from the image of a chain, to write an incremental
/// checkpoint when nothing recorded what changed (the command line, an arena opened from its
/// files).
///
/// With page hashes in every link (the default since format version 2) a page is compared by
/// its XXH3-64 against the hash its owning link stored, and the parent's frames are never read:
/// the cost is reading and hashing the new image. Otherwise the chain is restored into memory
/// (a memfd of its size) and pages are compared byte for byte. A page also counts as changed
/// when its length differs (the image grew or shrank). Two different pages with equal hashes
/// would be taken for unchanged: with 64-bit hashes that is a chance of about 2^-64 per changed
/// page, and only for pages whose content changed.
///
/// Thread safety: `changedPages` may be called from any thread, several at once.
final class ParentComparison: @unchecked Sendable {
    let parent: CheckpointParent
    private let basis: Basis
    /// Kept alive while `basis` points into it.
    private let parentImage: Snapshot?

    enum Basis {
        case hashes(ChainPageHashes)
        case image(UnsafeRawBufferPointer)
    }

    var usesPageHashes: Bool { if case .hashes = basis { true } else { false } }

    /// - Throws: as `CheckpointChain.restore` (when the chain has no page hashes) or reading the
    ///   stored hashes.
    init(chain: CheckpointChain, threads: Int) throws(MemSnapError) {
        parent = chain.parentReference
        if let hashes = try chain.pageHashes() {
            basis = .hashes(hashes)
            parentImage = nil
        } else {
            let target = try MemoryImageTarget(name: "memsnap-parent")
            try chain.restore(into: target, threads: threads)
            let image = try Snapshot(adopting: target.file, size: chain.imageSize)
            parentImage = image
            // The snapshot is never written, so its mapping (and this view of it) stays as it is.
            basis = .image(image.withUnsafeBytes { $0 })
        }
    }

    /// The pages (absolute page numbers, as sorted runs) of `window`, the image's bytes from
    /// `offset` (a multiple of 4096), that differ from the parent's; the window's last page may
    /// be short only at the image's end. Hashing is spread over `threads` threads.
    func changedPages(of window: UnsafeRawBufferPointer, at offset: Int, threads: Int) -> [Range<Int>] {
        let first = offset / CheckpointFormat.pageSize
        let count = CheckpointFormat.pageCount(window.count)
        let workers = max(1, min(threads, count / 64))
        let results = Locked([[Range<Int>]](repeating: [], count: workers))
        let shared = SharedWindow(bytes: window)
        let compare = { @Sendable (worker: Int) in
            let slice = count * worker / workers..<count * (worker + 1) / workers
            var runs: [Range<Int>] = []
            for index in slice {
                let start = index * CheckpointFormat.pageSize
                let bytes = UnsafeRawBufferPointer(rebasing: shared.bytes[start..<min(start + CheckpointFormat.pageSize, shared.bytes.count)])
                let page = first + index
                guard self.differs(page: page, bytes) else { continue }
                if let last = runs.last, last.upperBound == page { runs[runs.count - 1] = last.lowerBound..<page + 1 } else { runs.append(page..<page + 1) }
            }
            results.withLock { $0[worker] = runs }
        }
        if workers == 1 {
            compare(0)
        } else if (try? ParallelWork.run(threads: workers, compare)) == nil {
            for worker in 0..<workers { compare(worker) }  // no thread could start: do it here
        }
        return PageRuns(coalescing: results.withLock { $0 }.flatMap { $0 }).runs
    }

    private func differs(page: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let length = CheckpointFormat.pageLength(page, imageSize: parent.imageSize)
        guard length > 0, bytes.count == length else { return true }
        switch basis {
        case let .hashes(hashes):
            return CheckpointFormat.xxh3(bytes) != hashes.hash(of: page)
        case let .image(image):
            guard let mine = bytes.baseAddress, let theirs = image.baseAddress else { return true }
            return memcmp(mine, theirs + page * CheckpointFormat.pageSize, length) != 0
        }
    }

    /// Adds the changed pages of `window` (see `changedPages`) to `writer` as extents.
    func addChangedPages(of window: UnsafeRawBufferPointer, at offset: Int, to writer: CheckpointWriter, threads: Int) throws(MemSnapError) {
        for run in changedPages(of: window, at: offset, threads: threads) {
            let start = CheckpointFormat.byteOffset(ofPage: run.lowerBound) - offset
            let end = min(CheckpointFormat.byteOffset(ofPage: run.upperBound) - offset, window.count)
            try writer.add(CheckpointExtent(offset: UInt64(offset + start), bytes: UnsafeRawBufferPointer(rebasing: window[start..<end])))
        }
    }
}

/// A window's bytes handed to comparing threads; the caller keeps them alive during the call.
private struct SharedWindow: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
}
