/* SPDX-License-Identifier: MIT */
/*
 * TLS sessions (tls-session.h) with GnuTLS over our own transport
 * functions: non-blocking sockets without SIGPIPE, pipes and files too,
 * and a read-ahead buffer.
 *
 * Design notes.
 *
 *   The transport: GnuTLS pulls a record header and then its body, two
 *   reads per record; pull_fn() serves both from rbuf, which one recv(2)
 *   fills with as much as the socket has (several records of a large
 *   write).  rbuf is allocated when data comes and freed when the owner
 *   idles with nothing in it, so an idle client costs no buffer.
 *
 *   Sending: gnutls_record_send() makes one record per call.  Small
 *   leading pieces (a reply header, a short payload) are gathered into
 *   sbuf first, so that a reply header and its data share a record
 *   instead of costing a record each.  A send batches: push_fn() queues
 *   the records of up to TLS_BATCH bytes of the pieces in obuf, and one
 *   send(2) takes them all.  Sent one by one, each 16 KiB record of a
 *   large read reply cost a system call and woke the client once (on
 *   two cores the client and the daemon then took turns per record).
 *   Records in obuf are already counted by GnuTLS, so after EAGAIN the
 *   next call only sends what is left of them, and reports the bytes of
 *   the pieces they hold once they are out: the caller retries with the
 *   same pieces, as without the batch.
 *
 *   Locking: none here.  The receive side (pull_fn, rbuf, recv) and the
 *   send side (push_fn, sbuf, sendv) are each used by one thread at a
 *   time, which the owner guarantees (the NBD server's reader role and
 *   its write lock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "crypto/authz.h"
#include "crypto/tls-internal.h"
#include "crypto/tls-session.h"
#include "util.h"

/* A TLS record carries at most 16 KiB of data. */
#define TLS_RECORD_MAX   16384
#define TLS_RBUF_SIZE    (64 * 1024)
/* Leading pieces smaller than this are gathered into one record. */
#define TLS_GATHER_BELOW 4096
/* Bytes of the pieces one send encrypts before it sends the records. */
#define TLS_BATCH        (128 * 1024)

struct tls_session {
    gnutls_session_t gs;
    struct tls_creds *creds;
    char *hostname;
    char *authz_id;
    char *peer;
    int in_fd, out_fd;
    bool nonblock;
    bool in_sock, out_sock;     /* else read(2)/write(2) */
    bool handshaken;

    /* Receive side. */
    uint8_t *rbuf;
    size_t rpos, rlen;

    /* Send side. */
    uint8_t *sbuf;
    bool batching;              /* push_fn() queues in obuf */
    uint8_t *obuf;              /* records made, not sent yet (freed
                                 * when a send is done) */
    size_t ocap, olen, opos;    /* [opos, olen) waits for the socket */
    size_t oplain;              /* bytes of the pieces obuf holds */
};

/* ---- Transport -------------------------------------------------------- */

static ssize_t
raw_read(struct tls_session *s, void *buf, size_t len)
{
    for (;;) {
        ssize_t r;

        if (s->in_sock) {
            r = recv(s->in_fd, buf, len, s->nonblock ? MSG_DONTWAIT : 0);
            if (r < 0 && errno == ENOTSOCK) {
                s->in_sock = false;     /* a pipe or file: read(2) */
                continue;
            }
        } else {
            r = read(s->in_fd, buf, len);
        }
        if (r >= 0 || errno != EINTR) {
            return r;
        }
    }
}

static ssize_t
pull_fn(gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
    struct tls_session *s = ptr;
    size_t n;

    if (s->rpos == s->rlen) {
        ssize_t r;

        if (!s->rbuf) {
            s->rbuf = xmalloc(TLS_RBUF_SIZE);
        }
        r = raw_read(s, s->rbuf, TLS_RBUF_SIZE);
        if (r <= 0) {
            if (r < 0) {
                gnutls_transport_set_errno(s->gs, errno);
            }
            return r;
        }
        s->rpos = 0;
        s->rlen = (size_t)r;
    }
    n = MIN(len, s->rlen - s->rpos);
    memcpy(buf, s->rbuf + s->rpos, n);
    s->rpos += n;
    return (ssize_t)n;
}

static ssize_t
raw_write(struct tls_session *s, const void *buf, size_t len)
{
    for (;;) {
        ssize_t r;

        if (s->out_sock) {
            r = send(s->out_fd, buf, len,
                     MSG_NOSIGNAL | (s->nonblock ? MSG_DONTWAIT : 0));
            if (r < 0 && errno == ENOTSOCK) {
                s->out_sock = false;    /* a pipe or file: write(2) */
                continue;
            }
        } else {
            r = write(s->out_fd, buf, len);
        }
        if (r >= 0 || errno != EINTR) {
            return r;
        }
    }
}

