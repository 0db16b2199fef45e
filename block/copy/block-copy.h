/* SPDX-License-Identifier: MIT */
/*
 * block-copy: copy the dirty clusters of a source node to a target node,
 * once each, from any number of threads.  It is the engine shared by the
 * copy-before-write filter (a guest write first copies the old data of the
 * clusters it touches) and the backup job (which copies everything that is
 * left in the background).  Both use one state, so one copy bitmap and one
 * list of copies in flight: a cluster is never copied twice, and a caller
 * that needs a cluster another caller is copying waits for that copy.
 *
 * Terms.  The state works in clusters of block_copy_cluster_size() bytes.
 * The copy bitmap has one bit per cluster: "its data still has to be
 * copied".  A copy clears the bits of the clusters it takes before it
 * starts (so nobody else takes them), and sets them again if it fails.
 *
 * Threads and locks.  Every function may be called from any thread unless
 * said otherwise; the state has its own mutex (a leaf with respect to the
 * node locks: it is never held across I/O).  block_copy() does blocking
 * I/O on the source and the target with block_pread()/block_pwrite(), so it
 * must be called by a thread that is inside the graph (a request, or a job
 * thread between block_graph_enter()/block_graph_leave()).
 *
 * Errors: the data-path functions return -errno; creation takes errp.
 */
#ifndef LOCKSTEP_BLOCK_COPY_H
#define LOCKSTEP_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>

#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "lockstep/err.h"

struct block_copy_state;

/* Largest chunk one copy task moves through a bounce buffer. */
#define BLOCK_COPY_MAX_CHUNK (1024 * 1024)
/* Cap on the bounce buffers of all copies in flight, per state. */
#define BLOCK_COPY_MAX_MEM (128 * 1024 * 1024)
/* Default (and smallest) cluster size. */
#define BLOCK_COPY_DEFAULT_CLUSTER (64 * 1024)

/*
 * Create a copy state from source to target (main thread).
 *
 * The cluster size is max(64 KiB, the target's cluster size (a qcow2
 * target's clusters; filters are looked through), min_cluster_size).
 * min_cluster_size is 0 or a power of two (else an error "min-cluster-size
 * needs to be a power of 2").
 *
 * The copy bitmap starts as all ones when bitmap is NULL, else as the
 * content of bitmap at this moment (a cluster is dirty when any part of it
 * is dirty in bitmap; later changes of bitmap are not seen).  bitmap must
 * cover the source's length.
 *
 * discard_source: after a successful copy, discard the range on the source
 * (backup's discard-source; the caller must hold WRITE on the source).
 *
 * Returns NULL with *errp set on failure.  The state holds no reference on
 * the nodes: the caller keeps them alive until block_copy_state_free().
 */
struct block_copy_state *
block_copy_state_new(struct block_node *source, struct block_node *target,
                     struct block_dirty_bitmap *bitmap,
                     uint64_t min_cluster_size, bool discard_source,
                     struct err **errp);

/*
 * Free the state (main thread).  Waits for copies that are still running
 * in the background after a block_copy() timed out.  No block_copy() call
 * may be running or start.
 */
void block_copy_state_free(struct block_copy_state *s);

/* The cluster size (fixed at creation).  Any thread, no lock. */
uint64_t block_copy_cluster_size(struct block_copy_state *s);

/* The length of the source at creation: the range the bitmap covers. */
uint64_t block_copy_length(struct block_copy_state *s);

/*
 * sync=top: when set, block_copy() does not copy clusters that are not
 * allocated in the source's own layer (they come from its backing chain);
 * their bits are just cleared.  Any thread.
 */
void block_copy_set_skip_unallocated(struct block_copy_state *s, bool skip);

