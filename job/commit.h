/* SPDX-License-Identifier: MIT */
/*
 * The commit job (QMP block-commit: intermediate and active commit) and
 * the replication resync job (QMP x-replication-resync), both built on one
 * "copy the dirty ranges of a bitmap, converge, finish under drain"
 * engine in job/commit.c.  Handlers with the monitor's handler type; main
 * thread.
 */
#ifndef LOCKSTEP_JOB_COMMIT_H
#define LOCKSTEP_JOB_COMMIT_H

#include <jansson.h>

#include "lockstep/err.h"

json_t *qmp_block_commit(json_t *args, struct err **errp);
json_t *qmp_x_replication_resync(json_t *args, struct err **errp);

#endif
