/* SPDX-License-Identifier: MIT */
/*
 * QMP monitors on unix (or TCP) sockets, as qemu-storage-daemon's
 * "--chardev socket,id=ID,path=P,server=on,wait=off --monitor chardev=ID".
 * A chardev is a listening socket; a monitor serves every client that
 * connects to it (several at once).  Main thread only.
 */
#ifndef LOCKSTEP_QMP_MONITOR_H
#define LOCKSTEP_QMP_MONITOR_H

#include <stdbool.h>

#include <jansson.h>

#include "lockstep/err.h"

/* Largest request accepted (bytes); larger ones are refused with an
 * error and skipped. */
#define QMP_MAX_REQUEST (1024 * 1024)
/* Deepest nesting of a request (QEMU's limit). */
#define QMP_MAX_NESTING 1024

/* Install the event sink; call once after loop_init(). */
void monitor_init(void);

/*
 * --chardev: opts is the keyval object ("backend" is the implied first
 * key: "socket").  Creates and binds the listening socket.
 */
bool monitor_chardev_add(json_t *opts, struct err **errp);
/* --monitor: opts {"chardev": ID, "mode"?: "control", "pretty"?: bool}. */
bool monitor_add(json_t *opts, struct err **errp);

/* Shutdown: stop accepting, write out what is queued (briefly, best
 * effort), close every client and socket, remove socket files we made. */
void monitor_close_all(void);

#endif
