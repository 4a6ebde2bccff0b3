// LMDB (Debian: liblmdb-dev), for `memsnap bench arena` to compare against. Only the benchmark
// executable memsnap-lmdb-bench links it.
#ifndef CLMDB_H
#define CLMDB_H
#include <lmdb.h>
#endif
