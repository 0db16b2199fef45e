/* SPDX-License-Identifier: MIT */
/*
 * The backup job: QMP blockdev-backup with QEMU's arguments, checks and
 * messages, sync modes full/top/none/bitmap/incremental, bitmap modes
 * on-success/never/always, on-source-error/on-target-error, speed, x-perf,
 * discard-source (docs/qmp.md, docs/fleecing.md).
 *
 * Design notes.
 *
 * Graph.  At creation (main thread, in one drained section) the job puts a
 * copy-before-write node above "device" (cbw_append(): every parent of the
 * device, NBD exports included, now writes through it) and takes the
 * filter's block-copy state.  From then on a write to the source first
 * copies the old data of its clusters to the target; the job copies all
 * other dirty clusters in the background through the same state, so no
 * cluster is copied twice and the target ends up holding the source as it
 * was at job start.  At the end (clean) the filter is removed again.
 *
 * Copy bitmap at start: all ones (full, top, none); for bitmap the user
 * bitmap's clusters.  top additionally walks the source first and clears
 * the clusters that are not allocated in its top layer (pausable,
 * cancellable), with skip-unallocated on meanwhile so that writes do not
 * copy them either.  none copies nothing in the background: the job
 * sleeps until it is cancelled, and only copy-before-write runs.
 *
 * Background copy (job thread): passes.  A pass starts up to max-workers
 * (capped) worker threads; each takes the next dirty area after a shared
 * cursor (at most one chunk), waits for the speed limit, and calls
 * block_copy() on it inside the graph.  Workers stop at the end of the
 * disk, at the first error, or when the job must pause or is cancelled
 * (checked before every chunk; the pause and cancel hooks also wake
 * workers waiting for the speed limit).  Then the job thread joins them,
 * handles an error with on-source-error /
 * on-target-error (report: fail; ignore: retry; stop: pause, then retry),
 * goes through a pause point, and starts another pass while anything is
 * left dirty.  So a paused job has no worker and does no I/O.
 *
 * Speed: the job keeps its own limiter (QEMU's: a budget that may run at
 * most one 100 ms slice ahead) and waits for it *outside* the graph, so a
 * slow speed never holds the graph lock and never delays a drain on the
 * main thread; block_copy() runs without its own limit.  A copy in
 * flight is at most one chunk, which bounds how long a pause or a drain
 * waits for the job.
 *
 * Bitmaps (sync=bitmap/incremental, or full/top with a bitmap as output):
 * at start the named bitmap is frozen (busy, not recording) and an
 * anonymous successor with the same granularity records the writes made
 * during the job.  At commit/abort, in a drained section: the successor
 * replaces the bitmap (on-success after success, always), or is merged
 * back into it (never, or on-success after failure); after a failure with
 * always, the clusters the job did not copy are added.
 *
 * Deviation: QEMU's query-named-block-nodes shows the frozen bitmap as
 * "recording" (its successor records); here it shows recording=false.
 *
 * Locking: the fields of struct backup_job are set on the main thread
 * before the job thread starts and only read afterwards, except the speed
 * limiter's (rl_lock) and those of a pass (struct backup_pass, its own
 * lock).  Lock order: pass lock, then the block-copy state's lock
 * (block_copy_next_dirty_area); rl_lock is a leaf; no lock is held across
 * block_copy().
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "block/copy/block-copy.h"
#include "block/filter/copy-before-write.h"
#include "job/backup.h"
#include "job/job.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "runtime/loop.h"
#include "util.h"

/* Worker threads per job: x-perf max-workers counts coroutines in QEMU
 * (default 64); threads are dearer, so they are capped. */
#define BACKUP_MAX_THREADS 8
/* Bytes one worker takes from the cursor at a time (block_copy() splits
 * them into its own chunks). */
#define BACKUP_CHUNK (1024 * 1024)
/* The speed limiter's slice, as QEMU's. */
#define BACKUP_SLICE_NS (100LL * 1000 * 1000)

