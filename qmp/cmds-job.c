/* SPDX-License-Identifier: MIT */
/*
 * QMP commands of the jobs: query-jobs, query-block-jobs,
 * job-{pause,resume,cancel,complete,finalize,dismiss},
 * block-job-{set-speed,cancel,complete,pause,resume,dismiss,finalize},
 * blockdev-backup (also a transaction action), block-commit and
 * x-replication-resync.  The handlers get their arguments decoded
 * (qmp-args.h), call the typed functions of job/ and build the replies.
 * Lookups and messages are QEMU's: the job-* commands find a job by "id"
 * ("Job not found"), the block-job-* commands by "device" (or "id" for
 * dismiss/finalize) with class DeviceNotActive ("Block job 'x' not
 * found").  Main thread.
 */
#include <stdlib.h>
#include <string.h>

#include "job/backup.h"
#include "job/commit.h"
#include "job/job.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

static struct job *
find_job(const char *id, struct err **errp)
{
    struct job *job = job_find(id);

    if (!job) {
        err_setf(errp, "Job not found");
    }
    return job;
}

static struct job *
find_block_job(const char *id, struct err **errp)
{
    struct job *job = job_find(id);

    if (!job) {
        err_setf_class(errp, ERR_CLASS_DEVICE_NOT_ACTIVE,
                       "Block job '%s' not found", id);
    }
    return job;
}

/* The answer of a command that returns nothing. */
static json_t *
done(bool ok)
{
    return ok ? json_object() : NULL;
}

/* ---- Queries ------------------------------------------------------------ */

/* JobInfo, in QEMU's member order. */
json_t *
qmp_job_info(struct job *job)
{
    struct job_info i;
    json_t *info;

    job_get_info(job, &i);
    info = json_pack("{s:s, s:s, s:s, s:I, s:I}", "id", i.id, "type", i.type,
                     "status", job_status_names[i.status],
                     "current-progress", (json_int_t)i.current_progress,
                     "total-progress", (json_int_t)i.total_progress);
    if (i.error) {
        json_object_set_new(info, "error", json_string(i.error));
    }
    free(i.error);
    return info;
}

/* BlockJobInfo, in QEMU's member order. */
json_t *
qmp_block_job_info(struct job *job)
{
    struct job_info i;
    json_t *info;

    job_get_info(job, &i);
    info = json_pack("{s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:s, s:b, s:s, "
                     "s:b, s:b}",
                     "type", i.type, "device", i.id,
                     "len", (json_int_t)i.total_progress,
                     "offset", (json_int_t)i.current_progress,
                     "busy", i.busy, "paused", i.paused,
                     "speed", (json_int_t)i.speed,
                     "io-status", job_iostatus_names[i.iostatus],
                     "ready", i.ready,
                     "status", job_status_names[i.status],
                     "auto-finalize", i.auto_finalize,
                     "auto-dismiss", i.auto_dismiss);
    if (i.error) {
        json_object_set_new(info, "error", json_string(i.error));
    }
    free(i.error);
    return info;
}

json_t *
qmp_query_jobs(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *list = json_array();

    for (struct job *job = job_next(NULL); job; job = job_next(job)) {
        json_array_append_new(list, qmp_job_info(job));
    }
    return list;
}

json_t *
qmp_query_block_jobs(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *list = json_array();

    for (struct job *job = job_next(NULL); job; job = job_next(job)) {
        json_array_append_new(list, qmp_block_job_info(job));
    }
    return list;
}

/* ---- job-* ---------------------------------------------------------------- */

