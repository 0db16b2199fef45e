/* SPDX-License-Identifier: MIT */
/*
 * qmp_event_send(): build the event message with its timestamp at the
 * moment of sending and hand it to the sink the monitor installed.  Kept
 * apart from the monitor so that programs linking the NBD server or the
 * job engine without a monitor still link; without a sink, events are
 * dropped.  Any thread.
 */
#include <time.h>

#include "qmp/qmp.h"
#include "qmp/qmp-event.h"

/* Set and cleared on the main thread, read from any thread. */
static qmp_event_sink_fn *g_sink;

void
qmp_event_set_sink(qmp_event_sink_fn *fn)
{
    __atomic_store_n(&g_sink, fn, __ATOMIC_RELEASE);
}

json_t *
qmp_event_build(const char *name, json_t *data)
{
    struct timespec ts;
    json_t *ev = json_object();

    clock_gettime(CLOCK_REALTIME, &ts);
    /* QEMU's member order: timestamp, event, data. */
    json_object_set_new(ev, "timestamp",
                        json_pack("{s:I, s:I}", "seconds",
                                  (json_int_t)ts.tv_sec, "microseconds",
                                  (json_int_t)(ts.tv_nsec / 1000)));
    json_object_set_new(ev, "event", json_string(name));
    if (data) {
        json_object_set_new(ev, "data", data);
    }
    return ev;
}

void
qmp_event_send(const char *name, json_t *data)
{
    qmp_event_sink_fn *sink = __atomic_load_n(&g_sink, __ATOMIC_ACQUIRE);

    if (!sink) {
        json_decref(data);
        return;
    }
    sink(qmp_event_build(name, data));
}
