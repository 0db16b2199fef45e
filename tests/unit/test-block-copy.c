/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of block-copy (block/copy/block-copy.c) through the real block
 * layer on raw and qcow2 images in /tmp: cluster size choice, the copy
 * bitmap from finer and coarser user bitmaps, copying and progress, reset,
 * zero detection (zero areas reach the target as write-zeroes), sync=top
 * (skip-unallocated, reset-unallocated), error sides, the rate limit,
 * cancel, timeouts, and deduplication between threads (each cluster is
 * copied once, and a failed copy is retried by the thread that waited).
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
#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

#define IMG_SIZE (4 * MiB)
#define CL (64 * KiB)

struct img {
    char path[64];
    struct block_node *node;
};

/* Byte at offset of pattern seed (never zero for seed != 0). */
static uint8_t
pat(uint64_t offset, unsigned seed)
{
    return (uint8_t)(((offset / 512) * 31 + seed * 7 + offset) % 251 + 1);
}

static void
fill(uint8_t *buf, uint64_t offset, uint64_t bytes, unsigned seed)
{
    for (uint64_t i = 0; i < bytes; i++) {
        buf[i] = pat(offset + i, seed);
    }
}

static void
new_path(struct img *im)
{
    int fd;

    snprintf(im->path, sizeof(im->path), "/tmp/test-block-copy.XXXXXX");
    fd = mkstemp(im->path);
    assert_true(fd >= 0);
    close(fd);
}

/* A sparse file of size bytes; seed != 0 writes the pattern over
 * [data_off, data_off + data_len). */
