/* SPDX-License-Identifier: MIT */
/*
 * Image fleecing at node level, through the real block layer on images in
 * /tmp: a source disk in use by a "guest" handle gets a copy-before-write
 * filter inserted above it (block_replace_node, while the guest writes),
 * and a snapshot-access node over the filter is read by an "export"
 * handle.  The snapshot must return the source's content at insertion time
 * byte for byte, whatever the guest does afterwards.
 *
 * Covered: the basic flow with raw and qcow2 temp images; bitmap-limited
 * snapshots (-EACCES outside); snapshot discard (target space released,
 * reads then fail, no more copies there); on-cbw-error with a failing
 * target and cbw-timeout with a slow one, under both policies; a torture
 * run (4 guest threads writing, zeroing and discarding at random while 2
 * threads read the snapshot) with several seeds; deduplication of
 * concurrent writes to one cluster; option errors.
 *
 * Threads never call cmocka's asserts; they record the first failure and
 * the main thread reports it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/copy/block-copy.h"
#include "block/filter/copy-before-write.h"
#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "qmp/qmp-internal.h"
#include "util.h"

#define CL (64 * KiB)
/* Not a multiple of the cluster size: the last cluster is partial. */
#define DISK_SIZE (8 * MiB + 2560)
#define HOT_OFF (6 * MiB)

/* ---- Failures from threads -------------------------------------------- */

static pthread_mutex_t fail_lock = PTHREAD_MUTEX_INITIALIZER;
static char fail_buf[512];
static int fail_count;

static void PRINTF_FMT(1, 2)
record_failure(const char *fmt, ...)
{
    va_list ap;

    mutex_lock(&fail_lock);
    if (fail_count++ == 0) {
        va_start(ap, fmt);
        vsnprintf(fail_buf, sizeof(fail_buf), fmt, ap);
        va_end(ap);
    }
    mutex_unlock(&fail_lock);
}

static void
assert_no_failures(void)
{
    mutex_lock(&fail_lock);
    if (fail_count) {
        int n = fail_count;

        fail_count = 0;
        mutex_unlock(&fail_lock);
        fail_msg("%d failures, first: %s", n, fail_buf);
    }
    mutex_unlock(&fail_lock);
}

/* xorshift64*; the seed must not be 0. */
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

static void
fill(uint8_t *buf, uint64_t offset, uint64_t bytes, unsigned seed)
{
    for (uint64_t i = 0; i < bytes; i++) {
        uint64_t o = offset + i;

        buf[i] = (uint8_t)(((o / 512) * 31 + seed * 7 + o) % 251 + 1);
    }
}

/* ---- The fleecing fixture --------------------------------------------- */

struct fleece_opts {
    bool qcow2_temp;            /* temp image is qcow2 (else raw) */
    json_t *target_blkdebug;    /* blkdebug options over the temp, or NULL */
    json_t *cbw_extra;          /* more cbw options, or NULL */
    bool hot_writer;            /* a guest thread writes during insertion */
    const char *bitmap;         /* create bitmap "b0" with these clusters
                                 * ("1,5,6"), and pass it to the cbw */
};

struct fleece {
    char src_path[64];
    char tmp_path[64];
    uint64_t size;
    struct block_node *src;
    struct block_node *tmp;
    struct block_node *dbg;
    struct block_node *cbw;
    struct block_node *snap;
    struct block_handle *guest;
    struct block_handle *reader;
    struct block_dirty_bitmap *bm;
    uint8_t *orig;              /* the source at snapshot time */
    uint8_t *cur;               /* model of the source now */
};

static void
temp_path(char *path, size_t len)
{
    int fd;

    snprintf(path, len, "/tmp/test-fleecing.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
}

static struct block_node *
open_json(json_t *opts)
{
    struct err *err = NULL;
    struct block_node *node = block_node_new(opts, &err);

    json_decref(opts);
    if (!node) {
        fail_msg("open: %s", err->msg);
    }
    return node;
}

/* The expected error of opening opts (stolen). */
static void
expect_open_error(json_t *opts, const char *msg)
{
    struct err *err = NULL;
    struct block_node *node = block_node_new(opts, &err);

    json_decref(opts);
    assert_null(node);
    assert_non_null(err);
    if (strcmp(err->msg, msg)) {
        fail_msg("expected '%s', got '%s'", msg, err->msg);
    }
    err_free(err);
}

static void
make_source(struct fleece *f, unsigned seed)
{
    FILE *fp;

    temp_path(f->src_path, sizeof(f->src_path));
    f->orig = xmalloc(f->size);
    f->cur = xmalloc(f->size);
    fill(f->orig, 0, f->size, seed);
    fp = fopen(f->src_path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(f->orig, 1, f->size, fp), f->size);
    fclose(fp);
    f->src = open_json(json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}}",
                                 "driver", "raw", "node-name", "fl-src",
                                 "discard", "unmap", "file", "driver",
                                 "file", "filename", f->src_path,
                                 "discard", "unmap"));
}

