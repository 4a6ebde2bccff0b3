#if canImport(Glibc)
import Glibc
#endif

/// Monotonic wall-clock timing for benchmarks and the demo.
enum Stopwatch {
    /// Nanoseconds on CLOCK_MONOTONIC.
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }

    /// Runs `body` and returns its result with the elapsed seconds.
    static func time<Result>(_ body: () throws -> Result) rethrows -> (Result, seconds: Double) {
        let start = now()
        let result = try body()
        return (result, Double(now() - start) / 1e9)
    }

    /// Median seconds of `repetitions` runs of `body`, each result stored in `last` after its
    /// clock stops: releasing the result it replaces is not timed.
    static func median<Result>(repetitions: Int, keepingLast last: inout Result, _ body: () throws -> Result) rethrows -> Double {
        var samples: [Double] = []
        for _ in 0..<max(1, repetitions) {
            let (result, seconds) = try time(body)
            samples.append(seconds)
            last = result
        }
        return memsnap.median(samples)
    }

    /// Median seconds of `repetitions` runs of `body`.
    static func median(repetitions: Int, _ body: () throws -> Void) rethrows -> Double {
        var nothing: Void = ()
        return try median(repetitions: repetitions, keepingLast: &nothing, body)
    }
}

/// "12.3 ms", "850 µs", "1.20 s".
func formatDuration(_ seconds: Double) -> String {
    if seconds >= 1 { return format(seconds, decimals: 2) + " s" }
    if seconds >= 1e-3 { return format(seconds * 1e3, decimals: 2) + " ms" }
    if seconds >= 1e-6 { return format(seconds * 1e6, decimals: 1) + " µs" }
    return format(seconds * 1e9, decimals: 0) + " ns"
}

/// Fixed-point formatting without Foundation, `decimals` from 0 to 9. Values too large for
/// fixed point (ratios of a near-zero time, say) print as Swift prints a Double.
func format(_ value: Double, decimals: Int) -> String {
    let decimals = min(max(0, decimals), 9)
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    // Int(x) traps past Int.max: stay well inside it.
    guard value.isFinite, (abs(value) * scale).rounded() < 0x1p62 else { return "\(value)" }
    let scaled = Int((abs(value) * scale).rounded())
    let whole = scaled / Int(scale)
    let fraction = scaled % Int(scale)
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard decimals > 0 else { return "\(sign)\(whole)" }
    let digits = String(fraction)
    return "\(sign)\(whole)." + String(repeating: "0", count: decimals - digits.count) + digits
}

/// "14.2 GB/s" for `bytes` moved in `seconds` (decimal gigabytes, as memory bandwidth is quoted).
func formatBandwidth(bytes: Int, seconds: Double) -> String {
    guard seconds > 0 else { return "-" }
    return format(Double(bytes) / seconds / 1e9, decimals: 1) + " GB/s"
}
