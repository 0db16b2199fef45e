/* SPDX-License-Identifier: MIT */
/*
 * nbd-serve: a test harness for the NBD server before the daemon exists.
 * It creates nodes (--blockdev, keyval or JSON), optional dirty bitmaps
 * (--bitmap NODE,NAME), starts the server (--nbd-server unix:PATH or
 * inet:HOST:PORT) and adds exports (--export, keyval or JSON block-export-add
 * arguments).  It prints "ready" and then reads QMP-like JSON commands, one
 * per line, on stdin: block-export-add, block-export-del, query-block-exports,
 * nbd-server-start, nbd-server-stop, block-dirty-bitmap-add, quit.  Answers
 * and events are JSON lines on stdout.  EOF on stdin shuts it down.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "export/export.h"
#include "keyval.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "nbd/server.h"
#include "qmp/qmp-event.h"
#include "qmp/qmp-internal.h"
#include "runtime/event.h"
#include "util.h"

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void
print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);

    mutex_lock(&out_lock);
    printf("%s\n", s);
    fflush(stdout);
    mutex_unlock(&out_lock);
    free(s);
}

/* The event sink: events go to stdout as {"event", "data"}. */
static void
print_event(const struct event *event)
{
    json_t *ev = json_pack("{s:s, s:o}", "event", event->name, "data",
                           qmp_event_data(event));

    print_json(ev);
    json_decref(ev);
}

static json_t *
addr_from_str(const char *s)
{
    if (!strncmp(s, "unix:", 5)) {
        return json_pack("{s:s, s:s}", "type", "unix", "path", s + 5);
    }
    if (!strncmp(s, "inet:", 5)) {
        const char *colon = strrchr(s + 5, ':');
        char *host;
        json_t *j;

        if (!colon) {
            return NULL;
        }
        host = strndup(s + 5, (size_t)(colon - (s + 5)));
        j = json_pack("{s:s, s:s, s:s}", "type", "inet", "host", host,
                      "port", colon + 1);
        free(host);
        return j;
    }
    return NULL;
}

static bool
add_bitmap(const char *node_name, const char *name, struct err **errp)
{
    struct block_node *node = block_node_find(node_name);

    if (!node) {
        err_setf(errp, "Cannot find device='' nor node-name='%s'",
                 node_name);
        return false;
    }
    return block_dirty_bitmap_create(node, name, 0, errp) != NULL;
}

/* This harness serves NBD only (other export types are refused as a
 * server without them would refuse them). */
static bool
nbd_only(json_t *args, struct err **errp)
{
    const char *type = qmp_str(args, "type");

    if (type && strcmp(type, "nbd")) {
        err_setf(errp, "Parameter 'type' does not accept value '%s'", type);
        return false;
    }
    return true;
}

/* nbd-server-start with a flat address ({"type", "path"} or {"type",
 * "host", "port"}), as --nbd-server takes it. */
static bool
server_start(json_t *addr, int64_t max_conns, int64_t handshake_max_seconds,
             const char *tls_creds, const char *tls_authz, struct err **errp)
{
    struct nbd_server_options opts = {
        .tls_creds = tls_creds,
        .tls_authz = tls_authz,
        .max_connections = max_conns,
        .handshake_max_seconds = handshake_max_seconds,
    };
    char portbuf[32];

    return qmp_socket_address_parse(addr, &opts.addr, portbuf, errp) &&
           nbd_server_start(&opts, errp);
}

