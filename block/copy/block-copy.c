/* SPDX-License-Identifier: MIT */
/*
 * block-copy: copy dirty clusters from a source node to a target node,
 * each cluster once, for copy-before-write and the backup job.
 *
 * Design notes.
 *
 * State: a copy bitmap (one bit per cluster, "still to copy") and a list of
 * tasks in flight.  A task is a run of whole clusters that one caller is
 * copying; its bits are cleared when the task is created, so nobody else
 * takes those clusters, and set again if the task fails.  A caller loops:
 *   - take the next dirty run of its range (at most one chunk) as a task,
 *     copy it, end it;
 *   - when nothing of its range is dirty but a task of another caller
 *     overlaps it, wait for that task to end and look again (a failed
 *     foreign task makes its clusters dirty again, and then this caller
 *     copies them itself);
 *   - when nothing is dirty and nothing overlaps, the range is copied.
 * The bitmap check and the conflict check happen in one critical section,
 * so no wake-up is lost.
 *
 * A task first asks the source for block status: it is shrunk to what the
 * answer covers (the tail's bits are set again), zero areas become
 * write-zeroes on the target, and with skip_unallocated an area that the
 * source's own layer does not allocate is dropped without copying.  Data is
 * read into an aligned bounce buffer and written to the target; the bounce
 * buffers of all tasks together are capped (BLOCK_COPY_MAX_MEM).
 *
 * Rate limit: a virtual clock, next_free, advances by bytes / speed for
 * every task charged; a ratelimited caller may start a task while next_free
 * is at most one slice (100 ms) ahead of now, else it sleeps (a kick wakes
 * it).  Copy-before-write is never limited.
 *
 * Timeouts: a call with a timeout runs on a helper thread; the caller waits
 * for it until the deadline and then leaves it running.  Helpers stay for
 * HELPER_IDLE_NS after a call, waiting for the next one (copy-before-write
 * on a fresh snapshot makes one call per guest write: a new thread for
 * each cost more than the copy).  The helper threads
 * do not take the graph lock (it would deadlock with a drain waiting for
 * the caller, who still holds it); block_copy_state_free() waits for such
 * helpers instead, and the owner of the state (the cbw node) keeps both
 * nodes open until then.
 *
 * Locking: s->lock protects the bitmap, the task list and every counter
 * marked below; it is never held across I/O.  s->cond is broadcast on every
 * change a waiter may care about (a task ended or shrank, memory freed, a
 * helper finished, a kick).  done_bytes and skip_unallocated are atomics.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy/block-copy.h"
#include "hbitmap.h"
#include "util.h"

#define RATELIMIT_SLICE_NS 100000000LL
#define NS_PER_SEC 1000000000ULL
#define HELPER_IDLE_NS 2000000000LL

struct bc_task {
    uint64_t offset;
    uint64_t bytes;
    TAILQ_ENTRY(bc_task) link;
};

/* A call with a timeout, run by a helper thread. */
struct bc_call {
    uint64_t offset;
    uint64_t bytes;
    bool ratelimit;
    /* Protected by: s->lock */
    bool finished;
    bool abandoned;         /* the caller timed out; the helper frees */
    int ret;
    bool error_is_read;
    TAILQ_ENTRY(bc_call) link;      /* in s->calls until a helper takes it */
    pthread_cond_t done;            /* finished (its caller alone waits) */
};

struct block_copy_state {
    struct block_node *source;
    struct block_node *target;
    uint64_t cluster_size;
    uint64_t len;           /* source length at creation */
    uint64_t chunk;         /* largest task, a multiple of cluster_size */
    size_t mem_align;
    unsigned write_flags;
    bool discard_source;

    struct lock lock;
    pthread_cond_t cond;
    struct hbitmap *copy_bitmap;        /* Protected by: lock */
    TAILQ_HEAD(, bc_task) tasks;        /* Protected by: lock */
    uint64_t in_flight_bytes;           /* Protected by: lock */
    uint64_t mem_used;                  /* Protected by: lock */
    unsigned helpers;                   /* Protected by: lock */
    unsigned idle_helpers;              /* Protected by: lock */
    TAILQ_HEAD(, bc_call) calls;        /* Protected by: lock */
    unsigned ncalls;                    /* Protected by: lock */
    bool closing;                       /* Protected by: lock */
    pthread_cond_t helper_cond;         /* a call was queued, or closing */
    bool cancelled;                     /* Protected by: lock */
    uint64_t speed;                     /* Protected by: lock */
    int64_t next_free;                  /* Protected by: lock */

