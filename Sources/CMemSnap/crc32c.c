// CRC32C (Castagnoli), used to checksum encoded diffs. The SSE4.2 instruction when the CPU has
// it (chosen once at run time), a byte table otherwise.
#include "CMemSnap.h"

#include <pthread.h>
#include <string.h>

static uint32_t crc_table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static int use_hardware;

static void init_crc32c(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0x82F63B78U & (0U - (crc & 1U)));
        crc_table[i] = crc;
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    use_hardware = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hardware(uint32_t crc, const unsigned char *bytes, size_t count) {
    uint64_t wide = crc;
    while (count >= 8) {
        uint64_t word;
        memcpy(&word, bytes, 8);
        wide = __builtin_ia32_crc32di(wide, word);
        bytes += 8;
        count -= 8;
    }
    uint32_t narrow = (uint32_t)wide;
    while (count--) narrow = __builtin_ia32_crc32qi(narrow, *bytes++);
    return narrow;
}
#endif

uint32_t memsnap_crc32c(uint32_t crc, const void *data, size_t count) {
    pthread_once(&table_once, init_crc32c);
    const unsigned char *bytes = data;
    crc = ~crc;
#if defined(__x86_64__)
    if (use_hardware) return ~crc32c_hardware(crc, bytes, count);
#endif
    while (count--) crc = (crc >> 8) ^ crc_table[(crc ^ *bytes++) & 0xFF];
    return ~crc;
}
