/* SPDX-License-Identifier: MIT */
/*
 * aio_read and aio_write: each request runs on a thread of its own, so
 * that several are in flight at once (qemu-io's requests are coroutines
 * on one thread, with its thread pool doing the file I/O).  A finished
 * request goes on the done list; the main thread prints it ("wrote ...",
 * "readv failed: ...") when it reaps: between commands, while waiting
 * (aio_flush, wait_break, sleep) and before the image closes.  Results
 * are printed in the order the requests completed, as qemu-io does.
 *
 * Locking: lock protects the lists and counters below.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "util.h"

struct io_aio {
    struct io_ctx *ctx;
    struct block_handle *h;
    bool write;
    bool zero;
    int64_t offset;
    uint64_t bytes;
    unsigned flags;
    int pattern;                /* read: -1 for none */
    bool verbose, quiet, machine;
    uint8_t *buf;
    int64_t t0, ns;
    int ret;
    pthread_t thread;
    struct io_aio *next;        /* done list */
};

static struct lock lock;
static pthread_cond_t done_cond;
static struct io_aio *done_head, **done_tail = &done_head;
static unsigned in_flight;      /* submitted, not yet reaped */

void
io_aio_init(void)
{
    lock_init(&lock, LOCK_IO_AIO);
    cond_init(&done_cond);
}

struct io_aio *
io_aio_new(struct io_ctx *ctx, bool write, int64_t offset, uint64_t bytes)
{
    struct io_aio *a = xzalloc(sizeof(*a));

    a->ctx = ctx;
    a->h = ctx->h;
    a->write = write;
    a->offset = offset;
    a->bytes = bytes;
    a->pattern = -1;
    return a;
}

void
io_aio_set_read(struct io_aio *a, int pattern, bool verbose, bool quiet,
                bool machine)
{
    a->pattern = pattern;
    a->verbose = verbose;
    a->quiet = quiet;
    a->machine = machine;
    a->buf = io_buf_alloc(a->bytes, 0xab);
}

void
io_aio_set_write(struct io_aio *a, int pattern, bool zero, unsigned flags,
                 bool quiet, bool machine)
{
    a->zero = zero;
    a->flags = flags;
    a->quiet = quiet;
    a->machine = machine;
    if (!zero) {
        a->buf = io_buf_alloc(a->bytes, pattern);
    }
}

static void *
aio_run(void *opaque)
{
    struct io_aio *a = opaque;

    a->t0 = clock_ns();
    if (!a->write) {
        a->ret = block_handle_pread(a->h, (uint64_t)a->offset, a->bytes,
                                    a->buf, 0);
    } else if (a->zero) {
        a->ret = block_handle_pwrite_zeroes(a->h, (uint64_t)a->offset,
                                            a->bytes, a->flags);
    } else {
        a->ret = block_handle_pwrite(a->h, (uint64_t)a->offset, a->bytes,
                                     a->buf, a->flags);
    }
    a->ns = clock_ns() - a->t0;
    mutex_lock(&lock);
    *done_tail = a;
    done_tail = &a->next;
    cond_broadcast(&done_cond);
    mutex_unlock(&lock);
    return NULL;
}

void
io_aio_submit(struct io_aio *a)
{
    mutex_lock(&lock);
    in_flight++;
    mutex_unlock(&lock);
    thread_create(&a->thread, "io-aio", aio_run, a);
}

static void
report(struct io_aio *a)
{
    if (a->ret < 0) {
        printf("%s failed: %s\n", a->write ? "aio_write" : "readv",
               strerror(-a->ret));
        return;
    }
    if (!a->write && a->pattern >= 0) {
        for (uint64_t i = 0; i < a->bytes; i++) {
            if (a->buf[i] != a->pattern) {
                printf("Pattern verification failed at offset %" PRId64
                       ", %" PRIu64 " bytes\n", a->offset, a->bytes);
                break;
            }
        }
    }
    if (a->quiet) {
        return;
    }
    if (a->verbose) {
        io_hexdump(a->buf, a->offset, (int64_t)a->bytes);
    }
    io_report(a->write ? "wrote" : "read", a->ns, a->offset,
              (int64_t)a->bytes, (int64_t)a->bytes, 1, a->machine);
}

void
io_aio_reap(void)
{
    struct io_aio *list;

    mutex_lock(&lock);
    list = done_head;
    done_head = NULL;
    done_tail = &done_head;
    mutex_unlock(&lock);
    while (list) {
        struct io_aio *a = list;

        list = a->next;
        thread_join(a->thread);
        report(a);
        io_buf_free(a->buf);
        free(a);
        mutex_lock(&lock);
        in_flight--;
        mutex_unlock(&lock);
    }
    fflush(stdout);
}

void
io_aio_drain(void)
{
    for (;;) {
        io_aio_reap();
        mutex_lock(&lock);
        if (in_flight == 0) {
            mutex_unlock(&lock);
            return;
        }
        while (!done_head) {
            cond_wait(&done_cond, &lock);
        }
        mutex_unlock(&lock);
    }
}

void
io_aio_settle(void)
{
    /* A resumed request finishes quickly unless it waits again. */
    int64_t deadline = clock_ns() + 200 * 1000000LL;

    mutex_lock(&lock);
    while (in_flight && !done_head && clock_ns() < deadline) {
        cond_timedwait_ns(&done_cond, &lock, MIN(deadline,
                                                 clock_ns() + 10000000LL));
    }
    mutex_unlock(&lock);
    io_aio_reap();
}

unsigned
io_aio_in_flight(void)
{
    unsigned n;

    mutex_lock(&lock);
    n = in_flight;
    mutex_unlock(&lock);
    return n;
}
