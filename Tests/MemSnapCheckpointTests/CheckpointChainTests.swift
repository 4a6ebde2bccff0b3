#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// Random changes between two links of a chain: pages rewritten in part, pages zeroed, and now
/// and then the image grows or shrinks. Returns the new image and the 4096-byte pages touched
/// (what a tracker would report).
func mutated(_ image: [UInt8], random: inout SplitMix64, resizing: Bool = true) -> (image: [UInt8], changedPages: [Range<Int>]) {
    var next = image
    var touched: [Range<Int>] = []
    let pages = max(1, CheckpointFormat.pageCount(next.count))
    for _ in 0..<(1 + Int(random.next() % UInt64(max(1, pages / 12)))) {
        let page = Int(random.next() % UInt64(pages))
        let start = page * 4096, end = min(next.count, start + 4096)
        guard start < end else { continue }
        if random.next() % 4 == 0 {
            for index in start..<end { next[index] = 0 }
        } else {
            for _ in 0..<(1 + random.next() % 16) {
                next[start + Int(random.next() % UInt64(end - start))] = UInt8(truncatingIfNeeded: random.next())
            }
        }
        touched.append(page..<page + 1)
    }
    if resizing && random.next() % 5 == 0 {
        if random.next() % 2 == 0 {
            let grown = Int(random.next() % (3 * 4096)) + 1
            next += (0..<grown).map { _ in random.next() % 3 == 0 ? 0 : UInt8(truncatingIfNeeded: random.next()) }
        } else {
            next.removeLast(min(next.count - 1, Int(random.next() % (2 * 4096)) + 1))
        }
    }
    return (next, touched)
}

/// How a link of a test chain gets its changed pages.
enum ChangeSource: CaseIterable, CustomStringConvertible {
    /// The caller says (a tracker): `write(image:changedPages:over:)`.
    case tracked
    /// Compared with the chain in memory: `write(image:comparingWith:)`.
    case comparedInMemory
    /// Compared with the chain, the image read from a file: `write(contentsOfFileAt:comparingWith:)`.
    case comparedFromFile

    var description: String {
        switch self {
        case .tracked: "tracked"
        case .comparedInMemory: "compared in memory"
        case .comparedFromFile: "compared from a file"
        }
    }
}

/// Writes a chain in `directory`: a full checkpoint of `base` (base.ckpt) and one incremental
/// link per image of `changes` (link1.ckpt, ...). Returns the paths, base first.
@discardableResult
func writeChain(
    base: [UInt8], changes: [(image: [UInt8], changedPages: [Range<Int>])], in directory: TemporaryDirectory,
    options: CheckpointOptions, sources: [ChangeSource] = ChangeSource.allCases
) throws -> [String] {
    var paths = [directory.file("base.ckpt")]
    try base.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: paths[0], force: false), options: options) }
    for (index, change) in changes.enumerated() {
        let path = directory.file("link\(index + 1).ckpt")
        let destination = CheckpointOutputDestination.file(path: path, force: false)
        switch sources[index % sources.count] {
        case .tracked:
            let parent = try CheckpointParent(CheckpointFile(path: paths[paths.count - 1]))
            try change.image.withUnsafeBytes {
                _ = try Checkpoint.write(image: $0, changedPages: change.changedPages, over: parent, to: destination, options: options)
            }
        case .comparedInMemory:
            let chain = try CheckpointChain(tip: paths[paths.count - 1])
            try change.image.withUnsafeBytes { _ = try Checkpoint.write(image: $0, comparingWith: chain, to: destination, options: options) }
        case .comparedFromFile:
            let raw = directory.file("image-\(index + 1).raw")
            _ = FileManager.default.createFile(atPath: raw, contents: Data(change.image))
            defer { unlink(raw) }
            let chain = try CheckpointChain(tip: paths[paths.count - 1])
            try Checkpoint.write(contentsOfFileAt: raw, comparingWith: chain, to: destination, options: options)
        }
        paths.append(path)
    }
    return paths
}

/// The image a chain ending at `path` restores, through a snapshot and with `threads` threads.
func restoredChain(_ path: String, links: [String] = [], threads: Int) throws -> [UInt8] {
    let snapshot = try Checkpoint.restoreSnapshot(from: path, links: links, threads: threads)
    return try snapshot.read(at: 0, count: snapshot.size)
}

