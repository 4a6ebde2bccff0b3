import MemSnap

/// One checkpoint file's part in a verify or restore.
struct RestoreLink: @unchecked Sendable {
    let file: CheckpointFile
    /// The pages whose bytes this link writes (those no later link of its chain overrides), or
    /// nil to write every byte of its extents (a file restored alone).
    let owned: PageRuns?
    /// How messages name the link's frames: nothing for a file alone ("checkpoint frame 2 at
    /// ..."), its path in a chain.
    let placePrefix: String

    init(_ file: CheckpointFile, owned: PageRuns?, placePrefix: String = "") {
        self.file = file
        self.owned = owned
        self.placePrefix = placePrefix
    }

    func place(_ frame: Int) -> String { "\(placePrefix)checkpoint frame \(frame) at \(at(file.frames[frame].offset))" }
}

/// Verifies or restores the frames of one file, or of every link of a chain at once: one work
/// queue over all their frames on `threads` threads, so a chain restores as parallel as a single
/// file. No two links write the same byte (each writes only the pages it owns), so frames may be
/// written in any order, like the frames of one file.
///
/// Checks, per link, what `CheckpointFile.verify` documents (checksums, sizes, extents inside
/// the image and, for an incremental file, inside its changed pages; no overlaps within the
/// file; the footer's extent bytes). The first failure by (link, frame) order is thrown, so the
/// error does not depend on the thread count. Nothing is committed here: callers commit the
/// target only when this returns.
enum ChainRestore {
    static func run(
        _ links: [RestoreLink], imageSize: Int, target: CheckpointRestoreTarget?, threads: Int,
        progress: (@Sendable (CheckpointProgress) -> Void)?, operation: String
    ) throws(MemSnapError) {
        guard (1...256).contains(threads) else {
            throw MemSnapError(operation, .invalidArgument("thread count \(threads) must be 1...256"))
        }
        let jobs = links.indices.flatMap { link in links[link].file.frames.indices.map { (link: link, frame: $0) } }
        let counter = ParallelWork.Counter(count: jobs.count)
        let failures = Locked<(link: Int, frame: Int, error: MemSnapError)?>(nil)
        let restored = Locked((extentBytes: [Int](repeating: 0, count: links.count), rawBytes: 0))
        let coverage = Locked([ExtentCoverage](repeating: ExtentCoverage(), count: links.count))
        let contexts = links.map { link in
            FrameContext(link: link, target: target, operation: operation,
                         rules: ExtentRules(imageSize: link.file.imageSize,
                                            declared: link.file.isIncremental ? link.file.map.changedRuns : nil,
                                            owned: link.owned, writeLimit: link.owned == nil ? Int.max : imageSize))
        }
        // Each frame's raw size is at most 2 x 64 MiB (checked on open): no overflow in practice.
        let totalRaw = links.reduce(0) { total, link in link.file.frames.reduce(total) { $0 &+ $1.rawSize } }
        let threadCount = min(threads, max(1, jobs.count))
        // One restore thread writes into the target at a time, and a thread that finds another
        // writing does not wait: it keeps its frame's writes and decodes its next frame into its
        // other workspace, writing both when the turn is free or when it has no free workspace
        // left. A file on tmpfs takes its inode lock for every write, so two threads' writes ran
        // one at a time anyway, the second one spinning or asleep in the kernel instead of
        // decompressing.
        // Its value counts the frames written and nothing reads it: ThreadSanitizer reports the
        // accesses to a lock's zero-sized value as races once one thread only tries the lock.
        let writeTurn = Locked(0)
        let defersWrites = target != nil && threadCount > 1
        try ParallelWork.run(threads: threadCount) { _ in
            let workspaces = defersWrites ? [FrameWorkspace(), FrameWorkspace()] : [FrameWorkspace()]
            var pending: [PendingFrame] = []
            var covered = [ExtentCoverage](repeating: ExtentCoverage(), count: links.count)
            func fail(_ job: (link: Int, frame: Int), _ error: MemSnapError) {
                failures.withLock { current in
                    if let current, (current.link, current.frame) < (job.link, job.frame) { return }
                    current = (job.link, job.frame, error)
                }
            }
            func failedBefore(_ job: (link: Int, frame: Int)) -> Bool {
                guard let failed = failures.withLock({ $0 }) else { return false }
                return (failed.link, failed.frame) < (job.link, job.frame)
            }
            /// Counts a frame done (its extent bytes at once; its raw bytes, which progress
            /// reports, once written).
            func finish(_ job: (link: Int, frame: Int), extentBytes: Int, written: Bool) {
                let done = restored.withLock { totals in
                    totals.extentBytes[job.link] &+= extentBytes
                    guard written else { return Int?.none }
                    totals.rawBytes &+= contexts[job.link].link.file.frames[job.frame].rawSize
                    return totals.rawBytes
                }
                if let done { progress?(CheckpointProgress(bytesDone: done, bytesTotal: totalRaw)) }
            }
            /// Writes every pending frame, in the order decoded; called with the write turn held.
            /// A frame after one that failed is not written: the restore fails anyway, and a
            /// full disk should not be filled further.
            func writePending(_ written: inout Int) {
                for frame in pending where !failedBefore(frame.job) {
                    do throws(MemSnapError) {
                        try frame.workspace.writes.replay(into: frame.target)
                        written += 1
                        finish(frame.job, extentBytes: 0, written: true)
                    } catch {
                        fail(frame.job, error)
                    }
                }
                pending.removeAll(keepingCapacity: true)
            }
            while let next = counter.claim() {
                let job = jobs[next]
                if failedBefore(job) { break }
                // The workspace no pending frame's writes point into (there is always one: the
                // turn is waited for as soon as every workspace holds a pending frame).
                guard let workspace = workspaces.first(where: { free in !pending.contains { $0.workspace === free } }) else {
                    fail(job, MemSnapError(operation, .invalidArgument("no free restore workspace (an internal error)")))
                    break
                }
                do throws(MemSnapError) {
                    let sink: CheckpointRestoreTarget?
                    if defersWrites {
                        workspace.writes.removeAll()
                        sink = workspace.writes
                    } else {
                        sink = contexts[job.link].target
                    }
                    let bytes = try contexts[job.link].restoreFrame(job.frame, workspace: workspace, target: sink,
                                                                    coverage: &covered[job.link])
                    if defersWrites, let target = contexts[job.link].target {
                        finish(job, extentBytes: bytes, written: false)
                        pending.append(PendingFrame(job: job, workspace: workspace, target: target))
                        // With every workspace holding unwritten bytes, wait for the turn.
                        if pending.count == workspaces.count {
                            writeTurn.withLock { written in writePending(&written) }
                        } else {
                            _ = writeTurn.withLockIfAvailable { written in writePending(&written) }
                        }
                    } else {
                        finish(job, extentBytes: bytes, written: true)
                    }
                } catch {
                    fail(job, error)
                }
            }
            if !pending.isEmpty { writeTurn.withLock { written in writePending(&written) } }
            let finished = covered
            coverage.withLock { all in
                for link in all.indices { all[link].merge(finished[link]) }
            }
        }
        if let failed = failures.withLock({ $0 }) { throw failed.error }
        let covered = coverage.withLock { $0 }
        let stored = restored.withLock { $0.extentBytes }
        for (index, link) in links.enumerated() {
            try covered[index].checkDisjoint(place: { link.place($0) }, during: operation)
            try CheckpointStructure.checkExtentBytes(recorded: link.file.extentBytes, found: stored[index], placePrefix: link.placePrefix,
                                                     during: operation)
        }
    }
}

