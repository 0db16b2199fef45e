/* SPDX-License-Identifier: MIT */
/*
 * Named dirty bitmaps on nodes: what QEMU's block-dirty-bitmap-* commands
 * and query-named-block-nodes see, and what the request layer marks after
 * every completed change.  The bits themselves live in util/hbitmap.c;
 * this file adds names, flags, QEMU's checks and error wording, and the
 * locking.
 *
 * Locking: node->bitmap_lock protects node->bitmaps and every bitmap's
 * content and flags.  It is a leaf: nothing here calls out while holding
 * it, and no two nodes' locks are ever held together (a merge across nodes
 * snapshots the source first).  Creating, releasing and renaming happen on
 * the main thread only, so a pointer returned by find/lookup stays valid
 * there without the lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/crypto.h>

#include "hbitmap.h"
#include "lockstep/dirty-bitmap.h"
#include "lockstep/driver.h"
#include "util.h"

/* QEMU's BDRV_BITMAP_MAX_NAME_SIZE, the qcow2 bitmap extension's limit. */
#define BITMAP_MAX_NAME_SIZE 1023
#define BITMAP_DEFAULT_GRANULARITY (64 * KiB)
#define BITMAP_MIN_GRANULARITY 512ULL
#define BITMAP_MAX_GRANULARITY (2 * GiB)

static struct block_dirty_bitmap *
find_locked(struct block_node *node, const char *name)
{
    struct block_dirty_bitmap *bm;

    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        if (bm->name && !strcmp(bm->name, name)) {
            return bm;
        }
    }
    return NULL;
}

static void
bitmap_free(struct block_dirty_bitmap *bm)
{
    hbitmap_free(bm->hb);
    free(bm->name);
    free(bm);
}

/*
 * Main thread.  The checks run in the order QEMU's block-dirty-bitmap-add
 * runs them, so the first error reported is the same.
 */
struct block_dirty_bitmap *
block_dirty_bitmap_create(struct block_node *node, const char *name,
                          uint64_t granularity, struct err **errp)
{
    struct block_dirty_bitmap *bm;
    struct hbitmap *hb;
    int64_t len;

    if (name && !*name) {
        err_setf(errp, "Bitmap name cannot be empty");
        return NULL;
    }
    if (granularity == 0) {
        /* QEMU's choice: the cluster size (at least 4 KiB) when the format
         * has one, else 64 KiB. */
        granularity = node->cluster_size ? MAX(4 * KiB, node->cluster_size)
                                         : BITMAP_DEFAULT_GRANULARITY;
    }
    if (!is_power_of_2(granularity) || granularity < BITMAP_MIN_GRANULARITY ||
        granularity > BITMAP_MAX_GRANULARITY) {
        err_setf(errp, "Granularity must be power of 2 between %llu and %llu",
                 BITMAP_MIN_GRANULARITY, BITMAP_MAX_GRANULARITY);
        return NULL;
    }
    if (name && strlen(name) > BITMAP_MAX_NAME_SIZE) {
        err_setf(errp, "Bitmap name is too long");
        return NULL;
    }
    len = block_getlength(node);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "could not get length of device");
        return NULL;
    }
    /* Outside the lock: the level arrays scale with the disk. */
    hb = hbitmap_new(len, log2_u64(granularity));
    if (!hb) {
        err_setf_errno(errp, ENOMEM, "Cannot allocate dirty bitmap");
        return NULL;
    }

    bm = xzalloc(sizeof(*bm));
    bm->node = node;
    bm->name = name ? xstrdup(name) : NULL;
    bm->hb = hb;

    mutex_lock(&node->bitmap_lock);
    if (name && find_locked(node, name)) {
        mutex_unlock(&node->bitmap_lock);
        bitmap_free(bm);
        err_setf(errp, "Bitmap already exists: %s", name);
        return NULL;
    }
    /* At the head: query-named-block-nodes lists the newest first. */
    TAILQ_INSERT_HEAD(&node->bitmaps, bm, link);
    mutex_unlock(&node->bitmap_lock);
    return bm;
}

