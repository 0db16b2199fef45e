/* SPDX-License-Identifier: MIT */
/* Small helpers: allocation, parsing, full I/O, clocks, thread wrappers. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "util.h"

static void
out_of_memory(void)
{
    fputs("lockstep: out of memory\n", stderr);
    abort();
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p) {
        out_of_memory();
    }
    return p;
}

void *
xmalloc_page(size_t n)
{
    void *p;

    if (posix_memalign(&p, 4096, n ? n : 1) != 0) {
        out_of_memory();
    }
    return p;
}

void *
xzalloc(size_t n)
{
    return xcalloc(1, n);
}

void *
xcalloc(size_t nmemb, size_t n)
{
    void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);

    if (!p) {
        out_of_memory();
    }
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        out_of_memory();
    }
    return p;
}

char *
xstrdup(const char *s)
{
    char *p = strdup(s);

    if (!p) {
        out_of_memory();
    }
    return p;
}

char *
xvasprintf(const char *fmt, va_list ap)
{
    char *s;

    if (vasprintf(&s, fmt, ap) < 0) {
        out_of_memory();
    }
    return s;
}

char *
xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;

    va_start(ap, fmt);
    s = xvasprintf(fmt, ap);
    va_end(ap);
    return s;
}

void
cleanup_free(void *ptr)
{
    free(*(void **)ptr);
}

int
parse_int64(const char *s, int64_t *out)
{
    char *end;
    long long v;

    if (!s || !*s) {
        return -EINVAL;
    }
    errno = 0;
    v = strtoll(s, &end, 0);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (end == s || *end) {
        return -EINVAL;
    }
    *out = v;
    return 0;
}

int
parse_size(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;
    uint64_t mult = 1, frac = 0, den = 1;
    unsigned __int128 total;

    if (!s || !*s || *s == '-') {
        return -EINVAL;
    }
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    if (end == s) {
        return -EINVAL;
    }
    /* A decimal fraction ("1.25M"), as QEMU takes: digits past the 19th
     * are below any unit's byte and dropped. */
    if (*end == '.') {
        for (end++; *end >= '0' && *end <= '9'; end++) {
            if (den < UINT64_C(10000000000000000000)) {
                frac = frac * 10 + (uint64_t)(*end - '0');
                den *= 10;
            }
        }
    }
    switch (*end) {
    case '\0':
        break;
    case 'b': case 'B': mult = 1; end++; break;
    case 'k': case 'K': mult = KiB; end++; break;
    case 'm': case 'M': mult = MiB; end++; break;
    case 'g': case 'G': mult = GiB; end++; break;
    case 't': case 'T': mult = TiB; end++; break;
    case 'p': case 'P': mult = 1024 * TiB; end++; break;
    case 'e': case 'E': mult = 1024 * 1024 * TiB; end++; break;
    default:
        return -EINVAL;
    }
    if (*end) {
        return -EINVAL;
    }
    if (frac && mult == 1) {
        return -EINVAL;     /* a fraction of a byte */
    }
    /* Rounded to the nearest byte, halves up. */
    total = (unsigned __int128)v * mult +
            ((unsigned __int128)frac * mult + den / 2) / den;
    if (total > UINT64_MAX) {
        return -ERANGE;
    }
    *out = (uint64_t)total;
    return 0;
}

bool
buffer_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;

    /* Check the first 16 bytes, then compare the buffer with itself
     * shifted: fast in practice and needs no special alignment. */
    for (size_t i = 0; i < len && i < 16; i++) {
        if (p[i]) {
            return false;
        }
    }
    return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}

int
pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
    char *p = buf;

    while (len > 0) {
        ssize_t r = pread(fd, p, len, offset);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            /* Past the end of the file reads as zeroes. */
            memset(p, 0, len);
            return 0;
        }
        p += r;
        len -= r;
        offset += r;
    }
    return 0;
}

int
pwrite_full(int fd, const void *buf, size_t len, uint64_t offset)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t r = pwrite(fd, p, len, offset);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            return -EIO;
        }
        p += r;
        len -= r;
        offset += r;
    }
    return 0;
}

int
read_full(int fd, void *buf, size_t len)
{
    char *p = buf;

    while (len > 0) {
        ssize_t r = read(fd, p, len);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        if (r == 0) {
            return -ECONNRESET;
        }
        p += r;
        len -= r;
    }
    return 0;
}

int
write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t r = write(fd, p, len);

        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        p += r;
        len -= r;
    }
    return 0;
}

int64_t
clock_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

const struct poll_tuning poll_tuning_default = {
    .max_ns = POLL_MAX_NS_DEFAULT,
};

