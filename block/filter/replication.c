/* SPDX-License-Identifier: MIT */
/*
 * The "replication" filter: the disk half of COLO.  On the primary it
 * forwards the guest's writes to the secondary (its file is an NBD client)
 * and never reads; on the secondary it sits above the active disk of the
 * chain active -> hidden -> secondary disk and serves the secondary guest,
 * whose view is "the disk at the last checkpoint plus its own writes".
 * Options as QEMU's: mode (primary | secondary), top-id (secondary only),
 * file.  docs/replication.md has the picture and a QMP recipe.
 *
 * Design notes.
 *
 * - Stages (enum replication_stage) move one way: NONE -> RUNNING at start;
 *   RUNNING -> DONE at a primary stop or a secondary stop without
 *   failover; RUNNING -> FAILOVER -> DONE | FAILOVER_FAILED at a secondary
 *   failover.  Unlike QEMU, FAILOVER_FAILED may go to FAILOVER again (a
 *   stop retries the commit), a secondary stop without failover works (a
 *   checkpoint, then DONE), and a failover in progress is not reported as
 *   an error.  Stages change on the main thread; requests read them with
 *   atomic loads.  Changes that alter where requests go (DONE: the file
 *   edge moves) happen inside a drained section.
 *
 * - I/O (QEMU's rules, docs/replication.md): NONE fails every read and write with -EIO.
 *   Primary: reads always -EIO; writes go to file while RUNNING and a
 *   failure there is recorded (get_error reports "I/O error occurred") but
 *   the write succeeds, so that a dead secondary does not stop the guest;
 *   after RUNNING writes fail with -EIO.  Secondary: everything goes to
 *   file in every stage after NONE (the active disk chain while RUNNING,
 *   FAILOVER and FAILOVER_FAILED, the secondary disk after DONE).
 *   Discard is dropped (QEMU's filter has none, and a discard in the
 *   active overlay would expose older data of the hidden/secondary disks).
 *
 * - Secondary start: checks the chain and lengths, then puts a
 *   copy-before-write filter (file = secondary disk, target = hidden disk)
 *   above the secondary disk for its non-backing parents only: the NBD
 *   export's edge (and any other user) now writes through the filter, while
 *   the hidden disk's backing edge keeps reading the secondary disk
 *   directly (as in QEMU, where the backup job's filter does not take over
 *   backing edges): block_replace_node_except() with backing edges as the
 *   exception.  The filter's block-copy state is the copy bitmap that
 *   checkpoints re-arm.
 *
 * - Active and hidden disks must be writable while replication runs: a
 *   hidden disk opened inline as "backing" is read-only by default, so
 *   start reopens it read-write (block_node_set_read_only(), which closes
 *   and opens the node again in place).  Unlike QEMU we do not switch it
 *   back at stop: after a failover or a stop the overlays are dropped
 *   from the chain anyway.
 *
 * - Checkpoint (drained): every cluster of the copy bitmap becomes dirty
 *   again, then the active and hidden disks are emptied (make_empty).
 *
 * - Failover (secondary stop with failover=true) is a commit job
 *   (job/commit.c, failover_start(); the stop command returns at once),
 *   while the secondary guest keeps writing:
 *     1. replication_failover_begin(), drained: remove the
 *        copy-before-write filter (the export writes the secondary disk
 *        directly again; COLO stops the NBD server before failover
 *        anyway), stage FAILOVER; the job's bitmap starts recording the
 *        guest's writes to the active disk;
 *     2. the job's thread, not drained, inside the graph: copy every range
 *        that the active or the hidden disk defines (block status of the
 *        active disk names the layer) from the active disk's view into
 *        the secondary disk, then what the bitmap recorded meanwhile;
 *     3. the job's prepare, drained: copy what is still dirty, flush, then
 *        replication_failover_finish(): point file at the secondary disk,
 *        stage DONE.
 *   The secondary disk then holds the secondary's view: the last checkpoint
 *   plus its own writes.  Primary writes since the last checkpoint are
 *   rolled back, because the hidden disk's old data is copied back too
 *   (QEMU does the same; its unit test's 0x22 expectation is wrong).  A
 *   failed or cancelled job leaves FAILOVER_FAILED
 *   (replication_failover_failed()); I/O keeps using the active chain and
 *   the next stop starts the job again.
 *
 * - A secondary guest read that falls through to the secondary disk
 *   while a primary write to that cluster is being copied away cannot see
 *   the new data: the hidden disk's read (its allocation check and its
 *   backing read) holds the qcow2 range lock that the copy's write into
 *   the hidden disk needs, and block-copy makes that write serialising
 *   because the target backs onto the source (QEMU's image fleecing rule).
 *   test_secondary_reads_during_primary_writes checks it under load. *
 * Locking: the list of nodes and every field of replication_state except
 * stage and error are main-thread only.  stage and error are atomics
 * (requests read stage and record primary write errors).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "block/copy/block-copy.h"
#include "block/filter/copy-before-write.h"
#include "block/filter/replication.h"
#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "runtime/loop.h"
#include "util.h"

extern const struct block_driver replication_driver;

struct replication_state {
    struct block_node *node;
    enum replication_mode mode;
    int stage;               /* enum replication_stage; atomic */
    int error;               /* 0 or -errno; atomic */
    char *top_id;
    /* Secondary, from start to DONE (references held). */
    struct block_node *active;
    struct block_node *hidden;
    struct block_node *secondary;
    struct block_node *cbw;  /* RUNNING only */
    struct block_copy_state *bcs;
    /* Primary, from start: disabled, anonymous; the ranges whose write to
     * the secondary failed (bits set by requests: the bitmap's lock). */
    struct block_dirty_bitmap *lost;
    TAILQ_ENTRY(replication_state) link;
};

