import MemSnap
import WasmKit

/// The host side of the guest ABI's module `memsnap` for one instance: the merge regions its
/// guest declares with `merge_region(offset, length, type, operation)` and forgets with
/// `clear_merge_regions()` (Guests/memsnap.h, docs/FORMAT.md "Guest ABI").
///
/// Where a declaration goes depends on the instance's role:
/// - before a snapshot exists (the zygote runs): kept, and added to the snapshot when it is made;
/// - the main instance of a pool: added to the snapshot at once, governing every later diff;
/// - a worker (or any fork): must name a region the snapshot already has, and is then a no-op.
///   A new one throws (so the call traps): workers diff in parallel, and a region appearing
///   in the middle of a round would govern some workers' diffs and not others'.
/// Declaring a region exactly equal to one already declared is a no-op in every role.
///
/// Thread safety: every method may be called from any thread (a leaf lock).
final class GuestMergeRegions: @unchecked Sendable {
    enum Role: Sendable {
        case main
        case worker
    }

    private enum Target {
        case pending([MergeRegion])
        case snapshot(Snapshot, Role)
    }

    private let target = Locked<Target>(.pending([]))

    /// Sends later declarations to `snapshot`, as `role`.
    func attach(to snapshot: Snapshot, as role: Role) {
        target.withLock { $0 = .snapshot(snapshot, role) }
    }

    /// The regions declared before any snapshot was attached, in declaration order.
    var pending: [MergeRegion] {
        target.withLock { target in
            if case let .pending(regions) = target { return regions }
            return []
        }
    }

    /// `merge_region(offset, length, type, operation)`, with the ABI's raw values.
    /// - Throws: `.invalidArgument` for an unknown type or operation, a region `MergeRegion`
    ///   refuses, an overlap with another region, or a new region declared by a worker.
    func declare(offset: UInt32, length: UInt32, type: UInt32, operation: UInt32) throws(MemSnapError) {
        let text = "memsnap.merge_region(offset \(offset), length \(length), type \(type), operation \(operation))"
        guard let typeValue = UInt8(exactly: type), let dataType = MergeDataType(rawValue: typeValue) else {
            throw MemSnapError(text, .invalidArgument("\(type) is not a merge data type (0 raw, 1 bool, 2 int32, 3 int64, 4 float, 5 double)"))
        }
        guard let operationValue = UInt8(exactly: operation), let mergeOperation = MergeOperation(rawValue: operationValue) else {
            throw MemSnapError(text, .invalidArgument(
                "\(operation) is not a merge operation (0 bytewise, 1 sum, 2 product, 3 subtract, 4 max, 5 min, 6 ignore, 7 xor)"))
        }
        let region = try MergeRegion(offset: Int(offset), length: Int(length), dataType: dataType, operation: mergeOperation)
        try target.withLock { (target: inout Target) throws(MemSnapError) in
            switch target {
            case var .pending(regions):
                guard !regions.contains(region) else { return }
                for existing in regions where GuestMergeRegions.overlap(existing, region) {
                    throw MemSnapError(text, .invalidArgument("it overlaps merge region \(existing)"))
                }
                regions.append(region)
                target = .pending(regions)
            case let .snapshot(snapshot, role):
                guard !snapshot.mergeRegions.contains(region) else { return }
                guard role == .main else {
                    throw MemSnapError(text, .invalidArgument(
                        "a worker may only repeat a merge region already declared (by the zygote or the main instance "
                        + "before the round); \(region) is new"))
                }
                try snapshot.addMergeRegion(region)
            }
        }
    }

    /// `clear_merge_regions()`.
    /// - Throws: `.invalidArgument` from a worker.
    func clear() throws(MemSnapError) {
        try target.withLock { (target: inout Target) throws(MemSnapError) in
            switch target {
            case .pending:
                target = .pending([])
            case let .snapshot(snapshot, role):
                guard role == .main else {
                    throw MemSnapError("memsnap.clear_merge_regions()", .invalidArgument(
                        "only the zygote or the main instance may clear merge regions, not a worker"))
                }
                snapshot.clearMergeRegions()
            }
        }
    }

    /// Defines module `memsnap` in `imports`, for an instance in `store`.
    func define(in imports: inout Imports, store: Store) {
        imports.define(module: "memsnap", name: "merge_region", Function(
            store: store, parameters: [.i32, .i32, .i32, .i32], results: []
        ) { [self] _, arguments in
            guard arguments.count == 4, case let .i32(offset) = arguments[0], case let .i32(length) = arguments[1],
                  case let .i32(type) = arguments[2], case let .i32(operation) = arguments[3] else {
                throw MemSnapError("memsnap.merge_region", .invalidArgument("expects four i32 arguments"))
            }
            try declare(offset: offset, length: length, type: type, operation: operation)
            return []
        })
        imports.define(module: "memsnap", name: "clear_merge_regions", Function(
            store: store, parameters: [], results: []
        ) { [self] _, _ in
            try clear()
            return []
        })
    }

    private static func overlap(_ a: MergeRegion, _ b: MergeRegion) -> Bool {
        let aEnd = a.length == 0 ? Int.max : a.offset + a.length
        let bEnd = b.length == 0 ? Int.max : b.offset + b.length
        return a.offset < bEnd && b.offset < aEnd
    }
}
