/* SPDX-License-Identifier: MIT */
/*
 * The fleecing recipe over QMP, with QEMU's standard commands only, so
 * that lockstepd and qemu-storage-daemon 7.2 run the same sequence:
 *
 *   blockdev-add     the scratch qcow2, backing = the disk node
 *   transaction      block-dirty-bitmap-add NEW (persistent),
 *                    block-dirty-bitmap-disable SINCE (incremental),
 *                    blockdev-backup sync=none disk -> scratch
 *   block-export-add the scratch node over NBD, read-only, offering
 *                    qemu:dirty-bitmap:SINCE (found down the backing
 *                    chain)
 *
 * The transaction is the snapshot point: the job's copy-before-write
 * filter goes above the disk at the same instant as NEW starts recording
 * and SINCE stops, so no write falls between the two bitmaps.  Reads of
 * the scratch node see the disk as it was then: clusters the guest has
 * overwrote since were copied into the scratch image first.  (lockstepd's
 * fleecing-start builds the newer snapshot-access graph in one call;
 * qemu-storage-daemon 7.2 cannot put that graph's insertion in a
 * transaction, so the tool keeps to this recipe on both daemons.)
 *
 * Teardown: block-export-del (hard), job-cancel, blockdev-del.  Every
 * step looks at what exists first, so that the same code cleans up after
 * a failed start, a backup that finished and a run that was killed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "backup.h"
#include "util.h"

/* QEMU's node names have at most 31 characters. */
#define NODE_NAME_MAX 31

/* The disk's name as it goes into our ids: itself if short, else a hash. */
static char *
short_name(const char *node)
{
    if (strlen(node) <= 20) {
        return xstrdup(node);
    }
    return xasprintf("%08lx", crc32(0, (const unsigned char *)node,
                                    (unsigned)strlen(node)));
}

void
fleece_init(struct fleece *f, const char *node, const char *since,
            const char *bitmap, const char *scratch_file,
            const char *nbd_socket, const char *own_socket)
{
    CLEANUP_FREE char *s = short_name(node);

    memset(f, 0, sizeof(*f));
    f->node = xstrdup(node);
    f->scratch_file = xstrdup(scratch_file);
    f->temp_node = xasprintf("lsbk-%s-snap", s);
    assert(strlen(f->temp_node) <= NODE_NAME_MAX);
    f->job = xasprintf("lsbk-%s", s);
    f->export_id = xasprintf("lsbk-%s", s);
    f->nbd_socket = xstrdup(nbd_socket ? nbd_socket : own_socket);
    f->nbd_started = !nbd_socket;   /* until it turns out otherwise */
    f->since = since ? xstrdup(since) : NULL;
    f->bitmap = xstrdup(bitmap);
}

void
fleece_free(struct fleece *f)
{
    free(f->node);
    free(f->scratch_file);
    free(f->temp_node);
    free(f->job);
    free(f->export_id);
    free(f->nbd_socket);
    free(f->since);
    free(f->bitmap);
    memset(f, 0, sizeof(*f));
}

json_t *
fleece_to_json(const struct fleece *f)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:s}",
                          "node", f->node, "scratch-file", f->scratch_file,
                          "temp-node", f->temp_node, "job", f->job,
                          "export", f->export_id, "nbd-socket",
                          f->nbd_socket, "nbd-started", f->nbd_started,
                          "bitmap", f->bitmap);

    if (f->since) {
        json_object_set_new(o, "since", json_string(f->since));
    }
    return o;
}

static char *
json_str_dup(json_t *o, const char *key, bool required, bool *ok)
{
    const char *s = json_string_value(json_object_get(o, key));

    if (!s && required) {
        *ok = false;
    }
    return s ? xstrdup(s) : NULL;
}

bool
fleece_from_json(struct fleece *f, json_t *o, struct err **errp)
{
    bool ok = true;

    memset(f, 0, sizeof(*f));
    f->node = json_str_dup(o, "node", true, &ok);
    f->scratch_file = json_str_dup(o, "scratch-file", true, &ok);
    f->temp_node = json_str_dup(o, "temp-node", true, &ok);
    f->job = json_str_dup(o, "job", true, &ok);
    f->export_id = json_str_dup(o, "export", true, &ok);
    f->nbd_socket = json_str_dup(o, "nbd-socket", true, &ok);
    f->nbd_started = json_is_true(json_object_get(o, "nbd-started"));
    f->bitmap = json_str_dup(o, "bitmap", true, &ok);
    f->since = json_str_dup(o, "since", false, &ok);
    if (!ok) {
        err_setf(errp, "the journal of the interrupted backup (%s) is "
                 "incomplete", BK_JOURNAL);
        fleece_free(f);
    }
    return ok;
}

/* ---- Queries --------------------------------------------------------- */

