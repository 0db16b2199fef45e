/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for job/job.c: the transition table and the verb table entry
 * by entry, every refused verb with QEMU's message, and
 * the lifecycle of a dummy job on its own thread: pause/resume, cancel in
 * each phase, failure, error action "stop", ready/complete, prepare
 * failure, auto-finalize off (pending, finalize, concluded, dismiss), and
 * the JOB_STATUS_CHANGE / BLOCK_JOB_* events in QEMU's order.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "event-log.h"
#include "job/job.h"
#include "qmp/qmp-internal.h"
#include "runtime/event.h"
#include "runtime/loop.h"
#include "util.h"

#define SEC (1000LL * 1000 * 1000)

static void
assert_events(const char *expected)
{
    char *s = event_log_names(true);

    if (strcmp(s, expected)) {
        fail_msg("events:\n  got      %s\n  expected %s", s, expected);
    }
    free(s);
}

/* ---- Tables ----------------------------------------------------------- */

enum {
    U = JOB_STATUS_UNDEFINED, C = JOB_STATUS_CREATED, R = JOB_STATUS_RUNNING,
    P = JOB_STATUS_PAUSED, Y = JOB_STATUS_READY, SB = JOB_STATUS_STANDBY,
    W = JOB_STATUS_WAITING, PD = JOB_STATUS_PENDING, A = JOB_STATUS_ABORTING,
    X = JOB_STATUS_CONCLUDED, N = JOB_STATUS_NULL,
};

/* The expected transitions, written as QEMU's qapi/job.json lists them. */
static const struct {
    int from;
    int to[4];
    int n;
} expected_transitions[] = {
    { U, { C }, 1 },
    { C, { R, A, N }, 3 },
    { R, { P, Y, W, A }, 4 },
    { P, { R }, 1 },
    { Y, { SB, W, A }, 3 },
    { SB, { Y }, 1 },
    { W, { PD, A }, 2 },
    { PD, { A, X }, 2 },
    { A, { A, X }, 2 },
    { X, { N }, 1 },
    { N, { 0 }, 0 },
};

static void
test_transition_table(void **state)
{
    int checked = 0;

    (void)state;
    assert_int_equal(ARRAY_SIZE(expected_transitions), JOB_STATUS__MAX);
    for (size_t i = 0; i < ARRAY_SIZE(expected_transitions); i++) {
        int from = expected_transitions[i].from;

        for (int to = 0; to < JOB_STATUS__MAX; to++) {
            bool want = false;

            for (int k = 0; k < expected_transitions[i].n; k++) {
                want |= expected_transitions[i].to[k] == to;
            }
            if (job_transition_allowed(from, to) != want) {
                fail_msg("transition %s -> %s: expected %s",
                         job_status_names[from], job_status_names[to],
                         want ? "allowed" : "refused");
            }
            checked++;
        }
    }
    assert_int_equal(checked, JOB_STATUS__MAX * JOB_STATUS__MAX);
    assert_false(job_transition_allowed(JOB_STATUS__MAX, JOB_STATUS_CREATED));
}

/* Expected verb table: the statuses each verb is accepted in. */
static const struct {
    int verb;
    int states[8];
    int n;
} expected_verbs[] = {
    { JOB_VERB_CANCEL, { C, R, P, Y, SB, W, PD }, 7 },
    { JOB_VERB_PAUSE, { C, R, P, Y, SB }, 5 },
    { JOB_VERB_RESUME, { C, R, P, Y, SB }, 5 },
    { JOB_VERB_SET_SPEED, { C, R, P, Y, SB }, 5 },
    { JOB_VERB_COMPLETE, { Y, SB }, 2 },
    { JOB_VERB_FINALIZE, { PD }, 1 },
    { JOB_VERB_DISMISS, { X }, 1 },
    { JOB_VERB_CHANGE, { C, R, P, Y, SB }, 5 },
};

static bool
verb_expected(int verb, int st)
{
    for (size_t i = 0; i < ARRAY_SIZE(expected_verbs); i++) {
        if (expected_verbs[i].verb != verb) {
            continue;
        }
        for (int k = 0; k < expected_verbs[i].n; k++) {
            if (expected_verbs[i].states[k] == st) {
                return true;
            }
        }
    }
    return false;
}

