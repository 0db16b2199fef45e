/* SPDX-License-Identifier: MIT */
/*
 * The NBD server: listening sockets (nbd-server-start/stop), connections
 * negotiated and served by the pool's shared threads (pool.c), requests
 * run on the export's block handle.
 *
 * Design notes.
 *
 *   Threads: one accept thread; the pool's threads, shared by every
 *   connection (at most NBDPOOL_MAX_THREADS, and at most NBDSRV_CONN_THREADS
 *   working for one connection).  A connection waiting for its client
 *   (negotiating, or idle between requests) holds no thread: its socket
 *   is armed in the pool's epoll set.  Replies may go out of order; a reply
 *   (all chunks of it) is written under conn->write_lock, so replies never
 *   interleave within a byte stream.
 *
 *   Negotiation (handshake.c) is non-blocking: each step reads what has
 *   come and answers it.  A client gets handshake-max-seconds (default
 *   10, as QEMU) from accept to the start of transmission; the accept
 *   thread shuts down the sockets of those past their deadline (the list
 *   of negotiating connections is in accept order, so in deadline order).
 *
 *   The reader role: one thread at a time reads requests (through a 64 KiB
 *   buffer, so a burst costs one read(2)) and runs each one itself.  On two
 *   cores shared with the client, waking another thread per request was
 *   most of the cost of a small request; QEMU avoids it with coroutines.
 *   When a request is about to sleep (util.h's thread_may_block(): a
 *   condition wait, I/O on a real device, the NBD client waiting for its
 *   server, a reply the client is slow to read) the reader first passes
 *   the role on, and another thread reads on while the first one waits;
 *   that thread returns to the pool when its request is done.  So
 *   requests run in parallel exactly when they block.  The role is passed
 *   lazily (reader_hand_off()): it waits in the epoll set, and a thread
 *   takes it only when a request comes while the first still sleeps; only
 *   bytes already read ahead send it through the run queue at once.  At
 *   queue depth 1 no second thread wakes per request.
 *   When the socket has nothing to read, the reader busy-polls briefly,
 *   then waits on the socket for up to NBDSRV_LINGER_MS (conn_recv_some),
 *   and only then arms the socket in the epoll set and returns to the
 *   pool: the thread epoll wakes for the next request reads it.
 *
 *   Flow control: at most NBDSRV_CONN_THREADS requests of a connection run
 *   at once, and the reader admits one only while the connection has fewer
 *   than NBDSRV_MAX_INFLIGHT bytes of payload (reads and writes) in flight,
 *   so a client flooding requests blocks itself, not the daemon.  A WRITE
 *   longer than the maximum payload (32 MiB) is a protocol violation
 *   (spec: may disconnect); everything else out of range gets an error
 *   reply.
 *
 *   Bounded waits: a send waits for the client to take bytes at most
 *   NBDSRV_SEND_TIMEOUT_SECS without progress, then the connection is
 *   dropped; while one reply waits so, the others wait for write_lock
 *   without passing the reader role on, so a client that stops reading
 *   holds at most two threads.  A request's payload that comes slowly is
 *   read as it comes (the reader role waits in the epoll set).
 *
 *   Ending: EOF, a broken frame or NBD_CMD_DISC end the reader role;
 *   requests already running finish (DISC: "finish outstanding requests"),
 *   and once the socket is dead (write failure, shutdown by export
 *   deletion) nothing more is admitted.  When the last thread working for
 *   the connection leaves, it detaches from its export (the last use of
 *   it) and frees the connection.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "crypto/authz.h"
#include "crypto/tls-creds.h"
#include "crypto/tls-session.h"
#include "nbd/errno-map.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "nbd/server.h"
#include "runtime/loop.h"
#include "util.h"

#define NBDSRV_CONN_THREADS 8
#define NBDSRV_RBUF         (64 * 1024)
#define NBDSRV_BUF_ALIGN    4096   /* payload buffers: a page */
/* Then a thread waits this long for the next request before the reader
 * role goes to the epoll set. */
#define NBDSRV_LINGER_MS    20
#define NBDSRV_MAX_INFLIGHT (64U * 1024 * 1024)
#define NBDSRV_MAX_LISTENERS 8
/*
 * Send buffer asked for on a unix socket (the kernel doubles it, capped
 * at net.core.wmem_max).  A unix socket keeps its default, 208 KiB,
 * where TCP grows its own up to tcp_wmem's 4 MiB: with 256 KiB read
 * replies nearly every reply then filled the buffer, and its sender
 * passed the reader role on, slept in poll(2) and was woken again, five
 * futex calls and six context switches per request.
 */
#define NBDSRV_UNIX_SNDBUF  (2 * 1024 * 1024)
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

/* Wait until fd takes bytes, at most until *deadline (set on the first
 * wait after progress).  0 or -errno (-ETIMEDOUT). */
static int
wait_writable(int fd, int64_t *deadline, bool *stalled)
{
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int64_t now = clock_ns();

    if (*deadline == 0) {
        *deadline = now + NBDSRV_SEND_TIMEOUT_SECS * 1000000000LL;
    }
    if (now >= *deadline) {
        return -ETIMEDOUT;
    }
    /* Stalled first: the reader role passes on here, and the next
     * request's reply must see it (reply_lock), or it passes the role
     * on again instead of queueing behind us. */
    if (stalled) {
        __atomic_store_n(stalled, true, __ATOMIC_RELAXED);
    }
    thread_may_block();   /* the client is slow to read replies */
    if (poll(&p, 1, (int)((*deadline - now) / 1000000 + 1)) < 0 &&
        errno != EINTR) {
        return -errno;
    }
    return 0;
}

