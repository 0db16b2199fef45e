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

struct lock g_nbdsrv_lock = LOCK_INITIALIZER(NBDSRV_EXPORTS);
pthread_cond_t g_nbdsrv_cond = PTHREAD_COND_INITIALIZER;

/* Protected by: g_nbdsrv_lock (changed on the main thread only). */
static struct nbdexp_list g_exports = TAILQ_HEAD_INITIALIZER(g_exports);

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

/* A bitmap given by name (on the node, its backing chain or below its
 * filters) or by node and name. */
static struct block_dirty_bitmap *
lookup_bitmap(struct block_node *node, const struct nbd_export_bitmap *spec,
              struct err **errp)
{
    struct block_dirty_bitmap *bm = NULL;

    if (spec->node) {
        return block_dirty_bitmap_lookup(spec->node, spec->name, errp);
    }
    for (struct block_node *n = node; n && !bm;
         n = n->backing ? n->backing->node : block_filtered(n)) {
        bm = block_dirty_bitmap_find(n, spec->name);
    }
    if (!bm) {
        err_setf(errp, "Bitmap '%s' is not found", spec->name);
    }
    return bm;
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
nbdexp_new(const struct block_export_options *o, bool require_server,
           struct err **errp)
{
    static const struct nbd_export_options defaults;
    const struct nbd_export_options *n = o->driver_opts ? o->driver_opts
                                                        : &defaults;
    const char *id = o->id;
    const char *name = n->name ? n->name : o->node_name;
    struct block_node *node;
    struct nbdexp *exp;
    CLEANUP_FREE char *owner = NULL;

    assert_main_thread();
    /* The checks in QEMU's order (blk_exp_add, then nbd_export_create),
     * so that the first error reported is the same. */
    if (block_export_id_in_use(id)) {
        err_setf(errp, "Block export id '%s' is already in use", id);
        return NULL;
    }
    node = block_node_find(o->node_name);
    if (!node) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'",
                 o->node_name);
        return NULL;
    }
    if (o->writable && node->read_only) {
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
    if (n->description && strlen(n->description) > NBDSRV_MAX_STRING) {
        err_setf(errp, "description '%s' too long", n->description);
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
    exp->description = n->description ? xstrdup(n->description) : NULL;
    exp->node_name = xstrdup(o->node_name);
    exp->writable = o->writable;
    exp->writethrough = o->writethrough;
    exp->alloc_depth = n->allocation_depth;
    exp->poll = o->poll ? *o->poll : poll_tuning_default;
    exp->min_block = node->limits.request_alignment ?
                     node->limits.request_alignment : 1;
    if (exp->min_block > 65536 || !is_power_of_2(exp->min_block)) {
        exp->min_block = 1;
    }
    exp->bitmaps = xcalloc(n->n_bitmaps ? n->n_bitmaps : 1,
                           sizeof(*exp->bitmaps));
    for (size_t i = 0; i < n->n_bitmaps; i++) {
        struct block_dirty_bitmap *bm;

        bm = lookup_bitmap(node, &n->bitmaps[i], errp);
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

    owner = xasprintf("export '%s'", id);
    /* Clients see a fixed size: nobody may resize the node while it is
     * exported (QEMU's NBD export refuses to share resize too). */
    exp->h = block_handle_new(node, owner,
                              BLOCK_PERM_CONSISTENT_READ |
                              (o->writable ? BLOCK_PERM_WRITE : 0),
                              BLOCK_PERM_ALL & ~BLOCK_PERM_RESIZE, errp);
    if (!exp->h) {
        goto out_free;
    }

    mutex_lock(&g_nbdsrv_lock);
    TAILQ_INSERT_TAIL(&g_exports, exp, link);
    mutex_unlock(&g_nbdsrv_lock);
    if (o->writable) {
        CLEANUP_FREE char *what = xasprintf("writable export '%s'", id);

        nbdsrv_warn_insecure(what);
    }
    return exp;

out_free:
    export_free(exp);
    return NULL;
}

/* Unlink exp from the NBD list and free it (the generic layer is told
 * by its caller). */
static void nbdexp_unlink_free(struct nbdexp *exp);

struct nbdexp *
nbdexp_create(const struct block_export_options *opts, bool require_server,
              struct err **errp)
{
    struct nbdexp *exp = nbdexp_new(opts, require_server, errp);

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
    return nbdexp_new(opts, true, errp);
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
