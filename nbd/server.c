/* SPDX-License-Identifier: MIT */
/*
 * The NBD server: listening sockets (nbd-server-start/stop), one thread per
 * connection that negotiates and then reads requests, and a small pool of
 * worker threads per connection that run them on the export's block handle
 * and send the replies.
 *
 * Design notes.
 *
 *   Threads: an accept thread per listening socket; per connection
 *   NBDSRV_THREADS threads (the connection thread, detached, starts the
 *   others after the handshake and joins them before it leaves).  Replies
 *   may go out of order; a reply (all chunks of it) is written under
 *   conn->write_lock, so replies never interleave within a byte stream.
 *
 *   The reader role: one thread at a time reads requests (through a 64 KiB
 *   buffer, so a burst costs one read(2)) and runs each one itself.  On two
 *   cores shared with the client, waking another thread per request was
 *   most of the cost of a small request; QEMU avoids it with coroutines.
 *   When a request is about to sleep (util.h's thread_may_block(): a
 *   condition wait, I/O on a real device, the NBD client waiting for its
 *   server, a reply the client is slow to read) the reader first hands the
 *   role to an idle thread of the connection, which reads on while the
 *   first one waits; that thread rejoins the idle ones when its request is
 *   done.  So requests run in parallel exactly when they block, and up to
 *   NBDSRV_THREADS of them.  A request that sleeps without the hint (a
 *   contended mutex) only delays the reading of the next one.
 *
 *   Flow control: at most NBDSRV_THREADS requests run at once, and the
 *   reader admits one only while the connection has fewer than
 *   NBDSRV_MAX_INFLIGHT bytes of payload (reads and writes) in flight, so a
 *   client flooding requests blocks itself, not the daemon.  A WRITE
 *   longer than the maximum payload (32 MiB) is a protocol violation
 *   (spec: may disconnect); everything else out of range gets an error
 *   reply.
 *
 *   Ending: EOF, a broken frame or NBD_CMD_DISC end the reader role;
 *   requests already running finish (DISC: "finish outstanding requests"),
 *   and once the socket is dead (write failure, shutdown by export
 *   deletion) nothing more is admitted.  When all threads are back the
 *   connection detaches from its export (the last use of it) and frees
 *   itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "nbd/errno-map.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "nbd/server.h"
#include "util.h"

#define NBDSRV_THREADS      8
#define NBDSRV_RBUF         (64 * 1024)
/* Busy-polling before a sleep (conn_refill): from MIN, doubling up to MAX
 * while sleeps end within GROW. */
#define NBDSRV_POLL_MIN_NS  4000
#define NBDSRV_POLL_MAX_NS  32000
#define NBDSRV_POLL_GROW_NS 128000
#define NBDSRV_MAX_INFLIGHT (64U * 1024 * 1024)
#define NBDSRV_MAX_LISTENERS 8
#define NBDSRV_HANDSHAKE_SECS 10
/* Extents per BLOCK_STATUS chunk without REQ_ONE (spec: SHOULD NOT
 * exceed 2^20; fewer is fine, the client asks again for the rest). */
#define NBDSRV_MAX_STATUS_EXTENTS 16384
/* Memory a BLOCK_STATUS request holds, counted as bytes in flight. */
#define NBDSRV_STATUS_COST (NBDSRV_MAX_STATUS_EXTENTS * 16)
/* READ chunks: past this many extents the rest is sent as data. */
#define NBDSRV_MAX_READ_CHUNKS 64

/* ---- fd I/O ----------------------------------------------------------- */

int
nbdsrv_read(int fd, void *buf, size_t len)
{
    return read_full(fd, buf, len);
}

int
nbdsrv_writev(int fd, const void *a, size_t alen, const void *b,
              size_t blen, const void *c, size_t clen)
{
    struct iovec iov[3] = {
        {(void *)a, alen}, {(void *)b, blen}, {(void *)c, clen},
    };
    struct iovec *v = iov;
    int n = 3;

    while (n > 0) {
        struct msghdr msg = {.msg_iov = v, .msg_iovlen = (size_t)n};
        ssize_t r;

        if (v->iov_len == 0) {
            v++;
            n--;
            continue;
        }
        r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            thread_may_block();   /* the client is slow to read replies */
            r = sendmsg(fd, &msg, MSG_NOSIGNAL);
        }
        if (r < 0 && errno == ENOTSOCK) {
            r = writev(fd, v, n);
        }
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -errno;
        }
        while (r > 0 && n > 0) {
            if ((size_t)r >= v->iov_len) {
                r -= (ssize_t)v->iov_len;
                v->iov_len = 0;
                v++;
                n--;
            } else {
                v->iov_base = (char *)v->iov_base + r;
                v->iov_len -= (size_t)r;
                r = 0;
            }
        }
    }
    return 0;
}