const char *const backup_sync_names[] = {
    [BACKUP_SYNC_FULL] = "full",
    [BACKUP_SYNC_TOP] = "top",
    [BACKUP_SYNC_NONE] = "none",
    [BACKUP_SYNC_BITMAP] = "bitmap",
    [BACKUP_SYNC_INCREMENTAL] = "incremental",
    NULL,
};

const char *const backup_bitmap_mode_names[] = {
    [BACKUP_BITMAP_MODE_ON_SUCCESS] = "on-success",
    [BACKUP_BITMAP_MODE_NEVER] = "never",
    [BACKUP_BITMAP_MODE_ALWAYS] = "always",
    NULL,
};

struct backup_job {
    struct job job;

    /* Set at creation (main thread), read-only afterwards. */
    struct block_node *source;      /* "device"; reference held */
    struct block_node *target;      /* reference held */
    struct block_node *cbw;         /* the filter; reference held */
    struct block_copy_state *bcs;   /* owned by the filter */
    enum backup_sync sync;
    struct block_dirty_bitmap *bitmap;      /* user bitmap, or NULL */
    struct block_dirty_bitmap *successor;   /* records during the job */
    bool bitmap_was_enabled;
    enum backup_bitmap_mode bitmap_mode;
    enum job_on_error on_source_error;
    enum job_on_error on_target_error;
    int workers;
    uint64_t chunk;
    uint64_t len;
    /* The job's use of the filter and of the target (QEMU's "main node"
     * and "target"): they keep other jobs, block_resize and blockdev-del
     * off these nodes.  Main thread. */
    struct block_handle *main_h;
    struct block_handle *target_h;

    /* The speed limiter.  Protected by: rl_lock (a leaf). */
    struct lock rl_lock;
    pthread_cond_t rl_cond;         /* speed changed, pause, cancel */
    uint64_t speed;                 /* bytes per second, 0 = unlimited */
    int64_t next_free;              /* when the budget is back to zero */
    bool rl_stop;                   /* pause/cancel asked: stop waiting */
};

/* One pass of background copying. */
struct backup_pass {
    struct backup_job *s;
    struct lock lock;
    /* Protected by: lock. */
    uint64_t cursor;
    int ret;                        /* first error, or 0 */
    bool error_is_read;
};

/* ---- Job thread ------------------------------------------------------- */

/*
 * Wait until the speed limit lets bytes go and charge them; false when a
 * pause or a cancel came first.  Outside the graph.
 */
static bool
backup_ratelimit(struct backup_job *s, uint64_t bytes)
{
    bool ok = true;

    mutex_lock(&s->rl_lock);
    for (;;) {
        int64_t now = clock_ns();

        if (s->rl_stop) {
            ok = false;
            break;
        }
        if (!s->speed || s->next_free <= now + BACKUP_SLICE_NS) {
            if (s->speed) {
                unsigned __int128 ns =
                    (unsigned __int128)bytes * 1000000000u / s->speed;

                if (s->next_free < now) {
                    s->next_free = now;
                }
                s->next_free += ns > INT64_MAX / 4 ? INT64_MAX / 4
                                                   : (int64_t)ns;
            }
            break;
        }
        cond_timedwait_ns(&s->rl_cond, &s->rl_lock,
                          s->next_free - BACKUP_SLICE_NS);
    }
    mutex_unlock(&s->rl_lock);
    return ok;
}

static void
backup_ratelimit_stop(struct backup_job *s, bool stop)
{
    mutex_lock(&s->rl_lock);
    s->rl_stop = stop;
    cond_broadcast(&s->rl_cond);
    mutex_unlock(&s->rl_lock);
}

static void *
backup_worker(void *opaque)
{
    struct backup_pass *p = opaque;
    struct backup_job *s = p->s;

    for (;;) {
        uint64_t off, bytes;
        bool is_read = false;
        bool found;
        int ret;

        if (job_should_pause(&s->job) || job_is_cancelled(&s->job)) {
            break;
        }
        mutex_lock(&p->lock);
        found = p->ret == 0 && p->cursor < s->len &&
                block_copy_next_dirty_area(s->bcs, p->cursor,
                                           s->len - p->cursor, &off, &bytes);
        if (found) {
            bytes = MIN(bytes, s->chunk);
            p->cursor = off + bytes;
        }
        mutex_unlock(&p->lock);
        if (!found || !backup_ratelimit(s, bytes)) {
            break;
        }
        block_graph_enter();
        ret = block_copy(s->bcs, off, bytes, false, 0, &is_read);
        block_graph_leave();
        if (ret < 0) {
            mutex_lock(&p->lock);
            if (p->ret == 0) {
                p->ret = ret;
                p->error_is_read = is_read;
            }
            mutex_unlock(&p->lock);
            break;
        }
    }
    return NULL;
}

