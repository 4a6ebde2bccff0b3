#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import Testing

/// Runs `body`, expects it to throw a MemSnapError, and returns that error for exact checks.
@discardableResult
func expectMemSnapError(
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
func expectReason(
    _ reason: MemSnapError.Reason, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    let error = expectMemSnapError(body, sourceLocation: sourceLocation)
    #expect(error?.reason == reason, sourceLocation: sourceLocation)
}

let pageSize = Page.size

extension VirtualRegion {
    func store(_ value: UInt64, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value, toByteOffset: offset, as: UInt64.self) }
    }

    func load(at offset: Int) -> UInt64 {
        withUnsafeBytes { $0.load(fromByteOffset: offset, as: UInt64.self) }
    }
}

/// The VmFlags line of /proc/self/smaps for the mapping that contains `address`.
func vmFlags(containing address: UInt) -> [String]? {
    guard let file = fopen("/proc/self/smaps", "r") else { return nil }
    defer { fclose(file) }
    var inside = false
    var line = [CChar](repeating: 0, count: 4096)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if let dash = text.firstIndex(of: "-"), let space = text.firstIndex(of: " "), dash < space,
           let start = UInt(text[..<dash], radix: 16),
           let end = UInt(text[text.index(after: dash)..<space], radix: 16) {
            inside = (start..<end).contains(address)
        } else if inside, text.hasPrefix("VmFlags:") {
            return text.dropFirst("VmFlags:".count).split(separator: " ").map { String($0).trimmingSuffixNewline() }
        }
    }
    return nil
}

extension String {
    func trimmingSuffixNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
