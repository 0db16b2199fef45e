/* SPDX-License-Identifier: MIT */
/*
 * Internal interfaces of the qcow2 driver: the per-node state, the
 * metadata caches, the cluster allocator and the L2 lookups.  See the design
 * notes at the top of qcow2.c for the locking and ordering rules.
 */
#ifndef LOCKSTEP_QCOW2_INT_H
#define LOCKSTEP_QCOW2_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>

#include "block/format/qcow2/qcow2.h"
#include "lockstep/driver.h"

struct qcow2_state;

/*
 * A cache of whole metadata clusters (L2 tables or refcount blocks), kept
 * in on-disk (big-endian) layout.  All fields: protected by s->lock.
 */
struct qcow2_cache_entry {
    uint64_t offset;            /* host offset; 0 = empty slot */
    uint8_t *data;              /* cluster_size bytes */
    bool dirty;
    int pins;                   /* > 0: in use, not evictable */
    uint64_t lru;               /* last use tick */
};

struct qcow2_cache {
    const char *name;           /* "L2" or "refblock", for events */
    struct qcow2_cache_entry *e;
    size_t nb;
    uint64_t tick;
    size_t nb_dirty;
    /* Called before a dirty entry is written (ordering rule). */
    int (*before_write)(struct qcow2_state *s);
};

/* A guest cluster range in use by a request (see range locks, qcow2.c). */
struct qcow2_range {
    uint64_t first;             /* guest cluster index */
    uint64_t end;               /* exclusive */
    bool exclusive;
    TAILQ_ENTRY(qcow2_range) link;
};

/* A file tail being given back in the background (qcow2-release.c). */
struct qcow2_release {
    pthread_t thread;
    bool running;               /* a thread to join; callers hold s->lock */
    struct block_node *file;
    struct lock lock;       /* protects the fields below */
    pthread_cond_t cond;        /* a truncate step ended, or the thread */
    uint64_t end;               /* the file's length as the thread left it */
    uint64_t floor;             /* never cut below: keep, raised by claims */
    uint64_t cut;               /* truncate in flight to here; else MAX */
    bool stop;                  /* end after the step in flight */
    bool done;                  /* the thread has nothing left to do */
};

/* One entry of the bitmap directory, as on disk (qcow2-bitmap.c). */
struct qcow2_bitmap {
    char *name;
    uint64_t table_offset;
    uint32_t table_size;        /* entries */
    uint32_t flags;             /* QCOW2_BME_* */
    unsigned granularity_bits;
};

/* The image's bitmap directory as the header points to it. */
struct qcow2_bitmaps {
    uint32_t nb;                /* 0: no bitmaps extension */
    uint64_t dir_offset;
    uint64_t dir_size;          /* bytes */
    struct qcow2_bitmap *e;     /* nb entries, in directory order */
};

/* A range of the image file. */
struct qcow2_host_range {
    uint64_t offset;
    uint64_t bytes;
};

enum qcow2_discard_type {
    QCOW2_DISCARD_REQUEST,      /* guest discard / write-zeroes unmap */
    QCOW2_DISCARD_SNAPSHOT,     /* make_empty */
    QCOW2_DISCARD_OTHER,        /* anything else freeing clusters */
    QCOW2_DISCARD_ALWAYS,       /* shrink: beyond the disk, always */
    QCOW2_DISCARD_MAX,
};

struct qcow2_state {
    struct block_node *node;
    struct block_node *file;    /* node->file->node */
    struct qcow2_header h;      /* as read at open, updated in memory */