    bool skip_unallocated;              /* atomic */
    uint64_t done_bytes;                /* atomic */
};

/* ---- Creation --------------------------------------------------------- */

/* The allocation unit of node, looking through filters; 0 if unknown. */
static uint64_t
node_cluster_size(struct block_node *node)
{
    while (node) {
        if (node->cluster_size) {
            return node->cluster_size;
        }
        if (node->drv->kind != BLOCK_KIND_FILTER || !node->file) {
            break;
        }
        node = node->file->node;
    }
    return 0;
}

/* Old fleecing scheme: the target reads the source through its backing
 * chain, so target writes must not overlap guest writes in flight. */
static bool
target_backs_onto(struct block_node *target, struct block_node *source)
{
    struct block_node *n = target;

    while (n) {
        if (n == source) {
            return true;
        }
        if (n->backing) {
            n = n->backing->node;
        } else if (n->drv->kind == BLOCK_KIND_FILTER && n->file) {
            n = n->file->node;
        } else {
            n = NULL;
        }
    }
    return false;
}

static uint64_t
pick_chunk(struct block_node *source, struct block_node *target,
           uint64_t cluster)
{
    uint64_t a = source->limits.max_transfer;
    uint64_t b = target->limits.max_transfer;
    uint64_t max = a && b ? MIN(a, b) : (a ? a : b);
    uint64_t chunk = MAX(cluster, (uint64_t)BLOCK_COPY_MAX_CHUNK);

    if (max) {
        chunk = MIN(chunk, MAX(align_down(max, cluster), cluster));
    }
    return chunk;
}

static bool
init_from_bitmap(struct block_copy_state *s, struct block_dirty_bitmap *bm,
                 struct err **errp)
{
    uint64_t bm_size = block_dirty_bitmap_size(bm);
    struct hbitmap *snap;
    uint64_t off = 0, a, n;

    if (bm_size != s->len) {
        err_setf(errp, "Failed to merge bitmap '%s' to internal copy-bitmap: "
                 "Bitmaps are of different sizes (destination size is "
                 "%llu, source size is %llu)", bm->name ? bm->name : "",
                 (unsigned long long)s->len, (unsigned long long)bm_size);
        return false;
    }
    snap = block_dirty_bitmap_copy_hbitmap(bm);
    /* hbitmap_set marks every cluster a dirty run touches, so a cluster is
     * dirty when any finer granule is, and a coarse granule dirties every
     * cluster it covers. */
    while (off < s->len &&
           hbitmap_next_dirty_area(snap, off, s->len - off, 0, &a, &n)) {
        hbitmap_set(s->copy_bitmap, a, n);
        off = a + n;
    }
    hbitmap_free(snap);
    return true;
}

struct block_copy_state *
block_copy_state_new(struct block_node *source, struct block_node *target,
                     struct block_dirty_bitmap *bitmap,
                     uint64_t min_cluster_size, bool discard_source,
                     struct err **errp)
{
    struct block_copy_state *s;
    uint64_t cluster = BLOCK_COPY_DEFAULT_CLUSTER;
    int64_t len;

