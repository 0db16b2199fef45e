/* SPDX-License-Identifier: MIT */
/*
 * Private interfaces between the files of the NBD server: the export
 * registry (export.c), option negotiation (handshake.c), the transmission
 * phase and threads (server.c) and metadata contexts (meta-context.c).
 *
 * Design notes: lifetimes.
 *
 *   g_nbdsrv_lock protects the export list, every export's connection count
 *   and "deleting" flag, and the list of live connections.  It is never held
 *   across network or block I/O, except shutdown(2), which does not block.
 *
 *   An export (struct nbdexp) is created and destroyed on the main thread.
 *   A connection finds its export during the handshake under the lock and
 *   counts itself in exp->nconns; from then on the export (and its handle)
 *   stays alive until the connection thread drops that count as the very
 *   last thing it does with the export.  Deleting an export marks it
 *   deleting (no new connection can attach), shuts down the sockets of the
 *   attached connections ("hard") and waits on g_nbdsrv_cond until
 *   nconns == 0; only then is the handle freed.  "safe" refuses while
 *   nconns > 0.
 *
 *   A connection has no threads of its own: the pool's threads (pool.c)
 *   negotiate, read and run its requests (server.c).  It counts the
 *   threads working for it and frees itself when the last one leaves
 *   after the stream ended, so no thread outlives its connection.
 */
#ifndef LOCKSTEP_NBD_INTERNAL_H
#define LOCKSTEP_NBD_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>

#include "export/export.h"
#include "lockstep/block.h"
#include "lockstep/err.h"
#include "nbd/server.h"
#include "util.h"

struct block_dirty_bitmap;
struct tls_creds;
struct tls_session;

struct nbdexp_bitmap {
    struct block_dirty_bitmap *bm;
    char *ctx_name;            /* "qemu:dirty-bitmap:NAME" */
};

struct nbdexp {
    char *id;
    char *name;
    char *description;         /* NULL when none */
    char *node_name;
    struct block_handle *h;    /* Main thread creates/frees; I/O any thread */
    bool writable;
    bool writethrough;         /* every write is FUA */
    bool alloc_depth;          /* qemu:allocation-depth offered */
    bool multi_conn;
    uint32_t min_block;        /* advertised minimum block size */
    struct poll_tuning poll;   /* the reader's busy-polling */
    struct nbdexp_bitmap *bitmaps;
    size_t nbitmaps;

    /* Protected by: g_nbdsrv_lock. */
    int nconns;
    bool deleting;
    TAILQ_ENTRY(nbdexp) link;
};
TAILQ_HEAD(nbdexp_list, nbdexp);

extern struct lock g_nbdsrv_lock;
extern pthread_cond_t g_nbdsrv_cond;

/* ---- export.c --------------------------------------------------------- */

/*
 * Create and register (export/export.h) an NBD export: opts->driver_opts
 * is a struct nbd_export_options or NULL; when require_server is false no
 * running server is needed (the fuzzer and in-process tests).  Main
 * thread.
 */
struct nbdexp *nbdexp_create(const struct block_export_options *opts,
                             bool require_server, struct err **errp);
/*
 * Find an export by name and attach a connection to it (nconns++), storing
 * it in *held under g_nbdsrv_lock (so that deleting the export finds the
 * connection); NULL when there is none or it is being deleted.  Any thread.
 */
struct nbdexp *nbdexp_get(const char *name, struct nbdexp **held);
/* Detach (clears *held); the export must not be used afterwards. */
void nbdexp_put(struct nbdexp **held);
/* Delete every NBD export (hard), with events.  Main thread. */
void nbdexp_delete_all(void);
/*
 * For NBD_OPT_LIST: call fn for every export not being deleted, under
 * g_nbdsrv_lock (fn must not block).  Any thread.
 */
void nbdexp_foreach(void (*fn)(struct nbdexp *exp, void *opaque),
                    void *opaque);
