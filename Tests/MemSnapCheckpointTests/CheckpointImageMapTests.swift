#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
@testable import MemSnapCheckpoint
import MemSnapTestSupport
import Testing

/// The version-2 structures are untrusted input too: every count, run, size, name and flag is
/// checked, also under re-sealed checksums, before anything is allocated for it or written.
@Suite("Checkpoint format 2: crafted headers, image maps and footers are refused")
struct CheckpointImageMapTests {
    /// A base of 10 pages and an incremental link changing pages 2 and 3 (nonzero), 5 (zeroed)
    /// and 7: changed runs [2..<4, 5..<6, 7..<8], hashed runs [2..<4, 7..<8].
    func incremental(_ directory: TemporaryDirectory) throws -> (base: String, link: String, crafted: CraftedCheckpoint) {
        var image = (0..<10 * 4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 1) }
        let base = directory.file("base.ckpt")
        try image.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: base, force: false), options: options(.v2, chunk: 8192)) }
        for page in [2, 3, 7] { image[page * 4096 + 100] ^= 0x55 }
        for index in 5 * 4096..<6 * 4096 { image[index] = 0 }
        let link = directory.file("link.ckpt")
        try image.withUnsafeBytes {
            _ = try Checkpoint.write(image: $0, changedPages: [2..<4, 5..<6, 7..<8], over: CheckpointParent(CheckpointFile(path: base)),
                                     to: .file(path: link, force: false), options: options(.v2, chunk: 8192))
        }
        let file = try CheckpointFile(path: link)
        #expect(file.changedPages == [2..<4, 5..<6, 7..<8] && file.hashedPages == [2..<4, 7..<8])
        return (base, link, try CraftedCheckpoint(path: link))
    }

    func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) } }
    func put(_ value: UInt64, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + 8, with: $0) }
    }
    func put16(_ value: UInt16, at offset: Int, in bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<offset + 2, with: $0) }
    }
    /// Re-seals the header's checksum after a change to its first 56 bytes.
    func resealHeader(_ prefix: inout [UInt8]) { put(CheckpointFormat.xxh3(Array(prefix[0..<56])), at: 56, in: &prefix) }

    /// Writing `crafted` as `link.ckpt` must be refused when opened, with a `.corrupt` whose text
    /// contains `text`; and a chain restore into an existing file must leave it alone.
    func expectRefused(_ crafted: CraftedCheckpoint, in directory: TemporaryDirectory, _ text: String,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = directory.file("link.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data(try crafted.encoded()))
        let error = expectMemSnapError({ _ = try CheckpointFile(path: path) }, sourceLocation: sourceLocation)
        guard case let .corrupt(found)? = error?.reason else {
            Issue.record("expected .corrupt containing \"\(text)\", got \(String(describing: error))", sourceLocation: sourceLocation)
            return
        }
        #expect(found.contains(text), "\(found)", sourceLocation: sourceLocation)
        let existing = directory.file("existing.raw")
        _ = FileManager.default.createFile(atPath: existing, contents: Data("precious".utf8))
        _ = expectMemSnapError({
            _ = try Checkpoint.restore(contentsOfFileAt: path, into: ImageFileTarget(path: existing, force: true), threads: 2)
        }, sourceLocation: sourceLocation)
        #expect(fileBytes(existing) == Array("precious".utf8), sourceLocation: sourceLocation)
    }

    @Test func theCraftedBaselineItselfIsAcceptedAndRestores() throws {
        let directory = TemporaryDirectory()
        let (_, link, crafted) = try incremental(directory)
        let before = fileBytes(link)
        _ = FileManager.default.createFile(atPath: link, contents: Data(try crafted.encoded()))
        #expect(fileBytes(link) == before, "re-encoding a file unchanged gives it back")
        try CheckpointChain(tip: link).verify()
    }

    @Test func countsLargerThanTheImageAreRefusedBeforeAnythingIsRead() throws {
        let directory = TemporaryDirectory()
        var (_, _, crafted) = try incremental(directory)
        for field in [16, 24, 32] {
            var changed = crafted
            put(1 << 40, at: field, in: &changed.map)
            try expectRefused(changed, in: directory, "cannot describe an image of at most 10 pages")
        }
        crafted.map += [UInt8](repeating: 0, count: 16)
        try expectRefused(crafted, in: directory, "its counts need")
    }

    @Test func runsMustBeSortedNonEmptyApartAndInsideTheImage() throws {
        let directory = TemporaryDirectory()
        let (_, _, crafted) = try incremental(directory)
        let runs = CheckpointImageMap.fixedSize  // changed runs: (2, 2), (5, 1), (7, 1); hash runs: (2, 2), (7, 1)
        var swapped = crafted
        put(5, at: runs, in: &swapped.map); put(1, at: runs + 8, in: &swapped.map)
        put(2, at: runs + 16, in: &swapped.map); put(2, at: runs + 24, in: &swapped.map)
        try expectRefused(swapped, in: directory, "changed run 1 at page 2 does not follow run 0")
        var touching = crafted
        put(3, at: runs + 8, in: &touching.map)  // 2..<5 touches 5..<6
        try expectRefused(touching, in: directory, "changed run 1 at page 5 does not follow run 0, which ends at page 5")
        var empty = crafted
        put(0, at: runs + 24, in: &empty.map)
        try expectRefused(empty, in: directory, "changed run 1 (page 5, 0 pages) is empty or out of range")
        var huge = crafted
        put(UInt64.max, at: runs + 40, in: &huge.map)
        try expectRefused(huge, in: directory, "changed run 2 (page 7, 18446744073709551615 pages) is empty or out of range")
        var past = crafted
        put(9, at: runs + 32, in: &past.map); put(2, at: runs + 40, in: &past.map)
        try expectRefused(past, in: directory, "changed pages run to page 11, past the image's 10 pages")
    }

    @Test func hashesMustMatchTheirRunsAndLieInTheChangedPages() throws {
        let directory = TemporaryDirectory()
        let (_, _, crafted) = try incremental(directory)
        let hashRuns = CheckpointImageMap.fixedSize + 3 * 16
        var fewer = crafted
        put(1, at: hashRuns + 8, in: &fewer.map)
        try expectRefused(fewer, in: directory, "hash runs cover 2 pages but 3 hashes follow")
        var elsewhere = crafted
        put(8, at: hashRuns + 16, in: &elsewhere.map)
        try expectRefused(elsewhere, in: directory, "pages with hashes are not all among the changed pages")
    }

    @Test func aSizeChangeMustReplaceThePagesFromTheSmallerSize() throws {
        let directory = TemporaryDirectory()
        var (_, _, crafted) = try incremental(directory)
        put(5 * 4096, at: 8, in: &crafted.map)  // the parent's image was smaller: pages 5..<10 must be changed
        try expectRefused(crafted, in: directory, "the image changes size from 20480 to 40960 bytes, so pages 5..<10 must be among the changed pages")
    }

    @Test func theParentsNameMustBeAPlainFileName() throws {
        let directory = TemporaryDirectory()
        let (_, _, crafted) = try incremental(directory)
        let nameStart = crafted.map.count - 8 - "base.ckpt".utf8.count
        for (name, text) in [("../x.ckpt", "must be a plain file name"), ("a/b\u{0}c.ck", "must be a plain file name"),
                             ("..", "must be a plain file name")] {
            var changed = crafted
            changed.map.replaceSubrange(nameStart..<changed.map.count - 8, with: Array(name.utf8))
            put16(UInt16(name.utf8.count), at: 40, in: &changed.map)
            try expectRefused(changed, in: directory, text)
        }
        var invalid = crafted
        invalid.map[nameStart] = 0xFF
        try expectRefused(invalid, in: directory, "the parent's name is not UTF-8")
        var unnamed = crafted
        unnamed.map.removeSubrange(nameStart..<unnamed.map.count - 8)
        put16(0, at: 40, in: &unnamed.map)
        try expectRefused(unnamed, in: directory, "parent image size 40960 or name length 0 is out of range")
    }

    @Test func headerFlagsAndTheParentIdentityMustAgreeWithEachOtherAndTheFooter() throws {
        let directory = TemporaryDirectory()
        let (_, _, crafted) = try incremental(directory)
        var unknown = crafted
        unknown.prefix[32] |= 0x08
        resealHeader(&unknown.prefix)
        try expectRefused(unknown, in: directory, "header: unknown flags 0x8")
        var orphan = crafted
        for index in 40..<56 { orphan.prefix[index] = 0 }
        resealHeader(&orphan.prefix)
        try expectRefused(orphan, in: directory, "header: an incremental checkpoint without a parent identity")
        var disagreeing = crafted
        disagreeing.footerFlags = [.pageHashes]
        try expectRefused(disagreeing, in: directory, "settings differ from the header")
        var full = crafted  // the incremental flag gone, its parent identity still there
        full.prefix[32] &= ~0x01
        full.flags.remove(.incremental)
        resealHeader(&full.prefix)
        try expectRefused(full, in: directory, "header: a parent identity without the incremental flag")
    }

    @Test func aFullFileHasNoParentFieldsAndHashesNeedTheirFlag() throws {
        let directory = TemporaryDirectory()
        let (base, _, _) = try incremental(directory)
        let crafted = try CraftedCheckpoint(path: base)
        var parented = crafted
        put(4096, at: 8, in: &parented.map)
        try expectRefused(parented, in: directory, "a full checkpoint has no parent, changed pages or parent name")
        var unflagged = crafted
        unflagged.prefix[32] &= ~0x02
        unflagged.flags.remove(.pageHashes)
        resealHeader(&unflagged.prefix)
        try expectRefused(unflagged, in: directory, "page hashes without the page-hash flag")
    }

    @Test func anExtentOutsideTheChangedPagesIsRefusedByVerifyAndRestore() throws {
        let directory = TemporaryDirectory()
        var (_, _, crafted) = try incremental(directory)
        crafted.frames[crafted.frames.count - 1].append(.init(tag: 0, offset: 9 * 4096, bytes: [1, 2, 3]))
        let path = directory.file("link.ckpt")
        _ = FileManager.default.createFile(atPath: path, contents: Data(try crafted.encoded()))
        let error = expectMemSnapError { try CheckpointFile(path: path).verify() }
        #expect(error?.description.contains("(bytes 36864..<36867 of tag 0) lies outside the pages the file declares changed") == true,
                "\(String(describing: error))")
        let existing = directory.file("existing.raw")
        _ = FileManager.default.createFile(atPath: existing, contents: Data("precious".utf8))
        _ = expectMemSnapError { _ = try Checkpoint.restore(contentsOfFileAt: path, into: ImageFileTarget(path: existing, force: true)) }
        #expect(fileBytes(existing) == Array("precious".utf8))
    }

    @Test func anArenaStateMustHoldItsImage() throws {
        let directory = TemporaryDirectory()
        let image = [UInt8](repeating: 7, count: 3 * 4096)
        let path = directory.file("arena.ckpt")
        let state = CheckpointArenaState(capacity: 1 << 20, recordedBase: 0x7000_0000_0000, commit: 3, epoch: 1, event: 2,
                                         roots: (0..<32).map { UInt64($0) })
        try image.withUnsafeBytes { _ = try Checkpoint.write(image: $0, to: .file(path: path, force: false), options: options(.v2), arenaState: state) }
        #expect(try CheckpointFile(path: path).arenaState == state)
        var crafted = try CraftedCheckpoint(path: path)
        let stateStart = crafted.map.count - 8 - CheckpointFormat.arenaStateSize
        put(4096, at: stateStart, in: &crafted.map)  // capacity below the image
        try expectRefused(crafted, in: directory, "arena state: capacity 4096 is not a multiple of 4096 holding the 12288-byte image")
        var unaligned = try CraftedCheckpoint(path: path)
        put(12_345, at: stateStart + 8, in: &unaligned.map)
        try expectRefused(unaligned, in: directory, "arena state: recorded base 12345 is not page-aligned")
        let error = expectMemSnapError {
            try image.withUnsafeBytes {
                _ = try Checkpoint.write(image: $0, to: .file(path: directory.file("small.ckpt"), force: false), options: options(.v2),
                                         arenaState: CheckpointArenaState(capacity: 4096, recordedBase: 0, commit: 0, epoch: 0, event: 0,
                                                                          roots: [UInt64](repeating: 0, count: 32)))
            }
        }
        #expect(error?.reason == .invalidArgument("arena state: capacity 4096 is not a multiple of 4096 holding the 12288-byte image"))
    }

    @Test func aFooterPointingTheImageMapOutsideTheFileIsRefused() throws {
        let directory = TemporaryDirectory()
        let (_, link, _) = try incremental(directory)
        var bytes = fileBytes(link)
        let footer = bytes.count - 88
        for mapOffset in [UInt64(10), UInt64(bytes.count), UInt64.max / 2] {
            put(mapOffset, at: footer + 56, in: &bytes)
            put(CheckpointFormat.xxh3(Array(bytes[footer..<footer + 72])), at: footer + 72, in: &bytes)
            _ = FileManager.default.createFile(atPath: link, contents: Data(bytes))
            let error = expectMemSnapError { _ = try CheckpointFile(path: link) }
            guard case let .corrupt(text)? = error?.reason else { Issue.record("\(mapOffset): \(String(describing: error))"); continue }
            #expect(text.contains("image map offset") || text.contains("image map at") || text.contains("index at"), "\(mapOffset): \(text)")
        }
    }

    @Test func aStreamChecksTheImageMapAgainstItsFooter() throws {
        let directory = TemporaryDirectory()
        let (base, _, _) = try incremental(directory)
        var crafted = try CraftedCheckpoint(path: base)
        #expect(try CheckpointCraftedFileTests().restoreFromPipe(try crafted.encoded()) == nil, "the baseline streams")
        let hashRuns = CheckpointImageMap.fixedSize
        put(20, at: hashRuns, in: &crafted.map)  // a hash run from page 20: past the 10-page image
        let error = try CheckpointCraftedFileTests().restoreFromPipe(try crafted.encoded())
        #expect(error?.description.contains("hash pages run to page") == true, "\(String(describing: error))")
        var noMap = try CraftedCheckpoint(path: base)
        noMap.version = 2
        let bytes = try noMap.encoded()
        let mapStart = bytes.count - 88 - noMap.map.count
        let withoutMap = Array(bytes[0..<mapStart]) + Array(bytes[(bytes.count - 88)...])
        #expect(try CheckpointCraftedFileTests().restoreFromPipe(withoutMap) != nil)
    }

    /// A footer may claim any image size: comparing with such a parent looks hashes up page by
    /// page (no table of the claimed size), and restoring it is an error, never a crash.
    @Test func aParentClaimingAHugeImageIsComparedAndRefusedWithoutAllocatingIt() throws {
        let directory = TemporaryDirectory()
        let (base, _, _) = try incremental(directory)
        var crafted = try CraftedCheckpoint(path: base)
        crafted.imageSize = 1 << 60
        let huge = directory.file("huge.ckpt")
        _ = FileManager.default.createFile(atPath: huge, contents: Data(try crafted.encoded()))
        let chain = try CheckpointChain(tip: huge)
        #expect(chain.imageSize == 1 << 60)
        let image = [UInt8](repeating: 1, count: 3 * 4096)
        let next = directory.file("next.ckpt")
        let summary = try image.withUnsafeBytes {
            try Checkpoint.write(image: $0, comparingWith: chain, to: .file(path: next, force: false), options: options(.v2))
        }
        #expect(summary.changedPages == 3 && summary.imageSize == image.count)
        _ = expectMemSnapError { _ = try Checkpoint.restoreSnapshot(from: huge, threads: 2) }
        #expect(try restoredChain(next, threads: 2) == image, "the child replaces every page of its image")
    }
}