static void
test_verb_table(void **state)
{
    (void)state;
    assert_int_equal(ARRAY_SIZE(expected_verbs), JOB_VERB__MAX);
    for (int v = 0; v < JOB_VERB__MAX; v++) {
        for (int st = 0; st < JOB_STATUS__MAX; st++) {
            if (job_verb_allowed(v, st) != verb_expected(v, st)) {
                fail_msg("verb %s in %s: expected %s", job_verb_names[v],
                         job_status_names[st],
                         verb_expected(v, st) ? "allowed" : "refused");
            }
        }
    }
}

static void
test_names(void **state)
{
    (void)state;
    assert_string_equal(job_status_names[JOB_STATUS_CONCLUDED], "concluded");
    assert_string_equal(job_status_names[JOB_STATUS_NULL], "null");
    assert_string_equal(job_verb_names[JOB_VERB_SET_SPEED], "set-speed");
    assert_int_equal(job_on_error_parse("report"), JOB_ON_ERROR_REPORT);
    assert_int_equal(job_on_error_parse("ignore"), JOB_ON_ERROR_IGNORE);
    assert_int_equal(job_on_error_parse("stop"), JOB_ON_ERROR_STOP);
    assert_int_equal(job_on_error_parse("enospc"), JOB_ON_ERROR_ENOSPC);
    assert_int_equal(job_on_error_parse("auto"), JOB_ON_ERROR_AUTO);
    assert_int_equal(job_on_error_parse("bogus"), -1);
}

/* ---- The dummy job ---------------------------------------------------- */

struct dummy_job {
    struct job job;
    int finish;          /* atomic: 1 = return 0, 2 = return -EIO */
    int error_stop;      /* atomic: report one error with policy "stop" */
    bool go_ready;
    int prepare_ret;
    int calls_commit, calls_abort, calls_clean, calls_pause, calls_cancel;
    int calls_complete;
    uint64_t last_speed;
};

static int
dummy_run(struct job *job, struct err **errp)
{
    struct dummy_job *d = container_of(job, struct dummy_job, job);

    job_progress_set_remaining(job, 10);
    if (d->go_ready) {
        job_transition_to_ready(job);
    }
    while (!job_is_cancelled(job)) {
        int f = __atomic_load_n(&d->finish, __ATOMIC_ACQUIRE);

        job_pause_point(job);
        if (__atomic_exchange_n(&d->error_stop, 0, __ATOMIC_ACQ_REL)) {
            job_error_action(job, JOB_ON_ERROR_STOP, false, ENOSPC);
            continue;
        }
        if (f == 1) {
            job_progress_update(job, 10);
            return 0;
        }
        if (f == 2) {
            err_setf(errp, "dummy failure");
            return -EIO;
        }
        if (f == 3) {
            return -EIO;
        }
        job_sleep_ns(job, SEC / 1000);
    }
    return 0;
}

static void
dummy_pause(struct job *job)
{
    container_of(job, struct dummy_job, job)->calls_pause++;
}

static void
dummy_cancel(struct job *job, bool force)
{
    (void)force;
    container_of(job, struct dummy_job, job)->calls_cancel++;
}

static void
dummy_set_speed(struct job *job, uint64_t speed)
{
    container_of(job, struct dummy_job, job)->last_speed = speed;
}

static void
dummy_complete(struct job *job, struct err **errp)
{
    struct dummy_job *d = container_of(job, struct dummy_job, job);

    (void)errp;
    d->calls_complete++;
    __atomic_store_n(&d->finish, 1, __ATOMIC_RELEASE);
    job_kick(job);
}

static int
dummy_prepare(struct job *job, struct err **errp)
{
    struct dummy_job *d = container_of(job, struct dummy_job, job);

    if (d->prepare_ret) {
        err_setf(errp, "prepare failed");
    }
    return d->prepare_ret;
}

static void
dummy_commit(struct job *job)
{
    container_of(job, struct dummy_job, job)->calls_commit++;
}

static void
dummy_abort(struct job *job)
{
    container_of(job, struct dummy_job, job)->calls_abort++;
}

static void
dummy_clean(struct job *job)
{
    container_of(job, struct dummy_job, job)->calls_clean++;
}

