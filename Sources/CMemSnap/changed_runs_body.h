// The bodies of memsnap_changed_runs and memsnap_changed_runs_in_ranges, compiled once per
// vector width by compare.c: it defines CHANGED_RUNS_NAME, CHANGED_RUNS_RANGES_NAME,
// CHANGED_RUNS_TARGET, LANE_MASK (64 bytes to a 64-bit mask of differing bytes),
// DIFFERING_BLOCKS (the block kernel of the same width), COPY_RUN (copy_run or a build of it
// for that width) and COPY_CLOSED_RUNS (the name of this width's copy loop, defined below),
// then includes this file.
// A template rather than a macro so the compiler inlines both helpers into each copy.

// Appends the open run to the table (the caller made sure there is room) and closes it.
#define CHANGED_RUNS_CLOSE()                                                                \
    do {                                                                                    \
        runs[count].start = open_start;                                                     \
        runs[count].end = open_end;                                                         \
        count++;                                                                            \
        open = 0;                                                                           \
    } while (0)

// Joins [first, last_end) to the open run, or closes it and opens a new one. Without a branch
// (whether a run closes depends on the data): the open run is stored at runs[count] every
// time, and kept (count advances) only when it closes. Every caller has checked that a block's
// runs fit, so that slot is free. In the C harness of `bench diff` this took 0.94 to 1.01x the
// time of the branch at 10 % dirty (the paired ratio to memcmp up 0.7 to 3.9 points in 5 of 5
// runs) and 0.99 to 1.01x at 1 %; in the process the difference was within the host's noise.
#define CHANGED_RUNS_ADD(first, last_end)                                                   \
    do {                                                                                    \
        const size_t add_first = (first);                                                   \
        const int add_joins = open & (add_first - open_end <= gap);                         \
        runs[count].start = open_start;                                                     \
        runs[count].end = open_end;                                                         \
        count += (size_t)(open & !add_joins);                                               \
        open_start = add_joins ? open_start : add_first;                                    \
        open_end = (last_end);                                                              \
        open = 1;                                                                           \
    } while (0)

// Every run of set bits of `mask` (bit i = byte at + i differs) through CHANGED_RUNS_ADD.
#define CHANGED_RUNS_EMIT(mask_value, at)                                                   \
    do {                                                                                    \
        uint64_t emit_mask = (mask_value);                                                  \
        while (emit_mask != 0) {                                                            \
            unsigned emit_first = (unsigned)__builtin_ctzll(emit_mask);                     \
            uint64_t emit_rest = ~(emit_mask >> emit_first);                                \
            unsigned emit_length = emit_rest != 0 ? (unsigned)__builtin_ctzll(emit_rest)    \
                                                  : 64u - emit_first;                       \
            CHANGED_RUNS_ADD((at) + emit_first, (at) + emit_first + emit_length);           \
            unsigned emit_next = emit_first + emit_length;                                  \
            emit_mask = emit_next >= 64 ? 0 : emit_mask & (~UINT64_C(0) << emit_next);      \
        }                                                                                   \
    } while (0)

// Exact differing bytes of [narrow_start, narrow_end): 64 bytes, then 8, then 1 at a time,
// never reading past narrow_end.
#define CHANGED_RUNS_NARROW(narrow_start, narrow_end)                                       \
    do {                                                                                    \
        size_t at = (narrow_start);                                                         \
        size_t stop = (narrow_end);                                                         \
        while (stop - at >= 64) {                                                           \
            CHANGED_RUNS_EMIT(LANE_MASK(a + at, b + at), at);                               \
            at += 64;                                                                       \
        }                                                                                   \
        while (stop - at >= 8) {                                                            \
            uint64_t x, y;                                                                  \
            memcpy(&x, a + at, 8);                                                          \
            memcpy(&y, b + at, 8);                                                          \
            CHANGED_RUNS_EMIT(differing_byte_mask(x ^ y), at);                              \
            at += 8;                                                                        \
        }                                                                                   \
        for (; at < stop; at++) {                                                           \
            if (a[at] != b[at]) CHANGED_RUNS_ADD(at, at + 1);                               \
        }                                                                                   \
    } while (0)

