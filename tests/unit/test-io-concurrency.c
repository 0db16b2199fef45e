/* SPDX-License-Identifier: MIT */
/*
 * Concurrency tests of the request path: eight threads issue overlapping,
 * unaligned reads and writes through one handle on a raw node over a file
 * in /tmp, and every check is built so that a torn or lost write shows up.
 *
 * Design notes.
 *   - Private slots: each thread owns 4 KiB slots, interleaved with other
 *     threads' slots and placed at an unaligned base so that neighbours
 *     share host blocks.  A thread keeps a shadow copy of its slots; after
 *     every write it reads back a random part of the slot and compares it
 *     with the shadow.  A lost write, or a neighbour's write that clobbers
 *     our bytes (a bad read-modify-write), is a mismatch.
 *   - Shared units: 4 KiB units at an unaligned base, written by every
 *     thread with BLOCK_REQ_SERIALISING in runs of 1-4 units.  Each 8-byte
 *     word holds (magic, thread, sequence, unit, word index).  A serialising
 *     read must find every unit either never written (zero) or entirely
 *     from one write: words of two writes in one unit mean a torn write.
 *   - Read-modify-write: on a node opened with cache.direct=on (O_DIRECT,
 *     so request_alignment > 1) threads write disjoint, unaligned byte
 *     ranges of the same 4 KiB blocks; the core must serialise its RMW so
 *     that no update is lost.  Skipped where O_DIRECT is refused (tmpfs).
 * Threads never call cmocka's asserts; they record the first failure and
 * the main thread reports it.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "lockstep/block.h"
#include "util.h"

#define NTHREADS 8
#define IMG_SIZE (4 * MiB)
#define SLOT 4096
#define NSLOTS 24                       /* per thread */
#define PRIV_BASE 100                   /* unaligned on purpose */
#define SHARED_BASE (2 * MiB + 777)
#define UNIT 4096
#define NUNITS 32
#define UNIT_WORDS (UNIT / 8)
#define HAMMER_OPS 1500
#define WORD_MAGIC 0xa5ULL

struct fixture {
    char path[64];
    struct block_node *node;
    struct block_handle *h;
};

/* The first failure any thread saw.  Protected by: fail_lock. */
static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static char fail_msg_buf[512];
static int fail_count;

static void PRINTF_FMT(1, 2)
record_failure(const char *fmt, ...)
{
    va_list ap;

    mutex_lock(&fail_lock);
    if (fail_count++ == 0) {
        va_start(ap, fmt);
        vsnprintf(fail_msg_buf, sizeof(fail_msg_buf), fmt, ap);
        va_end(ap);
    }
    mutex_unlock(&fail_lock);
}

static void
reset_failures(void)
{
    mutex_lock(&fail_lock);
    fail_count = 0;
    fail_msg_buf[0] = '\0';
    mutex_unlock(&fail_lock);
}

static void
assert_no_failures(void)
{
    mutex_lock(&fail_lock);
    if (fail_count) {
        mutex_unlock(&fail_lock);
        fail_msg("%d failures, first: %s", fail_count, fail_msg_buf);
    }
    mutex_unlock(&fail_lock);
}

/* xorshift64*: a cheap per-thread generator; the seed must not be 0. */
static uint64_t
rnd_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ULL;
}

static uint64_t
rnd_below(uint64_t *s, uint64_t n)
{
    return rnd_next(s) % n;
}

/*
 * Open a raw node over a new file of IMG_SIZE bytes.  Returns false with
 * *errp set when the node cannot be opened (the file is removed then).
 */
static bool
fixture_open(struct fixture *f, bool direct, struct err **errp)
{
    json_t *opts;
    int fd;

    snprintf(f->path, sizeof(f->path), "/tmp/test-io-concurrency.XXXXXX");
    fd = mkstemp(f->path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, IMG_SIZE), 0);
    close(fd);

    opts = json_pack("{s:s, s:{s:s, s:s, s:{s:b}}}", "driver", "raw",
                     "file", "driver", "file", "filename", f->path,
                     "cache", "direct", direct);
    f->node = block_node_new(opts, errp);
    json_decref(opts);
    if (!f->node) {
        unlink(f->path);
        return false;
    }
    f->h = block_handle_new(f->node, "test-io-concurrency",
                            BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE,
                            BLOCK_PERM_ALL, errp);
    if (!f->h) {
        block_node_unref(f->node);
        unlink(f->path);
        return false;
    }
    return true;
}