int
nbdsrv_write(int fd, const void *buf, size_t len)
{
    return nbdsrv_writev(fd, buf, len, NULL, 0, NULL, 0);
}

/* ---- Connections ------------------------------------------------------ */

struct nbdsrv_req {
    uint16_t flags;
    uint16_t type;
    uint64_t cookie;
    uint64_t offset;
    uint32_t len;
    void *data;          /* WRITE payload */
    uint64_t cost;       /* bytes counted in flight */
    bool nomem;          /* no memory for the payload: fail it */
};

struct nbdsrv_conn {
    struct nbdsrv_session s;
    int fd;              /* socket (== in_fd), -1 in fd-pair mode */
    int nthreads;        /* threads serving this connection, >= 1 */
    pthread_t *threads;  /* [0] unused: the connection thread itself */

    /* Replies.  Protected by: write_lock. */
    pthread_mutex_t write_lock;

    /* The reader role and flow control.  Protected by: lock. */
    pthread_mutex_t lock;
    pthread_cond_t role_cond;    /* idle threads wait for the reader role */
    pthread_cond_t space_cond;   /* the reader waits for room */
    bool reading;                /* a thread holds the reader role */
    uint64_t inflight;           /* payload bytes admitted, not replied */
    bool quit;                   /* the stream ended: threads leave */
    bool dead;                   /* socket unusable: admit nothing more */

    /* Reader role only: bytes read ahead from in_fd; busy-poll time. */
    uint8_t *rbuf;
    size_t rpos, rlen;
    int64_t poll_ns;

    /* Protected by: g_nbdsrv_lock. */
    TAILQ_ENTRY(nbdsrv_conn) link;
};

struct nbdsrv_listener {
    int fd;
    pthread_t thread;
    bool tcp;
};

/* Protected by: g_nbdsrv_lock. */
static TAILQ_HEAD(, nbdsrv_conn) g_conns = TAILQ_HEAD_INITIALIZER(g_conns);
static unsigned g_nconns;
static bool g_running;
static int64_t g_max_connections;
/* Main thread only. */
static struct nbdsrv_listener g_listeners[NBDSRV_MAX_LISTENERS];
static int g_nlisteners;

bool
nbdsrv_running(void)
{
    SCOPED_LOCK(&g_nbdsrv_lock);
    return g_running;
}

bool
nbd_server_running(void)
{
    return nbdsrv_running();
}

bool
nbdsrv_multi_conn_allowed(void)
{
    SCOPED_LOCK(&g_nbdsrv_lock);
    return g_max_connections != 1;
}

void
nbdsrv_shutdown_conns_locked(struct nbdexp *exp)
{
    struct nbdsrv_conn *conn;

    TAILQ_FOREACH(conn, &g_conns, link) {
        if (!exp || conn->s.exp == exp) {
            shutdown(conn->s.in_fd, SHUT_RDWR);
            if (conn->s.out_fd != conn->s.in_fd) {
                shutdown(conn->s.out_fd, SHUT_RDWR);
            }
        }
    }
}

void
nbdsrv_wait_conns_locked(struct nbdexp *exp)
{
    while (exp ? exp->nconns > 0 : g_nconns > 0) {
        cond_wait(&g_nbdsrv_cond, &g_nbdsrv_lock);
    }
}

/* Mark the connection dead after a failed write: the reader stops too. */
static void
conn_kill(struct nbdsrv_conn *conn)
{
    mutex_lock(&conn->lock);
    conn->dead = true;
    cond_broadcast(&conn->space_cond);
    mutex_unlock(&conn->lock);
    shutdown(conn->s.in_fd, SHUT_RDWR);
}

/* ---- Replies ---------------------------------------------------------- */

/* Take write_lock.  Its holder may be stuck sending to a client that is
 * slow to read, so waiting for it counts as blocking (the reader role
 * moves on first). */
static void
reply_lock(struct nbdsrv_conn *conn)
{
    mutex_lock_may_block(&conn->write_lock);
}

static void
send_simple(struct nbdsrv_conn *conn, struct nbdsrv_req *req, uint32_t err,
            const void *data, size_t len)
{
    uint8_t hdr[16];
    int ret;

    put_be32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    put_be32(hdr + 4, err);
    put_be64(hdr + 8, req->cookie);
    reply_lock(conn);
    ret = nbdsrv_writev(conn->s.out_fd, hdr, sizeof(hdr), data,
                        err ? 0 : len, NULL, 0);
    mutex_unlock(&conn->write_lock);
    if (ret < 0) {
        conn_kill(conn);
    }
}

