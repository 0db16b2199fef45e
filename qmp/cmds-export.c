/* SPDX-License-Identifier: MIT */
/*
 * QMP commands of the NBD server and of exports: nbd-server-start,
 * nbd-server-stop, block-export-add, block-export-del,
 * query-block-exports, and the deprecated nbd-server-add/-remove.  The
 * work is the NBD server's (nbd/server.h) and the export layer's
 * (export/export.h); the handlers get their arguments decoded
 * (qmp-args.h), turn them into the typed options of those layers and
 * build the replies.  Main thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "export/fuse.h"
#include "export/vhost-user-blk.h"
#include "nbd/server.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/* The members of an address of type type (unix or inet) in obj, or in
 * obj's "data" when that is an object. */
static bool
parse_address(const char *type, json_t *obj, struct socket_address *addr,
              char portbuf[32], struct err **errp)
{
    json_t *data = json_object_get(obj, "data");

    memset(addr, 0, sizeof(*addr));
    if (!json_is_object(data)) {
        data = obj;
    }
    if (!strcmp(type, "unix")) {
        addr->type = SOCKET_ADDRESS_UNIX;
        addr->path = qmp_str(data, "path");
        if (!addr->path) {
            err_setf(errp, "Parameter 'addr.path' is missing");
            return false;
        }
        return true;
    }
    if (!strcmp(type, "inet")) {
        json_t *host = json_object_get(data, "host");
        json_t *port = json_object_get(data, "port");

        addr->type = SOCKET_ADDRESS_INET;
        if (json_is_integer(port)) {
            snprintf(portbuf, 32, "%" JSON_INTEGER_FORMAT,
                     json_integer_value(port));
        } else if (json_is_string(port) &&
                   strlen(json_string_value(port)) < 32) {
            snprintf(portbuf, 32, "%s", json_string_value(port));
        } else {
            err_setf(errp, "Parameter 'addr.port' is missing");
            return false;
        }
        if (host && !json_is_string(host)) {
            err_setf(errp, "Invalid parameter type for 'addr.host', "
                     "expected: string");
            return false;
        }
        addr->host = json_string_value(host);
        addr->port = portbuf;
        return true;
    }
    err_setf(errp, "Parameter 'addr.type' does not accept value '%s'", type);
    return false;
}

bool
qmp_socket_address_parse(json_t *obj, struct socket_address *addr,
                         char portbuf[32], struct err **errp)
{
    const char *type = qmp_str(obj, "type");

    if (!json_is_object(obj) || !type) {
        err_setf(errp, "Parameter 'addr.type' is missing");
        return false;
    }
    return parse_address(type, obj, addr, portbuf, errp);
}

/*
 * nbd-server-start takes the legacy SocketAddress ({"type", "data": {...}});
 * the members the type needs must be in "data".
 */
static bool
check_legacy_address(const struct qmp_socket_address_legacy *addr,
                     struct err **errp)
{
    switch (addr->type) {
    case QMP_SOCKET_UNIX:
        if (!json_object_get(addr->data, "path")) {
            err_setf(errp, "Parameter 'addr.data.path' is missing");
            return false;
        }
        return true;
    case QMP_SOCKET_INET:
        if (!json_object_get(addr->data, "host")) {
            err_setf(errp, "Parameter 'addr.data.host' is missing");
            return false;
        }
        if (!json_object_get(addr->data, "port")) {
            err_setf(errp, "Parameter 'addr.data.port' is missing");
            return false;
        }
        return true;
    case QMP_SOCKET_VSOCK:
    case QMP_SOCKET_FD:
        break;
    }
    err_setf(errp, "Socket address type '%s' is not supported",
             qmp_socket_type_names[addr->type]);
    return false;
}

static json_t *
nbd_server_start_cmd(const struct qmp_args_nbd_server_start *a,
                     struct err **errp)
{
    struct nbd_server_options opts = {
        .tls_creds = a->tls_creds,
        .tls_authz = a->tls_authz,
        .max_connections = a->has_max_connections
                           ? (int64_t)a->max_connections
                           : NBD_DEFAULT_MAX_CONNECTIONS,
        .handshake_max_seconds = a->has_handshake_max_seconds
                                 ? (int64_t)a->handshake_max_seconds
                                 : NBD_DEFAULT_HANDSHAKE_MAX_SECONDS,
    };
    char portbuf[32];

    /* QEMU checks the address (its visitor) before the server. */
    if (!check_legacy_address(&a->addr, errp) ||
        !parse_address(qmp_socket_type_names[a->addr.type], a->addr.data,
                       &opts.addr, portbuf, errp)) {
        return NULL;
    }
    return nbd_server_start(&opts, errp) ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_nbd_server_start, nbd_server_start_cmd,
                  struct qmp_args_nbd_server_start);

json_t *
qmp_nbd_server_stop(json_t *args UNUSED, struct err **errp)
{
    return nbd_server_stop(errp) ? json_object() : NULL;
}

