/* SPDX-License-Identifier: MIT */
/*
 * QMP commands of quorum and replication (x-blockdev-change,
 * xen-set-replication, query-xen-replication-status,
 * xen-colo-do-checkpoint and their replication-* spellings) and of plain
 * node maintenance (block_resize, query-block).  The work is done by the
 * drivers' control APIs and, for a failover, by a commit job
 * (failover_start(), job/commit.h): stopping replication with failover
 * returns once the job runs.  This file adapts the QMP arguments.  Main
 * thread.
 */
#include <string.h>

#include "block/filter/quorum.h"
#include "block/filter/replication.h"
#include "job/commit.h"
#include "job/job.h"
#include "lockstep/block.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

static json_t *
x_blockdev_change_cmd(const struct qmp_args_x_blockdev_change *a,
                      struct err **errp)
{
    const char *parent = a->parent;
    bool has_child = a->child != NULL;
    bool has_node = a->node != NULL;
    struct block_node *removed = NULL;
    bool ok;

    /* QEMU's checks, in QEMU's order and words. */
    if (!block_node_find(parent)) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'", parent,
                 parent);
        return NULL;
    }
    if (has_child == has_node) {
        err_setf(errp, has_child ? "The parameters child and node are in "
                 "conflict" : "Either child or node must be specified");
        return NULL;
    }
    block_drain_begin();
    if (has_child) {
        struct block_child *c = block_node_child(block_node_find(parent),
                                                 a->child);

        removed = c ? c->node : NULL;
        if (removed) {
            block_node_ref(removed);
        }
    }
    ok = qmp_x_blockdev_change(parent, a->child, a->node, errp);
    /* A lost secondary: in the same drained section, start recording what
     * it misses (docs/replication.md "Resync"). */
    if (ok && removed &&
        replication_primary_detach(removed, block_node_find(parent),
                                   errp) < 0) {
        ok = false;
    }
    if (removed) {
        block_node_unref(removed);
    }
    block_drain_end();
    return ok ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_x_blockdev_change_cmd, x_blockdev_change_cmd,
                  struct qmp_args_x_blockdev_change);

/* Stop one node; a secondary's failover (or the retry of a failed one,
 * whatever failover says) starts the failover job. */
static bool
stop_one(struct block_node *node, bool failover, struct err **errp)
{
    enum replication_stage stage = replication_get_stage(node);

    if (stage == REPLICATION_STAGE_FAILOVER_FAILED ||
        (stage == REPLICATION_STAGE_RUNNING && failover &&
         replication_get_mode(node) == REPLICATION_MODE_SECONDARY)) {
        return failover_start(node, errp);
    }
    return replication_stop(node, errp) == 0;
}

bool
replication_stop_all(bool failover, struct err **errp)
{
    for (struct block_node *n = replication_next(NULL); n;
         n = replication_next(n)) {
        if (!stop_one(n, failover, errp)) {
            return false;
        }
    }
    return true;
}

bool
qmp_xen_set_replication(bool enable, bool primary, bool has_failover,
                        bool failover, struct err **errp)
{
    if (enable) {
        if (has_failover) {
            err_setf(errp, "Parameter 'failover' is only for stopping "
                     "replication");
            return false;
        }
        return replication_start_all(primary, errp);
    }
    /* QEMU drops the errors of a failover stop; the status shows them. */
    if (!replication_stop_all(failover, failover ? NULL : errp)) {
        return failover;
    }
    return true;
}

json_t *
replication_status(void)
{
    for (struct block_node *n = replication_next(NULL); n;
         n = replication_next(n)) {
        struct err *err = NULL;

        if (replication_get_error(n, &err) < 0) {
            json_t *ret = json_pack("{s:b, s:s}", "error", 1, "desc",
                                    err ? err->msg : "I/O error occurred");

            err_free(err);
            return ret;
        }
    }
    return json_pack("{s:b}", "error", 0);
}

static json_t *
xen_set_replication_cmd(const struct qmp_args_xen_set_replication *a,
                        struct err **errp)
{
    if (!qmp_xen_set_replication(a->enable, a->primary, a->has_failover,
                                 a->has_failover && a->failover, errp)) {
        return NULL;
    }
    return json_object();
}
QMP_TYPED_HANDLER(qmp_xen_set_replication_cmd, xen_set_replication_cmd,
                  struct qmp_args_xen_set_replication);