/* One structured chunk; caller holds write_lock. */
static int
send_chunk_locked(struct nbdsrv_conn *conn, struct nbdsrv_req *req,
                  uint16_t flags, uint16_t type, const void *a, size_t alen,
                  const void *b, size_t blen)
{
    uint8_t hdr[20];

    put_be32(hdr, NBD_STRUCTURED_REPLY_MAGIC);
    put_be16(hdr + 4, flags);
    put_be16(hdr + 6, type);
    put_be64(hdr + 8, req->cookie);
    put_be32(hdr + 16, (uint32_t)(alen + blen));
    return nbdsrv_writev(conn->s.out_fd, hdr, sizeof(hdr), a, alen, b, blen);
}

static void
send_error_chunk(struct nbdsrv_conn *conn, struct nbdsrv_req *req,
                 uint32_t err, const char *msg)
{
    uint8_t payload[6 + 64];
    size_t mlen = MIN(strlen(msg), (size_t)64);
    int ret;

    put_be32(payload, err);
    put_be16(payload + 4, (uint16_t)mlen);
    memcpy(payload + 6, msg, mlen);
    reply_lock(conn);
    ret = send_chunk_locked(conn, req, NBD_REPLY_FLAG_DONE,
                            NBD_REPLY_TYPE_ERROR, payload, 6 + mlen, NULL, 0);
    mutex_unlock(&conn->write_lock);
    if (ret < 0) {
        conn_kill(conn);
    }
}

/* An error reply in the form the command needs. */
static void
reply_error(struct nbdsrv_conn *conn, struct nbdsrv_req *req, uint32_t err,
            const char *msg)
{
    if (conn->s.structured &&
        (req->type == NBD_CMD_READ || req->type == NBD_CMD_BLOCK_STATUS)) {
        send_error_chunk(conn, req, err, msg);
    } else {
        send_simple(conn, req, err, NULL, 0);
    }
}

static void
reply_errno(struct nbdsrv_conn *conn, struct nbdsrv_req *req, int ret)
{
    reply_error(conn, req, nbdsrv_errno_to_nbd(ret), strerror(-ret));
}

/* ---- Commands --------------------------------------------------------- */

