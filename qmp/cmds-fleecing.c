/* SPDX-License-Identifier: MIT */
/*
 * Filter insertion and the fleecing convenience commands:
 *
 *   x-blockdev-insert-filter {node-name}: a filter node that nothing uses
 *     yet (its "file" child is the node to filter) takes over every other
 *     parent of its file child.  Also a transaction action, so that the
 *     snapshot point of a copy-before-write filter and the bitmap rotation
 *     (block-dirty-bitmap-add/-disable/...) happen at one instant.
 *   x-blockdev-remove-filter {node-name}: the reverse; the filter's parents
 *     go back to its file child.  snapshot-access nodes stay: they read the
 *     filter's frozen view, not its data; but while one does, a
 *     copy-before-write filter refuses writers on its source (QEMU's
 *     permissions), so removing it from under a writing guest is refused
 *     until the snapshot-access node is deleted.  Also a transaction
 *     action.
 *   fleecing-start / fleecing-stop / query-fleecing: the whole pull-mode
 *     recipe of docs/fleecing.md (temp node, copy-before-write filter,
 *     insertion, snapshot-access node, read-only NBD export) in one call,
 *     undone in the right order by fleecing-stop.
 *
 * Main thread.  Graph changes run drained (block_replace_node() and
 * block_child_replace_node() drain themselves; transactions drain around
 * all their actions).
 */
#include <errno.h>
#include <string.h>
#include <sys/queue.h>

#include "lockstep/block.h"
#include "lockstep/driver.h"
#include "export/export.h"
#include "nbd/server.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/* ---- Moving parent edges ------------------------------------------------ */

/* The edges moved by one insertion or removal, to undo it. */
struct moved_edges {
    struct block_node *filter;  /* referenced while the action lives */
    struct block_node *below;   /* its file child, referenced too */
    struct block_moved_edges moved;
};

/* Parents that stay on a filter when it is removed: nodes that read its
 * frozen view (snapshot-access), as their driver declares. */
static bool
stays_on_filter(const struct block_child *c, void *opaque UNUSED)
{
    return c->parent_node && c->parent_node->drv->reads_frozen_view;
}

/* The filter named, checked: a filter driver with a file child. */
static struct block_node *
filter_lookup(const struct qmp_args_node_name *a, struct err **errp)
{
    const char *name = a->node_name;
    struct block_node *f = block_node_find(name);

    if (!f) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'", name);
        return NULL;
    }
    if (f->drv->kind != BLOCK_KIND_FILTER || !f->file) {
        err_setf(errp, "Node '%s' is not a filter with a 'file' child",
                 name);
        return NULL;
    }
    return f;
}

/*
 * Move the parents of f's file child onto f (insert) or f's parents onto
 * its file child (remove), holding references to both nodes until
 * moved_clean().
 */
static bool
move_prepare(struct block_node *f, bool removing, struct moved_edges **state,
             struct err **errp)
{
    struct block_node *below = f->file->node;
    struct moved_edges *m = xcalloc(1, sizeof(*m));

    m->filter = f;
    m->below = below;
    block_node_ref(f);
    block_node_ref(below);
    /* All at once: one by one, the filter would refuse the writers left
     * below it as soon as it had its first parent.  The filter's own
     * file edge stays (it lies below the new node). */
    if (block_replace_node_except(removing ? f : below, removing ? below : f,
                                  removing ? stays_on_filter : NULL, NULL,
                                  &m->moved, errp) < 0) {
        block_node_unref(below);
        block_node_unref(f);
        free(m);
        return false;
    }
    *state = m;
    return true;
}

static bool
insert_prepare_node(struct block_node *f, struct moved_edges **state,
                    struct err **errp)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &f->parents, parent_link) {
        CLEANUP_FREE char *desc = block_child_parent_desc(c);

        err_setf(errp, "Filter '%s' is already in use by %s: only a filter "
                 "without parents can be inserted", f->node_name, desc);
        return false;
    }
    return move_prepare(f, false, state, errp);
}

static bool
insert_prepare(const void *args, void **state, struct err **errp)
{
    struct block_node *f = filter_lookup(args, errp);

    return f && insert_prepare_node(f, (struct moved_edges **)state, errp);
}

static bool
remove_prepare(const void *args, void **state, struct err **errp)
{
    struct block_node *f = filter_lookup(args, errp);

    return f && move_prepare(f, true, (struct moved_edges **)state, errp);
}

static void
moved_commit(void *state UNUSED)
{
}

