/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the main loop (runtime/loop.c): cross-thread calls arrive
 * all, in posting order per thread; timers fire in deadline order and can
 * be cancelled; fd watches may remove themselves and others from their
 * callbacks; loop_quit() from another thread ends loop_run(); events
 * without a sink are dropped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/loop.h"
#include "qmp/qmp.h"
#include "util.h"

#define NTHREADS 4
#define NCALLS 2000

static int g_count;
static int g_last[NTHREADS];
static bool g_order_ok = true;

struct call {
    int thread;
    int seq;
};

static void
count_cb(void *opaque)
{
    struct call *c = opaque;

    assert_true(loop_is_main_thread());
    if (c->seq != g_last[c->thread] + 1) {
        g_order_ok = false;
    }
    g_last[c->thread] = c->seq;
    g_count++;
    free(c);
}

static void *
poster(void *opaque)
{
    int t = (int)(intptr_t)opaque;

    assert_false(loop_is_main_thread());
    for (int i = 1; i <= NCALLS; i++) {
        struct call *c = xmalloc(sizeof(*c));

        c->thread = t;
        c->seq = i;
        loop_call(count_cb, c);
    }
    /* Events with no sink installed are dropped (data freed). */
    qmp_event_send("TEST_EVENT", json_pack("{s:i}", "t", t));
    return NULL;
}

static void
test_calls(void **state)
{
    pthread_t th[NTHREADS];
    int64_t deadline = clock_ns() + 20000000000LL;

    (void)state;
    for (int i = 0; i < NTHREADS; i++) {
        thread_create(&th[i], "poster", poster, (void *)(intptr_t)i);
    }
    while (g_count < NTHREADS * NCALLS && clock_ns() < deadline) {
        loop_iterate(100);
    }
    for (int i = 0; i < NTHREADS; i++) {
        thread_join(th[i]);
    }
    assert_int_equal(g_count, NTHREADS * NCALLS);
    assert_true(g_order_ok);
}

static char g_fired[8];
static size_t g_nfired;

static void
timer_cb(void *opaque)
{
    g_fired[g_nfired++] = *(const char *)opaque;
}

static void
test_timers(void **state)
{
    static const char a = 'a', b = 'b', c = 'c';
    struct loop_timer *tb;
    int64_t deadline = clock_ns() + 5000000000LL;

    (void)state;
    loop_timer_add(30000000, timer_cb, (void *)&c);
    loop_timer_add(1000000, timer_cb, (void *)&a);
    tb = loop_timer_add(10000000, timer_cb, (void *)&b);
    loop_timer_del(tb);
    while (g_nfired < 2 && clock_ns() < deadline) {
        loop_iterate(-1);
    }
    assert_int_equal(g_nfired, 2);
    assert_memory_equal(g_fired, "ac", 2);
}

struct watch_test {
    int fds[2];
    struct loop_watch *w;
    struct loop_watch *other;
    int calls;
};

static void
watch_cb(int fd, short revents, void *opaque)
{
    struct watch_test *t = opaque;
    char buf[16];

    assert_true(revents & POLLIN);
    assert_true(read(fd, buf, sizeof(buf)) > 0);
    t->calls++;
    /* Remove ourselves and the other watch from inside the callback. */
    loop_remove_fd(t->w);
    loop_remove_fd(t->other);
}

static void
other_cb(int fd UNUSED, short revents UNUSED, void *opaque)
{
    struct watch_test *t = opaque;

    t->calls += 100;
}

static void
test_watches(void **state)
{
    struct watch_test t = { .calls = 0 };
    struct watch_test o = { .calls = 0 };

    (void)state;
    assert_int_equal(pipe(t.fds), 0);
    assert_int_equal(pipe(o.fds), 0);
    t.w = loop_add_fd(t.fds[0], POLLIN, watch_cb, &t);
    t.other = loop_add_fd(o.fds[0], POLLIN, other_cb, &t);
    assert_int_equal(write(t.fds[1], "x", 1), 1);
    assert_int_equal(write(o.fds[1], "y", 1), 1);
    loop_iterate(1000);
    /* The other watch was removed before its turn in this iteration. */
    assert_int_equal(t.calls, 1);
    assert_int_equal(write(t.fds[1], "x", 1), 1);
    loop_iterate(50);
    assert_int_equal(t.calls, 1);
    close(t.fds[0]);
    close(t.fds[1]);
    close(o.fds[0]);
    close(o.fds[1]);
}

static void *
quitter(void *opaque UNUSED)
{
    usleep(20000);
    loop_quit();
    return NULL;
}

static void
test_quit_from_thread(void **state)
{
    pthread_t th;

    (void)state;
    thread_create(&th, "quitter", quitter, NULL);
    loop_run();
    thread_join(th);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_timers),
        cmocka_unit_test(test_watches),
        cmocka_unit_test(test_quit_from_thread),
    };
    int ret;

    assert(loop_init() == 0);
    ret = cmocka_run_group_tests(tests, NULL, NULL);
    loop_fini();
    return ret;
}
