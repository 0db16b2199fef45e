/* SPDX-License-Identifier: MIT */
/*
 * Batched requests (block_pread_segments(), block_pwrite_segments()): the
 * file driver's io_uring path (one submission for several pieces) and its
 * aio=threads path (neighbours on the file as one preadv/pwritev, the
 * rest one by one), each with O_DIRECT on a disk where there is one; the
 * core's fallback to one request per piece (pieces that are unaligned or
 * reach past the end, more pieces than one batch takes, a driver without
 * the callbacks); and qcow2 reads and in-place writes over clusters that
 * are not contiguous on the host, which go down as batches.  Every test
 * checks the bytes against the file as read by plain system calls.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "test-env.h"
#include "util.h"

#define FILE_SIZE (1 * MiB)

static unsigned char
pattern(uint64_t i, unsigned seed)
{
    return (unsigned char)(i * 31 + (i >> 12) * 7 + seed);
}

/* A directory for the files: a disk (O_DIRECT) where there is one. */
static const char *
dir(bool *direct)
{
    const char *d = test_direct_dir();

    *direct = d != NULL;
    return d ? d : "/tmp";
}

/* A file of FILE_SIZE bytes of pattern(., 0); its path. */
static char *
make_file(void)
{
    bool direct;
    char *path = xasprintf("%s/lockstep-batch-XXXXXX", dir(&direct));
    unsigned char *buf = xmalloc(FILE_SIZE);
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    for (uint64_t i = 0; i < FILE_SIZE; i++) {
        buf[i] = pattern(i, 0);
    }
    assert_int_equal(pwrite_full(fd, buf, FILE_SIZE, 0), 0);
    close(fd);
    free(buf);
    return path;
}

static struct block_node *
open_file(const char *path, const char *aio, bool read_only)
{
    bool direct;
    struct err *e = NULL;
    char *kv;
    struct block_node *n;

    dir(&direct);
    kv = xasprintf("driver=file,filename=%s,aio=%s,cache.direct=%s%s", path,
                   aio, direct ? "on" : "off",
                   read_only ? ",read-only=on" : "");
    n = block_node_new_keyval(kv, &e);
    if (!n) {
        fail_msg("%s: %s", kv, e->msg);
    }
    free(kv);
    return n;
}

/* The file's bytes [off, off+len) as plain pread sees them. */
static void
file_bytes(const char *path, uint64_t off, uint64_t len, unsigned char *out)
{
    int fd = open(path, O_RDONLY);

    assert_true(fd >= 0);
    assert_int_equal(pread_full(fd, out, len, off), 0);
    close(fd);
}

/*
 * The process's read system calls so far (/proc/self/io "syscr": read,
 * pread64, readv, preadv; io_uring reads are not among them), or -1.
 */
static long
read_syscalls(void)
{
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    long n = -1;

    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "syscr: %ld", &n) == 1) {
            break;
        }
    }
    fclose(f);
    return n;
}

/*
 * Pieces of a request: (offset, length) on the file.  Neighbours (the
 * first three, the two after), pieces apart, out of order, one at the
 * very end of the file.
 */
static const uint64_t pieces[][2] = {
    { 64 * KiB, 4 * KiB }, { 68 * KiB, 8 * KiB }, { 76 * KiB, 4 * KiB },
    { 512 * KiB, 64 * KiB }, { 576 * KiB, 4 * KiB },
    { 8 * KiB, 4 * KiB }, { 300 * KiB, 12 * KiB },
    { FILE_SIZE - 4 * KiB, 4 * KiB },
};
#define NPIECES ARRAY_SIZE(pieces)

static void
fill_segments(struct block_segment *seg, unsigned char **bufs)
{
    for (size_t i = 0; i < NPIECES; i++) {
        /* Page-aligned buffers of their own, not next to each other. */
        bufs[i] = xmalloc_page(pieces[i][1] + 4 * KiB);
        seg[i] = (struct block_segment){ pieces[i][0], pieces[i][1],
                                         bufs[i] };
    }
}