static void
fixture_close(struct fixture *f)
{
    block_handle_free(f->h);
    block_node_unref(f->node);
    unlink(f->path);
}

/* ---- Hammer: private slots, shared units, stray reads ------------------ */

struct worker {
    struct fixture *f;
    int tid;
    uint64_t rnd;
    uint32_t seq;
    uint8_t shadow[NSLOTS][SLOT];      /* what our slots must contain */
};

static uint64_t
slot_offset(int tid, int k)
{
    return PRIV_BASE + ((uint64_t)k * NTHREADS + tid) * SLOT;
}

static uint8_t
priv_byte(int tid, uint32_t seq, uint64_t pos)
{
    return (uint8_t)((pos * 131) ^ (seq * 31) ^ ((unsigned)tid << 5) ^ 0x5a);
}

static void
priv_write_and_check(struct worker *w)
{
    int k = rnd_below(&w->rnd, NSLOTS);
    uint64_t a = rnd_below(&w->rnd, SLOT), b = rnd_below(&w->rnd, SLOT);
    uint64_t base = slot_offset(w->tid, k), len;
    uint8_t buf[SLOT];
    uint32_t seq = ++w->seq;
    int ret;

    if (a > b) {
        uint64_t t = a;
        a = b;
        b = t;
    }
    len = b - a + 1;
    for (uint64_t i = 0; i < len; i++) {
        w->shadow[k][a + i] = buf[i] = priv_byte(w->tid, seq, a + i);
    }
    ret = block_handle_pwrite(w->f->h, base + a, len, buf, 0);
    if (ret < 0) {
        record_failure("thread %d: pwrite %" PRIu64 "+%" PRIu64 ": %s",
                       w->tid, base + a, len, strerror(-ret));
        return;
    }
    /* Read back a random, unaligned part of the whole slot. */
    a = rnd_below(&w->rnd, SLOT);
    len = 1 + rnd_below(&w->rnd, SLOT - a);
    ret = block_handle_pread(w->f->h, base + a, len, buf, 0);
    if (ret < 0) {
        record_failure("thread %d: pread: %s", w->tid, strerror(-ret));
        return;
    }
    if (memcmp(buf, &w->shadow[k][a], len) != 0) {
        record_failure("thread %d: slot %d at %" PRIu64 "+%" PRIu64
                       " lost a write or was clobbered", w->tid, k,
                       base + a, len);
    }
}

static uint64_t
unit_word(int tid, uint32_t seq, int unit, int word)
{
    return WORD_MAGIC << 56 | (uint64_t)tid << 48 | (uint64_t)seq << 16 |
           (uint64_t)unit << 9 | (uint64_t)word;
}

/* One unit of a serialising read: zero, or all words of a single write. */
static bool
unit_check(const uint8_t *buf, int unit, char *why, size_t whylen)
{
    uint64_t first, v;
    int tid;
    uint32_t seq;

    if (buffer_is_zero(buf, UNIT)) {
        return true;
    }
    memcpy(&first, buf, 8);
    tid = (first >> 48) & 0xff;
    seq = (first >> 16) & 0xffffffff;
    for (int i = 0; i < UNIT_WORDS; i++) {
        memcpy(&v, buf + i * 8, 8);
        if (v != unit_word(tid, seq, unit, i)) {
            snprintf(why, whylen, "unit %d word %d is %#" PRIx64 ", expected "
                     "%#" PRIx64 " (torn write)", unit, i, v,
                     unit_word(tid, seq, unit, i));
            return false;
        }
    }
    return true;
}

static void
shared_write(struct worker *w)
{
    int u0 = rnd_below(&w->rnd, NUNITS);
    int n = 1 + rnd_below(&w->rnd, MIN(4, NUNITS - u0));
    uint8_t *buf = xmalloc((size_t)n * UNIT);
    uint32_t seq = ++w->seq;
    int ret;

    for (int u = 0; u < n; u++) {
        for (int i = 0; i < UNIT_WORDS; i++) {
            uint64_t v = unit_word(w->tid, seq, u0 + u, i);

            memcpy(buf + (size_t)u * UNIT + i * 8, &v, 8);
        }
    }
    ret = block_handle_pwrite(w->f->h, SHARED_BASE + (uint64_t)u0 * UNIT,
                              (uint64_t)n * UNIT, buf, BLOCK_REQ_SERIALISING);
    if (ret < 0) {
        record_failure("thread %d: shared pwrite: %s", w->tid, strerror(-ret));
    }
    free(buf);
}

