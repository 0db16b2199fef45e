/* SPDX-License-Identifier: MIT */
/*
 * TLS credentials objects, as QEMU's tls-creds-x509 and tls-creds-psk:
 * certificates or pre-shared keys loaded once from a directory with
 * QEMU's file names, for one endpoint (server or client).
 *
 *   x509, server: ca-cert.pem, server-cert.pem, server-key.pem; optional
 *                 ca-crl.pem and dh-params.pem
 *   x509, client: ca-cert.pem; optional client-cert.pem, client-key.pem
 *                 (and ca-crl.pem)
 *   psk:          keys.psk (psktool's "user:hexkey" lines); a client uses
 *                 the line of its username (default "qemu")
 *
 * Every file is read once, at object-add (keys.psk too, which QEMU
 * rereads per handshake): to change them, object-del and object-add (a
 * running NBD server keeps what it started with).
 *
 * Loading checks what QEMU checks (sanity-check=on, the default): our own
 * certificate and the CA's are in their validity period, have the right
 * basic constraints, key usage and purpose, and ours is signed by the CA.
 *
 * Objects are counted references: the NBD server holds the one it
 * serves with, so object-del (allowed while in use, as in QEMU) takes the
 * name away but not the credentials of a running server.
 *
 * Threads: add and del on the main thread; get and put on any thread.
 */
#ifndef LOCKSTEP_CRYPTO_TLS_CREDS_H
#define LOCKSTEP_CRYPTO_TLS_CREDS_H

#include <stdbool.h>

#include "lockstep/err.h"

enum tls_creds_type {
    TLS_CREDS_X509,
    TLS_CREDS_PSK,
};

enum tls_endpoint {
    TLS_ENDPOINT_CLIENT,        /* QEMU's QCryptoTLSCredsEndpoint order */
    TLS_ENDPOINT_SERVER,
};

struct tls_creds_options {
    const char *id;
    enum tls_creds_type type;
    enum tls_endpoint endpoint;
    const char *dir;
    bool verify_peer;           /* x509: check the peer's certificate */
    const char *priority;       /* GnuTLS priority string; NULL:
                                 * TLS_DEFAULT_PRIORITY (tls-creds.c) */
    const char *username;       /* psk client; NULL: "qemu" */
    bool sanity_check;          /* x509: check our own files at load */
};

struct tls_creds;

/* object-add: load the files now.  Main thread. */
bool tls_creds_add(const struct tls_creds_options *opts, struct err **errp);
/* object-del: forget the id; holders keep their reference.  Main thread. */
bool tls_creds_del(const char *id, struct err **errp);
bool tls_creds_exists(const char *id);

/* A new reference to the credentials named id ("No TLS credentials with
 * id 'x'" when there are none).  Any thread. */
struct tls_creds *tls_creds_get(const char *id, struct err **errp);
struct tls_creds *tls_creds_ref(struct tls_creds *c);
void tls_creds_put(struct tls_creds *c);

/* QEMU's "Expected TLS credentials for a server endpoint". */
bool tls_creds_check_endpoint(const struct tls_creds *c,
                              enum tls_endpoint endpoint, struct err **errp);

/* What the object was made with (valid while a reference is held). */
const struct tls_creds_options *tls_creds_options(const struct tls_creds *c);
/* "tls-creds-x509" or "tls-creds-psk". */
const char *tls_creds_type_name(enum tls_creds_type type);

/* Drop every id (daemon exit).  Main thread. */
void tls_creds_free_all(void);

#endif