static void
segments_roundtrip(const char *aio)
{
    char *path = make_file();
    struct block_node *n = open_file(path, aio, false);
    struct block_segment seg[NPIECES];
    unsigned char *bufs[NPIECES];
    unsigned char *want = xmalloc(256 * KiB);

    long calls;

    fill_segments(seg, bufs);
    calls = read_syscalls();
    assert_int_equal(block_pread_segments(n, seg, NPIECES, 0), 0);
    if (calls >= 0) {
        calls = read_syscalls() - calls - 1;   /* its own read */
        /* io_uring: none; threads: one preadv for each run of
         * neighbours, (3, 2, 1, 1, 1), not one per piece (8). */
        assert_int_equal(calls, strcmp(aio, "threads") ? 0 : 5);
    }
    for (size_t i = 0; i < NPIECES; i++) {
        for (uint64_t k = 0; k < pieces[i][1]; k++) {
            if (bufs[i][k] != pattern(pieces[i][0] + k, 0)) {
                fail_msg("%s: piece %zu byte %llu: 0x%x", aio, i,
                         (unsigned long long)k, bufs[i][k]);
            }
        }
    }

    /* Write them back with other bytes: the file holds exactly those. */
    for (size_t i = 0; i < NPIECES; i++) {
        for (uint64_t k = 0; k < pieces[i][1]; k++) {
            bufs[i][k] = pattern(pieces[i][0] + k, 77);
        }
    }
    assert_int_equal(block_pwrite_segments(n, seg, NPIECES, 0), 0);
    assert_int_equal(block_flush(n), 0);
    for (size_t i = 0; i < NPIECES; i++) {
        file_bytes(path, pieces[i][0], pieces[i][1], want);
        assert_memory_equal(want, bufs[i], pieces[i][1]);
    }
    /* Next to a piece, the old bytes. */
    file_bytes(path, 60 * KiB, 4 * KiB, want);
    assert_int_equal(want[4095], pattern(64 * KiB - 1, 0));
    file_bytes(path, 80 * KiB, 4 * KiB, want);
    assert_int_equal(want[0], pattern(80 * KiB, 0));
    assert_int_equal(block_getlength(n), FILE_SIZE);

    block_node_unref(n);
    for (size_t i = 0; i < NPIECES; i++) {
        free(bufs[i]);
    }
    free(want);
    unlink(path);
    free(path);
}

static void
test_segments_io_uring(void **state UNUSED)
{
    segments_roundtrip("io_uring");
}

static void
test_segments_threads(void **state UNUSED)
{
    segments_roundtrip("threads");
}

/*
 * What the core does not hand to the driver at once still works, piece by
 * piece: more pieces than one batch, a piece that is not block aligned
 * (with O_DIRECT: bounced), a read reaching past the end (zeroes), a write
 * on a read-only node (-EPERM), and a driver without the callbacks (raw
 * over the file passes them down; null-co reads zeroes).
 */
static void
test_segments_fallback(void **state UNUSED)
{
    char *path = make_file();
    struct block_node *n = open_file(path, "io_uring", false);
    struct block_node *ro = open_file(path, "threads", true);
    enum { MANY = BLOCK_MAX_SEGMENTS * 2 + 3 };
    struct block_segment seg[MANY];
    unsigned char *buf = xmalloc_page(MANY * 8 * KiB);
    unsigned char *odd = xmalloc_page(8 * KiB);
    struct err *e = NULL;
    struct block_node *null;

    /* Every other 4 KiB, in reverse order: no two are neighbours. */
    for (unsigned i = 0; i < MANY; i++) {
        seg[i] = (struct block_segment){ (MANY - 1 - i) * 8 * KiB, 4 * KiB,
                                         buf + i * 4 * KiB };
    }
    assert_int_equal(block_pread_segments(n, seg, MANY, 0), 0);
    for (unsigned i = 0; i < MANY; i++) {
        uint64_t off = (MANY - 1 - i) * 8 * KiB;

        assert_int_equal(buf[i * 4 * KiB], pattern(off, 0));
        assert_int_equal(buf[i * 4 * KiB + 4095], pattern(off + 4095, 0));
    }

    /* Unaligned (offset 100, 1000 bytes) beside an aligned piece, and
     * one that reaches 4 KiB past the end. */
    seg[0] = (struct block_segment){ 100, 1000, odd + 1 };
    seg[1] = (struct block_segment){ 128 * KiB, 4 * KiB, buf };
    seg[2] = (struct block_segment){ FILE_SIZE - 4 * KiB, 8 * KiB,
                                     buf + 4 * KiB };
    assert_int_equal(block_pread_segments(n, seg, 3, 0), 0);
    assert_int_equal(odd[1], pattern(100, 0));
    assert_int_equal(odd[1000], pattern(1099, 0));
    assert_int_equal(buf[0], pattern(128 * KiB, 0));
    assert_int_equal(buf[4 * KiB], pattern(FILE_SIZE - 4 * KiB, 0));
    assert_true(buffer_is_zero(buf + 8 * KiB, 4 * KiB));

    memset(odd, 0xab, 1000);
    seg[0] = (struct block_segment){ 5000, 1000, odd };
    seg[1] = (struct block_segment){ 200 * KiB, 4 * KiB, odd };
    assert_int_equal(block_pwrite_segments(n, seg, 2, 0), 0);
    file_bytes(path, 4999, 1002, buf);
    assert_int_equal(buf[0], pattern(4999, 0));
    assert_int_equal(buf[1], 0xab);
    assert_int_equal(buf[1000], 0xab);
    assert_int_equal(buf[1001], pattern(6000, 0));
    assert_int_equal(block_pwrite_segments(ro, seg + 1, 1, 0), -EPERM);
    assert_int_equal(block_pwrite_segments(ro, seg, 2, 0), -EPERM);

    null = block_node_new_keyval("driver=null-co,size=1M,read-zeroes=on",
                                 &e);
    assert_non_null(null);
    memset(buf, 1, 8 * KiB);
    seg[0] = (struct block_segment){ 0, 4 * KiB, buf };
    seg[1] = (struct block_segment){ 64 * KiB, 4 * KiB, buf + 4 * KiB };
    assert_int_equal(block_pread_segments(null, seg, 2, 0), 0);
    assert_true(buffer_is_zero(buf, 8 * KiB));
    block_node_unref(null);

    block_node_unref(ro);
    block_node_unref(n);
    free(buf);
    free(odd);
    unlink(path);
    free(path);
}

