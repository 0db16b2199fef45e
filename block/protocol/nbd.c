/* SPDX-License-Identifier: MIT */
/*
 * The "nbd" protocol driver: a node whose content lives on an NBD server,
 * reached with libnbd.  Options follow QEMU's BlockdevOptionsNbd: server
 * (a SocketAddress: unix path or inet host/port), export, tls-creds (refused:
 * no TLS yet), reconnect-delay, open-timeout and x-dirty-bitmap.
 *
 * Design notes.
 *
 *   libnbd's synchronous calls hold the handle's lock until the reply
 *   arrives, so one handle runs one request at a time.  To keep several
 *   requests in flight the driver keeps a small pool of connections, each
 *   used by one request at a time: NBD_POOL_MAX connections when the server
 *   offers CAN_MULTI_CONN (then a flush on one covers writes acknowledged
 *   on the others, spec), otherwise a single one.
 *
 *   A connection whose server went away is closed and, when reconnect-delay
 *   is set, re-established: a request that finds its connection dead keeps
 *   trying to reconnect until reconnect-delay seconds after the failure and
 *   then fails with -EIO, as QEMU's client does.  Without reconnect-delay a
 *   dead server fails requests at once (-EIO).
 *
 *   x-dirty-bitmap (QEMU's experimental option) asks for the context
 *   qemu:dirty-bitmap:NAME instead of base:allocation and reads its flags
 *   as if they were base:allocation's, so dirty areas (bit 0) look like
 *   holes: qemu-img map shows them as "data": false.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

#include "block/core/opts.h"
#include "lockstep/block.h"
#include "util.h"

#define NBD_POOL_MAX 4
/* NBD lengths are 32-bit; keep requests 64 KiB-aligned below that. */
#define NBD_MAX_EFFECT (1U << 31)

struct nbdcli_conn {
    struct nbd_handle *h;   /* NULL when closed */
    bool busy;
};

struct nbdcli_state {
    char *path;             /* unix */
    char *host, *port;      /* inet */
    char *export;
    char *meta_ctx;         /* base:allocation or the bitmap's context */
    int64_t reconnect_delay;   /* seconds */

    /* Learnt at open; constant afterwards. */
    uint64_t size;
    bool can_flush, can_fua, can_trim, can_zero, can_fast_zero;
    bool has_meta;
    bool read_only_export;

