// Page records and the mprotect + SIGSEGV tracker. See CMemSnapTracking.h for the contracts.
//
// Signal-handler rules followed here: only async-signal-safe calls (mprotect and gettid are plain
// syscalls on Linux, sigaction is on the POSIX list), no locks, no allocation, errno saved and
// restored, and every shared word accessed with C11 atomics.
#define _GNU_SOURCE
#include "CMemSnapTracking.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

_Static_assert(sizeof(struct memsnap_uffdio_api) == 24, "struct uffdio_api layout");
_Static_assert(sizeof(struct memsnap_uffdio_register) == 32, "struct uffdio_register layout");
_Static_assert(sizeof(struct memsnap_uffdio_writeprotect) == 24, "struct uffdio_writeprotect layout");
_Static_assert(sizeof(struct memsnap_uffd_msg) == 32, "struct uffd_msg layout");
_Static_assert(sizeof(struct memsnap_page_region) == 24, "struct page_region layout");
_Static_assert(sizeof(struct memsnap_pm_scan_arg) == 96, "struct pm_scan_arg layout");

int memsnap_userfaultfd(int flags) { return (int)syscall(SYS_userfaultfd, flags); }

int memsnap_ioctl(int fd, unsigned long request, void *argument) { return ioctl(fd, request, argument); }

long memsnap_gettid(void) { return (long)syscall(SYS_gettid); }

// ---- Page records ----------------------------------------------------------------------------

struct memsnap_thread_slot {
    _Atomic long tid;  // 0 when free; published after `bits` is ready
    _Atomic uint64_t *bits;
};

struct memsnap_page_record {
    uintptr_t start;
    _Atomic uintptr_t tracked_end;
    unsigned page_shift;
    size_t max_pages;
    size_t word_count;
    _Atomic uint64_t *bits;
    size_t slot_count;
    _Atomic size_t attached_threads;
    struct memsnap_thread_slot *slots;
    _Atomic int failure_errno;
    _Atomic uintptr_t failure_address;
    _Atomic size_t pages_marked;
};

memsnap_page_record *memsnap_record_create(uintptr_t start, size_t max_pages, unsigned page_shift,
                                           size_t thread_slots) {
    memsnap_page_record *record = calloc(1, sizeof *record);
    if (!record) return NULL;
    record->start = start;
    atomic_init(&record->tracked_end, start);
    record->page_shift = page_shift;
    record->max_pages = max_pages;
    record->word_count = (max_pages + 63) / 64;
    record->bits = calloc(record->word_count ? record->word_count : 1, sizeof(uint64_t));
    record->slot_count = thread_slots;
    record->slots = calloc(thread_slots ? thread_slots : 1, sizeof(struct memsnap_thread_slot));
    if (!record->bits || !record->slots) {
        free((void *)record->bits);
        free(record->slots);
        free(record);
        return NULL;
    }
    return record;
}

void memsnap_record_destroy(memsnap_page_record *record) {
    if (!record) return;
    for (size_t i = 0; i < record->slot_count; i++) free((void *)record->slots[i].bits);
    free(record->slots);
    free((void *)record->bits);
    free(record);
}

void memsnap_record_set_tracked_end(memsnap_page_record *record, uintptr_t end) {
    atomic_store_explicit(&record->tracked_end, end, memory_order_release);
}

void memsnap_record_lower_tracked_end(memsnap_page_record *record, uintptr_t end) {
    uintptr_t current = atomic_load(&record->tracked_end);
    while (current > end && !atomic_compare_exchange_weak(&record->tracked_end, &current, end)) {
    }
}

void memsnap_record_raise_tracked_end(memsnap_page_record *record, uintptr_t end) {
    uintptr_t current = atomic_load(&record->tracked_end);
    while (current < end && !atomic_compare_exchange_weak(&record->tracked_end, &current, end)) {
    }
}

uintptr_t memsnap_record_tracked_end(const memsnap_page_record *record) {
    return atomic_load(&((memsnap_page_record *)record)->tracked_end);
}

