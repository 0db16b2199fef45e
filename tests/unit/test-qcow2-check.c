/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the qcow2 checker's API (qcow2_check): fresh images of
 * every refcount width are clean and end where the file ends; a leaked
 * cluster and a refcount below its references are found, counted as leak
 * and corruption, and repaired by the matching fix mode only; a repair
 * that needs a refcount block that does not exist is left alone by -r
 * leaks and done by -r all through a rebuild of the refcount structure;
 * and files that are not qcow2 are refused with a message.  The
 * images are patched through the same file node the checker reads.
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

#include "block/format/qcow2/qcow2-check.h"
#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "test-env.h"
#include "util.h"

struct fixture {
    char path[256];
    struct block_node *file;
    uint64_t cs;
    unsigned order;
};

/* A fresh image of size bytes in a temporary file, opened writable. */
static void
fixture_open(struct fixture *f, uint64_t cs, unsigned refcount_bits,
             uint64_t size)
{
    struct qcow2_create_opts o = {
        .cluster_size = cs, .refcount_bits = refcount_bits,
    };
    struct err *e = NULL;
    int fd;

    snprintf(f->path, sizeof(f->path), "%s/test-qcow2-check-XXXXXX",
             test_tmp_dir());
    fd = mkstemp(f->path);
    assert_true(fd >= 0);
    close(fd);
    f->file = test_open_file(f->path, "file", false, &e);
    assert_non_null(f->file);
    assert_int_equal(qcow2_create(f->file, size, &o, &e), 0);
    f->cs = cs;
    f->order = log2_u64(refcount_bits);
}

static void
fixture_close(struct fixture *f)
{
    block_node_unref(f->file);
    unlink(f->path);
}

static int
run_check(struct fixture *f, unsigned fix, struct block_check_result *r)
{
    struct err *e = NULL;
    int ret = qcow2_check(f->file, fix, NULL, r, &e);

    if (e) {
        fail_msg("check failed: %s", e->msg);
    }
    return ret;
}

static uint64_t
read64(struct fixture *f, uint64_t off)
{
    uint8_t b[8];

    assert_int_equal(block_pread(f->file, off, 8, b, 0), 0);
    return ld_be64(b);
}

/* Set the stored refcount of cluster k (first refcount block only). */
static void
set_refcount(struct fixture *f, uint64_t k, uint64_t v)
{
    uint64_t rb = read64(f, read64(f, 48));
    uint8_t *blk = malloc(f->cs);

    assert_non_null(blk);
    assert_int_equal(block_pread(f->file, rb, f->cs, blk, 0), 0);
    qcow2_refcount_set(blk, k, f->order, v);
    assert_int_equal(block_pwrite(f->file, rb, f->cs, blk, 0), 0);
    free(blk);
}

static void
grow(struct fixture *f, uint64_t clusters)
{
    struct err *e = NULL;
    int64_t len = block_getlength(f->file);

    assert_int_equal(block_truncate(f->file, len + clusters * f->cs, &e), 0);
}

static void
test_fresh_images_clean(void **state)
{
    (void)state;
    for (unsigned bits = 1; bits <= 64; bits *= 2) {
        struct block_check_result r;
        struct fixture f;

        fixture_open(&f, 4096, bits, 64 * MiB);
        assert_int_equal(run_check(&f, 0, &r), 0);
        assert_int_equal(r.corruptions + r.leaks + r.check_errors, 0);
        assert_int_equal(r.total_clusters, 64 * MiB / 4096);
        assert_int_equal(r.allocated_clusters, 0);
        assert_int_equal(r.image_end_offset,
                         align_up(block_getlength(f.file), 4096));
        fixture_close(&f);
    }
}