@Suite("Incremental checkpoints: chains restore exactly")
struct CheckpointChainTests {
    @Test("chains of 1, 2 and 10 links over a full checkpoint, with random changes between links, restore bit-exact",
          arguments: [1, 2, 10])
    func chainsRestoreBitExact(links: Int) throws {
        var random = TestSeed.generator()
        let directory = TemporaryDirectory()
        var images = [heapImage(size: (1 << 20) + Int(random.next() % 50_000), seed: random.next())]
        var changes: [(image: [UInt8], changedPages: [Range<Int>])] = []
        for _ in 0..<links {
            let change = mutated(images[images.count - 1], random: &random)
            changes.append(change)
            images.append(change.image)
        }
        for styleCodec in [StyleCodec(style: .v3, codec: .lz4), StyleCodec(style: .v1), StyleCodec(style: .v2)] {
            let run = TemporaryDirectory()
            let paths = try writeChain(base: images[0], changes: changes, in: run,
                                       options: options(styleCodec.style, styleCodec.codec, chunk: 64 << 10))
            for (index, path) in paths.enumerated() {
                for threads in [1, 3] {
                    #expect(try restoredChain(path, threads: threads) == images[index],
                            "\(styleCodec): link \(index) of \(links), restored with \(threads) threads")
                }
            }
            let tip = try CheckpointChain(tip: paths[paths.count - 1])
            #expect(tip.links.map(\.path) == paths)
            try tip.verify(threads: 2)
            for path in paths.dropFirst() {
                let file = try CheckpointFile(path: path)
                #expect(file.isIncremental && file.fileSize < fileBytes(paths[0]).count / 4, "\(path) holds only changed pages")
            }
        }
        _ = directory
    }

    @Test func theThreeWaysOfFindingChangedPagesWriteTheSameFile() throws {
        var random = TestSeed.generator()
        let directory = TemporaryDirectory()
        let base = heapImage(size: 700_001, seed: random.next())
        let change = mutated(base, random: &random, resizing: false)
        // The tracker's pages are exactly the pages that differ here, so every way must agree.
        let exact = (0..<CheckpointFormat.pageCount(base.count)).filter { page in
            base[page * 4096..<min(base.count, page * 4096 + 4096)] != change.image[page * 4096..<min(base.count, page * 4096 + 4096)]
        }.map { $0..<$0 + 1 }
        let files = try ChangeSource.allCases.map { source -> [UInt8] in
            let run = TemporaryDirectory()
            let paths = try writeChain(base: base, changes: [(change.image, exact)], in: run, options: options(.v3, .zstd), sources: [source])
            return fileBytes(paths[1])
        }
        #expect(files[0] == files[1] && files[1] == files[2])
        _ = directory
    }

    @Test func aDirtyTrackersPagesMakeTheIncrementalCheckpointWithoutReadingTheRest() throws {
        var random = TestSeed.generator()
        let directory = TemporaryDirectory()
        let size = 4 << 20
        let region = try VirtualRegion(maxSize: size, committing: size)
        region.withUnsafeMutableBytes { SyntheticHeap(seed: random.next()).fill($0) }
        let basePath = directory.file("base.ckpt")
        let base = try region.withUnsafeBytes { try Checkpoint.write(image: $0, to: .file(path: basePath, force: false), options: options(.v3, .lz4)) }
        let tracker = try DirtyTracker(tracking: region)
        var paths = [basePath]
        var summary = base
        for link in 1...3 {
            region.withUnsafeMutableBytes { memory in
                for _ in 0..<20 {
                    let offset = Int(random.next() % UInt64(size - 8)) & ~7
                    memory.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
                }
            }
            let dirty = try tracker.collectAndReset()
            let path = directory.file("link\(link).ckpt")
            let parent = CheckpointParent(summary, path: paths[paths.count - 1])
            summary = try region.withUnsafeBytes { image in
                try Checkpoint.write(image: image, dirtyPages: dirty, over: parent, to: .file(path: path, force: false),
                                     options: options(.v3, .lz4))
            }
            #expect(summary.changedPages == dirty.count)
            paths.append(path)
            let expected = region.withUnsafeBytes { [UInt8]($0) }
            #expect(try restoredChain(path, threads: 2) == expected, "link \(link)")
        }
        tracker.stop()
    }

    @Test func aSnapshotsChangedRangesMakeTheIncrementalCheckpoint() throws {
        let directory = TemporaryDirectory()
        let snapshot = try Snapshot(copying: heapImage(size: 1 << 20, seed: 4), maxSize: 2 << 20)
        let basePath = directory.file("base.ckpt")
        try Checkpoint.write(snapshot, to: basePath, options: options(.v3, .lz4))
        _ = snapshot.takeChangedRanges()
        try snapshot.write(Array("changed".utf8), at: 12_345)
        try snapshot.write([UInt8](repeating: 0, count: 8192), at: 40_960)  // two pages become zero
        try snapshot.write([UInt8](repeating: 9, count: 100), at: (1 << 20) + 5000)  // grows
        let path = directory.file("next.ckpt")
        let summary = try Checkpoint.write(snapshot, changedRanges: snapshot.takeChangedRanges(),
                                           over: CheckpointParent(CheckpointFile(path: basePath)), to: .file(path: path, force: false),
                                           options: options(.v3, .lz4))
        #expect(summary.imageSize == (1 << 20) + 5100)
        #expect(try restoredChain(path, threads: 2) == snapshot.read(at: 0, count: snapshot.size))
    }

    @Test func anEmptyChangeAndAnEmptyImageAreChainsToo() throws {
        let directory = TemporaryDirectory()
        let image = heapImage(size: 100_000, seed: 8)
        let paths = try writeChain(base: image, changes: [(image, []), ([], []), (image, [])], in: directory, options: options(.v2),
                                   sources: [.tracked, .comparedInMemory, .comparedFromFile])
        #expect(try restoredChain(paths[1], threads: 2) == image)
        #expect(try restoredChain(paths[2], threads: 2) == [])
        #expect(try restoredChain(paths[3], threads: 2) == image)
        #expect(try CheckpointFile(path: paths[1]).frameCount == 0, "nothing changed: no frame")
    }

    @Test func parentsAreFoundByIdentityNextToTheChildOrAmongTheGivenLinks() throws {
        var random = TestSeed.generator()
        let directory = TemporaryDirectory()
        let base = heapImage(size: 300_000, seed: random.next())
        let one = mutated(base, random: &random), two = mutated(one.image, random: &random)
        let paths = try writeChain(base: base, changes: [one, two], in: directory, options: options(.v3, .lz4))
        // Renamed: found by identity among the checkpoints next to the child.
        try FileManager.default.moveItem(atPath: paths[0], toPath: directory.file("renamed-base.ckpt"))
        #expect(try restoredChain(paths[2], threads: 2) == two.image)
        // Moved elsewhere: found among the given links only.
        let elsewhere = TemporaryDirectory()
        try FileManager.default.moveItem(atPath: directory.file("renamed-base.ckpt"), toPath: elsewhere.file("somewhere.ckpt"))
        #expect(try restoredChain(paths[2], links: [elsewhere.file("somewhere.ckpt")], threads: 2) == two.image)
        let error = expectMemSnapError { _ = try CheckpointChain(tip: paths[2], links: [paths[1]], search: .givenLinksOnly) }
        #expect(error?.description.contains("base.ckpt (identity ") == true && error?.description.contains("not among the checkpoints given") == true,
                "\(String(describing: error))")
    }
}

