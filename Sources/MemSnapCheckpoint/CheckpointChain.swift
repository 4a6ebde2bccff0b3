#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

/// A full checkpoint and the incremental checkpoints written over it, one over the other: the
/// image of the last (the tip) is the base's, with each link's changed pages replaced in order.
///
/// Resolving a chain starts at the tip and follows each link's parent by identity (never by
/// name alone): among the files given as `links`, then (with `.nextToLinks`) the file the link
/// names in its own directory, then any checkpoint in that directory. A parent that is missing,
/// or whose file is not the one the link was written over (modified, replaced), is an error
/// that says so, before anything is restored. A chain has at most `maximumLength` links and
/// never loops.
///
/// Restoring writes every page once, from the last link that holds it, with one work queue over
/// the frames of every link (as parallel as one file), and commits only after every frame of
/// every link verified.
///
/// Ownership: holds its files open. Thread safety: immutable; `verify`, `restore` and `squash`
/// may run from any thread.
public final class CheckpointChain: @unchecked Sendable {
    /// The links, base (a full checkpoint) first, tip last.
    public let links: [CheckpointFile]
    public var tip: CheckpointFile { links[links.count - 1] }
    public var base: CheckpointFile { links[0] }
    /// The size of the tip's image, which the chain restores.
    public var imageSize: Int { tip.imageSize }
    /// The tip, as the parent of a further incremental checkpoint.
    public var parentReference: CheckpointParent { CheckpointParent(tip) }

    /// The most links a chain may have (a full checkpoint and 63 incremental ones over it):
    /// restoring reads every link, so a longer chain should be squashed (`squash`).
    public static let maximumLength = 64

    /// Where parents are looked for besides the files given.
    public enum Search: Sendable {
        /// In the directory of the link that names them: the named file, then any checkpoint there.
        case nextToLinks
        /// Only among the files given.
        case givenLinksOnly
    }

    /// Resolves the chain that ends at the checkpoint file `tip` (which may be a full
    /// checkpoint: a chain of one link).
    /// - Throws: as `CheckpointFile.init(path:)` for the tip and every path in `links`;
    ///   `.invalidArgument` when a parent is missing or is not the file a link was written over
    ///   (the message names both and their identities), or the chain is longer than
    ///   `maximumLength`; `.corrupt` when it loops, or a link records its parent's image size
    ///   wrongly.
    public convenience init(tip: String, links: [String] = [], search: Search = .nextToLinks) throws(MemSnapError) {
        let tipFile = try CheckpointFile(path: tip)
        var given: [CheckpointFile] = []
        for path in links { given.append(try CheckpointFile(path: path)) }
        try self.init(tip: tipFile, links: given, search: search)
    }

    /// Resolves the chain that ends at `tip`, with already opened files.
    /// - Throws: as `init(tip:links:search:)`.
    public init(tip: CheckpointFile, links given: [CheckpointFile] = [], search: Search = .nextToLinks) throws(MemSnapError) {
        var finder = ParentFinder(given: given, search: search)
        links = try resolveChain(tip: tip, maximumLength: CheckpointChain.maximumLength,
                                 during: "resolve the checkpoint chain of \(tip.path)") { (child) throws(MemSnapError) in
            try finder.parent(of: child)
        }
    }

    /// The pages each link writes: those of its image (its changed pages, or all of a full
    /// base) that no later link replaces, within the tip's image.
    func ownedPages() -> [PageRuns] {
        let pages = CheckpointFormat.pageCount(imageSize)
        var owned = [PageRuns](repeating: PageRuns(), count: links.count)
        var later = PageRuns()
        for index in links.indices.reversed() {
            let link = links[index]
            let declared = link.isIncremental ? link.map.changedRuns.clipped(to: pages) : PageRuns.all(pages)
            owned[index] = declared.subtracting(later)
            later = later.union(declared)
        }
        return owned
    }

    private func restoreLinks(owning: Bool) -> [RestoreLink] {
        guard links.count > 1 else { return [RestoreLink(tip, owned: nil)] }  // exactly a single file's restore
        let owned = ownedPages()
        return links.indices.map { RestoreLink(links[$0], owned: owning ? owned[$0] : nil, placePrefix: "\(links[$0].path): ") }
    }

    /// Verifies every frame of every link (see `CheckpointFile.verify`).
    /// - Throws: as `CheckpointFile.verify`; the first failure by link (base first), then frame.
    public func verify(threads: Int = 2) throws(MemSnapError) {
        try ChainRestore.run(restoreLinks(owning: false), imageSize: imageSize, target: nil, threads: threads, progress: nil,
                             operation: "verify checkpoint chain of \(tip.path)")
    }

