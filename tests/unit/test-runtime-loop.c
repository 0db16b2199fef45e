/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the main loop (runtime/loop.c): cross-thread calls arrive
 * all, in posting order per thread; timers fire in deadline order and can
 * be cancelled; fd watches may remove themselves and others from their
 * callbacks; loop_quit() from another thread ends loop_run();
 * loop_call_run_now() runs one queued call out of turn; the main thread is
 * the initial thread.  Events: without a sink they are dropped; members
 * keep their order and types; an event_queue fed under a lock by several
 * threads reaches the sink in push order, each flush returning only once
 * its own events are out.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/event.h"
#include "runtime/loop.h"
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
    struct event *ev;

    assert_false(loop_is_main_thread());
    for (int i = 1; i <= NCALLS; i++) {
        struct call *c = xmalloc(sizeof(*c));

        c->thread = t;
        c->seq = i;
        loop_call(count_cb, c);
    }
    /* Events with no sink installed are dropped (and freed). */
    ev = event_new("TEST_EVENT");
    event_add_int(ev, "t", t);
    event_emit(ev);
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

/* A call queued behind others runs alone and out of turn. */
static int g_now_a, g_now_b;

static void
now_cb(void *opaque)
{
    (*(int *)opaque)++;
}

static void
test_run_now(void **state)
{
    (void)state;
    loop_call(now_cb, &g_now_a);
    loop_call(now_cb, &g_now_b);
    assert_true(loop_call_run_now(now_cb, &g_now_b));
    assert_int_equal(g_now_a, 0);
    assert_int_equal(g_now_b, 1);
    assert_false(loop_call_run_now(now_cb, &g_now_b));
    loop_iterate(100);
    assert_int_equal(g_now_a, 1);
    assert_int_equal(g_now_b, 1);
}

static void *
is_main_thread(void *opaque UNUSED)
{
    return (void *)(intptr_t)loop_is_main_thread();
}

static void
test_main_thread(void **state)
{
    pthread_t th;
    void *ret;

    (void)state;
    assert_true(loop_is_main_thread());
    thread_create(&th, "other", is_main_thread, NULL);
    assert_int_equal(pthread_join(th, &ret), 0);
    assert_null(ret);
}

/* ---- Events ------------------------------------------------------------ */

#define EV_THREADS 4
#define EV_PER_THREAD 500

static pthread_mutex_t g_ev_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t g_ev_seen[EV_THREADS * EV_PER_THREAD];   /* by g_ev_lock */
static int g_ev_count;                                  /* by g_ev_lock */
static struct event *g_ev_copy;                         /* by g_ev_lock */

static void
record_sink(const struct event *ev)
{
    const struct event_member *m = event_member(ev, "n");

    mutex_lock(&g_ev_lock);
    if (m && g_ev_count < (int)ARRAY_SIZE(g_ev_seen)) {
        g_ev_seen[g_ev_count++] = m->v.i;
    } else if (!m) {
        /* Keep a copy of a one-off event for the member test. */
        event_free(g_ev_copy);
        g_ev_copy = event_new(ev->name);
        for (size_t i = 0; i < ev->n; i++) {
            const struct event_member *x = &ev->m[i];

            switch (x->type) {
            case EVENT_STR:
                event_add_str(g_ev_copy, x->name, x->v.s);
                break;
            case EVENT_INT:
                event_add_int(g_ev_copy, x->name, x->v.i);
                break;
            case EVENT_UINT:
                event_add_uint(g_ev_copy, x->name, x->v.u);
                break;
            case EVENT_BOOL:
                event_add_bool(g_ev_copy, x->name, x->v.b);
                break;
            }
        }
    }
    mutex_unlock(&g_ev_lock);
}

static void
test_event_members(void **state)
{
    struct event *ev = event_new("SOME_EVENT");
    char name[] = "abc";

    (void)state;
    event_set_sink(record_sink);
    event_add_str(ev, "id", name);
    name[0] = 'x';          /* the event keeps its own copy */
    event_add_int(ev, "i", -5);
    event_add_uint(ev, "u", UINT64_MAX);
    event_add_bool(ev, "b", true);
    event_emit(ev);
    event_set_sink(NULL);
    assert_non_null(g_ev_copy);
    assert_string_equal(g_ev_copy->name, "SOME_EVENT");
    assert_int_equal(g_ev_copy->n, 4);
    assert_string_equal(g_ev_copy->m[0].name, "id");
    assert_string_equal(g_ev_copy->m[0].v.s, "abc");
    assert_string_equal(g_ev_copy->m[1].name, "i");
    assert_int_equal(g_ev_copy->m[1].v.i, -5);
    assert_true(g_ev_copy->m[2].type == EVENT_UINT);
    assert_true(g_ev_copy->m[2].v.u == UINT64_MAX);
    assert_true(g_ev_copy->m[3].v.b);
    assert_null(event_member(g_ev_copy, "nope"));
    assert_true(g_ev_copy->time.tv_sec > 0);
    event_free(g_ev_copy);
    g_ev_copy = NULL;
}

/* The lock that orders the events, as the job lock does. */
static pthread_mutex_t g_order_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t g_next_n;                    /* by g_order_lock */
static struct event_queue g_queue = EVENT_QUEUE_INITIALIZER(g_queue);
static bool g_flush_ok = true;              /* cleared on a late event */

static void *
queue_poster(void *opaque UNUSED)
{
    for (int i = 0; i < EV_PER_THREAD; i++) {
        struct event *ev = event_new("ORDERED");
        int64_t n;

        mutex_lock(&g_order_lock);
        n = g_next_n++;
        event_add_int(ev, "n", n);
        event_queue_push(&g_queue, ev);
        mutex_unlock(&g_order_lock);
        event_queue_flush(&g_queue);
        /* Our event is out when flush returns. */
        mutex_lock(&g_ev_lock);
        if (g_ev_count <= n) {
            __atomic_store_n(&g_flush_ok, false, __ATOMIC_RELAXED);
        }
        mutex_unlock(&g_ev_lock);
    }
    return NULL;
}

static void
test_event_queue_order(void **state)
{
    pthread_t th[EV_THREADS];

    (void)state;
    event_set_sink(record_sink);
    for (int i = 0; i < EV_THREADS; i++) {
        thread_create(&th[i], "queue-poster", queue_poster, NULL);
    }
    for (int i = 0; i < EV_THREADS; i++) {
        thread_join(th[i]);
    }
    event_set_sink(NULL);
    assert_int_equal(g_ev_count, EV_THREADS * EV_PER_THREAD);
    for (int i = 0; i < g_ev_count; i++) {
        assert_int_equal(g_ev_seen[i], i);
    }
    assert_true(g_flush_ok);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_timers),
        cmocka_unit_test(test_watches),
        cmocka_unit_test(test_quit_from_thread),
        cmocka_unit_test(test_run_now),
        cmocka_unit_test(test_main_thread),
        cmocka_unit_test(test_event_members),
        cmocka_unit_test(test_event_queue_order),
    };
    int ret;

    assert(loop_init() == 0);
    ret = cmocka_run_group_tests(tests, NULL, NULL);
    loop_fini();
    return ret;
}
