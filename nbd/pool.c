/* SPDX-License-Identifier: MIT */
/*
 * The NBD server's shared threads.  Every connection's socket sits in one
 * epoll set, armed one-shot: the thread that gets an event owns the work
 * it names until it arms the socket again, so epoll never gives one
 * connection to two threads.  Work that must run without an event (a
 * reader role passed on by a request about to sleep) goes on a run queue,
 * and an eventfd in the same set (edge-triggered) wakes one thread for it.
 *
 * Idle threads all sleep in epoll_wait() on the shared set; the kernel
 * wakes one per event and that thread does the work itself, so a sleeping
 * connection costs one wake-up, as a thread blocked in read() would.
 * Threads start on demand so that one is always waiting while the others
 * work, up to NBDPOOL_MAX_THREADS; past that, events and queued work wait
 * until a thread comes back.  A thread idle for NBDPOOL_IDLE_SECS leaves
 * while another one is idle too.  The pool lives as long as the process.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "nbd/nbd-internal.h"
#include "util.h"

#define NBDPOOL_IDLE_SECS 10

static struct {
    pthread_once_t once;
    int epfd;
    int bell;                  /* eventfd: the run queue has work */
    /* Protected by: lock. */
    struct lock lock;
    TAILQ_HEAD(, nbdpool_item) runq;
    int nthreads;
    int idle;                  /* threads in (or entering) epoll_wait */
} g_pool = {
    .once = PTHREAD_ONCE_INIT,
    .lock = LOCK_INITIALIZER(NBD_POOL),
};

static void *pool_thread(void *opaque);

/* Keep one thread waiting for events while others work.  Caller holds
 * g_pool.lock. */
static void
spawn_if_needed_locked(void)
{
    pthread_attr_t attr;
    pthread_t t;

    if (g_pool.idle > 0 || g_pool.nthreads >= NBDPOOL_MAX_THREADS) {
        return;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &attr, pool_thread, NULL) == 0) {
        pthread_setname_np(t, "nbd-pool");
        __atomic_add_fetch(&g_pool.nthreads, 1, __ATOMIC_RELAXED);
        g_pool.idle++;   /* counted idle from now, so no second spawn */
    }
    pthread_attr_destroy(&attr);
}

static void
ring_bell(void)
{
    uint64_t one = 1;

    while (write(g_pool.bell, &one, sizeof(one)) < 0 && errno == EINTR) {
        /* again */
    }
}

static void *
pool_thread(void *opaque UNUSED)
{
    bool counted_idle = true;   /* spawn_if_needed_locked counted us */

    for (;;) {
        struct nbdpool_item *it;
        struct epoll_event ev;
        int n;

        mutex_lock(&g_pool.lock);
        if (counted_idle) {
            g_pool.idle--;
            counted_idle = false;
        }
        it = TAILQ_FIRST(&g_pool.runq);
        if (it) {
            TAILQ_REMOVE(&g_pool.runq, it, qlink);
            if (!TAILQ_EMPTY(&g_pool.runq) && g_pool.idle > 0) {
                ring_bell();   /* more queued: wake another thread */
            }
            spawn_if_needed_locked();
            mutex_unlock(&g_pool.lock);
            it->run(it, 0);
            continue;
        }
        g_pool.idle++;
        mutex_unlock(&g_pool.lock);

        n = epoll_wait(g_pool.epfd, &ev, 1, NBDPOOL_IDLE_SECS * 1000);

        mutex_lock(&g_pool.lock);
        g_pool.idle--;
        if (n == 0 && g_pool.idle > 0 && TAILQ_EMPTY(&g_pool.runq)) {
            __atomic_sub_fetch(&g_pool.nthreads, 1, __ATOMIC_RELAXED);
            mutex_unlock(&g_pool.lock);
            return NULL;
        }
        if (n <= 0 || ev.data.ptr == NULL) {
            mutex_unlock(&g_pool.lock);
            if (n > 0) {
                uint64_t v;

                if (read(g_pool.bell, &v, sizeof(v)) < 0) {
                    /* EAGAIN: another thread took it */
                }
            }
            continue;   /* the run queue comes first */
        }
        spawn_if_needed_locked();
        mutex_unlock(&g_pool.lock);
        it = ev.data.ptr;
        it->run(it, ev.events);
    }
}

static void
pool_init(void)
{
    /* Edge-triggered: each ring wakes one idle thread.  Level-triggered,
     * the bell stayed ready until a thread read it, and epoll woke every
     * idle thread for it (each then queued on g_pool.lock). */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};

    TAILQ_INIT(&g_pool.runq);
    g_pool.epfd = epoll_create1(EPOLL_CLOEXEC);
    g_pool.bell = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g_pool.epfd < 0 || g_pool.bell < 0 ||
        epoll_ctl(g_pool.epfd, EPOLL_CTL_ADD, g_pool.bell, &ev) < 0) {
        fprintf(stderr, "lockstep: cannot set up the NBD server's threads: "
                "%s\n", strerror(errno));
        abort();
    }
}

void
nbdpool_start(void)
{
    pthread_once(&g_pool.once, pool_init);
    mutex_lock(&g_pool.lock);
    spawn_if_needed_locked();
    mutex_unlock(&g_pool.lock);
}

void
nbdpool_watch(int fd, struct nbdpool_item *it, uint32_t events)
{
    struct epoll_event ev = {
        .events = events | EPOLLONESHOT | EPOLLRDHUP,
        .data.ptr = it,
    };
    int op = it->watched ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;

    /* Before the call: once armed, another thread may own the item. */
    it->watched = true;
    if (epoll_ctl(g_pool.epfd, op, fd, &ev) < 0) {
        /* Only ENOMEM (kernel memory for the item) can fail here. */
        fprintf(stderr, "lockstep: epoll_ctl: %s\n", strerror(errno));
        abort();
    }
}

void
nbdpool_unwatch(int fd, struct nbdpool_item *it)
{
    if (it->watched) {
        epoll_ctl(g_pool.epfd, EPOLL_CTL_DEL, fd, NULL);
        it->watched = false;
    }
}

void
nbdpool_queue(struct nbdpool_item *it)
{
    mutex_lock(&g_pool.lock);
    TAILQ_INSERT_TAIL(&g_pool.runq, it, qlink);
    if (g_pool.idle > 0) {
        ring_bell();
    } else {
        spawn_if_needed_locked();
    }
    mutex_unlock(&g_pool.lock);
}

bool
nbdpool_may_linger(void)
{
    /* A hint: a stale count only shifts when lingering stops. */
    return __atomic_load_n(&g_pool.nthreads, __ATOMIC_RELAXED) <
           NBDPOOL_MAX_THREADS / 2;
}