/* All replication nodes, newest first.  Main thread. */
static TAILQ_HEAD(, replication_state) replication_nodes =
    TAILQ_HEAD_INITIALIZER(replication_nodes);

static const struct block_opt replication_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"mode", BLOCK_OPT_STRING, false, NULL},
    {"top-id", BLOCK_OPT_STRING, false, NULL},
    {NULL, 0, false, NULL},
};

static enum replication_stage
get_stage(struct replication_state *s)
{
    return (enum replication_stage)__atomic_load_n(&s->stage,
                                                   __ATOMIC_ACQUIRE);
}

/* The only transitions there are (main thread). */
static bool
stage_transition_ok(enum replication_stage from, enum replication_stage to)
{
    switch (from) {
    case REPLICATION_STAGE_NONE:
        return to == REPLICATION_STAGE_RUNNING;
    case REPLICATION_STAGE_RUNNING:
        return to == REPLICATION_STAGE_FAILOVER ||
               to == REPLICATION_STAGE_DONE;
    case REPLICATION_STAGE_FAILOVER:
        return to == REPLICATION_STAGE_DONE ||
               to == REPLICATION_STAGE_FAILOVER_FAILED;
    case REPLICATION_STAGE_FAILOVER_FAILED:
        return to == REPLICATION_STAGE_FAILOVER;   /* a retry */
    case REPLICATION_STAGE_DONE:
        return false;
    }
    return false;
}

static void
set_stage(struct replication_state *s, enum replication_stage stage)
{
    assert(stage_transition_ok(get_stage(s), stage));
    __atomic_store_n(&s->stage, (int)stage, __ATOMIC_RELEASE);
}

static int
get_error(struct replication_state *s)
{
    return __atomic_load_n(&s->error, __ATOMIC_ACQUIRE);
}

static void
set_error(struct replication_state *s, int error)
{
    __atomic_store_n(&s->error, error, __ATOMIC_RELEASE);
}

/* ---- Open and close --------------------------------------------------- */