/*
 * block-export-add is a union on "type": the members of the other types
 * are refused, in the schema's order.
 */
static bool
check_variant(const struct qmp_args_block_export_add *a, struct err **errp)
{
    const char *bad = NULL;

    if (a->type != QMP_EXPORT_TYPE_NBD) {
        bad = a->name ? "name" : a->description ? "description" :
              a->bitmaps ? "bitmaps" :
              a->has_allocation_depth ? "allocation-depth" : NULL;
    }
    if (!bad && a->type != QMP_EXPORT_TYPE_FUSE) {
        bad = a->mountpoint ? "mountpoint" : a->has_growable ? "growable" :
              a->has_allow_other ? "allow-other" : NULL;
    }
    if (!bad && a->type != QMP_EXPORT_TYPE_VHOST_USER_BLK) {
        bad = a->addr ? "addr" :
              a->has_logical_block_size ? "logical-block-size" :
              a->has_num_queues ? "num-queues" : NULL;
    }
    if (bad) {
        err_setf(errp, "Parameter '%s' is unexpected", bad);
        return false;
    }
    return true;
}

/* nbd's options (QEMU's BlockExportOptionsNbd); *bitmaps is allocated. */
static void
nbd_options(const struct qmp_args_block_export_add *a,
            struct nbd_export_options *o, struct nbd_export_bitmap **bitmaps)
{
    *bitmaps = xcalloc(a->n_bitmaps ? a->n_bitmaps : 1, sizeof(**bitmaps));
    for (size_t i = 0; i < a->n_bitmaps; i++) {
        const struct qmp_bitmap_or_str *b = &a->bitmaps[i];

        (*bitmaps)[i].node = b->local ? NULL : b->node;
        (*bitmaps)[i].name = b->local ? b->local : b->name;
    }
    *o = (struct nbd_export_options) {
        .name = a->name,
        .description = a->description,
        .allocation_depth = a->allocation_depth,
        .bitmaps = *bitmaps,
        .n_bitmaps = a->n_bitmaps,
    };
}

/* fuse's options (QEMU's BlockExportOptionsFuse). */
static bool
fuse_options(const struct qmp_args_block_export_add *a,
             struct fuse_export_options *o, struct err **errp)
{
    static const enum fuse_export_allow_other allow_other[] = {
        [QMP_FUSE_ALLOW_OTHER_OFF] = FUSE_EXPORT_ALLOW_OTHER_OFF,
        [QMP_FUSE_ALLOW_OTHER_ON] = FUSE_EXPORT_ALLOW_OTHER_ON,
        [QMP_FUSE_ALLOW_OTHER_AUTO] = FUSE_EXPORT_ALLOW_OTHER_AUTO,
    };

    if (!a->mountpoint) {
        err_setf(errp, "Parameter 'mountpoint' is missing");
        return false;
    }
    *o = (struct fuse_export_options) {
        .mountpoint = a->mountpoint,
        .growable = a->growable,
        .allow_other = a->has_allow_other ? allow_other[a->allow_other]
                                          : FUSE_EXPORT_ALLOW_OTHER_AUTO,
    };
    return true;
}

/* An optional unsigned member with a default and a maximum. */
static bool
opt_uint(const char *key, bool has, uint64_t v, uint64_t def, uint64_t max,
         uint64_t *out, struct err **errp)
{
    *out = has ? v : def;
    if (*out > max) {
        err_setf(errp, "Parameter '%s' is out of range", key);
        return false;
    }
    return true;
}

/*
 * vhost-user-blk's options (QEMU's BlockExportOptionsVhostUserBlk): addr
 * is a flat SocketAddress of type "unix" ({path}) or "fd" ({str}: the
 * number of an inherited listening socket).
 */
static bool
vhost_user_blk_options(const struct qmp_args_block_export_add *a,
                       struct vhost_user_blk_options *o, struct err **errp)
{
    const char *type, *key;
    uint64_t v;
    json_t *m;