static void
make_file(struct img *im, uint64_t size, unsigned seed, uint64_t data_off,
          uint64_t data_len)
{
    FILE *f;

    new_path(im);
    assert_int_equal(truncate(im->path, (off_t)size), 0);
    if (seed && data_len) {
        uint8_t *buf = xmalloc(data_len);

        fill(buf, data_off, data_len, seed);
        f = fopen(im->path, "r+");
        assert_non_null(f);
        assert_int_equal(fseek(f, (long)data_off, SEEK_SET), 0);
        assert_int_equal(fwrite(buf, 1, data_len, f), data_len);
        fclose(f);
        free(buf);
    }
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

static struct block_node *
open_raw(struct img *im)
{
    return open_json(json_pack("{s:s, s:s, s:{s:s, s:s, s:s}}",
                               "driver", "raw", "discard", "unmap",
                               "file", "driver", "file", "filename", im->path,
                               "discard", "unmap"));
}

/* blkdebug over a raw image, with extra blkdebug options (stolen). */
static struct block_node *
open_blkdebug(struct img *im, json_t *extra)
{
    json_t *opts = json_pack("{s:s, s:{s:s, s:{s:s, s:s}}}",
                             "driver", "blkdebug", "image", "driver", "raw",
                             "file", "driver", "file", "filename", im->path);

    json_object_update(opts, extra);
    json_decref(extra);
    return open_json(opts);
}

static void
img_raw(struct img *im, uint64_t size, unsigned seed)
{
    make_file(im, size, seed, 0, seed ? size : 0);
    im->node = open_raw(im);
}

static void
img_close(struct img *im)
{
    block_node_unref(im->node);
    unlink(im->path);
}

static struct block_copy_state *
bcs_new(struct block_node *src, struct block_node *tgt,
        struct block_dirty_bitmap *bm, uint64_t min_cluster)
{
    struct err *err = NULL;
    struct block_copy_state *s = block_copy_state_new(src, tgt, bm,
                                                      min_cluster, false,
                                                      &err);

    if (!s) {
        fail_msg("block_copy_state_new: %s", err->msg);
    }
    return s;
}

static int
copy(struct block_copy_state *s, uint64_t off, uint64_t bytes,
     bool *error_is_read)
{
    int ret;

    block_graph_enter();
    ret = block_copy(s, off, bytes, false, 0, error_is_read);
    block_graph_leave();
    return ret;
}

/* Compare [off, +len) of node with the pattern (seed 0: zeroes). */
static void
check_content(struct block_node *node, uint64_t off, uint64_t len,
              unsigned seed)
{
    uint8_t *buf = xmalloc(len), *exp = xzalloc(len);

    if (seed) {
        fill(exp, off, len, seed);
    }
    block_graph_enter();
    assert_int_equal(block_pread(node, off, len, buf, 0), 0);
    block_graph_leave();
    if (memcmp(buf, exp, len)) {
        for (uint64_t i = 0; i < len; i++) {
            if (buf[i] != exp[i]) {
                fail_msg("mismatch at %llu: %u != %u",
                         (unsigned long long)(off + i), buf[i], exp[i]);
            }
        }
    }
    free(buf);
    free(exp);
}

/* ---- Cluster size --------------------------------------------------- */

static void
test_cluster_size(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct err *err = NULL;

    img_raw(&src, IMG_SIZE, 1);
    img_raw(&tgt, IMG_SIZE, 0);

    s = bcs_new(src.node, tgt.node, NULL, 0);
    assert_int_equal(block_copy_cluster_size(s), 64 * KiB);
    assert_int_equal(block_copy_length(s), IMG_SIZE);
    assert_int_equal(block_copy_dirty_bytes(s), IMG_SIZE);
    block_copy_state_free(s);

    s = bcs_new(src.node, tgt.node, NULL, 4 * KiB);
    assert_int_equal(block_copy_cluster_size(s), 64 * KiB);
    block_copy_state_free(s);

    s = bcs_new(src.node, tgt.node, NULL, 1 * MiB);
    assert_int_equal(block_copy_cluster_size(s), 1 * MiB);
    assert_int_equal(block_copy_dirty_bytes(s), IMG_SIZE);
    block_copy_state_free(s);

    s = block_copy_state_new(src.node, tgt.node, NULL, 3000, false, &err);
    assert_null(s);
    assert_string_equal(err->msg, "min-cluster-size needs to be a power of 2");
    err_free(err);

    img_close(&tgt);
    img_close(&src);
}

/* A qcow2 target with 256 KiB clusters: at least its cluster size. */
static void
test_cluster_size_qcow2(void **state UNUSED)
{
    struct qcow2_create_opts o = {.cluster_size = 256 * KiB};
    struct img src, tgt;
    struct block_node *file;
    struct block_copy_state *s;
    struct err *err = NULL;

    img_raw(&src, IMG_SIZE, 1);
    make_file(&tgt, 0, 0, 0, 0);
    file = open_json(json_pack("{s:s, s:s}", "driver", "file",
                               "filename", tgt.path));
    if (qcow2_create(file, IMG_SIZE, &o, &err) < 0) {
        fail_msg("qcow2_create: %s", err->msg);
    }
    tgt.node = open_json(json_pack("{s:s, s:o}", "driver", "qcow2", "file",
                                   json_string(file->node_name)));
    block_node_unref(file);

    s = bcs_new(src.node, tgt.node, NULL, 0);
    assert_int_equal(block_copy_cluster_size(s), 256 * KiB);
    block_copy_state_free(s);
    s = bcs_new(src.node, tgt.node, NULL, 1 * MiB);
    assert_int_equal(block_copy_cluster_size(s), 1 * MiB);
    /* Copy through the qcow2 target. */
    assert_int_equal(copy(s, 0, IMG_SIZE, NULL), 0);
    check_content(tgt.node, 0, IMG_SIZE, 1);
    block_copy_state_free(s);

    img_close(&tgt);
    img_close(&src);
}

/* ---- Bitmap init ------------------------------------------------------ */

static void
test_bitmap_init(void **state UNUSED)
{
    struct img src, tgt;
    struct block_dirty_bitmap *fine, *coarse;
    struct block_copy_state *s;
    struct err *err = NULL;
    uint64_t a, n;

    img_raw(&src, IMG_SIZE, 1);
    img_raw(&tgt, IMG_SIZE, 0);

    /* Finer: 4 KiB granules in clusters 0 and 3 (and one straddling
     * clusters 9 and 10). */
    fine = block_dirty_bitmap_create(src.node, "fine", 4 * KiB, &err);
    assert_non_null(fine);
    block_dirty_bitmap_set(fine, 4 * KiB, 4 * KiB);
    block_dirty_bitmap_set(fine, 3 * CL + 100, 5000);
    block_dirty_bitmap_set(fine, 10 * CL - 4 * KiB, 8 * KiB);
    s = bcs_new(src.node, tgt.node, fine, 0);
    assert_int_equal(block_copy_dirty_bytes(s), 4 * CL);
    assert_true(block_copy_next_dirty_area(s, 0, IMG_SIZE, &a, &n));
    assert_int_equal(a, 0);
    assert_int_equal(n, CL);
    assert_true(block_copy_next_dirty_area(s, CL, IMG_SIZE - CL, &a, &n));
    assert_int_equal(a, 3 * CL);
    assert_int_equal(n, CL);
    assert_true(block_copy_next_dirty_area(s, 4 * CL, IMG_SIZE - 4 * CL, &a,
                                           &n));
    assert_int_equal(a, 9 * CL);
    assert_int_equal(n, 2 * CL);
    assert_false(block_copy_next_dirty_area(s, 11 * CL, IMG_SIZE - 11 * CL,
                                            &a, &n));
    /* Later changes of the user bitmap are not seen. */
    block_dirty_bitmap_set(fine, 20 * CL, CL);
    assert_int_equal(block_copy_dirty_bytes(s), 4 * CL);
    block_copy_state_free(s);

    /* Coarser: one 256 KiB granule dirties four clusters. */
    coarse = block_dirty_bitmap_create(src.node, "coarse", 256 * KiB, &err);
    assert_non_null(coarse);
    block_dirty_bitmap_set(coarse, 300 * KiB, 1);
    s = bcs_new(src.node, tgt.node, coarse, 0);
    assert_int_equal(block_copy_dirty_bytes(s), 4 * CL);
    assert_true(block_copy_next_dirty_area(s, 0, IMG_SIZE, &a, &n));
    assert_int_equal(a, 256 * KiB);
    assert_int_equal(n, 256 * KiB);
    /* Only those clusters are copied. */
    assert_int_equal(copy(s, 0, IMG_SIZE, NULL), 0);
    check_content(tgt.node, 0, 256 * KiB, 0);
    check_content(tgt.node, 256 * KiB, 256 * KiB, 1);
    check_content(tgt.node, 512 * KiB, IMG_SIZE - 512 * KiB, 0);
    block_copy_state_free(s);

    /* Coarser than the cluster, with a cluster size above 64 KiB. */
    s = bcs_new(src.node, tgt.node, fine, 128 * KiB);
    assert_int_equal(block_copy_dirty_bytes(s), 5 * 128 * KiB);
    block_copy_state_free(s);

    block_dirty_bitmap_release(fine);
    block_dirty_bitmap_release(coarse);
    img_close(&tgt);
    img_close(&src);
}

/* ---- Copy, progress, reset -------------------------------------------- */

static void
test_copy_progress_reset(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    /* A partial last cluster; whole sectors, as a raw node counts. */
    uint64_t done, remaining, size = IMG_SIZE + 12288;
    uint8_t buf[4096];

    img_raw(&src, size, 2);
    img_raw(&tgt, size, 0);
    s = bcs_new(src.node, tgt.node, NULL, 0);
    assert_int_equal(block_copy_length(s), size);
    assert_int_equal(block_copy_dirty_bytes(s), size);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, 0);
    assert_int_equal(remaining, size);

    /* A few bytes copy their whole cluster. */
    assert_int_equal(copy(s, CL + 100, 10, NULL), 0);
    check_content(tgt.node, CL, CL, 2);
    check_content(tgt.node, 0, CL, 0);
    check_content(tgt.node, 2 * CL, CL, 0);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, CL);
    assert_int_equal(remaining, size - CL);

    /* Reset: those clusters are never copied. */
    block_copy_reset(s, 4 * CL, 2 * CL);
    assert_int_equal(block_copy_dirty_bytes(s), size - 3 * CL);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(remaining, size - 3 * CL);

    /* The partial last cluster. */
    assert_int_equal(copy(s, size - 1, 1, NULL), 0);
    check_content(tgt.node, align_down(size, CL), size % CL, 2);

    /* Everything else; copied clusters are not copied again (the source
     * changes after the copy and the target keeps the old data). */
    memset(buf, 0xee, sizeof(buf));
    block_graph_enter();
    assert_int_equal(block_pwrite(src.node, CL, sizeof(buf), buf, 0), 0);
    block_graph_leave();
    assert_int_equal(copy(s, 0, size, NULL), 0);
    check_content(tgt.node, 0, 4 * CL, 2);
    check_content(tgt.node, 4 * CL, 2 * CL, 0);
    check_content(tgt.node, 6 * CL, size - 6 * CL, 2);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, size - 2 * CL);
    assert_int_equal(remaining, 0);
    assert_int_equal(block_copy_dirty_bytes(s), 0);

    /* set_dirty makes clusters copy again. */
    block_copy_set_dirty(s, CL + 1, 1);
    assert_int_equal(block_copy_dirty_bytes(s), CL);
    assert_int_equal(copy(s, 0, size, NULL), 0);
    memset(buf, 0, sizeof(buf));
    block_graph_enter();
    assert_int_equal(block_pread(tgt.node, CL, sizeof(buf), buf, 0), 0);
    block_graph_leave();
    assert_int_equal(buf[0], 0xee);
    block_copy_state_free(s);
    img_close(&tgt);
    img_close(&src);
}

