// The block-compare kernel under Snapshot.diff. In C because it needs what Swift cannot say:
// per-function target features with run-time CPU dispatch (target_clones picks the AVX-512,
// AVX2 or baseline build of the loop once, at load time).
#include "CMemSnap.h"

#include <string.h>

#if defined(__x86_64__) && defined(__clang__)
#define MEMSNAP_CLONES __attribute__((target_clones("avx512bw", "avx2", "default")))
#else
#define MEMSNAP_CLONES
#endif

MEMSNAP_CLONES
uint64_t memsnap_differing_blocks(const void *left, const void *right, size_t block_size, size_t blocks) {
    const unsigned char *a = left;
    const unsigned char *b = right;
    uint64_t mask = 0;
    size_t words = block_size / 8;
    if (blocks > 64) blocks = 64;
    for (size_t block = 0; block < blocks; block++) {
        uint64_t accumulated = 0;
        for (size_t word = 0; word < words; word++) {
            uint64_t x, y;
            memcpy(&x, a + block * block_size + word * 8, 8);
            memcpy(&y, b + block * block_size + word * 8, 8);
            accumulated |= x ^ y;
        }
        mask |= (uint64_t)(accumulated != 0) << block;
    }
    return mask;
}
