/* SPDX-License-Identifier: MIT */
/*
 * Events and their sink (see event.h).
 *
 * Design notes.  The sink is one function pointer, read with an acquire
 * load on every emit, so emitting takes no lock.  An event_queue keeps
 * the order of events made under a caller's lock without emitting under
 * it: push numbers the events (under the caller's lock, so numbers follow
 * the order of the changes), and a single flusher at a time pops and
 * emits them with q->lock dropped around each sink call.  Other flushers
 * wait on q->cond until "emitted" reaches what they pushed; they never
 * wait for anything but the flusher's sink calls, which are short.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/event.h"
#include "util.h"

/* Set on the main thread, read from any thread. */
static event_sink_fn *g_sink;

struct event *
event_new(const char *name)
{
    struct event *ev = xzalloc(sizeof(*ev));

    ev->name = name;
    clock_gettime(CLOCK_REALTIME, &ev->time);
    return ev;
}

static struct event_member *
add(struct event *ev, const char *name, enum event_type type)
{
    struct event_member *m;

    assert(ev->n < EVENT_MAX_MEMBERS);
    m = &ev->m[ev->n++];
    m->name = name;
    m->type = type;
    return m;
}

void
event_add_str(struct event *ev, const char *name, const char *value)
{
    add(ev, name, EVENT_STR)->v.s = xstrdup(value);
}

void
event_add_int(struct event *ev, const char *name, int64_t value)
{
    add(ev, name, EVENT_INT)->v.i = value;
}

void
event_add_uint(struct event *ev, const char *name, uint64_t value)
{
    add(ev, name, EVENT_UINT)->v.u = value;
}

void
event_add_bool(struct event *ev, const char *name, bool value)
{
    add(ev, name, EVENT_BOOL)->v.b = value;
}

const struct event_member *
event_member(const struct event *ev, const char *name)
{
    for (size_t i = 0; i < ev->n; i++) {
        if (!strcmp(ev->m[i].name, name)) {
            return &ev->m[i];
        }
    }
    return NULL;
}

void
event_free(struct event *ev)
{
    if (!ev) {
        return;
    }
    for (size_t i = 0; i < ev->n; i++) {
        if (ev->m[i].type == EVENT_STR) {
            free(ev->m[i].v.s);
        }
    }
    free(ev);
}

void
event_set_sink(event_sink_fn *fn)
{
    __atomic_store_n(&g_sink, fn, __ATOMIC_RELEASE);
}

void
event_emit(struct event *ev)
{
    event_sink_fn *sink = __atomic_load_n(&g_sink, __ATOMIC_ACQUIRE);

    if (sink) {
        sink(ev);
    }
    event_free(ev);
}

void
event_queue_push(struct event_queue *q, struct event *ev)
{
    mutex_lock(&q->lock);
    ev->seq = ++q->pushed;
    STAILQ_INSERT_TAIL(&q->list, ev, link);
    mutex_unlock(&q->lock);
}

void
event_queue_flush(struct event_queue *q)
{
    uint64_t target;

    mutex_lock(&q->lock);
    target = q->pushed;
    while (q->emitted < target) {
        struct event *ev;

        if (q->flushing) {
            /* Another thread emits; it gets to ours in order. */
            cond_wait(&q->cond, &q->lock);
            continue;
        }
        q->flushing = true;
        while ((ev = STAILQ_FIRST(&q->list))) {
            uint64_t seq = ev->seq;

            STAILQ_REMOVE_HEAD(&q->list, link);
            mutex_unlock(&q->lock);
            event_emit(ev);
            mutex_lock(&q->lock);
            q->emitted = seq;
            cond_broadcast(&q->cond);
        }
        q->flushing = false;
        cond_broadcast(&q->cond);
    }
    mutex_unlock(&q->lock);
}