static void
make_temp(struct fleece *f, bool qcow2)
{
    temp_path(f->tmp_path, sizeof(f->tmp_path));
    if (qcow2) {
        struct qcow2_create_opts o = {0};
        struct block_node *file;
        struct err *err = NULL;

        file = open_json(json_pack("{s:s, s:s}", "driver", "file",
                                   "filename", f->tmp_path));
        if (qcow2_create(file, f->size, &o, &err) < 0) {
            fail_msg("qcow2_create: %s", err->msg);
        }
        block_node_unref(file);
    } else {
        assert_int_equal(truncate(f->tmp_path, (off_t)f->size), 0);
    }
    f->tmp = open_json(json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}}",
                                 "driver", qcow2 ? "qcow2" : "raw",
                                 "node-name", "fl-tmp", "discard", "unmap",
                                 "file", "driver", "file", "filename",
                                 f->tmp_path, "discard", "unmap"));
}

static void
make_bitmap(struct fleece *f, const char *clusters)
{
    struct err *err = NULL;
    const char *p = clusters;

    f->bm = block_dirty_bitmap_create(f->src, "b0", CL, &err);
    assert_non_null(f->bm);
    while (*p) {
        char *end;
        unsigned long c = strtoul(p, &end, 10);

        block_dirty_bitmap_set(f->bm, c * CL, CL);
        p = *end ? end + 1 : end;
    }
}

/* A guest thread that rewrites the hot cluster with values 1, 2, ... */
struct hot_writer {
    struct fleece *f;
    pthread_t th;
    bool stop;                  /* atomic */
    unsigned last;              /* atomic: last value written */
};

static void *
hot_writer_thread(void *opaque)
{
    struct hot_writer *w = opaque;
    uint8_t *buf = xmalloc(CL);

    for (unsigned v = 1; !__atomic_load_n(&w->stop, __ATOMIC_RELAXED);
         v++) {
        memset(buf, (int)(v % 255 + 1), CL);
        if (block_handle_pwrite(w->f->guest, HOT_OFF, CL, buf, 0) < 0) {
            record_failure("hot write failed");
            break;
        }
        __atomic_store_n(&w->last, v % 255 + 1, __ATOMIC_RELAXED);
        usleep(200);
    }
    free(buf);
    return NULL;
}

static void
insert_filter(struct fleece *f, const struct fleece_opts *o)
{
    json_t *cbw = json_pack("{s:s, s:s, s:s, s:s, s:s}", "driver",
                            "copy-before-write", "node-name", "fl-cbw",
                            "file", "fl-src", "target",
                            f->dbg ? "fl-dbg" : "fl-tmp", "discard",
                            "unmap");
    struct err *err = NULL;

    if (o->cbw_extra) {
        json_object_update(cbw, o->cbw_extra);
    }
    if (o->bitmap) {
        json_object_set_new(cbw, "bitmap", json_pack("{s:s, s:s}", "node",
                                                     "fl-src", "name", "b0"));
    }
    f->cbw = open_json(cbw);
    if (block_replace_node(f->src, f->cbw, &err) < 0) {
        fail_msg("insert: %s", err->msg);
    }
}

