/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for util/lock.h's lock-order check: locks taken in the
 * table's order pass; a wrong order aborts with a message naming both
 * locks (run in a forked child, whose stderr the test reads).  Builds
 * without -Dlock_debug check nothing: the tests are skipped there.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "util.h"

static struct lock g_job = LOCK_INITIALIZER(JOB);
static struct lock g_calls = LOCK_INITIALIZER(LOOP_CALLS);

/* Run fn in a child; return what it wrote to stderr, and whether it was
 * killed by SIGABRT. */
static char *
run_child(void (*fn)(void), bool *aborted)
{
    static char out[4096];
    int p[2];
    pid_t pid;
    size_t len = 0;
    ssize_t r;
    int status;

    assert_int_equal(pipe(p), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        signal(SIGABRT, SIG_DFL);
        fn();
        _exit(0);
    }
    close(p[1]);
    while ((r = read(p[0], out + len, sizeof(out) - 1 - len)) > 0) {
        len += r;
    }
    out[len] = '\0';
    close(p[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
    if (!*aborted) {
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return out;
}

static void
skip_unless_checked(void)
{
    if (!lock_order_checked()) {
        skip();
    }
}

static void
test_right_order_passes(void **state)
{
    struct lock req, bitmap;

    (void)state;
    lock_init(&req, LOCK_NODE_REQ);
    lock_init(&bitmap, LOCK_NODE_BITMAP);
    /* The graph, then level 2, then leaves, in the table's order; a
     * release out of order is fine. */
    lock_order_enter(LOCK_GRAPH);
    mutex_lock(&g_job);
    mutex_lock(&req);
    mutex_lock(&bitmap);
    mutex_unlock(&req);
    mutex_lock(&g_calls);
    mutex_unlock(&g_calls);
    mutex_unlock(&bitmap);
    mutex_unlock(&g_job);
    lock_order_leave(LOCK_GRAPH);
    {
        SCOPED_LOCK(&g_job);
        SCOPED_LOCK(&g_calls);
    }
    /* Both released at the end of the scope: taking them again in order
     * still passes. */
    mutex_lock(&g_job);
    mutex_unlock(&g_job);
    mutex_destroy(&req);
    mutex_destroy(&bitmap);
}

static void
wrong_order(void)
{
    mutex_lock(&g_calls);
    mutex_lock(&g_job);         /* the job lock ranks before the queue's */
}

static void
test_wrong_order_aborts(void **state)
{
    bool aborted;
    const char *out;

    (void)state;
    skip_unless_checked();
    out = run_child(wrong_order, &aborted);
    assert_true(aborted);
    assert_non_null(strstr(out, "lock order violation: taking JOB: "
                                "g_job_lock (job/job.c, level 2) while "
                                "holding LOOP_CALLS: g_msg_lock "
                                "(runtime/loop.c, level 5)"));
}

static void
same_rank(void)
{
    struct lock a, b;

    lock_init(&a, LOCK_NODE_REQ);
    lock_init(&b, LOCK_NODE_REQ);
    mutex_lock(&a);
    mutex_lock(&b);             /* two req_locks never nest */
}

static void
test_same_rank_aborts(void **state)
{
    bool aborted;
    const char *out;

    (void)state;
    skip_unless_checked();
    out = run_child(same_rank, &aborted);
    assert_true(aborted);
    assert_non_null(strstr(out, "taking NODE_REQ: req_lock"));
}

static void
qcow2_chain(void)
{
    struct lock top, backing;

    lock_init(&top, LOCK_QCOW2_META);
    lock_init(&backing, LOCK_QCOW2_META);
    mutex_lock_may_block(&top);
    mutex_lock_may_block(&backing);   /* nests down the graph: allowed */
    mutex_unlock(&backing);
    mutex_unlock(&top);
}

static void
test_nesting_down_passes(void **state)
{
    bool aborted;

    (void)state;
    run_child(qcow2_chain, &aborted);
    assert_false(aborted);
}

static void
graph_under_lock(void)
{
    mutex_lock(&g_job);
    lock_order_enter(LOCK_GRAPH);
}

static void
test_graph_under_a_lock_aborts(void **state)
{
    bool aborted;
    const char *out;

    (void)state;
    skip_unless_checked();
    out = run_child(graph_under_lock, &aborted);
    assert_true(aborted);
    assert_non_null(strstr(out, "taking GRAPH: graph_lock"));
}

static void
wait_under_higher(void)
{
    pthread_cond_t c;

    cond_init(&c);
    mutex_lock(&g_job);
    mutex_lock(&g_calls);
    /* Waiting drops and retakes the job lock under the queue's lock. */
    cond_timedwait_ns(&c, &g_job, clock_ns() + 1000000);
}

static void
test_wait_under_a_higher_lock_aborts(void **state)
{
    bool aborted;
    const char *out;

    (void)state;
    skip_unless_checked();
    out = run_child(wait_under_higher, &aborted);
    assert_true(aborted);
    assert_non_null(strstr(out, "waiting on JOB: g_job_lock"));
}

static void
release_unheld(void)
{
    lock_order_leave(LOCK_JOB);
}

static void
test_release_of_an_unheld_lock_aborts(void **state)
{
    bool aborted;
    const char *out;

    (void)state;
    skip_unless_checked();
    out = run_child(release_unheld, &aborted);
    assert_true(aborted);
    assert_non_null(strstr(out, "releasing JOB: g_job_lock"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_right_order_passes),
        cmocka_unit_test(test_wrong_order_aborts),
        cmocka_unit_test(test_same_rank_aborts),
        cmocka_unit_test(test_nesting_down_passes),
        cmocka_unit_test(test_graph_under_a_lock_aborts),
        cmocka_unit_test(test_wait_under_a_higher_lock_aborts),
        cmocka_unit_test(test_release_of_an_unheld_lock_aborts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
