/* SPDX-License-Identifier: MIT */
/*
 * qcow2 guest-to-host mapping: L1 entries, L2 tables through the L2 cache,
 * allocation of L2 tables and growth of the L1 table.
 *
 * Ordering (qcow2 spec, crash safety): a new L2 table gets its refcount
 * made stable, is written zeroed and flushed, and only then does the L1
 * entry point to it.  A dirty L2 table is written only after a flush that
 * covers every write done before (qcow2_l2_before_write): its entries may
 * point at data and refcounts that would otherwise not be on the disk.  A
 * grown L1 is written and flushed before the header switches to it; the
 * old L1 is freed after that.  All functions: caller holds s->lock.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

/* L2 table offset for guest_cluster: 0 = none; -EIO for a bad entry. */
static int
l2_offset(struct qcow2_state *s, uint64_t guest_cluster, uint64_t *off)
{
    uint64_t idx = guest_cluster / s->l2_entries;
    uint64_t e;

    *off = 0;
    if (idx >= s->l1_size) {
        return 0;
    }
    e = s->l1[idx];
    *off = e & QCOW2_L1E_OFFSET_MASK;
    if ((e & QCOW2_L1E_RESERVED_MASK) || !is_aligned(*off, s->cluster_size) ||
        (*off && *off < s->cluster_size)) {
        qcow2_signal_corruption(s, -1, -1, "L1 entry %llu is invalid: "
                                "0x%llx", (unsigned long long)idx,
                                (unsigned long long)e);
        return -EIO;
    }
    return 0;
}

int
qcow2_get_l2e(struct qcow2_state *s, uint64_t guest_cluster,
              struct qcow2_l2e *out)
{
    uint64_t off, i = guest_cluster % s->l2_entries;
    uint8_t *l2;
    int ret;

    out->entry = 0;
    out->bitmap = 0;
    ret = l2_offset(s, guest_cluster, &off);
    if (ret < 0 || off == 0) {
        return ret;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, off, false, &l2);
    if (ret < 0) {
        return ret;
    }
    out->entry = ld_be64(l2 + i * s->l2_entry_size);
    if (s->extended_l2) {
        out->bitmap = ld_be64(l2 + i * s->l2_entry_size + 8);
    }
    qcow2_cache_put(&s->l2_cache, l2);
    return 0;
}

/*
 * Write L1 entry index: the whole block of the file's request alignment
 * around it (at most a cluster, so inside the table's clusters), built
 * from the in-memory table, as QEMU writes a sector of it.  Writing the
 * 8 bytes alone made the block layer read the block first (O_DIRECT: a
 * read-modify-write), one more request to the disk per new L2 table.
 * The neighbours' in-memory values are what the disk holds: the table
 * changes only under s->lock, each change is written before the lock is
 * dropped, and a failed write puts the old value back.  Entries past
 * l1_size write as zero (unused space of the table's clusters).
 */
int
qcow2_write_l1_entry(struct qcow2_state *s, uint64_t index)
{
    uint64_t n = MIN(MAX(s->file->limits.request_alignment, 8),
                     s->cluster_size) / 8;
    uint64_t first = index / n * n;
    uint8_t buf[4096];
    uint8_t *be = n * 8 <= sizeof(buf) ? buf : xmalloc(n * 8);
    int ret;

    for (uint64_t i = 0; i < n; i++) {
        st_be64(be + i * 8, first + i < s->l1_size ? s->l1[first + i] : 0);
    }
    block_debug_event(s->file, "l1_update");
    ret = qcow2_meta_pwrite(s, QCOW2_META_L1, s->l1_offset + first * 8,
                            n * 8, be);
    if (be != buf) {
        free(be);
    }
    return ret;
}

/*
 * The L2 table at old is shared with a snapshot: give the active L1 its
 * own copy.  The data clusters keep their refcounts (each is still
 * reached once through the copy and once through the snapshot's table)
 * and their entries keep COPIED clear, so writes to them copy too.  The
 * copy is written and flushed before the L1 entry points at it, which is
 * flushed before the old table loses the active L1's reference.
 */
static int
cow_l2(struct qcow2_state *s, uint64_t idx, uint64_t old)
{
    CLEANUP_FREE uint8_t *copy = xmalloc(s->cluster_size);
    int64_t new_off;
    uint8_t *l2;
    int ret;

    ret = qcow2_cache_get(s, &s->l2_cache, old, false, &l2);
    if (ret < 0) {
        return ret;
    }
    memcpy(copy, l2, s->cluster_size);
    qcow2_cache_put(&s->l2_cache, l2);
    new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return (int)new_off;
    }
    ret = qcow2_overlap_refuse(s, 0, (uint64_t)new_off, s->cluster_size);
    if (ret == 0) {
        ret = qcow2_refcounts_stable(s);
    }
    if (ret == 0) {
        ret = qcow2_cache_get(s, &s->l2_cache, (uint64_t)new_off, true, &l2);
    }
    if (ret < 0) {
        return ret;
    }
    memcpy(l2, copy, s->cluster_size);
    block_debug_event(s->file, "l2_alloc_write");
    ret = qcow2_meta_pwrite(s, 0, (uint64_t)new_off, s->cluster_size, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        qcow2_cache_forget(&s->l2_cache, (uint64_t)new_off);
        return ret;
    }
    s->l1[idx] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
    ret = qcow2_write_l1_entry(s, idx);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        s->l1[idx] = old;
        return ret;
    }
    return qcow2_update_refcount(s, old, 1, -1, QCOW2_DISCARD_SNAPSHOT);
}

