/* SPDX-License-Identifier: MIT */
/*
 * qcow2 internal snapshots (qcow2 spec, "Snapshots"): the snapshot table,
 * and creating, applying and deleting snapshots of an image opened
 * read-write with nothing in flight (lockstep-img snapshot).
 *
 * A snapshot is a copy of the active L1 table; every L2 table and data
 * cluster counts one reference per L1 table that reaches it, so a cluster
 * reached by a snapshot has a refcount of 2 or more and is copied before
 * a write (the write path allocates anew for entries without the COPIED
 * flag; qcow2_ensure_l2 copies shared L2 tables).
 *
 * Crash safety, as for every qcow2 update: new references are counted
 * (refcounts written and flushed) before anything points at them, the
 * table that points is written and flushed before the header switches to
 * it, and references are dropped only after the pointer is gone.  A crash
 * in between leaks clusters (qemu-img check -r leaks repairs that), never
 * frees one in use.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

#define SN_HDR 40                   /* fixed part of a table entry */
#define SN_EXTRA 24                 /* extra data we write (spec: v3 >= 16) */
#define SN_MAX 65536                /* QEMU's limits, so QEMU reads ours */
#define SN_MAX_TABLE (64ULL << 20)
#define SN_MAX_L1_BYTES (32ULL << 20)

struct sn_table {
    struct qcow2_snapshot *sn;
    uint32_t n;
};

static void
table_free(struct sn_table *t)
{
    for (uint32_t i = 0; i < t->n; i++) {
        free(t->sn[i].id);
        free(t->sn[i].name);
        free(t->sn[i].extra);
    }
    free(t->sn);
    memset(t, 0, sizeof(*t));
}

void
qcow2_snapshots_free(struct qcow2_snapshot *sn, uint32_t n)
{
    struct sn_table t = { sn, n };

    table_free(&t);
}

