#if canImport(Glibc)
import Glibc
#endif
import MemSnap

// memsnap-lmdb-bench: the LMDB side of `memsnap bench arena`, in an executable of its own so
// that the `memsnap` tool users install does not link LMDB. `memsnap bench arena` starts it
// next to its own executable and drives it over stdin/stdout, one line per request, so that
// LMDB's rounds interleave with the arena's in the same run (the machine's noise hits both):
//
//   memsnap-lmdb-bench DIRECTORY PAGES   creates an LMDB environment in DIRECTORY (which must
//                                        exist) with PAGES zeroed 4 KiB values, then prints
//                                        "ready"
//   "batch N"                            starts batch N: its updates come from SplitMix64(seed: N),
//                                        exactly as the arena's do; prints "ok"
//   "round"                              one write transaction of the batch's next N updates
//                                        (slot = next() % (PAGES * 512), value = next()) and its
//                                        commit; prints "ROUND_SECONDS COMMIT_SECONDS"
//
// Errors go to stderr with exit status 1.

func fail(_ message: String) -> Never {
    Standard.error("memsnap-lmdb-bench: \(message)\n")
    exit(1)
}

/// Unbuffered writes, so each reply reaches the parent at once.
enum Standard {
    static func error(_ text: String) {
        var text = text
        text.withUTF8 { try? writeAll(2, [UnsafeRawBufferPointer($0)], at: nil) }
    }
    static func reply(_ text: String) {
        var text = text + "\n"
        text.withUTF8 { try? writeAll(1, [UnsafeRawBufferPointer($0)], at: nil) }
    }
}

let arguments = CommandLine.arguments
guard arguments.count == 3, let pages = Int(arguments[2]), pages > 0, pages <= (1 << 40) / Page.size else {
    fail("usage: memsnap-lmdb-bench DIRECTORY PAGES (at most 1 TiB of pages); then requests on stdin")
}
let store: LMDBStore
do {
    store = try LMDBStore(path: arguments[1], pages: pages)
} catch {
    fail("\(error)")
}
Standard.reply("ready")
var random = SplitMix64(seed: 0)
var batch = 0
while let line = readLine() {
    let words = line.split(separator: " ")
    if words.count == 2, words[0] == "batch", let size = Int(words[1]), size > 0, size <= 1_000_000 {
        batch = size
        random = SplitMix64(seed: UInt64(size))
        Standard.reply("ok")
    } else if words == ["round"], batch > 0 {
        let updates = (0..<batch).map { _ in (slot: Int(random.next() % UInt64(pages * Page.size / 8)), value: random.next()) }
        do {
            let (round, commit) = try store.update(updates)
            Standard.reply("\(round) \(commit)")
        } catch {
            fail("\(error)")
        }
    } else {
        fail("unknown request '\(line)'")
    }
}