@Suite("Incremental checkpoints: a wrong, modified or missing parent is refused before anything is written")
struct CheckpointChainRefusalTests {
    /// A base and one link over it, and an existing file the restores must leave alone.
    func chain(_ directory: TemporaryDirectory) throws -> (paths: [String], expected: [UInt8]) {
        var random = SplitMix64(seed: 99)
        let base = heapImage(size: 200_000, seed: 12)
        let change = mutated(base, random: &random, resizing: false)
        let paths = try writeChain(base: base, changes: [change], in: directory, options: options(.v3, .lz4, chunk: 16 << 10),
                                   sources: [.tracked])
        return (paths, change.image)
    }

    /// Restoring `path` into an existing file must fail with an error containing `message`,
    /// leave the file as it was and leave no temporary file; the one-call restores too.
    func expectRefused(_ path: String, in directory: TemporaryDirectory, _ message: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        let existing = directory.file("existing.raw")
        _ = FileManager.default.createFile(atPath: existing, contents: Data("precious".utf8))
        let before = directory.entries
        for restore in [{ () throws -> Void in
            _ = try Checkpoint.restore(contentsOfFileAt: path, into: ImageFileTarget(path: existing, force: true), threads: 2)
        }, { () throws -> Void in
            _ = try Checkpoint.restoreSnapshot(from: path, threads: 2)
        }] {
            let error = expectMemSnapError(restore, sourceLocation: sourceLocation)
            #expect(error?.description.contains(message) == true, "\(String(describing: error))", sourceLocation: sourceLocation)
        }
        #expect(fileBytes(existing) == Array("precious".utf8), "target untouched", sourceLocation: sourceLocation)
        #expect(directory.entries == before, "no temporary file left", sourceLocation: sourceLocation)
    }

