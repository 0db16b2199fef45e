/* SPDX-License-Identifier: MIT */
/*
 * The qcow2 format driver: open/close, options, the driver table and the
 * guest I/O paths (read, write with copy-on-write, write-zeroes, discard,
 * block status), flush, truncate (grow) and make_empty.
 *
 * Design notes.
 *
 * Concurrency.  The core calls us from many threads at once
 * (serialize_requests = false).  s->lock protects all metadata: the L1 and
 * refcount tables, both caches, the allocator.  Guest data I/O never runs
 * under s->lock.  What keeps data I/O safe without the lock is a range lock
 * on guest clusters (s->ranges): reads take it shared, anything that
 * changes a mapping (write, write-zeroes, discard) takes it exclusive over
 * the clusters it touches, make_empty and truncate over everything.  So
 * while a request copies data to or from a host cluster, no other request
 * can remap, free or reuse that guest cluster's host cluster.  A write to a
 * new cluster therefore goes: lock, look up and allocate (refcount +1 in
 * the cache), unlock, read COW data and write the whole (sub)cluster
 * (or, when the COW data is zeroes, only the guest data: plan_cow_zero()),
 * lock, link the L2 entry in the cache, unlock.
 *
 * Ordering (qcow2 spec, crash safety; docs/qcow2.md):
 *  1. refcount increase stable before any pointer to the cluster is
 *     written: the L2 cache's before_write hook writes back refblocks and
 *     flushes the file first; new L2 tables, L1 tables and refcount tables
 *     are flushed before they are published (with lazy refcounts the
 *     hook sets the dirty bit instead of writing refblocks: a crash then
 *     leaves stale refcounts that the next writable open repairs);
 *  2. guest data stable before the L2 entry that exposes it: the entry
 *     changes only in the cache after the data write returned, and the
 *     same hook's flush covers the data before the table is written;
 *  3. pointer removal stable before the refcount drops: freeing code calls
 *     qcow2_l2_stable() and only then lowers refcounts;
 *  4. flush writes back refblocks, flushes, writes back L2 tables; the core
 *     then flushes the file.  So an acknowledged flush (or FUA, which the
 *     core turns into a flush) covers everything before it.
 * Killing the process, or cutting the power, at any point leaves leaks at
 * worst (tests/func/test_powerloss.py).
 *
 * Corruption (qcow2-corrupt.c): a write that would land on metadata, or
 * metadata that breaks the format, sets the corrupt bit, sends
 * BLOCK_IMAGE_CORRUPTED and fails every later write with -EIO, metadata
 * writes included (E9: OK -> CORRUPT).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/format/qcow2/qcow2-check.h"
#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "lockstep/driver.h"
#include "util.h"

#define DEFAULT_L2_CACHE_BYTES (32 * MiB)
#define MAX_DEFAULT_L2_ENTRIES 512
#define MIN_L2_ENTRIES 4
#define MIN_RB_ENTRIES 4
#define MAX_HEADER_READ (2 * MiB)
/* With O_DIRECT the file grows by at least this much at a time (grow_over) */
#define GROW_AHEAD (1 * MiB)

static const struct block_opt qcow2_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"backing", BLOCK_OPT_CHILD_OR_NULL, false, NULL},
    {"l2-cache-size", BLOCK_OPT_SIZE, false, NULL},
    {"l2-cache-entry-size", BLOCK_OPT_SIZE, false, NULL},
    {"refcount-cache-size", BLOCK_OPT_SIZE, false, NULL},
    {"cache-size", BLOCK_OPT_SIZE, false, NULL},
    {"cache-clean-interval", BLOCK_OPT_INT, false, NULL},
    {"lazy-refcounts", BLOCK_OPT_BOOL, false, NULL},
    {"pass-discard-request", BLOCK_OPT_BOOL, false, NULL},
    {"pass-discard-snapshot", BLOCK_OPT_BOOL, false, NULL},
    {"pass-discard-other", BLOCK_OPT_BOOL, false, NULL},
    {"discard-no-unref", BLOCK_OPT_BOOL, false, NULL},
    {"overlap-check", BLOCK_OPT_ANY, false, NULL},
    {"data-file", BLOCK_OPT_ANY, false, NULL},
    {"encrypt", BLOCK_OPT_ANY, false, NULL},
    {NULL, 0, false, NULL},
};

/* ---- Guest cluster range locks ---------------------------------------- */

static bool
range_conflict(struct qcow2_state *s, const struct qcow2_range *r)
{
    struct qcow2_range *o;

    TAILQ_FOREACH(o, &s->ranges, link) {
        if ((r->exclusive || o->exclusive) && r->first < o->end &&
            o->first < r->end) {
            return true;
        }
    }
    return false;
}

/* Take a range lock over the guest clusters of [offset, offset+bytes). */
static void
range_lock(struct qcow2_state *s, struct qcow2_range *r, uint64_t offset,
           uint64_t bytes, bool exclusive)
{
    r->first = offset >> s->cluster_bits;
    r->end = bytes ? ((offset + bytes - 1) >> s->cluster_bits) + 1
                   : r->first + 1;
    r->exclusive = exclusive;
    mutex_lock_may_block(&s->lock);
    while (range_conflict(s, r)) {
        cond_wait(&s->range_cond, &s->lock);
    }
    TAILQ_INSERT_TAIL(&s->ranges, r, link);
    mutex_unlock(&s->lock);
}

static void
range_unlock(struct qcow2_state *s, struct qcow2_range *r)
{
    mutex_lock_may_block(&s->lock);
    TAILQ_REMOVE(&s->ranges, r, link);
    cond_broadcast(&s->range_cond);
    mutex_unlock(&s->lock);
}

/* ---- Reading ----------------------------------------------------------- */

/* Status of subcluster sc (the cluster in standard L2) of an entry. */
static int
sub_type(struct qcow2_state *s, const struct qcow2_l2e *e, unsigned sc,
         enum qcow2_cluster_type *t)
{
    int ret;

    ret = qcow2_l2_entry_type(e->entry, e->bitmap, s->extended_l2,
                              (int)s->h.version, s->cluster_bits, t);
    if (ret == 0 && s->extended_l2 && *t != QCOW2_CLUSTER_COMPRESSED) {
        ret = qcow2_subcluster_type(e->entry, e->bitmap, sc, t);
    }
    if (ret == 0 && (e->entry & QCOW2_L2E_OFFSET_MASK) >=
        QCOW2_MAX_HOST_OFFSET) {
        ret = -EIO;
    }
    return ret;
}

static int
read_compressed(struct qcow2_state *s, uint64_t entry, uint64_t in,
                uint64_t n, void *buf)
{
    uint64_t host, len;
    CLEANUP_FREE uint8_t *src = NULL;
    CLEANUP_FREE uint8_t *dst = NULL;
    int ret;

    qcow2_compressed_decode(entry, s->cluster_bits, &host, &len);
    if (host < s->cluster_size || len > 2 * s->cluster_size + 512) {
        return -EIO;
    }
    src = malloc(len);
    dst = malloc(s->cluster_size);
    if (!src || !dst) {
        return -ENOMEM;
    }
    block_debug_event(s->file, "read_compressed");
    ret = block_pread(s->file, host, len, src, 0);
    if (ret == 0) {
        ret = qcow2_decompress(s->h.compression_type, src, len, dst,
                               s->cluster_size);
    }
    if (ret < 0) {
        return ret;
    }
    memcpy(buf, dst + in, n);
    return 0;
}

/*
 * Read [in, in+n) of guest cluster gc, whose L2 entry is e (stable: the
 * caller holds a range lock on gc).  No s->lock.
 */
static int
read_with_entry(struct qcow2_state *s, uint64_t gc, const struct qcow2_l2e *e,
                uint64_t in, uint64_t n, uint8_t *buf)
{
    uint64_t guest = (gc << s->cluster_bits);
    uint64_t host = e->entry & QCOW2_L2E_OFFSET_MASK;

    while (n > 0) {
        unsigned sc = (unsigned)(in / s->subcluster_size);
        uint64_t len = MIN(n, (sc + 1) * s->subcluster_size - in);
        enum qcow2_cluster_type t;
        int ret = sub_type(s, e, sc, &t);

        if (ret < 0) {
            return ret;
        }
        if (t == QCOW2_CLUSTER_COMPRESSED) {
            return read_compressed(s, e->entry, in, n, buf);
        }
        /* Merge following subclusters of the same type. */
        while (len < n) {
            enum qcow2_cluster_type t2;

            if (sub_type(s, e, (unsigned)((in + len) / s->subcluster_size),
                         &t2) < 0 || t2 != t) {
                break;
            }
            len = MIN(n, len + s->subcluster_size);
        }
        switch (t) {
        case QCOW2_CLUSTER_NORMAL:
            block_debug_event(s->file, "read_aio");
            ret = block_pread(s->file, host + in, len, buf, 0);
            break;
        case QCOW2_CLUSTER_UNALLOCATED:
            if (!s->node->backing) {
                memset(buf, 0, len);
                break;
            }
            block_debug_event(s->file, "read_backing_aio");
            ret = block_pread(s->node->backing->node, guest + in, len, buf,
                              0);
            break;
        default:
            memset(buf, 0, len);
            break;
        }
        if (ret < 0) {
            return ret;
        }
        in += len;
        buf += len;
        n -= len;
    }
    return 0;
}

/* Is e a cluster whose data all lives at its host offset? */
static bool
fully_mapped(struct qcow2_state *s, const struct qcow2_l2e *e)
{
    enum qcow2_cluster_type t;

    if (qcow2_l2_entry_type(e->entry, e->bitmap, s->extended_l2,
                            (int)s->h.version, s->cluster_bits, &t) < 0 ||
        t != QCOW2_CLUSTER_NORMAL ||
        (e->entry & QCOW2_L2E_OFFSET_MASK) >= QCOW2_MAX_HOST_OFFSET) {
        return false;
    }
    return !s->extended_l2 || (e->bitmap == QCOW2_SUB_ALLOC_ALL);
}

/*
 * How many bytes from guest cluster gc on (starting at in, at most max)
 * can be read with one host read: following clusters mapped contiguously.
 * Returns 0 when gc itself is not fully mapped.  Caller holds s->lock.
 */
static uint64_t
contiguous_run(struct qcow2_state *s, uint64_t gc, const struct qcow2_l2e *e,
               uint64_t in, uint64_t max)
{
    uint64_t host = e->entry & QCOW2_L2E_OFFSET_MASK;
    uint64_t n = MIN(max, s->cluster_size - in);
    struct qcow2_l2e next;

    if (!fully_mapped(s, e)) {
        return 0;
    }
    while (n < max && qcow2_get_l2e(s, ++gc, &next) == 0 &&
           fully_mapped(s, &next) &&
           (next.entry & QCOW2_L2E_OFFSET_MASK) ==
           host + (n + in)) {
        n = MIN(max, n + s->cluster_size);
    }
    return n;
}

/*
 * Host requests of one guest request that go down together
 * (block_pread_segments()/block_pwrite_segments()): the runs of
 * contiguous host clusters of a guest read, the clusters a guest write
 * rewrites in place.
 */
struct host_batch {
    struct block_segment seg[BLOCK_MAX_SEGMENTS];
    unsigned n;
};

/* Send what is in b to the file, one blkdebug event per piece. */
static int
batch_submit(struct qcow2_state *s, struct host_batch *b, bool write)
{
    unsigned n = b->n;

    b->n = 0;
    for (unsigned i = 0; i < n; i++) {
        block_debug_event(s->file, write ? "write_aio" : "read_aio");
    }
    if (n == 1) {
        return write ? block_pwrite(s->file, b->seg[0].offset,
                                    b->seg[0].bytes, b->seg[0].buf, 0)
                     : block_pread(s->file, b->seg[0].offset,
                                   b->seg[0].bytes, b->seg[0].buf, 0);
    }
    return write ? block_pwrite_segments(s->file, b->seg, n, 0)
                 : block_pread_segments(s->file, b->seg, n, 0);
}

/* Add [host, host+n) <-> p to b; sends b when it is full. */
static int
batch_add(struct qcow2_state *s, struct host_batch *b, uint64_t host,
          uint64_t n, const void *p, bool write)
{
    b->seg[b->n++] = (struct block_segment){ host, n, (void *)p };
    return b->n == BLOCK_MAX_SEGMENTS ? batch_submit(s, b, write) : 0;
}

/*
 * Driver pread: any thread, no lock held; the core guarantees the range is
 * inside the disk.  Shared range lock; data read without s->lock, the
 * runs of contiguous data clusters all in one batch once the mapping is
 * known (the range lock holds them).  Returns 0 or -errno (-EIO for
 * metadata that breaks the format).
 */
