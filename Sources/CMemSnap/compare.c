// The block-compare kernel under Snapshot.diff. In C because it needs what Swift cannot say:
// per-function target features with run-time CPU dispatch. The widest build the CPU supports is
// chosen on first call (not with target_clones: its ifunc resolvers run before sanitizer
// runtimes start, which crashes instrumented builds at load time).
#include "CMemSnap.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define DIFFERING_BLOCKS_BODY                                                        \
    const unsigned char *a = left;                                                   \
    const unsigned char *b = right;                                                  \
    uint64_t mask = 0;                                                               \
    size_t words = block_size / 8;                                                   \
    if (blocks > 64) blocks = 64;                                                    \
    for (size_t block = 0; block < blocks; block++) {                                \
        uint64_t accumulated = 0;                                                    \
        for (size_t word = 0; word < words; word++) {                                \
            uint64_t x, y;                                                           \
            memcpy(&x, a + block * block_size + word * 8, 8);                        \
            memcpy(&y, b + block * block_size + word * 8, 8);                        \
            accumulated |= x ^ y;                                                    \
        }                                                                            \
        mask |= (uint64_t)(accumulated != 0) << block;                               \
    }                                                                                \
    return mask;

typedef uint64_t (*differing_blocks_function)(const void *, const void *, size_t, size_t);

static uint64_t differing_blocks_baseline(const void *left, const void *right, size_t block_size, size_t blocks) {
    DIFFERING_BLOCKS_BODY
}

#if defined(__x86_64__)
__attribute__((target("avx2")))
static uint64_t differing_blocks_avx2(const void *left, const void *right, size_t block_size, size_t blocks) {
    DIFFERING_BLOCKS_BODY
}

__attribute__((target("avx512f,avx512bw")))
static uint64_t differing_blocks_avx512(const void *left, const void *right, size_t block_size, size_t blocks) {
    DIFFERING_BLOCKS_BODY
}
#endif

// ---- changed runs: the differ's scan, narrowing and run extraction in one pass ----

typedef size_t (*changed_runs_function)(const void *, const void *, memsnap_changed_run_scan *,
                                        memsnap_changed_run *, size_t);

// Bit i set where byte i of `difference` (in memory order) is not zero: each byte folded to its
// low bit, then the eight low bits gathered into the top byte by one multiplication (the
// partial products never overlap, so nothing carries).
static inline uint64_t differing_byte_mask(uint64_t difference) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    difference = __builtin_bswap64(difference);
#endif
    uint64_t folded = difference | (difference >> 4);
    folded |= folded >> 2;
    folded |= folded >> 1;
    folded &= UINT64_C(0x0101010101010101);
    return (folded * UINT64_C(0x0102040810204080)) >> 56;
}

// Whether the 32 bytes from `address` lie in one 4096-byte-aligned page. Memory is protected per
// page (4 KiB or a multiple), so they are as readable as the byte at `address`: a run's fixed
// 32-byte move never touches a page the run does not, such as a clean page made inaccessible.
static inline int memsnap_in_one_page(const unsigned char *address) {
    return ((uintptr_t)address & 4095) <= 4096 - 32;
}

// One run's bytes (or, with `xor_original`, updated XOR original) to `target`. Short runs (the
// common case: a few stored words) move as 32 bytes without a call or a branch on their length
// when the 32 bytes lie inside `limit` and inside the page of the run's first byte; the bytes
// past the run land in the next run's place or the payload's slack.
static inline void copy_run(unsigned char *target, const unsigned char *a, const unsigned char *b, size_t limit,
                            size_t start, size_t length, int xor_original) {
    if (length <= 32 && limit - start >= 32 && memsnap_in_one_page(b + start)
        && (!xor_original || memsnap_in_one_page(a + start))) {
        unsigned char chunk[32];
        memcpy(chunk, b + start, 32);
        if (xor_original) {
            unsigned char old[32];
            memcpy(old, a + start, 32);
            for (unsigned byte = 0; byte < 32; byte++) chunk[byte] ^= old[byte];
        }
        memcpy(target, chunk, 32);
    } else if (xor_original) {
        memsnap_xor_bytes(target, a + start, b + start, length);
    } else {
        memcpy(target, b + start, length);
    }
}

static inline uint64_t lane_mask_baseline(const unsigned char *a, const unsigned char *b) {
    uint64_t mask = 0;
    for (unsigned word = 0; word < 8; word++) {
        uint64_t x, y;
        memcpy(&x, a + word * 8, 8);
        memcpy(&y, b + word * 8, 8);
        mask |= differing_byte_mask(x ^ y) << (word * 8);
    }
    return mask;
}

#define CHANGED_RUNS_NAME changed_runs_baseline
#define CHANGED_RUNS_RANGES_NAME changed_runs_in_ranges_baseline
#define CHANGED_RUNS_TARGET
#define LANE_MASK lane_mask_baseline
#define DIFFERING_BLOCKS differing_blocks_baseline
#define COPY_CLOSED_RUNS copy_closed_runs_baseline
#define COPY_RUN copy_run
#include "changed_runs_body.h"
#undef CHANGED_RUNS_NAME
#undef CHANGED_RUNS_RANGES_NAME
#undef CHANGED_RUNS_TARGET
#undef LANE_MASK
#undef DIFFERING_BLOCKS
#undef COPY_CLOSED_RUNS
#undef COPY_RUN