static json_t *
run_command(json_t *cmd, bool *quit)
{
    const char *name = qmp_str(cmd, "execute");
    json_t *args = json_object_get(cmd, "arguments");
    struct err *err = NULL;
    json_t *ret = NULL;
    bool ok = false;

    if (!name) {
        err_setf(&err, "missing execute");
    } else if (!strcmp(name, "block-export-add") && !nbd_only(args, &err)) {
        ok = false;
    } else if (!strcmp(name, "block-export-add") ||
               !strcmp(name, "block-export-del") ||
               !strcmp(name, "query-block-exports") ||
               !strcmp(name, "nbd-server-stop")) {
        /* The daemon's own handlers (schema checks included). */
        ret = qmp_execute(name, args, &err);
        ok = ret != NULL;
    } else if (!strcmp(name, "nbd-server-start")) {
        json_t *mc = json_object_get(args, "max-connections");
        json_t *hs = json_object_get(args, "handshake-max-seconds");

        ok = server_start(json_object_get(args, "addr"),
                          mc ? json_integer_value(mc) : 0,
                          hs ? json_integer_value(hs)
                             : NBD_DEFAULT_HANDSHAKE_MAX_SECONDS,
                          qmp_str(args, "tls-creds"),
                          qmp_str(args, "tls-authz"), &err);
    } else if (!strcmp(name, "block-dirty-bitmap-add")) {
        ok = add_bitmap(qmp_str(args, "node"), qmp_str(args, "name"), &err);
    } else if (!strcmp(name, "quit")) {
        *quit = true;
        ok = true;
    } else {
        err_setf(&err, "The command %s has not been found", name);
    }
    if (ok) {
        json_t *r = json_pack("{s:o}", "return", ret ? ret : json_object());

        return r;
    }
    ret = json_pack("{s:{s:s, s:s}}", "error", "class", "GenericError",
                    "desc", err->msg);
    err_free(err);
    return ret;
}

static json_t *
parse_arg(const char *s, const char *implied, struct err **errp)
{
    return keyval_or_json_parse(s, implied, errp);
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"blockdev", required_argument, NULL, 'b'},
        {"bitmap", required_argument, NULL, 'm'},
        {"nbd-server", required_argument, NULL, 'n'},
        {"export", required_argument, NULL, 'e'},
        {"max-connections", required_argument, NULL, 'c'},
        {NULL, 0, NULL, 0},
    };
    struct err *err = NULL;
    int64_t max_conns = 0;
    char line[65536];
    bool quit = false;
    json_t *exports = json_array();
    json_t *addr = NULL;
    int c;

    signal(SIGPIPE, SIG_IGN);
    while ((c = getopt_long(argc, argv, "b:m:n:e:c:", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'b': {
            json_t *opts = parse_arg(optarg, "driver", &err);
            struct block_node *node;

            if (!opts) {
                err_report("nbd-serve", err);
                return 1;
            }
            node = block_node_new(opts, &err);
            json_decref(opts);
            if (!node) {
                err_report("nbd-serve", err);
                return 1;
            }
            node->monitor_owned = true;
            break;
        }
        case 'm': {
            char *comma = strchr(optarg, ',');

            if (!comma) {
                fprintf(stderr, "nbd-serve: --bitmap NODE,NAME\n");
                return 1;
            }
            *comma = 0;
            if (!add_bitmap(optarg, comma + 1, &err)) {
                err_report("nbd-serve", err);
                return 1;
            }
            break;
        }
        case 'n':
            addr = addr_from_str(optarg);
            if (!addr) {
                fprintf(stderr, "nbd-serve: bad address '%s'\n", optarg);
                return 1;
            }
            break;
        case 'e': {
            json_t *e = parse_arg(optarg, "type", &err);

            if (!e) {
                err_report("nbd-serve", err);
                return 1;
            }
            json_array_append_new(exports, e);
            break;
        }
        case 'c':
            if (parse_int64(optarg, &max_conns) < 0) {
                fprintf(stderr, "nbd-serve: bad --max-connections\n");
                return 1;
            }
            break;
        default:
            return 1;
        }
    }
    event_set_sink(print_event);
    if (addr && !server_start(addr, max_conns,
                              NBD_DEFAULT_HANDSHAKE_MAX_SECONDS, NULL, NULL,
                              &err)) {
        err_report("nbd-serve", err);
        return 1;
    }
    json_decref(addr);
    for (size_t i = 0; i < json_array_size(exports); i++) {
        json_t *e = json_array_get(exports, i);

        if (!nbd_only(e, &err) || !qmp_export_add_keyval(e, &err)) {
            err_report("nbd-serve", err);
            return 1;
        }
    }
    json_decref(exports);
    printf("ready\n");
    fflush(stdout);

    while (!quit && fgets(line, sizeof(line), stdin)) {
        json_error_t jerr;
        json_t *cmd = json_loads(line, 0, &jerr);
        json_t *r;

        if (!cmd) {
            continue;
        }
        r = run_command(cmd, &quit);
        print_json(r);
        json_decref(r);
        json_decref(cmd);
    }
    block_export_close_all();
    nbd_server_stop(NULL);
    return 0;
}