int
qcow2_ensure_l2(struct qcow2_state *s, uint64_t guest_cluster)
{
    uint64_t idx = guest_cluster / s->l2_entries;
    uint64_t off, rc;
    int64_t new_off;
    uint8_t *l2;
    int ret;

    if (idx >= s->l1_size) {
        return -EIO;
    }
    ret = l2_offset(s, guest_cluster, &off);
    if (ret < 0) {
        return ret;
    }
    if (off) {
        if (s->l1[idx] & QCOW2_OFLAG_COPIED) {
            return 0;
        }
        /* Not marked COPIED: fine to repair if we are the only user. */
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc != 1) {
            return cow_l2(s, idx, off);
        }
        s->l1[idx] |= QCOW2_OFLAG_COPIED;
        return qcow2_write_l1_entry(s, idx);
    }
    new_off = qcow2_alloc_clusters(s, 1);
    if (new_off < 0) {
        return (int)new_off;
    }
    /* Only possible when the refcounts lie: stop before any change. */
    ret = qcow2_overlap_refuse(s, 0, (uint64_t)new_off, s->cluster_size);
    if (ret == 0) {
        ret = qcow2_refcounts_stable(s);
    }
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, (uint64_t)new_off, true, &l2);
    if (ret < 0) {
        return ret;
    }
    block_debug_event(s->file, "l2_alloc_write");
    ret = qcow2_meta_pwrite(s, 0, (uint64_t)new_off, s->cluster_size, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        qcow2_cache_forget(&s->l2_cache, (uint64_t)new_off);
        return ret;
    }
    s->l1[idx] = (uint64_t)new_off | QCOW2_OFLAG_COPIED;
    ret = qcow2_write_l1_entry(s, idx);
    if (ret < 0) {
        s->l1[idx] = 0;
    }
    return ret;
}

int
qcow2_set_l2e(struct qcow2_state *s, uint64_t guest_cluster,
              const struct qcow2_l2e *e)
{
    uint64_t off, i = guest_cluster % s->l2_entries;
    uint8_t *l2;
    int ret;

    ret = qcow2_ensure_l2(s, guest_cluster);
    if (ret < 0) {
        return ret;
    }
    ret = l2_offset(s, guest_cluster, &off);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_cache_get(s, &s->l2_cache, off, false, &l2);
    if (ret < 0) {
        return ret;
    }
    st_be64(l2 + i * s->l2_entry_size, e->entry);
    if (s->extended_l2) {
        st_be64(l2 + i * s->l2_entry_size + 8, e->bitmap);
    }
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    qcow2_cache_put(&s->l2_cache, l2);
    return 0;
}

int
qcow2_l2_before_write(struct qcow2_state *s)
{
    /* Lazy refcounts: the dirty bit stands in for the refcount blocks. */
    int ret = s->lazy_refcounts ? qcow2_mark_dirty(s)
                                : qcow2_cache_writeback(s, &s->rb_cache);

    return ret < 0 ? ret : block_flush(s->file);
}

int
qcow2_l2_stable(struct qcow2_state *s)
{
    int ret;

    if (!s->l2_cache.nb_dirty) {
        return 0;
    }
    ret = qcow2_cache_writeback(s, &s->l2_cache);
    return ret < 0 ? ret : block_flush(s->file);
}

int
qcow2_grow_l1(struct qcow2_state *s, uint64_t min_size)
{
    uint64_t cs = s->cluster_size;
    uint64_t bytes = min_size * 8;
    uint64_t nclusters = div_round_up(bytes, cs);
    uint64_t old_off = s->l1_offset;
    uint64_t old_clusters = div_round_up((uint64_t)s->l1_size * 8, cs);
    CLEANUP_FREE uint8_t *buf = NULL;
    uint64_t *l1;
    uint8_t hdr[12];
    int64_t off;
    int ret;

    if (min_size <= s->l1_size) {
        return 0;
    }
    if (bytes > QCOW2_MAX_L1_BYTES) {
        return -EFBIG;
    }
    buf = calloc(nclusters, cs);
    l1 = calloc(min_size, sizeof(uint64_t));
    if (!buf || !l1) {
        free(l1);
        return -ENOMEM;
    }
    memcpy(l1, s->l1, (size_t)s->l1_size * sizeof(uint64_t));
    for (uint64_t i = 0; i < min_size; i++) {
        st_be64(buf + i * 8, l1[i]);
    }
    off = qcow2_alloc_clusters(s, nclusters);
    ret = off < 0 ? (int)off : qcow2_refcounts_stable(s);
    if (ret == 0) {
        block_debug_event(s->file, "l1_grow_write_table");
        ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, nclusters * cs, buf);
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret == 0) {
        st_be32(hdr, (uint32_t)min_size);
        st_be64(hdr + 4, (uint64_t)off);
        block_debug_event(s->file, "l1_grow_activate_table");
        ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, QCOW2_HDR_OFF_L1_SIZE,
                                sizeof(hdr), hdr);
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        free(l1);
        return ret;
    }
    free(s->l1);
    s->l1 = l1;
    s->l1_size = (uint32_t)min_size;
    s->l1_offset = (uint64_t)off;
    s->h.l1_size = s->l1_size;
    s->h.l1_table_offset = s->l1_offset;
    if (old_clusters) {
        return qcow2_update_refcount(s, old_off, old_clusters, -1,
                                     QCOW2_DISCARD_OTHER);
    }
    return 0;
}
