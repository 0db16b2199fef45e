/* SPDX-License-Identifier: MIT */
/*
 * QMP commands on nodes: blockdev-add, blockdev-del,
 * query-named-block-nodes and x-debug-query-block-graph.  Results have the
 * shape and member names qemu-storage-daemon 7.2 gives for the same nodes.
 * Main thread; graph changes happen inside a drained section, and never
 * while waiting on a remote peer: blockdev-add makes its NBD connections
 * first (block_prepare()), from a thread of its own when the monitor can
 * wait for the response.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

#include "lockstep/block.h"
#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "runtime/loop.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/* The graph step of blockdev-add: quick, drained. */
static json_t *
blockdev_add_prepared(json_t *args, struct block_prep *prep,
                      struct err **errp)
{
    struct block_node *node;

    block_drain_begin();
    node = block_node_new_prepared(args, prep, errp);
    block_drain_end();
    if (!node) {
        return NULL;
    }
    /* The monitor keeps the reference block_node_new() returned until
     * blockdev-del (or shutdown). */
    node->monitor_owned = true;
    return json_object();
}

/*
 * Without a monitor that can wait (tests, --blockdev at startup): connect
 * here, bounded by the driver's timeouts, but still before the drain, so
 * that the graph is never held across a wait on a peer.
 */
json_t *
qmp_blockdev_add(json_t *args, struct err **errp)
{
    struct block_prep *prep = NULL;
    json_t *ret;

    if (block_needs_prepare(args)) {
        prep = block_prepare(args, -1, errp);
        if (!prep) {
            return NULL;
        }
    }
    ret = blockdev_add_prepared(args, prep, errp);
    block_prep_free(prep);
    return ret;
}

/*
 * A blockdev-add whose nodes wait on a remote peer (NBD connects):
 * block_prepare() runs on a thread of its own, then the graph step runs
 * on the main thread and the response goes out.
 */
struct pending_add {
    json_t *args;
    struct qmp_async *done;
    struct block_prep *prep;
    struct err *err;
    int cancel_fd;          /* eventfd: shutdown ends the connects */
    pthread_t thread;
    bool joined;
    LIST_ENTRY(pending_add) link;   /* main thread */
};

static LIST_HEAD(, pending_add) pending_adds =
    LIST_HEAD_INITIALIZER(pending_adds);
static bool adds_cancelled;         /* main thread: shutting down */

static void
pending_add_finish(void *opaque)
{
    struct pending_add *pa = opaque;
    struct err *err = pa->err;
    json_t *ret = NULL;

    if (!pa->joined) {
        pthread_join(pa->thread, NULL);
    }
    LIST_REMOVE(pa, link);
    if (!err && adds_cancelled) {
        err_setf(&err, "blockdev-add cancelled: the daemon is shutting "
                 "down");
    }
    if (!err) {
        ret = blockdev_add_prepared(pa->args, pa->prep, &err);
    }
    qmp_async_done(pa->done, ret, err);
    block_prep_free(pa->prep);
    close(pa->cancel_fd);
    json_decref(pa->args);
    free(pa);
}

static void *
pending_add_thread(void *opaque)
{
    struct pending_add *pa = opaque;

    pa->prep = block_prepare(pa->args, pa->cancel_fd, &pa->err);
    loop_call(pending_add_finish, pa);
    return NULL;
}

json_t *
qmp_blockdev_add_async(json_t *args, struct qmp_async *done,
                       struct err **errp)
{
    struct pending_add *pa;
    int ret;

    if (!block_needs_prepare(args)) {
        return blockdev_add_prepared(args, NULL, errp);
    }
    pa = xzalloc(sizeof(*pa));
    pa->args = json_incref(args);
    pa->done = done;
    pa->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (pa->cancel_fd < 0) {
        err_setf_errno(errp, errno, "Failed to create an eventfd");
        json_decref(pa->args);
        free(pa);
        return NULL;
    }
    ret = pthread_create(&pa->thread, NULL, pending_add_thread, pa);
    if (ret != 0) {
        err_setf_errno(errp, ret, "Failed to start a thread");
        close(pa->cancel_fd);
        json_decref(pa->args);
        free(pa);
        return NULL;
    }
    LIST_INSERT_HEAD(&pending_adds, pa, link);
    return QMP_DEFERRED;
}