    uint64_t cluster_size;
    unsigned cluster_bits;
    uint64_t l2_entries;        /* entries per L2 table */
    unsigned l2_entry_size;     /* 8 or 16 */
    bool extended_l2;
    uint64_t subcluster_size;   /* cluster_size, or cluster_size / 32 */
    unsigned refcount_order;
    uint64_t refblock_entries;  /* refcount entries per block */
    bool discard_passthrough[QCOW2_DISCARD_MAX];
    bool discard_no_unref;
    /*
     * Lazy refcounts (option lazy-refcounts, default: the image's
     * compatible bit): the first L2 write sets the dirty bit, and from then
     * on refcount blocks reach the disk only when evicted or at close,
     * which clears the bit again.  A crash leaves the bit set; the next
     * read-write open repairs the refcounts.  Set at open only.
     */
    bool lazy_refcounts;

    /*
     * The lock protects everything below: the in-memory tables, the caches,
     * the allocator and the range list.  Metadata I/O happens with it held;
     * guest data I/O never does.  Lock order: s->lock, then the core's
     * req_lock of the file node (taken inside block_* calls).  Taken with
     * mutex_lock_may_block(): a holder may be waiting for the disk, so a
     * thread serving an NBD socket passes the socket on before it waits.
     */
    struct lock lock;
    pthread_cond_t range_cond;
    TAILQ_HEAD(, qcow2_range) ranges;

    uint64_t *l1;               /* host order, l1_size entries */
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t *reftable;         /* host order */
    uint64_t reftable_entries;
    uint64_t reftable_used;     /* entries from here on are zero: bounds the
                                 * overlap check's scan (QEMU:
                                 * max_refcount_table_index) */
    uint64_t reftable_offset;
    uint32_t reftable_clusters;

    struct qcow2_cache l2_cache;
    struct qcow2_cache rb_cache;

    uint64_t free_hint;         /* lowest cluster that may be free */
    /* Where the next compressed cluster may go: right after the last
     * one, in its host cluster (0: start a new host cluster). */
    uint64_t free_byte_offset;
    /*
     * A data write into a new cluster failed up to here: it may have
     * written part of its data past the end the file node knows (the core
     * grows node->size only on success), so from the file's length alone
     * we could not tell that the cluster, once reused, holds old bytes.
     * Allocating writes treat the file as at least this long.
     */
    uint64_t failed_end;
    /*
     * The end of every host range handed out since open: the file's length
     * at open, raised by each claim (qcow2-refcount.c claim()).  We never
     * wrote the file past it: what lies there is a hole, or blocks that
     * grow_over() reserved ahead, and reads as zeroes.
     */
    uint64_t claimed_end;
    bool grew_ahead;            /* grow_over() reserved past a claim */
    bool no_grow_ahead;         /* atomic: the file cannot (ENOTSUP) */
    uint64_t growing_to;        /* a grow_over() in flight reaches it; 0:
                                 * none.  Atomic, no lock. */
    struct qcow2_release release;   /* the tail make_empty gives back */
    struct qcow2_bitmaps bitmaps;   /* the directory on disk */
    /* Metadata preallocation (clusters mapped over file holes), found on
     * the first block status: -1 not looked yet, 0 no, 1 yes.  Protected
     * by: lock. */
    int prealloc_holes;
    bool corrupt;               /* metadata inconsistency found: no writes */
    bool signaled_corruption;   /* reported once (stderr, event) */
};

/* ---- qcow2-cache.c ---------------------------------------------------- */

void qcow2_cache_init(struct qcow2_cache *c, const char *name, size_t nb,
                      uint64_t cluster_size,
                      int (*before_write)(struct qcow2_state *s));
void qcow2_cache_destroy(struct qcow2_cache *c);
/* Get the table at offset (read it unless "fresh": then zeroed), pinned. */
int qcow2_cache_get(struct qcow2_state *s, struct qcow2_cache *c,
                    uint64_t offset, bool fresh, uint8_t **data);
void qcow2_cache_put(struct qcow2_cache *c, uint8_t *data);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, uint8_t *data);
/* Write back every dirty entry (does not flush the file). */
int qcow2_cache_writeback(struct qcow2_state *s, struct qcow2_cache *c);
/* Forget everything, dirty or not. */
void qcow2_cache_discard_all(struct qcow2_cache *c);
/* Forget one offset (freed cluster). */
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset);

