#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

/// The modes that work on this machine (auto excluded) and forget writes on reset, for
/// parameterised tests of the tracker's contract; `private-copies` has its own tests.
let workingModes: [DirtyTrackingMode] = DirtyTrackingMode.allCases.filter {
    $0 != .auto && $0.resetForgetsEarlierWrites && $0.availability == .available
}

/// Starts tracking `region` with `mode`. Soft-dirty allows one tracker per process (its reset
/// is process-wide), so where it works a soft-dirty tracker waits, up to a minute, for another
/// test's to stop instead of failing because tests run in parallel.
func startTracking(_ region: VirtualRegion, mode: DirtyTrackingMode) throws -> DirtyTracker {
    let busy = MemSnapError.Reason.invalidArgument(
        "soft-dirty resets the whole process; only one soft-dirty tracker can run at a time")
    let deadline = Date().addingTimeInterval(60)
    while true {
        let outcome = Result { () throws(MemSnapError) -> DirtyTracker in try DirtyTracker(tracking: region, mode: mode) }
        if case let .failure(error) = outcome, mode == .softDirty, error.reason == busy, Date() < deadline {
            usleep(1000)
            continue
        }
        return try outcome.get()
    }
}

/// Modes that can attribute writes to threads and work here.
let attributingModes = workingModes.filter(\.attributesWritesToThreads)

/// The kinds of memory a tracked region can hold.
enum MemoryKind: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case anonymous
    case memfdShared = "memfd shared"
    case memfdCopyOnWrite = "memfd copy-on-write"

    var testDescription: String { rawValue }

    /// A region of `pages` committed pages of this kind (reserving twice that), all zero.
    func makeRegion(pages: Int) throws -> VirtualRegion {
        let size = pages * Page.size
        let region = try VirtualRegion(maxSize: 2 * size)
        switch self {
        case .anonymous:
            try region.grow(to: size)
        case .memfdShared:
            let file = try MemoryFile(name: "tracked", size: size)
            try file.map(into: region, length: size, sharing: .shared)
        case .memfdCopyOnWrite:
            let snapshot = try Snapshot(size: size, name: "tracked")
            try snapshot.mapCopyOnWrite(into: region)
        }
        return region
    }
}

import Testing

extension Range where Bound == Int {
    /// A run of one page.
    static func page(_ index: Int) -> Range<Int> { index..<index + 1 }
}

/// Runs `body(index)` on `count` new OS threads at once and waits for all of them.
func runOnThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            body(index)
            group.leave()
        }
        thread.start()
    }
    group.wait()
}

/// Reads `count` bytes from a fresh pipe into `destination` with read(2): a kernel-mode write.
/// Returns read's result and errno.
func kernelWrite(into destination: UnsafeMutableRawPointer, count: Int) -> (result: Int, errno: Int32) {
    var ends: [Int32] = [0, 0]
    guard pipe(&ends) == 0 else { return (-1, Glibc.errno) }
    defer { close(ends[0]); close(ends[1]) }
    let payload = [UInt8](repeating: 0xAB, count: count)
    _ = payload.withUnsafeBytes { write(ends[1], $0.baseAddress, count) }
    let result = read(ends[0], destination, count)
    return (result, result < 0 ? Glibc.errno : 0)
}
