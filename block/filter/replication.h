/* SPDX-License-Identifier: MIT */
/*
 * The "replication" driver's control API (COLO-style block replication),
 * and the bodies of the commands that start and checkpoint every
 * replication node of the process at once.  The failover copy is a commit
 * job (job/commit.h, failover_start()); the commands that stop
 * replication, which may start it, are in qmp/cmds-repl.c.
 * docs/replication.md has the picture.
 *
 * Every function here runs on the main thread.  The per-node operations
 * return 0 or -errno with *errp set; the "_all" ones walk the replication
 * nodes newest first and stop at the first error (QEMU's order).
 */
#ifndef LOCKSTEP_REPLICATION_H
#define LOCKSTEP_REPLICATION_H

#include <stdbool.h>

#include "lockstep/driver.h"
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
enum replication_mode replication_get_mode(struct block_node *node);
/* The replication nodes, newest first: the first after prev (NULL: the
 * first), NULL after the last. */
struct block_node *replication_next(struct block_node *prev);

/* The operations on one node (QEMU's ReplicationOps; stop with failover
 * is the failover job's, below). */
int replication_start(struct block_node *node, enum replication_mode mode,
                      struct err **errp);
int replication_do_checkpoint(struct block_node *node, struct err **errp);
/* Stop without failover: a primary is done; a secondary takes a last
 * checkpoint and uses its secondary disk directly.  Nothing to do in
 * stages FAILOVER and DONE; refused in FAILOVER_FAILED (only a failover
 * can finish that). */
int replication_stop(struct block_node *node, struct err **errp);

/*
 * The failover of a secondary, in the three steps the failover job
 * (job/commit.c) takes.  begin (RUNNING or FAILOVER_FAILED; drains
 * itself): the copy-before-write filter goes, stage FAILOVER, and *f gets
 * the chain (borrowed; the job takes references): copy what active or
 * hidden define from active's view into secondary.  finish (drained,
 * after the last copy): file points to the secondary disk, stage DONE.
 * failed (the copy failed or the job was cancelled): stage
 * FAILOVER_FAILED with error; I/O keeps using the active chain and a
 * later failover starts again from begin.
 */
struct replication_failover {
    struct block_node *active;
    struct block_node *hidden;
    struct block_node *secondary;
};
int replication_failover_begin(struct block_node *node,
                               struct replication_failover *f,
                               struct err **errp);
int replication_failover_finish(struct block_node *node, struct err **errp);
void replication_failover_failed(struct block_node *node, int error);
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

/* ---- Every node at once ------------------------------------------------ */

/* xen-set-replication enable=true: start every node in that mode. */
bool replication_start_all(bool primary, struct err **errp);
/* xen-colo-do-checkpoint. */
bool replication_checkpoint_all(struct err **errp);

#endif
