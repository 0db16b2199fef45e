/* SPDX-License-Identifier: MIT */
/*
 * Test helper: record the events emitted (install event_log_capture with
 * event_set_sink) and look at them.
 */
#ifndef LOCKSTEP_TEST_EVENT_LOG_H
#define LOCKSTEP_TEST_EVENT_LOG_H

#include <stdbool.h>

#include <jansson.h>

#include "runtime/event.h"

/* An event sink: records {"event": name, "data": {members}}. */
void event_log_capture(const struct event *ev);
/* Forget everything recorded. */
void event_log_reset(void);
/*
 * The names recorded so far, joined by spaces (caller frees).  With
 * job_status, JOB_STATUS_CHANGE events appear as
 * "JOB_STATUS_CHANGE:status"; without, they are left out.
 */
char *event_log_names(bool job_status);
/* The data of the last event called name (borrowed), or NULL. */
json_t *event_log_last(const char *name);

#endif