static void
shared_read(struct fixture *f, int tid, int u0, int n)
{
    uint8_t *buf = xmalloc((size_t)n * UNIT);
    char why[200];
    int ret;

    ret = block_handle_pread(f->h, SHARED_BASE + (uint64_t)u0 * UNIT,
                             (uint64_t)n * UNIT, buf, BLOCK_REQ_SERIALISING);
    if (ret < 0) {
        record_failure("thread %d: shared pread: %s", tid, strerror(-ret));
    }
    for (int u = 0; ret == 0 && u < n; u++) {
        if (!unit_check(buf + (size_t)u * UNIT, u0 + u, why, sizeof(why))) {
            record_failure("thread %d: %s", tid, why);
            break;
        }
    }
    free(buf);
}

/* A plain read anywhere: only checks that overlapping I/O does not fail. */
static void
stray_read(struct worker *w)
{
    uint64_t off = rnd_below(&w->rnd, IMG_SIZE);
    uint64_t len = 1 + rnd_below(&w->rnd, MIN(3 * SLOT, IMG_SIZE - off));
    uint8_t *buf = xmalloc(len);
    int ret = block_handle_pread(w->f->h, off, len, buf, 0);

    if (ret < 0) {
        record_failure("thread %d: pread %" PRIu64 "+%" PRIu64 ": %s",
                       w->tid, off, len, strerror(-ret));
    }
    free(buf);
}

static void *
hammer_thread(void *opaque)
{
    struct worker *w = opaque;

    for (int i = 0; i < HAMMER_OPS; i++) {
        uint64_t r = rnd_below(&w->rnd, 100);

        if (r < 40) {
            priv_write_and_check(w);
        } else if (r < 65) {
            shared_write(w);
        } else if (r < 90) {
            int u0 = rnd_below(&w->rnd, NUNITS);

            shared_read(w->f, w->tid, u0,
                        1 + rnd_below(&w->rnd, MIN(6, NUNITS - u0)));
        } else {
            stray_read(w);
        }
    }
    return NULL;
}

/* After the threads: every slot holds its owner's shadow, units are whole. */
static void
hammer_final_check(struct fixture *f, struct worker *workers)
{
    uint8_t buf[SLOT];

    for (int t = 0; t < NTHREADS; t++) {
        for (int k = 0; k < NSLOTS; k++) {
            assert_int_equal(block_handle_pread(f->h, slot_offset(t, k), SLOT,
                                                buf, 0), 0);
            if (memcmp(buf, workers[t].shadow[k], SLOT) != 0) {
                fail_msg("final: slot %d of thread %d differs", k, t);
            }
        }
    }
    shared_read(f, -1, 0, NUNITS);
    assert_no_failures();
}

static void
run_hammer(bool direct)
{
    struct fixture f;
    struct worker *workers = xcalloc(NTHREADS, sizeof(*workers));
    pthread_t threads[NTHREADS];
    struct err *e = NULL;

    if (!fixture_open(&f, direct, &e)) {
        free(workers);
        if (direct && e->errnum == EINVAL) {
            err_free(e);
            skip();
        }
        fail_msg("cannot open image: %s", e->msg);
    }
    reset_failures();
    for (int t = 0; t < NTHREADS; t++) {
        workers[t].f = &f;
        workers[t].tid = t;
        workers[t].rnd = 0x9e3779b97f4a7c15ULL * (t + 1);
        thread_create(&threads[t], "hammer", hammer_thread, &workers[t]);
    }
    for (int t = 0; t < NTHREADS; t++) {
        thread_join(threads[t]);
    }
    assert_no_failures();
    hammer_final_check(&f, workers);
    fixture_close(&f);
    free(workers);
}

static void
test_hammer(void **state UNUSED)
{
    run_hammer(false);
}

static void
test_hammer_direct(void **state UNUSED)
{
    run_hammer(true);
}

/* ---- Read-modify-write of shared blocks -------------------------------- */

#define RMW_BASE (1 * MiB)
#define RMW_BLOCK 4096
#define RMW_NBLOCKS 16
#define RMW_RANGE 509                   /* 8 * 509 + 3 < 4096, not aligned */
#define RMW_OPS 400

struct rmw_worker {
    struct fixture *f;
    int tid;
    uint64_t rnd;
    uint32_t last_seq[RMW_NBLOCKS];
    uint32_t seq;
};

