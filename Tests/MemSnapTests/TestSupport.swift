#if canImport(Glibc)
import Glibc
#endif
import MemSnap
import MemSnapTestSupport
import Testing

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
