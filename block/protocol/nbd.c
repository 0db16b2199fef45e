/* SPDX-License-Identifier: MIT */
/*
 * The "nbd" protocol driver: a node whose content lives on an NBD server,
 * reached with libnbd.  Options follow QEMU's BlockdevOptionsNbd: server
 * (a SocketAddress: unix path or inet host/port), export, tls-creds,
 * tls-hostname, reconnect-delay, open-timeout and x-dirty-bitmap; and one
 * of lockstep's own, connect-timeout (seconds one connection attempt may
 * take, default 10: QEMU 7.2 waits for a silent server without end).
 *
 * Design notes.
 *
 *   Connecting (TCP or unix connect, then the handshake) uses libnbd's
 *   asynchronous calls and a poll loop of our own, so that an attempt
 *   ends at its deadline, when a cancel fd becomes readable (shutdown), or
 *   for a reconnect inside a request, when a drain has waited too long.
 *   blockdev-add connects in the prepare step (block_prepare(): its own
 *   thread, no lock held) and open takes that connection; other opens
 *   (reopen, tools) connect in open, bounded the same way.
 *
 *   No wait on the server holds up a drain for long: once a drain has
 *   waited NBDCLI_DRAIN_PATIENCE_NS, reconnect waits give up and the
 *   poller shuts down a connection that has been silent that long while
 *   requests wait, so that they fail (-EIO) and the drain goes on.
 *   Closing never waits for the server (nbd_shutdown() would).
 *
 *   Requests use libnbd's asynchronous calls, so that many are in flight on
 *   one connection (libnbd's synchronous calls hold the handle's lock until
 *   their reply arrives).  Nobody owns a poll loop: the threads waiting for
 *   replies on a connection take turns (leader/followers): one polls the
 *   socket outside libnbd's lock and lets libnbd process what arrived, which
 *   runs the completion callbacks of whichever requests finished; the
 *   others sleep, each on its own condition variable in the connection's
 *   waiter list.  After each round the poller wakes only the waiters whose
 *   request finished, and when its own request finished, one other waiter
 *   to take over the polling (a broadcast woke every follower for every
 *   reply: at queue depth 16 most wake-ups found nothing to do).
 *   Completion callbacks only set flags: they run under libnbd's handle
 *   lock and must not take s->lock (lock order: s->lock, then libnbd's).
 *
 *   libnbd sends a new command from inside the submitting call while the
 *   connection is idle; only what the socket did not take makes the
 *   connection want to write.  So the poller, which may be sleeping in
 *   poll() for POLLIN only, is kicked through an eventfd only when the
 *   direction says WRITE after a submission (large writes), not per
 *   request.  A command queued behind a reply being received is sent by
 *   the poller itself when that reply is complete.
 *
 *   When the server offers CAN_MULTI_CONN (then a flush on one connection
 *   covers the writes acknowledged on the others, spec) the driver may use
 *   up to NBDCLI_POOL_MAX connections, otherwise it uses one.  It fills
 *   them in order: a request goes to the first connection with fewer than
 *   NBDCLI_CONN_DEPTH requests in flight, so another connection opens only
 *   for deep queues.
 *
 *   A connection whose server went away has all its requests failed by
 *   libnbd; the next request reconnects it once nothing is in flight on
 *   it.  With reconnect-delay a failed request is retried on a new
 *   connection until reconnect-delay seconds after the failure and only
 *   then fails with -EIO, as QEMU's client does.  Without reconnect-delay a
 *   dead server fails requests at once (-EIO).
 *
 *   TLS (tls-creds: a tls-creds-x509 or tls-creds-psk object with
 *   endpoint=client) is libnbd's: every connection requires it, with the
 *   object's directory (QEMU's file names, which libnbd reads too) or
 *   keys.psk and user name (default "qemu", as QEMU's).  The server's
 *   certificate must be signed by the object's CA and, over TCP, name
 *   server.host.  libnbd 1.14 checks the name it connected to and, on a
 *   unix socket, none; so tls-hostname must equal server.host (QEMU
 *   takes any name, and on a unix socket requires one), and there is no
 *   priority string: both are refused rather than ignored.  The node
 *   holds a reference to the credentials, so object-del does not take
 *   them from a running node.
 *
 *   x-dirty-bitmap (QEMU's experimental option) asks for the context
 *   qemu:dirty-bitmap:NAME instead of base:allocation and reads its flags
 *   as if they were base:allocation's, so dirty areas (bit 0) look like
 *   holes: qemu-img map shows them as "data": false.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>

#include "crypto/tls-creds.h"
#include "lockstep/driver.h"
#include "util.h"

#define NBDCLI_POOL_MAX 4
/*
 * Requests in flight on one connection before the next one is used.  One
 * busy connection is cheaper for both sides than several half-idle ones:
 * the server reads many requests per wake-up and the poller here gets
 * many replies per poll.  Replicated 4k writes at queue depth 16 spread
 * round robin over four connections cost the secondary 26-39 us of CPU
 * and 1.6 context switches per request, on one connection 18 us and 0.65.
 */
#define NBDCLI_CONN_DEPTH 16
/*
 * connect-timeout's default, in seconds: how long one connection attempt
 * (connect plus handshake) may take.  QEMU 7.2 has no such bound: its
 * client waits as long as the server keeps the socket open.
 */
#define NBDCLI_CONNECT_TIMEOUT 10
/*
 * How long requests keep waiting on their peer once a drain waits for
 * them: then reconnects give up and a connection that has received
 * nothing for that long is shut down, so that its requests fail (-EIO)
 * and the drain, and the main thread behind it, can go on.
 */
#define NBDCLI_DRAIN_PATIENCE_NS (5 * 1000000000LL)
/* NBD lengths are 32-bit; keep requests 64 KiB-aligned below that. */
#define NBDCLI_MAX_EFFECT (1U << 31)

/* One connection.  h is replaced only while inflight == 0 and under
 * s->lock, so a request that counted itself in inflight may use h without
 * the lock. */
struct nbdcli_waiter;

