/* SPDX-License-Identifier: MIT */
/*
 * TLS credentials objects (tls-creds.h), loaded with GnuTLS.
 *
 * Design notes.
 *
 *   g_creds_lock protects the id table; a struct tls_creds is immutable
 *   once loaded (GnuTLS allows credentials to be shared by sessions on
 *   any number of threads) and lives until its last reference goes.
 *
 *   The priority string is compiled once here (gnutls_priority_init), so
 *   a bad one fails object-add rather than every handshake, and a session
 *   only attaches the compiled form.
 *
 *   Without dh-params.pem the server uses the RFC 7919 groups GnuTLS
 *   knows (QEMU generates 2048-bit parameters at object creation, which
 *   takes seconds; TLS 1.3 and ECDHE use neither).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "crypto/tls-internal.h"
#include "util.h"

/*
 * NORMAL's protocols and ciphers, AES-128-GCM first and the server's
 * order deciding.  With NORMAL alone the client's first choice,
 * AES-256-GCM, wins: 14 AES rounds per block against 10, paid by both
 * sides on every byte.  AES-128-GCM is TLS 1.3's mandatory suite
 * (RFC 8446, 9.1) and NORMAL's own; the set is NORMAL's, only the order
 * moves, so every client NORMAL serves still connects.  A user's
 * priority= replaces the whole string.
 */
#define TLS_DEFAULT_PRIORITY                                              \
    "NORMAL:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:"    \
    "+AES-256-CCM:+AES-128-CCM:+AES-256-CBC:+AES-128-CBC:%SERVER_PRECEDENCE"
#define TLS_PSK_PRIORITY_EXTRA ":+ECDHE-PSK:+DHE-PSK:+PSK"
#define TLS_MAX_CA_CERTS 16

struct creds_entry {
    char *id;
    struct tls_creds *creds;
    struct creds_entry *next;
};

static struct lock g_creds_lock = LOCK_INITIALIZER(TLS_CREDS);
/* Protected by: g_creds_lock. */
static struct creds_entry *g_creds;

const char *
tls_creds_type_name(enum tls_creds_type type)
{
    return type == TLS_CREDS_X509 ? "tls-creds-x509" : "tls-creds-psk";
}

static const char *
endpoint_name(enum tls_endpoint ep)
{
    return ep == TLS_ENDPOINT_SERVER ? "server" : "client";
}

/* ---- Files ------------------------------------------------------------ */

/* dir/name in *path; NULL when an optional file is absent.  False (with
 * QEMU's message) when a required one is, or cannot be looked at. */
static bool
cred_path(const struct tls_creds_options *o, const char *name,
          bool required, char **path, struct err **errp)
{
    struct stat st;

    *path = NULL;
    if (!o->dir) {
        if (required) {
            err_setf(errp, "Missing 'dir' property value");
            return false;
        }
        return true;
    }
    *path = xasprintf("%s/%s", o->dir, name);
    if (stat(*path, &st) < 0) {
        if (errno == ENOENT && !required) {
            free(*path);
            *path = NULL;
            return true;
        }
        err_setf_errno(errp, errno, "Unable to access credentials %s", *path);
        free(*path);
        *path = NULL;
        return false;
    }
    return true;
}

/* A whole file into a GnuTLS datum (NUL-terminated, not counted). */
static bool
load_datum(const char *path, gnutls_datum_t *d, struct err **errp)
{
    FILE *f = fopen(path, "re");
    long len;

    if (!f) {
        err_setf_errno(errp, errno, "Cannot read %s", path);
        return false;
    }
    if (fseek(f, 0, SEEK_END) < 0 || (len = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) < 0) {
        err_setf_errno(errp, errno, "Cannot read %s", path);
        fclose(f);
        return false;
    }
    d->data = xmalloc((size_t)len + 1);
    if (fread(d->data, 1, (size_t)len, f) != (size_t)len) {
        err_setf(errp, "Cannot read %s", path);
        free(d->data);
        fclose(f);
        return false;
    }
    d->data[len] = '\0';
    d->size = (unsigned)len;
    fclose(f);
    return true;
}

/* ---- x509 sanity checks (sanity-check=on) ----------------------------- */

static const char *
role_name(bool is_server, bool is_ca)
{
    return is_ca ? "CA" : is_server ? "server" : "client";
}

