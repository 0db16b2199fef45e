/* SPDX-License-Identifier: MIT */
/*
 * Giving the tail of an image file back in the background.
 *
 * After make_empty the metadata counts only a few clusters at the start of
 * the file; the rest is free (refcount 0, nothing on disk points there)
 * but still takes space.  Truncating it is what costs: on tmpfs freeing
 * 256 MiB of pages takes ~35 ms, longer than everything else a
 * replication checkpoint does.  So make_empty only starts a release, and a
 * thread shrinks the file from its end down to "keep" in CHUNK steps.
 *
 * Safety.  A truncate to T destroys whatever lies at or above T.  The
 * driver therefore claims every host range before it writes there (new
 * clusters, refcount blocks, refcount tables: qcow2_release_claim(), with
 * s->lock held, as all allocation is).  A claim raises the floor below
 * which the thread never cuts, and waits while a truncate in flight could
 * reach the range (at most one chunk).  Allocation is lowest-first, so new
 * writes grow from "keep" upwards while the release works downwards; when
 * they meet the release simply ends and the rest stays in the file as free
 * clusters (qemu-img check is clean with those).  Only free clusters are
 * ever cut, and the metadata reset was made stable before the release
 * started, so a crash at any point leaves a consistent image.
 *
 * The thread does not enter the graph: it touches only the file node of
 * its qcow2 node, which outlives it (close finishes the release first).
 * Entering would deadlock against a drained make_empty waiting for it.
 *
 * Locking: r->lock protects the fields below "lock"; it is a leaf under
 * s->lock and the thread never takes s->lock, so callers may wait for the
 * thread while holding s->lock.  thread and running: callers hold s->lock.
 */
#include <pthread.h>

#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

/* Bytes truncated per step: bounds how long a claim can wait (~1 ms on
 * tmpfs) while keeping the number of syscalls small. */
#define CHUNK (8 * MiB)

void
qcow2_release_init(struct qcow2_release *r)
{
    lock_init(&r->lock, LOCK_QCOW2_RELEASE);
    cond_init(&r->cond);
    r->running = false;
    r->cut = UINT64_MAX;
}

void
qcow2_release_destroy(struct qcow2_release *r)
{
    qcow2_release_finish(r, false);
    mutex_destroy(&r->lock);
    cond_destroy(&r->cond);
}

/* Under r->lock: the next truncate target, or end when nothing is left. */
static uint64_t
next_cut(struct qcow2_release *r)
{
    if (r->stop || r->end <= r->floor) {
        return r->end;
    }
    return MAX(r->end > CHUNK ? r->end - CHUNK : 0, r->floor);
}

static void *
release_thread(void *opaque)
{
    struct qcow2_release *r = opaque;
    uint64_t target;

    mutex_lock(&r->lock);
    while ((target = next_cut(r)) < r->end) {
        int ret;

        r->cut = target;
        mutex_unlock(&r->lock);
        /* Best effort, as before: a failure only leaves free space. */
        ret = block_truncate(r->file, target, NULL);
        mutex_lock(&r->lock);
        r->cut = UINT64_MAX;
        if (ret < 0) {
            break;
        }
        r->end = target;
        cond_broadcast(&r->cond);
    }
    r->done = true;
    cond_broadcast(&r->cond);
    mutex_unlock(&r->lock);
    return NULL;
}

void
qcow2_release_start(struct qcow2_release *r, struct block_node *file,
                    uint64_t keep)
{
    int64_t len = block_getlength(file);

    assert(!r->running);
    if (len <= 0 || (uint64_t)len <= keep) {
        return;
    }
    r->file = file;
    r->end = (uint64_t)len;
    r->floor = keep;
    r->cut = UINT64_MAX;
    r->stop = false;
    r->done = false;
    /* One step is cheap enough to take inline, and saves a thread. */
    if (r->end - keep <= CHUNK ||
        pthread_create(&r->thread, NULL, release_thread, r) != 0) {
        block_truncate(file, keep, NULL);
        return;
    }
    r->running = true;
}

void
qcow2_release_finish(struct qcow2_release *r, bool stop)
{
    if (!r->running) {
        return;
    }
    mutex_lock(&r->lock);
    r->stop = r->stop || stop;
    while (!r->done) {
        cond_wait(&r->cond, &r->lock);
    }
    mutex_unlock(&r->lock);
    thread_join(r->thread);
    r->running = false;
}

void
qcow2_release_claim(struct qcow2_release *r, uint64_t end)
{
    if (!r->running) {
        return;
    }
    mutex_lock(&r->lock);
    r->floor = MAX(r->floor, end);
    /* A truncate in flight to r->cut destroys [r->cut, ...). */
    while (r->cut < end) {
        cond_wait(&r->cond, &r->lock);
    }
    mutex_unlock(&r->lock);
}
