/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the qcow2 format logic: header decoding accepts good
 * headers and refuses each kind of bad one with a clear message (all that
 * QEMU's open refuses in the header, extensions included), L2 entry
 * and subcluster classification, compressed descriptors, refcount packing
 * for every width (against a naive model), and through the driver:
 * qcow2_create() for every cluster size and refcount width, a write/read
 * round trip, and make_empty on a 10 GiB image with 1 GiB allocated, which
 * must take well under a second and leave an image qemu-img check accepts;
 * eight threads copying-on-write into the same clusters at once, make_empty
 * failing or racing with writers, and a writer killed with SIGKILL while
 * it empties the image again and again; make_empty's background release
 * of the file's tail (new writes meanwhile survive, the file shrinks);
 * small writes into new clusters allocate no zero padding.  The tests
 * that go through the driver run again on a disk with O_DIRECT in make
 * check (meson test --setup direct --suite qcow2, see test-env.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "test-env.h"
#include "util.h"

/* ---- Header decoding ------------------------------------------------- */

/* A valid v3 header for a 1 GiB image with 64 KiB clusters. */
static void
make_header(uint8_t *b, size_t len)
{
    memset(b, 0, len);
    st_be32(b, QCOW2_MAGIC);
    st_be32(b + 4, 3);
    st_be32(b + 20, 16);
    st_be64(b + 24, GiB);
    st_be32(b + 36, 2);
    st_be64(b + 40, 0x30000);
    st_be64(b + 48, 0x10000);
    st_be32(b + 56, 1);
    st_be32(b + 96, 4);
    st_be32(b + 100, 112);
}

static int
parse(const uint8_t *b, size_t len, struct qcow2_header *h, char **msg)
{
    struct err *e = NULL;
    int ret = qcow2_header_parse(b, len, h, &e);

    *msg = NULL;
    if (e) {
        *msg = xstrdup(e->msg);
        err_free(e);
    }
    return ret;
}

static void
expect_refused(const uint8_t *b, size_t len, const char *needle)
{
    struct qcow2_header h;
    char *msg;
    int ret = parse(b, len, &h, &msg);

    assert_true(ret < 0);
    assert_non_null(msg);
    if (!strstr(msg, needle)) {
        fail_msg("message '%s' does not contain '%s'", msg, needle);
    }
    free(msg);
}

static void
test_header_valid(void **state)
{
    static uint8_t b[65536];
    struct qcow2_header h;
    char *msg;
    uint64_t off = 112;

    (void)state;
    make_header(b, sizeof(b));
    /* Backing format extension and a backing name. */
    st_be32(b + off, QCOW2_EXT_BACKING_FORMAT);
    st_be32(b + off + 4, 5);
    memcpy(b + off + 8, "qcow2", 5);
    off += 16;
    st_be32(b + off, 0x12345678);     /* unknown extension: skipped */
    st_be32(b + off + 4, 3);
    off += 16 + 8;
    st_be64(b + 8, off);
    st_be32(b + 16, 8);
    memcpy(b + off, "base.img", 8);
    assert_int_equal(parse(b, sizeof(b), &h, &msg), 0);
    assert_null(msg);
    assert_int_equal(h.version, 3);
    assert_int_equal(h.cluster_size, 65536);
    assert_int_equal(h.refcount_bits, 16);
    assert_int_equal(h.l2_entries, 8192);
    assert_true(h.has_backing_file);
    assert_string_equal(h.backing_file, "base.img");
    assert_true(h.has_backing_fmt);
    assert_string_equal(h.backing_fmt, "qcow2");

    /* Version 2: 72-byte header, 16-bit refcounts. */
    make_header(b, sizeof(b));
    st_be32(b + 4, 2);
    st_be32(b + 96, 0);
    st_be32(b + 100, 0);
    assert_int_equal(parse(b, sizeof(b), &h, &msg), 0);
    assert_int_equal(h.refcount_bits, 16);
    assert_int_equal(h.header_length, 72);
}

static void
test_header_refused(void **state)
{
    static uint8_t b[65536];

    (void)state;
    make_header(b, sizeof(b));
    b[0] = 'X';
    expect_refused(b, sizeof(b), "not in qcow2 format");
    make_header(b, sizeof(b));
    st_be32(b + 4, 4);
    expect_refused(b, sizeof(b), "version 4");
    make_header(b, sizeof(b));
    st_be32(b + 20, 8);
    expect_refused(b, sizeof(b), "cluster size");
    make_header(b, sizeof(b));
    st_be32(b + 20, 22);
    expect_refused(b, sizeof(b), "cluster size");
    make_header(b, sizeof(b));
    st_be32(b + 96, 7);
    expect_refused(b, sizeof(b), "Refcount order");
    make_header(b, sizeof(b));
    st_be32(b + 100, 100);
    expect_refused(b, sizeof(b), "header length");
    make_header(b, sizeof(b));
    st_be64(b + 40, 0x30200);
    expect_refused(b, sizeof(b), "L1 table offset");
    make_header(b, sizeof(b));
    st_be32(b + 36, 1);
    expect_refused(b, sizeof(b), "L1 table is too small");
    make_header(b, sizeof(b));
    st_be64(b + 48, 0x10001);
    expect_refused(b, sizeof(b), "reference count table offset");
    make_header(b, sizeof(b));
    st_be64(b + 24, GiB + 100);
    expect_refused(b, sizeof(b), "multiple of 512");
    make_header(b, sizeof(b));
    st_be64(b + 72, 1ULL << 5 | 1ULL << 40);
    /* Bits the image's feature table does not name: one mask, as QEMU. */
    expect_refused(b, sizeof(b), "Unknown incompatible feature: "
                   "10000000020");
    make_header(b, sizeof(b));
    st_be64(b + 72, QCOW2_INCOMPAT_DATA_FILE);
    expect_refused(b, sizeof(b), "'data-file' is required");
    st_be32(b + 112, QCOW2_EXT_DATA_FILE);
    st_be32(b + 116, 6);
    memcpy(b + 120, "d.data", 6);
    expect_refused(b, sizeof(b), "external data file");
    make_header(b, sizeof(b));
    st_be64(b + 88, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    expect_refused(b, sizeof(b), "data-file-raw requires a data file");
    make_header(b, sizeof(b));
    st_be32(b + 32, QCOW2_CRYPT_LUKS);
    expect_refused(b, sizeof(b), "Encrypted");
    /* Internal snapshots are supported: the header parses. */
    make_header(b, sizeof(b));
    st_be32(b + 60, 1);
    st_be64(b + 64, 0x40000);
    {
        struct qcow2_header h;
        char *msg;

        assert_int_equal(parse(b, sizeof(b), &h, &msg), 0);
        assert_null(msg);
        assert_int_equal(h.nb_snapshots, 1);
        assert_int_equal(h.snapshots_offset, 0x40000);
    }
    make_header(b, sizeof(b));
    st_be64(b + 72, QCOW2_INCOMPAT_EXTL2);
    st_be32(b + 20, 12);
    st_be32(b + 36, 2048);
    expect_refused(b, sizeof(b), "at least 16384");
    make_header(b, sizeof(b));
    st_be64(b + 8, 65530);
    st_be32(b + 16, 100);
    expect_refused(b, sizeof(b), "outside the header cluster");
    make_header(b, sizeof(b));
    st_be32(b + 112, QCOW2_EXT_BACKING_FORMAT);
    st_be32(b + 116, 70000);
    expect_refused(b, sizeof(b), "truncated");
    make_header(b, sizeof(b));
    expect_refused(b, 50, "not in qcow2 format");
    /* What QEMU's open refuses in the header, as qemu-img check does. */
    make_header(b, sizeof(b));
    st_be64(b + 24, 1ULL << 62);
    expect_refused(b, sizeof(b), "Image is too big");
    make_header(b, sizeof(b));
    st_be64(b + 64, 0x40200);       /* no snapshots, still checked */
    expect_refused(b, sizeof(b), "Snapshot table offset invalid");
    make_header(b, sizeof(b));
    st_be32(b + 112, QCOW2_EXT_BITMAPS);
    st_be32(b + 116, 16);
    expect_refused(b, sizeof(b), "bitmaps_ext: Invalid extension length");
    st_be32(b + 116, 24);
    st_be64(b + 88, QCOW2_AUTOCLEAR_BITMAPS);
    expect_refused(b, sizeof(b), "Invalid number of bitmaps 0");
    st_be32(b + 120, 1);
    st_be64(b + 136, 0x1234);
    expect_refused(b, sizeof(b), "invalid bitmap directory offset");
    make_header(b, sizeof(b));
    st_be32(b + 112, QCOW2_EXT_CRYPTO);
    st_be32(b + 116, 16);
    expect_refused(b, sizeof(b), "only expected with LUKS");
    make_header(b, sizeof(b));
    st_be32(b + 112, 0);            /* end marker with a length */
    st_be32(b + 116, 70000);
    expect_refused(b, sizeof(b), "truncated");
    make_header(b, sizeof(b));
    st_be32(b + 112, 0x12345678);   /* 4 bytes left before the name */
    st_be64(b + 8, 124);
    st_be32(b + 16, 4);
    memcpy(b + 124, "base", 4);
    expect_refused(b, sizeof(b), "extension list is truncated");
}

/* ---- Entries --------------------------------------------------------- */

static enum qcow2_cluster_type
type_of(uint64_t entry, bool ext, int version)
{
    enum qcow2_cluster_type t;

    assert_int_equal(qcow2_l2_entry_type(entry, 0, ext, version, 16, &t), 0);
    return t;
}

static void
test_l2_entries(void **state)
{
    enum qcow2_cluster_type t;
    uint64_t off, len;

    (void)state;
    assert_int_equal(type_of(0, false, 3), QCOW2_CLUSTER_UNALLOCATED);
    assert_int_equal(type_of(0x50000 | QCOW2_OFLAG_COPIED, false, 3),
                     QCOW2_CLUSTER_NORMAL);
    assert_int_equal(type_of(0x50000, false, 3), QCOW2_CLUSTER_NORMAL);
    assert_int_equal(type_of(QCOW2_OFLAG_ZERO, false, 3),
                     QCOW2_CLUSTER_ZERO_PLAIN);
    assert_int_equal(type_of(0x50000 | QCOW2_OFLAG_ZERO | QCOW2_OFLAG_COPIED,
                             false, 3), QCOW2_CLUSTER_ZERO_ALLOC);
    assert_int_equal(type_of(QCOW2_OFLAG_COMPRESSED | 0x12345, false, 3),
                     QCOW2_CLUSTER_COMPRESSED);
    /* Broken entries. */
    assert_int_equal(qcow2_l2_entry_type(0x50200, 0, false, 3, 16, &t), -EIO);
    assert_int_equal(qcow2_l2_entry_type(0x50000 | 2, 0, false, 3, 16, &t),
                     -EIO);
    assert_int_equal(qcow2_l2_entry_type(1ULL << 60 | 0x50000, 0, false, 3,
                                         16, &t), -EIO);
    assert_int_equal(qcow2_l2_entry_type(QCOW2_OFLAG_ZERO, 0, false, 2, 16,
                                         &t), -EIO);
    assert_int_equal(qcow2_l2_entry_type(QCOW2_OFLAG_ZERO, 0, true, 3, 16,
                                         &t), -EIO);
    assert_int_equal(qcow2_l2_entry_type(QCOW2_OFLAG_COPIED, 0, false, 3, 16,
                                         &t), -EIO);
    assert_int_equal(qcow2_l2_entry_type(QCOW2_OFLAG_COMPRESSED |
                                         QCOW2_OFLAG_COPIED, 0, false, 3, 16,
                                         &t), -EIO);
    /* Subclusters. */
    assert_int_equal(qcow2_subcluster_type(0x50000, QCOW2_SUB_ALLOC(3), 3,
                                           &t), 0);
    assert_int_equal(t, QCOW2_CLUSTER_NORMAL);
    assert_int_equal(qcow2_subcluster_type(0x50000, QCOW2_SUB_ALLOC(3), 4,
                                           &t), 0);
    assert_int_equal(t, QCOW2_CLUSTER_UNALLOCATED);
    assert_int_equal(qcow2_subcluster_type(0, QCOW2_SUB_ZERO(7), 7, &t), 0);
    assert_int_equal(t, QCOW2_CLUSTER_ZERO_PLAIN);
    assert_int_equal(qcow2_subcluster_type(0, QCOW2_SUB_ALLOC(1), 1, &t),
                     -EIO);
    assert_int_equal(qcow2_subcluster_type(0x50000, QCOW2_SUB_ALLOC(2) |
                                           QCOW2_SUB_ZERO(2), 2, &t), -EIO);
    /* Compressed descriptor, 64 KiB clusters: 54 offset bits. */
    qcow2_compressed_decode(QCOW2_OFLAG_COMPRESSED | (3ULL << 54) | 0x70123,
                            16, &off, &len);
    assert_int_equal(off, 0x70123);
    assert_int_equal(len, 4 * 512 - 0x123);
    /* 2 MiB clusters: 49 offset bits. */
    qcow2_compressed_decode((1ULL << 49) | 0x200, 21, &off, &len);
    assert_int_equal(off, 0x200);
    assert_int_equal(len, 1024);
}

static void
test_refcounts(void **state)
{
    uint8_t block[512];
    uint64_t model[4096];

    (void)state;
    srand(42);
    for (unsigned order = 0; order <= 6; order++) {
        uint64_t n = sizeof(block) * 8 >> order;
        uint64_t max = qcow2_refcount_max(order);

        memset(block, 0, sizeof(block));
        memset(model, 0, sizeof(model));
        for (int round = 0; round < 20000; round++) {
            uint64_t i = (uint64_t)rand() % n;
            uint64_t v = (((uint64_t)rand() << 32) ^ (uint64_t)rand()) & max;

            if (round % 7 == 0) {
                v = max;
            }
            qcow2_refcount_set(block, i, order, v);
            model[i] = v;
        }
        for (uint64_t i = 0; i < n; i++) {
            assert_int_equal(qcow2_refcount_get(block, i, order), model[i]);
        }
    }
    /* Layout: LSB first for sub-byte widths, big-endian otherwise. */
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 1, 0, 1);
    assert_int_equal(block[0], 0x02);
    qcow2_refcount_set(block, 1, 2, 0xa);
    assert_int_equal(block[0], 0xa0 | 0x02);
    memset(block, 0, sizeof(block));
    qcow2_refcount_set(block, 1, 4, 0x1234);
    assert_int_equal(block[2], 0x12);
    assert_int_equal(block[3], 0x34);
    assert_int_equal(qcow2_refcount_max(0), 1);
    assert_int_equal(qcow2_refcount_max(4), 0xffff);
    assert_true(qcow2_refcount_max(6) == UINT64_MAX);
}

/* ---- Through the driver ---------------------------------------------- */

/* Under test_tmp_dir(); images opened as test-env.h says (O_DIRECT in
 * the "direct" test setup). */
static char *tmpdir;

static char *
tmp_path(const char *name)
{
    return xasprintf("%s/%s", tmpdir, name);
}

static void
create_image(const char *path, uint64_t size,
             const struct qcow2_create_opts *o)
{
    struct err *e = NULL;
    struct block_node *file;
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fclose(f);
    file = test_open_file(path, "file", false, &e);
    assert_null(e);
    assert_int_equal(qcow2_create(file, size, o, &e), 0);
    block_node_unref(file);
}

static struct block_handle *
open_image(const char *path, struct block_node **node)
{
    struct err *e = NULL;
    struct block_handle *h;

    *node = test_open_file(path, "qcow2", false, &e);
    if (e) {
        fail_msg("open: %s", e->msg);
    }
    h = block_handle_new(*node, "test", BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE,
                         BLOCK_PERM_ALL, &e);
    assert_non_null(h);
    return h;
}

static void
close_image(struct block_handle *h, struct block_node *node)
{
    block_handle_free(h);
    block_node_unref(node);
}

/* qemu-img check exit status (0 clean), or 0 when qemu-img is missing. */
static int
qemu_img_check(const char *path)
{
    char *cmd;
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        return 0;
    }
    cmd = xasprintf("qemu-img check -q '%s' 2>/dev/null", path);
    ret = system(cmd);
    free(cmd);
    return WEXITSTATUS(ret);
}

/* The same while the image is open elsewhere (qemu-img check -U). */
static int
qemu_img_check_shared(const char *path)
{
    char *cmd;
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        return 0;
    }
    cmd = xasprintf("qemu-img check -U -q '%s' 2>/dev/null", path);
    ret = system(cmd);
    free(cmd);
    return WEXITSTATUS(ret);
}

