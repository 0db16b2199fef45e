/* SPDX-License-Identifier: MIT */
/*
 * Image-level operations for the tools: create, check and read the header
 * of an image, and its internal snapshots and VM state, through its
 * format driver's hooks (lockstep/driver.h), so that no tool needs a
 * driver's private header; and the breakpoints of a debugging driver
 * (blkdebug) for lockstep-io.  Main thread (the VM state and the
 * breakpoints: any thread).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lockstep/driver.h"
#include "util.h"

const struct block_create_opt *
block_create_options(const char *fmt)
{
    const struct block_driver *drv = block_driver_find(fmt);

    return drv ? drv->create_options : NULL;
}

int
block_create(const char *fmt, struct block_node *file,
             const struct block_create_opts *opts, struct err **errp)
{
    const struct block_driver *drv = block_driver_find(fmt);

    if (!drv) {
        err_setf(errp, "Unknown file format '%s'", fmt);
        return -EINVAL;
    }
    if (!drv->create) {
        err_setf(errp, "Format driver '%s' does not support image creation",
                 fmt);
        return -ENOTSUP;
    }
    return drv->create(file, opts, errp);
}

bool
block_can_check(const char *fmt)
{
    const struct block_driver *drv = block_driver_find(fmt);

    return drv && drv->check;
}

int
block_check(const char *fmt, struct block_node *file, unsigned fix,
            FILE *log, struct block_check_result *res, struct err **errp)
{
    const struct block_driver *drv = block_driver_find(fmt);

    memset(res, 0, sizeof(*res));
    if (!drv || !drv->check) {
        err_setf(errp, "This image format does not support checks");
        return -ENOTSUP;
    }
    return drv->check(file, fix, log, res, errp);
}

bool
block_has_header_info(const char *fmt)
{
    const struct block_driver *drv = block_driver_find(fmt);

    return drv && drv->image_info;
}

int
block_image_info_read(const char *fmt, struct block_node *file, bool details,
                      struct block_image_info *info, struct err **errp)
{
    const struct block_driver *drv = block_driver_find(fmt);
    int ret;

    memset(info, 0, sizeof(*info));
    if (!drv || !drv->image_info) {
        err_setf(errp, "Format '%s' has no header to read", fmt);
        return -ENOTSUP;
    }
    ret = drv->image_info(file, details, info, errp);
    if (ret < 0) {
        block_image_info_clear(info);
    }
    return ret;
}

void
block_image_info_clear(struct block_image_info *info)
{
    free(info->backing_file);
    free(info->backing_fmt);
    free(info->data_file);
    json_decref(info->format_specific);
    json_decref(info->snapshots);
    memset(info, 0, sizeof(*info));
}

bool
block_can_change_backing_file(const char *fmt)
{
    const struct block_driver *drv = block_driver_find(fmt);

    return drv && drv->change_backing_file;
}

int
block_change_backing_file(const char *fmt, struct block_node *file,
                          const char *name, const char *backing_fmt,
                          struct err **errp)
{
    const struct block_driver *drv = block_driver_find(fmt);

    if (!drv || !drv->change_backing_file) {
        err_setf(errp, "Operation not supported");
        return -ENOTSUP;
    }
    return drv->change_backing_file(file, name, backing_fmt, errp);
}

/* ---- Internal snapshots and the VM state ------------------------------ */

bool
block_has_snapshots(struct block_node *node)
{
    return node->drv && node->drv->snapshot_create;
}

static int
no_snapshots(struct err **errp)
{
    err_setf(errp, "Operation not supported");
    return -ENOTSUP;
}

int
block_snapshot_list(struct block_node *node, struct block_snapshot **out,
                    size_t *n, struct err **errp)
{
    *out = NULL;
    *n = 0;
    return node->drv && node->drv->snapshot_list
           ? node->drv->snapshot_list(node, out, n, errp)
           : no_snapshots(errp);
}

void
block_snapshots_free(struct block_snapshot *sn, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(sn[i].id);
        free(sn[i].name);
    }
    free(sn);
}

int
block_snapshot_create(struct block_node *node, const char *name,
                      struct err **errp)
{
    return node->drv && node->drv->snapshot_create
           ? node->drv->snapshot_create(node, name, errp)
           : no_snapshots(errp);
}

int
block_snapshot_goto(struct block_node *node, const char *id_or_name,
                    struct err **errp)
{
    return node->drv && node->drv->snapshot_goto
           ? node->drv->snapshot_goto(node, id_or_name, errp)
           : no_snapshots(errp);
}

int
block_snapshot_delete(struct block_node *node, const char *id_or_name,
                      struct err **errp)
{
    return node->drv && node->drv->snapshot_delete
           ? node->drv->snapshot_delete(node, id_or_name, errp)
           : no_snapshots(errp);
}

int
block_snapshot_load_tmp(struct block_node *node, const char *id,
                        const char *name, struct err **errp)
{
    return node->drv && node->drv->snapshot_load_tmp
           ? node->drv->snapshot_load_tmp(node, id, name, errp)
           : no_snapshots(errp);
}

int
block_vmstate_pread(struct block_node *node, uint64_t pos, uint64_t len,
                    void *buf)
{
    return node->drv && node->drv->vmstate_pread
           ? node->drv->vmstate_pread(node, pos, len, buf) : -ENOTSUP;
}

int
block_vmstate_pwrite(struct block_node *node, uint64_t pos, uint64_t len,
                     const void *buf)
{
    return node->drv && node->drv->vmstate_pwrite
           ? node->drv->vmstate_pwrite(node, pos, len, buf) : -ENOTSUP;
}

/* ---- Debugging breakpoints --------------------------------------------- */

/* The first node from node down its "file" children whose driver stops
 * requests at breakpoints, or NULL. */
static struct block_node *
debug_node(struct block_node *node)
{
    while (node && !(node->drv && node->drv->debug_breakpoint)) {
        node = node->file ? node->file->node : NULL;
    }
    return node;
}

int
block_debug_breakpoint(struct block_node *node, const char *event,
                       const char *tag)
{
    struct block_node *d = debug_node(node);

    return d ? d->drv->debug_breakpoint(d, event, tag) : -ENOTSUP;
}

int
block_debug_remove_breakpoint(struct block_node *node, const char *tag)
{
    struct block_node *d = debug_node(node);

    return d ? d->drv->debug_remove_breakpoint(d, tag) : -ENOTSUP;
}

int
block_debug_resume(struct block_node *node, const char *tag)
{
    struct block_node *d = debug_node(node);

    return d ? d->drv->debug_resume(d, tag) : -ENOTSUP;
}

bool
block_debug_is_suspended(struct block_node *node, const char *tag)
{
    struct block_node *d = debug_node(node);

    return d && d->drv->debug_is_suspended(d, tag);
}
