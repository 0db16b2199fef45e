/* SPDX-License-Identifier: MIT */
/* Test helper recording emitted events; see event-log.h. */
#include <stdlib.h>
#include <string.h>

#include "event-log.h"
#include "qmp/qmp-event.h"
#include "util.h"

static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *ev_list;          /* Protected by: ev_lock */

void
event_log_capture(const struct event *ev)
{
    mutex_lock(&ev_lock);
    if (!ev_list) {
        ev_list = json_array();
    }
    json_array_append_new(ev_list, json_pack("{s:s, s:o}", "event", ev->name,
                                             "data", qmp_event_data(ev)));
    mutex_unlock(&ev_lock);
}

void
event_log_reset(void)
{
    mutex_lock(&ev_lock);
    json_decref(ev_list);
    ev_list = json_array();
    mutex_unlock(&ev_lock);
}

char *
event_log_names(bool job_status)
{
    char *s = xstrdup("");
    json_t *ev;
    size_t i;

    mutex_lock(&ev_lock);
    json_array_foreach(ev_list, i, ev) {
        const char *name = json_string_value(json_object_get(ev, "event"));
        json_t *data = json_object_get(ev, "data");
        bool status_change = !strcmp(name, "JOB_STATUS_CHANGE");
        char *n;

        if (status_change && !job_status) {
            continue;
        }
        if (status_change) {
            n = xasprintf("%s%s%s:%s", s, *s ? " " : "", name,
                          json_string_value(json_object_get(data, "status")));
        } else {
            n = xasprintf("%s%s%s", s, *s ? " " : "", name);
        }
        free(s);
        s = n;
    }
    mutex_unlock(&ev_lock);
    return s;
}

json_t *
event_log_last(const char *name)
{
    json_t *found = NULL, *ev;
    size_t i;

    mutex_lock(&ev_lock);
    json_array_foreach(ev_list, i, ev) {
        if (!strcmp(json_string_value(json_object_get(ev, "event")), name)) {
            found = json_object_get(ev, "data");
        }
    }
    mutex_unlock(&ev_lock);
    return found;
}
