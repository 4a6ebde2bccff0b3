#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The info section: who made a checkpoint, where, when, and what for. Free-form key/value
/// text; readers show it and otherwise ignore it.
public struct CheckpointInfo: Sendable, Equatable {
    public var entries: [(key: String, value: String)]

    public init(_ entries: [(key: String, value: String)] = []) { self.entries = entries }

    public static func == (lhs: CheckpointInfo, rhs: CheckpointInfo) -> Bool {
        lhs.entries.map(\.key) == rhs.entries.map(\.key) && lhs.entries.map(\.value) == rhs.entries.map(\.value)
    }

    public subscript(key: String) -> String? { entries.first { $0.key == key }?.value }

    /// host, time (ISO 8601, UTC), user, and `application` if given.
    public static func current(application: String = "memsnap") -> CheckpointInfo {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let user = getpwuid(geteuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "uid \(geteuid())"
        let formatter = ISO8601DateFormatter()
        return CheckpointInfo([
            ("host", String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)),
            ("time", formatter.string(from: Date())),
            ("user", user),
            ("application", application),
        ])
    }
}
