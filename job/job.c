/* SPDX-License-Identifier: MIT */
/*
 * The job core: QEMU's job state machine and verb table, pause counting,
 * cancellation, speed and progress, the job thread, completion and
 * finalisation on the main thread, the JOB_STATUS_CHANGE and BLOCK_JOB_*
 * events, and the query-jobs / query-block-jobs answers.
 *
 * Design notes.
 *
 * The two tables below are the whole state machine (the same facts as
 * QEMU's job.c tables).  Every status change goes through
 * transition_locked(), which asserts that the table allows it and sends
 * JOB_STATUS_CHANGE for a real change; every user verb goes through
 * apply_verb_locked(), which refuses with QEMU's message.
 *
 * Life of a job, and who moves it:
 *   job_create        (main)  undefined -> created
 *   job_start         (main)  created -> running, the thread starts
 *   job_pause_point   (job)   running -> paused -> running
 *                             (ready -> standby -> ready)
 *   run returns       (job)   result stored, completion queued for main
 *   job_completed     (main)  success: running -> waiting -> pending,
 *                             then finalize now (auto-finalize) or on
 *                             job-finalize; failure or cancel: abort path
 *   finalize          (main)  prepare, commit, clean, BLOCK_JOB_COMPLETED,
 *                             pending -> concluded
 *   abort path        (main)  -> aborting, abort, clean, BLOCK_JOB_CANCELLED
 *                             or BLOCK_JOB_COMPLETED{error}, -> concluded
 *   dismiss           (main)  concluded -> null, off the list
 *
 * References: the job list holds one (dropped at dismiss), the thread holds
 * one from job_start until the main thread has joined it.
 *
 * Crossing to the main thread: when run returns, the job thread posts
 * job_thread_done_cb with loop_call() (runtime/loop.h) while it still
 * holds the job lock, so a main-thread wait for the job (job_wait_status)
 * that sees "deferred" under the lock knows the call is queued and runs
 * it at once with loop_call_run_now(); it runs nothing else from the
 * loop's queue, since a command waiting for a job must not run other
 * clients' commands nested inside it.
 *
 * Events: a status change and its JOB_STATUS_CHANGE event must go out in
 * the order of the changes, which are made under the job lock by two
 * threads (main and job).  Events are made under the lock and pushed on
 * g_job_events; job_unlock() drops the lock, then flushes the queue (see
 * runtime/event.h): the events go to the sink in the order they were
 * pushed, with no lock held, and a caller's events are out when its
 * job_unlock() returns.  A thread that is about to sleep under the lock
 * (a pause point) flushes first.
 *
 * Invariants: driver callbacks and the event sink never run with the job
 * lock held.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job/job.h"
#include "runtime/event.h"
#include "runtime/loop.h"
#include "util.h"

/* Protects the job list and the fields of struct job marked "job lock". */
static struct lock g_job_lock = LOCK_INITIALIZER(JOB);
/* Job lock. */
static TAILQ_HEAD(, job) g_jobs = TAILQ_HEAD_INITIALIZER(g_jobs);

/* Events made under the job lock, on their way out (see the notes). */
static struct event_queue g_job_events = EVENT_QUEUE_INITIALIZER(g_job_events);

/* ---- Tables ----------------------------------------------------------- */

const char *const job_status_names[JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = "undefined",
    [JOB_STATUS_CREATED] = "created",
    [JOB_STATUS_RUNNING] = "running",
    [JOB_STATUS_PAUSED] = "paused",
    [JOB_STATUS_READY] = "ready",
    [JOB_STATUS_STANDBY] = "standby",
    [JOB_STATUS_WAITING] = "waiting",
    [JOB_STATUS_PENDING] = "pending",
    [JOB_STATUS_ABORTING] = "aborting",
    [JOB_STATUS_CONCLUDED] = "concluded",
    [JOB_STATUS_NULL] = "null",
};