/* ---- Zero detection, error side --------------------------------------- */

static void
test_zero_detection(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct block_node *dbg;
    bool eir = true;

    /* Data only in cluster 0, the rest is a hole. */
    make_file(&src, IMG_SIZE, 3, 0, CL);
    src.node = open_raw(&src);
    /* The target refuses plain writes, not write-zeroes. */
    make_file(&tgt, IMG_SIZE, 9, 0, IMG_SIZE);
    dbg = open_blkdebug(&tgt, json_pack(
        "{s:[{s:s, s:[s]}]}", "inject-error", "event", "write_aio",
        "iotype", "write"));
    s = bcs_new(src.node, dbg, NULL, 0);
    assert_int_equal(copy(s, CL, IMG_SIZE - CL, &eir), 0);
    check_content(dbg, CL, IMG_SIZE - CL, 0);
    check_content(dbg, 0, CL, 9);
    assert_int_equal(copy(s, 0, CL, &eir), -EIO);
    assert_false(eir);
    /* Failed: the cluster is dirty again. */
    assert_int_equal(block_copy_dirty_bytes(s), CL);
    block_copy_state_free(s);
    block_node_unref(dbg);

    /* A failing source read (on a file nobody else has open). */
    img_close(&src);
    make_file(&src, IMG_SIZE, 3, 0, IMG_SIZE);
    dbg = open_blkdebug(&src, json_pack(
        "{s:[{s:s, s:[s]}]}", "inject-error", "event", "read_aio",
        "iotype", "read"));
    tgt.node = open_raw(&tgt);
    s = bcs_new(dbg, tgt.node, NULL, 0);
    eir = false;
    assert_int_equal(copy(s, 0, CL, &eir), -EIO);
    assert_true(eir);
    block_copy_state_free(s);
    block_node_unref(dbg);
    img_close(&tgt);
    unlink(src.path);
}

