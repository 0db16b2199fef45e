/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for block/core/dirty-bitmap.c on real null-co nodes (no
 * storage): creation rules and QEMU's error wording, lookup, recording
 * through the request layer, enable/disable/busy/check_writable, merge
 * within and across nodes, copy/restore, the SHA-256 digest against
 * GnuTLS over hbitmap_serialize, truncation, and the BlockDirtyInfo list.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <gnutls/crypto.h>
#include <jansson.h>

#include "hbitmap.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "qmp/qmp-internal.h"
#include "util.h"

static struct block_node *
new_node(const char *name, uint64_t size, bool read_only)
{
    struct err *err = NULL;
    json_t *opts = json_pack("{s:s, s:s, s:I, s:b}", "driver", "null-co",
                             "node-name", name, "size", (json_int_t)size,
                             "read-only", read_only);
    struct block_node *node = block_node_new(opts, &err);

    json_decref(opts);
    if (!node) {
        fail_msg("cannot create null-co node: %s", err->msg);
    }
    return node;
}

/* Create, expecting failure with exactly this message. */
static void
create_fails(struct block_node *node, const char *name, uint64_t gran,
             const char *msg)
{
    struct err *err = NULL;

    assert_null(block_dirty_bitmap_create(node, name, gran, &err));
    assert_non_null(err);
    assert_string_equal(err->msg, msg);
    assert_int_equal(err->cls, ERR_CLASS_GENERIC);
    err_free(err);
}

static struct block_dirty_bitmap *
create_ok(struct block_node *node, const char *name, uint64_t gran)
{
    struct err *err = NULL;
    struct block_dirty_bitmap *bm;

    bm = block_dirty_bitmap_create(node, name, gran, &err);
    if (!bm) {
        fail_msg("create '%s': %s", name ? name : "(anonymous)", err->msg);
    }
    return bm;
}

static void
test_create(void **state)
{
    static const char gran_msg[] =
        "Granularity must be power of 2 between 512 and 2147483648";
    struct block_node *node = new_node("disk0", 1 * GiB + 1000, false);
    struct block_dirty_bitmap *bm, *anon1, *anon2;
    char name[1025];

    (void)state;
    bm = create_ok(node, "b0", 0);
    assert_int_equal(block_dirty_bitmap_granularity(bm), 64 * KiB);
    assert_int_equal(block_dirty_bitmap_size(bm), 1 * GiB + 1000);
    assert_int_equal(block_dirty_bitmap_count(bm), 0);
    assert_ptr_equal(bm->node, node);
    assert_string_equal(bm->name, "b0");
    assert_false(bm->disabled || bm->busy || bm->persistent ||
                 bm->inconsistent);

    create_fails(node, "", 0, "Bitmap name cannot be empty");
    create_fails(node, "x", 256, gran_msg);
    create_fails(node, "x", 511, gran_msg);
    create_fails(node, "x", 513, gran_msg);
    create_fails(node, "x", 3 * MiB, gran_msg);
    create_fails(node, "x", 4 * GiB, gran_msg);
    create_fails(node, "b0", 0, "Bitmap already exists: b0");

    memset(name, 'n', sizeof(name) - 1);
    name[1024] = '\0';
    create_fails(node, name, 0, "Bitmap name is too long");
    name[1023] = '\0';
    bm = create_ok(node, name, 512);
    assert_int_equal(block_dirty_bitmap_granularity(bm), 512);
    assert_ptr_equal(block_dirty_bitmap_find(node, name), bm);
    block_dirty_bitmap_release(bm);
    assert_null(block_dirty_bitmap_find(node, name));

    bm = create_ok(node, "big", 2 * GiB);
    assert_int_equal(block_dirty_bitmap_granularity(bm), 2 * GiB);

    /* Anonymous bitmaps: any number, never found by name. */
    anon1 = create_ok(node, NULL, 0);
    anon2 = create_ok(node, NULL, 0);
    assert_null(anon1->name);
    assert_ptr_not_equal(anon1, anon2);
    assert_null(block_dirty_bitmap_find(node, NULL));
    block_dirty_bitmap_release(anon1);

    /* The node's close releases the rest. */
    block_node_unref(node);
}

