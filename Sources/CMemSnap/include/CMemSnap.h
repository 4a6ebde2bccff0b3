// CMemSnap: the C shim under MemSnap.
//
// Only what Swift cannot express lives here: the variadic syscall() (memfd_create and
// userfaultfd without depending on the libc version), constants that the system headers
// spell as function-like macros or hide behind _GNU_SOURCE, and (in Tracking/) the
// async-signal-safe SIGSEGV handler (CMemSnapTracking.h). Every constant is copied by value from the Linux uapi
// headers named beside it, so the build does not depend on the installed kernel headers.
//
// Thread safety: every function here is a thin syscall wrapper and is safe to call from any
// thread. None of them allocate.
#ifndef CMEMSNAP_H
#define CMEMSNAP_H

#include <spawn.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- memfd (include/uapi/linux/memfd.h) -------------------------------------------------
static const unsigned int MEMSNAP_MFD_CLOEXEC = 0x0001U;
static const unsigned int MEMSNAP_MFD_ALLOW_SEALING = 0x0002U;

/// memfd_create(2) through syscall(2). Returns the fd, or -1 with errno set
/// (ENOSYS where the kernel lacks memfd, EMFILE/ENFILE when out of descriptors).
int memsnap_memfd_create(const char *name, unsigned int flags);

// ---- mmap / madvise (include/uapi/asm-generic/mman-common.h) ------------------------------
static const int MEMSNAP_MAP_FIXED_NOREPLACE = 0x100000;
static const int MEMSNAP_MADV_NORMAL = 0;
static const int MEMSNAP_MADV_RANDOM = 1;
static const int MEMSNAP_MADV_SEQUENTIAL = 2;
static const int MEMSNAP_MADV_HUGEPAGE = 14;
static const int MEMSNAP_MADV_NOHUGEPAGE = 15;
static const int MEMSNAP_MADV_DONTNEED = 4;
static const int MEMSNAP_MADV_UNMERGEABLE = 13;

/// One range for `memsnap_madvise_ranges` (the layout of struct iovec).
struct memsnap_address_range { void *start; size_t length; };

/// process_madvise(2) on the calling process (PIDFD_SELF_THREAD, Linux 6.15; advice other than
/// COLD/PAGEOUT/WILLNEED/COLLAPSE for the caller's own process since 6.13): `advice` over up to
/// 1024 ranges in one system call, which takes the mmap lock once and batches TLB flushes.
/// Returns the bytes advised (possibly fewer than asked: continue after them), or -1 with errno:
/// EBADF, EINVAL or ENOSYS on kernels without this use (then call madvise per range).
long memsnap_madvise_ranges(const struct memsnap_address_range *ranges, size_t count, int advice);

// ---- locks ---------------------------------------------------------------------------------
#include <pthread.h>
/// pthread_rwlock_init with PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP (a GNU extension Swift
/// does not see), so waiting writers are not starved by a stream of readers.
void memsnap_rwlock_init_prefer_writer(pthread_rwlock_t *lock);

/// pthread_setname_np (GNU): names `thread` for debuggers and /proc; names longer than 15 bytes
/// are refused by the kernel. Returns 0 or an errno.
int memsnap_thread_set_name(pthread_t thread, const char *name);

// ---- files -----------------------------------------------------------------------------------
/// renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE): fails with EEXIST instead of
/// replacing an existing `to`. Returns 0 or -1 with errno.
int memsnap_rename_noreplace(const char *from, const char *to);

/// fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) (hidden behind
/// _GNU_SOURCE): frees the file's blocks in the range, which then reads as zeros. 0 or -1/errno.
int memsnap_punch_hole(int fd, int64_t offset, int64_t length);

// ---- temporary files removed on a fatal signal (cleanup.c) --------------------------------
/// Paths that can be registered at once, and the longest path (with its NUL) a slot holds.
#define MEMSNAP_CLEANUP_SLOTS 64
#define MEMSNAP_CLEANUP_PATH_MAX 4096

