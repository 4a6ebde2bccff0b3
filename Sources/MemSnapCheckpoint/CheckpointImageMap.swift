import MemSnap

/// The parent an incremental checkpoint is written over: its identity (what is checked), its
/// image size (checked too), and its file name (only a hint for finding it next to the child).
public struct CheckpointParent: Sendable, Equatable {
    public var identity: CheckpointIdentity
    public var imageSize: Int
    /// A file name without a directory: 1 to 255 bytes of UTF-8, no `/` or NUL, not `.` or `..`.
    public var name: String

    public init(identity: CheckpointIdentity, imageSize: Int, name: String) {
        self.identity = identity
        self.imageSize = imageSize
        self.name = name
    }

    /// The file `file` as a parent (named by the last component of its path).
    public init(_ file: CheckpointFile) {
        self.init(identity: file.identity, imageSize: file.imageSize, name: CheckpointParent.fileName(of: file.path))
    }

    /// The file a writer just wrote to `path`, from its summary, without reading it back.
    public init(_ summary: CheckpointSummary, path: String) {
        self.init(identity: summary.identity, imageSize: summary.imageSize, name: CheckpointParent.fileName(of: path))
    }

    static func fileName(of path: String) -> String {
        String(path.split(separator: "/", omittingEmptySubsequences: true).last ?? Substring(path))
    }

    /// Why `name` cannot be stored as a parent's name, or nil if it can.
    static func nameProblem(_ name: String) -> String? {
        let bytes = name.utf8.count
        guard (1...CheckpointFormat.maxParentNameLength).contains(bytes) else {
            return "the parent's file name \"\(name)\" must have 1 to \(CheckpointFormat.maxParentNameLength) bytes"
        }
        guard !name.contains("/"), !name.utf8.contains(0), name != ".", name != ".." else {
            return "the parent's file name \"\(name)\" must be a plain file name (no '/', no NUL, not '.' or '..')"
        }
        return nil
    }
}

/// What a checkpoint of an arena records besides its heap: enough to create an arena that opens
/// with the same objects, roots, commit counter and epoch/event (see MemSnapArenaCheckpoint).
public struct CheckpointArenaState: Sendable, Equatable {
    /// The arena's heap capacity (the image is the heap up to the allocator's top).
    public var capacity: Int
    /// The address the heap was created at; a restored arena prefers it, so stored pointers
    /// stay valid when that range is free (`Arena.isAtRecordedBase`).
    public var recordedBase: UInt64
    /// The commit counter, epoch and event of the last completed sync the image holds.
    public var commit: UInt64
    public var epoch: UInt64
    public var event: UInt64
    /// The 32 roots of that sync.
    public var roots: [UInt64]

    public static let rootCount = 32

    public init(capacity: Int, recordedBase: UInt64, commit: UInt64, epoch: UInt64, event: UInt64, roots: [UInt64]) {
        self.capacity = capacity
        self.recordedBase = recordedBase
        self.commit = commit
        self.epoch = epoch
        self.event = event
        self.roots = roots
    }

    /// Why this state cannot describe an image of `imageSize` bytes, or nil if it can. The arena
    /// checks the rest (its capacity limits, the allocator's structures) when it is created.
    func problem(imageSize: Int) -> String? {
        guard roots.count == CheckpointArenaState.rootCount else { return "\(roots.count) roots, not \(CheckpointArenaState.rootCount)" }
        guard capacity >= imageSize, capacity % CheckpointFormat.pageSize == 0 else {
            return "capacity \(capacity) is not a multiple of \(CheckpointFormat.pageSize) holding the \(imageSize)-byte image"
        }
        guard recordedBase % UInt64(CheckpointFormat.pageSize) == 0 else { return "recorded base \(recordedBase) is not page-aligned" }
        guard commit < 1 << 63 else { return "commit \(commit) is 2^63 or more" }
        return nil
    }