static int
qcow2_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
            void *buf, unsigned flags)
{
    struct qcow2_range r;
    struct qcow2_state *s = node->opaque;
    struct host_batch b;
    uint8_t *p = buf;
    int ret = 0;

    (void)flags;
    b.n = 0;
    range_lock(s, &r, offset, bytes, false);
    while (bytes > 0 && ret == 0) {
        uint64_t gc = offset >> s->cluster_bits;
        uint64_t in = offset & (s->cluster_size - 1);
        uint64_t n = MIN(bytes, s->cluster_size - in);
        uint64_t run = 0;
        struct qcow2_l2e e;

        mutex_lock_may_block(&s->lock);
        ret = qcow2_get_l2e(s, gc, &e);
        if (ret == 0) {
            run = contiguous_run(s, gc, &e, in, bytes);
        }
        mutex_unlock(&s->lock);
        if (ret == 0 && run) {
            n = run;
            ret = batch_add(s, &b, (e.entry & QCOW2_L2E_OFFSET_MASK) + in, n,
                            p, false);
        } else if (ret == 0) {
            ret = read_with_entry(s, gc, &e, in, n, p);
        }
        offset += n;
        bytes -= n;
        p += n;
    }
    if (ret == 0 && b.n) {
        ret = batch_submit(s, &b, false);
    }
    range_unlock(s, &r);
    return ret;
}

/* ---- Freeing clusters ------------------------------------------------ */

/* Host clusters to release after the L2 changes are stable. */
struct free_extent {
    uint64_t off;           /* bytes, cluster aligned */
    uint64_t n;             /* clusters */
};

struct free_list {
    struct free_extent *e;
    size_t len, cap;
};

static void
free_list_add(struct free_list *f, uint64_t off, uint64_t n)
{
    if (f->len == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 16;
        f->e = xrealloc(f->e, f->cap * sizeof(*f->e));
    }
    f->e[f->len++] = (struct free_extent){ off, n };
}

/* Remember what the old entry holds on the host (to free it later). */
static void
free_list_add_entry(struct qcow2_state *s, struct free_list *f,
                    const struct qcow2_l2e *e)
{
    uint64_t host = e->entry & QCOW2_L2E_OFFSET_MASK;

    if (e->entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t coff, clen, first, last;

        qcow2_compressed_decode(e->entry, s->cluster_bits, &coff, &clen);
        first = align_down(coff, 512) >> s->cluster_bits;
        last = (coff + clen - 1) >> s->cluster_bits;
        free_list_add(f, first << s->cluster_bits, last - first + 1);
    } else if (host) {
        free_list_add(f, host, 1);
    }
}

static int
cmp_free_extent(const void *a, const void *b)
{
    const struct free_extent *x = a, *y = b;

    return x->off < y->off ? -1 : x->off > y->off;
}

/*
 * Sort by host offset and merge extents that meet end to end: each
 * extent's refcounts drop together and the clusters it frees reach the
 * file as one discard (QEMU merges adjacent discards too), in whatever
 * order the guest range met them.  Overlapping extents (compressed
 * clusters sharing a host cluster) stay apart: each drops its own share.
 */
static void
free_list_merge(struct free_list *f, uint64_t cluster_size)
{
    size_t k = 0;

    if (f->len == 0) {
        return;     /* f->e is NULL: not for qsort() */
    }
    qsort(f->e, f->len, sizeof(*f->e), cmp_free_extent);
    for (size_t i = 1; i < f->len; i++) {
        struct free_extent *last = &f->e[k];

        if (last->off + last->n * cluster_size == f->e[i].off) {
            last->n += f->e[i].n;
        } else {
            f->e[++k] = f->e[i];
        }
    }
    f->len = k + 1;
}

/* Rule 3: make the pointer removals stable, then drop refcounts. */
static int
free_list_commit(struct qcow2_state *s, struct free_list *f,
                 enum qcow2_discard_type type)
{
    int ret = 0;

    if (f->len) {
        ret = qcow2_l2_stable(s);
    }
    free_list_merge(f, s->cluster_size);
    for (size_t i = 0; i < f->len && ret == 0; i++) {
        ret = qcow2_update_refcount(s, f->e[i].off, f->e[i].n, -1, type);
    }
    free(f->e);
    memset(f, 0, sizeof(*f));
    return ret;
}

/* ---- Writing ---------------------------------------------------------- */

/* What a write to one cluster will do, decided under s->lock. */
struct write_plan {
    struct qcow2_l2e old;
    uint64_t host;          /* target host cluster */
    bool new_alloc;         /* host was allocated for this write */
    bool free_old;          /* old host data to release afterwards */
    bool whole;             /* write the whole cluster (COW everything) */
    bool cow_zero;          /* the COW regions read as zeroes: write only
                             * the data, zero what may be stale (below) */
    uint64_t stale;         /* bytes from the cluster start that may hold
                             * old data: the file ends there or after */
    uint64_t ws, we;        /* byte range within the cluster to write */
};

static bool
sub_in_place(struct qcow2_state *s, const struct write_plan *p, unsigned sc)
{
    enum qcow2_cluster_type t;

    if (p->new_alloc || p->whole) {
        return false;
    }
    return sub_type(s, &p->old, sc, &t) == 0 && t == QCOW2_CLUSTER_NORMAL;
}

/*
 * How many bytes of the new clusters [host, +len) may hold old data: none
 * at or past fresh (s->claimed_end before their allocation: never
 * written, grown ahead at most), else up to the end of the file.
 */
static uint64_t
stale_bytes(const struct qcow2_state *s, uint64_t host, uint64_t len,
            int64_t flen, uint64_t fresh)
{
    (void)s;
    if (host >= fresh || flen < 0 || (uint64_t)flen <= host) {
        return 0;
    }
    return MIN((uint64_t)flen - host, len);
}

/*
 * A new cluster whose copy-on-write regions are zeroes (no old data, no
 * backing data) needs no padding written where the file already reads as
 * zeroes: at and past its end.  Below the end the cluster may be a reused
 * free one with old bytes (after discard or make_empty), which
 * write_cow_zero() zeroes.  Called under s->lock after the allocation, so
 * the cluster is claimed: the background release never cuts below its
 * end, and the file can only have grown since (other writes past the end
 * leave holes, which read as zeroes), so "stale" never misses old data.
 * Extended L2 and compressed clusters keep the bounce buffer path.
 */
static void
plan_cow_zero(struct qcow2_state *s, struct write_plan *p,
              enum qcow2_cluster_type t, uint64_t fresh)
{
    int64_t flen = block_getlength(s->file);

    /*
     * After a failed write into this cluster the file's length does not
     * tell where old bytes end: copy zeroes as before.
     */
    if (s->extended_l2 || p->free_old || flen < 0 ||
        s->failed_end > p->host ||
        !(t == QCOW2_CLUSTER_ZERO_PLAIN ||
          (t == QCOW2_CLUSTER_UNALLOCATED && !s->node->backing))) {
        return;
    }
    p->cow_zero = true;
    p->stale = stale_bytes(s, p->host, s->cluster_size, flen, fresh);
}

static int
plan_write(struct qcow2_state *s, uint64_t gc, uint64_t in, uint64_t n,
           struct write_plan *p)
{
    uint64_t host, fresh;
    enum qcow2_cluster_type t;
    int64_t off;
    int ret;

    memset(p, 0, sizeof(*p));
    ret = qcow2_get_l2e(s, gc, &p->old);
    if (ret < 0) {
        return ret;     /* an I/O error, or corruption already signalled */
    }
    if (qcow2_l2_entry_type(p->old.entry, p->old.bitmap, s->extended_l2,
                            (int)s->h.version, s->cluster_bits, &t) < 0) {
        qcow2_signal_corruption(s, -1, -1, "invalid L2 entry for guest "
                                "cluster %llu", (unsigned long long)gc);
        return -EIO;
    }
    host = p->old.entry & QCOW2_L2E_OFFSET_MASK;
    if (t != QCOW2_CLUSTER_COMPRESSED && host &&
        (p->old.entry & QCOW2_OFLAG_COPIED)) {
        p->host = host;
        /* A zero cluster with a kept host cluster is rewritten whole. */
        p->whole = t == QCOW2_CLUSTER_ZERO_ALLOC;
    } else {
        ret = qcow2_ensure_l2(s, gc);
        if (ret < 0) {
            return ret;
        }
        fresh = s->claimed_end;
        off = qcow2_alloc_clusters(s, 1);
        if (off < 0) {
            return (int)off;
        }
        p->host = (uint64_t)off;
        p->new_alloc = true;
        p->free_old = host != 0 || t == QCOW2_CLUSTER_COMPRESSED;
        /* Old data elsewhere on the host: copy all of it over. */
        p->whole = p->free_old || !s->extended_l2;
        plan_cow_zero(s, p, t, fresh);
    }
    if (p->whole) {
        p->ws = 0;
        p->we = s->cluster_size;
    } else {
        unsigned head = (unsigned)(in / s->subcluster_size);
        unsigned tail = (unsigned)((in + n - 1) / s->subcluster_size);

        p->ws = sub_in_place(s, p, head) ? in
                                         : align_down(in, s->subcluster_size);
        p->we = sub_in_place(s, p, tail) ? in + n
                                         : align_up(in + n,
                                                    s->subcluster_size);
    }
    /* Guest data overlaps no metadata at all. */
    return qcow2_overlap_refuse(s, 0, p->host + p->ws, p->we - p->ws);
}

/* The new L2 entry after the data of plan p reached the host cluster. */
static void
plan_entry(struct qcow2_state *s, const struct write_plan *p,
           struct qcow2_l2e *e)
{
    e->entry = p->host | QCOW2_OFLAG_COPIED;
    e->bitmap = 0;
    if (!s->extended_l2) {
        return;
    }
    if (p->whole && p->free_old) {
        e->bitmap = QCOW2_SUB_ALLOC_ALL;
        return;
    }
    e->bitmap = (p->old.entry & QCOW2_OFLAG_COMPRESSED) ? 0 : p->old.bitmap;
    for (uint64_t sc = p->ws / s->subcluster_size;
         sc < div_round_up(p->we, s->subcluster_size); sc++) {
        e->bitmap |= QCOW2_SUB_ALLOC(sc);
        e->bitmap &= ~QCOW2_SUB_ZERO(sc);
    }
}

/*
 * Zero the copy-on-write areas [a, in) and [end, b) of new clusters at
 * host where they may hold old data (below stale: reused space inside the
 * file).  When both do, one request over [a, b) (the guest data is written
 * over its middle next), as QEMU zeroes the whole range: one request less.
 * A hole or zeroed range; the core writes zeroes if it cannot.
 */
static int
zero_cow_areas(struct qcow2_state *s, uint64_t host, uint64_t stale,
               uint64_t a, uint64_t in, uint64_t end, uint64_t b)
{
    uint64_t head_end = MIN(in, stale), tail_end = MIN(b, stale);
    int ret = 0;

    if (a < head_end && end < tail_end) {
        return block_pwrite_zeroes(s->file, host + a, tail_end - a,
                                   BLOCK_REQ_MAY_UNMAP);
    }
    if (a < head_end) {
        ret = block_pwrite_zeroes(s->file, host + a, head_end - a,
                                  BLOCK_REQ_MAY_UNMAP);
    }
    if (ret == 0 && end < tail_end) {
        ret = block_pwrite_zeroes(s->file, host + end, tail_end - end,
                                  BLOCK_REQ_MAY_UNMAP);
    }
    return ret;
}

/* Does the file grow ahead of allocation (grow_over())?  Only under
 * O_DIRECT, where a write that extends the file waits for the device
 * alone: elsewhere (tmpfs, the page cache) that costs nothing, and space
 * reserved ahead would. */
static bool
grows_ahead(const struct qcow2_state *s)
{
    return s->file->limits.request_alignment > 1 &&
           (s->file->supported_zero_flags & BLOCK_REQ_EXTEND) &&
           !__atomic_load_n(&s->no_grow_ahead, __ATOMIC_RELAXED);
}

/*
 * New clusters whose copy-on-write area reads as zeroes (write_cow_zero())
 * reach past the end of the file: grow it over them first, as QEMU zeroes
 * that area before the data.  Writes that cover their clusters whole
 * extend the file themselves, as in QEMU: one request, not two.  The file then ends
 * on the clusters' end, as QEMU's images do (its block status reports
 * what lies past the end of the file as zero, not data), and the data
 * write lands inside the file, on blocks the file driver reserved
 * (BLOCK_REQ_ALLOCATE: fallocate, no data I/O): on ext4 such writes run
 * side by side, where writes that extend the file wait for the device one
 * at a time (file.c, grow_to()).  From a block boundary so that O_DIRECT
 * needs no read-modify-write.  Nothing points at the clusters yet: a
 * crash in between leaves a leak at worst.  Never ftruncate: a write
 * never shrinks the file, while a concurrent write further out may
 * already have grown it.
 *
 * With O_DIRECT the file grows ahead, to the next GROW_AHEAD boundary:
 * the clusters allocated after these land inside the file (their writes
 * run side by side, and fallocate, which on ext4 waits for every write in
 * flight on the file, runs once per step, not once per cluster), and need
 * neither growing nor zeroing (stale_bytes(): past s->claimed_end).  The
 * tail nobody claimed is cut at close (trim_grown_tail()).
 */