#if defined(__x86_64__)
__attribute__((target("avx2")))
static inline uint64_t lane_mask_avx2(const unsigned char *a, const unsigned char *b) {
    uint32_t low = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
        _mm256_loadu_si256((const __m256i *)a), _mm256_loadu_si256((const __m256i *)b)));
    uint32_t high = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(
        _mm256_loadu_si256((const __m256i *)(a + 32)), _mm256_loadu_si256((const __m256i *)(b + 32))));
    return ~(((uint64_t)high << 32) | low);
}

__attribute__((target("avx512f,avx512bw")))
static inline uint64_t lane_mask_avx512(const unsigned char *a, const unsigned char *b) {
    return _mm512_cmpneq_epi8_mask(_mm512_loadu_si512((const void *)a), _mm512_loadu_si512((const void *)b));
}

#define CHANGED_RUNS_NAME changed_runs_avx2
#define CHANGED_RUNS_RANGES_NAME changed_runs_in_ranges_avx2
#define CHANGED_RUNS_TARGET __attribute__((target("avx2")))
#define LANE_MASK lane_mask_avx2
#define DIFFERING_BLOCKS differing_blocks_avx2
#define COPY_CLOSED_RUNS copy_closed_runs_avx2
#define COPY_RUN copy_run
#include "changed_runs_body.h"
#undef CHANGED_RUNS_NAME
#undef CHANGED_RUNS_RANGES_NAME
#undef CHANGED_RUNS_TARGET
#undef LANE_MASK
#undef DIFFERING_BLOCKS
#undef COPY_CLOSED_RUNS
#undef COPY_RUN

// The block scan with 64-byte vectors written out: the compiler vectorizes the generic body
// with 32-byte ones and reduces every block through three shuffles. Blocks under 64 bytes
// take the generic body.
__attribute__((target("avx512f,avx512bw")))
static inline uint64_t differing_blocks_avx512_wide(const void *left, const void *right, size_t block_size, size_t blocks) {
    if (block_size < 64) return differing_blocks_avx512(left, right, block_size, blocks);
    const unsigned char *a = left;
    const unsigned char *b = right;
    uint64_t mask = 0;
    if (blocks > 64) blocks = 64;
    if (block_size == 128) {
        // The default block size, unrolled (two vectors of each side per block): the loop over
        // 64-byte steps scanned equal pages at 0.9x memcmp from memory, this at memcmp's pace.
        for (size_t block = 0; block < blocks; block++) {
            const unsigned char *x = a + block * 128;
            const unsigned char *y = b + block * 128;
            __m512i low = _mm512_xor_si512(_mm512_loadu_si512((const void *)x), _mm512_loadu_si512((const void *)y));
            __m512i high = _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + 64)),
                                            _mm512_loadu_si512((const void *)(y + 64)));
            __m512i either = _mm512_or_si512(low, high);
            mask |= (uint64_t)(_mm512_test_epi64_mask(either, either) != 0) << block;
        }
        return mask;
    }
    for (size_t block = 0; block < blocks; block++) {
        const unsigned char *x = a + block * block_size;
        const unsigned char *y = b + block * block_size;
        __m512i accumulated = _mm512_setzero_si512();
        for (size_t offset = 0; offset < block_size; offset += 64) {
            accumulated = _mm512_or_si512(accumulated, _mm512_xor_si512(_mm512_loadu_si512((const void *)(x + offset)),
                                                                        _mm512_loadu_si512((const void *)(y + offset))));
        }
        mask |= (uint64_t)(_mm512_test_epi64_mask(accumulated, accumulated) != 0) << block;
    }
    return mask;
}

// copy_run with AVX-512: a run of up to 32 bytes (the common case) is one masked load of its
// own bytes (masked-off bytes are never read, so they cannot fault: no check of the page or of
// `limit`) and a 32-byte store into the payload's slack. In the C harness of `bench diff` (the
// anchor on the worker's own pages, 5 runs alternating with copy_run) the whole kernel took
// 0.965 to 0.989x the time at 1 % dirty and 0.88 to 1.02x at 10 %.
__attribute__((target("avx512f,avx512bw")))
static inline void copy_run_avx512(unsigned char *target, const unsigned char *a, const unsigned char *b, size_t limit,
                                   size_t start, size_t length, int xor_original) {
    if (length > 32) {
        copy_run(target, a, b, limit, start, length, xor_original);
        return;
    }
    const __mmask64 own = (__mmask64)((UINT64_C(1) << length) - 1);
    __m512i bytes = _mm512_maskz_loadu_epi8(own, b + start);
    if (xor_original) bytes = _mm512_xor_si512(bytes, _mm512_maskz_loadu_epi8(own, a + start));
    _mm256_storeu_si256((__m256i *)target, _mm512_castsi512_si256(bytes));
}