static int
replication_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct replication_state *s = node->opaque;
    const char *mode = block_opt_str(options, "mode", NULL);
    const char *top_id = block_opt_str(options, "top-id", NULL);

    if (!mode) {
        err_setf(errp, "Missing the option mode");
        return -EINVAL;
    }
    if (!strcmp(mode, "primary")) {
        s->mode = REPLICATION_MODE_PRIMARY;
        if (top_id) {
            err_setf(errp, "The primary side does not support option "
                     "top-id");
            return -EINVAL;
        }
    } else if (!strcmp(mode, "secondary")) {
        s->mode = REPLICATION_MODE_SECONDARY;
        if (!top_id) {
            err_setf(errp, "Missing the option top-id");
            return -EINVAL;
        }
    } else {
        err_setf(errp, "The option mode's value should be primary or "
                 "secondary");
        return -EINVAL;
    }
    if (!block_node_open_child(node, options, "file", errp)) {
        return -EINVAL;
    }
    s->node = node;
    s->top_id = top_id ? xstrdup(top_id) : NULL;
    s->stage = REPLICATION_STAGE_NONE;
    node->limits = node->file->node->limits;
    TAILQ_INSERT_HEAD(&replication_nodes, s, link);
    return 0;
}

static void remove_cbw(struct replication_state *s);
static void drop_chain(struct replication_state *s);

static void
replication_close(struct block_node *node)
{
    struct replication_state *s = node->opaque;

    /* Nobody uses the node any more: no checkpoint, just undo the graph
     * changes (QEMU leaves the overlays as they are too). */
    if (s->lost) {
        block_dirty_bitmap_release(s->lost);
        s->lost = NULL;
    }
    remove_cbw(s);
    drop_chain(s);
    TAILQ_REMOVE(&replication_nodes, s, link);
    free(s->top_id);
}

/* ---- I/O --------------------------------------------------------------- */

static int
replication_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
                  void *buf, unsigned flags)
{
    struct replication_state *s = node->opaque;

    if (s->mode == REPLICATION_MODE_PRIMARY ||
        get_stage(s) == REPLICATION_STAGE_NONE) {
        return -EIO;
    }
    return block_pread(node->file->node, offset, bytes, buf, flags);
}

/* buf == NULL: write zeroes. */
static int
replication_write(struct block_node *node, uint64_t offset, uint64_t bytes,
                  const void *buf, unsigned flags)
{
    struct replication_state *s = node->opaque;
    enum replication_stage stage = get_stage(s);
    struct block_node *file = node->file->node;
    int ret;

    if (stage == REPLICATION_STAGE_NONE) {
        return -EIO;
    }
    if (s->mode == REPLICATION_MODE_PRIMARY &&
        stage != REPLICATION_STAGE_RUNNING) {
        return -EIO;
    }
    ret = buf ? block_pwrite(file, offset, bytes, buf, flags)
              : block_pwrite_zeroes(file, offset, bytes, flags);
    if (ret < 0 && s->mode == REPLICATION_MODE_PRIMARY) {
        /* Recorded for get_error; the guest's write goes on (case 2 of
         * QEMU's failure list: reported to the FT manager). */
        int expected = 0;

        __atomic_compare_exchange_n(&s->error, &expected, ret, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
        if (s->lost) {
            block_dirty_bitmap_set(s->lost, offset, bytes);
        }
        return 0;
    }
    return ret;
}

static int
replication_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
                   const void *buf, unsigned flags)
{
    return replication_write(node, offset, bytes, buf, flags);
}

static int
replication_pwrite_zeroes(struct block_node *node, uint64_t offset,
                          uint64_t bytes, unsigned flags)
{
    return replication_write(node, offset, bytes, NULL, flags);
}

static int
replication_pdiscard(struct block_node *node UNUSED, uint64_t offset UNUSED,
                     uint64_t bytes UNUSED)
{
    return 0;
}