/// One restore thread's buffers, reused from frame to frame: the frame as read (header and
/// stored payload), what decompresses it (v3 only), and the writes of the frame last decoded
/// into them while they wait for the write turn (they point into these buffers).
private final class FrameWorkspace {
    let stored = ReusableBuffer()
    let decode = FrameDecodeScratch()
    let writes = FrameWrites()
}

/// A decoded frame whose writes wait for the restore's write turn. It holds the workspace its
/// writes point into, which keeps those buffers alive until they are written.
private struct PendingFrame {
    let job: (link: Int, frame: Int)
    let workspace: FrameWorkspace
    let target: CheckpointRestoreTarget
}

/// The writes of one frame, recorded instead of written: `applyExtents` checks and cuts the
/// extents as for any target, and the restore thread replays them into the real target when it
/// has the write turn. The bytes stay in the thread's workspace, which is not reused until then.
/// Only ever a stand-in for a target within one restore thread: it is never prepared or committed.
private final class FrameWrites: CheckpointRestoreTarget, @unchecked Sendable {
    private var writes: [(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer)] = []

    func write(tag: UInt64, offset: Int, bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        writes.append((tag, offset, bytes))
    }

    func commit(imageSize: Int) throws(MemSnapError) {}

    func removeAll() { writes.removeAll(keepingCapacity: true) }