    /// Restores the tip's image into `target` with `threads` threads and commits it; nothing is
    /// committed unless every frame of every link verified; on error the target is discarded.
    /// - Throws: as `CheckpointFile.restore`.
    public func restore(
        into target: CheckpointRestoreTarget, threads: Int = 2, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) {
        let operation = links.count > 1 ? "restore checkpoint chain of \(tip.path)" : "restore checkpoint \(tip.path)"
        do throws(MemSnapError) {
            guard (1...256).contains(threads) else {
                throw MemSnapError(operation, .invalidArgument("thread count \(threads) must be 1...256"))
            }
            try target.prepare(imageSize: imageSize)
            try ChainRestore.run(restoreLinks(owning: true), imageSize: imageSize, target: target, threads: threads,
                                 progress: progress, operation: operation)
            try target.commit(imageSize: imageSize)
        } catch {
            target.discard()
            throw error
        }
    }

    /// Writes the chain's image as one full checkpoint (with the tip's arena state, if any) to
    /// `destination`: the same bytes as a full checkpoint of that image written with `options`.
    /// The image is restored into memory (a memfd of its size) first.
    /// - Throws: as `restore`, then as `Checkpoint.write(image:to:options:arenaState:progress:)`.
    @discardableResult
    public func squash(
        to destination: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let target = try MemoryImageTarget(name: "memsnap-squash")
        try restore(into: target, threads: options.threads)
        let image = try Snapshot(adopting: target.file, size: imageSize)
        let state = tip.arenaState
        return try image.withUnsafeBytes { (bytes) throws(MemSnapError) -> CheckpointSummary in
            try Checkpoint.write(image: bytes, to: destination, options: options, arenaState: state, progress: progress)
        }
    }

    /// The hash of every page of the tip's image, from the links' stored page hashes; nil when a
    /// link stores none (a version-1 file, or one written without them).
    /// - Throws: read failures; `.corrupt` if a file changed since it was opened.
    func pageHashes() throws(MemSnapError) -> ChainPageHashes? {
        guard links.allSatisfy(\.hasPageHashes) else { return nil }
        var stored: [ChainPageHashes.Link] = []
        for link in links.reversed() {
            stored.append(ChainPageHashes.Link(changed: link.isIncremental ? link.map.changedRuns : nil, hashRuns: link.map.hashRuns.runs,
                                               hashes: try link.pageHashes()))
        }
        return ChainPageHashes(tipFirst: stored, imageSize: imageSize)
    }
}

/// The page hashes of a chain's image, looked up page by page: a page's hash is the one stored by
/// the last link that holds the page (the tip first; the base holds every page), or the hash of
/// a zero page when that link stores none for it. Memory is what the links store (no table of
/// the image's size, which a damaged footer could make any size).
///
/// Thread safety: immutable; `hash(of:)` may be called from any thread.
final class ChainPageHashes: @unchecked Sendable {
    struct Link {
        /// An incremental link's changed pages; nil for the base.
        let changed: PageRuns?
        let hashRuns: [Range<Int>]
        /// For each hash run, the index in `hashes` of its first page.
        let firstSlots: [Int]
        let hashes: [UInt64]

        /// `hashes` holds one hash per page of `hashRuns`, in order (checked when read).
        init(changed: PageRuns?, hashRuns: [Range<Int>], hashes: [UInt64]) {
            self.changed = changed
            self.hashRuns = hashRuns
            var slot = 0
            firstSlots = hashRuns.map { run in
                defer { slot += run.count }
                return slot
            }
            self.hashes = hashes
        }

        func storedHash(of page: Int) -> UInt64? {
            var low = 0, high = hashRuns.count
            while low < high {
                let middle = (low + high) / 2
                if hashRuns[middle].upperBound <= page { low = middle + 1 } else { high = middle }
            }
            guard low < hashRuns.count, hashRuns[low].contains(page) else { return nil }
            let slot = firstSlots[low] + page - hashRuns[low].lowerBound
            return slot < hashes.count ? hashes[slot] : nil
        }
    }

    private let links: [Link]
    let imageSize: Int
    private let zeroPage: UInt64
    private let zeroLastPage: UInt64

    init(tipFirst links: [Link], imageSize: Int) {
        self.links = links
        self.imageSize = imageSize
        let zeros = [UInt8](repeating: 0, count: CheckpointFormat.pageSize)
        zeroPage = CheckpointFormat.xxh3(zeros)
        let last = CheckpointFormat.pageLength(max(0, CheckpointFormat.pageCount(imageSize) - 1), imageSize: imageSize)
        zeroLastPage = zeros.withUnsafeBytes { CheckpointFormat.xxh3(UnsafeRawBufferPointer(rebasing: $0[0..<last])) }
    }

    /// The hash of page `page` of the image (which must lie inside it).
    func hash(of page: Int) -> UInt64 {
        for link in links {
            if let changed = link.changed, !changed.contains(page) { continue }
            if let hash = link.storedHash(of: page) { return hash }
            break
        }
        return CheckpointFormat.pageLength(page, imageSize: imageSize) == CheckpointFormat.pageSize ? zeroPage : zeroLastPage
    }
}

