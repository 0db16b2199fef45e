/* SPDX-License-Identifier: MIT */
/*
 * NBD option negotiation (NBD spec, "Newstyle negotiation"): the fixed
 * newstyle greeting, then options until EXPORT_NAME or a successful GO
 * starts transmission.  Supported: EXPORT_NAME, ABORT, LIST, INFO, GO,
 * STRUCTURED_REPLY, LIST_META_CONTEXT, SET_META_CONTEXT and, when the
 * server has TLS credentials, STARTTLS; everything else (EXTENDED_HEADERS,
 * unknown numbers) gets NBD_REP_ERR_UNSUP and negotiation goes on, as the
 * baseline of the spec requires.  Malformed option data is answered with
 * NBD_REP_ERR_INVALID; only a broken frame (bad magic, oversize option,
 * EOF) closes the connection.
 *
 * TLS (spec, "TLS required" mode): with credentials, every option before
 * STARTTLS but ABORT is answered NBD_REP_ERR_TLS_REQD, and EXPORT_NAME,
 * which has no error reply, closes the connection; so no export name,
 * size or list is told to a client that has not done TLS.  STARTTLS's
 * ACK is sent, then the TLS handshake runs as states of this machine
 * (crypto/tls-session.c), and the options that follow go through TLS.
 * A client that fails the handshake or the check of its identity (the
 * tls-authz object) is logged and dropped.
 *
 * Export names match exactly, as in QEMU: the default export "" is only
 * found when an export is named "".
 *
 * The negotiation is a state machine fed by the socket: the server's pool
 * runs a step whenever the socket can be read or written, so a client that
 * negotiates slowly, or stops reading, holds no thread while it waits.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "crypto/tls-session.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "util.h"

void
nbdsrv_log(const char *fmt, ...)
{
    char line[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: NBD client: %s\n", program_invocation_short_name,
            line);
}

/* Queue bytes for the client; nbdsrv_hs_step() sends them. */
static void
queue_out(struct nbdsrv_session *s, const void *data, size_t len)
{
    if (s->olen + len > s->ocap) {
        s->ocap = MAX(s->ocap * 2, s->olen + len);
        s->obuf = xrealloc(s->obuf, s->ocap);
    }
    if (len) {
        memcpy(s->obuf + s->olen, data, len);
    }
    s->olen += len;
}

/* Queue one option reply (header + data).  Returns 0: a failure to send
 * shows when the queue is flushed. */
static int
send_rep(struct nbdsrv_session *s, uint32_t opt, uint32_t type,
         const void *data, size_t len)
{
    uint8_t hdr[20];

    put_be64(hdr, NBD_REP_MAGIC);
    put_be32(hdr + 8, opt);
    put_be32(hdr + 12, type);
    put_be32(hdr + 16, (uint32_t)len);
    queue_out(s, hdr, sizeof(hdr));
    queue_out(s, data, len);
    return 0;
}

static int
send_err(struct nbdsrv_session *s, uint32_t opt, uint32_t type,
         const char *msg)
{
    return send_rep(s, opt, type, msg, strlen(msg));
}

/* A name from option data: NULL (reply ERR_INVALID) when it holds a NUL,
 * which no export name can contain. */
static char *
dup_name(const uint8_t *p, size_t len)
{
    if (memchr(p, 0, len)) {
        return NULL;
    }
    return strndup((const char *)p, len);
}

/* Transmission flags for exp, from the state negotiated so far. */
static uint16_t
transmission_flags(struct nbdsrv_session *s, struct nbdexp *exp)
{
    uint16_t flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                     NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;

    if (exp->writable) {
        flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                 NBD_FLAG_SEND_FAST_ZERO;
    } else {
        flags |= NBD_FLAG_READ_ONLY;
    }
    if (s->structured) {
        flags |= NBD_FLAG_SEND_DF;
    }
    /* One node behind all connections: a flush on one covers the writes
     * of all (QEMU offers it unless limited to one connection). */
    if (nbdsrv_multi_conn_allowed()) {
        flags |= NBD_FLAG_CAN_MULTI_CONN;
    }
    return flags;
}

static void
clear_meta(struct nbdsrv_session *s)
{
    free(s->ctx_ids);
    s->ctx_ids = NULL;
    s->nctx = 0;
    free(s->ctx_export);
    s->ctx_export = NULL;
}

