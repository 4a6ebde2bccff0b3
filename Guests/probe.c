/* The test suite's probe: small functions that each exercise one rule of forking and joining
 * (Tests/MemSnapWasmTests). Not a workload.
 */
#include "memsnap.h"

/* Host functions the tests provide (module "probe"). */
__attribute__((import_module("probe"), import_name("observe")))
void probe_observe(int worker);

static long long shared_sum;          /* int64 sum, declared by the zygote */
static long long common;              /* every worker writes its own value here */
static long long slots[64];           /* worker w writes only slots[w] */
static long long touched[64];
static long long extra_region[4];     /* for declarations from workers */
static long long zygote_runs;

void MEMSNAP_EXPORT(zygote)(void) {
    zygote_runs += 1;
    common = 1000;
    MEMSNAP_MERGE(shared_sum, MEMSNAP_INT64, MEMSNAP_SUM);
}

/* Fork isolation: write this worker's marks, wait (in the host) until every worker has written
 * them, then report what this worker sees: 0 when it sees only its own writes and the
 * snapshot's values elsewhere; otherwise 1 + the first other worker whose write it sees, or -1
 * if `common` changed under it. */
int MEMSNAP_EXPORT(isolate)(int worker, int workers) {
    if (worker < 0 || worker >= 64 || workers > 64) __builtin_trap();
    common = worker + 1;
    slots[worker] = worker + 1;
    probe_observe(worker);
    if (common != worker + 1) return -1;
    for (int other = 0; other < workers; other++) {
        if (other != worker && slots[other] != 0) return 1 + other;
    }
    return 0;
}

/* Adds `amount` to the shared sum. */
void MEMSNAP_EXPORT(add)(long long amount) { shared_sum += amount; }

/* Marks this worker, then traps (unreachable) if it is the victim. */
void MEMSNAP_EXPORT(trap_if)(int worker, int victim) {
    if (worker >= 0 && worker < 64) touched[worker] = 1;
    shared_sum += 1;
    if (worker == victim) __builtin_trap();
}

/* Marks this worker, then reads past the end of memory (a trap through WasmKit's guard pages,
 * a SIGSEGV) if it is the victim. */
long long MEMSNAP_EXPORT(out_of_bounds_if)(int worker, int victim) {
    if (worker >= 0 && worker < 64) touched[worker] = 1;
    shared_sum += 1;
    if (worker != victim) return 0;
    unsigned size = (unsigned)__builtin_wasm_memory_size(0) * 65536u;
    return *(volatile long long *)(unsigned long)(size + 4096u);
}

/* Grows memory by `pages` wasm pages and writes `value` in the first and last 8 bytes of the new
 * memory; returns the old size in pages, or -1. */
int MEMSNAP_EXPORT(grow_and_write)(int pages, long long value) {
    int previous = __builtin_wasm_memory_grow(0, (unsigned)pages);
    if (previous < 0 || pages <= 0) return previous;
    unsigned start = (unsigned)previous * 65536u;
    unsigned end = start + (unsigned)pages * 65536u;
    *(long long *)(unsigned long)start = value;
    *(long long *)(unsigned long)(end - 8) = value;
    return previous;
}

/* Grows memory by `pages` wasm pages (marking the new memory's first word), then traps if this
 * worker is the victim. */
void MEMSNAP_EXPORT(grow_then_trap_if)(int worker, int victim, int pages) {
    int previous = __builtin_wasm_memory_grow(0, (unsigned)pages);
    if (previous >= 0 && pages > 0) *(long long *)(unsigned long)((unsigned)previous * 65536u) = worker + 1;
    if (worker == victim) __builtin_trap();
}

/* Declares extra_region[0..1] as an int64 sum (allowed from a worker only if already declared). */
void MEMSNAP_EXPORT(declare_extra)(void) {
    memsnap_merge_region((unsigned)(unsigned long)&extra_region[0], 16, MEMSNAP_INT64, MEMSNAP_SUM);
}

/* Declares a region from raw ABI values (for the ABI's refusals). */
void MEMSNAP_EXPORT(declare)(unsigned offset, unsigned length, int type, int operation) {
    memsnap_merge_region(offset, length, type, operation);
}

void MEMSNAP_EXPORT(clear_regions)(void) { memsnap_clear_merge_regions(); }

/* Adds to both extra_region values. */
void MEMSNAP_EXPORT(add_extra)(long long amount) {
    extra_region[0] += amount;
    extra_region[1] += 2 * amount;
}

long long MEMSNAP_EXPORT(read64)(unsigned address) { return *(long long *)(unsigned long)address; }
void MEMSNAP_EXPORT(write64)(unsigned address, long long value) { *(long long *)(unsigned long)address = value; }

unsigned MEMSNAP_EXPORT(shared_sum_address)(void) { return (unsigned)(unsigned long)&shared_sum; }
unsigned MEMSNAP_EXPORT(common_address)(void) { return (unsigned)(unsigned long)&common; }
unsigned MEMSNAP_EXPORT(slots_address)(void) { return (unsigned)(unsigned long)&slots[0]; }
unsigned MEMSNAP_EXPORT(touched_address)(void) { return (unsigned)(unsigned long)&touched[0]; }
unsigned MEMSNAP_EXPORT(extra_address)(void) { return (unsigned)(unsigned long)&extra_region[0]; }
long long MEMSNAP_EXPORT(zygote_run_count)(void) { return zygote_runs; }
long long MEMSNAP_EXPORT(result)(void) { return shared_sum; }