    if (min_cluster_size && !is_power_of_2(min_cluster_size)) {
        err_setf(errp, "min-cluster-size needs to be a power of 2");
        return NULL;
    }
    if (min_cluster_size > 2 * GiB) {
        err_setf(errp, "min-cluster-size must be at most 2 GiB");
        return NULL;
    }
    len = block_getlength(source);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Could not get the length of '%s'",
                       source->node_name);
        return NULL;
    }
    cluster = MAX(cluster, min_cluster_size);
    cluster = MAX(cluster, node_cluster_size(target));
    if (cluster > 2 * GiB) {
        err_setf(errp, "Cluster size %llu of the target is too large",
                 (unsigned long long)cluster);
        return NULL;
    }

    s = xzalloc(sizeof(*s));
    s->source = source;
    s->target = target;
    s->cluster_size = cluster;
    s->len = (uint64_t)len;
    s->chunk = pick_chunk(source, target, cluster);
    /* Page aligned at least: formats do not state what O_DIRECT below
     * them wants, and a misaligned buffer costs a bounce copy there. */
    s->mem_align = MAX(MAX(source->limits.mem_alignment,
                           target->limits.mem_alignment), 4096);
    s->write_flags = target_backs_onto(target, source) ?
                     BLOCK_REQ_SERIALISING : 0;
    s->discard_source = discard_source;
    lock_init(&s->lock, LOCK_BLOCK_COPY);
    cond_init(&s->cond);
    cond_init(&s->helper_cond);
    TAILQ_INIT(&s->tasks);
    TAILQ_INIT(&s->calls);
    s->copy_bitmap = hbitmap_new(s->len, log2_u64(cluster));
    if (!s->copy_bitmap) {
        err_setf_errno(errp, ENOMEM, "Cannot allocate the copy bitmap");
        goto fail;
    }
    if (!bitmap) {
        hbitmap_set_all(s->copy_bitmap);
    } else if (!init_from_bitmap(s, bitmap, errp)) {
        goto fail;
    }
    return s;

fail:
    hbitmap_free(s->copy_bitmap);
    cond_destroy(&s->helper_cond);
    cond_destroy(&s->cond);
    mutex_destroy(&s->lock);
    free(s);
    return NULL;
}

void
block_copy_state_free(struct block_copy_state *s)
{
    if (!s) {
        return;
    }
    mutex_lock(&s->lock);
    s->closing = true;
    cond_broadcast(&s->helper_cond);
    while (s->helpers > 0) {
        cond_wait(&s->cond, &s->lock);
    }
    assert(TAILQ_EMPTY(&s->tasks));
    mutex_unlock(&s->lock);
    hbitmap_free(s->copy_bitmap);
    cond_destroy(&s->helper_cond);
    cond_destroy(&s->cond);
    mutex_destroy(&s->lock);
    free(s);
}

/* ---- Simple accessors ------------------------------------------------- */

uint64_t
block_copy_cluster_size(struct block_copy_state *s)
{
    return s->cluster_size;
}

uint64_t
block_copy_length(struct block_copy_state *s)
{
    return s->len;
}

void
block_copy_set_skip_unallocated(struct block_copy_state *s, bool skip)
{
    __atomic_store_n(&s->skip_unallocated, skip, __ATOMIC_RELAXED);
}

/* The clusters around [offset, offset + bytes), clipped to the length. */
static void
cluster_range(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
              uint64_t *start, uint64_t *end)
{
    uint64_t e = bytes > s->len ? s->len : MIN(offset + bytes, s->len);

    *start = align_down(MIN(offset, s->len), s->cluster_size);
    *end = MIN(align_up(e, s->cluster_size), s->len);
    if (*end < *start) {
        *end = *start;
    }
}

void
block_copy_reset(struct block_copy_state *s, uint64_t offset, uint64_t bytes)
{
    uint64_t start, end;

    cluster_range(s, offset, bytes, &start, &end);
    if (start < end) {
        SCOPED_LOCK(&s->lock);
        hbitmap_reset(s->copy_bitmap, start, end - start);
    }
}

void
block_copy_set_dirty(struct block_copy_state *s, uint64_t offset,
                     uint64_t bytes)
{
    uint64_t start, end;

    cluster_range(s, offset, bytes, &start, &end);
    if (start < end) {
        SCOPED_LOCK(&s->lock);
        hbitmap_set(s->copy_bitmap, start, end - start);
        cond_broadcast(&s->cond);
    }
}

/* Dirty bytes, the partial last cluster counted up to the length. */
static uint64_t
dirty_bytes_locked(struct block_copy_state *s)
{
    uint64_t n = hbitmap_count(s->copy_bitmap);

    if (!is_aligned(s->len, s->cluster_size) && s->len &&
        hbitmap_get(s->copy_bitmap, s->len - 1)) {
        n -= align_up(s->len, s->cluster_size) - s->len;
    }
    return n;
}