static bool
check_cert_times(gnutls_x509_crt_t cert, const char *file, bool is_server,
                 bool is_ca, struct err **errp)
{
    time_t now = time(NULL);

    if (gnutls_x509_crt_get_expiration_time(cert) < now) {
        err_setf(errp, "The %s certificate %s has expired",
                 role_name(is_server, is_ca), file);
        return false;
    }
    if (gnutls_x509_crt_get_activation_time(cert) > now) {
        err_setf(errp, "The %s certificate %s is not yet active",
                 role_name(is_server, is_ca), file);
        return false;
    }
    return true;
}

static bool
check_cert_constraints(gnutls_x509_crt_t cert, const char *file,
                       bool is_server, bool is_ca, struct err **errp)
{
    int r = gnutls_x509_crt_get_basic_constraints(cert, NULL, NULL, NULL);

    if (r > 0 && !is_ca) {
        err_setf(errp, "The certificate %s basic constraints show a CA, "
                 "but we need one for a %s", file,
                 is_server ? "server" : "client");
        return false;
    }
    if (r == 0 && is_ca) {
        err_setf(errp, "The certificate %s basic constraints do not show "
                 "a CA", file);
        return false;
    }
    if (r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE && is_ca) {
        err_setf(errp, "The certificate %s is missing basic constraints "
                 "for a CA", file);
        return false;
    }
    if (r < 0 && r != GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
        err_setf(errp, "Unable to query certificate %s basic constraints: "
                 "%s", file, gnutls_strerror(r));
        return false;
    }
    return true;
}

/* Key usage only matters when marked critical (as QEMU). */
static bool
check_cert_usage(gnutls_x509_crt_t cert, const char *file, bool is_ca,
                 struct err **errp)
{
    unsigned usage = 0, critical = 0;
    int r = gnutls_x509_crt_get_key_usage(cert, &usage, &critical);

    if (r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
        return true;
    }
    if (r < 0) {
        err_setf(errp, "Unable to query certificate %s key usage: %s", file,
                 gnutls_strerror(r));
        return false;
    }
    if (!critical) {
        return true;
    }
    if (is_ca && !(usage & GNUTLS_KEY_KEY_CERT_SIGN)) {
        err_setf(errp, "Certificate %s usage does not permit certificate "
                 "signing", file);
        return false;
    }
    if (!is_ca && !(usage & GNUTLS_KEY_DIGITAL_SIGNATURE)) {
        err_setf(errp, "Certificate %s usage does not permit digital "
                 "signature", file);
        return false;
    }
    if (!is_ca && !(usage & GNUTLS_KEY_KEY_ENCIPHERMENT)) {
        err_setf(errp, "Certificate %s usage does not permit key "
                 "encipherment", file);
        return false;
    }
    return true;
}

/* The extended key purposes, when listed and critical, must allow our
 * role (no list at all allows both). */
static bool
check_cert_purpose(gnutls_x509_crt_t cert, const char *file, bool is_server,
                   struct err **errp)
{
    bool server = false, client = false, critical = false;
    unsigned i;

    for (i = 0;; i++) {
        char oid[256];
        size_t size = sizeof(oid);
        unsigned crit = 0;
        int r = gnutls_x509_crt_get_key_purpose_oid(cert, i, oid, &size,
                                                    &crit);

        if (r == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) {
            if (i == 0) {
                return true;
            }
            break;
        }
        if (r < 0) {
            err_setf(errp, "Unable to query certificate %s key purpose: %s",
                     file, gnutls_strerror(r));
            return false;
        }
        critical |= crit != 0;
        if (!strcmp(oid, GNUTLS_KP_TLS_WWW_SERVER)) {
            server = true;
        } else if (!strcmp(oid, GNUTLS_KP_TLS_WWW_CLIENT)) {
            client = true;
        } else if (!strcmp(oid, GNUTLS_KP_ANY)) {
            server = client = true;
        }
    }
    if (critical && is_server && !server) {
        err_setf(errp, "Certificate %s purpose does not allow use with a "
                 "TLS server", file);
        return false;
    }
    if (critical && !is_server && !client) {
        err_setf(errp, "Certificate %s purpose does not allow use with a "
                 "TLS client", file);
        return false;
    }
    return true;
}