static void
fleece_setup(struct fleece *f, const struct fleece_opts *o, unsigned seed)
{
    struct err *err = NULL;
    struct hot_writer w = {.f = f};

    memset(f, 0, sizeof(*f));
    f->size = DISK_SIZE;
    make_source(f, seed);
    f->guest = block_handle_new(f->src, "guest",
                                BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE,
                                BLOCK_PERM_ALL, &err);
    assert_non_null(f->guest);
    make_temp(f, o->qcow2_temp);
    if (o->target_blkdebug) {
        json_t *d = json_pack("{s:s, s:s, s:s}", "driver", "blkdebug",
                              "node-name", "fl-dbg", "image", "fl-tmp");

        json_object_update(d, o->target_blkdebug);
        f->dbg = open_json(d);
    }
    if (o->bitmap) {
        make_bitmap(f, o->bitmap);
    }
    if (o->hot_writer) {
        thread_create(&w.th, "hot", hot_writer_thread, &w);
        /* At least one write before the insertion, however loaded the
         * machine: the check below needs one (a fixed sleep was not
         * always enough under a parallel test run). */
        for (int i = 0; i < 10000 && !__atomic_load_n(&w.last,
                                                       __ATOMIC_RELAXED);
             i++) {
            usleep(1000);
        }
        usleep(20000);
    }
    insert_filter(f, o);
    if (o->hot_writer) {
        usleep(20000);
        __atomic_store_n(&w.stop, true, __ATOMIC_RELAXED);
        thread_join(w.th);
        assert_no_failures();
    }
    f->snap = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                  "snapshot-access", "node-name", "fl-snap",
                                  "file", "fl-cbw", "discard", "unmap"));
    f->reader = block_handle_new(f->snap, "export 'snap'",
                                 BLOCK_PERM_CONSISTENT_READ |
                                 BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &err);
    assert_non_null(f->reader);
    if (o->hot_writer) {
        uint8_t *buf = xmalloc(CL);
        unsigned last = __atomic_load_n(&w.last, __ATOMIC_RELAXED);

        /* The snapshot holds one whole write (or the original data): the
         * last one that completed before the insertion drained. */
        assert_int_equal(block_handle_pread(f->reader, HOT_OFF, CL, buf, 0),
                         0);
        if (memcmp(buf, f->orig + HOT_OFF, CL)) {
            for (unsigned i = 1; i < CL; i++) {
                assert_int_equal(buf[i], buf[0]);
            }
            memcpy(f->orig + HOT_OFF, buf, CL);
        }
        assert_true(last != 0);
        free(buf);
        memcpy(f->cur, f->orig, f->size);
        memset(f->cur + HOT_OFF, (int)last, CL);
    } else {
        memcpy(f->cur, f->orig, f->size);
    }
    json_decref(o->target_blkdebug);
    json_decref(o->cbw_extra);
}

static void
fleece_teardown(struct fleece *f)
{
    struct err *err = NULL;

    block_handle_free(f->reader);
    block_node_unref(f->snap);
    if (block_replace_node(f->cbw, f->src, &err) < 0) {
        fail_msg("remove: %s", err->msg);
    }
    block_node_unref(f->cbw);
    block_handle_free(f->guest);
    if (f->bm) {
        block_dirty_bitmap_release(f->bm);
    }
    block_node_unref(f->dbg);
    block_node_unref(f->tmp);
    block_node_unref(f->src);
    unlink(f->src_path);
    unlink(f->tmp_path);
    free(f->orig);
    free(f->cur);
}

/* ---- Guest and reader helpers ----------------------------------------- */

static int
guest_write(struct fleece *f, uint64_t off, uint64_t len, unsigned seed)
{
    uint8_t *buf = xmalloc(len);
    int ret;

    fill(buf, off, len, seed);
    ret = block_handle_pwrite(f->guest, off, len, buf, 0);
    if (ret == 0) {
        memcpy(f->cur + off, buf, len);
    }
    free(buf);
    return ret;
}

static void
check_buf(const uint8_t *got, const uint8_t *exp, uint64_t off, uint64_t len,
          const char *what)
{
    if (memcmp(got, exp, len)) {
        for (uint64_t i = 0; i < len; i++) {
            if (got[i] != exp[i]) {
                fail_msg("%s: mismatch at %llu: got %u, expected %u", what,
                         (unsigned long long)(off + i), got[i], exp[i]);
            }
        }
    }
}

/* The snapshot over [off, +len) equals the original. */
static void
check_snap(struct fleece *f, uint64_t off, uint64_t len)
{
    uint8_t *buf = xmalloc(len);

    assert_int_equal(block_handle_pread(f->reader, off, len, buf, 0), 0);
    check_buf(buf, f->orig + off, off, len, "snapshot");
    free(buf);
}

static void
check_snap_all(struct fleece *f)
{
    for (uint64_t off = 0; off < f->size; off += MiB) {
        check_snap(f, off, MIN(MiB, f->size - off));
    }
}

static void
check_source(struct fleece *f)
{
    uint8_t *buf = xmalloc(f->size);

    assert_int_equal(block_handle_pread(f->guest, 0, f->size, buf, 0), 0);
    check_buf(buf, f->cur, 0, f->size, "source");
    free(buf);
}

static int
snap_read(struct fleece *f, uint64_t off, uint64_t len)
{
    uint8_t *buf = xmalloc(len);
    int ret = block_handle_pread(f->reader, off, len, buf, 0);

    free(buf);
    return ret;
}

static uint64_t
copied_bytes(struct fleece *f)
{
    uint64_t done, remaining;

    block_copy_progress(cbw_block_copy_state(f->cbw), &done, &remaining);
    return done;
}