struct nbdcli_conn {
    struct nbd_handle *h;   /* NULL when closed.  Protected by: s->lock */
    int inflight;           /* Protected by: s->lock */
    bool polling;           /* a waiter is polling h.  Protected by: s->lock */
    bool reconnecting;      /* Protected by: s->lock */
    /* Threads sleeping until their request finishes or the poller hands
     * over.  Protected by: s->lock */
    TAILQ_HEAD(, nbdcli_waiter) waiters;
    int kick_fd;            /* eventfd: wakes the poller */
    /* clock_ns() of the last byte received, or of the first request sent
     * on an idle connection: how long the server has been silent.
     * Atomic. */
    int64_t last_rx;
};

struct nbdcli_state {
    char *path;             /* unix */
    char *host, *port;      /* inet */
    char *export;
    char *meta_ctx;         /* base:allocation or the bitmap's context */
    char *url;              /* refresh_filename's answer (main thread) */
    struct tls_creds *tls;  /* tls-creds (client endpoint), or NULL */
    int64_t reconnect_delay;   /* seconds */
    int64_t open_timeout;      /* seconds */
    int64_t connect_timeout;   /* seconds, > 0 */

    /* Learnt at open; constant afterwards. */
    uint64_t size;
    bool can_flush, can_fua, can_trim, can_zero, can_fast_zero;
    bool has_meta;
    bool read_only_export;

    /* The connections.  Protected by: lock (see struct nbdcli_conn). */
    struct lock lock;
    pthread_cond_t cond;
    struct nbdcli_conn conns[NBDCLI_POOL_MAX];
    int nconns;
    unsigned next;          /* round robin */
};

static const struct block_opt nbd_opts[] = {
    {"server", BLOCK_OPT_OBJECT, true, NULL},
    {"export", BLOCK_OPT_STRING, false, NULL},
    {"tls-creds", BLOCK_OPT_STRING, false, NULL},
    {"tls-hostname", BLOCK_OPT_STRING, false, NULL},
    {"x-dirty-bitmap", BLOCK_OPT_STRING, false, NULL},
    {"reconnect-delay", BLOCK_OPT_INT, false, NULL},
    {"open-timeout", BLOCK_OPT_INT, false, NULL},
    {"connect-timeout", BLOCK_OPT_INT, false, NULL},
    {NULL, 0, false, NULL},
};

/* -errno of the last libnbd failure on this thread; -EIO when unknown and
 * for a lost connection (QEMU reports a dead server as EIO). */
static int
nbdcli_errno(void)
{
    int e = nbd_get_errno();

    if (e == 0 || e == ENOTCONN || e == ECONNRESET || e == EPIPE ||
        e == ESHUTDOWN) {
        return -EIO;
    }
    return -e;
}

static bool
nbdcli_dead(struct nbd_handle *h)
{
    return nbd_aio_is_dead(h) > 0 || nbd_aio_is_closed(h) > 0;
}

static bool
fd_readable(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    return fd >= 0 && poll(&pfd, 1, 0) > 0;
}

/*
 * Has a drain been waiting for requests long enough that requests stop
 * waiting on their peer (see the design notes)?  Any thread.
 */
static bool
nbdcli_drain_impatient(void)
{
    int64_t since = block_drain_waiting_since();

    return since && clock_ns() - since >= NBDCLI_DRAIN_PATIENCE_NS;
}

/* Where s connects to, for messages. */
static char *
nbdcli_addr(struct nbdcli_state *s)
{
    return s->path ? xstrdup(s->path) : xasprintf("%s:%s", s->host, s->port);
}

/* Close a connection without waiting for the server: the disconnect
 * command is sent if the socket takes it, never waited for. */
static void
nbdcli_hangup(struct nbd_handle *h)
{
    if (!h) {
        return;
    }
    if (nbd_aio_is_ready(h) > 0) {
        nbd_aio_disconnect(h, 0);
    }
    nbd_close(h);
}

/* Require TLS on h with creds (see the design notes). */
static int
nbdcli_set_tls(struct nbd_handle *h, struct tls_creds *creds)
{
    const struct tls_creds_options *o = tls_creds_options(creds);
    CLEANUP_FREE char *psk = NULL;

    if (nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) {
        return -1;
    }
    if (o->type == TLS_CREDS_PSK) {
        psk = xasprintf("%s/keys.psk", o->dir);
        return nbd_set_tls_psk_file(h, psk) < 0 ||
               nbd_set_tls_username(h, o->username ? o->username
                                                   : "qemu") < 0 ? -1 : 0;
    }
    return nbd_set_tls_certificates(h, o->dir) < 0 ||
           nbd_set_tls_verify_peer(h, o->verify_peer) < 0 ? -1 : 0;
}

/*
 * One connection attempt: connect and handshake, driven here with
 * libnbd's asynchronous calls so that nothing waits past deadline
 * (clock_ns()), a readable cancel_fd (shutdown) or, for a reconnect
 * inside a request (in_request), an impatient drain.  NULL with *errp
 * set on failure.  Any thread; no lock held.
 */
static struct nbd_handle *
nbdcli_connect(struct nbdcli_state *s, int64_t deadline, int cancel_fd,
               bool in_request, struct err **errp)
{
    struct nbd_handle *h = nbd_create();
    CLEANUP_FREE char *addr = nbdcli_addr(s);
    const char *why = NULL;
    int r;

    if (!h) {
        err_setf(errp, "Failed to create NBD handle: %s", nbd_get_error());
        return NULL;
    }
    if (nbd_set_export_name(h, s->export) < 0 ||
        nbd_add_meta_context(h, s->meta_ctx) < 0 ||
        (s->tls && nbdcli_set_tls(h, s->tls) < 0)) {
        err_setf(errp, "%s", nbd_get_error());
        nbd_close(h);
        return NULL;
    }
    r = s->path ? nbd_aio_connect_unix(h, s->path)
                : nbd_aio_connect_tcp(h, s->host, s->port);
    while (r >= 0 && nbd_aio_is_ready(h) <= 0) {
        unsigned dir = nbd_aio_get_direction(h);
        struct pollfd pfd[2] = {
            {.fd = nbd_aio_get_fd(h),
             .events = (short)(((dir & LIBNBD_AIO_DIRECTION_READ) ?
                                POLLIN : 0) |
                               ((dir & LIBNBD_AIO_DIRECTION_WRITE) ?
                                POLLOUT : 0))},
            {.fd = cancel_fd, .events = POLLIN},
        };
        int64_t left = deadline - clock_ns();

        if (nbdcli_dead(h) || pfd[0].fd < 0) {
            r = -1;
            break;
        }
        if (left <= 0) {
            why = "timed out";
            break;
        }
        if (in_request && nbdcli_drain_impatient()) {
            why = "given up: the graph is being changed";
            break;
        }
        thread_may_block();
        if (poll(pfd, cancel_fd >= 0 ? 2 : 1,
                 (int)MIN(div_round_up(left, 1000000), 100)) < 0) {
            continue;
        }
        if (pfd[1].revents) {
            why = "cancelled";
            break;
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            r = nbd_aio_notify_read(h);
        } else if (pfd[0].revents & POLLOUT) {
            r = nbd_aio_notify_write(h);
        }
    }
    if (why) {
        err_setf(errp, "Failed to connect to '%s': %s (connect-timeout is "
                 "%" PRId64 " s)", addr, why, s->connect_timeout);
        nbd_close(h);
        return NULL;
    }
    if (r < 0) {
        const char *msg = nbd_get_error();

        err_setf(errp, "Failed to connect to '%s': %s", addr,
                 msg ? msg : "the server closed the connection");
        nbd_close(h);
        return NULL;
    }
    return h;
}

