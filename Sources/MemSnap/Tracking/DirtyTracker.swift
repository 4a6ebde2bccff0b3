import CMemSnap

/// Finds the pages of a `VirtualRegion` written since a point in time.
///
/// A tracker watches one region from creation until `stop()` (or deinit), with the mechanism
/// chosen by `DirtyTrackingMode` (see there for what each costs and cannot see). Creating it arms
/// tracking: from then on, `collect()` reports pages written since the last reset, and
/// `collectAndReset()` does that and starts a new interval in one step.
///
/// Guarantees, for every mode:
/// - Every write is reported by the collect-and-reset that follows it or by a later one; none is
///   lost between collect and reset (for `uffd-async`, `segfault` and `uffd` also while other
///   threads keep writing; `compare` and `soft-dirty` need writers paused around the call).
/// - Growth is tracked: pages the region commits while tracked are armed as they are committed;
///   pages the owner of an adopted region committed are armed when `followOwnerGrowth(to:)`
///   reports them, and those possibly written before that are reported too.
/// - Regions are independent: each tracker has its own mechanism state (a second tracker on the
///   same region is refused), except `soft-dirty`, whose reset is process-wide.
/// - When the region is remapped or decommitted (`Snapshot.mapCopyOnWrite(into:)` onto it,
///   `decommit`, `MemoryFile.map`), the next collect throws until `reset()` re-arms tracking of
///   the new mappings.
///
/// Thread-local tracking (modes where `attributesWritesToThreads`): a thread that calls
/// `startThreadLocalTracking()` can collect the pages it wrote first with `collectThreadLocal()`.
/// A page written by several threads is attributed to the first one (after its first write the
/// page no longer faults); the global collect is always the exact union.
///
/// After `fork()`, in the child (`ForkedChildTrackingTests`): a `private-copies` tracker collects
/// the child's own copies (a scan from another process than the one that opened
/// `/proc/self/pagemap` opens the child's). The kernel does not pass userfaultfd registrations to
/// a child, while the inherited descriptor still acts on the parent's memory: a `uffd-async`
/// collect or reset throws there, and stopping a `uffd-async` or `uffd` tracker in the child
/// leaves the parent's registration and fault handler alone. `segfault` and `compare` trackers
/// keep working in the child on the child's memory: their state (the page record with the
/// inherited SIGSEGV handler and protections; the saved copy) is process memory, copied by the
/// fork, so each process collects only its own writes. `soft-dirty` opens `/proc/self` files on
/// every call (it is unavailable on this kernel, so not tested across fork). Fork from a thread
/// while no other thread is inside a tracker call: a lock held at the fork stays held in the
/// child.
///
/// Ownership: the tracker keeps its region alive and releases its kernel resources (userfaultfd,
/// handler thread, signal-handler slot, saved copy) in `stop()`, which deinit calls.
/// Thread safety: every method may be called from any thread; calls are serialised.
public final class DirtyTracker: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The mechanism; nil means `MEMSNAP_DIRTY_TRACKING` or, when unset, `auto`.
        public var mode: DirtyTrackingMode?
        /// Above this fraction of written pages per interval, tracking plus copying the written
        /// pages costs more than copying everything (measured here: about 25 %, see
        /// BENCHMARKS.md). `prefersFullCopy(_:)` compares against it.
        public var fullCopyFraction: Double
        /// How many threads can track thread-locally at once: 0...`maxThreadSlots` (each slot
        /// costs a few bytes up front and a page bitmap once a thread attaches).
        public var threadSlots: Int
        /// `uffd` mode only: called on the handler thread with a page's contents just before its
        /// first write in the interval lands. Must not write to the region or block on writers.
        public var copyBeforeWrite: (@Sendable (_ page: Int, _ contents: UnsafeRawBufferPointer) -> Void)?

        /// The most thread slots a tracker accepts.
        public static let maxThreadSlots = 65_536

        /// The mode asked for: `mode`, else `MEMSNAP_DIRTY_TRACKING`, else `auto` (not resolved).
        /// - Throws: `.invalidArgument` for a bad `MEMSNAP_DIRTY_TRACKING`.
        func requestedMode() throws(MemSnapError) -> DirtyTrackingMode {
            if let mode { return mode }
            return try DirtyTrackingMode.fromEnvironment()
        }

        /// Throws `.invalidArgument` for a `fullCopyFraction` outside 0...1 (or NaN) or a
        /// `threadSlots` outside 0...`maxThreadSlots`.
        func validate(during operation: String) throws(MemSnapError) {
            guard fullCopyFraction >= 0, fullCopyFraction <= 1 else {
                throw MemSnapError(operation, .invalidArgument("full-copy fraction \(fullCopyFraction) is not within 0...1"))
            }
            guard threadSlots >= 0, threadSlots <= Configuration.maxThreadSlots else {
                throw MemSnapError(operation, .invalidArgument(
                    "\(threadSlots) thread slots is not within 0...\(Configuration.maxThreadSlots)"))
            }
        }

        public init(
            mode: DirtyTrackingMode? = nil, fullCopyFraction: Double = 0.25, threadSlots: Int = 64,
            copyBeforeWrite: (@Sendable (_ page: Int, _ contents: UnsafeRawBufferPointer) -> Void)? = nil
        ) {
            self.mode = mode
            self.fullCopyFraction = fullCopyFraction
            self.threadSlots = threadSlots
            self.copyBeforeWrite = copyBeforeWrite
        }
    }

    /// The mechanism in use (never `auto`).
    public let mode: DirtyTrackingMode
    public let region: VirtualRegion
    public let configuration: Configuration
    private let mechanism: any DirtyTrackingMechanism
    /// Serialises every operation; guards `stopped`.
    private let operations = Locked(false)
    /// Set by the region (from the remapping thread) and cleared by reset. A leaf lock.
    private let mappingChanged = Locked(false)

    /// Starts tracking `region` with `mode`.
    public convenience init(tracking region: VirtualRegion, mode: DirtyTrackingMode) throws(MemSnapError) {
        try self.init(tracking: region, configuration: Configuration(mode: mode))
    }

    /// Starts tracking `region` as `configuration` says.
    ///
    /// - Throws: `.unavailable` with the reason if the mode does not work here (e.g. soft-dirty on
    ///   a kernel without CONFIG_MEM_SOFT_DIRTY); `.invalidArgument` for a bad
    ///   `MEMSNAP_DIRTY_TRACKING`, a configuration value out of range (see `Configuration`) or a
    ///   region that is already tracked; system call failures.
    public convenience init(tracking region: VirtualRegion, configuration: Configuration = Configuration()) throws(MemSnapError) {
        try configuration.validate(during: "start dirty tracking")
        try self.init(tracking: region, mode: configuration.requestedMode().resolved(), configuration: configuration,
                      probing: false)
    }

    /// The designated initializer; `probing` skips the availability check (the probes use it).
    init(
        tracking region: VirtualRegion, mode: DirtyTrackingMode, configuration: Configuration = Configuration(),
        probing: Bool
    ) throws(MemSnapError) {
        let operation = "start \(mode.rawValue) dirty tracking"
        try configuration.validate(during: operation)
        self.region = region
        self.configuration = configuration
        self.mode = mode
        switch mode {
        case .uffdAsync: mechanism = try AsyncWriteProtectMechanism(region: region)
        case .segfault: mechanism = try SegfaultMechanism(region: region, threadSlots: configuration.threadSlots)
        case .uffd:
            mechanism = try SyncWriteProtectMechanism(
                region: region, threadSlots: configuration.threadSlots, copyBeforeWrite: configuration.copyBeforeWrite)
        case .softDirty: mechanism = try SoftDirtyMechanism(region: region)
        case .compare: mechanism = try CompareMechanism(region: region)
        case .privateCopies: mechanism = try PrivateCopyMechanism(region: region)
        case .none: mechanism = NoTrackingMechanism()
        case .auto: throw MemSnapError(operation, .invalidArgument("auto must be resolved to a mode first"))
        }
        let observer = MappingObserver(mechanism: mechanism, mappingChanged: mappingChanged)
        do {
            try region.attachTracker({ change in observer.mappingChanged(change) }, during: operation)
        } catch {
            region.withCommittedSizeLocked { mechanism.stop(pageCount: $0 >> Page.shift) }
            throw error
        }
        do {
            try region.withCommittedSizeLocked { (committed) throws(MemSnapError) in
                try mechanism.arm(pageCount: committed >> Page.shift, afterMappingChange: false)
            }
        } catch {
            region.detachTracker()
            region.withCommittedSizeLocked { mechanism.stop(pageCount: $0 >> Page.shift) }
            throw error
        }
    }

    deinit {
        stop()
    }

    /// Whether `startThreadLocalTracking()` can work with this tracker's mechanism.
    public var attributesWritesToThreads: Bool { mechanism.attributesWritesToThreads }

    // MARK: Collecting

    /// The pages written since tracking started or was last reset, without starting a new interval.
    /// - Throws: `.invalidArgument` after `stop()` or after the region was remapped (call
    ///   `reset()`); mechanism failures (e.g. the segfault handler hit the VMA limit).
    public func collect() throws(MemSnapError) -> DirtyPages {
        try collect(reset: false)
    }

    /// The pages written since the last reset, and a new interval started in the same step
    /// (`private-copies` cannot forget: its pages stay reported until the region is restored in
    /// place or remapped; see `DirtyTrackingMode.resetForgetsEarlierWrites`).
    /// - Throws: as `collect()`.
    public func collectAndReset() throws(MemSnapError) -> DirtyPages {
        try collect(reset: true)
    }

    private func collect(reset: Bool) throws(MemSnapError) -> DirtyPages {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) -> DirtyPages in
            let operation = "collect \(mode.rawValue) dirty pages"
            try throwIfUnusable(stopped: stopped, operation: operation)
            return try region.withCommittedSizeLocked { (committed) throws(MemSnapError) -> DirtyPages in
                let pageCount = committed >> Page.shift
                return DirtyPages(pageCount: pageCount, runs: try mechanism.collect(pageCount: pageCount, reset: reset))
            }
        }
    }

    /// The pages written within `pageRanges` (sorted, disjoint page ranges of the region) since
    /// they were last scanned, each range re-armed in the same step; pages outside them are
    /// neither reported nor reset. For a caller that knows by other means (its own write faults)
    /// which parts of the region can hold writes: a collect then costs the ranges, not the region.
    /// Ranges are clipped to the committed pages.
    /// - Throws: `.unavailable` unless the mode is `uffd-async` (the only one whose scan can be
    ///   limited to ranges); otherwise as `collect()`.
    package func collectAndReset(within pageRanges: [Range<Int>]) throws(MemSnapError) -> [Range<Int>] {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) -> [Range<Int>] in
            let operation = "collect \(mode.rawValue) dirty pages within \(pageRanges.count) ranges"
            try throwIfUnusable(stopped: stopped, operation: operation)
            guard let mechanism = mechanism as? AsyncWriteProtectMechanism else {
                throw MemSnapError(operation, .unavailable("only uffd-async tracking can scan part of a region"))
            }
            return try region.withCommittedSizeLocked { (committed) throws(MemSnapError) -> [Range<Int>] in
                try mechanism.collectAndReset(within: pageRanges, pageCount: committed >> Page.shift)
            }
        }
    }

    /// Starts a new interval: forgets the writes so far (except `private-copies`, see
    /// `collectAndReset()`). After the region was remapped this also re-arms tracking on its new
    /// mappings.
    /// - Throws: `.invalidArgument` after `stop()`; mechanism failures.
    public func reset() throws(MemSnapError) {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) in
            guard !stopped else {
                throw MemSnapError("reset \(mode.rawValue) dirty tracking", .invalidArgument("the tracker was stopped"))
            }
            let remapped = mappingChanged.withLock { changed in
                defer { changed = false }
                return changed
            }
            try region.withCommittedSizeLocked { (committed) throws(MemSnapError) in
                try mechanism.arm(pageCount: committed >> Page.shift, afterMappingChange: remapped)
            }
        }
    }

    /// Returns the region to the file it maps copy-on-write without remapping it, tracking
    /// still armed: drops the region's own copies of pages (`MADV_DONTNEED`), after which they
    /// read the file's current content, as every page the region never wrote already does.
    /// Costs what the region wrote, not its size: no remap, no re-arm of the whole region.
    ///
    /// The caller guarantees (as `SnapshotWorkers` and `WasmWorkers` do between rounds): the
    /// committed prefix is one private mapping of a file (`Snapshot.mapCopyOnWrite(into:)`),
    /// `written` is what the last `collectAndReset()` returned, and nothing has written the
    /// region since.
    /// `changedUnderneath` are byte ranges of the file written since then through other
    /// mappings (a merge into the snapshot): the region already shows them; `compare` needs
    /// them to refresh its saved copy.
    ///
    /// - Returns: false, having changed nothing, where it cannot restore in place: the tracker
    ///   was stopped or the region remapped since it was armed, the committed size is not
    ///   `written.pageCount` pages (it grew or shrank), or the mechanism cannot tell which pages
    ///   the region copied (`none`; `compare` without PAGEMAP_SCAN). Remap and `reset()` then.
    /// - Throws: `madvise` failures (some pages may be dropped; remap and `reset()` to recover).
    public func restoreInPlace(written: DirtyPages, changedUnderneath: [Range<Int>]) throws(MemSnapError) -> Bool {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) -> Bool in
            guard !stopped, !mappingChanged.withLock({ $0 }) else { return false }
            return try region.withCommittedSizeLocked { (committed) throws(MemSnapError) -> Bool in
                let pageCount = committed >> Page.shift
                guard pageCount == written.pageCount,
                      let dropped = mechanism.privatePages(reported: written.runs, pageCount: pageCount) else { return false }
                let operation = "restore \(mode.rawValue)-tracked region in place (\(dropped.count) page runs)"
                try region.dropPagesLocked(dropped, committedSize: committed, during: operation)
                // Only a mechanism that keeps a copy of the content needs them (thousands of
                // ranges after a merge of many workers).
                let changedPages = !mechanism.keepsCopyOfContent ? [] : changedUnderneath.map {
                    ($0.lowerBound >> Page.shift)..<(($0.upperBound + Page.size - 1) >> Page.shift)
                }
                try mechanism.restoredInPlace(dropped: dropped, changedUnderneath: changedPages, pageCount: pageCount)
                return true
            }
        }
    }

    /// Whether `restoreInPlace` needs the ranges of the file that changed underneath the region
    /// (`compare` keeps a copy of the content that they leave stale); for every other mode an
    /// in-place restore is complete without them.
    public var needsChangesUnderneath: Bool { mechanism.keepsCopyOfContent }

    /// Ends tracking: the region's committed pages are all writable and untracked afterwards.
    /// Idempotent.
    public func stop() {
        operations.withLock { (stopped: inout Bool) in
            guard !stopped else { return }
            stopped = true
            region.detachTracker()
            region.withCommittedSizeLocked { mechanism.stop(pageCount: $0 >> Page.shift) }
        }
    }

    /// Whether tracking has ended.
    public var isStopped: Bool { operations.withLock { $0 } }

    /// Whether `pages` is past `configuration.fullCopyFraction`: copying the whole region is
    /// then cheaper than handling the written pages one by one.
    public func prefersFullCopy(_ pages: DirtyPages) -> Bool {
        pages.fraction > configuration.fullCopyFraction
    }

    // MARK: Thread-local tracking

    /// Attributes the calling thread's first writes to it from now on.
    /// - Throws: `.unavailable` in modes that cannot attribute writes (`uffd-async`, `compare`,
    ///   `soft-dirty`, `none`); `.invalidArgument` when every thread slot is taken.
    public func startThreadLocalTracking() throws(MemSnapError) {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) in
            let operation = "start thread-local \(mode.rawValue) tracking"
            try throwIfUnusable(stopped: stopped, operation: operation)
            guard mechanism.attributesWritesToThreads else {
                throw MemSnapError(operation, .unavailable(
                    "\(mode.rawValue) cannot tell which thread wrote a page; use collect() or the segfault or uffd mode"))
            }
            try mechanism.attachThread(memsnap_gettid())
        }
    }

    /// The pages the calling thread wrote first since the latest of: it started thread-local
    /// tracking, it last collected with `reset`, or the tracker was reset (a global reset clears
    /// every thread's pages too). With `reset` (the default) they are forgotten afterwards; the
    /// pages stay writable, so the thread's further writes to them are not attributed again
    /// until the tracker is reset.
    /// - Throws: `.invalidArgument` if this thread did not start thread-local tracking.
    public func collectThreadLocal(reset: Bool = true) throws(MemSnapError) -> DirtyPages {
        try operations.withLock { (stopped: inout Bool) throws(MemSnapError) -> DirtyPages in
            let operation = "collect thread-local \(mode.rawValue) pages"
            try throwIfUnusable(stopped: stopped, operation: operation)
            return try region.withCommittedSizeLocked { (committed) throws(MemSnapError) -> DirtyPages in
                let pageCount = committed >> Page.shift
                return DirtyPages(pageCount: pageCount,
                                  runs: try mechanism.collectThread(memsnap_gettid(), pageCount: pageCount, reset: reset))
            }
        }
    }

    /// Stops attributing the calling thread's writes; its pages stay in the global collect.
    public func stopThreadLocalTracking() {
        operations.withLock { (stopped: inout Bool) in
            guard !stopped else { return }
            mechanism.detachThread(memsnap_gettid())
        }
    }

    private func throwIfUnusable(stopped: Bool, operation: String) throws(MemSnapError) {
        guard !stopped else { throw MemSnapError(operation, .invalidArgument("the tracker was stopped")) }
        guard !mappingChanged.withLock({ $0 }) else {
            throw MemSnapError(operation, .invalidArgument(
                "the region was remapped since tracking was armed; call reset() to track its new mappings"))
        }
    }
}

/// What the region calls, from the thread that grows or remaps it. Mechanisms'
/// `regionMappingChanged` only touch atomics, the kernel and leaf locks, which is what makes
/// crossing threads here safe.
private struct MappingObserver: @unchecked Sendable {
    let mechanism: any DirtyTrackingMechanism
    let mappingChanged: Locked<Bool>

    func mappingChanged(_ change: VirtualRegion.MappingChange) {
        switch change {
        case .committed, .committedByOwner: break  // armed by the mechanism as they come
        case .replaced, .released: mappingChanged.withLock { $0 = true }
        }
        mechanism.regionMappingChanged(change)
    }
}