static const struct job_driver dummy_driver = {
    .type = "backup",
    .instance_size = sizeof(struct dummy_job),
    .run = dummy_run,
    .pause = dummy_pause,
    .cancel = dummy_cancel,
    .set_speed = dummy_set_speed,
    .complete = dummy_complete,
    .prepare = dummy_prepare,
    .commit = dummy_commit,
    .abort = dummy_abort,
    .clean = dummy_clean,
};

static struct dummy_job *
dummy_new(const char *id, bool auto_finalize, bool auto_dismiss)
{
    struct err *err = NULL;
    struct job *job = job_create(&dummy_driver, id, auto_finalize,
                                 auto_dismiss, &err);

    if (!job) {
        fail_msg("job_create: %s", err->msg);
    }
    job_ref(job);                /* the test's own reference */
    return container_of(job, struct dummy_job, job);
}

static void
wait_status(struct job *job, enum job_status st)
{
    if (!job_wait_status(job, 1u << st, 10 * SEC)) {
        fail_msg("job '%s' did not reach %s (is %s)", job->id,
                 job_status_names[st],
                 job_status_names[job_get_status(job)]);
    }
}

/* errp, not the error itself: the call in ok runs before it is read. */
static void
expect_err(bool ok, struct err **errp, const char *msg)
{
    assert_false(ok);
    assert_non_null(*errp);
    assert_string_equal((*errp)->msg, msg);
    err_free(*errp);
    *errp = NULL;
}

static void
finish(struct dummy_job *d, int how)
{
    __atomic_store_n(&d->finish, how, __ATOMIC_RELEASE);
    job_kick(&d->job);
}

static int
setup(void **state)
{
    (void)state;
    event_log_reset();
    event_set_sink(event_log_capture);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    job_cancel_sync_all();
    assert_null(job_next(NULL));
    event_set_sink(NULL);
    event_log_reset();
    return 0;
}

/* ---- Refused verbs with QEMU's message, in every status --------------- */

static bool
apply(struct job *job, int verb, struct err **errp)
{
    switch (verb) {
    case JOB_VERB_CANCEL:
        return job_user_cancel(job, false, errp);
    case JOB_VERB_PAUSE:
        return job_user_pause(job, errp);
    case JOB_VERB_RESUME:
        return job_user_resume(job, errp);
    case JOB_VERB_SET_SPEED:
        return job_set_speed(job, 1, errp);
    case JOB_VERB_COMPLETE:
        return job_complete(job, errp);
    case JOB_VERB_FINALIZE:
        return job_finalize(job, errp);
    case JOB_VERB_DISMISS:
        return job_dismiss(job, errp);
    default:
        return false;
    }
}

static void
test_refused_verbs(void **state)
{
    struct dummy_job *d = dummy_new("j0", true, true);
    enum job_status saved = d->job.status;

    (void)state;
    for (int st = 0; st < JOB_STATUS__MAX; st++) {
        for (int v = 0; v < JOB_VERB__MAX; v++) {
            struct err *err = NULL;
            char *msg;

            if (v == JOB_VERB_CHANGE || job_verb_allowed(v, st)) {
                continue;
            }
            /* The job never started: only the status matters here. */
            d->job.status = st;
            msg = xasprintf("Job 'j0' in state '%s' cannot accept command "
                            "verb '%s'", job_status_names[st],
                            job_verb_names[v]);
            expect_err(apply(&d->job, v, &err), &err, msg);
            free(msg);
            assert_int_equal(d->job.status, st);
        }
    }
    d->job.status = saved;
    job_unref(&d->job);
}

static void
test_create_errors(void **state)
{
    struct err *err = NULL;
    struct dummy_job *d = dummy_new("job-0.a_b", true, true);

    (void)state;
    expect_err(job_create(&dummy_driver, "job-0.a_b", true, true, &err),
               &err, "Job ID 'job-0.a_b' already in use");
    expect_err(job_create(&dummy_driver, "1x", true, true, &err), &err,
               "Invalid job ID '1x'");
    expect_err(job_create(&dummy_driver, "", true, true, &err), &err,
               "Invalid job ID ''");
    expect_err(job_create(&dummy_driver, NULL, true, true, &err), &err,
               "Invalid job ID ''");
    expect_err(job_create(&dummy_driver, "a b", true, true, &err), &err,
               "Invalid job ID 'a b'");
    assert_ptr_equal(job_find("job-0.a_b"), &d->job);
    assert_null(job_find("nope"));
    job_unref(&d->job);
}