/*
 * Connect for opening the node: with open-timeout, attempts repeat until
 * it has passed (QEMU's rule); each attempt is bounded by
 * connect-timeout.  cancel_fd (or -1) ends the wait.
 */
static struct nbd_handle *
nbdcli_connect_for_open(struct nbdcli_state *s, int cancel_fd,
                        struct err **errp)
{
    int64_t end = clock_ns() + s->open_timeout * 1000000000LL;

    for (;;) {
        int64_t deadline = clock_ns() + s->connect_timeout * 1000000000LL;
        struct err *local = NULL;
        struct nbd_handle *h;
        struct pollfd pfd = {.fd = cancel_fd, .events = POLLIN};

        if (s->open_timeout > 0) {
            deadline = MIN(deadline, MAX(end, clock_ns() + 1000000));
        }
        h = nbdcli_connect(s, deadline, cancel_fd, false, &local);
        if (h || clock_ns() >= end || fd_readable(cancel_fd)) {
            err_propagate(errp, local);
            return h;
        }
        err_free(local);
        thread_may_block();
        poll(&pfd, cancel_fd >= 0 ? 1 : 0, 100);
    }
}

/*
 * One request in flight, on the submitting thread's stack.  libnbd holds
 * it from submission until it calls the .free callback (also when the
 * submission fails), which is the last time it touches the request: so the
 * submitter waits for "released", not for the completion callback.
 */
struct nbdcli_req {
    bool released;          /* atomic; set by the .free callback */
    int err;                /* positive errno from the server or libnbd */
    /* block status: the first extent of the wanted context */
    const char *ctx;
    uint64_t ext_len;
    uint32_t ext_flags;
    bool ext_found;
};

/*
 * A thread sleeping in nbdcli_wait_put() (on its stack).  The poller takes
 * it off the connection's list under s->lock and wakes it after dropping
 * s->lock, so the woken thread does not run into s->lock at once; that is
 * why it has its own lock.  The waker's unlock of w->lock is its last
 * touch: the sleeper returns only after taking w->lock.
 */
struct nbdcli_waiter {
    struct lock lock;
    pthread_cond_t cond;
    bool woken;                     /* Protected by: lock */
    struct nbdcli_req *req;
    TAILQ_ENTRY(nbdcli_waiter) link;   /* Protected by: s->lock */
    struct nbdcli_waiter *next_wake;   /* owned by the waker once off the
                                        * list */
};

static bool
nbdcli_req_finished(struct nbdcli_req *req)
{
    return __atomic_load_n(&req->released, __ATOMIC_ACQUIRE);
}

/* Runs under libnbd's handle lock, after the completion callback (or
 * instead of it when the command was never submitted). */
static void
nbdcli_free_cb(void *opaque)
{
    struct nbdcli_req *req = opaque;

    __atomic_store_n(&req->released, true, __ATOMIC_RELEASE);
}

/* Runs under libnbd's handle lock: flags only, never s->lock. */
static int
nbdcli_done_cb(void *opaque, int *error)
{
    struct nbdcli_req *req = opaque;

    req->err = *error;
    return 1;
}

static int
nbdcli_extent_cb(void *opaque, const char *metacontext,
                 uint64_t offset UNUSED, uint32_t *entries,
                 size_t nr_entries, int *error UNUSED)
{
    struct nbdcli_req *req = opaque;

    if (strcmp(metacontext, req->ctx) == 0 && nr_entries >= 2 &&
        !req->ext_found) {
        req->ext_len = entries[0];
        req->ext_flags = entries[1];
        req->ext_found = true;
    }
    return 0;
}

static void
nbdcli_kick(struct nbdcli_conn *c)
{
    uint64_t one = 1;

    if (write(c->kick_fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, the poller wakes anyway. */
    }
}

/*
 * A drain waits for this connection's requests and its server has said
 * nothing for NBDCLI_DRAIN_PATIENCE_NS: shut the socket down, so that
 * libnbd fails every request on it (they may reconnect unless the drain
 * is still waiting).  Called by the poller.
 */
static void
nbdcli_check_silence(struct nbdcli_conn *c, int fd)
{
    int64_t silent = clock_ns() - __atomic_load_n(&c->last_rx,
                                                  __ATOMIC_RELAXED);

    if (silent >= NBDCLI_DRAIN_PATIENCE_NS && nbdcli_drain_impatient()) {
        shutdown(fd, SHUT_RDWR);
    }
}

/* The leader's turn: wait for the socket (or a kick) and let libnbd work. */
static void
nbdcli_poll_once(struct nbdcli_conn *c)
{
    struct nbd_handle *h = c->h;
    unsigned dir = nbd_aio_get_direction(h);
    int fd = nbd_aio_get_fd(h);
    struct pollfd pfd[2] = {
        {.fd = fd, .events = (short)(((dir & LIBNBD_AIO_DIRECTION_READ) ?
                                      POLLIN : 0) |
                                     ((dir & LIBNBD_AIO_DIRECTION_WRITE) ?
                                      POLLOUT : 0))},
        {.fd = c->kick_fd, .events = POLLIN},
    };
    uint64_t v;

    if (fd < 0) {
        /* Closed or dead: libnbd has already failed every command. */
        sleep_ns(10 * 1000 * 1000);
        return;
    }
    thread_may_block();
    if (poll(pfd, 2, 200) <= 0) {
        nbdcli_check_silence(c, fd);
        return;
    }
    if (pfd[1].revents & POLLIN) {
        if (read(c->kick_fd, &v, sizeof(v)) < 0) {
            /* nothing to drain */
        }
    }
    if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        __atomic_store_n(&c->last_rx, clock_ns(), __ATOMIC_RELAXED);
        nbd_aio_notify_read(h);
    } else if (pfd[0].revents & POLLOUT) {
        nbd_aio_notify_write(h);
    }
}