static uint64_t
rmw_offset(int tid, int blk)
{
    return RMW_BASE + (uint64_t)blk * RMW_BLOCK + 3 + (uint64_t)tid * RMW_RANGE;
}

static void
rmw_fill(uint8_t *buf, int tid, uint32_t seq, int blk)
{
    for (int i = 0; i < RMW_RANGE; i++) {
        buf[i] = (uint8_t)(1 + ((seq * 7 + (unsigned)i + (unsigned)blk * 3 +
                                 (unsigned)tid * 37) % 251));
    }
}

static void *
rmw_thread(void *opaque)
{
    struct rmw_worker *w = opaque;
    uint8_t buf[RMW_RANGE], want[RMW_RANGE];

    for (int i = 0; i < RMW_OPS; i++) {
        int blk = rnd_below(&w->rnd, RMW_NBLOCKS);
        uint32_t seq = ++w->seq;
        uint64_t off = rmw_offset(w->tid, blk);
        int ret;

        rmw_fill(want, w->tid, seq, blk);
        ret = block_handle_pwrite(w->f->h, off, RMW_RANGE, want, 0);
        if (ret < 0) {
            record_failure("thread %d: pwrite: %s", w->tid, strerror(-ret));
            return NULL;
        }
        w->last_seq[blk] = seq;
        /* Check a random earlier block too: a later neighbour's RMW may
         * have written back stale bytes over it. */
        blk = rnd_below(&w->rnd, RMW_NBLOCKS);
        if (!w->last_seq[blk]) {
            continue;
        }
        rmw_fill(want, w->tid, w->last_seq[blk], blk);
        ret = block_handle_pread(w->f->h, rmw_offset(w->tid, blk), RMW_RANGE,
                                 buf, 0);
        if (ret < 0 || memcmp(buf, want, RMW_RANGE) != 0) {
            record_failure("thread %d: block %d lost update %" PRIu32
                           " (ret %d)", w->tid, blk, w->last_seq[blk], ret);
        }
    }
    return NULL;
}

static void
rmw_final_check(struct fixture *f, struct rmw_worker *workers)
{
    uint8_t buf[RMW_RANGE], want[RMW_RANGE];

    for (int t = 0; t < NTHREADS; t++) {
        for (int b = 0; b < RMW_NBLOCKS; b++) {
            assert_int_equal(block_handle_pread(f->h, rmw_offset(t, b),
                                                RMW_RANGE, buf, 0), 0);
            if (workers[t].last_seq[b]) {
                rmw_fill(want, t, workers[t].last_seq[b], b);
            } else {
                memset(want, 0, sizeof(want));
            }
            if (memcmp(buf, want, RMW_RANGE) != 0) {
                fail_msg("final: thread %d block %d lost update %" PRIu32, t,
                         b, workers[t].last_seq[b]);
            }
        }
    }
}

static void
run_rmw(bool direct)
{
    struct fixture f;
    struct rmw_worker *workers = xcalloc(NTHREADS, sizeof(*workers));
    pthread_t threads[NTHREADS];
    struct err *e = NULL;
    struct block_child *file;

    if (!fixture_open(&f, direct, &e)) {
        free(workers);
        if (direct && e->errnum == EINVAL) {
            /* O_DIRECT refused (tmpfs): nothing to test here. */
            err_free(e);
            skip();
        }
        fail_msg("cannot open image: %s", e->msg);
    }
    file = block_node_child(f.node, "file");
    assert_non_null(file);
    if (direct) {
        /* The point of the test: the core must do read-modify-write. */
        assert_true(file->node->limits.request_alignment > 1);
    }
    reset_failures();
    for (int t = 0; t < NTHREADS; t++) {
        workers[t].f = &f;
        workers[t].tid = t;
        workers[t].rnd = 0x2545f4914f6cdd1dULL * (t + 3);
        thread_create(&threads[t], "rmw", rmw_thread, &workers[t]);
    }
    for (int t = 0; t < NTHREADS; t++) {
        thread_join(threads[t]);
    }
    assert_no_failures();
    rmw_final_check(&f, workers);
    fixture_close(&f);
    free(workers);
}

static void
test_rmw_buffered(void **state UNUSED)
{
    run_rmw(false);
}

static void
test_rmw_direct(void **state UNUSED)
{
    run_rmw(true);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hammer),
        cmocka_unit_test(test_hammer_direct),
        cmocka_unit_test(test_rmw_buffered),
        cmocka_unit_test(test_rmw_direct),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
