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
 * Limits: a child opened inline must not be used by anyone else (it is
 * opened again, under the same name); the reopen is refused otherwise.
 * Children given by node-name are kept alive and attached again.  A
 * driver's runtime state (caches) starts afresh.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/core-internal.h"
#include "lockstep/driver.h"
#include "runtime/loop.h"
#include "util.h"

/* Close, detach, open again with read_only.  Drained. */
static int
reopen_as(struct block_node *node, bool read_only, struct err **errp)
{
    struct block_child *c;
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
    ret = block_node_open_finish(node, errp);
    if (ret < 0) {
        while ((c = TAILQ_FIRST(&node->children))) {
            block_node_detach_child(node, c);
        }
    }
    return ret;
}

/* Does options name node_name as a child (a string value, also inside
 * lists)? */
static bool
options_name_node(json_t *options, const char *node_name)
{
    const char *key;
    json_t *v;

    json_object_foreach(options, key, v) {
        if (json_is_string(v) && !strcmp(json_string_value(v), node_name)) {
            return true;
        }
        if (json_is_array(v)) {
            size_t i;
            json_t *e;

            json_array_foreach(v, i, e) {
                if (json_is_string(e) &&
                    !strcmp(json_string_value(e), node_name)) {
                    return true;
                }
            }
        }
    }
    return false;
}

static size_t
parent_count(struct block_node *node)
{
    struct block_child *c;
    size_t n = 0;

    TAILQ_FOREACH(c, &node->parents, parent_link) {
        n++;
    }
    return n;
}

int
block_node_set_read_only(struct block_node *node, bool read_only,
                         struct err **errp)
{
    struct block_child *c;
    struct err *local = NULL;
    struct block_node **keep;
    size_t nkeep = 0, nchildren = 0;
    int ret;

    assert_main_thread();
    if (node->read_only == read_only) {
        return 0;
    }
    /*
     * Children given by node-name are attached again: keep them alive
     * meanwhile.  Children opened inline are opened again, which only
     * works when nobody else uses them.
     */
    TAILQ_FOREACH(c, &node->children, child_link) {
        bool by_name = options_name_node(node->options, c->node->node_name);

        if (!by_name && parent_count(c->node) > 1) {
            err_setf(errp, "Cannot reopen '%s': its child '%s' ('%s') is "
                     "used elsewhere", node->node_name, c->name,
                     c->node->node_name);
            return -EBUSY;
        }
        nchildren++;
    }
    if (read_only) {
        uint32_t perm, shared;

        block_node_cumulative_perm(node, &perm, &shared);
        if (perm & (BLOCK_PERM_WRITE | BLOCK_PERM_WRITE_UNCHANGED)) {
            err_setf(errp, "Read-only block node '%s' cannot support "
                     "read-write users", node->node_name);
            return -EBUSY;
        }
    }
    keep = xcalloc(nchildren ? nchildren : 1, sizeof(*keep));
    TAILQ_FOREACH(c, &node->children, child_link) {
        if (options_name_node(node->options, c->node->node_name)) {
            block_node_ref(c->node);
            keep[nkeep++] = c->node;
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
    for (size_t i = 0; i < nkeep; i++) {
        block_node_unref(keep[i]);
    }
    free(keep);
    return ret;
}
