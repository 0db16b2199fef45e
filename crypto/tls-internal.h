/* SPDX-License-Identifier: MIT */
/*
 * Inside the crypto layer: what a TLS session needs of its credentials.
 */
#ifndef LOCKSTEP_CRYPTO_TLS_INTERNAL_H
#define LOCKSTEP_CRYPTO_TLS_INTERNAL_H

#include <gnutls/gnutls.h>

#include "crypto/tls-creds.h"

/* One line of keys.psk, the key decoded. */
struct tls_psk_key {
    char *user;
    gnutls_datum_t key;         /* xmalloc'd */
};

struct tls_creds {
    int refs;                           /* atomic */
    struct tls_creds_options opts;      /* strings owned */
    gnutls_priority_t priority;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_dh_params_t dh;              /* from dh-params.pem, or NULL */
    struct tls_psk_key *psk_keys;       /* psk server: keys.psk, loaded */
    size_t npsk_keys;
};

/* The PSK server's key lookup (gnutls_psk_set_server_credentials_
 * function()); the session's pointer (gnutls_session_get_ptr()) must be
 * its struct tls_creds. */
int tls_psk_server_lookup(gnutls_session_t gs, const char *user,
                          gnutls_datum_t *key);

/* Why a certificate verification status is bad, in QEMU's words. */
const char *tls_cert_status_reason(unsigned status);

#endif
