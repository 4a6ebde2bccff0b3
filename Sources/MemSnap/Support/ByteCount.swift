/// A number of bytes, printed in binary units ("4.0 GiB", "512 B") and parsed from the same
/// spellings ("256MiB", "4 GiB", "64k", "4096").
///
/// Thread safety: a value type; freely shareable.
package struct ByteCount: Sendable, Hashable, Comparable, CustomStringConvertible {
    package var bytes: Int

    package init(_ bytes: Int) { self.bytes = bytes }

    private static let units: [(suffix: String, shift: Int)] = [
        ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10),
    ]

    /// Binary units with one decimal, e.g. "256.0 MiB"; below 1 KiB, exact bytes.
    package var description: String {
        let magnitude = bytes.magnitude
        for (suffix, shift) in Self.units where magnitude >= UInt(1) << shift {
            let value = Double(bytes) / Double(UInt64(1) << UInt64(shift))
            return "\(Self.oneDecimal(value)) \(suffix)"
        }
        return "\(bytes) B"
    }

    /// Parses "4096", "64k", "64KiB", "256MiB", "1.5 GiB", "2G" (binary multiples, case-insensitive).
    /// Returns nil for anything else, for negative values and for values that overflow `Int`.
    package init?(parsing text: String) {
        let trimmed = text.trimmingCharacters(in: " ")
        let numberEnd = trimmed.firstIndex { !($0.isNumber || $0 == ".") } ?? trimmed.endIndex
        let numberText = trimmed[..<numberEnd]
        let unitText = trimmed[numberEnd...].trimmingCharacters(in: " ").lowercased()
        let shifts: [String: Int] = [
            "": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20,
            "g": 30, "gb": 30, "gib": 30, "t": 40, "tb": 40, "tib": 40,
        ]
        guard !numberText.isEmpty, let shift = shifts[unitText] else { return nil }
        if let whole = Int(numberText) {
            let (value, overflow) = whole.multipliedReportingOverflow(by: 1 << shift)
            guard !overflow else { return nil }
            self.bytes = value
        } else if let fraction = Double(numberText), fraction.isFinite, fraction >= 0 {
            let value = (fraction * Double(UInt64(1) << UInt64(shift))).rounded()
            guard value < Double(Int.max) else { return nil }
            self.bytes = Int(value)
        } else {
            return nil
        }
    }

    package static func < (lhs: ByteCount, rhs: ByteCount) -> Bool { lhs.bytes < rhs.bytes }

    static func oneDecimal(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        let sign = tenths < 0 ? "-" : ""
        return "\(sign)\(abs(tenths) / 10).\(abs(tenths) % 10)"
    }
}

extension String {
    func trimmingCharacters(in character: Character) -> String {
        var slice = Substring(self)
        while slice.first == character { slice.removeFirst() }
        while slice.last == character { slice.removeLast() }
        return String(slice)
    }
}

extension Substring {
    func trimmingCharacters(in character: Character) -> String {
        String(self).trimmingCharacters(in: character)
    }
}
