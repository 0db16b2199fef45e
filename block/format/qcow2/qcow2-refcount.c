/* SPDX-License-Identifier: MIT */
/*
 * qcow2 refcounts: the in-memory refcount table, refcount blocks through
 * the refblock cache, the cluster allocator and refcount table growth.
 *
 * Design notes.
 *  - A missing refcount block means "all these refcounts are 0".  A new
 *    block for table index j describes itself: it is placed in the range
 *    it covers, all of which is free precisely because the block did not
 *    exist.  The allocator asks for the cluster just past the run it is
 *    allocating (where QEMU puts it too), so that the run stays where it
 *    was found and the file grows without a gap; failing that (the run
 *    ends beyond the range) the block takes the range's first cluster.
 *  - Growing the table places the new table and the refcount blocks that
 *    describe it at the first cluster not covered by the old table (all
 *    free), writes them, flushes, switches the header in one 12-byte write,
 *    flushes, and only then frees the old table (fill before publish, free
 *    after unpublish).
 *  - Increases may reach the disk at any time.  Decreases are made only
 *    after the pointer removal is stable (callers use qcow2_l2_stable()),
 *    so a dirty refblock may also be written at any time.
 * All functions: caller holds s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

/* How far past the end of the file the allocator looks (clusters). */
#define ALLOC_SCAN_SLACK 65536

/* Every host range is claimed before anything is written there: the
 * background release keeps off it, and s->claimed_end covers it. */
static void
claim(struct qcow2_state *s, uint64_t end)
{
    qcow2_release_claim(&s->release, end);
    s->claimed_end = MAX(s->claimed_end, end);
}

int
qcow2_refcount_load_table(struct qcow2_state *s, struct err **errp)
{
    uint64_t bytes = (uint64_t)s->reftable_clusters * s->cluster_size;
    CLEANUP_FREE uint8_t *buf = malloc(bytes);
    int ret;

    if (!buf) {
        err_setf(errp, "Could not allocate the refcount table");
        return -ENOMEM;
    }
    ret = block_pread(s->file, s->reftable_offset, bytes, buf, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read the refcount table");
        return ret;
    }
    s->reftable_entries = bytes / 8;
    s->reftable = xcalloc(s->reftable_entries, sizeof(uint64_t));
    s->reftable_used = 0;
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t e = ld_be64(buf + i * 8);

        /* An unaligned entry is taken, as QEMU does: the image opens (for
         * check -r too), and refblock_get() flags it when it is used. */
        if ((e & QCOW2_REFT_RESERVED_MASK) || e >= QCOW2_MAX_HOST_OFFSET) {
            err_setf(errp, "Invalid refcount table entry %llu: 0x%llx",
                     (unsigned long long)i, (unsigned long long)e);
            return -EINVAL;
        }
        s->reftable[i] = e;
        if (e) {
            s->reftable_used = i + 1;
        }
    }
    if (s->reftable[0] == 0) {
        err_setf(errp, "The refcount block for the header is missing");
        return -EINVAL;
    }
    return 0;
}

/* Refcount block of table index idx: NULL data when not allocated. */
static int
refblock_get(struct qcow2_state *s, uint64_t idx, uint8_t **data)
{
    *data = NULL;
    if (idx >= s->reftable_entries || s->reftable[idx] == 0) {
        return 0;
    }
    if (!is_aligned(s->reftable[idx], s->cluster_size)) {
        qcow2_signal_corruption(s, -1, -1, "Refblock offset %#llx unaligned "
                                "(reftable index: %#llx)",
                                (unsigned long long)s->reftable[idx],
                                (unsigned long long)idx);
        return -EIO;
    }
    return qcow2_cache_get(s, &s->rb_cache, s->reftable[idx], false, data);
}

int
qcow2_get_refcount(struct qcow2_state *s, uint64_t cluster,
                   uint64_t *refcount)
{
    uint8_t *rb;
    int ret = refblock_get(s, cluster / s->refblock_entries, &rb);

    if (ret < 0) {
        return ret;
    }
    *refcount = rb ? qcow2_refcount_get(rb, cluster % s->refblock_entries,
                                        s->refcount_order)
                   : 0;
    if (rb) {
        qcow2_cache_put(&s->rb_cache, rb);
    }
    return 0;
}

/*
 * Count the clusters below "end" whose refcount is not zero, stopping once
 * the count passes "limit".  Refblocks the table does not point to count
 * nothing, so the scan costs one step per table entry and one per cluster
 * of the refblocks that exist, however large and sparse the file is.
 */
