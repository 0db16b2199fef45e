/* SPDX-License-Identifier: MIT */
/*
 * The NBD server's interface to the daemon and its QMP monitor: start and
 * stop the listening sockets (nbd-server-start, nbd-server-stop) and manage
 * exports (block-export-add, block-export-del, query-block-exports).  All of
 * these run on the main thread; the server runs its own accept thread and
 * a pool of threads shared by the connections.  Errors are worded as QEMU's so that QMP clients see the
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
 * tls_creds must be NULL (TLS is refused).  max_connections 0 means no
 * limit; at the limit new clients wait in the listen backlog.  A client
 * that has not finished negotiating handshake_max_seconds after it was
 * accepted is dropped (0: never).  Main thread.
 */
bool nbd_server_start(json_t *addr, const char *tls_creds,
                      int64_t max_connections, int64_t handshake_max_seconds,
                      struct err **errp);
/*
 * nbd-server-stop: close the listening sockets, disconnect every client and
 * delete every NBD export (with BLOCK_EXPORT_DELETED), as QEMU's
 * nbd-server-stop does.  Main thread, not while drained.
 */
bool nbd_server_stop(struct err **errp);
/* Is the server listening (nbd-server-start or --nbd-server)?  Any thread. */
bool nbd_server_running(void);
/*
 * block-export-add with the QMP arguments object: type ("nbd"), id,
 * node-name, writable, writethrough, name (default node-name), description,
 * bitmaps (list of name or {node,name}), allocation-depth.  Main thread.
 */
bool block_export_add(json_t *args, struct err **errp);
/*
 * block-export-del; mode "safe" (default, NULL: refuses with "export 'ID'
 * still in use" while clients are connected) or "hard" (disconnects them
 * and waits until their requests are done).  Sends BLOCK_EXPORT_DELETED
 * when the export is gone.  Main thread, not while drained: the clients'
 * requests would wait for the drain.
 */
bool block_export_del(const char *id, const char *mode, struct err **errp);
/* query-block-exports: a new JSON array.  Main thread. */
json_t *block_export_query(void);
/* Daemon shutdown: disconnect every client and delete every export (the
 * listening sockets stay until nbd_server_stop).  Main thread. */
void block_export_close_all(void);

#endif
