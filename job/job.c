/* SPDX-License-Identifier: MIT */
/*
 * The job core: QEMU's job state machine and verb table, pause counting,
 * cancellation, speed and progress, the job thread, completion and
 * finalisation on the main thread, the JOB_STATUS_CHANGE and BLOCK_JOB_*
 * events, and the query-jobs / query-block-jobs answers.
 *
 * Design notes.
 *
 * The two tables below are the whole state machine (fleecing.md 5.4, the
 * same facts as QEMU's job.c tables).  Every status change goes through
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
 * Invariants: driver callbacks and the event sink's consumers never run
 * with the job lock held, except that events are handed to the sink with
 * the lock held, so that JOB_STATUS_CHANGE events of one job are queued in
 * the order of the changes (the sink only queues; it takes no job lock).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "job/job.h"
#include "runtime/loop.h"
#include "util.h"

/* Protects the job list and the fields of struct job marked "job lock". */
static pthread_mutex_t g_job_lock = PTHREAD_MUTEX_INITIALIZER;
/* Job lock. */
static TAILQ_HEAD(, job) g_jobs = TAILQ_HEAD_INITIALIZER(g_jobs);

/* Event sink; set once at start-up (main thread) before jobs exist. */
static job_event_sink_fn *g_event_sink;

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

