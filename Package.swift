// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "memsnap",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MemSnap", targets: ["MemSnap"]),
        .library(name: "MemSnapCheckpoint", targets: ["MemSnapCheckpoint"]),
        .library(name: "MemSnapArena", targets: ["MemSnapArena"]),
        .library(name: "MemSnapArenaCheckpoint", targets: ["MemSnapArenaCheckpoint"]),
        .library(name: "MemSnapRemote", targets: ["MemSnapRemote"]),
        .library(name: "MemSnapWasm", targets: ["MemSnapWasm"]),
        .executable(name: "memsnap", targets: ["memsnap"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // The remote snapshot service (MemSnapRemote): gRPC over HTTP/2, protobuf messages.
        .package(url: "https://github.com/grpc/grpc-swift-2", from: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", from: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
        // Test certificates for the mutual-TLS test (already in the graph through the transport).
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
        // The WebAssembly interpreter MemSnapWasm forks instances of (used as released, never patched).
        .package(url: "https://github.com/swiftwasm/WasmKit", from: "0.4.2"),
        // `make docs`: a DocC archive per library product (swift package generate-documentation).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
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
        // Snapshots across hosts: the gRPC snapshot service (server and client), its generated
        // code (Sources/MemSnapRemote/Generated, from Protos/ by `make proto`; CI never runs protoc).
        .target(
            name: "MemSnapRemote",
            dependencies: [
                "MemSnap", "MemSnapCheckpoint", "CMemSnap", "CMemSnapCodecs",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // LMDB, only for the arena benchmark's comparison (scripts/install-deps.sh installs it),
        // linked by the benchmark executable alone: `memsnap bench arena` runs it as a child.
        .target(name: "CLMDB", linkerSettings: [.linkedLibrary("lmdb")]),
        .executableTarget(
            name: "memsnap-lmdb-bench",
            dependencies: ["CLMDB", "MemSnap"],
            path: "Sources/MemSnapLMDBBench"
        ),
        .target(
            name: "MemSnapArena",
            dependencies: ["MemSnap", "CMemSnap", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // Arenas in checkpoints and back (depends on both, so neither depends on the other).
        .target(
            name: "MemSnapArenaCheckpoint",
            dependencies: ["MemSnap", "MemSnapCheckpoint", "MemSnapArena"]
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
                "MemSnapArenaCheckpoint",
                "MemSnapRemote",
                "MemSnapWasm",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The fuzz targets (a library, so the test suite replays their corpora) and the
        // executable `make fuzz` builds with -sanitize=fuzzer.
        .target(
            name: "MemSnapFuzzTargets",
            dependencies: ["MemSnap", "MemSnapCheckpoint", "MemSnapArena", "CMemSnap",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .executableTarget(
            name: "memsnap-fuzz",
            dependencies: ["MemSnapFuzzTargets"],
            path: "Sources/MemSnapFuzz"
        ),
        // Examples/: small programs a user can copy, on the library products' public API only
        // (ExamplesTests runs each one and checks its output).
        .executableTarget(name: "example-fork-join", dependencies: ["MemSnap"], path: "Examples/ForkJoin"),
        .executableTarget(name: "example-kv-store", dependencies: ["MemSnap", "MemSnapArena"], path: "Examples/KeyValueStore"),
        .executableTarget(name: "example-checkpoint", dependencies: ["MemSnap", "MemSnapCheckpoint"], path: "Examples/CheckpointRestore"),
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
            dependencies: ["MemSnapCheckpoint", "MemSnap", "MemSnapTestSupport",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "MemSnapArenaTests",
            dependencies: ["MemSnapArena", "MemSnap", "CMemSnap", "MemSnapTestSupport",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .testTarget(
            name: "MemSnapArenaCheckpointTests",
            dependencies: ["MemSnapArenaCheckpoint", "MemSnapArena", "MemSnapCheckpoint", "MemSnap", "MemSnapTestSupport"]
        ),
        .testTarget(
            name: "MemSnapRemoteTests",
            dependencies: [
                "MemSnapRemote", "MemSnap", "MemSnapCheckpoint", "MemSnapTestSupport",
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCInProcessTransport", package: "grpc-swift-2"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "MemSnapWasmTests",
            dependencies: ["MemSnapWasm", "MemSnap", "CMemSnap", "MemSnapTestSupport",
                           .product(name: "WasmKit", package: "WasmKit")]
        ),
        .testTarget(
            name: "ExamplesTests",
            // The examples are not linked: the tests run the executables `swift build` puts next to them.
            dependencies: ["MemSnapTestSupport"]
        ),
        .testTarget(
            name: "MemSnapFuzzTests",
            dependencies: ["MemSnapFuzzTargets", "MemSnapTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
