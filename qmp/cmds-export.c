/* SPDX-License-Identifier: MIT */
/*
 * QMP commands of the NBD server and its exports: nbd-server-start,
 * nbd-server-stop, block-export-add, block-export-del,
 * query-block-exports.  The work is the NBD server's (nbd/server.h); this
 * file only adapts the QMP argument shapes.  Main thread.
 */
#include <string.h>

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
    bool ok;

    if (json_object_get(args, "tls-authz")) {
        err_setf(errp, "TLS authorization is not supported");
        return NULL;
    }
    addr = flatten_socket_address(json_object_get(args, "addr"), errp);
    if (!addr) {
        return NULL;
    }
    ok = nbd_server_start(addr, tls_creds,
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

json_t *
qmp_block_export_add(json_t *args, struct err **errp)
{
    const char *iothread = json_string_value(json_object_get(args,
                                                             "iothread"));
    json_t *exp;
    bool ok;

    if (iothread && !qmp_iothread_exists(iothread)) {
        err_setf(errp, "iothread \"%s\" not found", iothread);
        return NULL;
    }
    /* The NBD server has its own threads: the iothread choice is moot. */
    exp = json_deep_copy(args);
    json_object_del(exp, "iothread");
    json_object_del(exp, "fixed-iothread");
    ok = block_export_add(exp, errp);
    json_decref(exp);
    return ok ? json_object() : NULL;
}

json_t *
qmp_block_export_del(json_t *args, struct err **errp)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    const char *mode = json_string_value(json_object_get(args, "mode"));

    return block_export_del(id, mode, errp) ? json_object() : NULL;
}

json_t *
qmp_query_block_exports(json_t *args UNUSED, struct err **errp UNUSED)
{
    /* Members in the order QEMU prints them (its hash order), so that
     * the text is the same as qemu-storage-daemon's. */
    static const char *const order[] = {
        "node-name", "shutting-down", "type", "id", NULL,
    };
    json_t *list = block_export_query();
    json_t *out = json_array();
    size_t i;
    json_t *exp;

    json_array_foreach(list, i, exp) {
        json_t *o = json_object();
        const char *key;
        json_t *v;

        for (size_t k = 0; order[k]; k++) {
            if ((v = json_object_get(exp, order[k]))) {
                json_object_set(o, order[k], v);
            }
        }
        json_object_foreach(exp, key, v) {
            if (!json_object_get(o, key)) {
                json_object_set(o, key, v);
            }
        }
        json_array_append_new(out, o);
    }
    json_decref(list);
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
    ok = block_export_add(exp, errp);
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