#define CHANGED_RUNS_NAME changed_runs_avx512
#define CHANGED_RUNS_RANGES_NAME changed_runs_in_ranges_avx512
#define CHANGED_RUNS_TARGET __attribute__((target("avx512f,avx512bw")))
#define LANE_MASK lane_mask_avx512
#define DIFFERING_BLOCKS differing_blocks_avx512_wide
#define COPY_CLOSED_RUNS copy_closed_runs_avx512
#define COPY_RUN copy_run_avx512
#include "changed_runs_body.h"
#undef CHANGED_RUNS_NAME
#undef CHANGED_RUNS_RANGES_NAME
#undef CHANGED_RUNS_TARGET
#undef LANE_MASK
#undef DIFFERING_BLOCKS
#undef COPY_CLOSED_RUNS
#undef COPY_RUN
#endif

static differing_blocks_function chosen = differing_blocks_baseline;
static changed_runs_function chosen_changed_runs = changed_runs_baseline;
typedef size_t (*changed_runs_in_ranges_function)(const void *, const void *, const memsnap_changed_run *, size_t,
                                                  size_t *, memsnap_changed_run_scan *, memsnap_changed_run *, size_t,
                                                  memsnap_run_payload *);
static changed_runs_in_ranges_function chosen_changed_runs_in_ranges = changed_runs_in_ranges_baseline;
static pthread_once_t choose_once = PTHREAD_ONCE_INIT;

static void choose(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bw")) {
        chosen = differing_blocks_avx512;
        chosen_changed_runs = changed_runs_avx512;
        chosen_changed_runs_in_ranges = changed_runs_in_ranges_avx512;
    } else if (__builtin_cpu_supports("avx2")) {
        chosen = differing_blocks_avx2;
        chosen_changed_runs = changed_runs_avx2;
        chosen_changed_runs_in_ranges = changed_runs_in_ranges_avx2;
    }
#endif
}

uint64_t memsnap_differing_blocks(const void *left, const void *right, size_t block_size, size_t blocks) {
    pthread_once(&choose_once, choose);
    return chosen(left, right, block_size, blocks);
}

size_t memsnap_changed_runs(const void *original, const void *updated, memsnap_changed_run_scan *scan,
                            memsnap_changed_run *runs, size_t capacity) {
    pthread_once(&choose_once, choose);
    return chosen_changed_runs(original, updated, scan, runs, capacity);
}

size_t memsnap_changed_runs_using(int kernel, const void *original, const void *updated, memsnap_changed_run_scan *scan,
                                  memsnap_changed_run *runs, size_t capacity) {
    switch (kernel) {
    case 0: return changed_runs_baseline(original, updated, scan, runs, capacity);
#if defined(__x86_64__)
    case 1:
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx2")) return SIZE_MAX;
        return changed_runs_avx2(original, updated, scan, runs, capacity);
    case 2:
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512bw")) return SIZE_MAX;
        return changed_runs_avx512(original, updated, scan, runs, capacity);
#endif
    default: return SIZE_MAX;
    }
}

void memsnap_xor_bytes(void *target, const void *left, const void *right, size_t count) {
    unsigned char *out = target;
    const unsigned char *a = left;
    const unsigned char *b = right;
    for (size_t index = 0; index < count; index++) out[index] = a[index] ^ b[index];
}

size_t memsnap_changed_runs_in_ranges(const void *original, const void *updated, const memsnap_changed_run *ranges,
                                      size_t range_count, size_t *next_range, memsnap_changed_run_scan *scan,
                                      memsnap_changed_run *runs, size_t capacity, memsnap_run_payload *payload) {
    pthread_once(&choose_once, choose);
    return chosen_changed_runs_in_ranges(original, updated, ranges, range_count, next_range, scan, runs, capacity, payload);
}

size_t memsnap_changed_runs_in_ranges_using(int kernel, const void *original, const void *updated,
                                            const memsnap_changed_run *ranges, size_t range_count, size_t *next_range,
                                            memsnap_changed_run_scan *scan, memsnap_changed_run *runs, size_t capacity,
                                            memsnap_run_payload *payload) {
    switch (kernel) {
    case 0:
        return changed_runs_in_ranges_baseline(original, updated, ranges, range_count, next_range, scan, runs, capacity,
                                               payload);
#if defined(__x86_64__)
    case 1:
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx2")) return SIZE_MAX;
        return changed_runs_in_ranges_avx2(original, updated, ranges, range_count, next_range, scan, runs, capacity, payload);
    case 2:
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512bw")) return SIZE_MAX;
        return changed_runs_in_ranges_avx512(original, updated, ranges, range_count, next_range, scan, runs, capacity,
                                             payload);
#endif
    default: return SIZE_MAX;
    }
}

size_t memsnap_copy_runs(void *payload, const void *original, const void *updated, size_t limit,
                         const memsnap_changed_run *runs, size_t count, int xor_original) {
    unsigned char *target = payload;
    size_t written = 0;
    for (size_t index = 0; index < count; index++) {
        const size_t start = runs[index].start;
        const size_t length = runs[index].end - start;
        copy_run(target + written, original, updated, limit, start, length, xor_original);
        written += length;
    }
    return written;
}