/* ---- Graph helpers (main thread) -------------------------------------- */

static bool
has_handle_parent(struct block_node *node)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &node->parents, parent_link) {
        if (!c->parent_node) {
            return true;
        }
    }
    return false;
}

static bool
reaches(struct block_node *from, struct block_node *to, int depth)
{
    struct block_child *c;

    if (from == to) {
        return true;
    }
    if (depth > 64) {
        return false;
    }
    TAILQ_FOREACH(c, &from->children, child_link) {
        if (reaches(c->node, to, depth + 1)) {
            return true;
        }
    }
    return false;
}

/* Backing edges stay where they are when the filter goes in or out: the
 * hidden disk keeps reading the secondary disk directly, as in QEMU. */
static bool
is_backing_edge(const struct block_child *c, void *opaque UNUSED)
{
    return c->parent_node && c->parent_node->backing == c;
}

/*
 * Move the parents of "from" that are not backing edges (and not "to"
 * itself) to "to", all at once.  On failure nothing moved.
 */
static int
move_data_parents(struct block_node *from, struct block_node *to,
                  struct err **errp)
{
    return block_replace_node_except(from, to, is_backing_edge, NULL, NULL,
                                     errp);
}

/* Take the copy-before-write filter out again (drains itself). */
static void
remove_cbw(struct replication_state *s)
{
    if (!s->cbw) {
        return;
    }
    block_drain_begin();
    /* Going back to where the edges were does not conflict; if it did, the
     * edges would stay on the filter, which keeps working. */
    (void)move_data_parents(s->cbw, s->secondary, NULL);
    block_node_unref(s->cbw);
    s->cbw = NULL;
    s->bcs = NULL;
    block_drain_end();
}

static void
drop_chain(struct replication_state *s)
{
    block_node_unref(s->active);
    block_node_unref(s->hidden);
    block_node_unref(s->secondary);
    s->active = s->hidden = s->secondary = NULL;
}

/* Empty active and hidden and re-arm the copy bitmap.  Drained. */
static int
secondary_checkpoint(struct replication_state *s, struct err **errp)
{
    int ret;

    if (!s->bcs) {
        err_setf(errp, "Backup job was cancelled unexpectedly");
        return -EIO;
    }
    block_drain_begin();
    block_copy_set_dirty(s->bcs, 0, block_copy_length(s->bcs));
    ret = block_make_empty(s->active, errp);
    if (ret == 0) {
        ret = block_make_empty(s->hidden, errp);
    }
    block_drain_end();
    return ret;
}

/* ---- Start ------------------------------------------------------------- */

