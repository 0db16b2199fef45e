/* SPDX-License-Identifier: MIT */
/*
 * Named dirty bitmaps on nodes, as QEMU's block-dirty-bitmap-* commands see
 * them.  Every completed write, write-zeroes or discard on a node marks the
 * node's enabled bitmaps (block/core/io.c calls block_node_mark_dirty).
 *
 * Locking: the list node->bitmaps and every bitmap's content and flags are
 * protected by node->bitmap_lock, a leaf lock.  Creating, removing and
 * renaming happen on the main thread.  The functions below take the lock
 * themselves unless their name ends in _locked.
 */
#ifndef LOCKSTEP_DIRTY_BITMAP_H
#define LOCKSTEP_DIRTY_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "lockstep/block.h"
#include "lockstep/err.h"

struct hbitmap;

struct block_dirty_bitmap {
    struct block_node *node;
    char *name;                /* NULL for anonymous (internal) bitmaps */
    struct hbitmap *hb;
    bool disabled;             /* not recording writes */
    bool busy;                 /* in use by a job or export: no changes
                                * through QMP */
    bool persistent;
    bool inconsistent;
    TAILQ_ENTRY(block_dirty_bitmap) link;   /* in node->bitmaps */
};

/*
 * Create a bitmap of the node's length; granularity a power of two from
 * 512 B to 2 GiB (0 picks the default: 64 KiB, or the cluster size).  name
 * may be NULL for an anonymous one.  Errors as QEMU words them ("Bitmap
 * already exists: NAME", "Granularity must be power of 2 between 512 and
 * 2147483648").
 */
struct block_dirty_bitmap *
block_dirty_bitmap_create(struct block_node *node, const char *name,
                          uint64_t granularity, struct err **errp);
void block_dirty_bitmap_release(struct block_dirty_bitmap *bm);
struct block_dirty_bitmap *block_dirty_bitmap_find(struct block_node *node,
                                                   const char *name);
/*
 * Look up {node, name} for QMP: node by node-name; errors worded as QEMU's
 * ("Cannot find device='X' nor node-name='X'", "Dirty bitmap 'B' not
 * found").
 */
struct block_dirty_bitmap *
block_dirty_bitmap_lookup(const char *node_name, const char *name,
                          struct err **errp);

void block_dirty_bitmap_enable(struct block_dirty_bitmap *bm);
void block_dirty_bitmap_disable(struct block_dirty_bitmap *bm);
void block_dirty_bitmap_set_busy(struct block_dirty_bitmap *bm, bool busy);
/* Checks for QMP changes: busy / inconsistent / read-only, as QEMU words
 * them ("Bitmap 'B' is currently in use by another operation and cannot be
 * used"). */
bool block_dirty_bitmap_check_writable(struct block_dirty_bitmap *bm,
                                       struct err **errp);

uint64_t block_dirty_bitmap_granularity(struct block_dirty_bitmap *bm);
uint64_t block_dirty_bitmap_count(struct block_dirty_bitmap *bm);
uint64_t block_dirty_bitmap_size(struct block_dirty_bitmap *bm);

void block_dirty_bitmap_set(struct block_dirty_bitmap *bm, uint64_t offset,
                            uint64_t bytes);
void block_dirty_bitmap_reset(struct block_dirty_bitmap *bm, uint64_t offset,
                              uint64_t bytes);
void block_dirty_bitmap_clear(struct block_dirty_bitmap *bm);
bool block_dirty_bitmap_get(struct block_dirty_bitmap *bm, uint64_t offset);
int64_t block_dirty_bitmap_next_dirty(struct block_dirty_bitmap *bm,
                                      uint64_t offset, uint64_t bytes);
int64_t block_dirty_bitmap_next_zero(struct block_dirty_bitmap *bm,
                                     uint64_t offset, uint64_t bytes);
bool block_dirty_bitmap_next_dirty_area(struct block_dirty_bitmap *bm,
                                        uint64_t offset, uint64_t bytes,
                                        uint64_t max_bytes,
                                        uint64_t *area_offset,
                                        uint64_t *area_bytes);
/* Dirty at offset? *pnum: length of the run with that state. */
bool block_dirty_bitmap_status(struct block_dirty_bitmap *bm, uint64_t offset,
                               uint64_t bytes, uint64_t *pnum);

/*
 * dst |= src (different nodes allowed, same granularity and size required:
 * "Bitmaps are incompatible" otherwise, or a granularity message).
 */
bool block_dirty_bitmap_merge(struct block_dirty_bitmap *dst,
                              struct block_dirty_bitmap *src,
                              struct err **errp);
/*
 * dst |= src for any two granularities (QEMU merges those since 4.1):
 * every dirty area of src sets the granules of dst it touches.  Sizes must
 * match ("Bitmaps are incompatible").
 */
bool block_dirty_bitmap_merge_any(struct block_dirty_bitmap *dst,
                                  struct block_dirty_bitmap *src,
                                  struct err **errp);
/* A snapshot of the content, owned by the caller (hbitmap_free). */
struct hbitmap *block_dirty_bitmap_copy_hbitmap(struct block_dirty_bitmap *bm);
/* Replace the content (same size and granularity). */
void block_dirty_bitmap_restore_hbitmap(struct block_dirty_bitmap *bm,
                                        const struct hbitmap *hb);
/* SHA-256 of the serialised content, as 64 lower-case hex digits + NUL. */
void block_dirty_bitmap_sha256(struct block_dirty_bitmap *bm, char out[65]);

/*
 * Persistence (stored in the image by formats that can: qcow2).  Main
 * thread.  can_store asks the node's format whether a new persistent
 * bitmap may be stored ("Can't store persistent bitmaps to NODE" when the
 * format cannot store any); set_persistent marks bm as stored at close;
 * remove_stored takes bm out of the image now (bm itself stays).
 */
bool block_dirty_bitmap_can_store(struct block_node *node, const char *name,
                                  uint64_t granularity, struct err **errp);
void block_dirty_bitmap_set_persistent(struct block_dirty_bitmap *bm,
                                       bool persistent);
bool block_dirty_bitmap_persistent(struct block_dirty_bitmap *bm);
bool block_dirty_bitmap_inconsistent(struct block_dirty_bitmap *bm);
bool block_dirty_bitmap_enabled(struct block_dirty_bitmap *bm);
int block_dirty_bitmap_remove_stored(struct block_dirty_bitmap *bm,
                                     struct err **errp);

/* Called by the request layer after a successful change of the content. */
void block_node_mark_dirty(struct block_node *node, uint64_t offset,
                           uint64_t bytes);
/* The node's length changed. */
void block_node_truncate_bitmaps(struct block_node *node, uint64_t size);
/* Release every bitmap of the node (node close). */
void block_node_release_bitmaps(struct block_node *node);

/* What query-named-block-nodes shows of one bitmap (QMP BlockDirtyInfo;
 * qmp/ turns it into JSON). */
struct block_dirty_bitmap_info {
    char *name;                /* NULL for an anonymous bitmap */
    uint64_t count;            /* dirty bytes */
    uint64_t granularity;
    bool recording;
    bool busy;
    bool persistent;
    bool inconsistent;
};
/* The node's bitmaps, in list order (newest first): *n entries, freed
 * with block_dirty_bitmap_info_free(). */
struct block_dirty_bitmap_info *block_node_dirty_bitmaps(
    struct block_node *node, size_t *n);
void block_dirty_bitmap_info_free(struct block_dirty_bitmap_info *info,
                                  size_t n);

#endif
