#define _GNU_SOURCE
#include "CMemSnap.h"

#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

int memsnap_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

const char *memsnap_errno_name(int error) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
    return strerrorname_np(error);
#else
    (void)error;
    return NULL;
#endif
}

void memsnap_rwlock_init_prefer_writer(pthread_rwlock_t *lock) {
    pthread_rwlockattr_t attributes;
    pthread_rwlockattr_init(&attributes);
    pthread_rwlockattr_setkind_np(&attributes, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(lock, &attributes);
    pthread_rwlockattr_destroy(&attributes);
}

int memsnap_thread_set_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}

int memsnap_pipe_cloexec_nonblocking(int fds[2]) {
    return pipe2(fds, O_CLOEXEC | O_NONBLOCK);
}

int memsnap_rename_noreplace(const char *from, const char *to) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, 1 /* RENAME_NOREPLACE */);
}

int memsnap_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}

int memsnap_exit_with_parent(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal);
}

// P_PIDFD (include/uapi/linux/wait.h, Linux 5.4); glibc before 2.36 does not name it.
#define MEMSNAP_P_PIDFD 3

int memsnap_pidfd_open(int pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0U);
}

int memsnap_pidfd_send_signal(int pidfd, int signal) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signal, NULL, 0U);
}

int memsnap_pidfd_wait(int pidfd, int no_hang, int *reaped, int *code, int *status) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid((idtype_t)MEMSNAP_P_PIDFD, (id_t)pidfd, &info, WEXITED | (no_hang ? WNOHANG : 0)) != 0) return -1;
    // With WNOHANG and no state change, waitid leaves si_pid 0 (hence the memset).
    *reaped = info.si_pid != 0;
    *code = info.si_code;
    *status = info.si_status;
    return 0;
}

int memsnap_spawn_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int memsnap_spawn_change_directory(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int memsnap_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

_Static_assert(sizeof(struct memsnap_address_range) == sizeof(struct iovec), "iovec layout");

long memsnap_madvise_ranges(const struct memsnap_address_range *ranges, size_t count, int advice) {
#ifdef SYS_process_madvise
    // PIDFD_SELF_THREAD (include/uapi/linux/pidfd.h, 6.15): the caller, no descriptor to own.
    return syscall(SYS_process_madvise, -10000, ranges, count, advice, 0U);
#else
    (void)ranges; (void)count; (void)advice;
    errno = ENOSYS;
    return -1;
#endif
}
