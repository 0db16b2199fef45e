/* SPDX-License-Identifier: MIT */
/*
 * NBD exports: the "nbd" export driver (export/export.h) and the list of
 * NBD exports the handshake looks names up in.  An export owns one block
 * handle on its node; connections count themselves on the export (see the
 * design notes in nbd-internal.h) so that deletion never frees a handle
 * that a worker thread still uses.  Messages follow QEMU's wording.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "nbd/server.h"
#include "runtime/loop.h"
#include "util.h"

pthread_mutex_t g_nbdsrv_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t g_nbdsrv_cond = PTHREAD_COND_INITIALIZER;

/* Protected by: g_nbdsrv_lock (changed on the main thread only). */
static struct nbdexp_list g_exports = TAILQ_HEAD_INITIALIZER(g_exports);

static const char *const export_keys[] = {
    "type", "id", "node-name", "writable", "writethrough", "name",
    "description", "bitmaps", "allocation-depth", "iothread",
    "fixed-iothread", NULL,
};

static struct nbdexp *
export_find_name_locked(const char *name)
{
    struct nbdexp *exp;

    TAILQ_FOREACH(exp, &g_exports, link) {
        if (!strcmp(exp->name, name)) {
            return exp;
        }
    }
    return NULL;
}

static bool
get_str(json_t *args, const char *key, bool required, const char **out,
        struct err **errp)
{
    json_t *v = json_object_get(args, key);

    *out = NULL;
    if (!v) {
        if (required) {
            err_setf(errp, "Parameter '%s' is missing", key);
            return false;
        }
        return true;
    }
    if (!json_is_string(v)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: string",
                 key);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool
get_bool(json_t *args, const char *key, bool *out, struct err **errp)
{
    json_t *v = json_object_get(args, key);

    *out = false;
    if (!v) {
        return true;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return true;
    }
    if (json_is_string(v) && (!strcmp(json_string_value(v), "on") ||
                              !strcmp(json_string_value(v), "off"))) {
        *out = !strcmp(json_string_value(v), "on");
        return true;
    }
    err_setf(errp, "Invalid parameter type for '%s', expected: boolean", key);
    return false;
}

/* A bitmap given as "name" (on the node or its backing chain) or as
 * {"node": N, "name": B}. */
static struct block_dirty_bitmap *
lookup_bitmap(struct block_node *node, json_t *spec, struct err **errp)
{
    struct block_dirty_bitmap *bm = NULL;
    const char *name;

    if (json_is_string(spec)) {
        name = json_string_value(spec);
        for (struct block_node *n = node; n && !bm;
             n = n->backing ? n->backing->node : block_filtered(n)) {
            bm = block_dirty_bitmap_find(n, name);
        }
        if (!bm) {
            err_setf(errp, "Bitmap '%s' is not found", name);
        }
        return bm;
    }
    if (json_is_object(spec)) {
        const char *bnode = NULL;

        if (!get_str(spec, "node", true, &bnode, errp) ||
            !get_str(spec, "name", true, &name, errp)) {
            return NULL;
        }
        return block_dirty_bitmap_lookup(bnode, name, errp);
    }
    err_setf(errp, "Invalid parameter type for 'bitmaps', expected: array "
             "of string or BlockDirtyBitmap");
    return NULL;
}

static void
export_free(struct nbdexp *exp)
{
    for (size_t i = 0; i < exp->nbitmaps; i++) {
        block_dirty_bitmap_set_busy(exp->bitmaps[i].bm, false);
        free(exp->bitmaps[i].ctx_name);
    }
    free(exp->bitmaps);
    block_handle_free(exp->h);
    free(exp->id);
    free(exp->name);
    free(exp->description);
    free(exp->node_name);
    free(exp);
}

static struct nbdexp *
nbdexp_new(json_t *args, bool require_server, struct err **errp)
{
    const char *type, *id, *node_name, *name, *desc, *key;
    bool writable, writethrough, alloc_depth;
    struct block_node *node;
    struct nbdexp *exp;
    json_t *bitmaps, *v;
    CLEANUP_FREE char *owner = NULL;

    assert_main_thread();
    if (!json_is_object(args)) {
        err_setf(errp, "Invalid parameter type, expected: object");
        return NULL;
    }
    json_object_foreach(args, key, v) {
        size_t i;

        for (i = 0; export_keys[i]; i++) {
            if (!strcmp(export_keys[i], key)) {
                break;
            }
        }
        if (!export_keys[i]) {
            err_setf(errp, "Parameter '%s' is unexpected", key);
            return NULL;
        }
    }
    if (!get_str(args, "type", true, &type, errp) ||
        !get_str(args, "id", true, &id, errp) ||
        !get_str(args, "node-name", true, &node_name, errp) ||
        !get_str(args, "name", false, &name, errp) ||
        !get_str(args, "description", false, &desc, errp) ||
        !get_bool(args, "writable", &writable, errp) ||
        !get_bool(args, "writethrough", &writethrough, errp) ||
        !get_bool(args, "allocation-depth", &alloc_depth, errp)) {
        return NULL;
    }
    if (strcmp(type, "nbd") != 0) {
        err_setf(errp, "Parameter 'type' does not accept value '%s'", type);
        return NULL;
    }
    if (!name) {
        name = node_name;
    }
    bitmaps = json_object_get(args, "bitmaps");
    if (bitmaps && !json_is_array(bitmaps)) {
        err_setf(errp, "Invalid parameter type for 'bitmaps', expected: "
                 "array");
        return NULL;
    }

    /* The checks in QEMU's order (blk_exp_add, then nbd_export_create),
     * so that the first error reported is the same. */
    if (block_export_id_in_use(id)) {
        err_setf(errp, "Block export id '%s' is already in use", id);
        return NULL;
    }
    node = block_node_find(node_name);
    if (!node) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'", node_name);
        return NULL;
    }
    if (writable && node->read_only) {
        err_setf(errp, "Cannot export read-only node as writable");
        return NULL;
    }
    if (require_server && !nbdsrv_running()) {
        err_setf(errp, "NBD server not running");
        return NULL;
    }
    if (strlen(name) > NBDSRV_MAX_STRING) {
        err_setf(errp, "export name '%s' too long", name);
        return NULL;
    }
    if (desc && strlen(desc) > NBDSRV_MAX_STRING) {
        err_setf(errp, "description '%s' too long", desc);
        return NULL;
    }
    mutex_lock(&g_nbdsrv_lock);
    if (export_find_name_locked(name)) {
        mutex_unlock(&g_nbdsrv_lock);
        err_setf(errp, "NBD server already has export named '%s'", name);
        return NULL;
    }
    mutex_unlock(&g_nbdsrv_lock);