void
nbdsrv_session_clear(struct nbdsrv_session *s)
{
    tls_session_free(s->tls);
    s->tls = NULL;
    clear_meta(s);
    free(s->hs_data);
    s->hs_data = NULL;
    free(s->obuf);
    s->obuf = NULL;
    s->opos = s->olen = s->ocap = 0;
}

/* ---- NBD_OPT_LIST ----------------------------------------------------- */

struct list_buf {
    uint8_t *data;
    size_t len, cap;
    size_t count;
};

static void
list_add_cb(struct nbdexp *exp, void *opaque)
{
    struct list_buf *b = opaque;
    size_t nlen = strlen(exp->name);
    size_t dlen = exp->description ? strlen(exp->description) : 0;
    size_t need = 4 + 4 + nlen + dlen;   /* length prefix + reply data */

    if (b->len + need > b->cap) {
        b->cap = (b->len + need) * 2;
        b->data = xrealloc(b->data, b->cap);
    }
    put_be32(b->data + b->len, (uint32_t)(4 + nlen + dlen));
    put_be32(b->data + b->len + 4, (uint32_t)nlen);
    memcpy(b->data + b->len + 8, exp->name, nlen);
    if (dlen) {
        memcpy(b->data + b->len + 8 + nlen, exp->description, dlen);
    }
    b->len += need;
    b->count++;
}

static int
opt_list(struct nbdsrv_session *s, uint32_t len)
{
    struct list_buf b = {0};
    int ret = 0;

    if (len != 0) {
        return send_err(s, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
                        "no payload expected");
    }
    nbdexp_foreach(list_add_cb, &b);
    for (size_t off = 0; off < b.len && ret == 0;) {
        uint32_t rlen = get_be32(b.data + off);

        ret = send_rep(s, NBD_OPT_LIST, NBD_REP_SERVER, b.data + off + 4,
                       rlen);
        off += 4 + rlen;
    }
    free(b.data);
    if (ret == 0) {
        ret = send_rep(s, NBD_OPT_LIST, NBD_REP_ACK, NULL, 0);
    }
    return ret;
}

/* ---- NBD_OPT_INFO / NBD_OPT_GO ---------------------------------------- */

static int
send_info(struct nbdsrv_session *s, uint32_t opt, uint16_t type,
          const void *payload, size_t len)
{
    uint8_t buf[2 + NBDSRV_MAX_STRING];

    assert(len <= NBDSRV_MAX_STRING);
    put_be16(buf, type);
    if (len) {
        memcpy(buf + 2, payload, len);
    }
    return send_rep(s, opt, NBD_REP_INFO, buf, 2 + len);
}

/* Returns 1 when GO succeeded (transmission starts), 0 to go on
 * negotiating, -1 to close. */
