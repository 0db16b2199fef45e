/* SPDX-License-Identifier: MIT */
/*
 * The backup job (QMP blockdev-backup), as QEMU's: a copy-before-write
 * filter is put above the source for the job's lifetime, so that every
 * write to the source first copies the old data to the target, while the
 * job copies the rest in the background (fleecing.md section 5).
 */
#ifndef LOCKSTEP_JOB_BACKUP_H
#define LOCKSTEP_JOB_BACKUP_H

#include <jansson.h>

#include "job/job.h"
#include "lockstep/err.h"

/*
 * Start a backup job from the arguments of QMP blockdev-backup (QEMU's
 * BlockdevBackup: job-id, device, target, sync, speed, bitmap, bitmap-mode,
 * compress, on-source-error, on-target-error, auto-finalize, auto-dismiss,
 * filter-node-name, x-perf {use-copy-range, max-workers, max-chunk,
 * min-cluster-size}, discard-source; on-cbw-error is accepted too).
 * Validation and error messages are QEMU's.  Main thread.  Returns the
 * running job (a borrowed pointer: the job list owns it) or NULL with
 * *errp set.
 */
struct job *backup_start(json_t *args, struct err **errp);

/*
 * The same without starting it: the filter is in place and the job is in
 * status created (transaction prepare).  job_start() starts it, and a
 * cancel (job_cancel_sync()) undoes it.  Main thread.
 */
struct job *backup_create(json_t *args, struct err **errp);

/* The job's copy-before-write node (tests), or NULL. */
struct block_node *backup_filter_node(struct job *job);

#endif
