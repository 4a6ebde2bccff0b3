/// A position in an arena's heap: stable across processes and mappings.
public struct ArenaOffset: RawRepresentable, Hashable, Sendable, Comparable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: ArenaOffset, rhs: ArenaOffset) -> Bool { lhs.rawValue < rhs.rawValue }
}