/*
 * The connection for the next request: the first live one whose queue is
 * shorter than NBDCLI_CONN_DEPTH, else the next in turn (which may still
 * have to be opened, or reconnected).  Called with s->lock held.
 */
static struct nbdcli_conn *
nbdcli_pick_locked(struct nbdcli_state *s)
{
    for (int i = 0; i < s->nconns; i++) {
        struct nbdcli_conn *c = &s->conns[i];

        if (c->h && !c->reconnecting && c->inflight < NBDCLI_CONN_DEPTH &&
            !nbdcli_dead(c->h)) {
            return c;
        }
    }
    return &s->conns[s->next++ % (unsigned)s->nconns];
}

/*
 * Take a connection for one request and count the request on it: a
 * connected one, reconnected first if its server went away (once nothing
 * else is in flight on it).  NULL when connecting fails and deadline has
 * passed.  Any thread.
 */
static struct nbdcli_conn *
nbdcli_get(struct nbdcli_state *s, int64_t deadline)
{
    mutex_lock(&s->lock);
    for (;;) {
        struct nbdcli_conn *c = nbdcli_pick_locked(s);
        struct nbd_handle *old, *h;

        if (c->reconnecting) {
            cond_wait(&s->cond, &s->lock);
            continue;
        }
        if (c->h && !nbdcli_dead(c->h)) {
            if (c->inflight++ == 0) {
                __atomic_store_n(&c->last_rx, clock_ns(), __ATOMIC_RELAXED);
            }
            mutex_unlock(&s->lock);
            return c;
        }
        if (c->inflight > 0) {
            /* Its requests are being failed; reconnect after them. */
            cond_wait(&s->cond, &s->lock);
            continue;
        }
        c->reconnecting = true;
        old = c->h;
        c->h = NULL;
        mutex_unlock(&s->lock);
        if (old) {
            nbd_close(old);
        }
        h = nbdcli_connect(s, clock_ns() + s->connect_timeout * 1000000000LL,
                           -1, true, NULL);
        mutex_lock(&s->lock);
        c->h = h;
        c->reconnecting = false;
        cond_broadcast(&s->cond);
        if (!h) {
            mutex_unlock(&s->lock);
            if (clock_ns() >= deadline || nbdcli_drain_impatient()) {
                return NULL;
            }
            sleep_ns(100 * 1000 * 1000);
            mutex_lock(&s->lock);
        }
    }
}

/*
 * After a poll round: take off c's list the waiters whose request finished
 * and, when the poller is leaving (its own request finished), one more to
 * poll next; the caller wakes them with nbdcli_wake() once it dropped
 * s->lock.  Called with s->lock held.
 */
static struct nbdcli_waiter *
nbdcli_collect_locked(struct nbdcli_conn *c, bool need_poller)
{
    struct nbdcli_waiter *w = TAILQ_FIRST(&c->waiters);
    struct nbdcli_waiter *wake = NULL;

    while (w) {
        struct nbdcli_waiter *next = TAILQ_NEXT(w, link);
        bool take = nbdcli_req_finished(w->req);

        if (!take && need_poller) {
            take = true;
            need_poller = false;
        }
        if (take) {
            TAILQ_REMOVE(&c->waiters, w, link);
            w->next_wake = wake;
            wake = w;
        }
        w = next;
    }
    return wake;
}

/* Wake what nbdcli_collect_locked() took; no lock held. */
static void
nbdcli_wake(struct nbdcli_waiter *w)
{
    while (w) {
        struct nbdcli_waiter *next = w->next_wake;

        mutex_lock(&w->lock);
        w->woken = true;
        cond_signal(&w->cond);
        mutex_unlock(&w->lock);   /* w may be gone from here on */
        w = next;
    }
}

/* Sleep on c's list until a poller wakes us.  Called with s->lock held;
 * returns with it held. */
static void
nbdcli_sleep(struct nbdcli_state *s, struct nbdcli_conn *c,
             struct nbdcli_req *req, struct nbdcli_waiter *wake)
{
    struct nbdcli_waiter w = {.req = req};

    lock_init(&w.lock, LOCK_NBDCLI_WAITER);
    cond_init(&w.cond);
    TAILQ_INSERT_TAIL(&c->waiters, &w, link);
    mutex_unlock(&s->lock);
    nbdcli_wake(wake);
    mutex_lock(&w.lock);
    while (!w.woken) {
        cond_wait(&w.cond, &w.lock);
    }
    mutex_unlock(&w.lock);
    cond_destroy(&w.cond);
    mutex_destroy(&w.lock);
    mutex_lock(&s->lock);
}

/* Uncount a request on c; *dead says whether c's server went away.
 * Called with s->lock held. */
static void
nbdcli_put_locked(struct nbdcli_state *s, struct nbdcli_conn *c, bool *dead)
{
    *dead = nbdcli_dead(c->h);
    c->inflight--;
    if (c->inflight == 0 || *dead) {
        cond_broadcast(&s->cond);   /* a reconnect may wait for this */
    }
}

/*
 * Wait for req (submitted on c) to finish, then uncount it; *dead says
 * whether the connection was dead by then.
 */
static void
nbdcli_wait_put(struct nbdcli_state *s, struct nbdcli_conn *c,
                struct nbdcli_req *req, bool *dead)
{
    struct nbdcli_waiter *wake;

