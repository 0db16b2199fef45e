/* SPDX-License-Identifier: MIT */
/*
 * Jobs: long-running work (backup, ...) with QEMU's job model, as the
 * job-* and block-job-* QMP commands and the JOB_STATUS_CHANGE and
 * BLOCK_JOB_* events show it (docs/qmp.md).
 *
 * A job is a struct job embedded first in a driver's own structure.  Its
 * status follows a fixed transition table, and the user's verbs (cancel,
 * pause, resume, set-speed, complete, finalize, dismiss) are accepted only
 * in the states the verb table lists; both tables live in job/job.c.
 *
 * Threads.
 *   - Main thread: creation, every verb, completion, finalisation (prepare,
 *     commit, abort, clean) and dismissal.  These may change the graph.
 *   - Job thread: job_start() runs drv->run on a thread of its own.  It
 *     does blocking I/O, calls job_pause_point() between units of work
 *     (it blocks there while the job is paused, so a paused job does no
 *     I/O) and checks job_is_cancelled().  When run returns, the thread
 *     hands the job to the main thread (loop_call()) and ends.
 *   - A job thread never waits for the main thread, and never waits for
 *     a pause or a sleep while it is inside the graph (between
 *     block_graph_enter() and block_graph_leave()), or a drain deadlocks.
 *
 * Crossing to the main thread: the job thread hands its result over with
 * the runtime's loop_call() (runtime/loop.h), so a program that runs jobs
 * runs the main loop, or waits for its jobs with job_wait_status() (tests).
 *
 * Events (JOB_STATUS_CHANGE, BLOCK_JOB_*) go out through the runtime
 * (runtime/event.h), in the order of the changes and with no lock held.
 *
 * Locking: one lock, the job lock, protects the job list and every field
 * marked "job lock" below.  It is taken after the graph lock and before
 * the runtime's leaf locks (the event queue's, the loop's call queue);
 * driver callbacks and the event sink are never called with it held, and
 * it is never held across I/O.
 */
#ifndef LOCKSTEP_JOB_H
#define LOCKSTEP_JOB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "lockstep/err.h"

/* QEMU's JobStatus, in QEMU's order. */
enum job_status {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
};

/* QEMU's JobVerb. */
enum job_verb {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_FINALIZE,
    JOB_VERB_DISMISS,
    JOB_VERB_CHANGE,
    JOB_VERB__MAX,
};

/* QEMU's BlockdevOnError: what a job does after an I/O error. */
enum job_on_error {
    JOB_ON_ERROR_REPORT,
    JOB_ON_ERROR_IGNORE,
    JOB_ON_ERROR_ENOSPC,
    JOB_ON_ERROR_STOP,
    JOB_ON_ERROR_AUTO,
    JOB_ON_ERROR__MAX,
};

/* BlockErrorAction: what was done, as BLOCK_JOB_ERROR reports it. */
enum job_error_action {
    JOB_ERROR_ACTION_IGNORE,
    JOB_ERROR_ACTION_REPORT,
    JOB_ERROR_ACTION_STOP,
};

/* BlockDeviceIoStatus, "io-status" of query-block-jobs. */
enum job_iostatus {
    JOB_IOSTATUS_OK,
    JOB_IOSTATUS_FAILED,
    JOB_IOSTATUS_NOSPACE,
};

extern const char *const job_status_names[JOB_STATUS__MAX];
extern const char *const job_verb_names[JOB_VERB__MAX];
/* NULL-terminated (QMP's enum values). */
extern const char *const job_on_error_names[JOB_ON_ERROR__MAX + 1];
extern const char *const job_iostatus_names[];

struct job;

/*
 * What a kind of job does.  Every callback but run is optional.
 */
struct job_driver {
    const char *type;           /* "backup": the "type" of queries/events */
    size_t instance_size;       /* >= sizeof(struct job), zeroed */