/// What a chain needs to know of a link to resolve its parent.
protocol ChainLink {
    var path: String { get }
    var identity: CheckpointIdentity { get }
    var parent: CheckpointParent? { get }
    var imageSize: Int { get }
}

extension CheckpointFile: ChainLink {}

/// Follows parents from `tip` with `parent(of:)` (which returns the link whose identity the
/// child names, or throws), checking the length, loops and each parent's image size. Returns
/// the links base first.
func resolveChain<Link: ChainLink>(
    tip: Link, maximumLength: Int, during operation: String, parent: (Link) throws(MemSnapError) -> Link
) throws(MemSnapError) -> [Link] {
    var chain = [tip]
    var seen: Set<CheckpointIdentity> = [tip.identity]
    var current = tip
    while let reference = current.parent {
        guard chain.count < maximumLength else {
            throw MemSnapError(operation, .invalidArgument(
                "the chain has more than \(maximumLength) links (\(chain.count) found from the tip, and \(current.path) has a "
                + "parent still): squash part of it (memsnap squash, CheckpointChain.squash) and write over the squashed file"))
        }
        guard !seen.contains(reference.identity) else {
            throw corrupt(operation, "\(current.path) names as its parent \(reference.identity), which is already in the chain: "
                          + "the chain loops")
        }
        let next = try parent(current)
        guard next.identity == reference.identity else {
            throw MemSnapError(operation, .invalidArgument(
                "\(current.path) was written over identity \(reference.identity), not \(next.path) (identity \(next.identity))"))
        }
        guard next.imageSize == reference.imageSize else {
            throw corrupt(operation, "\(current.path) records its parent's image as \(reference.imageSize) bytes, "
                          + "but its parent \(next.path) holds \(next.imageSize)")
        }
        seen.insert(next.identity)
        chain.append(next)
        current = next
    }
    return chain.reversed()
}

/// Finds a link's parent among the files given, next to the link (by its stored name, then by
/// identity among the checkpoints in its directory), remembering what it opened.
private struct ParentFinder {
    var known: [CheckpointIdentity: CheckpointFile] = [:]
    let search: CheckpointChain.Search
    /// Directories already scanned.
    var scanned: Set<String> = []
    /// The most directory entries looked at per directory.
    static let scanLimit = 10_000

    init(given: [CheckpointFile], search: CheckpointChain.Search) {
        for file in given { known[file.identity] = file }
        self.search = search
    }

    mutating func parent(of child: CheckpointFile) throws(MemSnapError) -> CheckpointFile {
        let operation = "resolve the parent of checkpoint \(child.path)"
        guard let reference = child.parent else { throw MemSnapError(operation, .invalidArgument("it has no parent")) }
        if let file = known[reference.identity] { return file }
        let described = "\(reference.name) (identity \(reference.identity), image \(reference.imageSize) bytes)"
        guard search == .nextToLinks else {
            throw MemSnapError(operation, .invalidArgument(
                "it was written over \(described), which is not among the checkpoints given"))
        }
        let directory = child.path.lastIndex(of: "/").map { String(child.path[...$0]) } ?? ""
        let named = directory + reference.name
        var impostor: CheckpointFile?
        var unreadable: MemSnapError?
        do {
            let file = try CheckpointFile(path: named)
            if file.identity == reference.identity { return file }
            impostor = file
            known[file.identity] = file
        } catch {
            if error.errno != .noSuchFileOrDirectory { unreadable = error }
        }
        scan(directory.isEmpty ? "." : directory)
        if let file = known[reference.identity] { return file }
        if let impostor {
            throw MemSnapError(operation, .invalidArgument(
                "it was written over \(described), but \(named) is a different checkpoint (identity \(impostor.identity), "
                + "image \(impostor.imageSize) bytes): it was modified or replaced, and no checkpoint next to it is the parent"))
        }
        if let unreadable {
            throw MemSnapError(operation, .invalidArgument(
                "it was written over \(described), but \(named) cannot be read as a checkpoint (\(unreadable)), "
                + "and no checkpoint next to it is the parent"))
        }
        throw MemSnapError(operation, .invalidArgument(
            "it was written over \(described), which is neither next to it (in \(directory.isEmpty ? "." : directory)) "
            + "nor among the checkpoints given"))
    }

    /// Opens every regular file of `directory` that reads as a checkpoint (names starting with a
    /// dot, such as temporary files, are skipped).
    private mutating func scan(_ directory: String) {
        guard scanned.insert(directory).inserted,
              let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names.sorted().prefix(ParentFinder.scanLimit) where !name.hasPrefix(".") {
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            var status = stat()
            guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG,
                  Int(status.st_size) >= CheckpointFormat.headerSize + 8 + CheckpointFormat.footerSize,
                  let file = try? CheckpointFile(path: path), known[file.identity] == nil else { continue }
            known[file.identity] = file
        }
    }
}
