/* SPDX-License-Identifier: MIT */
/*
 * Two jobs on one engine: block-commit (QEMU's arguments) and
 * x-replication-resync (ours).
 *
 * The engine copies "the dirty ranges of a bitmap" from a source view to a
 * destination node and converges:
 *   - job thread: take the next dirty area (at most one chunk), clear its
 *     bits, read it from the source, write it to the destination; repeat
 *     until the bitmap is clean.  A bit is cleared before the read and the
 *     block layer sets bits after a write completes, so a write that races
 *     with a copy always leaves its bit set and is copied again later.
 *   - main thread, drained (prepare): copy what is still dirty, flush the
 *     destination, then the job's graph change.  No write can slip in
 *     between the last copy and the graph change.
 *
 * block-commit.
 *   device: a node; its first non-filter node is the active layer.
 *   top-node/top (default: the active layer) and base-node/base (default:
 *   the bottom of the chain) name nodes of the active layer's backing
 *   chain, base below top.  (QEMU also takes file names in top/base; here
 *   a node-name is tried first, then the "filename" of the node's file.)
 *   At creation (drained) the base is made writable (reopen) and an
 *   anonymous bitmap on top records writes; the job thread first marks
 *   every range allocated in top or a layer between top and base, then
 *   copies.
 *   Intermediate commit (top is not the active layer): nothing writes top,
 *   so one pass empties the bitmap; the job then completes by itself and
 *   prepare points the backing edge of top's overlay at base.
 *   Active commit (top is the active layer): the guest keeps writing top.
 *   When the bitmap is first clean the job goes ready (BLOCK_JOB_READY)
 *   and keeps mirroring new writes (it polls the bitmap) until
 *   job-complete; prepare then copies the rest under drain and replaces
 *   top by base for all of top's parents (exports included).  Cancel
 *   (ready or not) leaves the graph as it was and ends the job as
 *   cancelled (BLOCK_JOB_CANCELLED; QEMU reports a cancel in ready as
 *   BLOCK_JOB_COMPLETED).
 *   Not done: the overlay's image header keeps naming the old backing
 *   file (backing-file is accepted and ignored); filter-node-name is
 *   accepted, but no filter node is inserted (the bitmap does its work).
 *
 * x-replication-resync (docs/replication.md "Resync").  device is the
 * primary's quorum (or local disk) holding the dirty bitmap (default
 * "replication-resync", kept by the replication driver while the
 * secondary is missing); target is the node that reaches the returning
 * secondary (its NBD client).  The job copies the bitmap's ranges from
 * device to target, converges like active commit, and in prepare
 * copies the rest, clears the bitmap and disables it again; the target
 * being remote, that last copy writes outside the drain (resync_finish()).
 * The bitmap is busy while the job runs.
 *
 * The replication failover (docs/replication.md; replication_stop_all()
 * with failover on a secondary) is the same job as an intermediate
 * commit, with the replication driver's steps around it
 * (block/filter/replication.h): top is the active disk, the layers are
 * the active and hidden disks, the destination is the secondary disk; the
 * job completes by itself when its bitmap is clean, and prepare, drained
 * after the last copy, lets the driver point its file edge at the
 * secondary disk (replication_failover_finish()).  A failed or cancelled
 * job leaves the node in stage FAILOVER_FAILED.  The job's id is
 * "failover-NODE" (NODE: the replication node), its type "commit"; it
 * holds only operation blockers (the driver's edges already take what the
 * copy needs).  lockstep-img commit runs the block-commit job
 * (commit_start()) on the tool's own main loop.
 *
 * Permissions (QEMU's, see hold_graph()): the job holds handles on the
 * nodes it uses, released before prepare changes the graph and at the
 * end: they keep other jobs, block_resize and blockdev-del off those
 * nodes, refuse resizing to everyone, and refuse writing base to others
 * and (intermediate commit) reading the layers above base, whose view
 * changes as base is written.  The links from above the committed range
 * down to base are frozen meanwhile (blockdev-reopen cannot point them
 * elsewhere), as QEMU freezes the backing chain.
 *
 * Threads and locks: the fields of struct commit_job are set on the main
 * thread before the job thread starts; should_complete is atomic; the
 * bitmaps have their own lock.  I/O of the job thread runs inside the
 * graph (block_graph_enter) one chunk at a time, and never sleeps there.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/filter/replication.h"
#include "job/commit.h"
#include "job/job.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "runtime/loop.h"
#include "util.h"

#define COMMIT_CHUNK (1024 * 1024)
/* How often a ready job looks for new writes. */
#define COMMIT_POLL_NS (5LL * 1000 * 1000)
#define COMMIT_MAX_CHAIN 64
#define RESYNC_BITMAP "replication-resync"
/* The most x-replication-resync's last pass holds in memory at once; with
 * more dirty, it first copies undrained down to half of it. */