// One changed block (the caller's mask said so) of block_size bytes at `block_start`. For the
// default 128-byte block, the common case (a stored value or two: every changed byte within
// merge_gap + 2 bytes of span) is one run from the first changed byte to the last, found with
// two counts and no loop: any run of equal bytes inside that span is at most merge_gap long, so
// byte-by-byte runs would be joined into exactly that one. Other blocks are narrowed as usual.
#define CHANGED_RUNS_NARROW_BLOCK(block_start)                                              \
    do {                                                                                    \
        size_t narrow_block = (block_start);                                                \
        if (block == 128) {                                                                 \
            uint64_t low_mask = LANE_MASK(a + narrow_block, b + narrow_block);              \
            uint64_t high_mask = LANE_MASK(a + narrow_block + 64, b + narrow_block + 64);   \
            size_t first = low_mask != 0 ? (size_t)__builtin_ctzll(low_mask)                \
                                         : 64 + (size_t)__builtin_ctzll(high_mask | (UINT64_C(1) << 63)); \
            size_t last = high_mask != 0 ? 127 - (size_t)__builtin_clzll(high_mask)         \
                                         : 63 - (size_t)__builtin_clzll(low_mask | 1);      \
            if (last - first <= gap + 1) {                                                  \
                CHANGED_RUNS_ADD(narrow_block + first, narrow_block + last + 1);            \
            } else {                                                                        \
                CHANGED_RUNS_EMIT(low_mask, narrow_block);                                  \
                CHANGED_RUNS_EMIT(high_mask, narrow_block + 64);                            \
            }                                                                               \
        } else {                                                                            \
            CHANGED_RUNS_NARROW(narrow_block, narrow_block + block);                        \
        }                                                                                   \
    } while (0)

// The bytes of runs[payload->copied ..< count) into the payload while it has room: the kernel
// calls this after each narrowed chunk, so the bytes come from the core's caches. A run that
// does not fit stops the copying (it is retried at the next call and fails again, as room does
// not grow during a kernel call): the copied runs stay a prefix of the table.
CHANGED_RUNS_TARGET
static inline void COPY_CLOSED_RUNS(const unsigned char *a, const unsigned char *b, const memsnap_changed_run *runs,
                                    size_t count, memsnap_run_payload *payload) {
    size_t index = payload->copied;
    size_t used = payload->used;
    const size_t capacity = payload->capacity;
    for (; index < count; index++) {
        const size_t start = runs[index].start;
        const size_t length = runs[index].end - start;
        if (capacity - used < length || capacity - used - length < MEMSNAP_COPY_RUNS_SLACK) break;
        COPY_RUN(payload->bytes + used, a, b, payload->limit, start, length, payload->xor_original);
        used += length;
    }
    payload->copied = index;
    payload->used = used;
}

CHANGED_RUNS_TARGET
static size_t CHANGED_RUNS_NAME(const void *original, const void *updated, memsnap_changed_run_scan *scan,
                                memsnap_changed_run *runs, size_t capacity) {
    const unsigned char *a = original;
    const unsigned char *b = updated;
    const size_t block = scan->block_size;
    const size_t gap = scan->merge_gap;
    const size_t end = scan->end;
    // A changed block (or the ragged tail) closes at most block / 2 runs; one more for the last.
    const size_t need = memsnap_changed_runs_minimum_capacity(block);
    size_t position = scan->position;
    size_t open_start = scan->open_start;
    size_t open_end = scan->open_end;
    int open = scan->has_open_run != 0;  // 0 or 1: CHANGED_RUNS_ADD computes with it
    size_t count = 0;
    if (capacity < need || block == 0) return 0;
    while (position < end) {
        size_t whole = (end - position) / block;
        if (whole > 64) whole = 64;
        if (whole == 0) {
            // A region ending mid-block: the tail is narrowed directly.
            if (capacity - count < need) goto out;
            CHANGED_RUNS_NARROW(position, end);
            position = end;
            break;
        }
        uint64_t differing = DIFFERING_BLOCKS(a + position, b + position, block, whole);
        while (differing != 0) {
            size_t index = (size_t)__builtin_ctzll(differing);
            if (capacity - count < need) {
                position += index * block;  // blocks before it are done; resume at this one
                goto out;
            }
            differing &= differing - 1;
            size_t start = position + index * block;
            CHANGED_RUNS_NARROW_BLOCK(start);
        }
        position += whole * block;
    }
    if (open && count < capacity) CHANGED_RUNS_CLOSE();
out:
    scan->position = position;
    scan->open_start = open_start;
    scan->open_end = open_end;
    scan->has_open_run = open;
    return count;
}

