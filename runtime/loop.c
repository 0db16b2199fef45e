/* SPDX-License-Identifier: MIT */
/*
 * The main loop (see loop.h).
 *
 * Design notes.  Watches live in a list; loop_remove_fd() only marks a
 * watch dead so that a callback can remove any watch (its own included)
 * while the loop walks the poll results; dead watches are freed between
 * iterations.  Each iteration rebuilds the pollfd array from the live
 * watches, which is cheap at the few dozen fds a daemon has.  Timers are a
 * list sorted by deadline.  Cross-thread calls go on a mutex-protected
 * FIFO and an eventfd write wakes poll(); the main thread pops and runs
 * them one at a time with the lock dropped, so a call may post more calls
 * (they run in the next round: a round ends at the last call queued when
 * it began), and a queued call stays findable by loop_call_run_now()
 * until its turn.  Signals are blocked in every thread and read from a
 * signalfd.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "runtime/loop.h"
#include "util.h"

struct loop_watch {
    int fd;
    short events;
    bool dead;
    loop_fd_fn *fn;
    void *opaque;
    TAILQ_ENTRY(loop_watch) link;
};

struct loop_timer {
    int64_t deadline;           /* clock_ns() */
    loop_call_fn *fn;
    void *opaque;
    TAILQ_ENTRY(loop_timer) link;
};

struct loop_msg {
    loop_call_fn *fn;
    void *opaque;
    uint64_t seq;
    STAILQ_ENTRY(loop_msg) link;
};
STAILQ_HEAD(loop_msg_list, loop_msg);

struct loop_sig {
    int signo;
    loop_signal_fn *fn;
    void *opaque;
};

/* Main thread only, except where noted. */
static TAILQ_HEAD(, loop_watch) g_watches = TAILQ_HEAD_INITIALIZER(g_watches);
static TAILQ_HEAD(, loop_timer) g_timers = TAILQ_HEAD_INITIALIZER(g_timers);
static bool g_initialized;
static int g_event_fd = -1;
static int g_signal_fd = -1;
static struct loop_watch *g_event_watch;
static struct loop_watch *g_signal_watch;
static struct loop_sig g_sigs[16];
static size_t g_nsigs;
static sigset_t g_sigmask;

/* The call queue.  Protected by: g_msg_lock. */
static struct lock g_msg_lock = LOCK_INITIALIZER(LOOP_CALLS);
static struct loop_msg_list g_msgs = STAILQ_HEAD_INITIALIZER(g_msgs);
static uint64_t g_msg_seq;

/* Set by loop_quit() from any thread. */
static int g_quit;

static void
wake(void)
{
    uint64_t one = 1;

    if (g_event_fd >= 0) {
        /* EAGAIN means the counter is already non-zero: awake anyway. */
        ssize_t r = write(g_event_fd, &one, sizeof(one));
        (void)r;
    }
}

/* Pop the first queued call if it was posted by sequence number last. */
static struct loop_msg *
pop_call(uint64_t last)
{
    struct loop_msg *m;

    mutex_lock(&g_msg_lock);
    m = STAILQ_FIRST(&g_msgs);
    if (m && m->seq <= last) {
        STAILQ_REMOVE_HEAD(&g_msgs, link);
    } else {
        m = NULL;
    }
    mutex_unlock(&g_msg_lock);
    return m;
}

static void
run_calls(void)
{
    struct loop_msg *m;
    uint64_t last;

    mutex_lock(&g_msg_lock);
    last = g_msg_seq;
    mutex_unlock(&g_msg_lock);
    while ((m = pop_call(last))) {
        m->fn(m->opaque);
        free(m);
    }
}

static void
event_cb(int fd, short revents UNUSED, void *opaque UNUSED)
{
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));

    (void)r;
    run_calls();
}

static void
signal_cb(int fd, short revents UNUSED, void *opaque UNUSED)
{
    struct signalfd_siginfo si;

    while (read(fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        for (size_t i = 0; i < g_nsigs; i++) {
            if (g_sigs[i].signo == (int)si.ssi_signo) {
                g_sigs[i].fn((int)si.ssi_signo, g_sigs[i].opaque);
            }
        }
    }
}

int
loop_init(void)
{
    assert_main_thread();
    if (g_initialized) {
        return 0;
    }
    g_event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g_event_fd < 0) {
        return -errno;
    }
    sigemptyset(&g_sigmask);
    g_initialized = true;
    g_event_watch = loop_add_fd(g_event_fd, POLLIN, event_cb, NULL);
    return 0;
}

void
loop_fini(void)
{
    struct loop_watch *w;
    struct loop_timer *t;

    assert_main_thread();
    if (!g_initialized) {
        return;
    }
    run_calls();
    while ((w = TAILQ_FIRST(&g_watches))) {
        TAILQ_REMOVE(&g_watches, w, link);
        free(w);
    }
    while ((t = TAILQ_FIRST(&g_timers))) {
        TAILQ_REMOVE(&g_timers, t, link);
        free(t);
    }
    close(g_event_fd);
    g_event_fd = -1;
    if (g_signal_fd >= 0) {
        close(g_signal_fd);
        g_signal_fd = -1;
    }
    g_event_watch = g_signal_watch = NULL;
    g_nsigs = 0;
    g_initialized = false;
}

bool
loop_is_main_thread(void)
{
    /* 0: not known yet; 1: main; 2: another thread. */
    static __thread int is_main;

    if (!is_main) {
        is_main = gettid() == getpid() ? 1 : 2;
    }
    return is_main == 1;
}