void
qmp_blockdev_add_cancel_all(void)
{
    struct pending_add *pa;
    uint64_t one = 1;

    adds_cancelled = true;
    LIST_FOREACH(pa, &pending_adds, link) {
        if (write(pa->cancel_fd, &one, sizeof(one)) < 0) {
            /* the counter is already non-zero */
        }
    }
    /* Each thread ends within a poll round; their finish calls run from
     * the loop's queue later and answer with an error. */
    LIST_FOREACH(pa, &pending_adds, link) {
        pthread_join(pa->thread, NULL);
        pa->joined = true;
    }
}

static json_t *
blockdev_del_cmd(const struct qmp_args_node_name *a, struct err **errp)
{
    const char *name = a->node_name;
    struct block_node *node = block_node_find(name);

    if (!node) {
        err_setf(errp, "Failed to find node with node-name='%s'", name);
        return NULL;
    }
    /* QEMU's order of checks: block backends (exports), jobs, ownership,
     * then other references (parent nodes). */
    if (block_node_has_backend(node)) {
        err_setf(errp, "Node %s is in use", name);
        return NULL;
    }
    if (block_node_op_blocked(node, errp)) {
        return NULL;
    }
    if (!node->monitor_owned) {
        err_setf(errp, "Node %s is not owned by the monitor", name);
        return NULL;
    }
    if (node->refcnt > 1 || !TAILQ_EMPTY(&node->parents)) {
        err_setf(errp, "Block device %s is in use", name);
        return NULL;
    }
    node->monitor_owned = false;
    block_drain_begin();
    block_node_unref(node);
    block_drain_end();
    return json_object();
}
QMP_TYPED_HANDLER(qmp_blockdev_del, blockdev_del_cmd,
                  struct qmp_args_node_name);

/* ---- query-named-block-nodes ------------------------------------------- */

/* Options QEMU leaves out of a json: filename (they do not change what
 * the node reads). */
static bool
is_common_option(const char *key)
{
    static const char *const common[] = {
        "node-name", "discard", "cache", "read-only", "auto-read-only",
        "force-share", "detect-zeroes", NULL,
    };

    for (size_t i = 0; common[i]; i++) {
        if (!strcmp(key, common[i])) {
            return true;
        }
    }
    return false;
}

/* The node as QEMU describes it in a json: filename. */
static json_t *
node_json(struct block_node *node)
{
    json_t *out = json_pack("{s:s}", "driver", node->drv->name);
    struct block_child *c;
    const char *key;
    json_t *v;

    json_object_foreach(node->options, key, v) {
        if (!strcmp(key, "driver") || is_common_option(key) ||
            block_node_child(node, key)) {
            continue;
        }
        json_object_set(out, key, v);
    }
    TAILQ_FOREACH(c, &node->children, child_link) {
        json_object_set_new(out, c->name, node_json(c->node));
    }
    return out;
}

/*
 * QEMU's bs->filename: the storage's plain file name (block_node_filename),
 * else a json: description of the node.
 */