/* ---- The basic flow ----------------------------------------------------- */

static void
run_flow(bool qcow2)
{
    struct fleece_opts o = {.qcow2_temp = qcow2, .hot_writer = true};
    struct fleece f;
    struct block_status_info info;
    uint64_t pnum, base, done, tail = DISK_SIZE - 1000;
    uint64_t rs = 42;
    uint8_t buf[4096];

    fleece_setup(&f, &o, 1);
    base = copied_bytes(&f);
    /* The hot writer's writes after insertion copied at most its cluster. */
    assert_true(base == 0 || base == CL);

    assert_int_equal(guest_write(&f, 0, 4096, 11), 0);
    assert_int_equal(guest_write(&f, 100 * KiB + 7, 200 * KiB, 12), 0);
    assert_int_equal(block_handle_pwrite_zeroes(f.guest, 1 * MiB, 128 * KiB,
                                                0), 0);
    memset(f.cur + 1 * MiB, 0, 128 * KiB);
    assert_int_equal(block_handle_pdiscard(f.guest, 2 * MiB, CL), 0);
    memset(f.cur + 2 * MiB, 0, CL);
    assert_int_equal(guest_write(&f, tail, 1000, 13), 0);
    assert_int_equal(guest_write(&f, 3 * MiB - 10, 20, 14), 0);
    /* A second write to a copied cluster copies nothing. */
    assert_int_equal(guest_write(&f, 512, 1024, 15), 0);

    /* Clusters 0, 1-4, 16-17, 32, 47-48 and the partial last one. */
    done = copied_bytes(&f) - base;
    assert_int_equal(done, 10 * CL + (DISK_SIZE - 8 * MiB));

    check_snap_all(&f);
    check_source(&f);
    for (int i = 0; i < 200; i++) {
        uint64_t off = rnd_below(&rs, DISK_SIZE);
        uint64_t len = 1 + rnd_below(&rs, MIN(300 * KiB, DISK_SIZE - off));

        check_snap(&f, off, len);
    }

    /* Block status of the frozen view. */
    assert_true(block_handle_status(f.reader, 0, CL, &pnum, &info) >= 0);
    assert_true(info.flags & BLOCK_STATUS_ALLOCATED);
    assert_true(info.flags & BLOCK_STATUS_DATA);
    assert_true(pnum > 0 && pnum <= CL);
    assert_true(block_handle_status(f.reader, 5 * MiB, MiB, &pnum,
                                    &info) >= 0);
    assert_true(info.flags & BLOCK_STATUS_DATA);

    /* Writes through the snapshot are refused. */
    memset(buf, 1, sizeof(buf));
    assert_int_equal(block_handle_pwrite(f.reader, 0, sizeof(buf), buf, 0),
                     -ENOTSUP);
    assert_int_equal(block_handle_pwrite_zeroes(f.reader, 0, CL, 0),
                     -ENOTSUP);
    assert_int_equal(block_handle_getlength(f.reader), DISK_SIZE);
    check_snap(&f, 0, CL);
    fleece_teardown(&f);
}

static void
test_flow_raw(void **state UNUSED)
{
    run_flow(false);
}

static void
test_flow_qcow2(void **state UNUSED)
{
    run_flow(true);
}

/* ---- Bitmap-limited snapshot ------------------------------------------ */

static void
test_bitmap(void **state UNUSED)
{
    struct fleece_opts o = {.bitmap = "1,5,6"};
    struct fleece f;
    uint64_t pnum;

    fleece_setup(&f, &o, 2);
    assert_int_equal(guest_write(&f, 0, 8 * CL, 21), 0);
    /* Only the bitmap's clusters were copied. */
    assert_int_equal(copied_bytes(&f), 3 * CL);
    check_snap(&f, CL, CL);
    check_snap(&f, 5 * CL + 100, 2 * CL - 200);
    assert_int_equal(snap_read(&f, 0, 512), -EACCES);
    assert_int_equal(snap_read(&f, CL, 2 * CL), -EACCES);
    assert_int_equal(snap_read(&f, 4 * CL + 4096, CL), -EACCES);
    assert_int_equal(snap_read(&f, 3 * MiB, 1), -EACCES);
    assert_int_equal(block_handle_status(f.reader, 0, CL, &pnum, NULL),
                     -EACCES);
    assert_true(block_handle_status(f.reader, CL, CL, &pnum, NULL) >= 0);
    check_source(&f);
    fleece_teardown(&f);
}

/* ---- Snapshot discard ------------------------------------------------- */