#define RESYNC_HOLD_MAX (64 * 1024 * 1024)
/* Rounds of the last pass before it gives up on a guest that keeps
 * rewriting the very ranges it copies. */
#define RESYNC_MAX_ROUNDS 16

enum commit_kind {
    COMMIT_INTERMEDIATE,
    COMMIT_ACTIVE,
    COMMIT_RESYNC,
    COMMIT_FAILOVER,
};

struct commit_job {
    struct job job;
    enum commit_kind kind;
    struct block_node *src;       /* read from (ref) */
    struct block_node *dst;       /* written (ref) */
    struct block_node *top;       /* commit: top (ref) */
    struct block_node *overlay;   /* intermediate: top's overlay (ref) */
    struct block_node *rep;       /* failover: the replication node (ref) */
    /* commit: layers whose data is copied, top first */
    struct block_node *layers[COMMIT_MAX_CHAIN];
    int nlayers;
    struct block_dirty_bitmap *bm;
    bool own_bitmap;              /* anonymous, released at the end */
    bool base_was_read_only;
    enum job_on_error on_error;
    uint64_t len;
    void *buf;
    int should_complete;          /* atomic */
    /* What the job holds on the graph (see "Permissions"), until the
     * graph change of prepare or the end.  Main thread. */
    struct block_handle *handles[COMMIT_MAX_CHAIN + 4];
    int nhandles;
    struct block_child *fixed;    /* the edge above the committed range */
    /* The links from above the committed range down to base, frozen. */
    struct block_child *frozen[COMMIT_MAX_CHAIN + 1];
    int nfrozen;
};

/* Release what the job holds; before any graph change of its own. */
static void
release_graph(struct commit_job *s)
{
    while (s->nhandles > 0) {
        block_handle_free(s->handles[--s->nhandles]);
    }
    if (s->fixed) {
        block_child_unfix_perm(s->fixed);
        s->fixed = NULL;
    }
    while (s->nfrozen > 0) {
        s->frozen[--s->nfrozen]->frozen = false;
    }
}

/* Freeze the links from c down to base (QEMU's frozen backing chain): the
 * job's graph change at the end relies on them. */
static bool
freeze_chain(struct commit_job *s, struct block_child *c,
             struct block_node *base, struct err **errp)
{
    while (c) {
        if (s->nfrozen == (int)ARRAY_SIZE(s->frozen)) {
            err_setf(errp, "Backing chain too long");
            return false;
        }
        c->frozen = true;
        s->frozen[s->nfrozen++] = c;
        if (c->node == base) {
            break;
        }
        c = c->node->drv->kind == BLOCK_KIND_FILTER ? c->node->file
                                                    : c->node->backing;
    }
    return true;
}

/* A job's handle (is_job) or a block backend of the job's on node. */
static bool
hold(struct commit_job *s, bool is_job, struct block_node *node,
     const char *role, uint32_t perm, uint32_t shared, struct err **errp)
{
    CLEANUP_FREE char *owner = NULL;
    struct block_handle *h;

    if (s->nhandles == (int)ARRAY_SIZE(s->handles)) {
        err_setf(errp, "Backing chain too long");
        return false;
    }
    if (is_job) {
        h = block_handle_new_job(node, s->job.drv->type, s->job.id, role,
                                 perm, shared, errp);
    } else {
        owner = xasprintf("%s job '%s'", s->job.drv->type, s->job.id);
        h = block_handle_new(node, owner, perm, shared, errp);
    }
    if (!h) {
        return false;
    }
    s->handles[s->nhandles++] = h;
    return true;
}

static bool
hold_job(struct commit_job *s, struct block_node *node, const char *role,
         uint32_t perm, uint32_t shared, struct err **errp)
{
    return hold(s, true, node, role, perm, shared, errp);
}

static bool
hold_backend(struct commit_job *s, struct block_node *node, uint32_t perm,
             uint32_t shared, struct err **errp)
{
    return hold(s, false, node, NULL, perm, shared, errp);
}

/* The next node down a chain: a filter's child or a format's backing. */
static struct block_node *
chain_next(struct block_node *n)
{
    struct block_node *f = block_filtered(n);

    return f ? f : (n->backing ? n->backing->node : NULL);
}

#define PERM_WRITES (BLOCK_PERM_WRITE | BLOCK_PERM_WRITE_UNCHANGED)

/*
 * QEMU's permissions for block-commit (commit_start) and active commit
 * (mirror's commit_active_start); the job's node edges also keep other
 * jobs, block_resize and blockdev-del off the nodes.  QEMU puts a filter
 * above the committed range (commit_top, mirror_top) whose edge below
 * takes nothing; here the overlay's backing edge is fixed that way
 * instead, so that the intermediate nodes may refuse "consistent read":
 * their content changes as base is written.
 */