/* ---- sync=top ------------------------------------------------------------ */

static void
test_skip_unallocated(void **state UNUSED)
{
    struct qcow2_create_opts o = {.backing_fmt = "raw"};
    struct img base, ovl, tgt;
    struct block_node *file;
    struct block_copy_state *s;
    struct err *err = NULL;
    uint64_t count, done, remaining;
    uint8_t *buf = xmalloc(CL);

    /* The base stays closed here: the overlay opens it as its backing. */
    make_file(&base, IMG_SIZE, 4, 0, IMG_SIZE);
    img_raw(&tgt, IMG_SIZE, 0);
    make_file(&ovl, 0, 0, 0, 0);
    o.backing_file = base.path;
    file = open_json(json_pack("{s:s, s:s}", "driver", "file",
                               "filename", ovl.path));
    if (qcow2_create(file, IMG_SIZE, &o, &err) < 0) {
        fail_msg("qcow2_create: %s", err->msg);
    }
    block_node_unref(file);
    ovl.node = open_json(json_pack("{s:s, s:{s:s, s:s}}", "driver", "qcow2",
                                   "file", "driver", "file", "filename",
                                   ovl.path));
    /* The overlay allocates clusters 2 and 5. */
    fill(buf, 0, CL, 5);
    block_graph_enter();
    assert_int_equal(block_pwrite(ovl.node, 2 * CL, CL, buf, 0), 0);
    assert_int_equal(block_pwrite(ovl.node, 5 * CL, CL, buf, 0), 0);
    block_graph_leave();

    /* Walk the disk as a sync=top job does: only 2 and 5 stay dirty. */
    s = bcs_new(ovl.node, tgt.node, NULL, 0);
    block_graph_enter();
    for (uint64_t off = 0; off < IMG_SIZE; off += count) {
        int64_t r = block_copy_reset_unallocated(s, off, &count);

        assert_true(r == 0 || r == 1);
        assert_true(count > 0 && count % CL == 0);
        for (uint64_t c = off / CL; c < (off + count) / CL; c++) {
            assert_int_equal(r, c == 2 || c == 5);
        }
    }
    block_graph_leave();
    assert_int_equal(block_copy_dirty_bytes(s), 2 * CL);
    block_copy_state_free(s);

    /* skip_unallocated: only the overlay's clusters are copied. */
    s = bcs_new(ovl.node, tgt.node, NULL, 0);
    block_copy_set_skip_unallocated(s, true);
    assert_int_equal(copy(s, 0, IMG_SIZE, NULL), 0);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, 2 * CL);
    assert_int_equal(remaining, 0);
    check_content(tgt.node, 0, 2 * CL, 0);
    check_content(tgt.node, 3 * CL, 2 * CL, 0);
    check_content(tgt.node, 6 * CL, IMG_SIZE - 6 * CL, 0);
    block_graph_enter();
    assert_int_equal(block_pread(tgt.node, 5 * CL, CL, buf, 0), 0);
    block_graph_leave();
    assert_int_equal(buf[0], pat(0, 5));
    block_copy_state_free(s);

    /* Without it, the backing data is copied too. */
    s = bcs_new(ovl.node, tgt.node, NULL, 0);
    assert_int_equal(copy(s, 0, IMG_SIZE, NULL), 0);
    check_content(tgt.node, 0, 2 * CL, 4);
    block_copy_state_free(s);

    free(buf);
    img_close(&ovl);
    img_close(&tgt);
    unlink(base.path);
}

