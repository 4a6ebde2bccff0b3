import Foundation

/// Today's date as "2026-11-30" (UTC), the date benchmark reports and BENCHMARKS.md carry.
func isoDate() -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withFullDate]
    return formatter.string(from: Date())
}