int
qcow2_count_used_clusters(struct qcow2_state *s, uint64_t end,
                          uint64_t limit, uint64_t *used)
{
    uint64_t nb_blocks = end / s->refblock_entries + 1;

    *used = 0;
    nb_blocks = MIN(nb_blocks, s->reftable_used);
    for (uint64_t idx = 0; idx < nb_blocks && *used <= limit; idx++) {
        uint64_t first = idx * s->refblock_entries;
        uint64_t n = first < end ? MIN(s->refblock_entries, end - first) : 0;
        uint8_t *rb;
        int ret = refblock_get(s, idx, &rb);

        if (ret < 0) {
            return ret;
        }
        if (!rb) {
            continue;
        }
        for (uint64_t i = 0; i < n; i++) {
            *used += qcow2_refcount_get(rb, i, s->refcount_order) != 0;
        }
        qcow2_cache_put(&s->rb_cache, rb);
    }
    return 0;
}

int
qcow2_refcounts_stable(struct qcow2_state *s)
{
    int ret;

    if (!s->rb_cache.nb_dirty) {
        return 0;
    }
    ret = qcow2_cache_writeback(s, &s->rb_cache);
    return ret < 0 ? ret : block_flush(s->file);
}

static int
write_header_field(struct qcow2_state *s, uint64_t off, const void *buf,
                   size_t len)
{
    int ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, off, len, buf);

    return ret < 0 ? ret : block_flush(s->file);
}

static int
write_incompat(struct qcow2_state *s, uint64_t bits)
{
    uint8_t be[8];

    st_be64(be, bits);
    return write_header_field(s, QCOW2_HDR_OFF_INCOMPAT, be, sizeof(be));
}

int
qcow2_mark_dirty(struct qcow2_state *s)
{
    int ret;

    if (s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        return 0;
    }
    /* What was written before stays covered by accurate refcounts. */
    ret = block_flush(s->file);
    if (ret == 0) {
        ret = write_incompat(s, s->h.incompatible_features |
                                QCOW2_INCOMPAT_DIRTY);
    }
    if (ret == 0) {
        s->h.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    }
    return ret;
}

