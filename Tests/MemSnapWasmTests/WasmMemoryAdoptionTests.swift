#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapTestSupport
import MemSnapWasm
import Testing
import WasmKit

/// memsnap maps snapshots only over WasmKit's reservations, never over its malloc'd buffers.
@Suite("WasmKit's memory is adopted only when it is a reservation")
struct WasmMemoryAdoptionTests {
    static let softwareEngine = Engine(configuration: EngineConfiguration(memoryBoundsChecking: .software))

    @Test func anEngineWithSoftwareBoundsCheckingIsRefusedBeforeAnythingIsInstantiated() throws {
        let error = expectMemSnapError { _ = try WasmGuest.probe.program(engine: Self.softwareEngine) }
        guard case let .unavailable(text)? = error?.reason else {
            Issue.record("expected .unavailable, got \(String(describing: error))")
            return
        }
        #expect(text.contains("malloc'd buffer") && text.contains("memoryBoundsChecking: .mprotect"), "\(text)")
    }

    /// Even if the engine check were bypassed, the /proc/self/maps check refuses WasmKit's
    /// malloc storage: its buffer is not a reservation.
    @Test func theMallocStorageOfASoftwareBoundsCheckedInstanceIsRefusedByTheMappingCheck() throws {
        let store = Store(engine: Self.softwareEngine)
        // 64 pages: large enough for glibc to serve it from mmap, the likeliest to pass as a mapping.
        let memory = try Memory(store: store, type: MemoryType(min: 64, max: nil))
        let base = try #require(memory.withUnsafeMutableBufferPointer(offset: 0, count: 0) { $0.baseAddress })
        let error = expectMemSnapError {
            _ = try VirtualRegion(adoptingReservationAt: base, reservedSize: 1 << 32, committedSize: memory.byteCount,
                                  owner: store, ownerName: "WasmKit malloc storage")
        }
        switch error?.reason {
        case .unaligned?: break  // glibc's chunk header puts the buffer 16 bytes into its page
        case let .invalidArgument(text)?:
            #expect(text.contains("reservation") || text.contains("nothing is mapped"), "\(text)")
        default:
            Issue.record("expected a refusal, got \(String(describing: error))")
        }
    }

    @Test func aPageAlignedMallocBufferIsRefusedToo() throws {
        var raw: UnsafeMutableRawPointer?
        #expect(posix_memalign(&raw, Page.size, 16 * Page.size) == 0)
        let buffer = try #require(raw)
        defer { free(buffer) }
        let error = expectMemSnapError {
            _ = try VirtualRegion(adoptingReservationAt: buffer, reservedSize: 1 << 32, committedSize: 16 * Page.size,
                                  owner: nil, ownerName: "a malloc'd buffer")
        }
        guard case let .invalidArgument(text)? = error?.reason else {
            Issue.record("expected .invalidArgument, got \(String(describing: error))")
            return
        }
        #expect(text.contains("reservation"), "\(text)")
    }

    @Test(.enabled(if: reservedMemoryAvailable, reservedMemoryUnavailableReason))
    func anInstancesMemoryIsAdoptedAsWasmKitsFourGiBReservationAndNeverUnmappedByMemsnap() throws {
        let program = try probeProgram()
        var instance: WasmInstance? = try WasmInstance(program: program)
        let region = try #require(instance?.memory)
        #expect(region.isAdopted)
        #expect(region.maxSize == 1 << 32)
        #expect(region.committedSize == instance?.memoryByteCount)
        // Only the owner commits or releases pages.
        #expect(throws: MemSnapError.self) { try region.grow(to: region.committedSize + Page.size) }
        #expect(throws: MemSnapError.self) { try region.decommit(from: 0) }
        // The region keeps the store (the memory's owner) alive: the memory stays usable
        // through the region after the instance is gone.
        instance = nil
        region.withUnsafeMutableBytes { $0.storeBytes(of: 42, toByteOffset: 8, as: UInt64.self) }
        #expect(region.withUnsafeBytes { $0.load(fromByteOffset: 8, as: UInt64.self) } == 42)
    }
}