const char *const job_verb_names[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = "cancel",
    [JOB_VERB_PAUSE] = "pause",
    [JOB_VERB_RESUME] = "resume",
    [JOB_VERB_SET_SPEED] = "set-speed",
    [JOB_VERB_COMPLETE] = "complete",
    [JOB_VERB_FINALIZE] = "finalize",
    [JOB_VERB_DISMISS] = "dismiss",
    [JOB_VERB_CHANGE] = "change",
};

const char *const job_on_error_names[JOB_ON_ERROR__MAX + 1] = {
    [JOB_ON_ERROR_REPORT] = "report",
    [JOB_ON_ERROR_IGNORE] = "ignore",
    [JOB_ON_ERROR_ENOSPC] = "enospc",
    [JOB_ON_ERROR_STOP] = "stop",
    [JOB_ON_ERROR_AUTO] = "auto",
    NULL,
};

const char *const job_iostatus_names[] = {
    [JOB_IOSTATUS_OK] = "ok",
    [JOB_IOSTATUS_FAILED] = "failed",
    [JOB_IOSTATUS_NOSPACE] = "nospace",
};

#define S(x) (1u << JOB_STATUS_##x)

/* transition_table[from]: the set of statuses a job may move to. */
static const unsigned transition_table[JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = S(CREATED),
    [JOB_STATUS_CREATED] = S(RUNNING) | S(ABORTING) | S(NULL),
    [JOB_STATUS_RUNNING] = S(PAUSED) | S(READY) | S(WAITING) | S(ABORTING),
    [JOB_STATUS_PAUSED] = S(RUNNING),
    [JOB_STATUS_READY] = S(STANDBY) | S(WAITING) | S(ABORTING),
    [JOB_STATUS_STANDBY] = S(READY),
    [JOB_STATUS_WAITING] = S(PENDING) | S(ABORTING),
    [JOB_STATUS_PENDING] = S(ABORTING) | S(CONCLUDED),
    [JOB_STATUS_ABORTING] = S(ABORTING) | S(CONCLUDED),
    [JOB_STATUS_CONCLUDED] = S(NULL),
    [JOB_STATUS_NULL] = 0,
};

/* verb_table[verb]: the statuses in which the verb is accepted. */
static const unsigned verb_table[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY) | S(WAITING) | S(PENDING),
    [JOB_VERB_PAUSE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                       S(STANDBY),
    [JOB_VERB_RESUME] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY),
    [JOB_VERB_SET_SPEED] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                           S(STANDBY),
    [JOB_VERB_COMPLETE] = S(READY) | S(STANDBY),
    [JOB_VERB_FINALIZE] = S(PENDING),
    [JOB_VERB_DISMISS] = S(CONCLUDED),
    [JOB_VERB_CHANGE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY),
};

#undef S

bool
job_transition_allowed(enum job_status from, enum job_status to)
{
    if ((unsigned)from >= JOB_STATUS__MAX || (unsigned)to >= JOB_STATUS__MAX) {
        return false;
    }
    return transition_table[from] & (1u << to);
}

bool
job_verb_allowed(enum job_verb verb, enum job_status status)
{
    if ((unsigned)verb >= JOB_VERB__MAX ||
        (unsigned)status >= JOB_STATUS__MAX) {
        return false;
    }
    return verb_table[verb] & (1u << status);
}

int
job_on_error_parse(const char *s)
{
    for (int i = 0; i < JOB_ON_ERROR__MAX; i++) {
        if (!strcmp(s, job_on_error_names[i])) {
            return i;
        }
    }
    return -1;
}

/* ---- The job lock ----------------------------------------------------- */

static void
job_lock(void)
{
    mutex_lock(&g_job_lock);
}

/* Unlock, then send the events made under the lock (see the notes). */
static void
job_unlock(void)
{
    mutex_unlock(&g_job_lock);
    event_queue_flush(&g_job_events);
}

