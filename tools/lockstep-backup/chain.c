/* SPDX-License-Identifier: MIT */
/*
 * restore: rebuild a disk image from the chain that ends at one backup
 * (the top image opened with its backing files, read through the qcow2
 * driver, allocated data copied, zeroes left as holes).  The output is
 * written under a temporary name and renamed when complete.
 *
 * verify: for every backup of the manifest, the image exists, is qcow2
 * of the recorded size, names the right backing file (none for a full
 * backup, the backup before it for an incremental one), and passes the
 * qcow2 consistency check of lockstep-img check / qemu-img check.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

#define RESTORE_CHUNK (4 * MiB)
#define ZERO_GRAIN (64 * KiB)

/* ---- restore --------------------------------------------------------- */

/* Copy [off, off+len) of src, which holds data, leaving zero clusters. */
static int
copy_data(struct image *src, struct image *dst, uint64_t off, uint64_t len,
          uint8_t *buf)
{
    while (len > 0) {
        uint64_t n = MIN(len, RESTORE_CHUNK);
        uint64_t pos = 0;
        int ret = block_handle_pread(src->h, off, n, buf, 0);

        if (ret < 0) {
            return ret;
        }
        while (pos < n) {
            uint64_t piece = MIN(align_down(off + pos, ZERO_GRAIN) +
                                 ZERO_GRAIN, off + n) - (off + pos);

            if (!buffer_is_zero(buf + pos, piece)) {
                ret = block_handle_pwrite(dst->h, off + pos, piece,
                                          buf + pos, 0);
                if (ret < 0) {
                    return ret;
                }
            }
            pos += piece;
        }
        off += n;
        len -= n;
    }
    return 0;
}

static bool
restore_copy(struct image *src, struct image *dst, uint64_t size,
             struct progress *p, struct err **errp)
{
    uint8_t *buf = malloc(RESTORE_CHUNK);
    uint64_t off = 0;
    int ret = 0;

    if (!buf) {
        err_setf_errno(errp, ENOMEM, "Could not allocate a buffer");
        return false;
    }
    while (off < size && ret == 0) {
        struct block_status_info info;
        uint64_t pnum;

        if (bk_check_interrupted(errp)) {
            free(buf);
            return false;
        }
        ret = block_handle_status(src->h, off, MIN(size - off, GiB), &pnum,
                                  &info);
        if (ret >= 0 && !(info.flags & BLOCK_STATUS_ZERO)) {
            ret = copy_data(src, dst, off, pnum, buf);
            if (ret >= 0) {
                __atomic_add_fetch(&p->bytes_read, pnum, __ATOMIC_RELAXED);
            }
        }
        if (ret >= 0) {
            ret = 0;
            off += pnum;
            __atomic_store_n(&p->done, off, __ATOMIC_RELAXED);
            progress_tick(p);
        }
    }
    free(buf);
    if (ret == 0) {
        ret = block_handle_flush(dst->h);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Restoring failed at offset %llu",
                       (unsigned long long)off);
        return false;
    }
    return true;
}

static bool
restore_into(const struct restore_opts *o, const char *src_path,
             const char *tmp, uint64_t size, struct err **errp)
{
    struct image src, dst;
    struct progress p;
    bool ok;

    if (!image_open(&src, src_path, "qcow2", false, errp)) {
        return false;
    }
    ok = !strcmp(o->format, "raw") ? image_create_raw(tmp, size, errp)
                                   : image_create_qcow2(tmp, size, NULL,
                                                        errp);
    if (!ok) {
        image_close(&src);
        return false;
    }
    if (!image_open(&dst, tmp, o->format, true, errp)) {
        image_close(&src);
        unlink(tmp);
        return false;
    }
    progress_start(&p, o->progress, "restore", size);
    ok = restore_copy(&src, &dst, size, &p, errp);
    progress_end(&p);
    image_close(&dst);
    image_close(&src);
    if (!ok) {
        unlink(tmp);
    }
    return ok;
}

/* The directory of path, for fsync after the rename. */
static char *
dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');

    if (!slash) {
        return xstrdup(".");
    }
    return slash == path ? xstrdup("/")
                         : xasprintf("%.*s", (int)(slash - path), path);
}

int
restore_run(const struct restore_opts *o)
{
    CLEANUP_FREE char *src = NULL, *tmp = NULL, *dir = NULL;
    const struct manifest_entry *e;
    struct manifest m;
    struct err *err = NULL;
    uint64_t size;

    if (strcmp(o->format, "qcow2") && strcmp(o->format, "raw")) {
        bk_error("Unknown output format '%s' (qcow2 or raw)", o->format);
        return 1;
    }
    if (!manifest_load(o->dir, &m, &err)) {
        bk_report(err);
        return 1;
    }
    e = manifest_find(&m, o->at);
    if (!e) {
        if (m.n) {
            bk_error("%s has no backup '%s' (list them with '%s verify "
                     "%s')", o->dir, o->at, BK_PROG, o->dir);
        } else {
            bk_error("%s has no backups", o->dir);
        }
        manifest_free(&m);
        return 1;
    }
    if (access(o->to, F_OK) == 0) {
        bk_error("%s exists; restore writes a new file", o->to);
        manifest_free(&m);
        return 1;
    }
    src = xasprintf("%s/%s", o->dir, e->file);
    tmp = xasprintf("%s.part", o->to);
    dir = dir_of(o->to);
    size = e->size;
    manifest_free(&m);
    if (!restore_into(o, src, tmp, size, &err)) {
        bk_report(err);
        return 1;
    }
    if (rename(tmp, o->to) < 0) {
        bk_error("Could not rename '%s': %s", tmp, strerror(errno));
        unlink(tmp);
        return 1;
    }
    if (!dir_sync(dir, &err)) {
        bk_report(err);
        return 1;
    }
    return 0;
}

