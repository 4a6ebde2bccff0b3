#if canImport(Glibc)
import Glibc
#endif
import CMemSnap

/// How `Snapshot.diff` finds and packages changes.
public struct DiffOptions: Sendable, Equatable {
    /// Bytes compared at a time inside dirty pages before narrowing to exact bytes (a power of
    /// two from 16 to the page size). 128 measured fastest here (BENCHMARKS.md, "Diffs").
    public var blockSize: Int
    /// Runs of changed bytes separated by fewer unchanged bytes than this are sent as one diff:
    /// a diff's header (20 bytes encoded) costs more than the gap.
    public var mergeGap: Int
    /// The operation for bytes no merge region covers: `.bytewise` or `.xor`.
    public var fillOperation: MergeOperation

    public init(blockSize: Int = 128, mergeGap: Int = 20, fillOperation: MergeOperation = .bytewise) {
        self.blockSize = blockSize
        self.mergeGap = mergeGap
        self.fillOperation = fillOperation
    }

    func validate(during operation: @autoclosure () -> String) throws(MemSnapError) {
        guard blockSize >= 16, blockSize <= Page.size, blockSize & (blockSize - 1) == 0 else {
            throw MemSnapError(operation(), .invalidArgument("block size \(blockSize) is not a power of two from 16 to \(Page.size)"))
        }
        guard mergeGap >= 0 else { throw MemSnapError(operation(), .invalidArgument("merge gap \(mergeGap) is negative")) }
        guard fillOperation == .bytewise || fillOperation == .xor else {
            throw MemSnapError(operation(), .invalidArgument(
                "gaps between merge regions can be filled with bytewise or xor, not \(fillOperation)"))
        }
    }
}

/// Computes diffs between an original image and updated memory.
enum Differ {
    /// One stretch of the snapshot with the rule that governs it.
    struct Segment: Equatable {
        var range: Range<Int>
        var dataType: MergeDataType
        var operation: MergeOperation
    }

    /// The segments covering `0..<size`: the regions in offset order, clipped to `size`, with the
    /// gaps between them (never zero-length) filled by `fill`.
    static func plan(_ regions: [MergeRegion], size: Int, fill: MergeOperation) -> [Segment] {
        var segments: [Segment] = []
        var cursor = 0
        for region in regions.sorted(by: { $0.offset < $1.offset }) {
            let range = region.range(inSnapshotOf: size)
            guard !range.isEmpty else { continue }
            if range.lowerBound > cursor {
                segments.append(Segment(range: cursor..<range.lowerBound, dataType: .raw, operation: fill))
            }
            segments.append(Segment(range: range, dataType: region.dataType, operation: region.operation))
            cursor = range.upperBound
        }
        if cursor < size { segments.append(Segment(range: cursor..<size, dataType: .raw, operation: fill)) }
        return segments
    }

