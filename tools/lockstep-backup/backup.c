/* SPDX-License-Identifier: MIT */
/*
 * The full and incremental backup flows.
 *
 *   1. lock the directory; finish an interrupted run (its journal);
 *   2. check the disk node and, for an incremental backup, the bitmap
 *      that records the changes since the last backup;
 *   3. create the scratch image, write the journal, start the snapshot
 *      (fleece.c: the new bitmap in the same transaction);
 *   4. copy (copy.c) into TIME.qcow2.part, backed by the last backup;
 *   5. tear the snapshot down;
 *   6. commit: rename to TIME.qcow2, add it to the manifest; only then
 *      the old bitmap is removed.
 *
 * Any failure before the commit undoes everything: the snapshot goes,
 * the bitmaps are put back as they were (the new one merged into the old
 * one), the .part file is deleted and the manifest is not touched.  If
 * the daemon cannot be reached for that, the journal stays, and the next
 * run (or the next verify) says so and cleans up.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

struct run {
    const struct backup_opts *o;
    struct manifest m;
    struct qmp *q;
    uint64_t size;
    char *time;              /* this backup's timestamp */
    char *file, *part;       /* TIME.qcow2 and its path while written */
    char *scratch;
    char *own_socket;        /* our NBD server's socket, if we start one */
    char *sock_dir;          /* its directory in /tmp, if it is there */
    struct fleece f;
    bool journal;            /* written, not yet removed */
    struct image target;
    struct copy_stats st;
    struct progress p;
    bool needs_full;         /* failed: only a full backup can go on */
};

static char *
dir_path(const char *dir, const char *name)
{
    return xasprintf("%s/%s", dir, name);
}

/* "20250131T235900Z", made unique in the directory. */
static char *
backup_time(const char *dir, const struct manifest *m)
{
    char base[32];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(base, sizeof(base), "%Y%m%dT%H%M%SZ", &tm);
    for (unsigned i = 1;; i++) {
        char *t = i == 1 ? xstrdup(base) : xasprintf("%s-%u", base, i);
        CLEANUP_FREE char *f = xasprintf("%s/%s.qcow2", dir, t);
        CLEANUP_FREE char *p = xasprintf("%s/%s.qcow2.part", dir, t);

        if (!manifest_find(m, t) && access(f, F_OK) && access(p, F_OK)) {
            return t;
        }
        free(t);
    }
}

/* ---- Recovery -------------------------------------------------------- */

static bool
remove_path(const char *path, struct err **errp)
{
    if (path && unlink(path) < 0 && errno != ENOENT) {
        err_setf_errno(errp, errno, "Could not remove '%s'", path);
        return false;
    }
    return true;
}

/* A journal in the directory: a run stopped half way.  Clean up. */
static bool
recover(struct run *r, struct err **errp)
{
    json_t *j = dir_read_json(r->o->dir, BK_JOURNAL, errp);
    const char *part, *t;
    CLEANUP_FREE char *part_path = NULL;
    struct fleece f;
    bool ok, committed;

    if (!j) {
        return !*errp;
    }
    part = json_string_value(json_object_get(j, "part"));
    t = json_string_value(json_object_get(j, "time"));
    if (part && strchr(part, '/')) {
        part = NULL;    /* only ever a name in the directory */
    }
    part_path = part ? dir_path(r->o->dir, part) : NULL;
    if (!fleece_from_json(&f, json_object_get(j, "fleece"), errp)) {
        json_decref(j);
        return false;
    }
    /* Stopped between the manifest and the journal's removal? */
    committed = t && manifest_find(&r->m, t);
    ok = fleece_recover(r->q, &f, committed, errp) &&
         remove_path(f.scratch_file, errp) &&
         (!f.nbd_started || remove_path(f.nbd_socket, errp)) &&
         remove_path(part_path, errp) &&
         dir_remove(r->o->dir, BK_JOURNAL, errp);
    if (ok) {
        bk_error("note: cleaned up after the interrupted backup %s",
                 t ? t : "");
    } else {
        err_prepend(errp, "Could not clean up after the interrupted backup "
                    "%s (if its daemon or disk is gone for good, remove "
                    "%s/%s): ", t ? t : "", r->o->dir, BK_JOURNAL);
    }
    fleece_free(&f);
    json_decref(j);
    return ok;
}

/* ---- Checks ---------------------------------------------------------- */