static void
test_create_roundtrip(void **state)
{
    static const unsigned orders[] = { 0, 4, 6 };
    uint8_t *buf = xmalloc(300000), *back = xmalloc(300000);

    (void)state;
    for (unsigned cb = 9; cb <= 21; cb++) {
        for (size_t oi = 0; oi < ARRAY_SIZE(orders); oi++) {
            struct qcow2_create_opts o = {
                .cluster_size = 1ULL << cb,
                .refcount_bits = 1U << orders[oi],
                .extended_l2 = cb >= 14 && oi == 1,
            };
            char *path = tmp_path("rt.qcow2");
            struct block_node *node;
            struct block_handle *h;

            create_image(path, 64 * MiB, &o);
            h = open_image(path, &node);
            memset(buf, (int)(cb * 7 + oi), 300000);
            assert_int_equal(block_handle_pwrite(h, 12345, 300000, buf, 0),
                             0);
            assert_int_equal(block_handle_pwrite_zeroes(h, 40 * MiB, 2 * MiB,
                                                        0), 0);
            assert_int_equal(block_handle_pread(h, 12345, 300000, back, 0),
                             0);
            assert_memory_equal(buf, back, 300000);
            close_image(h, node);
            assert_int_equal(qemu_img_check(path), 0);
            unlink(path);
            free(path);
        }
    }
    free(buf);
    free(back);
}