/* Job lock held: queue an event for job_unlock(). */
static void
event_locked(struct event *ev)
{
    event_queue_push(&g_job_events, ev);
}

/* Job lock held, about to sleep on it: send what is queued first. */
static void
flush_events_locked(void)
{
    job_unlock();
    job_lock();
}

/* ---- Helpers (job lock held) ------------------------------------------ */

static void
transition_locked(struct job *job, enum job_status to)
{
    enum job_status from = job->status;

    /* A move the table does not allow is a bug in the job code. */
    assert(job_transition_allowed(from, to));
    job->status = to;
    if (from != to) {
        struct event *ev = event_new("JOB_STATUS_CHANGE");

        event_add_str(ev, "id", job->id);
        event_add_str(ev, "status", job_status_names[to]);
        event_locked(ev);
        /* job_wait_status() may wait for this status. */
        cond_broadcast(&job->cond);
    }
}

/* The job thread got going: job_start() may return. */
static void
settle_locked(struct job *job)
{
    if (!job->settled) {
        job->settled = true;
        cond_broadcast(&job->cond);
    }
}

static bool apply_verb_locked(struct job *job, enum job_verb verb,
                              struct err **errp);

/* The verb check alone, for verbs that need nothing else under the lock. */
static bool
apply_verb(struct job *job, enum job_verb verb, struct err **errp)
{
    bool ok;

    job_lock();
    ok = apply_verb_locked(job, verb, errp);
    job_unlock();
    return ok;
}

static bool
apply_verb_locked(struct job *job, enum job_verb verb, struct err **errp)
{
    if (job_verb_allowed(verb, job->status)) {
        return true;
    }
    err_setf(errp, "Job '%s' in state '%s' cannot accept command verb '%s'",
             job->id, job_status_names[job->status], job_verb_names[verb]);
    return false;
}

/* QEMU's id_wellformed(): a letter, then letters, digits, '-', '.', '_'. */
static bool
id_wellformed(const char *id)
{
    if (!((id[0] >= 'a' && id[0] <= 'z') || (id[0] >= 'A' && id[0] <= 'Z'))) {
        return false;
    }
    for (const char *p = id; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
              *p == '_')) {
            return false;
        }
    }
    return true;
}

static struct job *
find_locked(const char *id)
{
    struct job *job;

    TAILQ_FOREACH(job, &g_jobs, link) {
        if (!strcmp(job->id, id)) {
            return job;
        }
    }
    return NULL;
}

/* ---- Progress --------------------------------------------------------- */

void
job_progress_update(struct job *job, uint64_t done)
{
    __atomic_fetch_add(&job->progress_current, done, __ATOMIC_RELAXED);
}

void
job_progress_set_remaining(struct job *job, uint64_t remaining)
{
    uint64_t cur = __atomic_load_n(&job->progress_current, __ATOMIC_RELAXED);

    __atomic_store_n(&job->progress_total, cur + remaining, __ATOMIC_RELAXED);
}

void
job_progress_increase_remaining(struct job *job, uint64_t delta)
{
    __atomic_fetch_add(&job->progress_total, delta, __ATOMIC_RELAXED);
}

void
job_get_progress(struct job *job, uint64_t *current, uint64_t *total)
{
    if (job->drv->progress) {
        job->drv->progress(job, current, total);
        return;
    }
    *current = __atomic_load_n(&job->progress_current, __ATOMIC_RELAXED);
    *total = __atomic_load_n(&job->progress_total, __ATOMIC_RELAXED);
}

/* ---- Creation, references, lookup ------------------------------------- */

static void do_dismiss(struct job *job);