    func encode(into writer: inout ByteWriter) {
        writer.u64(UInt64(capacity))
        writer.u64(recordedBase)
        writer.u64(commit)
        writer.u64(epoch)
        writer.u64(event)
        for root in roots { writer.u64(root) }
    }

    /// `bytes` holds exactly `CheckpointFormat.arenaStateSize` bytes.
    static func decode(_ bytes: UnsafeRawBufferPointer) -> CheckpointArenaState? {
        var reader = ByteReader(bytes)
        let capacity = reader.u64(), base = reader.u64(), commit = reader.u64(), epoch = reader.u64(), event = reader.u64()
        let roots = (0..<rootCount).map { _ in reader.u64() }
        guard !reader.overran, capacity <= UInt64(Int.max) else { return nil }
        return CheckpointArenaState(capacity: Int(capacity), recordedBase: base, commit: commit, epoch: epoch, event: event, roots: roots)
    }
}

/// The image map of a version-2 checkpoint (docs/FORMAT.md, "Image map"): which pages an
/// incremental file overrides, which pages it stores hashes for, its parent's image size and
/// name, and an arena's state. The page hashes themselves stay in the file (read on demand).
struct CheckpointImageMap: Equatable {
    var parentImageSize = 0
    var changedRuns = PageRuns()
    var hashRuns = PageRuns()
    var parentName = ""
    var arenaState: CheckpointArenaState?

    static let fixedSize = 48
    static var none: CheckpointImageMap { CheckpointImageMap() }

    /// Offset of the hashes from the start of the section.
    var hashesOffset: Int { CheckpointImageMap.fixedSize + 16 * (changedRuns.runs.count + hashRuns.runs.count) }

    /// The whole section, with `hashes` (one per page of `hashRuns`, in order) and its checksum.
    func encoded(hashes: [UInt64]) -> [UInt8] {
        var writer = ByteWriter()
        writer.u32(CheckpointFormat.mapMagic)
        writer.u32(0)
        writer.u64(UInt64(parentImageSize))
        writer.u64(UInt64(changedRuns.runs.count))
        writer.u64(UInt64(hashRuns.runs.count))
        writer.u64(UInt64(hashes.count))
        writer.u16(UInt16(truncatingIfNeeded: parentName.utf8.count))  // at most 255, checked by the writer
        writer.u16(0)
        writer.u32(0)
        for run in changedRuns.runs + hashRuns.runs {
            writer.u64(UInt64(run.lowerBound))
            writer.u64(UInt64(run.count))
        }
        writer.bytes.reserveCapacity(writer.bytes.count + hashes.count * 8 + parentName.utf8.count + CheckpointFormat.arenaStateSize + 8)
        for hash in hashes { writer.u64(hash) }
        writer.raw(parentName.utf8)
        arenaState?.encode(into: &writer)
        writer.checksum()
        return writer.bytes
    }
}

/// Reads an image map front to back, from a file or a stream, in the order its parts come:
/// `fixedPart`, `runs`, `hashes` (in pieces of any size), `tail`. Every count and length is
/// checked before anything is allocated for it; the checksum before any value is used;
/// `validate` checks what needs the image size (from the footer).
struct ImageMapDecoder {
    let flags: CheckpointFlags
    let place: String
    let operation: String
    private let checksum = XXH3Hasher()
    private var changedCount = 0
    private var hashRunCount = 0
    private(set) var hashCount = 0
    private var nameLength = 0
    private(set) var map = CheckpointImageMap()

    init(flags: CheckpointFlags, at offset: Int, during operation: String) {
        self.flags = flags
        self.place = "image map at \(at(offset))"
        self.operation = operation
    }

    var runsLength: Int { 16 * (changedCount + hashRunCount) }
    var hashesLength: Int { 8 * hashCount }
    var tailLength: Int { nameLength + (flags.contains(.arenaState) ? CheckpointFormat.arenaStateSize : 0) + 8 }
    /// The section's whole length (no overflow: every count was bounded by `fixedPart`).
    var length: Int { CheckpointImageMap.fixedSize + runsLength + hashesLength + tailLength }