static void
do_read(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    struct nbdexp *exp = conn->s.exp;
    uint8_t *buf;
    uint8_t off8[8];
    uint64_t pos, end;
    int ret, nchunks = 0;

    if (req->len == 0) {
        if (conn->s.structured) {
            reply_lock(conn);
            ret = send_chunk_locked(conn, req, NBD_REPLY_FLAG_DONE,
                                    NBD_REPLY_TYPE_NONE, NULL, 0, NULL, 0);
            mutex_unlock(&conn->write_lock);
            if (ret < 0) {
                conn_kill(conn);
            }
        } else {
            send_simple(conn, req, 0, NULL, 0);
        }
        return;
    }
    buf = malloc(req->len);
    if (!buf) {
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    ret = block_handle_pread(exp->h, req->offset, req->len, buf, 0);
    if (ret < 0) {
        free(buf);
        reply_errno(conn, req, ret);
        return;
    }
    if (!conn->s.structured) {
        send_simple(conn, req, 0, buf, req->len);
        free(buf);
        return;
    }

    /*
     * Structured: zero ranges (by block status) as OFFSET_HOLE, the rest
     * as OFFSET_DATA; one chunk when DF asks for it.  Each chunk's offset
     * is absolute (spec, structured reply chunks).
     */
    reply_lock(conn);
    pos = req->offset;
    end = req->offset + req->len;
    ret = 0;
    while (pos < end && ret == 0) {
        uint64_t pnum = end - pos;
        bool hole = false;
        bool last;
        struct block_status_info info;

        if (!(req->flags & NBD_CMD_FLAG_DF) &&
            nchunks < NBDSRV_MAX_READ_CHUNKS - 1) {
            int st;

            memset(&info, 0, sizeof(info));
            st = block_handle_status(exp->h, pos, end - pos, &pnum, &info);
            if (st < 0 || pnum == 0 || pnum > end - pos) {
                pnum = end - pos;
            } else {
                hole = (st & BLOCK_STATUS_ZERO) &&
                       buffer_is_zero(buf + (pos - req->offset), pnum);
            }
        }
        last = pos + pnum == end;
        put_be64(off8, pos);
        if (hole) {
            uint8_t hole_payload[12];

            put_be64(hole_payload, pos);
            put_be32(hole_payload + 8, (uint32_t)pnum);
            ret = send_chunk_locked(conn, req,
                                    last ? NBD_REPLY_FLAG_DONE : 0,
                                    NBD_REPLY_TYPE_OFFSET_HOLE,
                                    hole_payload, 12, NULL, 0);
        } else {
            ret = send_chunk_locked(conn, req,
                                    last ? NBD_REPLY_FLAG_DONE : 0,
                                    NBD_REPLY_TYPE_OFFSET_DATA, off8, 8,
                                    buf + (pos - req->offset), pnum);
        }
        pos += pnum;
        nchunks++;
    }
    mutex_unlock(&conn->write_lock);
    free(buf);
    if (ret < 0) {
        conn_kill(conn);
    }
}

static void
do_block_status(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    struct nbdexp *exp = conn->s.exp;
    size_t max = (req->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 :
                 NBDSRV_MAX_STATUS_EXTENTS;
    uint32_t *ext = malloc(max * 2 * sizeof(uint32_t));
    uint8_t *payload = malloc(4 + max * 8);
    int ret = 0;

    if (!ext || !payload) {
        free(ext);
        free(payload);
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    /* Compute every context first, so that an error can still be the
     * only reply; then send them all under one lock. */
    reply_lock(conn);
    for (size_t i = 0; i < conn->s.nctx && ret >= 0; i++) {
        int n = nbdsrv_meta_extents(exp, conn->s.ctx_ids[i], req->offset,
                                    req->len, ext, max);

        if (n < 0) {
            uint8_t err[6 + 32];
            const char *msg = "block status failed";

            put_be32(err, nbdsrv_errno_to_nbd(n));
            put_be16(err + 4, (uint16_t)strlen(msg));
            memcpy(err + 6, msg, strlen(msg));
            ret = send_chunk_locked(conn, req,
                                    i + 1 == conn->s.nctx ?
                                    NBD_REPLY_FLAG_DONE : 0,
                                    NBD_REPLY_TYPE_ERROR, err,
                                    6 + strlen(msg), NULL, 0);
            continue;
        }
        put_be32(payload, conn->s.ctx_ids[i]);
        for (int j = 0; j < n; j++) {
            put_be32(payload + 4 + 8 * j, ext[2 * j]);
            put_be32(payload + 8 + 8 * j, ext[2 * j + 1]);
        }
        ret = send_chunk_locked(conn, req,
                                i + 1 == conn->s.nctx ?
                                NBD_REPLY_FLAG_DONE : 0,
                                NBD_REPLY_TYPE_BLOCK_STATUS, payload,
                                4 + 8 * (size_t)n, NULL, 0);
    }
    mutex_unlock(&conn->write_lock);
    free(ext);
    free(payload);
    if (ret < 0) {
        conn_kill(conn);
    }
}

/* Flags each command accepts (FUA is accepted on all, spec). */
static uint16_t
allowed_flags(struct nbdsrv_conn *conn, uint16_t type)
{
    switch (type) {
    case NBD_CMD_READ:
        return NBD_CMD_FLAG_FUA |
               (conn->s.structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE_ZEROES:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
               NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS:
        return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
    default:
        return NBD_CMD_FLAG_FUA;
    }
}

static void
handle_request(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    struct nbdexp *exp = conn->s.exp;
    uint64_t size = nbdexp_size(exp);
    bool fua = (req->flags & NBD_CMD_FLAG_FUA) || exp->writethrough;
    int ret = 0;

    if (req->flags & ~allowed_flags(conn, req->type)) {
        reply_error(conn, req, NBD_EINVAL, "invalid flags");
        return;
    }
    switch (req->type) {
    case NBD_CMD_READ:
        if (range_exceeds(req->offset, req->len, size)) {
            reply_error(conn, req, NBD_EINVAL, "read beyond end");
            return;
        }
        if (req->len > NBDSRV_MAX_PAYLOAD) {
            reply_error(conn, req, (req->flags & NBD_CMD_FLAG_DF) ?
                        NBD_EOVERFLOW : NBD_EINVAL, "read too large");
            return;
        }
        do_read(conn, req);
        return;

    case NBD_CMD_WRITE:
        if (!exp->writable) {
            ret = -EPERM;
        } else if (range_exceeds(req->offset, req->len, size)) {
            ret = -ENOSPC;
        } else if (req->len) {
            ret = block_handle_pwrite(exp->h, req->offset, req->len,
                                      req->data, fua ? BLOCK_REQ_FUA : 0);
        }
        break;

    case NBD_CMD_FLUSH:
        ret = block_handle_flush(exp->h);
        break;

    case NBD_CMD_TRIM:
        if (!exp->writable) {
            ret = -EPERM;
        } else if (range_exceeds(req->offset, req->len, size)) {
            ret = -EINVAL;
        } else if (req->len) {
            ret = block_handle_pdiscard(exp->h, req->offset, req->len);
            if (ret == -ENOTSUP) {
                ret = 0;   /* TRIM is a hint */
            }
            if (ret == 0 && fua) {
                ret = block_handle_flush(exp->h);
            }
        }
        break;

    case NBD_CMD_WRITE_ZEROES: {
        unsigned flags = 0;

        if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
            flags |= BLOCK_REQ_MAY_UNMAP;
        }
        if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
            flags |= BLOCK_REQ_NO_FALLBACK;
        }
        if (fua) {
            flags |= BLOCK_REQ_FUA;
        }
        if (!exp->writable) {
            ret = -EPERM;
        } else if (range_exceeds(req->offset, req->len, size)) {
            ret = -ENOSPC;
        } else if (req->len) {
            ret = block_handle_pwrite_zeroes(exp->h, req->offset, req->len,
                                             flags);
            if (ret == -ENOTSUP && !(flags & BLOCK_REQ_NO_FALLBACK)) {
                ret = -EIO;   /* ENOTSUP is reserved for FAST_ZERO */
            }
        }
        break;
    }

    case NBD_CMD_CACHE:
        if (range_exceeds(req->offset, req->len, size)) {
            ret = -EINVAL;
        }
        break;   /* a hint; there is no cache to fill */

    case NBD_CMD_BLOCK_STATUS:
        if (!conn->s.structured || conn->s.nctx == 0) {
            reply_error(conn, req, NBD_EINVAL, "no metadata context");
        } else if (req->len == 0 ||
                   range_exceeds(req->offset, req->len, size)) {
            reply_error(conn, req, NBD_EINVAL, "invalid range");
        } else {
            do_block_status(conn, req);
        }
        return;

    default:
        reply_error(conn, req, NBD_EINVAL, "unknown command");
        return;
    }
    if (ret < 0) {
        reply_errno(conn, req, ret);
    } else {
        send_simple(conn, req, 0, NULL, 0);
    }
}

static void
req_done(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    mutex_lock(&conn->lock);
    conn->inflight -= req->cost;
    cond_broadcast(&conn->space_cond);
    mutex_unlock(&conn->lock);
    free(req->data);
    free(req);
}

/* ---- The reader ------------------------------------------------------- */

/* Receive into the empty read-ahead buffer without sleeping, for up to
 * ns nanoseconds.  -2 when nothing came in time, else what recv said. */
static ssize_t
conn_poll_recv(struct nbdsrv_conn *conn, int64_t ns)
{
    int64_t end = clock_ns() + ns;

    for (;;) {
        ssize_t r = recv(conn->fd, conn->rbuf, NBDSRV_RBUF, MSG_DONTWAIT);

        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            return r;
        }
        if (clock_ns() >= end) {
            return -2;
        }
        sched_yield();      /* poll on idle CPU only, never in its way */
    }
}

/*
 * Refill the empty read-ahead buffer.  Busy-poll first, then sleep in
 * read(): a client that answers within microseconds (queue depth 1) would
 * otherwise pay for waking a sleeping thread, which in a VM (an idle vCPU
 * halts) is tens of microseconds.  The poll time adapts as QEMU's
 * iothread polling does: it grows while the requests that needed a sleep
 * came soon after all, and drops to zero when one took long, so an idle
 * or slow client costs no CPU.
 */
static ssize_t
conn_refill(struct nbdsrv_conn *conn)
{
    int64_t t0, waited;
    ssize_t r;

    if (conn->fd < 0) {
        return read(conn->s.in_fd, conn->rbuf, NBDSRV_RBUF);
    }
    if (conn->poll_ns > 0) {
        r = conn_poll_recv(conn, conn->poll_ns);
        if (r != -2) {
            return r;
        }
    }
    t0 = clock_ns();
    r = read(conn->s.in_fd, conn->rbuf, NBDSRV_RBUF);
    waited = clock_ns() - t0 + conn->poll_ns;
    if (waited <= NBDSRV_POLL_GROW_NS) {
        conn->poll_ns = conn->poll_ns ?
            MIN(conn->poll_ns * 2, NBDSRV_POLL_MAX_NS) : NBDSRV_POLL_MIN_NS;
    } else {
        conn->poll_ns = 0;
    }
    return r;
}

/* len bytes of the request stream: the read-ahead buffer first.  0 or -1
 * (EOF, error). */
static int
conn_recv(struct nbdsrv_conn *conn, void *buf, size_t len)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t r;

        if (conn->rpos < conn->rlen) {
            size_t n = MIN(len, conn->rlen - conn->rpos);

            memcpy(p, conn->rbuf + conn->rpos, n);
            conn->rpos += n;
            p += n;
            len -= n;
            continue;
        }
        if (len >= NBDSRV_RBUF / 2) {
            return nbdsrv_read(conn->s.in_fd, p, len);   /* big payload */
        }
        r = conn_refill(conn);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
        conn->rpos = 0;
        conn->rlen = (size_t)r;
    }
    return 0;
}

