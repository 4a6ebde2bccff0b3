// LMDB (Debian: liblmdb-dev), for `memsnap bench arena` to compare against. Only the CLI links it.
#ifndef CLMDB_H
#define CLMDB_H
#include <lmdb.h>
#endif
