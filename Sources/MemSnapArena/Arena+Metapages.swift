import MemSnap

/// Metapages: the two slots at the start of the heap file that say which commit the heap file
/// holds (format in ArenaFormat and ArenaMeta).
extension Arena {
    /// Writes `meta` into both slots, one after the other, each made durable before the next:
    /// a crash tears at most one slot (the other stays valid, and the log is still there to
    /// replay), and a bit flipped later in either copy falls back to an identical one.
    func writeMeta(_ meta: ArenaMeta, during operation: String) throws(MemSnapError) {
        try Arena.writeMeta(meta, to: heapFile, lastSlot: nil, during: operation) { (file) throws(MemSnapError) in
            try flush(file, during: operation)
        }
    }

    /// `lastSlot`: a slot that may hold the only intact copy (after damage found on open), so it
    /// is rewritten only once the other one is durable.
    static func writeMeta(_ meta: ArenaMeta, to file: any ArenaFile, lastSlot: Int?, during operation: String,
                          flush: (any ArenaFile) throws(MemSnapError) -> Void) throws(MemSnapError) {
        let bytes = meta.encoded()
        let first = lastSlot.map { 1 - $0 } ?? Int(meta.counter % 2)
        for slot in [first, 1 - first] {
            try file.write(bytes, at: slot * ArenaFormat.slotSize, during: operation)
            try flush(file)
        }
    }

    /// The newest valid metapage, whether both copies are valid and equal, and which slot it is in.
    /// - Throws: `.corrupt` saying why neither slot can be used.
    static func readMeta(_ file: any ArenaFile, during operation: String) throws(MemSnapError) -> (ArenaMeta, Bool, Int) {
        let slots = try file.bytes(2 * ArenaFormat.slotSize, at: 0, during: operation)
            ?? [UInt8](repeating: 0, count: 2 * ArenaFormat.slotSize)
        let decoded = slots.withUnsafeBytes { bytes in
            [0, 1].map { slot in
                ArenaMeta.decode(UnsafeRawBufferPointer(rebasing: bytes[slot * ArenaFormat.slotSize..<(slot + 1) * ArenaFormat.slotSize]))
            }
        }
        let valid = decoded.compactMap { try? $0.get() }
        let validSlots = decoded.indices.filter { (try? decoded[$0].get()) != nil }
        guard let newestSlot = validSlots.max(by: { (try? decoded[$0].get())?.counter ?? 0 < (try? decoded[$1].get())?.counter ?? 0 }),
              let newest = try? decoded[newestSlot].get() else {
            let why = decoded.enumerated().map { slot, result in
                if case let .failure(problem) = result { "slot \(slot): \(problem.text)" } else { "slot \(slot): ok" }
            }
            throw MemSnapError(operation, .corrupt(
                "both metapages are damaged or missing (\(why.joined(separator: "; "))); not an arena, or destroyed"))
        }
        return (newest, valid.count == 2 && valid[0] == valid[1], newestSlot)
    }
}
