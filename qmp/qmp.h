/* SPDX-License-Identifier: MIT */
/*
 * The QMP monitor's interface to the rest of the daemon.
 *
 * Events may be sent from any thread: the monitor queues them and the main
 * thread writes them, with a timestamp, to every client that finished
 * capability negotiation.
 */
#ifndef LOCKSTEP_QMP_H
#define LOCKSTEP_QMP_H

#include <jansson.h>

/* Send event "name" with data (reference stolen; NULL for no data). */
void qmp_event_send(const char *name, json_t *data);

#endif
