/* SPDX-License-Identifier: MIT */
/*
 * The backup directory's small files:
 *
 *   manifest.json       the backups, oldest first: {"format":
 *                       "lockstep-backup", "version": 1, "node": N,
 *                       "backups": [{"time", "file", "type": "full" |
 *                       "incremental", "backing"?, "bitmap", "size",
 *                       "bytes-read", "dirty-bytes"?}, ...]}
 *   .in-progress.json   the journal of a backup that has started and not
 *                       yet finished (what to tear down, which bitmaps to
 *                       roll back); the next run finishes the job
 *   .lock               flock()ed while a run works in the directory
 *
 * Files are replaced atomically: written to a temporary name, fsync'ed,
 * renamed over the old one, and the directory fsync'ed.  So a crash at
 * any point leaves the old manifest or the new one, never a mix.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

#define MANIFEST_FORMAT "lockstep-backup"
#define MANIFEST_VERSION 1

bool
dir_sync(const char *dir, struct err **errp)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    bool ok;

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not open directory '%s'", dir);
        return false;
    }
    ok = fsync(fd) == 0;
    if (!ok) {
        err_setf_errno(errp, errno, "Could not sync directory '%s'", dir);
    }
    close(fd);
    return ok;
}

bool
dir_write_json(const char *dir, const char *name, json_t *obj,
               struct err **errp)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, name);
    CLEANUP_FREE char *tmp = xasprintf("%s/.%s.tmp", dir, name);
    CLEANUP_FREE char *text = json_dumps(obj, JSON_INDENT(2) |
                                         JSON_PRESERVE_ORDER);
    int fd, ret;

    json_decref(obj);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not create '%s'", tmp);
        return false;
    }
    ret = write_full(fd, text, strlen(text));
    if (ret == 0) {
        ret = write_full(fd, "\n", 1);
    }
    if (ret == 0 && fsync(fd) < 0) {
        ret = -errno;
    }
    close(fd);
    if (ret == 0 && rename(tmp, path) < 0) {
        ret = -errno;
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not write '%s'", path);
        unlink(tmp);
        return false;
    }
    return dir_sync(dir, errp);
}

static char *
read_text(const char *path, size_t *len, struct err **errp)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t cap = 0;

    *len = 0;
    if (!f) {
        if (errno != ENOENT) {
            err_setf_errno(errp, errno, "Could not open '%s'", path);
        }
        return NULL;
    }
    for (;;) {
        size_t n;

        if (cap - *len < 4096) {
            cap = cap * 2 + 4096;
            buf = xrealloc(buf, cap);
        }
        n = fread(buf + *len, 1, cap - *len - 1, f);
        *len += n;
        if (n == 0) {
            break;
        }
    }
    if (ferror(f)) {
        err_setf_errno(errp, EIO, "Could not read '%s'", path);
        free(buf);
        buf = NULL;
    } else {
        buf[*len] = '\0';
    }
    fclose(f);
    return buf;
}

json_t *
dir_read_json(const char *dir, const char *name, struct err **errp)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, name);
    CLEANUP_FREE char *text = NULL;
    json_error_t jerr;
    size_t len;
    json_t *o;

    text = read_text(path, &len, errp);
    if (!text) {
        return NULL;
    }
    o = json_loadb(text, len, 0, &jerr);
    if (!o) {
        err_setf(errp, "%s: not valid JSON (line %d: %s)", path, jerr.line,
                 jerr.text);
    }
    return o;
}

bool
dir_remove(const char *dir, const char *name, struct err **errp)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, name);

    if (unlink(path) < 0 && errno != ENOENT) {
        err_setf_errno(errp, errno, "Could not remove '%s'", path);
        return false;
    }
    return dir_sync(dir, errp);
}

int
dir_lock(const char *dir, struct err **errp)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, BK_LOCK);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not open '%s'", path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK) {
            err_setf(errp, "Another %s run is using %s", BK_PROG, dir);
        } else {
            err_setf_errno(errp, errno, "Could not lock '%s'", path);
        }
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- The manifest ---------------------------------------------------- */

static void
entry_free(struct manifest_entry *e)
{
    free(e->time);
    free(e->file);
    free(e->backing);
    free(e->bitmap);
}

void
manifest_free(struct manifest *m)
{
    for (size_t i = 0; i < m->n; i++) {
        entry_free(&m->e[i]);
    }
    free(m->e);
    free(m->node);
    memset(m, 0, sizeof(*m));
}

static char *
dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void
manifest_append(struct manifest *m, const struct manifest_entry *e)
{
    struct manifest_entry *n;

    m->e = xrealloc(m->e, (m->n + 1) * sizeof(*m->e));
    n = &m->e[m->n++];
    *n = *e;
    n->time = xstrdup(e->time);
    n->file = xstrdup(e->file);
    n->backing = dup_or_null(e->backing);
    n->bitmap = dup_or_null(e->bitmap);
}

const struct manifest_entry *
manifest_find(const struct manifest *m, const char *t)
{
    if (!t) {
        return m->n ? &m->e[m->n - 1] : NULL;
    }
    for (size_t i = 0; i < m->n; i++) {
        if (!strcmp(m->e[i].time, t)) {
            return &m->e[i];
        }
    }
    for (size_t i = 0; i < m->n; i++) {
        if (!strcmp(m->e[i].file, t)) {
            return &m->e[i];
        }
    }
    return NULL;
}

/* A file name of the directory: no path, nothing hidden. */
static bool
plain_name(const char *s)
{
    return s && *s && *s != '.' && !strchr(s, '/');
}

