#if canImport(Glibc)
import Glibc
#endif
import CMemSnap
import SystemPackage

/// What this machine offers memsnap, for `memsnap doctor` and for choosing mechanisms at run time.
///
/// Every check runs when the report is made (each takes microseconds) and none has lasting side
/// effects: the memfd and the 4 GiB reservation it makes are released before it returns.
///
/// Thread safety: a value; `SystemReport.current()` may be called from any thread.
public struct SystemReport: Sendable {
    /// One line of the report: what was checked, what was found, and whether memsnap can use it.
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var value: String
        public var usable: Bool
    }

    public var entries: [Entry]

    /// Checks the kernel version, page size, transparent huge page mode, memfd support and the
    /// address-space limits that matter for reservations.
    public static func current() -> SystemReport {
        var entries: [Entry] = []
        entries.append(Entry(name: "kernel", value: kernelRelease(), usable: true))
        entries.append(Entry(name: "page size", value: "\(Page.size) bytes", usable: true))
        let hugePageMode = activeChoice(inFile: "/sys/kernel/mm/transparent_hugepage/enabled") ?? "unavailable"
        entries.append(Entry(name: "transparent huge pages", value: "\(hugePageMode) (memsnap sets MADV_NOHUGEPAGE on tracked regions)", usable: true))
        entries.append(memfdEntry())
        entries.append(reservationEntry())
        if let maxMapCount = readFile("/proc/sys/vm/max_map_count")?.trimmingCharacters(in: "\n") {
            entries.append(Entry(name: "vm.max_map_count", value: maxMapCount, usable: true))
        }
        return SystemReport(entries: entries)
    }

    /// `uname -r`.
    public static func kernelRelease() -> String {
        var names = utsname()
        uname(&names)
        return withUnsafeBytes(of: &names.release) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    private static func memfdEntry() -> Entry {
        do {
            let file = try MemoryFile(name: "memsnap-doctor", size: Page.size)
            return Entry(name: "memfd", value: "works (fd \(file.descriptor.rawValue), MFD_CLOEXEC)", usable: true)
        } catch {
            return Entry(name: "memfd", value: "unavailable: \(error)", usable: false)
        }
    }

    private static func reservationEntry() -> Entry {
        do {
            _ = try VirtualRegion(maxSize: 4 << 30)
            return Entry(name: "4 GiB reservation", value: "works", usable: true)
        } catch {
            return Entry(name: "4 GiB reservation", value: "fails: \(error)", usable: false)
        }
    }

    /// Reads a small text file (sysfs, procfs); nil if it cannot be opened.
    static func readFile(_ path: String) -> String? {
        guard let descriptor = try? FileDescriptor.open(FilePath(path), .readOnly) else { return nil }
        defer { try? descriptor.close() }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let count = (try? bytes.withUnsafeMutableBytes { try descriptor.read(into: $0) }) ?? 0
        return String(decoding: bytes.prefix(count), as: UTF8.self)
    }

    /// The bracketed choice in a sysfs selector such as "always [madvise] never".
    static func activeChoice(inFile path: String) -> String? {
        guard let text = readFile(path),
              let open = text.firstIndex(of: "["), let close = text[open...].firstIndex(of: "]") else { return nil }
        return String(text[text.index(after: open)..<close])
    }
}