static int
grow_range(struct qcow2_state *s, uint64_t host, uint64_t len, int64_t flen,
           unsigned flags)
{
    uint64_t align = MAX(s->file->limits.request_alignment, 1);
    uint64_t start = (uint64_t)flen > host ? (uint64_t)flen - host : 0;

    start = align_up(start, align);
    if (flags & BLOCK_REQ_EXTEND) {
        /* From a block boundary of the file (clusters may be smaller). */
        start = align_up(host + start, align) - host;
    }
    if (start >= len) {
        return 0;
    }
    return block_pwrite_zeroes(s->file, host + start, len - start, flags);
}

static int
grow_over(struct qcow2_state *s, uint64_t host, uint64_t len)
{
    int64_t flen = block_getlength(s->file);

    if (flen < 0 || (uint64_t)flen >= host + len) {
        return 0;
    }
    if (!grows_ahead(s)) {
        return grow_range(s, host, len, flen, BLOCK_REQ_ALLOCATE);
    }
    /* Another request is growing the file over us: one fallocate per
     * step, not one per request that finds the file short (each waits
     * for every write in flight).  Ours then waits for it on the inode
     * lock, or, if it gets there first, extends the file itself:
     * slower, as correct, because the growth past our own clusters is
     * BLOCK_REQ_EXTEND, which changes no byte another request wrote
     * there meanwhile (zeroing would wipe it). */
    uint64_t want = align_up(host + len, GROW_AHEAD);
    uint64_t cur = __atomic_load_n(&s->growing_to, __ATOMIC_ACQUIRE);
    int ret;

    do {
        if (cur >= host + len) {
            return 0;
        }
    } while (!__atomic_compare_exchange_n(&s->growing_to, &cur, want, false,
                                          __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    __atomic_store_n(&s->grew_ahead, true, __ATOMIC_RELAXED);
    ret = grow_range(s, host, want - host, flen, BLOCK_REQ_EXTEND);
    if (ret == -ENOTSUP) {
        /* The file system cannot reserve without writing: from now on
         * only our own clusters, as without O_DIRECT. */
        __atomic_store_n(&s->no_grow_ahead, true, __ATOMIC_RELAXED);
        ret = grow_range(s, host, len, flen, BLOCK_REQ_ALLOCATE);
    }
    /* Done: later requests look at the file's length again. */
    __atomic_compare_exchange_n(&s->growing_to, &want, 0, false,
                                __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
    return ret;
}

/*
 * Data phase of a cow_zero plan: zero the stale part of the COW regions,
 * make the file reach the cluster's end, then write the guest data alone.
 * All finish before the L2 entry is linked (write_cluster), so a crash
 * never shows old bytes through it.
 */
static int
write_cow_zero(struct qcow2_state *s, const struct write_plan *p,
               uint64_t in, uint64_t n, const uint8_t *buf)
{
    int ret;

    block_debug_event(s->file, "cow_write");
    ret = zero_cow_areas(s, p->host, p->stale, p->ws, in, in + n, p->we);
    if (ret == 0) {
        ret = grow_over(s, p->host, s->cluster_size);
    }
    if (ret == 0) {
        ret = block_pwrite(s->file, p->host + in, n, buf, 0);
    }
    return ret;
}

/*
 * Does entry e read as zeroes by its zero flag (standard L2)?  The one
 * classifier decides: in a compressed entry bit 0 is part of the host
 * offset, and an invalid entry is left to read_with_entry's -EIO.
 */
static bool
zero_flagged(const struct qcow2_state *s, const struct qcow2_l2e *e)
{
    enum qcow2_cluster_type t;

    return qcow2_l2_entry_type(e->entry, e->bitmap, s->extended_l2,
                               (int)s->h.version, s->cluster_bits, &t) == 0 &&
           (t == QCOW2_CLUSTER_ZERO_PLAIN || t == QCOW2_CLUSTER_ZERO_ALLOC);
}

/* Data phase (no s->lock): COW fill around [in, in+n), then write. */
static int
write_data(struct qcow2_state *s, uint64_t gc, const struct write_plan *p,
           uint64_t in, uint64_t n, const uint8_t *buf)
{
    CLEANUP_FREE uint8_t *bounce = NULL;
    int ret = 0;

    /* Guest data, not metadata: blkdebug's data event, as in QEMU. */
    block_debug_event(s->file, "write_aio");
    if (p->ws == in && p->we == in + n) {
        if (p->new_alloc && grows_ahead(s)) {
            ret = grow_over(s, p->host, s->cluster_size);
        }
        return ret ? ret : block_pwrite(s->file, p->host + in, n, buf, 0);
    }
    if (p->cow_zero) {
        return write_cow_zero(s, p, in, n, buf);
    }
    bounce = xmalloc_page(p->we - p->ws);
    if (p->ws < in) {
        block_debug_event(s->file, "cow_read");
        ret = zero_flagged(s, &p->old)
              ? (memset(bounce, 0, in - p->ws), 0)
              : read_with_entry(s, gc, &p->old, p->ws, in - p->ws, bounce);
    }
    if (ret == 0 && p->we > in + n) {
        block_debug_event(s->file, "cow_read");
        ret = zero_flagged(s, &p->old)
              ? (memset(bounce + (in + n - p->ws), 0, p->we - in - n), 0)
              : read_with_entry(s, gc, &p->old, in + n, p->we - in - n,
                                bounce + (in + n - p->ws));
    }
    if (ret < 0) {
        return ret;
    }
    memcpy(bounce + (in - p->ws), buf, n);
    block_debug_event(s->file, "cow_write");
    return block_pwrite(s->file, p->host + p->ws, p->we - p->ws, bounce, 0);
}

static int
write_cluster(struct qcow2_state *s, uint64_t gc, uint64_t in, uint64_t n,
              const uint8_t *buf)
{
    struct write_plan p;
    struct qcow2_l2e e;
    int ret;

    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : plan_write(s, gc, in, n, &p);
    mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    ret = write_data(s, gc, &p, in, n, buf);
    mutex_lock_may_block(&s->lock);
    if (ret < 0) {
        if (p.new_alloc) {
            /* Part of the data may be there: see failed_end. */
            s->failed_end = MAX(s->failed_end, p.host + s->cluster_size);
            /* Nothing points at it yet: give it back. */
            qcow2_update_refcount(s, p.host, 1, -1, QCOW2_DISCARD_OTHER);
        }
    } else {
        plan_entry(s, &p, &e);
        if (e.entry != p.old.entry || e.bitmap != p.old.bitmap) {
            ret = qcow2_set_l2e(s, gc, &e);
        }
        if (ret == 0 && p.free_old) {
            struct free_list f = { 0 };

            free_list_add_entry(s, &f, &p.old);
            ret = free_list_commit(s, &f, QCOW2_DISCARD_OTHER);
        }
    }
    mutex_unlock(&s->lock);
    return ret;
}

/* ---- Compressed clusters ------------------------------------------------ */

/*
 * Room for len compressed bytes, packed after the previous compressed
 * cluster like QEMU does: in the same host cluster while it fits (its
 * refcount counts the compressed clusters in it), else in a new host
 * cluster (which continues the old one when it directly follows it).
 * Caller holds s->lock.  Returns the host byte offset or -errno.
 */
static int64_t
alloc_bytes(struct qcow2_state *s, uint64_t len)
{
    uint64_t off = s->free_byte_offset, rc = 0;
    uint64_t room = s->cluster_size - (off & (s->cluster_size - 1));
    int64_t fresh;
    int ret;

    if (off) {
        ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
        if (ret < 0) {
            return ret;
        }
        if (rc == 0 || rc >= qcow2_refcount_max(s->refcount_order)) {
            off = 0;
        }
    }
    if (!off || room < len) {
        fresh = qcow2_alloc_clusters(s, 1);
        if (fresh < 0) {
            return fresh;
        }
        if (!off || align_up(off, s->cluster_size) != (uint64_t)fresh) {
            off = (uint64_t)fresh;
            goto out;
        }
    }
    /* The data starts in (or spills over from) the current cluster. */
    ret = qcow2_update_refcount(s, align_down(off, s->cluster_size), 1, 1,
                                QCOW2_DISCARD_OTHER);
    if (ret < 0) {
        return ret;
    }
out:
    s->free_byte_offset = (off + len) & (s->cluster_size - 1)
                          ? off + len : 0;
    return (int64_t)off;
}

/*
 * Write one whole guest cluster compressed (QEMU's rules: the cluster
 * must not be allocated yet; a short last cluster is padded with
 * zeroes; what does not compress is written the normal way).
 */
static int
write_compressed_cluster(struct qcow2_state *s, uint64_t gc,
                         const uint8_t *data, uint64_t n)
{
    CLEANUP_FREE uint8_t *in = NULL;
    CLEANUP_FREE uint8_t *out = xmalloc(s->cluster_size);
    struct qcow2_l2e old, e = { 0 };
    uint64_t host, nsect, shift = 62 - (s->cluster_bits - 8);
    size_t len;
    int64_t off;
    int ret;

    if (n < s->cluster_size) {
        in = xzalloc(s->cluster_size);
        memcpy(in, data, n);
        data = in;
    }
    len = qcow2_compress(s->h.compression_type, data, s->cluster_size, out,
                         s->cluster_size - 1);
    if (len == 0) {
        return write_cluster(s, gc, 0, n, data);
    }
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : qcow2_get_l2e(s, gc, &old);
    if (ret == 0 && (old.entry & QCOW2_L2E_OFFSET_MASK)) {
        /* Compression cannot overwrite anything (QEMU: EIO). */
        ret = -EIO;
    }
    if (ret == 0) {
        ret = qcow2_ensure_l2(s, gc);
    }
    off = ret < 0 ? ret : alloc_bytes(s, len);
    if (off >= 0 && qcow2_overlap_refuse(s, 0, (uint64_t)off, len) < 0) {
        off = -EIO;
    }
    mutex_unlock(&s->lock);
    if (off < 0) {
        return (int)off;
    }
    host = (uint64_t)off;
    block_debug_event(s->file, "write_compressed");
    ret = block_pwrite(s->file, host, len, out, 0);
    mutex_lock_may_block(&s->lock);
    if (ret < 0) {
        s->failed_end = MAX(s->failed_end,
                            align_up(host + len, s->cluster_size));
        qcow2_update_refcount(s, align_down(host, s->cluster_size),
                              ((host + len - 1) >> s->cluster_bits) -
                              (host >> s->cluster_bits) + 1, -1,
                              QCOW2_DISCARD_OTHER);
    } else {
        nsect = ((host + len - 1) >> 9) - (host >> 9);
        e.entry = QCOW2_OFLAG_COMPRESSED | host | (nsect << shift);
        ret = qcow2_set_l2e(s, gc, &e);
    }
    mutex_unlock(&s->lock);
    return ret;
}

/* ---- Multi-cluster writes ---------------------------------------------- */

/*
 * A guest write over several clusters goes down as one host request when
 * its clusters are contiguous on the host, as QEMU does: clusters already
 * mapped in place one after the other, or clusters allocated together for
 * this write (contiguous by construction).  Everything else (one cluster,
 * clusters with old host data to copy and free, extended L2) takes the
 * per-cluster path, write_cluster().  Runs mapped in place that do not
 * follow each other on the host go down together, in one batch of the
 * file driver (qcow2_pwrite()).  The ordering rules do not change: the
 * data of the whole run is written before its L2 entries change in the
 * cache, and the entries reach the disk after a flush (qcow2_l2_before_write).
 */
#define MAX_RUN_BYTES (8 * MiB)     /* bounds the COW bounce buffer */

struct write_run {
    uint64_t gc;                /* first guest cluster */
    uint64_t nb;                /* clusters; < 2: no run */
    uint64_t host;              /* host offset of the first one */
    bool new_alloc;             /* allocated together for this write */
    bool cow_zero;              /* COW regions read as zeroes (plan_cow_zero) */
    uint64_t stale;             /* bytes from host that may hold old data */
    struct qcow2_l2e head_old;  /* old entries of the first and last */
    struct qcow2_l2e tail_old;  /* clusters: where their COW data is */
    bool zero_inplace;          /* in place, with zero clusters that
                                 * become data clusters after the write */
};

/* Can this cluster take a new host cluster with nothing old to free? */
static bool
fresh_target(struct qcow2_state *s, const struct qcow2_l2e *e,
             enum qcow2_cluster_type *t)
{
    if (qcow2_l2_entry_type(e->entry, e->bitmap, s->extended_l2,
                            (int)s->h.version, s->cluster_bits, t) < 0) {
        return false;
    }
    return (*t == QCOW2_CLUSTER_UNALLOCATED || *t == QCOW2_CLUSTER_ZERO_PLAIN)
           && !(e->entry & (QCOW2_L2E_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED));
}

/* Does a COW region of a new cluster of type t read as zeroes? */
static bool
cow_reads_zero(struct qcow2_state *s, enum qcow2_cluster_type t)
{
    return t == QCOW2_CLUSTER_ZERO_PLAIN ||
           (t == QCOW2_CLUSTER_UNALLOCATED && !s->node->backing);
}

/* A zero cluster that kept its host cluster (standard L2, ours alone). */
static bool
zero_alloc_inplace(struct qcow2_state *s, const struct qcow2_l2e *e)
{
    enum qcow2_cluster_type t;

    return !s->extended_l2 && (e->entry & QCOW2_OFLAG_COPIED) &&
           qcow2_l2_entry_type(e->entry, e->bitmap, false, (int)s->h.version,
                               s->cluster_bits, &t) == 0 &&
           t == QCOW2_CLUSTER_ZERO_ALLOC &&
           (e->entry & QCOW2_L2E_OFFSET_MASK) < QCOW2_MAX_HOST_OFFSET;
}

/*
 * Clusters mapped in place at contiguous host offsets from gc on, for a
 * write of [in, end) from gc's start.  A zero cluster that kept its host
 * cluster joins the run where the write covers it whole (nothing of its
 * old bytes shows): QEMU rewrites such a range with one request too.
 * *zero: the run holds such clusters (their entries change after).
 */
static uint64_t
inplace_run(struct qcow2_state *s, uint64_t gc, const struct qcow2_l2e *e0,
            uint64_t in, uint64_t end, uint64_t max, bool *zero)
{
    uint64_t host = e0->entry & QCOW2_L2E_OFFSET_MASK;
    uint64_t cs = s->cluster_size;
    struct qcow2_l2e e;
    uint64_t k = 1;

    *zero = false;
    if (!(e0->entry & QCOW2_OFLAG_COPIED)) {
        return 0;
    }
    if (!fully_mapped(s, e0)) {
        if (in != 0 || end < cs || !zero_alloc_inplace(s, e0)) {
            return 0;
        }
        *zero = true;
    }
    while (k < max && qcow2_get_l2e(s, gc + k, &e) == 0 &&
           (e.entry & QCOW2_OFLAG_COPIED) &&
           (e.entry & QCOW2_L2E_OFFSET_MASK) == host + (k << s->cluster_bits)) {
        if (!fully_mapped(s, &e)) {
            if (end < (k + 1) * cs || !zero_alloc_inplace(s, &e)) {
                break;
            }
            *zero = true;
        }
        k++;
    }
    return k;
}

/*
 * How many clusters from gc a run of new clusters may span (at most max):
 * to the end of gc's L2 table, and on through the next tables where they
 * exist and are ours (COPIED): linking there allocates nothing between
 * the data and the entries.  So a write over two tables whose new
 * clusters follow each other on the host is one data request, as in
 * QEMU (which extends its allocation at the next host cluster).
 */
static uint64_t
fresh_span(struct qcow2_state *s, uint64_t gc, uint64_t max)
{
    uint64_t span = s->l2_entries - gc % s->l2_entries;
    uint64_t idx = gc / s->l2_entries + 1;

    while (span < max && idx < s->l1_size &&
           (s->l1[idx] & QCOW2_L1E_OFFSET_MASK) &&
           (s->l1[idx] & QCOW2_OFLAG_COPIED)) {
        span += s->l2_entries;
        idx++;
    }
    return MIN(span, max);
}

/*
 * Plan a run for the write of [in, in+bytes) from guest cluster gc; caller
 * holds s->lock.  Clusters mapped in place: run->nb >= 1, new_alloc
 * false (one cluster is a run too: it joins the request's batch), within
 * gc's L2 table.  Else run->nb < 2 means "no run"; a run of new clusters
 * is allocated here (refcounts in the cache), within fresh_span().
 */
static int
plan_run(struct qcow2_state *s, uint64_t gc, uint64_t in, uint64_t bytes,
         struct write_run *run)
{
    uint64_t cs = s->cluster_size;
    uint64_t max = div_round_up(in + bytes, cs);
    uint64_t end, total, fresh, fmax;
    enum qcow2_cluster_type t0, t;
    struct qcow2_l2e e;
    int64_t off, flen;
    int ret;

    memset(run, 0, sizeof(*run));
    run->gc = gc;
    max = MIN(max, MAX(MAX_RUN_BYTES >> s->cluster_bits, 1));
    /* A new refcount block may take the first cluster it covers (see
     * qcow2-refcount.c): a longer run might never be found free. */
    max = MIN(max, s->refblock_entries - 1);
    fmax = fresh_span(s, gc, max);
    max = MIN(max, s->l2_entries - gc % s->l2_entries);
    ret = qcow2_get_l2e(s, gc, &run->head_old);
    if (ret < 0) {
        return ret;
    }
    run->nb = inplace_run(s, gc, &run->head_old, in, in + bytes, MAX(max, 1),
                          &run->zero_inplace);
    if (run->nb) {
        run->host = run->head_old.entry & QCOW2_L2E_OFFSET_MASK;
        end = MIN(in + bytes, run->nb * cs);
        return qcow2_overlap_refuse(s, 0, run->host + in, end - in);
    }
    if (fmax < 2 || s->extended_l2 ||
        !fresh_target(s, &run->head_old, &t0)) {
        return 0;
    }
    run->tail_old = run->head_old;
    t = t0;
    for (run->nb = 1; run->nb < fmax; run->nb++) {
        enum qcow2_cluster_type tn;

        if (qcow2_get_l2e(s, gc + run->nb, &e) < 0 ||
            !fresh_target(s, &e, &tn)) {
            break;
        }
        run->tail_old = e;
        t = tn;
    }
    if (run->nb < 2) {
        run->nb = 0;    /* one new cluster: write_cluster() */
        return 0;
    }
    ret = qcow2_ensure_l2(s, gc);
    if (ret < 0) {
        return ret;
    }
    total = run->nb * cs;
    fresh = s->claimed_end;
    off = qcow2_alloc_clusters(s, run->nb);
    if (off < 0) {
        return (int)off;
    }
    run->host = (uint64_t)off;
    run->new_alloc = true;
    end = MIN(in + bytes, total);
    flen = block_getlength(s->file);
    /* As plan_cow_zero(), for the head and tail regions of the run. */
    run->cow_zero = flen >= 0 && s->failed_end <= run->host &&
                    (in == 0 || cow_reads_zero(s, t0)) &&
                    (end == total || cow_reads_zero(s, t));
    run->stale = stale_bytes(s, run->host, total, flen, fresh);
    return qcow2_overlap_refuse(s, 0, run->host, total);
}

/* Data phase of a run (no s->lock): [in, in+n) of the run's clusters. */
static int
write_run_data(struct qcow2_state *s, const struct write_run *run,
               uint64_t in, uint64_t n, const uint8_t *buf)
{
    uint64_t cs = s->cluster_size;
    uint64_t total = run->nb * cs, end = in + n;
    uint64_t tail_in = end - (run->nb - 1) * cs;
    CLEANUP_FREE uint8_t *bounce = NULL;
    int ret = 0;

    block_debug_event(s->file, "write_aio");
    if (!run->new_alloc || (in == 0 && end == total)) {
        if (run->new_alloc && grows_ahead(s)) {
            ret = grow_over(s, run->host, total);
        }
        return ret ? ret : block_pwrite(s->file, run->host + in, n, buf, 0);
    }
    if (run->cow_zero) {
        block_debug_event(s->file, "cow_write");
        ret = zero_cow_areas(s, run->host, run->stale, 0, in, end, total);
        if (ret == 0) {
            ret = grow_over(s, run->host, total);
        }
        if (ret == 0) {
            ret = block_pwrite(s->file, run->host + in, n, buf, 0);
        }
        return ret;
    }
    /* COW data to copy: head and tail around the guest data, one write. */
    bounce = xmalloc_page(total);
    if (in > 0) {
        block_debug_event(s->file, "cow_read");
        ret = read_with_entry(s, run->gc, &run->head_old, 0, in, bounce);
    }
    if (ret == 0 && end < total) {
        block_debug_event(s->file, "cow_read");
        ret = read_with_entry(s, run->gc + run->nb - 1, &run->tail_old,
                              tail_in, cs - tail_in, bounce + end);
    }
    if (ret < 0) {
        return ret;
    }
    memcpy(bounce + in, buf, n);
    block_debug_event(s->file, "cow_write");
    return block_pwrite(s->file, run->host, total, bounce, 0);
}

/* After the data of an in-place run: its zero clusters now hold data. */
static int
unzero_run(struct qcow2_state *s, const struct write_run *run)
{
    int ret = 0;

    mutex_lock_may_block(&s->lock);
    for (uint64_t i = 0; i < run->nb && ret == 0; i++) {
        struct qcow2_l2e e;

        ret = qcow2_get_l2e(s, run->gc + i, &e);
        if (ret == 0 && (e.entry & QCOW2_OFLAG_ZERO)) {
            e.entry &= ~QCOW2_OFLAG_ZERO;
            ret = qcow2_set_l2e(s, run->gc + i, &e);
        }
    }
    mutex_unlock(&s->lock);
    return ret;
}

/* Write [in, in+n) of a planned run: data, then link (s->lock). */
static int
write_run(struct qcow2_state *s, const struct write_run *run, uint64_t in,
          uint64_t n, const uint8_t *buf)
{
    int ret = write_run_data(s, run, in, n, buf);

    if (!run->new_alloc) {
        return ret < 0 || !run->zero_inplace ? ret : unzero_run(s, run);
    }
    mutex_lock_may_block(&s->lock);
    if (ret < 0) {
        /* As write_cluster(): see failed_end; nothing points there yet. */
        s->failed_end = MAX(s->failed_end,
                            run->host + run->nb * s->cluster_size);
        qcow2_update_refcount(s, run->host, run->nb, -1, QCOW2_DISCARD_OTHER);
    }
    for (uint64_t i = 0; i < run->nb && ret == 0; i++) {
        struct qcow2_l2e e = {
            .entry = (run->host + (i << s->cluster_bits)) |
                     QCOW2_OFLAG_COPIED,
        };

        ret = qcow2_set_l2e(s, run->gc + i, &e);
    }
    mutex_unlock(&s->lock);
    return ret;
}

/* BLOCK_REQ_WRITE_COMPRESSED: whole clusters, each compressed. */
static int
pwrite_compressed(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
                  const uint8_t *buf)
{
    struct qcow2_range r;
    int ret = 0;

    if ((offset & (s->cluster_size - 1)) ||
        ((bytes & (s->cluster_size - 1)) &&
         offset + bytes != s->node->size)) {
        return -EINVAL;
    }
    range_lock(s, &r, offset, bytes, true);
    while (bytes > 0 && ret == 0) {
        uint64_t n = MIN(bytes, s->cluster_size);

        ret = write_compressed_cluster(s, offset >> s->cluster_bits, buf, n);
        offset += n;
        bytes -= n;
        buf += n;
    }
    range_unlock(s, &r);
    return ret;
}

/*
 * Driver pwrite: any thread, no lock held, any alignment.  Exclusive
 * range lock over the touched clusters; per run or cluster plan (s->lock),
 * data (no lock), link (s->lock).  Runs rewritten in place change no
 * mapping: their data goes down in one batch, sent before anything else
 * is written (so the request's writes keep their order) and at the end.
 * FUA is emulated by the core with a flush.  Returns 0 or -errno; -EIO
 * once the image is marked corrupt.
 */
static int
qcow2_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
             const void *buf, unsigned flags)
{
    struct qcow2_state *s = node->opaque;
    const uint8_t *p = buf;
    struct qcow2_range r;
    struct host_batch b;
    int ret = 0;

    if (flags & BLOCK_REQ_WRITE_COMPRESSED) {
        return pwrite_compressed(s, offset, bytes, buf);
    }
    b.n = 0;
    range_lock(s, &r, offset, bytes, true);
    while (bytes > 0 && ret == 0) {
        uint64_t gc = offset >> s->cluster_bits;
        uint64_t in = offset & (s->cluster_size - 1);
        uint64_t n = MIN(bytes, s->cluster_size - in);
        struct write_run run = { 0 };

        /* A lone cluster with nothing batched yet: straight to
         * write_cluster(), whose plan is all it needs. */
        if (bytes > n || b.n) {
            mutex_lock_may_block(&s->lock);
            ret = s->corrupt ? -EIO : plan_run(s, gc, in, bytes, &run);
            mutex_unlock(&s->lock);
        }
        if (ret == 0 && run.nb && !run.new_alloc && !run.zero_inplace) {
            n = MIN(bytes, run.nb * s->cluster_size - in);
            ret = batch_add(s, &b, run.host + in, n, p, true);
        } else if (ret == 0) {
            /* Zero clusters in place change their entries after the data:
             * write_run(), after what is batched. */
            ret = b.n ? batch_submit(s, &b, true) : 0;
            if (ret == 0 && (run.nb >= 2 || run.zero_inplace)) {
                n = MIN(bytes, run.nb * s->cluster_size - in);
                ret = write_run(s, &run, in, n, p);
            } else if (ret == 0) {
                ret = write_cluster(s, gc, in, n, p);
            }
        }
        offset += n;
        bytes -= n;
        p += n;
    }
    if (ret == 0 && b.n) {
        ret = batch_submit(s, &b, true);
    }
    range_unlock(s, &r);
    return ret;
}

/* ---- Zeroing and discarding --------------------------------------------- */

/* Does the backing file read [offset, +bytes) as zeroes (or lack it)? */
static bool
backing_reads_zero(struct qcow2_state *s, uint64_t offset, uint64_t bytes)
{
    struct block_node *b = s->node->backing ? s->node->backing->node : NULL;
    int64_t blen = b ? block_getlength(b) : 0;

    if (blen < 0) {
        return false;
    }
    while (bytes > 0 && offset < (uint64_t)blen) {
        uint64_t pnum = 0;
        int ret = block_status(b, offset, MIN(bytes, blen - offset), &pnum,
                               NULL);

        if (ret < 0 || !(ret & BLOCK_STATUS_ZERO)) {
            return false;
        }
        offset += pnum;
        bytes -= MIN(pnum, bytes);
    }
    return true;
}

/*
 * May subcluster sc of entry e (guest range [start, end)), of which the
 * caller zeroes only [lo, hi), be zeroed whole?  As in QEMU: when it
 * holds no data and the rest of it reads as zeroes already.
 */
static bool
zeroable_whole(struct qcow2_state *s, const struct qcow2_l2e *e, unsigned sc,
               uint64_t start, uint64_t end, uint64_t lo, uint64_t hi)
{
    enum qcow2_cluster_type t;

    if (sub_type(s, e, sc, &t) < 0) {
        return false;
    }
    if (t == QCOW2_CLUSTER_ZERO_PLAIN || t == QCOW2_CLUSTER_ZERO_ALLOC) {
        return true;
    }
    return t == QCOW2_CLUSTER_UNALLOCATED &&
           backing_reads_zero(s, start, lo - start) &&
           backing_reads_zero(s, hi, end - hi);
}

/*
 * New entry for zeroing subclusters [a, b) of a cluster (all of it in
 * standard L2).  unmap: drop the host cluster.  Returns -ENOTSUP when the
 * range cannot be expressed with zero flags.
 */
static int
zero_entry(struct qcow2_state *s, const struct qcow2_l2e *old, unsigned a,
           unsigned b, bool unmap, struct qcow2_l2e *e, bool *free_old)
{
    uint64_t host = old->entry & QCOW2_L2E_OFFSET_MASK;
    bool compressed = old->entry & QCOW2_OFLAG_COMPRESSED;
    bool copied = old->entry & QCOW2_OFLAG_COPIED;
    unsigned nsub = s->extended_l2 ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    bool all = a == 0 && b == nsub;

    *e = *old;
    *free_old = false;
    if (compressed || (host && !copied)) {
        if (!all) {
            return -ENOTSUP;
        }
        unmap = true;
    }
    if (unmap && s->discard_no_unref && !compressed && copied) {
        unmap = false;
    }
    if (!s->extended_l2) {
        if (s->h.version < 3) {
            /* No zero flag in v2: only "unallocated" reads as zero, and
             * only without a backing file. */
            if (!unmap || s->node->backing) {
                return -ENOTSUP;
            }
            e->entry = 0;
            *free_old = host || compressed;
            return 0;
        }
        e->entry = (unmap || !host) ? QCOW2_OFLAG_ZERO
                                    : host | QCOW2_OFLAG_ZERO |
                                      QCOW2_OFLAG_COPIED;
        *free_old = unmap && (host || compressed);
        return 0;
    }
    if (all && unmap) {
        e->entry = 0;
        e->bitmap = QCOW2_SUB_ZERO_ALL;
        *free_old = host || compressed;
        return 0;
    }
    for (unsigned sc = a; sc < b; sc++) {
        e->bitmap |= QCOW2_SUB_ZERO(sc);
        e->bitmap &= ~QCOW2_SUB_ALLOC(sc);
    }
    return 0;
}

/*
 * Zero or discard [offset, offset+bytes) with s->lock held.  discard:
 * entries become unallocated (or zero when a backing file would show
 * through).  Pieces smaller than a subcluster: -ENOTSUP unless they
 * already read as zeroes (zeroing) or are skipped (discard).
 */
static int
zero_range_locked(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
                  bool unmap, bool discard, struct free_list *f)
{
    uint64_t sc_size = s->subcluster_size;

    while (bytes > 0) {
        uint64_t gc = offset >> s->cluster_bits;
        uint64_t in = offset & (s->cluster_size - 1);
        uint64_t n = MIN(bytes, s->cluster_size - in);
        uint64_t idx = gc / s->l2_entries;
        bool start_ok = in % sc_size == 0;
        bool end_ok = (in + n) % sc_size == 0 || offset + n >= s->h.size;
        unsigned a = (unsigned)div_round_up(in, sc_size);
        unsigned b = (unsigned)(end_ok ? div_round_up(in + n, sc_size)
                                       : (in + n) / sc_size);
        enum qcow2_cluster_type type;
        struct qcow2_l2e old, e;
        bool free_old;
        int ret;

        if ((discard || s->h.version < 3) && !s->node->backing &&
            idx < s->l1_size && !(s->l1[idx] & QCOW2_L1E_OFFSET_MASK)) {
            /* No L2 table and nothing below: all of it reads as zero. */
            uint64_t skip = ((idx + 1) * s->l2_entries << s->cluster_bits) -
                            offset;

            skip = MIN(skip, bytes);
            offset += skip;
            bytes -= skip;
            continue;
        }
        ret = qcow2_get_l2e(s, gc, &old);
        if (ret < 0) {
            return ret;
        }
        if (qcow2_l2_entry_type(old.entry, old.bitmap, s->extended_l2,
                                (int)s->h.version, s->cluster_bits,
                                &type) < 0) {
            qcow2_signal_corruption(s, -1, -1, "invalid L2 entry for guest "
                                    "cluster %llu", (unsigned long long)gc);
            return -EIO;
        }
        if (!discard && !start_ok) {
            /* A piece of a subcluster: zeroed whole, or by the core. */
            uint64_t sc0 = offset - in + (a - 1) * sc_size;

            if (!zeroable_whole(s, &old, a - 1, sc0, sc0 + sc_size, offset,
                                MIN(offset + n, sc0 + sc_size))) {
                return -ENOTSUP;
            }
            a--;
        }
        if (!discard && !end_ok && b * sc_size < in + n) {
            uint64_t sc0 = offset - in + b * sc_size;
            uint64_t sc1 = MIN(sc0 + sc_size, s->h.size);

            if (!zeroable_whole(s, &old, b, sc0, sc1, MAX(offset, sc0),
                                offset + n)) {
                return -ENOTSUP;
            }
            b++;
        }
        /* v3 writes zero flags even where nothing was (QEMU does too). */
        if (a < b && (old.entry || old.bitmap || s->node->backing ||
                      (!discard && (s->h.version >= 3 || s->extended_l2)))) {
            ret = zero_entry(s, &old, a, b, unmap || discard, &e, &free_old);
            if (ret == -ENOTSUP && discard) {
                ret = 0;
                e = old;
                free_old = false;
            }
            if (ret < 0) {
                return ret;
            }
            if (discard && !s->node->backing && !s->extended_l2 &&
                !(e.entry & ~QCOW2_OFLAG_ZERO)) {
                e.entry = 0;    /* no backing: unallocated reads as zero */
            }
            if (discard && !s->node->backing && s->extended_l2 &&
                e.entry == 0) {
                e.bitmap = 0;
            }
            if (e.entry != old.entry || e.bitmap != old.bitmap) {
                ret = qcow2_set_l2e(s, gc, &e);
                if (ret < 0) {
                    return ret;
                }
            }
            if (free_old) {
                free_list_add_entry(s, f, &old);
            }
        }
        offset += n;
        bytes -= n;
    }
    return 0;
}

/*
 * pwrite_zeroes and pdiscard: any thread, no lock held.  Metadata only,
 * all under s->lock; freed clusters are released after the L2 changes are
 * stable.  Zeroing returns -ENOTSUP for pieces it cannot express, so that
 * the core writes zeroes instead.
 */
static int
zero_or_discard(struct block_node *node, uint64_t offset, uint64_t bytes,
                bool unmap, bool discard)
{
    struct qcow2_state *s = node->opaque;
    struct free_list f = { 0 };
    struct qcow2_range r;
    int ret, ret2;

    if (discard && s->h.version < 3 && node->backing) {
        return 0;   /* v2 cannot hide the backing file: ignore, as QEMU */
    }
    range_lock(s, &r, offset, bytes, true);
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO
                     : zero_range_locked(s, offset, bytes, unmap, discard,
                                         &f);
    ret2 = free_list_commit(s, &f, QCOW2_DISCARD_REQUEST);
    mutex_unlock(&s->lock);
    range_unlock(s, &r);
    return ret < 0 ? ret : ret2;
}

static int
qcow2_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                    unsigned flags)
{
    return zero_or_discard(node, offset, bytes, flags & BLOCK_REQ_MAY_UNMAP,
                           false);
}

static int
qcow2_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    return zero_or_discard(node, offset, bytes, true, true);
}