static char *
dup_bytes(const uint8_t *p, size_t n)
{
    char *s = xmalloc(n + 1);

    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Read the snapshot table the header names into t. */
static int
table_read(struct qcow2_state *s, struct sn_table *t, struct err **errp)
{
    uint64_t pos = s->h.snapshots_offset;
    int ret;

    memset(t, 0, sizeof(*t));
    if (s->h.nb_snapshots == 0) {
        return 0;
    }
    if (s->h.nb_snapshots > SN_MAX) {
        err_setf(errp, "Too many snapshots (%u)", s->h.nb_snapshots);
        return -EFBIG;
    }
    t->sn = calloc(s->h.nb_snapshots, sizeof(*t->sn));
    if (!t->sn) {
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
        struct qcow2_snapshot *sn = &t->sn[t->n];
        uint8_t h[SN_HDR];
        uint32_t extra;
        uint16_t id_len, name_len;
        CLEANUP_FREE uint8_t *var = NULL;

        if (pos - s->h.snapshots_offset + SN_HDR > SN_MAX_TABLE) {
            err_setf(errp, "Snapshot table too big");
            return -EFBIG;
        }
        ret = block_pread(s->file, pos, SN_HDR, h, 0);
        if (ret < 0) {
            err_setf(errp, "Failed to read the snapshot table: %s",
                     strerror(-ret));
            return ret;
        }
        sn->l1_offset = ld_be64(h);
        sn->l1_size = ld_be32(h + 8);
        id_len = ld_be16(h + 12);
        name_len = ld_be16(h + 14);
        sn->date_sec = ld_be32(h + 16);
        sn->date_nsec = ld_be32(h + 20);
        sn->vm_clock_nsec = ld_be64(h + 24);
        sn->vm_state_size = ld_be32(h + 32);
        extra = ld_be32(h + 36);
        if (extra > 1024) {
            err_setf(errp, "Too much extra metadata in snapshot table "
                     "entry %u", i);
            return -EFBIG;
        }
        var = xmalloc((size_t)extra + id_len + name_len + 1);
        if (extra + id_len + name_len) {
            ret = block_pread(s->file, pos + SN_HDR,
                              extra + id_len + name_len, var, 0);
            if (ret < 0) {
                err_setf(errp, "Failed to read the snapshot table: %s",
                         strerror(-ret));
                return ret;
            }
        }
        sn->extra = (uint8_t *)dup_bytes(var, extra);
        sn->extra_len = extra;
        sn->disk_size = s->node->size;
        if (extra >= 8) {
            sn->vm_state_size = ld_be64(var);
        }
        if (extra >= 16) {
            sn->disk_size = ld_be64(var + 8);
        }
        sn->id = dup_bytes(var + extra, id_len);
        sn->name = dup_bytes(var + extra + id_len, name_len);
        t->n++;
        pos += align_up(SN_HDR + (uint64_t)extra + id_len + name_len, 8);
        if (!is_aligned(sn->l1_offset, s->cluster_size) ||
            (uint64_t)sn->l1_size * 8 > SN_MAX_L1_BYTES) {
            err_setf(errp, "Snapshot L1 table offset invalid");
            return -EINVAL;
        }
    }
    return 0;
}

/* The table in its on-disk form, padded to whole clusters. */
static uint8_t *
table_encode(struct qcow2_state *s, const struct sn_table *t,
             uint64_t *len, uint64_t *alloc)
{
    uint64_t n = 0, pos = 0;
    uint8_t *buf;

    for (uint32_t i = 0; i < t->n; i++) {
        n += align_up(SN_HDR + (uint64_t)t->sn[i].extra_len +
                      strlen(t->sn[i].id) + strlen(t->sn[i].name), 8);
    }
    *len = n;
    *alloc = align_up(MAX(n, 1), s->cluster_size);
    buf = xmalloc(*alloc);
    memset(buf, 0, *alloc);
    for (uint32_t i = 0; i < t->n; i++) {
        const struct qcow2_snapshot *sn = &t->sn[i];
        size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
        uint8_t *p = buf + pos;

        st_be64(p, sn->l1_offset);
        st_be32(p + 8, sn->l1_size);
        st_be16(p + 12, (uint16_t)id_len);
        st_be16(p + 14, (uint16_t)name_len);
        st_be32(p + 16, sn->date_sec);
        st_be32(p + 20, sn->date_nsec);
        st_be64(p + 24, sn->vm_clock_nsec);
        st_be32(p + 32, sn->vm_state_size > UINT32_MAX
                        ? 0 : (uint32_t)sn->vm_state_size);
        st_be32(p + 36, sn->extra_len);
        memcpy(p + SN_HDR, sn->extra, sn->extra_len);
        memcpy(p + SN_HDR + sn->extra_len, sn->id, id_len);
        memcpy(p + SN_HDR + sn->extra_len + id_len, sn->name, name_len);
        pos += align_up(SN_HDR + (uint64_t)sn->extra_len + id_len +
                        name_len, 8);
    }
    return buf;
}

/*
 * Write t as the new table: new clusters, flushed, then the header
 * (nb_snapshots and snapshots_offset in one write), flushed; then the
 * old table's clusters are freed.
 */
static int
table_write(struct qcow2_state *s, const struct sn_table *t,
            struct err **errp)
{
    uint64_t len, alloc, old_off = s->h.snapshots_offset;
    uint64_t old_len = 0;
    CLEANUP_FREE uint8_t *buf = table_encode(s, t, &len, &alloc);
    int64_t off = 0;
    uint8_t hdr[12];
    int ret = 0;

    if (len > SN_MAX_TABLE) {
        err_setf(errp, "Snapshot table too big");
        return -EFBIG;
    }
    if (s->h.nb_snapshots) {
        struct sn_table old;
        uint64_t a;
        CLEANUP_FREE uint8_t *ob = NULL;

        /* The size of the old table, to free its clusters. */
        ret = table_read(s, &old, NULL);
        if (ret == 0) {
            ob = table_encode(s, &old, &old_len, &a);
        }
        table_free(&old);
        if (ret < 0) {
            err_setf(errp, "Failed to read the snapshot table");
            return ret;
        }
    }
    if (t->n) {
        off = qcow2_alloc_clusters(s, alloc / s->cluster_size);
        ret = off < 0 ? (int)off : qcow2_refcounts_stable(s);
        if (ret == 0) {
            ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, alloc, buf);
        }
        if (ret == 0) {
            ret = block_flush(s->file);
        }
        if (ret < 0) {
            err_setf(errp, "Failed to write the snapshot table: %s",
                     strerror(-ret));
            return ret;
        }
    }
    st_be32(hdr, t->n);
    st_be64(hdr + 4, (uint64_t)off);
    ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, 60, sizeof(hdr), hdr);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        err_setf(errp, "Failed to update the image header: %s",
                 strerror(-ret));
        return ret;
    }
    s->h.nb_snapshots = t->n;
    s->h.snapshots_offset = (uint64_t)off;
    if (old_len) {
        ret = qcow2_update_refcount(s, old_off,
                                    div_round_up(old_len, s->cluster_size),
                                    -1, QCOW2_DISCARD_SNAPSHOT);
        if (ret == 0) {
            ret = qcow2_refcounts_stable(s);
        }
        if (ret < 0) {
            /* The new table is in place: only a leak is left. */
            fprintf(stderr, "qcow2_free_clusters failed: %s\n",
                    strerror(-ret));
        }
    }
    return 0;
}