/// Copies `path` into a free slot of a fixed table: if a signal installed with
/// `memsnap_cleanup_install` arrives, its handler unlinks every registered path. Returns the slot,
/// or -1 with errno ENOSPC (table full) or ENAMETOOLONG (empty, or MEMSNAP_CLEANUP_PATH_MAX bytes
/// or more). Thread-safe, lock-free; not async-signal-safe (it may be interrupted by the handler,
/// which then skips the half-written slot).
int memsnap_cleanup_register(const char *path);

/// Frees `slot` (from memsnap_cleanup_register; other values are ignored). Thread-safe.
void memsnap_cleanup_unregister(int slot);

/// Installs the handler for `signal_number` (process-wide): it unlinks every registered path,
/// restores the default disposition and raises the signal again, so the process ends with that
/// signal as its status. A signal currently ignored (SIG_IGN) is left ignored. Returns 0 or an
/// errno. Other handlers for the signal are replaced.
int memsnap_cleanup_install(int signal_number);

// ---- processes -----------------------------------------------------------------------------
/// prctl(PR_SET_PDEATHSIG, signal) (prctl is variadic): the kernel sends `signal` to this process
/// when the thread that created it exits. Returns 0 or -1 with errno.
int memsnap_exit_with_parent(int signal);

/// pidfd_open(pid, 0) (Linux 5.3): a descriptor that stays bound to the process `pid` (never to
/// a later process given the same number), close-on-exec, readable once the process has exited.
/// Returns the descriptor, or -1 with errno (ESRCH: no such process).
int memsnap_pidfd_open(int pid);

/// pidfd_send_signal(pidfd, signal, NULL, 0) (Linux 5.1): the signal reaches the process behind
/// `pidfd` or nobody. Returns 0, or -1 with errno (ESRCH once that process has been reaped).
int memsnap_pidfd_send_signal(int pidfd, int signal);

/// waitid(P_PIDFD, pidfd, WEXITED, plus WNOHANG if `no_hang`) (Linux 5.4): reaps the child behind
/// `pidfd` once it has ended. Returns 0 with `*reaped` 1 and `*code` (CLD_EXITED, CLD_KILLED or
/// CLD_DUMPED) and `*status` (the exit status, or the signal) set; 0 with `*reaped` 0 if `no_hang`
/// and the child still runs; -1 with errno (ECHILD: not a child of this process, or already
/// reaped, by this call or by anyone waiting for any child).
int memsnap_pidfd_wait(int pidfd, int no_hang, int *reaped, int *code, int *status);

/// posix_spawn_file_actions_addclosefrom_np(actions, from) (glibc 2.34; hidden behind
/// _GNU_SOURCE): the child closes every descriptor from `from` up. Returns 0 or an errno.
int memsnap_spawn_close_from(posix_spawn_file_actions_t *actions, int from);

/// posix_spawn_file_actions_addchdir_np(actions, path) (glibc 2.29; hidden behind _GNU_SOURCE):
/// the child changes to `path` (copied) before exec. Returns 0 or an errno.
int memsnap_spawn_change_directory(posix_spawn_file_actions_t *actions, const char *path);

/// pipe2(fds, O_CLOEXEC), both ends blocking (a child's standard stream must not be O_NONBLOCK,
/// which dup2 would share with it). Returns 0 or -1 with errno.
int memsnap_pipe_cloexec(int fds[2]);

// ---- pipes ---------------------------------------------------------------------------------
/// pipe2(fds, O_CLOEXEC | O_NONBLOCK) (pipe2 is hidden behind _GNU_SOURCE). Returns 0 or -1/errno.
int memsnap_pipe_cloexec_nonblocking(int fds[2]);

// ---- checksums -----------------------------------------------------------------------------
/// CRC32C (Castagnoli) of `count` bytes, continuing from `crc` (start with 0). Uses the SSE4.2
/// instruction when the CPU has it. Thread-safe.
uint32_t memsnap_crc32c(uint32_t crc, const void *data, size_t count);

