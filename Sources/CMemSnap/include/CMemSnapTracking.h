// Dirty-page tracking: kernel interfaces copied by layout, and the page records that both the
// SIGSEGV handler (C, signal context) and the Swift trackers write to.
//
// Constants and structs are copied from the Linux uapi headers (linux/userfaultfd.h 6.7+,
// linux/fs.h 6.7+) by name and layout, with static asserts on the sizes, so memsnap builds on
// distributions whose headers predate them. Request numbers use the generic _IOC encoding
// (x86_64, arm64, riscv64).
#ifndef CMEMSNAP_TRACKING_H
#define CMEMSNAP_TRACKING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MEMSNAP_IOC(dir, type, nr, size) \
    (((unsigned long)(dir) << 30) | ((unsigned long)(size) << 16) | ((unsigned long)(type) << 8) | (unsigned long)(nr))
#define MEMSNAP_IOC_WRITE 1UL
#define MEMSNAP_IOC_READ 2UL

// ---- userfaultfd (include/uapi/linux/userfaultfd.h) ---------------------------------------
static const int MEMSNAP_UFFD_USER_MODE_ONLY = 1;
static const uint64_t MEMSNAP_UFFD_API = 0xAA;

static const uint64_t MEMSNAP_UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1ULL << 0;
static const uint64_t MEMSNAP_UFFD_FEATURE_THREAD_ID = 1ULL << 8;
static const uint64_t MEMSNAP_UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1ULL << 12;
static const uint64_t MEMSNAP_UFFD_FEATURE_WP_UNPOPULATED = 1ULL << 13;
static const uint64_t MEMSNAP_UFFD_FEATURE_WP_ASYNC = 1ULL << 15;

static const uint64_t MEMSNAP_UFFDIO_REGISTER_MODE_WP = 1ULL << 1;
static const uint64_t MEMSNAP_UFFDIO_WRITEPROTECT_MODE_WP = 1ULL << 0;
static const uint64_t MEMSNAP_UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1ULL << 1;

static const uint8_t MEMSNAP_UFFD_EVENT_PAGEFAULT = 0x12;
static const uint64_t MEMSNAP_UFFD_PAGEFAULT_FLAG_WRITE = 1ULL << 0;
static const uint64_t MEMSNAP_UFFD_PAGEFAULT_FLAG_WP = 1ULL << 1;

struct memsnap_uffdio_api { uint64_t api; uint64_t features; uint64_t ioctls; };
struct memsnap_uffdio_range { uint64_t start; uint64_t len; };
struct memsnap_uffdio_register { struct memsnap_uffdio_range range; uint64_t mode; uint64_t ioctls; };
struct memsnap_uffdio_writeprotect { struct memsnap_uffdio_range range; uint64_t mode; };

/// struct uffd_msg, reduced to the page-fault member of its union (the only event memsnap asks for).
struct memsnap_uffd_msg {
    uint8_t event;
    uint8_t reserved1;
    uint16_t reserved2;
    uint32_t reserved3;
    uint64_t pagefault_flags;
    uint64_t pagefault_address;
    uint32_t pagefault_ptid;
    uint32_t reserved4;
};

static const unsigned long MEMSNAP_UFFDIO_API =
    MEMSNAP_IOC(MEMSNAP_IOC_READ | MEMSNAP_IOC_WRITE, 0xAA, 0x3F, sizeof(struct memsnap_uffdio_api));
static const unsigned long MEMSNAP_UFFDIO_REGISTER =
    MEMSNAP_IOC(MEMSNAP_IOC_READ | MEMSNAP_IOC_WRITE, 0xAA, 0x00, sizeof(struct memsnap_uffdio_register));
static const unsigned long MEMSNAP_UFFDIO_UNREGISTER =
    MEMSNAP_IOC(MEMSNAP_IOC_READ, 0xAA, 0x01, sizeof(struct memsnap_uffdio_range));
static const unsigned long MEMSNAP_UFFDIO_WAKE =
    MEMSNAP_IOC(MEMSNAP_IOC_READ, 0xAA, 0x02, sizeof(struct memsnap_uffdio_range));
static const unsigned long MEMSNAP_UFFDIO_WRITEPROTECT =
    MEMSNAP_IOC(MEMSNAP_IOC_READ | MEMSNAP_IOC_WRITE, 0xAA, 0x06, sizeof(struct memsnap_uffdio_writeprotect));