static bool
hold_graph(struct commit_job *s, struct block_node *dev,
           struct block_node *base, struct err **errp)
{
    struct block_node *top = s->top;
    struct block_child *above = s->kind == COMMIT_ACTIVE ? top->backing
                                                         : s->overlay->backing;
    bool active = s->kind == COMMIT_ACTIVE;

    if (!hold_job(s, active ? top : dev, "main node",
                  active ? BLOCK_PERM_CONSISTENT_READ : 0,
                  active ? BLOCK_PERM_CONSISTENT_READ | PERM_WRITES
                         : BLOCK_PERM_ALL, errp)) {
        return false;
    }
    if (block_child_fix_perm(above, 0, BLOCK_PERM_ALL, errp) < 0) {
        return false;
    }
    s->fixed = above;
    if (!freeze_chain(s, above, base, errp)) {
        return false;
    }
    if (active && !hold_backend(s, base, BLOCK_PERM_WRITE,
                                BLOCK_PERM_CONSISTENT_READ | PERM_WRITES,
                                errp)) {
        return false;
    }
    for (struct block_node *n = active ? chain_next(top) : top;
         n && n != base; n = chain_next(n)) {
        uint32_t shared = PERM_WRITES;

        /* Filters right above base read what base holds. */
        if (!active && block_skip_filters(n) == base) {
            shared |= BLOCK_PERM_CONSISTENT_READ;
        }
        if (!hold_job(s, n, "intermediate node", 0, shared, errp)) {
            return false;
        }
    }
    if (active) {
        return hold_job(s, base, "target", 0, BLOCK_PERM_ALL, errp);
    }
    return hold_job(s, base, "base", 0, BLOCK_PERM_ALL, errp) &&
           hold_backend(s, base, BLOCK_PERM_CONSISTENT_READ |
                        BLOCK_PERM_WRITE,
                        BLOCK_PERM_CONSISTENT_READ |
                        BLOCK_PERM_WRITE_UNCHANGED, errp) &&
           hold_backend(s, top, 0, BLOCK_PERM_ALL, errp);
}

/* x-replication-resync: read device, write target (as mirror would). */
static bool
hold_resync(struct commit_job *s, struct err **errp)
{
    return hold_job(s, s->src, "main node", BLOCK_PERM_CONSISTENT_READ,
                    BLOCK_PERM_CONSISTENT_READ | PERM_WRITES, errp) &&
           hold_backend(s, s->dst, BLOCK_PERM_WRITE,
                        BLOCK_PERM_CONSISTENT_READ | PERM_WRITES, errp) &&
           hold_job(s, s->dst, "target", 0, BLOCK_PERM_ALL, errp);
}

static void
commit_free_bitmap(struct commit_job *s)
{
    if (!s->bm) {
        return;
    }
    block_drain_begin();
    if (s->own_bitmap) {
        block_dirty_bitmap_release(s->bm);
    } else {
        block_dirty_bitmap_set_busy(s->bm, false);
    }
    block_drain_end();
    s->bm = NULL;
}

/*
 * Copy [off, off + bytes) from src to dst; is_read tells which failed.
 * Zeroes stay sparse (the failover wrote them so before): runs of whole
 * ZERO_GRAIN pieces go as zero writes, which an active commit lets unmap
 * (a base under discard=unmap frees those clusters, as QEMU's mirror).
 */
#define ZERO_GRAIN (64 * 1024)

static int
copy_area(struct commit_job *s, uint64_t off, uint64_t bytes, bool *is_read)
{
    unsigned zflags = s->kind == COMMIT_ACTIVE ? BLOCK_REQ_MAY_UNMAP : 0;
    const uint8_t *buf = s->buf;
    int ret = block_pread(s->src, off, bytes, s->buf, 0);

    if (ret < 0) {
        *is_read = true;
        return ret;
    }
    for (uint64_t done = 0, len; done < bytes && ret == 0; done += len) {
        bool zero = buffer_is_zero(buf + done, MIN(ZERO_GRAIN, bytes - done));

        len = MIN(ZERO_GRAIN, bytes - done);
        while (done + len < bytes &&
               buffer_is_zero(buf + done + len,
                              MIN(ZERO_GRAIN, bytes - done - len)) == zero) {
            len += MIN(ZERO_GRAIN, bytes - done - len);
        }
        ret = zero ? block_pwrite_zeroes(s->dst, off + done, len, zflags)
                   : block_pwrite(s->dst, off + done, len, buf + done, 0);
    }
    if (ret < 0) {
        *is_read = false;
    }
    return ret;
}