static bool
temp_has_data(struct fleece *f, uint64_t off)
{
    uint64_t pnum;
    struct block_status_info info;
    int ret;

    block_graph_enter();
    ret = block_status(f->tmp, off, CL, &pnum, &info);
    block_graph_leave();
    assert_true(ret >= 0);
    return (ret & BLOCK_STATUS_DATA) && !(ret & BLOCK_STATUS_ZERO);
}

static void
run_discard(bool qcow2)
{
    struct fleece_opts o = {.qcow2_temp = qcow2};
    struct fleece f;
    uint64_t done;

    fleece_setup(&f, &o, 3);
    assert_int_equal(guest_write(&f, 2 * CL, 2 * CL, 31), 0);
    assert_true(temp_has_data(&f, 2 * CL));
    assert_true(temp_has_data(&f, 3 * CL));
    check_snap(&f, 2 * CL, 2 * CL);

    /* The reader is done with clusters 2-3: space released. */
    assert_int_equal(block_handle_pdiscard(f.reader, 2 * CL, 2 * CL), 0);
    assert_false(temp_has_data(&f, 2 * CL));
    assert_false(temp_has_data(&f, 3 * CL));
    assert_int_equal(snap_read(&f, 2 * CL, 1), -EACCES);
    assert_int_equal(snap_read(&f, 3 * CL + 100, 100), -EACCES);
    check_snap(&f, CL, CL);
    check_snap(&f, 4 * CL, CL);

    /* Within one cluster: rounded inward to nothing. */
    assert_int_equal(block_handle_pdiscard(f.reader, 10 * CL + 100, 1000), 0);
    check_snap(&f, 10 * CL, CL);

    /* A discarded cluster is no longer copied by guest writes. */
    assert_int_equal(block_handle_pdiscard(f.reader, 12 * CL, CL), 0);
    done = copied_bytes(&f);
    assert_int_equal(guest_write(&f, 12 * CL, CL, 32), 0);
    assert_int_equal(copied_bytes(&f), done);
    assert_false(temp_has_data(&f, 12 * CL));
    assert_int_equal(snap_read(&f, 12 * CL, CL), -EACCES);
    /* The partial last cluster can be discarded too. */
    assert_int_equal(block_handle_pdiscard(f.reader, 8 * MiB, 2560), 0);
    assert_int_equal(snap_read(&f, 8 * MiB + 1, 1), -EACCES);
    check_source(&f);
    fleece_teardown(&f);
}

static void
test_discard_raw(void **state UNUSED)
{
    run_discard(false);
}

static void
test_discard_qcow2(void **state UNUSED)
{
    run_discard(true);
}

/* ---- Error policies ----------------------------------------------------- */

static json_t *
failing_target(void)
{
    return json_pack("{s:[{s:s, s:[s], s:i}]}", "inject-error", "event",
                     "write_aio", "iotype", "write", "errno", EIO);
}

static void
test_break_guest_write(void **state UNUSED)
{
    struct fleece_opts o = {.target_blkdebug = failing_target()};
    struct fleece f;

    fleece_setup(&f, &o, 4);
    assert_int_equal(guest_write(&f, 3 * CL + 5, 100, 41), -EIO);
    assert_int_equal(block_handle_pwrite_zeroes(f.guest, 4 * CL, CL, 0),
                     -EIO);
    assert_int_equal(block_handle_pdiscard(f.guest, 5 * CL, CL), -EIO);
    /* Neither the source nor the snapshot changed. */
    check_source(&f);
    check_snap_all(&f);
    assert_int_equal(cbw_snapshot_error(f.cbw), 0);
    fleece_teardown(&f);
}

static void
test_break_snapshot(void **state UNUSED)
{
    struct fleece_opts o = {
        .target_blkdebug = failing_target(),
        .cbw_extra = json_pack("{s:s}", "on-cbw-error", "break-snapshot"),
    };
    struct fleece f;

    fleece_setup(&f, &o, 5);
    check_snap(&f, 0, CL);
    assert_int_equal(guest_write(&f, 3 * CL + 5, 100, 51), 0);
    assert_int_equal(cbw_snapshot_error(f.cbw), -EIO);
    /* Every snapshot access fails now, even of untouched clusters. */
    assert_int_equal(snap_read(&f, 3 * CL, 1), -EACCES);
    assert_int_equal(snap_read(&f, 50 * CL, CL), -EACCES);
    assert_int_equal(block_handle_status(f.reader, 0, CL, NULL, NULL),
                     -EACCES);
    /* Guest writes go on, without copying. */
    assert_int_equal(guest_write(&f, 20 * CL, 3 * CL, 52), 0);
    assert_int_equal(copied_bytes(&f), 0);
    check_source(&f);
    fleece_teardown(&f);
}