/* ---- Lifecycle -------------------------------------------------------- */

static void
test_lifecycle_manual(void **state)
{
    struct dummy_job *d = dummy_new("j1", false, false);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info, *list;

    (void)state;
    assert_int_equal(job_get_status(job), JOB_STATUS_CREATED);
    job_start(job);
    assert_int_equal(job_get_status(job), JOB_STATUS_RUNNING);

    /* Pause: the count is visible at once, the status once the thread
     * reaches its pause point. */
    assert_true(job_user_pause(job, &err));
    info = qmp_block_job_info(job);
    assert_true(json_is_true(json_object_get(info, "paused")));
    json_decref(info);
    wait_status(job, JOB_STATUS_PAUSED);
    assert_int_equal(d->calls_pause, 1);
    expect_err(job_user_pause(job, &err), &err, "Job is already paused");
    info = qmp_block_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info, "status")),
                        "paused");
    assert_true(json_is_false(json_object_get(info, "busy")));
    json_decref(info);

    /* Speed while paused. */
    assert_true(job_set_speed(job, 4096, &err));
    assert_int_equal(d->last_speed, 4096);
    expect_err(job_set_speed(job, -1, &err), &err,
               "Parameter 'speed' expects a non-negative value");

    assert_true(job_user_resume(job, &err));
    wait_status(job, JOB_STATUS_RUNNING);
    expect_err(job_user_resume(job, &err), &err,
               "Can't resume a job that was not paused");
    expect_err(job_complete(job, &err), &err,
               "Job 'j1' in state 'running' cannot accept command verb "
               "'complete'");

    finish(d, 1);
    wait_status(job, JOB_STATUS_PENDING);
    assert_int_equal(d->calls_commit, 0);
    expect_err(job_user_pause(job, &err), &err,
               "Job 'j1' in state 'pending' cannot accept command verb "
               "'pause'");
    info = qmp_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info, "status")),
                        "pending");
    assert_int_equal(json_integer_value(json_object_get(info,
                                                        "current-progress")),
                     10);
    assert_int_equal(json_integer_value(json_object_get(info,
                                                        "total-progress")),
                     10);
    assert_null(json_object_get(info, "error"));
    json_decref(info);

    assert_true(job_finalize(job, &err));
    assert_int_equal(job_get_status(job), JOB_STATUS_CONCLUDED);
    assert_int_equal(d->calls_commit, 1);
    assert_int_equal(d->calls_abort, 0);
    assert_int_equal(d->calls_clean, 1);
    assert_null(json_object_get(event_log_last("BLOCK_JOB_COMPLETED"), "error"));
    assert_int_equal(json_integer_value(json_object_get(
                         event_log_last("BLOCK_JOB_COMPLETED"), "offset")), 10);
    assert_int_equal(json_integer_value(json_object_get(
                         event_log_last("BLOCK_JOB_COMPLETED"), "speed")), 4096);
    assert_string_equal(json_string_value(json_object_get(
                            event_log_last("BLOCK_JOB_PENDING"), "id")), "j1");

    list = qmp_query_block_jobs(NULL, NULL);
    assert_int_equal(json_array_size(list), 1);
    info = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(info, "status")),
                        "concluded");
    assert_string_equal(json_string_value(json_object_get(info, "device")),
                        "j1");
    assert_string_equal(json_string_value(json_object_get(info, "type")),
                        "backup");
    assert_string_equal(json_string_value(json_object_get(info,
                                                          "io-status")),
                        "ok");
    assert_true(json_is_false(json_object_get(info, "auto-finalize")));
    assert_true(json_is_false(json_object_get(info, "auto-dismiss")));
    assert_true(json_is_false(json_object_get(info, "ready")));
    assert_int_equal(json_object_size(info), 12);
    json_decref(list);

    assert_true(job_dismiss(job, &err));
    assert_int_equal(job_get_status(job), JOB_STATUS_NULL);
    list = qmp_query_jobs(NULL, NULL);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);

    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:paused JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
                  "BLOCK_JOB_PENDING BLOCK_JOB_COMPLETED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_lifecycle_auto(void **state)
{
    struct dummy_job *d = dummy_new("j2", true, true);
    struct job *job = &d->job;

    (void)state;
    job_start(job);
    finish(d, 1);
    wait_status(job, JOB_STATUS_NULL);
    assert_int_equal(d->calls_commit, 1);
    assert_int_equal(d->calls_clean, 1);
    assert_null(job_find("j2"));
    /* No BLOCK_JOB_PENDING with auto-finalize (qemu-storage-daemon 7.2). */
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
                  "BLOCK_JOB_COMPLETED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_cancel_running(void **state)
{
    struct dummy_job *d = dummy_new("j3", true, true);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *ev;

    (void)state;
    job_start(job);
    while (__atomic_load_n(&job->progress_total, __ATOMIC_RELAXED) != 10) {
        loop_iterate(1);
    }
    assert_true(job_set_speed(job, 100, &err));
    assert_true(job_user_cancel(job, false, &err));
    assert_int_equal(d->calls_cancel, 1);
    wait_status(job, JOB_STATUS_NULL);
    assert_int_equal(d->calls_abort, 1);
    assert_int_equal(d->calls_commit, 0);
    assert_int_equal(d->calls_clean, 1);
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:aborting BLOCK_JOB_CANCELLED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
    ev = event_log_last("BLOCK_JOB_CANCELLED");
    assert_string_equal(json_string_value(json_object_get(ev, "device")),
                        "j3");
    assert_int_equal(json_integer_value(json_object_get(ev, "len")), 10);
    assert_int_equal(json_integer_value(json_object_get(ev, "offset")), 0);
    assert_int_equal(json_integer_value(json_object_get(ev, "speed")), 100);
    assert_null(json_object_get(ev, "error"));
    job_unref(job);
}

static void
test_cancel_paused(void **state)
{
    struct dummy_job *d = dummy_new("j4", true, false);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info;

    (void)state;
    job_start(job);
    assert_true(job_user_pause(job, &err));
    wait_status(job, JOB_STATUS_PAUSED);
    assert_true(job_user_cancel(job, true, &err));
    wait_status(job, JOB_STATUS_CONCLUDED);
    info = qmp_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info, "error")),
                        "Operation canceled");
    json_decref(info);
    info = qmp_block_job_info(job);
    assert_true(json_is_false(json_object_get(info, "paused")));
    assert_string_equal(json_string_value(json_object_get(info, "error")),
                        "Operation canceled");
    json_decref(info);
    expect_err(job_user_cancel(job, false, &err), &err,
               "Job 'j4' in state 'concluded' cannot accept command verb "
               "'cancel'");
    assert_true(job_dismiss(job, &err));
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:paused JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:aborting BLOCK_JOB_CANCELLED "
                  "JOB_STATUS_CHANGE:concluded JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_cancel_pending(void **state)
{
    struct dummy_job *d = dummy_new("j5", false, false);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info;

    (void)state;
    job_start(job);
    finish(d, 1);
    wait_status(job, JOB_STATUS_PENDING);
    assert_true(job_user_cancel(job, false, &err));
    assert_int_equal(job_get_status(job), JOB_STATUS_CONCLUDED);
    assert_int_equal(d->calls_abort, 1);
    assert_int_equal(d->calls_commit, 0);
    expect_err(job_finalize(job, &err), &err,
               "Job 'j5' in state 'concluded' cannot accept command verb "
               "'finalize'");
    info = qmp_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info, "error")),
                        "Operation canceled");
    json_decref(info);
    assert_true(job_dismiss(job, &err));
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
                  "BLOCK_JOB_PENDING JOB_STATUS_CHANGE:aborting "
                  "BLOCK_JOB_CANCELLED JOB_STATUS_CHANGE:concluded "
                  "JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_cancel_created(void **state)
{
    struct dummy_job *d = dummy_new("j6", true, true);
    struct job *job = &d->job;
    struct err *err = NULL;

    (void)state;
    assert_true(job_user_cancel(job, false, &err));
    assert_int_equal(job_get_status(job), JOB_STATUS_NULL);
    assert_int_equal(d->calls_abort, 1);
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:aborting "
                  "BLOCK_JOB_CANCELLED JOB_STATUS_CHANGE:concluded "
                  "JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_failure(void **state)
{
    struct dummy_job *d = dummy_new("j7", true, false);
    struct dummy_job *d2 = dummy_new("j7b", true, true);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info;

    (void)state;
    job_start(job);
    finish(d, 2);
    wait_status(job, JOB_STATUS_CONCLUDED);
    assert_int_equal(d->calls_abort, 1);
    assert_string_equal(json_string_value(json_object_get(
                            event_log_last("BLOCK_JOB_COMPLETED"), "error")),
                        "dummy failure");
    info = qmp_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info, "error")),
                        "dummy failure");
    json_decref(info);
    assert_true(job_dismiss(job, &err));

    /* Without a message: strerror, as QEMU. */
    event_log_reset();
    job_start(&d2->job);
    finish(d2, 3);
    wait_status(&d2->job, JOB_STATUS_NULL);
    assert_events("JOB_STATUS_CHANGE:running JOB_STATUS_CHANGE:aborting "
                  "BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded "
                  "JOB_STATUS_CHANGE:null");
    assert_string_equal(json_string_value(json_object_get(
                            event_log_last("BLOCK_JOB_COMPLETED"), "error")),
                        "Input/output error");
    job_unref(job);
    job_unref(&d2->job);
}