static bool
in_layers(struct commit_job *s, struct block_node *n)
{
    for (int i = 0; i < s->nlayers; i++) {
        if (s->layers[i] == n) {
            return true;
        }
    }
    return false;
}

/* Mark what top and the layers down to (not including) base define. */
static int
mark_allocated(struct commit_job *s)
{
    uint64_t off = 0;

    while (off < s->len) {
        struct block_status_info info;
        uint64_t pnum = 0;
        int ret;

        job_pause_point(&s->job);
        if (job_is_cancelled(&s->job)) {
            return 0;
        }
        block_graph_enter();
        ret = block_status(s->top, off, MIN(s->len - off, 1ULL << 30), &pnum,
                           &info);
        block_graph_leave();
        if (ret < 0) {
            return ret;
        }
        if (info.node && in_layers(s, info.node)) {
            block_dirty_bitmap_set(s->bm, off, pnum);
        }
        off += pnum;
    }
    return 0;
}

/* One dirty chunk: 1 when copied, 0 when the bitmap is clean, -errno. */
static int
copy_next(struct commit_job *s, bool *is_read)
{
    uint64_t aoff, abytes;
    int ret;

    if (!block_dirty_bitmap_next_dirty_area(s->bm, 0, s->len, COMMIT_CHUNK,
                                            &aoff, &abytes)) {
        return 0;
    }
    if (aoff + abytes > s->len) {
        abytes = s->len - aoff;
    }
    block_dirty_bitmap_reset(s->bm, aoff, abytes);
    block_graph_enter();
    ret = copy_area(s, aoff, abytes, is_read);
    block_graph_leave();
    if (ret < 0) {
        block_dirty_bitmap_set(s->bm, aoff, abytes);
        return ret;
    }
    job_progress_update(&s->job, abytes);
    if (s->job.speed) {
        job_sleep_ns(&s->job, (int64_t)(abytes * 1000000000ULL /
                                        s->job.speed));
    }
    return 1;
}

static int
commit_run(struct job *job, struct err **errp)
{
    struct commit_job *s = container_of(job, struct commit_job, job);
    bool ready = false;
    int ret;

    (void)errp;
    job_settled(job);
    if (s->kind != COMMIT_RESYNC) {
        ret = mark_allocated(s);
        if (ret < 0) {
            return ret;
        }
    }
    for (;;) {
        bool is_read = false;

        job_pause_point(job);
        if (job_is_cancelled(job)) {
            return 0;
        }
        job_progress_set_remaining(job, block_dirty_bitmap_count(s->bm));
        ret = copy_next(s, &is_read);
        if (ret < 0) {
            if (job_error_action(job, s->on_error, is_read, -ret) ==
                JOB_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;
        }
        if (ret > 0) {
            continue;
        }
        /* Clean.  Flush the bulk here, in the job's thread: the drained
         * flush of prepare, on the main thread, then has little to do. */
        if (!ready) {
            block_graph_enter();
            ret = block_flush(s->dst);
            block_graph_leave();
            if (ret < 0 &&
                job_error_action(job, s->on_error, false, -ret) ==
                JOB_ERROR_ACTION_REPORT) {
                return ret;
            }
            if (ret < 0) {
                continue;
            }
        }
        if (s->kind != COMMIT_ACTIVE) {
            return 0;
        }
        if (!ready) {
            job_transition_to_ready(job);
            ready = true;
        }
        if (__atomic_load_n(&s->should_complete, __ATOMIC_ACQUIRE)) {
            return 0;
        }
        job_sleep_ns(job, COMMIT_POLL_NS);
    }
}

static void
commit_complete(struct job *job, struct err **errp)
{
    struct commit_job *s = container_of(job, struct commit_job, job);

    (void)errp;
    __atomic_store_n(&s->should_complete, 1, __ATOMIC_RELEASE);
    job_kick(job);
}

static void
commit_cancel(struct job *job, bool force)
{
    (void)force;
    job_kick(job);
}

/* Drained: copy what is left; 0 or -errno. */
static int
copy_rest(struct commit_job *s)
{
    uint64_t off = 0, aoff, abytes;

    while (off < s->len &&
           block_dirty_bitmap_next_dirty_area(s->bm, off, s->len - off,
                                              COMMIT_CHUNK, &aoff, &abytes)) {
        bool is_read;
        int ret;

        if (aoff + abytes > s->len) {
            abytes = s->len - aoff;
        }
        ret = copy_area(s, aoff, abytes, &is_read);
        if (ret < 0) {
            return ret;
        }
        block_dirty_bitmap_reset(s->bm, aoff, abytes);
        off = aoff + abytes;
    }
    return block_flush(s->dst);
}

/*
 * x-replication-resync's last pass.  Its target reaches a remote peer, so
 * it is never written drained (every guest request would wait on the
 * peer).  In rounds: drained, the dirty ranges are read from the device
 * (the local disk) into memory and their bits cleared, the bitmap still
 * recording; undrained, they are written to the target and it is flushed.
 * A guest write meanwhile reaches the target by itself (the new
 * replication node is in the quorum, docs/replication.md "Resync"), but
 * where it overlaps a range written here, the older held data may have
 * landed after it: its bit says so, and the next round copies those
 * ranges again.  A drained look that finds no bit in the ranges written
 * last ends it: the bitmap is cleared and disabled there.
 */
struct held_range {
    uint64_t off, bytes;
    void *buf;
};

struct held {
    struct held_range *r;
    size_t n;
};

static void
held_free(struct held *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->r[i].buf);
    }
    free(h->r);
    h->r = NULL;
    h->n = 0;
}

