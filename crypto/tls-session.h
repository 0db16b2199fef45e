/* SPDX-License-Identifier: MIT */
/*
 * One TLS session over a connection's file descriptors, driven by its
 * owner's event loop: the handshake is a step function that says what it
 * waits for, and records go in and out without ever blocking when the
 * session is non-blocking (the NBD server's pool).
 *
 * After the handshake the peer is checked as QEMU checks it: with x509
 * credentials and verify-peer=on its certificate chain (CA, CRL, validity
 * period) and, on a client, the host name; then the authz object, if any,
 * is asked about the certificate's distinguished name, or with PSK about
 * the user name.  A refused peer gets a fatal alert, so that its TLS
 * library reports why.
 *
 * Reading: the session reads ahead from the socket into a buffer of its
 * own, so a record costs one recv(2), not two.  Bytes held there, or
 * decrypted and not yet taken, are invisible to poll(2): an owner must
 * ask tls_session_pending() before it waits on the socket.
 *
 * Threads: one thread may receive while another sends (GnuTLS allows
 * that once the handshake is over); neither side may be entered by two
 * threads at once.
 */
#ifndef LOCKSTEP_CRYPTO_TLS_SESSION_H
#define LOCKSTEP_CRYPTO_TLS_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "crypto/tls-creds.h"
#include "lockstep/err.h"

struct tls_session;

/* What tls_session_handshake() needs next. */
#define TLS_HS_FAIL        -1
#define TLS_HS_DONE         0
#define TLS_HS_WANT_READ    1
#define TLS_HS_WANT_WRITE   2

/*
 * A session for creds' endpoint on in_fd (reads) and out_fd (writes; may
 * be the same socket; pipes and files work too).  hostname: what a
 * client expects the server's certificate to name (NULL: no check).
 * authz_id: the authz object a server asks (NULL: none).  nonblock: I/O
 * that would wait returns EAGAIN instead.  Holds a reference to creds.
 */
struct tls_session *tls_session_new(struct tls_creds *creds,
                                    const char *hostname,
                                    const char *authz_id, int in_fd,
                                    int out_fd, bool nonblock,
                                    struct err **errp);
/* Run the handshake as far as the socket allows, then check the peer. */
int tls_session_handshake(struct tls_session *s, struct err **errp);

/* Application data: > 0 bytes, 0 at the peer's end of stream, -1 with
 * errno (EAGAIN: nothing yet; EIO: a TLS error).  One record at most. */
ssize_t tls_session_recv(struct tls_session *s, void *buf, size_t len);
/*
 * Send from the pieces v[0..n): returns how many bytes of them went out
 * (one record, or the records of up to 128 KiB of them in one send(2);
 * small leading pieces are gathered into one record), or -1 with errno.
 * After EAGAIN call it again with the same pieces: the records are
 * already made and only wait for the socket.
 */
ssize_t tls_session_sendv(struct tls_session *s, const struct iovec *v,
                          int n);
/* Data read and not taken yet, which poll(2) on the socket won't show. */
bool tls_session_pending(const struct tls_session *s);
/* Give back the read-ahead buffer while the connection idles. */
void tls_session_idle(struct tls_session *s);

/* The peer's identity: its certificate's DN, or its PSK user name (NULL
 * before the handshake, or with verify-peer=off). */
const char *tls_session_peer(const struct tls_session *s);
/* "TLS1.3", "AES-256-GCM" ... for logs and queries. */
const char *tls_session_protocol(const struct tls_session *s);
const char *tls_session_cipher(const struct tls_session *s);

/* Close-notify if the socket takes it now (never waits), and free. */
void tls_session_free(struct tls_session *s);

#endif