static json_t *
job_pause_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    return job ? done(job_user_pause(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_pause, job_pause_cmd, struct qmp_args_job_id);

static json_t *
job_resume_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    return job ? done(job_user_resume(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_resume, job_resume_cmd, struct qmp_args_job_id);

static json_t *
job_cancel_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    /* job-cancel is always a forced cancel (QEMU). */
    return job ? done(job_user_cancel(job, true, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_cancel, job_cancel_cmd, struct qmp_args_job_id);

static json_t *
job_complete_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    return job ? done(job_complete(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_complete, job_complete_cmd,
                  struct qmp_args_job_id);

static json_t *
job_finalize_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    return job ? done(job_finalize(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_finalize, job_finalize_cmd,
                  struct qmp_args_job_id);

static json_t *
job_dismiss_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_job(a->id, errp);

    return job ? done(job_dismiss(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_job_dismiss, job_dismiss_cmd, struct qmp_args_job_id);

/* ---- block-job-* ---------------------------------------------------------- */

static json_t *
block_job_set_speed_cmd(const struct qmp_args_block_job_set_speed *a,
                        struct err **errp)
{
    struct job *job = find_block_job(a->device, errp);

    return job ? done(job_set_speed(job, a->speed, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_set_speed, block_job_set_speed_cmd,
                  struct qmp_args_block_job_set_speed);

static json_t *
block_job_cancel_cmd(const struct qmp_args_block_job_cancel *a,
                     struct err **errp)
{
    struct job *job = find_block_job(a->device, errp);
    bool force = a->has_force && a->force;

    if (!job) {
        return NULL;
    }
    if (job_user_paused(job) && !force) {
        err_setf(errp, "The block job for device '%s' is currently paused",
                 job->id);
        return NULL;
    }
    return done(job_user_cancel(job, force, errp));
}
QMP_TYPED_HANDLER(qmp_block_job_cancel, block_job_cancel_cmd,
                  struct qmp_args_block_job_cancel);

static json_t *
block_job_complete_cmd(const struct qmp_args_block_job_device *a,
                       struct err **errp)
{
    struct job *job = find_block_job(a->device, errp);

    return job ? done(job_complete(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_complete, block_job_complete_cmd,
                  struct qmp_args_block_job_device);

static json_t *
block_job_pause_cmd(const struct qmp_args_block_job_device *a,
                    struct err **errp)
{
    struct job *job = find_block_job(a->device, errp);

    return job ? done(job_user_pause(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_pause, block_job_pause_cmd,
                  struct qmp_args_block_job_device);

static json_t *
block_job_resume_cmd(const struct qmp_args_block_job_device *a,
                     struct err **errp)
{
    struct job *job = find_block_job(a->device, errp);

    return job ? done(job_user_resume(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_resume, block_job_resume_cmd,
                  struct qmp_args_block_job_device);

static json_t *
block_job_dismiss_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_block_job(a->id, errp);

    return job ? done(job_dismiss(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_dismiss, block_job_dismiss_cmd,
                  struct qmp_args_job_id);

static json_t *
block_job_finalize_cmd(const struct qmp_args_job_id *a, struct err **errp)
{
    struct job *job = find_block_job(a->id, errp);

    return job ? done(job_finalize(job, errp)) : NULL;
}
QMP_TYPED_HANDLER(qmp_block_job_finalize, block_job_finalize_cmd,
                  struct qmp_args_job_id);

/* ---- Starting jobs ------------------------------------------------------ */

static json_t *
blockdev_backup_cmd(const struct backup_options *a, struct err **errp)
{
    return done(backup_start(a, errp) != NULL);
}
QMP_TYPED_HANDLER(qmp_blockdev_backup, blockdev_backup_cmd,
                  struct backup_options);

static json_t *
block_commit_cmd(const struct qmp_args_block_commit *a, struct err **errp)
{
    struct commit_options o = {
        .job_id = a->job_id,
        .device = a->device,
        .top = a->top_node ? a->top_node : a->top,
        .base = a->base_node ? a->base_node : a->base,
        .speed = a->has_speed ? a->speed : 0,
        .on_error = a->has_on_error ? a->on_error : JOB_ON_ERROR_REPORT,
        .auto_finalize = !a->has_auto_finalize || a->auto_finalize,
        .auto_dismiss = !a->has_auto_dismiss || a->auto_dismiss,
    };

    if (a->top_node && a->top) {
        err_setf(errp, "'top-node' and 'top' are mutually exclusive");
        return NULL;
    }
    if (a->base_node && a->base) {
        err_setf(errp, "'base-node' and 'base' are mutually exclusive");
        return NULL;
    }
    return done(commit_start(&o, errp));
}
QMP_TYPED_HANDLER(qmp_block_commit, block_commit_cmd,
                  struct qmp_args_block_commit);

static json_t *
x_replication_resync_cmd(const struct qmp_args_x_replication_resync *a,
                         struct err **errp)
{
    struct resync_options o = {
        .job_id = a->job_id,
        .device = a->device,
        .target = a->target,
        .bitmap = a->bitmap,
        .speed = a->has_speed ? a->speed : 0,
        .on_error = a->has_on_error ? a->on_error : JOB_ON_ERROR_REPORT,
        .auto_finalize = !a->has_auto_finalize || a->auto_finalize,
        .auto_dismiss = !a->has_auto_dismiss || a->auto_dismiss,
    };

    return done(resync_start(&o, errp));
}
QMP_TYPED_HANDLER(qmp_x_replication_resync, x_replication_resync_cmd,
                  struct qmp_args_x_replication_resync);

/* ---- blockdev-backup as a transaction action --------------------------- */

/*
 * prepare creates the job with its filter in place (inside the
 * transaction's drained section, so the filter goes in atomically with the
 * other actions, e.g. bitmap ones: QEMU's "old atomic" fleecing scheme);
 * commit starts it; abort cancels it, which removes the filter again and
 * gives the bitmap back.
 */
static bool
txn_backup_prepare(const void *args, void **state, struct err **errp)
{
    const struct backup_options *a = args;
    struct job *job = backup_create(a, errp);

    if (!job) {
        return false;
    }
    job_ref(job);
    *state = job;
    return true;
}

static void
txn_backup_commit(void *state)
{
    job_start(state);
}

static void
txn_backup_abort(void *state)
{
    struct job *job = state;

    job_cancel_sync(job);
    /* A job of a failed transaction leaves nothing behind. */
    if (job_get_status(job) == JOB_STATUS_CONCLUDED) {
        job_dismiss(job, NULL);
    }
}

static void
txn_backup_clean(void *state)
{
    job_unref(state);
}

const struct qmp_txn_action qmp_txn_blockdev_backup = {
    .type = "blockdev-backup",
    .args = qmp_args_blockdev_backup,
    .prepare = txn_backup_prepare,
    .commit = txn_backup_commit,
    .abort = txn_backup_abort,
    .clean = txn_backup_clean,
};