/* ---- cbw-timeout -------------------------------------------------------- */

static json_t *
slow_target(void)
{
    return json_pack("{s:I}", "x-delay-ns", (json_int_t)1500000000);
}

static void
test_timeout_break_guest_write(void **state UNUSED)
{
    struct fleece_opts o = {
        .target_blkdebug = slow_target(),
        .cbw_extra = json_pack("{s:i}", "cbw-timeout", 1),
    };
    struct fleece f;
    int64_t t0, el;

    fleece_setup(&f, &o, 6);
    t0 = clock_ns();
    assert_int_equal(guest_write(&f, 3 * CL, 512, 61), -ETIMEDOUT);
    el = clock_ns() - t0;
    assert_true(el >= 900000000LL && el < 1450000000LL);
    check_source(&f);
    check_snap(&f, 3 * CL, CL);
    /* Once the copy finished in the background, a write there is
     * immediate and the snapshot reads the copy. */
    usleep(800000);
    t0 = clock_ns();
    assert_int_equal(guest_write(&f, 3 * CL, 512, 62), 0);
    assert_true(clock_ns() - t0 < 500000000LL);
    check_source(&f);
    check_snap(&f, 3 * CL, CL);
    assert_int_equal(cbw_snapshot_error(f.cbw), 0);
    fleece_teardown(&f);
}

static void
test_timeout_break_snapshot(void **state UNUSED)
{
    struct fleece_opts o = {
        .target_blkdebug = slow_target(),
        .cbw_extra = json_pack("{s:i, s:s}", "cbw-timeout", 1,
                               "on-cbw-error", "break-snapshot"),
    };
    struct fleece f;
    int64_t t0, el;

    fleece_setup(&f, &o, 7);
    t0 = clock_ns();
    assert_int_equal(guest_write(&f, 3 * CL, 512, 71), 0);
    el = clock_ns() - t0;
    assert_true(el >= 900000000LL && el < 1450000000LL);
    assert_int_equal(cbw_snapshot_error(f.cbw), -ETIMEDOUT);
    assert_int_equal(snap_read(&f, 0, 512), -EACCES);
    check_source(&f);
    /* Teardown waits for the background copy. */
    fleece_teardown(&f);
}

/* ---- Torture ------------------------------------------------------------ */

struct torture {
    struct fleece *f;
    uint64_t seed;
    int ops;
    uint64_t span;              /* requests fall in [0, span) */
    bool stop;                  /* atomic: readers stop */
};

static void *
torture_guest(void *opaque)
{
    struct torture *t = opaque;
    static const uint64_t sizes[] = {512, 4096, 10000, 64 * KiB,
                                     100 * KiB + 3, 300 * KiB};
    uint64_t rs = t->seed;
    uint8_t *buf = xmalloc(300 * KiB);

    for (int i = 0; i < t->ops; i++) {
        uint64_t len = sizes[rnd_below(&rs, ARRAY_SIZE(sizes))];
        uint64_t off = rnd_below(&rs, t->span - len);
        unsigned kind = (unsigned)rnd_below(&rs, 10);
        int ret;

        if (kind < 7) {
            fill(buf, off, len, (unsigned)rnd_below(&rs, 1000) + 100);
            ret = block_handle_pwrite(t->f->guest, off, len, buf, 0);
        } else if (kind < 9) {
            ret = block_handle_pwrite_zeroes(t->f->guest, off, len, 0);
        } else {
            ret = block_handle_pdiscard(t->f->guest, off, len);
        }
        if (ret < 0) {
            record_failure("guest op %u at %llu+%llu: %d", kind,
                           (unsigned long long)off, (unsigned long long)len,
                           ret);
        }
    }
    free(buf);
    return NULL;
}

static void *
torture_reader(void *opaque)
{
    struct torture *t = opaque;
    uint64_t rs = t->seed;
    uint8_t *buf = xmalloc(512 * KiB);

    while (!__atomic_load_n(&t->stop, __ATOMIC_RELAXED)) {
        uint64_t len = 1 + rnd_below(&rs, 512 * KiB);
        uint64_t off = rnd_below(&rs, t->span - len);
        int ret = block_handle_pread(t->f->reader, off, len, buf, 0);

        if (ret < 0) {
            record_failure("snapshot read %llu+%llu: %d",
                           (unsigned long long)off, (unsigned long long)len,
                           ret);
        } else if (memcmp(buf, t->f->orig + off, len)) {
            record_failure("snapshot read %llu+%llu differs",
                           (unsigned long long)off, (unsigned long long)len);
        }
    }
    free(buf);
    return NULL;
}