static void
test_error_stop(void **state)
{
    struct dummy_job *d = dummy_new("j8", true, true);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info, *ev;

    (void)state;
    job_start(job);
    __atomic_store_n(&d->error_stop, 1, __ATOMIC_RELEASE);
    job_kick(job);
    wait_status(job, JOB_STATUS_PAUSED);
    ev = event_log_last("BLOCK_JOB_ERROR");
    assert_non_null(ev);
    assert_string_equal(json_string_value(json_object_get(ev, "device")),
                        "j8");
    assert_string_equal(json_string_value(json_object_get(ev, "operation")),
                        "write");
    assert_string_equal(json_string_value(json_object_get(ev, "action")),
                        "stop");
    info = qmp_block_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info,
                                                          "io-status")),
                        "nospace");
    assert_true(json_is_true(json_object_get(info, "paused")));
    json_decref(info);
    assert_true(job_user_resume(job, &err));
    wait_status(job, JOB_STATUS_RUNNING);
    info = qmp_block_job_info(job);
    assert_string_equal(json_string_value(json_object_get(info,
                                                          "io-status")),
                        "ok");
    json_decref(info);
    finish(d, 1);
    wait_status(job, JOB_STATUS_NULL);
    job_unref(job);
}

static void
test_error_actions(void **state)
{
    struct dummy_job *d = dummy_new("j9", true, true);
    struct job *job = &d->job;

    (void)state;
    /* Not started: the action alone (the job thread would call these). */
    assert_int_equal(job_error_action(job, JOB_ON_ERROR_REPORT, true, EIO),
                     JOB_ERROR_ACTION_REPORT);
    assert_int_equal(job_error_action(job, JOB_ON_ERROR_IGNORE, true, EIO),
                     JOB_ERROR_ACTION_IGNORE);
    assert_int_equal(job_error_action(job, JOB_ON_ERROR_ENOSPC, false, EIO),
                     JOB_ERROR_ACTION_REPORT);
    assert_int_equal(job_error_action(job, JOB_ON_ERROR_AUTO, false, EIO),
                     JOB_ERROR_ACTION_REPORT);
    assert_events("JOB_STATUS_CHANGE:created BLOCK_JOB_ERROR "
                  "BLOCK_JOB_ERROR BLOCK_JOB_ERROR BLOCK_JOB_ERROR");
    assert_string_equal(json_string_value(json_object_get(
                            event_log_last("BLOCK_JOB_ERROR"), "action")),
                        "report");
    job_unref(job);
}