void memsnap_record_mark(memsnap_page_record *record, size_t page, long tid) {
    if (page >= record->max_pages) return;
    uint64_t bit = 1ULL << (page & 63);
    atomic_fetch_or_explicit(&record->bits[page >> 6], bit, memory_order_relaxed);
    atomic_fetch_add_explicit(&record->pages_marked, 1, memory_order_relaxed);
    if (tid == 0 || atomic_load_explicit(&record->attached_threads, memory_order_acquire) == 0) return;
    for (size_t i = 0; i < record->slot_count; i++) {
        if (atomic_load_explicit(&record->slots[i].tid, memory_order_acquire) == tid) {
            atomic_fetch_or_explicit(&record->slots[i].bits[page >> 6], bit, memory_order_relaxed);
            return;
        }
    }
}

// Takes the bits of pages 0..<page_count. A partial last word is cleared with a mask, so a page
// at or past page_count marked meanwhile (the region grew) keeps its bit for the next take.
static void take_pages(_Atomic uint64_t *bits, uint64_t *out, size_t page_count, int clear) {
    size_t words = (page_count + 63) / 64;
    for (size_t i = 0; i < words; i++) {
        size_t pages_in_word = page_count - i * 64;
        uint64_t mask = pages_in_word >= 64 ? ~0ULL : ((1ULL << pages_in_word) - 1);
        uint64_t value = clear ? atomic_fetch_and_explicit(&bits[i], ~mask, memory_order_acq_rel)
                               : atomic_load_explicit(&bits[i], memory_order_acquire);
        if (out) out[i] = value & mask;
    }
}

void memsnap_record_take(memsnap_page_record *record, uint64_t *out, size_t page_count, int clear) {
    if (page_count > record->max_pages) page_count = record->max_pages;
    take_pages(record->bits, out, page_count, clear);
    if (!clear) return;
    for (size_t i = 0; i < record->slot_count; i++) {
        _Atomic uint64_t *slot_bits = record->slots[i].bits;
        if (slot_bits) take_pages(slot_bits, NULL, page_count, 1);
    }
}

int memsnap_record_attach_thread(memsnap_page_record *record, long tid) {
    struct memsnap_thread_slot *free_slot = NULL;
    for (size_t i = 0; i < record->slot_count; i++) {
        long current = atomic_load(&record->slots[i].tid);
        if (current == tid) return EEXIST;
        if (current == 0 && !free_slot) free_slot = &record->slots[i];
    }
    if (!free_slot) return ENOSPC;
    if (!free_slot->bits) {
        free_slot->bits = calloc(record->word_count ? record->word_count : 1, sizeof(uint64_t));
        if (!free_slot->bits) return ENOMEM;
    } else {
        take_pages(free_slot->bits, NULL, record->max_pages, 1);
    }
    atomic_store_explicit(&free_slot->tid, tid, memory_order_release);
    atomic_fetch_add_explicit(&record->attached_threads, 1, memory_order_acq_rel);
    return 0;
}

void memsnap_record_detach_thread(memsnap_page_record *record, long tid) {
    for (size_t i = 0; i < record->slot_count; i++) {
        if (atomic_load(&record->slots[i].tid) == tid) {
            atomic_store_explicit(&record->slots[i].tid, 0, memory_order_release);
            atomic_fetch_sub_explicit(&record->attached_threads, 1, memory_order_acq_rel);
            return;
        }
    }
}

int memsnap_record_take_thread(memsnap_page_record *record, long tid, uint64_t *out, size_t page_count, int clear) {
    if (page_count > record->max_pages) page_count = record->max_pages;
    for (size_t i = 0; i < record->slot_count; i++) {
        if (atomic_load(&record->slots[i].tid) == tid) {
            take_pages(record->slots[i].bits, out, page_count, clear);
            return 0;
        }
    }
    return ENOENT;
}

int memsnap_record_failure(const memsnap_page_record *record, uintptr_t *address, size_t *pages_marked) {
    if (address) *address = atomic_load(&((memsnap_page_record *)record)->failure_address);
    if (pages_marked) *pages_marked = atomic_load(&((memsnap_page_record *)record)->pages_marked);
    return atomic_load(&((memsnap_page_record *)record)->failure_errno);
}

void memsnap_record_clear_failure(memsnap_page_record *record) {
    atomic_store(&record->failure_address, 0);
    atomic_store(&record->pages_marked, 0);
    atomic_store(&record->failure_errno, 0);
}

// ---- mprotect + SIGSEGV ----------------------------------------------------------------------

static memsnap_page_record *_Atomic segv_records[MEMSNAP_SEGV_MAX_RECORDS];
static _Atomic long segv_handlers_running;
static struct sigaction previous_action;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int installed;