static void
test_make_empty_fast(void **state)
{
    struct qcow2_create_opts o = { 0 };
    char *path = tmp_path("empty.qcow2");
    /* 1 GiB allocated; with O_DIRECT 128 MiB (as many clusters' worth of
     * metadata per chunk matters, not the bytes). */
    size_t chunk = test_cache_direct() ? 512 * KiB : 4 * MiB;
    uint8_t *buf = xmalloc(chunk);
    struct block_node *node;
    struct block_handle *h;
    struct err *e = NULL;
    struct stat st;
    int64_t t0, t1;
    uint64_t pnum;

    (void)state;
    create_image(path, 10 * GiB, &o);
    h = open_image(path, &node);
    memset(buf, 0x5c, chunk);
    /* 1 GiB spread over the disk: 256 chunks of 4 MiB. */
    for (uint64_t i = 0; i < 256; i++) {
        assert_int_equal(block_handle_pwrite(h, i * 40 * MiB, chunk, buf, 0),
                         0);
    }
    assert_int_equal(block_handle_flush(h), 0);
    block_graph_enter();
    t0 = clock_ns();
    assert_int_equal(block_make_empty(node, &e), 0);
    t1 = clock_ns();
    block_graph_leave();
    assert_null(e);
    if (t1 - t0 >= 1000000000) {
        fail_msg("make_empty took %lld ns", (long long)(t1 - t0));
    }
    assert_int_equal(block_handle_pread(h, 40 * MiB, chunk, buf, 0), 0);
    assert_true(buffer_is_zero(buf, chunk));
    assert_int_equal(block_is_allocated(node, 0, 10 * GiB, &pnum), 0);
    /* Still writable after emptying. */
    memset(buf, 0x77, chunk);
    assert_int_equal(block_handle_pwrite(h, 5 * GiB, chunk, buf, 0), 0);
    close_image(h, node);
    assert_int_equal(stat(path, &st), 0);
    assert_true((uint64_t)st.st_size < 8 * MiB);
    assert_int_equal(qemu_img_check(path), 0);
    /* And once more, then check the file shrank to a few clusters. */
    h = open_image(path, &node);
    block_graph_enter();
    assert_int_equal(block_make_empty(node, &e), 0);
    block_graph_leave();
    close_image(h, node);
    assert_int_equal(stat(path, &st), 0);
    /* A fresh image's layout: header, reftable, refblock, then L1. */
    assert_true((uint64_t)st.st_size <= 3 * 65536 + 80 * 8);
    assert_int_equal(qemu_img_check(path), 0);
    unlink(path);
    free(path);
    free(buf);
}

