/* SPDX-License-Identifier: MIT */
/*
 * Inside the crypto layer: what a TLS session needs of its credentials.
 */
#ifndef LOCKSTEP_CRYPTO_TLS_INTERNAL_H
#define LOCKSTEP_CRYPTO_TLS_INTERNAL_H

#include <gnutls/gnutls.h>

#include "crypto/tls-creds.h"

struct tls_creds {
    int refs;                           /* atomic */
    struct tls_creds_options opts;      /* strings owned */
    gnutls_priority_t priority;
    gnutls_certificate_credentials_t x509;
    gnutls_psk_server_credentials_t psk_server;
    gnutls_psk_client_credentials_t psk_client;
    gnutls_dh_params_t dh;              /* from dh-params.pem, or NULL */
};

/* Why a certificate verification status is bad, in QEMU's words. */
const char *tls_cert_status_reason(unsigned status);

#endif