/* The WRITE payload into req->data.  Without memory for it the payload
 * is swallowed and the request marked to fail with ENOMEM. */
static int
read_payload(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    uint8_t sink[4096];
    uint32_t left = req->len;

    req->data = malloc(req->len);
    if (req->data) {
        return conn_recv(conn, req->data, req->len);
    }
    while (left) {
        uint32_t n = MIN(left, (uint32_t)sizeof(sink));

        if (conn_recv(conn, sink, n) < 0) {
            return -1;
        }
        left -= n;
    }
    req->nomem = true;
    return 0;
}

/* The next request, admitted and with its payload; NULL when the stream
 * ends (EOF, a broken frame, DISC, a dead socket). */
static struct nbdsrv_req *
read_request(struct nbdsrv_conn *conn)
{
    uint8_t hdr[28];
    struct nbdsrv_req *req;

    if (conn_recv(conn, hdr, sizeof(hdr)) < 0 ||
        get_be32(hdr) != NBD_REQUEST_MAGIC) {
        return NULL;
    }
    req = xzalloc(sizeof(*req));
    req->flags = get_be16(hdr + 4);
    req->type = get_be16(hdr + 6);
    req->cookie = get_be64(hdr + 8);
    req->offset = get_be64(hdr + 16);
    req->len = get_be32(hdr + 24);
    if (req->type == NBD_CMD_DISC ||
        (req->type == NBD_CMD_WRITE && req->len > NBDSRV_MAX_PAYLOAD)) {
        free(req);   /* an oversized payload we will not buffer (spec) */
        return NULL;
    }
    if (req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) {
        req->cost = MIN(req->len, NBDSRV_MAX_PAYLOAD);
    } else if (req->type == NBD_CMD_BLOCK_STATUS) {
        req->cost = NBDSRV_STATUS_COST;
    }

    /* Admission: bounded bytes in flight, but always one request. */
    mutex_lock(&conn->lock);
    while (!conn->dead && conn->inflight > 0 &&
           conn->inflight + req->cost > NBDSRV_MAX_INFLIGHT) {
        cond_wait(&conn->space_cond, &conn->lock);
    }
    if (conn->dead) {
        mutex_unlock(&conn->lock);
        free(req);
        return NULL;
    }
    conn->inflight += req->cost;
    mutex_unlock(&conn->lock);

    if (req->type == NBD_CMD_WRITE && req->len &&
        read_payload(conn, req) < 0) {
        req_done(conn, req);
        return NULL;
    }
    return req;
}