const char *const job_on_error_names[JOB_ON_ERROR__MAX] = {
    [JOB_ON_ERROR_REPORT] = "report",
    [JOB_ON_ERROR_IGNORE] = "ignore",
    [JOB_ON_ERROR_ENOSPC] = "enospc",
    [JOB_ON_ERROR_STOP] = "stop",
    [JOB_ON_ERROR_AUTO] = "auto",
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

/* ---- Events ----------------------------------------------------------- */

void
job_set_event_sink(job_event_sink_fn *fn)
{
    g_event_sink = fn;
}

void
job_event_send(const char *name, json_t *data)
{
    if (g_event_sink) {
        g_event_sink(name, data);
    } else {
        json_decref(data);
    }
}

/* ---- Main-thread queue ------------------------------------------------ */

struct main_call {
    void (*fn)(void *opaque);
    void *opaque;
    TAILQ_ENTRY(main_call) link;
};

/* The queue of work for the main thread.  Protected by: g_main_lock (a
 * leaf; never held while running the work). */
static pthread_mutex_t g_main_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_main_cond;
static pthread_once_t g_main_once = PTHREAD_ONCE_INIT;
static TAILQ_HEAD(, main_call) g_main_calls =
    TAILQ_HEAD_INITIALIZER(g_main_calls);
static void (*g_main_wakeup)(void *opaque);
static void *g_main_wakeup_opaque;

static void
main_queue_init(void)
{
    cond_init(&g_main_cond);
}

void
job_set_main_wakeup(void (*fn)(void *opaque), void *opaque)
{
    pthread_once(&g_main_once, main_queue_init);
    mutex_lock(&g_main_lock);
    g_main_wakeup = fn;
    g_main_wakeup_opaque = opaque;
    mutex_unlock(&g_main_lock);
}

void
job_post_main(void (*fn)(void *opaque), void *opaque)
{
    struct main_call *call = xzalloc(sizeof(*call));
    void (*wakeup)(void *);
    void *wakeup_opaque;

    pthread_once(&g_main_once, main_queue_init);
    call->fn = fn;
    call->opaque = opaque;
    mutex_lock(&g_main_lock);
    TAILQ_INSERT_TAIL(&g_main_calls, call, link);
    cond_broadcast(&g_main_cond);
    wakeup = g_main_wakeup;
    wakeup_opaque = g_main_wakeup_opaque;
    mutex_unlock(&g_main_lock);
    if (wakeup) {
        wakeup(wakeup_opaque);
    }
}

/* Run the queued work; true when there was some. */
static bool
dispatch_main(void)
{
    struct main_call *call;
    bool ran = false;

    for (;;) {
        mutex_lock(&g_main_lock);
        call = TAILQ_FIRST(&g_main_calls);
        if (call) {
            TAILQ_REMOVE(&g_main_calls, call, link);
        }
        mutex_unlock(&g_main_lock);
        if (!call) {
            return ran;
        }
        call->fn(call->opaque);
        free(call);
        ran = true;
    }
}

void
job_dispatch_main(void)
{
    dispatch_main();
}

bool
job_poll(int64_t timeout_ns)
{
    int64_t deadline = timeout_ns < 0 ? -1 : clock_ns() + timeout_ns;

    pthread_once(&g_main_once, main_queue_init);
    mutex_lock(&g_main_lock);
    while (TAILQ_EMPTY(&g_main_calls)) {
        if (deadline < 0) {
            cond_wait(&g_main_cond, &g_main_lock);
        } else if (!cond_timedwait_ns(&g_main_cond, &g_main_lock,
                                      deadline)) {
            break;
        }
    }
    mutex_unlock(&g_main_lock);
    return dispatch_main();
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
        job_event_send("JOB_STATUS_CHANGE",
                       json_pack("{s:s, s:s}", "id", job->id, "status",
                                 job_status_names[to]));
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

    mutex_lock(&g_job_lock);
    ok = apply_verb_locked(job, verb, errp);
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    if (find_locked(id)) {
        mutex_unlock(&g_job_lock);
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
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    job->refcnt++;
    mutex_unlock(&g_job_lock);
}

void
job_unref(struct job *job)
{
    bool last;

    mutex_lock(&g_job_lock);
    assert(job->refcnt > 0);
    last = --job->refcnt == 0;
    mutex_unlock(&g_job_lock);
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

    mutex_lock(&g_job_lock);
    job = find_locked(id);
    mutex_unlock(&g_job_lock);
    return job;
}

struct job *
job_next(struct job *prev)
{
    struct job *job;

    mutex_lock(&g_job_lock);
    job = prev ? TAILQ_NEXT(prev, link) : TAILQ_FIRST(&g_jobs);
    mutex_unlock(&g_job_lock);
    return job;
}

enum job_status
job_get_status(struct job *job)
{
    enum job_status st;

    mutex_lock(&g_job_lock);
    st = job->status;
    mutex_unlock(&g_job_lock);
    return st;
}

bool
job_user_paused(struct job *job)
{
    bool p;

    mutex_lock(&g_job_lock);
    p = job->user_paused;
    mutex_unlock(&g_job_lock);
    return p;
}

/* ---- Completion (main thread) ----------------------------------------- */

static json_t *
block_event_data(struct job *job)
{
    uint64_t cur, total;

    job_get_progress(job, &cur, &total);
    return json_pack("{s:s, s:s, s:I, s:I, s:I}", "type", job->drv->type,
                     "device", job->id, "len", (json_int_t)total, "offset",
                     (json_int_t)cur, "speed", (json_int_t)job->speed);
}

static void
do_dismiss(struct job *job)
{
    assert_main_thread();
    mutex_lock(&g_job_lock);
    transition_locked(job, JOB_STATUS_NULL);
    TAILQ_REMOVE(&g_jobs, job, link);
    mutex_unlock(&g_job_lock);
    job_unref(job);
}

/* The end of a failed or cancelled job: job->ret < 0. */
static void
finish_abort(struct job *job)
{
    json_t *data;
    bool dismiss;

    assert_main_thread();
    mutex_lock(&g_job_lock);
    assert(job->ret < 0);
    if (!job->error) {
        job->error = xstrdup(strerror(-job->ret));
    }
    transition_locked(job, JOB_STATUS_ABORTING);
    mutex_unlock(&g_job_lock);

    if (job->drv->abort) {
        job->drv->abort(job);
    }
    if (job->drv->clean) {
        job->drv->clean(job);
    }

    data = block_event_data(job);
    mutex_lock(&g_job_lock);
    if (job->cancelled) {
        job_event_send("BLOCK_JOB_CANCELLED", data);
    } else {
        json_object_set_new(data, "error", json_string(job->error));
        job_event_send("BLOCK_JOB_COMPLETED", data);
    }
    transition_locked(job, JOB_STATUS_CONCLUDED);
    dismiss = job->auto_dismiss;
    mutex_unlock(&g_job_lock);
    if (dismiss) {
        do_dismiss(job);
    }
}

/* Finalise a pending job: prepare, then commit or abort. */
static void
do_finalize(struct job *job)
{
    struct err *err = NULL;
    json_t *data;
    bool dismiss;
    int ret = 0;

    assert_main_thread();
    if (job->drv->prepare) {
        ret = job->drv->prepare(job, &err);
    }
    if (ret < 0) {
        mutex_lock(&g_job_lock);
        job->ret = ret;
        free(job->error);
        job->error = err ? xstrdup(err->msg) : NULL;
        mutex_unlock(&g_job_lock);
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
    data = block_event_data(job);
    mutex_lock(&g_job_lock);
    job_event_send("BLOCK_JOB_COMPLETED", data);
    transition_locked(job, JOB_STATUS_CONCLUDED);
    dismiss = job->auto_dismiss;
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    if (job->completed) {
        mutex_unlock(&g_job_lock);
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
        mutex_unlock(&g_job_lock);
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
        job_event_send("BLOCK_JOB_PENDING",
                       json_pack("{s:s, s:s}", "type", job->drv->type, "id",
                                 job->id));
    }
    mutex_unlock(&g_job_lock);
    if (finalize) {
        do_finalize(job);
    }
}

/* Main thread: the job thread has ended; join it and handle the result. */
static void
job_thread_done_cb(void *opaque)
{
    struct job *job = opaque;

    assert_main_thread();
    thread_join(job->thread);
    mutex_lock(&g_job_lock);
    job->thread_running = false;
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    job->ret = ret < 0 ? ret : 0;
    if (ret < 0 && err) {
        free(job->error);
        job->error = xstrdup(err->msg);
    }
    job->busy = false;
    job->deferred = true;
    settle_locked(job);
    mutex_unlock(&g_job_lock);
    err_free(err);
    job_post_main(job_thread_done_cb, job);
    return NULL;
}

void
job_start(struct job *job)
{
    int64_t deadline;
    char name[16];

    assert_main_thread();
    mutex_lock(&g_job_lock);
    assert(job->status == JOB_STATUS_CREATED && !job->started);
    job->started = true;
    job->refcnt++;                  /* the thread's reference */
    job->thread_running = true;
    job->busy = true;
    transition_locked(job, JOB_STATUS_RUNNING);
    mutex_unlock(&g_job_lock);
    snprintf(name, sizeof(name), "job-%s", job->id);
    thread_create(&job->thread, name, job_thread, job);

    /* Bounded: a job thread must never keep the main thread waiting. */
    deadline = clock_ns() + 1000LL * 1000 * 1000;
    mutex_lock(&g_job_lock);
    while (!job->settled) {
        if (!cond_timedwait_ns(&job->cond, &g_job_lock, deadline)) {
            break;
        }
    }
    mutex_unlock(&g_job_lock);
}

/* ---- Verbs (main thread) ---------------------------------------------- */

void
job_pause(struct job *job)
{
    bool first;

    mutex_lock(&g_job_lock);
    first = ++job->pause_count == 1;
    cond_broadcast(&job->cond);
    mutex_unlock(&g_job_lock);
    if (first && job->drv->pause) {
        job->drv->pause(job);
    }
}

void
job_resume(struct job *job)
{
    bool last;

    mutex_lock(&g_job_lock);
    assert(job->pause_count > 0);
    last = --job->pause_count == 0;
    cond_broadcast(&job->cond);
    mutex_unlock(&g_job_lock);
    if (last && job->drv->resume) {
        job->drv->resume(job);
    }
}

bool
job_user_pause(struct job *job, struct err **errp)
{
    assert_main_thread();
    mutex_lock(&g_job_lock);
    if (!apply_verb_locked(job, JOB_VERB_PAUSE, errp)) {
        mutex_unlock(&g_job_lock);
        return false;
    }
    if (job->user_paused) {
        mutex_unlock(&g_job_lock);
        err_setf(errp, "Job is already paused");
        return false;
    }
    job->user_paused = true;
    mutex_unlock(&g_job_lock);
    job_pause(job);
    return true;
}

bool
job_user_resume(struct job *job, struct err **errp)
{
    assert_main_thread();
    mutex_lock(&g_job_lock);
    if (!apply_verb_locked(job, JOB_VERB_RESUME, errp)) {
        mutex_unlock(&g_job_lock);
        return false;
    }
    if (!job->user_paused) {
        mutex_unlock(&g_job_lock);
        err_setf(errp, "Can't resume a job that was not paused");
        return false;
    }
    job->user_paused = false;
    job->iostatus = JOB_IOSTATUS_OK;
    mutex_unlock(&g_job_lock);
    job_resume(job);
    return true;
}

/* Cancel without the verb check. */
static void
job_cancel(struct job *job, bool force)
{
    mutex_lock(&g_job_lock);
    if (job->status == JOB_STATUS_ABORTING ||
        job->status == JOB_STATUS_CONCLUDED ||
        job->status == JOB_STATUS_NULL) {
        mutex_unlock(&g_job_lock);
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
        mutex_unlock(&g_job_lock);
        finish_abort(job);
        return;
    }
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    if (!apply_verb_locked(job, JOB_VERB_COMPLETE, errp)) {
        mutex_unlock(&g_job_lock);
        return false;
    }
    if (job->cancelled || !job->drv->complete) {
        mutex_unlock(&g_job_lock);
        err_setf(errp, "The active block job '%s' cannot be completed",
                 job->id);
        return false;
    }
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    if (!apply_verb_locked(job, JOB_VERB_SET_SPEED, errp)) {
        mutex_unlock(&g_job_lock);
        return false;
    }
    if (speed < 0) {
        mutex_unlock(&g_job_lock);
        err_setf(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    job->speed = (uint64_t)speed;
    mutex_unlock(&g_job_lock);
    if (job->drv->set_speed) {
        job->drv->set_speed(job, (uint64_t)speed);
    }
    return true;
}

bool
job_wait_status(struct job *job, unsigned mask, int64_t timeout_ns)
{
    int64_t deadline = timeout_ns < 0 ? -1 : clock_ns() + timeout_ns;

    assert_main_thread();
    for (;;) {
        if (mask & (1u << job_get_status(job))) {
            return true;
        }
        if (deadline >= 0 && clock_ns() >= deadline) {
            return false;
        }
        job_poll(10 * 1000 * 1000);
    }
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
    mutex_lock(&g_job_lock);
    ret = job->ret;
    mutex_unlock(&g_job_lock);
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

    mutex_lock(&g_job_lock);
    c = job->cancelled;
    mutex_unlock(&g_job_lock);
    return c;
}

bool
job_should_pause(struct job *job)
{
    bool p;

    mutex_lock(&g_job_lock);
    p = job->pause_count > 0 && !job->cancelled;
    mutex_unlock(&g_job_lock);
    return p;
}

void
job_pause_point(struct job *job)
{
    enum job_status before;

    mutex_lock(&g_job_lock);
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
        while (job->pause_count > 0 && !job->cancelled) {
            cond_wait(&job->cond, &g_job_lock);
        }
        job->paused = false;
        job->busy = true;
        if (before == JOB_STATUS_RUNNING || before == JOB_STATUS_READY) {
            transition_locked(job, before);
        }
    }
    mutex_unlock(&g_job_lock);
}

void
job_sleep_ns(struct job *job, int64_t ns)
{
    int64_t deadline = ns < 0 ? -1 : clock_ns() + ns;

    mutex_lock(&g_job_lock);
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
    mutex_unlock(&g_job_lock);
}

void
job_settled(struct job *job)
{
    mutex_lock(&g_job_lock);
    settle_locked(job);
    mutex_unlock(&g_job_lock);
}

void
job_kick(struct job *job)
{
    mutex_lock(&g_job_lock);
    job->kicked = true;
    cond_broadcast(&job->cond);
    mutex_unlock(&g_job_lock);
}

void
job_transition_to_ready(struct job *job)
{
    json_t *data = block_event_data(job);

    mutex_lock(&g_job_lock);
    if (job->status != JOB_STATUS_RUNNING) {
        mutex_unlock(&g_job_lock);
        json_decref(data);
        return;
    }
    transition_locked(job, JOB_STATUS_READY);
    job_event_send("BLOCK_JOB_READY", data);
    mutex_unlock(&g_job_lock);
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
    mutex_lock(&g_job_lock);
    if (action == JOB_ERROR_ACTION_STOP) {
        if (!job->user_paused) {
            job->user_paused = true;
            pause = true;
        }
        job->iostatus = error == ENOSPC ? JOB_IOSTATUS_NOSPACE
                                        : JOB_IOSTATUS_FAILED;
    }
    job_event_send("BLOCK_JOB_ERROR",
                   json_pack("{s:s, s:s, s:s}", "device", job->id,
                             "operation", is_read ? "read" : "write",
                             "action", action_names[action]));
    mutex_unlock(&g_job_lock);
    if (pause) {
        job_pause(job);
    }
    return action;
}

/* ---- Queries ---------------------------------------------------------- */

json_t *
job_info(struct job *job)
{
    uint64_t cur, total;
    json_t *info;

    assert_main_thread();
    job_get_progress(job, &cur, &total);
    mutex_lock(&g_job_lock);
    info = json_pack("{s:s, s:s, s:s, s:I, s:I}", "id", job->id, "type",
                     job->drv->type, "status", job_status_names[job->status],
                     "current-progress", (json_int_t)cur, "total-progress",
                     (json_int_t)total);
    if (job->ret < 0 && job->error) {
        json_object_set_new(info, "error", json_string(job->error));
    }
    mutex_unlock(&g_job_lock);
    return info;
}

json_t *
job_block_info(struct job *job)
{
    static const char *const iostatus_names[] = {
        [JOB_IOSTATUS_OK] = "ok",
        [JOB_IOSTATUS_FAILED] = "failed",
        [JOB_IOSTATUS_NOSPACE] = "nospace",
    };
    uint64_t cur, total;
    json_t *info;

    assert_main_thread();
    job_get_progress(job, &cur, &total);
    mutex_lock(&g_job_lock);
    info = json_pack("{s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:s, s:b, s:s, "
                     "s:b, s:b}",
                     "type", job->drv->type, "device", job->id,
                     "len", (json_int_t)total, "offset", (json_int_t)cur,
                     "busy", job->busy, "paused", job->pause_count > 0,
                     "speed", (json_int_t)job->speed,
                     "io-status", iostatus_names[job->iostatus],
                     "ready", job->status == JOB_STATUS_READY ||
                              job->status == JOB_STATUS_STANDBY,
                     "status", job_status_names[job->status],
                     "auto-finalize", job->auto_finalize,
                     "auto-dismiss", job->auto_dismiss);
    if (job->ret < 0 && job->error) {
        json_object_set_new(info, "error", json_string(job->error));
    }
    mutex_unlock(&g_job_lock);
    return info;
}

json_t *
job_query_jobs(void)
{
    json_t *list = json_array();

    for (struct job *job = job_next(NULL); job; job = job_next(job)) {
        json_array_append_new(list, job_info(job));
    }
    return list;
}

json_t *
job_query_block_jobs(void)
{
    json_t *list = json_array();

    for (struct job *job = job_next(NULL); job; job = job_next(job)) {
        json_array_append_new(list, job_block_info(job));
    }
    return list;
}
