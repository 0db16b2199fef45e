/* SPDX-License-Identifier: MIT */
/*
 * The export registry and the dispatch of block-export-add/-del and
 * query-block-exports to the export drivers (export.h).  Ids are unique
 * across all types.  Main thread only: the registry has no lock.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "export/export.h"
#include "export/fuse.h"
#include "export/vhost-user-blk.h"
#include "runtime/event.h"
#include "runtime/loop.h"
#include "util.h"

static const struct export_driver *const export_drivers[] = {
    &nbd_export_driver,
    &fuse_export_driver,
    &vhost_user_blk_export_driver,
    NULL,
};

struct block_export {
    char *id;
    const struct export_driver *drv;
    void *state;
    bool shutting_down;          /* its del is running */
    TAILQ_ENTRY(block_export) link;
};

/* Main thread only. */
static TAILQ_HEAD(, block_export) g_exports =
    TAILQ_HEAD_INITIALIZER(g_exports);

static struct block_export *
export_find(const char *id)
{
    struct block_export *e;

    TAILQ_FOREACH(e, &g_exports, link) {
        if (!strcmp(e->id, id)) {
            return e;
        }
    }
    return NULL;
}

bool
block_export_id_in_use(const char *id)
{
    return export_find(id) != NULL;
}

bool
block_export_register(const char *id, const struct export_driver *drv,
                      void *state, struct err **errp)
{
    struct block_export *e;

    assert_main_thread();
    if (export_find(id)) {
        err_setf(errp, "Block export id '%s' is already in use", id);
        return false;
    }
    e = xzalloc(sizeof(*e));
    e->id = xstrdup(id);
    e->drv = drv;
    e->state = state;
    TAILQ_INSERT_TAIL(&g_exports, e, link);
    return true;
}

bool
block_export_add(const struct block_export_options *opts, struct err **errp)
{
    const struct export_driver *drv = NULL;
    void *state;

    assert_main_thread();
    for (size_t i = 0; export_drivers[i]; i++) {
        if (!strcmp(export_drivers[i]->type, opts->type)) {
            drv = export_drivers[i];
        }
    }
    if (!drv) {
        err_setf(errp, "Parameter 'type' does not accept value '%s'",
                 opts->type);
        return false;
    }
    if (export_find(opts->id)) {
        err_setf(errp, "Block export id '%s' is already in use", opts->id);
        return false;
    }
    state = drv->create(opts, errp);
    if (!state) {
        return false;
    }
    /* Cannot fail: the id was free and create does not register. */
    return block_export_register(opts->id, drv, state, errp);
}

/* Run the driver's del; on success drop the entry and announce it. */
static bool
export_delete(struct block_export *e, bool hard, struct err **errp)
{
    struct event *ev;
    bool ok;

    e->shutting_down = true;
    ok = e->drv->del(e->state, hard, errp);
    if (!ok) {
        e->shutting_down = false;
        return false;
    }
    TAILQ_REMOVE(&g_exports, e, link);
    ev = event_new("BLOCK_EXPORT_DELETED");
    event_add_str(ev, "id", e->id);
    event_emit(ev);
    free(e->id);
    free(e);
    return true;
}

bool
block_export_del(const char *id, enum block_export_remove_mode mode,
                 struct err **errp)
{
    bool hard = mode == BLOCK_EXPORT_REMOVE_HARD;
    struct block_export *e;

    assert_main_thread();
    e = export_find(id);
    if (!e) {
        err_setf(errp, "Export '%s' is not found", id);
        return false;
    }
    if (e->shutting_down) {
        err_setf(errp, "Export '%s' is already shutting down", id);
        return false;
    }
    return export_delete(e, hard, errp);
}

void
block_export_foreach(void (*fn)(const struct block_export_info *info,
                                void *opaque),
                     void *opaque)
{
    struct block_export *e;

    assert_main_thread();
    TAILQ_FOREACH(e, &g_exports, link) {
        struct block_export_info info = {
            .type = e->drv->type,
            .id = e->id,
            .node_name = block_handle_node(e->drv->handle(e->state))
                             ->node_name,
            .shutting_down = e->shutting_down,
        };

        fn(&info, opaque);
    }
}

void
block_export_del_all_of(const struct export_driver *drv)
{
    struct block_export *e, *next;

    assert_main_thread();
    for (e = TAILQ_FIRST(&g_exports); e; e = next) {
        next = TAILQ_NEXT(e, link);
        if (e->drv == drv) {
            struct err *err = NULL;

            if (!export_delete(e, true, &err)) {
                /* Hard deletion only fails while drained: keep it. */
                err_free(err);
            }
        }
    }
}

void
block_export_close_all(void)
{
    assert_main_thread();
    for (size_t i = 0; export_drivers[i]; i++) {
        block_export_del_all_of(export_drivers[i]);
        if (export_drivers[i]->close_all) {
            export_drivers[i]->close_all();
        }
    }
}

struct block_handle *
block_export_open_handle(const struct block_export_options *opts,
                         struct err **errp)
{
    return block_export_open_handle_perm(opts, 0, errp);
}

struct block_handle *
block_export_open_handle_perm(const struct block_export_options *opts,
                              uint32_t extra_perm, struct err **errp)
{
    struct block_node *node = block_node_find(opts->node_name);
    CLEANUP_FREE char *owner = NULL;

    assert_main_thread();
    if (!node) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'",
                 opts->node_name);
        return NULL;
    }
    if (opts->writable && node->read_only) {
        err_setf(errp, "Cannot export read-only node as writable");
        return NULL;
    }
    owner = xasprintf("export '%s'", opts->id);
    return block_handle_new(node, owner,
                            BLOCK_PERM_CONSISTENT_READ |
                            (opts->writable ? BLOCK_PERM_WRITE : 0) |
                            extra_perm,
                            BLOCK_PERM_ALL, errp);
}