/* Polling starts this long and grows while sleeps end within GROW. */
#define POLL_MIN_NS  4000
#define POLL_GROW_NS 128000

int64_t
poll_adapt(const struct poll_tuning *t, int64_t poll_ns, int64_t slept_ns)
{
    int64_t next;

    if (slept_ns + poll_ns <= POLL_GROW_NS) {
        next = !poll_ns ? POLL_MIN_NS :
               poll_ns > INT64_MAX / (t->grow ? t->grow : 2) ? t->max_ns :
               poll_ns * (t->grow ? t->grow : 2);
        return MIN(next, t->max_ns);
    }
    next = t->shrink ? poll_ns / t->shrink : 0;
    return next < POLL_MIN_NS ? 0 : next;
}

static void
check(int r, const char *what)
{
    if (r != 0) {
        fprintf(stderr, "lockstep: %s: %s\n", what, strerror(r));
        abort();
    }
}

void
mutex_init(pthread_mutex_t *m)
{
    check(pthread_mutex_init(m, NULL), "pthread_mutex_init");
}

void
(mutex_destroy)(pthread_mutex_t *m)
{
    check(pthread_mutex_destroy(m), "pthread_mutex_destroy");
}

void
(mutex_lock)(pthread_mutex_t *m)
{
    check(pthread_mutex_lock(m), "pthread_mutex_lock");
}

void
(mutex_unlock)(pthread_mutex_t *m)
{
    check(pthread_mutex_unlock(m), "pthread_mutex_unlock");
}

void
cond_init(pthread_cond_t *c)
{
    pthread_condattr_t attr;

    check(pthread_condattr_init(&attr), "pthread_condattr_init");
    check(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC),
          "pthread_condattr_setclock");
    check(pthread_cond_init(c, &attr), "pthread_cond_init");
    pthread_condattr_destroy(&attr);
}

void
cond_destroy(pthread_cond_t *c)
{
    check(pthread_cond_destroy(c), "pthread_cond_destroy");
}

static __thread void (*tls_block_hook)(void *);
static __thread void *tls_block_opaque;

void
thread_set_block_hook(void (*fn)(void *opaque), void *opaque)
{
    tls_block_hook = fn;
    tls_block_opaque = opaque;
}

void
thread_may_block(void)
{
    void (*fn)(void *) = tls_block_hook;

    if (fn) {
        tls_block_hook = NULL;     /* one-shot */
        fn(tls_block_opaque);
    }
}

void
(mutex_lock_may_block)(pthread_mutex_t *m)
{
    if (pthread_mutex_trylock(m) == 0) {
        return;
    }
    thread_may_block();
    mutex_lock(m);
}

void
sleep_ns(int64_t ns)
{
    struct timespec ts = {
        .tv_sec = ns / 1000000000,
        .tv_nsec = ns % 1000000000,
    };

    thread_may_block();
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        /* the rest of it */
    }
}

void
(cond_wait)(pthread_cond_t *c, pthread_mutex_t *m)
{
    thread_may_block();
    check(pthread_cond_wait(c, m), "pthread_cond_wait");
}

bool
(cond_timedwait_ns)(pthread_cond_t *c, pthread_mutex_t *m, int64_t deadline)
{
    struct timespec ts = {
        .tv_sec = deadline / 1000000000,
        .tv_nsec = deadline % 1000000000,
    };
    int r;

    thread_may_block();
    r = pthread_cond_timedwait(c, m, &ts);

    if (r == ETIMEDOUT) {
        return false;
    }
    check(r, "pthread_cond_timedwait");
    return true;
}

void
cond_signal(pthread_cond_t *c)
{
    check(pthread_cond_signal(c), "pthread_cond_signal");
}

void
cond_broadcast(pthread_cond_t *c)
{
    check(pthread_cond_broadcast(c), "pthread_cond_broadcast");
}

void
thread_create(pthread_t *t, const char *name, void *(*fn)(void *),
              void *opaque)
{
    char short_name[16];

    check(pthread_create(t, NULL, fn, opaque), "pthread_create");
    /* Linux limits thread names to 15 characters. */
    snprintf(short_name, sizeof(short_name), "%s", name);
    pthread_setname_np(*t, short_name);
}

void
thread_join(pthread_t t)
{
    check(pthread_join(t, NULL), "pthread_join");
}

bool
socket_is_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        return false;
    }
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&ss;

        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
               (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) &&
                in6->sin6_addr.s6_addr[12] == 127);
    }
    return ss.ss_family == AF_UNIX;
}