static bool
check_cert(gnutls_x509_crt_t cert, const char *file, bool is_server,
           bool is_ca, struct err **errp)
{
    return check_cert_times(cert, file, is_server, is_ca, errp) &&
           check_cert_constraints(cert, file, is_server, is_ca, errp) &&
           check_cert_usage(cert, file, is_ca, errp) &&
           (is_ca || check_cert_purpose(cert, file, is_server, errp));
}

const char *
tls_cert_status_reason(unsigned status)
{
    if (status & GNUTLS_CERT_INSECURE_ALGORITHM) {
        return "The certificate uses an insecure algorithm";
    }
    if (status & GNUTLS_CERT_REVOKED) {
        return "The certificate has been revoked";
    }
    if (status & GNUTLS_CERT_EXPIRED) {
        return "The certificate has expired";
    }
    if (status & GNUTLS_CERT_NOT_ACTIVATED) {
        return "The certificate is not yet activated";
    }
    if (status & GNUTLS_CERT_SIGNER_NOT_FOUND) {
        return "The certificate hasn't got a known issuer";
    }
    if (status & GNUTLS_CERT_INVALID) {
        return "The certificate is not trusted";
    }
    return "Invalid certificate";
}

static bool
sanity_check(const struct tls_creds_options *o, const char *ca_file,
             const char *cert_file, struct err **errp)
{
    bool is_server = o->endpoint == TLS_ENDPOINT_SERVER;
    gnutls_x509_crt_t cert = NULL;
    gnutls_x509_crt_t *cas = NULL;
    unsigned nca = 0;
    gnutls_datum_t d = {NULL, 0};
    bool ok = false;
    int r;

    if (cert_file) {
        if (!load_datum(cert_file, &d, errp)) {
            return false;
        }
        gnutls_x509_crt_init(&cert);
        r = gnutls_x509_crt_import(cert, &d, GNUTLS_X509_FMT_PEM);
        free(d.data);
        if (r < 0) {
            err_setf(errp, "Unable to import %s certificate %s: %s",
                     is_server ? "server" : "client", cert_file,
                     gnutls_strerror(r));
            goto out;
        }
    }
    if (!load_datum(ca_file, &d, errp)) {
        goto out;
    }
    r = gnutls_x509_crt_list_import2(&cas, &nca, &d, GNUTLS_X509_FMT_PEM, 0);
    free(d.data);
    if (r < 0 || nca > TLS_MAX_CA_CERTS) {
        err_setf(errp, "Unable to import CA certificate list %s", ca_file);
        goto out;
    }
    if (cert && !check_cert(cert, cert_file, is_server, false, errp)) {
        goto out;
    }
    for (unsigned i = 0; i < nca; i++) {
        if (!check_cert(cas[i], ca_file, is_server, true, errp)) {
            goto out;
        }
    }
    if (cert && nca) {
        unsigned status = 0;

        if (gnutls_x509_crt_list_verify(&cert, 1, cas, nca, NULL, 0, 0,
                                        &status) < 0) {
            err_setf(errp, "Unable to verify %s certificate %s against CA "
                     "certificate %s", is_server ? "server" : "client",
                     cert_file, ca_file);
            goto out;
        }
        if (status) {
            err_setf(errp, "Our own certificate %s failed validation "
                     "against %s: %s", cert_file, ca_file,
                     tls_cert_status_reason(status));
            goto out;
        }
    }
    ok = true;
out:
    if (cert) {
        gnutls_x509_crt_deinit(cert);
    }
    for (unsigned i = 0; i < nca; i++) {
        gnutls_x509_crt_deinit(cas[i]);
    }
    gnutls_free(cas);
    return ok;
}

/* ---- Loading ---------------------------------------------------------- */

static bool
load_dh(struct tls_creds *c, const char *path, struct err **errp)
{
    gnutls_datum_t d;
    int r;

    if (!load_datum(path, &d, errp)) {
        return false;
    }
    gnutls_dh_params_init(&c->dh);
    r = gnutls_dh_params_import_pkcs3(c->dh, &d, GNUTLS_X509_FMT_PEM);
    free(d.data);
    if (r < 0) {
        err_setf(errp, "Unable to load DH parameters from %s: %s", path,
                 gnutls_strerror(r));
        return false;
    }
    return true;
}

