/* SPDX-License-Identifier: MIT */
/*
 * The images the tool writes and reads, through liblockstep: a backup is
 * a qcow2 image made with block_create() on a new file, opened with the
 * qcow2 driver and its backing chain (the earlier backups, read-only).
 * Opening the chain matters when writing too: the driver copies backing
 * data into partly written clusters, and writes zero clusters (not holes)
 * where the snapshot reads as zeroes, so that the older data below stays
 * hidden.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

/* A new, empty file: it must not exist (never overwrite a backup). */
static bool
create_file(const char *path, uint64_t size, struct err **errp)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    bool ok;

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not create '%s'", path);
        return false;
    }
    ok = ftruncate(fd, (off_t)size) == 0;
    if (!ok) {
        err_setf_errno(errp, errno, "Could not resize '%s'", path);
    }
    close(fd);
    if (!ok) {
        unlink(path);
    }
    return ok;
}

static bool
open_file_node(struct image *img, const char *path, bool writable,
               struct err **errp)
{
    json_t *opts = json_pack("{s:s, s:s, s:b}", "driver", "file", "filename",
                             path, "read-only", !writable);

    memset(img, 0, sizeof(*img));
    img->node = block_node_new(opts, errp);
    json_decref(opts);
    if (!img->node) {
        return false;
    }
    img->h = block_handle_new(img->node, BK_PROG,
                              BLOCK_PERM_CONSISTENT_READ |
                              (writable ? BLOCK_PERM_WRITE |
                               BLOCK_PERM_RESIZE : 0),
                              BLOCK_PERM_CONSISTENT_READ, errp);
    if (!img->h) {
        image_close(img);
        return false;
    }
    return true;
}

bool
image_create_qcow2(const char *path, uint64_t size, const char *backing,
                   struct err **errp)
{
    struct block_create_opts o = {
        .size = align_up(size, 512),
        .backing_file = backing,
        .backing_fmt = backing ? "qcow2" : NULL,
    };
    struct image file;
    int ret;

    if (!create_file(path, 0, errp)) {
        return false;
    }
    if (!open_file_node(&file, path, true, errp)) {
        unlink(path);
        return false;
    }
    ret = block_create("qcow2", block_handle_node(file.h), &o, errp);
    if (ret == 0) {
        ret = block_handle_flush(file.h);
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Could not flush '%s'", path);
        }
    }
    image_close(&file);
    if (ret < 0) {
        unlink(path);
    }
    return ret == 0;
}

bool
image_create_raw(const char *path, uint64_t size, struct err **errp)
{
    return create_file(path, size, errp);
}

bool
image_open(struct image *img, const char *path, const char *fmt,
           bool writable, struct err **errp)
{
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}, s:b}", "driver", fmt,
                             "file", "driver", "file", "filename", path,
                             "read-only", !writable);

    memset(img, 0, sizeof(*img));
    img->node = block_node_new(opts, errp);
    json_decref(opts);
    if (!img->node) {
        err_prepend(errp, "Could not open '%s': ", path);
        return false;
    }
    img->h = block_handle_new(img->node, BK_PROG,
                              BLOCK_PERM_CONSISTENT_READ |
                              (writable ? BLOCK_PERM_WRITE : 0),
                              BLOCK_PERM_CONSISTENT_READ, errp);
    if (!img->h) {
        err_prepend(errp, "Could not open '%s': ", path);
        image_close(img);
        return false;
    }
    return true;
}

void
image_close(struct image *img)
{
    if (img->h) {
        block_handle_free(img->h);
    }
    block_node_unref(img->node);
    memset(img, 0, sizeof(*img));
}