// ---- comparing -------------------------------------------------------------------------------
/// A mask with bit i set when bytes [i * block_size, (i + 1) * block_size) of `left` and
/// `right` differ, for `blocks` blocks (at most 64). `block_size` is a multiple of 8. Reads
/// every byte (no early exit); the widest vector unit of the CPU is chosen at load time.
uint64_t memsnap_differing_blocks(const void *left, const void *right, size_t block_size, size_t blocks);

/// A run of changed bytes, [start, end), offsets into the buffers given to memsnap_changed_runs.
typedef struct memsnap_changed_run {
    size_t start;
    size_t end;
} memsnap_changed_run;

/// Where a scan of memsnap_changed_runs stands. The caller sets `position`, `end`,
/// `block_size` (a power of two from 16 to 4096) and `merge_gap`, and `has_open_run` to 0; the
/// kernel advances the rest. Owned by the caller; one scan per thread.
typedef struct memsnap_changed_run_scan {
    size_t position;      ///< next byte to scan
    size_t end;           ///< end of the range to scan
    size_t block_size;    ///< bytes compared at a time before narrowing
    size_t merge_gap;     ///< runs at most this many equal bytes apart are joined
    size_t open_start;    ///< the run being extended, when has_open_run is 1
    size_t open_end;
    int has_open_run;
} memsnap_changed_run_scan;

/// The least `capacity` memsnap_changed_runs needs to make progress with `block_size`.
static inline size_t memsnap_changed_runs_minimum_capacity(size_t block_size) { return block_size / 2 + 2; }

/// The maximal runs of bytes that differ between `original` and `updated` in
/// [scan->position, scan->end), runs at most scan->merge_gap equal bytes apart joined: the
/// same runs as comparing byte by byte. Unchanged blocks are skipped block_size bytes at a
/// time; changed blocks are narrowed with byte masks (AVX-512, AVX2 or 64-bit words, chosen
/// at run time). Reads only bytes inside [scan->position, scan->end) of both buffers.
///
/// Writes up to `capacity` runs to `runs` and returns how many (slots past that count may be
/// written too: the whole table is the kernel's scratch during the call); stops early (scan->position
/// tells where) when fewer than memsnap_changed_runs_minimum_capacity(block_size) slots are
/// left. Call again, with the table emptied, until scan->position == scan->end and
/// scan->has_open_run == 0: the last run is written once the end is reached. `capacity` must
/// be at least memsnap_changed_runs_minimum_capacity(block_size) (else nothing is written and
/// the scan does not advance). Thread-safe for distinct scans.
size_t memsnap_changed_runs(const void *original, const void *updated, memsnap_changed_run_scan *scan,
                            memsnap_changed_run *runs, size_t capacity);

/// Copies the bytes of `count` runs of `updated` (or, with `xor_original` non-zero, updated XOR
/// original) back to back into `payload`, and returns the sum of their lengths. Both buffers
/// hold at least `limit` bytes, and every run lies inside [0, limit). `payload` must hold that
/// sum plus MEMSNAP_COPY_RUNS_SLACK bytes: a short run is moved as a fixed 32 bytes, so up to
/// that many bytes past the sum may be written. Those 32 bytes are read only from inside `limit`
/// and from the 4096-byte-aligned page holding the run's first byte: no page the runs do not
/// touch is read. Thread-safe.
#define MEMSNAP_COPY_RUNS_SLACK 32
size_t memsnap_copy_runs(void *payload, const void *original, const void *updated, size_t limit,
                         const memsnap_changed_run *runs, size_t count, int xor_original);

