/* SPDX-License-Identifier: MIT */
/*
 * A write-back cache of whole metadata clusters (L2 tables, refcount
 * blocks) with LRU eviction.  Entries are pinned while a caller uses the
 * data pointer, so a nested lookup cannot evict them.  Before a dirty entry
 * reaches the disk the cache's before_write hook runs: for the L2 cache it
 * makes pending refcount increases and the data written so far stable
 * first (qcow2 ordering rules "refcount before pointer" and "data before
 * pointer").  Caller holds s->lock for every function.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

void
qcow2_cache_init(struct qcow2_cache *c, const char *name, size_t nb,
                 uint64_t cluster_size,
                 int (*before_write)(struct qcow2_state *s))
{
    memset(c, 0, sizeof(*c));
    c->name = name;
    c->nb = nb;
    c->before_write = before_write;
    c->e = xcalloc(nb, sizeof(*c->e));
    for (size_t i = 0; i < nb; i++) {
        c->e[i].data = xmalloc_page(cluster_size);
    }
}

void
qcow2_cache_destroy(struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->nb; i++) {
        free(c->e[i].data);
    }
    free(c->e);
    c->e = NULL;
    c->nb = 0;
}

/* Write a dirty entry; hook: run before_write first (else the caller did). */
static int
entry_write(struct qcow2_state *s, struct qcow2_cache *c,
            struct qcow2_cache_entry *e, bool hook)
{
    int ret;

    if (!e->dirty) {
        return 0;
    }
    if (hook && c->before_write) {
        ret = c->before_write(s);
        if (ret < 0) {
            return ret;
        }
    }
    block_debug_event(s->file, c == &s->l2_cache ? "l2_update"
                                                 : "refblock_update");
    /* The overlap check: a table never lands on another structure. */
    ret = qcow2_meta_pwrite(s, c == &s->l2_cache ? QCOW2_META_L2
                                                 : QCOW2_META_REFBLOCK,
                            e->offset, s->cluster_size, e->data);
    if (ret < 0) {
        return ret;
    }
    e->dirty = false;
    c->nb_dirty--;
    return 0;
}

static struct qcow2_cache_entry *
entry_find(struct qcow2_cache *c, uint64_t offset)
{
    for (size_t i = 0; i < c->nb; i++) {
        if (c->e[i].offset == offset) {
            return &c->e[i];
        }
    }
    return NULL;
}

static struct qcow2_cache_entry *
entry_of_data(struct qcow2_cache *c, uint8_t *data)
{
    for (size_t i = 0; i < c->nb; i++) {
        if (c->e[i].data == data) {
            return &c->e[i];
        }
    }
    abort();
}

/* The least recently used unpinned entry, written back if dirty. */
static int
entry_victim(struct qcow2_state *s, struct qcow2_cache *c,
             struct qcow2_cache_entry **out)
{
    struct qcow2_cache_entry *best = NULL;
    int ret;

    for (size_t i = 0; i < c->nb; i++) {
        struct qcow2_cache_entry *e = &c->e[i];

        if (e->pins) {
            continue;
        }
        if (!e->offset) {
            best = e;
            break;
        }
        if (!best || e->lru < best->lru) {
            best = e;
        }
    }
    if (!best) {
        /* Every entry pinned: more nesting than the minimum size allows. */
        return -ENOMEM;
    }
    ret = entry_write(s, c, best, true);
    if (ret < 0) {
        return ret;
    }
    best->offset = 0;
    *out = best;
    return 0;
}

int
qcow2_cache_get(struct qcow2_state *s, struct qcow2_cache *c,
                uint64_t offset, bool fresh, uint8_t **data)
{
    struct qcow2_cache_entry *e = entry_find(c, offset);
    int ret;

    if (!e) {
        ret = entry_victim(s, c, &e);
        if (ret < 0) {
            return ret;
        }
        if (fresh) {
            memset(e->data, 0, s->cluster_size);
        } else {
            block_debug_event(s->file, c == &s->l2_cache ? "l2_load"
                                                         : "refblock_load");
            ret = block_pread(s->file, offset, s->cluster_size, e->data, 0);
            if (ret < 0) {
                return ret;
            }
        }
        e->offset = offset;
    } else if (fresh) {
        memset(e->data, 0, s->cluster_size);
    }
    e->pins++;
    e->lru = ++c->tick;
    *data = e->data;
    return 0;
}

void
qcow2_cache_put(struct qcow2_cache *c, uint8_t *data)
{
    struct qcow2_cache_entry *e = entry_of_data(c, data);

    assert(e->pins > 0);
    e->pins--;
}

void
qcow2_cache_mark_dirty(struct qcow2_cache *c, uint8_t *data)
{
    struct qcow2_cache_entry *e = entry_of_data(c, data);

    if (!e->dirty) {
        e->dirty = true;
        c->nb_dirty++;
    }
}

int
qcow2_cache_writeback(struct qcow2_state *s, struct qcow2_cache *c)
{
    int ret;

    /*
     * One before_write for all of them: s->lock is held throughout, so no
     * entry changes and no refcount grows meanwhile, and the flush it
     * makes covers the data of every entry (linked after its data was
     * written).  Per entry, the second table's hook flushed again for
     * the first table's write.
     */
    if (c->nb_dirty && c->before_write) {
        ret = c->before_write(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (size_t i = 0; i < c->nb && c->nb_dirty; i++) {
        ret = entry_write(s, c, &c->e[i], false);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

void
qcow2_cache_discard_all(struct qcow2_cache *c)
{
    for (size_t i = 0; i < c->nb; i++) {
        c->e[i].offset = 0;
        c->e[i].dirty = false;
    }
    c->nb_dirty = 0;
}

void
qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset)
{
    struct qcow2_cache_entry *e = entry_find(c, offset);

    if (e && !e->pins) {
        if (e->dirty) {
            c->nb_dirty--;
        }
        e->offset = 0;
        e->dirty = false;
    }
}