/*
 * The bitmap an incremental backup reads: it must hold every change.
 * *full: only a full backup can go on from here.
 */
static bool
check_since(json_t *node, const char *since, const char *last_time,
            bool *full, struct err **errp)
{
    json_t *b = node_bitmap(node, since);

    *full = true;
    if (!b) {
        err_setf(errp, "The disk has no bitmap '%s' (the changes since "
                 "backup %s): take a full backup", since, last_time);
    } else if (json_is_true(json_object_get(b, "inconsistent"))) {
        err_setf(errp, "Bitmap '%s' is inconsistent (the daemon did not "
                 "stop cleanly and may have lost changes): take a full "
                 "backup", since);
    } else if (json_is_true(json_object_get(b, "busy"))) {
        *full = false;
        err_setf(errp, "Bitmap '%s' is in use by another operation", since);
    } else if (!json_is_true(json_object_get(b, "recording"))) {
        err_setf(errp, "Bitmap '%s' does not record writes (disabled), so "
                 "it may miss changes: take a full backup, or enable it "
                 "if you know it is complete", since);
    } else {
        *full = false;
        return true;
    }
    return false;
}

/* Node, size and bitmaps; fills r->size and the bitmap names. */
static bool
check_disk(struct run *r, const char **since, char **bitmap,
           struct err **errp)
{
    const struct backup_opts *o = r->o;
    const struct manifest_entry *last = manifest_find(&r->m, NULL);
    json_t *node = qmp_find_node(r->q, o->node, errp);
    int64_t size;
    bool ok = false;

    if (!node) {
        return false;
    }
    if (r->m.node && strcmp(r->m.node, o->node)) {
        err_setf(errp, "%s holds backups of node '%s', not '%s'", o->dir,
                 r->m.node, o->node);
        json_decref(node);
        return false;
    }
    size = node_virtual_size(node);
    *bitmap = o->bitmap ? xstrdup(o->bitmap)
                        : xasprintf("backup-%s", r->time);
    *since = NULL;
    if (size <= 0) {
        err_setf(errp, "The daemon does not say the size of node '%s'",
                 o->node);
    } else if (node_bitmap(node, *bitmap)) {
        err_setf(errp, "The disk already has a bitmap '%s'", *bitmap);
    } else if (!o->incremental) {
        ok = true;
    } else if (!last) {
        r->needs_full = true;
        err_setf(errp, "%s has no backup yet: take a full backup first",
                 o->dir);
    } else if ((uint64_t)size != last->size) {
        r->needs_full = true;
        err_setf(errp, "The disk's size changed (%llu bytes, the last "
                 "backup has %llu): take a full backup",
                 (unsigned long long)size, (unsigned long long)last->size);
    } else {
        *since = o->since ? o->since : last->bitmap;
        ok = check_since(node, *since, last->time, &r->needs_full, errp);
    }
    r->size = (uint64_t)size;
    json_decref(node);
    return ok;
}

/* ---- The run --------------------------------------------------------- */

static bool
write_journal(struct run *r, struct err **errp)
{
    json_t *j = json_pack("{s:s, s:s, s:o}", "time", r->time, "part",
                          strrchr(r->part, '/') + 1, "fleece",
                          fleece_to_json(&r->f));

    if (!dir_write_json(r->o->dir, BK_JOURNAL, j, errp)) {
        return false;
    }
    r->journal = true;
    return true;
}

/*
 * The socket of the NBD server the tool starts: next to the scratch
 * image, which the daemon opens too, so that both see it even when the
 * daemon has a /tmp of its own (systemd's PrivateTmp); in a directory of
 * /tmp when that name is too long for a unix socket.
 */
static char *
own_socket(struct run *r, const char *sdir, struct err **errp)
{
    char tmpl[] = "/tmp/lockstep-backup-XXXXXX";
    char *path = xasprintf("%s/.%s.nbd.sock", sdir, r->time);

    if (strlen(path) < sizeof(((struct sockaddr_un *)0)->sun_path)) {
        r->own_socket = xstrdup(path);
        return path;
    }
    free(path);
    if (!mkdtemp(tmpl)) {
        err_setf_errno(errp, errno, "Could not create a directory in /tmp");
        return NULL;
    }
    r->sock_dir = xstrdup(tmpl);
    r->own_socket = xasprintf("%s/nbd.sock", tmpl);
    return xstrdup(r->own_socket);
}

