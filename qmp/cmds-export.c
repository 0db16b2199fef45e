/* SPDX-License-Identifier: MIT */
/*
 * QMP commands of the NBD server and of exports: nbd-server-start,
 * nbd-server-stop, block-export-add, block-export-del,
 * query-block-exports.  The work is the NBD server's (nbd/server.h) and
 * the export layer's (export/export.h); this file turns the QMP arguments
 * into their typed options.  Main thread.
 */
#include <string.h>

#include "export/export.h"
#include "export/fuse.h"
#include "export/vhost-user-blk.h"
#include "nbd/server.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/*
 * nbd-server-start takes the legacy SocketAddress ({"type", "data": {...}});
 * the server wants the flat one ({"type", ...}), as --nbd-server gives it.
 */
static json_t *
flatten_socket_address(json_t *legacy, struct err **errp)
{
    const char *type = json_string_value(json_object_get(legacy, "type"));
    json_t *data = json_object_get(legacy, "data");
    json_t *flat;

    if (!strcmp(type, "unix")) {
        if (!json_object_get(data, "path")) {
            err_setf(errp, "Parameter 'addr.data.path' is missing");
            return NULL;
        }
    } else if (!strcmp(type, "inet")) {
        if (!json_object_get(data, "host")) {
            err_setf(errp, "Parameter 'addr.data.host' is missing");
            return NULL;
        }
        if (!json_object_get(data, "port")) {
            err_setf(errp, "Parameter 'addr.data.port' is missing");
            return NULL;
        }
    } else {
        err_setf(errp, "Socket address type '%s' is not supported", type);
        return NULL;
    }
    flat = json_deep_copy(data);
    json_object_set_new(flat, "type", json_string(type));
    return flat;
}

json_t *
qmp_nbd_server_start(json_t *args, struct err **errp)
{
    json_t *addr;
    json_t *maxc = json_object_get(args, "max-connections");
    json_t *hs = json_object_get(args, "handshake-max-seconds");
    const char *tls_creds = json_string_value(json_object_get(args,
                                                              "tls-creds"));
    const char *tls_authz = json_string_value(json_object_get(args,
                                                              "tls-authz"));
    bool ok;

    addr = flatten_socket_address(json_object_get(args, "addr"), errp);
    if (!addr) {
        return NULL;
    }
    ok = nbd_server_start(addr, tls_creds, tls_authz,
                          maxc ? json_integer_value(maxc)
                               : NBD_DEFAULT_MAX_CONNECTIONS,
                          hs ? json_integer_value(hs)
                             : NBD_DEFAULT_HANDSHAKE_MAX_SECONDS, errp);
    json_decref(addr);
    return ok ? json_object() : NULL;
}

json_t *
qmp_nbd_server_stop(json_t *args UNUSED, struct err **errp)
{
    return nbd_server_stop(errp) ? json_object() : NULL;
}

/*
 * The members each export type takes besides the common ones (QEMU's
 * BlockExportOptions is a union on "type"; the schema lists every
 * variant's members, so the variant is checked here).
 */
static const char *const common_members[] = {
    "type", "id", "node-name", "writable", "writethrough", "iothread",
    "fixed-iothread", NULL,
};
static const char *const nbd_members[] = {
    "name", "description", "bitmaps", "allocation-depth", NULL,
};
static const char *const fuse_members[] = {
    "mountpoint", "growable", "allow-other", NULL,
};
static const char *const vhost_user_blk_members[] = {
    "addr", "logical-block-size", "num-queues", NULL,
};
static const struct {
    const char *type;
    const char *const *members;
} export_types[] = {
    { "nbd", nbd_members },
    { "fuse", fuse_members },
    { "vhost-user-blk", vhost_user_blk_members },
};

static bool
str_in(const char *s, const char *const *list)
{
    for (; *list; list++) {
        if (!strcmp(*list, s)) {
            return true;
        }
    }
    return false;
}

/* A string member: NULL when absent; false (with *errp) when ill-typed. */
static bool
member_str(json_t *args, const char *key, bool required, const char **out,
           struct err **errp)
{
    json_t *v = json_object_get(args, key);

    *out = json_string_value(v);
    if (!v && required) {
        err_setf(errp, "Parameter '%s' is missing", key);
        return false;
    }
    if (v && !*out) {
        err_setf(errp, "Invalid parameter type for '%s', expected: string",
                 key);
        return false;
    }
    return true;
}