/* ---- Block status ------------------------------------------------------ */

static int
status_of(struct qcow2_state *s, const struct qcow2_l2e *e, unsigned sc,
          uint64_t *host)
{
    enum qcow2_cluster_type t;

    if (sub_type(s, e, sc, &t) < 0) {
        return -EIO;
    }
    *host = e->entry & QCOW2_L2E_OFFSET_MASK;
    switch (t) {
    case QCOW2_CLUSTER_NORMAL:
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    case QCOW2_CLUSTER_COMPRESSED:
        return BLOCK_STATUS_DATA;
    case QCOW2_CLUSTER_ZERO_ALLOC:
        /* As QEMU: zero, with the preallocated host offset. */
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID;
    case QCOW2_CLUSTER_ZERO_PLAIN:
        return BLOCK_STATUS_ZERO;
    default:
        return 0;
    }
}

/*
 * Does the image map clusters over holes of its file (preallocation=
 * metadata)?  As QEMU guesses it: more clusters in use (refcount > 0)
 * than the file has allocated, by a margin.  Only then is it worth asking
 * the file under every data answer (BLOCK_STATUS_ASK_FILE).  Caller holds
 * s->lock.
 */
static bool
prealloc_holes_locked(struct qcow2_state *s)
{
    int64_t flen, alloc;
    uint64_t used = 0, threshold, end;

    if (s->prealloc_holes >= 0) {
        return s->prealloc_holes;
    }
    s->prealloc_holes = 0;
    flen = block_getlength(s->file);
    alloc = block_allocated_size(s->file);
    if (flen <= 0 || alloc < 0) {
        return false;   /* cannot tell: as QEMU, no */
    }
    threshold = MAX((uint64_t)alloc / s->cluster_size * 10 / 9,
                    (uint64_t)alloc / s->cluster_size + 2);
    end = ((uint64_t)flen + s->cluster_size - 1) >> s->cluster_bits;
    if (qcow2_count_used_clusters(s, end, threshold, &used) < 0) {
        return false;
    }
    s->prealloc_holes = used > threshold;
    return s->prealloc_holes;
}