    exp = xzalloc(sizeof(*exp));
    exp->id = xstrdup(id);
    exp->name = xstrdup(name);
    exp->description = desc ? xstrdup(desc) : NULL;
    exp->node_name = xstrdup(node_name);
    exp->writable = writable;
    exp->writethrough = writethrough;
    exp->alloc_depth = alloc_depth;
    exp->min_block = node->limits.request_alignment ?
                     node->limits.request_alignment : 1;
    if (exp->min_block > 65536 || !is_power_of_2(exp->min_block)) {
        exp->min_block = 1;
    }
    if (bitmaps) {
        size_t n = json_array_size(bitmaps);

        exp->bitmaps = xcalloc(n ? n : 1, sizeof(*exp->bitmaps));
        for (size_t i = 0; i < n; i++) {
            struct block_dirty_bitmap *bm;

            bm = lookup_bitmap(node, json_array_get(bitmaps, i), errp);
            if (!bm) {
                goto out_free;
            }
            if (bm->busy) {
                err_setf(errp, "Bitmap '%s' is currently in use by another "
                         "operation and cannot be used", bm->name);
                goto out_free;
            }
            if (bm->inconsistent) {
                err_setf(errp, "Bitmap '%s' is inconsistent and cannot be "
                         "used", bm->name);
                goto out_free;
            }
            if (!bm->name) {
                err_setf(errp, "Cannot export an anonymous bitmap");
                goto out_free;
            }
            block_dirty_bitmap_set_busy(bm, true);
            exp->bitmaps[exp->nbitmaps].bm = bm;
            exp->bitmaps[exp->nbitmaps].ctx_name =
                xasprintf("qemu:dirty-bitmap:%s", bm->name);
            exp->nbitmaps++;
        }
    }

    owner = xasprintf("export '%s'", id);
    /* Clients see a fixed size: nobody may resize the node while it is
     * exported (QEMU's NBD export refuses to share resize too). */
    exp->h = block_handle_new(node, owner,
                              BLOCK_PERM_CONSISTENT_READ |
                              (writable ? BLOCK_PERM_WRITE : 0),
                              BLOCK_PERM_ALL & ~BLOCK_PERM_RESIZE, errp);
    if (!exp->h) {
        goto out_free;
    }

