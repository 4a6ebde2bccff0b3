import GRPCCore
import MemSnap

/// Turning errors into statuses and back, at the edge of the wire.
enum RemoteErrors {
    /// The status a server answers with for a MemSnapError: what kind of failure, with the
    /// error's whole text as the message.
    static func status(for error: MemSnapError) -> RPCError {
        let code: RPCError.Code = switch error.reason {
        case .invalidArgument, .invalidRange, .outOfBounds, .unaligned, .emptyKey: .invalidArgument
        case .exceedsMaximum, .tooSmall: .resourceExhausted
        case .notFound: .notFound
        case .corrupt: .dataLoss
        case .unavailable: .unavailable
        case .systemCall: .internalError
        }
        return RPCError(code: code, message: error.description)
    }

    /// Whatever a call threw, as a MemSnapError for `operation` (which names the host).
    static func error(_ error: any Error, during operation: String) -> MemSnapError {
        if let error = error as? MemSnapError { return error }
        guard let rpc = error as? RPCError else {
            return MemSnapError(operation, .unavailable("\(error)"))
        }
        let text = "\(rpc.code): \(rpc.message)"
        return switch rpc.code {
        case .invalidArgument, .failedPrecondition, .outOfRange, .alreadyExists: MemSnapError(operation, .invalidArgument(text))
        case .notFound: MemSnapError(operation, .invalidArgument(text))
        case .dataLoss: MemSnapError(operation, .corrupt(text))
        case .unauthenticated, .permissionDenied: MemSnapError(operation, .invalidArgument("the server refused the credentials: \(text)"))
        default: MemSnapError(operation, .unavailable(text))
        }
    }

    /// Whether the server refused because it does not hold the epoch (or the snapshot) the
    /// caller assumed: the caller can push the whole snapshot instead.
    static func isEpochMismatch(_ error: any Error) -> Bool {
        guard let rpc = error as? RPCError else { return false }
        return rpc.code == .failedPrecondition || rpc.code == .notFound
    }
}
