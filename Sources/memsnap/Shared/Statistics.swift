/// The median of `values` (the upper one of an even count), 0 for none: what every benchmark
/// reports, so that one slow outlier on a shared machine does not move a figure.
func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}