/* The blocking hook (util.h) of a reader running a request: give the
 * reader role to an idle thread of the connection before sleeping.
 * Locks: takes conn->lock, which is never held around block calls. */
struct reader_turn {
    struct nbdsrv_conn *conn;
    bool handed_off;
};

static void
reader_hand_off(void *opaque)
{
    struct reader_turn *turn = opaque;
    struct nbdsrv_conn *conn = turn->conn;

    mutex_lock(&conn->lock);
    conn->reading = false;
    cond_signal(&conn->role_cond);
    mutex_unlock(&conn->lock);
    turn->handed_off = true;
}

static void
run_request(struct nbdsrv_conn *conn, struct nbdsrv_req *req,
            struct reader_turn *turn)
{
    if (req->nomem) {
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    if (conn->nthreads > 1) {
        thread_set_block_hook(reader_hand_off, turn);
    }
    handle_request(conn, req);
    thread_set_block_hook(NULL, NULL);
}

/* Hold the reader role: read requests and run each on this thread until
 * one blocks (then another thread reads on; true) or the stream ends
 * (false). */
static bool
reader_loop(struct nbdsrv_conn *conn)
{
    struct reader_turn turn = {.conn = conn};

    while (!turn.handed_off) {
        struct nbdsrv_req *req = read_request(conn);

        if (!req) {
            return false;
        }
        run_request(conn, req, &turn);
        req_done(conn, req);
    }
    return true;
}

/* Every thread of a connection: wait for the reader role, take it, and
 * come back here whenever a request it ran blocked. */
static void *
conn_thread_loop(void *opaque)
{
    struct nbdsrv_conn *conn = opaque;

    for (;;) {
        mutex_lock(&conn->lock);
        while (conn->reading && !conn->quit) {
            cond_wait(&conn->role_cond, &conn->lock);
        }
        if (conn->quit) {
            mutex_unlock(&conn->lock);
            return NULL;
        }
        conn->reading = true;
        mutex_unlock(&conn->lock);
        if (!reader_loop(conn)) {
            mutex_lock(&conn->lock);
            conn->quit = true;
            cond_broadcast(&conn->role_cond);
            mutex_unlock(&conn->lock);
            return NULL;
        }
    }
}

/* Socket receive timeout in seconds; 0 = none.  Ignored for non-sockets
 * (the fuzzer's files). */
static void
conn_set_rcvtimeo(struct nbdsrv_conn *conn, int secs)
{
    struct timeval tv = {.tv_sec = secs};

    if (conn->fd >= 0) {
        setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
}

static void
conn_run(struct nbdsrv_conn *conn)
{
    /* A client gets NBDSRV_HANDSHAKE_SECS to finish negotiating, so that
     * idle sockets cannot hold connection slots forever (QEMU: 10 s). */
    conn_set_rcvtimeo(conn, NBDSRV_HANDSHAKE_SECS);
    if (nbdsrv_handshake(&conn->s) < 0) {
        return;
    }
    conn_set_rcvtimeo(conn, 0);
    conn->rbuf = xmalloc(NBDSRV_RBUF);
    conn->threads = xcalloc((size_t)conn->nthreads, sizeof(pthread_t));
    for (int i = 1; i < conn->nthreads; i++) {
        thread_create(&conn->threads[i], "nbd-conn", conn_thread_loop, conn);
    }
    conn_thread_loop(conn);
    for (int i = 1; i < conn->nthreads; i++) {
        thread_join(conn->threads[i]);
    }
    free(conn->threads);
    conn->threads = NULL;
    free(conn->rbuf);
    conn->rbuf = NULL;
}

static struct nbdsrv_conn *
conn_new(int in_fd, int out_fd, int fd, int nthreads)
{
    struct nbdsrv_conn *conn = xzalloc(sizeof(*conn));

    conn->s.in_fd = in_fd;
    conn->s.out_fd = out_fd;
    conn->fd = fd;
    conn->nthreads = MAX(nthreads, 1);
    mutex_init(&conn->write_lock);
    mutex_init(&conn->lock);
    cond_init(&conn->role_cond);
    cond_init(&conn->space_cond);
    return conn;
}

/* Detach from the export and the connection list, then free.  After the
 * list removal the main thread no longer waits for us. */
static void
conn_finish(struct nbdsrv_conn *conn)
{
    nbdsrv_session_clear(&conn->s);
    if (conn->fd >= 0) {
        shutdown(conn->fd, SHUT_RDWR);
    }
    mutex_lock(&g_nbdsrv_lock);
    TAILQ_REMOVE(&g_conns, conn, link);
    g_nconns--;
    if (conn->s.exp) {
        assert(conn->s.exp->nconns > 0);
        conn->s.exp->nconns--;
        conn->s.exp = NULL;
    }
    cond_broadcast(&g_nbdsrv_cond);
    mutex_unlock(&g_nbdsrv_lock);
    if (conn->fd >= 0) {
        close(conn->fd);
    }
    mutex_destroy(&conn->write_lock);
    mutex_destroy(&conn->lock);
    cond_destroy(&conn->role_cond);
    cond_destroy(&conn->space_cond);
    free(conn);
}

static void
conn_register(struct nbdsrv_conn *conn)
{
    mutex_lock(&g_nbdsrv_lock);
    TAILQ_INSERT_TAIL(&g_conns, conn, link);
    g_nconns++;
    mutex_unlock(&g_nbdsrv_lock);
}

void
nbdsrv_serve_fds(int in_fd, int out_fd, int nthreads)
{
    struct nbdsrv_conn *conn = conn_new(in_fd, out_fd, -1, nthreads);

    conn_register(conn);
    conn_run(conn);
    conn_finish(conn);
}

static void *
conn_thread(void *opaque)
{
    struct nbdsrv_conn *conn = opaque;

    conn_run(conn);
    conn_finish(conn);
    return NULL;
}

/* ---- Listening -------------------------------------------------------- */

static void *
accept_thread(void *opaque)
{
    struct nbdsrv_listener *l = opaque;

    for (;;) {
        struct nbdsrv_conn *conn;
        pthread_attr_t attr;
        pthread_t t;
        bool full;
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE ||
                errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                if (errno != EINTR && errno != ECONNABORTED) {
                    usleep(100 * 1000);   /* out of resources: back off */
                }
                continue;
            }
            return NULL;   /* shut down by nbd_server_stop */
        }
        if (l->tcp) {
            int one = 1;

            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        mutex_lock(&g_nbdsrv_lock);
        full = !g_running ||
               (g_max_connections > 0 &&
                g_nconns >= (uint64_t)g_max_connections);
        mutex_unlock(&g_nbdsrv_lock);
        if (full) {
            close(fd);
            continue;
        }
        conn = conn_new(fd, fd, fd, NBDSRV_THREADS);
        conn_register(conn);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, conn_thread, conn) != 0) {
            conn_finish(conn);
        }
        pthread_attr_destroy(&attr);
    }
}