/* ---- verify ---------------------------------------------------------- */

static bool
read_header(const char *path, struct image *file, struct block_image_info *h,
            struct err **errp)
{
    if (block_image_info_read("qcow2", block_handle_node(file->h), false, h,
                              errp) < 0) {
        err_prepend(errp, "%s: ", path);
        return false;
    }
    return true;
}

/* The header's size and backing name against the manifest. */
static bool
check_links(const struct manifest_entry *e, const struct block_image_info *h,
            struct err **errp)
{
    if (h->virtual_size != e->size) {
        err_setf(errp, "%s: virtual size %llu, the manifest says %llu",
                 e->file, (unsigned long long)h->virtual_size,
                 (unsigned long long)e->size);
        return false;
    }
    if (!e->backing && h->backing_file) {
        err_setf(errp, "%s: a full backup, but it has a backing file (%s)",
                 e->file, h->backing_file);
        return false;
    }
    if (e->backing && (!h->backing_file ||
                       strcmp(h->backing_file, e->backing))) {
        err_setf(errp, "%s: its backing file is '%s', the chain needs '%s'",
                 e->file, h->backing_file ? h->backing_file : "",
                 e->backing);
        return false;
    }
    if (e->backing && h->backing_fmt && strcmp(h->backing_fmt,
                                                   "qcow2")) {
        err_setf(errp, "%s: its backing format is %s, not qcow2", e->file,
                 h->backing_fmt);
        return false;
    }
    return true;
}

/* One image; prints its line.  true when it is fine. */
static bool
verify_entry(const char *dir, const struct manifest_entry *e)
{
    CLEANUP_FREE char *path = xasprintf("%s/%s", dir, e->file);
    struct block_check_result r;
    struct block_image_info h = { 0 };
    struct image file;
    struct err *err = NULL;
    json_t *opts = json_pack("{s:s, s:s, s:b}", "driver", "file",
                             "filename", path, "read-only", true);
    bool ok;

    memset(&file, 0, sizeof(file));
    file.node = block_node_new(opts, &err);
    json_decref(opts);
    if (file.node) {
        file.h = block_handle_new(file.node, BK_PROG,
                                  BLOCK_PERM_CONSISTENT_READ,
                                  BLOCK_PERM_CONSISTENT_READ, &err);
    }
    ok = file.h && read_header(path, &file, &h, &err) &&
         check_links(e, &h, &err) &&
         block_check("qcow2", block_handle_node(file.h), 0, NULL, &r,
                     &err) == 0;
    block_image_info_clear(&h);
    image_close(&file);
    if (ok && (r.corruptions || r.leaks || r.check_errors)) {
        err_setf(&err, "%s: qcow2 check found %lld corruptions, %lld "
                 "leaked clusters, %lld check errors", e->file,
                 (long long)r.corruptions, (long long)r.leaks,
                 (long long)r.check_errors);
        ok = false;
    }
    if (!ok) {
        printf("FAILED %s %s\n", e->time, e->file);
        bk_report(err);
        return false;
    }
    if (e->incremental) {
        printf("ok     %s %s incremental on %s\n", e->time, e->file,
               e->backing);
    } else {
        printf("ok     %s %s full\n", e->time, e->file);
    }
    return true;
}

/* What an interrupted run leaves, and images the manifest does not list. */
static void
verify_strays(const char *dir, const struct manifest *m)
{
    DIR *d = opendir(dir);
    struct dirent *de;

    if (!d) {
        return;
    }
    while ((de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        size_t len = strlen(n);
        bool listed = false;

        if (!strcmp(n, BK_JOURNAL)) {
            printf("note   an interrupted backup is pending cleanup (the "
                   "next backup run does it)\n");
        } else if (len > 5 && !strcmp(n + len - 5, ".part")) {
            printf("note   %s: an incomplete backup, not part of the "
                   "chain\n", n);
        } else if (len > 6 && !strcmp(n + len - 6, ".qcow2") && n[0] != '.') {
            for (size_t i = 0; i < m->n; i++) {
                listed |= !strcmp(m->e[i].file, n);
            }
            if (!listed) {
                printf("note   %s: not in the manifest\n", n);
            }
        }
    }
    closedir(d);
}

int
verify_run(const char *dir)
{
    struct manifest m;
    struct err *err = NULL;
    size_t bad = 0;

    if (!manifest_load(dir, &m, &err)) {
        bk_report(err);
        return 1;
    }
    if (!m.n) {
        bk_error("%s has no backups", dir);
        manifest_free(&m);
        return 1;
    }
    for (size_t i = 0; i < m.n; i++) {
        bad += !verify_entry(dir, &m.e[i]);
    }
    verify_strays(dir, &m);
    if (bad) {
        printf("%zu of %zu backups FAILED\n", bad, m.n);
    } else {
        printf("%zu backups ok\n", m.n);
    }
    manifest_free(&m);
    return bad ? 1 : 0;
}