/* Copy what is dirty from start to the end; 0 or the first error. */
static int
backup_pass(struct backup_job *s, bool *error_is_read)
{
    struct backup_pass p = { .s = s };
    pthread_t threads[BACKUP_MAX_THREADS];
    int n = s->workers;

    lock_init(&p.lock, LOCK_BACKUP_PASS);
    for (int i = 0; i < n; i++) {
        thread_create(&threads[i], "backup-worker", backup_worker, &p);
    }
    for (int i = 0; i < n; i++) {
        thread_join(threads[i]);
    }
    mutex_destroy(&p.lock);
    *error_is_read = p.error_is_read;
    return p.ret;
}

/* sync=top: clear the clusters that the source's top layer does not
 * allocate.  0, or -errno; stops early (0) when cancelled. */
static int
backup_top_walk(struct backup_job *s)
{
    uint64_t offset = 0;

    while (offset < s->len) {
        uint64_t count = 0;
        int64_t ret;

        job_pause_point(&s->job);
        if (job_is_cancelled(&s->job)) {
            return 0;
        }
        block_graph_enter();
        ret = block_copy_reset_unallocated(s->bcs, offset, &count);
        block_graph_leave();
        if (ret < 0) {
            return (int)ret;
        }
        offset += count;
    }
    block_copy_set_skip_unallocated(s->bcs, false);
    return 0;
}