/* ---- qcow2-refcount.c ------------------------------------------------- */

int qcow2_refcount_load_table(struct qcow2_state *s, struct err **errp);
int qcow2_get_refcount(struct qcow2_state *s, uint64_t cluster,
                       uint64_t *refcount);
/* Clusters below end with a refcount, counted up to just past limit. */
int qcow2_count_used_clusters(struct qcow2_state *s, uint64_t end,
                              uint64_t limit, uint64_t *used);
/* Add delta to the refcount of n clusters starting at host offset. */
int qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t n,
                          int64_t delta, enum qcow2_discard_type type);
/* Allocate n contiguous clusters: refcount 1 in the cache; host offset. */
int64_t qcow2_alloc_clusters(struct qcow2_state *s, uint64_t n);
/* Rule "refcounts before pointers": write back refblocks and flush. */
int qcow2_refcounts_stable(struct qcow2_state *s);
/* Lazy refcounts: set the dirty bit on disk (once); then refcounts may
 * lag behind the pointers. */
int qcow2_mark_dirty(struct qcow2_state *s);
/* Clear the dirty bit; the caller wrote every cache back first. */
int qcow2_mark_clean(struct qcow2_state *s);

/* ---- qcow2-compress.c ------------------------------------------------- */

/* Compress in (len bytes) with QCOW2_COMPRESSION_* type into out; the
 * compressed length, or 0 when it does not fit in max (or fails). */
size_t qcow2_compress(unsigned type, const uint8_t *in, size_t len,
                      uint8_t *out, size_t max);
/* Exactly n bytes out of src (len bytes, padding after the stream
 * ignored); 0, or -EIO for a stream that does not give them. */
int qcow2_decompress(unsigned type, const uint8_t *src, size_t len,
                     uint8_t *dst, size_t n);

/* ---- qcow2-corrupt.c -------------------------------------------------- */

/* Kinds of metadata, for the overlap check (bits, to ignore some). */
enum {
    QCOW2_META_HEADER = 1 << 0,
    QCOW2_META_L1 = 1 << 1,
    QCOW2_META_L2 = 1 << 2,
    QCOW2_META_REFTABLE = 1 << 3,
    QCOW2_META_REFBLOCK = 1 << 4,
    QCOW2_META_BITMAP_DIR = 1 << 5,
    QCOW2_META_BITMAP_TABLE = 1 << 6,
};

/* The kind of metadata, not in ign, that [off, off+len) overlaps; 0 none. */
unsigned qcow2_overlap(struct qcow2_state *s, unsigned ign, uint64_t off,
                       uint64_t len);
/* Is host range [off, off+len) used by any metadata? */
bool qcow2_overlaps_metadata(struct qcow2_state *s, uint64_t off,
                             uint64_t len);
/* 0, or mark the image corrupt and -EIO when qcow2_overlap() finds one. */
int qcow2_overlap_refuse(struct qcow2_state *s, unsigned ign, uint64_t off,
                         uint64_t len);
/*
 * Every metadata write: -EIO once the image is corrupt; else the overlap
 * check against every structure but those of the kinds in ign (the one
 * being written: QCOW2_META_L2 for an L2 table; 0 for a new structure not
 * linked yet), then the write.
 */
int qcow2_meta_pwrite(struct qcow2_state *s, unsigned ign, uint64_t off,
                      uint64_t len, const void *buf);
/*
 * Report corruption (stderr and BLOCK_IMAGE_CORRUPTED, once per open),
 * set the corrupt bit (writable v3 images) and refuse writes from now on.
 * offset/size: the host range concerned, or -1.
 */