struct job *
job_create(const struct job_driver *drv, const char *id, bool auto_finalize,
           bool auto_dismiss, struct err **errp)
{
    struct job *job;

    assert_main_thread();
    assert(drv->instance_size >= sizeof(struct job) && drv->run);
    if (!id || !id_wellformed(id)) {
        err_setf(errp, "Invalid job ID '%s'", id ? id : "");
        return NULL;
    }
    job_lock();
    if (find_locked(id)) {
        job_unlock();
        err_setf(errp, "Job ID '%s' already in use", id);
        return NULL;
    }
    job = xzalloc(drv->instance_size);
    job->drv = drv;
    job->id = xstrdup(id);
    job->auto_finalize = auto_finalize;
    job->auto_dismiss = auto_dismiss;
    job->refcnt = 1;
    job->busy = false;
    cond_init(&job->cond);
    /* Newest first, as QEMU lists its jobs. */
    TAILQ_INSERT_HEAD(&g_jobs, job, link);
    transition_locked(job, JOB_STATUS_CREATED);
    job_unlock();
    return job;
}

void
job_early_fail(struct job *job)
{
    mutex_lock(&g_job_lock);
    assert(job->status == JOB_STATUS_CREATED && !job->started);
    mutex_unlock(&g_job_lock);
    do_dismiss(job);
}

void
job_ref(struct job *job)
{
    job_lock();
    job->refcnt++;
    job_unlock();
}

void
job_unref(struct job *job)
{
    bool last;

    job_lock();
    assert(job->refcnt > 0);
    last = --job->refcnt == 0;
    job_unlock();
    if (!last) {
        return;
    }
    assert(!job->thread_running);
    if (job->drv->free) {
        job->drv->free(job);
    }
    cond_destroy(&job->cond);
    free(job->error);
    free(job->id);
    free(job);
}

struct job *
job_find(const char *id)
{
    struct job *job;

    job_lock();
    job = find_locked(id);
    job_unlock();
    return job;
}

struct job *
job_next(struct job *prev)
{
    struct job *job;

    job_lock();
    job = prev ? TAILQ_NEXT(prev, link) : TAILQ_FIRST(&g_jobs);
    job_unlock();
    return job;
}

enum job_status
job_get_status(struct job *job)
{
    enum job_status st;

    job_lock();
    st = job->status;
    job_unlock();
    return st;
}

bool
job_user_paused(struct job *job)
{
    bool p;

    job_lock();
    p = job->user_paused;
    job_unlock();
    return p;
}

/* ---- Completion (main thread) ----------------------------------------- */

/* A BLOCK_JOB_* event with QEMU's members: type, device, len, offset,
 * speed.  No job lock: progress may ask the driver. */
static struct event *
block_event(struct job *job, const char *name)
{
    struct event *ev = event_new(name);
    uint64_t cur, total;

    job_get_progress(job, &cur, &total);
    event_add_str(ev, "type", job->drv->type);
    event_add_str(ev, "device", job->id);
    event_add_uint(ev, "len", total);
    event_add_uint(ev, "offset", cur);
    event_add_uint(ev, "speed", job->speed);
    return ev;
}

static void
do_dismiss(struct job *job)
{
    assert_main_thread();
    job_lock();
    transition_locked(job, JOB_STATUS_NULL);
    TAILQ_REMOVE(&g_jobs, job, link);
    job_unlock();
    job_unref(job);
}

/* The end of a failed or cancelled job: job->ret < 0. */
static void
finish_abort(struct job *job)
{
    struct event *ev;
    bool dismiss;

    assert_main_thread();
    job_lock();
    assert(job->ret < 0);
    if (!job->error) {
        job->error = xstrdup(strerror(-job->ret));
    }
    transition_locked(job, JOB_STATUS_ABORTING);
    job_unlock();

    if (job->drv->abort) {
        job->drv->abort(job);
    }
    if (job->drv->clean) {
        job->drv->clean(job);
    }

    ev = block_event(job, job->cancelled ? "BLOCK_JOB_CANCELLED"
                                         : "BLOCK_JOB_COMPLETED");
    job_lock();
    if (!job->cancelled) {
        event_add_str(ev, "error", job->error);
    }
    event_locked(ev);
    transition_locked(job, JOB_STATUS_CONCLUDED);
    dismiss = job->auto_dismiss;
    job_unlock();
    if (dismiss) {
        do_dismiss(job);
    }
}

