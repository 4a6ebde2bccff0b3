#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// One line of /proc/self/maps: a virtual memory area of this process, as the kernel reports it.
///
/// The kernel merges neighbouring areas of the same kind, so an area need not be one `mmap`
/// call, and one reservation may show as several areas (its committed prefix read-write, the
/// rest inaccessible). What the lines prove is what every page is right now: mapped or not,
/// its protection, private or shared, anonymous or backed by a file.
///
/// Thread safety: a value; `ProcessMapping.current()` may be called from any thread (the list
/// is a snapshot that other threads' mmap calls can make stale at once).
package struct ProcessMapping: Sendable, Equatable, CustomStringConvertible {
    package var start: UInt
    package var end: UInt
    package var readable: Bool
    package var writable: Bool
    package var executable: Bool
    /// `s` in the permissions: MAP_SHARED. `p` (private, copy-on-write) otherwise.
    package var shared: Bool
    package var inode: UInt64
    /// The file, or a kernel label such as `[heap]`, `[stack]` or `[anon:NAME]`; empty for an
    /// unnamed anonymous area.
    package var path: String

    package init(start: UInt, end: UInt, readable: Bool, writable: Bool, executable: Bool, shared: Bool,
                 inode: UInt64, path: String) {
        self.start = start
        self.end = end
        self.readable = readable
        self.writable = writable
        self.executable = executable
        self.shared = shared
        self.inode = inode
        self.path = path
    }

    /// Private anonymous memory: no file behind it and none of the kernel's special areas
    /// (`[heap]`, `[stack]`, `[vdso]`...). A name given with PR_SET_VMA_ANON_NAME is allowed.
    package var isPrivateAnonymous: Bool {
        !shared && inode == 0 && (path.isEmpty || path.hasPrefix("[anon:"))
    }

    /// "rw-p", as /proc/self/maps prints it.
    package var permissions: String {
        (readable ? "r" : "-") + (writable ? "w" : "-") + (executable ? "x" : "-") + (shared ? "s" : "p")
    }

    package var description: String {
        "0x\(String(start, radix: 16))-0x\(String(end, radix: 16)) \(permissions)" + (path.isEmpty ? "" : " \(path)")
    }

    /// The areas of this process, in address order.
    /// - Throws: `.systemCall("open"/"read", ...)` if /proc/self/maps cannot be read (no /proc);
    ///   `.corrupt` naming the line if a line does not parse.
    package static func current() throws(MemSnapError) -> [ProcessMapping] {
        let operation = "read /proc/self/maps"
        let descriptor = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw MemSnapError.systemCall("open", during: operation) }
        defer { close(descriptor) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = try systemCall("read", during: operation) {
                chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            }
            if count == 0 { break }
            text.append(contentsOf: chunk[0..<count])
        }
        var mappings: [ProcessMapping] = []
        for (index, line) in text.split(separator: UInt8(ascii: "\n")).enumerated() {
            guard let mapping = parse(line) else {
                throw MemSnapError(operation, .corrupt("line \(index + 1) does not parse: \"\(String(decoding: line.prefix(200), as: UTF8.self))\""))
            }
            mappings.append(mapping)
        }
        return mappings
    }

    /// The areas that overlap `range`, in address order: asked of the kernel one area at a time
    /// with the PROCMAP_QUERY ioctl (Linux 6.11; a few microseconds, whatever the number of
    /// areas), or read from the whole of /proc/self/maps where the kernel lacks it.
    /// - Throws: as `current()`.
    package static func overlapping(_ range: Range<UInt>) throws(MemSnapError) -> [ProcessMapping] {
        let operation = "query /proc/self/maps"
        let descriptor = open("/proc/self/maps", O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw MemSnapError.systemCall("open", during: operation) }
        defer { close(descriptor) }
        var mappings: [ProcessMapping] = []
        var cursor = range.lowerBound
        var name = [UInt8](repeating: 0, count: 4096)
        while cursor < range.upperBound {
            var query = memsnap_procmap_query()
            query.size = UInt64(MemoryLayout<memsnap_procmap_query>.size)
            query.query_flags = MEMSNAP_PROCMAP_QUERY_COVERING_OR_NEXT_VMA
            query.query_addr = UInt64(cursor)
            let result = name.withUnsafeMutableBytes { buffer -> Int32 in
                query.vma_name_size = UInt32(buffer.count)
                query.vma_name_addr = UInt64(UInt(bitPattern: buffer.baseAddress))
                return memsnap_ioctl(descriptor, MEMSNAP_PROCMAP_QUERY, &query)
            }
            if result != 0 {
                let error = errno
                if error == ENOENT { break }  // no area at or after the cursor
                if error == ENOTTY || error == EINVAL || error == EOPNOTSUPP {
                    return try current().filter { $0.end > range.lowerBound && $0.start < range.upperBound }
                }
                throw MemSnapError.systemCall("ioctl(PROCMAP_QUERY)", during: operation)
            }
            guard let start = UInt(exactly: query.vma_start), let end = UInt(exactly: query.vma_end), start < end,
                  end > cursor else {
                throw MemSnapError(operation, .corrupt("PROCMAP_QUERY at 0x\(String(cursor, radix: 16)) answered "
                    + "0x\(String(query.vma_start, radix: 16))-0x\(String(query.vma_end, radix: 16))"))
            }
            if start >= range.upperBound { break }
            let nameLength = Int(query.vma_name_size) > 0 ? Int(query.vma_name_size) - 1 : 0  // without its NUL
            let path = String(decoding: name.prefix(min(nameLength, name.count)), as: UTF8.self)
            let flags = query.vma_flags
            mappings.append(ProcessMapping(
                start: start, end: end, readable: flags & MEMSNAP_PROCMAP_QUERY_VMA_READABLE != 0,
                writable: flags & MEMSNAP_PROCMAP_QUERY_VMA_WRITABLE != 0,
                executable: flags & MEMSNAP_PROCMAP_QUERY_VMA_EXECUTABLE != 0,
                shared: flags & MEMSNAP_PROCMAP_QUERY_VMA_SHARED != 0, inode: query.inode, path: path))
            cursor = end
        }
        return mappings
    }

    /// Parses "START-END PERMS OFFSET DEV INODE [PATH]"; nil if the line is not of that shape.
    package static func parse<Line: Collection>(_ line: Line) -> ProcessMapping? where Line.Element == UInt8 {
        var fields: [[UInt8]] = []
        var current: [UInt8] = []
        var rest: [UInt8] = []
        var iterator = line.makeIterator()
        // The first five fields are separated by single spaces; the path, padded with spaces,
        // may contain spaces itself.
        while let byte = iterator.next() {
            if byte == UInt8(ascii: " ") && fields.count < 5 {
                if !current.isEmpty { fields.append(current); current = [] }
                continue
            }
            if fields.count < 5 {
                current.append(byte)
            } else {
                rest.append(byte)
            }
        }
        if fields.count < 5, !current.isEmpty { fields.append(current) }
        guard fields.count == 5 else { return nil }
        let range = fields[0].split(separator: UInt8(ascii: "-"))
        let permissions = fields[1]
        guard range.count == 2, permissions.count == 4,
              let start = UInt(String(decoding: range[0], as: UTF8.self), radix: 16),
              let end = UInt(String(decoding: range[1], as: UTF8.self), radix: 16), start <= end,
              let inode = UInt64(String(decoding: fields[4], as: UTF8.self)) else { return nil }
        let path = String(decoding: rest.drop { $0 == UInt8(ascii: " ") }, as: UTF8.self)
        return ProcessMapping(
            start: start, end: end, readable: permissions[0] == UInt8(ascii: "r"),
            writable: permissions[1] == UInt8(ascii: "w"), executable: permissions[2] == UInt8(ascii: "x"),
            shared: permissions[3] == UInt8(ascii: "s"), inode: inode, path: path)
    }
}
