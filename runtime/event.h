/* SPDX-License-Identifier: MIT */
/*
 * Events: news for whoever listens (the QMP monitor's clients, a test).
 *
 * An event is a name and an ordered list of typed members (QEMU's event
 * "data", in QEMU's member order), stamped with the wall-clock time it was
 * made.  Any layer builds one and emits it; the program installs the sink
 * that receives them: the QMP monitor turns them into QMP messages
 * (qmp/event.c), a test records them, a program without a sink drops
 * them.  There is no JSON here: that is the monitor's business.
 *
 *     struct event *ev = event_new("BLOCK_EXPORT_DELETED");
 *     event_add_str(ev, "id", exp->id);
 *     event_emit(ev);
 *
 * Threads: any thread may build and emit events.  Emit with no lock held
 * where you can: the sink runs on the emitting thread.  Sinks take only
 * leaf locks, so an event may be emitted under a driver's own lock when
 * it cannot wait (qcow2's BLOCK_IMAGE_CORRUPTED, under the metadata
 * lock), never under a leaf lock.  Events made under a lock that
 * orders them (a job's status changes) go through an event_queue, which
 * emits them after the lock is dropped, in the order they were made.
 */
#ifndef LOCKSTEP_RUNTIME_EVENT_H
#define LOCKSTEP_RUNTIME_EVENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <time.h>

#include "lock.h"

enum event_type {
    EVENT_STR,
    EVENT_INT,
    EVENT_UINT,
    EVENT_BOOL,
};

struct event_member {
    const char *name;           /* a string constant */
    enum event_type type;
    union {
        char *s;                /* owned by the event */
        int64_t i;
        uint64_t u;
        bool b;
    } v;
};

/* More than any event has; event_add_*() asserts. */
#define EVENT_MAX_MEMBERS 8

struct event {
    const char *name;           /* a string constant: "JOB_STATUS_CHANGE" */
    struct timespec time;       /* CLOCK_REALTIME at event_new() */
    size_t n;
    struct event_member m[EVENT_MAX_MEMBERS];
    uint64_t seq;               /* event_queue's */
    STAILQ_ENTRY(event) link;   /* event_queue's */
};

/* A new event without members; name must outlive it (a constant). */
struct event *event_new(const char *name);
/* Append a member (name a constant; a string value is copied). */
void event_add_str(struct event *ev, const char *name, const char *value);
void event_add_int(struct event *ev, const char *name, int64_t value);
void event_add_uint(struct event *ev, const char *name, uint64_t value);
void event_add_bool(struct event *ev, const char *name, bool value);
/* The member called name, or NULL (for sinks and tests). */
const struct event_member *event_member(const struct event *ev,
                                        const char *name);
void event_free(struct event *ev);

/*
 * Give ev to the sink, then free it.  Any thread, no leaf lock held (see
 * above): the sink runs here, on this thread.
 */
void event_emit(struct event *ev);

/*
 * The sink gets every emitted event (borrowed: copy what you keep).  It
 * runs on the emitting thread, so it must be thread-safe, must not block
 * for long and must not emit events itself.  One sink at a time; NULL
 * drops events.  Set it before events may flow (start-up, a test's
 * setup) and clear it when they no longer can: emitters read it without
 * a lock, so a sink being cleared may still be called by a thread that
 * read it just before.
 */
typedef void event_sink_fn(const struct event *ev);
void event_set_sink(event_sink_fn *fn);

/*
 * Events that must reach the sink in the order in which they were made,
 * when they are made under a lock (a job's status changes, from the main
 * thread and the job's thread): push them while holding that lock, flush
 * after dropping it.  Whoever flushes first emits everything queued, in
 * order, with no lock held; a flush that finds another thread emitting
 * waits until the events queued before it are out, so that when it
 * returns the caller's events have reached the sink (an event caused by a
 * QMP command is out before the command's response).
 *
 * Locking: q->lock is a leaf (taken under the caller's lock by push,
 * never held while emitting).
 */
struct event_queue {
    struct lock lock;
    pthread_cond_t cond;                /* emitted moved, or flusher left */
    STAILQ_HEAD(, event) list;          /* Protected by: lock */
    uint64_t pushed;                    /* Protected by: lock */
    uint64_t emitted;                   /* Protected by: lock */
    bool flushing;                      /* Protected by: lock */
};
#define EVENT_QUEUE_INITIALIZER(q)                                           \
    { LOCK_INITIALIZER(EVENT_QUEUE), PTHREAD_COND_INITIALIZER,                  \
      STAILQ_HEAD_INITIALIZER((q).list), 0, 0, false }

void event_queue_push(struct event_queue *q, struct event *ev);
/* Emit what was pushed so far (and wait for a concurrent flusher to get
 * there).  Call with no lock held. */
void event_queue_flush(struct event_queue *q);

#endif
