/* SPDX-License-Identifier: MIT */
/*
 * Runtime events as QMP messages (see qmp-event.h).  Members keep the
 * order in which the emitter added them, which is QEMU's; the message is
 * written with JSON_PRESERVE_ORDER.
 */
#include "qmp/qmp-event.h"

json_t *
qmp_event_data(const struct event *ev)
{
    json_t *data = json_object();

    for (size_t i = 0; i < ev->n; i++) {
        const struct event_member *m = &ev->m[i];
        json_t *v = NULL;

        switch (m->type) {
        case EVENT_STR:
            v = json_string(m->v.s);
            break;
        case EVENT_INT:
            v = json_integer((json_int_t)m->v.i);
            break;
        case EVENT_UINT:
            /* JSON numbers here are int64, as QEMU's uint64 members
             * print in practice (sizes and offsets below 2^63). */
            v = json_integer((json_int_t)m->v.u);
            break;
        case EVENT_BOOL:
            v = json_boolean(m->v.b);
            break;
        }
        json_object_set_new(data, m->name, v);
    }
    return data;
}

json_t *
qmp_event_message(const struct event *ev)
{
    json_t *msg = json_object();

    /* QEMU's member order: timestamp, event, data. */
    json_object_set_new(msg, "timestamp",
                        json_pack("{s:I, s:I}", "seconds",
                                  (json_int_t)ev->time.tv_sec, "microseconds",
                                  (json_int_t)(ev->time.tv_nsec / 1000)));
    json_object_set_new(msg, "event", json_string(ev->name));
    if (ev->n) {
        json_object_set_new(msg, "data", qmp_event_data(ev));
    }
    return msg;
}
