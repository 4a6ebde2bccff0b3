// swift-tools-version:6.1
// The package-benchmark suite, kept in its own package so that `make test` does not build the
// benchmark harness. Run with `make benchmarks` (or `cd Benchmarks && swift package benchmark`).
// It is for regressions: small, stable operations measured with statistics (wall clock, CPU,
// syscalls) and compared between commits with `swift package benchmark baseline`. The figures
// in BENCHMARKS.md, ratios against the physical limit, come from `memsnap bench` instead.
// Only the library products' public API is used here (it is another package).
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its directory, which is whatever the checkout is called.
let memsnapIdentity = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

let package = Package(
    name: "memsnap-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "Tracking",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MemSnap", package: memsnapIdentity),
            ],
            path: "Benchmarks/Tracking",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
