// The block-compare kernel under Snapshot.diff. In C because it needs what Swift cannot say:
// per-function target features with run-time CPU dispatch. The widest build the CPU supports is
// chosen on first call (not with target_clones: its ifunc resolvers run before sanitizer
// runtimes start, which crashes instrumented builds at load time).
#include "CMemSnap.h"

#include <pthread.h>
#include <string.h>

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

static differing_blocks_function chosen = differing_blocks_baseline;
static pthread_once_t choose_once = PTHREAD_ONCE_INIT;

static void choose(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512bw")) {
        chosen = differing_blocks_avx512;
    } else if (__builtin_cpu_supports("avx2")) {
        chosen = differing_blocks_avx2;
    }
#endif
}

uint64_t memsnap_differing_blocks(const void *left, const void *right, size_t block_size, size_t blocks) {
    pthread_once(&choose_once, choose);
    return chosen(left, right, block_size, blocks);
}