    /// The diffs that turn `original` into `updated`, reading only the `dirty` pages (page `i`:
    /// bytes `i * Page.size ..< (i + 1) * Page.size`), governed by `segments`. Bytes of `updated`
    /// past `original` form one bytewise extension diff. `operation` names the call in errors
    /// and is formatted only for one.
    static func diff(
        original: UnsafeRawBufferPointer, updated: UnsafeRawBufferPointer, dirty: DirtyPages,
        segments: [Segment], options: DiffOptions, during operation: @autoclosure () -> String
    ) throws(MemSnapError) -> SnapshotDiffBatch {
        let comparable = min(original.count, updated.count)
        // The dirty pages inside the compared bytes, as the table the kernel reads (start, end).
        let dirtyRanges = UnsafeMutableBufferPointer<memsnap_changed_run>.allocate(capacity: max(1, dirty.runs.count))
        defer { dirtyRanges.deallocate() }
        // One run table for the whole call: the kernel fills it, appendChangedRuns empties it.
        let runTable = UnsafeMutableBufferPointer<memsnap_changed_run>.allocate(capacity: changedRunTableCapacity)
        defer { runTable.deallocate() }
        // The dirty ranges, made in one pass that also counts their bytes. Page runs are sorted
        // and disjoint, and `DirtyPages.maxPageCount` keeps every page's byte offset inside Int.
        var dirtyRangeCount = 0
        var dirtyBytes = 0
        for run in dirty.runs {
            let start = run.lowerBound << Page.shift
            let end = min(run.upperBound << Page.shift, comparable)
            guard start < end else { break }  // this run and every later one lie past the compared bytes
            dirtyRanges[dirtyRangeCount] = memsnap_changed_run(start: start, end: end)
            dirtyRangeCount += 1
            dirtyBytes += end - start
        }
        // Sparse writes (the common case) produce a few bytes per dirty page; a batch that
        // changes more grows the buffer by doubling. The hint is capped: it sizes a first
        // allocation, not a limit.
        let hintCap = 1 << 24
        var batch = DiffBatchBuilder(payloadHint: min(dirtyBytes / 32 + max(0, updated.count - original.count), hintCap),
                                     runHint: min(dirtyBytes >> 10, hintCap >> 4))
        // Room for one segment's ranges with the first and last clipped to it (merge regions only).
        var clipped: [memsnap_changed_run] = []
        if let originalBase = original.baseAddress, let updatedBase = updated.baseAddress, let rangeBase = dirtyRanges.baseAddress {
            var dirtyIndex = 0
            for segment in segments {
                let segmentRange = segment.range.clamped(to: 0..<comparable)
                guard !segmentRange.isEmpty, segment.operation != .ignore else { continue }
                // Dirty ranges are sorted and so are segments: walk both once.
                while dirtyIndex < dirtyRangeCount && dirtyRanges[dirtyIndex].end <= segmentRange.lowerBound { dirtyIndex += 1 }
                var endIndex = dirtyIndex
                while endIndex < dirtyRangeCount && dirtyRanges[endIndex].start < segmentRange.upperBound { endIndex += 1 }
                guard endIndex > dirtyIndex else { continue }
                switch segment.operation {
                case .bytewise, .xor:
                    // The ranges as they are when the segment holds them whole (always without
                    // merge regions), else a copy clipped to the segment (only the first and
                    // the last can reach past it).
                    let lower = segmentRange.lowerBound, upper = segmentRange.upperBound
                    let whole = UnsafeBufferPointer(start: rangeBase + dirtyIndex, count: endIndex - dirtyIndex)
                    if whole[0].start >= lower && whole[whole.count - 1].end <= upper {
                        appendChangedRuns(originalBase, updatedBase, limit: comparable, in: whole, segment.operation,
                                          options: options, table: runTable, to: &batch)
                    } else {
                        clipped.removeAll(keepingCapacity: true)
                        for range in whole {
                            clipped.append(memsnap_changed_run(start: max(range.start, lower), end: min(range.end, upper)))
                        }
                        clipped.withUnsafeBufferPointer { ranges in
                            appendChangedRuns(originalBase, updatedBase, limit: comparable, in: ranges, segment.operation,
                                              options: options, table: runTable, to: &batch)
                        }
                    }
                case .sum, .product, .subtract, .max, .min:
                    guard segmentRange.count % segment.dataType.width == 0 else {
                        throw MemSnapError(operation(), .invalidArgument(
                            "merge region \(segment.dataType) \(segment.operation) at \(segmentRange.lowerBound) "
                            + "covers \(segmentRange.count) bytes, not a whole number of values"))
                    }
                    appendTypedDiffs(segment, in: segmentRange, originalBase, updatedBase, to: &batch)
                case .ignore:
                    break
                }
            }
        }
        if updated.count > original.count, let updatedBase = updated.baseAddress {
            batch.appendBytes(.bytewise, original: updatedBase, updated: updatedBase, run: original.count..<updated.count)
        }
        return batch.finish()
    }

    /// Room in the run table: enough for the kernel to make progress with the largest block
    /// (memsnap_changed_runs_minimum_capacity(Page.size) is 2 050), few enough calls per range
    /// that their cost does not show, and under 64 KiB (40 KiB): glibc's free of a block of
    /// 64 KiB or more consolidates the heap and may hand its top back to the kernel
    /// (`madvise(MADV_DONTNEED)`), and the table, freed on every call, then cost the next call
    /// about 3 zero-fill faults (6 to 8 µs at 1 % dirty, BENCHMARKS.md, "fifth pass").
    static let changedRunTableCapacity = 2560

    /// Appends a diff for each maximal run of changed bytes in each of `ranges` (sorted, inside
    /// the first `limit` bytes of both buffers; runs at most `options.mergeGap` equal bytes apart joined, never across
    /// ranges). The C kernel `memsnap_changed_runs_in_ranges` scans, narrows and joins (so it can
    /// pick AVX-512 or AVX2 at run time) over all the ranges in one call, fills `table` with runs
    /// and copies their bytes to the payload's free end while they are in the caches;
    /// `DiffBatchBuilder.appendRuns` records them (and copies what did not fit).
    static func appendChangedRuns(
        _ original: UnsafeRawPointer, _ updated: UnsafeRawPointer, limit: Int,
        in ranges: UnsafeBufferPointer<memsnap_changed_run>, _ operation: MergeOperation, options: DiffOptions,
        table: UnsafeMutableBufferPointer<memsnap_changed_run>, to batch: inout DiffBatchBuilder
    ) {
        guard let runs = table.baseAddress, let rangeBase = ranges.baseAddress, !ranges.isEmpty else { return }
        // size_t is imported as Int; every value is non-negative (the ranges are clamped to the
        // memory, the options validated), so the kernel sees them unchanged.
        var scan = memsnap_changed_run_scan(
            position: 0, end: 0, block_size: options.blockSize, merge_gap: options.mergeGap,
            open_start: 0, open_end: 0, has_open_run: 0)
        var payload = memsnap_run_payload(bytes: nil, capacity: 0, limit: limit, xor_original: operation == .xor ? 1 : 0,
                                          copied: 0, used: 0)
        var nextRange = 0
        while true {
            let before = (nextRange, scan.position)
            let room = batch.payloadRoom()
            payload.bytes = room.baseAddress
            payload.capacity = room.count
            let found = memsnap_changed_runs_in_ranges(original, updated, rangeBase, ranges.count, &nextRange, &scan,
                                                       runs, table.count, &payload)
            // The kernel's runs lie inside the ranges; it copied the bytes of a prefix of them.
            let foundRuns = max(0, min(found, table.count))
            batch.appendRuns(UnsafeBufferPointer(start: runs, count: foundRuns), operation,
                             copiedRuns: min(payload.copied, foundRuns), copiedBytes: payload.used,
                             original: original, updated: updated, limit: limit)
            if nextRange >= ranges.count && scan.position >= scan.end && scan.has_open_run == 0 { break }
            // A table too small for the block size would stall the kernel: never loop forever.
            if found == 0 && nextRange == before.0 && scan.position == before.1 { break }
        }
    }