/// userfaultfd(2) through syscall(2). Returns the fd or -1 with errno (ENOSYS: no userfaultfd;
/// EPERM: forbidden, e.g. by seccomp or vm.unprivileged_userfaultfd=0 without USER_MODE_ONLY).
int memsnap_userfaultfd(int flags);

// ---- PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7) -------------------------------------
static const uint64_t MEMSNAP_PAGE_IS_WPALLOWED = 1ULL << 0;
static const uint64_t MEMSNAP_PAGE_IS_WRITTEN = 1ULL << 1;
static const uint64_t MEMSNAP_PAGE_IS_FILE = 1ULL << 2;
static const uint64_t MEMSNAP_PAGE_IS_PRESENT = 1ULL << 3;
static const uint64_t MEMSNAP_PAGE_IS_SWAPPED = 1ULL << 4;
static const uint64_t MEMSNAP_PAGE_IS_PFNZERO = 1ULL << 5;
static const uint64_t MEMSNAP_PAGE_IS_HUGE = 1ULL << 6;
static const uint64_t MEMSNAP_PAGE_IS_SOFT_DIRTY = 1ULL << 7;
/// A guard region (MADV_GUARD_INSTALL), reported from Linux 6.15; older kernels refuse the bit
/// with EINVAL.
static const uint64_t MEMSNAP_PAGE_IS_GUARD = 1ULL << 8;

static const uint64_t MEMSNAP_PM_SCAN_WP_MATCHING = 1ULL << 0;
static const uint64_t MEMSNAP_PM_SCAN_CHECK_WPASYNC = 1ULL << 1;

struct memsnap_page_region { uint64_t start; uint64_t end; uint64_t categories; };
struct memsnap_pm_scan_arg {
    uint64_t size;
    uint64_t flags;
    uint64_t start;
    uint64_t end;
    uint64_t walk_end;
    uint64_t vec;
    uint64_t vec_len;
    uint64_t max_pages;
    uint64_t category_inverted;
    uint64_t category_mask;
    uint64_t category_anyof_mask;
    uint64_t return_mask;
};

static const unsigned long MEMSNAP_PAGEMAP_SCAN =
    MEMSNAP_IOC(MEMSNAP_IOC_READ | MEMSNAP_IOC_WRITE, 'f', 16, sizeof(struct memsnap_pm_scan_arg));

/// Kernel 6.18 returns a wrong walk_end when vec_len exceeds its internal 512-entry bounce buffer
/// and more regions than that match; never pass more.
#define MEMSNAP_PAGEMAP_SCAN_MAX_VEC 512

// ---- PROCMAP_QUERY (include/uapi/linux/fs.h, Linux 6.11): one VMA of /proc/PID/maps ----------
static const uint64_t MEMSNAP_PROCMAP_QUERY_VMA_READABLE = 0x01;
static const uint64_t MEMSNAP_PROCMAP_QUERY_VMA_WRITABLE = 0x02;
static const uint64_t MEMSNAP_PROCMAP_QUERY_VMA_EXECUTABLE = 0x04;
static const uint64_t MEMSNAP_PROCMAP_QUERY_VMA_SHARED = 0x08;
static const uint64_t MEMSNAP_PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10;

struct memsnap_procmap_query {
    uint64_t size;
    uint64_t query_flags;
    uint64_t query_addr;
    uint64_t vma_start;
    uint64_t vma_end;
    uint64_t vma_flags;
    uint64_t vma_page_size;
    uint64_t vma_offset;
    uint64_t inode;
    uint32_t dev_major;
    uint32_t dev_minor;
    uint32_t vma_name_size;
    uint32_t build_id_size;
    uint64_t vma_name_addr;
    uint64_t build_id_addr;
};

static const unsigned long MEMSNAP_PROCMAP_QUERY =
    MEMSNAP_IOC(MEMSNAP_IOC_READ | MEMSNAP_IOC_WRITE, 'f', 17, sizeof(struct memsnap_procmap_query));

/// Bit 55 of a /proc/PID/pagemap entry: the page is soft-dirty.
static const uint64_t MEMSNAP_PAGEMAP_SOFT_DIRTY_BIT = 1ULL << 55;

/// ioctl(2) with a pointer argument. Returns the ioctl's result or -1 with errno.
int memsnap_ioctl(int fd, unsigned long request, void *argument);

/// gettid(2); async-signal-safe.
long memsnap_gettid(void);