static void
test_ready_complete(void **state)
{
    struct dummy_job *d = dummy_new("j10", true, true);
    struct job *job = &d->job;
    struct err *err = NULL;
    json_t *info;

    (void)state;
    d->go_ready = true;
    job_start(job);
    wait_status(job, JOB_STATUS_READY);
    info = qmp_block_job_info(job);
    assert_true(json_is_true(json_object_get(info, "ready")));
    json_decref(info);
    assert_true(job_user_pause(job, &err));
    wait_status(job, JOB_STATUS_STANDBY);
    assert_true(job_complete(job, &err));  /* allowed in standby */
    assert_int_equal(d->calls_complete, 1);
    assert_true(job_user_resume(job, &err));
    wait_status(job, JOB_STATUS_NULL);
    assert_int_equal(d->calls_commit, 1);
    assert_events("JOB_STATUS_CHANGE:created JOB_STATUS_CHANGE:running "
                  "JOB_STATUS_CHANGE:ready BLOCK_JOB_READY "
                  "JOB_STATUS_CHANGE:standby JOB_STATUS_CHANGE:ready "
                  "JOB_STATUS_CHANGE:waiting JOB_STATUS_CHANGE:pending "
                  "BLOCK_JOB_COMPLETED JOB_STATUS_CHANGE:concluded "
                  "JOB_STATUS_CHANGE:null");
    job_unref(job);
}