static int
listen_unix(const char *path, struct err **errp)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd;

    if (strlen(path) >= sizeof(sun.sun_path)) {
        err_setf(errp, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err_setf_errno(errp, errno, "Failed to create Unix socket");
        return -1;
    }
    unlink(path);   /* a stale socket from an earlier run, as QEMU does */
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        err_setf_errno(errp, errno, "Failed to bind socket to %s", path);
        close(fd);
        return -1;
    }
    if (listen(fd, 128) < 0) {
        err_setf_errno(errp, errno, "Failed to listen on socket");
        close(fd);
        return -1;
    }
    return fd;
}

/* Listen on every address host:port resolves to; count in *nfds. */
static bool
listen_inet(const char *host, const char *port, int *fds, int *nfds,
            struct err **errp)
{
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE | AI_ADDRCONFIG,
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res, *ai;
    int rc, saved = 0;

    rc = getaddrinfo(host && *host ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        err_setf(errp, "address resolution failed for %s:%s: %s",
                 host ? host : "", port, gai_strerror(rc));
        return false;
    }
    for (ai = res; ai && *nfds < NBDSRV_MAX_LISTENERS; ai = ai->ai_next) {
        int one = 1;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                        ai->ai_protocol);

        if (fd < 0) {
            saved = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6) {
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 ||
            listen(fd, 128) < 0) {
            saved = errno;
            close(fd);
            continue;
        }
        fds[(*nfds)++] = fd;
    }
    freeaddrinfo(res);
    if (*nfds == 0) {
        err_setf_errno(errp, saved ? saved : EADDRNOTAVAIL,
                       "Failed to bind socket");
        return false;
    }
    return true;
}

