#if canImport(Glibc)
import Glibc
#endif
import GRPCCore
import MemSnap

/// How a server and its callers know each other: a shared secret that every call carries
/// (`authorization: Bearer <token>`), and optionally TLS with mutual authentication.
///
/// The token is required: a server refuses every call without it (UNAUTHENTICATED), and a
/// caller sends it on every call. Read it from a file or an environment variable with
/// `token(fromFile:)` / `token(fromEnvironment:)` rather than a command line (visible to
/// every user in /proc).
///
/// Thread safety: a value type.
public struct RemoteSecurity: Sendable {
    public var token: String
    /// TLS for the connection; nil for plaintext (loopback, or a network you trust).
    public var tls: TLS?

    /// PEM files for mutual TLS: this side's certificate chain and key, and the certificates it
    /// trusts to have signed the other side's (both sides must present one).
    public struct TLS: Sendable {
        public var certificateChainPath: String
        public var privateKeyPath: String
        public var trustedCertificatesPath: String
        /// The server name to verify the server's certificate against (callers only); nil
        /// checks the chain but not the name.
        public var serverHostname: String?

        public init(certificateChainPath: String, privateKeyPath: String, trustedCertificatesPath: String, serverHostname: String? = nil) {
            self.certificateChainPath = certificateChainPath
            self.privateKeyPath = privateKeyPath
            self.trustedCertificatesPath = trustedCertificatesPath
            self.serverHostname = serverHostname
        }
    }

    /// - Throws: `.invalidArgument` for an empty token, or one with characters a header value
    ///   cannot carry (control characters, spaces) or longer than 4 KiB.
    public init(token: String, tls: TLS? = nil) throws(MemSnapError) {
        guard !token.isEmpty, token.utf8.count <= 4096, token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
            throw MemSnapError("remote token", .invalidArgument(
                "a token must be 1 to 4096 printable ASCII characters without spaces"))
        }
        self.token = token
        self.tls = tls
    }

    /// The first line of the file at `path`, trimmed.
    /// - Throws: `.systemCall` if it cannot be read; `.invalidArgument` if it holds no token.
    public static func token(fromFile path: String) throws(MemSnapError) -> String {
        guard let file = fopen(path, "r") else { throw .systemCall("open \(path)", during: "read token file") }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 8192)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else {
            throw MemSnapError("read token file \(path)", .invalidArgument("the file is empty"))
        }
        let line = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return line.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The value of the environment variable `name`, or nil.
    public static func token(fromEnvironment name: String = "MEMSNAP_TOKEN") -> String? {
        getenv(name).map { String(cString: $0) }
    }

    var authorizationValue: String { "Bearer \(token)" }
}

extension String {
    fileprivate func trimmingCharacters(in set: CharacterSetLike) -> String {
        var scalars = Substring(self).unicodeScalars
        while let first = scalars.first, set.contains(first) { scalars.removeFirst() }
        while let last = scalars.last, set.contains(last) { scalars.removeLast() }
        return String(scalars)
    }
}

fileprivate enum CharacterSetLike {
    case whitespacesAndNewlines
    func contains(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace }
}

/// Rejects calls that do not carry the server's token. Compares in constant time, so the time a
/// refusal takes says nothing about how much of a guess was right.
struct BearerTokenServerInterceptor: ServerInterceptor {
    let expected: [UInt8]

    init(token: String) { expected = Array("Bearer \(token)".utf8) }

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingServerRequest<Input>, context: ServerContext,
        next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
    ) async throws -> StreamingServerResponse<Output> {
        guard let presented = request.metadata[stringValues: "authorization"].first(where: { _ in true }),
              constantTimeEqual(Array(presented.utf8), expected) else {
            throw RPCError(code: .unauthenticated, message: "missing or wrong token (authorization: Bearer <token>)")
        }
        return try await next(request, context)
    }

    private func constantTimeEqual(_ left: [UInt8], _ right: [UInt8]) -> Bool {
        var difference = UInt8(truncatingIfNeeded: left.count ^ right.count)
        for index in 0..<max(left.count, right.count) {
            difference |= (index < left.count ? left[index] : 0) ^ (index < right.count ? right[index] : 0)
        }
        return difference == 0
    }
}

/// Adds the token to every call.
struct BearerTokenClientInterceptor: ClientInterceptor {
    let value: String

    func intercept<Input: Sendable, Output: Sendable>(
        request: StreamingClientRequest<Input>, context: ClientContext,
        next: (StreamingClientRequest<Input>, ClientContext) async throws -> StreamingClientResponse<Output>
    ) async throws -> StreamingClientResponse<Output> {
        var request = request
        request.metadata.replaceOrAddString(value, forKey: "authorization")
        return try await next(request, context)
    }
}

/// Calls in flight and when the last one ended.
final class ServerActivity: Sendable {
    private let state = Locked((inFlight: 0, last: ContinuousClock.now))

    func begin() { state.withLock { $0.inFlight += 1 } }
    func end() { state.withLock { $0.inFlight -= 1; $0.last = .now } }

    /// 0 while a call runs.
    var secondsIdle: Double {
        state.withLock { $0.inFlight > 0 ? 0 : (ContinuousClock.now - $0.last).seconds }
    }
}