static int
secondary_start(struct replication_state *s, struct err **errp)
{
    struct block_node *node = s->node;
    struct block_node *active = node->file->node, *hidden, *sec, *top, *cbw;
    struct block_copy_state *bcs;
    int64_t alen, hlen, slen;
    int ret;

    if (!active->backing) {
        err_setf(errp, "Active disk doesn't have backing file");
        return -EINVAL;
    }
    hidden = active->backing->node;
    if (!hidden->backing) {
        err_setf(errp, "Hidden disk doesn't have backing file");
        return -EINVAL;
    }
    sec = hidden->backing->node;
    if (!has_handle_parent(sec)) {
        err_setf(errp, "The secondary disk doesn't have block backend");
        return -EINVAL;
    }
    alen = block_getlength(active);
    hlen = block_getlength(hidden);
    slen = block_getlength(sec);
    if (alen < 0 || hlen < 0 || slen < 0 || alen != hlen || hlen != slen) {
        err_setf(errp, "Active disk, hidden disk, secondary disk's length "
                 "are not the same");
        return -EINVAL;
    }
    if (!active->drv->make_empty || !hidden->drv->make_empty) {
        err_setf(errp, "Active disk or hidden disk doesn't support "
                 "make_empty");
        return -ENOTSUP;
    }
    if (active->read_only || sec->read_only) {
        /* The active disk is our own file (QEMU never reopens it either). */
        struct block_node *ro = active->read_only ? active : sec;

        err_setf(errp, "Block node '%s' is read-only: replication needs the "
                 "active and secondary disks opened read-write",
                 ro->node_name);
        return -EPERM;
    }
    top = block_node_find(s->top_id);
    if (!top || !has_handle_parent(top) || !reaches(top, node, 0)) {
        err_setf(errp, "No top_bs or it is invalid");
        return -EINVAL;
    }
    if (!block_driver_find("copy-before-write")) {
        err_setf(errp, "The copy-before-write filter is not available");
        return -ENOTSUP;
    }
    /* A hidden disk opened as a backing is read-only: reopen it
     * read-write, as QEMU does.  It stays so. */
    if (hidden->read_only &&
        block_node_set_read_only(hidden, false, errp) < 0) {
        return -EPERM;
    }

    cbw = cbw_new(sec, hidden, &(struct cbw_options) { 0 }, errp);
    if (!cbw) {
        return -EINVAL;
    }
    bcs = cbw_block_copy_state(cbw);
    if (!bcs) {
        err_setf(errp, "The copy-before-write filter has no copy state");
        block_node_unref(cbw);
        return -EINVAL;
    }
    block_drain_begin();
    ret = move_data_parents(sec, cbw, errp);
    if (ret < 0) {
        block_drain_end();
        block_node_unref(cbw);
        return ret;
    }
    block_node_ref(active);
    block_node_ref(hidden);
    block_node_ref(sec);
    s->active = active;
    s->hidden = hidden;
    s->secondary = sec;
    s->cbw = cbw;
    s->bcs = bcs;
    /* Stale content of an earlier run goes (QEMU checkpoints here too). */
    ret = secondary_checkpoint(s, errp);
    if (ret < 0) {
        block_drain_end();
        remove_cbw(s);
        drop_chain(s);
        return ret;
    }
    set_error(s, 0);
    set_stage(s, REPLICATION_STAGE_RUNNING);
    block_drain_end();
    return 0;
}

int
replication_start(struct block_node *node, enum replication_mode mode,
                  struct err **errp)
{
    struct replication_state *s = node->opaque;
    enum replication_stage stage = get_stage(s);

    if (stage == REPLICATION_STAGE_DONE ||
        stage == REPLICATION_STAGE_FAILOVER) {
        /* A promoted secondary ignores COLO's later calls (continuous
         * replication). */
        return 0;
    }
    if (stage != REPLICATION_STAGE_NONE) {
        err_setf(errp, "Block replication is running or done");
        return -EBUSY;
    }
    if (s->mode != mode) {
        err_setf(errp, "The parameter mode's value is invalid, needs %d, "
                 "but got %d", (int)s->mode, (int)mode);
        return -EINVAL;
    }
    if (s->mode == REPLICATION_MODE_SECONDARY) {
        return secondary_start(s, errp);
    }
    block_drain_begin();
    if (!s->lost) {
        s->lost = block_dirty_bitmap_create(node, NULL,
                                            REPLICATION_RESYNC_GRANULARITY,
                                            errp);
        if (!s->lost) {
            block_drain_end();
            return -ENOMEM;
        }
        block_dirty_bitmap_disable(s->lost);
    }
    set_error(s, 0);
    set_stage(s, REPLICATION_STAGE_RUNNING);
    block_drain_end();
    return 0;
}

int
replication_primary_detach(struct block_node *node, struct block_node *parent,
                           struct err **errp)
{
    struct replication_state *s = node->opaque;
    struct block_dirty_bitmap *bm;
    struct err *local = NULL;

