import MemSnap
import SystemPackage

/// Checkpoints of one image (tag 0): full ones, and incremental ones that hold only the pages
/// that changed since a parent (format version 2, docs/FORMAT.md).
///
/// An incremental checkpoint names its parent by identity and holds every page that differs
/// from it (a page is replaced whole: zeros where the new page is zero). Restore it with its
/// chain (`CheckpointChain`, or `Checkpoint.restore(contentsOfFileAt:into:)`, which resolves
/// it). Where the changed pages come from:
/// - `changedPages:` / `dirtyPages:` / a snapshot's `changedRanges:`: from the caller (a
///   `DirtyTracker`, `Snapshot.takeChangedRanges()`); nothing else of the image is read. Pages
///   the caller leaves out must equal the parent's: a write the caller missed would restore the
///   parent's bytes there.
/// - `comparingWith:`: from comparing every page with the chain's image, by the page hashes its
///   links store (or byte for byte, see `ParentComparison`).
/// When the image's size differs from the parent's, the pages from the smaller size (rounded
/// down to a page) to the image's end are written as well, whatever the caller says.
extension Checkpoint {
    /// Checkpoints the image `image` (tag 0) in full, with a hash of every nonzero page (unless
    /// `options.pageHashes` is false) and, for an arena, its state.
    /// - Throws: `.invalidArgument` for bad options, an existing output without `force`, or an
    ///   arena state that cannot hold the image; system call failures (nothing is left behind).
    @discardableResult
    public static func write(
        image: UnsafeRawBufferPointer, to destination: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        arenaState: CheckpointArenaState? = nil, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write checkpoint of a \(ByteCount(image.count)) image to \(destination)"
        try options.validate(during: operation)
        let writer = try CheckpointWriter(
            options: options, output: destination.open(), totalBytes: image.count, operation: operation, progress: progress,
            image: ImageDescription(arenaState: arenaState, pageHashes: options.pageHashes, imageSize: image.count))
        try writer.add(CheckpointExtent(offset: 0, bytes: image))
        return try writer.finish()
    }

    /// Checkpoints the pages `changedPages` of `image` (4096-byte page numbers, in any order,
    /// overlapping or not; pages past the image are ignored) as an incremental checkpoint over
    /// `parent`. Reads only those pages (and those of a size change).
    /// - Throws: `.invalidArgument` for bad options, a parent whose name cannot be stored, an
    ///   existing output without `force`, or format version 1; system call failures (nothing is
    ///   left behind).
    @discardableResult
    public static func write(
        image: UnsafeRawBufferPointer, changedPages: [Range<Int>], over parent: CheckpointParent,
        to destination: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        arenaState: CheckpointArenaState? = nil, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write incremental checkpoint of a \(ByteCount(image.count)) image over \(parent.name) to \(destination)"
        try options.validate(during: operation)
        let pages = CheckpointFormat.pageCount(image.count)
        var runs = PageRuns(coalescing: changedPages.map { $0.clamped(to: 0..<pages) })
        if image.count != parent.imageSize {
            let first = min(image.count, max(0, parent.imageSize)) / CheckpointFormat.pageSize
            if first < pages { runs = runs.union(PageRuns(sorted: [first..<pages])) }
        }
        let writer = try CheckpointWriter(
            options: options, output: destination.open(), totalBytes: runs.pageCount * CheckpointFormat.pageSize,
            operation: operation, progress: progress,
            image: ImageDescription(parent: parent, arenaState: arenaState, pageHashes: options.pageHashes, imageSize: image.count))
        for run in runs.runs {
            let start = CheckpointFormat.byteOffset(ofPage: run.lowerBound)  // pages are within the image
            let end = min(image.count, CheckpointFormat.byteOffset(ofPage: run.upperBound))
            try writer.add(CheckpointExtent(offset: UInt64(start), bytes: UnsafeRawBufferPointer(rebasing: image[start..<end])))
        }
        return try writer.finish()
    }

    /// `write(image:changedPages:over:...)` with the pages a `DirtyTracker` collected from the
    /// region holding `image` (its first `image.count` bytes).
    @discardableResult
    public static func write(
        image: UnsafeRawBufferPointer, dirtyPages: DirtyPages, over parent: CheckpointParent,
        to destination: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        arenaState: CheckpointArenaState? = nil, progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let pages = dirtyPages.byteRanges.map { range in
            range.lowerBound / CheckpointFormat.pageSize..<CheckpointFormat.pageCount(range.upperBound)
        }
        return try write(image: image, changedPages: pages, over: parent, to: destination, options: options,
                         arenaState: arenaState, progress: progress)
    }