/* Set up the snapshot.  *errp is set on failure; the caller undoes. */
static bool
start(struct run *r, struct err **errp)
{
    const struct backup_opts *o = r->o;
    CLEANUP_FREE char *own = NULL, *sdir = NULL;
    char *bitmap = NULL;
    const char *since;

    if (!check_disk(r, &since, &bitmap, errp)) {
        free(bitmap);
        return false;
    }
    /* The daemon opens the scratch image: an absolute name (its cwd is
     * not ours). */
    sdir = realpath(o->scratch_dir ? o->scratch_dir : o->dir, NULL);
    if (!sdir) {
        err_setf_errno(errp, errno, "Could not resolve '%s'",
                       o->scratch_dir ? o->scratch_dir : o->dir);
        free(bitmap);
        return false;
    }
    if (!o->nbd_socket && !(own = own_socket(r, sdir, errp))) {
        free(bitmap);
        return false;
    }
    r->scratch = xasprintf("%s/.%s.scratch.qcow2", sdir, r->time);
    fleece_init(&r->f, o->node, since, bitmap, r->scratch, o->nbd_socket,
                own);
    free(bitmap);
    return image_create_qcow2(r->scratch, r->size, NULL, errp) &&
           write_journal(r, errp) && fleece_start(r->q, &r->f, errp);
}

static bool
copy(struct run *r, struct err **errp)
{
    const struct manifest_entry *last = manifest_find(&r->m, NULL);
    struct copy_job j = {
        .socket = r->f.nbd_socket,
        .export_name = r->f.export_id,
        .bitmap = r->f.since,
        .size = r->size,
        .target = &r->target,
        .overlay = r->o->incremental,
        .connections = r->o->connections,
        .timeout_ms = r->o->timeout_ms,
        .progress = &r->p,
    };
    bool ok;

    if (!image_create_qcow2(r->part, r->size,
                            r->o->incremental ? last->file : NULL, errp) ||
        !image_open(&r->target, r->part, "qcow2", true, errp)) {
        return false;
    }
    ok = copy_snapshot(&j, &r->st, errp);
    image_close(&r->target);
    return ok;
}

/* Rename the image into place and record it. */
static bool
commit(struct run *r, struct err **errp)
{
    const struct manifest_entry *last = manifest_find(&r->m, NULL);
    CLEANUP_FREE char *final = dir_path(r->o->dir, r->file);
    struct manifest_entry e = {
        .time = r->time,
        .file = r->file,
        .incremental = r->o->incremental,
        .backing = r->o->incremental ? last->file : NULL,
        .bitmap = r->f.bitmap,
        .size = r->size,
        .bytes_read = r->st.bytes_read,
        .dirty_bytes = r->st.dirty_bytes,
    };

    if (rename(r->part, final) < 0) {
        err_setf_errno(errp, errno, "Could not rename '%s'", r->part);
        return false;
    }
    if (!r->m.node) {
        r->m.node = xstrdup(r->o->node);
    }
    manifest_append(&r->m, &e);
    if (!dir_sync(r->o->dir, errp) || !manifest_save(r->o->dir, &r->m,
                                                     errp)) {
        /* Not recorded: it must not stay looking like a backup. */
        rename(final, r->part);
        return false;
    }
    return true;
}

/*
 * After the commit: the bitmap the backup read is done with, and so is
 * the last backup's (the same one, unless --since-bitmap named another;
 * for a full backup, the old chain's).
 */
static void
retire_bitmaps(struct run *r, const char *old)
{
    const char *names[2] = { r->f.since, old };
    struct err *e = NULL;

    for (unsigned i = 0; i < 2 && !e; i++) {
        if (names[i] && strcmp(names[i], r->f.bitmap) &&
            (i == 0 || !r->f.since || strcmp(names[i], r->f.since))) {
            fleece_bitmap_remove(r->q, &r->f, names[i], &e);
        }
    }
    if (e) {
        err_prepend(&e, "warning: the backup is complete, but an old "
                    "bitmap stays: ");
        bk_report(e);
    }
}

/* For tools: the snapshot point has passed (guest writes from now on
 * are not in this backup). */
static json_t *
snapshot_event(struct run *r)
{
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "snapshot", "time",
                          r->time, "bitmap", r->f.bitmap);

    if (r->f.since) {
        json_object_set_new(o, "since", json_string(r->f.since));
    }
    return o;
}