static void
run_torture(unsigned seed, bool qcow2, json_t *target_blkdebug, uint64_t span)
{
    struct fleece_opts o = {.qcow2_temp = qcow2,
                            .target_blkdebug = target_blkdebug};
    struct fleece f;
    struct torture g[4], r[2];
    pthread_t gt[4], rt[2];

    fleece_setup(&f, &o, seed);
    for (int i = 0; i < 2; i++) {
        r[i] = (struct torture){&f, seed * 1000 + (uint64_t)i + 77, 0, span,
                                false};
        thread_create(&rt[i], "reader", torture_reader, &r[i]);
    }
    for (int i = 0; i < 4; i++) {
        g[i] = (struct torture){&f, seed * 100 + (uint64_t)i + 1, 250, span,
                                false};
        thread_create(&gt[i], "guest", torture_guest, &g[i]);
    }
    for (int i = 0; i < 4; i++) {
        thread_join(gt[i]);
    }
    for (int i = 0; i < 2; i++) {
        __atomic_store_n(&r[i].stop, true, __ATOMIC_RELAXED);
        thread_join(rt[i]);
    }
    assert_no_failures();
    check_snap_all(&f);
    fleece_teardown(&f);
}

static void
test_torture(void **state UNUSED)
{
    for (unsigned seed = 1; seed <= 4; seed++) {
        run_torture(seed, false, NULL, DISK_SIZE);
    }
}

/* Everything in the first 1 MiB: many more races per cluster. */
static void
test_torture_hot(void **state UNUSED)
{
    for (unsigned seed = 11; seed <= 13; seed++) {
        run_torture(seed, false, NULL, 1 * MiB);
    }
}

static void
test_torture_qcow2_slow(void **state UNUSED)
{
    run_torture(9, true, json_pack("{s:I}", "x-delay-ns",
                                   (json_int_t)200000), DISK_SIZE);
}

/* ---- Dedup -------------------------------------------------------------- */

struct slice_writer {
    struct fleece *f;
    uint64_t off;
    int ret;
};

static void *
slice_thread(void *opaque)
{
    struct slice_writer *w = opaque;
    uint8_t buf[4096];

    fill(buf, w->off, sizeof(buf), 81);
    w->ret = block_handle_pwrite(w->f->guest, w->off, sizeof(buf), buf, 0);
    return NULL;
}

static void
test_dedup(void **state UNUSED)
{
    struct fleece_opts o = {
        .target_blkdebug = json_pack("{s:I}", "x-delay-ns",
                                     (json_int_t)50000000),
    };
    struct fleece f;
    struct slice_writer w[8];
    pthread_t th[8];

    fleece_setup(&f, &o, 8);
    for (int i = 0; i < 8; i++) {
        w[i] = (struct slice_writer){&f, 7 * CL + (uint64_t)i * 8192, 0};
        thread_create(&th[i], "slice", slice_thread, &w[i]);
    }
    for (int i = 0; i < 8; i++) {
        thread_join(th[i]);
        assert_int_equal(w[i].ret, 0);
        fill(f.cur + w[i].off, w[i].off, 4096, 81);
    }
    /* One copy of the cluster for eight writes. */
    assert_int_equal(copied_bytes(&f), CL);
    check_snap(&f, 6 * CL, 3 * CL);
    check_source(&f);
    fleece_teardown(&f);
}

/* ---- Option errors ---------------------------------------------------- */