    /// Writes every recorded extent into `target`, in the order recorded; stops at the first error.
    func replay(into target: CheckpointRestoreTarget) throws(MemSnapError) {
        for write in writes { try target.write(tag: write.tag, offset: write.offset, bytes: write.bytes) }
    }
}

/// What a restore thread needs for the frames of one link; the file and target outlive the threads.
private struct FrameContext: @unchecked Sendable {
    let link: RestoreLink
    let target: CheckpointRestoreTarget?
    let operation: String
    let rules: ExtentRules

    /// Reads, checks, decompresses and (with a target) writes frame `index`; returns its extent
    /// bytes and adds its extents to `coverage`.
    /// `target` is this context's target or a stand-in that records the writes for later.
    func restoreFrame(
        _ index: Int, workspace: FrameWorkspace, target: CheckpointRestoreTarget?, coverage: inout ExtentCoverage
    ) throws(MemSnapError) -> Int {
        let file = link.file
        let expected = file.frames[index]
        let place = link.place(index)
        // The frame's sizes were checked on open: 48 + stored size, within the file.
        let frameBytes = try workspace.stored.bytes(count: CheckpointFormat.frameHeaderSize + expected.storedSize,
                                                    during: "\(operation): \(place)")
        try file.readFrame(into: frameBytes, at: expected.offset, place: place, during: operation)
        do throws(MemSnapError) {
            let header = try FrameRecord.decodeHeader(
                UnsafeRawBufferPointer(rebasing: frameBytes[0..<CheckpointFormat.frameHeaderSize]),
                at: expected.offset, expectedIndex: index, chunkSize: file.chunkSize, codec: file.codec, during: operation)
            try file.structure.checkFrameHeader(header, matches: expected, place: place, during: operation)
            return try file.structure.verifyFrame(
                expected, payload: UnsafeRawBufferPointer(rebasing: frameBytes[CheckpointFormat.frameHeaderSize...]),
                scratch: workspace.decode, rules: rules, target: target, coverage: &coverage, place: place, during: operation)
        } catch {
            // Bytes that fail a check because the file was cut while they were read: say so.
            if case let .corrupt(finding) = error.reason,
               let shrank = file.shrinkError(readAt: expected.offset, count: frameBytes.count, place: place, finding: finding,
                                             during: operation) {
                throw shrank
            }
            throw error
        }
    }
}

/// What the extents of a frame must satisfy, and which of their bytes are written.
struct ExtentRules {
    /// Every extent ends within this (nil for a stream, whose size comes at its end).
    var imageSize: Int?
    /// An incremental file's changed pages: every extent has tag 0 and lies in them.
    var declared: PageRuns?
    /// Only bytes of these pages (of tag 0) are written; nil writes everything.
    var owned: PageRuns?
    /// Bytes at or past this offset are not written (a chain's image size).
    var writeLimit = Int.max

    static func plain(imageSize: Int?) -> ExtentRules { ExtentRules(imageSize: imageSize, declared: nil, owned: nil) }
}