static void
test_leak_found_and_repaired(void **state)
{
    struct block_check_result r;
    struct fixture f;
    uint64_t last;

    (void)state;
    fixture_open(&f, 65536, 16, GiB);
    grow(&f, 1);
    last = div_round_up(block_getlength(f.file), f.cs) - 1;
    set_refcount(&f, last, 1);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r.leaks, 1);
    assert_int_equal(r.corruptions, 0);
    assert_int_equal(r.image_end_offset, (last + 1) * f.cs);
    /* -r all includes leaks; fixed ones are not counted as found. */
    assert_int_equal(run_check(&f, BLOCK_CHECK_FIX_LEAKS, &r), 0);
    assert_int_equal(r.leaks_fixed, 1);
    assert_int_equal(r.leaks, 0);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r.leaks + r.corruptions, 0);
    assert_int_equal(r.image_end_offset, last * f.cs);
    fixture_close(&f);
}

static void
test_corruption_needs_fix_errors(void **state)
{
    struct block_check_result r;
    struct fixture f;
    uint64_t l1 = 0;

    (void)state;
    fixture_open(&f, 65536, 8, GiB);
    l1 = read64(&f, 40) / f.cs;
    set_refcount(&f, l1, 0);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(run_check(&f, BLOCK_CHECK_FIX_LEAKS, &r), 0);
    assert_int_equal(r.corruptions, 1);
    assert_int_equal(r.corruptions_fixed, 0);
    assert_int_equal(run_check(&f, BLOCK_CHECK_FIX_LEAKS |
                               BLOCK_CHECK_FIX_ERRORS, &r), 0);
    assert_int_equal(r.corruptions_fixed, 1);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r.corruptions + r.leaks, 0);
    fixture_close(&f);
}

/*
 * 512-byte clusters with 64-bit refcounts: one refcount block covers 64
 * clusters, so a data cluster past them has no refcount block to repair.
 */
static void
test_repair_without_refblock(void **state)
{
    struct block_check_result r;
    struct fixture f;
    uint64_t l1, l2, data;
    uint8_t b[8];

    (void)state;
    fixture_open(&f, 512, 64, 4 * MiB);
    grow(&f, 200);
    l1 = read64(&f, 40);
    l2 = block_getlength(f.file) - 2 * f.cs;
    data = l2 + f.cs;
    memset(b, 0, sizeof(b));
    st_be64(b, l2 | QCOW2_OFLAG_COPIED);
    assert_int_equal(block_pwrite(f.file, l1, 8, b, 0), 0);
    st_be64(b, data | QCOW2_OFLAG_COPIED);
    assert_int_equal(block_pwrite(f.file, l2, 8, b, 0), 0);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_true(r.corruptions >= 2);
    assert_int_equal(run_check(&f, BLOCK_CHECK_FIX_LEAKS, &r), 0);
    assert_true(r.corruptions >= 2);
    /* -r all rebuilds the refcount structure at the end of the file. */
    assert_int_equal(run_check(&f, BLOCK_CHECK_FIX_LEAKS |
                               BLOCK_CHECK_FIX_ERRORS, &r), 0);
    assert_int_equal(r.corruptions + r.check_errors, 0);
    assert_true(r.corruptions_fixed >= 2);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r.corruptions + r.leaks + r.check_errors, 0);
    fixture_close(&f);
}

static void
test_not_qcow2(void **state)
{
    struct block_check_result r;
    struct err *e = NULL;
    struct fixture f;
    int fd;

    (void)state;
    snprintf(f.path, sizeof(f.path), "%s/test-qcow2-check-XXXXXX",
             test_tmp_dir());
    fd = mkstemp(f.path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, MiB), 0);
    close(fd);
    f.file = test_open_file(f.path, "file", true, &e);
    assert_non_null(f.file);
    assert_int_equal(qcow2_check(f.file, 0, NULL, &r, &e), -EINVAL);
    assert_non_null(e);
    assert_string_equal(e->msg, "Image is not in qcow2 format");
    err_free(e);
    fixture_close(&f);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_images_clean),
        cmocka_unit_test(test_leak_found_and_repaired),
        cmocka_unit_test(test_corruption_needs_fix_errors),
        cmocka_unit_test(test_repair_without_refblock),
        cmocka_unit_test(test_not_qcow2),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
