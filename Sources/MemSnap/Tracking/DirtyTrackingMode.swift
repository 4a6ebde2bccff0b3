#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// How a `DirtyTracker` finds written pages.
///
/// Chosen by `DirtyTracker.Configuration.mode`, else by the environment variable
/// `MEMSNAP_DIRTY_TRACKING` (the raw values below), else `auto`.
///
/// | mode | mechanism | first-write cost here | read() into tracked memory |
/// |---|---|---|---|
/// | `uffd-async` | userfaultfd `WP_ASYNC` + `PAGEMAP_SCAN` | ~1 µs, in the kernel | recorded |
/// | `segfault` | `mprotect` + a C SIGSEGV handler | ~5-8 µs | fails with EFAULT, not recorded |
/// | `uffd` | synchronous userfaultfd write-protect, handler thread | ~50 µs | fails with EFAULT, not recorded |
/// | `soft-dirty` | `clear_refs` + pagemap bit 55 (process-wide) | one minor fault | recorded |
/// | `compare` | a saved copy, compared page by page | none (collect reads everything) | recorded (if the bytes changed) |
/// | `private-copies` | `PAGEMAP_SCAN` for the pages the region copied (no protection at all) | none beyond the copy-on-write fault | recorded |
/// | `none` | reports every page | none | n/a |
///
/// `private-copies` is the one mode whose reset does not forget (see
/// `resetForgetsEarlierWrites`): it is made for `SnapshotWorkers`, which restores every memory
/// after each collect, and `auto` never chooses it.
public enum DirtyTrackingMode: String, CaseIterable, Sendable, CustomStringConvertible {
    /// The first mode of `DirtyTrackingMode.preferenceOrder` that works on this system.
    case auto
    case uffdAsync = "uffd-async"
    case segfault
    case uffd
    case softDirty = "soft-dirty"
    case compare
    /// The pages the region holds its own copies of: anonymous pages, present or swapped out,
    /// other than the shared zero page (one `PAGEMAP_SCAN`, Linux 6.7). In a private mapping of
    /// a file these are exactly the pages written since it was mapped or last restored in place;
    /// in anonymous memory, the pages written since they were committed. Writes cost nothing
    /// beyond their copy-on-write fault (no protection, no marker, no TLB shootdown to re-arm),
    /// but a reset cannot forget a page already copied (its copy holds the data), so collects
    /// are cumulative until the region is restored in place or remapped. Shared mappings are
    /// refused (their writes make no copy). `MEMSNAP_DIRTY_TRACKING=private-copies` makes every
    /// tracker of the process cumulative, not only pools'; it never misses a write, but
    /// trackers that are never restored then report more and more pages.
    case privateCopies = "private-copies"
    case none

    public var description: String { rawValue }

    /// The environment variable that chooses the default mode.
    public static let environmentVariable = "MEMSNAP_DIRTY_TRACKING"

    /// The order `auto` tries modes in: cheapest per write first; `none` is never chosen by `auto`.
    public static let preferenceOrder: [DirtyTrackingMode] = [.uffdAsync, .segfault, .uffd, .softDirty, .compare]

    /// The mode named by `MEMSNAP_DIRTY_TRACKING`, or `auto` when it is unset or empty.
    /// - Throws: `.invalidArgument` naming the accepted values when it holds anything else.
    public static func fromEnvironment() throws(MemSnapError) -> DirtyTrackingMode {
        try DirtyTrackingMode(parsing: getenv(environmentVariable).map { String(cString: $0) })
    }

    /// The mode named by a value of `MEMSNAP_DIRTY_TRACKING`: nil or empty mean `auto`.
    /// - Throws: `.invalidArgument` naming the accepted values for anything that is not a mode.
    public init(parsing text: String?) throws(MemSnapError) {
        guard let text, !text.isEmpty else {
            self = .auto
            return
        }
        guard let mode = DirtyTrackingMode(rawValue: text) else {
            throw MemSnapError("read \(DirtyTrackingMode.environmentVariable)", .invalidArgument(
                "\"\(text)\" is not a tracking mode; expected one of "
                + DirtyTrackingMode.allCases.map(\.rawValue).joined(separator: ", ")))
        }
        self = mode
    }

    /// Whether `DirtyTracker.reset()` and `collectAndReset()` forget the writes reported so far.
    /// False for `private-copies` only: it reports every page the region holds a copy of until
    /// the region is restored in place (`SnapshotWorkers` does after each round) or remapped.
    public var resetForgetsEarlierWrites: Bool { self != .privateCopies }

    /// Whether each attributes a write to the thread that made it (for thread-local collects).
    public var attributesWritesToThreads: Bool { self == .segfault || self == .uffd }

    /// Whether the mode works on this system, probed once per process (each probe maps, writes
    /// and tracks a scratch page, so "works" means it was seen working).
    public var availability: Availability {
        switch self {
        case .auto: return DirtyTrackingMode.resolvedAuto.map { _ in .available } ?? .unavailable(
            "no tracking mode works here")
        case .uffdAsync: return Probes.asyncWriteProtect
        case .segfault: return Probes.segfault
        case .uffd: return Probes.syncWriteProtect
        case .softDirty: return Probes.softDirty
        case .privateCopies: return Probes.privateCopies
        case .compare, .none: return .available
        }
    }