static ssize_t
push_fn(gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
    struct tls_session *s = ptr;
    ssize_t r;

    if (s->batching) {
        if (s->olen + len > s->ocap) {
            s->ocap = MAX(s->olen + len, TLS_BATCH + 2 * TLS_RECORD_MAX);
            s->obuf = xrealloc(s->obuf, s->ocap);
        }
        memcpy(s->obuf + s->olen, buf, len);
        s->olen += len;
        return (ssize_t)len;
    }
    r = raw_write(s, buf, len);
    if (r < 0) {
        gnutls_transport_set_errno(s->gs, errno);
    }
    return r;
}

/* ---- Setting up ------------------------------------------------------- */

struct tls_session *
tls_session_new(struct tls_creds *creds, const char *hostname,
                const char *authz_id, int in_fd, int out_fd, bool nonblock,
                struct err **errp)
{
    struct tls_session *s = xzalloc(sizeof(*s));
    bool server = creds->opts.endpoint == TLS_ENDPOINT_SERVER;
    int r;

    s->creds = tls_creds_ref(creds);
    s->hostname = hostname ? xstrdup(hostname) : NULL;
    s->authz_id = authz_id ? xstrdup(authz_id) : NULL;
    s->in_fd = in_fd;
    s->out_fd = out_fd;
    s->nonblock = nonblock;
    s->in_sock = s->out_sock = true;
    r = gnutls_init(&s->gs, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) |
                            GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
    if (r < 0) {
        err_setf(errp, "Cannot initialize TLS session: %s",
                 gnutls_strerror(r));
        s->gs = NULL;
        tls_session_free(s);
        return NULL;
    }
    r = gnutls_priority_set(s->gs, creds->priority);
    if (r >= 0 && creds->x509) {
        r = gnutls_credentials_set(s->gs, GNUTLS_CRD_CERTIFICATE,
                                   creds->x509);
        if (server) {
            /* Ask for the client's certificate; the check after the
             * handshake decides (so that the error can say why). */
            gnutls_certificate_server_set_request(s->gs, GNUTLS_CERT_REQUEST);
        }
    } else if (r >= 0 && server) {
        r = gnutls_credentials_set(s->gs, GNUTLS_CRD_PSK, creds->psk_server);
    } else if (r >= 0) {
        r = gnutls_credentials_set(s->gs, GNUTLS_CRD_PSK, creds->psk_client);
    }
    if (r >= 0 && !server && hostname && creds->x509) {
        r = gnutls_server_name_set(s->gs, GNUTLS_NAME_DNS, hostname,
                                   strlen(hostname));
    }
    if (r < 0) {
        err_setf(errp, "Cannot set session credentials: %s",
                 gnutls_strerror(r));
        tls_session_free(s);
        return NULL;
    }
    gnutls_handshake_set_timeout(s->gs, 0);   /* the owner's deadline */
    gnutls_session_set_ptr(s->gs, creds);   /* tls_psk_server_lookup */
    gnutls_transport_set_ptr(s->gs, s);
    gnutls_transport_set_pull_function(s->gs, pull_fn);
    gnutls_transport_set_push_function(s->gs, push_fn);
    return s;
}

/* ---- Checking the peer ------------------------------------------------ */

static bool
peer_denied(struct tls_session *s, const char *kind, struct err **errp)
{
    struct err *local = NULL;

    if (!s->authz_id || authz_is_allowed(s->authz_id, s->peer, &local)) {
        return false;
    }
    if (local) {
        err_propagate(errp, local);
    } else {
        err_setf(errp, "TLS %s authz check for %s is denied", kind, s->peer);
    }
    return true;
}