    @Test func aMissingParentIsRefused() throws {
        let directory = TemporaryDirectory()
        let (paths, _) = try chain(directory)
        unlink(paths[0])
        expectRefused(paths[1], in: directory, "which is neither next to it (in \(directory.path)/) nor among the checkpoints given")
        let error = expectMemSnapError { _ = try CheckpointChain(tip: paths[1]) }
        let identity = try CheckpointFile(path: paths[1]).parent!.identity
        #expect(error?.reason == .invalidArgument(
            "it was written over base.ckpt (identity \(identity), image 200000 bytes), which is neither next to it "
            + "(in \(directory.path)/) nor among the checkpoints given"))
    }

    @Test func aWrongParentUnderTheParentsNameIsRefused() throws {
        let directory = TemporaryDirectory()
        let (paths, _) = try chain(directory)
        unlink(paths[0])
        let other = heapImage(size: 200_000, seed: 13)
        try other.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: paths[0], force: false), options: options(.v3, .lz4)) }
        expectRefused(paths[1], in: directory, "but \(paths[0]) is a different checkpoint (identity ")
    }

    @Test func aModifiedParentIsRefused() throws {
        let directory = TemporaryDirectory()
        let (paths, _) = try chain(directory)
        // Changed and re-sealed: a valid checkpoint, but not the one the link was written over.
        var crafted = try CraftedCheckpoint(path: paths[0])
        crafted.frames[1][0].bytes[10] ^= 0xFF
        _ = FileManager.default.createFile(atPath: paths[0], contents: Data(try crafted.encoded()))
        expectRefused(paths[1], in: directory, "is a different checkpoint (identity ")
    }

    @Test func aDamagedParentFrameFailsTheRestoreAndTouchesNothing() throws {
        let directory = TemporaryDirectory()
        let (paths, _) = try chain(directory)
        var bytes = fileBytes(paths[0])
        let frame = try CheckpointFile(path: paths[0]).frames[2]
        bytes[frame.offset + CheckpointFormat.frameHeaderSize + 3] ^= 0x10  // not re-sealed: same identity
        _ = FileManager.default.createFile(atPath: paths[0], contents: Data(bytes))
        expectRefused(paths[1], in: directory, "\(paths[0]): checkpoint frame 2 at offset \(ByteCount(frame.offset)) (\(frame.offset)): checksum mismatch")
    }

    @Test func anIncrementalFileAloneOrAsAStreamIsNotRestoredButVerifies() throws {
        let directory = TemporaryDirectory()
        let (paths, _) = try chain(directory)
        let file = try CheckpointFile(path: paths[1])
        try file.verify(threads: 2)
        let recording = RecordingTarget()
        let error = expectMemSnapError { try file.restore(into: recording, threads: 2) }
        #expect(error?.description.contains("restores only with its chain") == true)
        #expect(recording.extents.withLock { $0.isEmpty } && recording.committed.withLock { $0 } == nil)
        let streamError = try CheckpointCraftedFileTests().restoreFromPipe(fileBytes(paths[1]))
        #expect(streamError?.description.contains("restores only from a file, with its chain") == true, "\(String(describing: streamError))")
    }

    @Test func aChainOfMoreThan64LinksIsRefusedAndOneOf64Restores() throws {
        let directory = TemporaryDirectory()
        var image = [UInt8](repeating: 1, count: 8192)
        var changes: [(image: [UInt8], changedPages: [Range<Int>])] = []
        for link in 0..<64 {
            image[link % 2 * 4096] = UInt8(link)
            changes.append((image, [link % 2..<link % 2 + 1]))
        }
        let paths = try writeChain(base: [UInt8](repeating: 1, count: 8192), changes: changes, in: directory, options: options(.v2),
                                   sources: [.tracked])
        #expect(try restoredChain(paths[63], threads: 4) == changes[62].image, "64 links")
        let error = expectMemSnapError { _ = try CheckpointChain(tip: paths[64]) }
        #expect(error?.description.contains("the chain has more than 64 links") == true, "\(String(describing: error))")
    }

    /// Links stand-ins: identities chosen freely, so a loop (impossible to write for real: a
    /// file's identity covers its parent's) can be tried.
    struct FakeLink: ChainLink {
        var path: String
        var identity: CheckpointIdentity
        var parent: CheckpointParent?
        var imageSize = 10
    }

    @Test func aLoopingChainIsRefused() throws {
        let a = CheckpointIdentity(high: 1, low: 1), b = CheckpointIdentity(high: 2, low: 2)
        let links = [a: FakeLink(path: "a", identity: a, parent: CheckpointParent(identity: b, imageSize: 10, name: "b")),
                     b: FakeLink(path: "b", identity: b, parent: CheckpointParent(identity: a, imageSize: 10, name: "a"))]
        let error = expectMemSnapError {
            _ = try resolveChain(tip: links[a]!, maximumLength: 64, during: "resolve") { (child) throws(MemSnapError) in
                links[child.parent!.identity]!
            }
        }
        #expect(error?.reason == .corrupt("b names as its parent \(a), which is already in the chain: the chain loops"))
        let sized = expectMemSnapError {
            var wrongSize = links[b]!
            wrongSize.imageSize = 11
            _ = try resolveChain(tip: links[a]!, maximumLength: 64, during: "resolve") { (_: FakeLink) throws(MemSnapError) in wrongSize }
        }
        #expect(sized?.reason == .corrupt("a records its parent's image as 10 bytes, but its parent b holds 11"))
    }

    @Test func writersRefuseAParentNameThatIsNotAFileNameAndVersionOneParents() throws {
        let directory = TemporaryDirectory()
        let image = [UInt8](repeating: 3, count: 4096)
        for name in ["", "a/b", "..", ".", String(repeating: "x", count: 256)] {
            let parent = CheckpointParent(identity: CheckpointIdentity(high: 1, low: 2), imageSize: 4096, name: name)
            let error = expectMemSnapError {
                try image.withUnsafeBytes {
                    _ = try Checkpoint.write(image: $0, changedPages: [0..<1], over: parent, to: .file(path: directory.file("x.ckpt"), force: false))
                }
            }
            guard case .invalidArgument? = error?.reason else { Issue.record("\(name): \(String(describing: error))"); continue }
        }
        let parent = CheckpointParent(identity: CheckpointIdentity(high: 1, low: 2), imageSize: 4096, name: "p.ckpt")
        let error = expectMemSnapError {
            try image.withUnsafeBytes {
                _ = try Checkpoint.write(image: $0, changedPages: [0..<1], over: parent, to: .file(path: directory.file("x.ckpt"), force: false),
                                         options: options(.v2, format: 1))
            }
        }
        #expect(error?.reason == .invalidArgument("format version 1 has no room for a parent or an arena's state: write version 2"))
        #expect(directory.entries.isEmpty, "nothing left behind")
    }
}