static void
test_prepare_fails(void **state)
{
    struct dummy_job *d = dummy_new("j11", false, true);
    struct job *job = &d->job;
    struct err *err = NULL;

    (void)state;
    d->prepare_ret = -EINVAL;
    job_start(job);
    finish(d, 1);
    wait_status(job, JOB_STATUS_PENDING);
    assert_true(job_finalize(job, &err));
    assert_int_equal(job_get_status(job), JOB_STATUS_NULL);
    assert_int_equal(d->calls_commit, 0);
    assert_int_equal(d->calls_abort, 1);
    assert_int_equal(d->calls_clean, 1);
    assert_string_equal(json_string_value(json_object_get(
                            event_log_last("BLOCK_JOB_COMPLETED"), "error")),
                        "prepare failed");
    job_unref(job);
}

static void
test_cancel_sync(void **state)
{
    struct dummy_job *d = dummy_new("j12", true, false);
    struct dummy_job *d2 = dummy_new("j13", true, false);

    (void)state;
    job_start(&d->job);
    job_start(&d2->job);
    assert_int_equal(job_cancel_sync(&d->job), -ECANCELED);
    assert_int_equal(job_get_status(&d->job), JOB_STATUS_CONCLUDED);
    job_cancel_sync_all();
    assert_null(job_next(NULL));
    job_unref(&d->job);
    job_unref(&d2->job);
}

/* Rapid pause/resume/set-speed from the main thread while the job thread
 * passes pause points: no lost wake-up, no stuck job, counts balanced. */
static void
test_pause_resume_stress(void **state)
{
    struct err *err = NULL;

    (void)state;
    for (int round = 0; round < 20; round++) {
        char id[16];
        struct dummy_job *d;
        struct job *job;

        snprintf(id, sizeof(id), "s%d", round);
        d = dummy_new(id, true, true);
        job = &d->job;
        job_start(job);
        for (int i = 0; i < 200; i++) {
            assert_true(job_user_pause(job, &err));
            if (i % 7 == 0) {
                wait_status(job, JOB_STATUS_PAUSED);
            }
            assert_true(job_set_speed(job, i, &err));
            assert_true(job_user_resume(job, &err));
            loop_iterate(0);
        }
        if (round % 2) {
            finish(d, 1);
        } else {
            assert_true(job_user_cancel(job, false, &err));
        }
        wait_status(job, JOB_STATUS_NULL);
        assert_int_equal(job->pause_count, 0);
        job_unref(job);
    }
}

/* The main-thread queue (the runtime's loop_call) wakes the loop and runs
 * work in order; nothing is left afterwards. */
static int order[3], norder;

static void
work_cb(void *opaque)
{
    order[norder++] = (int)(intptr_t)opaque;
}

static void
test_main_queue(void **state)
{
    int64_t start = clock_ns();

    (void)state;
    loop_call(work_cb, (void *)1);
    loop_call(work_cb, (void *)2);
    /* Woken at once, not after the timeout. */
    while (norder < 2 && clock_ns() - start < 5 * SEC) {
        loop_iterate(5000);
    }
    assert_true(clock_ns() - start < 5 * SEC);
    assert_int_equal(norder, 2);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 2);
    assert_false(loop_call_run_now(work_cb, (void *)1));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transition_table),
        cmocka_unit_test(test_verb_table),
        cmocka_unit_test(test_names),
        cmocka_unit_test_setup_teardown(test_refused_verbs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_manual, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_lifecycle_auto, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_paused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_created, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_actions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ready_complete, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prepare_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume_stress, setup,
                                        teardown),
        cmocka_unit_test(test_main_queue),
    };
    int ret;

    assert(loop_init() == 0);
    ret = cmocka_run_group_tests(tests, NULL, NULL);
    loop_fini();
    return ret;
}
