#include "CMemSnapCodecs.h"

uint64_t memsnap_xxh3(const void *data, size_t length) { return XXH3_64bits(data, length); }