/* Finalise a pending job: prepare, then commit or abort. */
static void
do_finalize(struct job *job)
{
    struct err *err = NULL;
    struct event *ev;
    bool dismiss;
    int ret = 0;

    assert_main_thread();
    if (job->drv->prepare) {
        ret = job->drv->prepare(job, &err);
    }
    if (ret < 0) {
        job_lock();
        job->ret = ret;
        free(job->error);
        job->error = err ? xstrdup(err->msg) : NULL;
        job_unlock();
        err_free(err);
        finish_abort(job);
        return;
    }
    if (job->drv->commit) {
        job->drv->commit(job);
    }
    if (job->drv->clean) {
        job->drv->clean(job);
    }
    ev = block_event(job, "BLOCK_JOB_COMPLETED");
    job_lock();
    event_locked(ev);
    transition_locked(job, JOB_STATUS_CONCLUDED);
    dismiss = job->auto_dismiss;
    job_unlock();
    if (dismiss) {
        do_dismiss(job);
    }
}

/* run's result is known (or the job was cancelled before it started). */
static void
job_completed(struct job *job)
{
    bool finalize;

    assert_main_thread();
    job_lock();
    if (job->completed) {
        job_unlock();
        return;
    }
    job->completed = true;
    job->busy = false;
    if (job->ret == 0 && job->cancelled) {
        job->ret = -ECANCELED;
    }
    if (job->ret < 0) {
        if (job->cancelled) {
            /* QEMU reports a cancelled job with this message, whatever
             * the run itself returned. */
            free(job->error);
            job->error = NULL;
            job->ret = -ECANCELED;
        }
        job_unlock();
        finish_abort(job);
        return;
    }
    /* A job that reached ready ends from there. */
    transition_locked(job, JOB_STATUS_WAITING);
    transition_locked(job, JOB_STATUS_PENDING);
    finalize = job->auto_finalize;
    if (!finalize) {
        /* qemu-storage-daemon 7.2 sends it only when the user has to
         * finalize; with auto-finalize the job moves straight on. */
        struct event *ev = event_new("BLOCK_JOB_PENDING");

        event_add_str(ev, "type", job->drv->type);
        event_add_str(ev, "id", job->id);
        event_locked(ev);
    }
    job_unlock();
    if (finalize) {
        do_finalize(job);
    }
}

/* Main thread: the job thread has ended; join it and handle the result.
 * Posted by the thread, with the thread's reference. */
static void
job_thread_done_cb(void *opaque)
{
    struct job *job = opaque;

    assert_main_thread();
    thread_join(job->thread);
    job_lock();
    job->thread_running = false;
    job_unlock();
    job_completed(job);
    job_unref(job);
}

static void *
job_thread(void *opaque)
{
    struct job *job = opaque;
    struct err *err = NULL;
    int ret;

    job_pause_point(job);
    ret = job->drv->run(job, &err);
    job_lock();
    job->ret = ret < 0 ? ret : 0;
    if (ret < 0 && err) {
        free(job->error);
        job->error = xstrdup(err->msg);
    }
    job->busy = false;
    job->deferred = true;
    settle_locked(job);
    cond_broadcast(&job->cond);
    /* Under the lock: see "Crossing to the main thread". */
    loop_call(job_thread_done_cb, job);
    job_unlock();
    err_free(err);
    return NULL;
}

void
job_start(struct job *job)
{
    int64_t deadline;
    char name[16];

    assert_main_thread();
    job_lock();
    assert(job->status == JOB_STATUS_CREATED && !job->started);
    job->started = true;
    job->refcnt++;                  /* the thread's reference */
    job->thread_running = true;
    job->busy = true;
    transition_locked(job, JOB_STATUS_RUNNING);
    job_unlock();
    snprintf(name, sizeof(name), "job-%s", job->id);
    thread_create(&job->thread, name, job_thread, job);

    /* Bounded: a job thread must never keep the main thread waiting. */
    deadline = clock_ns() + 1000LL * 1000 * 1000;
    job_lock();
    while (!job->settled) {
        if (!cond_timedwait_ns(&job->cond, &g_job_lock, deadline)) {
            break;
        }
    }
    job_unlock();
}