static bool
check_x509_peer(struct tls_session *s, struct err **errp)
{
    bool server = s->creds->opts.endpoint == TLS_ENDPOINT_SERVER;
    const gnutls_datum_t *certs;
    unsigned ncerts = 0, status = 0;
    gnutls_x509_crt_t cert;
    size_t size = 0;
    bool ok = false;
    int r;

    r = gnutls_certificate_verify_peers2(s->gs, &status);
    if (r == GNUTLS_E_NO_CERTIFICATE_FOUND) {
        /* A GnuTLS client only sends a certificate that one of our CAs
         * signed: no certificate often means the wrong CA. */
        err_setf(errp, "The %s sent no certificate (has it one signed by "
                 "a CA in our ca-cert.pem?)", server ? "client" : "server");
        return false;
    }
    if (r < 0) {
        err_setf(errp, "Verify failed: %s", gnutls_strerror(r));
        return false;
    }
    if (status) {
        err_setf(errp, "%s", tls_cert_status_reason(status));
        return false;
    }
    certs = gnutls_certificate_get_peers(s->gs, &ncerts);
    if (!certs || ncerts == 0) {
        err_setf(errp, "No certificate peers");
        return false;
    }
    gnutls_x509_crt_init(&cert);
    r = gnutls_x509_crt_import(cert, &certs[0], GNUTLS_X509_FMT_DER);
    if (r < 0) {
        err_setf(errp, "Cannot import certificate: %s", gnutls_strerror(r));
        goto out;
    }
    r = gnutls_x509_crt_get_dn(cert, NULL, &size);
    if (r == GNUTLS_E_SHORT_MEMORY_BUFFER) {
        s->peer = xmalloc(size + 1);
        r = gnutls_x509_crt_get_dn(cert, s->peer, &size);
    }
    if (r < 0) {
        err_setf(errp, "Cannot get client distinguished name: %s",
                 gnutls_strerror(r));
        goto out;
    }
    if (server && peer_denied(s, "x509", errp)) {
        goto out;
    }
    if (!server && s->hostname &&
        !gnutls_x509_crt_check_hostname(cert, s->hostname)) {
        err_setf(errp, "Certificate does not match the hostname %s",
                 s->hostname);
        goto out;
    }
    ok = true;
out:
    gnutls_x509_crt_deinit(cert);
    return ok;
}

static bool
check_peer(struct tls_session *s, struct err **errp)
{
    const char *user;

    if (s->creds->x509) {
        return !s->creds->opts.verify_peer || check_x509_peer(s, errp);
    }
    if (s->creds->opts.endpoint != TLS_ENDPOINT_SERVER) {
        return true;   /* both sides proved the key */
    }
    user = gnutls_psk_server_get_username(s->gs);
    s->peer = xstrdup(user ? user : "");
    return !peer_denied(s, "PSK", errp);
}

int
tls_session_handshake(struct tls_session *s, struct err **errp)
{
    for (;;) {
        int r = gnutls_handshake(s->gs);

        if (r == 0) {
            break;
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            return gnutls_record_get_direction(s->gs) ? TLS_HS_WANT_WRITE
                                                      : TLS_HS_WANT_READ;
        }
        if (gnutls_error_is_fatal(r)) {
            err_setf(errp, "TLS handshake failed: %s", gnutls_strerror(r));
            /* Best effort, never waits on a non-blocking socket: the
             * peer's TLS library then says why instead of "closed". */
            gnutls_alert_send_appropriate(s->gs, r);
            return TLS_HS_FAIL;
        }
        /* A warning alert: go on. */
    }
    if (!check_peer(s, errp)) {
        /* Best effort, never waits: tell the peer's TLS library why. */
        gnutls_alert_send(s->gs, GNUTLS_AL_FATAL,
                          s->creds->x509 ? GNUTLS_A_BAD_CERTIFICATE
                                         : GNUTLS_A_ACCESS_DENIED);
        return TLS_HS_FAIL;
    }
    s->handshaken = true;
    return TLS_HS_DONE;
}

/* ---- Data ------------------------------------------------------------- */

ssize_t
tls_session_recv(struct tls_session *s, void *buf, size_t len)
{
    for (;;) {
        ssize_t r = gnutls_record_recv(s->gs, buf, len);

        if (r >= 0) {
            return r;
        }
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
            errno = EAGAIN;
            return -1;
        }
        if (r == GNUTLS_E_PREMATURE_TERMINATION) {
            return 0;   /* the peer closed without close-notify */
        }
        if (!gnutls_error_is_fatal(r) && r != GNUTLS_E_REHANDSHAKE) {
            continue;   /* a warning alert, a TLS 1.3 ticket */
        }
        /* Renegotiation is refused: nobody needs it on this channel. */
        errno = EIO;
        return -1;
    }
}

/*
 * One record from the pieces v[*i..n) at *off: small leading pieces
 * gathered in sbuf.  Returns the bytes of the pieces it took, or a GnuTLS
 * error.
 */