static bool
member_bool(json_t *args, const char *key, bool *out, struct err **errp)
{
    json_t *v = json_object_get(args, key);

    *out = v && json_is_true(v);
    if (v && !json_is_boolean(v)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: boolean",
                 key);
        return false;
    }
    return true;
}

/* fuse's options (QEMU's BlockExportOptionsFuse). */
static bool
parse_fuse(json_t *args, struct fuse_export_options *o, struct err **errp)
{
    const char *allow_other;

    if (!member_str(args, "mountpoint", true, &o->mountpoint, errp) ||
        !member_bool(args, "growable", &o->growable, errp) ||
        !member_str(args, "allow-other", false, &allow_other, errp)) {
        return false;
    }
    if (!allow_other || !strcmp(allow_other, "auto")) {
        o->allow_other = FUSE_EXPORT_ALLOW_OTHER_AUTO;
    } else if (!strcmp(allow_other, "on")) {
        o->allow_other = FUSE_EXPORT_ALLOW_OTHER_ON;
    } else if (!strcmp(allow_other, "off")) {
        o->allow_other = FUSE_EXPORT_ALLOW_OTHER_OFF;
    } else {
        err_setf(errp, "Parameter 'allow-other' does not accept value '%s'",
                 allow_other);
        return false;
    }
    return true;
}