    if (!block_node_is_replication(node) ||
        s->mode != REPLICATION_MODE_PRIMARY) {
        return 0;
    }
    bm = block_dirty_bitmap_find(parent, REPLICATION_RESYNC_BITMAP);
    if (!bm) {
        bm = block_dirty_bitmap_create(parent, REPLICATION_RESYNC_BITMAP,
                                       REPLICATION_RESYNC_GRANULARITY, errp);
        if (!bm) {
            return -ENOMEM;
        }
    }
    block_dirty_bitmap_enable(bm);
    if (s->lost && !block_dirty_bitmap_merge(bm, s->lost, &local)) {
        /* Cannot tell what was lost: everything is. */
        err_free(local);
        block_dirty_bitmap_set(bm, 0, block_dirty_bitmap_size(bm));
    }
    if (s->lost) {
        block_dirty_bitmap_clear(s->lost);
    }
    return 0;
}

/* ---- Checkpoint -------------------------------------------------------- */

int
replication_do_checkpoint(struct block_node *node, struct err **errp)
{
    struct replication_state *s = node->opaque;
    enum replication_stage stage = get_stage(s);

    if (stage == REPLICATION_STAGE_DONE ||
        stage == REPLICATION_STAGE_FAILOVER) {
        return 0;
    }
    if (s->mode == REPLICATION_MODE_PRIMARY) {
        return 0;
    }
    if (stage == REPLICATION_STAGE_FAILOVER_FAILED) {
        err_setf(errp, "Block replication failover failed; stop it again "
                 "to retry");
        return -EIO;
    }
    /* NONE: no copy state yet, QEMU's message. */
    return secondary_checkpoint(s, errp);
}

/* ---- Failover (run by a commit job, job/commit.c) ----------------------- */

int
replication_failover_begin(struct block_node *node,
                           struct replication_failover *f, struct err **errp)
{
    struct replication_state *s = node->opaque;
    enum replication_stage stage = get_stage(s);

    assert_main_thread();
    if (s->mode != REPLICATION_MODE_SECONDARY ||
        (stage != REPLICATION_STAGE_RUNNING &&
         stage != REPLICATION_STAGE_FAILOVER_FAILED)) {
        err_setf(errp, "Block replication of '%s' cannot fail over",
                 node->node_name);
        return -EINVAL;
    }
    /* The export writes the secondary disk directly again (COLO stops
     * the NBD server before failover anyway). */
    block_drain_begin();
    remove_cbw(s);
    set_stage(s, REPLICATION_STAGE_FAILOVER);
    block_drain_end();
    *f = (struct replication_failover) {
        .active = s->active,
        .hidden = s->hidden,
        .secondary = s->secondary,
    };
    return 0;
}

int
replication_failover_finish(struct block_node *node, struct err **errp)
{
    struct replication_state *s = node->opaque;
    int ret;

    assert_main_thread();
    ret = block_child_replace_node(node->file, s->secondary, errp);
    if (ret < 0) {
        return ret;
    }
    drop_chain(s);
    set_error(s, 0);
    set_stage(s, REPLICATION_STAGE_DONE);
    return 0;
}

void
replication_failover_failed(struct block_node *node, int error)
{
    struct replication_state *s = node->opaque;

    assert_main_thread();
    set_error(s, error < 0 ? error : -EIO);
    set_stage(s, REPLICATION_STAGE_FAILOVER_FAILED);
}

/* Stop without failover: a checkpoint, then the secondary disk alone. */
static int
secondary_stop(struct replication_state *s, struct err **errp)
{
    struct err *local = NULL;
    int ret;

    block_drain_begin();
    ret = secondary_checkpoint(s, errp);
    if (ret < 0) {
        block_drain_end();
        return ret;
    }
    remove_cbw(s);
    /* Active and hidden are empty: the secondary disk is the same view. */
    ret = block_child_replace_node(s->node->file, s->secondary, &local);
    /* On failure keep going on the (empty) active chain: same view. */
    err_free(local);
    drop_chain(s);
    set_error(s, 0);
    set_stage(s, REPLICATION_STAGE_DONE);
    block_drain_end();
    return 0;
}

