/* SPDX-License-Identifier: MIT */
/*
 * Internal interface of the copy-before-write filter: the snapshot API that
 * the snapshot-access driver uses to read the frozen point-in-time view,
 * and what the backup job and the replication driver need to make a cbw
 * filter (typed options: no JSON).
 *
 * The frozen view of a cbw node is the content its "file" child had when
 * the filter was put in the guest's path, limited to the clusters the
 * snapshot may read (all, or the "bitmap" option's clusters, minus the ones
 * discarded through the snapshot).  A cluster's old data is in the target
 * once a guest write copied it ("done"), and still in the source otherwise.
 *
 * Every function below is called from a request (any thread inside the
 * graph) unless noted, and returns -errno on failure: -EACCES when the
 * range is not readable (outside the access bitmap, discarded, or the
 * snapshot is broken by on-cbw-error=break-snapshot), -ENOTSUP when node is
 * not a copy-before-write node.
 */
#ifndef LOCKSTEP_COPY_BEFORE_WRITE_H
#define LOCKSTEP_COPY_BEFORE_WRITE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "block/copy/block-copy.h"
#include "lockstep/driver.h"

/*
 * A snapshot read in progress on the source: while it is registered, guest
 * writes to its range wait (after their copy) until it is unlocked.
 */
struct cbw_frozen_req {
    uint64_t offset;
    uint64_t bytes;
    TAILQ_ENTRY(cbw_frozen_req) link;
};

/* What cbw_snapshot_lock() hands out. */
struct cbw_snapshot_lock {
    struct block_node *node;    /* read this node (source or target) */
    uint64_t offset;            /* at this offset (same as requested) */
    uint64_t bytes;             /* this many bytes (<= requested, > 0) */
    bool frozen;                /* registered in the frozen-read list */
    struct cbw_frozen_req req;
};

/* Is node a copy-before-write node? */
bool cbw_is_cbw(struct block_node *node);

/*
 * Lock the start of [offset, offset + bytes) for a snapshot read.  The
 * whole range must be readable (else -EACCES and nothing is locked).  On
 * success lk says which node holds the frozen data of the first lk->bytes
 * bytes; if that is the source, guest writes to the range are held off until
 * cbw_snapshot_unlock().  The caller reads lk->node and unlocks, then goes
 * on with the rest of the range.
 */
int cbw_snapshot_lock(struct block_node *node, uint64_t offset,
                      uint64_t bytes, struct cbw_snapshot_lock *lk);
void cbw_snapshot_unlock(struct block_node *node,
                         struct cbw_snapshot_lock *lk);

/* Read the frozen view (the whole range, run by run).  0 or -errno (the
 * first failure of a child read, or -EACCES). */
int cbw_snapshot_pread(struct block_node *node, uint64_t offset,
                       uint64_t bytes, void *buf);

/*
 * Block status of the frozen view: BLOCK_STATUS_DATA and/or ZERO for the
 * first *pnum bytes, or -EACCES.
 */
int cbw_snapshot_block_status(struct block_node *node, uint64_t offset,
                              uint64_t bytes, uint64_t *pnum);

/*
 * The reader is done with [offset, offset + bytes), rounded inward to whole
 * clusters (nothing left: a no-op): reads there fail with -EACCES from now
 * on, guest writes there no longer copy, and the range is discarded on the
 * target (freeing its space when the target allows discard).  Returns the
 * target discard's result.
 */
int cbw_snapshot_pdiscard(struct block_node *node, uint64_t offset,
                          uint64_t bytes);

/* The node's block-copy state (shared with the backup job).  Main thread
 * or any request; valid while the node is open. */
struct block_copy_state *cbw_block_copy_state(struct block_node *node);

/* The first error that broke the snapshot (break-snapshot), or 0. */
int cbw_snapshot_error(struct block_node *node);

/* The filter's on-cbw-error policies; cbw_on_error_names[policy]. */
enum cbw_on_error {
    CBW_ON_ERROR_BREAK_GUEST_WRITE,
    CBW_ON_ERROR_BREAK_SNAPSHOT,
};
extern const char *const cbw_on_error_names[];

/* How cbw_new() and cbw_append() make the filter. */
struct cbw_options {
    const char *filter_node_name;   /* NULL: automatic */
    bool has_on_cbw_error;          /* false: break-guest-write */
    enum cbw_on_error on_cbw_error;
    /* After each copy the source range is discarded; the filter then
     * holds WRITE on its source. */
    bool discard_source;
    /* A read-only filter, for a read-only source: it asks for no write
     * permission on it (nothing can write through it). */
    bool read_only;
    uint64_t min_cluster_size;      /* 0: the default */
};

/*
 * Create a copy-before-write node with file=source and target=target, not
 * inserted anywhere yet (replication moves its parents itself).  Returns
 * a new reference, or NULL with *errp set.  Main thread.
 */
struct block_node *cbw_new(struct block_node *source,
                           struct block_node *target,
                           const struct cbw_options *opts,
                           struct err **errp);

/*
 * For the backup job (main thread): cbw_new(), then put the filter in
 * place of source under all of source's parents.  Returns a new reference
 * (the caller drops it with cbw_drop()), or NULL with *errp set.
 */
struct block_node *cbw_append(struct block_node *source,
                              struct block_node *target,
                              const struct cbw_options *opts,
                              struct err **errp);

/* Undo cbw_append(): put the source back under the filter's parents and
 * drop the reference (main thread). */
void cbw_drop(struct block_node *cbw);

#endif
