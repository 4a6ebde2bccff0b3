#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemSnap

/// The physical limit for `memsnap bench remote`: plain TCP between the same two processes. The
/// server side (`memsnap serve --raw-sink`) reads every byte of each connection and answers with
/// the count; the client side times sending an image through it.
enum RawTCPSink {
    /// Listens on `host`, port 0, and serves connections on a thread of its own; returns the port.
    static func start(host: String) throws -> Int {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw MemSnapError.systemCall("socket", during: "start the raw TCP sink") }
        var address = try socketAddress(host: host, port: 0)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(listener, 4) == 0 else { throw MemSnapError.systemCall("bind/listen \(host)", during: "start the raw TCP sink") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let connection = accept(listener, nil, nil)
                if connection < 0 { continue }
                var total: UInt64 = 0
                while true {
                    let result = valueOrErrno { buffer.withUnsafeMutableBytes { read(connection, $0.baseAddress, $0.count) } }
                    guard case let .success(count) = result, count > 0 else { break }
                    total += UInt64(count)
                }
                var answer = total.littleEndian
                _ = write(connection, &answer, 8)
                close(connection)
            }
        }
        thread.start()
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Sends `bytes` to the sink at `host:port` and waits for its count; returns the seconds.
    static func send(_ bytes: UnsafeRawBufferPointer, host: String, port: Int) throws -> Double {
        let operation = "send \(ByteCount(bytes.count)) to the raw TCP sink at \(host):\(port)"
        let connection = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard connection >= 0 else { throw MemSnapError.systemCall("socket", during: operation) }
        defer { close(connection) }
        var address = try socketAddress(host: host, port: port)
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(connection, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw MemSnapError.systemCall("connect", during: operation) }
        let start = Stopwatch.now()
        do throws(PartialWriteFailure) {
            try writeAll(connection, [bytes], at: nil)
        } catch {
            throw MemSnapError(operation, .systemCall("write", error.errno))
        }
        shutdown(connection, Int32(SHUT_WR))
        var answer: UInt64 = 0
        guard read(connection, &answer, 8) == 8, UInt64(littleEndian: answer) == UInt64(bytes.count) else {
            throw MemSnapError(operation, .corrupt("the sink did not count every byte"))
        }
        return Double(Stopwatch.now() - start) / 1e9
    }

    private static func socketAddress(host: String, port: Int) throws -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else {
            throw MemSnapError("raw TCP sink", .invalidArgument("\(host) is not an IPv4 address"))
        }
        return address
    }
}