/// Where memsnap_changed_runs_in_ranges copies the bytes of the runs it finds, as
/// memsnap_copy_runs would, while they are still in the core's caches. The caller sets `bytes`,
/// `capacity`, `limit` and `xor_original`; the kernel sets `copied` and `used` on every call.
/// Owned by the caller; the kernel keeps no pointer past the call.
typedef struct memsnap_run_payload {
    unsigned char *bytes;  ///< where the first run of the call's table goes
    size_t capacity;       ///< bytes writable at `bytes` (a run is copied only if its length
                           ///< plus MEMSNAP_COPY_RUNS_SLACK fits in what is left)
    size_t limit;          ///< both buffers hold at least this many bytes, as for memsnap_copy_runs
    int xor_original;      ///< non-zero: copy updated XOR original
    size_t copied;         ///< out: the first `copied` runs of the table are in the payload
    size_t used;           ///< out: the sum of their lengths: their bytes start at `bytes`
                           ///< (up to MEMSNAP_COPY_RUNS_SLACK bytes past them, still inside
                           ///< `capacity`, may be written too)
} memsnap_run_payload;

/// memsnap_changed_runs over `range_count` ranges (each [start, end) inside both buffers), from
/// ranges[*next_range] on: each range is scanned as by its own memsnap_changed_runs call (runs
/// never join across ranges), so the output is those calls' runs in range order. One call
/// replaces a call per range (a dirty page each, typically); the block masks run a few ranges
/// ahead of the narrowing, and it prefetches ahead across ranges (changed_runs_body.h says
/// why). The caller sets *next_range to 0 and `scan` as for memsnap_changed_runs with
/// `position` = `end` = 0; the kernel advances both. Writes up to `capacity` runs and returns how
/// many (slots past that count may be written too, as for memsnap_changed_runs): call again,
/// with the table emptied, until *next_range == range_count,
/// scan->position == scan->end and scan->has_open_run == 0. `capacity` must be at least
/// memsnap_changed_runs_minimum_capacity(block_size).
///
/// With `payload` (may be NULL), the bytes of the returned runs are also copied, in order, as
/// memsnap_copy_runs does (which may read up to 31 bytes past a run, inside its page and
/// `limit`), as far as payload->capacity allows: payload->copied says how many (a prefix of the
/// table); the caller copies the rest (memsnap_copy_runs) after making room. Thread-safe for
/// distinct scans.
size_t memsnap_changed_runs_in_ranges(const void *original, const void *updated, const memsnap_changed_run *ranges,
                                      size_t range_count, size_t *next_range, memsnap_changed_run_scan *scan,
                                      memsnap_changed_run *runs, size_t capacity, memsnap_run_payload *payload);

/// memsnap_changed_runs_in_ranges with a given kernel, for tests: as memsnap_changed_runs_using.
size_t memsnap_changed_runs_in_ranges_using(int kernel, const void *original, const void *updated,
                                            const memsnap_changed_run *ranges, size_t range_count, size_t *next_range,
                                            memsnap_changed_run_scan *scan, memsnap_changed_run *runs, size_t capacity,
                                            memsnap_run_payload *payload);

/// memsnap_changed_runs with a given kernel, for tests: 0 the 64-bit word one, 1 AVX2, 2 AVX-512.
/// Returns SIZE_MAX (nothing done) if the CPU or this build lacks that kernel.
size_t memsnap_changed_runs_using(int kernel, const void *original, const void *updated, memsnap_changed_run_scan *scan,
                                  memsnap_changed_run *runs, size_t capacity);

/// target[i] = left[i] ^ right[i] for `count` bytes (the payload of an xor diff).
void memsnap_xor_bytes(void *target, const void *left, const void *right, size_t count);

/// Hints that `address` will be written soon (__builtin_prefetch for writing). Never faults.
static inline void memsnap_prefetch_for_write(const void *address) { __builtin_prefetch(address, 1, 3); }

// ---- errno ---------------------------------------------------------------------------------
/// The symbolic name of an errno value ("ENOMEM"), or NULL when the C library does not know it.
/// The returned string is static; the caller must not free it.
const char *memsnap_errno_name(int error);

#ifdef __cplusplus
}
#endif

#include "CMemSnapTracking.h"

#endif