/*
 * Driver block_status: any thread.  Answers for at most one L2 table:
 * DATA|OFFSET_VALID (*map in s->file; ASK_FILE too with metadata
 * preallocation) for data, ZERO for zero clusters
 * (with OFFSET_VALID when a host cluster is kept), DATA for compressed, 0
 * for unallocated (the core then asks the backing node).
 */
static int
qcow2_block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                   uint64_t *pnum, uint64_t *map, struct block_node **file)
{
    struct qcow2_state *s = node->opaque;
    uint64_t pos = offset, end = offset + bytes, want_host = 0;
    int first = -1, ret = 0;

    /* Bounded: at most one L2 table per call. */
    end = MIN(end, align_up(offset + 1, s->cluster_size * s->l2_entries));
    mutex_lock_may_block(&s->lock);
    while (pos < end) {
        uint64_t gc = pos >> s->cluster_bits;
        uint64_t in = pos & (s->cluster_size - 1);
        unsigned sc = (unsigned)(in / s->subcluster_size);
        uint64_t next = MIN(end, (pos | (s->subcluster_size - 1)) + 1);
        uint64_t host;
        struct qcow2_l2e e;
        int st;

        ret = qcow2_get_l2e(s, gc, &e);
        if (ret < 0) {
            break;
        }
        st = status_of(s, &e, sc, &host);
        if (st < 0) {
            ret = st;
            break;
        }
        host += sc * s->subcluster_size + (in % s->subcluster_size);
        if (first < 0) {
            first = st;
            want_host = host;
            *map = host;
        } else if (st != first ||
                   ((st & BLOCK_STATUS_OFFSET_VALID) && host != want_host)) {
            break;
        }
        want_host += next - pos;
        pos = next;
    }
    if (ret >= 0 && first == (BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID)
        && prealloc_holes_locked(s)) {
        first |= BLOCK_STATUS_ASK_FILE;
    }
    mutex_unlock(&s->lock);
    if (ret < 0) {
        return ret;
    }
    *pnum = pos - offset;
    *file = s->file;
    return first;
}