@Suite("Squashing folds a chain into one full checkpoint")
struct CheckpointSquashTests {
    @Test("the squashed file is byte for byte the full checkpoint of the chain's image, and a chain goes on over it",
          arguments: [StyleCodec(style: .v3, codec: .zstd), StyleCodec(style: .v2)])
    func squashEqualsTheChain(styleCodec: StyleCodec) throws {
        var random = TestSeed.generator()
        let directory = TemporaryDirectory()
        var images = [heapImage(size: 800_000, seed: random.next())]
        var changes: [(image: [UInt8], changedPages: [Range<Int>])] = []
        for _ in 0..<5 {
            let change = mutated(images[images.count - 1], random: &random)
            changes.append(change)
            images.append(change.image)
        }
        let settings = options(styleCodec.style, styleCodec.codec)
        let paths = try writeChain(base: images[0], changes: changes, in: directory, options: options(.v3, .lz4))
        let squashed = directory.file("squashed.ckpt")
        let summary = try CheckpointChain(tip: paths[paths.count - 1]).squash(to: .file(path: squashed, force: false), options: settings)
        let full = directory.file("full.ckpt")
        try images[images.count - 1].withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: full, force: false), options: settings) }
        #expect(fileBytes(squashed) == fileBytes(full))
        #expect(summary.identity == (try CheckpointFile(path: full)).identity)
        #expect(try restoredChain(squashed, threads: 3) == images[images.count - 1])
        let next = mutated(images[images.count - 1], random: &random)
        let after = directory.file("after.ckpt")
        try next.image.withUnsafeBytes {
            _ = try Checkpoint.write(image: $0, changedPages: next.changedPages, over: CheckpointParent(summary, path: squashed),
                                     to: .file(path: after, force: false), options: settings)
        }
        #expect(try restoredChain(after, threads: 2) == next.image)
        #expect(try CheckpointChain(tip: after).links.map(\.path) == [squashed, after])
    }
}