/* ---- Verbs (main thread) ---------------------------------------------- */

void
job_pause(struct job *job)
{
    bool first;

    job_lock();
    first = ++job->pause_count == 1;
    cond_broadcast(&job->cond);
    job_unlock();
    if (first && job->drv->pause) {
        job->drv->pause(job);
    }
}

void
job_resume(struct job *job)
{
    bool last;

    job_lock();
    assert(job->pause_count > 0);
    last = --job->pause_count == 0;
    cond_broadcast(&job->cond);
    job_unlock();
    if (last && job->drv->resume) {
        job->drv->resume(job);
    }
}

bool
job_user_pause(struct job *job, struct err **errp)
{
    assert_main_thread();
    job_lock();
    if (!apply_verb_locked(job, JOB_VERB_PAUSE, errp)) {
        job_unlock();
        return false;
    }
    if (job->user_paused) {
        job_unlock();
        err_setf(errp, "Job is already paused");
        return false;
    }
    job->user_paused = true;
    job_unlock();
    job_pause(job);
    return true;
}

bool
job_user_resume(struct job *job, struct err **errp)
{
    assert_main_thread();
    job_lock();
    if (!apply_verb_locked(job, JOB_VERB_RESUME, errp)) {
        job_unlock();
        return false;
    }
    if (!job->user_paused) {
        job_unlock();
        err_setf(errp, "Can't resume a job that was not paused");
        return false;
    }
    job->user_paused = false;
    job->iostatus = JOB_IOSTATUS_OK;
    job_unlock();
    job_resume(job);
    return true;
}

/* Cancel without the verb check. */
static void
job_cancel(struct job *job, bool force)
{
    job_lock();
    if (job->status == JOB_STATUS_ABORTING ||
        job->status == JOB_STATUS_CONCLUDED ||
        job->status == JOB_STATUS_NULL) {
        job_unlock();
        return;
    }
    job->cancelled = true;
    job->force_cancel |= force;
    /* Do not leave a cancelled job paused for good (as QEMU). */
    if (job->user_paused) {
        job->user_paused = false;
        job->pause_count--;
    }
    job->kicked = true;
    cond_broadcast(&job->cond);
    if (!job->started || job->completed) {
        /* Not started, or already waiting/pending: end it now. */
        job->completed = true;
        job->ret = -ECANCELED;
        free(job->error);
        job->error = NULL;
        job_unlock();
        finish_abort(job);
        return;
    }
    job_unlock();
    if (job->drv->cancel) {
        job->drv->cancel(job, force);
    }
}

bool
job_user_cancel(struct job *job, bool force, struct err **errp)
{
    assert_main_thread();
    if (!apply_verb(job, JOB_VERB_CANCEL, errp)) {
        return false;
    }
    job_cancel(job, force);
    return true;
}

bool
job_complete(struct job *job, struct err **errp)
{
    struct err *local_err = NULL;

    assert_main_thread();
    job_lock();
    if (!apply_verb_locked(job, JOB_VERB_COMPLETE, errp)) {
        job_unlock();
        return false;
    }
    if (job->cancelled || !job->drv->complete) {
        job_unlock();
        err_setf(errp, "The active block job '%s' cannot be completed",
                 job->id);
        return false;
    }
    job_unlock();
    /* errp may be NULL: learn the outcome from a local error. */
    job->drv->complete(job, &local_err);
    if (local_err) {
        err_propagate(errp, local_err);
        return false;
    }
    return true;
}