uint64_t
block_copy_dirty_bytes(struct block_copy_state *s)
{
    SCOPED_LOCK(&s->lock);
    return dirty_bytes_locked(s);
}

bool
block_copy_next_dirty_area(struct block_copy_state *s, uint64_t offset,
                           uint64_t bytes, uint64_t *area_off,
                           uint64_t *area_bytes)
{
    uint64_t start, end;
    bool found;

    cluster_range(s, offset, bytes, &start, &end);
    if (start >= end) {
        return false;
    }
    mutex_lock(&s->lock);
    found = hbitmap_next_dirty_area(s->copy_bitmap, start, end - start, 0,
                                    area_off, area_bytes);
    mutex_unlock(&s->lock);
    return found;
}

void
block_copy_merge_into(struct block_copy_state *s,
                      struct block_dirty_bitmap *bm)
{
    struct hbitmap *snap;
    uint64_t off = 0, a, n;

    mutex_lock(&s->lock);
    snap = hbitmap_copy(s->copy_bitmap);
    mutex_unlock(&s->lock);
    while (off < s->len &&
           hbitmap_next_dirty_area(snap, off, s->len - off, 0, &a, &n)) {
        block_dirty_bitmap_set(bm, a, n);
        off = a + n;
    }
    hbitmap_free(snap);
}

void
block_copy_progress(struct block_copy_state *s, uint64_t *done,
                    uint64_t *remaining)
{
    *done = __atomic_load_n(&s->done_bytes, __ATOMIC_RELAXED);
    mutex_lock(&s->lock);
    *remaining = dirty_bytes_locked(s) + s->in_flight_bytes;
    mutex_unlock(&s->lock);
}

/* ---- sync=top ----------------------------------------------------------- */

int64_t
block_copy_reset_unallocated(struct block_copy_state *s, uint64_t offset,
                             uint64_t *count)
{
    uint64_t cs = s->cluster_size;
    uint64_t off = offset, pnum;
    int ret;

    *count = 0;
    if (!is_aligned(offset, cs) || offset >= s->len) {
        return -EINVAL;
    }
    /* A cluster is allocated when any part of it is. */
    for (;;) {
        uint64_t cluster_end = MIN(align_down(off, cs) + cs, s->len);

        ret = block_is_allocated(s->source, off, s->len - off, &pnum);
        if (ret < 0) {
            return ret;
        }
        if (ret == 1) {
            /* Allocated: report whole clusters of it (at least one). */
            uint64_t end = off + pnum;

            end = end >= s->len ? s->len : MAX(align_down(end, cs),
                                               cluster_end);
            *count = end - offset;
            return 1;
        }
        if (off + pnum >= cluster_end) {
            uint64_t end = off + pnum >= s->len ? s->len :
                           align_down(off + pnum, cs);

            *count = end - offset;
            block_copy_reset(s, offset, *count);
            return 0;
        }
        /* The unallocated run stops inside this cluster: look at the rest
         * of the cluster. */
        off += pnum;
    }
}

/* ---- Rate limit --------------------------------------------------------- */

void
block_copy_set_speed(struct block_copy_state *s, uint64_t bytes_per_sec)
{
    SCOPED_LOCK(&s->lock);
    s->speed = bytes_per_sec;
    s->next_free = 0;
    cond_broadcast(&s->cond);
}

void
block_copy_kick(struct block_copy_state *s)
{
    SCOPED_LOCK(&s->lock);
    cond_broadcast(&s->cond);
}

void
block_copy_set_cancelled(struct block_copy_state *s, bool cancelled)
{
    SCOPED_LOCK(&s->lock);
    s->cancelled = cancelled;
    cond_broadcast(&s->cond);
}

/* How long a ratelimited caller must wait before its next task (ns). */
static int64_t
ratelimit_delay_locked(struct block_copy_state *s, int64_t now)
{
    if (!s->speed || s->next_free <= now + RATELIMIT_SLICE_NS) {
        return 0;
    }
    return s->next_free - (now + RATELIMIT_SLICE_NS);
}

static void
ratelimit_charge_locked(struct block_copy_state *s, uint64_t bytes)
{
    int64_t now = clock_ns();
    unsigned __int128 ns;

    if (!s->speed) {
        return;
    }
    if (s->next_free < now) {
        s->next_free = now;
    }
    ns = (unsigned __int128)bytes * NS_PER_SEC / s->speed;
    s->next_free += ns > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)ns;
}