/* The held ranges' bits again (their data may not be on the target). */
static void
held_redirty(struct commit_job *s, const struct held *h)
{
    for (size_t i = 0; i < h->n; i++) {
        block_dirty_bitmap_set(s->bm, h->r[i].off, h->r[i].bytes);
    }
}

/* Drained: read the dirty areas of [off, off + bytes) into h and clear
 * their bits.  0 or -errno (a read failed; h keeps what it has). */
static int
hold_dirty_in(struct commit_job *s, uint64_t off, uint64_t bytes,
              struct held *h)
{
    uint64_t end = off + bytes, aoff, abytes;

    while (off < end &&
           block_dirty_bitmap_next_dirty_area(s->bm, off, end - off,
                                              COMMIT_CHUNK, &aoff, &abytes)) {
        struct held_range r = { aoff, MIN(abytes, s->len - aoff), NULL };
        int ret;

        r.buf = xmalloc(r.bytes);
        ret = block_pread(s->src, r.off, r.bytes, r.buf, 0);
        if (ret < 0) {
            free(r.buf);
            return ret;
        }
        block_dirty_bitmap_reset(s->bm, r.off, r.bytes);
        h->r = xrealloc(h->r, (h->n + 1) * sizeof(*h->r));
        h->r[h->n++] = r;
        off = aoff + abytes;
    }
    return 0;
}

/* Undrained: write what h holds to the target, then flush it. */
static int
write_held(struct commit_job *s, const struct held *h)
{
    int ret = 0;

    block_graph_enter();
    for (size_t i = 0; i < h->n && ret >= 0; i++) {
        const struct held_range *r = &h->r[i];

        ret = buffer_is_zero(r->buf, r->bytes)
              ? block_pwrite_zeroes(s->dst, r->off, r->bytes, 0)
              : block_pwrite(s->dst, r->off, r->bytes, r->buf, 0);
    }
    if (ret >= 0) {
        ret = block_flush(s->dst);
    }
    block_graph_leave();
    return ret;
}

/* Undrained: copy until at most half of RESYNC_HOLD_MAX is dirty. */
static int
copy_down(struct commit_job *s)
{
    uint64_t aoff, abytes;

    while (block_dirty_bitmap_count(s->bm) > RESYNC_HOLD_MAX / 2 &&
           block_dirty_bitmap_next_dirty_area(s->bm, 0, s->len, COMMIT_CHUNK,
                                              &aoff, &abytes)) {
        bool is_read;
        int ret;

        abytes = MIN(abytes, s->len - aoff);
        block_dirty_bitmap_reset(s->bm, aoff, abytes);
        block_graph_enter();
        ret = copy_area(s, aoff, abytes, &is_read);
        block_graph_leave();
        if (ret < 0) {
            block_dirty_bitmap_set(s->bm, aoff, abytes);
            return ret;
        }
    }
    return 0;
}

static int
resync_finish(struct commit_job *s, struct err **errp)
{
    struct held last = { NULL, 0 }, next = { NULL, 0 };
    bool first = true;      /* nothing held yet: take every dirty bit */
    int ret = 0;

    for (int round = 0; round < RESYNC_MAX_ROUNDS; round++) {
        block_drain_begin();
        if (first && block_dirty_bitmap_count(s->bm) > RESYNC_HOLD_MAX) {
            block_drain_end();
            ret = copy_down(s);
            if (ret < 0) {
                break;
            }
            continue;
        }
        if (first) {
            ret = hold_dirty_in(s, 0, s->len, &next);
            first = false;
        }
        for (size_t i = 0; i < last.n && ret >= 0; i++) {
            ret = hold_dirty_in(s, last.r[i].off, last.r[i].bytes, &next);
        }
        if (ret < 0) {
            held_redirty(s, &next);
            block_drain_end();
            break;
        }
        if (next.n == 0) {
            block_dirty_bitmap_clear(s->bm);
            block_dirty_bitmap_disable(s->bm);
            block_drain_end();
            held_free(&last);
            return 0;
        }
        block_drain_end();
        held_free(&last);
        last = next;
        next = (struct held) { NULL, 0 };
        ret = write_held(s, &last);
        if (ret < 0) {
            break;
        }
    }
    held_redirty(s, &last);
    held_free(&last);
    held_free(&next);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not copy the last changes to '%s'",
                       s->dst->node_name);
        return ret;
    }
    err_setf(errp, "The guest kept rewriting what the resync copied to "
             "'%s'; run x-replication-resync again", s->dst->node_name);
    return -EBUSY;
}