bool
job_finalize(struct job *job, struct err **errp)
{
    assert_main_thread();
    if (!apply_verb(job, JOB_VERB_FINALIZE, errp)) {
        return false;
    }
    do_finalize(job);
    return true;
}

bool
job_dismiss(struct job *job, struct err **errp)
{
    assert_main_thread();
    if (!apply_verb(job, JOB_VERB_DISMISS, errp)) {
        return false;
    }
    do_dismiss(job);
    return true;
}

bool
job_set_speed(struct job *job, int64_t speed, struct err **errp)
{
    job_lock();
    if (!apply_verb_locked(job, JOB_VERB_SET_SPEED, errp)) {
        job_unlock();
        return false;
    }
    if (speed < 0) {
        job_unlock();
        err_setf(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    job->speed = (uint64_t)speed;
    job_unlock();
    if (job->drv->set_speed) {
        job->drv->set_speed(job, (uint64_t)speed);
    }
    return true;
}

bool
job_wait_status(struct job *job, unsigned mask, int64_t timeout_ns)
{
    int64_t deadline = timeout_ns < 0 ? -1 : clock_ns() + timeout_ns;
    bool reached;

    assert_main_thread();
    job_lock();
    for (;;) {
        reached = mask & (1u << job->status);
        if (reached) {
            break;
        }
        if (job->deferred && job->thread_running) {
            /* run returned: its completion is queued; run it here. */
            job_unlock();
            loop_call_run_now(job_thread_done_cb, job);
            job_lock();
            continue;
        }
        if (deadline >= 0 && clock_ns() >= deadline) {
            break;
        }
        /* Woken by status changes and by the thread's end; the timeout
         * only bounds a wait that nothing would end. */
        cond_timedwait_ns(&job->cond, &g_job_lock,
                          deadline < 0 ? clock_ns() + 100000000LL
                                       : MIN(deadline,
                                             clock_ns() + 100000000LL));
    }
    job_unlock();
    return reached;
}

int
job_cancel_sync(struct job *job)
{
    int ret;

    assert_main_thread();
    job_ref(job);
    job_cancel(job, true);
    /* A pending job is ended by job_cancel itself; wait for the rest. */
    job_wait_status(job, (1u << JOB_STATUS_CONCLUDED) |
                    (1u << JOB_STATUS_NULL), -1);
    job_lock();
    ret = job->ret;
    job_unlock();
    job_unref(job);
    return ret;
}

void
job_cancel_sync_all(void)
{
    struct job *job;

    assert_main_thread();
    while ((job = job_next(NULL))) {
        job_ref(job);
        if (job_get_status(job) != JOB_STATUS_CONCLUDED) {
            job_cancel_sync(job);
        }
        if (job_get_status(job) == JOB_STATUS_CONCLUDED) {
            do_dismiss(job);
        }
        job_unref(job);
    }
}

/* ---- Job thread ------------------------------------------------------- */

bool
job_is_cancelled(struct job *job)
{
    bool c;

    job_lock();
    c = job->cancelled;
    job_unlock();
    return c;
}

bool
job_should_pause(struct job *job)
{
    bool p;

    job_lock();
    p = job->pause_count > 0 && !job->cancelled;
    job_unlock();
    return p;
}

void
job_pause_point(struct job *job)
{
    enum job_status before;

    job_lock();
    if (job->pause_count > 0 && !job->cancelled) {
        before = job->status;
        if (before == JOB_STATUS_RUNNING) {
            transition_locked(job, JOB_STATUS_PAUSED);
        } else if (before == JOB_STATUS_READY) {
            transition_locked(job, JOB_STATUS_STANDBY);
        }
        job->paused = true;
        job->busy = false;
        settle_locked(job);
        flush_events_locked();
        while (job->pause_count > 0 && !job->cancelled) {
            cond_wait(&job->cond, &g_job_lock);
        }
        job->paused = false;
        job->busy = true;
        if (before == JOB_STATUS_RUNNING || before == JOB_STATUS_READY) {
            transition_locked(job, before);
        }
    }
    job_unlock();
}

void
job_sleep_ns(struct job *job, int64_t ns)
{
    int64_t deadline = ns < 0 ? -1 : clock_ns() + ns;

    job_lock();
    job->busy = false;
    settle_locked(job);
    while (!job->kicked && !job->cancelled && job->pause_count == 0) {
        if (deadline < 0) {
            cond_wait(&job->cond, &g_job_lock);
        } else if (!cond_timedwait_ns(&job->cond, &g_job_lock, deadline)) {
            break;
        }
    }
    job->kicked = false;
    job->busy = true;
    job_unlock();
}

void
job_settled(struct job *job)
{
    job_lock();
    settle_locked(job);
    job_unlock();
}

void
job_kick(struct job *job)
{
    job_lock();
    job->kicked = true;
    cond_broadcast(&job->cond);
    job_unlock();
}

void
job_transition_to_ready(struct job *job)
{
    struct event *ev = block_event(job, "BLOCK_JOB_READY");

    job_lock();
    if (job->status != JOB_STATUS_RUNNING) {
        job_unlock();
        event_free(ev);
        return;
    }
    transition_locked(job, JOB_STATUS_READY);
    event_locked(ev);
    job_unlock();
}

enum job_error_action
job_error_action(struct job *job, enum job_on_error policy, bool is_read,
                 int error)
{
    static const char *const action_names[] = {
        [JOB_ERROR_ACTION_IGNORE] = "ignore",
        [JOB_ERROR_ACTION_REPORT] = "report",
        [JOB_ERROR_ACTION_STOP] = "stop",
    };
    enum job_error_action action;
    struct event *ev;
    bool pause = false;

    switch (policy) {
    case JOB_ON_ERROR_IGNORE:
        action = JOB_ERROR_ACTION_IGNORE;
        break;
    case JOB_ON_ERROR_STOP:
        action = JOB_ERROR_ACTION_STOP;
        break;
    case JOB_ON_ERROR_ENOSPC:
        action = error == ENOSPC ? JOB_ERROR_ACTION_STOP
                                 : JOB_ERROR_ACTION_REPORT;
        break;
    case JOB_ON_ERROR_REPORT:
    case JOB_ON_ERROR_AUTO:
    default:
        action = JOB_ERROR_ACTION_REPORT;
        break;
    }
    job_lock();
    if (action == JOB_ERROR_ACTION_STOP) {
        if (!job->user_paused) {
            job->user_paused = true;
            pause = true;
        }
        job->iostatus = error == ENOSPC ? JOB_IOSTATUS_NOSPACE
                                        : JOB_IOSTATUS_FAILED;
    }
    ev = event_new("BLOCK_JOB_ERROR");
    event_add_str(ev, "device", job->id);
    event_add_str(ev, "operation", is_read ? "read" : "write");
    event_add_str(ev, "action", action_names[action]);
    event_locked(ev);
    job_unlock();
    if (pause) {
        job_pause(job);
    }
    return action;
}

/* ---- Queries ---------------------------------------------------------- */

void
job_get_info(struct job *job, struct job_info *info)
{
    uint64_t cur, total;

    assert_main_thread();
    job_get_progress(job, &cur, &total);
    job_lock();
    *info = (struct job_info) {
        .id = job->id,
        .type = job->drv->type,
        .status = job->status,
        .current_progress = cur,
        .total_progress = total,
        .busy = job->busy,
        .paused = job->pause_count > 0,
        .ready = job->status == JOB_STATUS_READY ||
                 job->status == JOB_STATUS_STANDBY,
        .speed = job->speed,
        .iostatus = job->iostatus,
        .auto_finalize = job->auto_finalize,
        .auto_dismiss = job->auto_dismiss,
        .error = job->ret < 0 && job->error ? xstrdup(job->error) : NULL,
    };
    job_unlock();
}