/* Export size now (the node may be resized).  Any thread, attached. */
uint64_t nbdexp_size(struct nbdexp *exp);

/* ---- pool.c ----------------------------------------------------------- */

/* Threads shared by all connections, at most this many. */
#define NBDPOOL_MAX_THREADS 256

/* Work for the pool: a connection.  run() gets the epoll events that woke
 * it, or 0 when it was queued. */
struct nbdpool_item {
    void (*run)(struct nbdpool_item *it, uint32_t events);
    bool watched;                    /* fd is in the epoll set */
    TAILQ_ENTRY(nbdpool_item) qlink; /* run queue; pool.c's lock */
};

/* Start the pool (once) and make sure a thread waits for events. */
void nbdpool_start(void);
/* Arm fd (one-shot) for events; the item's owner gives up the item. */
void nbdpool_watch(int fd, struct nbdpool_item *it, uint32_t events);
/* Take fd out of the epoll set (before closing it). */
void nbdpool_unwatch(int fd, struct nbdpool_item *it);
/* Run the item on a pool thread soon. */
void nbdpool_queue(struct nbdpool_item *it);
/* Whether a thread may wait on one connection's socket for a while (the
 * pool is well below its cap). */
bool nbdpool_may_linger(void);

/* ---- server.c --------------------------------------------------------- */

bool nbdsrv_running(void);
/* Shut down the sockets of every connection attached to exp (NULL: every
 * connection).  Caller holds g_nbdsrv_lock. */
void nbdsrv_shutdown_conns_locked(struct nbdexp *exp);
/* Wait until no connection is attached to exp (NULL: no connection at
 * all).  Caller holds g_nbdsrv_lock.  Main thread. */
void nbdsrv_wait_conns_locked(struct nbdexp *exp);
/* Whether a new client should see CAN_MULTI_CONN (max-connections != 1). */
bool nbdsrv_multi_conn_allowed(void);
/* Warn on stderr, about what, when the server listens on a TCP address
 * other than loopback without TLS.  Main thread. */
void nbdsrv_warn_insecure(const char *what);

/*
 * One whole NBD session on in_fd (requests) and out_fd (replies; may be the
 * same socket), served against the registered exports.  nthreads 0 or 1
 * runs it on the calling thread with blocking I/O, every request inline
 * (deterministic; the fuzzer; any fds).  More: served by the pool as an
 * accepted connection is (in_fd == out_fd, a socket), without a handshake
 * deadline.  tls_creds (server endpoint; NULL: plain) and tls_authz are
 * as nbd-server-start's.  Returns when the client disconnects or breaks
 * the protocol; the fds stay the caller's.  Any thread.
 */
void nbdsrv_serve_fds(int in_fd, int out_fd, int nthreads,
                      struct tls_creds *tls_creds, const char *tls_authz);

/*
 * Whole reads and writes on a session's fds: sockets without SIGPIPE, and
 * plain files or pipes too (the fuzzer).  0 or -errno (-ECONNRESET at
 * EOF).  A socket whose peer takes nothing for NBDSRV_SEND_TIMEOUT_SECS
 * fails with -ETIMEDOUT.  Any thread.
 */
int nbdsrv_read(int fd, void *buf, size_t len);
int nbdsrv_write(int fd, const void *buf, size_t len);
/* Gather write of up to 3 pieces (header, payload parts). */
int nbdsrv_writev(int fd, const void *a, size_t alen, const void *b,
                  size_t blen, const void *c, size_t clen);

/* ---- handshake.c ------------------------------------------------------ */

/* A client that reads none of our bytes for this long is dropped. */
#define NBDSRV_SEND_TIMEOUT_SECS 30

/* What negotiation agreed; filled by nbdsrv_handshake. */
#define NBDSRV_CTX_BASE_ALLOCATION   0
#define NBDSRV_CTX_ALLOCATION_DEPTH  1
#define NBDSRV_CTX_BITMAP0           2   /* + index into exp->bitmaps */

