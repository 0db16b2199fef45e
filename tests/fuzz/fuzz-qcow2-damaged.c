/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the qcow2 metadata write path on damaged images:
 * the input is an image file.  It is opened read-write through the block
 * layer ("backing": null) and written so that the driver allocates
 * clusters and L2 tables, updates refcounts, writes back both caches, grows
 * the L1 and refcount tables and frees clusters: writes near the start, in
 * the middle and at the end of the disk, write-zeroes, a discard, a flush,
 * a grow and a write into the new area, and the close.
 *
 * The oracles are the promise "never make a damaged image worse": an
 * image the driver could open read-only before still opens afterwards (it
 * may be marked corrupt), and when "check -r all" (qcow2_check(), the
 * engine of lockstep-img check) can repair a copy of the input, it also
 * repairs what the driver left.  Writes through damaged metadata would break that (a new L2
 * entry written over the refcount table, a refcount block over an L2
 * table, a table discarded); the overlap check must mark the image corrupt
 * first.  A violation aborts with both check results; crashes, sanitizer
 * reports and hangs are bugs as in fuzz-qcow2.  Seeds:
 * seeds-fuzz-qcow2-damaged.sh.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block/format/qcow2/qcow2-check.h"
#include "block/format/qcow2/qcow2.h"
#include "lockstep/block.h"
#include "util.h"

#define BUF_BYTES (128 * 1024)
/* The virtual size the writes reach at most; the rest of a huge disk
 * only costs time. */
#define SPAN_MAX (1ULL << 40)
/* Files longer than this after the writes are not checked (time). */
#define CHECK_MAX (256LL * 1024 * 1024)

/* A memfd holding len bytes of data; -1 on failure. */
static int
memfd_with(const uint8_t *data, size_t len)
{
    int fd = memfd_create("fuzz-qcow2-damaged", 0);

    if (fd >= 0 && write_full(fd, data, len) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static struct block_node *
open_fd(int fd, const char *driver, bool read_only)
{
    char path[64];
    struct err *e = NULL;
    struct block_node *node;
    json_t *opts;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (!strcmp(driver, "file")) {
        opts = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    } else {
        /* discard=unmap: freed clusters are discarded in the file too. */
        opts = json_pack("{s:s, s:b, s:s, s:n, s:{s:s, s:s}}", "driver",
                         "qcow2", "read-only", read_only, "discard", "unmap",
                         "backing", "file", "driver", "file", "filename",
                         path);
    }
    node = block_node_new(opts, &e);
    json_decref(opts);
    err_free(e);
    return node;
}

/* Does the driver open the image in fd read-only? */
static bool
opens(int fd)
{
    struct block_node *node = open_fd(fd, "qcow2", true);

    block_node_unref(node);
    return node != NULL;
}

/*
 * Does "check -r all" on the image in fd leave no corruptions or check
 * errors?  (Leaks may stay: they harm nothing.)  Repairs fd in place.
 * *found: the corruptions the repair found; *after: the counters of the
 * check after the repair.
 */
static bool
repairable(int fd, int64_t *found, struct block_check_result *after)
{
    struct block_node *file = open_fd(fd, "file", false);
    struct err *e = NULL;
    bool ok = false;

    memset(after, 0, sizeof(*after));
    *found = 0;
    if (file &&
        qcow2_check(file, BLOCK_CHECK_FIX_LEAKS | BLOCK_CHECK_FIX_ERRORS,
                    NULL, after, &e) == 0) {
        *found = after->corruptions + after->corruptions_fixed;
        if (qcow2_check(file, 0, NULL, after, &e) == 0) {
            ok = !after->corruptions && !after->check_errors;
        }
    }
    err_free(e);
    block_node_unref(file);
    return ok;
}

static void PRINTF_FMT(1, 2)
violation(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "fuzz-qcow2-damaged: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void
exercise_writes(struct block_node *node, uint8_t *buf)
{
    int64_t len = block_getlength(node);
    uint64_t size = len > 0 ? MIN((uint64_t)len, SPAN_MAX) : 0;

    if (size < 4 * BUF_BYTES) {
        return;
    }
    memset(buf, 0x5a, BUF_BYTES);
    block_pwrite(node, 0, 4096, buf, 0);
    block_pwrite(node, 3 * 65536 + 512, 70000, buf, 0);
    block_pwrite(node, size / 2, 4096, buf, 0);
    block_pwrite(node, size - 4096, 4096, buf, 0);
    block_pwrite_zeroes(node, 2 * BUF_BYTES, BUF_BYTES, BLOCK_REQ_MAY_UNMAP);
    block_pdiscard(node, 65536, 65536);
    block_flush(node);
    /* A new L1 table past the old end; then a new L2 table there. */
    if ((uint64_t)len <= SPAN_MAX &&
        block_truncate(node, (uint64_t)len + (1ULL << 30), NULL) == 0) {
        block_pwrite(node, (uint64_t)len + (1ULL << 29), 4096, buf, 0);
    }
    block_pwrite(node, 8192, 4096, buf, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct block_check_result before, after;
    CLEANUP_FREE uint8_t *buf = malloc(BUF_BYTES);
    struct block_node *node;
    struct qcow2_header h;
    bool was_repairable = false, opened = false;
    int64_t found = 0, found_after;
    int fd = memfd_with(data, size);

    block_graph_enter();
    if (fd >= 0) {
        opened = opens(fd);
        was_repairable = repairable(fd, &found, &before);
        close(fd);
    }
    /*
     * A cluster in use whose refcount says 0 ends up shared once the
     * allocator hands it out again (neither we nor QEMU can know without
     * walking every L2 table), and with 1- or 2-bit refcounts the new count
     * may not fit: check cannot repair that.  Damaged images with such
     * narrow refcounts are held to the open oracle only.
     */
    if (found && qcow2_header_decode(data, size, &h, NULL) == 0 &&
        h.refcount_order <= 1) {
        was_repairable = false;
    }
    fd = memfd_with(data, size);
    node = fd >= 0 && buf ? open_fd(fd, "qcow2", false) : NULL;
    if (node) {
        exercise_writes(node, buf);
        block_node_unref(node);
        if (opened && !opens(fd)) {
            violation("the writes made the image impossible to open");
        }
        /* A file grown far (sparse) would only cost the check time. */
        if (was_repairable && lseek(fd, 0, SEEK_END) <= CHECK_MAX &&
            !repairable(fd, &found_after, &after)) {
            violation("the writes made a repairable image unrepairable: "
                      "after repair %lld corruptions, %lld check errors "
                      "(before: %lld, %lld)", (long long)after.corruptions,
                      (long long)after.check_errors,
                      (long long)before.corruptions,
                      (long long)before.check_errors);
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    block_graph_leave();
    return 0;
}