static int
commit_prepare(struct job *job, struct err **errp)
{
    struct commit_job *s = container_of(job, struct commit_job, job);
    int ret;

    if (s->kind == COMMIT_RESYNC) {
        ret = resync_finish(s, errp);
        if (ret < 0) {
            return ret;
        }
    }
    block_drain_begin();
    ret = s->kind == COMMIT_RESYNC ? 0 : copy_rest(s);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not copy the last changes to '%s'",
                       s->dst->node_name);
        block_drain_end();
        return ret;
    }
    /* The job's hold on the graph goes first: the new edges must not
     * conflict with it (QEMU drops its base backend here too). */
    release_graph(s);
    switch (s->kind) {
    case COMMIT_INTERMEDIATE:
        ret = block_child_replace_node(s->overlay->backing, s->dst, errp);
        break;
    case COMMIT_ACTIVE:
        ret = block_replace_node(s->top, s->dst, errp);
        break;
    case COMMIT_RESYNC:
        /* resync_finish() cleared and disabled the bitmap. */
        ret = 0;
        break;
    case COMMIT_FAILOVER:
        ret = replication_failover_finish(s->rep, errp);
        break;
    }
    block_drain_end();
    return ret;
}

/* The failover did not finish: the node says so, and may try again. */
static void
failover_abort(struct job *job)
{
    struct commit_job *s = container_of(job, struct commit_job, job);

    replication_failover_failed(s->rep, job->ret < 0 ? job->ret
                                                     : -ECANCELED);
}

static void
commit_clean(struct job *job)
{
    struct commit_job *s = container_of(job, struct commit_job, job);

    release_graph(s);
    commit_free_bitmap(s);
    if (s->kind == COMMIT_INTERMEDIATE && s->base_was_read_only) {
        struct err *local = NULL;

        /* Best effort, as before the job. */
        if (block_node_set_read_only(s->dst, true, &local) < 0) {
            err_free(local);
        }
        s->base_was_read_only = false;
    }
}

static void
commit_free(struct job *job)
{
    struct commit_job *s = container_of(job, struct commit_job, job);

    commit_clean(job);
    if (s->src) {
        block_node_unref(s->src);
    }
    if (s->dst) {
        block_node_unref(s->dst);
    }
    if (s->top) {
        block_node_unref(s->top);
    }
    if (s->overlay) {
        block_node_unref(s->overlay);
    }
    if (s->rep) {
        block_node_unref(s->rep);
    }
    free(s->buf);
}

static const struct job_driver commit_driver = {
    .type = "commit",
    .instance_size = sizeof(struct commit_job),
    .run = commit_run,
    .cancel = commit_cancel,
    .complete = commit_complete,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
};

/* Resync never goes ready; same engine, own type name. */
static const struct job_driver resync_driver = {
    .type = "replication-resync",
    .instance_size = sizeof(struct commit_job),
    .run = commit_run,
    .cancel = commit_cancel,
    .prepare = commit_prepare,
    .clean = commit_clean,
    .free = commit_free,
};

/* The replication failover: an intermediate commit that ends by itself,
 * then hands the graph change to the replication driver. */
static const struct job_driver failover_driver = {
    .type = "commit",
    .instance_size = sizeof(struct commit_job),
    .run = commit_run,
    .cancel = commit_cancel,
    .prepare = commit_prepare,
    .abort = failover_abort,
    .clean = commit_clean,
    .free = commit_free,
};

/* ---- Starting --------------------------------------------------------- */

/* A layer of the chain from active by node-name, or by file name. */
static struct block_node *
find_in_chain(struct block_node *active, const char *name)
{
    for (struct block_node *n = active; n;
         n = n->backing ? block_skip_filters(n->backing->node) : NULL) {
        const char *f = block_node_filename(n);

        if (strcmp(n->node_name, name) == 0 || (f && strcmp(f, name) == 0)) {
            return n;
        }
    }
    return NULL;
}

/* QEMU commits a root node only: no parent but block backends (exports);
 * a job's main node has the job as a parent. */