static void
test_options(void **state UNUSED)
{
    struct fleece f;
    struct err *err = NULL;

    memset(&f, 0, sizeof(f));
    f.size = DISK_SIZE;
    make_source(&f, 9);
    make_temp(&f, false);
    expect_open_error(json_pack("{s:s, s:s, s:s, s:i}", "driver",
                                "copy-before-write", "file", "fl-src",
                                "target", "fl-tmp", "min-cluster-size", 3000),
                      "min-cluster-size needs to be a power of 2");
    expect_open_error(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                "copy-before-write", "file", "fl-src",
                                "target", "fl-tmp", "on-cbw-error", "x"),
                      "Parameter 'on-cbw-error' does not accept value 'x'");
    expect_open_error(json_pack("{s:s, s:s, s:s, s:i}", "driver",
                                "copy-before-write", "file", "fl-src",
                                "target", "fl-tmp", "cbw-timeout", -1),
                      "Parameter 'cbw-timeout' expects uint32_t");
    expect_open_error(json_pack("{s:s, s:s, s:s, s:{s:s, s:s}}", "driver",
                                "copy-before-write", "file", "fl-src",
                                "target", "fl-tmp", "bitmap", "node",
                                "fl-src", "name", "nope"),
                      "Dirty bitmap 'nope' not found");
    expect_open_error(json_pack("{s:s, s:s}", "driver", "snapshot-access",
                                "file", "fl-src"),
                      "Node 'fl-src' does not provide the snapshot-access "
                      "API (it is not a copy-before-write node)");
    /* A 1 MiB minimum cluster. */
    f.cbw = open_json(json_pack("{s:s, s:s, s:s, s:s, s:s}", "driver",
                                "copy-before-write", "node-name", "fl-cbw",
                                "file", "fl-src", "target", "fl-tmp",
                                "min-cluster-size", "1M"));
    assert_int_equal(block_copy_cluster_size(cbw_block_copy_state(f.cbw)),
                     1 * MiB);
    /* Anonymous access and done bitmaps, as QEMU shows them. */
    {
        json_t *bms = qmp_dirty_bitmaps_info(f.cbw);

        assert_int_equal(json_array_size(bms), 2);
        json_decref(bms);
    }
    block_node_unref(f.cbw);
    (void)err;
    block_node_unref(f.tmp);
    block_node_unref(f.src);
    unlink(f.src_path);
    unlink(f.tmp_path);
    free(f.orig);
    free(f.cur);
}

/* ---- The backup job's entry points ------------------------------------ */

static void
test_append_drop(void **state UNUSED)
{
    struct fleece f;
    struct err *err = NULL;
    struct block_copy_state *bcs;
    uint8_t *buf = xmalloc(CL);
    uint64_t pnum;
    int ret;

    memset(&f, 0, sizeof(f));
    f.size = DISK_SIZE;
    make_source(&f, 10);
    memcpy(f.cur, f.orig, f.size);
    f.guest = block_handle_new(f.src, "guest",
                               BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE,
                               BLOCK_PERM_ALL, &err);
    assert_non_null(f.guest);
    make_temp(&f, false);
    f.cbw = cbw_append(f.src, f.tmp, &(struct cbw_options) {
                           .filter_node_name = "fl-job-cbw",
                           .has_on_cbw_error = true,
                           .on_cbw_error = CBW_ON_ERROR_BREAK_SNAPSHOT,
                           .discard_source = true,
                           .min_cluster_size = 128 * KiB }, &err);
    if (!f.cbw) {
        fail_msg("cbw_append: %s", err->msg);
    }
    assert_ptr_equal(block_handle_node(f.guest), f.cbw);
    bcs = cbw_block_copy_state(f.cbw);
    assert_int_equal(block_copy_cluster_size(bcs), 128 * KiB);

    /* A guest write copies its cluster, then discards it on the source
     * (discard-source) before writing. */
    assert_int_equal(guest_write(&f, 4096, 512, 101), 0);
    /* The background copy of cluster 5 frees it on the source. */
    block_graph_enter();
    assert_int_equal(block_copy(bcs, 5 * 128 * KiB, 1, true, 0, NULL), 0);
    ret = block_status(f.src, 5 * 128 * KiB, 128 * KiB, &pnum, NULL);
    assert_int_equal(block_pread(f.tmp, 5 * 128 * KiB, CL, buf, 0), 0);
    block_graph_leave();
    assert_true(ret & BLOCK_STATUS_ZERO);
    check_buf(buf, f.orig + 5 * 128 * KiB, 5 * 128 * KiB, CL, "target");

    cbw_drop(f.cbw);
    f.cbw = NULL;
    assert_ptr_equal(block_handle_node(f.guest), f.src);
    block_handle_free(f.guest);
    block_node_unref(f.tmp);
    block_node_unref(f.src);
    unlink(f.src_path);
    unlink(f.tmp_path);
    free(f.orig);
    free(f.cur);
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flow_raw),
        cmocka_unit_test(test_flow_qcow2),
        cmocka_unit_test(test_bitmap),
        cmocka_unit_test(test_discard_raw),
        cmocka_unit_test(test_discard_qcow2),
        cmocka_unit_test(test_break_guest_write),
        cmocka_unit_test(test_break_snapshot),
        cmocka_unit_test(test_timeout_break_guest_write),
        cmocka_unit_test(test_timeout_break_snapshot),
        cmocka_unit_test(test_torture),
        cmocka_unit_test(test_torture_hot),
        cmocka_unit_test(test_torture_qcow2_slow),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_append_drop),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