    memset(o, 0, sizeof(*o));
    o->fd = -1;
    if (!a->addr) {
        err_setf(errp, "Parameter 'addr' is missing");
        return false;
    }
    if (!qmp_member_str(a->addr, "addr: ", "type", &type, errp)) {
        return false;
    }
    if (!strcmp(type, "unix")) {
        if (!qmp_member_str(a->addr, "addr: ", "path", &o->path, errp)) {
            return false;
        }
    } else if (!strcmp(type, "fd")) {
        const char *str;
        int64_t fd;

        if (!qmp_member_str(a->addr, "addr: ", "str", &str, errp)) {
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
    json_object_foreach(a->addr, key, m) {
        if (strcmp(key, "type") && strcmp(key, o->path ? "path" : "str")) {
            err_setf(errp, "Parameter 'addr.%s' is unexpected", key);
            return false;
        }
    }
    if (!opt_uint("logical-block-size", a->has_logical_block_size,
                  a->logical_block_size, VHOST_USER_BLK_DEFAULT_BLOCK_SIZE,
                  UINT32_MAX, &v, errp)) {
        return false;
    }
    o->logical_block_size = (uint32_t)v;
    if (!opt_uint("num-queues", a->has_num_queues, a->num_queues, 1,
                  UINT16_MAX, &v, errp)) {
        return false;
    }
    o->num_queues = (uint16_t)v;
    return true;
}

static json_t *
block_export_add_cmd(const struct qmp_args_block_export_add *a,
                     struct err **errp)
{
    struct block_export_options opts = {
        .type = qmp_export_type_names[a->type],
        .id = a->id,
        .node_name = a->node_name,
        .writable = a->writable,
        .writethrough = a->writethrough,
    };
    struct nbd_export_bitmap *bitmaps = NULL;
    struct nbd_export_options nbd;
    struct fuse_export_options fuse;
    struct vhost_user_blk_options vub;
    struct poll_tuning poll;
    bool ok;

    if (!check_variant(a, errp)) {
        return NULL;
    }
    /* Exports run their own threads; an iothread says how they poll. */
    if (a->iothread) {
        if (!qmp_iothread_poll(a->iothread, &poll)) {
            err_setf(errp, "iothread \"%s\" not found", a->iothread);
            return NULL;
        }
        opts.poll = &poll;
    }
    switch (a->type) {
    case QMP_EXPORT_TYPE_NBD:
        nbd_options(a, &nbd, &bitmaps);
        opts.driver_opts = &nbd;
        break;
    case QMP_EXPORT_TYPE_FUSE:
        if (!fuse_options(a, &fuse, errp)) {
            return NULL;
        }
        opts.driver_opts = &fuse;
        break;
    case QMP_EXPORT_TYPE_VHOST_USER_BLK:
        if (!vhost_user_blk_options(a, &vub, errp)) {
            return NULL;
        }
        opts.driver_opts = &vub;
        break;
    }
    ok = block_export_add(&opts, errp);
    free(bitmaps);
    return ok ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_block_export_add, block_export_add_cmd,
                  struct qmp_args_block_export_add);

static json_t *
block_export_del_cmd(const struct qmp_args_block_export_del *a,
                     struct err **errp)
{
    enum block_export_remove_mode mode =
        a->has_mode ? a->mode : BLOCK_EXPORT_REMOVE_SAFE;

    return block_export_del(a->id, mode, errp) ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_block_export_del, block_export_del_cmd,
                  struct qmp_args_block_export_del);

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
static json_t *
nbd_server_add_cmd(const struct qmp_args_nbd_server_add *a,
                   struct err **errp)
{
    struct nbd_export_bitmap bitmap = { .name = a->bitmap };
    struct nbd_export_options nbd = {
        .name = a->name,
        .description = a->description,
        .bitmaps = &bitmap,
        .n_bitmaps = a->bitmap ? 1 : 0,
    };
    struct block_export_options opts = {
        .type = "nbd",
        .id = a->name ? a->name : a->device,
        .node_name = a->device,
        .writable = a->writable,
        .driver_opts = &nbd,
    };

    return block_export_add(&opts, errp) ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_nbd_server_add, nbd_server_add_cmd,
                  struct qmp_args_nbd_server_add);

static json_t *
nbd_server_remove_cmd(const struct qmp_args_nbd_server_remove *a,
                      struct err **errp)
{
    enum block_export_remove_mode mode =
        a->has_mode ? a->mode : BLOCK_EXPORT_REMOVE_SAFE;

    return block_export_del(a->name, mode, errp) ? json_object() : NULL;
}
QMP_TYPED_HANDLER(qmp_nbd_server_remove, nbd_server_remove_cmd,
                  struct qmp_args_nbd_server_remove);

bool
qmp_export_add_keyval(json_t *opts, struct err **errp)
{
    json_t *bitmap;
    json_t *ret;

    if (!qmp_keyval_to_bool(opts, "writable", errp) ||
        !qmp_keyval_to_bool(opts, "writethrough", errp) ||
        !qmp_keyval_to_bool(opts, "fixed-iothread", errp) ||
        !qmp_keyval_to_bool(opts, "allocation-depth", errp) ||
        !qmp_keyval_to_bool(opts, "growable", errp) ||
        !qmp_keyval_to_int(opts, "num-queues", errp) ||
        !qmp_keyval_to_size(opts, "logical-block-size", errp)) {
        return false;
    }
    bitmap = json_object_get(opts, "bitmap");
    if (bitmap) {
        json_t *list = json_object_get(opts, "bitmaps");

        if (!list) {
            list = json_array();
            json_object_set_new(opts, "bitmaps", list);
        }
        if (json_is_array(list)) {
            json_array_append(list, bitmap);
        }
        json_object_del(opts, "bitmap");
    }
    ret = qmp_execute("block-export-add", opts, errp);
    json_decref(ret);
    return ret != NULL;
}