/* The host clusters an L2 entry holds: first offset and count (0: none). */
static uint64_t
entry_clusters(struct qcow2_state *s, uint64_t entry, uint64_t *off)
{
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen, first, last;

        qcow2_compressed_decode(entry, s->cluster_bits, &coff, &clen);
        first = align_down(coff, 512) >> s->cluster_bits;
        last = (coff + clen - 1) >> s->cluster_bits;
        *off = first << s->cluster_bits;
        return last - first + 1;
    }
    *off = entry & QCOW2_L2E_OFFSET_MASK;
    return *off ? 1 : 0;
}

/*
 * Add delta to the refcounts of n clusters at off.  A refcount already at
 * its width's maximum gives -ERANGE before any change to it (narrow
 * refcount_bits): a reference that cannot be counted is an error for the
 * user, not a corruption of the image.
 */
static int
add_refs(struct qcow2_state *s, uint64_t off, uint64_t n, int delta)
{
    uint64_t max = qcow2_refcount_max(s->refcount_order);

    for (uint64_t c = 0; delta > 0 && c < n; c++) {
        uint64_t rc;
        int ret = qcow2_get_refcount(s, (off >> s->cluster_bits) + c, &rc);

        if (ret < 0) {
            return ret;
        }
        if (rc >= max) {
            return -ERANGE;
        }
    }
    return qcow2_update_refcount(s, off, n, delta, QCOW2_DISCARD_SNAPSHOT);
}

