/* SPDX-License-Identifier: MIT */
/*
 * Events as QMP messages: the monitor's event sink (monitor.c) turns each
 * runtime event (runtime/event.h) into QEMU's message with these.
 */
#ifndef LOCKSTEP_QMP_EVENT_H
#define LOCKSTEP_QMP_EVENT_H

#include <jansson.h>

#include "runtime/event.h"

/* The event's "data": its members in order, as a new JSON object. */
json_t *qmp_event_data(const struct event *ev);
/* The whole message: {"timestamp": {"seconds", "microseconds"}, "event",
 * "data"} ("data" left out for an event without members). */
json_t *qmp_event_message(const struct event *ev);

#endif
