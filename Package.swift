// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "memsnap",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MemSnap", targets: ["MemSnap"]),
        .library(name: "MemSnapCheckpoint", targets: ["MemSnapCheckpoint"]),
        .library(name: "MemSnapArena", targets: ["MemSnapArena"]),
        .library(name: "MemSnapWasm", targets: ["MemSnapWasm"]),
        .executable(name: "memsnap", targets: ["memsnap"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // The WebAssembly interpreter MemSnapWasm forks instances of (used as released, never patched).
        .package(url: "https://github.com/swiftwasm/WasmKit", from: "0.4.2"),
    ],
    targets: [
        // Only what Swift cannot express: variadic syscalls, ioctl request numbers built by
        // function-like macros, kernel structs copied by layout, and async-signal-safe handlers.
        .target(name: "CMemSnap"),
        .target(
            name: "MemSnap",
            dependencies: [
                "CMemSnap",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // LZ4, zstd and XXH3 from the system (scripts/install-deps.sh installs the -dev packages).
        .target(
            name: "CMemSnapCodecs",
            linkerSettings: [.linkedLibrary("lz4"), .linkedLibrary("zstd"), .linkedLibrary("xxhash")]
        ),
        .target(
            name: "MemSnapCheckpoint",
            dependencies: ["MemSnap", "CMemSnap", "CMemSnapCodecs", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // LMDB, only for the arena benchmark's comparison (scripts/install-deps.sh installs it).
        .target(name: "CLMDB", linkerSettings: [.linkedLibrary("lmdb")]),
        .target(
            name: "MemSnapArena",
            dependencies: ["MemSnap", "CMemSnap", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // WebAssembly instances forked from a snapshot of their linear memory, run as workers and
        // merged back (WasmKit's memory adopted as a foreign reservation).
        .target(
            name: "MemSnapWasm",
            dependencies: [
                "MemSnap",
                "CMemSnap",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "WasmParser", package: "WasmKit"),
            ]
        ),
        .executableTarget(
            name: "memsnap",
            dependencies: [
                "MemSnap",
                "MemSnapCheckpoint",
                "MemSnapArena",
                "MemSnapWasm",
                .product(name: "WasmKit", package: "WasmKit"),
                "CLMDB",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The fuzz targets (a library, so the test suite replays their corpora) and the
        // executable `make fuzz` builds with -sanitize=fuzzer.
        .target(
            name: "MemSnapFuzzTargets",
            dependencies: ["MemSnap", "MemSnapCheckpoint", "MemSnapArena", "CMemSnap"]
        ),
        .executableTarget(
            name: "memsnap-fuzz",
            dependencies: ["MemSnapFuzzTargets"],
            path: "Sources/MemSnapFuzz"
        ),
        // Helpers shared by the test targets (temporary directories, error expectations).
        .target(
            name: "MemSnapTestSupport",
            dependencies: ["MemSnap"],
            path: "Tests/MemSnapTestSupport"
        ),
        .testTarget(
            name: "MemSnapTests",
            dependencies: ["MemSnap", "CMemSnap", "MemSnapTestSupport"]
        ),
        .testTarget(
            name: "MemSnapCheckpointTests",
            dependencies: ["MemSnapCheckpoint", "MemSnap", "MemSnapTestSupport"]
        ),
        .testTarget(
            name: "MemSnapArenaTests",
            dependencies: ["MemSnapArena", "MemSnap", "CMemSnap", "MemSnapTestSupport",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "MemSnapWasmTests",
            dependencies: ["MemSnapWasm", "MemSnap", "CMemSnap", "MemSnapTestSupport",
                           .product(name: "WasmKit", package: "WasmKit")]
        ),
        .testTarget(
            name: "MemSnapFuzzTests",
            dependencies: ["MemSnapFuzzTargets", "MemSnapTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
