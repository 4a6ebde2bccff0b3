import Crypto
import Foundation
import GRPCCore
import MemSnap
import MemSnapCheckpoint
@testable import MemSnapRemote
import MemSnapTestSupport
import SwiftASN1
import Testing
import X509

@Suite("Remote inputs are untrusted; mutual TLS")
struct RemoteSecurityTests {
    /// Sends `messages` as one push through the raw client; returns the error the server gave.
    static func push(_ cluster: InProcessCluster, _ messages: [Memsnap_V1_PushSnapshotMessage]) async -> String {
        do {
            _ = try await cluster.host.client.pushSnapshot(request: StreamingClientRequest { writer in
                for message in messages { try await writer.write(message) }
            })
            return "accepted"
        } catch {
            return "\(error)"
        }
    }

    static func header(imageSize: Int, chunkSize: Int = 64 << 10) -> Memsnap_V1_PushSnapshotMessage {
        .with {
            $0.header = .with {
                $0.key = "heap"
                $0.epoch = 1
                $0.pushID = "crafted"
                $0.imageSize = UInt64(imageSize)
                $0.maxSize = UInt64(imageSize)
                $0.codec = UInt32(CheckpointCodec.lz4.rawValue)
                $0.chunkSize = UInt64(chunkSize)
            }
        }
    }

    static func commit(frames: [Int: UInt64], chunks: Int, imageSize: Int) -> Memsnap_V1_PushSnapshotMessage {
        var bitmap = [UInt8](repeating: 0, count: (chunks + 7) / 8)
        var digest = ImageDigest()
        for (chunk, checksum) in frames.sorted(by: { $0.key < $1.key }) {
            bitmap[chunk / 8] |= 1 << UInt8(chunk % 8)
            digest.add(chunk: chunk, payloadChecksum: checksum)
        }
        return .with { $0.commit = .with { $0.frames = Data(bitmap); $0.imageDigest = digest.finish(imageSize: imageSize) } }
    }

    @Test func aCorruptedChunkIsRefusedAndNothingBecomesVisible() async throws {
        let cluster = try InProcessCluster()
        let image = [UInt8](repeating: 0x42, count: 128 << 10)
        let frame = try image.withUnsafeBytes { try CheckpointFrames.encode(chunk: 1, of: $0, chunkSize: 64 << 10, codec: .lz4, level: 1) }
        let encoded = try #require(frame)
        var damaged = encoded.bytes
        damaged[damaged.count - 3] ^= 0x10
        let refused = await Self.push(cluster, [Self.header(imageSize: image.count), .with { $0.frame = Data(damaged) }])
        #expect(refused.contains("dataLoss") && refused.contains("frame 1: checksum mismatch"), "\(refused)")
        // Frames that verify, but a commit claiming one that never came, or the wrong digest.
        let missing = await Self.push(cluster, [Self.header(imageSize: image.count), .with { $0.frame = Data(encoded.bytes) },
                                                Self.commit(frames: [0: 1, 1: encoded.payloadChecksum], chunks: 2, imageSize: image.count)])
        #expect(missing.contains("1 of 2 frames are missing"), "\(missing)")
        var wrongDigest = Self.commit(frames: [1: encoded.payloadChecksum], chunks: 2, imageSize: image.count)
        wrongDigest.commit.imageDigest ^= 1
        let digest = await Self.push(cluster, [Self.header(imageSize: image.count), .with { $0.frame = Data(encoded.bytes) }, wrongDigest])
        #expect(digest.contains("the image digest does not match"), "\(digest)")
        #expect(await cluster.server.store.hosted("heap") == nil, "nothing visible")
        let good = await Self.push(cluster, [Self.header(imageSize: image.count), .with { $0.frame = Data(encoded.bytes) },
                                             Self.commit(frames: [1: encoded.payloadChecksum], chunks: 2, imageSize: image.count)])
        #expect(good == "accepted")
        let held = try #require(await cluster.server.store.hosted("heap"))
        #expect(try held.snapshot.read(at: 0, count: 64 << 10).allSatisfy { $0 == 0 } && (try held.snapshot.read(at: 64 << 10, count: 64 << 10)) == Array(image[(64 << 10)...]))
    }

    @Test func aFrameForAnotherChunkOrPastTheImageIsRefused() async throws {
        let cluster = try InProcessCluster()
        let image = [UInt8](repeating: 0x42, count: 256 << 10)
        // Frame 3 of a 256 KiB image, sent to a push that says the image is 128 KiB (2 chunks).
        let frame = try #require(try image.withUnsafeBytes { try CheckpointFrames.encode(chunk: 3, of: $0, chunkSize: 64 << 10, codec: .lz4, level: 1) })
        let refused = await Self.push(cluster, [Self.header(imageSize: 128 << 10), .with { $0.frame = Data(frame.bytes) }])
        #expect(refused.contains("frame 3 names a chunk past the image's 2"), "\(refused)")
    }

