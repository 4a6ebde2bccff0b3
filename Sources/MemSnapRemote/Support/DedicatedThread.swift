import MemSnap

/// Runs blocking work (worker threads joining, page copies) on a thread of its own, so a task
/// awaiting it does not hold one of Swift concurrency's few cooperative threads meanwhile.
func onDedicatedThread<Value: Sendable>(
    named name: String, _ work: @escaping @Sendable () throws -> Value
) async throws -> Value {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
        do {
            // The thread is joined by nobody: it ends when `work` does and reports through the continuation.
            try OSThread(name: name) { continuation.resume(with: Result { try work() }) }.detach()
        } catch {
            continuation.resume(throwing: error)
        }
    }
}

extension Duration {
    /// The duration in seconds, for reports.
    var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) / 1e18
    }

    /// The duration in nanoseconds, saturating (for the wire).
    var nanosecondCount: UInt64 {
        let (whole, fraction) = components
        guard whole >= 0 else { return 0 }
        let (scaled, overflow) = UInt64(whole).multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : scaled &+ UInt64(fraction / 1_000_000_000)
    }
}
