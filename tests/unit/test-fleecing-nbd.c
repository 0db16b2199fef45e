/* SPDX-License-Identifier: MIT */
/*
 * Pull-mode fleecing over NBD, in process: a snapshot-access node over a
 * copy-before-write filter (limited to bitmap b0) is exported by the NBD
 * server on one end of a socketpair, and libnbd reads it from the other
 * end while the guest overwrites the source (docs/fleecing.md, "Order of operations").
 * Checked: old data for the bitmap's clusters, an error for the others,
 * the qemu:dirty-bitmap context of a {node, name} bitmap, writes refused
 * with ENOTSUP, trim freeing the temp image and revoking access, and that
 * a plain bitmap name does not resolve through snapshot-access.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <libnbd.h>

#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "export/export.h"
#include "nbd/nbd-internal.h"
#include "nbd/server.h"
#include "util.h"

#define CL (64 * KiB)
#define DISK_SIZE (4 * MiB)

struct world {
    char src_path[64];
    char tmp_path[64];
    struct block_node *src, *tmp, *cbw, *snap;
    struct block_handle *guest;
    struct block_dirty_bitmap *bm;
    uint8_t *orig;
};

static struct world w;

static void
fill(uint8_t *buf, uint64_t offset, uint64_t bytes, unsigned seed)
{
    for (uint64_t i = 0; i < bytes; i++) {
        uint64_t o = offset + i;

        buf[i] = (uint8_t)(((o / 512) * 13 + seed * 5 + o) % 249 + 1);
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

static void
temp_file(char *path, size_t len, const uint8_t *data, uint64_t size)
{
    FILE *fp;
    int fd;

    snprintf(path, len, "/tmp/test-fleecing-nbd.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(truncate(path, (off_t)size), 0);
    if (data) {
        fp = fopen(path, "r+");
        assert_non_null(fp);
        assert_int_equal(fwrite(data, 1, size, fp), size);
        fclose(fp);
    }
}

static int
setup(void **state)
{
    struct err *err = NULL;
    uint8_t *buf = xmalloc(4 * CL);

    (void)state;
    w.orig = xmalloc(DISK_SIZE);
    fill(w.orig, 0, DISK_SIZE, 1);
    temp_file(w.src_path, sizeof(w.src_path), w.orig, DISK_SIZE);
    temp_file(w.tmp_path, sizeof(w.tmp_path), NULL, DISK_SIZE);
    w.src = open_json(json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                                "node-name", "fn-src", "file", "driver",
                                "file", "filename", w.src_path));
    w.tmp = open_json(json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}}",
                                "driver", "raw", "node-name", "fn-tmp",
                                "discard", "unmap", "file", "driver", "file",
                                "filename", w.tmp_path, "discard", "unmap"));
    w.guest = block_handle_new(w.src, "guest",
                               BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE,
                               BLOCK_PERM_ALL, &err);
    assert_non_null(w.guest);
    /* The incremental part: clusters 1 and 2 changed since last time. */
    w.bm = block_dirty_bitmap_create(w.src, "b0", CL, &err);
    assert_non_null(w.bm);
    block_dirty_bitmap_set(w.bm, CL, 2 * CL);
    block_dirty_bitmap_disable(w.bm);

    w.cbw = open_json(json_pack("{s:s, s:s, s:s, s:s, s:{s:s, s:s}}",
                                "driver", "copy-before-write", "node-name",
                                "fn-cbw", "file", "fn-src", "target",
                                "fn-tmp", "bitmap", "node", "fn-src", "name",
                                "b0"));
    if (block_replace_node(w.src, w.cbw, &err) < 0) {
        fail_msg("insert: %s", err->msg);
    }
    w.snap = open_json(json_pack("{s:s, s:s, s:s, s:s}", "driver",
                                 "snapshot-access", "node-name", "fn-snap",
                                 "file", "fn-cbw", "discard", "unmap"));

    /* A plain bitmap name does not descend through snapshot-access. */
    assert_null(nbdexp_create(&(struct block_export_options) {
                                  .type = "nbd", .id = "bad",
                                  .node_name = "fn-snap",
                                  .driver_opts = &(struct nbd_export_options) {
                                      .name = "bad",
                                      .bitmaps = &(struct nbd_export_bitmap) {
                                          .name = "b0" },
                                      .n_bitmaps = 1 } }, false, &err));
    assert_string_equal(err->msg, "Bitmap 'b0' is not found");
    err_free(err);
    err = NULL;

    if (!nbdexp_create(&(struct block_export_options) {
                           .type = "nbd", .id = "snap0",
                           .node_name = "fn-snap", .writable = true,
                           .driver_opts = &(struct nbd_export_options) {
                               .name = "snap",
                               .bitmaps = &(struct nbd_export_bitmap) {
                                   .node = "fn-src", .name = "b0" },
                               .n_bitmaps = 1 } }, false, &err)) {
        fail_msg("export: %s", err->msg);
    }

    /* The guest rewrites clusters 0-3 after the snapshot point. */
    fill(buf, 0, 4 * CL, 2);
    assert_int_equal(block_handle_pwrite(w.guest, 0, 4 * CL, buf, 0), 0);
    free(buf);
    return 0;
}