    /// Decodes the 48-byte fixed part. `pageLimit` bounds every count (the image's page count
    /// when the footer is known, else a bound that keeps the lengths far from overflowing).
    mutating func fixedPart(_ bytes: UnsafeRawBufferPointer, pageLimit: Int) throws(MemSnapError) {
        guard bytes.count == CheckpointImageMap.fixedSize else { throw corrupt(operation, "\(place): truncated") }
        checksum.update(bytes)
        var reader = ByteReader(bytes)
        guard reader.u32() == CheckpointFormat.mapMagic else { throw corrupt(operation, "\(place): not an image map") }
        guard reader.u32() == 0 else { throw corrupt(operation, "\(place): reserved bytes are not zero") }
        let parentSize = reader.u64(), changed = reader.u64(), hashRuns = reader.u64(), hashes = reader.u64()
        let nameLength = reader.u16()
        guard reader.u16() == 0, reader.u32() == 0 else { throw corrupt(operation, "\(place): reserved bytes are not zero") }
        let limit = UInt64(max(0, min(pageLimit, CheckpointFormat.maxPageCount)))
        guard changed <= limit, hashRuns <= limit, hashes <= limit else {
            throw corrupt(operation, "\(place): \(changed) changed runs, \(hashRuns) hash runs and \(hashes) hashes "
                          + "cannot describe an image of at most \(limit) pages")
        }
        let incremental = flags.contains(.incremental)
        guard incremental || (parentSize == 0 && changed == 0 && nameLength == 0) else {
            throw corrupt(operation, "\(place): a full checkpoint has no parent, changed pages or parent name")
        }
        guard !incremental || (parentSize <= UInt64(Int.max) && nameLength >= 1 && nameLength <= UInt16(CheckpointFormat.maxParentNameLength)) else {
            throw corrupt(operation, "\(place): parent image size \(parentSize) or name length \(nameLength) is out of range")
        }
        guard flags.contains(.pageHashes) || (hashRuns == 0 && hashes == 0) else {
            throw corrupt(operation, "\(place): page hashes without the page-hash flag")
        }
        map.parentImageSize = Int(parentSize)
        changedCount = Int(changed)
        hashRunCount = Int(hashRuns)
        hashCount = Int(hashes)
        self.nameLength = Int(nameLength)
    }

    /// Decodes the runs (`runsLength` bytes): each run non-empty, after the previous one and not
    /// touching it, below `maxPageCount`.
    mutating func runs(_ bytes: UnsafeRawBufferPointer) throws(MemSnapError) {
        guard bytes.count == runsLength else { throw corrupt(operation, "\(place): truncated in its runs") }
        checksum.update(bytes)
        var reader = ByteReader(bytes)
        func decodeRuns(_ count: Int, _ what: String) throws(MemSnapError) -> PageRuns {
            var runs: [Range<Int>] = []
            runs.reserveCapacity(count)
            for entry in 0..<count {
                let start = reader.u64(), length = reader.u64()
                let limit = UInt64(CheckpointFormat.maxPageCount)
                guard length >= 1, start <= limit, length <= limit - start else {
                    throw corrupt(operation, "\(place): \(what) run \(entry) (page \(start), \(length) pages) is empty or out of range")
                }
                let run = Int(start)..<Int(start + length)
                if let previous = runs.last, run.lowerBound <= previous.upperBound {
                    throw corrupt(operation, "\(place): \(what) run \(entry) at page \(start) does not follow run \(entry - 1), "
                                  + "which ends at page \(previous.upperBound) (runs are sorted and never touch)")
                }
                runs.append(run)
            }
            return PageRuns(sorted: runs)
        }
        map.changedRuns = try decodeRuns(changedCount, "changed")
        map.hashRuns = try decodeRuns(hashRunCount, "hash")
        guard map.hashRuns.pageCount == hashCount else {
            throw corrupt(operation, "\(place): hash runs cover \(map.hashRuns.pageCount) pages but \(hashCount) hashes follow")
        }
    }

