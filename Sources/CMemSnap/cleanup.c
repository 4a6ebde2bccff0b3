// Temporary files removed when a fatal signal (SIGINT, SIGTERM, SIGHUP) ends the process.
//
// Signal-handler rules followed here: a fixed table (no allocation), slot states changed only by
// lock-free atomics, and only async-signal-safe calls in the handler (unlink, sigaction, raise).
#define _GNU_SOURCE
#include "CMemSnap.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

enum { SLOT_FREE = 0, SLOT_FILLING = 1, SLOT_READY = 2, SLOT_HANDLING = 3 };

static char cleanup_paths[MEMSNAP_CLEANUP_SLOTS][MEMSNAP_CLEANUP_PATH_MAX];
static _Atomic int cleanup_states[MEMSNAP_CLEANUP_SLOTS];

int memsnap_cleanup_register(const char *path) {
    size_t length = strlen(path);
    if (length == 0 || length >= MEMSNAP_CLEANUP_PATH_MAX) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (int slot = 0; slot < MEMSNAP_CLEANUP_SLOTS; slot++) {
        int expected = SLOT_FREE;
        if (atomic_compare_exchange_strong(&cleanup_states[slot], &expected, SLOT_FILLING)) {
            memcpy(cleanup_paths[slot], path, length + 1);
            // Release: a handler that sees READY sees the whole path.
            atomic_store_explicit(&cleanup_states[slot], SLOT_READY, memory_order_release);
            return slot;
        }
    }
    errno = ENOSPC;
    return -1;
}

void memsnap_cleanup_unregister(int slot) {
    if (slot < 0 || slot >= MEMSNAP_CLEANUP_SLOTS) return;
    // Fails only while a handler is unlinking the path, and then the process is ending anyway.
    int expected = SLOT_READY;
    atomic_compare_exchange_strong(&cleanup_states[slot], &expected, SLOT_FREE);
}

static void cleanup_handler(int signal_number) {
    int saved_errno = errno;
    for (int slot = 0; slot < MEMSNAP_CLEANUP_SLOTS; slot++) {
        // Taking the slot keeps another thread from reusing it while its path is unlinked, and
        // a second handler (the same signal on another thread) from unlinking it twice.
        int expected = SLOT_READY;
        if (atomic_compare_exchange_strong(&cleanup_states[slot], &expected, SLOT_HANDLING)) {
            unlink(cleanup_paths[slot]);
        }
    }
    // End the process the way the signal would have: default disposition, then the signal again.
    // It is blocked while this handler runs, so it is delivered (and kills) as the handler returns.
    struct sigaction default_action;
    memset(&default_action, 0, sizeof default_action);
    default_action.sa_handler = SIG_DFL;
    sigemptyset(&default_action.sa_mask);
    sigaction(signal_number, &default_action, NULL);
    errno = saved_errno;
    raise(signal_number);
}

int memsnap_cleanup_install(int signal_number) {
    struct sigaction previous;
    if (sigaction(signal_number, NULL, &previous) != 0) return errno;
    // A signal the process was told to ignore (nohup, a shell's background job) stays ignored.
    if (!(previous.sa_flags & SA_SIGINFO) && previous.sa_handler == SIG_IGN) return 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = cleanup_handler;
    // Every signal is blocked while the table is walked, so a second one cannot cut it short.
    sigfillset(&action.sa_mask);
    if (sigaction(signal_number, &action, NULL) != 0) return errno;
    return 0;
}