    /* The pool.  Protected by: lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct nbdcli_conn conns[NBD_POOL_MAX];
    int nconns;
};

static const struct block_opt nbd_opts[] = {
    {"server", BLOCK_OPT_OBJECT, true, NULL},
    {"export", BLOCK_OPT_STRING, false, NULL},
    {"tls-creds", BLOCK_OPT_STRING, false, NULL},
    {"tls-hostname", BLOCK_OPT_STRING, false, NULL},
    {"x-dirty-bitmap", BLOCK_OPT_STRING, false, NULL},
    {"reconnect-delay", BLOCK_OPT_INT, false, NULL},
    {"open-timeout", BLOCK_OPT_INT, false, NULL},
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

static struct nbd_handle *
nbdcli_connect(struct nbdcli_state *s, struct err **errp)
{
    struct nbd_handle *h = nbd_create();
    int r;

    if (!h) {
        err_setf(errp, "Failed to create NBD handle: %s", nbd_get_error());
        return NULL;
    }
    if (nbd_set_export_name(h, s->export) < 0 ||
        nbd_add_meta_context(h, s->meta_ctx) < 0) {
        err_setf(errp, "%s", nbd_get_error());
        nbd_close(h);
        return NULL;
    }
    if (s->path) {
        r = nbd_connect_unix(h, s->path);
    } else {
        r = nbd_connect_tcp(h, s->host, s->port);
    }
    if (r < 0) {
        const char *msg = nbd_get_error();

        err_setf(errp, "Failed to connect to '%s%s%s': %s",
                 s->path ? s->path : s->host, s->path ? "" : ":",
                 s->path ? "" : s->port, msg ? msg : "unknown error");
        nbd_close(h);
        return NULL;
    }
    return h;
}

static bool
nbdcli_dead(struct nbd_handle *h)
{
    return nbd_aio_is_dead(h) > 0 || nbd_aio_is_closed(h) > 0;
}

/*
 * Take a connection for one request: a free one, or a new one while the
 * pool may grow.  A dead or closed connection is reconnected here; returns
 * NULL (-EIO) when that fails past reconnect-delay.  Any thread.
 */
static struct nbdcli_conn *
nbdcli_get(struct nbdcli_state *s, int64_t deadline)
{
    struct nbdcli_conn *c = NULL;

    mutex_lock(&s->lock);
    for (;;) {
        for (int i = 0; i < s->nconns; i++) {
            if (!s->conns[i].busy) {
                c = &s->conns[i];
                break;
            }
        }
        if (c) {
            break;
        }
        cond_wait(&s->cond, &s->lock);
    }
    c->busy = true;
    mutex_unlock(&s->lock);

    for (;;) {
        struct nbd_handle *h;

        if (c->h && !nbdcli_dead(c->h)) {
            return c;
        }
        if (c->h) {
            nbd_close(c->h);
            c->h = NULL;
        }
        h = nbdcli_connect(s, NULL);
        if (h) {
            c->h = h;
            return c;
        }
        if (clock_ns() >= deadline) {
            break;
        }
        {
            struct timespec ts = {0, 100 * 1000 * 1000};

            nanosleep(&ts, NULL);
        }
    }
    mutex_lock(&s->lock);
    c->busy = false;
    cond_signal(&s->cond);
    mutex_unlock(&s->lock);
    return NULL;
}

static void
nbdcli_put(struct nbdcli_state *s, struct nbdcli_conn *c)
{
    mutex_lock(&s->lock);
    c->busy = false;
    cond_signal(&s->cond);
    mutex_unlock(&s->lock);
}

enum nbdcli_op {
    OP_READ, OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH,
};

/* Run one command, reconnecting and retrying per reconnect-delay. */
static int
nbdcli_run(struct nbdcli_state *s, enum nbdcli_op op, uint64_t offset,
           uint64_t bytes, void *buf, uint32_t flags)
{
    int64_t deadline = clock_ns() + s->reconnect_delay * 1000000000LL;

    for (;;) {
        struct nbdcli_conn *c = nbdcli_get(s, deadline);
        int r = -1, ret;

        if (!c) {
            return -EIO;
        }
        switch (op) {
        case OP_READ:
            r = nbd_pread(c->h, buf, bytes, offset, flags);
            break;
        case OP_WRITE:
            r = nbd_pwrite(c->h, buf, bytes, offset, flags);
            break;
        case OP_ZERO:
            r = nbd_zero(c->h, bytes, offset, flags);
            break;
        case OP_TRIM:
            r = nbd_trim(c->h, bytes, offset, flags);
            break;
        case OP_FLUSH:
            r = nbd_flush(c->h, flags);
            break;
        }
        if (r == 0) {
            nbdcli_put(s, c);
            return 0;
        }
        ret = nbdcli_errno();
        if (!nbdcli_dead(c->h)) {
            nbdcli_put(s, c);
            return ret;   /* the server answered with an error */
        }
        nbdcli_put(s, c);
        if (s->reconnect_delay <= 0 || clock_ns() >= deadline) {
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

static void
nbdcli_free(struct nbdcli_state *s)
{
    for (int i = 0; i < s->nconns; i++) {
        if (s->conns[i].h) {
            nbd_close(s->conns[i].h);
            s->conns[i].h = NULL;
        }
    }
    s->nconns = 0;
    free(s->path);
    free(s->host);
    free(s->port);
    free(s->export);
    free(s->meta_ctx);
    mutex_destroy(&s->lock);
    cond_destroy(&s->cond);
}

static int
nbdcli_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct nbdcli_state *s = node->opaque;
    const char *bitmap = block_opt_str(options, "x-dirty-bitmap", NULL);
    int64_t open_timeout = block_opt_int(options, "open-timeout", 0);
    int64_t deadline;
    struct nbd_handle *h;
    struct err *local_err = NULL;
    int64_t size, minb, maxb;
    int ret;

    mutex_init(&s->lock);
    cond_init(&s->cond);
    if (block_opt_str(options, "tls-creds", NULL) ||
        block_opt_str(options, "tls-hostname", NULL)) {
        err_setf(errp, "TLS is not supported by the nbd driver");
        ret = -ENOTSUP;
        goto out_free;
    }
    s->reconnect_delay = block_opt_int(options, "reconnect-delay", 0);
    if (s->reconnect_delay < 0 || s->reconnect_delay > 3600 ||
        open_timeout < 0 || open_timeout > 3600) {
        err_setf(errp, "reconnect-delay and open-timeout must be between "
                 "0 and 3600");
        ret = -EINVAL;
        goto out_free;
    }
    ret = nbdcli_parse_server(s, json_object_get(options, "server"), errp);
    if (ret < 0) {
        goto out_free;
    }
    s->export = xstrdup(block_opt_str(options, "export", ""));
    s->meta_ctx = bitmap ? xasprintf("qemu:dirty-bitmap:%s", bitmap) :
                  xstrdup("base:allocation");

    /* open-timeout: keep trying to connect for that long (QEMU). */
    deadline = clock_ns() + open_timeout * 1000000000LL;
    for (;;) {
        h = nbdcli_connect(s, &local_err);
        if (h || clock_ns() >= deadline) {
            break;
        }
        err_free(local_err);
        local_err = NULL;
        {
            struct timespec ts = {0, 100 * 1000 * 1000};

            nanosleep(&ts, NULL);
        }
    }
    if (!h) {
        err_propagate(errp, local_err);
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
        s->nconns = NBD_POOL_MAX;   /* the others connect on first use */
    }

    minb = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    maxb = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    if (minb > 0 && minb <= 65536 && is_power_of_2((uint64_t)minb)) {
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
    node->limits.max_pdiscard = NBD_MAX_EFFECT;
    node->limits.max_pwrite_zeroes = NBD_MAX_EFFECT;
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

    for (int i = 0; i < s->nconns; i++) {
        if (s->conns[i].h && !nbdcli_dead(s->conns[i].h)) {
            nbd_shutdown(s->conns[i].h, 0);
        }
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
    return nbdcli_run(node->opaque, OP_READ, offset, bytes, buf, 0);
}

static int
nbdcli_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
              const void *buf, unsigned flags)
{
    struct nbdcli_state *s = node->opaque;

    return nbdcli_run(s, OP_WRITE, offset, bytes, (void *)buf,
                      (flags & BLOCK_REQ_FUA) && s->can_fua ?
                      LIBNBD_CMD_FLAG_FUA : 0);
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
    return nbdcli_run(s, OP_ZERO, offset, bytes, NULL, f);
}

static int
nbdcli_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    struct nbdcli_state *s = node->opaque;

    if (!s->can_trim) {
        return 0;   /* discard is a hint */
    }
    return nbdcli_run(s, OP_TRIM, offset, bytes, NULL, 0);
}

static int
nbdcli_flush(struct block_node *node)
{
    struct nbdcli_state *s = node->opaque;

    if (!s->can_flush) {
        return 0;
    }
    return nbdcli_run(s, OP_FLUSH, 0, 0, NULL, 0);
}

struct nbdcli_extent {
    const char *ctx;
    uint64_t len;
    uint32_t flags;
    bool found;
};

static int
nbdcli_extent_cb(void *opaque, const char *metacontext,
                 uint64_t offset UNUSED, uint32_t *entries,
                 size_t nr_entries, int *error UNUSED)
{
    struct nbdcli_extent *e = opaque;

    if (strcmp(metacontext, e->ctx) == 0 && nr_entries >= 2 && !e->found) {
        e->len = entries[0];
        e->flags = entries[1];
        e->found = true;
    }
    return 0;
}

static int
nbdcli_block_status(struct block_node *node, uint64_t offset,
                    uint64_t bytes, uint64_t *pnum, uint64_t *map,
                    struct block_node **file)
{
    struct nbdcli_state *s = node->opaque;
    struct nbdcli_extent e = {.ctx = s->meta_ctx};
    int64_t deadline = clock_ns() + s->reconnect_delay * 1000000000LL;
    struct nbdcli_conn *c;
    int r;

    *map = offset;
    *file = node;
    if (!s->has_meta) {
        *pnum = bytes;
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    bytes = MIN(bytes, (uint64_t)NBD_MAX_EFFECT);
    c = nbdcli_get(s, deadline);
    if (!c) {
        return -EIO;
    }
    r = nbd_block_status(c->h, bytes, offset,
                         (nbd_extent_callback){.callback = nbdcli_extent_cb,
                                               .user_data = &e},
                         LIBNBD_CMD_FLAG_REQ_ONE);
    if (r < 0) {
        r = nbdcli_errno();
    }
    nbdcli_put(s, c);
    if (r < 0) {
        return r;
    }
    if (!e.found || e.len == 0) {
        /* Status 0 is always safe (spec): data. */
        *pnum = bytes;
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    *pnum = MIN(e.len, bytes);
    return BLOCK_STATUS_OFFSET_VALID |
           ((e.flags & 0x1) ? 0 : BLOCK_STATUS_DATA) |   /* NBD_STATE_HOLE */
           ((e.flags & 0x2) ? BLOCK_STATUS_ZERO : 0);    /* NBD_STATE_ZERO */
}

const struct block_driver nbd_driver = {
    .name = "nbd",
    .kind = BLOCK_KIND_PROTOCOL,
    .state_size = sizeof(struct nbdcli_state),
    .options = nbd_opts,
    .open = nbdcli_open,
    .close = nbdcli_close,
    .getlength = nbdcli_getlength,
    .pread = nbdcli_pread,
    .pwrite = nbdcli_pwrite,
    .pwrite_zeroes = nbdcli_pwrite_zeroes,
    .pdiscard = nbdcli_pdiscard,
    .flush = nbdcli_flush,
    .block_status = nbdcli_block_status,
};