static void
moved_abort(void *state)
{
    struct moved_edges *m = state;

    block_moved_edges_undo(&m->moved);
}

static void
moved_clean(void *state)
{
    struct moved_edges *m = state;

    block_moved_edges_free(&m->moved);
    block_node_unref(m->below);
    block_node_unref(m->filter);
    free(m);
}

const struct qmp_txn_action qmp_txn_insert_filter = {
    .type = "x-blockdev-insert-filter",
    .args = qmp_args_node_name,
    .prepare = insert_prepare,
    .commit = moved_commit,
    .abort = moved_abort,
    .clean = moved_clean,
};

const struct qmp_txn_action qmp_txn_remove_filter = {
    .type = "x-blockdev-remove-filter",
    .args = qmp_args_node_name,
    .prepare = remove_prepare,
    .commit = moved_commit,
    .abort = moved_abort,
    .clean = moved_clean,
};

static json_t *
insert_filter_cmd(const struct qmp_args_node_name *a, struct err **errp)
{
    return qmp_transaction_run_one(&qmp_txn_insert_filter, a, errp) ?
           json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_x_blockdev_insert_filter, insert_filter_cmd,
                  struct qmp_args_node_name);

static json_t *
remove_filter_cmd(const struct qmp_args_node_name *a, struct err **errp)
{
    return qmp_transaction_run_one(&qmp_txn_remove_filter, a, errp) ?
           json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_x_blockdev_remove_filter, remove_filter_cmd,
                  struct qmp_args_node_name);

/* ---- fleecing-start / fleecing-stop ------------------------------------- */

struct fleecing {
    char *id;
    char *node;          /* the node under the filter */
    char *export_name;
    struct block_node *temp, *cbw, *access;  /* our references */
    bool temp_ours;      /* created by fleecing-start */
    TAILQ_ENTRY(fleecing) link;
};

static TAILQ_HEAD(, fleecing) g_fleecings =
    TAILQ_HEAD_INITIALIZER(g_fleecings);

static struct fleecing *
fleecing_find(const char *id)
{
    struct fleecing *fl;

    TAILQ_FOREACH(fl, &g_fleecings, link) {
        if (!strcmp(fl->id, id)) {
            return fl;
        }
    }
    return NULL;
}

static struct block_node *
new_node(json_t *opts, struct err **errp)
{
    struct block_node *node;

    block_drain_begin();
    node = block_node_new(opts, errp);
    block_drain_end();
    return node;
}

static void
unref_node(struct block_node *node)
{
    if (node) {
        block_drain_begin();
        block_node_unref(node);
        block_drain_end();
    }
}

/*
 * The temp node: an existing node-name, a BlockdevOptions object (node-name
 * defaults to ID-temp), or {"filename", "format"} for an existing image.
 */
static struct block_node *
temp_open(struct fleecing *fl, json_t *temp, struct err **errp)
{
    CLEANUP_FREE char *name = xasprintf("%s-temp", fl->id);
    struct block_node *node;
    json_t *opts;

    if (json_is_string(temp)) {
        node = block_node_find(json_string_value(temp));
        if (!node) {
            err_setf(errp, "Cannot find device='' nor node-name='%s'",
                     json_string_value(temp));
            return NULL;
        }
        block_node_ref(node);
        return node;
    }
    if (!json_is_object(temp)) {
        err_setf(errp, "Invalid parameter type for 'temp', expected: "
                 "string or object");
        return NULL;
    }
    if (json_object_get(temp, "driver")) {
        opts = json_deep_copy(temp);
    } else {
        const char *filename = qmp_str(temp, "filename");
        const char *format = qmp_str(temp, "format");
        const char *key;
        json_t *v;

        json_object_foreach(temp, key, v) {
            if (strcmp(key, "filename") && strcmp(key, "format") &&
                strcmp(key, "node-name")) {
                err_setf(errp, "Parameter 'temp.%s' is unexpected", key);
                return NULL;
            }
        }
        if (!filename) {
            err_setf(errp, "Parameter 'temp.driver' or 'temp.filename' is "
                     "missing");
            return NULL;
        }
        if (!format) {
            format = "raw";
        }
        if (strcmp(format, "raw") && strcmp(format, "qcow2")) {
            err_setf(errp, "Parameter 'temp.format' does not accept value "
                     "'%s'", format);
            return NULL;
        }
        if (qmp_str(temp, "node-name")) {
            free(name);
            name = xstrdup(qmp_str(temp, "node-name"));
        }
        opts = json_pack("{s:s, s:s, s:s, s:{s:s, s:s, s:s}}", "driver",
                         format, "node-name", name, "discard", "unmap",
                         "file", "driver", "file", "filename", filename,
                         "discard", "unmap");
        json_object_set_new(json_object_get(opts, "file"), "node-name",
                            json_sprintf("%s-file", name));
    }
    if (!json_object_get(opts, "node-name")) {
        json_object_set_new(opts, "node-name", json_string(name));
    }
    node = new_node(opts, errp);
    json_decref(opts);
    if (node) {
        fl->temp_ours = true;
    }
    return node;
}

