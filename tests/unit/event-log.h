/* SPDX-License-Identifier: MIT */
/*
 * Test helper: record the QMP events a job emits (install
 * event_log_capture with job_set_event_sink) and look at them.
 */
#ifndef LOCKSTEP_TEST_EVENT_LOG_H
#define LOCKSTEP_TEST_EVENT_LOG_H

#include <stdbool.h>

#include <jansson.h>

/* An event sink: records {"event": name, "data": data} (data stolen). */
void event_log_capture(const char *name, json_t *data);
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