static int
opt_info_go(struct nbdsrv_session *s, uint32_t opt, const uint8_t *data,
            uint32_t len)
{
    uint32_t namelen;
    uint16_t nreq;
    bool want_name = false, want_desc = false, want_bs = false;
    char *name;
    struct nbdexp *exp;
    uint8_t buf[12];
    uint32_t min_block, max_block;
    int ret;

    if (len < 6) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = get_be32(data);
    if (namelen > NBDSRV_MAX_STRING) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "name too long");
    }
    if ((uint64_t)namelen + 6 > len) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "bad name length");
    }
    nreq = get_be16(data + 4 + namelen);
    if ((uint64_t)namelen + 6 + 2 * (uint64_t)nreq != len) {
        return send_err(s, opt, NBD_REP_ERR_INVALID,
                        "bad info request count");
    }
    for (uint16_t i = 0; i < nreq; i++) {
        switch (get_be16(data + 6 + namelen + 2 * i)) {
        case NBD_INFO_NAME:
            want_name = true;
            break;
        case NBD_INFO_DESCRIPTION:
            want_desc = true;
            break;
        case NBD_INFO_BLOCK_SIZE:
            want_bs = true;
            break;
        default:
            break;   /* unknown requests are ignored (spec) */
        }
    }
    name = dup_name(data + 4, namelen);
    if (!name) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "bad export name");
    }
    exp = nbdexp_get(name, &s->exp);
    if (!exp) {
        ret = send_err(s, opt, NBD_REP_ERR_UNKNOWN, "export not present");
        free(name);
        return ret;
    }

    ret = 0;
    if (want_name) {
        ret = send_info(s, opt, NBD_INFO_NAME, exp->name, strlen(exp->name));
    }
    if (ret == 0 && want_desc && exp->description) {
        ret = send_info(s, opt, NBD_INFO_DESCRIPTION, exp->description,
                        strlen(exp->description));
    }
    if (ret == 0) {
        /* Always sent; the minimum is only raised for clients that asked
         * (they promise to honour it), as QEMU does. */
        min_block = want_bs ? exp->min_block : 1;
        max_block = NBDSRV_MAX_PAYLOAD;
        put_be32(buf, min_block);
        put_be32(buf + 4, MAX(NBDSRV_PREF_BLOCK, min_block));
        put_be32(buf + 8, max_block);
        ret = send_info(s, opt, NBD_INFO_BLOCK_SIZE, buf, 12);
    }
    if (ret == 0) {
        uint16_t flags = transmission_flags(s, exp);

        put_be64(buf, nbdexp_size(exp));
        put_be16(buf + 8, flags);
        ret = send_info(s, opt, NBD_INFO_EXPORT, buf, 10);
        s->tflags = flags;
    }
    if (ret == 0) {
        ret = send_rep(s, opt, NBD_REP_ACK, NULL, 0);
    }
    if (ret < 0 || opt == NBD_OPT_INFO) {
        nbdexp_put(&s->exp);
        free(name);
        return ret < 0 ? -1 : 0;
    }
    /* GO: meta contexts stay selected only if the last SET named this
     * export (spec, NBD_OPT_SET_META_CONTEXT). */
    if (!s->ctx_export || strcmp(s->ctx_export, name) != 0) {
        clear_meta(s);
    }
    free(name);
    return 1;
}

/* ---- Meta contexts ---------------------------------------------------- */

struct meta_add {
    struct nbdsrv_session *s;
    uint32_t opt;
    bool set;
    int ret;
};

static void
meta_add_cb(uint32_t id, const char *name, void *opaque)
{
    struct meta_add *m = opaque;
    uint8_t buf[4 + 4 + 18 + NBDSRV_MAX_STRING];
    size_t nlen = strlen(name);

    if (m->ret < 0) {
        return;
    }
    if (m->set) {
        for (size_t i = 0; i < m->s->nctx; i++) {
            if (m->s->ctx_ids[i] == id) {
                return;   /* asked twice: one reply, one id */
            }
        }
        m->s->ctx_ids = xrealloc(m->s->ctx_ids,
                                 (m->s->nctx + 1) * sizeof(uint32_t));
        m->s->ctx_ids[m->s->nctx++] = id;
    }
    if (nlen > sizeof(buf) - 4) {
        nlen = sizeof(buf) - 4;
    }
    put_be32(buf, m->set ? id : 0);
    memcpy(buf + 4, name, nlen);
    m->ret = send_rep(m->s, m->opt, NBD_REP_META_CONTEXT, buf, 4 + nlen);
}