// Hands a fault that is not ours to whoever had SIGSEGV before us (the Swift runtime's backtracer,
// a debugger's agent, a host runtime's handler).
static void chain_to_previous(int signal_number, siginfo_t *info, void *context) {
    if (previous_action.sa_flags & SA_SIGINFO) {
        if (previous_action.sa_sigaction) {
            previous_action.sa_sigaction(signal_number, info, context);
            return;
        }
    } else if (previous_action.sa_handler != SIG_DFL && previous_action.sa_handler != SIG_IGN) {
        previous_action.sa_handler(signal_number);
        return;
    }
    // Default action (ignoring a real SIGSEGV would re-fault forever): restore it and return, so
    // the faulting instruction runs again and the kernel delivers the signal with its default.
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    sigaction(signal_number, &default_action, NULL);
}

static int resolve_fault(memsnap_page_record *record, uintptr_t address) {
    uintptr_t end = atomic_load_explicit(&record->tracked_end, memory_order_acquire);
    if (address < record->start || address >= end) return 0;
    size_t page = (address - record->start) >> record->page_shift;
    uintptr_t page_start = record->start + ((uintptr_t)page << record->page_shift);
    // Re-enable writes before marking: a collector that re-protects between the two then leaves
    // the page protected with its mark in the next interval, never writable and unmarked.
    if (mprotect((void *)page_start, (size_t)1 << record->page_shift, PROT_READ | PROT_WRITE) == 0) {
        long tid = atomic_load_explicit(&record->attached_threads, memory_order_acquire) ? memsnap_gettid() : 0;
        memsnap_record_mark(record, page, tid);
        return 1;
    }
    int failure = errno;
    // Usually ENOMEM: splitting the VMA would pass vm.max_map_count. Give up on this record
    // rather than loop on the fault: make the whole range writable again (which merges its VMAs)
    // and report the failure at the next collect.
    if (mprotect((void *)record->start, end - record->start, PROT_READ | PROT_WRITE) != 0) return 0;
    atomic_store(&record->failure_address, address);
    atomic_store(&record->failure_errno, failure);
    atomic_store_explicit(&record->tracked_end, record->start, memory_order_release);
    return 1;
}

static void segv_handler(int signal_number, siginfo_t *info, void *context) {
    int saved_errno = errno;
    int handled = 0;
    if (info && info->si_code == SEGV_ACCERR) {
        atomic_fetch_add_explicit(&segv_handlers_running, 1, memory_order_acq_rel);
        uintptr_t address = (uintptr_t)info->si_addr;
        for (size_t i = 0; i < MEMSNAP_SEGV_MAX_RECORDS && !handled; i++) {
            memsnap_page_record *record = atomic_load_explicit(&segv_records[i], memory_order_acquire);
            if (record) handled = resolve_fault(record, address);
        }
        atomic_fetch_sub_explicit(&segv_handlers_running, 1, memory_order_acq_rel);
    }
    errno = saved_errno;
    if (!handled) chain_to_previous(signal_number, info, context);
}

int memsnap_segv_install(void) {
    if (atomic_load(&installed)) return 0;
    pthread_mutex_lock(&install_lock);
    int result = 0;
    if (!atomic_load(&installed)) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = segv_handler;
        action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGSEGV, &action, &previous_action) != 0) {
            result = errno;
        } else {
            atomic_store(&installed, 1);
        }
    }
    pthread_mutex_unlock(&install_lock);
    return result;
}

int memsnap_segv_is_outermost(void) {
    struct sigaction current;
    if (sigaction(SIGSEGV, NULL, &current) != 0) return 0;
    return (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == segv_handler;
}

int memsnap_segv_add(memsnap_page_record *record) {
    for (size_t i = 0; i < MEMSNAP_SEGV_MAX_RECORDS; i++) {
        memsnap_page_record *expected = NULL;
        if (atomic_compare_exchange_strong(&segv_records[i], &expected, record)) return 0;
    }
    return ENOSPC;
}

void memsnap_segv_remove(memsnap_page_record *record) {
    for (size_t i = 0; i < MEMSNAP_SEGV_MAX_RECORDS; i++) {
        memsnap_page_record *expected = record;
        atomic_compare_exchange_strong(&segv_records[i], &expected, NULL);
    }
    // A handler that loaded the record before it was removed may still be using it.
    while (atomic_load_explicit(&segv_handlers_running, memory_order_acquire) != 0) sched_yield();
}