    mutex_lock(&g_nbdsrv_lock);
    TAILQ_INSERT_TAIL(&g_exports, exp, link);
    mutex_unlock(&g_nbdsrv_lock);
    return exp;

out_free:
    export_free(exp);
    return NULL;
}

/* Unlink exp from the NBD list and free it (the generic layer is told
 * by its caller). */
static void nbdexp_unlink_free(struct nbdexp *exp);

struct nbdexp *
nbdexp_create(json_t *args, bool require_server, struct err **errp)
{
    struct nbdexp *exp = nbdexp_new(args, require_server, errp);

    assert_main_thread();
    if (exp && !block_export_register(exp->id, &nbd_export_driver, exp,
                                      errp)) {
        nbdexp_unlink_free(exp);
        return NULL;
    }
    return exp;
}

static void *
nbd_export_create(const struct block_export_options *opts,
                  struct err **errp)
{
    return nbdexp_new((json_t *)opts->driver_opts, true, errp);
}

struct nbdexp *
nbdexp_get(const char *name, struct nbdexp **held)
{
    struct nbdexp *exp;

    mutex_lock(&g_nbdsrv_lock);
    exp = export_find_name_locked(name);
    if (exp && exp->deleting) {
        exp = NULL;
    }
    assert(*held == NULL);
    if (exp) {
        exp->nconns++;
        *held = exp;
    }
    mutex_unlock(&g_nbdsrv_lock);
    return exp;
}

void
nbdexp_put(struct nbdexp **held)
{
    struct nbdexp *exp = *held;

    if (!exp) {
        return;
    }
    mutex_lock(&g_nbdsrv_lock);
    assert(exp->nconns > 0);
    exp->nconns--;
    *held = NULL;
    cond_broadcast(&g_nbdsrv_cond);
    mutex_unlock(&g_nbdsrv_lock);
}

void
nbdexp_foreach(void (*fn)(struct nbdexp *exp, void *opaque), void *opaque)
{
    struct nbdexp *exp;

    mutex_lock(&g_nbdsrv_lock);
    TAILQ_FOREACH(exp, &g_exports, link) {
        if (!exp->deleting) {
            fn(exp, opaque);
        }
    }
    mutex_unlock(&g_nbdsrv_lock);
}

uint64_t
nbdexp_size(struct nbdexp *exp)
{
    int64_t len = block_handle_getlength(exp->h);

    return len < 0 ? 0 : (uint64_t)len;
}

static void
nbdexp_unlink_free(struct nbdexp *exp)
{
    mutex_lock(&g_nbdsrv_lock);
    TAILQ_REMOVE(&g_exports, exp, link);
    mutex_unlock(&g_nbdsrv_lock);
    export_free(exp);
}

/* The driver's del: disconnect every client of exp (hard), wait for them,
 * free it.  Refused while clients are attached (safe), and while drained:
 * their requests wait for the drain to end, so joining them would never
 * return. */
static bool
nbd_export_del(void *state, bool hard, struct err **errp)
{
    struct nbdexp *exp = state;

    assert_main_thread();
    mutex_lock(&g_nbdsrv_lock);
    if (!hard && exp->nconns > 0) {
        mutex_unlock(&g_nbdsrv_lock);
        err_setf(errp, "export '%s' still in use", exp->id);
        return false;
    }
    if (exp->nconns > 0 && block_drained()) {
        mutex_unlock(&g_nbdsrv_lock);
        err_setf(errp, "Cannot disconnect the clients of export '%s' while "
                 "the graph is drained", exp->id);
        return false;
    }
    exp->deleting = true;
    nbdsrv_shutdown_conns_locked(exp);
    nbdsrv_wait_conns_locked(exp);
    mutex_unlock(&g_nbdsrv_lock);
    nbdexp_unlink_free(exp);
    return true;
}

static struct block_handle *
nbd_export_handle(void *state)
{
    return ((struct nbdexp *)state)->h;
}

void
nbdexp_delete_all(void)
{
    assert_main_thread();
    block_export_del_all_of(&nbd_export_driver);
}

/* Clients still negotiating hold no export; send them away too. */
static void
nbd_export_close_all(void)
{
    assert_main_thread();
    mutex_lock(&g_nbdsrv_lock);
    nbdsrv_shutdown_conns_locked(NULL);
    nbdsrv_wait_conns_locked(NULL);
    mutex_unlock(&g_nbdsrv_lock);
}

const struct export_driver nbd_export_driver = {
    .type = "nbd",
    .create = nbd_export_create,
    .del = nbd_export_del,
    .handle = nbd_export_handle,
    .close_all = nbd_export_close_all,
};
