/* SPDX-License-Identifier: MIT */
/*
 * The commit job (QMP block-commit: intermediate and active commit;
 * lockstep-img commit), the replication resync job (QMP
 * x-replication-resync) and the replication failover, all built on one
 * "copy the dirty ranges of a bitmap, converge, finish under drain"
 * engine in job/commit.c.  Their QMP handlers are in qmp/cmds-job.c and
 * qmp/cmds-repl.c.
 */
#ifndef LOCKSTEP_JOB_COMMIT_H
#define LOCKSTEP_JOB_COMMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "job/job.h"
#include "lockstep/block.h"
#include "lockstep/err.h"

/* block-commit (the QMP edge has merged top-node/top and base-node/base). */
struct commit_options {
    const char *job_id;         /* NULL: "" (refused: nodes have no device
                                 * name for QEMU's default) */
    const char *device;
    const char *top;            /* node-name or file name; NULL: the active
                                 * layer (an active commit) */
    const char *base;           /* NULL: the bottom of the chain */
    int64_t speed;              /* bytes per second, 0 = unlimited */
    enum job_on_error on_error;
    bool auto_finalize;
    bool auto_dismiss;
};

/* x-replication-resync. */
struct resync_options {
    const char *job_id;         /* NULL: "resync" */
    const char *device;
    const char *target;
    const char *bitmap;         /* NULL: "replication-resync" */
    int64_t speed;
    enum job_on_error on_error;
    bool auto_finalize;
    bool auto_dismiss;
};

/* Create and start the job, with QEMU's checks and messages.  Main
 * thread. */
bool commit_start(const struct commit_options *opts, struct err **errp);
bool resync_start(const struct resync_options *opts, struct err **errp);

/*
 * The failover of a secondary replication node (RUNNING, or
 * FAILOVER_FAILED to retry) as a commit job with id "failover-NODE":
 * returns once the job runs; the node is in stage FAILOVER until the job
 * ends (DONE, or FAILOVER_FAILED when it fails or is cancelled).  Main
 * thread.
 */
bool failover_start(struct block_node *node, struct err **errp);

#endif