int
replication_stop(struct block_node *node, struct err **errp)
{
    struct replication_state *s = node->opaque;
    enum replication_stage stage = get_stage(s);

    if (stage == REPLICATION_STAGE_DONE ||
        stage == REPLICATION_STAGE_FAILOVER) {
        return 0;
    }
    if (stage == REPLICATION_STAGE_FAILOVER_FAILED) {
        err_setf(errp, "Block replication failover failed; stop it with "
                 "failover to retry");
        return -EIO;
    }
    if (stage != REPLICATION_STAGE_RUNNING) {
        err_setf(errp, "Block replication is not running");
        return -EINVAL;
    }
    if (s->mode == REPLICATION_MODE_PRIMARY) {
        set_error(s, 0);
        set_stage(s, REPLICATION_STAGE_DONE);
        return 0;
    }
    return secondary_stop(s, errp);
}

/* ---- get_error and the rest -------------------------------------------- */

int
replication_get_error(struct block_node *node, struct err **errp)
{
    struct replication_state *s = node->opaque;

    if (get_stage(s) == REPLICATION_STAGE_NONE) {
        err_setf(errp, "Block replication is not running");
        return -EINVAL;
    }
    if (get_error(s) < 0) {
        err_setf(errp, "I/O error occurred");
        return get_error(s);
    }
    return 0;
}

bool
block_node_is_replication(struct block_node *node)
{
    return node && node->drv == &replication_driver;
}

enum replication_stage
replication_get_stage(struct block_node *node)
{
    return get_stage(node->opaque);
}

enum replication_mode
replication_get_mode(struct block_node *node)
{
    struct replication_state *s = node->opaque;

    return s->mode;
}

struct block_node *
replication_next(struct block_node *prev)
{
    struct replication_state *s = prev ? prev->opaque : NULL;

    s = s ? TAILQ_NEXT(s, link) : TAILQ_FIRST(&replication_nodes);
    return s ? s->node : NULL;
}

struct block_node *
replication_cbw_node(struct block_node *node)
{
    struct replication_state *s = node->opaque;

    return s->cbw;
}

bool
replication_start_all(bool primary, struct err **errp)
{
    struct replication_state *s;

    TAILQ_FOREACH(s, &replication_nodes, link) {
        if (replication_start(s->node, primary ? REPLICATION_MODE_PRIMARY :
                              REPLICATION_MODE_SECONDARY, errp) < 0) {
            return false;
        }
    }
    return true;
}

bool
replication_checkpoint_all(struct err **errp)
{
    struct replication_state *s;

    TAILQ_FOREACH(s, &replication_nodes, link) {
        if (replication_do_checkpoint(s->node, errp) < 0) {
            return false;
        }
    }
    return true;
}

/*
 * QEMU's rules: read (and write, unless read-only) the file whatever the
 * parents do, since the driver writes it for its own reasons (the primary
 * forwards writes, the secondary's checkpoints empty the overlays); let
 * others read and write it, but not resize it.
 */
static void
replication_child_perm(struct block_node *node, const char *child_name UNUSED,
                       uint32_t parent_perm UNUSED,
                       uint32_t parent_shared UNUSED, uint32_t *perm,
                       uint32_t *shared)
{
    *perm = BLOCK_PERM_CONSISTENT_READ |
            (node->read_only ? 0 : BLOCK_PERM_WRITE);
    *shared = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE |
              BLOCK_PERM_WRITE_UNCHANGED;
}

const struct block_driver replication_driver = {
    .name = "replication",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct replication_state),
    .options = replication_opts,
    .open = replication_open,
    .close = replication_close,
    .pread = replication_pread,
    .pwrite = replication_pwrite,
    .pwrite_zeroes = replication_pwrite_zeroes,
    .pdiscard = replication_pdiscard,
    .child_perm = replication_child_perm,
};