static char *
node_filename_or_json(struct block_node *node)
{
    const char *fn = block_node_filename(node);
    json_t *desc;
    char *dump, *ret;

    if (fn) {
        return xstrdup(fn);
    }
    desc = node_json(node);
    dump = json_dumps(desc, JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    ret = xasprintf("json:%s", dump ? dump : "{}");
    free(dump);
    json_decref(desc);
    return ret;
}

/* QEMU asks the bottom of the "file" chain for image info; null-co has
 * none (no dirty-flag) and reports 0 bytes allocated. */
static bool
bottom_is_null(struct block_node *node)
{
    while (node->file) {
        node = node->file->node;
    }
    return node->drv->no_image_info;
}

static int
backing_depth(struct block_node *node)
{
    int depth = 0;

    for (node = block_skip_filters(node); node && node->backing;
         node = block_skip_filters(node->backing->node)) {
        depth++;
    }
    return depth;
}

/*
 * QEMU prints its dictionaries in hash-table order; emitting members in
 * the same order makes our output byte-identical to qemu-storage-daemon's
 * for scripts that compare text.  Returns a new object with the keys of
 * order first (those present), then any others; obj is consumed.
 */
static json_t *
reorder(json_t *obj, const char *const *order)
{
    json_t *out = json_object();
    const char *key;
    json_t *v;

    for (size_t i = 0; order[i]; i++) {
        if ((v = json_object_get(obj, order[i]))) {
            json_object_set(out, order[i], v);
        }
    }
    json_object_foreach(obj, key, v) {
        if (!json_object_get(out, key)) {
            json_object_set(out, key, v);
        }
    }
    json_decref(obj);
    return out;
}

static const char *const image_order[] = {
    "backing-image", "backing-filename-format", "virtual-size", "filename",
    "cluster-size", "format", "actual-size", "format-specific",
    "full-backing-filename", "backing-filename", "dirty-flag", NULL,
};
static const char *const info_order[] = {
    "iops_rd", "detect_zeroes", "image", "iops_wr", "ro", "node-name",
    "backing_file_depth", "drv", "iops", "bps_wr", "write_threshold",
    "backing_file", "dirty-bitmaps", "encrypted", "bps", "bps_rd", "cache",
    "file", NULL,
};
static const char *const cache_order[] = {
    "no-flush", "direct", "writeback", NULL,
};
static const char *const bitmap_order[] = {
    "name", "recording", "persistent", "busy", "granularity", "count", NULL,
};

static json_t *
image_info(struct block_node *node, bool flat)
{
    json_t *image = json_object();
    CLEANUP_FREE char *fn = node_filename_or_json(node);
    int64_t actual = block_allocated_size(node);

    /* QEMU counts lengths in 512-byte sectors, rounding a file's up. */
    json_object_set_new(image, "virtual-size",
                        json_integer((json_int_t)align_up(node->size, 512)));
    json_object_set_new(image, "filename", json_string(fn));
    json_object_set_new(image, "format", json_string(node->drv->name));
    if (actual >= 0 || bottom_is_null(node)) {
        json_object_set_new(image, "actual-size",
                            json_integer(actual >= 0 ? actual : 0));
    }
    if (!bottom_is_null(node)) {
        /* QEMU reports it for drivers with a get_info, false unless a
         * qcow2 image was not closed cleanly (the format adds that). */
        json_object_set_new(image, "dirty-flag", json_false());
    }
    if (node->drv->query) {
        json_t *extra = json_object();
        json_t *v;

        node->drv->query(node, extra);
        if ((v = json_object_get(extra, "cluster-size"))) {
            json_object_set(image, "cluster-size", v);
        }
        if ((v = json_object_get(extra, "format-specific"))) {
            json_object_set(image, "format-specific", v);
        }
        if ((v = json_object_get(extra, "dirty-flag"))) {
            json_object_set(image, "dirty-flag", v);
        }
        json_decref(extra);
    }
    if (node->backing) {
        CLEANUP_FREE char *bfn = node_filename_or_json(node->backing->node);

        json_object_set_new(image, "backing-filename", json_string(bfn));
        json_object_set_new(image, "full-backing-filename",
                            json_string(bfn));
        json_object_set_new(image, "backing-filename-format",
                            json_string(node->backing->node->drv->name));
        if (!flat) {
            json_object_set_new(image, "backing-image",
                                image_info(node->backing->node, false));
        }
    }
    return reorder(image, image_order);
}

static const char *
detect_zeroes_name(enum block_detect_zeroes dz)
{
    switch (dz) {
    case BLOCK_DETECT_ZEROES_ON:
        return "on";
    case BLOCK_DETECT_ZEROES_UNMAP:
        return "unmap";
    case BLOCK_DETECT_ZEROES_OFF:
        break;
    }
    return "off";
}

/*
 * QMP BlockDirtyInfo, members in the schema's order (QEMU prints them that
 * way): name (absent for anonymous bitmaps), count, granularity,
 * recording, busy, persistent, and inconsistent only when true.
 */
json_t *
qmp_dirty_bitmaps_info(struct block_node *node)
{
    size_t n;
    struct block_dirty_bitmap_info *bms = block_node_dirty_bitmaps(node, &n);
    json_t *list = json_array();

    for (size_t i = 0; i < n; i++) {
        json_t *info = json_object();

        if (bms[i].name) {
            json_object_set_new(info, "name", json_string(bms[i].name));
        }
        json_object_set_new(info, "count",
                            json_integer((json_int_t)bms[i].count));
        json_object_set_new(info, "granularity",
                            json_integer((json_int_t)bms[i].granularity));
        json_object_set_new(info, "recording",
                            json_boolean(bms[i].recording));
        json_object_set_new(info, "busy", json_boolean(bms[i].busy));
        json_object_set_new(info, "persistent",
                            json_boolean(bms[i].persistent));
        if (bms[i].inconsistent) {
            json_object_set_new(info, "inconsistent", json_true());
        }
        json_array_append_new(list, info);
    }
    block_dirty_bitmap_info_free(bms, n);
    return list;
}

static json_t *
node_info(struct block_node *node, bool flat)
{
    json_t *info = json_object();
    json_t *bitmaps;
    CLEANUP_FREE char *fn = node_filename_or_json(node);
    static const char *const zero_fields[] = {
        "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr", NULL,
    };

    /* BlockDeviceInfo, in the schema's member order. */
    json_object_set_new(info, "file", json_string(fn));
    json_object_set_new(info, "node-name", json_string(node->node_name));
    json_object_set_new(info, "ro", json_boolean(node->read_only));
    json_object_set_new(info, "drv", json_string(node->drv->name));
    if (node->backing) {
        CLEANUP_FREE char *bfn = node_filename_or_json(node->backing->node);

        json_object_set_new(info, "backing_file", json_string(bfn));
    }
    /* QEMU does not walk the chain for a flat listing. */
    json_object_set_new(info, "backing_file_depth",
                        json_integer(flat ? 0 : backing_depth(node)));
    json_object_set_new(info, "encrypted", json_false());
    json_object_set_new(info, "detect_zeroes",
                        json_string(detect_zeroes_name(node->detect_zeroes)));
    for (size_t i = 0; zero_fields[i]; i++) {
        json_object_set_new(info, zero_fields[i], json_integer(0));
    }
    json_object_set_new(info, "image", image_info(node, flat));
    json_object_set_new(info, "cache",
                        reorder(json_pack("{s:b, s:b, s:b}", "writeback", 1,
                                          "direct", node->cache_direct,
                                          "no-flush", node->cache_no_flush),
                                cache_order));
    json_object_set_new(info, "write_threshold", json_integer(0));
    bitmaps = qmp_dirty_bitmaps_info(node);
    if (json_array_size(bitmaps)) {
        json_t *ordered = json_array();
        size_t i;
        json_t *bm;

        json_array_foreach(bitmaps, i, bm) {
            json_array_append_new(ordered,
                                  reorder(json_incref(bm), bitmap_order));
        }
        json_object_set_new(info, "dirty-bitmaps", ordered);
    }
    json_decref(bitmaps);
    return reorder(info, info_order);
}

static json_t *
query_named_block_nodes_cmd(const struct qmp_args_query_named_block_nodes *a,
                            struct err **errp UNUSED)
{
    bool flat = a->has_flat && a->flat;
    json_t *list = json_array();
    struct block_node *node = NULL;

    /* Newest first, as QEMU lists them. */
    while ((node = block_node_next(node))) {
        json_array_insert_new(list, 0, node_info(node, flat));
    }
    return list;
}
QMP_TYPED_HANDLER(qmp_query_named_block_nodes, query_named_block_nodes_cmd,
                  struct qmp_args_query_named_block_nodes);

/* ---- x-debug-query-block-graph ------------------------------------------ */

static json_t *
perm_list(uint32_t perm)
{
    /* QEMU's BlockPermission names, highest bit first as QEMU lists them. */
    static const struct {
        uint32_t bit;
        const char *name;
    } names[] = {
        { BLOCK_PERM_RESIZE, "resize" },
        { BLOCK_PERM_WRITE_UNCHANGED, "write-unchanged" },
        { BLOCK_PERM_WRITE, "write" },
        { BLOCK_PERM_CONSISTENT_READ, "consistent-read" },
    };
    json_t *list = json_array();

    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (perm & names[i].bit) {
            json_array_append_new(list, json_string(names[i].name));
        }
    }
    return list;
}