static int
backup_run(struct job *job, struct err **errp)
{
    struct backup_job *s = container_of(job, struct backup_job, job);
    int ret;

    (void)errp;
    if (s->sync != BACKUP_SYNC_NONE) {
        /* Copying from now on (sync=none settles in its sleep). */
        job_settled(job);
    }
    if (s->sync == BACKUP_SYNC_TOP) {
        ret = backup_top_walk(s);
        if (ret < 0) {
            return ret;
        }
    }
    if (s->sync == BACKUP_SYNC_NONE) {
        /* Only copy-before-write copies; wait for the end. */
        while (!job_is_cancelled(job)) {
            job_pause_point(job);
            if (job_is_cancelled(job)) {
                break;
            }
            job_sleep_ns(job, -1);
        }
        return 0;
    }
    for (;;) {
        bool is_read = false;

        job_pause_point(job);
        if (job_is_cancelled(job)) {
            return 0;
        }
        backup_ratelimit_stop(s, false);
        ret = backup_pass(s, &is_read);
        if (job_is_cancelled(job)) {
            return 0;
        }
        if (ret < 0) {
            enum job_on_error policy = is_read ? s->on_source_error
                                               : s->on_target_error;

            if (job_error_action(job, policy, is_read, -ret) ==
                JOB_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;               /* ignore: retry; stop: pause first */
        }
        if (job_should_pause(job)) {
            continue;
        }
        /*
         * Last, one call over the whole disk: it waits for the clusters
         * copy-before-write is still copying and copies them itself if
         * that copy fails, so nothing is left behind when it returns 0.
         */
        block_graph_enter();
        ret = block_copy(s->bcs, 0, s->len, false, 0, &is_read);
        block_graph_leave();
        if (job_is_cancelled(job)) {
            continue;
        }
        if (ret < 0) {
            enum job_on_error policy = is_read ? s->on_source_error
                                               : s->on_target_error;

            if (job_error_action(job, policy, is_read, -ret) ==
                JOB_ERROR_ACTION_REPORT) {
                return ret;
            }
            continue;
        }
        if (block_copy_dirty_bytes(s->bcs) == 0) {
            return 0;
        }
    }
}

/* Wake workers waiting for the speed limit; the run loop pauses. */
static void
backup_pause(struct job *job)
{
    backup_ratelimit_stop(container_of(job, struct backup_job, job), true);
}

static void
backup_cancel(struct job *job, bool force)
{
    struct backup_job *s = container_of(job, struct backup_job, job);

    (void)force;
    backup_ratelimit_stop(s, true);
    job_kick(job);
}

static void
backup_set_speed(struct job *job, uint64_t speed)
{
    struct backup_job *s = container_of(job, struct backup_job, job);

    mutex_lock(&s->rl_lock);
    s->speed = speed;
    cond_broadcast(&s->rl_cond);
    mutex_unlock(&s->rl_lock);
}

/* QEMU: len = bytes done + still to do; offset = bytes done (copies made
 * by copy-before-write count too). */
static void
backup_progress(struct job *job, uint64_t *current, uint64_t *total)
{
    struct backup_job *s = container_of(job, struct backup_job, job);
    uint64_t done, remaining;

    if (!s->bcs) {
        /* After clean: what the job had at its end. */
        *current = __atomic_load_n(&job->progress_current, __ATOMIC_RELAXED);
        *total = __atomic_load_n(&job->progress_total, __ATOMIC_RELAXED);
        return;
    }
    block_copy_progress(s->bcs, &done, &remaining);
    *current = done;
    *total = done + remaining;
}

/* ---- Finalisation (main thread) --------------------------------------- */

/* Give the bitmap its content after the job (QEMU's bitmap modes). */
static void
backup_sync_bitmap(struct backup_job *s, bool success)
{
    bool replace;

    if (!s->bitmap) {
        return;
    }
    replace = s->bitmap_mode != BACKUP_BITMAP_MODE_NEVER &&
              (success || s->bitmap_mode == BACKUP_BITMAP_MODE_ALWAYS);
    block_drain_begin();
    if (replace) {
        block_dirty_bitmap_clear(s->bitmap);
    }
    /* Same node, size and granularity: cannot fail. */
    block_dirty_bitmap_merge(s->bitmap, s->successor, NULL);
    if (!success && s->bitmap_mode == BACKUP_BITMAP_MODE_ALWAYS) {
        block_copy_merge_into(s->bcs, s->bitmap);
    }
    block_dirty_bitmap_release(s->successor);
    s->successor = NULL;
    if (s->bitmap_was_enabled) {
        block_dirty_bitmap_enable(s->bitmap);
    }
    block_dirty_bitmap_set_busy(s->bitmap, false);
    block_drain_end();
    s->bitmap = NULL;
}

static void
backup_commit(struct job *job)
{
    backup_sync_bitmap(container_of(job, struct backup_job, job), true);
}

static void
backup_abort(struct job *job)
{
    backup_sync_bitmap(container_of(job, struct backup_job, job), false);
}

/* Remove the filter: the source's parents get the source back. */
static void
backup_clean(struct job *job)
{
    struct backup_job *s = container_of(job, struct backup_job, job);

    if (s->cbw) {
        uint64_t cur, total;

        /* Keep the final progress for the events and queries to come. */
        backup_progress(job, &cur, &total);
        __atomic_store_n(&job->progress_current, cur, __ATOMIC_RELAXED);
        __atomic_store_n(&job->progress_total, total, __ATOMIC_RELAXED);
        s->bcs = NULL;
        /* The job's handles first: they stay with the filter node. */
        block_handle_free(s->main_h);
        block_handle_free(s->target_h);
        s->main_h = s->target_h = NULL;
        cbw_drop(s->cbw);
        s->cbw = NULL;
    }
}

static void
backup_free(struct job *job)
{
    struct backup_job *s = container_of(job, struct backup_job, job);

    /* Failure paths of backup_start end here too. */
    backup_sync_bitmap(s, false);
    backup_clean(job);
    if (s->source) {
        block_node_unref(s->source);
    }
    if (s->target) {
        block_node_unref(s->target);
    }
    cond_destroy(&s->rl_cond);
    mutex_destroy(&s->rl_lock);
}

static const struct job_driver backup_driver = {
    .type = "backup",
    .instance_size = sizeof(struct backup_job),
    .run = backup_run,
    .pause = backup_pause,
    .cancel = backup_cancel,
    .set_speed = backup_set_speed,
    .commit = backup_commit,
    .abort = backup_abort,
    .clean = backup_clean,
    .progress = backup_progress,
    .free = backup_free,
};

struct block_node *
backup_filter_node(struct job *job)
{
    if (job->drv != &backup_driver) {
        return NULL;
    }
    return container_of(job, struct backup_job, job)->cbw;
}

/* ---- Arguments -------------------------------------------------------- */

/* The options (a copy: check_bitmap_args() rewrites sync and bitmap-mode
 * as QEMU does, incremental being bitmap + on-success), and what follows
 * from them once the defaults are applied. */
struct backup_args {
    struct backup_options o;
    bool compress;
    enum job_on_error on_source_error;
    enum job_on_error on_target_error;
    bool auto_finalize;
    bool auto_dismiss;
    int64_t max_workers;
    int64_t max_chunk;
    int64_t min_cluster_size;
    bool discard_source;
};

static void
resolve_args(const struct backup_options *o, struct backup_args *a)
{
    *a = (struct backup_args) {
        .o = *o,
        .compress = o->has_compress && o->compress,
        .on_source_error = o->has_on_source_error ? o->on_source_error
                                                  : JOB_ON_ERROR_REPORT,
        .on_target_error = o->has_on_target_error ? o->on_target_error
                                                  : JOB_ON_ERROR_REPORT,
        .auto_finalize = !o->has_auto_finalize || o->auto_finalize,
        .auto_dismiss = !o->has_auto_dismiss || o->auto_dismiss,
        .max_workers = o->x_perf.has_max_workers ? o->x_perf.max_workers
                                                 : 64,
        .max_chunk = o->x_perf.has_max_chunk ? o->x_perf.max_chunk : 0,
        .min_cluster_size = o->x_perf.has_min_cluster_size
                            ? o->x_perf.min_cluster_size : 0,
        .discard_source = o->has_discard_source && o->discard_source,
    };
}

/* The QMP-level checks, in QEMU's order. */
static bool
check_bitmap_args(struct backup_args *a, struct block_node *source,
                  struct block_dirty_bitmap **bmp, struct err **errp)
{
    struct block_dirty_bitmap *bm;

    *bmp = NULL;
    if (!a->o.bitmap && (a->o.sync == BACKUP_SYNC_BITMAP ||
                       a->o.sync == BACKUP_SYNC_INCREMENTAL)) {
        err_setf(errp, "must provide a valid bitmap name for '%s' sync mode",
                 backup_sync_names[a->o.sync]);
        return false;
    }
    if (a->o.sync == BACKUP_SYNC_INCREMENTAL) {
        if (a->o.has_bitmap_mode && a->o.bitmap_mode != BACKUP_BITMAP_MODE_ON_SUCCESS) {
            err_setf(errp, "Bitmap sync mode must be 'on-success' when using "
                     "sync mode 'incremental'");
            return false;
        }
        a->o.has_bitmap_mode = true;
        a->o.bitmap_mode = BACKUP_BITMAP_MODE_ON_SUCCESS;
        a->o.sync = BACKUP_SYNC_BITMAP;
    }
    if (!a->o.bitmap) {
        if (a->o.has_bitmap_mode) {
            err_setf(errp, "Cannot specify bitmap sync mode without a "
                     "bitmap");
            return false;
        }
        return true;
    }
    /* Only on the device node itself (it does not look through filters
     * or snapshot-access). */
    bm = block_dirty_bitmap_find(source, a->o.bitmap);
    if (!bm) {
        err_setf(errp, "Bitmap '%s' could not be found", a->o.bitmap);
        return false;
    }
    if (!a->o.has_bitmap_mode) {
        err_setf(errp, "Bitmap sync mode must be given when providing a "
                 "bitmap");
        return false;
    }
    /* Usable at all (read-only is allowed at this point, as QEMU). */
    if (bm->busy) {
        err_setf(errp, "Bitmap '%s' is currently in use by another "
                 "operation and cannot be used", a->o.bitmap);
        return false;
    }
    if (bm->inconsistent) {
        err_setf(errp, "Bitmap '%s' is inconsistent and cannot be used",
                 a->o.bitmap);
        return false;
    }
    if (a->o.sync == BACKUP_SYNC_NONE) {
        err_setf(errp, "sync mode 'none' does not produce meaningful bitmap "
                 "outputs");
        return false;
    }
    if (a->o.bitmap_mode == BACKUP_BITMAP_MODE_NEVER &&
        a->o.sync != BACKUP_SYNC_BITMAP) {
        err_setf(errp, "Bitmap sync mode 'never' has no meaningful effect "
                 "when combined with sync mode '%s'", backup_sync_names[a->o.sync]);
        return false;
    }
    /* The job writes the bitmap back unless the mode is never. */
    if (a->o.bitmap_mode != BACKUP_BITMAP_MODE_NEVER &&
        !block_dirty_bitmap_check_writable(bm, errp)) {
        return false;
    }
    *bmp = bm;
    return true;
}

static struct block_node *
lookup_node(const char *name, struct err **errp)
{
    struct block_node *node = block_node_find(name);

    if (!node) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'", name,
                 name);
    }
    return node;
}

