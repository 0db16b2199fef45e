/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the qcow2 driver: the input is an image file.  It is
 * written to a memfd and opened through the block layer, first read-only
 * (reads across the disk and block status), then read-write (a few writes,
 * zero writes, discards, a flush, grow, shrink and make_empty; persistent
 * bitmaps are loaded, marked in use and stored again), with
 * "backing": null so that a fuzzed backing name never opens a real file.  Any crash, sanitizer
 * report or hang is a bug: malformed images must fail with an error.
 * Build with tests/fuzz/build.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lockstep/block.h"
#include "util.h"

/* Cap reads so one input stays fast even with a huge virtual size. */
#define READ_SPAN (8 * 1024 * 1024)
#define READ_CHUNK (256 * 1024)

static struct block_node *
open_image(const char *path, bool read_only)
{
    struct err *e = NULL;
    struct block_node *node;
    json_t *opts = json_pack("{s:s, s:b, s:n, s:{s:s, s:s}}", "driver",
                             "qcow2", "read-only", read_only, "backing",
                             "file", "driver", "file", "filename", path);

    node = block_node_new(opts, &e);
    json_decref(opts);
    err_free(e);
    return node;
}

static void
exercise_reads(struct block_node *node, uint8_t *buf)
{
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t span = size < READ_SPAN ? size : READ_SPAN;
    uint64_t pnum;

    for (uint64_t off = 0; off < span; off += READ_CHUNK) {
        block_pread(node, off, READ_CHUNK, buf, 0);
    }
    for (uint64_t off = 0; off < span; off += pnum) {
        struct block_status_info info;

        if (block_status(node, off, span - off, &pnum, &info) < 0) {
            break;
        }
    }
    /* And the far end of the disk. */
    if (size > READ_CHUNK) {
        block_pread(node, size - READ_CHUNK, READ_CHUNK, buf, 0);
    }
}

static void
exercise_writes(struct block_node *node, uint8_t *buf)
{
    uint64_t size = (uint64_t)block_getlength(node);

    if (size < 2 * READ_CHUNK) {
        return;
    }
    memset(buf, 0xa5, READ_CHUNK);
    block_pwrite(node, 1234, 70000, buf, 0);
    block_pwrite(node, size / 2, 4096, buf, 0);
    block_pwrite_zeroes(node, 65536, 131072, BLOCK_REQ_MAY_UNMAP);
    block_pdiscard(node, 0, 262144);
    block_pread(node, 0, READ_CHUNK, buf, 0);
    block_flush(node);
    /* Resize both ways (bounded), then drop everything. */
    block_truncate(node, size + 1024 * 1024, NULL);
    block_truncate(node, size / 2 / 512 * 512, NULL);
    block_make_empty(node, NULL);
    block_pwrite(node, 4096, 8192, buf, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-qcow2", 0);
    char path[64];
    uint8_t *buf;
    struct block_node *node;

    if (fd < 0) {
        return 0;
    }
    if (write_full(fd, data, size) < 0) {
        close(fd);
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    buf = malloc(READ_CHUNK);
    block_graph_enter();
    node = open_image(path, true);
    if (node) {
        exercise_reads(node, buf);
        block_node_unref(node);
    }
    node = open_image(path, false);
    if (node) {
        exercise_writes(node, buf);
        exercise_reads(node, buf);
        block_node_unref(node);
    }
    block_graph_leave();
    free(buf);
    close(fd);
    return 0;
}
