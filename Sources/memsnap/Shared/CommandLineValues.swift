import ArgumentParser
import MemSnap

/// Parses "256MiB", "4GiB", "4096" for command-line options (`transform: parseByteCount`).
/// - Throws: `ValidationError` with examples, for anything `ByteCount(parsing:)` refuses.
func parseByteCount(_ text: String) throws -> Int {
    guard let count = ByteCount(parsing: text) else {
        throw ValidationError("'\(text)' is not a size (examples: 4096, 64KiB, 256MiB, 4GiB)")
    }
    return count.bytes
}

/// Parses "1%", "0.5%", "25" (percent) into a fraction; anything outside (0, 100] is refused.
/// - Throws: `ValidationError` with an example.
func parsePercentage(_ text: String) throws -> Double {
    let number = text.hasSuffix("%") ? String(text.dropLast()) : text
    guard let value = Double(number), value > 0, value <= 100 else {
        throw ValidationError("'\(text)' is not a percentage between 0 and 100 (example: 1%)")
    }
    return value / 100
}