/* ---- Flush --------------------------------------------------------------- */

/*
 * all: refcount blocks too, even with lazy refcounts (close).  Without it,
 * lazy refcounts keep them in the cache: the dirty bit, set before the
 * first L2 table is written, says the disk's refcounts may lag.
 */
static int
flush_caches_locked(struct qcow2_state *s, bool all)
{
    int ret = s->lazy_refcounts && !all ? 0 : qcow2_refcounts_stable(s);

    if (ret == 0) {
        ret = qcow2_cache_writeback(s, &s->l2_cache);
    }
    return ret;
}

/*
 * Driver flush: any thread.  Writes back refcount blocks (then flushes),
 * then L2 tables; the core flushes the file afterwards (ordering rule 4).
 */
static int
qcow2_flush(struct block_node *node)
{
    struct qcow2_state *s = node->opaque;
    int ret;

    if (node->read_only) {
        return 0;
    }
    mutex_lock_may_block(&s->lock);
    ret = flush_caches_locked(s, false);
    mutex_unlock(&s->lock);
    /* The core flushes the file next. */
    return ret;
}

/* ---- make_empty ---------------------------------------------------------- */

struct crange {
    uint64_t start, end;        /* clusters, end exclusive */
};

static int
cmp_crange(const void *a, const void *b)
{
    const struct crange *x = a, *y = b;

    return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * The two lowest clusters (>= 1) not used by the live structures once the
 * L1 table is zero: header, L1, refcount table, refcount blocks.  Sorting
 * keeps this O(n log n) even for huge (corrupt) tables.
 */
static void
two_free_clusters(struct qcow2_state *s, uint64_t *nt, uint64_t *nb)
{
    uint64_t cs = s->cluster_size;
    size_t n = 0, cap = s->reftable_entries + 3;
    CLEANUP_FREE struct crange *r = xcalloc(cap, sizeof(*r));
    uint64_t c = 1, found[2];
    int k = 0;

    r[n++] = (struct crange){ 0, 1 };
    r[n++] = (struct crange){ s->l1_offset / cs, s->l1_offset / cs +
                              div_round_up((uint64_t)s->l1_size * 8, cs) };
    r[n++] = (struct crange){ s->reftable_offset / cs,
                              s->reftable_offset / cs +
                              s->reftable_clusters };
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        if (s->reftable[i]) {
            r[n++] = (struct crange){ s->reftable[i] / cs,
                                      s->reftable[i] / cs + 1 };
        }
    }
    qsort(r, n, sizeof(*r), cmp_crange);
    for (size_t i = 0; k < 2;) {
        if (i < n && r[i].start <= c) {
            c = MAX(c, r[i].end);
            i++;
        } else {
            found[k++] = c++;
        }
    }
    *nt = found[0];
    *nb = found[1];
}

/*
 * Fast path: the L1 is already zero on disk.  Write a new one-cluster
 * refcount table and one refcount block (counting header, L1 and
 * themselves) into clusters the live structures do not use and switch the
 * header to them in one write.  Before the switch
 * the old refcounts are intact (leaks only); after it the new ones are
 * exact.
 */
static int
rebuild_refcounts(struct qcow2_state *s, struct err **errp)
{
    uint64_t cs = s->cluster_size;
    uint64_t l1_first = s->l1_offset >> s->cluster_bits;
    uint64_t l1_n = div_round_up((uint64_t)s->l1_size * 8, cs);
    uint64_t nt, nb;
    CLEANUP_FREE uint8_t *rb = xzalloc(cs);
    CLEANUP_FREE uint8_t *rt = xzalloc(cs);
    uint8_t hdr[12];
    int ret;

    two_free_clusters(s, &nt, &nb);
    if (nb >= s->refblock_entries || l1_first + l1_n > s->refblock_entries) {
        return -ENOTSUP;    /* does not fit one refblock: slow path */
    }
    qcow2_refcount_set(rb, 0, s->refcount_order, 1);
    qcow2_refcount_set(rb, nt, s->refcount_order, 1);
    qcow2_refcount_set(rb, nb, s->refcount_order, 1);
    for (uint64_t c = l1_first; c < l1_first + l1_n; c++) {
        qcow2_refcount_set(rb, c, s->refcount_order, 1);
    }
    st_be64(rt, nb * cs);
    block_debug_event(s->file, "refblock_alloc");
    ret = qcow2_meta_pwrite(s, 0, nb * cs, cs, rb);
    if (ret == 0) {
        ret = qcow2_meta_pwrite(s, 0, nt * cs, cs, rt);
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    st_be64(hdr, nt * cs);
    st_be32(hdr + 8, 1);
    if (ret == 0) {
        ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, QCOW2_HDR_OFF_REFTABLE,
                                sizeof(hdr), hdr);
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not rebuild the refcount table");
        return ret;
    }
    qcow2_cache_discard_all(&s->rb_cache);
    free(s->reftable);
    s->reftable_entries = cs / 8;
    s->reftable = xcalloc(s->reftable_entries, sizeof(uint64_t));
    s->reftable[0] = nb * cs;
    s->reftable_used = 1;
    s->reftable_offset = nt * cs;
    s->reftable_clusters = 1;
    s->free_hint = 1;
    return 0;
}

/* After rebuild_refcounts(): the end of the last cluster still in use. */
static uint64_t
used_end(struct qcow2_state *s)
{
    uint64_t end = s->l1_offset + (uint64_t)s->l1_size * 8;

    end = MAX(end, s->reftable_offset + s->cluster_size);
    return MAX(end, s->reftable[0] + s->cluster_size);
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/*
 * Are the L2 tables of old_l1 distinct clusters inside the file?  Else the
 * image is corrupt, and walking them could take forever (4M L1 entries
 * naming one table).
 */
static bool
l2_tables_sane(struct qcow2_state *s, const uint64_t *old_l1)
{
    CLEANUP_FREE uint64_t *offs = xcalloc(MAX(s->l1_size, 1),
                                          sizeof(uint64_t));
    uint64_t flen = (uint64_t)MAX(block_getlength(s->file), 0);
    size_t n = 0;

    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t off = old_l1[i] & QCOW2_L1E_OFFSET_MASK;

        if (!off) {
            continue;
        }
        if (!is_aligned(off, s->cluster_size) || off >= flen) {
            return false;
        }
        offs[n++] = off;
    }
    qsort(offs, n, sizeof(*offs), cmp_u64);
    for (size_t i = 1; i < n; i++) {
        if (offs[i] == offs[i - 1]) {
            return false;
        }
    }
    return true;
}

/* Slow path: free every L2 table and data cluster through refcounts. */
static int
free_all_mappings(struct qcow2_state *s, const uint64_t *old_l1,
                  struct err **errp)
{
    struct free_list f = { 0 };
    int ret = 0;

    if (!l2_tables_sane(s, old_l1)) {
        qcow2_signal_corruption(s, -1, -1, "L2 tables shared or outside "
                                "the file");
        err_setf(errp, "qcow2 image is corrupt: L2 tables shared or "
                 "outside the file");
        return -EIO;
    }

    for (uint32_t i = 0; i < s->l1_size && ret == 0; i++) {
        uint64_t l2off = old_l1[i] & QCOW2_L1E_OFFSET_MASK;
        uint8_t *l2;

        if (!l2off) {
            continue;
        }
        ret = qcow2_cache_get(s, &s->l2_cache, l2off, false, &l2);
        for (uint64_t j = 0; ret == 0 && j < s->l2_entries; j++) {
            struct qcow2_l2e e = {
                .entry = ld_be64(l2 + j * s->l2_entry_size),
            };

            free_list_add_entry(s, &f, &e);
        }
        if (ret == 0) {
            qcow2_cache_put(&s->l2_cache, l2);
        }
        free_list_add(&f, l2off, 1);
    }
    qcow2_cache_discard_all(&s->l2_cache);
    if (ret == 0) {
        ret = free_list_commit(s, &f, QCOW2_DISCARD_SNAPSHOT);
    } else {
        free(f.e);
    }
    if (ret == 0) {
        ret = qcow2_refcounts_stable(s);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not free the image's clusters");
    }
    return ret;
}

static int
make_empty_locked(struct qcow2_state *s, struct err **errp)
{
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    CLEANUP_FREE uint64_t *old_l1 = NULL;
    CLEANUP_FREE uint8_t *zero = NULL;
    int ret;

    /* The new release below starts from the file's current end, so the
     * rest of an earlier one is not lost by stopping it. */
    qcow2_release_finish(&s->release, true);
    ret = flush_caches_locked(s, true);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not flush qcow2 metadata");
        return ret;
    }
    old_l1 = xcalloc(MAX(s->l1_size, 1), sizeof(uint64_t));
    memcpy(old_l1, s->l1, l1_bytes);
    zero = xzalloc(MAX(l1_bytes, 1));
    /* Rule 3: every pointer into the data goes away first, durably. */
    block_debug_event(s->file, "l1_update");
    ret = l1_bytes ? qcow2_meta_pwrite(s, QCOW2_META_L1, s->l1_offset,
                                       l1_bytes, zero)
                   : 0;
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not clear the L1 table");
        goto broken;
    }
    memset(s->l1, 0, l1_bytes);
    qcow2_cache_discard_all(&s->l2_cache);
    /* The fast path counts only header, L1 and refcounts: stored bitmaps
     * keep their clusters through the slow one. */
    ret = s->h.version >= 3 && !s->bitmaps.nb ? rebuild_refcounts(s, errp)
                                               : -ENOTSUP;
    if (ret == -ENOTSUP) {
        ret = free_all_mappings(s, old_l1, errp);
    } else if (ret == 0) {
        if (s->reftable_offset != s->cluster_size) {
            /* A second round moves the new structure into clusters 1 and
             * 2, freed by the first: the layout of a fresh image again. */
            ret = rebuild_refcounts(s, errp);
        }
        if (ret == 0) {
            /* The new metadata is stable and counts nothing past
             * used_end(): the tail can go after we return. */
            qcow2_release_start(&s->release, s->file, used_end(s));
        }
    }
    if (ret < 0) {
        goto broken;
    }
    return 0;

broken:
    /*
     * What is on disk is consistent (leaks at worst) but may no longer
     * match memory (a header or L1 write of unknown outcome): stop
     * writing, as QEMU detaches the driver.  Reopening fixes it.
     */
    s->corrupt = true;
    return ret;
}

/*
 * Driver make_empty: main thread or a job; waits for every request on the
 * node (exclusive range over the whole disk).  See make_empty_locked().
 */
static int
qcow2_make_empty(struct block_node *node, struct err **errp)
{
    struct qcow2_state *s = node->opaque;
    struct qcow2_range r;
    int ret;

    if (node->read_only) {
        err_setf(errp, "Block node '%s' is read-only", node->node_name);
        return -EPERM;
    }
    range_lock(s, &r, 0, UINT64_MAX >> 1, true);
    mutex_lock_may_block(&s->lock);
    if (s->corrupt) {
        err_setf(errp, "qcow2 image '%s' is corrupt", node->node_name);
        ret = -EIO;
    } else if (s->h.nb_snapshots) {
        /* make_empty rebuilds the refcounts from the active L1 alone. */
        err_setf(errp, "Emptying a qcow2 image with internal snapshots is "
                 "not supported");
        ret = -ENOTSUP;
    } else {
        ret = make_empty_locked(s, errp);
    }
    mutex_unlock(&s->lock);
    range_unlock(s, &r);
    return ret;
}

/* ---- Truncate ------------------------------------------------------------ */

static int
write_size_locked(struct qcow2_state *s, uint64_t length)
{
    uint8_t be[8];
    int ret;

    st_be64(be, length);
    ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, QCOW2_HDR_OFF_SIZE, 8, be);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret == 0) {
        s->h.size = length;
    }
    return ret;
}

/*
 * After a shrink, give the free clusters at the end of the file back, as
 * QEMU does: cut after the last cluster with a reference.  The refcounts
 * are stable already, so a crash leaves a consistent image either way; a
 * failure only costs space.  Under s->lock, every request drained.
 */
static void
cut_free_tail(struct qcow2_state *s)
{
    int64_t flen = block_getlength(s->file);
    uint64_t c, rc = 0;

    if (flen <= 0) {
        return;
    }
    for (c = div_round_up((uint64_t)flen, s->cluster_size); c > 0; c--) {
        if (qcow2_get_refcount(s, c - 1, &rc) < 0) {
            return;
        }
        if (rc) {
            break;
        }
    }
    if (c > 0 && c * s->cluster_size < (uint64_t)flen) {
        block_truncate(s->file, c * s->cluster_size, NULL);
    }
}

/*
 * Shrink: the header size first (what lies beyond is unreachable from
 * then on), then drop every mapping past the new end: entries of the
 * straddling L2 table cleared and made stable, L2 tables wholly beyond
 * unhooked from the L1 table (stable), and only then refcounts lowered.
 * The L1 table keeps its size (it may be larger than needed).
 */