/* Bytes of MiB number i of the release test's new data. */
static int
release_byte(uint64_t i)
{
    return (int)(i * 3 + 1) & 0xff;
}

static uint64_t
file_size(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

/* Wait up to 10 s for the file to shrink to at most max bytes. */
static void
wait_file_shrinks(const char *path, uint64_t max)
{
    int64_t deadline = clock_ns() + 10 * 1000000000LL;

    while (file_size(path) > max && clock_ns() < deadline) {
        usleep(1000);
    }
    if (file_size(path) > max) {
        fail_msg("%s is %llu bytes, expected <= %llu", path,
                 (unsigned long long)file_size(path),
                 (unsigned long long)max);
    }
}

static void
release_write_new(struct block_handle *h, uint8_t *buf, uint64_t mib)
{
    for (uint64_t i = 0; i < mib; i++) {
        memset(buf, release_byte(i), MiB);
        assert_int_equal(block_handle_pwrite(h, 512 * MiB + i * MiB, MiB, buf,
                                             0), 0);
    }
}

static void
release_check_new(struct block_handle *h, uint8_t *buf, uint64_t mib)
{
    for (uint64_t i = 0; i < mib; i++) {
        assert_int_equal(block_handle_pread(h, 512 * MiB + i * MiB, MiB, buf,
                                            0), 0);
        assert_true(buf[0] == release_byte(i) &&
                    !memcmp(buf, buf + 1, MiB - 1));
    }
}

/*
 * make_empty gives the file's tail back in the background: the image is
 * empty at once, writes made while the tail is still being cut land
 * below the cut and survive, the file shrinks to what they use without a
 * close, and qemu-img check is clean afterwards.
 */
static void
test_make_empty_release(void **state)
{
    struct qcow2_create_opts o = { 0 };
    /* On tmpfs cutting the tail is slow (freeing pages), so the writes
     * below really run while it goes on (but O_DIRECT stays on disk). */
    char *path = access("/dev/shm", W_OK) == 0 && !test_cache_direct()
                 ? xasprintf("/dev/shm/test-qcow2-release-%d.qcow2",
                             (int)getpid())
                 : tmp_path("release.qcow2");
    uint8_t *buf = xmalloc(MiB);
    struct block_node *node;
    struct block_handle *h;
    struct err *e = NULL;
    uint64_t pnum;

    (void)state;
    create_image(path, GiB, &o);
    h = open_image(path, &node);
    memset(buf, 0x5a, MiB);
    for (uint64_t off = 0; off < 96 * MiB; off += MiB) {
        assert_int_equal(block_handle_pwrite(h, off, MiB, buf, 0), 0);
    }
    assert_true(file_size(path) > 96 * MiB);
    block_graph_enter();
    assert_int_equal(block_make_empty(node, &e), 0);
    block_graph_leave();
    assert_int_equal(block_is_allocated(node, 0, GiB, &pnum), 0);
    assert_int_equal(block_handle_pread(h, 95 * MiB, MiB, buf, 0), 0);
    assert_true(buffer_is_zero(buf, MiB));
    /* Allocated from the front while the tail may still be going. */
    release_write_new(h, buf, 32);
    release_check_new(h, buf, 32);
    wait_file_shrinks(path, 34 * MiB);
    assert_true(file_size(path) >= 32 * MiB);
    release_check_new(h, buf, 32);
    assert_int_equal(block_handle_flush(h), 0);
    assert_int_equal(qemu_img_check_shared(path), 0);
    close_image(h, node);
    assert_int_equal(qemu_img_check(path), 0);

    /* The data survives a reopen; emptying twice in a row (the second
     * stops the first's release) and closing leaves a fresh layout. */
    h = open_image(path, &node);
    release_check_new(h, buf, 32);
    block_graph_enter();
    assert_int_equal(block_make_empty(node, &e), 0);
    block_graph_leave();
    release_write_new(h, buf, 16);
    block_graph_enter();
    assert_int_equal(block_make_empty(node, &e), 0);
    block_graph_leave();
    close_image(h, node);
    assert_true(file_size(path) <= 3 * 65536 + 16 * 8);
    assert_int_equal(qemu_img_check(path), 0);
    unlink(path);
    free(path);
    free(buf);
}

/* ---- Concurrency: many threads writing into the same clusters -------- */

#define CONC_THREADS 8
#define CONC_SECTORS 4096          /* 2 MiB of 512-byte sectors */

struct conc_arg {
    struct block_handle *h;
    unsigned id;
    bool no_verify;     /* content may vanish (concurrent make_empty) */
    int failures;
};

/*
 * Thread id owns every sector s with s % CONC_THREADS == id, so all
 * threads allocate and copy-on-write the same clusters at once; the
 * range locks must keep every sector's last write.
 */
static void *
conc_worker(void *opaque)
{
    struct conc_arg *a = opaque;
    uint8_t buf[512], back[512];
    unsigned seed = a->id * 7919 + 1;

    for (int round = 0; round < 3000; round++) {
        uint64_t sec = (uint64_t)(rand_r(&seed) % (CONC_SECTORS /
                                                   CONC_THREADS)) *
                       CONC_THREADS + a->id;
        int op = rand_r(&seed) % 10;

        memset(buf, (int)((sec * 31 + (uint64_t)round) & 0xff) | 1, 512);
        if (op < 6) {
            if (block_handle_pwrite(a->h, sec * 512, 512, buf, 0) < 0) {
                a->failures++;
                continue;
            }
            if (block_handle_pread(a->h, sec * 512, 512, back, 0) < 0 ||
                (!a->no_verify && memcmp(buf, back, 512))) {
                a->failures++;
            }
        } else if (op < 8) {
            if (block_handle_pwrite_zeroes(a->h, sec * 512, 512,
                                           BLOCK_REQ_MAY_UNMAP) < 0 ||
                block_handle_pread(a->h, sec * 512, 512, back, 0) < 0 ||
                (!a->no_verify && !buffer_is_zero(back, 512))) {
                a->failures++;
            }
        } else if (block_handle_pread(a->h, sec * 512, 512, back, 0) < 0) {
            a->failures++;
        }
    }
    return NULL;
}

static void
test_concurrent_cow(void **state)
{
    static const uint64_t sizes[] = { 4096, 65536 };
    (void)state;

    for (size_t si = 0; si < ARRAY_SIZE(sizes); si++) {
        struct qcow2_create_opts o = {
            .cluster_size = sizes[si],
            .extended_l2 = sizes[si] >= 16384,
        };
        char *path = tmp_path("conc.qcow2");
        char *base = tmp_path("conc-base.qcow2");
        struct conc_arg args[CONC_THREADS];
        pthread_t th[CONC_THREADS];
        struct block_node *node;
        struct block_handle *h;
        uint8_t *fill = xmalloc(CONC_SECTORS * 512);

        /* A backing file full of 0xbb makes every allocation COW. */
        create_image(base, 8 * MiB, &(struct qcow2_create_opts){ 0 });
        h = open_image(base, &node);
        memset(fill, 0xbb, CONC_SECTORS * 512);
        assert_int_equal(block_handle_pwrite(h, 0, CONC_SECTORS * 512, fill,
                                             0), 0);
        close_image(h, node);
        o.backing_file = base;
        o.backing_fmt = "qcow2";
        create_image(path, 8 * MiB, &o);
        h = open_image(path, &node);
        for (unsigned i = 0; i < CONC_THREADS; i++) {
            args[i] = (struct conc_arg){ .h = h, .id = i };
            thread_create(&th[i], "conc", conc_worker, &args[i]);
        }
        for (unsigned i = 0; i < CONC_THREADS; i++) {
            thread_join(th[i]);
            assert_int_equal(args[i].failures, 0);
        }
        close_image(h, node);
        assert_int_equal(qemu_img_check(path), 0);
        unlink(path);
        unlink(base);
        free(path);
        free(base);
        free(fill);
    }
}

/* ---- Allocating writes without zero padding ------------------------- */

#define PAD_CLUSTERS 64

/* The image with discard on but not passed down: freed clusters keep
 * their old bytes in the file, as a reused cluster may. */
static struct block_handle *
open_pad_image(const char *path, struct block_node **node)
{
    struct err *e = NULL;
    struct block_handle *h;
    char *kv = xasprintf("driver=qcow2,discard=unmap,"
                         "pass-discard-request=off,file.driver=file,"
                         "file.filename=%s,file.cache.direct=%s", path,
                         test_cache_direct() ? "on" : "off");

    *node = block_node_new_keyval(kv, &e);
    free(kv);
    if (e) {
        fail_msg("open: %s", e->msg);
    }
    h = block_handle_new(*node, "test", BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &e);
    assert_non_null(h);
    return h;
}

/* Write the same bytes to the image and to a raw reference file. */
static void
pad_write(struct block_handle *h, int ref, uint64_t off, uint64_t len,
          int byte)
{
    uint8_t *buf = xmalloc(len);

    memset(buf, byte, len);
    assert_int_equal(block_handle_pwrite(h, off, len, buf, 0), 0);
    assert_int_equal(pwrite_full(ref, buf, len, off), 0);
    free(buf);
}

/* Every cluster in [first, first+n) reads the same as the reference. */
static void
pad_verify(struct block_handle *h, int ref, uint64_t first, uint64_t n)
{
    uint8_t *a = xmalloc(65536), *b = xmalloc(65536);

    for (uint64_t c = first; c < first + n; c++) {
        assert_int_equal(block_handle_pread(h, c * 65536, 65536, a, 0), 0);
        assert_int_equal(pread_full(ref, b, 65536, c * 65536), 0);
        assert_memory_equal(a, b, 65536);
    }
    free(a);
    free(b);
}

/* qemu-img compare exit status (0 identical), or 0 without qemu-img. */
static int
qemu_img_compare_raw(const char *raw, const char *img)
{
    char *cmd;
    int ret;

    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        return 0;
    }
    cmd = xasprintf("qemu-img compare -q -f raw -F qcow2 '%s' '%s' "
                    "2>/dev/null", raw, img);
    ret = system(cmd);
    free(cmd);
    return WEXITSTATUS(ret);
}