/// Parses a frame's raw payload (extent table, then data), checks it, adds its extents to
/// `coverage` and writes each extent (or the parts of it `rules` let through) to `target`.
/// Returns the extent bytes. Every length and offset is checked before anything is written.
func applyExtents(
    _ raw: UnsafeRawBufferPointer, count: Int, frame: Int, rules: ExtentRules, target: CheckpointRestoreTarget?,
    coverage: inout ExtentCoverage, place: String, operation: String
) throws(MemSnapError) -> Int {
    // count is at most raw size / 25 (checked with the frame header), so this cannot overflow.
    let tableSize = count * CheckpointFormat.extentEntrySize
    guard count >= 0, tableSize <= raw.count else { throw corrupt(operation, "\(place): extent table runs past the frame") }
    var reader = ByteReader(raw)
    var extents: [(tag: UInt64, offset: Int, length: Int)] = []
    extents.reserveCapacity(count)
    var total = 0
    for entry in 0..<count {
        let tag = reader.u64(), offset = reader.u64(), length = reader.u64()
        guard offset <= UInt64(Int.max), length <= UInt64(raw.count), offset <= UInt64(Int.max) - length else {
            throw corrupt(operation, "\(place): extent \(entry) has an impossible offset or length")
        }
        if let imageSize = rules.imageSize, offset + length > UInt64(imageSize) {
            throw corrupt(operation, "\(place): extent \(entry) ends at \(offset + length), past the image size \(imageSize)")
        }
        if let declared = rules.declared, length > 0 {
            let pages = Int(offset) / CheckpointFormat.pageSize..<CheckpointFormat.pageCount(Int(offset + length))
            guard tag == 0, declared.contains(pages) else {
                throw corrupt(operation, "\(place): extent \(entry) (bytes \(offset)..<\(offset + length) of tag \(tag)) lies outside "
                              + "the pages the file declares changed")
            }
        }
        extents.append((tag, Int(offset), Int(length)))
        total += Int(length)  // at most count x raw size: far from overflowing
    }
    guard !reader.overran, tableSize + total == raw.count else {
        throw corrupt(operation, "\(place): extents hold \(total) bytes but the frame has \(raw.count - tableSize)")
    }
    // No two extents may overlap: not in one frame (checked here), nor across frames (the
    // coverage, checked before anything is committed), so the result never depends on which
    // restore thread writes first.
    // Empty extents cover nothing; sorted non-empty ones overlap only if two neighbours do.
    var sorted = extents.filter { $0.length > 0 }
    if !sorted.indices.dropFirst().allSatisfy({ (sorted[$0 - 1].tag, sorted[$0 - 1].offset) <= (sorted[$0].tag, sorted[$0].offset) }) {
        sorted.sort { ($0.tag, $0.offset) < ($1.tag, $1.offset) }
    }
    for (previous, next) in zip(sorted, sorted.dropFirst()) where previous.tag == next.tag && previous.offset + previous.length > next.offset {
        throw corrupt(operation, "\(place): extents overlap at offset \(next.offset) of tag \(next.tag)")
    }
    coverage.add(frame: frame, sortedExtents: sorted)
    if let target {
        var position = tableSize
        for extent in extents {
            let bytes = UnsafeRawBufferPointer(rebasing: raw[position..<position + extent.length])
            position += extent.length
            guard let owned = rules.owned, extent.tag == 0 else {
                try target.write(tag: extent.tag, offset: extent.offset, bytes: bytes)
                continue
            }
            // A chain: write only the pages no later link overrides, and nothing past the image.
            let end = extent.offset + extent.length
            let pages = extent.offset / CheckpointFormat.pageSize..<CheckpointFormat.pageCount(end)
            for run in owned.intersections(with: pages) {
                let start = max(extent.offset, CheckpointFormat.byteOffset(ofPage: run.lowerBound))
                let stop = min(end, CheckpointFormat.byteOffset(ofPage: run.upperBound), rules.writeLimit)
                guard stop > start else { continue }
                try target.write(tag: 0, offset: start,
                                 bytes: UnsafeRawBufferPointer(rebasing: bytes[(start - extent.offset)..<(stop - extent.offset)]))
            }
        }
    }
    return total
}
