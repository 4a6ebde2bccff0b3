/// Deterministic memory images with the structure of a real process heap, for demos, benchmarks
/// and tests: object pages (16-byte headers, pointers into the heap, small integers), text, float
/// arrays, counters, incompressible bytes, and untouched zero pages.
///
/// The same seed and size always give the same bytes, on every machine.
///
/// Thread safety: a value type; `fill` writes only to the buffer it is given.
package struct SyntheticHeap: Sendable {
    /// Fractions of pages of each kind, in percent; the defaults add up to 100.
    ///
    /// Any values are accepted: each page rolls 0..<100 and takes the first kind (in the order
    /// below) whose running total of shares exceeds the roll, else random bytes. So shares past
    /// 100 in all leave the later kinds out, negative shares take pages from nothing, and the
    /// total saturates instead of overflowing.
    package struct Mix: Sendable, Equatable {
        package var zero = 20, objects = 30, text = 15, floats = 15, counters = 10, random = 10
        package init() {}
    }

    package var seed: UInt64
    package var mix: Mix
    /// The address the heap pretends to live at, so that its pointers look like real ones.
    /// Pointers are `pretendBase` plus an offset, wrapping past `UInt64.max`.
    package var pretendBase: UInt64 = 0x7f3a_0000_0000

    package init(seed: UInt64 = 0x6d65_6d73_6e61_7021, mix: Mix = Mix()) {
        self.seed = seed
        self.mix = mix
    }

    /// Overwrites all of `buffer` with heap-like content. Page kinds are chosen per `Page.size`
    /// page from the seed and the page index, so any part of an image can be regenerated alone.
    package func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let start = buffer.baseAddress else { return }
        let pageSize = Page.size
        var offset = 0
        while offset < buffer.count {
            let count = min(pageSize, buffer.count - offset)
            fillPage(index: offset / pageSize, into: UnsafeMutableRawBufferPointer(start: start + offset, count: count),
                     heapSize: buffer.count)
            offset += count
        }
    }

    /// Heap-like bytes for one page, by index.
    func fillPage(index: Int, into page: UnsafeMutableRawBufferPointer, heapSize: Int) {
        var random = SplitMix64(seed: seed &+ UInt64(truncatingIfNeeded: index) &* 0x9E37_79B9_7F4A_7C15)
        let roll = Int(random.next() % 100)
        // Shares are the caller's: add them without overflowing.
        var threshold = 0
        func reaches(_ share: Int) -> Bool {
            let (sum, overflow) = threshold.addingReportingOverflow(share)
            threshold = overflow ? (share > 0 ? Int.max : Int.min) : sum
            return roll < threshold
        }
        if reaches(mix.zero) { page.initializeMemory(as: UInt8.self, repeating: 0); return }
        if reaches(mix.objects) { fillObjects(page, &random, heapSize: heapSize); return }
        if reaches(mix.text) { fillText(page, &random); return }
        if reaches(mix.floats) { fillFloats(page, &random); return }
        if reaches(mix.counters) { fillCounters(page, &random, index: index); return }
        fillRandom(page, &random)
    }

    private func fillObjects(_ page: UnsafeMutableRawBufferPointer, _ random: inout SplitMix64, heapSize: Int) {
        page.initializeMemory(as: UInt8.self, repeating: 0)
        let words = page.count / 8
        var word = 0
        while word + 2 <= words {
            let fieldCount = Int(random.next() % 12) + 1
            let typeTag = UInt64(random.next() % 24)
            // Header: type tag, field count, GC mark bits in the high half.
            page.storeBytes(of: (typeTag | UInt64(fieldCount) << 8 | 0xA5 << 56).littleEndian,
                            toByteOffset: word * 8, as: UInt64.self)
            page.storeBytes(of: UInt64(0).littleEndian, toByteOffset: word * 8 + 8, as: UInt64.self)
            word += 2
            for _ in 0..<fieldCount where word < words {
                let choice = random.next() % 4
                let value: UInt64
                switch choice {
                case 0, 1: value = pretendBase &+ (random.next() % UInt64(max(heapSize, 16))) & ~15  // pointer
                case 2: value = random.next() % 1000  // small integer
                default: value = 0  // null or unused field
                }
                page.storeBytes(of: value.littleEndian, toByteOffset: word * 8, as: UInt64.self)
                word += 1
            }
        }
    }

    private static let vocabulary: [[UInt8]] = [
        "the", "snapshot", "memory", "page", "worker", "restore", "function", "return", "value",
        "request", "response", "user", "error", "id", "name", "status", "ok", "timestamp", "json",
        "{\"key\":", "\"value\"}", "GET", "/api/v1/", "200", "true", "false", "null", "\n",
    ].map { Array($0.utf8) }

    private func fillText(_ page: UnsafeMutableRawBufferPointer, _ random: inout SplitMix64) {
        var position = 0
        while position < page.count {
            let word = Self.vocabulary[Int(random.next() % UInt64(Self.vocabulary.count))]
            for byte in word where position < page.count {
                page[position] = byte
                position += 1
            }
            if position < page.count { page[position] = 0x20; position += 1 }
        }
    }

    private func fillFloats(_ page: UnsafeMutableRawBufferPointer, _ random: inout SplitMix64) {
        var value = Double(random.next() % 1000) / 7
        let step = Double(random.next() % 100) / 1000
        for slot in 0..<page.count / 8 {
            // A smooth signal with a little noise, like simulation state or model weights.
            value += step + Double(random.next() % 16) / 65536
            page.storeBytes(of: value.bitPattern.littleEndian, toByteOffset: slot * 8, as: UInt64.self)
        }
    }

    private func fillCounters(_ page: UnsafeMutableRawBufferPointer, _ random: inout SplitMix64, index: Int) {
        let start = UInt32(truncatingIfNeeded: index &* 1024) &+ UInt32(truncatingIfNeeded: random.next() % 64)
        for slot in 0..<page.count / 4 {
            page.storeBytes(of: (start &+ UInt32(slot)).littleEndian, toByteOffset: slot * 4, as: UInt32.self)
        }
    }

    private func fillRandom(_ page: UnsafeMutableRawBufferPointer, _ random: inout SplitMix64) {
        for slot in 0..<page.count / 8 {
            page.storeBytes(of: random.next(), toByteOffset: slot * 8, as: UInt64.self)
        }
    }
}

/// SplitMix64: a tiny, fast, well-mixed deterministic generator (Steele, Lea, Flood 2014).
package struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    package init(seed: UInt64) { state = seed }

    package mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