/* ---- qcow2 over clusters scattered on the host ------------------------ */

#define CL (4 * KiB)
#define NCL 80      /* more than two batches of pieces */

static unsigned char
cl_byte(uint64_t c, unsigned round)
{
    return (unsigned char)(c * 3 + round * 101 + 1);
}

static struct block_node *
open_qcow2(const char *path, const char *aio)
{
    bool direct;
    struct err *e = NULL;
    char *kv;
    struct block_node *n;

    dir(&direct);
    kv = xasprintf("driver=qcow2,file.driver=file,file.filename=%s,"
                   "file.aio=%s,file.cache.direct=%s", path, aio,
                   direct ? "on" : "off");
    n = block_node_new_keyval(kv, &e);
    if (!n) {
        fail_msg("%s: %s", kv, e->msg);
    }
    free(kv);
    return n;
}

/* Guest clusters [0, NCL) hold cl_byte(c, round) whole. */
static void
check_clusters(struct block_node *n, unsigned round)
{
    unsigned char *buf = xmalloc_page(NCL * CL);

    /* One read over all of them: pieces of one cluster each. */
    assert_int_equal(block_pread(n, 0, NCL * CL, buf, 0), 0);
    for (uint64_t c = 0; c < NCL; c++) {
        for (uint64_t k = 0; k < CL; k++) {
            if (buf[c * CL + k] != cl_byte(c, round)) {
                fail_msg("round %u cluster %llu byte %llu: 0x%x", round,
                         (unsigned long long)c, (unsigned long long)k,
                         buf[c * CL + k]);
            }
        }
    }
    free(buf);
}

/*
 * Clusters written last to first lie on the host in the opposite order:
 * a guest read over them is NCL pieces (batches of BLOCK_MAX_SEGMENTS),
 * a guest write over them rewrites NCL clusters in place, batched the
 * same way; a write that also allocates new clusters sends its batch
 * before the allocation.  qemu-img check stays clean.
 */
static void
qcow2_scattered(const char *aio)
{
    bool direct;
    char *path = xasprintf("%s/lockstep-batch-q-XXXXXX", dir(&direct));
    struct qcow2_create_opts o = { .cluster_size = CL };
    unsigned char *buf = xmalloc_page((NCL + 8) * CL);
    struct err *e = NULL;
    struct block_node *f, *n;
    char *cmd;
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    close(fd);
    f = open_file(path, "threads", false);
    assert_int_equal(qcow2_create(f, 16 * MiB, &o, &e), 0);
    block_node_unref(f);

    n = open_qcow2(path, aio);
    for (uint64_t c = NCL; c-- > 0;) {
        memset(buf, cl_byte(c, 0), CL);
        assert_int_equal(block_pwrite(n, c * CL, CL, buf, 0), 0);
    }
    check_clusters(n, 0);

    /* In place over all of them, then past them into new clusters. */
    for (uint64_t c = 0; c < NCL; c++) {
        memset(buf + c * CL, cl_byte(c, 1), CL);
    }
    assert_int_equal(block_pwrite(n, 0, NCL * CL, buf, 0), 0);
    check_clusters(n, 1);
    for (uint64_t c = 0; c < NCL + 8; c++) {
        memset(buf + c * CL, cl_byte(c, 2), CL);
    }
    assert_int_equal(block_pwrite(n, 0, (NCL + 8) * CL, buf, 0), 0);
    check_clusters(n, 2);
    assert_int_equal(block_pread(n, NCL * CL, 8 * CL, buf, 0), 0);
    assert_int_equal(buf[0], cl_byte(NCL, 2));
    assert_int_equal(buf[8 * CL - 1], cl_byte(NCL + 7, 2));
    /* Unaligned for O_DIRECT: through the request layer's bounce. */
    assert_int_equal(block_pread(n, CL - 100, 2 * CL + 200, buf + 1, 0), 0);
    assert_int_equal(buf[1], cl_byte(0, 2));
    assert_int_equal(buf[101], cl_byte(1, 2));
    assert_int_equal(buf[2 * CL + 200], cl_byte(3, 2));
    block_node_unref(n);

    if (system("qemu-img --version >/dev/null 2>&1") == 0) {
        cmd = xasprintf("qemu-img check -q '%s'", path);
        assert_int_equal(system(cmd), 0);
        free(cmd);
    }
    unlink(path);
    free(path);
    free(buf);
}

static void
test_qcow2_scattered_io_uring(void **state UNUSED)
{
    qcow2_scattered("io_uring");
}

static void
test_qcow2_scattered_threads(void **state UNUSED)
{
    qcow2_scattered("threads");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segments_io_uring),
        cmocka_unit_test(test_segments_threads),
        cmocka_unit_test(test_segments_fallback),
        cmocka_unit_test(test_qcow2_scattered_io_uring),
        cmocka_unit_test(test_qcow2_scattered_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