/*
 * A small write into a new cluster writes the data, not 64 KiB of padding:
 * fresh clusters past the end of the file cost only the pages written (on
 * tmpfs; on a disk the rest is fallocated, not written).  A
 * cluster reused after discard still held data: its padding must read as
 * zeroes (ours, qemu-img compare), and qemu-img check stays clean.
 */
static void
test_alloc_no_padding(void **state)
{
    char *path = tmp_path("pad.qcow2"), *raw = tmp_path("pad.raw");
    struct block_node *node;
    struct block_handle *h;
    struct stat st;
    uint64_t len;
    int ref;

    (void)state;
    create_image(path, 64 * MiB, &(struct qcow2_create_opts){ 0 });
    ref = open(raw, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(ref >= 0);
    assert_int_equal(ftruncate(ref, 64 * MiB), 0);
    h = open_pad_image(path, &node);
    /* Head, middle and tail of new clusters; one write off 4 KiB. */
    for (uint64_t i = 0; i < PAD_CLUSTERS; i++) {
        pad_write(h, ref, i * 65536 + (i % 16) * 4096, 4096, (int)i + 1);
    }
    pad_write(h, ref, 70 * 65536 + 1000, 100, 0x77);
    assert_int_equal(stat(path, &st), 0);
    /* Before: header, tables and 65 whole clusters, over 4 MiB.  On a
     * disk the file driver reserves each new cluster whole, without
     * writing it (fallocate, as QEMU), so that the data write lands
     * inside the file: the count holds in memory (tmpfs). */
    if (test_dir_in_memory(tmpdir) &&
        (uint64_t)st.st_blocks * 512 >= PAD_CLUSTERS * 65536 / 4) {
        fail_msg("%llu bytes allocated for %d 4 KiB writes",
                 (unsigned long long)st.st_blocks * 512, PAD_CLUSTERS);
    }
    pad_verify(h, ref, 0, 72);
    assert_int_equal(file_size(path) % 65536, 0);   /* as QEMU's images */

    /* Fill eight clusters, free them: the next allocations reuse them. */
    pad_write(h, ref, 100 * 65536, 8 * 65536, 0xee);
    assert_int_equal(block_handle_pdiscard(h, 100 * 65536, 8 * 65536), 0);
    /* Discarded clusters read as zeroes: a hole in the reference. */
    assert_int_equal(fallocate(ref, FALLOC_FL_PUNCH_HOLE |
                               FALLOC_FL_KEEP_SIZE, 100 * 65536, 8 * 65536),
                     0);
    len = file_size(path);
    for (uint64_t i = 0; i < 8; i++) {
        pad_write(h, ref, (200 + i) * 65536 + i * 8192 + 3, 5000,
                  0x30 + (int)i);
    }
    assert_int_equal(file_size(path), len);     /* reused, not appended */
    pad_verify(h, ref, 200, 8);
    pad_verify(h, ref, 100, 8);
    close_image(h, node);
    assert_int_equal(qemu_img_check(path), 0);
    assert_int_equal(qemu_img_compare_raw(raw, path), 0);
    close(ref);
    unlink(path);
    unlink(raw);
    free(path);
    free(raw);
}

/*
 * An image file that ends inside a free cluster holding old bytes (written
 * by another program, or cut short): the next allocation lands there, the
 * old bytes below the end are zeroed, the file then ends on the cluster's
 * boundary (once closed: under O_DIRECT it grows ahead while open).
 */
static void
test_alloc_no_padding_short_tail(void **state)
{
    char *path = tmp_path("tail.qcow2");
    struct block_node *node;
    struct block_handle *h;
    uint8_t *buf = xmalloc(65536);
    uint64_t end;
    int fd;

    (void)state;
    create_image(path, 64 * MiB, &(struct qcow2_create_opts){ 0 });
    /* The L2 table first, so that the data is what meets the old bytes. */
    h = open_pad_image(path, &node);
    memset(buf, 0x41, 4096);
    assert_int_equal(block_handle_pwrite(h, 0, 4096, buf, 0), 0);
    close_image(h, node);
    end = file_size(path);
    assert_int_equal(end % 65536, 0);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    memset(buf, 0xdd, 10000);
    assert_int_equal(pwrite_full(fd, buf, 10000, end), 0);
    close(fd);
    h = open_pad_image(path, &node);
    memset(buf, 0x42, 4096);
    assert_int_equal(block_handle_pwrite(h, 5 * 65536 + 8192, 4096, buf, 0),
                     0);
    /* Under O_DIRECT the file grows ahead while open (qcow2.c
     * grow_over()), and is cut back at close. */
    assert_true(file_size(path) >= end + 65536);
    assert_int_equal(block_handle_pread(h, 5 * 65536, 65536, buf, 0), 0);
    for (unsigned i = 0; i < 65536; i++) {
        if (buf[i] != (i >= 8192 && i < 12288 ? 0x42 : 0)) {
            fail_msg("byte %u reads 0x%x", i, buf[i]);
        }
    }
    close_image(h, node);
    assert_int_equal(file_size(path), end + 65536);
    assert_int_equal(qemu_img_check(path), 0);
    unlink(path);
    free(path);
    free(buf);
}

#define PADC_THREADS 4
#define PADC_CLUSTERS 64

struct padc_arg {
    struct block_handle *h;
    unsigned id;
    uint8_t *model;         /* PADC_CLUSTERS clusters; only ours are used */
    int failures;
};

/*
 * Thread id owns the clusters c with c % PADC_THREADS == id: neighbouring
 * clusters are allocated at the end of the file by different threads at
 * once, and discarded clusters are reused by any of them.  Each cluster
 * must read exactly as the thread's model after every write.
 */
static void *
padc_worker(void *opaque)
{
    struct padc_arg *a = opaque;
    uint8_t *buf = xmalloc(65536);
    unsigned seed = a->id * 4391 + 7;

    for (int round = 0; round < 1500; round++) {
        uint64_t c = (uint64_t)(rand_r(&seed) % (PADC_CLUSTERS /
                                                 PADC_THREADS)) *
                     PADC_THREADS + a->id;
        uint8_t *m = a->model + c * 65536;
        uint64_t in = (uint64_t)(rand_r(&seed) % 65536);
        uint64_t n = (uint64_t)(rand_r(&seed) % 8192) + 1;

        n = MIN(n, 65536 - in);     /* MIN evaluates twice */
        if (rand_r(&seed) % 5 == 0) {
            if (block_handle_pdiscard(a->h, c * 65536, 65536) < 0) {
                a->failures++;
            }
            memset(m, 0, 65536);
        } else {
            memset(m + in, (round & 0xff) | 1, n);
            if (block_handle_pwrite(a->h, c * 65536 + in, n, m + in, 0) <
                0) {
                a->failures++;
            }
        }
        if (block_handle_pread(a->h, c * 65536, 65536, buf, 0) < 0 ||
            memcmp(buf, m, 65536)) {
            a->failures++;
        }
    }
    free(buf);
    return NULL;
}

/* test_alloc_no_padding's paths from several threads at once. */
static void
test_alloc_no_padding_concurrent(void **state)
{
    char *path = tmp_path("padc.qcow2");
    struct padc_arg args[PADC_THREADS];
    pthread_t th[PADC_THREADS];
    uint8_t *model = xcalloc(PADC_CLUSTERS, 65536);
    struct block_node *node;
    struct block_handle *h;

    (void)state;
    create_image(path, 64 * MiB, &(struct qcow2_create_opts){ 0 });
    h = open_pad_image(path, &node);
    for (unsigned i = 0; i < PADC_THREADS; i++) {
        args[i] = (struct padc_arg){ .h = h, .id = i, .model = model };
        thread_create(&th[i], "padc", padc_worker, &args[i]);
    }
    for (unsigned i = 0; i < PADC_THREADS; i++) {
        thread_join(th[i]);
        assert_int_equal(args[i].failures, 0);
    }
    close_image(h, node);
    assert_int_equal(qemu_img_check(path), 0);
    unlink(path);
    free(path);
    free(model);
}

/* make_empty failing at each metadata step leaves leaks at worst. */
static void
test_make_empty_errors(void **state)
{
    static const char *const events[] = {
        "l1_update", "refblock_alloc", "l2_update", "refblock_update",
    };
    uint8_t *buf = xmalloc(MiB);

    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(events); i++) {
        struct qcow2_create_opts o = { .cluster_size = 4096 };
        char *path = tmp_path("me-err.qcow2");
        struct block_node *node;
        struct block_handle *h;
        struct err *e = NULL;
        json_t *opts;
        int chk;

        create_image(path, 64 * MiB, &o);
        opts = json_pack("{s:s, s:{s:s, s:[{s:s, s:b}], s:{s:s, s:s}}}",
                         "driver", "qcow2", "file", "driver", "blkdebug",
                         "inject-error", "event", events[i], "once", 1,
                         "image", "driver", "file", "filename", path);
        if (test_cache_direct()) {
            block_opts_set_cache_mode(opts, "none", NULL);
        }
        node = block_node_new(opts, &e);
        json_decref(opts);
        assert_non_null(node);
        h = block_handle_new(node, "test", BLOCK_PERM_CONSISTENT_READ |
                             BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &e);
        assert_non_null(h);
        memset(buf, 0x3c, MiB);
        /* Dirty metadata in the caches (may already hit the error). */
        block_handle_pwrite(h, 3 * MiB, MiB, buf, 0);
        block_graph_enter();
        if (block_make_empty(node, &e) < 0) {
            err_free(e);
            e = NULL;
        }
        block_graph_leave();
        close_image(h, node);
        chk = qemu_img_check(path);
        if (chk != 0 && chk != 3) {
            fail_msg("event %s: qemu-img check exit %d", events[i], chk);
        }
        unlink(path);
        free(path);
    }
    free(buf);
}