    @Test func headersThatWouldMakeTheServerAllocateWithoutBoundAreRefused() async throws {
        let cluster = try InProcessCluster { $0.maxSnapshotBytes = 1 << 30; $0.maxStagedPushes = 1 }
        var huge = Self.header(imageSize: 1 << 40)
        huge.header.maxSize = 1 << 40
        #expect(await Self.push(cluster, [huge]).contains("resourceExhausted"))
        var badChunk = Self.header(imageSize: 1 << 20)
        badChunk.header.chunkSize = 1000
        #expect(await Self.push(cluster, [badChunk]).contains("chunk size 1000"))
        var badCodec = Self.header(imageSize: 1 << 20)
        badCodec.header.codec = 9
        #expect(await Self.push(cluster, [badCodec]).contains("unknown codec 9"))
        #expect(await Self.push(cluster, [Self.header(imageSize: 1 << 20)]).contains("ended without a commit"), "staged")
        var second = Self.header(imageSize: 1 << 20)
        second.header.pushID = "another"
        #expect(await Self.push(cluster, [second]).contains("staged pushes"), "at most one staged push here")
        #expect(await Self.push(cluster, [.with { $0.frame = Data([1, 2, 3]) }]).contains("a push starts with its header"))
    }

    @Test func mutualTLSAcceptsACallerWithACertificateTheServerTrustsAndRefusesOneWithout() async throws {
        let directory = TemporaryDirectory(prefix: "memsnap-tls")
        let authority = try TestCertificates.authority()
        let serverFiles = try TestCertificates.issue(for: "server", by: authority, in: directory)
        let clientFiles = try TestCertificates.issue(for: "client", by: authority, in: directory)
        let strangerFiles = try TestCertificates.issue(for: "stranger", by: try TestCertificates.authority(), in: directory)
        let caPath = directory.file("ca.pem")
        try authority.certificatePEM.write(toFile: caPath, atomically: true, encoding: .utf8)
        var configuration = SnapshotServerConfiguration(security: try RemoteSecurity(
            token: "tls-token", tls: .init(certificateChainPath: serverFiles.certificate, privateKeyPath: serverFiles.key, trustedCertificatesPath: caPath)))
        configuration.maxSnapshotBytes = 1 << 30
        let server = SnapshotServer(configuration: configuration)
        let listening = AsyncStream.makeStream(of: Int.self)
        let serving = Task { try await server.serve(host: "127.0.0.7", port: 0) { _, port in listening.continuation.yield(port) } }
        defer { server.shutDown(); serving.cancel() }
        var ports = listening.stream.makeAsyncIterator()
        let port = try #require(await ports.next())
        let trusted = try RemoteHost(host: "127.0.0.7", port: port, security: try RemoteSecurity(
            token: "tls-token", tls: .init(certificateChainPath: clientFiles.certificate, privateKeyPath: clientFiles.key, trustedCertificatesPath: caPath)))
        #expect(try await trusted.info().version.hasPrefix("memsnap"))
        let stranger = try RemoteHost(host: "127.0.0.7", port: port, security: try RemoteSecurity(
            token: "tls-token", tls: .init(certificateChainPath: strangerFiles.certificate, privateKeyPath: strangerFiles.key, trustedCertificatesPath: caPath)))
        await #expect(throws: MemSnapError.self) { _ = try await stranger.info() }
        let plaintext = try RemoteHost(host: "127.0.0.7", port: port, security: try RemoteSecurity(token: "tls-token"))
        await #expect(throws: MemSnapError.self) { _ = try await plaintext.info() }
        trusted.close(); stranger.close(); plaintext.close()
    }
}

/// Certificates made for a test: a CA, and leaf certificates it signs (PEM files).
enum TestCertificates {
    struct Authority {
        let key: P256.Signing.PrivateKey
        let certificate: Certificate
        var certificatePEM: String { (try? certificate.serializeAsPEM().pemString) ?? "" }
    }

    static func authority() throws -> Authority {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("memsnap test CA \(UInt32.random(in: 0 ... .max))") }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: now - 3600, notValidAfter: now + 86_400,
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: .init(key))
        return Authority(key: key, certificate: certificate)
    }

    /// A leaf certificate for `name` (also valid for 127.0.0.7 and localhost), signed by `authority`.
    static func issue(for name: String, by authority: Authority, in directory: TemporaryDirectory) throws -> (certificate: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: now - 3600, notValidAfter: now + 86_400,
            issuer: authority.certificate.subject, subject: try DistinguishedName { CommonName(name) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 7]))])
            },
            issuerPrivateKey: .init(authority.key))
        let certificatePath = directory.file("\(name)-\(UInt32.random(in: 0 ... .max)).pem")
        let keyPath = certificatePath + ".key"
        try certificate.serializeAsPEM().pemString.write(toFile: certificatePath, atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(toFile: keyPath, atomically: true, encoding: .utf8)
        return (certificatePath, keyPath)
    }
}