    /// The concrete mode `self` stands for here.
    /// - Throws: `.unavailable` with the probe's reason if the mode does not work on this system.
    public func resolved() throws(MemSnapError) -> DirtyTrackingMode {
        if self == .auto {
            guard let mode = DirtyTrackingMode.resolvedAuto else {
                throw MemSnapError("choose a dirty tracking mode", .unavailable("no tracking mode works here"))
            }
            return mode
        }
        if case let .unavailable(reason) = availability {
            throw MemSnapError("start \(rawValue) dirty tracking", .unavailable(reason))
        }
        return self
    }

    private static let resolvedAuto: DirtyTrackingMode? = preferenceOrder.first { $0.availability == .available }

    public enum Availability: Sendable, Equatable, CustomStringConvertible {
        case available
        case unavailable(String)

        public var description: String {
            switch self {
            case .available: return "works"
            case let .unavailable(reason): return reason
            }
        }
    }
}

/// Run-time probes, each run once per process on first use.
enum Probes {
    static let asyncWriteProtect: DirtyTrackingMode.Availability = {
        switch Userfaultfd.availableFeatures() {
        case let .failure(error):
            return .unavailable(error.reason.description)
        case let .success(features):
            guard features & MEMSNAP_UFFD_FEATURE_WP_ASYNC != 0 else {
                return .unavailable("the kernel lacks UFFD_FEATURE_WP_ASYNC (Linux 6.7, x86_64 or arm64 6.10+)")
            }
        }
        return functionalProbe(.uffdAsync)
    }()

    static let syncWriteProtect: DirtyTrackingMode.Availability = {
        switch Userfaultfd.availableFeatures() {
        case let .failure(error):
            return .unavailable(error.reason.description)
        case let .success(features):
            guard features & MEMSNAP_UFFD_FEATURE_WP_UNPOPULATED != 0 else {
                return .unavailable("the kernel lacks UFFD_FEATURE_WP_UNPOPULATED (Linux 6.4): "
                    + "first writes to untouched pages would be missed")
            }
        }
        return functionalProbe(.uffd)
    }()

    static let segfault: DirtyTrackingMode.Availability = {
        let status = memsnap_segv_install()
        guard status == 0 else {
            return .unavailable("sigaction(SIGSEGV) failed: \(Errno(rawValue: status).symbolicDescription)")
        }
        return functionalProbe(.segfault)
    }()

    /// PAGEMAP_SCAN (Linux 6.7) tells anonymous copies from the file's pages; older kernels
    /// fail the ioctl with ENOTTY or EINVAL, which the probe reports. The probe maps a memfd
    /// copy-on-write, reads one page and writes another: only the written one may be reported
    /// (the mode relies on a read mapping the file's page, not a copy).
    static let privateCopies: DirtyTrackingMode.Availability = {
        if case let .unavailable(reason) = functionalProbe(.privateCopies) { return .unavailable(reason) }
        do throws(MemSnapError) {
            let region = try VirtualRegion(maxSize: 4 * Page.size)
            let file = try MemoryFile(name: "memsnap-probe", size: 4 * Page.size)
            try file.map(into: region, length: 4 * Page.size, sharing: .copyOnWrite)
            let tracker = try DirtyTracker(tracking: region, mode: .privateCopies, probing: true)
            defer { tracker.stop() }
            let read = region.withUnsafeBytes { $0.load(fromByteOffset: Page.size, as: UInt64.self) }
            region.store(read &+ 7, at: 2 * Page.size)
            let written = try tracker.collect()
            guard written.runs == [2..<3] else {
                return .unavailable("probe read page 1 and wrote page 2 of a copy-on-write mapping "
                    + "but private-copies reported \(written.pages)")
            }
            return .available
        } catch {
            return .unavailable(error.reason.description)
        }
    }()

    /// Soft-dirty needs CONFIG_MEM_SOFT_DIRTY. Kernels without it still accept the clear_refs
    /// write, so only a written page showing bit 55 proves it works.
    static let softDirty: DirtyTrackingMode.Availability = {
        do throws(MemSnapError) {
            let region = try VirtualRegion(maxSize: Page.size, committing: Page.size)
            region.store(1, at: 0)
            try SoftDirtyMechanism.clearSoftDirtyBits(during: "probe soft-dirty")
            region.store(2, at: 0)
            let dirty = try SoftDirtyMechanism.softDirtyPages(
                of: region, pageCount: 1, during: "probe soft-dirty")
            guard dirty == [0..<1] else {
                return .unavailable("a written page never showed pagemap bit 55 after clear_refs; "
                    + "the kernel is built without CONFIG_MEM_SOFT_DIRTY (or the architecture lacks it)")
            }
            return .available
        } catch {
            return .unavailable(error.reason.description)
        }
    }()

    /// Tracks a 4-page scratch region with `mode`, writes page 2 and expects exactly {2}.
    static func functionalProbe(_ mode: DirtyTrackingMode) -> DirtyTrackingMode.Availability {
        do throws(MemSnapError) {
            let region = try VirtualRegion(maxSize: 4 * Page.size, committing: 4 * Page.size)
            let tracker = try DirtyTracker(tracking: region, mode: mode, probing: true)
            defer { tracker.stop() }
            region.store(7, at: 2 * Page.size)
            let written = try tracker.collectAndReset()
            guard written.runs == [2..<3] else {
                return .unavailable("probe wrote page 2 of 4 but \(mode.rawValue) reported \(written.pages)")
            }
            return .available
        } catch {
            return .unavailable(error.reason.description)
        }
    }
}

extension VirtualRegion {
    func store(_ value: UInt64, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value, toByteOffset: offset, as: UInt64.self) }
    }
}