    /*
     * The work, on the job's thread.  Returns 0 or -errno; on failure it
     * may set *errp for the message of BLOCK_JOB_COMPLETED (default:
     * strerror).  A cancelled job returns whatever it likes: the job ends
     * as cancelled.
     */
    int (*run)(struct job *job, struct err **errp);

    /*
     * The job's pause count went from 0 to 1 (pause) or back (resume):
     * make the job thread reach its next pause point soon, e.g. interrupt
     * a copy.  Main thread or job thread (error action "stop"); no lock.
     */
    void (*pause)(struct job *job);
    void (*resume)(struct job *job);
    /* The job was cancelled while running: wake it up.  Main thread. */
    void (*cancel)(struct job *job, bool force);
    /* New speed in bytes per second (0 = unlimited).  Main thread. */
    void (*set_speed)(struct job *job, uint64_t speed);
    /* job-complete in state ready/standby.  Main thread. */
    void (*complete)(struct job *job, struct err **errp);

    /*
     * Finalisation, main thread, after run returned and the job thread
     * ended.  prepare may fail (then abort runs instead of commit); exactly
     * one of commit and abort runs; clean runs last in both cases.
     */
    int (*prepare)(struct job *job, struct err **errp);
    void (*commit)(struct job *job);
    void (*abort)(struct job *job);
    void (*clean)(struct job *job);

    /* Progress for queries and events, when the driver keeps its own;
     * default: job_progress_*().  Any thread, no job lock. */
    void (*progress)(struct job *job, uint64_t *current, uint64_t *total);

    /* Free the driver's resources (the struct job itself is freed by the
     * core).  Main thread. */
    void (*free)(struct job *job);
};

struct job {
    const struct job_driver *drv;
    char *id;                   /* immutable */
    bool auto_finalize;         /* immutable */
    bool auto_dismiss;          /* immutable */

    /* Job lock. */
    enum job_status status;
    int refcnt;
    int pause_count;            /* > 0: the job must pause */
    bool user_paused;           /* paused by job-pause or error action stop */
    bool paused;                /* the thread sits in a pause point */
    bool busy;                  /* the thread works (not paused/sleeping) */
    bool cancelled;
    bool force_cancel;
    bool started;               /* job_start() ran */
    bool thread_running;        /* the thread exists and is not joined */
    bool deferred;              /* run returned; completion is queued */
    bool completed;             /* run's result was handled on main */
    bool kicked;                /* wake-up for job_sleep_ns() */
    bool settled;               /* the thread got going (job_settled()) */
    int ret;                    /* run's result, then the job's */
    char *error;                /* message when ret < 0 */
    uint64_t speed;
    enum job_iostatus iostatus;
    pthread_cond_t cond;        /* pause, resume, cancel, kick */
    pthread_t thread;
    TAILQ_ENTRY(job) link;      /* in the job list */

    /* Progress: atomics, any thread. */
    uint64_t progress_current;
    uint64_t progress_total;
};

/* ---- Tables (pure; unit-tested) --------------------------------------- */

bool job_transition_allowed(enum job_status from, enum job_status to);
bool job_verb_allowed(enum job_verb verb, enum job_status status);
/* -1 if unknown. */
int job_on_error_parse(const char *s);

/* ---- Lifecycle (main thread) ------------------------------------------ */

/*
 * Create a job of drv->instance_size bytes in state created, with one
 * reference held by the job list.  id is required and must be well formed
 * ("Invalid job ID '%s'") and unused ("Job ID '%s' already in use").
 */
struct job *job_create(const struct job_driver *drv, const char *id,
                       bool auto_finalize, bool auto_dismiss,
                       struct err **errp);
/* A created job that could not be set up and never starts: it goes away
 * (created -> null, drv->free runs), as QEMU's job_early_fail. */
void job_early_fail(struct job *job);
/*
 * Start the job's thread: created -> running.  Like QEMU, where a new job
 * runs until it first yields before the command that started it returns,
 * this waits (up to a second) until the thread has settled: it sleeps,
 * pauses, ended, or its driver called job_settled().
 */
