/* SPDX-License-Identifier: MIT */
/*
 * The "null-co" protocol driver: a disk of a given size that reads zeroes
 * and swallows writes.  For benchmarks: it measures what the protocol and
 * the block layer cost, without storage.
 *
 * Unlike QEMU we return zeroes even with read-zeroes=off: a read must never
 * hand a client whatever an earlier request left in the buffer.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "lockstep/driver.h"
#include "util.h"

struct null_state {
    uint64_t size;
    int64_t latency_ns;
    bool read_zeroes;
};

static const struct block_opt null_opts[] = {
    {"size", BLOCK_OPT_SIZE, false, NULL},
    {"latency-ns", BLOCK_OPT_INT, false, NULL},
    {"read-zeroes", BLOCK_OPT_BOOL, false, NULL},
    {NULL, 0, false, NULL},
};

static int
null_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct null_state *s = node->opaque;
    int64_t latency = block_opt_int(options, "latency-ns", 0);

    if (latency < 0) {
        err_setf(errp, "latency-ns is invalid");
        return -EINVAL;
    }
    s->size = (uint64_t)block_opt_int(options, "size", 1 << 30);
    s->latency_ns = latency;
    s->read_zeroes = block_opt_bool(options, "read-zeroes", false);
    node->supported_write_flags = BLOCK_REQ_FUA;
    node->supported_zero_flags = BLOCK_REQ_FUA | BLOCK_REQ_MAY_UNMAP;
    return 0;
}

static void
null_delay(struct null_state *s)
{
    if (s->latency_ns) {
        sleep_ns((int64_t)s->latency_ns);
    }
}

static int64_t
null_getlength(struct block_node *node)
{
    struct null_state *s = node->opaque;

    return (int64_t)s->size;
}

static int
null_pread(struct block_node *node, uint64_t offset UNUSED, uint64_t bytes,
           void *buf, unsigned flags UNUSED)
{
    null_delay(node->opaque);
    memset(buf, 0, bytes);
    return 0;
}

static int
null_pwrite(struct block_node *node, uint64_t offset UNUSED,
            uint64_t bytes UNUSED, const void *buf UNUSED,
            unsigned flags UNUSED)
{
    null_delay(node->opaque);
    return 0;
}

static int
null_pwrite_zeroes(struct block_node *node, uint64_t offset UNUSED,
                   uint64_t bytes UNUSED, unsigned flags UNUSED)
{
    null_delay(node->opaque);
    return 0;
}

static int
null_pdiscard(struct block_node *node, uint64_t offset UNUSED,
              uint64_t bytes UNUSED)
{
    null_delay(node->opaque);
    return 0;
}

static int
null_block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                  uint64_t *pnum, uint64_t *map, struct block_node **file)
{
    struct null_state *s = node->opaque;

    *pnum = bytes;
    *map = offset;
    *file = node;
    /* As QEMU: without read-zeroes nothing is promised, so the range
     * counts as unallocated (it still reads as zeroes here). */
    return BLOCK_STATUS_OFFSET_VALID | (s->read_zeroes ? BLOCK_STATUS_ZERO : 0);
}

static const char *const null_filename_prefixes[] = {
    "null-co://", "null-aio://", NULL,
};

static json_t *
null_parse_filename(const char *filename, struct err **errp)
{
    (void)filename;
    (void)errp;
    return json_pack("{s:s}", "driver", "null-co");
}

const struct block_driver null_co_driver = {
    .name = "null-co",
    .kind = BLOCK_KIND_PROTOCOL,
    .state_size = sizeof(struct null_state),
    .no_image_info = true,
    .options = null_opts,
    .open = null_open,
    .getlength = null_getlength,
    .pread = null_pread,
    .pwrite = null_pwrite,
    .pwrite_zeroes = null_pwrite_zeroes,
    .pdiscard = null_pdiscard,
    .block_status = null_block_status,
    .filename_prefixes = null_filename_prefixes,
    .parse_filename = null_parse_filename,
};
