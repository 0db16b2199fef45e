/* SPDX-License-Identifier: MIT */
/*
 * QMP command handlers of the job subsystem: query-jobs, query-block-jobs,
 * job-{pause,resume,cancel,complete,finalize,dismiss},
 * block-job-{set-speed,cancel,complete,pause,resume,dismiss,finalize} and
 * blockdev-backup, with the monitor's handler type (qmp_handler_fn): each
 * takes the command's "arguments" object (may be NULL when there are none)
 * and returns the "return" value (a new reference; {} for commands that
 * return nothing), or NULL with *errp set.  Main thread.
 */
#ifndef LOCKSTEP_JOB_QMP_JOB_H
#define LOCKSTEP_JOB_QMP_JOB_H

#include <stdbool.h>

#include <jansson.h>

#include "lockstep/err.h"
#include "qmp/qmp-internal.h"

json_t *qmp_query_jobs(json_t *args, struct err **errp);
json_t *qmp_query_block_jobs(json_t *args, struct err **errp);
json_t *qmp_job_pause(json_t *args, struct err **errp);
json_t *qmp_job_resume(json_t *args, struct err **errp);
json_t *qmp_job_cancel(json_t *args, struct err **errp);
json_t *qmp_job_complete(json_t *args, struct err **errp);
json_t *qmp_job_finalize(json_t *args, struct err **errp);
json_t *qmp_job_dismiss(json_t *args, struct err **errp);
json_t *qmp_block_job_set_speed(json_t *args, struct err **errp);
json_t *qmp_block_job_cancel(json_t *args, struct err **errp);
json_t *qmp_block_job_complete(json_t *args, struct err **errp);
json_t *qmp_block_job_pause(json_t *args, struct err **errp);
json_t *qmp_block_job_resume(json_t *args, struct err **errp);
json_t *qmp_block_job_dismiss(json_t *args, struct err **errp);
json_t *qmp_block_job_finalize(json_t *args, struct err **errp);
json_t *qmp_blockdev_backup(json_t *args, struct err **errp);

/* The arguments of blockdev-backup (qmp/schema.c), shared with the
 * transaction action; and the action (a job created at prepare, started
 * at commit, cancelled at abort). */
extern const struct qmp_arg qmp_args_blockdev_backup[];
extern const struct qmp_txn_action qmp_txn_blockdev_backup;

#endif