// memsnap_changed_runs over a list of ranges, each range scanned as by its own call (runs never
// join across ranges), as a software pipeline over chunks (a chunk: up to 64 blocks of one
// range): the block masks (loads and no data-dependent branch) run ahead of the narrowing of
// changed blocks, whose bytes are then still in the core's caches. Each narrowing follows the
// mask of one more chunk, so its work (and its mispredicted branches, which flush only younger
// instructions) overlaps that chunk's loads instead of holding them up. The masks lead by
// CHANGED_RUNS_LEAD chunks across ranges, and by up to CHANGED_RUNS_RING chunks inside one
// range (long ranges stream better in longer bursts). When a range is entered, the first cache
// line of the range after the next is prefetched in both buffers: its page walks (which a
// prefetch waits for) and first misses then overlap other work, where the hardware prefetchers
// stop at page boundaries.
// In a C harness of `memsnap bench diff`'s workload (interleaved runs, share of memcmp speed):
// narrowing right after each chunk's loads 0.72 to 0.76x at 10 % dirty; masks of 16 chunks,
// then their narrowing, 0.80 to 0.83x (0.81 to 0.83x with the block scan unrolled, 0.85 to 0.90x
// at 1 %, 0.89 to 0.90x at 50 %); this pipeline 0.91 to 0.95x at 10 %, 0.88 to 0.98x at 1 %,
// 0.87 to 0.88x at 50 % and 0.83 to 0.86x at 100 % (one range; 0.86 to 0.87x before).
#ifndef CHANGED_RUNS_RING
#define CHANGED_RUNS_RING 16
#endif
#ifndef CHANGED_RUNS_LEAD
#define CHANGED_RUNS_LEAD 2
#endif
// A chunk waiting to be narrowed must never have its ring slot reused.
_Static_assert(CHANGED_RUNS_LEAD >= 1 && CHANGED_RUNS_LEAD <= CHANGED_RUNS_RING, "the masks lead within the ring");
CHANGED_RUNS_TARGET
static size_t CHANGED_RUNS_RANGES_NAME(const void *original, const void *updated, const memsnap_changed_run *ranges,
                                       size_t range_count, size_t *next_range, memsnap_changed_run_scan *scan,
                                       memsnap_changed_run *runs, size_t capacity, memsnap_run_payload *payload) {
    const unsigned char *a = original;
    const unsigned char *b = updated;
    const size_t block = scan->block_size;
    const size_t gap = scan->merge_gap;
    const size_t need = memsnap_changed_runs_minimum_capacity(block);
    size_t position = scan->position;
    size_t end = scan->end;
    size_t range = *next_range;  // the next range to enter
    size_t open_start = scan->open_start;
    size_t open_end = scan->open_end;
    int open = scan->has_open_run != 0;  // 0 or 1: CHANGED_RUNS_ADD computes with it
    size_t count = 0;
    struct {
        size_t position;
        size_t end;
        size_t range;  // `range` while the chunk's range is the current one
        size_t blocks;
        uint64_t differing;
    } chunks[CHANGED_RUNS_RING];
    if (payload) {
        payload->copied = 0;
        payload->used = 0;
    }
    if (capacity < need || block == 0) return 0;
    for (;;) {
        if (position >= end) {
            // The current range is done: its last run closes, the next range starts.
            if (open) {
                if (count >= capacity) goto out;
                CHANGED_RUNS_CLOSE();
            }
            if (range >= range_count) break;
            position = ranges[range].start;
            end = ranges[range].end;
            range++;
            continue;
        }
        if (end - position < block) {
            // A range ending mid-block: the tail is narrowed directly.
            if (capacity - count < need) goto out;
            CHANGED_RUNS_NARROW(position, end);
            position = end;
            if (payload) COPY_CLOSED_RUNS(a, b, runs, count, payload);
            continue;
        }
        // The pipeline, from here up to the first range tail shorter than a block (or the end).
        // chunks[masked % RING] is the next chunk to mask, chunks[narrowed % RING] the next to
        // narrow; `ahead` walks the ranges for the masks, `position` for the narrowing.
        size_t masked = 0, narrowed = 0;
        int exhausted = 0;
        size_t ahead = position, ahead_end = end, ahead_range = range;
        for (;;) {
            const size_t waiting = masked - narrowed;
            if (!exhausted && (waiting < CHANGED_RUNS_LEAD || (ahead < ahead_end && waiting < CHANGED_RUNS_RING))) {
                if (ahead >= ahead_end) {
                    if (ahead_range >= range_count) {
                        exhausted = 1;
                        continue;
                    }
                    ahead = ranges[ahead_range].start;
                    ahead_end = ranges[ahead_range].end;
                    ahead_range++;
                    if (ahead_range + 1 < range_count) {
                        const size_t far = ahead_range + 1;
                        if (ranges[far].end > ranges[far].start) {
                            __builtin_prefetch(a + ranges[far].start, 0, 3);
                            __builtin_prefetch(b + ranges[far].start, 0, 3);
                        }
                    }
                    continue;
                }
                size_t whole = (ahead_end - ahead) / block;
                if (whole == 0) {
                    exhausted = 1;  // a tail: narrowed directly once the pipeline drains
                    continue;
                }
                if (whole > 64) whole = 64;
                const size_t slot = masked % CHANGED_RUNS_RING;
                chunks[slot].position = ahead;
                chunks[slot].end = ahead_end;
                chunks[slot].range = ahead_range;
                chunks[slot].blocks = whole;
                chunks[slot].differing = DIFFERING_BLOCKS(a + ahead, b + ahead, block, whole);
                masked++;
                ahead += whole * block;
                continue;
            }
            if (waiting == 0) break;
            const size_t slot = narrowed % CHANGED_RUNS_RING;
            narrowed++;
            if (chunks[slot].range != range) {
                // The chunk opens a later range: the current one (done) closes its run first.
                if (open) {
                    if (count >= capacity) goto out;
                    CHANGED_RUNS_CLOSE();
                }
                range = chunks[slot].range;
                end = chunks[slot].end;
            }
            const size_t base = chunks[slot].position;
            uint64_t differing = chunks[slot].differing;
            position = base;
            while (differing != 0) {
                size_t index = (size_t)__builtin_ctzll(differing);
                if (capacity - count < need) {
                    position = base + index * block;  // blocks before it are done; resume at this one
                    goto out;
                }
                differing &= differing - 1;
                size_t start = base + index * block;
                CHANGED_RUNS_NARROW_BLOCK(start);
            }
            position = base + chunks[slot].blocks * block;
            if (payload) COPY_CLOSED_RUNS(a, b, runs, count, payload);
        }
    }
out:
    if (payload) COPY_CLOSED_RUNS(a, b, runs, count, payload);
    scan->position = position;
    scan->end = end;
    scan->open_start = open_start;
    scan->open_end = open_end;
    scan->has_open_run = open;
    *next_range = range;
    return count;
}

#undef CHANGED_RUNS_CLOSE
#undef CHANGED_RUNS_ADD
#undef CHANGED_RUNS_EMIT
#undef CHANGED_RUNS_NARROW
#undef CHANGED_RUNS_NARROW_BLOCK