/* ---- Tasks ------------------------------------------------------------ */

static bool
task_conflict_locked(struct block_copy_state *s, uint64_t offset,
                     uint64_t bytes)
{
    struct bc_task *t;

    TAILQ_FOREACH(t, &s->tasks, link) {
        if (ranges_overlap(offset, bytes, t->offset, t->bytes)) {
            return true;
        }
    }
    return false;
}

static void
task_begin_locked(struct block_copy_state *s, struct bc_task *t,
                  uint64_t offset, uint64_t bytes)
{
    assert(!task_conflict_locked(s, offset, bytes));
    t->offset = offset;
    t->bytes = bytes;
    hbitmap_reset(s->copy_bitmap, offset, bytes);
    s->in_flight_bytes += bytes;
    TAILQ_INSERT_TAIL(&s->tasks, t, link);
}

/* Keep only the first bytes of the task; the rest is dirty again. */
static void
task_shrink(struct block_copy_state *s, struct bc_task *t, uint64_t bytes)
{
    assert(bytes > 0 && bytes <= t->bytes);
    if (bytes == t->bytes) {
        return;
    }
    SCOPED_LOCK(&s->lock);
    hbitmap_set(s->copy_bitmap, t->offset + bytes, t->bytes - bytes);
    s->in_flight_bytes -= t->bytes - bytes;
    t->bytes = bytes;
    cond_broadcast(&s->cond);
}

static void
task_end_locked(struct block_copy_state *s, struct bc_task *t, int ret)
{
    if (ret < 0) {
        hbitmap_set(s->copy_bitmap, t->offset, t->bytes);
    }
    s->in_flight_bytes -= t->bytes;
    TAILQ_REMOVE(&s->tasks, t, link);
    cond_broadcast(&s->cond);
}

static void
mem_reserve(struct block_copy_state *s, uint64_t bytes)
{
    SCOPED_LOCK(&s->lock);
    /* One task may always run, however large, so nobody waits forever. */
    while (s->mem_used > 0 && s->mem_used + bytes > BLOCK_COPY_MAX_MEM) {
        cond_wait(&s->cond, &s->lock);
    }
    s->mem_used += bytes;
}

static void
mem_release(struct block_copy_state *s, uint64_t bytes)
{
    SCOPED_LOCK(&s->lock);
    s->mem_used -= bytes;
    cond_broadcast(&s->cond);
}

/* Whole clusters of pnum bytes from offset (the end of the source counts
 * as a cluster boundary); 0 when pnum is less than a cluster. */
static uint64_t
clusters_of(struct block_copy_state *s, uint64_t offset, uint64_t pnum)
{
    if (offset + pnum >= s->len) {
        return s->len - offset;
    }
    return align_down(pnum, s->cluster_size);
}

/*
 * Decide what the task is: shrink it to one answer of block status.
 * Returns 1 to skip it (unallocated, skip_unallocated set), else 0 with
 * *zero telling whether the area reads as zeroes.
 */
static int
task_classify(struct block_copy_state *s, struct bc_task *t, bool *zero)
{
    uint64_t pnum, n;
    int ret;

    *zero = false;
    if (__atomic_load_n(&s->skip_unallocated, __ATOMIC_RELAXED)) {
        ret = block_is_allocated(s->source, t->offset, t->bytes, &pnum);
        n = ret < 0 ? 0 : clusters_of(s, t->offset, pnum);
        if (n == 0) {
            /* Failure or a partly allocated cluster: copy one cluster. */
            task_shrink(s, t, MIN(t->bytes, s->cluster_size));
            return 0;
        }
        task_shrink(s, t, n);
        if (ret == 0) {
            return 1;
        }
    }
    ret = block_status(s->source, t->offset, t->bytes, &pnum, NULL);
    n = ret < 0 ? 0 : clusters_of(s, t->offset, pnum);
    if (n == 0) {
        task_shrink(s, t, MIN(t->bytes, s->cluster_size));
        return 0;
    }
    task_shrink(s, t, n);
    *zero = (ret & BLOCK_STATUS_ZERO) != 0;
    return 0;
}