static bool
load_x509(struct tls_creds *c, struct err **errp)
{
    const struct tls_creds_options *o = &c->opts;
    bool server = o->endpoint == TLS_ENDPOINT_SERVER;
    CLEANUP_FREE char *ca = NULL;
    CLEANUP_FREE char *crl = NULL;
    CLEANUP_FREE char *cert = NULL;
    CLEANUP_FREE char *key = NULL;
    CLEANUP_FREE char *dh = NULL;
    int r;

    if (!cred_path(o, "ca-cert.pem", true, &ca, errp) ||
        !cred_path(o, "ca-crl.pem", false, &crl, errp) ||
        !cred_path(o, server ? "server-cert.pem" : "client-cert.pem", server,
                   &cert, errp) ||
        !cred_path(o, server ? "server-key.pem" : "client-key.pem", server,
                   &key, errp) ||
        (server && !cred_path(o, "dh-params.pem", false, &dh, errp))) {
        return false;
    }
    if (o->sanity_check && !sanity_check(o, ca, cert, errp)) {
        return false;
    }
    r = gnutls_certificate_allocate_credentials(&c->x509);
    if (r < 0) {
        err_setf(errp, "Cannot allocate credentials: '%s'",
                 gnutls_strerror(r));
        return false;
    }
    r = gnutls_certificate_set_x509_trust_file(c->x509, ca,
                                               GNUTLS_X509_FMT_PEM);
    if (r < 0) {
        err_setf(errp, "Cannot load CA certificate '%s': %s", ca,
                 gnutls_strerror(r));
        return false;
    }
    if (cert && key) {
        r = gnutls_certificate_set_x509_key_file(c->x509, cert, key,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            err_setf(errp, "Cannot load certificate '%s' & key '%s': %s",
                     cert, key, gnutls_strerror(r));
            return false;
        }
    }
    if (crl) {
        r = gnutls_certificate_set_x509_crl_file(c->x509, crl,
                                                 GNUTLS_X509_FMT_PEM);
        if (r < 0) {
            err_setf(errp, "Cannot load CRL '%s': %s", crl,
                     gnutls_strerror(r));
            return false;
        }
    }
    if (dh) {
        if (!load_dh(c, dh, errp)) {
            return false;
        }
        gnutls_certificate_set_dh_params(c->x509, c->dh);
    } else if (server) {
        gnutls_certificate_set_known_dh_params(c->x509,
                                               GNUTLS_SEC_PARAM_MEDIUM);
    }
    return true;
}

/*
 * Every "user:hexkey" line of a psktool file, keys decoded.  Loaded once
 * at object-add (GnuTLS's own file support rereads the file at every
 * handshake: a file changed or removed later would change who gets in
 * without anyone asking for it).
 */
static bool
psk_load(const char *path, struct tls_psk_key **keys, size_t *nkeys,
         struct err **errp)
{
    gnutls_datum_t d;
    char *line, *save = NULL;
    unsigned lineno = 0;
    bool ok = true;

    *keys = NULL;
    *nkeys = 0;
    if (!load_datum(path, &d, errp)) {
        return false;
    }
    for (line = strtok_r((char *)d.data, "\n", &save); line && ok;
         line = strtok_r(NULL, "\n", &save)) {
        char *colon = strchr(line, ':');
        gnutls_datum_t hex, bin;
        size_t len;

        lineno++;
        line[strcspn(line, "\r")] = '\0';
        if (!*line) {
            continue;
        }
        if (!colon || colon == line) {
            err_setf(errp, "%s line %u: expected user:hexkey", path,
                     lineno);
            ok = false;
            break;
        }
        *colon = '\0';
        hex.data = (unsigned char *)colon + 1;
        hex.size = (unsigned)strlen(colon + 1);
        len = hex.size / 2;
        bin.data = xmalloc(len + 1);
        bin.size = (unsigned)len;
        if (hex.size == 0 || hex.size % 2 ||
            gnutls_hex_decode(&hex, bin.data, &len) < 0) {
            err_setf(errp, "%s line %u: the key of '%s' is not hex", path,
                     lineno, line);
            free(bin.data);
            ok = false;
            break;
        }
        *keys = xrealloc(*keys, (*nkeys + 1) * sizeof(**keys));
        (*keys)[*nkeys].user = xstrdup(line);
        (*keys)[*nkeys].key = bin;
        (*nkeys)++;
    }
    explicit_bzero(d.data, d.size);
    free(d.data);
    if (ok && *nkeys == 0) {
        err_setf(errp, "No keys in PSK file %s", path);
        ok = false;
    }
    return ok;
}