struct nbdsrv_session {
    int in_fd, out_fd;
    /* TLS: with credentials the server is in the spec's "TLS required"
     * mode; after STARTTLS every byte goes through tls.  creds and authz
     * are the server's (they outlive its connections); tls is set during
     * negotiation, before transmission starts. */
    struct tls_creds *tls_creds;
    const char *tls_authz;
    struct tls_session *tls;
    bool tls_refused_logged;   /* one log line per plain-text client */
    bool no_zeroes;
    bool structured;
    /* The export this connection is attached to (nbdexp_get), during an
     * option that needs one and for the whole transmission phase.
     * Written under g_nbdsrv_lock; read by the session's own threads. */
    struct nbdexp *exp;
    uint16_t tflags;           /* transmission flags sent */
    /* Selected meta contexts: ids are indexes as NBDSRV_CTX_*. */
    uint32_t *ctx_ids;
    size_t nctx;
    char *ctx_export;          /* the export the last SET named */

    /* Negotiation I/O (handshake.c): the message being read and the
     * replies not yet sent.  With nonblock, I/O that would wait returns
     * to the caller instead (the pool serves the socket). */
    bool nonblock;
    int hs_state;
    uint8_t hs_hdr[16];
    size_t hs_got;
    uint8_t *hs_data;
    uint32_t hs_len;
    uint8_t *obuf;
    size_t opos, olen, ocap;
};

/* What nbdsrv_hs_step() needs next. */
#define NBDSRV_HS_FAIL       -1  /* close the connection */
#define NBDSRV_HS_DONE        0  /* transmission starts (s->exp attached) */
#define NBDSRV_HS_WANT_READ   1  /* the client has to send more */
#define NBDSRV_HS_WANT_WRITE  2  /* the client has to read our replies */

/* Queue the greeting; then call nbdsrv_hs_step() until it is done. */
void nbdsrv_hs_begin(struct nbdsrv_session *s);
/*
 * Send what is queued, read and answer options until transmission starts
 * or I/O would wait (only with s->nonblock).  FAIL on a protocol
 * violation, ABORT, EOF, an unknown export with EXPORT_NAME.  Any thread.
 */
int nbdsrv_hs_step(struct nbdsrv_session *s);
/* The whole handshake with blocking I/O: 0 (transmission) or -1. */
int nbdsrv_handshake(struct nbdsrv_session *s);
/* Free what negotiation allocated, the TLS session included. */
void nbdsrv_session_clear(struct nbdsrv_session *s);
/* A line on stderr about a client ("lockstepd: NBD client: ..."). */
void nbdsrv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- meta-context.c --------------------------------------------------- */

/*
 * Resolve one query for LIST (list=true, wildcards allowed) or SET against
 * exp; calls add(ctx_id, name, opaque) for every match.  Returns false
 * for a syntactically invalid query in a known namespace (ERR_INVALID).
 */
bool nbdsrv_meta_query(struct nbdexp *exp, const char *query, bool list,
                       void (*add)(uint32_t id, const char *name,
                                   void *opaque),
                       void *opaque);
/* The name of context id on exp (for replies). */
const char *nbdsrv_meta_name(struct nbdexp *exp, uint32_t id);

/*
 * Extents of context id over [offset, offset+bytes) (within the export):
 * fills ext as {length, flags} pairs in host order, at most max_extents
 * (1 with REQ_ONE).  Returns the number of extents (>= 1) or -errno.
 * Any thread, attached.
 */
int nbdsrv_meta_extents(struct nbdexp *exp, uint32_t id, uint64_t offset,
                        uint64_t bytes, uint32_t *ext, size_t max_extents);

/* ---- byte order helpers ----------------------------------------------- */

static inline void
put_be16(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static inline void
put_be32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static inline void
put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, v >> 32);
    put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t
get_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t
get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t
get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

#endif