static int
read_l1(struct qcow2_state *s, uint64_t off, uint32_t size, uint64_t **out)
{
    CLEANUP_FREE uint8_t *buf = NULL;
    uint64_t *l1 = calloc(MAX(size, 1), sizeof(uint64_t));
    int ret = 0;

    buf = xmalloc(MAX((size_t)size * 8, 1));
    if (!l1) {
        return -ENOMEM;
    }
    if (size) {
        ret = block_pread(s->file, off, (uint64_t)size * 8, buf, 0);
    }
    for (uint32_t i = 0; i < size && ret == 0; i++) {
        l1[i] = ld_be64(buf + i * 8);
        if ((l1[i] & QCOW2_L1E_RESERVED_MASK) ||
            !is_aligned(l1[i] & QCOW2_L1E_OFFSET_MASK, s->cluster_size)) {
            ret = -EIO;
        }
    }
    if (ret < 0) {
        free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/*
 * Add delta to the refcount of every L2 table and data cluster l1
 * reaches.  With delta > 0 the COPIED flags of the L2 entries are
 * cleared on the way (the clusters become shared).
 */
static int
update_refs(struct qcow2_state *s, uint64_t *l1, uint32_t l1_size,
            int delta)
{
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2off = l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint8_t *l2;
        bool dirty = false;
        int ret;

        if (!l2off) {
            continue;
        }
        ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t j = 0; j < s->l2_entries && ret == 0; j++) {
            uint8_t *p = l2 + j * s->l2_entry_size;
            uint64_t e = ld_be64(p), off, n;

            n = entry_clusters(s, e, &off);
            if (n) {
                ret = add_refs(s, off, n, delta);
            }
            if (delta > 0 && (e & QCOW2_OFLAG_COPIED)) {
                st_be64(p, e & ~QCOW2_OFLAG_COPIED);
                dirty = true;
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(&s->l2_cache, l2);
        }
        qcow2_cache_put(&s->l2_cache, l2);
        if (ret == 0) {
            ret = add_refs(s, l2off, 1, delta);
        }
        if (ret < 0) {
            return ret;
        }
        if (delta > 0) {
            l1[i] &= ~QCOW2_OFLAG_COPIED;
        }
    }
    return 0;
}

/* Write the whole active L1 table (in place) and flush. */
static int
write_active_l1(struct qcow2_state *s)
{
    uint64_t len = (uint64_t)s->l1_size * 8;
    CLEANUP_FREE uint8_t *buf = xmalloc(MAX(len, 1));
    int ret;

    if (!len) {
        return 0;
    }
    for (uint32_t i = 0; i < s->l1_size; i++) {
        st_be64(buf + i * 8, s->l1[i]);
    }
    block_debug_event(s->file, "l1_update");
    ret = qcow2_meta_pwrite(s, QCOW2_META_L1, s->l1_offset, len, buf);
    return ret < 0 ? ret : block_flush(s->file);
}

/*
 * Set the COPIED flags of the active L1 table and of the L2 tables it
 * reaches from the refcounts (spec: set exactly when the refcount is 1).
 */
static int
fix_copied(struct qcow2_state *s)
{
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2off = s->l1[i] & QCOW2_L1E_OFFSET_MASK, rc;
        uint8_t *l2;
        bool dirty = false;
        int ret;

        if (!l2off) {
            s->l1[i] = 0;
            continue;
        }
        ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        s->l1[i] = rc == 1 ? l2off | QCOW2_OFLAG_COPIED : l2off;
        if (rc != 1) {
            continue;   /* shared: its entries reach refcounts >= 2 */
        }
        ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t j = 0; j < s->l2_entries && ret == 0; j++) {
            uint8_t *p = l2 + j * s->l2_entry_size;
            uint64_t e = ld_be64(p), host = e & QCOW2_L2E_OFFSET_MASK;
            uint64_t want;

            if ((e & QCOW2_OFLAG_COMPRESSED) || !host) {
                continue;
            }
            ret = qcow2_get_refcount(s, host >> s->cluster_bits, &rc);
            want = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
            if (ret == 0 && want != e) {
                st_be64(p, want);
                dirty = true;
            }
        }
        if (dirty) {
            qcow2_cache_mark_dirty(&s->l2_cache, l2);
        }
        qcow2_cache_put(&s->l2_cache, l2);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/* Everything cached on the disk: refcounts, then L2 tables, flushed. */
static int
settle(struct qcow2_state *s)
{
    int ret = qcow2_refcounts_stable(s);

    if (ret == 0) {
        ret = qcow2_cache_writeback(s, &s->l2_cache);
    }
    return ret < 0 ? ret : block_flush(s->file);
}

/* Index of the snapshot with this ID, else of the first with this name. */
static int
find(const struct sn_table *t, const char *id_or_name)
{
    for (uint32_t i = 0; i < t->n; i++) {
        if (strcmp(t->sn[i].id, id_or_name) == 0) {
            return (int)i;
        }
    }
    for (uint32_t i = 0; i < t->n; i++) {
        if (strcmp(t->sn[i].name, id_or_name) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static struct qcow2_state *
state_of(struct block_node *node, struct err **errp)
{
    if (!node->drv || strcmp(node->drv->name, "qcow2") != 0) {
        err_setf(errp, "Operation not supported");
        return NULL;
    }
    return node->opaque;
}

int
qcow2_snapshot_list(struct block_node *node, struct qcow2_snapshot **out,
                    uint32_t *n, struct err **errp)
{
    struct qcow2_state *s = state_of(node, errp);
    struct sn_table t;
    int ret;

    *out = NULL;
    *n = 0;
    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock_may_block(&s->lock);
    ret = table_read(s, &t, errp);
    mutex_unlock(&s->lock);
    if (ret < 0) {
        table_free(&t);
        return ret;
    }
    *out = t.sn;
    *n = t.n;
    return 0;
}

/* The next free numeric ID: one above the highest (as QEMU numbers). */
static char *
new_id(const struct sn_table *t)
{
    unsigned long max = 0;
    char buf[32];

    for (uint32_t i = 0; i < t->n; i++) {
        unsigned long v = strtoul(t->sn[i].id, NULL, 10);

        max = MAX(max, v);
    }
    snprintf(buf, sizeof(buf), "%lu", max + 1);
    return xstrdup(buf);
}

static int
create_locked(struct qcow2_state *s, const char *name, struct err **errp)
{
    struct sn_table t;
    struct qcow2_snapshot *sn;
    CLEANUP_FREE uint8_t *buf = NULL;
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    struct timeval tv;
    int64_t l1_off = 0;
    int ret;

    ret = table_read(s, &t, errp);
    if (ret < 0) {
        table_free(&t);
        return ret;
    }
    if (t.n >= SN_MAX) {
        table_free(&t);
        err_setf(errp, "Too many snapshots");
        return -EFBIG;
    }
    /* Count the snapshot's references and unmark COPIED: before the
     * snapshot's L1 exists, so a crash only leaks. */
    ret = settle(s);
    if (ret == 0) {
        ret = update_refs(s, s->l1, s->l1_size, +1);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret == 0) {
        ret = write_active_l1(s);
    }
    if (ret < 0) {
        table_free(&t);
        err_setf(errp, "Failed to count the snapshot's references: %s",
                 ret == -ERANGE ? "a refcount would exceed refcount_bits"
                                : strerror(-ret));
        return ret;
    }
    if (l1_bytes) {
        uint64_t alloc = align_up(l1_bytes, s->cluster_size);

        buf = xmalloc(alloc);
        memset(buf, 0, alloc);
        for (uint32_t i = 0; i < s->l1_size; i++) {
            st_be64(buf + i * 8, s->l1[i]);
        }
        l1_off = qcow2_alloc_clusters(s, alloc / s->cluster_size);
        ret = l1_off < 0 ? (int)l1_off : qcow2_refcounts_stable(s);
        if (ret == 0) {
            ret = qcow2_meta_pwrite(s, 0, (uint64_t)l1_off, alloc, buf);
        }
        if (ret == 0) {
            ret = block_flush(s->file);
        }
    }
    if (ret < 0) {
        table_free(&t);
        err_setf(errp, "Failed to write the snapshot's L1 table: %s",
                 strerror(-ret));
        return ret;
    }
    t.sn = xrealloc(t.sn, (t.n + 1) * sizeof(*t.sn));
    sn = &t.sn[t.n];
    memset(sn, 0, sizeof(*sn));
    sn->id = new_id(&t);
    sn->name = xstrdup(name);
    gettimeofday(&tv, NULL);
    sn->date_sec = (uint32_t)tv.tv_sec;
    sn->date_nsec = (uint32_t)tv.tv_usec * 1000;
    sn->l1_offset = (uint64_t)l1_off;
    sn->l1_size = s->l1_size;
    sn->disk_size = s->node->size;
    sn->extra_len = SN_EXTRA;
    sn->extra = xmalloc(SN_EXTRA);
    memset(sn->extra, 0, SN_EXTRA);
    st_be64(sn->extra + 8, sn->disk_size);   /* vm state size 0, icount 0 */
    t.n++;
    ret = table_write(s, &t, errp);
    table_free(&t);
    return ret;
}

int
qcow2_snapshot_create(struct block_node *node, const char *name,
                      struct err **errp)
{
    struct qcow2_state *s = state_of(node, errp);
    int ret;

    if (!s) {
        return -ENOTSUP;
    }
    if (strlen(name) > UINT16_MAX) {
        err_setf(errp, "Snapshot name too long");
        return -EINVAL;
    }
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : create_locked(s, name, errp);
    if (ret == -EIO && s->corrupt && errp && !*errp) {
        err_setf(errp, "Image is corrupt");
    }
    mutex_unlock(&s->lock);
    return ret;
}

static int
apply_locked(struct qcow2_state *s, const char *id, struct err **errp)
{
    struct sn_table t;
    CLEANUP_FREE uint64_t *new_l1 = NULL;
    CLEANUP_FREE uint64_t *old_l1 = NULL;
    uint32_t new_size, old_size;
    int i, ret;

    ret = table_read(s, &t, errp);
    if (ret < 0) {
        table_free(&t);
        return ret;
    }
    i = find(&t, id);
    if (i < 0) {
        table_free(&t);
        err_setf(errp, "Failed to load snapshot: %s", strerror(ENOENT));
        return -ENOENT;
    }
    if (t.sn[i].disk_size != s->node->size) {
        table_free(&t);
        err_setf(errp, "Applying a snapshot of another virtual size is not "
                 "supported");
        return -ENOTSUP;
    }
    new_size = t.sn[i].l1_size;
    ret = read_l1(s, t.sn[i].l1_offset, new_size, &new_l1);
    table_free(&t);
    if (ret == 0 && new_size > s->l1_size) {
        ret = qcow2_grow_l1(s, new_size);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    /* 1: count the references of the snapshot's tables (a crash: leak). */
    if (ret == 0) {
        ret = update_refs(s, new_l1, new_size, +1);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret < 0) {
        err_setf(errp, "Failed to load snapshot: %s", strerror(-ret));
        return ret;
    }
    /* 2: the active L1 takes the snapshot's content, in place. */
    old_size = s->l1_size;
    old_l1 = xmalloc(MAX((size_t)old_size, 1) * sizeof(uint64_t));
    memcpy(old_l1, s->l1, (size_t)old_size * sizeof(uint64_t));
    for (uint32_t k = 0; k < s->l1_size; k++) {
        s->l1[k] = k < new_size ? new_l1[k] & ~QCOW2_OFLAG_COPIED : 0;
    }
    ret = write_active_l1(s);
    /* 3: drop the old active tables' references; 4: COPIED flags. */
    if (ret == 0) {
        ret = update_refs(s, old_l1, old_size, -1);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret == 0) {
        ret = fix_copied(s);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret == 0) {
        ret = write_active_l1(s);
    }
    if (ret < 0) {
        err_setf(errp, "Failed to load snapshot: %s", strerror(-ret));
    }
    return ret;
}

int
qcow2_snapshot_apply(struct block_node *node, const char *id_or_name,
                     struct err **errp)
{
    struct qcow2_state *s = state_of(node, errp);
    int ret;

    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : apply_locked(s, id_or_name, errp);
    mutex_unlock(&s->lock);
    if (ret < 0 && errp && !*errp) {
        err_setf(errp, "Failed to load snapshot: %s", strerror(-ret));
    }
    return ret;
}

static int
delete_locked(struct qcow2_state *s, const char *id, struct err **errp)
{
    struct sn_table t;
    struct qcow2_snapshot sn;
    CLEANUP_FREE uint64_t *l1 = NULL;
    int i, ret;

    ret = table_read(s, &t, errp);
    if (ret < 0) {
        table_free(&t);
        return ret;
    }
    i = find(&t, id);
    if (i < 0) {
        table_free(&t);
        err_setf(errp, "snapshot not found");
        return -ENOENT;
    }
    sn = t.sn[i];
    ret = read_l1(s, sn.l1_offset, sn.l1_size, &l1);
    if (ret < 0) {
        table_free(&t);
        err_setf(errp, "Failed to read the snapshot's L1 table: %s",
                 strerror(-ret));
        return ret;
    }
    /* 1: the table without it (a crash after this only leaks). */
    memmove(&t.sn[i], &t.sn[i + 1], (t.n - (uint32_t)i - 1) * sizeof(sn));
    t.n--;
    ret = settle(s);
    if (ret == 0) {
        ret = table_write(s, &t, errp);
    }
    table_free(&t);
    free(sn.id);
    free(sn.name);
    free(sn.extra);
    if (ret < 0) {
        return ret;
    }
    /* 2: drop its references, free its L1; 3: COPIED flags. */
    ret = update_refs(s, l1, sn.l1_size, -1);
    if (ret == 0 && sn.l1_size) {
        ret = qcow2_update_refcount(s, sn.l1_offset,
                                    div_round_up((uint64_t)sn.l1_size * 8,
                                                 s->cluster_size),
                                    -1, QCOW2_DISCARD_SNAPSHOT);
    }
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret < 0) {
        err_setf(errp, "Failed to free the cluster and L1 table: %s",
                 strerror(-ret));
        return ret;
    }
    ret = fix_copied(s);
    if (ret == 0) {
        ret = settle(s);
    }
    if (ret == 0) {
        ret = write_active_l1(s);
    }
    if (ret < 0) {
        err_setf(errp, "Failed to update the COPIED flags: %s",
                 strerror(-ret));
    }
    return ret;
}

int
qcow2_snapshot_delete(struct block_node *node, const char *id_or_name,
                      struct err **errp)
{
    struct qcow2_state *s = state_of(node, errp);
    int ret;

    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : delete_locked(s, id_or_name, errp);
    mutex_unlock(&s->lock);
    if (ret < 0 && errp && !*errp) {
        err_setf(errp, "%s", strerror(-ret));
    }
    return ret;
}

/*
 * Read-only: make the snapshot with this ID and/or name (NULL: either;
 * both: both must match) the L1 table reads go through (qemu-img
 * convert -l), until the node closes.  The L1 size is the snapshot's;
 * the virtual size stays the image's, as in QEMU.
 */
int
qcow2_snapshot_load_tmp(struct block_node *node, const char *id,
                        const char *name, struct err **errp)
{
    struct qcow2_state *s = state_of(node, errp);
    struct sn_table t;
    uint64_t *l1 = NULL;
    int i = -1, ret;

    if (!s) {
        return -ENOTSUP;
    }
    if (!node->read_only) {
        err_setf(errp, "Device is not readonly");
        return -EINVAL;
    }
    mutex_lock_may_block(&s->lock);
    ret = table_read(s, &t, errp);
    for (uint32_t k = 0; ret == 0 && k < t.n && i < 0; k++) {
        if ((!id || strcmp(t.sn[k].id, id) == 0) &&
            (!name || strcmp(t.sn[k].name, name) == 0)) {
            i = (int)k;
        }
    }
    if (ret == 0 && i < 0) {
        err_setf(errp, "Can't find snapshot");
        ret = -ENOENT;
    }
    if (ret == 0) {
        ret = read_l1(s, t.sn[i].l1_offset, t.sn[i].l1_size, &l1);
        if (ret < 0) {
            err_setf(errp, "Failed to read the snapshot's L1 table: %s",
                     strerror(-ret));
        }
    }
    if (ret == 0) {
        free(s->l1);
        s->l1 = l1;
        s->l1_size = t.sn[i].l1_size;
        s->l1_offset = t.sn[i].l1_offset;
    }
    mutex_unlock(&s->lock);
    table_free(&t);
    return ret;
}

/* The driver's snapshot_list hook: the table in the block layer's terms. */
int
qcow2_snapshot_list_hook(struct block_node *node, struct block_snapshot **out,
                         size_t *n, struct err **errp)
{
    struct qcow2_snapshot *sn;
    uint32_t count;
    int ret = qcow2_snapshot_list(node, &sn, &count, errp);

    *out = NULL;
    *n = 0;
    if (ret < 0) {
        return ret;
    }
    *out = xzalloc(sizeof(**out) * (count ? count : 1));
    for (uint32_t i = 0; i < count; i++) {
        (*out)[i] = (struct block_snapshot) {
            .id = xstrdup(sn[i].id),
            .name = xstrdup(sn[i].name),
            .vm_state_size = sn[i].vm_state_size,
            .date_sec = sn[i].date_sec,
            .date_nsec = sn[i].date_nsec,
            .vm_clock_nsec = sn[i].vm_clock_nsec,
            /* The extra data's third field, when it is there. */
            .icount = sn[i].extra_len >= 24 ? ld_be64(sn[i].extra + 16)
                                            : UINT64_MAX,
        };
    }
    *n = count;
    qcow2_snapshots_free(sn, count);
    return 0;
}