static void
fleecing_free(struct fleecing *fl)
{
    free(fl->id);
    free(fl->node);
    free(fl->export_name);
    free(fl);
}

/*
 * Undo what fleecing-start built, in reverse order; the export is gone.
 * The snapshot-access node goes before the filter comes out: a filter
 * with a parent keeps writers off its source.
 */
static void
fleecing_teardown(struct fleecing *fl, bool inserted)
{
    unref_node(fl->access);
    fl->access = NULL;
    if (inserted) {
        struct moved_edges *m = NULL;
        struct err *err = NULL;

        if (move_prepare(fl->cbw, true, &m, &err)) {
            moved_clean(m);
        } else {
            /* Cannot happen: the parents were on the source before. */
            err_free(err);
        }
    }
    unref_node(fl->access);
    unref_node(fl->cbw);
    unref_node(fl->temp);
    fl->access = fl->cbw = fl->temp = NULL;
}

static json_t *
fleecing_info(struct fleecing *fl)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:b}",
                     "id", fl->id, "node", fl->node,
                     "temp", fl->temp->node_name,
                     "cbw", fl->cbw->node_name,
                     "snapshot-access", fl->access->node_name,
                     "export", fl->id, "export-name", fl->export_name,
                     "temp-created", fl->temp_ours);
}

static json_t *
fleecing_start_cmd(const struct qmp_args_fleecing_start *a,
                   struct err **errp)
{
    const char *id = a->id;
    const char *node_name = a->node;
    const char *export_name = a->export_name;
    bool discard_on = !a->has_discard || a->discard;
    struct block_node *source = block_node_find(node_name);
    struct qmp_args_node_name insert = { NULL };
    struct fleecing *fl;
    struct block_export_options exp;
    struct nbd_export_options exp_nbd;
    struct nbd_export_bitmap exp_bitmap;
    json_t *opts;
    bool ok;

    if (!*id) {
        err_setf(errp, "Parameter 'id' must not be empty");
        return NULL;
    }
    if (fleecing_find(id)) {
        err_setf(errp, "Fleecing '%s' already exists", id);
        return NULL;
    }
    if (!source) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'", node_name);
        return NULL;
    }
    if (!nbd_server_running()) {
        err_setf(errp, "NBD server not running: fleecing-start exports the "
                 "snapshot over NBD, start the server first (nbd-server-start "
                 "or --nbd-server)");
        return NULL;
    }
    fl = xcalloc(1, sizeof(*fl));
    fl->id = xstrdup(id);
    fl->node = xstrdup(node_name);
    fl->export_name = xstrdup(export_name ? export_name : id);

    fl->temp = temp_open(fl, a->temp, errp);
    if (!fl->temp) {
        goto fail;
    }

    /*
     * From the filter's open (which reads the bitmap into the snapshot's
     * access and copy bitmaps) through the insertion and the user's
     * actions, no request may run: a guest write in between would be in
     * the snapshot and in a bitmap rotated by the actions, yet outside
     * what the snapshot may read.
     */
    block_drain_begin();
    opts = json_pack("{s:s, s:s, s:s}", "driver", "copy-before-write",
                     "file", node_name, "target", fl->temp->node_name);
    json_object_set_new(opts, "node-name", json_sprintf("%s-cbw", id));
    if (a->has_bitmap) {
        json_object_set_new(opts, "bitmap",
                            json_pack("{s:s, s:s}", "node", a->bitmap.node,
                                      "name", a->bitmap.name));
    }
    if (a->has_on_cbw_error) {
        json_object_set_new(opts, "on-cbw-error",
                            json_string(cbw_on_error_names[a->on_cbw_error]));
    }
    if (a->has_cbw_timeout) {
        json_object_set_new(opts, "cbw-timeout",
                            json_integer((json_int_t)a->cbw_timeout));
    }
    fl->cbw = new_node(opts, errp);
    json_decref(opts);
    if (!fl->cbw) {
        block_drain_end();
        goto fail;
    }

    /* The snapshot point: the user's actions and the insertion at once. */
    insert.node_name = fl->cbw->node_name;
    ok = qmp_transaction_run(a->actions, a->n_actions, false,
                             &qmp_txn_insert_filter, &insert, errp);
    block_drain_end();
    if (!ok) {
        goto fail;
    }

    opts = json_pack("{s:s, s:s, s:s}", "driver", "snapshot-access",
                     "file", fl->cbw->node_name,
                     "discard", discard_on ? "unmap" : "ignore");
    json_object_set_new(opts, "node-name", json_sprintf("%s-access", id));
    fl->access = new_node(opts, errp);
    json_decref(opts);
    if (!fl->access) {
        goto fail_inserted;
    }

    /* Writable only so that clients can discard: writes fail (ENOTSUP). */
    exp_bitmap.node = a->bitmap.node;
    exp_bitmap.name = a->bitmap.name;
    exp_nbd = (struct nbd_export_options) {
        .name = fl->export_name,
        .bitmaps = &exp_bitmap,
        .n_bitmaps = a->has_bitmap ? 1 : 0,
    };
    exp = (struct block_export_options) {
        .type = "nbd",
        .id = id,
        .node_name = fl->access->node_name,
        .writable = discard_on,
        .driver_opts = &exp_nbd,
    };
    if (!block_export_add(&exp, errp)) {
        goto fail_inserted;
    }
    TAILQ_INSERT_TAIL(&g_fleecings, fl, link);
    return fleecing_info(fl);

