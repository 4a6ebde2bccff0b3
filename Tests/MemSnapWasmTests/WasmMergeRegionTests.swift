import MemSnap
import MemSnapTestSupport
import MemSnapWasm
import Testing
import WasmKit

/// The guest declares merge regions through the host import `memsnap.merge_region`.
@Suite("Guests declare merge regions", .enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
struct WasmMergeRegionTests {
    @Test func regionsTheZygoteDeclaresAreTheSnapshots() throws {
        let zygote = try WasmZygote(program: try WasmGuest.reduction.program())
        let regions = zygote.snapshot.mergeRegions
        #expect(regions.count == 5)
        #expect(Set(regions.map { "\($0.dataType) \($0.operation) \($0.length)" })
                == ["int64 sum 8", "int32 sum 4", "double sum 8", "int64 max 8"])
    }

    @Test func withoutTheDeclarationConcurrentAdditionsWouldBeLastWriterWins() throws {
        // The probe's extra region is not declared: each worker's += lands bytewise.
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try probeProgram()), count: 4)
        try pool.run("add_extra") { _, _ in [.i64(1)] }
        let extra = Int(try pool.mainInteger("extra_address"))
        #expect(try snapshotInt64(pool.snapshot, at: extra) == 1, "four workers added 1: bytewise keeps the last")
        // Declared by the main instance between rounds, the next round sums.
        try pool.callMain("declare_extra")
        #expect(pool.snapshot.mergeRegions.contains(try MergeRegion(offset: extra, length: 16, dataType: .int64, operation: .sum)))
        try pool.run("add_extra") { _, _ in [.i64(1)] }
        #expect(try snapshotInt64(pool.snapshot, at: extra) == 1 + 4)
        #expect(try snapshotInt64(pool.snapshot, at: extra + 8) == 2 + 8)
    }

    @Test func aWorkerMayRepeatADeclaredRegionButNotAddANewOne() throws {
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try probeProgram()), count: 2)
        let error = #expect(throws: WasmWorkerFailure.self) { try pool.run("declare_extra") }
        let text = describe(error?.underlying)
        #expect(text.contains("a worker may only repeat a merge region already declared"), "\(text)")
        #expect(pool.snapshot.mergeRegions.count == 1, "nothing was added")
        try pool.callMain("declare_extra")
        try pool.run("declare_extra")  // now a no-op in every worker
        #expect(pool.snapshot.mergeRegions.count == 2)
    }

    struct BadDeclaration: Sendable, CustomTestStringConvertible {
        var offset: UInt32, length: UInt32, type: UInt32, operation: UInt32
        var message: String
        var testDescription: String { message }
    }

    static let badDeclarations = [
        BadDeclaration(offset: 0, length: 8, type: 6, operation: 1, message: "6 is not a merge data type"),
        BadDeclaration(offset: 0, length: 8, type: 3, operation: 8, message: "8 is not a merge operation"),
        BadDeclaration(offset: 0, length: 8, type: 0, operation: 1, message: "sum needs a numeric type"),
        BadDeclaration(offset: 0, length: 12, type: 3, operation: 1, message: "12 bytes is not a whole number of 8-byte int64 values"),
    ]

    @Test(arguments: badDeclarations)
    func aDeclarationTheAbiDoesNotAllowTrapsWithTheReason(_ bad: BadDeclaration) throws {
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try probeProgram()), count: 1)
        let error = #expect(throws: WasmTrap.self) {
            try pool.callMain("declare", [.i32(bad.offset), .i32(bad.length), .i32(bad.type), .i32(bad.operation)])
        }
        let text = describe(error?.underlying)
        #expect(text.contains(bad.message), "\(text)")
    }

    @Test func anOverlappingDeclarationTrapsAndClearForgetsEveryRegion() throws {
        let pool = try WasmWorkers(zygote: try WasmZygote(program: try probeProgram()), count: 1)
        let sum = UInt32(try pool.mainInteger("shared_sum_address"))
        let error = #expect(throws: WasmTrap.self) {
            try pool.callMain("declare", [.i32(sum + 4), .i32(8), .i32(3), .i32(4)])
        }
        let text = describe(error?.underlying)
        #expect(text.contains("overlaps merge region"), "\(text)")
        try pool.callMain("clear_regions")
        #expect(pool.snapshot.mergeRegions.isEmpty)
        #expect(throws: WasmWorkerFailure.self) { try pool.run("clear_regions") }
    }
}