/* An unsigned integer member with a default and a maximum. */
static bool
member_uint(json_t *args, const char *key, uint64_t def, uint64_t max,
            uint64_t *out, struct err **errp)
{
    json_t *v = json_object_get(args, key);

    *out = def;
    if (!v) {
        return true;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        err_setf(errp, "Invalid parameter type for '%s', expected: integer",
                 key);
        return false;
    }
    if ((uint64_t)json_integer_value(v) > max) {
        err_setf(errp, "Parameter '%s' is out of range", key);
        return false;
    }
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/*
 * vhost-user-blk's options: addr is a flat SocketAddress of type "unix"
 * ({path}) or "fd" ({str}: the number of an inherited listening socket).
 */
static bool
parse_vhost_user_blk(json_t *args, struct vhost_user_blk_options *o,
                     struct err **errp)
{
    json_t *addr = json_object_get(args, "addr");
    const char *type, *key;
    uint64_t v;
    json_t *m;

    memset(o, 0, sizeof(*o));
    o->fd = -1;
    if (!addr) {
        err_setf(errp, "Parameter 'addr' is missing");
        return false;
    }
    if (!json_is_object(addr)) {
        err_setf(errp, "Invalid parameter type for 'addr', expected: object");
        return false;
    }
    if (!member_str(addr, "type", true, &type, errp)) {
        err_prepend(errp, "addr: ");
        return false;
    }
    if (!strcmp(type, "unix")) {
        if (!member_str(addr, "path", true, &o->path, errp)) {
            err_prepend(errp, "addr: ");
            return false;
        }
    } else if (!strcmp(type, "fd")) {
        const char *str;
        int64_t fd;

        if (!member_str(addr, "str", true, &str, errp)) {
            err_prepend(errp, "addr: ");
            return false;
        }
        if (parse_int64(str, &fd) < 0 || fd < 0 || fd > INT32_MAX) {
            err_setf(errp, "File descriptor '%s' is not a number (named "
                     "fds are not supported)", str);
            return false;
        }
        o->fd = (int)fd;
    } else {
        err_setf(errp, "vhost-user-blk exports listen on 'unix' or 'fd' "
                 "socket addresses, not '%s'", type);
        return false;
    }
    json_object_foreach(addr, key, m) {
        if (strcmp(key, "type") && strcmp(key, o->path ? "path" : "str")) {
            err_setf(errp, "Parameter 'addr.%s' is unexpected", key);
            return false;
        }
    }
    if (!member_uint(args, "logical-block-size",
                     VHOST_USER_BLK_DEFAULT_BLOCK_SIZE, UINT32_MAX, &v,
                     errp)) {
        return false;
    }
    o->logical_block_size = (uint32_t)v;
    if (!member_uint(args, "num-queues", 1, UINT16_MAX, &v, errp)) {
        return false;
    }
    o->num_queues = (uint16_t)v;
    return true;
}

bool
qmp_export_add(json_t *args, struct err **errp)
{
    struct fuse_export_options fuse;
    struct vhost_user_blk_options vub;
    struct block_export_options opts = {0};
    const char *const *members = NULL;
    const char *iothread, *key;
    json_t *v, *nbd_args;
    bool ok;

    if (!json_is_object(args)) {
        err_setf(errp, "Invalid parameter type, expected: object");
        return false;
    }
    if (!member_str(args, "type", true, &opts.type, errp)) {
        return false;
    }
    for (size_t i = 0; i < ARRAY_SIZE(export_types); i++) {
        if (!strcmp(export_types[i].type, opts.type)) {
            members = export_types[i].members;
        }
    }
    if (!members) {
        err_setf(errp, "Parameter 'type' does not accept value '%s'",
                 opts.type);
        return false;
    }
    json_object_foreach(args, key, v) {
        if (!str_in(key, common_members) && !str_in(key, members)) {
            err_setf(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    if (!member_str(args, "id", true, &opts.id, errp) ||
        !member_str(args, "node-name", true, &opts.node_name, errp) ||
        !member_bool(args, "writable", &opts.writable, errp) ||
        !member_bool(args, "writethrough", &opts.writethrough, errp) ||
        !member_str(args, "iothread", false, &iothread, errp)) {
        return false;
    }
    if (iothread && !qmp_iothread_exists(iothread)) {
        err_setf(errp, "iothread \"%s\" not found", iothread);
        return false;
    }
    /* Exports run their own threads: the iothread choice is moot. */
    if (!strcmp(opts.type, "fuse")) {
        if (!parse_fuse(args, &fuse, errp)) {
            return false;
        }
        opts.driver_opts = &fuse;
        return block_export_add(&opts, errp);
    }
    if (!strcmp(opts.type, "vhost-user-blk")) {
        if (!parse_vhost_user_blk(args, &vub, errp)) {
            return false;
        }
        opts.driver_opts = &vub;
        return block_export_add(&opts, errp);
    }
    /* NBD still reads its options from the arguments object. */
    nbd_args = json_deep_copy(args);
    json_object_del(nbd_args, "iothread");
    json_object_del(nbd_args, "fixed-iothread");
    opts.driver_opts = nbd_args;
    ok = block_export_add(&opts, errp);
    json_decref(nbd_args);
    return ok;
}

json_t *
qmp_block_export_add(json_t *args, struct err **errp)
{
    return qmp_export_add(args, errp) ? json_object() : NULL;
}

json_t *
qmp_block_export_del(json_t *args, struct err **errp)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    const char *mode = json_string_value(json_object_get(args, "mode"));

    return block_export_del(id, mode, errp) ? json_object() : NULL;
}

/* Members in the order QEMU prints them (its hash order), so that the
 * text is the same as qemu-storage-daemon's. */
static void
query_one(const struct block_export_info *info, void *opaque)
{
    json_array_append_new(opaque,
                          json_pack("{s:s, s:b, s:s, s:s}",
                                    "node-name", info->node_name,
                                    "shutting-down", info->shutting_down,
                                    "type", info->type, "id", info->id));
}

json_t *
qmp_query_block_exports(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *out = json_array();

    block_export_foreach(query_one, out);
    return out;
}

/*
 * The deprecated nbd-server-add/-remove, still used by old scripts and
 * QEMU's iotests: an export whose id is its name (default: the node).
 */
json_t *
qmp_nbd_server_add(json_t *args, struct err **errp)
{
    const char *device = json_string_value(json_object_get(args, "device"));
    json_t *name = json_object_get(args, "name");
    json_t *desc = json_object_get(args, "description");
    json_t *writable = json_object_get(args, "writable");
    json_t *bitmap = json_object_get(args, "bitmap");
    json_t *exp = json_pack("{s:s, s:O, s:s}", "type", "nbd", "id",
                            name ? name : json_object_get(args, "device"),
                            "node-name", device);
    bool ok;

    if (name) {
        json_object_set(exp, "name", name);
    }
    if (desc) {
        json_object_set(exp, "description", desc);
    }
    if (writable) {
        json_object_set(exp, "writable", writable);
    }
    if (bitmap) {
        json_object_set_new(exp, "bitmaps", json_pack("[O]", bitmap));
    }
    ok = qmp_export_add(exp, errp);
    json_decref(exp);
    return ok ? json_object() : NULL;
}

json_t *
qmp_nbd_server_remove(json_t *args, struct err **errp)
{
    const char *name = json_string_value(json_object_get(args, "name"));
    const char *mode = json_string_value(json_object_get(args, "mode"));

    return block_export_del(name, mode, errp) ? json_object() : NULL;
}