int
qcow2_mark_clean(struct qcow2_state *s)
{
    int ret;

    if (!(s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    ret = write_incompat(s, s->h.incompatible_features &
                            ~QCOW2_INCOMPAT_DIRTY);
    if (ret == 0) {
        s->h.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    }
    return ret;
}

/*
 * Grow the refcount table so that index need exists.  The new table and
 * its own refcount blocks go to the first cluster the old table does not
 * cover; see the design notes.
 */
static int
reftable_grow(struct qcow2_state *s, uint64_t need)
{
    uint64_t cs = s->cluster_size, E = s->refblock_entries;
    uint64_t t = s->reftable_entries * E;           /* first new cluster */
    uint64_t n = div_round_up(MAX(need + 1, s->reftable_entries * 2) * 8,
                              cs);
    uint64_t k = 0, old_off = s->reftable_offset;
    uint32_t old_clusters = s->reftable_clusters;
    CLEANUP_FREE uint8_t *rbs = NULL;
    CLEANUP_FREE uint8_t *table = NULL;
    uint8_t hdr[12];
    int ret;

    /* Fixpoint: k refblocks must cover the table and themselves, and the
     * table must have entries for them. */
    for (;;) {
        uint64_t k2 = (t + n + k - 1) / E - t / E + 1;

        if (k2 != k) {
            k = k2;
        } else if ((t + n + k - 1) / E >= n * cs / 8) {
            n++;
        } else {
            break;
        }
    }
    if (n * cs > QCOW2_MAX_REFTABLE_BYTES ||
        (t + n + k) * cs >= QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }
    /* Uncovered clusters in use would mean the refcounts are lying. */
    ret = qcow2_overlap_refuse(s, 0, t * cs, (n + k) * cs);
    if (ret < 0) {
        return ret;
    }
    claim(s, (t + n + k) * cs);
    rbs = calloc(k, cs);
    table = calloc(n, cs);
    if (!rbs || !table) {
        return -ENOMEM;
    }
    for (uint64_t c = t; c < t + n + k; c++) {
        qcow2_refcount_set(rbs + (c / E - t / E) * cs, c % E,
                           s->refcount_order, 1);
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        st_be64(table + i * 8, s->reftable[i]);
    }
    for (uint64_t i = 0; i < k; i++) {
        st_be64(table + (t / E + i) * 8, (t + n + i) * cs);
    }
    block_debug_event(s->file, "refblock_alloc");
    ret = qcow2_meta_pwrite(s, 0, (t + n) * cs, k * cs, rbs);
    if (ret == 0) {
        block_debug_event(s->file, "reftable_grow");
        ret = qcow2_meta_pwrite(s, 0, t * cs, n * cs, table);
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        return ret;
    }
    st_be64(hdr, t * cs);
    st_be32(hdr + 8, (uint32_t)n);
    ret = write_header_field(s, QCOW2_HDR_OFF_REFTABLE, hdr, sizeof(hdr));
    if (ret < 0) {
        return ret;
    }
    free(s->reftable);
    s->reftable_entries = n * cs / 8;
    s->reftable = xcalloc(s->reftable_entries, sizeof(uint64_t));
    s->reftable_used = 0;
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        s->reftable[i] = ld_be64(table + i * 8);
        if (s->reftable[i]) {
            s->reftable_used = i + 1;
        }
    }
    s->reftable_offset = t * cs;
    s->reftable_clusters = (uint32_t)n;
    /* The old table is unreferenced now: a crash from here only leaks. */
    return qcow2_update_refcount(s, old_off, old_clusters, -1,
                                 QCOW2_DISCARD_OTHER);
}

/*
 * Make sure refcount block idx exists (self-describing, see notes): at
 * cluster "prefer" if that lies in the range the block covers.
 */
static int
refblock_ensure(struct qcow2_state *s, uint64_t idx, uint64_t prefer)
{
    uint64_t cs = s->cluster_size;
    uint64_t where = idx * s->refblock_entries;
    uint8_t *rb;
    uint8_t be[8];
    int ret;

    if (idx >= s->reftable_entries) {
        ret = reftable_grow(s, idx);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->reftable[idx]) {
        return 0;
    }
    if (prefer / s->refblock_entries == idx) {
        where = prefer;
    }
    if (idx == 0 || where * cs >= QCOW2_MAX_HOST_OFFSET) {
        qcow2_signal_corruption(s, -1, -1, "refcount block %llu cannot be "
                                "placed", (unsigned long long)idx);
        return -EIO;
    }
    ret = qcow2_overlap_refuse(s, 0, where * cs, cs);
    if (ret < 0) {
        return ret;
    }
    claim(s, (where + 1) * cs);
    block_debug_event(s->file, "refblock_alloc");
    ret = qcow2_cache_get(s, &s->rb_cache, where * cs, true, &rb);
    if (ret < 0) {
        return ret;
    }
    qcow2_refcount_set(rb, where % s->refblock_entries, s->refcount_order, 1);
    ret = qcow2_meta_pwrite(s, 0, where * cs, cs, rb);
    qcow2_cache_put(&s->rb_cache, rb);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        qcow2_cache_forget(&s->rb_cache, where * cs);
        return ret;
    }
    st_be64(be, where * cs);
    block_debug_event(s->file, "refblock_alloc_hookup");
    ret = qcow2_meta_pwrite(s, QCOW2_META_REFTABLE,
                            s->reftable_offset + idx * 8, 8, be);
    if (ret < 0) {
        qcow2_cache_forget(&s->rb_cache, where * cs);
        return ret;
    }
    s->reftable[idx] = where * cs;
    s->reftable_used = MAX(s->reftable_used, idx + 1);
    return 0;
}

/* Freed clusters not passed down yet: [start, start + n). */
struct discard_run {
    uint64_t start, n;
};

/*
 * Pass the freed run down as one discard (QEMU merges adjacent ones too):
 * one request per host-contiguous run, not one per cluster.  Refcounts are
 * 0 in memory and nothing points there any more; we hold s->lock, so the
 * allocator cannot hand the clusters out meanwhile.  A corrupt image gets
 * no writes at all, discards included.
 */
static void
discard_run_end(struct qcow2_state *s, struct discard_run *d)
{
    if (d->n && !s->corrupt) {
        block_pdiscard(s->file, d->start * s->cluster_size,
                       d->n * s->cluster_size);
    }
    d->n = 0;
}

static void
cluster_freed(struct qcow2_state *s, uint64_t cluster,
              enum qcow2_discard_type type, struct discard_run *d)
{
    if (cluster < s->free_hint) {
        s->free_hint = cluster;
    }
    if (s->free_byte_offset >> s->cluster_bits == cluster) {
        /* Compressed clusters must not be packed into a freed cluster. */
        s->free_byte_offset = 0;
    }
    qcow2_cache_forget(&s->l2_cache, cluster * s->cluster_size);
    if (!s->discard_passthrough[type]) {
        return;
    }
    if (d->n && d->start + d->n == cluster) {
        d->n++;
        return;
    }
    discard_run_end(s, d);
    d->start = cluster;
    d->n = 1;
}

static int
update_refcount_run(struct qcow2_state *s, uint64_t offset, uint64_t n,
                    int64_t delta, enum qcow2_discard_type type,
                    struct discard_run *d)
{
    uint64_t first = offset >> s->cluster_bits;
    uint64_t max = qcow2_refcount_max(s->refcount_order);

