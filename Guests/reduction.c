/* faabric's repeated reduction: every worker adds to shared sums, round after round, and the
 * totals must be exact. The zygote declares how each shared value merges; `work` is what every
 * worker runs each round.
 *
 * After R rounds of N workers (the host checks these exactly):
 *   count     (int64 sum)  = R * N
 *   index_sum (int64 sum)  = R * (0 + 1 + ... + N-1)
 *   weighted  (int32 sum)  = R * 3 * (1 + 2 + ... + N)
 *   halves    (double sum) = R * N * 0.5        (exact in binary floating point)
 *   highest   (int64 max)  = 10 * (N-1) + last round
 *   visits[w] (bytewise)   = R for every w < N (each worker writes only its own slot)
 *
 * `work_faulty` is `work` with a faulty last worker: after adding, it reads past the end of
 * memory, which traps; the round must then leave no trace.
 */
#include "memsnap.h"

static long long count;
static long long index_sum;
static int weighted;
static double halves;
static long long highest;
static long long visits[64];
static int initialised;

void MEMSNAP_EXPORT(zygote)(void) {
    MEMSNAP_MERGE(count, MEMSNAP_INT64, MEMSNAP_SUM);
    MEMSNAP_MERGE(index_sum, MEMSNAP_INT64, MEMSNAP_SUM);
    MEMSNAP_MERGE(weighted, MEMSNAP_INT32, MEMSNAP_SUM);
    MEMSNAP_MERGE(halves, MEMSNAP_DOUBLE, MEMSNAP_SUM);
    MEMSNAP_MERGE(highest, MEMSNAP_INT64, MEMSNAP_MAX);
    initialised = 1;
}

/* Returns the worker's own view of `count` after adding: the snapshot's count plus one. */
long long MEMSNAP_EXPORT(work)(int worker, int workers, int round) {
    (void)workers;
    if (!initialised) __builtin_trap();
    count += 1;
    index_sum += worker;
    weighted += 3 * (worker + 1);
    halves += 0.5;
    long long candidate = 10LL * worker + round;
    if (candidate > highest) highest = candidate;
    if (worker >= 0 && worker < 64) visits[worker] += 1;
    return count;
}

long long MEMSNAP_EXPORT(work_faulty)(int worker, int workers, int round) {
    long long seen = work(worker, workers, round);
    if (worker == workers - 1) {
        unsigned size = (unsigned)__builtin_wasm_memory_size(0) * 65536u;
        seen += *(volatile long long *)(unsigned long)(size + 4096u);
    }
    return seen;
}

long long MEMSNAP_EXPORT(result)(void) { return count; }
long long MEMSNAP_EXPORT(index_total)(void) { return index_sum; }
int MEMSNAP_EXPORT(weighted_total)(void) { return weighted; }
double MEMSNAP_EXPORT(halves_total)(void) { return halves; }
long long MEMSNAP_EXPORT(highest_value)(void) { return highest; }
long long MEMSNAP_EXPORT(visits_of)(int worker) { return worker >= 0 && worker < 64 ? visits[worker] : -1; }