    /// A piece of the hashes, in order.
    func hashes(_ bytes: UnsafeRawBufferPointer) { checksum.update(bytes) }

    /// Decodes the parent's name, the arena state and the checksum (`tailLength` bytes), and
    /// checks the section's checksum. Returns the stored checksum.
    mutating func tail(_ bytes: UnsafeRawBufferPointer) throws(MemSnapError) -> UInt64 {
        guard bytes.count == tailLength else { throw corrupt(operation, "\(place): truncated in its name or arena state") }
        checksum.update(UnsafeRawBufferPointer(rebasing: bytes[0..<bytes.count - 8]))
        let stored = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self))
        guard checksum.digest() == stored else { throw corrupt(operation, "\(place): checksum mismatch") }
        let nameBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<nameLength])
        guard let name = String(validating: nameBytes, as: UTF8.self) else {
            throw corrupt(operation, "\(place): the parent's name is not UTF-8")
        }
        if flags.contains(.incremental), let problem = CheckpointParent.nameProblem(name) {
            throw corrupt(operation, "\(place): \(problem)")
        }
        map.parentName = name
        if flags.contains(.arenaState) {
            let stateBytes = UnsafeRawBufferPointer(rebasing: bytes[nameLength..<nameLength + CheckpointFormat.arenaStateSize])
            guard let state = CheckpointArenaState.decode(stateBytes) else {
                throw corrupt(operation, "\(place): arena capacity out of range")
            }
            map.arenaState = state
        }
        return stored
    }

    /// The checks that need the image size: every run inside the image; an incremental file's
    /// hashed pages among its changed pages, and, when its size differs from its parent's, every
    /// page from the smaller size (rounded down to a page) to its end among them; the arena
    /// state consistent with the image.
    func validate(imageSize: Int) throws(MemSnapError) {
        let pages = CheckpointFormat.pageCount(imageSize)
        for (what, runs) in [("changed", map.changedRuns), ("hash", map.hashRuns)] {
            if let last = runs.runs.last, last.upperBound > pages {
                throw corrupt(operation, "\(place): \(what) pages run to page \(last.upperBound), past the image's \(pages) pages")
            }
        }
        if flags.contains(.incremental) {
            guard map.changedRuns.contains(map.hashRuns) else {
                throw corrupt(operation, "\(place): pages with hashes are not all among the changed pages")
            }
            if map.parentImageSize != imageSize {
                let first = min(map.parentImageSize, imageSize) / CheckpointFormat.pageSize
                guard map.changedRuns.contains(first..<max(first, pages)) else {
                    throw corrupt(operation, "\(place): the image changes size from \(map.parentImageSize) to \(imageSize) bytes, "
                                  + "so pages \(first)..<\(pages) must be among the changed pages")
                }
            }
        }
        if let state = map.arenaState, let problem = state.problem(imageSize: imageSize) {
            throw corrupt(operation, "\(place): arena state: \(problem)")
        }
    }
}

/// The flags of a version-2 header and footer.
struct CheckpointFlags: OptionSet, Equatable, Sendable {
    let rawValue: UInt32
    /// The file holds only the pages that changed since its parent, named in the header.
    static let incremental = CheckpointFlags(rawValue: 1)
    /// The image map holds a hash of every nonzero page the file stores.
    static let pageHashes = CheckpointFlags(rawValue: 2)
    /// The image map holds an arena's state.
    static let arenaState = CheckpointFlags(rawValue: 4)
    static let known: CheckpointFlags = [.incremental, .pageHashes, .arenaState]
}