/*
 * sync=top, at job start: look at the clusters from offset (cluster
 * aligned) on.  Returns 1 if the first cluster is allocated in the source's
 * top layer, 0 if not (then the bits of the unallocated clusters are
 * cleared), or -errno.  *count: the bytes (whole clusters, or up to the end
 * of the source) the answer covers, > 0 on success.  Any thread inside the
 * graph (it asks the source for its status).
 */
int64_t block_copy_reset_unallocated(struct block_copy_state *s,
                                     uint64_t offset, uint64_t *count);

/*
 * Mark clusters as not needing a copy: every cluster that intersects
 * [offset, offset + bytes) is cleared.  Used by the snapshot discard
 * (which passes whole clusters).  Copies in flight are not affected.
 */
void block_copy_reset(struct block_copy_state *s, uint64_t offset,
                      uint64_t bytes);

/* Mark every cluster that intersects the range as needing a copy. */
void block_copy_set_dirty(struct block_copy_state *s, uint64_t offset,
                          uint64_t bytes);

/* Bytes still marked in the copy bitmap (whole clusters, the last one
 * counted up to the source's length). */
uint64_t block_copy_dirty_bytes(struct block_copy_state *s);

/*
 * The first dirty area in [offset, offset + bytes): true with
 * *area_off and *area_bytes (cluster aligned, clamped to the range), false
 * when everything there is clean.  The answer may be stale as soon as it is
 * returned (other threads copy too); block_copy() re-checks.
 */
bool block_copy_next_dirty_area(struct block_copy_state *s, uint64_t offset,
                                uint64_t bytes, uint64_t *area_off,
                                uint64_t *area_bytes);

/* OR the copy bitmap into bm (backup bitmap-mode=always on failure). */
void block_copy_merge_into(struct block_copy_state *s,
                           struct block_dirty_bitmap *bm);

/*
 * Copy every still-dirty cluster that intersects [offset, offset + bytes)
 * (the range is widened to clusters; the last one is clipped to the
 * source's length).  Zero areas (block status ZERO on the source) become
 * write-zeroes on the target.  Clusters that another caller is copying at
 * the moment are waited for rather than copied again; if that copy fails,
 * its clusters are dirty again and this call copies them itself, so an
 * error returned here comes from this call's own I/O.
 *
 * ratelimit: true for background copies (charged to the speed limit, may
 * sleep; they also stop with -ECANCELED once block_copy_set_cancelled() is
 * set); false for copy-before-write (never sleeps for the limit, never
 * cancelled).
 *
 * timeout_ns: 0 = none.  Otherwise the copy runs on a helper thread and
 * the call returns -ETIMEDOUT when it takes longer; the copy goes on in
 * the background (its clusters are done or dirty again afterwards) and
 * block_copy_state_free() waits for it.
 *
 * Returns 0 when every cluster of the range is copied (or was not dirty),
 * else -errno of the first failure, with *error_is_read (may be NULL) true
 * when the source read failed, false when the target write did.
 *
 * Any thread inside the graph; takes the state lock only between I/Os.
 */
int block_copy(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
               bool ratelimit, int64_t timeout_ns, bool *error_is_read);

/* Speed limit for ratelimited calls in bytes per second; 0 = none. */
void block_copy_set_speed(struct block_copy_state *s, uint64_t bytes_per_sec);

/*
 * Wake every ratelimited call sleeping for the speed limit so that it
 * re-reads the speed and the cancelled flag.
 */
void block_copy_kick(struct block_copy_state *s);

/*
 * Cancel (true) or allow again (false) ratelimited calls: while set, they
 * return -ECANCELED before their next chunk.  Copies already running finish.
 * Setting it kicks sleepers.  Job cancel and pause use this.
 */
void block_copy_set_cancelled(struct block_copy_state *s, bool cancelled);

/*
 * Progress: *done = bytes copied (or zeroed) successfully so far by this
 * state; *remaining = bytes still dirty plus bytes in flight.
 */
void block_copy_progress(struct block_copy_state *s, uint64_t *done,
                         uint64_t *remaining);

#endif