    mutex_lock(&s->lock);
    /* Replies processed by libnbd during a submission (it may read while
     * a send is paused) finished requests that nobody has woken yet. */
    wake = nbdcli_collect_locked(c, false);
    while (!nbdcli_req_finished(req)) {
        if (!c->polling) {
            c->polling = true;
            mutex_unlock(&s->lock);
            nbdcli_wake(wake);
            nbdcli_poll_once(c);
            mutex_lock(&s->lock);
            c->polling = false;
            wake = nbdcli_collect_locked(c, nbdcli_req_finished(req));
        } else {
            nbdcli_sleep(s, c, req, wake);
            wake = NULL;
        }
    }
    nbdcli_put_locked(s, c, dead);
    mutex_unlock(&s->lock);
    nbdcli_wake(wake);
}

/* Uncount a request whose submission failed. */
static void
nbdcli_put(struct nbdcli_state *s, struct nbdcli_conn *c, bool *dead)
{
    mutex_lock(&s->lock);
    nbdcli_put_locked(s, c, dead);
    mutex_unlock(&s->lock);
}

/* The connection wants to write what the submission left over: make
 * sure a poller sleeping for POLLIN only sees it. */
static void
nbdcli_kick_if_writing(struct nbdcli_conn *c)
{
    if (nbd_aio_get_direction(c->h) & LIBNBD_AIO_DIRECTION_WRITE) {
        nbdcli_kick(c);
    }
}

enum nbdcli_op {
    OP_READ, OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH, OP_STATUS,
};

/* Submit one command on c for req; libnbd's cookie or -1. */
static int64_t
nbdcli_submit(struct nbdcli_conn *c, enum nbdcli_op op, uint64_t offset,
              uint64_t bytes, void *buf, uint32_t flags,
              struct nbdcli_req *req)
{
    nbd_completion_callback cb = {.callback = nbdcli_done_cb,
                                  .user_data = req,
                                  .free = nbdcli_free_cb};

    switch (op) {
    case OP_READ:
        return nbd_aio_pread(c->h, buf, bytes, offset, cb, flags);
    case OP_WRITE:
        return nbd_aio_pwrite(c->h, buf, bytes, offset, cb, flags);
    case OP_ZERO:
        return nbd_aio_zero(c->h, bytes, offset, cb, flags);
    case OP_TRIM:
        return nbd_aio_trim(c->h, bytes, offset, cb, flags);
    case OP_FLUSH:
        return nbd_aio_flush(c->h, cb, flags);
    case OP_STATUS:
        return nbd_aio_block_status(
            c->h, bytes, offset,
            (nbd_extent_callback){.callback = nbdcli_extent_cb,
                                  .user_data = req},
            cb, flags);
    }
    return -1;
}

/* The command's outcome as -errno (a lost connection is -EIO). */
static int
nbdcli_req_ret(const struct nbdcli_req *req)
{
    int ret = req->err ? -req->err : 0;

    if (ret == -ENOTCONN || ret == -ECONNRESET || ret == -EPIPE ||
        ret == -ESHUTDOWN) {
        ret = -EIO;
    }
    return ret;
}

/*
 * Run one command, reconnecting and retrying per reconnect-delay.  For
 * OP_STATUS, *st receives the extent found.  Any thread.
 */
static int
nbdcli_run(struct nbdcli_state *s, enum nbdcli_op op, uint64_t offset,
           uint64_t bytes, void *buf, uint32_t flags, struct nbdcli_req *st)
{
    int64_t deadline = clock_ns() + s->reconnect_delay * 1000000000LL;

    for (;;) {
        struct nbdcli_conn *c = nbdcli_get(s, deadline);
        struct nbdcli_req req = {.ctx = s->meta_ctx};
        bool dead;
        int ret;

        if (!c) {
            return -EIO;
        }
        if (nbdcli_submit(c, op, offset, bytes, buf, flags, &req) < 0) {
            ret = nbdcli_errno();
            nbdcli_put(s, c, &dead);
        } else {
            nbdcli_kick_if_writing(c);
            nbdcli_wait_put(s, c, &req, &dead);
            ret = nbdcli_req_ret(&req);
            if (ret == 0 && st) {
                st->ext_found = req.ext_found;
                st->ext_len = req.ext_len;
                st->ext_flags = req.ext_flags;
            }
        }
        if (ret == 0 || !dead) {
            return ret;   /* success, or the server answered an error */
        }
        if (s->reconnect_delay <= 0 || clock_ns() >= deadline ||
            nbdcli_drain_impatient()) {
            return -EIO;
        }
    }
}

static char *
sockaddr_str(json_t *server, const char *key, struct err **errp)
{
    json_t *v = json_object_get(server, key);
    int64_t i;

    if (json_is_string(v)) {
        return xstrdup(json_string_value(v));
    }
    if (json_is_integer(v) && json_value_to_int(v, &i)) {
        return xasprintf("%" PRId64, i);
    }
    err_setf(errp, "Parameter 'server.%s' is missing", key);
    return NULL;
}

static int
nbdcli_parse_server(struct nbdcli_state *s, json_t *server,
                    struct err **errp)
{
    const char *type;
    const char *key;
    json_t *v;

    if (!json_is_object(server)) {
        err_setf(errp, "Invalid parameter type for 'server', expected: "
                 "object");
        return -EINVAL;
    }
    type = json_string_value(json_object_get(server, "type"));
    if (!type) {
        err_setf(errp, "Parameter 'server.type' is missing");
        return -EINVAL;
    }
    json_object_foreach(server, key, v) {
        if (strcmp(key, "type") && strcmp(key, "path") &&
            strcmp(key, "host") && strcmp(key, "port") &&
            strcmp(key, "abstract") && strcmp(key, "ipv4") &&
            strcmp(key, "ipv6") && strcmp(key, "numeric")) {
            err_setf(errp, "Parameter 'server.%s' is unexpected", key);
            return -EINVAL;
        }
    }
    if (!strcmp(type, "unix")) {
        s->path = sockaddr_str(server, "path", errp);
        return s->path ? 0 : -EINVAL;
    }
    if (!strcmp(type, "inet")) {
        s->host = sockaddr_str(server, "host", errp);
        if (!s->host) {
            return -EINVAL;
        }
        if (json_object_get(server, "port")) {
            s->port = sockaddr_str(server, "port", errp);
            if (!s->port) {
                return -EINVAL;
            }
        } else {
            s->port = xstrdup("10809");
        }
        return 0;
    }
    err_setf(errp, "Parameter 'server.type' does not accept value '%s'",
             type);
    return -EINVAL;
}

