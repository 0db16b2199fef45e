/* SPDX-License-Identifier: MIT */
/*
 * The "replication" driver's control API (COLO-style block replication),
 * and the QMP command bodies that drive every replication node of the
 * process at once: xen-set-replication, xen-colo-do-checkpoint and
 * query-xen-replication-status.  docs/replication.md has the picture.
 *
 * Every function here runs on the main thread.  The per-node operations
 * return 0 or -errno with *errp set; the "_all" ones walk the replication
 * nodes newest first and stop at the first error (QEMU's order).
 */
#ifndef LOCKSTEP_REPLICATION_H
#define LOCKSTEP_REPLICATION_H

#include <stdbool.h>

#include <jansson.h>

#include "lockstep/block.h"
#include "lockstep/err.h"

enum replication_mode {
    REPLICATION_MODE_PRIMARY = 0,     /* QEMU's enum values (messages) */
    REPLICATION_MODE_SECONDARY = 1,
};

/*
 * One-way stages: NONE -> RUNNING -> (secondary failover) FAILOVER ->
 * DONE | FAILOVER_FAILED; RUNNING -> DONE for the other stops.
 * FAILOVER_FAILED -> FAILOVER again when the failover is retried.
 */
enum replication_stage {
    REPLICATION_STAGE_NONE,
    REPLICATION_STAGE_RUNNING,
    REPLICATION_STAGE_FAILOVER,
    REPLICATION_STAGE_FAILOVER_FAILED,
    REPLICATION_STAGE_DONE,
};

bool block_node_is_replication(struct block_node *node);
enum replication_stage replication_get_stage(struct block_node *node);

/* The four operations on one node (QEMU's ReplicationOps). */
int replication_start(struct block_node *node, enum replication_mode mode,
                      struct err **errp);
int replication_do_checkpoint(struct block_node *node, struct err **errp);
int replication_stop(struct block_node *node, bool failover,
                     struct err **errp);
/* 0 when the node is fine; -errno with the reason otherwise. */
int replication_get_error(struct block_node *node, struct err **errp);

/*
 * The secondary's copy-before-write filter while RUNNING (NULL otherwise):
 * the node the NBD export writes through.  For tests and query commands.
 */
struct block_node *replication_cbw_node(struct block_node *node);

/*
 * Resync (beyond QEMU, docs/replication.md "Resync").  A primary node
 * records the ranges whose write to the secondary failed.  When it is
 * removed from its quorum (x-blockdev-change; drained, main thread), the
 * quorum gets an enabled dirty bitmap named REPLICATION_RESYNC_BITMAP (made
 * if missing) and the failed ranges are added to it: from then on it holds
 * everything the lost secondary misses, for x-replication-resync.  Does
 * nothing for other nodes.
 */
#define REPLICATION_RESYNC_BITMAP "replication-resync"
#define REPLICATION_RESYNC_GRANULARITY 65536
int replication_primary_detach(struct block_node *node,
                               struct block_node *parent, struct err **errp);

/* ---- QMP command bodies ------------------------------------------------ */

/* xen-set-replication enable=true: start every node in that mode. */
bool replication_start_all(bool primary, struct err **errp);
/* xen-set-replication enable=false (QEMU's handler drops the error when
 * failover is true; that choice is the caller's). */
bool replication_stop_all(bool failover, struct err **errp);
/* xen-colo-do-checkpoint. */
bool replication_checkpoint_all(struct err **errp);
/*
 * The whole xen-set-replication command, as QEMU handles it: "failover"
 * only when stopping ("Parameter 'failover' is only for stopping
 * replication"); errors of a stop with failover=true are dropped (the
 * node's status reports them).
 */
bool qmp_xen_set_replication(bool enable, bool primary, bool has_failover,
                             bool failover, struct err **errp);
/* query-xen-replication-status: {"error": bool, "desc"?: str}. */
json_t *replication_status(void);

#endif
