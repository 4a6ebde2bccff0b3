import Foundation
import GRPCCore
import GRPCInProcessTransport
import MemSnap
@testable import MemSnapRemote
import Testing

/// A snapshot server and a host connected to it in this process (the in-process transport),
/// with the bodies the tests use. Shut down when the value goes away.
final class InProcessCluster: @unchecked Sendable {
    let server: SnapshotServer
    let host: RemoteHost
    private let serving: Task<Void, any Error>

    init(token: String = "secret-token", clientToken: String? = nil, bodies: [String: BatchWorkerBody] = [:],
         configure: (inout SnapshotServerConfiguration) -> Void = { _ in }) throws {
        var configuration = SnapshotServerConfiguration(security: try RemoteSecurity(token: token))
        configure(&configuration)
        server = SnapshotServer(configuration: configuration)
        try TestBodies.register(on: server)
        for (name, body) in bodies { try server.register(name, body: body) }
        let transport = InProcessTransport()
        let server = self.server
        serving = Task { try await server.serve(transport: transport.server) }
        host = RemoteHost(transport: transport.client, name: "in-process", security: try RemoteSecurity(token: clientToken ?? token))
    }

    deinit {
        host.close()
        server.shutDown()
        serving.cancel()
    }
}

/// Worker bodies for the tests, by name.
enum TestBodies {
    /// Adds its (batch index + 1) to the Int64 at offset 0 and writes its index at offset
    /// 4096 + 8 x index (a page of bytewise slots).
    static let addIndex: BatchWorkerBody = { worker in
        worker.memory.withUnsafeMutableBytes { memory in
            memory.storeBytes(of: memory.load(as: Int64.self) + Int64(worker.index + 1), as: Int64.self)
            memory.storeBytes(of: UInt64(worker.index) | 0xAB00, toByteOffset: 4096 + 8 * worker.index, as: UInt64.self)
        }
    }

    /// Throws in worker 1, does the `addIndex` work in the others.
    static let failInWorkerOne: BatchWorkerBody = { worker in
        struct Refused: Error, CustomStringConvertible { var description: String { "worker one refuses" } }
        if worker.index == 1 { throw Refused() }
        try addIndex(worker)
    }

    static func register(on server: SnapshotServer) throws {
        try server.register("add-index", body: addIndex)
        try server.register("fail-in-worker-one", body: failInWorkerOne)
    }
}

/// A snapshot of `pages` pages with a sum region at offset 0 (one Int64) and a recognisable
/// pattern in every third page of the first half (the second half stays zero).
func patternSnapshot(pages: Int, maxPages: Int? = nil) throws -> Snapshot {
    let snapshot = try Snapshot(size: pages * Page.size, maxSize: (maxPages ?? pages * 2) * Page.size)
    try snapshot.update(at: 0, count: pages * Page.size) { memory in
        for page in stride(from: 2, to: pages / 2, by: 3) { memory.storeBytes(of: UInt64(page) * 0x1_0001, toByteOffset: page * Page.size + 16, as: UInt64.self) }
    }
    try snapshot.addMergeRegion(MergeRegion(offset: 0, length: 8, dataType: .int64, operation: .sum))
    _ = snapshot.takeChangedRanges()
    return snapshot
}

func bytes(of snapshot: Snapshot) -> [UInt8] {
    snapshot.withUnsafeBytes { [UInt8]($0) }
}