void qcow2_signal_corruption(struct qcow2_state *s, int64_t offset,
                             int64_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- qcow2-release.c -------------------------------------------------- */

void qcow2_release_init(struct qcow2_release *r);
void qcow2_release_destroy(struct qcow2_release *r);
/* Shrink file to keep, in the background when it is worth a thread. */
void qcow2_release_start(struct qcow2_release *r, struct block_node *file,
                         uint64_t keep);
/* Wait for the release to end; stop: after the step in flight. */
void qcow2_release_finish(struct qcow2_release *r, bool stop);
/* The driver is about to use [.., end) of the file: keep it. */
void qcow2_release_claim(struct qcow2_release *r, uint64_t end);

/* ---- qcow2-cluster.c -------------------------------------------------- */

/* One L2 entry as read: first word and (extended L2) the bitmap. */
struct qcow2_l2e {
    uint64_t entry;
    uint64_t bitmap;
};

int qcow2_get_l2e(struct qcow2_state *s, uint64_t guest_cluster,
                  struct qcow2_l2e *out);
/* Store an L2 entry, allocating the L2 table when needed. */
int qcow2_set_l2e(struct qcow2_state *s, uint64_t guest_cluster,
                  const struct qcow2_l2e *e);
/* Make sure the L2 table of guest_cluster exists (allocate it). */
int qcow2_ensure_l2(struct qcow2_state *s, uint64_t guest_cluster);
/* Rule "pointer removal before refcount drop": write back L2s, flush. */
int qcow2_l2_stable(struct qcow2_state *s);
/*
 * The L2 cache's before_write hook (rules "refcount before pointer" and
 * "data before pointer"): write back refcount blocks, then flush the file,
 * so that what an L2 entry points to is on the disk before the entry.  A
 * clean refcount cache is no proof the data was flushed: a write into a
 * zero cluster that kept its host cluster allocates nothing.  Free when
 * nothing was written since the last flush.
 */
int qcow2_l2_before_write(struct qcow2_state *s);
int qcow2_write_l1_entry(struct qcow2_state *s, uint64_t index);
int qcow2_grow_l1(struct qcow2_state *s, uint64_t min_size);

/* ---- qcow2-bitmap.c -------------------------------------------------- */

/*
 * Open: load the image's bitmaps into the node (creating its persistent
 * dirty bitmaps; a reopen keeps the ones it has), settle the autoclear
 * bits and, read-write, mark every stored bitmap in use.  Main thread,
 * nothing in flight; takes s->lock.
 */
int qcow2_bitmaps_open(struct qcow2_state *s, struct err **errp);
/* Close (read-write): store the node's persistent bitmaps, clear in_use.
 * Caller holds s->lock. */
int qcow2_bitmaps_store(struct qcow2_state *s);
void qcow2_bitmaps_free(struct qcow2_state *s);
/* Driver callbacks (block_driver.bitmap_can_store, .bitmap_remove). */
bool qcow2_bitmap_can_store(struct block_node *node, const char *name,
                            uint64_t granularity, struct err **errp);
int qcow2_bitmap_remove(struct block_node *node, const char *name,
                        struct err **errp);
/* Add "bitmaps" to the format-specific data (as the directory says). */
void qcow2_bitmaps_query(struct qcow2_state *s, json_t *data);
/*
 * The file ranges the bitmap metadata occupies (the directory and every
 * bitmap table; not the data clusters the tables name), for the metadata
 * overlap check.  *out is malloc'd (free it); returns the count.  Caller
 * holds s->lock.
 */
size_t qcow2_bitmap_metadata_ranges(struct qcow2_state *s,
                                    struct qcow2_host_range **out);

/* ---- qcow2-create.c ------------------------------------------------- */

/* backing resolved against the directory of image_filename (if relative). */
char *qcow2_resolve_backing(const char *image_filename, const char *backing);

/* ---- helpers ---------------------------------------------------------- */

static inline uint64_t
qcow2_offset_to_cluster(const struct qcow2_state *s, uint64_t off)
{
    return off >> s->cluster_bits;
}

#endif