void job_start(struct job *job);
void job_ref(struct job *job);
void job_unref(struct job *job);

struct job *job_find(const char *id);
/* Iterate over all jobs (pass NULL first).  Main thread. */
struct job *job_next(struct job *prev);

/* The verbs, with QEMU's checks and messages. */
bool job_user_pause(struct job *job, struct err **errp);
bool job_user_resume(struct job *job, struct err **errp);
bool job_user_cancel(struct job *job, bool force, struct err **errp);
bool job_complete(struct job *job, struct err **errp);
bool job_finalize(struct job *job, struct err **errp);
bool job_dismiss(struct job *job, struct err **errp);
bool job_set_speed(struct job *job, int64_t speed, struct err **errp);

/* Internal pause/resume (counted, no verb check). */
void job_pause(struct job *job);
void job_resume(struct job *job);

/*
 * Cancel and wait until the job concluded (finalising it if needed);
 * returns the job's result.  For shutdown and tests.  Main thread.
 */
int job_cancel_sync(struct job *job);
void job_cancel_sync_all(void);
/* Wait until the job reaches a status in mask (bit 1 << status) or the
 * timeout passes (< 0: no timeout); true when it did.  Runs the job's own
 * completion when its thread ends meanwhile, nothing else of the main
 * loop's.  Main thread. */
bool job_wait_status(struct job *job, unsigned mask, int64_t timeout_ns);

/* Current status (job lock taken). */
enum job_status job_get_status(struct job *job);
/* Paused by job-pause or error action stop (job lock taken). */
bool job_user_paused(struct job *job);

/* ---- Job thread ------------------------------------------------------- */

/* Block while the job must pause (status paused/standby meanwhile). */
void job_pause_point(struct job *job);
bool job_is_cancelled(struct job *job);
bool job_should_pause(struct job *job);
/* Sleep up to ns (< 0: until woken); pause, resume, cancel and
 * job_kick() wake it.  Not a pause point. */
void job_sleep_ns(struct job *job, int64_t ns);
/* The job's start-up is over (it works on; "busy" stays true).  A driver
 * calls it before its first I/O; job thread.  Never call it after
 * block_graph_enter(): job_start() may wait for it inside a drain. */
void job_settled(struct job *job);
/* Wake job_sleep_ns().  Any thread. */
void job_kick(struct job *job);
/* running -> ready, BLOCK_JOB_READY (mirror-like jobs).  Any thread. */
void job_transition_to_ready(struct job *job);

/*
 * An I/O error happened (error = positive errno): decide the action from
 * the policy, send BLOCK_JOB_ERROR, and for "stop" pause the job as
 * job-pause would (io-status failed or nospace).  Job thread.
 */
enum job_error_action job_error_action(struct job *job,
                                       enum job_on_error policy,
                                       bool is_read, int error);

/* Progress (any thread, atomics). */
void job_progress_update(struct job *job, uint64_t done);
void job_progress_set_remaining(struct job *job, uint64_t remaining);
void job_progress_increase_remaining(struct job *job, uint64_t delta);
void job_get_progress(struct job *job, uint64_t *current, uint64_t *total);

/* ---- Queries (main thread) -------------------------------------------- */

/* A job as query-jobs and query-block-jobs show it. */
struct job_info {
    const char *id;             /* valid while the job exists */
    const char *type;           /* the driver's */
    enum job_status status;
    uint64_t current_progress;
    uint64_t total_progress;
    bool busy;
    bool paused;                /* pause requested (pause count > 0) */
    bool ready;                 /* status ready or standby */
    uint64_t speed;
    enum job_iostatus iostatus;
    bool auto_finalize;
    bool auto_dismiss;
    char *error;                /* a failed job's message (copy), or NULL */
};

/* A consistent snapshot of the job; free info->error afterwards. */
void job_get_info(struct job *job, struct job_info *info);

#endif
