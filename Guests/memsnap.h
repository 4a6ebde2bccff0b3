/* memsnap guest ABI: what a WebAssembly module built for MemSnapWasm may import and export.
 *
 * Freestanding C (no libc): clang --target=wasm32 -nostdlib (see Guests/README.md).
 *
 * The host import module "memsnap" (MemSnapWasm.WasmHostImports) provides:
 *
 *   merge_region(offset, length, type, operation)
 *       Declares that bytes [offset, offset + length) of linear memory merge with `operation`
 *       on values of `type` when workers' changes are joined; length 0 means "to the end of
 *       memory". The raw values below are the same as MemSnap's MergeDataType and
 *       MergeOperation and never change (docs/FORMAT.md, "Guest ABI"). Called by the zygote or
 *       by the main instance, the region governs every later round; called by a worker during
 *       a round, it must name a region that is already declared (then it is a no-op), otherwise
 *       the call traps (the round would merge differently depending on which worker ran first).
 *       An invalid region (unknown type or operation, arithmetic on raw bytes, a length that is
 *       not a whole number of values, an overlap with another region) traps with the reason.
 *
 *   clear_merge_regions()
 *       Forgets every declared region. The main instance only; a worker's call traps.
 */
#ifndef MEMSNAP_GUEST_H
#define MEMSNAP_GUEST_H

/* MergeDataType raw values. */
#define MEMSNAP_RAW 0
#define MEMSNAP_BOOL 1
#define MEMSNAP_INT32 2
#define MEMSNAP_INT64 3
#define MEMSNAP_FLOAT 4
#define MEMSNAP_DOUBLE 5

/* MergeOperation raw values. */
#define MEMSNAP_BYTEWISE 0
#define MEMSNAP_SUM 1
#define MEMSNAP_PRODUCT 2
#define MEMSNAP_SUBTRACT 3
#define MEMSNAP_MAX 4
#define MEMSNAP_MIN 5
#define MEMSNAP_IGNORE 6
#define MEMSNAP_XOR 7

__attribute__((import_module("memsnap"), import_name("merge_region")))
void memsnap_merge_region(unsigned offset, unsigned length, int type, int operation);

__attribute__((import_module("memsnap"), import_name("clear_merge_regions")))
void memsnap_clear_merge_regions(void);

/* Exports a function under its own name. */
#define MEMSNAP_EXPORT(name) __attribute__((export_name(#name))) name

/* Declares a merge region covering a whole object. */
#define MEMSNAP_MERGE(object, type, operation) \
    memsnap_merge_region((unsigned)(unsigned long)&(object), sizeof(object), (type), (operation))

/* SplitMix64 (Steele, Lea, Flood 2014), the same generator as MemSnap's SplitMix64, so that the
 * host can compute exactly what a guest computed. */
typedef struct { unsigned long long state; } memsnap_splitmix64;

static inline unsigned long long memsnap_splitmix64_next(memsnap_splitmix64 *random) {
    random->state += 0x9E3779B97F4A7C15ull;
    unsigned long long z = random->state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#endif