static bool
is_root(struct block_node *n)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &n->parents, parent_link) {
        if (!c->parent_handle || c->parent_handle->job_type) {
            return false;
        }
    }
    return true;
}

/* The checks both jobs make after finding their nodes. */
static bool
check_speed(int64_t speed, struct err **errp)
{
    if (speed < 0) {
        err_setf(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    return true;
}

static void
start(struct commit_job *s, int64_t speed)
{
    /* Aligned for nodes opened with O_DIRECT (lockstep-img -t none). */
    if (posix_memalign(&s->buf, 4096, COMMIT_CHUNK) != 0) {
        abort();
    }
    if (speed > 0) {
        job_set_speed(&s->job, speed, NULL);
    }
    job_start(&s->job);
}

bool
commit_start(const struct commit_options *o, struct err **errp)
{
    const char *device = o->device;
    const char *top_name = o->top;
    const char *base_name = o->base;
    struct block_node *dev, *active, *top, *base, *overlay = NULL;
    struct block_node *layers[COMMIT_MAX_CHAIN];
    struct block_dirty_bitmap *bm;
    struct commit_job *s;
    struct job *job;
    int nlayers = 0;
    bool base_ro;
    int64_t len;

    assert_main_thread();
    dev = block_node_find(device);
    if (!dev) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'", device,
                 device);
        return false;
    }
    if (!check_speed(o->speed, errp)) {
        return false;
    }
    if (!is_root(dev)) {
        err_setf(errp, "Need a root block node");
        return false;
    }
    if (block_node_op_blocked(dev, errp)) {
        return false;
    }
    active = block_skip_filters(dev);
    top = top_name ? find_in_chain(active, top_name) : active;
    if (!top) {
        err_setf(errp, "Top image file %s not found", top_name);
        return false;
    }
    if (!top->backing) {
        err_setf(errp, "Top image has no backing file");
        return false;
    }
    if (base_name) {
        base = find_in_chain(block_skip_filters(top->backing->node),
                             base_name);
        if (!base) {
            if (find_in_chain(active, base_name)) {
                err_setf(errp, "Base '%s' is not below top '%s'", base_name,
                         top->node_name);
            } else {
                err_setf(errp, "Can't find '%s' to use as base", base_name);
            }
            return false;
        }
    } else {
        base = block_skip_filters(top->backing->node);
        while (base->backing) {
            base = block_skip_filters(base->backing->node);
        }
    }
    /* Nodes another job uses (QEMU's op blockers), base included. */
    for (struct block_node *n = top; n; n = n == base ? NULL : chain_next(n)) {
        if (block_node_op_blocked(n, errp)) {
            return false;
        }
    }
    for (struct block_node *n = top; n != base;
         n = block_skip_filters(n->backing->node)) {
        if (nlayers == COMMIT_MAX_CHAIN) {
            err_setf(errp, "Backing chain too long");
            return false;
        }
        layers[nlayers++] = n;
    }
    if (top != active) {
        for (struct block_node *n = active; n;
             n = n->backing ? block_skip_filters(n->backing->node) : NULL) {
            if (n->backing && block_skip_filters(n->backing->node) == top) {
                overlay = n;
                break;
            }
        }
        if (!overlay || overlay->backing->node != top) {
            err_setf(errp, "Cannot find the overlay of '%s'", top->node_name);
            return false;
        }
        if (block_node_op_blocked(overlay, errp)) {
            return false;
        }
    }
    len = block_getlength(top);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Unable to get length for '%s'",
                       top->node_name);
        return false;
    }
    if (block_getlength(base) < len) {
        err_setf(errp, "Top '%s' is larger than base '%s': resize the base "
                 "first", top->node_name, base->node_name);
        return false;
    }

    block_drain_begin();
    base_ro = base->read_only;
    if (base_ro && block_node_set_read_only(base, false, errp) < 0) {
        block_drain_end();
        return false;
    }
    bm = block_dirty_bitmap_create(top, NULL, 0, errp);
    if (!bm) {
        goto fail_ro;
    }
    /* QEMU defaults to the device name, which a node does not have. */
    job = job_create(&commit_driver, o->job_id ? o->job_id : "",
                     o->auto_finalize, o->auto_dismiss, errp);
    if (!job) {
        block_dirty_bitmap_release(bm);
        goto fail_ro;
    }
    s = container_of(job, struct commit_job, job);
    s->kind = top == active ? COMMIT_ACTIVE : COMMIT_INTERMEDIATE;
    block_node_ref(top);
    block_node_ref(top);
    block_node_ref(base);
    s->src = top;
    s->top = top;
    s->dst = base;
    if (overlay) {
        block_node_ref(overlay);
        s->overlay = overlay;
    }
    memcpy(s->layers, layers, sizeof(layers[0]) * (size_t)nlayers);
    s->nlayers = nlayers;
    s->bm = bm;
    s->own_bitmap = true;
    s->base_was_read_only = base_ro;
    s->on_error = o->on_error;
    s->len = (uint64_t)len;
    if (!hold_graph(s, dev, base, errp)) {
        block_drain_end();
        job_early_fail(job);
        return false;
    }
    block_drain_end();
    start(s, o->speed);
    return true;