    if (delta < 0) {
        block_debug_event(s->file, "cluster_free");     /* as QEMU's */
    }
    for (uint64_t c = first; c < first + n; c++) {
        uint64_t idx = c / s->refblock_entries;
        uint64_t i = c % s->refblock_entries;
        uint64_t rc;
        uint8_t *rb;
        int ret;

        if (delta > 0) {
            ret = refblock_ensure(s, idx, first + n);
            if (ret < 0) {
                return ret;
            }
        }
        ret = refblock_get(s, idx, &rb);
        if (ret < 0) {
            return ret;
        }
        rc = rb ? qcow2_refcount_get(rb, i, s->refcount_order) : 0;
        if ((delta < 0 && rc < (uint64_t)-delta) ||
            (delta > 0 && max - rc < (uint64_t)delta) || !rb) {
            if (rb) {
                qcow2_cache_put(&s->rb_cache, rb);
            }
            qcow2_signal_corruption(s, -1, -1, "refcount of cluster %llu "
                                    "would go out of range",
                                    (unsigned long long)c);
            return -EIO;
        }
        if (rc + (uint64_t)delta == 0 &&
            qcow2_overlap(s, 0, c * s->cluster_size, s->cluster_size)) {
            /* Live metadata counted too low: freeing it would let the
             * allocator (and a discard) overwrite it. */
            qcow2_cache_put(&s->rb_cache, rb);
            qcow2_signal_corruption(s, (int64_t)(c * s->cluster_size),
                                    (int64_t)s->cluster_size,
                                    "Preventing the release of cluster "
                                    "0x%llx, which holds metadata",
                                    (unsigned long long)(c *
                                                         s->cluster_size));
            return -EIO;
        }
        qcow2_refcount_set(rb, i, s->refcount_order, rc + (uint64_t)delta);
        qcow2_cache_mark_dirty(&s->rb_cache, rb);
        qcow2_cache_put(&s->rb_cache, rb);
        if (rc + (uint64_t)delta == 0) {
            cluster_freed(s, c, type, d);
        }
    }
    return 0;
}

int
qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t n,
                      int64_t delta, enum qcow2_discard_type type)
{
    struct discard_run d = { 0, 0 };
    int ret = update_refcount_run(s, offset, n, delta, type, &d);

    /* What was freed before an error is free: pass it down too. */
    discard_run_end(s, &d);
    return ret;
}

/* Are clusters [c, c+n) all free? *next: where to continue if not. */
static int
run_is_free(struct qcow2_state *s, uint64_t c, uint64_t n, uint64_t *next)
{
    for (uint64_t i = c; i < c + n; i++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(s, i, &rc);

        if (ret < 0) {
            return ret;
        }
        if (rc) {
            *next = i + 1;
            return 0;
        }
    }
    return 1;
}

int64_t
qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n)
{
    uint64_t c = MAX(s->free_hint, 1);
    /* Past the end of the file everything is free in a sane image (bar a
     * few clusters leaked by a crash); refcounts saying otherwise far
     * beyond it are corrupt, and scanning them could take forever. */
    uint64_t limit = ((uint64_t)MAX(block_getlength(s->file), 0) >>
                      s->cluster_bits) + ALLOC_SCAN_SLACK + n;
    uint64_t next;
    int ret;

    for (;;) {
        if ((c + n) * s->cluster_size >= QCOW2_MAX_HOST_OFFSET) {
            return -ENOSPC;
        }
        if (c > limit) {
            qcow2_signal_corruption(s, -1, -1, "no free cluster found up "
                                    "to the end of the image file");
            return -EIO;
        }
        ret = run_is_free(s, c, n, &next);
        if (ret < 0) {
            return ret;
        }
        if (ret == 0) {
            c = next;
            continue;
        }
        /* A new refcount block goes just past the run; only where it
         * cannot does it take a cluster of the run (the search goes on). */
        for (uint64_t i = c; i < c + n && ret >= 0; i++) {
            ret = refblock_ensure(s, i / s->refblock_entries, c + n);
        }
        if (ret < 0) {
            return ret;
        }
        ret = run_is_free(s, c, n, &next);
        if (ret < 0) {
            return ret;
        }
        if (ret == 1) {
            break;
        }
        c = next;
    }
    claim(s, (c + n) * s->cluster_size);
    block_debug_event(s->file, "cluster_alloc");
    ret = qcow2_update_refcount(s, c * s->cluster_size, n, 1,
                                QCOW2_DISCARD_OTHER);
    if (ret < 0) {
        return ret;
    }
    if (n == 1) {
        /* The search went from the hint to c: nothing free before c. */
        s->free_hint = c + 1;
    }
    return (int64_t)(c * s->cluster_size);
}
