/* An initialised heap, for benchmarks: the zygote grows memory by a number of MiB and fills
 * every page (a header word and a byte pattern), as a runtime's start-up fills its heap; `touch`
 * then writes one 8-byte value on a fraction of the heap's pages, as a round of work would.
 */
#include "memsnap.h"

#define WASM_PAGE 65536u
#define PAGE 4096u

static unsigned heap_start;
static unsigned heap_end;

/* Grows memory by `mebibytes` MiB and fills it; returns the heap's first byte, or 0 if memory
 * cannot grow that far. */
unsigned MEMSNAP_EXPORT(zygote)(int mebibytes) {
    if (mebibytes <= 0 || mebibytes > 4095) return 0;
    unsigned pages = (unsigned)mebibytes * 16u;
    int previous = __builtin_wasm_memory_grow(0, pages);
    if (previous < 0) return 0;
    heap_start = (unsigned)previous * WASM_PAGE;
    heap_end = heap_start + pages * WASM_PAGE;
    for (unsigned page = heap_start; page < heap_end; page += PAGE) {
        unsigned char *bytes = (unsigned char *)(unsigned long)page;
        __builtin_memset(bytes, (int)(((page / PAGE) & 0xFF) | 1), PAGE);
        *(unsigned long long *)bytes = page;
    }
    return heap_start;
}

/* Worker `worker` writes one value, new for each `salt` (a round number, say), on every heap page
 * whose index is worker modulo `stride` (stride 100: 1 % of the pages, disjoint between workers
 * 0..99); returns the pages written. */
int MEMSNAP_EXPORT(touch)(int worker, int salt, int stride) {
    if (stride <= 0 || worker < 0) __builtin_trap();
    int written = 0;
    unsigned first = heap_start + (unsigned)(worker % stride) * PAGE;
    for (unsigned page = first; page < heap_end; page += (unsigned)stride * PAGE) {
        *(unsigned long long *)(unsigned long)(page + 64) =
            ((unsigned long long)(unsigned)(salt * 1024 + worker) << 32) | page;
        written += 1;
    }
    return written;
}

unsigned MEMSNAP_EXPORT(heap_bytes)(void) { return heap_end - heap_start; }

/* A checksum of one 8-byte word per page: what the host compares between forks. */
unsigned long long MEMSNAP_EXPORT(result)(void) {
    unsigned long long sum = 0;
    for (unsigned page = heap_start; page < heap_end; page += PAGE) {
        sum = sum * 31 + *(unsigned long long *)(unsigned long)page + *(unsigned long long *)(unsigned long)(page + 64);
    }
    return sum;
}
