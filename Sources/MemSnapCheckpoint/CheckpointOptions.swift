import MemSnap

/// How a checkpoint is laid out (raw values are stored in the file).
public enum CheckpointStyle: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// One sequential stream of uncompressed frames, no index: one pass and bounded memory on
    /// both sides, pipe in and pipe out. Written and restored by one thread.
    case v1 = 1
    /// Uncompressed frames plus an index: parallel restore from a file.
    case v2 = 2
    /// Compressed frames (LZ4 or zstd) plus an index: parallel checkpoint and restore.
    case v3 = 3

    public var description: String { "v\(rawValue)" }

    /// One line for the command line's help.
    package var summary: String {
        switch self {
        case .v1: "single sequential stream, uncompressed, no index (pipes, O(1) memory)"
        case .v2: "framed, uncompressed, indexed (parallel restore)"
        case .v3: "framed, compressed with lz4 or zstd, indexed (parallel checkpoint and restore)"
        }
    }
}

/// The compressor of v3 frames (raw values are stored in the file).
public enum CheckpointCodec: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case none = 0
    case lz4 = 1
    case zstd = 2

    public var description: String {
        switch self {
        case .none: "none"
        case .lz4: "lz4"
        case .zstd: "zstd"
        }
    }
}

/// Everything that decides a checkpoint's bytes. The same options and input give the same file,
/// whatever `threads` is; with a fixed `info` (see `CheckpointInfo.current(application:time:)`
/// and SOURCE_DATE_EPOCH), whenever it is written.
public struct CheckpointOptions: Sendable {
    public var style: CheckpointStyle
    /// Ignored (`.none`) for v1 and v2; `.lz4` by default for v3.
    public var codec: CheckpointCodec
    /// zstd level (1...22, default 3); LZ4 acceleration (1 = default ratio, higher = faster).
    public var level: Int32
    /// Most uncompressed extent bytes per frame; large extents are split at absolute multiples
    /// of it, so one huge extent still spreads over every thread. A multiple of the page size,
    /// at most 64 MiB (readers allocate up to twice this per thread, and a restore with two or
    /// more threads twice that again: each thread decodes its next frame while the last one
    /// waits to be written).
    public var chunkSize: Int
    /// Threads compressing frames (v3; v1 and v2 frames are hashed and written by the calling
    /// thread, which measured faster). The output does not depend on it.
    public var threads: Int
    /// Stored in the info section (host, time, user, application); the only part of a file
    /// that differs between runs over the same input.
    public var info: CheckpointInfo
    /// The file format (docs/FORMAT.md): 2 (the default) or 1, which readers before version 2
    /// also read but which has no room for a parent, page hashes or an arena's state.
    public var formatVersion: UInt16
    /// Store a hash of every nonzero page (8 bytes per page, format version 2, images of one
    /// address space only): a later incremental checkpoint by comparison then finds what
    /// changed without reading this file's frames.
    public var pageHashes: Bool

    public init(
        style: CheckpointStyle = .v3, codec: CheckpointCodec? = nil, level: Int32? = nil,
        chunkSize: Int = 1 << 20, threads: Int = 2, info: CheckpointInfo = .current(),
        formatVersion: UInt16 = 2, pageHashes: Bool = true
    ) {
        self.style = style
        self.codec = style == .v3 ? (codec ?? .lz4) : .none
        self.level = level ?? (self.codec == .zstd ? 3 : 1)
        self.chunkSize = chunkSize
        self.threads = threads
        self.info = info
        self.formatVersion = formatVersion
        self.pageHashes = pageHashes
    }

    /// Checks every field, so a writer never traps on them nor writes a file no reader accepts.
    /// - Throws: `.invalidArgument` saying which field is out of range and what is allowed.
    func validate(during operation: String) throws(MemSnapError) {
        guard chunkSize >= Page.size, chunkSize <= CheckpointFormat.maxChunkSize, chunkSize % Page.size == 0 else {
            throw MemSnapError(operation, .invalidArgument(
                "chunk size \(chunkSize) must be a multiple of \(Page.size) from \(Page.size) to 64 MiB"))
        }
        guard (1...256).contains(threads) else {
            throw MemSnapError(operation, .invalidArgument("thread count \(threads) must be 1...256"))
        }
        guard CheckpointFormat.versions.contains(formatVersion) else {
            throw MemSnapError(operation, .invalidArgument("format version \(formatVersion) must be 1 or 2"))
        }
        guard (style == .v3) == (codec != .none) else {
            throw MemSnapError(operation, .invalidArgument(style == .v3
                ? "style v3 needs a codec (lz4 or zstd)" : "style \(style) stores frames uncompressed: its codec must be none, not \(codec)"))
        }
        if codec == .zstd && !(1...22).contains(level) {
            throw MemSnapError(operation, .invalidArgument("zstd level \(level) must be 1...22"))
        }
        if codec == .lz4 && !(1...65537).contains(level) {
            throw MemSnapError(operation, .invalidArgument("lz4 acceleration \(level) must be 1...65537"))
        }
        // Each entry takes at least 6 bytes, so more entries than this cannot fit anyway; checked
        // first so that encoding (and its u32 count) never sees an absurd number.
        guard info.entries.count <= CheckpointFormat.maxInfoLength / 6 else {
            throw MemSnapError(operation, .invalidArgument(
                "the info section has \(info.entries.count) entries; at most \(CheckpointFormat.maxInfoLength) bytes can be read back"))
        }
        let infoLength = info.encoded().count
        guard infoLength <= CheckpointFormat.maxInfoLength else {
            throw MemSnapError(operation, .invalidArgument(
                "the info section would take \(infoLength) bytes; at most \(CheckpointFormat.maxInfoLength) can be read back"))
        }
    }
}

/// A piece of memory to checkpoint: `bytes` belong at `offset` in the address space named by
/// `tag` (0 for a plain image). The bytes are only borrowed for the duration of the call that
/// receives the extent.
public struct CheckpointExtent: @unchecked Sendable {
    public var tag: UInt64
    public var offset: UInt64
    public var bytes: UnsafeRawBufferPointer

    public init(tag: UInt64 = 0, offset: UInt64, bytes: UnsafeRawBufferPointer) {
        self.tag = tag
        self.offset = offset
        self.bytes = bytes
    }
}

/// Progress of a long checkpoint or restore, reported from the working thread.
public struct CheckpointProgress: Sendable {
    /// Uncompressed bytes handled so far, and in all (0 when unknown, e.g. reading a pipe).
    public var bytesDone: Int
    public var bytesTotal: Int
}
