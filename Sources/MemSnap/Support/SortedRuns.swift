/// Building sorted runs (page or byte ranges) one at a time, in ascending order of their starts.
extension Array where Element == Range<Int> {
    /// Appends `run`, which starts at or after the last run's start, joined to the last run when
    /// the two touch or overlap: an array built this way stays sorted, disjoint and non-adjacent.
    @inline(__always)
    package mutating func appendJoining(_ run: Range<Int>) {
        if let last = self.last, run.lowerBound <= last.upperBound {
            self[count - 1] = last.lowerBound..<Swift.max(last.upperBound, run.upperBound)
        } else {
            append(run)
        }
    }
}
