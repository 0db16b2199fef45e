/* SPDX-License-Identifier: MIT */
/*
 * Small dependency-free helpers used everywhere: allocation that aborts on
 * failure (for small control-plane objects only; guest-sized buffers use
 * plain malloc and handle failure), rounding, overflow-checked arithmetic,
 * and pthread wrappers that abort on error (a failed mutex call is a bug).
 */
#ifndef LOCKSTEP_UTIL_H
#define LOCKSTEP_UTIL_H

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lock.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define KiB (1024ULL)
#define MiB (1024ULL * KiB)
#define GiB (1024ULL * MiB)
#define TiB (1024ULL * GiB)

#define PRINTF_FMT(a, b) __attribute__((format(printf, a, b)))
#define UNUSED __attribute__((unused))

#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

void *xmalloc(size_t n);
void *xzalloc(size_t n);
void *xcalloc(size_t nmemb, size_t n);
void *xrealloc(void *p, size_t n);
/* Page-aligned memory (what O_DIRECT wants without a bounce); free(). */
void *xmalloc_page(size_t n);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) PRINTF_FMT(1, 2);
char *xvasprintf(const char *fmt, va_list ap) PRINTF_FMT(1, 0);

static inline bool
is_power_of_2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* Alignment arguments must be powers of two. */
static inline uint64_t
align_down(uint64_t x, uint64_t a)
{
    return x & ~(a - 1);
}

static inline uint64_t
align_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) & ~(a - 1);
}

static inline bool
is_aligned(uint64_t x, uint64_t a)
{
    return (x & (a - 1)) == 0;
}

static inline uint64_t
div_round_up(uint64_t x, uint64_t d)
{
    return (x + d - 1) / d;
}

static inline unsigned
log2_u64(uint64_t x)
{
    return 63 - __builtin_clzll(x);
}

/* True when offset + bytes overflows or goes past limit. */
static inline bool
range_exceeds(uint64_t offset, uint64_t bytes, uint64_t limit)
{
    uint64_t end;

    return __builtin_add_overflow(offset, bytes, &end) || end > limit;
}

static inline bool
ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Parse "123", "4k", "1M", "2G", "1T" (binary units), "1.25M" (a fraction
 * only with a unit). -EINVAL/-ERANGE. */
int parse_size(const char *s, uint64_t *out);
/* Parse an integer (decimal, 0x hex); -EINVAL/-ERANGE. */
int parse_int64(const char *s, int64_t *out);

/* Is the buffer all zero bytes? */
bool buffer_is_zero(const void *buf, size_t len);

/* Full reads/writes on fds (retry on EINTR and short counts); -errno. */
int pread_full(int fd, void *buf, size_t len, uint64_t offset);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset);
int read_full(int fd, void *buf, size_t len);
int write_full(int fd, const void *buf, size_t len);

/* Is a listening socket bound to a loopback address (or a unix
 * socket)?  For warnings about what is open to the network. */
bool socket_is_loopback(int fd);

/* Monotonic clock in nanoseconds. */
int64_t clock_ns(void);

/*
 * Adaptive busy-polling before a serving thread sleeps (the NBD reader on
 * its socket, a vhost-user queue on its ring), tuned as QEMU tunes an
 * iothread's polling: an export that names an iothread object takes its
 * poll-max-ns, poll-grow and poll-shrink.
 */
struct poll_tuning {
    int64_t max_ns;             /* longest poll; 0: never poll */
    int64_t grow;               /* multiplier; 0: double */
    int64_t shrink;             /* divisor; 0: drop to no polling */
};
#define POLL_MAX_NS_DEFAULT 32768       /* QEMU's on POSIX hosts */
extern const struct poll_tuning poll_tuning_default;
/*
 * The next poll time, from this one (poll_ns) and how long the thread
 * then slept (slept_ns): a wait that ended soon after the poll gave up
 * says a longer poll would have caught it, so grow; a long one shrinks.
 */
int64_t poll_adapt(const struct poll_tuning *t, int64_t poll_ns,
                   int64_t slept_ns);