static int
opt_meta(struct nbdsrv_session *s, uint32_t opt, const uint8_t *data,
         uint32_t len)
{
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    uint32_t namelen, nq, pos;
    char *name;
    struct nbdexp *exp;
    struct meta_add m = {.s = s, .opt = opt, .set = set, .ret = 0};
    int ret;

    if (set) {
        clear_meta(s);   /* even a failing SET replaces the selection */
    }
    if (!s->structured) {
        return send_err(s, opt, NBD_REP_ERR_INVALID,
                        "request requires structured replies");
    }
    if (len < 8) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "option too short");
    }
    namelen = get_be32(data);
    if (namelen > NBDSRV_MAX_STRING || (uint64_t)namelen + 8 > len) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "bad name length");
    }
    nq = get_be32(data + 4 + namelen);
    /* Check the framing of every query before acting on any. */
    pos = 8 + namelen;
    for (uint32_t i = 0; i < nq; i++) {
        uint32_t qlen;

        if (len - pos < 4) {
            return send_err(s, opt, NBD_REP_ERR_INVALID, "bad query count");
        }
        qlen = get_be32(data + pos);
        if (qlen > NBDSRV_MAX_STRING || qlen > len - pos - 4) {
            return send_err(s, opt, NBD_REP_ERR_INVALID,
                            "bad query length");
        }
        pos += 4 + qlen;
    }
    if (pos != len) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "trailing data");
    }
    if (set && nq > NBDSRV_MAX_META_CONTEXTS) {
        return send_err(s, opt, NBD_REP_ERR_TOO_BIG, "too many queries");
    }
    name = dup_name(data + 4, namelen);
    if (!name) {
        return send_err(s, opt, NBD_REP_ERR_INVALID, "bad export name");
    }
    exp = nbdexp_get(name, &s->exp);
    if (!exp) {
        free(name);
        return send_err(s, opt, NBD_REP_ERR_UNKNOWN, "export not present");
    }

    if (!set && nq == 0) {
        nbdsrv_meta_query(exp, "", true, meta_add_cb, &m);
    }
    pos = 8 + namelen;
    for (uint32_t i = 0; i < nq && m.ret == 0; i++) {
        uint32_t qlen = get_be32(data + pos);
        char *q = dup_name(data + pos + 4, qlen);

        pos += 4 + qlen;
        if (!q) {
            continue;   /* a NUL matches no context */
        }
        if (!nbdsrv_meta_query(exp, q, !set, meta_add_cb, &m)) {
            free(q);
            nbdexp_put(&s->exp);
            free(name);
            if (set) {
                clear_meta(s);
            }
            return send_err(s, opt, NBD_REP_ERR_INVALID, "bad query");
        }
        free(q);
    }
    nbdexp_put(&s->exp);
    if (m.ret < 0) {
        free(name);
        return m.ret;
    }
    if (set) {
        s->ctx_export = name;
    } else {
        free(name);
    }
    ret = send_rep(s, opt, NBD_REP_ACK, NULL, 0);
    return ret;
}

/* ---- The negotiation state machine ------------------------------------ */

/*
 * The handshake reads one message at a time (the client flags, an option
 * header, its data), answers it into s->obuf and sends that before it
 * reads on, so a client that does not read our replies stops being read
 * and holds no more than one option's replies in memory.
 */
enum {
    HS_CFLAGS,      /* reading the client flags */
    HS_HEADER,      /* reading an option header */
    HS_DATA,        /* reading an option's data */
    HS_DONE,        /* transmission starts once the replies are out */
    HS_ABORT,       /* close once the replies are out */
    HS_STARTTLS,    /* the TLS handshake starts once the ACK is out */
    HS_TLS,         /* in the TLS handshake */
};

/* Read toward want bytes at buf + *got.  1 when complete, 0 when the read
 * would wait (nonblock), -1 at EOF or on an error. */