static int
task_copy_data(struct block_copy_state *s, struct bc_task *t,
               bool *error_is_read)
{
    void *buf;
    int ret;

    mem_reserve(s, t->bytes);
    if (posix_memalign(&buf, s->mem_align, t->bytes) != 0) {
        mem_release(s, t->bytes);
        *error_is_read = true;
        return -ENOMEM;
    }
    ret = block_pread(s->source, t->offset, t->bytes, buf, 0);
    if (ret < 0) {
        *error_is_read = true;
    } else {
        ret = block_pwrite(s->target, t->offset, t->bytes, buf,
                           s->write_flags);
        if (ret < 0) {
            *error_is_read = false;
        }
    }
    free(buf);
    mem_release(s, t->bytes);
    return ret;
}

/* Run one task (no lock held).  0 or -errno. */
static int
task_run(struct block_copy_state *s, struct bc_task *t, bool ratelimit,
         bool *error_is_read)
{
    bool zero;
    int ret;

    if (task_classify(s, t, &zero) == 1) {
        return 0;
    }
    if (ratelimit) {
        SCOPED_LOCK(&s->lock);
        ratelimit_charge_locked(s, t->bytes);
    }
    if (zero) {
        ret = block_pwrite_zeroes(s->target, t->offset, t->bytes,
                                  s->write_flags);
        if (ret < 0) {
            *error_is_read = false;
        }
    } else {
        ret = task_copy_data(s, t, error_is_read);
    }
    if (ret == 0) {
        __atomic_add_fetch(&s->done_bytes, t->bytes, __ATOMIC_RELAXED);
        if (s->discard_source) {
            /* Advisory: a failure only keeps the data. */
            block_pdiscard(s->source, t->offset, t->bytes);
        }
    }
    return ret;
}

/* ---- The copy loop ---------------------------------------------------- */

static int
copy_range(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
           bool ratelimit, bool *error_is_read)
{
    uint64_t start, end, a, n;
    struct bc_task task;
    int ret = 0;

    cluster_range(s, offset, bytes, &start, &end);
    if (start >= end) {
        return 0;
    }
    mutex_lock(&s->lock);
    for (;;) {
        if (ratelimit && s->cancelled) {
            ret = -ECANCELED;
            break;
        }
        if (!hbitmap_next_dirty_area(s->copy_bitmap, start, end - start,
                                     s->chunk, &a, &n)) {
            if (!task_conflict_locked(s, start, end - start)) {
                break;
            }
            /* Another caller copies part of the range: wait for it. */
            cond_wait(&s->cond, &s->lock);
            continue;
        }
        if (ratelimit) {
            int64_t now = clock_ns();
            int64_t delay = ratelimit_delay_locked(s, now);

            if (delay > 0) {
                cond_timedwait_ns(&s->cond, &s->lock, now + delay);
                continue;
            }
        }
        task_begin_locked(s, &task, a, MIN(align_up(a + n, s->cluster_size),
                                           s->len) - a);
        mutex_unlock(&s->lock);
        ret = task_run(s, &task, ratelimit, error_is_read);
        mutex_lock(&s->lock);
        task_end_locked(s, &task, ret);
        if (ret < 0) {
            break;
        }
    }
    mutex_unlock(&s->lock);
    return ret;
}

static void
call_free(struct bc_call *call)
{
    cond_destroy(&call->done);
    free(call);
}

/* Run call; a per-call condition wakes just its caller (s->cond would
 * wake every guest write waiting for its own copy). */
static void
helper_run_locked(struct block_copy_state *s, struct bc_call *call)
{
    bool eir = false;
    int ret;

    mutex_unlock(&s->lock);
    ret = copy_range(s, call->offset, call->bytes, call->ratelimit, &eir);
    mutex_lock(&s->lock);
    call->ret = ret;
    call->error_is_read = eir;
    call->finished = true;
    if (call->abandoned) {
        call_free(call);
    } else {
        cond_signal(&call->done);
    }
}

/* Run queued calls; leave after HELPER_IDLE_NS without one, or when the
 * state is being freed. */