/* Free what nbdcli_parse() set. */
static void
nbdcli_parse_free(struct nbdcli_state *s)
{
    free(s->path);
    free(s->host);
    free(s->port);
    free(s->export);
    free(s->meta_ctx);
    free(s->url);
    s->path = s->host = s->port = s->export = s->meta_ctx = s->url = NULL;
    tls_creds_put(s->tls);
    s->tls = NULL;
}

/* tls-creds and tls-hostname (see the design notes). */
static int
nbdcli_parse_tls(struct nbdcli_state *s, json_t *options, struct err **errp)
{
    const char *id = block_opt_str(options, "tls-creds", NULL);
    const char *hostname = block_opt_str(options, "tls-hostname", NULL);
    const struct tls_creds_options *o;

    if (!id) {
        if (hostname) {
            err_setf(errp, "tls-hostname is only valid with tls-creds");
            return -EINVAL;
        }
        return 0;
    }
    s->tls = tls_creds_get(id, errp);
    if (!s->tls) {
        return -EINVAL;
    }
    if (!tls_creds_check_endpoint(s->tls, TLS_ENDPOINT_CLIENT, errp)) {
        return -EINVAL;
    }
    o = tls_creds_options(s->tls);
    if (o->priority) {
        err_setf(errp, "TLS credentials '%s': priority is not supported by "
                 "the nbd driver (libnbd chooses the ciphers)", id);
        return -ENOTSUP;
    }
    if (hostname && !s->host) {
        err_setf(errp, "tls-hostname is not supported on a unix socket: "
                 "libnbd checks no certificate name there");
        return -ENOTSUP;
    }
    if (hostname && strcmp(hostname, s->host)) {
        err_setf(errp, "tls-hostname '%s' differs from server.host: libnbd "
                 "checks the certificate against the host it connects to",
                 hostname);
        return -ENOTSUP;
    }
    return 0;
}

/* Where and how to connect, from the node's options.  Any thread. */
static int
nbdcli_parse(struct nbdcli_state *s, json_t *options, struct err **errp)
{
    const char *bitmap = block_opt_str(options, "x-dirty-bitmap", NULL);
    int ret;

    s->reconnect_delay = block_opt_int(options, "reconnect-delay", 0);
    s->open_timeout = block_opt_int(options, "open-timeout", 0);
    s->connect_timeout = block_opt_int(options, "connect-timeout",
                                       NBDCLI_CONNECT_TIMEOUT);
    if (s->reconnect_delay < 0 || s->reconnect_delay > 3600 ||
        s->open_timeout < 0 || s->open_timeout > 3600) {
        err_setf(errp, "reconnect-delay and open-timeout must be between "
                 "0 and 3600");
        return -EINVAL;
    }
    if (s->connect_timeout < 1 || s->connect_timeout > 3600) {
        err_setf(errp, "connect-timeout must be between 1 and 3600");
        return -EINVAL;
    }
    ret = nbdcli_parse_server(s, json_object_get(options, "server"), errp);
    if (ret < 0) {
        nbdcli_parse_free(s);
        return ret;
    }
    s->export = xstrdup(block_opt_str(options, "export", ""));
    s->meta_ctx = bitmap ? xasprintf("qemu:dirty-bitmap:%s", bitmap) :
                  xstrdup("base:allocation");
    ret = nbdcli_parse_tls(s, options, errp);
    if (ret < 0) {
        nbdcli_parse_free(s);
    }
    return ret;
}

static void
nbdcli_free(struct nbdcli_state *s)
{
    for (int i = 0; i < NBDCLI_POOL_MAX; i++) {
        if (s->conns[i].h) {
            nbd_close(s->conns[i].h);
            s->conns[i].h = NULL;
        }
        if (s->conns[i].kick_fd >= 0) {
            close(s->conns[i].kick_fd);
            s->conns[i].kick_fd = -1;
        }
    }
    s->nconns = 0;
    nbdcli_parse_free(s);
    mutex_destroy(&s->lock);
    cond_destroy(&s->cond);
}

/*
 * blockdev-add connects before it opens (block_prepare(): a thread of its
 * own, no lock held, the monitor keeps serving); open then takes the
 * connection made for the same server, export and context.
 */
static void *
nbdcli_prepare(json_t *options, int cancel_fd, struct err **errp)
{
    struct nbdcli_state s = {0};
    struct nbd_handle *h;

    if (nbdcli_parse(&s, options, errp) < 0) {
        return NULL;
    }
    h = nbdcli_connect_for_open(&s, cancel_fd, errp);
    nbdcli_parse_free(&s);
    return h;
}

static void
nbdcli_prepared_free(void *prepared)
{
    nbdcli_hangup(prepared);
}

static bool
nbdcli_prepared_fits(json_t *prepared_for, json_t *options)
{
    static const char *const keys[] = {
        "server", "export", "x-dirty-bitmap",
    };

    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        json_t *a = json_object_get(prepared_for, keys[i]);
        json_t *b = json_object_get(options, keys[i]);

        if ((a || b) && !(a && b && json_equal(a, b))) {
            return false;
        }
    }
    return true;
}