static int
node_id(struct block_node *target)
{
    struct block_node *node = NULL;
    int id = 1;

    while ((node = block_node_next(node))) {
        if (node == target) {
            return id;
        }
        id++;
    }
    return 0;
}

/*
 * Users outside the graph (handles) become graph nodes of their own: a
 * job's handles one "block-job" node named after the job, as in QEMU; any
 * other handle an unnamed "block-backend" (what QEMU shows for an
 * export).
 */
struct graph_user {
    const char *job_id;
    int id;
};

static int
user_id(struct block_handle *h, json_t *nodes, struct graph_user **users,
        size_t *nusers, int *next_id)
{
    if (h->job_id) {
        for (size_t i = 0; i < *nusers; i++) {
            if (!strcmp((*users)[i].job_id, h->job_id)) {
                return (*users)[i].id;
            }
        }
        *users = xrealloc(*users, (*nusers + 1) * sizeof(**users));
        (*users)[*nusers].job_id = h->job_id;
        (*users)[*nusers].id = *next_id;
        (*nusers)++;
    }
    json_array_append_new(nodes,
                          json_pack("{s:s, s:s, s:i}", "name",
                                    h->job_id ? h->job_id : "", "type",
                                    h->job_id ? "block-job" : "block-backend",
                                    "id", *next_id));
    return (*next_id)++;
}