static void
summary(struct run *r, int64_t ns)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}",
                          "type", "done", "file", r->file, "kind",
                          r->o->incremental ? "incremental" : "full",
                          "bitmap", r->f.bitmap, "bytes-read",
                          (json_int_t)r->st.bytes_read, "data-bytes",
                          (json_int_t)r->st.data_bytes, "zero-bytes",
                          (json_int_t)r->st.zero_bytes, "bytes-written",
                          (json_int_t)r->st.bytes_written, "milliseconds",
                          (json_int_t)(ns / 1000000));

    if (r->o->incremental) {
        json_object_set_new(o, "dirty-bytes",
                            json_integer((json_int_t)r->st.dirty_bytes));
    }
    progress_json_event(&r->p, o);
}

/* Undo a failed run: snapshot, bitmaps, files; the journal when all of
 * that worked.  Secondary errors are reported, the first one stays. */
static void
undo(struct run *r)
{
    struct err *e = NULL;
    bool clean;

    bk_teardown_begin();
    /* No f.node: it failed before the snapshot was set up. */
    clean = !r->f.node ||
            (r->q && !qmp_broken(r->q) && fleece_stop(r->q, &r->f, &e) &&
             (!r->f.started || fleece_bitmaps_rollback(r->q, &r->f, &e)));
    if (e) {
        err_prepend(&e, "while cleaning up: ");
        bk_report(e);
    }
    remove_path(r->part, NULL);
    remove_path(r->scratch, NULL);
    if (clean && r->journal) {
        r->journal = !dir_remove(r->o->dir, BK_JOURNAL, NULL);
    }
    if (r->journal) {
        bk_error("the daemon could not be cleaned up now; the next backup "
                 "run in %s will do it", r->o->dir);
    }
}

static void
run_free(struct run *r)
{
    if (r->own_socket) {
        unlink(r->own_socket);
    }
    if (r->sock_dir) {
        rmdir(r->sock_dir);
    }
    fleece_free(&r->f);
    qmp_close(r->q);
    manifest_free(&r->m);
    free(r->time);
    free(r->file);
    free(r->part);
    free(r->scratch);
    free(r->own_socket);
    free(r->sock_dir);
}

static bool
open_dir(const char *dir, struct err **errp)
{
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        err_setf_errno(errp, errno, "Could not create '%s'", dir);
        return false;
    }
    return true;
}

int
backup_run(const struct backup_opts *o)
{
    struct run r = { .o = o };
    struct err *e = NULL;
    int64_t t0 = clock_ns();
    CLEANUP_FREE char *old_bitmap = NULL;
    int lock = -1;
    bool ok;

    if (!open_dir(o->dir, &e) || (lock = dir_lock(o->dir, &e)) < 0 ||
        !manifest_load(o->dir, &r.m, &e) ||
        !(r.q = qmp_connect(o->socket, o->timeout_ms, &e)) ||
        !recover(&r, &e)) {
        bk_report(e);
        run_free(&r);
        if (lock >= 0) {
            close(lock);
        }
        return 1;
    }
    if (r.m.n) {
        old_bitmap = xstrdup(r.m.e[r.m.n - 1].bitmap);
    }
    r.time = backup_time(o->dir, &r.m);
    r.file = xasprintf("%s.qcow2", r.time);
    r.part = xasprintf("%s/%s.part", o->dir, r.file);
    progress_start(&r.p, o->progress, "backup", 0);
    ok = start(&r, &e);
    if (ok) {
        progress_json_event(&r.p, snapshot_event(&r));
        ok = copy(&r, &e);
    }
    if (ok) {
        bk_teardown_begin();
        ok = fleece_stop(r.q, &r.f, &e) && commit(&r, &e);
    }
    if (!ok) {
        progress_json_event(&r.p, json_pack("{s:s, s:s}", "type", "error",
                                            "message", e->msg));
        bk_report(e);
        undo(&r);
    } else {
        remove_path(r.scratch, NULL);
        dir_remove(o->dir, BK_JOURNAL, NULL);
        retire_bitmaps(&r, old_bitmap);
        summary(&r, clock_ns() - t0);
    }
    run_free(&r);
    close(lock);
    return ok ? 0 : r.needs_full ? BK_EXIT_NEEDS_FULL : 1;
}
