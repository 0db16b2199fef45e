/* SPDX-License-Identifier: MIT */
/*
 * Authorization objects, as QEMU's authz-simple, authz-list and
 * authz-listfile: a TLS server asks one of them, by id, whether the
 * identity its client proved (an x509 distinguished name, a PSK user
 * name) may connect.
 *
 * The id is looked up at every check, as QEMU does: deleting the object
 * (or naming one that does not exist) denies every new client, so a
 * mistake fails closed.  An authz-listfile with refresh=on notices a
 * changed file (its size, times or inode) at the next check and reloads
 * it; a file that no longer loads denies everyone until it is fixed.
 *
 * Threads: add and del on the main thread; authz_is_allowed() on any
 * thread (the NBD server's pool).
 */
#ifndef LOCKSTEP_CRYPTO_AUTHZ_H
#define LOCKSTEP_CRYPTO_AUTHZ_H

#include <stdbool.h>
#include <stddef.h>

#include "lockstep/err.h"

enum authz_policy {
    AUTHZ_DENY,                 /* QEMU's QAuthZListPolicy order */
    AUTHZ_ALLOW,
};

enum authz_format {
    AUTHZ_EXACT,                /* the whole identity, byte for byte */
    AUTHZ_GLOB,                 /* '*' any run of characters, '?' one */
};

struct authz_rule {
    char *match;
    enum authz_policy policy;
    enum authz_format format;
};

/* Rules in order; the first that matches decides, else policy. */
struct authz_list {
    enum authz_policy policy;
    struct authz_rule *rules;
    size_t nrules;
};

/*
 * Reads an authz-listfile's file into out (QEMU's format: a JSON object
 * {"policy": ..., "rules": [...]}).  The QMP layer provides it, so that
 * this layer parses no JSON.  May run on any thread.
 */
typedef bool authz_file_loader(const char *filename, struct authz_list *out,
                               struct err **errp);

enum authz_type {
    AUTHZ_TYPE_SIMPLE,
    AUTHZ_TYPE_LIST,
    AUTHZ_TYPE_LISTFILE,
};

struct authz_options {
    const char *id;
    enum authz_type type;
    const char *identity;           /* simple: the one identity allowed */
    const struct authz_list *list;  /* list: copied */
    const char *filename;           /* listfile: an absolute path */
    bool refresh;                   /* listfile: reload when it changes */
    authz_file_loader *load;        /* listfile */
};

/* object-add.  Main thread. */
bool authz_add(const struct authz_options *opts, struct err **errp);
/* object-del.  Main thread. */
bool authz_del(const char *id, struct err **errp);
bool authz_exists(const char *id);

/*
 * Does the authz object id allow identity?  False when it does not, or,
 * with *errp set, when there is no such object.  Any thread.
 */
bool authz_is_allowed(const char *id, const char *identity,
                      struct err **errp);

/* Does pattern match s?  '*' and '?' only, as GLib's simple patterns. */
bool authz_glob_match(const char *pattern, const char *s);

/* Copy and free a list's rules. */
void authz_list_copy(struct authz_list *dst, const struct authz_list *src);
void authz_list_clear(struct authz_list *l);

/* Drop every object (daemon exit).  Main thread. */
void authz_free_all(void);

#endif