    /// `write(image:changedPages:over:...)` of a snapshot, with the byte ranges written since
    /// the parent (from `takeChangedRanges()`; any byte of a page makes it changed), holding its
    /// read lock throughout.
    @discardableResult
    public static func write(
        _ snapshot: Snapshot, changedRanges: [Range<Int>], over parent: CheckpointParent,
        to destination: CheckpointOutputDestination, options: CheckpointOptions = CheckpointOptions(),
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let pages = changedRanges.filter { !$0.isEmpty && $0.upperBound > 0 }.map { range in
            max(0, range.lowerBound) / CheckpointFormat.pageSize..<CheckpointFormat.pageCount(range.upperBound)
        }
        return try snapshot.withUnsafeBytes { (image) throws(MemSnapError) -> CheckpointSummary in
            try write(image: image, changedPages: pages, over: parent, to: destination, options: options, progress: progress)
        }
    }

    /// Checkpoints the pages of `image` that differ from the image of `chain` as an incremental
    /// checkpoint over its tip (see `ParentComparison`: by page hashes when every link has them,
    /// else by restoring the chain into memory). Every page of the image is read.
    /// - Throws: as `write(image:changedPages:over:...)`; as `CheckpointChain.restore` when the
    ///   chain has to be restored.
    @discardableResult
    public static func write(
        image: UnsafeRawBufferPointer, comparingWith chain: CheckpointChain, to destination: CheckpointOutputDestination,
        options: CheckpointOptions = CheckpointOptions(), arenaState: CheckpointArenaState? = nil,
        progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write incremental checkpoint of a \(ByteCount(image.count)) image over \(chain.tip.path) to \(destination)"
        try options.validate(during: operation)
        let comparison = try ParentComparison(chain: chain, threads: options.threads)
        let writer = try CheckpointWriter(
            options: options, output: destination.open(), totalBytes: image.count, operation: operation, progress: progress,
            image: ImageDescription(parent: comparison.parent, arenaState: arenaState, pageHashes: options.pageHashes,
                                    imageSize: image.count))
        let window = 64 << 20
        var offset = 0
        while offset < image.count {
            let end = min(image.count, offset + window)
            try comparison.addChangedPages(of: UnsafeRawBufferPointer(rebasing: image[offset..<end]), at: offset, to: writer,
                                           threads: options.threads)
            offset = end
        }
        return try writer.finish()
    }

    /// Checkpoints whatever `path` names (as `write(contentsOfFileAt:to:options:progress:)`:
    /// a regular file with pread, anything else as a stream, in bounded memory) as an
    /// incremental checkpoint over the tip of `chain`, holding the pages that differ from its
    /// image (see `write(image:comparingWith:...)`).
    /// - Throws: as `write(contentsOfFileAt:to:options:progress:)` and `write(image:comparingWith:...)`.
    @discardableResult
    public static func write(
        contentsOfFileAt path: String, comparingWith chain: CheckpointChain, to output: CheckpointOutputDestination,
        options: CheckpointOptions = CheckpointOptions(), progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write incremental checkpoint of \(path) over \(chain.tip.path) to \(output)"
        try options.validate(during: operation)
        let comparison = try ParentComparison(chain: chain, threads: options.threads)
        let input = try InputFile(path: path, blocking: true, during: operation)
        return try write(windowsOf: input.isRegular ? .regularFile(input) : .stream(input.descriptor), to: output,
                         options: options, comparingWith: comparison, operation: operation, progress: progress)
    }

    /// `write(contentsOfFileAt:comparingWith:to:options:progress:)` of a raw image read from
    /// `input` (a pipe or any readable descriptor, from its position to its end; not closed).
    /// - Throws: as `write(readingFrom:to:options:progress:)` and `write(image:comparingWith:...)`.
    @discardableResult
    public static func write(
        readingFrom input: FileDescriptor, comparingWith chain: CheckpointChain, to output: CheckpointOutputDestination,
        options: CheckpointOptions = CheckpointOptions(), progress: (@Sendable (CheckpointProgress) -> Void)? = nil
    ) throws(MemSnapError) -> CheckpointSummary {
        let operation = "write incremental checkpoint of descriptor \(input.rawValue) over \(chain.tip.path) to \(output)"
        try options.validate(during: operation)
        let comparison = try ParentComparison(chain: chain, threads: options.threads)
        return try write(windowsOf: .stream(input), to: output, options: options, comparingWith: comparison, operation: operation,
                         progress: progress)
    }
}