static ssize_t
send_record(struct tls_session *s, const struct iovec *v, int n, int i,
            size_t off)
{
    const void *data = (const char *)v[i].iov_base + off;
    size_t len = v[i].iov_len - off;
    ssize_t r;

    if (i + 1 < n && len < TLS_GATHER_BELOW) {
        if (!s->sbuf) {
            s->sbuf = xmalloc(TLS_RECORD_MAX);
        }
        memcpy(s->sbuf, data, len);
        for (int j = i + 1; j < n && len < TLS_RECORD_MAX; j++) {
            size_t take = MIN(v[j].iov_len, TLS_RECORD_MAX - len);

            if (take == 0) {
                continue;       /* an empty piece may have no base */
            }
            memcpy(s->sbuf + len, v[j].iov_base, take);
            len += take;
        }
        data = s->sbuf;
    }
    do {
        r = gnutls_record_send(s->gs, data, MIN(len, TLS_RECORD_MAX));
    } while (r == GNUTLS_E_INTERRUPTED);
    return r;
}

/* Records for TLS_BATCH bytes of the total in the pieces, into obuf
 * (empty); a tail shorter than a record goes with them (one send(2) and
 * one record less than on its own). */
static int
make_records(struct tls_session *s, const struct iovec *v, int n,
             size_t total)
{
    size_t done = 0, off = 0;
    int i = 0;

    s->batching = true;
    while (i < n && (done < TLS_BATCH || total - done <= TLS_RECORD_MAX)) {
        ssize_t r;

        if (off == v[i].iov_len) {
            i++;
            off = 0;
            continue;
        }
        r = send_record(s, v, n, i, off);
        if (r < 0) {
            s->batching = false;
            return (int)r;
        }
        done += (size_t)r;
        /* Step over what the record took (gathered pieces too). */
        for (size_t left = (size_t)r; left > 0;) {
            size_t take = MIN(left, v[i].iov_len - off);

            left -= take;
            off += take;
            if (off == v[i].iov_len && i + 1 < n) {
                i++;
                off = 0;
            }
        }
    }
    s->batching = false;
    s->oplain = done;
    return 0;
}

ssize_t
tls_session_sendv(struct tls_session *s, const struct iovec *v, int n)
{
    size_t total = 0;
    ssize_t r;

    for (int i = 0; i < n; i++) {
        total += v[i].iov_len;
    }
    if (s->olen == 0 && total <= TLS_RECORD_MAX) {
        /* One record: straight to the socket. */
        r = send_record(s, v, n, 0, 0);
        if (r == GNUTLS_E_AGAIN) {
            errno = EAGAIN;
            return -1;
        }
        if (r < 0) {
            errno = EIO;
            return -1;
        }
        return r;
    }
    if (s->olen == 0 && make_records(s, v, n, total) < 0) {
        s->olen = 0;        /* the session is dead anyway */
        errno = EIO;
        return -1;
    }
    while (s->opos < s->olen) {
        r = raw_write(s, s->obuf + s->opos, s->olen - s->opos);
        if (r < 0) {
            return -1;      /* EAGAIN: the rest goes with the next call */
        }
        s->opos += (size_t)r;
    }
    s->opos = s->olen = 0;
    if (s->oplain == total) {
        /* The caller is done: an idle connection keeps no buffer. */
        free(s->obuf);
        s->obuf = NULL;
        s->ocap = 0;
    }
    return (ssize_t)s->oplain;
}

bool
tls_session_pending(const struct tls_session *s)
{
    return s->rpos < s->rlen || gnutls_record_check_pending(s->gs) > 0;
}

void
tls_session_idle(struct tls_session *s)
{
    if (s->rbuf && s->rpos == s->rlen) {
        free(s->rbuf);
        s->rbuf = NULL;
        s->rpos = s->rlen = 0;
    }
}

const char *
tls_session_peer(const struct tls_session *s)
{
    return s->peer;
}

const char *
tls_session_protocol(const struct tls_session *s)
{
    return gnutls_protocol_get_name(gnutls_protocol_get_version(s->gs));
}

const char *
tls_session_cipher(const struct tls_session *s)
{
    return gnutls_cipher_get_name(gnutls_cipher_get(s->gs));
}

void
tls_session_free(struct tls_session *s)
{
    if (!s) {
        return;
    }
    if (s->gs) {
        if (s->handshaken) {
            s->nonblock = true;   /* a close-notify only if it fits now */
            gnutls_bye(s->gs, GNUTLS_SHUT_WR);
        }
        gnutls_deinit(s->gs);
    }
    tls_creds_put(s->creds);
    free(s->hostname);
    free(s->authz_id);
    free(s->peer);
    free(s->rbuf);
    free(s->sbuf);
    free(s->obuf);
    free(s);
}
