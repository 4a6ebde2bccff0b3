// CMemSnapCodecs: the system libraries checkpoints use (Debian: liblz4-dev, libzstd-dev,
// libxxhash-dev), behind one module so MemSnap's core does not link them.
#ifndef CMEMSNAP_CODECS_H
#define CMEMSNAP_CODECS_H

#include <stddef.h>
#include <stdint.h>

#include <lz4.h>
#include <xxhash.h>
#include <zstd.h>

/// XXH3-64 with seed 0 (a function, not the header's inline macro, so Swift can call it).
uint64_t memsnap_xxh3(const void *data, size_t length);

#endif
