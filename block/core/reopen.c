/* SPDX-License-Identifier: MIT */
/*
 * Switching a node between read-only and read-write in place: the
 * smallest reopen that replication needs (its hidden disk is opened as a
 * backing child, read-only by default, and must take copy-before-write
 * data while replication runs; QEMU reopens it read-write at start).
 *
 * How: inside a drained section the driver is closed, the node's children
 * are detached (inline children are freed, so their files and image locks
 * go), and the driver is opened again from the node's stored options with
 * the new read-only flag; inline children are opened again and inherit
 * it, children given by node-name are attached again.  The node keeps its
 * identity: name, parents, dirty bitmaps.  If the new open fails, the node
 * is opened again as it was.
 *
 * Limits: children opened inline with their own "node-name" must not be
 * used by anyone else (they are recreated under the same name), and a
 * driver's runtime state (caches) starts afresh.
 */
#include <errno.h>
#include <string.h>

#include "lockstep/block.h"
#include "util.h"

/* Close, detach, open again with read_only.  Drained. */
static int
reopen_as(struct block_node *node, bool read_only, struct err **errp)
{
    struct block_child *c;
    int64_t len;
    int ret;

    if (node->drv->close) {
        node->drv->close(node);
    }
    while ((c = TAILQ_FIRST(&node->children))) {
        block_node_detach_child(node, c);
    }
    if (node->drv->state_size) {
        memset(node->opaque, 0, node->drv->state_size);
    }
    memset(&node->limits, 0, sizeof(node->limits));
    node->limits.request_alignment = 1;
    node->limits.mem_alignment = 1;
    node->read_only = read_only;
    json_object_set_new(node->options, "read-only", json_boolean(read_only));
    ret = node->drv->open(node, node->options, errp);
    if (ret < 0) {
        return ret;
    }
    if (node->limits.request_alignment == 0) {
        node->limits.request_alignment = 1;
    }
    if (node->limits.mem_alignment == 0) {
        node->limits.mem_alignment = 1;
    }
    len = node->drv->getlength ? node->drv->getlength(node) :
          (node->file ? block_getlength(node->file->node) : 0);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Could not get the length of '%s'",
                       node->node_name);
        if (node->drv->close) {
            node->drv->close(node);
        }
        while ((c = TAILQ_FIRST(&node->children))) {
            block_node_detach_child(node, c);
        }
        return (int)len;
    }
    __atomic_store_n(&node->size, (uint64_t)len, __ATOMIC_RELAXED);
    return 0;
}

int
block_node_set_read_only(struct block_node *node, bool read_only,
                         struct err **errp)
{
    struct block_child *c;
    struct err *local = NULL;
    int ret;

    if (node->read_only == read_only) {
        return 0;
    }
    if (read_only) {
        TAILQ_FOREACH(c, &node->parents, parent_link) {
            if (c->perm & (BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE)) {
                CLEANUP_FREE char *desc = block_child_parent_desc(c);

                err_setf(errp, "Block node '%s' is written by %s",
                         node->node_name, desc);
                return -EBUSY;
            }
        }
    }
    block_drain_begin();
    ret = reopen_as(node, read_only, &local);
    if (ret < 0) {
        struct err *again = NULL;

        /* What worked before works again (same options, same files). */
        if (reopen_as(node, !read_only, &again) < 0) {
            err_prepend(&local, "Cannot reopen '%s' (and reopening it as "
                        "before failed: %s): ", node->node_name,
                        again ? again->msg : "unknown error");
        }
        err_free(again);
        err_propagate(errp, local);
    }
    block_drain_end();
    return ret;
}