json_t *
qmp_x_debug_query_block_graph(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *nodes = json_array();
    json_t *edges = json_array();
    struct block_node *node = NULL;
    struct graph_user *users = NULL;
    size_t nusers = 0;
    int nnodes = 0;
    int next_id;

    while ((node = block_node_next(node))) {
        nnodes++;
    }
    next_id = nnodes + 1;
    node = NULL;
    while ((node = block_node_next(node))) {
        int id = node_id(node);
        struct block_child *c;

        json_array_insert_new(nodes, 0,
                              json_pack("{s:s, s:s, s:i}", "name",
                                        node->node_name, "type",
                                        "block-driver", "id", id));
        TAILQ_FOREACH(c, &node->parents, parent_link) {
            int parent_id;

            if (c->parent_node) {
                parent_id = node_id(c->parent_node);
            } else {
                parent_id = user_id(c->parent_handle, nodes, &users, &nusers,
                                    &next_id);
            }
            json_array_insert_new(edges, 0,
                                  json_pack("{s:s, s:i, s:o, s:o, s:i}",
                                            "name", c->name, "parent",
                                            parent_id, "shared-perm",
                                            perm_list(c->shared), "perm",
                                            perm_list(c->perm), "child",
                                            id));
        }
    }
    free(users);
    return json_pack("{s:o, s:o}", "edges", edges, "nodes", nodes);
}

/* ---- blockdev-reopen ------------------------------------------------------ */

/*
 * What blockdev-reopen can change here: which node a child edge points to
 * ("file", "backing", "target", ...: given as a node-name), and read-only.
 * Every other option must keep its value; options left out keep theirs
 * (QEMU would reset them to their defaults).  That covers the fleecing
 * recipe's use: slipping a filter under a node and taking it out again.
 */
struct reopen_swap {
    struct block_node *node;
    struct block_child *child;
    struct block_node *from, *to;
    bool done;
};

struct reopen_ro {
    struct block_node *node;
    bool read_only;
};

/* Does value v of a common option match the node's current state? */
static bool
common_option_matches(struct block_node *node, const char *key, json_t *v)
{
    const char *s = json_string_value(v);

    if (!strcmp(key, "discard") && s) {
        return node->discard_unmap == (!strcmp(s, "unmap") ||
                                       !strcmp(s, "on"));
    }
    if (!strcmp(key, "detect-zeroes") && s) {
        return !strcmp(s, detect_zeroes_name(node->detect_zeroes));
    }
    if (!strcmp(key, "auto-read-only") && json_is_boolean(v)) {
        return node->auto_read_only == json_is_true(v);
    }
    if (!strcmp(key, "force-share") && json_is_boolean(v)) {
        return node->force_share == json_is_true(v);
    }
    if (!strcmp(key, "cache") && json_is_object(v)) {
        json_t *d = json_object_get(v, "direct");
        json_t *nf = json_object_get(v, "no-flush");

        return (!d || json_is_true(d) == node->cache_direct) &&
               (!nf || json_is_true(nf) == node->cache_no_flush);
    }
    return false;
}

