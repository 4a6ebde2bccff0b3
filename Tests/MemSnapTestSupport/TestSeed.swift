#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import Testing

/// Seeds for random tests: every run prints the seed it used, and `MEMSNAP_TEST_SEED=N`
/// replays a failing run exactly.
///
///     var random = TestSeed.generator()          // SplitMix64 seeded with TestSeed.current()
///     let seed = TestSeed.current()              // for tests that derive several generators
///     var thread = SplitMix64(seed: seed &+ UInt64(index))
///
/// Prints one line per call, naming the test:
/// `seedsAreReplayable(): seed 123 (replay with MEMSNAP_TEST_SEED=123)`.
///
/// Thread safety: callable from any thread and any test target.
public enum TestSeed {
    /// The environment variable that fixes the seed.
    public static let environmentVariable = "MEMSNAP_TEST_SEED"

    /// `MEMSNAP_TEST_SEED` when it is set (decimal, or hexadecimal with `0x`), else a fresh
    /// random seed. A value that is not a seed is recorded as an issue (the test fails, saying
    /// so) and a fresh seed is used, so a typo never silently replays something else.
    public static func current(_ test: String = #function, sourceLocation: SourceLocation = #_sourceLocation) -> UInt64 {
        let seed: UInt64
        if let value = getenv(environmentVariable).map({ String(cString: $0) }), !value.isEmpty {
            if let parsed = parse(value) {
                seed = parsed
            } else {
                let problem = "\(environmentVariable)=\"\(value)\" is not a seed (an unsigned 64-bit integer, "
                    + "decimal or 0x hexadecimal); using a fresh one"
                Issue.record(Comment(rawValue: problem), sourceLocation: sourceLocation)
                seed = UInt64.random(in: .min ... .max)
            }
        } else {
            seed = UInt64.random(in: .min ... .max)
        }
        print("\(test): seed \(seed) (replay with \(environmentVariable)=\(seed))")
        return seed
    }

    /// A SplitMix64 generator seeded with `current(test)`.
    package static func generator(_ test: String = #function, sourceLocation: SourceLocation = #_sourceLocation) -> SplitMix64 {
        SplitMix64(seed: current(test, sourceLocation: sourceLocation))
    }

    /// "123" or "0x7b"; nil for anything else.
    static func parse(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") { return UInt64(text.dropFirst(2), radix: 16) }
        return UInt64(text)
    }
}