static int
nbdcli_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct nbdcli_state *s = node->opaque;
    const char *bitmap = block_opt_str(options, "x-dirty-bitmap", NULL);
    struct nbd_handle *h;
    int64_t size, minb, maxb;
    int ret;

    lock_init(&s->lock, LOCK_NBDCLI_CONN);
    cond_init(&s->cond);
    for (int i = 0; i < NBDCLI_POOL_MAX; i++) {
        s->conns[i].kick_fd = -1;
        TAILQ_INIT(&s->conns[i].waiters);
    }
    for (int i = 0; i < NBDCLI_POOL_MAX; i++) {
        s->conns[i].kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->conns[i].kick_fd < 0) {
            ret = -errno;
            err_setf_errno(errp, -ret, "Failed to create an eventfd");
            goto out_free;
        }
    }
    ret = nbdcli_parse(s, options, errp);
    if (ret < 0) {
        goto out_free;
    }
    /* Connected by blockdev-add beforehand, or here (bounded). */
    h = block_prepared_take(node->drv, options, nbdcli_prepared_fits);
    if (!h) {
        h = nbdcli_connect_for_open(s, -1, errp);
    }
    if (!h) {
        ret = -ECONNREFUSED;
        goto out_free;
    }
    s->conns[0].h = h;
    s->nconns = 1;

    size = nbd_get_size(h);
    if (size < 0) {
        err_setf(errp, "Failed to get the export size: %s", nbd_get_error());
        ret = -EIO;
        goto out_free;
    }
    s->size = (uint64_t)size;
    s->read_only_export = nbd_is_read_only(h) > 0;
    s->can_flush = nbd_can_flush(h) > 0;
    s->can_fua = nbd_can_fua(h) > 0;
    s->can_trim = nbd_can_trim(h) > 0;
    s->can_zero = nbd_can_zero(h) > 0;
    s->can_fast_zero = nbd_can_fast_zero(h) > 0;
    s->has_meta = nbd_can_meta_context(h, s->meta_ctx) > 0;
    if (bitmap && !s->has_meta) {
        err_setf(errp, "requested x-dirty-bitmap %s not found", bitmap);
        ret = -EINVAL;
        goto out_free;
    }
    if (s->read_only_export && !node->read_only) {
        err_setf(errp, "NBD export is read-only");
        ret = -EACCES;
        goto out_free;
    }
    if (nbd_can_multi_conn(h) > 0) {
        s->nconns = NBDCLI_POOL_MAX;   /* the others connect on first use */
    }

    minb = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    maxb = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    /* The core pads the last block of a protocol node past its end,
     * which a server would refuse: no alignment for odd-sized exports. */
    if (minb > 0 && minb <= 65536 && is_power_of_2((uint64_t)minb) &&
        s->size % (uint64_t)minb == 0) {
        node->limits.request_alignment = (uint32_t)minb;
    }
    node->limits.max_transfer = 32 * MiB;
    if (maxb > 0 && (uint64_t)maxb < node->limits.max_transfer) {
        node->limits.max_transfer =
            align_down((uint64_t)maxb,
                       node->limits.request_alignment ?
                       node->limits.request_alignment : 1);
        if (node->limits.max_transfer == 0) {
            node->limits.max_transfer = (uint64_t)maxb;
        }
    }
    node->limits.max_pdiscard = NBDCLI_MAX_EFFECT;
    node->limits.max_pwrite_zeroes = NBDCLI_MAX_EFFECT;
    node->limits.opt_transfer = 4096;
    node->supported_write_flags = s->can_fua ? BLOCK_REQ_FUA : 0;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP |
                                 (s->can_fua ? BLOCK_REQ_FUA : 0);
    return 0;

out_free:
    nbdcli_free(s);
    return ret;
}

static void
nbdcli_close(struct block_node *node)
{
    struct nbdcli_state *s = node->opaque;

    /* nbd_shutdown() would wait for the server to close: a stalled one
     * would hold the main thread (blockdev-del, shutdown) for good. */
    for (int i = 0; i < s->nconns; i++) {
        nbdcli_hangup(s->conns[i].h);
        s->conns[i].h = NULL;
    }
    nbdcli_free(s);
}

static int64_t
nbdcli_getlength(struct block_node *node)
{
    struct nbdcli_state *s = node->opaque;

    return (int64_t)s->size;
}

static int
nbdcli_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
             void *buf, unsigned flags UNUSED)
{
    return nbdcli_run(node->opaque, OP_READ, offset, bytes, buf, 0, NULL);
}

static int
nbdcli_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
              const void *buf, unsigned flags)
{
    struct nbdcli_state *s = node->opaque;

    return nbdcli_run(s, OP_WRITE, offset, bytes, (void *)buf,
                      (flags & BLOCK_REQ_FUA) && s->can_fua ?
                      LIBNBD_CMD_FLAG_FUA : 0, NULL);
}