static int
shrink_locked(struct qcow2_state *s, uint64_t length)
{
    uint64_t first = div_round_up(length, s->cluster_size);
    uint64_t end = div_round_up(s->h.size, s->cluster_size);
    uint64_t first_l1 = div_round_up(first, s->l2_entries);
    struct qcow2_l2e e, zero = { 0, 0 };
    struct free_list f = { 0 };
    int ret = write_size_locked(s, length);

    if (ret == 0 && !l2_tables_sane(s, s->l1)) {
        qcow2_signal_corruption(s, -1, -1, "L2 tables shared or outside "
                                "the file");
        return -EIO;
    }
    for (uint64_t gc = first; ret == 0 && gc < end; gc++) {
        uint64_t idx = gc / s->l2_entries;

        if (idx >= s->l1_size) {
            break;
        }
        if (!(s->l1[idx] & QCOW2_L1E_OFFSET_MASK)) {
            gc = (idx + 1) * s->l2_entries - 1;     /* no table: skip it */
            continue;
        }
        ret = qcow2_get_l2e(s, gc, &e);
        if (ret == 0 && (e.entry || e.bitmap)) {
            free_list_add_entry(s, &f, &e);
            if (idx < first_l1) {
                ret = qcow2_set_l2e(s, gc, &zero);
            }
        }
    }
    if (ret == 0) {
        ret = qcow2_l2_stable(s);
    }
    for (uint64_t i = first_l1; ret == 0 && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;

        if (l2) {
            s->l1[i] = 0;
            ret = qcow2_write_l1_entry(s, i);
            free_list_add(&f, l2, 1);
        }
    }
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret < 0) {
        free(f.e);
        return ret;
    }
    /* What lay beyond the new end goes back to the file system whatever
     * the discard options say, as QEMU's shrink does. */
    ret = free_list_commit(s, &f, QCOW2_DISCARD_ALWAYS);
    if (ret == 0) {
        cut_free_tail(s);
    }
    return ret;
}

/*
 * Driver truncate: main thread or a job; waits for every request on the
 * node.  Grows or shrinks; the size must be a multiple of 512.
 */
static int
qcow2_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    struct qcow2_state *s = node->opaque;
    uint64_t old = s->h.size;
    uint64_t need = div_round_up(length, s->cluster_size * s->l2_entries);
    struct qcow2_range r;
    int ret;

    if (length % 512) {
        err_setf(errp, "The new size must be a multiple of 512");
        return -EINVAL;
    }
    range_lock(s, &r, 0, UINT64_MAX >> 1, true);
    mutex_lock_may_block(&s->lock);
    qcow2_release_finish(&s->release, false);
    if (s->corrupt) {
        ret = -EIO;
    } else if (s->h.nb_snapshots && (s->h.version < 3 || length < old)) {
        mutex_unlock(&s->lock);
        range_unlock(s, &r);
        err_setf(errp, s->h.version < 3
                       ? "Can't resize a v2 image which has snapshots"
                       : "Shrinking a qcow2 image with internal snapshots "
                         "is not supported");
        return -ENOTSUP;
    } else if (length < old) {
        ret = shrink_locked(s, length);
    } else {
        ret = qcow2_grow_l1(s, need);
        if (ret == 0) {
            ret = write_size_locked(s, length);
        }
    }
    mutex_unlock(&s->lock);
    range_unlock(s, &r);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Failed to resize the qcow2 image");
        return ret;
    }
    if (length > old) {
        /*
         * The new area must read as zeroes: the backing file must not show
         * through, and neither may old bytes past the end of a partial
         * last cluster (left by an earlier shrink).
         */
        uint64_t zero_end = node->backing ? length
                            : MIN(length, align_up(old, s->cluster_size));

        __atomic_store_n(&node->size, length, __ATOMIC_RELAXED);
        ret = zero_end > old ? block_pwrite_zeroes(node, old, zero_end - old,
                                                   0)
                             : 0;
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Failed to zero the grown area");
            return ret;
        }
    }
    return 0;
}

/* ---- The VM state area --------------------------------------------------- */

/*
 * qemu-io's read -b and write -b: the VM state lives like guest data, in
 * the clusters of the L1 entries past the ones the virtual disk needs
 * (qcow2 spec, snapshot table entry, "VM state").  A snapshot taken then
 * copies it with the rest of the active L1.  Main thread, the node open
 * with nothing else writing (lockstep-io).  The disk end is rounded up to
 * whole L1 entries, as QEMU places it.
 */
uint64_t
qcow2_vmstate_start(struct block_node *node)
{
    struct qcow2_state *s = node->opaque;
    uint64_t span = s->cluster_size * s->l2_entries;

    return div_round_up(s->h.size, span) * span;
}

static int
vmstate_offset(struct block_node *node, uint64_t pos, uint64_t len,
               uint64_t *off)
{
    uint64_t base;

    if (!node->drv || strcmp(node->drv->name, "qcow2") != 0) {
        return -ENOTSUP;
    }
    if (node->backing) {
        return -ENOTSUP;    /* would read the backing file past its end */
    }
    base = qcow2_vmstate_start(node);
    if (pos > QCOW2_MAX_HOST_OFFSET || len > QCOW2_MAX_HOST_OFFSET - pos ||
        base + pos + len > QCOW2_MAX_HOST_OFFSET) {
        return -EFBIG;
    }
    *off = base + pos;
    return 0;
}

int
qcow2_vmstate_pread(struct block_node *node, uint64_t pos, uint64_t len,
                    void *buf)
{
    uint64_t off;
    int ret = vmstate_offset(node, pos, len, &off);

    return ret < 0 ? ret : qcow2_pread(node, off, len, buf, 0);
}

int
qcow2_vmstate_pwrite(struct block_node *node, uint64_t pos, uint64_t len,
                     const void *buf)
{
    struct qcow2_state *s = node->opaque;
    uint64_t off, span;
    int ret = vmstate_offset(node, pos, len, &off);

    if (ret < 0) {
        return ret;
    }
    if (node->read_only) {
        return -EPERM;
    }
    span = s->cluster_size * s->l2_entries;
    mutex_lock_may_block(&s->lock);
    ret = s->corrupt ? -EIO : qcow2_grow_l1(s, div_round_up(off + len, span));
    mutex_unlock(&s->lock);
    return ret < 0 ? ret : qcow2_pwrite(node, off, len, buf, 0);
}

/* ---- Open and close ------------------------------------------------------ */