static void
test_query(void **state)
{
    struct qcow2_create_opts o = { .refcount_bits = 4, .extended_l2 = true };
    char *path = tmp_path("query.qcow2");
    struct block_node *node;
    struct block_handle *h;
    json_t *info = json_object();
    json_t *data;

    (void)state;
    create_image(path, 16 * MiB, &o);
    h = open_image(path, &node);
    node->drv->query(node, info);
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(info, "format-specific"), "type")), "qcow2");
    data = json_object_get(json_object_get(info, "format-specific"), "data");
    assert_string_equal(json_string_value(json_object_get(data, "compat")),
                        "1.1");
    assert_string_equal(json_string_value(json_object_get(
        data, "compression-type")), "zlib");
    assert_int_equal(json_integer_value(json_object_get(data,
                                                        "refcount-bits")), 4);
    assert_true(json_is_false(json_object_get(data, "lazy-refcounts")));
    assert_true(json_is_false(json_object_get(data, "corrupt")));
    assert_true(json_is_true(json_object_get(data, "extended-l2")));
    json_decref(info);
    close_image(h, node);
    unlink(path);
    free(path);
}

/* The slow path: v2, and an L1 too big for one 64-entry refcount block. */
static void
test_make_empty_slow(void **state)
{
    static const struct qcow2_create_opts opts[] = {
        { .version = 2 },
        { .cluster_size = 512, .refcount_bits = 64 },
    };
    uint8_t *buf = xmalloc(MiB);

    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(opts); i++) {
        char *path = tmp_path("slow.qcow2");
        struct block_node *node;
        struct block_handle *h;
        struct err *e = NULL;
        uint64_t pnum;

        create_image(path, GiB, &opts[i]);
        h = open_image(path, &node);
        memset(buf, 0x61, MiB);
        for (uint64_t off = 0; off < GiB; off += 128 * MiB) {
            assert_int_equal(block_handle_pwrite(h, off, MiB, buf, 0), 0);
        }
        block_graph_enter();
        assert_int_equal(block_make_empty(node, &e), 0);
        assert_int_equal(block_is_allocated(node, 0, GiB, &pnum), 0);
        block_graph_leave();
        assert_int_equal(block_handle_pread(h, 128 * MiB, MiB, buf, 0), 0);
        assert_true(buffer_is_zero(buf, MiB));
        memset(buf, 0x62, MiB);
        assert_int_equal(block_handle_pwrite(h, 3 * MiB, MiB, buf, 0), 0);
        close_image(h, node);
        assert_int_equal(qemu_img_check(path), 0);
        unlink(path);
        free(path);
    }
    free(buf);
}

