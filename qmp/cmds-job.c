/* SPDX-License-Identifier: MIT */
/*
 * QMP handlers of the job commands, with QEMU's lookups and messages: the
 * job-* commands find a job by "id" ("Job not found"), the block-job-*
 * commands by "device" (or "id" for dismiss/finalize) with class
 * DeviceNotActive ("Block job 'x' not found").  Arguments are checked here
 * as well, so the handlers are safe to call directly (tests, or a monitor
 * that validates less).
 */
#include <string.h>

#include "job/backup.h"
#include "job/job.h"
#include "job/qmp-job.h"
#include "qmp/qmp-internal.h"
#include "util.h"

static bool
get_str_arg(json_t *args, const char *name, const char **out,
            struct err **errp)
{
    json_t *v = args ? json_object_get(args, name) : NULL;

    if (!v) {
        err_setf(errp, "Parameter '%s' is missing", name);
        return false;
    }
    if (!json_is_string(v)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: string",
                 name);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static struct job *
find_job(json_t *args, struct err **errp)
{
    const char *id;
    struct job *job;

    if (!get_str_arg(args, "id", &id, errp)) {
        return NULL;
    }
    job = job_find(id);
    if (!job) {
        err_setf(errp, "Job not found");
    }
    return job;
}

static struct job *
find_block_job(json_t *args, const char *key, struct err **errp)
{
    const char *id;
    struct job *job;

    if (!get_str_arg(args, key, &id, errp)) {
        return NULL;
    }
    job = job_find(id);
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

json_t *
qmp_query_jobs(json_t *args, struct err **errp)
{
    (void)args;
    (void)errp;
    return job_query_jobs();
}

json_t *
qmp_query_block_jobs(json_t *args, struct err **errp)
{
    (void)args;
    (void)errp;
    return job_query_block_jobs();
}

json_t *
qmp_job_pause(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    return job ? done(job_user_pause(job, errp)) : NULL;
}

json_t *
qmp_job_resume(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    return job ? done(job_user_resume(job, errp)) : NULL;
}

json_t *
qmp_job_cancel(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    /* job-cancel is always a forced cancel (QEMU). */
    return job ? done(job_user_cancel(job, true, errp)) : NULL;
}

json_t *
qmp_job_complete(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    return job ? done(job_complete(job, errp)) : NULL;
}

json_t *
qmp_job_finalize(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    return job ? done(job_finalize(job, errp)) : NULL;
}

json_t *
qmp_job_dismiss(json_t *args, struct err **errp)
{
    struct job *job = find_job(args, errp);

    return job ? done(job_dismiss(job, errp)) : NULL;
}

json_t *
qmp_block_job_set_speed(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "device", errp);
    json_t *speed;

    if (!job) {
        return NULL;
    }
    speed = json_object_get(args, "speed");
    if (!speed) {
        err_setf(errp, "Parameter 'speed' is missing");
        return NULL;
    }
    if (!json_is_integer(speed)) {
        err_setf(errp, "Invalid parameter type for 'speed', expected: "
                 "integer");
        return NULL;
    }
    return done(job_set_speed(job, json_integer_value(speed), errp));
}

json_t *
qmp_block_job_cancel(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "device", errp);
    json_t *force;
    bool f = false;

    if (!job) {
        return NULL;
    }
    force = json_object_get(args, "force");
    if (force) {
        if (!json_is_boolean(force)) {
            err_setf(errp, "Invalid parameter type for 'force', expected: "
                     "boolean");
            return NULL;
        }
        f = json_is_true(force);
    }
    if (job_user_paused(job) && !f) {
        err_setf(errp, "The block job for device '%s' is currently paused",
                 job->id);
        return NULL;
    }
    return done(job_user_cancel(job, f, errp));
}

json_t *
qmp_block_job_complete(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "device", errp);

    return job ? done(job_complete(job, errp)) : NULL;
}

json_t *
qmp_block_job_pause(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "device", errp);

    return job ? done(job_user_pause(job, errp)) : NULL;
}

json_t *
qmp_block_job_resume(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "device", errp);

    return job ? done(job_user_resume(job, errp)) : NULL;
}

json_t *
qmp_block_job_dismiss(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "id", errp);

    return job ? done(job_dismiss(job, errp)) : NULL;
}

json_t *
qmp_block_job_finalize(json_t *args, struct err **errp)
{
    struct job *job = find_block_job(args, "id", errp);

    return job ? done(job_finalize(job, errp)) : NULL;
}

json_t *
qmp_blockdev_backup(json_t *args, struct err **errp)
{
    return done(backup_start(args, errp) != NULL);
}

/* ---- blockdev-backup as a transaction action --------------------------- */

/*
 * prepare creates the job with its filter in place (inside the
 * transaction's drained section, so the filter goes in atomically with the
 * other actions, e.g. bitmap ones: QEMU's "old atomic" fleecing scheme);
 * commit starts it; abort cancels it, which removes the filter again and
 * gives the bitmap back.
 */
static bool
txn_backup_prepare(json_t *data, void **state, struct err **errp)
{
    struct job *job = backup_create(data, errp);

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