static void
psk_keys_free(struct tls_psk_key *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(keys[i].user);
        explicit_bzero(keys[i].key.data, keys[i].key.size);
        free(keys[i].key.data);
    }
    free(keys);
}

int
tls_psk_server_lookup(gnutls_session_t gs, const char *user,
                      gnutls_datum_t *key)
{
    const struct tls_creds *c = gnutls_session_get_ptr(gs);

    for (size_t i = 0; c && i < c->npsk_keys; i++) {
        if (!strcmp(c->psk_keys[i].user, user)) {
            key->size = c->psk_keys[i].key.size;
            key->data = gnutls_malloc(key->size);
            if (!key->data) {
                return -1;
            }
            memcpy(key->data, c->psk_keys[i].key.data, key->size);
            return 0;
        }
    }
    return -1;      /* unknown user: the handshake fails */
}

static bool
load_psk(struct tls_creds *c, struct err **errp)
{
    const struct tls_creds_options *o = &c->opts;
    CLEANUP_FREE char *file = NULL;
    CLEANUP_FREE char *dh = NULL;
    const char *user = o->username ? o->username : "qemu";
    struct tls_psk_key *keys = NULL;
    size_t nkeys = 0;
    gnutls_datum_t key = {NULL, 0};
    int r;

    if (o->endpoint == TLS_ENDPOINT_SERVER) {
        if (o->username) {
            err_setf(errp, "username should not be set when "
                     "endpoint=server");
            return false;
        }
        if (!cred_path(o, "dh-params.pem", false, &dh, errp) ||
            !cred_path(o, "keys.psk", true, &file, errp)) {
            return false;
        }
        r = gnutls_psk_allocate_server_credentials(&c->psk_server);
        if (r < 0) {
            err_setf(errp, "Cannot allocate credentials: %s",
                     gnutls_strerror(r));
            return false;
        }
        if (!psk_load(file, &c->psk_keys, &c->npsk_keys, errp)) {
            return false;
        }
        gnutls_psk_set_server_credentials_function(c->psk_server,
                                                   tls_psk_server_lookup);
        if (dh) {
            if (!load_dh(c, dh, errp)) {
                return false;
            }
            gnutls_psk_set_server_dh_params(c->psk_server, c->dh);
        } else {
            gnutls_psk_set_server_known_dh_params(c->psk_server,
                                                  GNUTLS_SEC_PARAM_MEDIUM);
        }
        return true;
    }
    if (!cred_path(o, "keys.psk", true, &file, errp) ||
        !psk_load(file, &keys, &nkeys, errp)) {
        return false;
    }
    for (size_t i = 0; i < nkeys && !key.data; i++) {
        if (!strcmp(keys[i].user, user)) {
            key = keys[i].key;
        }
    }
    if (!key.data) {
        err_setf(errp, "Username %s not found in PSK file %s", user, file);
        psk_keys_free(keys, nkeys);
        return false;
    }
    r = gnutls_psk_allocate_client_credentials(&c->psk_client);
    if (r >= 0) {
        r = gnutls_psk_set_client_credentials(c->psk_client, user, &key,
                                              GNUTLS_PSK_KEY_RAW);
    }
    psk_keys_free(keys, nkeys);
    if (r < 0) {
        err_setf(errp, "Cannot load the PSK of %s from %s: %s", user,
                 file, gnutls_strerror(r));
        return false;
    }
    return true;
}

static bool
load_priority(struct tls_creds *c, struct err **errp)
{
    const char *base = c->opts.priority ? c->opts.priority
                                        : TLS_DEFAULT_PRIORITY;
    CLEANUP_FREE char *prio =
        xasprintf("%s%s", base,
                  c->opts.type == TLS_CREDS_PSK ? TLS_PSK_PRIORITY_EXTRA : "");
    const char *where = NULL;
    int r = gnutls_priority_init(&c->priority, prio, &where);

    if (r < 0) {
        c->priority = NULL;
        err_setf(errp, "Unable to set TLS session priority %s: %s%s%s", prio,
                 gnutls_strerror(r), where ? " at " : "", where ? where : "");
        return false;
    }
    return true;
}