// ---- Page records ----------------------------------------------------------------------------
/// One tracked range's written-page bitmap, plus optional per-thread bitmaps.
///
/// Written by the SIGSEGV handler (signal context, any thread) and by the synchronous userfaultfd
/// handler thread; read and cleared by the tracker. All bit updates are atomic; a page marked while
/// a take is running lands in that take or in the next, never nowhere.
///
/// Ownership: created and destroyed by one DirtyTracker. It must be removed from the SIGSEGV
/// handler (memsnap_segv_remove) before it is destroyed.
typedef struct memsnap_page_record memsnap_page_record;

/// A record for `max_pages` pages starting at `start`, with room for `thread_slots` threads.
/// Returns NULL when memory cannot be allocated.
memsnap_page_record *memsnap_record_create(uintptr_t start, size_t max_pages, unsigned page_shift,
                                           size_t thread_slots);
void memsnap_record_destroy(memsnap_page_record *record);

/// Sets the end of the range the SIGSEGV handler treats as tracked (start when disabled).
void memsnap_record_set_tracked_end(memsnap_page_record *record, uintptr_t end);

/// Lowers the tracked end to `end` if it is above it (atomic; safe against the handler).
void memsnap_record_lower_tracked_end(memsnap_page_record *record, uintptr_t end);

/// Raises the tracked end to `end` if it is below it (atomic).
void memsnap_record_raise_tracked_end(memsnap_page_record *record, uintptr_t end);

/// The current tracked end.
uintptr_t memsnap_record_tracked_end(const memsnap_page_record *record);

/// Marks `page` written, and written by thread `tid` if that thread is attached.
void memsnap_record_mark(memsnap_page_record *record, size_t page, long tid);

/// Copies the global bits of pages 0..<page_count to `out` ((page_count + 63) / 64 words),
/// clearing them if `clear` is nonzero (atomically per word; bits of pages at or past page_count
/// are left alone). With `clear`, the same bits of every thread bitmap are cleared too.
void memsnap_record_take(memsnap_page_record *record, uint64_t *out, size_t page_count, int clear);

/// Attaches thread `tid` to a free slot, with an empty bitmap. Returns 0, EEXIST if attached
/// already, ENOSPC when every slot is taken, ENOMEM. Not async-signal-safe; serialise callers.
int memsnap_record_attach_thread(memsnap_page_record *record, long tid);

/// Detaches thread `tid`; its pages stay in the global bitmap.
void memsnap_record_detach_thread(memsnap_page_record *record, long tid);

/// Copies (and clears, if `clear`) pages 0..<page_count of the bitmap of thread `tid`.
/// Returns 0 or ENOENT if not attached.
int memsnap_record_take_thread(memsnap_page_record *record, long tid, uint64_t *out, size_t page_count, int clear);

/// The errno that made the SIGSEGV handler give up on this record (0 if none), and the address
/// whose fault it could not resolve.
int memsnap_record_failure(const memsnap_page_record *record, uintptr_t *address, size_t *pages_marked);
void memsnap_record_clear_failure(memsnap_page_record *record);

// ---- mprotect + SIGSEGV tracking ------------------------------------------------------------
/// The most records the SIGSEGV handler watches at once.
#define MEMSNAP_SEGV_MAX_RECORDS 256

/// Installs memsnap's SIGSEGV handler once per process (SA_SIGINFO|SA_NODEFER|SA_ONSTACK),
/// remembering the previous handler to chain to for faults that are not memsnap's. Returns 0 or
/// an errno from sigaction. Idempotent and thread-safe.
int memsnap_segv_install(void);

/// Starts handling write faults in `record`'s tracked range: the handler re-enables writes to the
/// page (mprotect), marks it and returns. If mprotect fails (ENOMEM at vm.max_map_count), it
/// makes the whole range writable, records the failure and disables the record, so the process
/// never loops on the fault. Returns 0 or ENOSPC when MEMSNAP_SEGV_MAX_RECORDS are in use.
int memsnap_segv_add(memsnap_page_record *record);

/// Stops handling `record` and waits until no handler is still using it.
void memsnap_segv_remove(memsnap_page_record *record);

/// 1 if memsnap's SIGSEGV handler is the process's current one (the first to see a fault),
/// 0 if another handler was installed after it, or it was never installed. A handler installed
/// later that does not chain back for faults in memsnap's records (WebAssembly engines turn
/// every fault in their memory into a trap) would hide the faults that segfault tracking needs.
int memsnap_segv_is_outermost(void);

#ifdef __cplusplus
}
#endif

#endif
