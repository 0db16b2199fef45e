/* SPDX-License-Identifier: MIT */
/*
 * Where qmp_event_send() delivers: the monitor installs a sink that gets
 * each complete event message (reference stolen).  The sink is called on
 * the sending thread and must be thread-safe.
 */
#ifndef LOCKSTEP_QMP_EVENT_H
#define LOCKSTEP_QMP_EVENT_H

#include <jansson.h>

typedef void qmp_event_sink_fn(json_t *event);

void qmp_event_set_sink(qmp_event_sink_fn *fn);
/* {"timestamp": {"seconds", "microseconds"}, "event", "data"?}; data
 * stolen. */
json_t *qmp_event_build(const char *name, json_t *data);

#endif