static int
teardown(void **state)
{
    struct err *err = NULL;

    (void)state;
    block_export_close_all();
    block_node_unref(w.snap);
    if (block_replace_node(w.cbw, w.src, &err) < 0) {
        fail_msg("remove: %s", err->msg);
    }
    block_node_unref(w.cbw);
    block_handle_free(w.guest);
    block_dirty_bitmap_release(w.bm);
    block_node_unref(w.tmp);
    block_node_unref(w.src);
    unlink(w.src_path);
    unlink(w.tmp_path);
    free(w.orig);
    return 0;
}

struct session {
    int fds[2];
    pthread_t thread;
    struct nbd_handle *h;
};

static void *
serve_thread(void *opaque)
{
    struct session *s = opaque;

    nbdsrv_serve_fds(s->fds[0], s->fds[0], 4, NULL, NULL);
    close(s->fds[0]);
    return NULL;
}

static void
session_start(struct session *s, const char *ctx)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
                                s->fds), 0);
    thread_create(&s->thread, "fleece-nbd", serve_thread, s);
    s->h = nbd_create();
    assert_non_null(s->h);
    assert_int_equal(nbd_set_export_name(s->h, "snap"), 0);
    if (ctx) {
        assert_int_equal(nbd_add_meta_context(s->h, ctx), 0);
    }
    if (nbd_connect_socket(s->h, s->fds[1]) < 0) {
        fail_msg("connect: %s", nbd_get_error());
    }
}

static void
session_end(struct session *s)
{
    nbd_shutdown(s->h, 0);
    nbd_close(s->h);
    thread_join(s->thread);
}

struct extents {
    uint32_t e[64];
    size_t n;
};

static int
extent_cb(void *opaque, const char *ctx, uint64_t offset, uint32_t *entries,
          size_t nr, int *error)
{
    struct extents *x = opaque;

    (void)ctx;
    (void)offset;
    (void)error;
    for (size_t i = 0; i < nr && x->n < 64; i++) {
        x->e[x->n++] = entries[i];
    }
    return 0;
}

static void
test_pull_backup(void **state UNUSED)
{
    struct session s;
    struct extents x = {.n = 0};
    uint8_t *buf = xmalloc(2 * CL);
    int64_t pnum;

    session_start(&s, "qemu:dirty-bitmap:b0");
    assert_int_equal(nbd_get_size(s.h), DISK_SIZE);
    assert_int_equal(nbd_can_meta_context(s.h, "qemu:dirty-bitmap:b0"), 1);

    /* The client takes its extents from the bitmap... */
    assert_int_equal(nbd_block_status(s.h, DISK_SIZE, 0,
                                      (nbd_extent_callback){
                                          .callback = extent_cb,
                                          .user_data = &x}, 0), 0);
    assert_true(x.n >= 6);
    assert_int_equal(x.e[0], CL);
    assert_int_equal(x.e[1], 0);
    assert_int_equal(x.e[2], 2 * CL);
    assert_int_equal(x.e[3], 1);

    /* ...and reads the frozen data of the dirty ones. */
    assert_int_equal(nbd_pread(s.h, buf, 2 * CL, CL, 0), 0);
    if (memcmp(buf, w.orig + CL, 2 * CL)) {
        fail_msg("snapshot data differs");
    }
    /* Outside the bitmap: an error (QEMU sends NBD_EINVAL for the
     * block layer's EACCES). */
    assert_int_equal(nbd_pread(s.h, buf, 512, 0, 0), -1);
    pnum = nbd_get_errno();
    assert_int_equal(pnum, EINVAL);
    assert_int_equal(nbd_pread(s.h, buf, CL, 3 * CL, 0), -1);

    /* Writes are refused; trim frees the temp image and revokes access. */
    memset(buf, 0, CL);
    assert_int_equal(nbd_pwrite(s.h, buf, 4096, CL, 0), -1);
    assert_int_equal(nbd_get_errno(), ENOTSUP);
    assert_int_equal(nbd_trim(s.h, CL, CL, 0), 0);
    assert_int_equal(nbd_pread(s.h, buf, 512, CL, 0), -1);
    assert_int_equal(nbd_pread(s.h, buf, CL, 2 * CL, 0), 0);
    if (memcmp(buf, w.orig + 2 * CL, CL)) {
        fail_msg("snapshot data differs after trim");
    }
    session_end(&s);

    /* The temp image no longer holds cluster 1 but still cluster 2. */
    {
        struct block_status_info info;
        uint64_t n;
        int ret;

        block_graph_enter();
        ret = block_status(w.tmp, CL, CL, &n, &info);
        assert_true(ret >= 0 && (ret & BLOCK_STATUS_ZERO));
        ret = block_status(w.tmp, 2 * CL, CL, &n, &info);
        assert_true(ret >= 0 && (ret & BLOCK_STATUS_DATA));
        block_graph_leave();
    }
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pull_backup),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
