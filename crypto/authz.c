/* SPDX-License-Identifier: MIT */
/*
 * Authorization objects (authz.h).
 *
 * Design notes.
 *
 *   g_authz_lock protects the list of objects and everything in them: a
 *   check holds it while it matches (and, for a list file that changed,
 *   while it reloads), so a check never sees a half-replaced list.  Checks
 *   happen once per TLS handshake, so one lock for all is cheap enough.
 *   The lock is a leaf: nothing else is taken under it except the file
 *   loader's own reading.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>

#include "crypto/authz.h"
#include "util.h"

struct authz {
    char *id;
    enum authz_type type;
    char *identity;             /* simple */
    struct authz_list list;     /* list; listfile: the last good load */
    bool loaded;                /* listfile: list is valid */
    char *filename;             /* listfile */
    bool refresh;
    authz_file_loader *load;
    struct stat st;             /* listfile: the file when last loaded */
    LIST_ENTRY(authz) link;
};

static struct lock g_authz_lock = LOCK_INITIALIZER(AUTHZ);
/* Protected by: g_authz_lock. */
static LIST_HEAD(, authz) g_authz = LIST_HEAD_INITIALIZER(g_authz);

bool
authz_glob_match(const char *p, const char *s)
{
    const char *star = NULL;    /* the last '*' seen, to backtrack to */
    const char *resume = NULL;  /* where s resumes after it */

    while (*s) {
        if (*p == '*') {
            star = p++;
            resume = s;
        } else if (*p == '?' || *p == *s) {
            p++;
            s++;
        } else if (star) {
            p = star + 1;       /* let the '*' take one more character */
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*p == '*') {
        p++;
    }
    return *p == '\0';
}

void
authz_list_copy(struct authz_list *dst, const struct authz_list *src)
{
    dst->policy = src->policy;
    dst->nrules = src->nrules;
    dst->rules = src->nrules ? xcalloc(src->nrules, sizeof(*dst->rules))
                             : NULL;
    for (size_t i = 0; i < src->nrules; i++) {
        dst->rules[i] = src->rules[i];
        dst->rules[i].match = xstrdup(src->rules[i].match);
    }
}

void
authz_list_clear(struct authz_list *l)
{
    for (size_t i = 0; i < l->nrules; i++) {
        free(l->rules[i].match);
    }
    free(l->rules);
    l->rules = NULL;
    l->nrules = 0;
}

static bool
list_allows(const struct authz_list *l, const char *identity)
{
    for (size_t i = 0; i < l->nrules; i++) {
        const struct authz_rule *r = &l->rules[i];
        bool hit = r->format == AUTHZ_GLOB ?
                   authz_glob_match(r->match, identity) :
                   strcmp(r->match, identity) == 0;

        if (hit) {
            return r->policy == AUTHZ_ALLOW;
        }
    }
    return l->policy == AUTHZ_ALLOW;
}

static struct authz *
find_locked(const char *id)
{
    struct authz *a;

    LIST_FOREACH(a, &g_authz, link) {
        if (!strcmp(a->id, id)) {
            return a;
        }
    }
    return NULL;
}

static void
authz_free(struct authz *a)
{
    free(a->id);
    free(a->identity);
    authz_list_clear(&a->list);
    free(a->filename);
    free(a);
}

static bool
same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
           a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* (Re)load a list file.  On failure the old rules go too: a file that
 * does not load denies everyone (QEMU does the same). */
static bool
listfile_load(struct authz *a, struct err **errp)
{
    struct authz_list fresh = {.policy = AUTHZ_DENY};
    struct stat st;

    if (stat(a->filename, &st) < 0) {
        err_setf_errno(errp, errno, "Unable to read '%s'", a->filename);
        goto fail;
    }
    if (!a->load(a->filename, &fresh, errp)) {
        goto fail;
    }
    authz_list_clear(&a->list);
    a->list = fresh;
    a->st = st;
    a->loaded = true;
    return true;

fail:
    authz_list_clear(&a->list);
    a->loaded = false;
    memset(&a->st, 0, sizeof(a->st));
    return false;
}

/* Refresh a list file that changed since it was loaded (refresh=on). */
static void
listfile_refresh(struct authz *a)
{
    struct stat st;
    struct err *err = NULL;

    if (stat(a->filename, &st) == 0 && a->loaded && same_file(&st, &a->st)) {
        return;
    }
    if (!listfile_load(a, &err)) {
        fprintf(stderr, "%s: authz-listfile '%s': %s (every client is "
                "denied until it loads)\n", program_invocation_short_name,
                a->id, err->msg);
        err_free(err);
    }
}

bool
authz_add(const struct authz_options *o, struct err **errp)
{
    struct authz *a = xzalloc(sizeof(*a));

    a->id = xstrdup(o->id);
    a->type = o->type;
    switch (o->type) {
    case AUTHZ_TYPE_SIMPLE:
        if (!o->identity) {
            err_setf(errp, "The 'identity' property must be set");
            goto fail;
        }
        a->identity = xstrdup(o->identity);
        break;
    case AUTHZ_TYPE_LIST:
        authz_list_copy(&a->list, o->list);
        break;
    case AUTHZ_TYPE_LISTFILE:
        if (!o->filename) {
            err_setf(errp, "filename not provided");
            goto fail;
        }
        if (o->filename[0] != '/') {
            err_setf(errp, "Filename must be an absolute path");
            goto fail;
        }
        a->filename = xstrdup(o->filename);
        a->refresh = o->refresh;
        a->load = o->load;
        if (!listfile_load(a, errp)) {
            goto fail;
        }
        break;
    }
    mutex_lock(&g_authz_lock);
    LIST_INSERT_HEAD(&g_authz, a, link);
    mutex_unlock(&g_authz_lock);
    return true;

fail:
    authz_free(a);
    return false;
}

bool
authz_del(const char *id, struct err **errp)
{
    struct authz *a;

    mutex_lock(&g_authz_lock);
    a = find_locked(id);
    if (a) {
        LIST_REMOVE(a, link);
    }
    mutex_unlock(&g_authz_lock);
    if (!a) {
        err_setf(errp, "object '%s' not found", id);
        return false;
    }
    authz_free(a);
    return true;
}

bool
authz_exists(const char *id)
{
    SCOPED_LOCK(&g_authz_lock);
    return find_locked(id) != NULL;
}

bool
authz_is_allowed(const char *id, const char *identity, struct err **errp)
{
    struct authz *a;
    bool ok = false;

    mutex_lock(&g_authz_lock);
    a = find_locked(id);
    if (!a) {
        err_setf(errp, "Cannot find QAuthZ object ID %s", id);
    } else {
        switch (a->type) {
        case AUTHZ_TYPE_SIMPLE:
            ok = strcmp(a->identity, identity) == 0;
            break;
        case AUTHZ_TYPE_LIST:
            ok = list_allows(&a->list, identity);
            break;
        case AUTHZ_TYPE_LISTFILE:
            if (a->refresh) {
                listfile_refresh(a);
            }
            ok = a->loaded && list_allows(&a->list, identity);
            break;
        }
    }
    mutex_unlock(&g_authz_lock);
    return ok;
}

void
authz_free_all(void)
{
    struct authz *a;

    mutex_lock(&g_authz_lock);
    while ((a = LIST_FIRST(&g_authz))) {
        LIST_REMOVE(a, link);
        authz_free(a);
    }
    mutex_unlock(&g_authz_lock);
}