/* nbdsrv_writev, through tls when it is set; *stalled (when given) is set
 * while a send waits for the client and cleared when it is done. */
static int
sendv(int fd, struct tls_session *tls, struct iovec *v, int n,
      bool *stalled)
{
    int64_t deadline = 0;
    int ret = 0;

    while (n > 0) {
        struct msghdr msg = {.msg_iov = v, .msg_iovlen = (size_t)n};
        ssize_t r;

        if (v->iov_len == 0) {
            v++;
            n--;
            continue;
        }
        if (tls) {
            r = tls_session_sendv(tls, v, n);
        } else {
            r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (r < 0 && errno == ENOTSOCK) {
                r = writev(fd, v, n);
            }
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ret = wait_writable(fd, &deadline, stalled);
            if (ret < 0) {
                break;
            }
            continue;
        }
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            ret = -errno;
            break;
        }
        deadline = 0;   /* progress: the client gets a new timeout */
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
    if (stalled) {
        __atomic_store_n(stalled, false, __ATOMIC_RELAXED);
    }
    return ret;
}

int
nbdsrv_writev(int fd, const void *a, size_t alen, const void *b,
              size_t blen, const void *c, size_t clen)
{
    struct iovec iov[3] = {
        {(void *)a, alen}, {(void *)b, blen}, {(void *)c, clen},
    };

    return sendv(fd, NULL, iov, 3, NULL);
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

/* nbdsrv_serve_fds() waits here for its connection to end. */
struct serve_wait {
    struct lock lock;
    pthread_cond_t cond;
    bool done;
};

struct nbdsrv_conn {
    struct nbdsrv_session s;
    struct nbdpool_item item;    /* pool mode: the socket's epoll item */
    int fd;              /* socket (== in_fd) in pool mode, else -1 */
    bool owns_fd;        /* accepted here: closed when the connection ends */
    bool transmission;   /* negotiation is over (the item's owner) */
    int64_t deadline;    /* end of negotiation allowed (ns), 0: none */
    struct serve_wait *waiter;   /* nbdsrv_serve_fds in pool mode */

    /* Replies.  Protected by: write_lock.  send_stalled: atomic. */
    struct lock write_lock;
    bool send_stalled;           /* a reply waits for the client to read */

    /* Threads and flow control.  Protected by: lock. */
    struct lock lock;
    pthread_cond_t space_cond;   /* the reader waits for room */
    int busy;                    /* threads working for the connection */
    bool reader_wanted;          /* the role waits for one of them */
    uint64_t inflight;           /* payload bytes admitted, not replied */
    bool quit;                   /* the stream ended: admit nothing */
    bool dead;                   /* socket unusable: admit nothing more */

    /* Reader role only: bytes read ahead from in_fd; how to wait for the
     * client; the request being read when the socket ran dry. */
    uint8_t *rbuf;
    size_t rpos, rlen;
    int64_t poll_ns;
    int64_t wait_start;          /* when the last wait for data began */
    bool linger;                 /* that wait ended within the linger */
    uint8_t hdr[28];
    size_t hdr_got;
    struct nbdsrv_req *req;      /* admitted; its payload being read */
    size_t pay_got;

    /* Protected by: g_nbdsrv_lock. */
    TAILQ_ENTRY(nbdsrv_conn) link;
    TAILQ_ENTRY(nbdsrv_conn) hs_link;   /* in g_handshakes */
    bool in_handshakes;
};

struct nbdsrv_listener {
    int fd;
    bool tcp;
};

/* Protected by: g_nbdsrv_lock. */
static TAILQ_HEAD(, nbdsrv_conn) g_conns = TAILQ_HEAD_INITIALIZER(g_conns);
/* Negotiating connections with a deadline, oldest (first due) first. */
static TAILQ_HEAD(, nbdsrv_conn) g_handshakes =
    TAILQ_HEAD_INITIALIZER(g_handshakes);
static unsigned g_nconns;
static bool g_running;
static int64_t g_max_connections;
static int64_t g_handshake_ns;
/* TLS: set by start, released by stop once every connection (which
 * borrows them) has ended.  Main thread; the accept thread reads them. */
static struct tls_creds *g_tls_creds;
static char *g_tls_authz;
/* A TCP address that is not loopback, served without TLS: for warnings
 * (NULL when none).  Main thread. */
static char *g_insecure_addr;
/* Main thread only (the accept thread reads them while it runs). */
static struct nbdsrv_listener g_listeners[NBDSRV_MAX_LISTENERS];
static int g_nlisteners;
static pthread_t g_accept_thread;
/* Wakes the accept thread: stop, a free slot, a new deadline. */
static int g_accept_kick = -1;

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

static void
accept_kick(void)
{
    uint64_t one = 1;

    if (g_accept_kick >= 0 &&
        write(g_accept_kick, &one, sizeof(one)) < 0) {
        /* EAGAIN: the counter is full, the thread wakes anyway */
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

/* A reply's bytes: the socket's send timeout applies. */
static int
conn_writev(struct nbdsrv_conn *conn, const void *a, size_t alen,
            const void *b, size_t blen, const void *c, size_t clen)
{
    struct iovec iov[3] = {
        {(void *)a, alen}, {(void *)b, blen}, {(void *)c, clen},
    };

    return sendv(conn->s.out_fd, conn->s.tls, iov, 3, &conn->send_stalled);
}

/* ---- Replies ---------------------------------------------------------- */

/* Take write_lock.  Its holder may be stuck sending to a client that is
 * slow to read, so waiting for it counts as blocking (the reader role
 * moves on first), unless the holder is already waiting for the client:
 * then reading more of its requests would only queue more replies. */
static void
reply_lock(struct nbdsrv_conn *conn)
{
    if (__atomic_load_n(&conn->send_stalled, __ATOMIC_RELAXED)) {
        mutex_lock(&conn->write_lock);
    } else {
        mutex_lock_may_block(&conn->write_lock);
    }
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
    ret = conn_writev(conn, hdr, sizeof(hdr), data,
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
    return conn_writev(conn, hdr, sizeof(hdr), a, alen, b, blen);
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

/*
 * A READ or WRITE payload buffer, aligned to the page: a file opened with
 * cache.direct=on takes it as it is (block/core/io.c bounces a buffer not
 * aligned to the node's mem_alignment: one more allocation and copy of the
 * payload per request).  Aligned by hand inside a malloc() block, not by
 * posix_memalign(): glibc serves an aligned 1 MiB block with mmap() every
 * time (its dynamic mmap threshold stays just below it), and the munmap()
 * of each made tmpfs sequential writes 5 times slower (TLB shootdowns on
 * every core the daemon's threads run on).  The block's start is kept just
 * before the buffer.  NULL without memory; payload_free() frees it.
 */
static void *
payload_alloc(size_t len)
{
    uint8_t *base = malloc(len + NBDSRV_BUF_ALIGN + sizeof(void *));
    uint8_t *p;

    if (!base) {
        return NULL;
    }
    p = (uint8_t *)align_up((uintptr_t)base + sizeof(void *),
                            NBDSRV_BUF_ALIGN);
    memcpy(p - sizeof(void *), &base, sizeof(void *));
    return p;
}

static void
payload_free(void *p)
{
    void *base;

    if (p) {
        memcpy(&base, (uint8_t *)p - sizeof(void *), sizeof(void *));
        free(base);
    }
}

static void
do_read(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    struct nbdexp *exp = conn->s.exp;
    uint8_t *buf;
    uint8_t off8[8];
    uint64_t pos, end;
    int ret, nchunks = 0;
    struct {
        uint64_t len;
        bool hole;
    } chunks[NBDSRV_MAX_READ_CHUNKS];

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
    buf = payload_alloc(req->len);
    if (!buf) {
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    ret = block_handle_pread(exp->h, req->offset, req->len, buf, 0);
    if (ret < 0) {
        payload_free(buf);
        reply_errno(conn, req, ret);
        return;
    }
    if (!conn->s.structured) {
        send_simple(conn, req, 0, buf, req->len);
        payload_free(buf);
        return;
    }

    /*
     * Structured: zero ranges (by block status) as OFFSET_HOLE, the rest
     * as OFFSET_DATA; one chunk when DF asks for it.  Each chunk's offset
     * is absolute (spec, structured reply chunks).  The chunks are found
     * before the reply lock is taken: block status enters the graph and
     * may wait for I/O, which the lock order forbids under write_lock.
     */
    pos = req->offset;
    end = req->offset + req->len;
    while (pos < end) {
        uint64_t pnum = end - pos;
        bool hole = false;
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
        chunks[nchunks].len = pnum;
        chunks[nchunks].hole = hole;
        pos += pnum;
        nchunks++;
    }

    reply_lock(conn);
    pos = req->offset;
    ret = 0;
    for (int i = 0; i < nchunks && ret == 0; i++) {
        uint64_t pnum = chunks[i].len;
        bool last = i == nchunks - 1;

        put_be64(off8, pos);
        if (chunks[i].hole) {
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
    }
    mutex_unlock(&conn->write_lock);
    payload_free(buf);
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
    size_t nctx = conn->s.nctx;
    uint32_t *ext = malloc(nctx * max * 2 * sizeof(uint32_t));
    int *next = malloc(nctx * sizeof(int));
    uint8_t *payload = malloc(4 + max * 8);
    int ret = 0;

    if (!ext || !next || !payload) {
        free(ext);
        free(next);
        free(payload);
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    /* Compute every context first, with no lock held (block status
     * enters the graph and may wait for I/O: never under write_lock),
     * so that an error can still be the only reply; then send them all
     * under one lock. */
    for (size_t i = 0; i < nctx; i++) {
        next[i] = nbdsrv_meta_extents(exp, conn->s.ctx_ids[i], req->offset,
                                      req->len, ext + i * max * 2, max);
    }
    reply_lock(conn);
    for (size_t i = 0; i < nctx && ret >= 0; i++) {
        const uint32_t *e = ext + i * max * 2;
        int n = next[i];

        if (n < 0) {
            uint8_t err[6 + 32];
            const char *msg = "block status failed";

            put_be32(err, nbdsrv_errno_to_nbd(n));
            put_be16(err + 4, (uint16_t)strlen(msg));
            memcpy(err + 6, msg, strlen(msg));
            ret = send_chunk_locked(conn, req,
                                    i + 1 == nctx ? NBD_REPLY_FLAG_DONE : 0,
                                    NBD_REPLY_TYPE_ERROR, err,
                                    6 + strlen(msg), NULL, 0);
            continue;
        }
        put_be32(payload, conn->s.ctx_ids[i]);
        for (int j = 0; j < n; j++) {
            put_be32(payload + 4 + 8 * j, e[2 * j]);
            put_be32(payload + 8 + 8 * j, e[2 * j + 1]);
        }
        ret = send_chunk_locked(conn, req,
                                i + 1 == nctx ? NBD_REPLY_FLAG_DONE : 0,
                                NBD_REPLY_TYPE_BLOCK_STATUS, payload,
                                4 + 8 * (size_t)n, NULL, 0);
    }
    mutex_unlock(&conn->write_lock);
    free(ext);
    free(next);
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
    payload_free(req->data);
    free(req);
}

/* ---- The reader ------------------------------------------------------- */

/* What reading toward the next request gave. */
enum { RD_REQUEST, RD_AGAIN, RD_END };

/* What the client sent so far, without waiting: recv(2) or a TLS record.
 * -1 with EAGAIN when nothing is there. */
static ssize_t
conn_recv_nowait(struct nbdsrv_conn *conn, void *buf, size_t len)
{
    if (conn->s.tls) {
        return tls_session_recv(conn->s.tls, buf, len);
    }
    return recv(conn->fd, buf, len, MSG_DONTWAIT);
}

/* Receive into buf without sleeping, for up to ns nanoseconds.  -2 when
 * nothing came in time, else what recv said. */
static ssize_t
conn_poll_recv(struct nbdsrv_conn *conn, void *buf, size_t len, int64_t ns)
{
    int64_t end = clock_ns() + ns;

    for (;;) {
        ssize_t r = conn_recv_nowait(conn, buf, len);

        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
            return r;
        }
        if (clock_ns() >= end) {
            return -2;
        }
        sched_yield();      /* poll on idle CPU only, never in its way */
    }
}

/* The last wait for the client (from when the busy-poll gave up) sets the
 * poll time (poll_adapt(), with the export's iothread's tuning once the
 * connection has one).  And whether the next wait lingers: only if this
 * one ended within the linger time, so idle clients cost no thread. */
static void
conn_adapt_wait(struct nbdsrv_conn *conn)
{
    int64_t waited = clock_ns() - conn->wait_start;
    const struct nbdexp *exp = conn->s.exp;

    conn->poll_ns = poll_adapt(exp ? &exp->poll : &poll_tuning_default,
                               conn->poll_ns, waited);
    conn->linger = waited < NBDSRV_LINGER_MS * 1000000LL;
}

/*
 * Some bytes of the request stream into buf; -2 when none came (the
 * reader role then waits in the epoll set).  Busy-poll first: a client
 * that answers within microseconds (queue depth 1) would otherwise pay
 * for waking a sleeping thread, which in a VM (an idle vCPU halts) is
 * tens of microseconds.  Then, for a client whose last request came
 * within NBDSRV_LINGER_MS, the thread waits on this socket that long
 * before it gives the reader role to the epoll set: a busy client costs
 * one wake-up and one recv per wait, as a blocking read did, and the same
 * thread serves it on (the pool lends a thread so only while well below
 * its cap).  Without the pool (fd mode), a plain read.
 *
 * With TLS every read goes through the session, which may hold bytes that
 * poll(2) cannot see (tls_session_pending()): it never reports "nothing"
 * while it has some, since a TLS read that would wait has emptied it.
 */
static ssize_t
conn_recv_some(struct nbdsrv_conn *conn, void *buf, size_t len)
{
    struct pollfd p = {.fd = conn->fd, .events = POLLIN};
    ssize_t r;

    if (conn->fd < 0) {
        if (conn->s.tls) {
            return tls_session_recv(conn->s.tls, buf, len);
        }
        return read(conn->s.in_fd, buf, len);
    }
    r = conn_poll_recv(conn, buf, len, conn->poll_ns);
    if (r != -2) {
        return r;
    }
    conn->wait_start = clock_ns();
    if (!conn->linger || !nbdpool_may_linger() ||
        poll(&p, 1, NBDSRV_LINGER_MS) <= 0) {
        return -2;
    }
    r = conn_recv_nowait(conn, buf, len);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return -2;
    }
    conn_adapt_wait(conn);
    return r;
}

/* want bytes of the request stream into dst + *got: the read-ahead buffer
 * first.  1 when complete, 0 when the socket ran dry, -1 at EOF or on an
 * error. */
static int
conn_fill(struct nbdsrv_conn *conn, uint8_t *dst, size_t want, size_t *got)
{
    while (*got < want) {
        size_t need = want - *got;
        ssize_t r;

        if (conn->rpos < conn->rlen) {
            size_t n = MIN(need, conn->rlen - conn->rpos);

            memcpy(dst + *got, conn->rbuf + conn->rpos, n);
            conn->rpos += n;
            *got += n;
            continue;
        }
        if (need >= NBDSRV_RBUF / 2) {
            r = conn_recv_some(conn, dst + *got, need);   /* big payload */
            if (r > 0) {
                *got += (size_t)r;
            }
        } else {
            r = conn_recv_some(conn, conn->rbuf, NBDSRV_RBUF);
            if (r > 0) {
                conn->rpos = 0;
                conn->rlen = (size_t)r;
            }
        }
        if (r == -2) {
            return 0;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            return -1;
        }
    }
    return 1;
}

/* The rest of a WRITE payload into req->data; without memory for it the
 * payload is swallowed (the request fails with ENOMEM).  As conn_fill. */
static int
read_payload(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    if (req->data) {
        return conn_fill(conn, req->data, req->len, &conn->pay_got);
    }
    while (conn->pay_got < req->len) {
        uint8_t sink[4096];
        size_t got = 0;
        int r = conn_fill(conn, sink,
                          MIN(req->len - conn->pay_got, sizeof(sink)), &got);

        conn->pay_got += got;
        if (r <= 0) {
            return r;
        }
    }
    return 1;
}

/* A request from its header; NULL when the stream must end (DISC, a
 * WRITE larger than we buffer). */
static struct nbdsrv_req *
parse_request(const uint8_t *hdr)
{
    struct nbdsrv_req *req = xzalloc(sizeof(*req));

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
    return req;
}

/* Admission: bounded bytes in flight, but always one request.  The wait
 * ends when requests of this connection finish.  False when the
 * connection died meanwhile. */
static bool
admit(struct nbdsrv_conn *conn, struct nbdsrv_req *req)
{
    SCOPED_LOCK(&conn->lock);
    while (!conn->dead && conn->inflight > 0 &&
           conn->inflight + req->cost > NBDSRV_MAX_INFLIGHT) {
        cond_wait(&conn->space_cond, &conn->lock);
    }
    if (conn->dead) {
        return false;
    }
    conn->inflight += req->cost;
    return true;
}

/* Read toward the next request, admitted and with its payload, in *out.
 * RD_AGAIN when the socket ran dry (what was read is kept for the next
 * call), RD_END when the stream ends (EOF, a broken frame, DISC, a dead
 * socket). */
static int
read_request(struct nbdsrv_conn *conn, struct nbdsrv_req **out)
{
    struct nbdsrv_req *req = conn->req;
    int r;

    if (!req) {
        r = conn_fill(conn, conn->hdr, sizeof(conn->hdr), &conn->hdr_got);
        if (r <= 0) {
            return r == 0 ? RD_AGAIN : RD_END;
        }
        conn->hdr_got = 0;
        if (get_be32(conn->hdr) != NBD_REQUEST_MAGIC) {
            return RD_END;
        }
        req = parse_request(conn->hdr);
        if (!req) {
            return RD_END;
        }
        if (!admit(conn, req)) {
            free(req);
            return RD_END;
        }
        if (req->type == NBD_CMD_WRITE && req->len) {
            req->data = payload_alloc(req->len);
            req->nomem = !req->data;
        }
        conn->req = req;
        conn->pay_got = 0;
    }
    if (req->type == NBD_CMD_WRITE && req->len) {
        r = read_payload(conn, req);
        if (r <= 0) {
            return r == 0 ? RD_AGAIN : RD_END;
        }
    }
    conn->req = NULL;
    *out = req;
    return RD_REQUEST;
}

/* The blocking hook (util.h) of a reader running a request: pass the
 * reader role on before sleeping.  Lazily when nothing of the next
 * request is here yet: the role waits in the epoll set, armed one-shot
 * on the socket, and a thread takes it only if a request comes while this
 * one still sleeps; at queue depth 1 the request's own thread, back in the
 * pool, is woken by the next request, so a request that sleeps on a disk
 * costs no wake-up of another thread.  At once, through the pool's run
 * queue, when bytes of the next request are already read ahead (epoll
 * cannot see them).  Or to the next thread of this connection to finish
 * when NBDSRV_CONN_THREADS already work for it: the epoll path's thread
 * counts itself in busy (conn_run), so the role is parked only while
 * busy < NBDSRV_CONN_THREADS, and busy cannot grow while it waits.  Locks:
 * conn->lock and the pool's, which are never held around block calls. */
struct reader_turn {
    struct nbdsrv_conn *conn;
    bool handed_off;
};

/* Bytes of the request stream already read, which epoll cannot see.  The
 * reader role only. */
static bool
reader_holds_bytes(struct nbdsrv_conn *conn)
{
    return conn->rpos < conn->rlen ||
           (conn->s.tls && tls_session_pending(conn->s.tls));
}

static void
reader_hand_off(void *opaque)
{
    struct reader_turn *turn = opaque;
    struct nbdsrv_conn *conn = turn->conn;
    bool now = reader_holds_bytes(conn);   /* not under conn->lock */
    enum { WANTED, QUEUE, PARK } how = WANTED;

    mutex_lock(&conn->lock);
    if (conn->busy < NBDSRV_CONN_THREADS) {
        how = now ? QUEUE : PARK;
        if (how == QUEUE) {
            conn->busy++;        /* the thread that will take it */
        }
    } else {
        conn->reader_wanted = true;
    }
    mutex_unlock(&conn->lock);
    turn->handed_off = true;
    if (how == QUEUE) {
        nbdpool_queue(&conn->item);
    } else if (how == PARK) {
        conn->wait_start = clock_ns();   /* conn_adapt_wait() reads it */
        nbdpool_watch(conn->fd, &conn->item, EPOLLIN);   /* last use */
    }
}

static void
run_request(struct nbdsrv_conn *conn, struct nbdsrv_req *req,
            struct reader_turn *turn)
{
    if (req->nomem) {
        reply_error(conn, req, NBD_ENOMEM, "out of memory");
        return;
    }
    if (turn) {
        thread_set_block_hook(reader_hand_off, turn);
    }
    handle_request(conn, req);
    thread_set_block_hook(NULL, NULL);
}

static void
conn_quit(struct nbdsrv_conn *conn)
{
    mutex_lock(&conn->lock);
    conn->quit = true;
    mutex_unlock(&conn->lock);
}

/* Hold the reader role: read requests and run each on this thread until
 * one blocks (the role went on), the socket runs dry (the role waits in
 * the epoll set) or the stream ends.  The thread stays counted in busy. */
static void
reader_loop(struct nbdsrv_conn *conn)
{
    struct reader_turn turn = {.conn = conn};

    while (!turn.handed_off) {
        struct nbdsrv_req *req;
        int r = read_request(conn, &req);

        if (r == RD_AGAIN) {
            if (conn->s.tls) {
                if (tls_session_pending(conn->s.tls)) {
                    continue;   /* bytes epoll would not see */
                }
                tls_session_idle(conn->s.tls);
            }
            nbdpool_watch(conn->fd, &conn->item, EPOLLIN);
            return;
        }
        if (r == RD_END) {
            conn_quit(conn);
            return;
        }
        run_request(conn, req, &turn);
        req_done(conn, req);
    }
}

static void conn_finish(struct nbdsrv_conn *conn);

/* A thread is done working for the connection: it takes the reader role
 * if that waits for it, else leaves; the last one out after the stream
 * ended frees the connection. */
static void
conn_leave(struct nbdsrv_conn *conn)
{
    for (;;) {
        bool last;

        mutex_lock(&conn->lock);
        if (conn->reader_wanted) {
            conn->reader_wanted = false;
            mutex_unlock(&conn->lock);
            reader_loop(conn);
            continue;
        }
        last = --conn->busy == 0 && conn->quit;
        mutex_unlock(&conn->lock);
        if (last) {
            conn_finish(conn);
        }
        return;
    }
}

/* Negotiation is over: the connection leaves the deadline list and this
 * thread becomes its reader. */
static void
conn_start_transmission(struct nbdsrv_conn *conn)
{
    mutex_lock(&g_nbdsrv_lock);
    if (conn->in_handshakes) {
        TAILQ_REMOVE(&g_handshakes, conn, hs_link);
        conn->in_handshakes = false;
    }
    mutex_unlock(&g_nbdsrv_lock);
    conn->rbuf = xmalloc(NBDSRV_RBUF);
    conn->transmission = true;
    mutex_lock(&conn->lock);
    conn->busy = 1;
    mutex_unlock(&conn->lock);
}

/* The pool's entry point for a connection: a negotiation step, the
 * reader role back from the epoll set (events), or passed on by a request
 * that blocked (queued: already counted in busy). */
static void
conn_run(struct nbdpool_item *it, uint32_t events)
{
    struct nbdsrv_conn *conn = container_of(it, struct nbdsrv_conn, item);

    if (!conn->transmission) {
        switch (nbdsrv_hs_step(&conn->s)) {
        case NBDSRV_HS_WANT_READ:
            if (conn->s.tls && tls_session_pending(conn->s.tls)) {
                nbdpool_queue(&conn->item);   /* epoll would not see it */
                return;
            }
            nbdpool_watch(conn->fd, &conn->item, EPOLLIN);
            return;
        case NBDSRV_HS_WANT_WRITE:
            nbdpool_watch(conn->fd, &conn->item, EPOLLOUT);
            return;
        case NBDSRV_HS_DONE:
            conn_start_transmission(conn);
            break;
        default:
            conn_finish(conn);
            return;
        }
    } else if (events) {
        mutex_lock(&conn->lock);
        conn->busy++;
        mutex_unlock(&conn->lock);
        conn_adapt_wait(conn);   /* the role is back from the epoll set */
    }
    reader_loop(conn);
    conn_leave(conn);
}

static struct nbdsrv_conn *
conn_new(int in_fd, int out_fd, int fd)
{
    struct nbdsrv_conn *conn = xzalloc(sizeof(*conn));

    conn->s.in_fd = in_fd;
    conn->s.out_fd = out_fd;
    conn->fd = fd;
    conn->item.run = conn_run;
    lock_init(&conn->write_lock, LOCK_NBDSRV_WRITE);
    lock_init(&conn->lock, LOCK_NBDSRV_CONN);
    cond_init(&conn->space_cond);
    return conn;
}

/* Leave the connection list, free, then detach from the export and
 * uncount: whoever waits for connections to end (export deletion,
 * shutdown) goes on only once the memory is freed. */
static void
conn_finish(struct nbdsrv_conn *conn)
{
    struct serve_wait *w = conn->waiter;
    struct nbdexp *exp;
    bool was_full;

    if (conn->req) {
        req_done(conn, conn->req);
        conn->req = NULL;
    }
    nbdsrv_session_clear(&conn->s);
    if (conn->fd >= 0) {
        shutdown(conn->fd, SHUT_RDWR);
        nbdpool_unwatch(conn->fd, &conn->item);
    }
    mutex_lock(&g_nbdsrv_lock);
    TAILQ_REMOVE(&g_conns, conn, link);
    if (conn->in_handshakes) {
        TAILQ_REMOVE(&g_handshakes, conn, hs_link);
    }
    exp = conn->s.exp;
    mutex_unlock(&g_nbdsrv_lock);
    if (conn->owns_fd) {
        close(conn->fd);
    }
    mutex_destroy(&conn->write_lock);
    mutex_destroy(&conn->lock);
    cond_destroy(&conn->space_cond);
    free(conn->rbuf);
    free(conn);

    mutex_lock(&g_nbdsrv_lock);
    was_full = g_max_connections > 0 && g_nconns == g_max_connections;
    g_nconns--;
    if (exp) {
        assert(exp->nconns > 0);
        exp->nconns--;
    }
    cond_broadcast(&g_nbdsrv_cond);
    if (was_full) {
        accept_kick();   /* a slot is free: accept again */
    }
    mutex_unlock(&g_nbdsrv_lock);
    if (w) {
        mutex_lock(&w->lock);
        w->done = true;
        cond_broadcast(&w->cond);
        mutex_unlock(&w->lock);
    }
}

static void
conn_register(struct nbdsrv_conn *conn)
{
    mutex_lock(&g_nbdsrv_lock);
    TAILQ_INSERT_TAIL(&g_conns, conn, link);
    g_nconns++;
    if (conn->deadline) {
        TAILQ_INSERT_TAIL(&g_handshakes, conn, hs_link);
        conn->in_handshakes = true;
    }
    mutex_unlock(&g_nbdsrv_lock);
}

/* The whole session on the calling thread with blocking I/O. */
static void
serve_inline(struct nbdsrv_conn *conn)
{
    struct nbdsrv_req *req;

    if (nbdsrv_handshake(&conn->s) < 0) {
        return;
    }
    conn->rbuf = xmalloc(NBDSRV_RBUF);
    conn->transmission = true;
    while (read_request(conn, &req) == RD_REQUEST) {
        run_request(conn, req, NULL);
        req_done(conn, req);
    }
}

void
nbdsrv_serve_fds(int in_fd, int out_fd, int nthreads,
                 struct tls_creds *tls_creds, const char *tls_authz)
{
    struct nbdsrv_conn *conn;
    struct serve_wait w = {.done = false};

    if (nthreads <= 1) {
        conn = conn_new(in_fd, out_fd, -1);
        conn->s.tls_creds = tls_creds;
        conn->s.tls_authz = tls_authz;
        conn_register(conn);
        serve_inline(conn);
        conn_finish(conn);
        return;
    }
    assert(in_fd == out_fd);
    nbdpool_start();
    lock_init(&w.lock, LOCK_NBDSRV_WAIT);
    cond_init(&w.cond);
    conn = conn_new(in_fd, out_fd, in_fd);
    conn->waiter = &w;
    conn->s.nonblock = true;
    conn->s.tls_creds = tls_creds;
    conn->s.tls_authz = tls_authz;
    conn_register(conn);
    nbdsrv_hs_begin(&conn->s);
    nbdpool_queue(&conn->item);
    mutex_lock(&w.lock);
    while (!w.done) {
        cond_wait(&w.cond, &w.lock);
    }
    mutex_unlock(&w.lock);
    mutex_destroy(&w.lock);
    cond_destroy(&w.cond);
}

/* ---- Listening -------------------------------------------------------- */

/* Shut down the sockets of negotiating connections past their deadline
 * (their next step sees EOF and ends them).  Returns the milliseconds
 * until the next deadline, -1 for none.  Caller holds g_nbdsrv_lock. */
static int
expire_handshakes_locked(void)
{
    int64_t now = clock_ns();
    struct nbdsrv_conn *conn;

    while ((conn = TAILQ_FIRST(&g_handshakes))) {
        if (conn->deadline > now) {
            return (int)((conn->deadline - now) / 1000000 + 1);
        }
        TAILQ_REMOVE(&g_handshakes, conn, hs_link);
        conn->in_handshakes = false;
        shutdown(conn->fd, SHUT_RDWR);
    }
    return -1;
}

/* Is a connection slot free (max-connections)? */
static bool
have_room_locked(void)
{
    return g_max_connections == 0 || g_nconns < (uint64_t)g_max_connections;
}

static bool
have_room(void)
{
    SCOPED_LOCK(&g_nbdsrv_lock);
    return have_room_locked();
}

/* A new client: negotiation starts on the pool. */
static void
accept_one(struct nbdsrv_listener *l)
{
    struct nbdsrv_conn *conn;
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);

    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
            errno == ENOMEM) {
            usleep(100 * 1000);   /* out of resources: back off */
        }
        return;   /* EAGAIN, ECONNABORTED, EINTR: next round */
    }
    if (l->tcp) {
        int one = 1;

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    } else {
        int sz = NBDSRV_UNIX_SNDBUF;

        /* Best effort: the kernel caps it at net.core.wmem_max. */
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    conn = conn_new(fd, fd, fd);
    conn->owns_fd = true;
    conn->s.nonblock = true;
    conn->s.tls_creds = g_tls_creds;
    conn->s.tls_authz = g_tls_authz;
    mutex_lock(&g_nbdsrv_lock);
    if (g_handshake_ns > 0) {
        conn->deadline = clock_ns() + g_handshake_ns;
    }
    mutex_unlock(&g_nbdsrv_lock);
    conn_register(conn);
    nbdsrv_hs_begin(&conn->s);
    nbdpool_queue(&conn->item);
}

/*
 * The accept thread: accepts while there is room (at max-connections it
 * stops, as QEMU does, and new clients wait in the listen backlog until
 * one leaves) and enforces the negotiation deadlines.
 */
static void *
accept_thread(void *opaque UNUSED)
{
    for (;;) {
        struct pollfd p[NBDSRV_MAX_LISTENERS + 1];
        int timeout;
        bool room;
        int n = 1;

        mutex_lock(&g_nbdsrv_lock);
        if (!g_running) {
            mutex_unlock(&g_nbdsrv_lock);
            return NULL;
        }
        timeout = expire_handshakes_locked();
        room = have_room_locked();
        mutex_unlock(&g_nbdsrv_lock);

        p[0] = (struct pollfd){.fd = g_accept_kick, .events = POLLIN};
        for (int i = 0; room && i < g_nlisteners; i++) {
            p[n++] = (struct pollfd){.fd = g_listeners[i].fd,
                                     .events = POLLIN};
        }
        if (poll(p, (nfds_t)n, timeout) <= 0) {
            continue;
        }
        if (p[0].revents) {
            uint64_t v;

            if (read(g_accept_kick, &v, sizeof(v)) < 0) {
                /* EAGAIN: nothing to consume */
            }
        }
        for (int i = 1; i < n; i++) {
            if (p[i].revents && have_room()) {
                accept_one(&g_listeners[i - 1]);
            }
        }
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
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
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

    rc = getaddrinfo(*host ? host : NULL, port, &hints, &res);
    if (rc != 0) {
        err_setf(errp, "address resolution failed for %s:%s: %s", host,
                 port, gai_strerror(rc));
        return false;
    }
    for (ai = res; ai && *nfds < NBDSRV_MAX_LISTENERS; ai = ai->ai_next) {
        int one = 1;
        int fd = socket(ai->ai_family,
                        ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
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

/*
 * The credentials a TLS server needs: a server endpoint, and with
 * tls-authz an identity to check (x509 with verify-peer=off proves none:
 * QEMU then skips the check silently; we refuse, so it fails closed).
 */
static struct tls_creds *
server_tls_creds(const char *id, const char *authz, struct err **errp)
{
    struct tls_creds *c;

    if (!id) {
        if (authz) {
            err_setf(errp, "tls-authz is not permitted without tls-creds");
        }
        return NULL;
    }
    c = tls_creds_get(id, errp);
    if (!c) {
        return NULL;
    }
    if (!tls_creds_check_endpoint(c, TLS_ENDPOINT_SERVER, errp)) {
        tls_creds_put(c);
        return NULL;
    }
    if (authz && tls_creds_options(c)->type == TLS_CREDS_X509 &&
        !tls_creds_options(c)->verify_peer) {
        err_setf(errp, "tls-authz '%s' cannot check clients with "
                 "verify-peer=off in '%s': the client's certificate is the "
                 "identity it checks", authz, id);
        tls_creds_put(c);
        return NULL;
    }
    if (authz && !authz_exists(authz)) {
        fprintf(stderr, "%s: warning: tls-authz object '%s' does not exist: "
                "every client is refused until it does\n",
                program_invocation_short_name, authz);
    }
    return c;
}

void
nbdsrv_warn_insecure(const char *what)
{
    if (g_insecure_addr) {
        fprintf(stderr, "%s: warning: %s: the NBD server listens on %s, "
                "not a loopback address, without TLS: anyone who can reach "
                "it can read and write every writable export (tls-creds, "
                "docs/security.md)\n", program_invocation_short_name, what,
                g_insecure_addr);
    }
}

bool
nbd_server_start(const struct nbd_server_options *opts, struct err **errp)
{
    const struct socket_address *addr = &opts->addr;
    const char *tls_authz = opts->tls_authz;
    struct tls_creds *creds = NULL;
    struct err *err = NULL;
    int fds[NBDSRV_MAX_LISTENERS];
    int nfds = 0;
    bool tcp = false;

    assert_main_thread();
    if (nbdsrv_running()) {
        err_setf(errp, "NBD server already running");
        return false;
    }
    if (opts->max_connections < 0 || opts->max_connections > UINT32_MAX) {
        err_setf(errp, "Parameter 'max-connections' expects uint32");
        return false;
    }
    if (opts->handshake_max_seconds < 0 ||
        opts->handshake_max_seconds > UINT32_MAX) {
        err_setf(errp, "Parameter 'handshake-max-seconds' expects uint32");
        return false;
    }
    creds = server_tls_creds(opts->tls_creds, tls_authz, &err);
    if (err) {
        err_propagate(errp, err);
        goto fail;
    }
    switch (addr->type) {
    case SOCKET_ADDRESS_UNIX:
        fds[0] = listen_unix(addr->path, errp);
        if (fds[0] < 0) {
            goto fail;
        }
        nfds = 1;
        break;
    case SOCKET_ADDRESS_INET:
        /* No host is no default: listening on every interface must be
         * asked for (host "" or "::"), never the result of omission. */
        if (!addr->host) {
            err_setf(errp, "Parameter 'addr.host' is missing");
            goto fail;
        }
        if (!listen_inet(addr->host, addr->port, fds, &nfds, errp)) {
            goto fail;
        }
        tcp = true;
        for (int i = 0; !creds && !g_insecure_addr && i < nfds; i++) {
            if (!socket_is_loopback(fds[i])) {
                g_insecure_addr = xasprintf("%s:%s", addr->host, addr->port);
            }
        }
        break;
    }

    g_accept_kick = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g_accept_kick < 0) {
        err_setf_errno(errp, errno, "Failed to create an eventfd");
        for (int i = 0; i < nfds; i++) {
            close(fds[i]);
        }
        goto fail;
    }
    g_tls_creds = creds;
    g_tls_authz = tls_authz ? xstrdup(tls_authz) : NULL;
    nbdsrv_warn_insecure("nbd-server-start");
    nbdpool_start();
    mutex_lock(&g_nbdsrv_lock);
    g_running = true;
    g_max_connections = opts->max_connections;
    g_handshake_ns = opts->handshake_max_seconds * 1000000000LL;
    mutex_unlock(&g_nbdsrv_lock);
    g_nlisteners = nfds;
    for (int i = 0; i < nfds; i++) {
        g_listeners[i].fd = fds[i];
        g_listeners[i].tcp = tcp;
    }
    thread_create(&g_accept_thread, "nbd-accept", accept_thread, NULL);
    return true;

fail:
    tls_creds_put(creds);
    free(g_insecure_addr);
    g_insecure_addr = NULL;
    return false;
}

bool
nbd_server_stop(struct err **errp)
{
    assert_main_thread();
    if (!nbdsrv_running()) {
        err_setf(errp, "NBD server not running");
        return false;
    }
    mutex_lock(&g_nbdsrv_lock);
    g_running = false;
    accept_kick();
    mutex_unlock(&g_nbdsrv_lock);
    thread_join(g_accept_thread);
    for (int i = 0; i < g_nlisteners; i++) {
        close(g_listeners[i].fd);
    }
    g_nlisteners = 0;
    /* As QEMU: stopping the server removes every NBD export. */
    nbdexp_delete_all();
    mutex_lock(&g_nbdsrv_lock);
    nbdsrv_shutdown_conns_locked(NULL);
    nbdsrv_wait_conns_locked(NULL);
    close(g_accept_kick);
    g_accept_kick = -1;
    mutex_unlock(&g_nbdsrv_lock);
    /* No connection borrows them any more. */
    tls_creds_put(g_tls_creds);
    g_tls_creds = NULL;
    free(g_tls_authz);
    g_tls_authz = NULL;
    free(g_insecure_addr);
    g_insecure_addr = NULL;
    return true;
}
