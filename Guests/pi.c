/* A Monte Carlo estimate of pi. Each round, worker w draws SAMPLES points (x, y) with 31-bit
 * integer coordinates from SplitMix64 seeded with (round << 32) | w, and counts those inside the
 * quarter circle x^2 + y^2 < 2^62. Integer arithmetic only, so the host can compute the exact
 * expected counts; `hits` and `samples` merge by summing. pi ~ 4 * hits / samples.
 */
#include "memsnap.h"

#define SAMPLES 20000

static long long hits;
static long long samples;

void MEMSNAP_EXPORT(zygote)(void) {
    MEMSNAP_MERGE(hits, MEMSNAP_INT64, MEMSNAP_SUM);
    MEMSNAP_MERGE(samples, MEMSNAP_INT64, MEMSNAP_SUM);
}

/* Returns this worker's hits in this round. */
long long MEMSNAP_EXPORT(work)(int worker, int workers, int round) {
    (void)workers;
    memsnap_splitmix64 random = {((unsigned long long)(unsigned)round << 32) | (unsigned)worker};
    long long inside = 0;
    for (int i = 0; i < SAMPLES; i++) {
        unsigned long long x = memsnap_splitmix64_next(&random) >> 33;
        unsigned long long y = memsnap_splitmix64_next(&random) >> 33;
        if (x * x + y * y < (1ull << 62)) inside += 1;
    }
    hits += inside;
    samples += SAMPLES;
    return inside;
}

double MEMSNAP_EXPORT(result)(void) { return samples ? 4.0 * (double)hits / (double)samples : 0.0; }
long long MEMSNAP_EXPORT(hit_count)(void) { return hits; }
long long MEMSNAP_EXPORT(sample_count)(void) { return samples; }
int MEMSNAP_EXPORT(samples_per_worker)(void) { return SAMPLES; }