/* pthread wrappers: abort on any error (nbdkit's locks.c rule). */
void mutex_init(pthread_mutex_t *m);
void mutex_destroy(pthread_mutex_t *m);
void mutex_lock(pthread_mutex_t *m);
void mutex_unlock(pthread_mutex_t *m);
void cond_init(pthread_cond_t *c);
void cond_destroy(pthread_cond_t *c);
void cond_wait(pthread_cond_t *c, pthread_mutex_t *m);
/* Wait until the absolute CLOCK_MONOTONIC time in ns; false on timeout. */
bool cond_timedwait_ns(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline);
void cond_signal(pthread_cond_t *c);
void cond_broadcast(pthread_cond_t *c);
void thread_create(pthread_t *t, const char *name, void *(*fn)(void *),
                   void *opaque);
void thread_join(pthread_t t);

/* Blocking hints.  A thread that serves an event source itself (the NBD
 * server's reader runs requests inline) arms a one-shot hook; code about
 * to sleep (a condition wait, a syscall that waits for a device or a peer)
 * calls thread_may_block() first, so that the hook can pass the source on
 * to another thread.  Unarmed, the hint costs one thread-local load.  The
 * hook runs with whatever locks the caller holds: it may only take locks
 * that are never held around block-layer calls. */
void thread_set_block_hook(void (*fn)(void *opaque), void *opaque);
void thread_may_block(void);
/* mutex_lock for locks whose holder may sleep on I/O (qcow2's metadata
 * lock): waiting for it gives a blocking hint first. */
void mutex_lock_may_block(pthread_mutex_t *m);
/* Sleep for ns nanoseconds (a blocking hint first). */
void sleep_ns(int64_t ns);

/* Scope cleanup: "CLEANUP_FREE char *p = NULL;" frees at end of scope. */
void cleanup_free(void *ptr);
#define CLEANUP_FREE __attribute__((cleanup(cleanup_free)))

/* The locking calls take a ranked lock (lock.h: order-checked) or a plain
 * mutex. */
#define mutex_lock(m)                                                        \
    _Generic((m), struct lock *: lock_acquire, default: mutex_lock)(m)
#define mutex_unlock(m)                                                      \
    _Generic((m), struct lock *: lock_release, default: mutex_unlock)(m)
#define mutex_lock_may_block(m)                                              \
    _Generic((m), struct lock *: lock_acquire_may_block,                     \
             default: mutex_lock_may_block)(m)
#define mutex_destroy(m)                                                     \
    _Generic((m), struct lock *: lock_destroy, default: mutex_destroy)(m)
#define cond_wait(c, m)                                                      \
    _Generic((m), struct lock *: lock_cond_wait, default: cond_wait)(c, m)
#define cond_timedwait_ns(c, m, d)                                           \
    _Generic((m), struct lock *: lock_cond_timedwait_ns,                     \
             default: cond_timedwait_ns)(c, m, d)

/* SCOPED_LOCK(&m): locks now, unlocks at the end of the enclosing block. */
struct scoped_lock {
    pthread_mutex_t *m;
    struct lock *l;
};

static inline struct scoped_lock
scoped_lock_plain(pthread_mutex_t *m)
{
    mutex_lock(m);
    return (struct scoped_lock){ .m = m };
}

static inline struct scoped_lock
scoped_lock_ranked(struct lock *l)
{
    lock_acquire(l);
    return (struct scoped_lock){ .l = l };
}

static inline void
scoped_unlock(struct scoped_lock *s)
{
    if (s->l) {
        lock_release(s->l);
    } else if (s->m) {
        mutex_unlock(s->m);
    }
}

#define SCOPED_LOCK_CAT2(a, b) a##b
#define SCOPED_LOCK_CAT(a, b) SCOPED_LOCK_CAT2(a, b)
#define SCOPED_LOCK(m)                                                       \
    struct scoped_lock SCOPED_LOCK_CAT(scoped_lock_, __LINE__)               \
        __attribute__((cleanup(scoped_unlock), unused)) =                    \
            _Generic((m), struct lock *: scoped_lock_ranked,                 \
                     default: scoped_lock_plain)(m)

#endif
