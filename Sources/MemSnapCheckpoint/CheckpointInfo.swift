#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

/// The info section: who made a checkpoint, where, when, and what for. Free-form key/value
/// text; readers show it and otherwise ignore it.
public struct CheckpointInfo: Sendable, Equatable {
    public var entries: [(key: String, value: String)]

    public init(_ entries: [(key: String, value: String)] = []) { self.entries = entries }

    public static func == (lhs: CheckpointInfo, rhs: CheckpointInfo) -> Bool {
        lhs.entries.map(\.key) == rhs.entries.map(\.key) && lhs.entries.map(\.value) == rhs.entries.map(\.value)
    }

    public subscript(key: String) -> String? { entries.first { $0.key == key }?.value }

    /// host, time (ISO 8601, UTC), user, and `application`. The time is `time` if given, else
    /// SOURCE_DATE_EPOCH when that is set to a number of seconds (the reproducible-builds
    /// convention: the same image then gives the same file whenever it is written), else now.
    public static func current(application: String = "memsnap", time: Date? = nil) -> CheckpointInfo {
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count - 1)
        let user = getpwuid(geteuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } } ?? "uid \(geteuid())"
        let formatter = ISO8601DateFormatter()
        return CheckpointInfo([
            ("host", String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)),
            ("time", formatter.string(from: time ?? (try? sourceDateEpoch()) ?? Date())),
            ("user", user),
            ("application", application),
        ])
    }

    /// SOURCE_DATE_EPOCH as a date: nil when it is unset or empty.
    /// - Throws: `.invalidArgument` when it is set to anything but a whole number of seconds
    ///   since 1970 from 0 to 253402300799 (9999-12-31T23:59:59Z).
    package static func sourceDateEpoch() throws(MemSnapError) -> Date? {
        guard let value = getenv("SOURCE_DATE_EPOCH").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        return try parseTime(value, what: "SOURCE_DATE_EPOCH")
    }

    /// A time given as seconds since 1970 (as SOURCE_DATE_EPOCH) or as ISO 8601 in UTC
    /// (2026-11-21T00:00:00Z).
    /// - Throws: `.invalidArgument` naming `what` for anything else, or a time before 1970 or after 9999.
    package static func parseTime(_ text: String, what: String = "time") throws(MemSnapError) -> Date {
        if let seconds = Int64(text), (0...253_402_300_799).contains(seconds) {
            return Date(timeIntervalSince1970: TimeInterval(seconds))
        }
        if let date = ISO8601DateFormatter().date(from: text), date.timeIntervalSince1970 >= 0,
           date.timeIntervalSince1970 <= 253_402_300_799 {
            return date
        }
        throw MemSnapError("read \(what)", .invalidArgument(
            "\"\(text)\" is not seconds since 1970 (0 to 253402300799) nor an ISO 8601 UTC time such as 2026-11-21T00:00:00Z"))
    }
}
