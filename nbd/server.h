/* SPDX-License-Identifier: MIT */
/*
 * The NBD server's interface to the daemon and its QMP monitor: start and
 * stop the listening sockets (nbd-server-start, nbd-server-stop), with
 * typed options (the QMP edge, qmp/cmds-export.c, turns JSON into them).
 * Exports are added through the generic layer (export/export.h), whose
 * "nbd" driver is in export.c here and takes struct nbd_export_options.
 * All of these run on the main thread; the server runs its own accept
 * thread and a pool of threads shared by the connections.  Errors are
 * worded as QEMU's so that QMP clients see the same messages.
 */
#ifndef LOCKSTEP_NBD_SERVER_H
#define LOCKSTEP_NBD_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lockstep/err.h"

/* QEMU's defaults for nbd-server-start and --nbd-server. */
#define NBD_DEFAULT_MAX_CONNECTIONS 100
#define NBD_DEFAULT_HANDSHAKE_MAX_SECONDS 10

/* QEMU's SocketAddress, of the kinds the server listens on. */
enum socket_address_type {
    SOCKET_ADDRESS_UNIX,
    SOCKET_ADDRESS_INET,
};

struct socket_address {
    enum socket_address_type type;
    const char *path;           /* unix */
    /* inet: required ("" or "::" listens on every interface: that must be
     * asked for, never the result of an omission); NULL is refused. */
    const char *host;
    const char *port;           /* inet: a number or a service name */
};

struct nbd_server_options {
    struct socket_address addr;
    /* A tls-creds-x509/psk object with endpoint=server (NULL: no TLS);
     * with it every client must do TLS before it learns anything
     * (docs/security.md). */
    const char *tls_creds;
    /* An authz object that must allow the client's identity (the x509 DN
     * or PSK user name); looked up per client, so it may come later, and
     * while it is missing every client is refused. */
    const char *tls_authz;
    int64_t max_connections;    /* 0: no limit; at most UINT32_MAX; at the
                                 * limit new clients wait in the backlog */
    /* A client that has not finished negotiating (TLS included) this long
     * after it was accepted is dropped (0: never); at most UINT32_MAX. */
    int64_t handshake_max_seconds;
};

/* nbd-server-start.  Listening on a TCP address other than loopback
 * without TLS prints a warning.  Main thread. */
bool nbd_server_start(const struct nbd_server_options *opts,
                      struct err **errp);
/*
 * nbd-server-stop: close the listening sockets, disconnect every client and
 * delete every NBD export (with BLOCK_EXPORT_DELETED), as QEMU's
 * nbd-server-stop does.  Main thread, not while drained.
 */
bool nbd_server_stop(struct err **errp);
/* Is the server listening (nbd-server-start or --nbd-server)?  Any thread. */
bool nbd_server_running(void);

/* A dirty bitmap offered as the meta context qemu:dirty-bitmap:NAME. */
struct nbd_export_bitmap {
    const char *node;           /* NULL: look name up from the exported
                                 * node down its backing chain and filters */
    const char *name;
};

/*
 * The NBD driver's options (block_export_options.driver_opts of type
 * "nbd", export/export.h), besides the common id, node-name, writable and
 * writethrough.  NULL driver options mean all defaults.  Strings are
 * copied.
 */
struct nbd_export_options {
    const char *name;           /* the NBD export name; NULL: node-name */
    const char *description;    /* or NULL */
    bool allocation_depth;      /* offer qemu:allocation-depth */
    const struct nbd_export_bitmap *bitmaps;
    size_t n_bitmaps;
};

#endif