struct emptier_arg {
    struct block_node *node;
    bool stop;              /* atomic */
    int failures;
    int rounds;
};

static void *
emptier(void *opaque)
{
    struct emptier_arg *a = opaque;

    while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
        struct err *e = NULL;

        block_graph_enter();
        if (block_make_empty(a->node, &e) < 0) {
            a->failures++;
            err_free(e);
        }
        block_graph_leave();
        a->rounds++;
        usleep(2000);
    }
    return NULL;
}

/* make_empty racing with writers: no errors, a clean image at the end. */
static void
test_make_empty_concurrent(void **state)
{
    struct qcow2_create_opts o = { .cluster_size = 4096 };
    char *path = tmp_path("me-conc.qcow2");
    struct conc_arg args[CONC_THREADS];
    pthread_t th[CONC_THREADS], et;
    struct emptier_arg ea = { 0 };
    struct block_node *node;
    struct block_handle *h;
    uint64_t pnum;
    uint8_t *buf = xmalloc(CONC_SECTORS * 512);

    (void)state;
    create_image(path, 8 * MiB, &o);
    h = open_image(path, &node);
    ea.node = node;
    thread_create(&et, "emptier", emptier, &ea);
    for (unsigned i = 0; i < CONC_THREADS; i++) {
        args[i] = (struct conc_arg){ .h = h, .id = i, .no_verify = true };
        thread_create(&th[i], "conc", conc_worker, &args[i]);
    }
    for (unsigned i = 0; i < CONC_THREADS; i++) {
        thread_join(th[i]);
        assert_int_equal(args[i].failures, 0);
    }
    __atomic_store_n(&ea.stop, true, __ATOMIC_RELEASE);
    thread_join(et);
    assert_int_equal(ea.failures, 0);
    assert_true(ea.rounds > 0);
    block_graph_enter();
    assert_int_equal(block_make_empty(node, NULL), 0);
    assert_int_equal(block_is_allocated(node, 0, 8 * MiB, &pnum), 0);
    block_graph_leave();
    assert_int_equal(block_handle_pread(h, 0, CONC_SECTORS * 512, buf, 0), 0);
    assert_true(buffer_is_zero(buf, CONC_SECTORS * 512));
    close_image(h, node);
    assert_int_equal(qemu_img_check(path), 0);
    unlink(path);
    free(path);
    free(buf);
}

