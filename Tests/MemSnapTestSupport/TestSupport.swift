#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap
import Testing

/// Helpers shared by the test targets.

/// A fresh directory under /tmp, removed with everything in it when the value goes away.
public final class TemporaryDirectory {
    public let path: String
    public init(prefix: String = "memsnap-test") {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }
    deinit { _ = try? FileManager.default.removeItem(atPath: path) }
    public func file(_ name: String) -> String { "\(path)/\(name)" }
    public var entries: [String] { (try? FileManager.default.contentsOfDirectory(atPath: path))?.sorted() ?? [] }
}

/// Runs `body`, expects it to throw a MemSnapError, and returns that error for exact checks.
@discardableResult
public func expectMemSnapError(
    _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation
) -> MemSnapError? {
    do {
        try body()
        Issue.record("expected a MemSnapError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as MemSnapError {
        return error
    } catch {
        Issue.record("expected a MemSnapError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Expects `body` to throw a MemSnapError whose reason is exactly `reason`.
public func expectReason(
    _ reason: MemSnapError.Reason, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    let error = expectMemSnapError(body, sourceLocation: sourceLocation)
    #expect(error?.reason == reason, sourceLocation: sourceLocation)
}
