/* SPDX-License-Identifier: MIT */
/*
 * The "snapshot-access" driver: a read-only view of the frozen point-in-time
 * content of a copy-before-write node (its "file" child), for an NBD export
 * or a backup job.  Reads, block status and discard go to the cbw node's
 * snapshot API (block/filter/copy-before-write.h); writes and write-zeroes
 * fail with -ENOTSUP; ranges the snapshot may not read fail with -EACCES
 * (the NBD server reports that as NBD_EINVAL, as QEMU does).
 *
 * As in QEMU it is not a filter (its child is its data, not something it
 * passes requests to), so the node counts as a layer of its own: its kind
 * is BLOCK_KIND_FORMAT, and generic code that skips filters stops here.
 * It takes no permission on its child and shares everything.  Discard
 * reaches the driver only with discard=unmap on this node (the core drops
 * it otherwise), as in QEMU.
 *
 * No state and no locks of its own.
 */
#include <errno.h>

#include "block/filter/copy-before-write.h"
#include "lockstep/driver.h"
#include "util.h"

static const struct block_opt snapshot_access_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {NULL, 0, false, NULL},
};

/* The filter reads its file through the snapshot API, not as a parent
 * reading the node: it needs nothing and shares everything (QEMU). */
static void
snapshot_access_child_perm(struct block_node *node UNUSED,
                           const char *child_name UNUSED,
                           uint32_t parent_perm UNUSED,
                           uint32_t parent_shared UNUSED, uint32_t *perm,
                           uint32_t *shared)
{
    *perm = 0;
    *shared = BLOCK_PERM_ALL;
}

static int
snapshot_access_open(struct block_node *node, json_t *options,
                     struct err **errp)
{
    struct block_node *cbw;

    if (!block_node_open_child(node, options, "file", errp)) {
        return -EINVAL;
    }
    cbw = node->file->node;
    if (!cbw_is_cbw(cbw)) {
        err_setf(errp, "Node '%s' does not provide the snapshot-access API "
                 "(it is not a copy-before-write node)", cbw->node_name);
        return -ENOTSUP;
    }
    node->limits = cbw->limits;
    node->limits.max_transfer = 0;
    return 0;
}

static int64_t
snapshot_access_getlength(struct block_node *node)
{
    return block_getlength(node->file->node);
}

static int
snapshot_access_pread(struct block_node *node, uint64_t offset,
                      uint64_t bytes, void *buf, unsigned flags)
{
    if (flags & ~(BLOCK_REQ_SERIALISING | BLOCK_REQ_PROBE)) {
        return -ENOTSUP;
    }
    return cbw_snapshot_pread(node->file->node, offset, bytes, buf);
}

static int
snapshot_access_pwrite(struct block_node *node, uint64_t offset,
                       uint64_t bytes, const void *buf, unsigned flags)
{
    (void)node;
    (void)offset;
    (void)bytes;
    (void)buf;
    (void)flags;
    return -ENOTSUP;
}

static int
snapshot_access_pwrite_zeroes(struct block_node *node, uint64_t offset,
                              uint64_t bytes, unsigned flags)
{
    (void)node;
    (void)offset;
    (void)bytes;
    (void)flags;
    return -ENOTSUP;
}

static int
snapshot_access_pdiscard(struct block_node *node, uint64_t offset,
                         uint64_t bytes)
{
    return cbw_snapshot_pdiscard(node->file->node, offset, bytes);
}

static int
snapshot_access_flush(struct block_node *node)
{
    (void)node;
    return 0;
}

static int
snapshot_access_block_status(struct block_node *node, uint64_t offset,
                             uint64_t bytes, uint64_t *pnum, uint64_t *map,
                             struct block_node **file)
{
    int ret = cbw_snapshot_block_status(node->file->node, offset, bytes,
                                        pnum);

    *map = offset;
    *file = node;
    return ret;
}

const struct block_driver snapshot_access_driver = {
    .name = "snapshot-access",
    .kind = BLOCK_KIND_FORMAT,
    .reads_frozen_view = true,
    .options = snapshot_access_opts,
    .open = snapshot_access_open,
    .getlength = snapshot_access_getlength,
    .pread = snapshot_access_pread,
    .pwrite = snapshot_access_pwrite,
    .pwrite_zeroes = snapshot_access_pwrite_zeroes,
    .pdiscard = snapshot_access_pdiscard,
    .flush = snapshot_access_flush,
    .block_status = snapshot_access_block_status,
    .child_perm = snapshot_access_child_perm,
};