    /// Typed diffs of one arithmetic segment: nothing if no value changed, else one diff with a
    /// value per element; elements whose product has no factor (original 0) go as bytewise diffs.
    static func appendTypedDiffs(
        _ segment: Segment, in range: Range<Int>, _ original: UnsafeRawPointer, _ updated: UnsafeRawPointer,
        to batch: inout DiffBatchBuilder
    ) {
        switch segment.dataType {
        case .int32: appendTypedDiffs(Int32.self, segment, range, original, updated, &batch)
        case .int64: appendTypedDiffs(Int64.self, segment, range, original, updated, &batch)
        case .float: appendTypedDiffs(Float.self, segment, range, original, updated, &batch)
        case .double: appendTypedDiffs(Double.self, segment, range, original, updated, &batch)
        case .raw, .bool: break
        }
    }

    private static func appendTypedDiffs<Value: MergeArithmetic>(
        _: Value.Type, _ segment: Segment, _ range: Range<Int>, _ original: UnsafeRawPointer,
        _ updated: UnsafeRawPointer, _ batch: inout DiffBatchBuilder
    ) {
        let width = Value.byteWidth
        var changed = false
        var values = [UInt8](repeating: 0, count: range.count)
        var overwrites: [Range<Int>] = []
        values.withUnsafeMutableBytes { output in
            guard let outputBase = output.baseAddress else { return }  // an empty range
            for element in stride(from: 0, to: range.count, by: width) {
                let old = Value(littleEndianAt: original + range.lowerBound + element)
                let new = Value(littleEndianAt: updated + range.lowerBound + element)
                let same = old.sameBits(as: new)
                changed = changed || !same
                if segment.operation == .product && old.isZero && !same {
                    // No factor turns 0 into the new value: send the value itself; the product
                    // diff carries the identity 1 for this element.
                    overwrites.append(range.lowerBound + element..<range.lowerBound + element + width)
                }
                // An unchanged element carries the operation's identity, never old - old (which is
                // NaN for an infinity) or old / old.
                let carried = same ? Value.identity(segment.operation, original: old)
                    : Value.diffValue(segment.operation, original: old, updated: new)
                carried.storeLittleEndian(at: outputBase + element)
            }
        }
        guard changed else { return }
        values.withUnsafeBytes { bytes in
            batch.append(offset: range.lowerBound, dataType: segment.dataType, operation: segment.operation, bytes: bytes)
        }
        for element in overwrites {
            batch.appendBytes(.bytewise, original: updated, updated: updated, run: element)
        }
    }

    /// Applies one arithmetic diff (`carried`: its bytes) to `target` (the snapshot's bytes at
    /// the diff's offset). The caller has checked that the bytes are a whole number of values
    /// and fit the target.
    static func applyTyped(
        _ dataType: MergeDataType, _ operation: MergeOperation, _ carried: UnsafeRawBufferPointer,
        to target: UnsafeMutableRawPointer
    ) {
        switch dataType {
        case .int32: applyTyped(Int32.self, operation, carried, target)
        case .int64: applyTyped(Int64.self, operation, carried, target)
        case .float: applyTyped(Float.self, operation, carried, target)
        case .double: applyTyped(Double.self, operation, carried, target)
        case .raw, .bool: break
        }
    }

    private static func applyTyped<Value: MergeArithmetic>(
        _: Value.Type, _ operation: MergeOperation, _ carried: UnsafeRawBufferPointer, _ target: UnsafeMutableRawPointer
    ) {
        guard let carriedBase = carried.baseAddress else { return }
        // Whole values only: a ragged tail (which apply refuses) would be ignored, not overread.
        for element in stride(from: 0, to: carried.count - Value.byteWidth + 1, by: Value.byteWidth) {
            let original = Value(littleEndianAt: target + element)
            let value = Value(littleEndianAt: carriedBase + element)
            Value.applied(operation, original: original, diff: value).storeLittleEndian(at: target + element)
        }
    }
}