static int
read_header(struct qcow2_state *s, struct err **errp)
{
    int64_t flen = block_getlength(s->file);
    uint64_t len;
    CLEANUP_FREE uint8_t *buf = NULL;
    int ret;

    if (flen < 0) {
        err_setf_errno(errp, (int)-flen, "Could not get the image size");
        return (int)flen;
    }
    len = MIN((uint64_t)flen, MAX_HEADER_READ);
    if (len < QCOW2_V2_HEADER_LEN) {
        err_setf(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    buf = xmalloc(len);
    ret = block_pread(s->file, 0, len, buf, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read qcow2 header");
        return ret;
    }
    return qcow2_header_parse(buf, len, &s->h, errp);
}

static int
check_flags(struct block_node *node, struct qcow2_state *s, struct err **errp)
{
    if (s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT &&
        !node->read_only) {
        err_setf(errp, "qcow2: Image is corrupt; cannot be opened "
                 "read/write (repair it with 'qemu-img check -r all')");
        return -EACCES;
    }
    return 0;
}

/*
 * A writable open of a dirty image (lazy refcounts, not closed) repairs
 * the refcounts first, printing what it finds as "check -r all" does, and
 * reads the header again.
 */
static int
repair_dirty(struct block_node *node, struct qcow2_state *s,
             struct err **errp)
{
    struct block_check_result res;
    int ret;

    if (!(s->h.incompatible_features & QCOW2_INCOMPAT_DIRTY) ||
        node->read_only) {
        return 0;
    }
    ret = qcow2_check(s->file, BLOCK_CHECK_FIX_LEAKS | BLOCK_CHECK_FIX_ERRORS,
                      stderr, &res, errp);
    if (ret == 0 && (res.corruptions || res.check_errors)) {
        err_setf(errp, "%" PRId64 " corruptions and %" PRId64 " check "
                 "errors left", res.corruptions, res.check_errors);
        ret = -EIO;
    }
    if (ret < 0) {
        err_prepend(errp, "Could not repair dirty image: ");
        return ret;
    }
    return read_header(s, errp);
}

static int
lazy_refcounts_option(struct qcow2_state *s, json_t *options,
                      struct err **errp)
{
    s->lazy_refcounts = block_opt_bool(options, "lazy-refcounts",
                                       s->h.compatible_features &
                                       QCOW2_COMPAT_LAZY_REFCOUNTS);
    if (s->lazy_refcounts && s->h.version < 3) {
        err_setf(errp, "Lazy refcounts require a qcow2 image with at least "
                 "qemu 1.1 compatibility level");
        return -EINVAL;
    }
    return 0;
}

static int
load_l1(struct qcow2_state *s, struct err **errp)
{
    uint64_t bytes = (uint64_t)s->h.l1_size * 8;
    CLEANUP_FREE uint8_t *buf = NULL;
    int ret;

    s->l1_size = s->h.l1_size;
    s->l1_offset = s->h.l1_table_offset;
    s->l1 = xcalloc(MAX(s->l1_size, 1), sizeof(uint64_t));
    if (!bytes) {
        return 0;
    }
    if (s->l1_offset + bytes >= QCOW2_MAX_HOST_OFFSET ||
        s->l1_offset < s->cluster_size) {
        err_setf(errp, "Invalid L1 table offset");
        return -EINVAL;
    }
    buf = xmalloc(bytes);
    ret = block_pread(s->file, s->l1_offset, bytes, buf, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read L1 table");
        return ret;
    }
    for (uint64_t i = 0; i < s->l1_size; i++) {
        s->l1[i] = ld_be64(buf + i * 8);
    }
    return 0;
}

static int
refuse_options(json_t *options, struct err **errp)
{
    json_t *oc;

    if (json_object_get(options, "data-file")) {
        err_setf(errp, "qcow2: external data files are not supported");
        return -ENOTSUP;
    }
    if (json_object_get(options, "encrypt")) {
        err_setf(errp, "qcow2: encryption is not supported");
        return -ENOTSUP;
    }
    /* The check covers every structure an image we open can have. */
    oc = json_object_get(options, "overlap-check");
    if (oc && !(json_is_string(oc) &&
                (!strcmp(json_string_value(oc), "cached") ||
                 !strcmp(json_string_value(oc), "all")))) {
        err_setf(errp, "qcow2: overlap-check must be 'cached' or 'all' (the "
                 "check of every metadata structure is always on)");
        return -ENOTSUP;
    }
    return 0;
}

/*
 * QEMU's checks of the cache options, before the image is touched: the
 * three sizes not all at once, neither part above the whole, and an L2
 * entry size QEMU would take.  Then what we cannot do: L2 entries smaller
 * than a table (our cache holds whole tables) and dropping unused tables
 * on a timer.
 */
static int
check_cache_options(struct qcow2_state *s, json_t *options,
                    struct err **errp)
{
    bool has_total = json_object_get(options, "cache-size");
    bool has_l2 = json_object_get(options, "l2-cache-size");
    bool has_rb = json_object_get(options, "refcount-cache-size");
    int64_t total = block_opt_int(options, "cache-size", 0);
    int64_t entry = block_opt_int(options, "l2-cache-entry-size",
                                  (int64_t)s->h.cluster_size);
    int64_t interval;

    if (has_total && has_l2 && has_rb) {
        err_setf(errp, "cache-size, l2-cache-size and refcount-cache-size "
                 "may not be set at the same time");
        return -EINVAL;
    }
    if (has_total && has_l2 &&
        block_opt_int(options, "l2-cache-size", 0) > total) {
        err_setf(errp, "l2-cache-size may not exceed cache-size");
        return -EINVAL;
    }
    if (has_total && block_opt_int(options, "refcount-cache-size", 0) >
                     total) {
        err_setf(errp, "refcount-cache-size may not exceed cache-size");
        return -EINVAL;
    }
    if (entry < 512 || (uint64_t)entry > s->h.cluster_size ||
        !is_power_of_2((uint64_t)entry)) {
        err_setf(errp, "L2 cache entry size must be a power of two between "
                 "512 and the cluster size (%" PRIu64 ")", s->h.cluster_size);
        return -EINVAL;
    }
    if ((uint64_t)entry != s->h.cluster_size) {
        err_setf(errp, "qcow2: l2-cache-entry-size=%" PRId64 " is not "
                 "supported: the L2 cache holds whole tables, so only the "
                 "cluster size (%" PRIu64 ") is", entry, s->h.cluster_size);
        return -ENOTSUP;
    }
    interval = block_opt_int(options, "cache-clean-interval", 0);
    if (interval != 0) {
        err_setf(errp, "qcow2: cache-clean-interval=%" PRId64 " is not "
                 "supported: cached tables are never dropped on a timer, "
                 "so only 0 is", interval);
        return -ENOTSUP;
    }
    return 0;
}

static void
setup_caches(struct qcow2_state *s, json_t *options)
{
    uint64_t cs = s->cluster_size;
    int64_t total = block_opt_int(options, "cache-size", -1);
    int64_t l2 = block_opt_int(options, "l2-cache-size", -1);
    int64_t rb = block_opt_int(options, "refcount-cache-size", -1);
    uint64_t l2n, rbn;

    if (l2 < 0 && total >= 0) {
        l2 = rb >= 0 ? MAX(total - rb, 0) : total - total / 4;
    }
    if (rb < 0 && total >= 0) {
        rb = MAX(total - MAX(l2, 0), 0);
    }
    if (l2 >= 0) {
        l2n = (uint64_t)l2 / cs;
    } else {
        l2n = MIN(MIN((uint64_t)s->l1_size, DEFAULT_L2_CACHE_BYTES / cs),
                  MAX_DEFAULT_L2_ENTRIES);
    }
    rbn = rb >= 0 ? (uint64_t)rb / cs : MIN_RB_ENTRIES;
    l2n = MIN(MAX(l2n, MIN_L2_ENTRIES), 65536);
    rbn = MIN(MAX(rbn, MIN_RB_ENTRIES), 65536);
    qcow2_cache_init(&s->l2_cache, "L2", l2n, cs, qcow2_l2_before_write);
    qcow2_cache_init(&s->rb_cache, "refblock", rbn, cs, NULL);
}

#define BACKING_PREFIX "Could not open backing file: "

/*
 * "backing" absent, or options without a "file": open what the header
 * names, read-only; the options given (backing.driver=...) win over the
 * header's, as QEMU merges them.
 */
static int
open_backing_from_header(struct block_node *node, struct qcow2_state *s,
                         json_t *given, struct err **errp)
{
    CLEANUP_FREE char *path = NULL;
    const char *fmt;
    json_t *b, *opts;
    struct block_child *c;

    if (!s->h.has_backing_file) {
        return 0;
    }
    path = qcow2_resolve_backing(block_node_filename(s->file),
                                 s->h.backing_file);
    fmt = json_string_value(json_object_get(given, "driver"));
    if (!fmt) {
        fmt = s->h.has_backing_fmt ? s->h.backing_fmt
                                   : block_probe_file(path);
    }
    if (!block_driver_find(fmt)) {
        err_setf(errp, "Could not open backing file: Unknown driver '%s'",
                 fmt);
        return -EINVAL;
    }
    if (block_backing_chain_check(path, errp) < 0) {
        err_prepend(errp, "%s", BACKING_PREFIX);
        return -ELOOP;
    }
    b = given ? json_deep_copy(given) : json_object();
    json_object_set_new(b, "driver", json_string(fmt));
    json_object_set_new(b, "file", json_pack("{s:s, s:s}", "driver", "file",
                                             "filename", path));
    opts = json_pack("{s:o}", "backing", b);
    c = block_node_open_child(node, opts, "backing", errp);
    json_decref(opts);
    if (!c) {
        /* Once, however deep in the chain the open failed: a loop or the
         * depth limit would otherwise repeat it a few hundred times. */
        if (!errp || !*errp ||
            strncmp((*errp)->msg, BACKING_PREFIX, strlen(BACKING_PREFIX))) {
            err_prepend(errp, "%s", BACKING_PREFIX);
        }
        return -EINVAL;
    }
    return 0;
}

static int
open_backing(struct block_node *node, struct qcow2_state *s, json_t *options,
             struct err **errp)
{
    json_t *b = json_object_get(options, "backing");

    if (!b) {
        return open_backing_from_header(node, s, NULL, errp);
    }
    /* null (or "" from keyval, as QEMU allows): no backing file. */
    if (json_is_null(b) || (json_is_string(b) && !*json_string_value(b))) {
        return 0;
    }
    if (json_is_object(b) && !json_object_get(b, "file") &&
        !json_object_get(b, "filename") && s->h.has_backing_file) {
        return open_backing_from_header(node, s, b, errp);
    }
    return block_node_open_child(node, options, "backing", errp) ? 0
                                                                 : -EINVAL;
}

static void
init_geometry(struct block_node *node, struct qcow2_state *s,
              json_t *options)
{
    s->cluster_bits = s->h.cluster_bits;
    s->cluster_size = s->h.cluster_size;
    /* For bitmap granularity and block-copy's cluster, as QEMU's
     * bdrv_get_info gives them. */
    node->cluster_size = s->cluster_size;
    s->extended_l2 = s->h.extended_l2;
    s->l2_entry_size = s->h.l2_entry_size;
    s->l2_entries = s->h.l2_entries;
    s->subcluster_size = s->extended_l2
                         ? s->cluster_size / QCOW2_EXTL2_SUBCLUSTERS
                         : s->cluster_size;
    s->refcount_order = s->h.refcount_order;
    s->refblock_entries = s->cluster_size * 8 >> s->refcount_order;
    s->reftable_offset = s->h.refcount_table_offset;
    s->reftable_clusters = s->h.refcount_table_clusters;
    s->free_hint = 1;
    s->discard_passthrough[QCOW2_DISCARD_REQUEST] =
        block_opt_bool(options, "pass-discard-request", node->discard_unmap);
    s->discard_passthrough[QCOW2_DISCARD_SNAPSHOT] =
        block_opt_bool(options, "pass-discard-snapshot", true);
    s->discard_passthrough[QCOW2_DISCARD_ALWAYS] = true;
    s->discard_passthrough[QCOW2_DISCARD_OTHER] =
        block_opt_bool(options, "pass-discard-other", false);
    s->discard_no_unref = block_opt_bool(options, "discard-no-unref", false);
    node->limits.request_alignment = 1;
    node->limits.pdiscard_alignment = (uint32_t)s->cluster_size;
    node->limits.pwrite_zeroes_alignment = (uint32_t)s->subcluster_size;
    node->limits.opt_transfer = (uint32_t)s->cluster_size;
    node->supported_write_flags = BLOCK_REQ_WRITE_COMPRESSED;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP;
}

static void
state_free(struct qcow2_state *s)
{
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->rb_cache);
    free(s->l1);
    free(s->reftable);
    s->l1 = NULL;
    s->reftable = NULL;
    qcow2_release_destroy(&s->release);
    qcow2_bitmaps_free(s);
    mutex_destroy(&s->lock);
    cond_destroy(&s->range_cond);
}

/*
 * Driver open: main thread.  Reads and validates the header, loads the L1
 * and refcount tables, sets up the caches, opens the backing chain, and
 * loads the persistent bitmaps (writable opens: settles the autoclear
 * bits and marks the bitmaps in use).  Refuses what qcow2.h lists as
 * unsupported, and writable opens of dirty or corrupt images (-EACCES, so
 * that auto-read-only falls back to read-only).
 */
static int
qcow2_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct qcow2_state *s = node->opaque;
    int64_t flen;
    int ret;

    s->node = node;
    s->prealloc_holes = -1;
    lock_init(&s->lock, LOCK_QCOW2_META);
    cond_init(&s->range_cond);
    TAILQ_INIT(&s->ranges);
    qcow2_release_init(&s->release);
    ret = refuse_options(options, errp);
    if (ret < 0) {
        goto out_lock;
    }
    if (!block_node_open_child(node, options, "file", errp)) {
        ret = -EINVAL;
        goto out_lock;
    }
    s->file = node->file->node;
    flen = block_getlength(s->file);
    /* Unknown: nothing counts as never written (stale_bytes()). */
    s->claimed_end = flen < 0 ? UINT64_MAX : (uint64_t)flen;
    ret = read_header(s, errp);
    if (ret == 0) {
        ret = check_cache_options(s, options, errp);
    }
    if (ret == 0) {
        ret = check_flags(node, s, errp);
    }
    if (ret == 0) {
        ret = repair_dirty(node, s, errp);
    }
    if (ret == 0) {
        ret = lazy_refcounts_option(s, options, errp);
    }
    if (ret < 0) {
        goto out_lock;
    }
    init_geometry(node, s, options);
    ret = load_l1(s, errp);
    if (ret == 0) {
        ret = qcow2_refcount_load_table(s, errp);
    }
    if (ret < 0) {
        goto out_tables;
    }
    setup_caches(s, options);
    ret = open_backing(node, s, options, errp);
    if (ret == 0) {
        /* The bitmaps are as long as the disk (the core sets the size
         * again when open returns).  Last, so that nothing that can fail
         * after it leaves them marked in use. */
        __atomic_store_n(&node->size, s->h.size, __ATOMIC_RELAXED);
        ret = qcow2_bitmaps_open(s, errp);
    }
    if (ret < 0) {
        goto out_caches;
    }
    s->corrupt = s->h.incompatible_features & QCOW2_INCOMPAT_CORRUPT;
    return 0;

out_caches:
out_tables:
    state_free(s);
    return ret;
out_lock:
    qcow2_release_destroy(&s->release);
    mutex_destroy(&s->lock);
    cond_destroy(&s->range_cond);
    return ret;
}

/* Close and reopen read-only: a failure leaves them in use on disk, which
 * the next open takes for "inconsistent": safe, and said here. */
static void
store_bitmaps_locked(struct qcow2_state *s)
{
    int ret = qcow2_bitmaps_store(s);

    if (ret < 0) {
        fprintf(stderr, "qcow2: could not store the persistent dirty "
                "bitmaps of '%s': %s\n", s->node->node_name,
                strerror(-ret));
    }
}

/*
 * Close: cut what grow_over() reserved past the last claimed cluster, so
 * that the file ends where its clusters do, as without growing ahead.
 * Nothing was written there; a failure only costs space.  Under s->lock,
 * every request drained.
 */
static void
trim_grown_tail(struct qcow2_state *s)
{
    int64_t flen = block_getlength(s->file);

    if (__atomic_load_n(&s->grew_ahead, __ATOMIC_RELAXED) && flen > 0 &&
        (uint64_t)flen > s->claimed_end) {
        block_truncate(s->file, s->claimed_end, NULL);
    }
}

static void
qcow2_close(struct block_node *node)
{
    struct qcow2_state *s = node->opaque;

    if (!node->read_only) {
        mutex_lock_may_block(&s->lock);
        store_bitmaps_locked(s);
        /* Every refcount on the disk: only then is the image clean. */
        if (flush_caches_locked(s, true) == 0 && block_flush(s->file) == 0) {
            qcow2_mark_clean(s);
        }
        /* The file must have its final size once we are closed. */
        qcow2_release_finish(&s->release, false);
        trim_grown_tail(s);
        mutex_unlock(&s->lock);
    }
    state_free(s);
}

static int64_t
qcow2_getlength(struct block_node *node)
{
    struct qcow2_state *s = node->opaque;

    return (int64_t)s->h.size;
}

static void
qcow2_query(struct block_node *node, json_t *info)
{
    struct qcow2_state *s = node->opaque;
    json_t *data = json_object();

    /* QEMU's member order. */
    json_object_set_new(data, "compat",
                        json_string(s->h.version < 3 ? "0.10" : "1.1"));
    json_object_set_new(data, "compression-type",
                        json_string(s->h.compression_type ? "zstd"
                                                          : "zlib"));
    if (s->h.version >= 3) {
        json_object_set_new(data, "lazy-refcounts",
                            json_boolean(s->h.compatible_features &
                                         QCOW2_COMPAT_LAZY_REFCOUNTS));
        qcow2_bitmaps_query(s, data);
    }
    json_object_set_new(data, "refcount-bits",
                        json_integer((json_int_t)s->h.refcount_bits));
    if (s->h.version >= 3) {
        json_object_set_new(data, "corrupt", json_boolean(s->corrupt));
        json_object_set_new(data, "extended-l2",
                            json_boolean(s->extended_l2));
    }
    json_object_set_new(info, "format-specific",
                        json_pack("{s:s, s:o}", "type", "qcow2", "data",
                                  data));
}

static int
qcow2_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)filename;
    return len >= 4 && !memcmp(head, "QFI\xfb", 4) ? 100 : 0;
}

const struct block_driver qcow2_driver = {
    .name = "qcow2",
    .kind = BLOCK_KIND_FORMAT,
    .state_size = sizeof(struct qcow2_state),
    .options = qcow2_opts,
    .serialize_requests = false,
    .compressed_writes = true,
    .open = qcow2_open,
    .close = qcow2_close,
    .getlength = qcow2_getlength,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .pdiscard = qcow2_pdiscard,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .truncate = qcow2_truncate,
    .make_empty = qcow2_make_empty,
    .query = qcow2_query,
    .bitmap_can_store = qcow2_bitmap_can_store,
    .bitmap_remove = qcow2_bitmap_remove,
    .probe = qcow2_probe,
    .create_options = qcow2_create_options,
    .create = qcow2_create_image,
    .check = qcow2_check,
    .image_info = qcow2_image_info,
    .change_backing_file = qcow2_change_backing_file,
    .snapshot_list = qcow2_snapshot_list_hook,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_goto = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .vmstate_start = qcow2_vmstate_start,
    .vmstate_pread = qcow2_vmstate_pread,
    .vmstate_pwrite = qcow2_vmstate_pwrite,
};
