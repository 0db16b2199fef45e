/* SPDX-License-Identifier: MIT */
/*
 * QMP command handlers of the job subsystem: query-jobs, query-block-jobs,
 * job-{pause,resume,cancel,complete,finalize,dismiss},
 * block-job-{set-speed,cancel,complete,pause,resume,dismiss,finalize} and
 * blockdev-backup.  Each takes the command's "arguments" object (may be
 * NULL when there are none), sets *ret to the return value (a new
 * reference; {} for commands that return nothing) and returns true, or
 * sets *errp and returns false.  Main thread.
 */
#ifndef LOCKSTEP_JOB_QMP_JOB_H
#define LOCKSTEP_JOB_QMP_JOB_H

#include <stdbool.h>

#include <jansson.h>

#include "lockstep/err.h"

bool qmp_query_jobs(json_t *args, json_t **ret, struct err **errp);
bool qmp_query_block_jobs(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_pause(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_resume(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_cancel(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_complete(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_finalize(json_t *args, json_t **ret, struct err **errp);
bool qmp_job_dismiss(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_set_speed(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_cancel(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_complete(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_pause(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_resume(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_dismiss(json_t *args, json_t **ret, struct err **errp);
bool qmp_block_job_finalize(json_t *args, json_t **ret, struct err **errp);
bool qmp_blockdev_backup(json_t *args, json_t **ret, struct err **errp);

#endif