static void
test_lookup(void **state)
{
    struct block_node *node = new_node("disk1", 1 * MiB, false);
    struct block_dirty_bitmap *bm = create_ok(node, "b1", 0);
    struct err *err = NULL;

    (void)state;
    assert_ptr_equal(block_dirty_bitmap_lookup("disk1", "b1", &err), bm);
    assert_null(err);

    assert_null(block_dirty_bitmap_lookup("nope", "b1", &err));
    assert_string_equal(err->msg,
                        "Cannot find device='nope' nor node-name='nope'");
    err_free(err);
    err = NULL;

    assert_null(block_dirty_bitmap_lookup("disk1", "b2", &err));
    assert_string_equal(err->msg, "Dirty bitmap 'b2' not found");
    err_free(err);

    /* NULL errp is allowed. */
    assert_null(block_dirty_bitmap_lookup("disk1", "b2", NULL));
    block_node_unref(node);
}

/* Writes through the request layer mark the enabled bitmaps only. */
static void
test_recording(void **state)
{
    struct block_node *node = new_node("disk2", 16 * MiB, false);
    struct block_dirty_bitmap *on = create_ok(node, "on", 0);
    struct block_dirty_bitmap *off = create_ok(node, "off", 0);
    struct block_dirty_bitmap *fine = create_ok(node, "fine", 512);
    char buf[512] = { 0 };
    uint64_t a, b, pnum;

    (void)state;
    block_dirty_bitmap_disable(off);
    assert_int_equal(block_pwrite(node, 70000, 1, buf, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(on), 64 * KiB);
    assert_int_equal(block_dirty_bitmap_count(off), 0);
    assert_int_equal(block_dirty_bitmap_count(fine), 512);
    assert_true(block_dirty_bitmap_get(on, 65536));
    assert_false(block_dirty_bitmap_get(on, 65535));

    assert_int_equal(block_pwrite_zeroes(node, 8 * MiB, 3 * 64 * KiB, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(on), 4 * 64 * KiB);
    /* discard=ignore (the default): nothing changes, nothing is marked. */
    assert_int_equal(block_pdiscard(node, 16 * MiB - 1, 1), 0);
    assert_int_equal(block_dirty_bitmap_count(on), 4 * 64 * KiB);

    assert_int_equal(block_dirty_bitmap_next_dirty(on, 0, UINT64_MAX),
                     65536);
    assert_int_equal(block_dirty_bitmap_next_zero(on, 65536, UINT64_MAX),
                     131072);
    assert_true(block_dirty_bitmap_next_dirty_area(on, 131072, UINT64_MAX,
                                                   0, &a, &b));
    assert_int_equal(a, 8 * MiB);
    assert_int_equal(b, 3 * 64 * KiB);
    assert_true(block_dirty_bitmap_status(on, 8 * MiB, 16 * MiB, &pnum));
    assert_int_equal(pnum, 3 * 64 * KiB);

    block_dirty_bitmap_enable(off);
    assert_int_equal(block_pwrite(node, 0, 512, buf, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(off), 64 * KiB);

    /* Hand-made changes: set, reset (whole granules only), clear. */
    block_dirty_bitmap_set(off, 1 * MiB, 1);
    assert_int_equal(block_dirty_bitmap_count(off), 2 * 64 * KiB);
    block_dirty_bitmap_reset(off, 1 * MiB + 1, 64 * KiB);
    assert_true(block_dirty_bitmap_get(off, 1 * MiB));
    block_dirty_bitmap_reset(off, 1 * MiB, 64 * KiB);
    assert_false(block_dirty_bitmap_get(off, 1 * MiB));
    block_dirty_bitmap_clear(on);
    assert_int_equal(block_dirty_bitmap_count(on), 0);

    /* Resize: new space is clean, the bitmaps follow the node. */
    block_node_truncate_bitmaps(node, 32 * MiB);
    assert_int_equal(block_dirty_bitmap_size(on), 32 * MiB);
    assert_int_equal(block_dirty_bitmap_size(fine), 32 * MiB);
    assert_int_equal(block_dirty_bitmap_next_dirty(fine, 16 * MiB,
                                                   UINT64_MAX), -1);
    block_node_truncate_bitmaps(node, 8 * MiB);
    assert_int_equal(block_dirty_bitmap_count(fine), 512 + 512);
    block_node_unref(node);
}

static void
test_check_writable(void **state)
{
    struct block_node *node = new_node("disk3", 1 * MiB, false);
    struct block_node *ro = new_node("disk3ro", 1 * MiB, true);
    struct block_dirty_bitmap *bm = create_ok(node, "b3", 0);
    struct block_dirty_bitmap *pbm = create_ok(ro, "p3", 0);
    struct err *err = NULL;

    (void)state;
    assert_true(block_dirty_bitmap_check_writable(bm, &err));
    assert_null(err);

    block_dirty_bitmap_set_busy(bm, true);
    assert_false(block_dirty_bitmap_check_writable(bm, &err));
    assert_string_equal(err->msg, "Bitmap 'b3' is currently in use by "
                        "another operation and cannot be used");
    err_free(err);
    err = NULL;
    block_dirty_bitmap_set_busy(bm, false);

    bm->inconsistent = true;
    assert_false(block_dirty_bitmap_check_writable(bm, &err));
    assert_string_equal(err->msg,
                        "Bitmap 'b3' is inconsistent and cannot be used");
    err_free(err);
    err = NULL;
    bm->inconsistent = false;

    /* In-memory bitmaps on a read-only node stay usable (fleecing). */
    assert_true(block_dirty_bitmap_check_writable(pbm, NULL));
    pbm->persistent = true;
    assert_false(block_dirty_bitmap_check_writable(pbm, &err));
    assert_string_equal(err->msg,
                        "Bitmap 'p3' is readonly and cannot be modified");
    err_free(err);

    block_node_unref(node);
    block_node_unref(ro);
}

static void
test_merge(void **state)
{
    struct block_node *n1 = new_node("disk4", 64 * MiB, false);
    struct block_node *n2 = new_node("disk5", 64 * MiB, false);
    struct block_node *n3 = new_node("disk6", 32 * MiB, false);
    struct block_dirty_bitmap *dst = create_ok(n1, "dst", 0);
    struct block_dirty_bitmap *same = create_ok(n1, "same", 0);
    struct block_dirty_bitmap *other = create_ok(n2, "other", 0);
    struct block_dirty_bitmap *coarse = create_ok(n2, "coarse", 128 * KiB);
    struct block_dirty_bitmap *small = create_ok(n3, "small", 0);
    struct err *err = NULL;

    (void)state;
    block_dirty_bitmap_set(dst, 0, 1);
    block_dirty_bitmap_set(same, 1 * MiB, 1);
    block_dirty_bitmap_set(other, 2 * MiB, 64 * KiB + 1);

    assert_true(block_dirty_bitmap_merge(dst, same, &err));
    assert_true(block_dirty_bitmap_merge(dst, other, &err));
    assert_null(err);
    assert_int_equal(block_dirty_bitmap_count(dst), 4 * 64 * KiB);
    assert_true(block_dirty_bitmap_get(dst, 2 * MiB + 64 * KiB));
    assert_int_equal(block_dirty_bitmap_count(other), 2 * 64 * KiB);
    assert_true(block_dirty_bitmap_merge(dst, dst, &err));
    assert_int_equal(block_dirty_bitmap_count(dst), 4 * 64 * KiB);

    assert_false(block_dirty_bitmap_merge(dst, coarse, &err));
    assert_string_equal(err->msg, "Bitmaps are incompatible: granularity "
                        "131072 differs from 65536");
    err_free(err);
    err = NULL;
    assert_false(block_dirty_bitmap_merge(dst, small, &err));
    assert_string_equal(err->msg, "Bitmaps are incompatible");
    err_free(err);
    err = NULL;
    assert_false(block_dirty_bitmap_merge(small, same, &err));
    assert_string_equal(err->msg, "Bitmaps are incompatible");
    err_free(err);
    assert_int_equal(block_dirty_bitmap_count(dst), 4 * 64 * KiB);

    block_node_unref(n1);
    block_node_unref(n2);
    block_node_unref(n3);
}

static void
test_copy_restore(void **state)
{
    struct block_node *node = new_node("disk7", 64 * MiB, false);
    struct block_dirty_bitmap *bm = create_ok(node, "b7", 0);
    struct hbitmap *snap;

    (void)state;
    block_dirty_bitmap_set(bm, 5 * MiB, 3 * MiB);
    snap = block_dirty_bitmap_copy_hbitmap(bm);
    assert_non_null(snap);
    assert_int_equal(hbitmap_count(snap), 3 * MiB);

    block_dirty_bitmap_clear(bm);
    block_dirty_bitmap_set(bm, 60 * MiB, 1);
    assert_int_equal(hbitmap_count(snap), 3 * MiB);

    block_dirty_bitmap_restore_hbitmap(bm, snap);
    assert_int_equal(block_dirty_bitmap_count(bm), 3 * MiB);
    assert_false(block_dirty_bitmap_get(bm, 60 * MiB));
    assert_int_equal(block_dirty_bitmap_next_dirty(bm, 0, UINT64_MAX),
                     5 * MiB);
    hbitmap_free(snap);
    block_node_unref(node);
}

/* The digest of one big hbitmap_serialize buffer, the obvious way. */
static void
reference_sha256(struct block_dirty_bitmap *bm, char out[65])
{
    struct hbitmap *hb = block_dirty_bitmap_copy_hbitmap(bm);
    size_t len = hbitmap_serialized_size(hb);
    unsigned char *buf = xmalloc(len);
    unsigned char digest[32];

    hbitmap_serialize(hb, buf);
    assert_int_equal(gnutls_hash_fast(GNUTLS_DIG_SHA256, buf, len, digest),
                     0);
    for (size_t i = 0; i < sizeof(digest); i++) {
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    }
    free(buf);
    hbitmap_free(hb);
}

static void
test_sha256(void **state)
{
    /* 64 GiB + a partial granule: 2^20 + 1 granules, 131080 bytes. */
    struct block_node *node = new_node("disk8", 64 * GiB + 12345, false);
    struct block_node *small = new_node("disk9", 130 * 512 - 3, false);
    struct block_dirty_bitmap *bm = create_ok(node, "b8", 0);
    struct block_dirty_bitmap *sb = create_ok(small, "b9", 512);
    static const unsigned granules[] = { 0, 9, 63, 64, 71, 129 };
    char got[65], want[65];
    uint64_t seed = 42;

    (void)state;
    /* Known digests: eight zero bytes, and a hand-checked layout. */
    block_dirty_bitmap_sha256(create_ok(small, "empty", 64 * KiB), got);
    assert_string_equal(got, "af5570f5a1810b7af78caf4bc70a660f"
                        "0df51e42baf91d4de5b2328de0e83dfc");
    for (size_t i = 0; i < ARRAY_SIZE(granules); i++) {
        block_dirty_bitmap_set(sb, granules[i] * 512ULL, 1);
    }
    block_dirty_bitmap_sha256(sb, got);
    assert_string_equal(got, "682039d65a28ba5c5c7c4205027ece65"
                        "f1dae11d527243ae3a43281426dafb66");

    /* Multi-chunk: the chunked digest equals the one-buffer digest. */
    block_dirty_bitmap_sha256(bm, got);
    reference_sha256(bm, want);
    assert_string_equal(got, want);
    for (int i = 0; i < 300; i++) {
        uint64_t off, len;

        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        off = (seed >> 11) % (64 * GiB + 12345);
        len = (seed >> 3) % (i % 10 == 0 ? 8 * GiB : 4 * MiB);
        block_dirty_bitmap_set(bm, off, len);
    }
    block_dirty_bitmap_set(bm, 64 * GiB, 1);
    block_dirty_bitmap_set(bm, 512 * 1024 * 64 * KiB - 1, 2);
    block_dirty_bitmap_sha256(bm, got);
    reference_sha256(bm, want);
    assert_string_equal(got, want);
    assert_int_equal(strlen(got), 64);

    block_node_unref(node);
    block_node_unref(small);
}

static void
test_info(void **state)
{
    struct block_node *node = new_node("disk10", 1 * MiB + 100, false);
    struct block_dirty_bitmap *a, *b;
    json_t *info;
    char *s;

    (void)state;
    info = qmp_dirty_bitmaps_info(node);
    assert_true(json_is_array(info));
    assert_int_equal(json_array_size(info), 0);
    json_decref(info);

    a = create_ok(node, "first", 0);
    create_ok(node, NULL, 512);
    b = create_ok(node, "third", 4096);
    block_dirty_bitmap_set(a, 1 * MiB, 1);
    block_dirty_bitmap_disable(a);
    block_dirty_bitmap_set_busy(b, true);
    b->persistent = true;
    b->inconsistent = true;

    /* Newest first, members in the schema's order. */
    info = qmp_dirty_bitmaps_info(node);
    s = json_dumps(info, JSON_COMPACT);
    assert_string_equal(s,
        "["
        "{\"name\":\"third\",\"count\":0,\"granularity\":4096,"
        "\"recording\":true,\"busy\":true,\"persistent\":true,"
        "\"inconsistent\":true},"
        "{\"count\":0,\"granularity\":512,\"recording\":true,"
        "\"busy\":false,\"persistent\":false},"
        "{\"name\":\"first\",\"count\":65536,\"granularity\":65536,"
        "\"recording\":false,\"busy\":false,\"persistent\":false}"
        "]");
    free(s);
    json_decref(info);

    block_node_release_bitmaps(node);
    info = qmp_dirty_bitmaps_info(node);
    assert_int_equal(json_array_size(info), 0);
    json_decref(info);
    block_node_unref(node);
}

/* Writers on several threads while the main thread reads and resets. */
struct writer {
    struct block_node *node;
    uint64_t base;
};

static void *
writer_thread(void *opaque)
{
    struct writer *w = opaque;
    char buf[512] = { 0 };

    for (uint64_t i = 0; i < 2000; i++) {
        /* cmocka's assertions are not for other threads. */
        if (block_pwrite(w->node, w->base + i * 64 * KiB, 512, buf, 0) < 0) {
            abort();
        }
    }
    return NULL;
}

static void
test_concurrent_marking(void **state)
{
    struct block_node *node = new_node("disk11", 4 * GiB, false);
    struct block_dirty_bitmap *bm = create_ok(node, "b11", 0);
    struct writer w[4];
    pthread_t t[4];

    (void)state;
    for (int i = 0; i < 4; i++) {
        w[i].node = node;
        w[i].base = (uint64_t)i * GiB;
        thread_create(&t[i], "writer", writer_thread, &w[i]);
    }
    for (int i = 0; i < 100; i++) {
        block_dirty_bitmap_count(bm);
        block_dirty_bitmap_next_dirty(bm, 0, UINT64_MAX);
    }
    for (int i = 0; i < 4; i++) {
        thread_join(t[i]);
    }
    assert_int_equal(block_dirty_bitmap_count(bm), 4 * 2000 * 64 * KiB);
    block_node_unref(node);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_recording),
        cmocka_unit_test(test_check_writable),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_copy_restore),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_concurrent_marking),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