/* replication-start {primary}: xen-set-replication enable=true. */
static json_t *
replication_start_cmd(const struct qmp_args_replication_start *a,
                      struct err **errp)
{
    return qmp_xen_set_replication(true, a->primary, false, false, errp)
           ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_replication_start, replication_start_cmd,
                  struct qmp_args_replication_start);

/* replication-stop {failover?}: errors of a failover are reported. */
static json_t *
replication_stop_cmd(const struct qmp_args_replication_stop *a,
                     struct err **errp)
{
    return replication_stop_all(a->has_failover && a->failover, errp)
           ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_replication_stop, replication_stop_cmd,
                  struct qmp_args_replication_stop);

json_t *
qmp_query_xen_replication_status(json_t *args UNUSED,
                                 struct err **errp UNUSED)
{
    return replication_status();
}

/*
 * query-replication: query-xen-replication-status, and while a failover
 * job exists, "failover": its progress, one entry per replication node
 * that has one.
 */
json_t *
qmp_query_replication(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *ret = replication_status();
    json_t *jobs = json_array();

    for (struct block_node *n = replication_next(NULL); n;
         n = replication_next(n)) {
        CLEANUP_FREE char *id = xasprintf("failover-%s", n->node_name);
        struct job *job = job_find(id);
        struct job_info i;

        if (!job) {
            continue;
        }
        job_get_info(job, &i);
        json_array_append_new(jobs, json_pack(
            "{s:s, s:s, s:s, s:I, s:I}", "node-name", n->node_name,
            "job-id", i.id, "status", job_status_names[i.status],
            "current-progress", (json_int_t)i.current_progress,
            "total-progress", (json_int_t)i.total_progress));
        free(i.error);
    }
    if (json_array_size(jobs)) {
        json_object_set_new(ret, "failover", jobs);
    } else {
        json_decref(jobs);
    }
    return ret;
}

json_t *
qmp_xen_colo_do_checkpoint(json_t *args UNUSED, struct err **errp)
{
    return replication_checkpoint_all(errp) ? json_object() : NULL;
}

/*
 * block_resize {device?, node-name?, size}: qemu-storage-daemon has no
 * named devices, so only node-name finds anything.  As in QEMU: a node a
 * job uses cannot be resized ("Device '...' is in use", naming the device
 * argument, "(null)" when there is none, as QEMU prints it), and the
 * resize runs through a block backend of its own that takes "resize", so
 * that any user who does not share it (an export, a copy-before-write
 * filter, a format above the node) refuses with a permission conflict.
 */
static json_t *
block_resize_cmd(const struct qmp_args_block_resize *a, struct err **errp)
{
    const char *device = a->device;
    const char *name = a->node_name;
    int64_t size = a->size;
    struct block_node *node = name ? block_node_find(name) : NULL;
    struct block_handle *h;
    int ret;

    if (!node) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'",
                 device ? device : "", name ? name : "");
        return NULL;
    }
    if (size < 0) {
        err_setf(errp, "Parameter 'size' expects a >0 size");
        return NULL;
    }
    if (block_node_op_blocked(node, NULL)) {
        err_setf(errp, "Device '%s' is in use", device ? device : "(null)");
        return NULL;
    }
    h = block_handle_new(node, "block_resize", BLOCK_PERM_RESIZE,
                         BLOCK_PERM_ALL, errp);
    if (!h) {
        return NULL;
    }
    if (node->read_only) {
        err_setf(errp, "Image is read-only");
        block_handle_free(h);
        return NULL;
    }
    block_drain_begin();
    ret = block_truncate(node, (uint64_t)size, errp);
    block_drain_end();
    block_handle_free(h);
    return ret < 0 ? NULL : json_object();
}
QMP_TYPED_HANDLER(qmp_block_resize, block_resize_cmd,
                  struct qmp_args_block_resize);

/* QEMU lists named block backends (guest devices); a storage daemon has
 * none, so this is always empty, as qemu-storage-daemon's. */
json_t *
qmp_query_block(json_t *args UNUSED, struct err **errp UNUSED)
{
    return json_array();
}