json_t *
qmp_find_node(struct qmp *q, const char *node, struct err **errp)
{
    json_t *nodes = qmp_cmd(q, "query-named-block-nodes", NULL, errp);
    json_t *found = NULL, *n;
    size_t i;

    if (!nodes) {
        return NULL;
    }
    json_array_foreach(nodes, i, n) {
        const char *name = json_string_value(json_object_get(n,
                                                             "node-name"));

        if (name && !strcmp(name, node)) {
            found = json_incref(n);
            break;
        }
    }
    json_decref(nodes);
    if (!found) {
        err_setf(errp, "The daemon has no node '%s'", node);
    }
    return found;
}

int64_t
node_virtual_size(json_t *node)
{
    json_t *v = json_object_get(json_object_get(node, "image"),
                                "virtual-size");

    return json_is_integer(v) ? (int64_t)json_integer_value(v) : -1;
}

json_t *
node_bitmap(json_t *node, const char *name)
{
    json_t *b;
    size_t i;

    json_array_foreach(json_object_get(node, "dirty-bitmaps"), i, b) {
        const char *n = json_string_value(json_object_get(b, "name"));

        if (n && !strcmp(n, name)) {
            return b;
        }
    }
    return NULL;
}

static bool
has_node(struct qmp *q, const char *name, bool *has, struct err **errp)
{
    struct err *e = NULL;
    json_t *n = qmp_find_node(q, name, &e);

    json_decref(n);
    if (e && qmp_broken(q)) {
        err_propagate(errp, e);
        return false;
    }
    err_free(e);
    *has = n != NULL;
    return true;
}

/* Is there an entry with member key == value in the answer to cmd? */
static bool
listed(struct qmp *q, const char *cmd, const char *key, const char *value,
       bool *found, struct err **errp)
{
    json_t *list = qmp_cmd(q, cmd, NULL, errp);
    json_t *x;
    size_t i;

    if (!list) {
        return false;
    }
    *found = false;
    json_array_foreach(list, i, x) {
        const char *v = json_string_value(json_object_get(x, key));

        *found |= v && !strcmp(v, value);
    }
    json_decref(list);
    return true;
}

/* ---- Start ----------------------------------------------------------- */

static bool
start_nbd_server(struct qmp *q, struct fleece *f, struct err **errp)
{
    struct err *e = NULL;

    if (qmp_run(q, "nbd-server-start",
                json_pack("{s:{s:s, s:{s:s}}}", "addr", "type", "unix",
                          "data", "path", f->nbd_socket), &e)) {
        return true;
    }
    f->nbd_started = false;
    if (!qmp_broken(q) && strstr(e->msg, "already running")) {
        err_free(e);
        err_setf(errp, "The daemon already runs an NBD server: give its "
                 "unix socket with --nbd-socket");
        return false;
    }
    err_propagate(errp, e);
    return false;
}

static json_t *
action(const char *type, json_t *data)
{
    return json_pack("{s:s, s:o}", "type", type, "data", data);
}

static json_t *
bitmap_arg(const struct fleece *f, const char *name)
{
    return json_pack("{s:s, s:s}", "node", f->node, "name", name);
}

/* The snapshot point. */
static bool
start_transaction(struct qmp *q, struct fleece *f, struct err **errp)
{
    json_t *actions = json_array();

    json_array_append_new(actions, action("block-dirty-bitmap-add",
        json_pack("{s:s, s:s, s:b}", "node", f->node, "name", f->bitmap,
                  "persistent", true)));
    if (f->since) {
        json_array_append_new(actions, action("block-dirty-bitmap-disable",
                                              bitmap_arg(f, f->since)));
    }
    json_array_append_new(actions, action("blockdev-backup",
        json_pack("{s:s, s:s, s:s, s:s}", "job-id", f->job, "device",
                  f->node, "target", f->temp_node, "sync", "none")));
    if (!qmp_run(q, "transaction", json_pack("{s:o}", "actions", actions),
                 errp)) {
        return false;
    }
    f->started = true;
    return true;
}

bool
fleece_start(struct qmp *q, struct fleece *f, struct err **errp)
{
    json_t *exp;

    if (f->nbd_started && !start_nbd_server(q, f, errp)) {
        return false;
    }
    if (!qmp_run(q, "blockdev-add",
                 json_pack("{s:s, s:s, s:{s:s, s:s}, s:s}", "driver",
                           "qcow2", "node-name", f->temp_node, "file",
                           "driver", "file", "filename", f->scratch_file,
                           "backing", f->node), errp)) {
        return false;
    }
    f->temp_added = true;
    if (!start_transaction(q, f, errp)) {
        return false;
    }
    exp = json_pack("{s:s, s:s, s:s, s:s, s:b}", "type", "nbd", "id",
                    f->export_id, "node-name", f->temp_node, "name",
                    f->export_id, "writable", false);
    if (f->since) {
        json_object_set_new(exp, "bitmaps", json_pack("[s]", f->since));
    }
    if (!qmp_run(q, "block-export-add", exp, errp)) {
        return false;
    }
    f->exported = true;
    return true;
}

/* ---- Stop ------------------------------------------------------------ */