/* ---- Rate limit, cancel, timeout -------------------------------------- */

static void
test_ratelimit_cancel(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    int64_t t0, el;

    img_raw(&src, IMG_SIZE, 5);
    img_raw(&tgt, IMG_SIZE, 0);
    s = bcs_new(src.node, tgt.node, NULL, 0);

    /* 4 MiB at 4 MiB/s in 1 MiB chunks: the fourth chunk may start 0.75 s
     * in, minus the one-slice burst. */
    block_copy_set_speed(s, 4 * MiB);
    t0 = clock_ns();
    block_graph_enter();
    assert_int_equal(block_copy(s, 0, IMG_SIZE, true, 0, NULL), 0);
    block_graph_leave();
    el = clock_ns() - t0;
    assert_true(el >= 600000000LL);
    assert_true(el < 3000000000LL);
    check_content(tgt.node, 0, IMG_SIZE, 5);

    /* Not ratelimited (copy-before-write): no sleeping. */
    block_copy_set_dirty(s, 2 * MiB, 2 * MiB);
    t0 = clock_ns();
    assert_int_equal(copy(s, 2 * MiB, 1 * MiB, NULL), 0);
    assert_true(clock_ns() - t0 < 250000000LL);

    /* Cancel stops ratelimited calls only. */
    block_copy_set_cancelled(s, true);
    block_graph_enter();
    assert_int_equal(block_copy(s, 3 * MiB, CL, true, 0, NULL), -ECANCELED);
    block_graph_leave();
    assert_int_equal(copy(s, 3 * MiB, CL, NULL), 0);
    block_copy_set_cancelled(s, false);
    block_copy_set_speed(s, 0);
    block_copy_kick(s);
    block_graph_enter();
    assert_int_equal(block_copy(s, 0, IMG_SIZE, true, 0, NULL), 0);
    block_graph_leave();
    check_content(tgt.node, 0, IMG_SIZE, 5);
    block_copy_state_free(s);
    img_close(&tgt);
    img_close(&src);
}

static void
test_timeout(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct block_node *slow;
    uint64_t done, remaining;
    int64_t t0;

    img_raw(&src, IMG_SIZE, 6);
    make_file(&tgt, IMG_SIZE, 0, 0, 0);
    slow = open_blkdebug(&tgt, json_pack("{s:I}", "x-delay-ns",
                                         (json_int_t)400000000));
    s = bcs_new(src.node, slow, NULL, 0);
    t0 = clock_ns();
    block_graph_enter();
    assert_int_equal(block_copy(s, 0, CL, false, 50000000, NULL),
                     -ETIMEDOUT);
    block_graph_leave();
    assert_true(clock_ns() - t0 < 300000000LL);
    /* A second caller waits for the copy in the background. */
    assert_int_equal(copy(s, 0, CL, NULL), 0);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, CL);
    /* One that finishes in time. */
    block_graph_enter();
    assert_int_equal(block_copy(s, CL, CL, false, 5000000000LL, NULL), 0);
    /* Timed out again; free waits for the helper. */
    assert_int_equal(block_copy(s, 2 * CL, CL, false, 10000000, NULL),
                     -ETIMEDOUT);
    block_graph_leave();
    block_copy_state_free(s);
    check_content(slow, 0, 3 * CL, 6);
    block_node_unref(slow);
    unlink(tgt.path);
    img_close(&src);
}

/* ---- Deduplication between threads ------------------------------------ */