static void *
helper_thread(void *opaque)
{
    struct block_copy_state *s = opaque;

    mutex_lock(&s->lock);
    for (;;) {
        struct bc_call *call = TAILQ_FIRST(&s->calls);
        bool woken;

        if (call) {
            TAILQ_REMOVE(&s->calls, call, link);
            s->ncalls--;
            helper_run_locked(s, call);
            continue;
        }
        if (s->closing) {
            break;
        }
        s->idle_helpers++;
        woken = cond_timedwait_ns(&s->helper_cond, &s->lock,
                                  clock_ns() + HELPER_IDLE_NS);
        s->idle_helpers--;
        if (!woken && TAILQ_EMPTY(&s->calls)) {
            break;
        }
    }
    s->helpers--;
    cond_broadcast(&s->cond);
    /* s may be freed as soon as the lock is dropped. */
    mutex_unlock(&s->lock);
    return NULL;
}

/* Queue call for a helper: an idle one if there is one per queued call,
 * else a new thread.  False if no thread could be made.  Caller holds
 * s->lock. */
static bool
helper_submit_locked(struct block_copy_state *s, struct bc_call *call)
{
    pthread_attr_t attr;
    pthread_t tid;
    int ret = 0;

    if (s->ncalls >= s->idle_helpers) {
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ret = pthread_create(&tid, &attr, helper_thread, s);
        pthread_attr_destroy(&attr);
        if (ret != 0 && s->helpers == 0) {
            return false;
        }
        if (ret == 0) {
            s->helpers++;
        }
    }
    TAILQ_INSERT_TAIL(&s->calls, call, link);
    s->ncalls++;
    cond_signal(&s->helper_cond);
    return true;
}

static int
copy_with_timeout(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
                  bool ratelimit, int64_t timeout_ns, bool *error_is_read)
{
    struct bc_call *call = xzalloc(sizeof(*call));
    int64_t deadline = clock_ns() + timeout_ns;
    int ret;

    call->offset = offset;
    call->bytes = bytes;
    call->ratelimit = ratelimit;
    cond_init(&call->done);
    mutex_lock(&s->lock);
    if (!helper_submit_locked(s, call)) {
        /* No thread at all: copy inline, without the timeout. */
        mutex_unlock(&s->lock);
        call_free(call);
        return copy_range(s, offset, bytes, ratelimit, error_is_read);
    }
    while (!call->finished && clock_ns() < deadline) {
        cond_timedwait_ns(&call->done, &s->lock, deadline);
    }
    if (call->finished) {
        ret = call->ret;
        *error_is_read = call->error_is_read;
        call_free(call);
    } else {
        call->abandoned = true;
        ret = -ETIMEDOUT;
        *error_is_read = false;
    }
    mutex_unlock(&s->lock);
    return ret;
}

/*
 * True when copy_range() would return 0 at once: nothing in the range is
 * dirty and no task overlaps it.  Lets a timed call (every copy-before-write
 * guest write) skip the hand-off to a helper once the area is copied.
 */
static bool
nothing_to_copy(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
                bool ratelimit)
{
    uint64_t start, end, a, n;

    cluster_range(s, offset, bytes, &start, &end);
    if (start >= end) {
        return true;
    }
    SCOPED_LOCK(&s->lock);
    return !(ratelimit && s->cancelled) &&
           !hbitmap_next_dirty_area(s->copy_bitmap, start, end - start,
                                    s->chunk, &a, &n) &&
           !task_conflict_locked(s, start, end - start);
}

int
block_copy(struct block_copy_state *s, uint64_t offset, uint64_t bytes,
           bool ratelimit, int64_t timeout_ns, bool *error_is_read)
{
    bool eir = false;
    int ret;

    if (timeout_ns > 0 && nothing_to_copy(s, offset, bytes, ratelimit)) {
        /* What copy_range() would find at once: no helper. */
        return 0;
    }
    if (timeout_ns > 0) {
        ret = copy_with_timeout(s, offset, bytes, ratelimit, timeout_ns,
                                &eir);
    } else {
        ret = copy_range(s, offset, bytes, ratelimit, &eir);
    }
    if (error_is_read) {
        *error_is_read = ret < 0 && eir;
    }
    return ret;
}
