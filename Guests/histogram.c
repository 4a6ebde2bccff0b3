/* A histogram with sum merges. The zygote generates the data once (the expensive start-up a
 * snapshot saves); each round, worker w of N counts its slice of the data into 64 int64 bins,
 * and the bins merge by summing. After R rounds every bin holds R times its count over the
 * whole data set, whatever N is.
 *
 * Data: VALUES values from SplitMix64 seeded with SEED; a value's bin is its top 6 bits.
 */
#include "memsnap.h"

#define VALUES (1 << 18)
#define BINS 64
#define SEED 0x68697374ull /* "hist" */

static unsigned long long data[VALUES]; /* 2 MiB, in the zygote's snapshot */
static long long bins[BINS];
static int generated;

void MEMSNAP_EXPORT(zygote)(void) {
    memsnap_splitmix64 random = {SEED};
    for (int i = 0; i < VALUES; i++) data[i] = memsnap_splitmix64_next(&random);
    MEMSNAP_MERGE(bins, MEMSNAP_INT64, MEMSNAP_SUM);
    generated = 1;
}

/* Counts this worker's slice; returns how many values it counted. */
int MEMSNAP_EXPORT(work)(int worker, int workers) {
    if (!generated || workers <= 0 || worker < 0 || worker >= workers) __builtin_trap();
    int start = (int)((long long)VALUES * worker / workers);
    int end = (int)((long long)VALUES * (worker + 1) / workers);
    for (int i = start; i < end; i++) bins[data[i] >> 58] += 1;
    return end - start;
}

/* Values counted so far, over every bin. */
long long MEMSNAP_EXPORT(result)(void) {
    long long total = 0;
    for (int i = 0; i < BINS; i++) total += bins[i];
    return total;
}

long long MEMSNAP_EXPORT(bin)(int index) { return index >= 0 && index < BINS ? bins[index] : -1; }
int MEMSNAP_EXPORT(value_count)(void) { return VALUES; }
