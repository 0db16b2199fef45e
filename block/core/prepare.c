/* SPDX-License-Identifier: MIT */
/*
 * Opening in two steps (see block.h): the slow part that waits on a
 * remote peer first, off the main thread and outside the graph lock,
 * then the graph change.
 *
 * Design notes.  block_prepare() walks the options tree the way opening
 * will (every object with a "driver" is a node; children are members and
 * list elements) and runs the prepare callback of every node whose driver
 * has one, after checking that node's options with the validator open
 * uses, so that a bad option fails before any connection is tried.  Each
 * result is kept with a copy of the options it was made for.  Opening
 * then runs with the set installed for the thread; a driver's open asks
 * for a result made for options that open the same thing (the driver's
 * fits callback decides: the NBD client compares server, export and
 * context), so nodes need no identity across the two steps, and two nodes
 * to the same export simply take one connection each.
 */
#include <stdlib.h>
#include <string.h>

#include "block/core/opts.h"
#include "lockstep/driver.h"
#include "runtime/loop.h"
#include "util.h"

struct prep_item {
    const struct block_driver *drv;
    json_t *options;        /* what it was prepared for */
    void *state;            /* NULL once taken */
};

struct block_prep {
    struct prep_item *items;
    size_t n;
};

/* The set open may take from: block_node_new_prepared() installs it. */
static __thread struct block_prep *cur_prep;

static const struct block_driver *
node_driver(json_t *v)
{
    const char *name = json_string_value(json_object_get(v, "driver"));

    return json_is_object(v) && name ? block_driver_find(name) : NULL;
}

static bool
needs_prepare(json_t *v)
{
    const struct block_driver *drv = node_driver(v);
    const char *key;
    json_t *m;
    size_t i;

    if (drv && drv->prepare) {
        return true;
    }
    if (json_is_object(v)) {
        json_object_foreach(v, key, m) {
            if (needs_prepare(m)) {
                return true;
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, m) {
            if (needs_prepare(m)) {
                return true;
            }
        }
    }
    return false;
}

bool
block_needs_prepare(json_t *options)
{
    return needs_prepare(options);
}

static int
prepare_node(struct block_prep *p, const struct block_driver *drv,
             json_t *v, const char *prefix, int cancel_fd, struct err **errp)
{
    json_t *opts = json_deep_copy(v);
    void *state;

    if (!block_opts_validate(drv, opts, prefix, errp)) {
        json_decref(opts);
        return -1;
    }
    state = drv->prepare(opts, cancel_fd, errp);
    if (!state) {
        json_decref(opts);
        return -1;
    }
    p->items = xrealloc(p->items, (p->n + 1) * sizeof(*p->items));
    p->items[p->n++] = (struct prep_item) {
        .drv = drv, .options = opts, .state = state,
    };
    return 0;
}

static int
walk(struct block_prep *p, json_t *v, const char *prefix, int cancel_fd,
     struct err **errp)
{
    const struct block_driver *drv = node_driver(v);
    const char *key;
    json_t *m;
    size_t i;

    if (drv && drv->prepare &&
        prepare_node(p, drv, v, prefix, cancel_fd, errp) < 0) {
        return -1;
    }
    if (json_is_object(v)) {
        json_object_foreach(v, key, m) {
            CLEANUP_FREE char *sub = xasprintf("%s.", key);

            if (walk(p, m, sub, cancel_fd, errp) < 0) {
                return -1;
            }
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, m) {
            if (walk(p, m, "", cancel_fd, errp) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

struct block_prep *
block_prepare(json_t *options, int cancel_fd, struct err **errp)
{
    struct block_prep *p = xzalloc(sizeof(*p));

    if (walk(p, options, "", cancel_fd, errp) < 0) {
        block_prep_free(p);
        return NULL;
    }
    return p;
}

void
block_prep_free(struct block_prep *p)
{
    if (!p) {
        return;
    }
    for (size_t i = 0; i < p->n; i++) {
        if (p->items[i].state) {
            p->items[i].drv->prepared_free(p->items[i].state);
        }
        json_decref(p->items[i].options);
    }
    free(p->items);
    free(p);
}

struct block_node *
block_node_new_prepared(json_t *options, struct block_prep *prep,
                        struct err **errp)
{
    struct block_prep *saved = cur_prep;
    struct block_node *node;

    assert_main_thread();
    cur_prep = prep;
    node = block_node_new(options, errp);
    cur_prep = saved;
    return node;
}

void *
block_prepared_take(const struct block_driver *drv, json_t *options,
                    bool (*fits)(json_t *prepared_for, json_t *options))
{
    struct block_prep *p = cur_prep;

    for (size_t i = 0; p && i < p->n; i++) {
        struct prep_item *it = &p->items[i];

        if (it->drv == drv && it->state && fits(it->options, options)) {
            void *state = it->state;

            it->state = NULL;
            return state;
        }
    }
    return NULL;
}
