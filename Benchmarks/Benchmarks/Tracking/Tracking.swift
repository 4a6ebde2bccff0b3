#if canImport(Glibc)
import Glibc
#endif
import Benchmark
import MemSnap

/// Dirty tracking on a 64 MiB populated region, with the physical limit (a memcpy of the same
/// region) measured in the same run. Each mode's benchmark writes 1 % of the pages (one store
/// each, the first-write cost included) and collects-and-resets.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .syscalls], warmupIterations: 2, maxDuration: .seconds(3), maxIterations: 200)
    let size = 64 << 20
    let pageCount = size / Page.size
    let sparse: [Int] = {
        // SplitMix64 from seed 7 (the library's generator is package-internal): the same pages every run.
        var state: UInt64 = 7
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        var chosen = Set<Int>()
        while chosen.count < pageCount / 100 { chosen.insert(Int(next() % UInt64(pageCount))) }
        return chosen.sorted()
    }()

    func populated() -> VirtualRegion? {
        guard let region = try? VirtualRegion(maxSize: size, committing: size) else { return nil }
        region.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 1, $0.count) }
        return region
    }

    Benchmark("memcpy 64 MiB (physical limit)") { benchmark in
        guard let source = populated(), let target = populated() else { return }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            source.withUnsafeBytes { from in
                target.withUnsafeMutableBytes { to in _ = memcpy(to.baseAddress!, from.baseAddress!, from.count) }
            }
        }
    }

    for mode in [DirtyTrackingMode.uffdAsync, .segfault, .uffd, .compare] where mode.availability == .available {
        Benchmark("\(mode): write 1 % of 64 MiB, collect and reset") { benchmark in
            guard let region = populated(), let tracker = try? DirtyTracker(tracking: region, mode: mode) else { return }
            defer { tracker.stop() }
            var value: UInt64 = 0
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                value += 1
                region.withUnsafeMutableBytes { memory in
                    for page in sparse { memory.storeBytes(of: value, toByteOffset: page << Page.shift, as: UInt64.self) }
                }
                blackHole(try? tracker.collectAndReset())
            }
        }
    }
}