static int
nbdcli_pwrite_zeroes(struct block_node *node, uint64_t offset,
                     uint64_t bytes, unsigned flags)
{
    struct nbdcli_state *s = node->opaque;
    uint32_t f = 0;

    if (!s->can_zero || ((flags & BLOCK_REQ_NO_FALLBACK) &&
                         !s->can_fast_zero)) {
        return -ENOTSUP;
    }
    if ((flags & BLOCK_REQ_FUA) && s->can_fua) {
        f |= LIBNBD_CMD_FLAG_FUA;
    }
    if (!(flags & BLOCK_REQ_MAY_UNMAP)) {
        f |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if (flags & BLOCK_REQ_NO_FALLBACK) {
        f |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    return nbdcli_run(s, OP_ZERO, offset, bytes, NULL, f, NULL);
}

static int
nbdcli_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    struct nbdcli_state *s = node->opaque;

    if (!s->can_trim) {
        return 0;   /* discard is a hint */
    }
    return nbdcli_run(s, OP_TRIM, offset, bytes, NULL, 0, NULL);
}

static int
nbdcli_flush(struct block_node *node)
{
    struct nbdcli_state *s = node->opaque;

    if (!s->can_flush) {
        return 0;
    }
    return nbdcli_run(s, OP_FLUSH, 0, 0, NULL, 0, NULL);
}

static int
nbdcli_block_status(struct block_node *node, uint64_t offset,
                    uint64_t bytes, uint64_t *pnum, uint64_t *map,
                    struct block_node **file)
{
    struct nbdcli_state *s = node->opaque;
    struct nbdcli_req e = {.ctx = s->meta_ctx};
    int r;

    *map = offset;
    *file = node;
    if (!s->has_meta) {
        *pnum = bytes;
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    bytes = MIN(bytes, (uint64_t)NBDCLI_MAX_EFFECT);
    r = nbdcli_run(s, OP_STATUS, offset, bytes, NULL,
                   LIBNBD_CMD_FLAG_REQ_ONE, &e);
    if (r < 0) {
        return r;
    }
    if (!e.ext_found || e.ext_len == 0) {
        /* Status 0 is always safe (spec): data. */
        *pnum = bytes;
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    *pnum = MIN(e.ext_len, bytes);
    return BLOCK_STATUS_OFFSET_VALID |
           ((e.ext_flags & 0x1) ? 0 : BLOCK_STATUS_DATA) |  /* STATE_HOLE */
           ((e.ext_flags & 0x2) ? BLOCK_STATUS_ZERO : 0);   /* STATE_ZERO */
}

/* ---- File names: nbd[+tcp]://HOST[:PORT][/EXPORT],
 * nbd+unix:///[EXPORT]?socket=PATH, and QEMU's older nbd:HOST:PORT and
 * nbd:unix:PATH, each with [:exportname=NAME] -------------------------- */

static const char *const nbd_filename_prefixes[] = {
    "nbd://", "nbd+tcp://", "nbd+unix://", "nbd:", NULL,
};

#define NBD_EXPORTNAME_OPT ":exportname="

/* HOST:PORT ([V6ADDR]:PORT), split at the port's colon; false if none. */
static bool
split_host_port(char *addr, const char **host, const char **port)
{
    char *colon;

    if (addr[0] == '[') {
        char *close = strchr(addr, ']');

        if (!close || close[1] != ':') {
            return false;
        }
        *close = '\0';
        *host = addr + 1;
        *port = close + 2;
        return true;
    }
    colon = strchr(addr, ':');
    if (!colon) {
        return false;
    }
    *colon = '\0';
    *host = addr;
    *port = colon + 1;
    return true;
}

/*
 * nbd:unix:PATH[:exportname=NAME] and nbd:HOST:PORT[:exportname=NAME],
 * as qemu-img takes them: the export name is what follows the first
 * ":exportname=" (none: the default export ""); given empty, QEMU keeps
 * no address at all, and so do we (its message).
 */
static json_t *
nbd_parse_legacy(const char *name, struct err **errp)
{
    const char *spec = name + 4;
    const char *ex = strstr(spec, NBD_EXPORTNAME_OPT);
    CLEANUP_FREE char *addr = xasprintf("%.*s", (int)(ex ? ex - spec
                                                         : (long)strlen(spec)),
                                        spec);
    const char *host, *port;
    json_t *server, *o;

    if (!*spec || (ex && !ex[strlen(NBD_EXPORTNAME_OPT)])) {
        err_setf(errp, "NBD server address missing");
        return NULL;
    }
    if (!strncmp(addr, "unix:", 5)) {
        server = json_pack("{s:s, s:s}", "type", "unix", "path", addr + 5);
    } else if (split_host_port(addr, &host, &port)) {
        server = json_pack("{s:s, s:s, s:s}", "type", "inet", "host", host,
                           "port", port);
    } else {
        err_setf(errp, "error parsing address '%s'", addr);
        return NULL;
    }
    o = json_pack("{s:s, s:o}", "driver", "nbd", "server", server);
    if (ex) {
        json_object_set_new(o, "export",
                            json_string(ex + strlen(NBD_EXPORTNAME_OPT)));
    }
    return o;
}

static json_t *
nbd_parse_url(const char *url)
{
    bool is_unix = !strncmp(url, "nbd+unix://", 11);
    const char *rest = strstr(url, "://") + 3;
    const char *slash = strchr(rest, '/'), *q = strchr(rest, '?');
    CLEANUP_FREE char *authority = NULL, *export = NULL;
    json_t *server, *o;

    authority = xasprintf("%.*s", (int)(slash ? slash - rest
                                        : q ? q - rest : (long)strlen(rest)),
                          rest);
    if (slash) {
        export = xasprintf("%.*s", (int)(q ? q - slash - 1
                                         : (long)strlen(slash + 1)),
                           slash + 1);
    }
    if (is_unix) {
        const char *sock = q ? strstr(q, "socket=") : NULL;

        server = json_pack("{s:s, s:s%}", "type", "unix", "path",
                           sock ? sock + 7 : "",
                           sock ? strcspn(sock + 7, "&") : 0);
    } else {
        char *colon = strrchr(authority, ':');

        if (colon) {
            *colon = '\0';
        }
        server = json_pack("{s:s, s:s, s:s}", "type", "inet", "host",
                           authority, "port", colon ? colon + 1 : "10809");
    }
    o = json_pack("{s:s, s:o}", "driver", "nbd", "server", server);
    if (export && *export) {
        json_object_set_new(o, "export", json_string(export));
    }
    return o;
}

static json_t *
nbd_parse_filename(const char *name, struct err **errp)
{
    if (!strncmp(name, "nbd://", 6) || !strncmp(name, "nbd+tcp://", 10) ||
        !strncmp(name, "nbd+unix://", 11)) {
        return nbd_parse_url(name);
    }
    return nbd_parse_legacy(name, errp);
}

/*
 * The export's name as QEMU's tools show it: nbd+unix:///EXPORT?socket=P
 * or nbd://HOST:PORT/EXPORT (without "/EXPORT" for the default export).
 */
static const char *
nbd_refresh_filename(struct block_node *node)
{
    struct nbdcli_state *s = node->opaque;
    const char *ex = s->export && *s->export ? s->export : NULL;

    free(s->url);
    if (s->path) {
        s->url = ex ? xasprintf("nbd+unix:///%s?socket=%s", ex, s->path)
                    : xasprintf("nbd+unix://?socket=%s", s->path);
    } else {
        s->url = ex ? xasprintf("nbd://%s:%s/%s", s->host, s->port, ex)
                    : xasprintf("nbd://%s:%s", s->host, s->port);
    }
    return s->url;
}

const struct block_driver nbdcli_driver = {
    .name = "nbd",
    .kind = BLOCK_KIND_PROTOCOL,
    .state_size = sizeof(struct nbdcli_state),
    .options = nbd_opts,
    .prepare = nbdcli_prepare,
    .prepared_free = nbdcli_prepared_free,
    .open = nbdcli_open,
    .close = nbdcli_close,
    .getlength = nbdcli_getlength,
    .pread = nbdcli_pread,
    .pwrite = nbdcli_pwrite,
    .pwrite_zeroes = nbdcli_pwrite_zeroes,
    .pdiscard = nbdcli_pdiscard,
    .flush = nbdcli_flush,
    .block_status = nbdcli_block_status,
    .filename_prefixes = nbd_filename_prefixes,
    .parse_filename = nbd_parse_filename,
    .refresh_filename = nbd_refresh_filename,
};