struct dedup_arg {
    struct block_copy_state *s;
    uint64_t offset, bytes;
    int ret;
};

static void *
dedup_thread(void *opaque)
{
    struct dedup_arg *a = opaque;

    block_graph_enter();
    a->ret = block_copy(a->s, a->offset, a->bytes, false, 0, NULL);
    block_graph_leave();
    return NULL;
}

static void
test_dedup_threads(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct block_node *slow;
    struct dedup_arg args[8];
    pthread_t th[8];
    uint64_t done, remaining;

    img_raw(&src, IMG_SIZE, 7);
    make_file(&tgt, IMG_SIZE, 0, 0, 0);
    slow = open_blkdebug(&tgt, json_pack("{s:I}", "x-delay-ns",
                                         (json_int_t)2000000));
    s = bcs_new(src.node, slow, NULL, 0);
    for (int i = 0; i < 8; i++) {
        /* Overlapping ranges, every one covering the middle. */
        args[i] = (struct dedup_arg){s, (uint64_t)i * 128 * KiB,
                                     IMG_SIZE - (uint64_t)i * 256 * KiB, 0};
        thread_create(&th[i], "dedup", dedup_thread, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        thread_join(th[i]);
        assert_int_equal(args[i].ret, 0);
    }
    /* Every byte copied exactly once. */
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, IMG_SIZE);
    assert_int_equal(remaining, 0);
    check_content(slow, 0, IMG_SIZE, 7);
    block_copy_state_free(s);
    block_node_unref(slow);
    unlink(tgt.path);
    img_close(&src);
}

/* A copy that fails is retried by the caller that waited for it. */
static void
test_dedup_retry(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct block_node *dbg;
    struct dedup_arg a, b;
    pthread_t ta, tb;
    uint64_t done, remaining;

    img_raw(&src, IMG_SIZE, 8);
    make_file(&tgt, IMG_SIZE, 0, 0, 0);
    dbg = open_blkdebug(&tgt, json_pack(
        "{s:I, s:[{s:s, s:[s], s:b}]}", "x-delay-ns", (json_int_t)100000000,
        "inject-error", "event", "write_aio", "iotype", "write", "once",
        true));
    s = bcs_new(src.node, dbg, NULL, 0);
    a = (struct dedup_arg){s, 0, CL, 0};
    b = (struct dedup_arg){s, 0, CL, 0};
    thread_create(&ta, "a", dedup_thread, &a);
    usleep(20000);
    thread_create(&tb, "b", dedup_thread, &b);
    thread_join(ta);
    thread_join(tb);
    /* The first caller's own write failed; the waiter copied it. */
    assert_int_equal(a.ret, -EIO);
    assert_int_equal(b.ret, 0);
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, CL);
    assert_int_equal(block_copy_dirty_bytes(s), IMG_SIZE - CL);
    check_content(dbg, 0, CL, 8);
    block_copy_state_free(s);
    block_node_unref(dbg);
    unlink(tgt.path);
    img_close(&src);
}

/* Many threads copying large clusters over overlapping ranges. */
static void
test_many_threads_large(void **state UNUSED)
{
    struct img src, tgt;
    struct block_copy_state *s;
    struct dedup_arg args[16];
    pthread_t th[16];
    uint64_t size = 64 * MiB, done, remaining;

    img_raw(&src, size, 9);
    img_raw(&tgt, size, 0);
    s = bcs_new(src.node, tgt.node, NULL, 4 * MiB);
    for (int i = 0; i < 16; i++) {
        args[i] = (struct dedup_arg){s, (uint64_t)(i % 4) * 16 * MiB,
                                     16 * MiB, 0};
        thread_create(&th[i], "big", dedup_thread, &args[i]);
    }
    for (int i = 0; i < 16; i++) {
        thread_join(th[i]);
        assert_int_equal(args[i].ret, 0);
    }
    block_copy_progress(s, &done, &remaining);
    assert_int_equal(done, size);
    check_content(tgt.node, 0, size, 9);
    block_copy_state_free(s);
    img_close(&tgt);
    img_close(&src);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_size),
        cmocka_unit_test(test_cluster_size_qcow2),
        cmocka_unit_test(test_bitmap_init),
        cmocka_unit_test(test_copy_progress_reset),
        cmocka_unit_test(test_zero_detection),
        cmocka_unit_test(test_skip_unallocated),
        cmocka_unit_test(test_ratelimit_cancel),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_dedup_threads),
        cmocka_unit_test(test_dedup_retry),
        cmocka_unit_test(test_many_threads_large),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