static bool
reopen_check(json_t *o, struct reopen_swap **swaps, size_t *nswaps,
             struct reopen_ro **ros, size_t *nros, struct err **errp)
{
    const char *name = qmp_str(o, "node-name");
    const char *driver = qmp_str(o, "driver");
    struct block_node *node;
    const char *key;
    json_t *v;

    if (!name) {
        err_setf(errp, "node-name not specified");
        return false;
    }
    node = block_node_find(name);
    if (!node) {
        err_setf(errp, "Failed to find node with node-name='%s'", name);
        return false;
    }
    if (!driver) {
        err_setf(errp, "Parameter 'driver' is missing");
        return false;
    }
    if (strcmp(driver, node->drv->name)) {
        err_setf(errp, "Cannot change the option 'driver'");
        return false;
    }
    json_object_foreach(o, key, v) {
        struct block_child *c = block_node_child(node, key);
        json_t *old = json_object_get(node->options, key);

        if (!strcmp(key, "node-name") || !strcmp(key, "driver")) {
            continue;
        }
        if (c) {
            struct block_node *to;

            if (!json_is_string(v)) {
                err_setf(errp, "Cannot change the option '%s'", key);
                return false;
            }
            to = block_node_find(json_string_value(v));
            if (!to) {
                err_setf(errp, "Cannot find device='' nor node-name='%s'",
                         json_string_value(v));
                return false;
            }
            if (to != c->node) {
                *swaps = xrealloc(*swaps, (*nswaps + 1) * sizeof(**swaps));
                (*swaps)[*nswaps] = (struct reopen_swap) {
                    .node = node, .child = c, .from = c->node, .to = to,
                };
                (*nswaps)++;
            }
            continue;
        }
        if (!strcmp(key, "read-only")) {
            if (!json_is_boolean(v)) {
                err_setf(errp, "Invalid parameter type for 'read-only', "
                         "expected: boolean");
                return false;
            }
            if (json_is_true(v) != node->read_only) {
                *ros = xrealloc(*ros, (*nros + 1) * sizeof(**ros));
                (*ros)[*nros] = (struct reopen_ro) {
                    .node = node, .read_only = json_is_true(v),
                };
                (*nros)++;
            }
            continue;
        }
        if (old ? json_equal(old, v) : common_option_matches(node, key, v)) {
            continue;
        }
        err_setf(errp, "Cannot change the option '%s'", key);
        return false;
    }
    return true;
}

static json_t *
blockdev_reopen_cmd(const struct qmp_args_blockdev_reopen *a,
                    struct err **errp)
{
    struct reopen_swap *swaps = NULL;
    struct reopen_ro *ros = NULL;
    size_t nswaps = 0, nros = 0, i;
    bool ok = true;

    for (i = 0; i < a->n_options; i++) {
        if (!reopen_check(a->options[i], &swaps, &nswaps, &ros, &nros,
                          errp)) {
            free(swaps);
            free(ros);
            return NULL;
        }
    }
    /* All swaps in one drained section, so that permissions are checked
     * against the new graph as a whole step by step, as QEMU does. */
    block_drain_begin();
    for (i = 0; i < nswaps && ok; i++) {
        block_node_ref(swaps[i].from);
        if (block_child_replace_node(swaps[i].child, swaps[i].to, errp) < 0) {
            block_node_unref(swaps[i].from);
            ok = false;
            break;
        }
        swaps[i].done = true;
    }
    for (i = 0; i < nros && ok; i++) {
        if (block_node_set_read_only(ros[i].node, ros[i].read_only,
                                     errp) < 0) {
            ok = false;
        }
    }
    for (i = nswaps; i-- > 0;) {
        if (!swaps[i].done) {
            continue;
        }
        if (!ok) {
            /* Undo: the old edges were valid before. */
            block_child_replace_node(swaps[i].child, swaps[i].from, NULL);
        } else {
            json_object_set_new(swaps[i].node->options,
                                swaps[i].child->name,
                                json_string(swaps[i].to->node_name));
        }
        block_node_unref(swaps[i].from);
    }
    block_drain_end();
    free(swaps);
    free(ros);
    return ok ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_blockdev_reopen, blockdev_reopen_cmd,
                  struct qmp_args_blockdev_reopen);