/*
 * Main thread.  The caller decides whether releasing is allowed (QMP
 * checks busy first); a job may release its own busy anonymous bitmap.
 */
void
block_dirty_bitmap_release(struct block_dirty_bitmap *bm)
{
    struct block_node *node = bm->node;

    mutex_lock(&node->bitmap_lock);
    TAILQ_REMOVE(&node->bitmaps, bm, link);
    mutex_unlock(&node->bitmap_lock);
    bitmap_free(bm);
}

struct block_dirty_bitmap *
block_dirty_bitmap_find(struct block_node *node, const char *name)
{
    struct block_dirty_bitmap *bm;

    if (!name) {
        return NULL;
    }
    mutex_lock(&node->bitmap_lock);
    bm = find_locked(node, name);
    mutex_unlock(&node->bitmap_lock);
    return bm;
}

struct block_dirty_bitmap *
block_dirty_bitmap_lookup(const char *node_name, const char *name,
                          struct err **errp)
{
    struct block_dirty_bitmap *bm;
    struct block_node *node;

    if (!node_name) {
        err_setf(errp, "Node cannot be NULL");
        return NULL;
    }
    if (!name) {
        err_setf(errp, "Bitmap name cannot be NULL");
        return NULL;
    }
    /* QEMU looks the name up as a device, then as a node-name. */
    node = block_node_find(node_name);
    if (!node) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'",
                 node_name, node_name);
        return NULL;
    }
    bm = block_dirty_bitmap_find(node, name);
    if (!bm) {
        err_setf(errp, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    return bm;
}

void
block_dirty_bitmap_enable(struct block_dirty_bitmap *bm)
{
    mutex_lock(&bm->node->bitmap_lock);
    bm->disabled = false;
    mutex_unlock(&bm->node->bitmap_lock);
}

void
block_dirty_bitmap_disable(struct block_dirty_bitmap *bm)
{
    mutex_lock(&bm->node->bitmap_lock);
    bm->disabled = true;
    mutex_unlock(&bm->node->bitmap_lock);
}

void
block_dirty_bitmap_set_busy(struct block_dirty_bitmap *bm, bool busy)
{
    mutex_lock(&bm->node->bitmap_lock);
    bm->busy = busy;
    mutex_unlock(&bm->node->bitmap_lock);
}

/*
 * QEMU marks a persistent bitmap read-only when it was loaded from an image
 * opened read-only: it could never be stored back.  Nodes here carry no
 * such per-bitmap flag, so the same condition is computed.
 */
static bool
readonly_locked(const struct block_dirty_bitmap *bm)
{
    return bm->persistent && bm->node->read_only;
}

bool
block_dirty_bitmap_check_writable(struct block_dirty_bitmap *bm,
                                  struct err **errp)
{
    const char *name = bm->name ? bm->name : "";
    bool busy, readonly, inconsistent;

    mutex_lock(&bm->node->bitmap_lock);
    busy = bm->busy;
    readonly = readonly_locked(bm);
    inconsistent = bm->inconsistent;
    mutex_unlock(&bm->node->bitmap_lock);

    /* Same order and wording as QEMU's bdrv_dirty_bitmap_check(). */
    if (busy) {
        err_setf(errp, "Bitmap '%s' is currently in use by another "
                 "operation and cannot be used", name);
        return false;
    }
    if (readonly) {
        err_setf(errp, "Bitmap '%s' is readonly and cannot be modified",
                 name);
        return false;
    }
    if (inconsistent) {
        err_setf(errp, "Bitmap '%s' is inconsistent and cannot be used",
                 name);
        return false;
    }
    return true;
}

uint64_t
block_dirty_bitmap_granularity(struct block_dirty_bitmap *bm)
{
    /* Fixed at creation: no lock needed. */
    return hbitmap_granularity(bm->hb);
}

uint64_t
block_dirty_bitmap_count(struct block_dirty_bitmap *bm)
{
    uint64_t res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_count(bm->hb);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

uint64_t
block_dirty_bitmap_size(struct block_dirty_bitmap *bm)
{
    uint64_t res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_size(bm->hb);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

void
block_dirty_bitmap_set(struct block_dirty_bitmap *bm, uint64_t offset,
                       uint64_t bytes)
{
    mutex_lock(&bm->node->bitmap_lock);
    hbitmap_set(bm->hb, offset, bytes);
    mutex_unlock(&bm->node->bitmap_lock);
}

void
block_dirty_bitmap_reset(struct block_dirty_bitmap *bm, uint64_t offset,
                         uint64_t bytes)
{
    mutex_lock(&bm->node->bitmap_lock);
    hbitmap_reset(bm->hb, offset, bytes);
    mutex_unlock(&bm->node->bitmap_lock);
}

void
block_dirty_bitmap_clear(struct block_dirty_bitmap *bm)
{
    mutex_lock(&bm->node->bitmap_lock);
    hbitmap_reset_all(bm->hb);
    mutex_unlock(&bm->node->bitmap_lock);
}

bool
block_dirty_bitmap_get(struct block_dirty_bitmap *bm, uint64_t offset)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_get(bm->hb, offset);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

int64_t
block_dirty_bitmap_next_dirty(struct block_dirty_bitmap *bm, uint64_t offset,
                              uint64_t bytes)
{
    int64_t res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_next_dirty(bm->hb, offset, bytes);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

int64_t
block_dirty_bitmap_next_zero(struct block_dirty_bitmap *bm, uint64_t offset,
                             uint64_t bytes)
{
    int64_t res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_next_zero(bm->hb, offset, bytes);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

bool
block_dirty_bitmap_next_dirty_area(struct block_dirty_bitmap *bm,
                                   uint64_t offset, uint64_t bytes,
                                   uint64_t max_bytes,
                                   uint64_t *area_offset,
                                   uint64_t *area_bytes)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_next_dirty_area(bm->hb, offset, bytes, max_bytes,
                                  area_offset, area_bytes);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

bool
block_dirty_bitmap_status(struct block_dirty_bitmap *bm, uint64_t offset,
                          uint64_t bytes, uint64_t *pnum)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_status(bm->hb, offset, bytes, pnum);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

/* Granularity never changes after creation, so it needs no lock. */
static bool
check_granularity(struct block_dirty_bitmap *dst,
                  struct block_dirty_bitmap *src, struct err **errp)
{
    uint64_t dg = hbitmap_granularity(dst->hb);
    uint64_t sg = hbitmap_granularity(src->hb);

    if (dg != sg) {
        err_setf(errp, "Bitmaps are incompatible: granularity %" PRIu64
                 " differs from %" PRIu64, sg, dg);
        return false;
    }
    return true;
}

/*
 * No busy/read-only checks here: QMP handlers call check_writable first,
 * and jobs merge into bitmaps they hold busy themselves.
 */
bool
block_dirty_bitmap_merge(struct block_dirty_bitmap *dst,
                         struct block_dirty_bitmap *src, struct err **errp)
{
    struct hbitmap *snapshot;
    bool ok;

    if (!check_granularity(dst, src, errp)) {
        return false;
    }
    if (dst->node == src->node) {
        mutex_lock(&dst->node->bitmap_lock);
        ok = hbitmap_merge(dst->hb, src->hb);
        mutex_unlock(&dst->node->bitmap_lock);
    } else {
        /*
         * Holding two nodes' leaf locks at once would need an order
         * between nodes.  Copy the source instead (the copy visits only
         * its non-zero words), then merge under the destination's lock.
         */
        mutex_lock(&src->node->bitmap_lock);
        snapshot = hbitmap_copy(src->hb);
        mutex_unlock(&src->node->bitmap_lock);
        if (!snapshot) {
            err_setf_errno(errp, ENOMEM, "Cannot merge dirty bitmaps");
            return false;
        }
        mutex_lock(&dst->node->bitmap_lock);
        ok = hbitmap_merge(dst->hb, snapshot);
        mutex_unlock(&dst->node->bitmap_lock);
        hbitmap_free(snapshot);
    }
    if (!ok) {
        /* hbitmap_merge refuses only a size mismatch by now. */
        err_setf(errp, "Bitmaps are incompatible");
    }
    return ok;
}

bool
block_dirty_bitmap_merge_any(struct block_dirty_bitmap *dst,
                             struct block_dirty_bitmap *src,
                             struct err **errp)
{
    uint64_t size = block_dirty_bitmap_size(src);
    uint64_t offset = 0, area_offset, area_bytes;

    if (hbitmap_granularity(dst->hb) == hbitmap_granularity(src->hb)) {
        return block_dirty_bitmap_merge(dst, src, errp);
    }
    if (block_dirty_bitmap_size(dst) != size) {
        err_setf(errp, "Bitmaps are incompatible");
        return false;
    }
    while (offset < size &&
           block_dirty_bitmap_next_dirty_area(src, offset, size - offset,
                                              size - offset, &area_offset,
                                              &area_bytes)) {
        block_dirty_bitmap_set(dst, area_offset, area_bytes);
        offset = area_offset + area_bytes;
    }
    return true;
}

/* NULL when memory runs out: the copy is as large as the bitmap. */
struct hbitmap *
block_dirty_bitmap_copy_hbitmap(struct block_dirty_bitmap *bm)
{
    struct hbitmap *res;

    mutex_lock(&bm->node->bitmap_lock);
    res = hbitmap_copy(bm->hb);
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

void
block_dirty_bitmap_restore_hbitmap(struct block_dirty_bitmap *bm,
                                   const struct hbitmap *hb)
{
    bool ok;

    mutex_lock(&bm->node->bitmap_lock);
    hbitmap_reset_all(bm->hb);
    ok = hbitmap_merge(bm->hb, hb);
    mutex_unlock(&bm->node->bitmap_lock);
    /* A snapshot of another size or granularity is a caller's bug. */
    assert(ok);
}

/*
 * Feed the serialised form of hb (see hbitmap_serialize) to the hash a
 * chunk at a time, rebuilding each chunk from the dirty areas: the same
 * bytes as one big hbitmap_serialize, without a buffer the size of the
 * bitmap (2 GiB for a petabyte at 64 KiB), which a QMP client could
 * otherwise make the daemon allocate.
 */
#define SHA_CHUNK_BYTES (64 * 1024)

static int
hash_serialized(const struct hbitmap *hb, gnutls_hash_hd_t hd)
{
    const uint64_t chunk_granules = SHA_CHUNK_BYTES * 8ULL;
    unsigned gran_bits = hbitmap_granularity_bits(hb);
    uint64_t size = hbitmap_size(hb);
    size_t left = hbitmap_serialized_size(hb);
    unsigned char *buf = xmalloc(SHA_CHUNK_BYTES);
    int ret = 0;

    for (uint64_t first = 0; left > 0; first += chunk_granules) {
        size_t n = MIN(left, (size_t)SHA_CHUNK_BYTES);
        uint64_t lo = first << gran_bits;
        uint64_t hi = MIN((first + chunk_granules) << gran_bits, size);
        uint64_t a, b;

        memset(buf, 0, n);
        while (lo < hi &&
               hbitmap_next_dirty_area(hb, lo, hi - lo, 0, &a, &b)) {
            uint64_t g0 = (a >> gran_bits) - first;
            uint64_t g1 = ((a + b - 1) >> gran_bits) - first;

            for (uint64_t g = g0; g <= g1; g++) {
                buf[g / 8] |= 1u << (g % 8);
            }
            lo = a + b;
        }
        ret = gnutls_hash(hd, buf, n);
        if (ret < 0) {
            break;
        }
        left -= n;
    }
    free(buf);
    return ret;
}

/* On the (practically impossible) failure of GnuTLS, out is "". */
void
block_dirty_bitmap_sha256(struct block_dirty_bitmap *bm, char out[65])
{
    unsigned char digest[32];
    gnutls_hash_hd_t hd;
    int ret;

    out[0] = '\0';
    if (gnutls_hash_init(&hd, GNUTLS_DIG_SHA256) < 0) {
        return;
    }
    mutex_lock(&bm->node->bitmap_lock);
    ret = hash_serialized(bm->hb, hd);
    mutex_unlock(&bm->node->bitmap_lock);
    gnutls_hash_deinit(hd, digest);
    if (ret < 0) {
        return;
    }
    for (size_t i = 0; i < sizeof(digest); i++) {
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    }
}

bool
block_dirty_bitmap_can_store(struct block_node *node, const char *name,
                             uint64_t granularity, struct err **errp)
{
    if (!node->drv->bitmap_can_store) {
        err_setf(errp, "Can't store persistent bitmaps to %s: %s",
                 node->node_name, strerror(ENOTSUP));
        return false;
    }
    return node->drv->bitmap_can_store(node, name, granularity, errp);
}

void
block_dirty_bitmap_set_persistent(struct block_dirty_bitmap *bm,
                                  bool persistent)
{
    mutex_lock(&bm->node->bitmap_lock);
    bm->persistent = persistent;
    mutex_unlock(&bm->node->bitmap_lock);
}

bool
block_dirty_bitmap_persistent(struct block_dirty_bitmap *bm)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = bm->persistent;
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

bool
block_dirty_bitmap_inconsistent(struct block_dirty_bitmap *bm)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = bm->inconsistent;
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

bool
block_dirty_bitmap_enabled(struct block_dirty_bitmap *bm)
{
    bool res;

    mutex_lock(&bm->node->bitmap_lock);
    res = !bm->disabled;
    mutex_unlock(&bm->node->bitmap_lock);
    return res;
}

int
block_dirty_bitmap_remove_stored(struct block_dirty_bitmap *bm,
                                 struct err **errp)
{
    struct block_node *node = bm->node;

    if (!block_dirty_bitmap_persistent(bm) || !node->drv->bitmap_remove) {
        return 0;
    }
    return node->drv->bitmap_remove(node, bm->name, errp);
}

/* Any thread, from the request layer; disabled bitmaps do not record. */
void
block_node_mark_dirty(struct block_node *node, uint64_t offset,
                      uint64_t bytes)
{
    struct block_dirty_bitmap *bm;

    mutex_lock(&node->bitmap_lock);
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        if (!bm->disabled) {
            hbitmap_set(bm->hb, offset, bytes);
        }
    }
    mutex_unlock(&node->bitmap_lock);
}

void
block_node_truncate_bitmaps(struct block_node *node, uint64_t size)
{
    struct block_dirty_bitmap *bm;

    mutex_lock(&node->bitmap_lock);
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        hbitmap_truncate(bm->hb, size);
    }
    mutex_unlock(&node->bitmap_lock);
}

void
block_node_release_bitmaps(struct block_node *node)
{
    struct block_dirty_bitmap *bm;

    mutex_lock(&node->bitmap_lock);
    while ((bm = TAILQ_FIRST(&node->bitmaps))) {
        TAILQ_REMOVE(&node->bitmaps, bm, link);
        bitmap_free(bm);
    }
    mutex_unlock(&node->bitmap_lock);
}

struct block_dirty_bitmap_info *
block_node_dirty_bitmaps(struct block_node *node, size_t *n)
{
    struct block_dirty_bitmap_info *info = NULL;
    struct block_dirty_bitmap *bm;

    *n = 0;
    mutex_lock(&node->bitmap_lock);
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        info = xrealloc(info, (*n + 1) * sizeof(*info));
        info[(*n)++] = (struct block_dirty_bitmap_info) {
            .name = bm->name ? xstrdup(bm->name) : NULL,
            .count = hbitmap_count(bm->hb),
            .granularity = hbitmap_granularity(bm->hb),
            .recording = !bm->disabled,
            .busy = bm->busy,
            .persistent = bm->persistent,
            .inconsistent = bm->inconsistent,
        };
    }
    mutex_unlock(&node->bitmap_lock);
    return info;
}

void
block_dirty_bitmap_info_free(struct block_dirty_bitmap_info *info, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(info[i].name);
    }
    free(info);
}