static void
creds_free(struct tls_creds *c)
{
    if (c->priority) {
        gnutls_priority_deinit(c->priority);
    }
    if (c->x509) {
        gnutls_certificate_free_credentials(c->x509);
    }
    if (c->psk_server) {
        gnutls_psk_free_server_credentials(c->psk_server);
    }
    if (c->psk_client) {
        gnutls_psk_free_client_credentials(c->psk_client);
    }
    if (c->dh) {
        gnutls_dh_params_deinit(c->dh);
    }
    psk_keys_free(c->psk_keys, c->npsk_keys);
    free((char *)c->opts.id);
    free((char *)c->opts.dir);
    free((char *)c->opts.priority);
    free((char *)c->opts.username);
    free(c);
}

static struct creds_entry **
find_locked(const char *id)
{
    struct creds_entry **e;

    for (e = &g_creds; *e; e = &(*e)->next) {
        if (!strcmp((*e)->id, id)) {
            return e;
        }
    }
    return NULL;
}

bool
tls_creds_add(const struct tls_creds_options *o, struct err **errp)
{
    struct tls_creds *c = xzalloc(sizeof(*c));
    struct creds_entry *e;
    bool ok;

    c->refs = 1;
    c->opts = *o;
    c->opts.id = xstrdup(o->id);
    c->opts.dir = o->dir ? xstrdup(o->dir) : NULL;
    c->opts.priority = o->priority ? xstrdup(o->priority) : NULL;
    c->opts.username = o->username ? xstrdup(o->username) : NULL;
    ok = (o->type == TLS_CREDS_X509 ? load_x509(c, errp)
                                    : load_psk(c, errp)) &&
         load_priority(c, errp);
    if (!ok) {
        creds_free(c);
        return false;
    }
    e = xzalloc(sizeof(*e));
    e->id = xstrdup(o->id);
    e->creds = c;
    mutex_lock(&g_creds_lock);
    e->next = g_creds;
    g_creds = e;
    mutex_unlock(&g_creds_lock);
    return true;
}

bool
tls_creds_del(const char *id, struct err **errp)
{
    struct creds_entry **pe, *e = NULL;

    mutex_lock(&g_creds_lock);
    pe = find_locked(id);
    if (pe) {
        e = *pe;
        *pe = e->next;
    }
    mutex_unlock(&g_creds_lock);
    if (!e) {
        err_setf(errp, "object '%s' not found", id);
        return false;
    }
    tls_creds_put(e->creds);
    free(e->id);
    free(e);
    return true;
}

bool
tls_creds_exists(const char *id)
{
    SCOPED_LOCK(&g_creds_lock);
    return find_locked(id) != NULL;
}

struct tls_creds *
tls_creds_get(const char *id, struct err **errp)
{
    struct creds_entry **pe;
    struct tls_creds *c = NULL;

    mutex_lock(&g_creds_lock);
    pe = find_locked(id);
    if (pe) {
        c = tls_creds_ref((*pe)->creds);
    }
    mutex_unlock(&g_creds_lock);
    if (!c) {
        err_setf(errp, "No TLS credentials with id '%s'", id);
    }
    return c;
}

struct tls_creds *
tls_creds_ref(struct tls_creds *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void
tls_creds_put(struct tls_creds *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        creds_free(c);
    }
}

bool
tls_creds_check_endpoint(const struct tls_creds *c, enum tls_endpoint ep,
                         struct err **errp)
{
    if (c->opts.endpoint != ep) {
        err_setf(errp, "Expected TLS credentials for a %s endpoint",
                 endpoint_name(ep));
        return false;
    }
    return true;
}

const struct tls_creds_options *
tls_creds_options(const struct tls_creds *c)
{
    return &c->opts;
}

void
tls_creds_free_all(void)
{
    struct creds_entry *e;

    mutex_lock(&g_creds_lock);
    while ((e = g_creds)) {
        g_creds = e->next;
        tls_creds_put(e->creds);
        free(e->id);
        free(e);
    }
    mutex_unlock(&g_creds_lock);
}
