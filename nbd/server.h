/* SPDX-License-Identifier: MIT */
/*
 * The NBD server's interface to the daemon and its QMP monitor: start and
 * stop the listening sockets (nbd-server-start, nbd-server-stop).  Exports
 * are added through the generic layer (export/export.h), whose "nbd"
 * driver is in export.c here.  All of these run on the main thread; the
 * server runs its own accept thread and a pool of threads shared by the
 * connections.  Errors are worded as QEMU's so that QMP clients see the
 * same messages.
 */
#ifndef LOCKSTEP_NBD_SERVER_H
#define LOCKSTEP_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "lockstep/err.h"

/* QEMU's defaults for nbd-server-start and --nbd-server. */
#define NBD_DEFAULT_MAX_CONNECTIONS 100
#define NBD_DEFAULT_HANDSHAKE_MAX_SECONDS 10

/*
 * nbd-server-start.  addr is a QMP SocketAddress: {"type":"unix","path":P}
 * or {"type":"inet","host":H,"port":"N"} (host required: "" listens on
 * every interface; port a string as in QAPI, an integer is accepted too).
 * tls_creds names a tls-creds-x509/psk object with endpoint=server (NULL:
 * no TLS); with it every client must do TLS before it learns anything
 * (docs/security.md).  tls_authz names an authz object that must allow
 * the client's identity (the x509 DN or PSK user name); it is looked up
 * per client, so it may come later, and while it is missing every client
 * is refused.  max_connections 0 means no limit; at the limit new
 * clients wait in the listen backlog.  A client that has not finished
 * negotiating (TLS included) handshake_max_seconds after it was accepted
 * is dropped (0: never).  Listening on a TCP address other than loopback
 * without TLS prints a warning.  Main thread.
 */
bool nbd_server_start(json_t *addr, const char *tls_creds,
                      const char *tls_authz, int64_t max_connections,
                      int64_t handshake_max_seconds, struct err **errp);
/*
 * nbd-server-stop: close the listening sockets, disconnect every client and
 * delete every NBD export (with BLOCK_EXPORT_DELETED), as QEMU's
 * nbd-server-stop does.  Main thread, not while drained.
 */
bool nbd_server_stop(struct err **errp);
/* Is the server listening (nbd-server-start or --nbd-server)?  Any thread. */
bool nbd_server_running(void);
#endif
