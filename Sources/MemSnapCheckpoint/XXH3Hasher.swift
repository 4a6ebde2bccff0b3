import CMemSnapCodecs

/// Streaming XXH3-64 (seed 0). Owns its libxxhash state.
final class XXH3Hasher {
    private let state: OpaquePointer

    init() {
        state = XXH3_createState()
        XXH3_64bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    func update(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress, !bytes.isEmpty { XXH3_64bits_update(state, base, bytes.count) }
    }

    func digest() -> UInt64 { XXH3_64bits_digest(state) }
}