fail_inserted:
    fleecing_teardown(fl, true);
    fleecing_free(fl);
    return NULL;
fail:
    fleecing_teardown(fl, false);
    fleecing_free(fl);
    return NULL;
}
QMP_TYPED_HANDLER(qmp_fleecing_start, fleecing_start_cmd,
                  struct qmp_args_fleecing_start);

/*
 * Users of the snapshot besides fleecing-start's own export (a FUSE or
 * NBD export, a job added on the snapshot-access node) would read on
 * after the filter is gone, and get the live disk for what was not
 * copied yet instead of the snapshot: refuse while there are any.
 */
static bool
snapshot_unused(struct fleecing *fl, struct err **errp)
{
    CLEANUP_FREE char *own = xasprintf("export '%s'", fl->id);
    struct block_child *c;

    TAILQ_FOREACH(c, &fl->access->parents, parent_link) {
        /* Handles by their owner ("export 'x'"), which says more than
         * QEMU's "an unnamed block device". */
        CLEANUP_FREE char *desc = c->parent_handle ?
                                  xstrdup(c->parent_handle->owner) :
                                  block_child_parent_desc(c);

        if (strcmp(desc, own) != 0) {
            err_setf(errp, "Node '%s' is in use by %s; remove that first",
                     fl->access->node_name, desc);
            return false;
        }
    }
    return true;
}

static json_t *
fleecing_stop_cmd(const struct qmp_args_fleecing_stop *a, struct err **errp)
{
    const char *id = a->id;
    struct fleecing *fl = fleecing_find(id);
    struct err *err = NULL;

    if (!fl) {
        err_setf(errp, "Fleecing '%s' not found", id);
        return NULL;
    }
    if (!snapshot_unused(fl, errp)) {
        return NULL;
    }
    /* Hard: clients are disconnected and their requests finished. */
    if (!block_export_del(id, BLOCK_EXPORT_REMOVE_HARD, &err)) {
        /* Already deleted by block-export-del: go on with the nodes. */
        if (!strstr(err->msg, "is not found")) {
            err_propagate(errp, err);
            return NULL;
        }
        err_free(err);
    }
    TAILQ_REMOVE(&g_fleecings, fl, link);
    fleecing_teardown(fl, true);
    fleecing_free(fl);
    return json_object();
}
QMP_TYPED_HANDLER(qmp_fleecing_stop, fleecing_stop_cmd,
                  struct qmp_args_fleecing_stop);

json_t *
qmp_query_fleecing(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *list = json_array();
    struct fleecing *fl;

    TAILQ_FOREACH(fl, &g_fleecings, link) {
        json_array_append_new(list, fleecing_info(fl));
    }
    return list;
}

void
qmp_fleecing_stop_all(void)
{
    struct fleecing *fl;

    while ((fl = TAILQ_FIRST(&g_fleecings))) {
        TAILQ_REMOVE(&g_fleecings, fl, link);
        fleecing_teardown(fl, true);
        fleecing_free(fl);
    }
}