static bool
stop_export(struct qmp *q, struct fleece *f, struct err **errp)
{
    bool found;

    if (!listed(q, "query-block-exports", "id", f->export_id, &found, errp)) {
        return false;
    }
    if (found &&
        (!qmp_run(q, "block-export-del",
                  json_pack("{s:s, s:s}", "id", f->export_id, "mode",
                            "hard"), errp) ||
         !qmp_wait_event(q, errp, "BLOCK_EXPORT_DELETED", "id",
                         f->export_id, NULL))) {
        return false;
    }
    f->exported = false;
    return true;
}

static bool
stop_job(struct qmp *q, struct fleece *f, struct err **errp)
{
    bool found;

    if (!listed(q, "query-jobs", "id", f->job, &found, errp)) {
        return false;
    }
    /* The job is gone once it reports status "null" (auto-dismiss). */
    if (found &&
        (!qmp_run(q, "job-cancel", json_pack("{s:s}", "id", f->job),
                  errp) ||
         !qmp_wait_event(q, errp, "JOB_STATUS_CHANGE", "id", f->job,
                         "status", "null", NULL))) {
        return false;
    }
    return true;
}

static bool
stop_temp(struct qmp *q, struct fleece *f, struct err **errp)
{
    bool found;

    if (!has_node(q, f->temp_node, &found, errp)) {
        return false;
    }
    if (found && !qmp_run(q, "blockdev-del",
                          json_pack("{s:s}", "node-name", f->temp_node),
                          errp)) {
        return false;
    }
    f->temp_added = false;
    return true;
}

bool
fleece_stop(struct qmp *q, struct fleece *f, struct err **errp)
{
    if (!stop_export(q, f, errp) || !stop_job(q, f, errp) ||
        !stop_temp(q, f, errp)) {
        return false;
    }
    if (f->nbd_started) {
        if (!qmp_run(q, "nbd-server-stop", NULL, errp)) {
            return false;
        }
        f->nbd_started = false;
    }
    return true;
}

/* ---- Bitmaps --------------------------------------------------------- */

bool
fleece_bitmap_remove(struct qmp *q, struct fleece *f, const char *name,
                     struct err **errp)
{
    json_t *node = qmp_find_node(q, f->node, errp);
    bool ok = true;

    if (!node) {
        return false;
    }
    if (node_bitmap(node, name)) {
        ok = qmp_run(q, "block-dirty-bitmap-remove", bitmap_arg(f, name),
                     errp);
    }
    json_decref(node);
    return ok;
}

static bool
bitmap_flag(json_t *b, const char *flag)
{
    return json_is_true(json_object_get(b, flag));
}

bool
fleece_bitmaps_rollback(struct qmp *q, struct fleece *f, struct err **errp)
{
    json_t *node = qmp_find_node(q, f->node, errp);
    json_t *actions, *b, *s;
    bool ok = true;

    if (!node) {
        return false;
    }
    b = node_bitmap(node, f->bitmap);
    s = f->since ? node_bitmap(node, f->since) : NULL;
    actions = json_array();
    /*
     * SINCE stopped at the snapshot and NEW has recorded every write
     * after it: together they hold every change since the last backup.
     * A NEW that is inconsistent (the daemon was killed) lost that;
     * SINCE then stays disabled and the next incremental backup refuses
     * it.
     */
    if (b && s && !bitmap_flag(b, "inconsistent") &&
        !bitmap_flag(s, "inconsistent")) {
        json_array_append_new(actions, action("block-dirty-bitmap-merge",
            json_pack("{s:s, s:s, s:[s]}", "node", f->node, "target",
                      f->since, "bitmaps", f->bitmap)));
        if (!bitmap_flag(s, "recording")) {
            json_array_append_new(actions,
                action("block-dirty-bitmap-enable", bitmap_arg(f, f->since)));
        }
    }
    if (b) {
        json_array_append_new(actions, action("block-dirty-bitmap-remove",
                                              bitmap_arg(f, f->bitmap)));
    }
    if (json_array_size(actions)) {
        ok = qmp_run(q, "transaction", json_pack("{s:O}", "actions",
                                                 actions), errp);
    }
    json_decref(actions);
    json_decref(node);
    return ok;
}

/* ---- Recovery -------------------------------------------------------- */

bool
fleece_recover(struct qmp *q, struct fleece *f, bool committed,
               struct err **errp)
{
    bool ours;

    /*
     * The NBD server is ours to stop only while our export is still on
     * it: a daemon that restarted since may run its own server.
     */
    if (f->nbd_started) {
        if (!listed(q, "query-block-exports", "id", f->export_id, &ours,
                    errp)) {
            return false;
        }
        f->nbd_started = ours;
    }
    if (!fleece_stop(q, f, errp)) {
        return false;
    }
    if (committed) {
        return !f->since || fleece_bitmap_remove(q, f, f->since, errp);
    }
    return fleece_bitmaps_rollback(q, f, errp);
}