bool
nbd_server_start(json_t *addr, const char *tls_creds,
                 int64_t max_connections, struct err **errp)
{
    const char *type;
    json_t *data;
    int fds[NBDSRV_MAX_LISTENERS];
    int nfds = 0;
    bool tcp = false;

    if (nbdsrv_running()) {
        err_setf(errp, "NBD server already running");
        return false;
    }
    if (tls_creds) {
        err_setf(errp, "TLS is not supported by this server");
        return false;
    }
    if (max_connections < 0 || max_connections > UINT32_MAX) {
        err_setf(errp, "Parameter 'max-connections' expects uint32");
        return false;
    }
    if (!json_is_object(addr) ||
        !json_is_string(json_object_get(addr, "type"))) {
        err_setf(errp, "Parameter 'addr.type' is missing");
        return false;
    }
    type = json_string_value(json_object_get(addr, "type"));
    /* SocketAddressLegacy nests the address in "data"; accept both. */
    data = json_object_get(addr, "data");
    if (!json_is_object(data)) {
        data = addr;
    }
    if (!strcmp(type, "unix")) {
        json_t *path = json_object_get(data, "path");

        if (!json_is_string(path)) {
            err_setf(errp, "Parameter 'addr.path' is missing");
            return false;
        }
        fds[0] = listen_unix(json_string_value(path), errp);
        if (fds[0] < 0) {
            return false;
        }
        nfds = 1;
    } else if (!strcmp(type, "inet")) {
        json_t *host = json_object_get(data, "host");
        json_t *port = json_object_get(data, "port");
        char portbuf[32];

        if (json_is_integer(port)) {
            snprintf(portbuf, sizeof(portbuf), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(port));
        } else if (json_is_string(port) &&
                   strlen(json_string_value(port)) < sizeof(portbuf)) {
            snprintf(portbuf, sizeof(portbuf), "%s",
                     json_string_value(port));
        } else {
            err_setf(errp, "Parameter 'addr.port' is missing");
            return false;
        }
        if (host && !json_is_string(host)) {
            err_setf(errp, "Invalid parameter type for 'addr.host', "
                     "expected: string");
            return false;
        }
        if (!listen_inet(host ? json_string_value(host) : NULL, portbuf,
                         fds, &nfds, errp)) {
            return false;
        }
        tcp = true;
    } else {
        err_setf(errp, "Parameter 'addr.type' does not accept value '%s'",
                 type);
        return false;
    }

    mutex_lock(&g_nbdsrv_lock);
    g_running = true;
    g_max_connections = max_connections;
    mutex_unlock(&g_nbdsrv_lock);
    g_nlisteners = nfds;
    for (int i = 0; i < nfds; i++) {
        g_listeners[i].fd = fds[i];
        g_listeners[i].tcp = tcp;
        thread_create(&g_listeners[i].thread, "nbd-accept", accept_thread,
                      &g_listeners[i]);
    }
    return true;
}

bool
nbd_server_stop(struct err **errp)
{
    if (!nbdsrv_running()) {
        err_setf(errp, "NBD server not running");
        return false;
    }
    mutex_lock(&g_nbdsrv_lock);
    g_running = false;
    mutex_unlock(&g_nbdsrv_lock);
    for (int i = 0; i < g_nlisteners; i++) {
        shutdown(g_listeners[i].fd, SHUT_RDWR);
        thread_join(g_listeners[i].thread);
        close(g_listeners[i].fd);
    }
    g_nlisteners = 0;
    /* As QEMU: stopping the server removes every NBD export. */
    nbdexp_delete_all();
    mutex_lock(&g_nbdsrv_lock);
    nbdsrv_shutdown_conns_locked(NULL);
    nbdsrv_wait_conns_locked(NULL);
    mutex_unlock(&g_nbdsrv_lock);
    return true;
}