fail_ro:
    if (base_ro) {
        struct err *local = NULL;

        if (block_node_set_read_only(base, true, &local) < 0) {
            err_free(local);
        }
    }
    block_drain_end();
    return false;
}

bool
resync_start(const struct resync_options *o, struct err **errp)
{
    const char *device = o->device;
    const char *target = o->target;
    const char *bitmap = o->bitmap ? o->bitmap : RESYNC_BITMAP;
    struct block_node *src, *dst;
    struct block_dirty_bitmap *bm;
    struct commit_job *s;
    struct job *job;
    int64_t len;

    assert_main_thread();
    src = block_node_find(device);
    if (!src) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'", device,
                 device);
        return false;
    }
    dst = block_node_find(target);
    if (!dst) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'", target,
                 target);
        return false;
    }
    if (src == dst) {
        err_setf(errp, "Source and target cannot be the same");
        return false;
    }
    if (!check_speed(o->speed, errp)) {
        return false;
    }
    if (block_node_op_blocked(src, errp) ||
        block_node_op_blocked(dst, errp)) {
        return false;
    }
    bm = block_dirty_bitmap_lookup(device, bitmap, errp);
    if (!bm || !block_dirty_bitmap_check_writable(bm, errp)) {
        return false;
    }
    len = block_getlength(src);
    if (len < 0 || block_getlength(dst) != len) {
        err_setf(errp, "Source and target image have different sizes");
        return false;
    }
    if (dst->read_only) {
        err_setf(errp, "Node '%s' is read only", dst->node_name);
        return false;
    }
    job = job_create(&resync_driver, o->job_id ? o->job_id : "resync",
                     o->auto_finalize, o->auto_dismiss, errp);
    if (!job) {
        return false;
    }
    s = container_of(job, struct commit_job, job);
    s->kind = COMMIT_RESYNC;
    block_node_ref(src);
    block_node_ref(dst);
    s->src = src;
    s->dst = dst;
    s->on_error = o->on_error;
    s->len = (uint64_t)len;
    if (!hold_resync(s, errp)) {
        job_early_fail(job);
        return false;
    }
    s->bm = bm;
    block_dirty_bitmap_enable(bm);
    block_dirty_bitmap_set_busy(bm, true);
    start(s, o->speed);
    return true;
}

bool
failover_start(struct block_node *node, struct err **errp)
{
    CLEANUP_FREE char *id = xasprintf("failover-%s", node->node_name);
    struct replication_failover f;
    struct block_dirty_bitmap *bm;
    struct commit_job *s;
    struct job *job;
    int64_t len;

    assert_main_thread();
    if (job_find(id)) {
        err_setf(errp, "Job ID '%s' already in use", id);
        return false;
    }
    if (replication_failover_begin(node, &f, errp) < 0) {
        return false;
    }
    len = block_getlength(f.active);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Unable to get length for '%s'",
                       f.active->node_name);
        replication_failover_failed(node, (int)len);
        return false;
    }
    /* From here on every guest write to the active disk is recorded. */
    block_drain_begin();
    bm = block_dirty_bitmap_create(f.active, NULL, 0, errp);
    job = bm ? job_create(&failover_driver, id, true, true, errp) : NULL;
    if (!job) {
        if (bm) {
            block_dirty_bitmap_release(bm);
        }
        block_drain_end();
        replication_failover_failed(node, -ENOMEM);
        return false;
    }
    s = container_of(job, struct commit_job, job);
    s->kind = COMMIT_FAILOVER;
    block_node_ref(node);
    block_node_ref(f.active);
    block_node_ref(f.active);
    block_node_ref(f.secondary);
    s->rep = node;
    s->src = f.active;
    s->top = f.active;
    s->dst = f.secondary;
    s->layers[s->nlayers++] = f.active;
    s->layers[s->nlayers++] = f.hidden;
    s->bm = bm;
    s->own_bitmap = true;
    s->on_error = JOB_ON_ERROR_REPORT;
    s->len = (uint64_t)len;
    if (!hold_job(s, f.active, "main node", 0, BLOCK_PERM_ALL, errp) ||
        !hold_job(s, f.secondary, "target", 0, BLOCK_PERM_ALL, errp)) {
        block_drain_end();
        job_early_fail(job);
        replication_failover_failed(node, -EPERM);
        return false;
    }
    block_drain_end();
    start(s, 0);
    return true;
}