static bool
get_u64(json_t *o, const char *key, bool required, uint64_t *out)
{
    json_t *v = json_object_get(o, key);

    if (!v) {
        *out = 0;
        return !required;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bool
parse_entry(json_t *o, const struct manifest *m, struct manifest_entry *e,
            struct err **errp)
{
    const char *time = json_string_value(json_object_get(o, "time"));
    const char *file = json_string_value(json_object_get(o, "file"));
    const char *type = json_string_value(json_object_get(o, "type"));
    const char *backing = json_string_value(json_object_get(o, "backing"));
    const char *bitmap = json_string_value(json_object_get(o, "bitmap"));

    memset(e, 0, sizeof(*e));
    if (!json_is_object(o) || !time || !*time || !plain_name(file) ||
        !type || (strcmp(type, "full") && strcmp(type, "incremental")) ||
        !bitmap || !get_u64(o, "size", true, &e->size) ||
        !get_u64(o, "bytes-read", false, &e->bytes_read) ||
        !get_u64(o, "dirty-bytes", false, &e->dirty_bytes)) {
        err_setf(errp, "backup %zu: missing or invalid members", m->n + 1);
        return false;
    }
    for (size_t i = 0; i < m->n; i++) {
        if (!strcmp(m->e[i].time, time) || !strcmp(m->e[i].file, file)) {
            err_setf(errp, "backup %zu (%s): listed twice", m->n + 1, file);
            return false;
        }
    }
    e->incremental = !strcmp(type, "incremental");
    /* The chain's links: an incremental backup sits on the one before. */
    if (e->incremental != (backing != NULL) ||
        (backing && (!m->n || strcmp(backing, m->e[m->n - 1].file)))) {
        err_setf(errp, "backup %zu (%s): its backing is not the backup "
                 "before it", m->n + 1, file);
        return false;
    }
    if (e->incremental && e->size != m->e[m->n - 1].size) {
        err_setf(errp, "backup %zu (%s): its size differs from its "
                 "backing's", m->n + 1, file);
        return false;
    }
    e->time = (char *)time;
    e->file = (char *)file;
    e->backing = (char *)backing;
    e->bitmap = (char *)bitmap;
    return true;
}

bool
manifest_parse(const char *text, size_t len, struct manifest *m,
               struct err **errp)
{
    json_t *root, *list, *o;
    json_error_t jerr;
    const char *fmt;
    size_t i;
    bool ok = true;

    memset(m, 0, sizeof(*m));
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        err_setf(errp, "not valid JSON (line %d: %s)", jerr.line, jerr.text);
        return false;
    }
    fmt = json_string_value(json_object_get(root, "format"));
    list = json_object_get(root, "backups");
    if (!fmt || strcmp(fmt, MANIFEST_FORMAT) || !json_is_array(list)) {
        err_setf(errp, "not a %s manifest", BK_PROG);
        json_decref(root);
        return false;
    }
    if (json_integer_value(json_object_get(root, "version")) !=
        MANIFEST_VERSION) {
        err_setf(errp, "manifest version %lld is not supported (this is "
                 "version %d)", (long long)json_integer_value(
                     json_object_get(root, "version")), MANIFEST_VERSION);
        json_decref(root);
        return false;
    }
    m->node = dup_or_null(json_string_value(json_object_get(root, "node")));
    json_array_foreach(list, i, o) {
        struct manifest_entry e;

        if (!parse_entry(o, m, &e, errp)) {
            ok = false;
            break;
        }
        manifest_append(m, &e);
    }
    json_decref(root);
    if (!ok) {
        manifest_free(m);
    }
    return ok;
}

bool
manifest_load(const char *dir, struct manifest *m, struct err **errp)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, BK_MANIFEST);
    CLEANUP_FREE char *text = NULL;
    struct err *e = NULL;
    size_t len;

    memset(m, 0, sizeof(*m));
    text = read_text(path, &len, &e);
    if (!text) {
        if (e) {
            err_propagate(errp, e);
            return false;
        }
        return true;    /* no manifest yet */
    }
    if (!manifest_parse(text, len, m, &e)) {
        err_prepend(&e, "%s: ", path);
        err_propagate(errp, e);
        return false;
    }
    return true;
}

static json_t *
entry_json(const struct manifest_entry *e)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "time", e->time, "file",
                          e->file, "type",
                          e->incremental ? "incremental" : "full");

    if (e->backing) {
        json_object_set_new(o, "backing", json_string(e->backing));
    }
    json_object_set_new(o, "bitmap", json_string(e->bitmap));
    json_object_set_new(o, "size", json_integer((json_int_t)e->size));
    json_object_set_new(o, "bytes-read",
                        json_integer((json_int_t)e->bytes_read));
    if (e->incremental) {
        json_object_set_new(o, "dirty-bytes",
                            json_integer((json_int_t)e->dirty_bytes));
    }
    return o;
}

bool
manifest_save(const char *dir, const struct manifest *m, struct err **errp)
{
    json_t *root = json_pack("{s:s, s:i}", "format", MANIFEST_FORMAT,
                             "version", MANIFEST_VERSION);
    json_t *list = json_array();

    if (m->node) {
        json_object_set_new(root, "node", json_string(m->node));
    }
    for (size_t i = 0; i < m->n; i++) {
        json_array_append_new(list, entry_json(&m->e[i]));
    }
    json_object_set_new(root, "backups", list);
    return dir_write_json(dir, BK_MANIFEST, root, errp);
}