/* Child of the crash test: write, empty, write, flush... until killed. */
static void
crash_child(const char *path, unsigned seed)
{
    struct block_node *node;
    struct block_handle *h;
    uint8_t *buf = xmalloc(256 * KiB);

    h = open_image(path, &node);
    for (;;) {
        for (int i = 0; i < 20; i++) {
            uint64_t off = (uint64_t)(rand_r(&seed) % (60 * 1024)) * 1024;

            memset(buf, rand_r(&seed) & 0xff, 256 * KiB);
            block_handle_pwrite(h, off, 1 + (uint64_t)rand_r(&seed) %
                                (256 * KiB), buf, 0);
            if (i % 7 == 0) {
                block_handle_pdiscard(h, off, 64 * KiB);
            }
        }
        if (rand_r(&seed) % 2) {
            block_handle_flush(h);
        }
        block_graph_enter();
        block_make_empty(node, NULL);
        block_graph_leave();
    }
}

/* SIGKILL at random moments while make_empty runs again and again: the
 * image must never be corrupt (leaks are allowed). */
static void
test_make_empty_crash(void **state)
{
    struct qcow2_create_opts o = { .cluster_size = 4096 };
    char *path = tmp_path("me-crash.qcow2");
    int64_t deadline = clock_ns() + 8 * 1000000000LL;
    unsigned seed = 1234;
    int rounds = 0;

    (void)state;
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        skip();
    }
    create_image(path, 64 * MiB, &o);
    while (clock_ns() < deadline) {
        pid_t pid = fork();
        int chk, status;

        assert_true(pid >= 0);
        if (pid == 0) {
            crash_child(path, seed);
            _exit(0);
        }
        usleep(20000 + (useconds_t)(rand_r(&seed) % 200000));
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        /* With aio=io_uring (O_DIRECT pass) the killed child's ring is
         * torn down after it is reaped, and holds the file and its image
         * locks until then: check fails to lock (exit 1) for a moment. */
        for (int tries = 0; (chk = qemu_img_check(path)) == 1 && tries < 50;
             tries++) {
            usleep(20000);
        }
        if (chk != 0 && chk != 3) {
            fail_msg("round %d: qemu-img check exit %d", rounds, chk);
        }
        rounds++;
    }
    assert_true(rounds >= 5);
    unlink(path);
    free(path);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_valid),
        cmocka_unit_test(test_header_refused),
        cmocka_unit_test(test_l2_entries),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_create_roundtrip),
        cmocka_unit_test(test_make_empty_fast),
        cmocka_unit_test(test_make_empty_release),
        cmocka_unit_test(test_concurrent_cow),
        cmocka_unit_test(test_alloc_no_padding),
        cmocka_unit_test(test_alloc_no_padding_concurrent),
        cmocka_unit_test(test_alloc_no_padding_short_tail),
        cmocka_unit_test(test_make_empty_errors),
        cmocka_unit_test(test_make_empty_slow),
        cmocka_unit_test(test_make_empty_concurrent),
        cmocka_unit_test(test_make_empty_crash),
        cmocka_unit_test(test_query),
    };
    int ret;

    tmpdir = xasprintf("%s/test-qcow2-XXXXXX", test_tmp_dir());
    if (!mkdtemp(tmpdir)) {
        return 1;
    }
    ret = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(tmpdir);
    free(tmpdir);
    return ret;
}