/* Copy bitmap for sync=bitmap: exactly the user bitmap's clusters. */
static void
init_copy_bitmap(struct backup_job *s)
{
    uint64_t off = 0, area_off, area_bytes;

    block_copy_reset(s->bcs, 0, s->len);
    while (off < s->len &&
           block_dirty_bitmap_next_dirty_area(s->bitmap, off, s->len - off,
                                              UINT64_MAX, &area_off,
                                              &area_bytes)) {
        block_copy_set_dirty(s->bcs, area_off, area_bytes);
        off = area_off + area_bytes;
    }
}

struct job *
backup_start(const struct backup_options *opts, struct err **errp)
{
    struct job *job = backup_create(opts, errp);

    if (job) {
        job_start(job);
    }
    return job;
}

struct job *
backup_create(const struct backup_options *opts, struct err **errp)
{
    struct backup_args a;
    struct block_node *source, *target, *cbw;
    struct block_dirty_bitmap *bm = NULL, *successor = NULL;
    struct block_copy_state *bcs;
    struct backup_job *s;
    struct job *job;
    uint64_t cluster;
    bool was_enabled = false;
    int64_t len;

    assert_main_thread();
    resolve_args(opts, &a);
    source = lookup_node(a.o.device, errp);
    if (!source) {
        return NULL;
    }
    target = lookup_node(a.o.target, errp);
    if (!target) {
        return NULL;
    }
    if (a.o.has_speed && a.o.speed < 0) {
        err_setf(errp, "Parameter 'speed' expects a non-negative value");
        return NULL;
    }
    if (a.max_workers < 1 || a.max_workers > INT_MAX) {
        err_setf(errp, "max-workers must be between 1 and %d", INT_MAX);
        return NULL;
    }
    if (a.max_chunk < 0) {
        err_setf(errp, "max-chunk must be zero (which means no limit) or "
                 "positive");
        return NULL;
    }
    if (a.min_cluster_size < 0 ||
        (a.min_cluster_size && !is_power_of_2(a.min_cluster_size))) {
        err_setf(errp, "min-cluster-size needs to be a power of 2");
        return NULL;
    }
    if (a.min_cluster_size > BLOCK_COPY_DEFAULT_CLUSTER) {
        err_setf(errp, "x-perf.min-cluster-size above %d is not supported",
                 BLOCK_COPY_DEFAULT_CLUSTER);
        return NULL;
    }
    if (!check_bitmap_args(&a, source, &bm, errp)) {
        return NULL;
    }
    if (source == target) {
        err_setf(errp, "Source and target cannot be the same");
        return NULL;
    }
    if (a.compress) {
        /* No driver here writes compressed clusters; QEMU names the
         * target's device, which nodes of a storage daemon do not have. */
        err_setf(errp, "Compression is not supported for this drive ");
        return NULL;
    }
    /* Nodes another job uses (QEMU's op blockers). */
    if (block_node_op_blocked(source, errp) ||
        block_node_op_blocked(target, errp)) {
        return NULL;
    }
    len = block_getlength(source);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Unable to get length for '%s'",
                       source->node_name);
        return NULL;
    }
    if (block_getlength(target) != len) {
        err_setf(errp, "Source and target image have different sizes");
        return NULL;
    }

    /*
     * One drained section: the bitmap freezes, the filter goes in, the
     * copy bitmap is set, and no write falls between these steps.
     */
    block_drain_begin();
    if (bm) {
        successor = block_dirty_bitmap_create(
            source, NULL, block_dirty_bitmap_granularity(bm), errp);
        if (!successor) {
            block_drain_end();
            return NULL;
        }
        was_enabled = !bm->disabled;
        if (!was_enabled) {
            block_dirty_bitmap_disable(successor);
        }
        block_dirty_bitmap_disable(bm);
        block_dirty_bitmap_set_busy(bm, true);
    }
    /* QEMU backs up read-only nodes (a backing image, say): the filter
     * is read-only too then, and asks for no write on its source. */
    cbw = cbw_append(source, target, &(struct cbw_options) {
                         .filter_node_name = a.o.filter_node_name,
                         .has_on_cbw_error = a.o.has_on_cbw_error,
                         .on_cbw_error = a.o.on_cbw_error,
                         .discard_source = a.discard_source,
                         .read_only = source->read_only && !a.discard_source,
                     }, errp);
    if (!cbw) {
        err_prepend(errp, "Could not create node: ");
        goto out_bitmap;
    }
    bcs = cbw_block_copy_state(cbw);
    cluster = block_copy_cluster_size(bcs);
    if (a.max_chunk && (uint64_t)a.max_chunk < cluster) {
        err_setf(errp, "Required max-chunk (%" PRId64 ") is less than backup "
                 "cluster size (%" PRIu64 ")", a.max_chunk, cluster);
        goto out_cbw;
    }
    job = job_create(&backup_driver, a.o.job_id, a.auto_finalize,
                     a.auto_dismiss, errp);
    if (!job) {
        goto out_cbw;
    }
    s = container_of(job, struct backup_job, job);
    lock_init(&s->rl_lock, LOCK_BACKUP_RL);
    cond_init(&s->rl_cond);
    s->main_h = block_handle_new_job(cbw, "backup", a.o.job_id, "main node", 0,
                                     BLOCK_PERM_ALL, errp);
    s->target_h = s->main_h ?
                  block_handle_new_job(target, "backup", a.o.job_id, "target",
                                       0, BLOCK_PERM_ALL, errp) : NULL;
    if (!s->target_h) {
        block_handle_free(s->main_h);
        s->main_h = NULL;
        job_early_fail(job);
        goto out_cbw;
    }
    block_node_ref(source);
    block_node_ref(target);
    s->source = source;
    s->target = target;
    s->cbw = cbw;
    s->bcs = bcs;
    s->sync = a.o.sync;
    s->bitmap = bm;
    s->successor = successor;
    s->bitmap_was_enabled = was_enabled;
    s->bitmap_mode = a.o.bitmap_mode;
    s->on_source_error = a.on_source_error;
    s->on_target_error = a.on_target_error;
    s->workers = (int)MIN(a.max_workers, BACKUP_MAX_THREADS);
    s->chunk = a.max_chunk ? align_down(a.max_chunk, cluster)
                           : MAX(BACKUP_CHUNK, cluster);
    s->len = (uint64_t)len;

    if (s->sync == BACKUP_SYNC_BITMAP) {
        init_copy_bitmap(s);
    } else if (s->sync == BACKUP_SYNC_TOP) {
        block_copy_set_skip_unallocated(bcs, true);
    }
    block_drain_end();

    if (a.o.speed) {
        job_set_speed(job, a.o.speed, NULL);
    }
    return job;

out_cbw:
    cbw_drop(cbw);
out_bitmap:
    if (bm) {
        block_dirty_bitmap_merge(bm, successor, NULL);
        block_dirty_bitmap_release(successor);
        if (was_enabled) {
            block_dirty_bitmap_enable(bm);
        }
        block_dirty_bitmap_set_busy(bm, false);
    }
    block_drain_end();
    return NULL;
}