static int
hs_fill(struct nbdsrv_session *s, uint8_t *buf, size_t want, size_t *got)
{
    while (*got < want) {
        ssize_t r;

        if (s->tls) {
            r = tls_session_recv(s->tls, buf + *got, want - *got);
        } else if (s->nonblock) {
            r = recv(s->in_fd, buf + *got, want - *got, MSG_DONTWAIT);
        } else {
            r = read(s->in_fd, buf + *got, want - *got);
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        if (r <= 0) {
            return -1;
        }
        *got += (size_t)r;
    }
    return 1;
}

/* Send the queued replies.  1 when all are out, 0 when the send would
 * wait (nonblock), -1 on an error. */
static int
hs_flush(struct nbdsrv_session *s)
{
    while (s->opos < s->olen) {
        ssize_t r;

        if (s->tls) {
            struct iovec v = {s->obuf + s->opos, s->olen - s->opos};

            r = tls_session_sendv(s->tls, &v, 1);
        } else if (!s->nonblock) {
            if (nbdsrv_write(s->out_fd, s->obuf + s->opos,
                             s->olen - s->opos) < 0) {
                return -1;
            }
            break;
        } else {
            r = send(s->out_fd, s->obuf + s->opos, s->olen - s->opos,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        if (r < 0) {
            return -1;
        }
        s->opos += (size_t)r;
    }
    s->opos = s->olen = 0;
    return 1;
}

void
nbdsrv_hs_begin(struct nbdsrv_session *s)
{
    uint8_t greet[18];

    put_be64(greet, NBD_MAGIC);
    put_be64(greet + 8, NBD_OPTS_MAGIC);
    put_be16(greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    queue_out(s, greet, sizeof(greet));
    s->hs_state = HS_CFLAGS;
    s->hs_got = 0;
}

/* EXPORT_NAME: the export's size and flags, and transmission starts (or
 * -1: there is no error reply for it, the connection closes). */
static int
opt_export_name(struct nbdsrv_session *s, const uint8_t *data, uint32_t len)
{
    char *name = dup_name(data, len);
    uint8_t reply[8 + 2 + 124];
    struct nbdexp *exp;

    if (!name || len > NBDSRV_MAX_STRING) {
        free(name);
        return -1;
    }
    exp = nbdexp_get(name, &s->exp);
    free(name);
    if (!exp) {
        return -1;
    }
    memset(reply, 0, sizeof(reply));
    s->tflags = transmission_flags(s, exp);
    put_be64(reply, nbdexp_size(exp));
    put_be16(reply + 8, s->tflags);
    queue_out(s, reply, s->no_zeroes ? 10 : sizeof(reply));
    /* No SET_META_CONTEXT applies to EXPORT_NAME sessions unless it named
     * this export. */
    if (!s->ctx_export || strcmp(s->ctx_export, exp->name)) {
        clear_meta(s);
    }
    return 1;
}

/* STARTTLS in TLS-required mode: ACK, then the TLS handshake. */
static int
opt_starttls(struct nbdsrv_session *s, uint32_t len)
{
    if (len != 0) {
        return send_err(s, NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID,
                        "no payload expected");
    }
    send_rep(s, NBD_OPT_STARTTLS, NBD_REP_ACK, NULL, 0);
    s->hs_state = HS_STARTTLS;
    return 0;
}

/* Before TLS in TLS-required mode: only STARTTLS and ABORT go on. */
static int
hs_option_before_tls(struct nbdsrv_session *s, uint32_t opt, uint32_t len)
{
    char msg[64];

    if (opt == NBD_OPT_STARTTLS) {
        return opt_starttls(s, len);
    }
    if (!s->tls_refused_logged) {
        s->tls_refused_logged = true;
        nbdsrv_log("option %" PRIu32 " refused: TLS is required, and the "
                   "client has not started it (does it have the server's "
                   "credentials?)", opt);
    }
    if (opt == NBD_OPT_EXPORT_NAME) {
        return -1;   /* no error reply exists for it: the spec says close */
    }
    snprintf(msg, sizeof(msg), "Option 0x%" PRIx32 " not permitted before "
             "TLS", opt);
    return send_err(s, opt, NBD_REP_ERR_TLS_REQD, msg);
}

/* Answer one option.  1 when transmission starts, 0 to go on, -1 to
 * close. */
static int
hs_option(struct nbdsrv_session *s, uint32_t opt, const uint8_t *data,
          uint32_t len)
{
    int ret;

    if (s->tls_creds && !s->tls && opt != NBD_OPT_ABORT) {
        return hs_option_before_tls(s, opt, len);
    }
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        return opt_export_name(s, data, len);
    case NBD_OPT_ABORT:
        send_rep(s, opt, NBD_REP_ACK, NULL, 0);
        s->hs_state = HS_ABORT;
        return 0;
    case NBD_OPT_LIST:
        ret = opt_list(s, len);
        break;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        ret = opt_info_go(s, opt, data, len);
        break;
    case NBD_OPT_STRUCTURED_REPLY:
        if (len != 0) {
            ret = send_err(s, opt, NBD_REP_ERR_INVALID,
                           "no payload expected");
        } else if (s->structured) {
            ret = send_err(s, opt, NBD_REP_ERR_INVALID,
                           "structured reply already negotiated");
        } else {
            s->structured = true;
            ret = send_rep(s, opt, NBD_REP_ACK, NULL, 0);
        }
        break;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        ret = opt_meta(s, opt, data, len);
        break;
    case NBD_OPT_STARTTLS:
        if (s->tls) {
            ret = send_err(s, opt, NBD_REP_ERR_INVALID,
                           "TLS is already negotiated");
        } else {
            ret = send_err(s, opt, NBD_REP_ERR_UNSUP, "TLS not supported");
        }
        break;
    default:
        ret = send_err(s, opt, NBD_REP_ERR_UNSUP, "unsupported option");
        break;
    }
    return ret;
}

/* Read the rest of the current message and act on it.  1 when one was
 * handled, 0 when the read would wait, -1 to close. */
static int
hs_message(struct nbdsrv_session *s)
{
    uint32_t opt;
    int r;

    switch (s->hs_state) {
    case HS_CFLAGS: {
        uint32_t cflags;

        r = hs_fill(s, s->hs_hdr, 4, &s->hs_got);
        if (r <= 0) {
            return r;
        }
        cflags = get_be32(s->hs_hdr);
        if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE |
                                 NBD_FLAG_C_NO_ZEROES)) {
            return -1;   /* unknown client flag: MUST drop (spec) */
        }
        s->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
        s->hs_state = HS_HEADER;
        s->hs_got = 0;
        return 1;
    }
    case HS_HEADER:
        r = hs_fill(s, s->hs_hdr, sizeof(s->hs_hdr), &s->hs_got);
        if (r <= 0) {
            return r;
        }
        if (get_be64(s->hs_hdr) != NBD_OPTS_MAGIC) {
            return -1;
        }
        s->hs_len = get_be32(s->hs_hdr + 12);
        if (s->hs_len > NBDSRV_MAX_OPTION_LEN) {
            return -1;   /* abuse: hard disconnect (spec allows) */
        }
        free(s->hs_data);
        s->hs_data = xmalloc(s->hs_len ? s->hs_len : 1);
        s->hs_state = HS_DATA;
        s->hs_got = 0;
        return 1;   /* the data next (nbdsrv_hs_step calls again) */
    case HS_DATA:
        r = hs_fill(s, s->hs_data, s->hs_len, &s->hs_got);
        if (r <= 0) {
            return r;
        }
        opt = get_be32(s->hs_hdr + 8);
        s->hs_state = HS_HEADER;
        s->hs_got = 0;
        r = hs_option(s, opt, s->hs_data, s->hs_len);
        free(s->hs_data);
        s->hs_data = NULL;
        if (r < 0) {
            return -1;
        }
        if (r == 1) {
            s->hs_state = HS_DONE;
        }
        return 1;
    default:
        return -1;
    }
}

/* The TLS handshake after STARTTLS's ACK went out: an NBDSRV_HS_* code,
 * or 1 when it is done (options go on, through TLS). */
static int
hs_tls(struct nbdsrv_session *s)
{
    struct err *err = NULL;

    if (s->hs_state == HS_STARTTLS) {
        s->tls = tls_session_new(s->tls_creds, NULL, s->tls_authz, s->in_fd,
                                 s->out_fd, s->nonblock, &err);
        if (!s->tls) {
            goto fail;
        }
        s->hs_state = HS_TLS;
    }
    switch (tls_session_handshake(s->tls, &err)) {
    case TLS_HS_WANT_READ:
        return NBDSRV_HS_WANT_READ;
    case TLS_HS_WANT_WRITE:
        return NBDSRV_HS_WANT_WRITE;
    case TLS_HS_DONE:
        s->hs_state = HS_HEADER;
        s->hs_got = 0;
        return 1;
    default:
        break;
    }
fail:
    nbdsrv_log("option negotiation failed: %s", err->msg);
    err_free(err);
    return NBDSRV_HS_FAIL;
}

int
nbdsrv_hs_step(struct nbdsrv_session *s)
{
    for (;;) {
        int r = hs_flush(s);

        if (r == 0) {
            return NBDSRV_HS_WANT_WRITE;
        }
        if (r < 0 || s->hs_state == HS_ABORT) {
            break;
        }
        if (s->hs_state == HS_DONE) {
            return NBDSRV_HS_DONE;
        }
        if (s->hs_state == HS_STARTTLS || s->hs_state == HS_TLS) {
            r = hs_tls(s);
            if (r == NBDSRV_HS_FAIL) {
                break;
            }
            if (r != 1) {
                return r;
            }
            continue;
        }
        r = hs_message(s);
        if (r == 0) {
            return NBDSRV_HS_WANT_READ;
        }
        if (r < 0) {
            break;
        }
    }
    clear_meta(s);
    return NBDSRV_HS_FAIL;
}

int
nbdsrv_handshake(struct nbdsrv_session *s)
{
    s->nonblock = false;
    nbdsrv_hs_begin(s);
    return nbdsrv_hs_step(s) == NBDSRV_HS_DONE ? 0 : -1;
}