struct loop_watch *
loop_add_fd(int fd, short events, loop_fd_fn *fn, void *opaque)
{
    struct loop_watch *w = xzalloc(sizeof(*w));

    assert_main_thread();
    w->fd = fd;
    w->events = events;
    w->fn = fn;
    w->opaque = opaque;
    TAILQ_INSERT_TAIL(&g_watches, w, link);
    return w;
}

void
loop_watch_set_events(struct loop_watch *w, short events)
{
    assert_main_thread();
    w->events = events;
}

void
loop_remove_fd(struct loop_watch *w)
{
    assert_main_thread();
    if (w) {
        w->dead = true;
    }
}

struct loop_timer *
loop_timer_add(int64_t delay_ns, loop_call_fn *fn, void *opaque)
{
    struct loop_timer *t = xzalloc(sizeof(*t));
    struct loop_timer *it;

    assert_main_thread();
    t->deadline = clock_ns() + delay_ns;
    t->fn = fn;
    t->opaque = opaque;
    TAILQ_FOREACH(it, &g_timers, link) {
        if (it->deadline > t->deadline) {
            TAILQ_INSERT_BEFORE(it, t, link);
            return t;
        }
    }
    TAILQ_INSERT_TAIL(&g_timers, t, link);
    return t;
}

void
loop_timer_del(struct loop_timer *t)
{
    assert_main_thread();
    if (t) {
        TAILQ_REMOVE(&g_timers, t, link);
        free(t);
    }
}

void
loop_call(loop_call_fn *fn, void *opaque)
{
    struct loop_msg *m = xmalloc(sizeof(*m));

    m->fn = fn;
    m->opaque = opaque;
    mutex_lock(&g_msg_lock);
    m->seq = ++g_msg_seq;
    STAILQ_INSERT_TAIL(&g_msgs, m, link);
    mutex_unlock(&g_msg_lock);
    wake();
}

bool
loop_call_run_now(loop_call_fn *fn, void *opaque)
{
    struct loop_msg *m;

    assert_main_thread();
    mutex_lock(&g_msg_lock);
    STAILQ_FOREACH(m, &g_msgs, link) {
        if (m->fn == fn && m->opaque == opaque) {
            STAILQ_REMOVE(&g_msgs, m, loop_msg, link);
            break;
        }
    }
    mutex_unlock(&g_msg_lock);
    if (!m) {
        return false;
    }
    m->fn(m->opaque);
    free(m);
    return true;
}

int
loop_add_signal(int signo, loop_signal_fn *fn, void *opaque)
{
    int fd;

    assert_main_thread();
    if (g_nsigs == ARRAY_SIZE(g_sigs)) {
        return -ENOSPC;
    }
    sigaddset(&g_sigmask, signo);
    pthread_sigmask(SIG_BLOCK, &g_sigmask, NULL);
    fd = signalfd(g_signal_fd, &g_sigmask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) {
        return -errno;
    }
    if (g_signal_fd < 0) {
        g_signal_fd = fd;
        g_signal_watch = loop_add_fd(fd, POLLIN, signal_cb, NULL);
    }
    g_sigs[g_nsigs].signo = signo;
    g_sigs[g_nsigs].fn = fn;
    g_sigs[g_nsigs].opaque = opaque;
    g_nsigs++;
    return 0;
}

static void
reap_dead(void)
{
    struct loop_watch *w, *next;

    for (w = TAILQ_FIRST(&g_watches); w; w = next) {
        next = TAILQ_NEXT(w, link);
        if (w->dead) {
            TAILQ_REMOVE(&g_watches, w, link);
            free(w);
        }
    }
}

static void
run_timers(void)
{
    struct loop_timer *t;
    int64_t now = clock_ns();

    while ((t = TAILQ_FIRST(&g_timers)) && t->deadline <= now) {
        loop_call_fn *fn = t->fn;
        void *opaque = t->opaque;

        TAILQ_REMOVE(&g_timers, t, link);
        free(t);
        fn(opaque);
    }
}

void
loop_iterate(int timeout_ms)
{
    struct loop_watch *w;
    struct pollfd *fds;
    struct loop_watch **ws;
    size_t n = 0, i;
    struct loop_timer *t;
    int ret;

    assert_main_thread();
    reap_dead();
    TAILQ_FOREACH(w, &g_watches, link) {
        n++;
    }
    fds = xcalloc(n ? n : 1, sizeof(*fds));
    ws = xcalloc(n ? n : 1, sizeof(*ws));
    i = 0;
    TAILQ_FOREACH(w, &g_watches, link) {
        fds[i].fd = w->fd;
        fds[i].events = w->events;
        ws[i] = w;
        i++;
    }
    t = TAILQ_FIRST(&g_timers);
    if (t) {
        int64_t left = t->deadline - clock_ns();
        int ms = left <= 0 ? 0 : (int)MIN(div_round_up(left, 1000000), 60000);

        if (timeout_ms < 0 || ms < timeout_ms) {
            timeout_ms = ms;
        }
    }
    ret = poll(fds, n, timeout_ms);
    if (ret > 0) {
        for (i = 0; i < n; i++) {
            /* A callback may have killed a later watch: check each time. */
            if (fds[i].revents && !ws[i]->dead) {
                ws[i]->fn(ws[i]->fd, fds[i].revents, ws[i]->opaque);
            }
        }
    }
    free(fds);
    free(ws);
    run_timers();
}

void
loop_run(void)
{
    /* Quitting is final: a loop_quit() posted before loop_run() counts. */
    while (!__atomic_load_n(&g_quit, __ATOMIC_ACQUIRE)) {
        loop_iterate(-1);
    }
}

void
loop_quit(void)
{
    __atomic_store_n(&g_quit, 1, __ATOMIC_RELEASE);
    wake();
}
