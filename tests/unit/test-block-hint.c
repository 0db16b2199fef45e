/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the blocking hints of util/util.c: an armed hook runs
 * once, before the first wait of its thread, and never on other threads;
 * the NBD server builds its reader hand-off on exactly these rules.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "util.h"

static int g_calls;
static void *g_seen;

static void
hook(void *opaque)
{
    g_calls++;
    g_seen = opaque;
}

static void
wait_briefly(void)
{
    pthread_mutex_t m;
    pthread_cond_t c;

    mutex_init(&m);
    cond_init(&c);
    mutex_lock(&m);
    assert_false(cond_timedwait_ns(&c, &m, clock_ns() + 1000000));
    mutex_unlock(&m);
    cond_destroy(&c);
    mutex_destroy(&m);
}

static void
test_unarmed_is_a_no_op(void **state)
{
    (void)state;
    g_calls = 0;
    thread_may_block();
    wait_briefly();
    assert_int_equal(g_calls, 0);
}

static void
test_armed_runs_once_before_a_wait(void **state)
{
    int token;

    (void)state;
    g_calls = 0;
    thread_set_block_hook(hook, &token);
    wait_briefly();
    assert_int_equal(g_calls, 1);
    assert_ptr_equal(g_seen, &token);
    wait_briefly();                 /* one-shot: not again */
    thread_may_block();
    assert_int_equal(g_calls, 1);
}

static void
test_disarm(void **state)
{
    (void)state;
    g_calls = 0;
    thread_set_block_hook(hook, NULL);
    thread_set_block_hook(NULL, NULL);
    thread_may_block();
    assert_int_equal(g_calls, 0);
}

static void *
other_thread(void *opaque)
{
    (void)opaque;
    thread_may_block();
    wait_briefly();
    return NULL;
}

static void
test_hook_is_per_thread(void **state)
{
    pthread_t t;

    (void)state;
    g_calls = 0;
    thread_set_block_hook(hook, NULL);
    thread_create(&t, "hint-test", other_thread, NULL);
    thread_join(t);                 /* join waits, but not in cond_wait */
    assert_int_equal(g_calls, 0);
    thread_may_block();
    assert_int_equal(g_calls, 1);
}

static pthread_mutex_t g_held;
static pthread_barrier_t g_barrier;

static void *
hold_briefly(void *opaque)
{
    (void)opaque;
    mutex_lock(&g_held);
    pthread_barrier_wait(&g_barrier);   /* the main thread may try now */
    sleep_ns(20 * 1000 * 1000);
    mutex_unlock(&g_held);
    return NULL;
}

/* mutex_lock_may_block hints only when it has to wait. */
static void
test_mutex_hint_only_when_contended(void **state)
{
    pthread_t t;

    (void)state;
    mutex_init(&g_held);
    pthread_barrier_init(&g_barrier, NULL, 2);
    g_calls = 0;
    thread_set_block_hook(hook, NULL);
    mutex_lock_may_block(&g_held);      /* free: no hint */
    mutex_unlock(&g_held);
    assert_int_equal(g_calls, 0);

    thread_create(&t, "hint-holder", hold_briefly, NULL);
    pthread_barrier_wait(&g_barrier);   /* the holder has g_held now */
    mutex_lock_may_block(&g_held);
    assert_int_equal(g_calls, 1);
    mutex_unlock(&g_held);
    thread_join(t);
    pthread_barrier_destroy(&g_barrier);
    mutex_destroy(&g_held);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unarmed_is_a_no_op),
        cmocka_unit_test(test_armed_runs_once_before_a_wait),
        cmocka_unit_test(test_disarm),
        cmocka_unit_test(test_hook_is_per_thread),
        cmocka_unit_test(test_mutex_hint_only_when_contended),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
