/* SPDX-License-Identifier: MIT */
/*
 * The "copy-before-write" filter: before a guest write, write-zeroes or
 * discard changes clusters of its "file" child (the source), the old data of
 * those clusters is copied to its "target" child, so that the content the
 * source had when the filter was inserted stays readable (the frozen view,
 * read through the snapshot-access driver).  Options are QEMU's: file,
 * target, bitmap, on-cbw-error, cbw-timeout, min-cluster-size.
 *
 * Design notes.
 *
 * Three cluster-granular bitmaps:
 *   - the copy bitmap (in the block-copy state): still to copy;
 *   - access: clusters the snapshot reader may read (initially the copy
 *     bitmap; a snapshot discard clears bits);
 *   - done: clusters whose old data is in the target (set after a
 *     successful copy-before-write; snapshot reads of them go to the
 *     target, all others to the source).
 * access and done are anonymous, disabled dirty bitmaps on the cbw node,
 * so query-named-block-nodes shows them as QEMU does.
 *
 * Order of a guest write (cbw_before_write):
 *   1. block_copy() the clusters the request touches (old data to target;
 *      clusters somebody else is copying are waited for, not copied twice);
 *   2. under s->lock: mark them done (or, on failure with break-snapshot,
 *      break the snapshot), then wait until no snapshot read registered in
 *      the frozen-read list overlaps them;
 *   3. pass the request to the source.
 * A snapshot read takes s->lock, checks access, and for a run that is not
 * done registers itself in the frozen list before reading the source.  So
 * a reader either registered before step 2 (and the writer waits for it) or
 * comes after it and sees "done" (and reads the target, which already has
 * the data).  Readers never wait.
 *
 * Failure of step 1: break-guest-write fails the request with the copy's
 * error and leaves done and the source alone; break-snapshot records the
 * error (every later snapshot access fails with -EACCES, copying stops)
 * and lets the request through.  cbw-timeout bounds step 1; a timeout is a
 * failure (-ETIMEDOUT) under the same policy, and the copy completes in the
 * background (block_copy_state_free() at close waits for it).
 *
 * Permissions: our edges' permissions are fixed at open, so the source
 * child shares WRITE (the guest's edge still holds it while the filter is
 * inserted) and only RESIZE is refused; QEMU additionally stops sharing
 * WRITE once the filter has a parent.  The target child takes read and
 * write and shares everything but RESIZE.
 *
 * Locking: s->lock protects the frozen list and snapshot_error and makes
 * combined updates of access/done atomic (their own bitmap_lock is a leaf
 * under it).  It is never held across I/O, except that a writer waits on
 * s->cond with it.  Lock order: s->lock, then the block-copy state's lock
 * (block_copy_reset is called without s->lock anyway), then node locks.
 */
#include <errno.h>
#include <string.h>

#include "block/filter/copy-before-write.h"
#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

struct cbw_state {
    struct block_child *target;
    struct block_copy_state *bcs;
    uint64_t cluster_size;
    enum cbw_on_error on_error;
    int64_t timeout_ns;             /* 0: none */
    bool discard_source;

    struct lock lock;
    pthread_cond_t cond;            /* a frozen read ended */
    /* Contents changed under lock (plus their own bitmap_lock). */
    struct block_dirty_bitmap *access_bitmap;
    struct block_dirty_bitmap *done_bitmap;
    TAILQ_HEAD(, cbw_frozen_req) frozen;    /* Protected by: lock */
    int snapshot_error;                     /* Protected by: lock */
};

extern const struct block_driver cbw_driver;

/* What cbw_new() tells the filter beyond its options (node->typed_private):
 * the backup job's discard-source, which is not a QMP option. */
struct cbw_private {
    bool discard_source;
};

const char *const cbw_on_error_names[] = {
    [CBW_ON_ERROR_BREAK_GUEST_WRITE] = "break-guest-write",
    [CBW_ON_ERROR_BREAK_SNAPSHOT] = "break-snapshot",
    NULL,
};

static const struct block_opt cbw_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"target", BLOCK_OPT_CHILD, true, NULL},
    {"bitmap", BLOCK_OPT_OBJECT, false, NULL},
    {"on-cbw-error", BLOCK_OPT_STRING, false, cbw_on_error_names},
    {"cbw-timeout", BLOCK_OPT_INT, false, NULL},
    {"min-cluster-size", BLOCK_OPT_SIZE, false, NULL},
    {NULL, 0, false, NULL},
};

/* ---- Open and close --------------------------------------------------- */

/*
 * QEMU's rules.  The target is written (and may be written by others: a
 * guest's disk can sit in its backing chain) but must keep its size.  The
 * source passes the parents' needs through; once the filter has parents,
 * nobody else may write or resize the source, or their writes would
 * bypass the copy (a guest writing the disk directly while a backup or a
 * snapshot reads through the filter).  A filter without parents (just
 * added, not inserted yet) restricts nothing.  discard-source discards
 * copied clusters on the source, so it writes.
 */
static void
cbw_child_perm(struct block_node *node, const char *child_name,
               uint32_t parent_perm, uint32_t parent_shared,
               uint32_t *perm, uint32_t *shared)
{
    struct cbw_state *s = node->opaque;

    if (!strcmp(child_name, "target")) {
        *perm = BLOCK_PERM_WRITE;
        *shared = BLOCK_PERM_ALL & ~BLOCK_PERM_RESIZE;
        return;
    }
    block_default_child_perm(node, child_name, parent_perm, parent_shared,
                             perm, shared);
    if (!TAILQ_EMPTY(&node->parents)) {
        if (parent_perm & BLOCK_PERM_WRITE) {
            *perm |= BLOCK_PERM_CONSISTENT_READ;
        }
        *shared &= ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE);
    }
    if (s->discard_source) {
        *perm |= BLOCK_PERM_WRITE;
    }
}

/* The "bitmap" option: {"node": ..., "name": ...}. */
static const struct block_opt bitmap_opts[] = {
    {"node", BLOCK_OPT_STRING, true, NULL},
    {"name", BLOCK_OPT_STRING, true, NULL},
    {NULL, 0, false, NULL},
};

static bool
lookup_bitmap(json_t *options, struct block_dirty_bitmap **bm,
              struct err **errp)
{
    json_t *ref = block_opt_object(options, "bitmap");

    *bm = NULL;
    if (!ref) {
        return true;
    }
    if (!block_opts_validate_object(options, "bitmap", bitmap_opts, errp)) {
        return false;
    }
    *bm = block_dirty_bitmap_lookup(block_opt_str(ref, "node", NULL),
                                    block_opt_str(ref, "name", NULL), errp);
    return *bm != NULL;
}

static bool
parse_scalars(struct cbw_state *s, json_t *options, uint64_t *min_cluster,
              struct err **errp)
{
    const char *policy = block_opt_str(options, "on-cbw-error",
                                       "break-guest-write");
    int64_t timeout = block_opt_int(options, "cbw-timeout", 0);
    int64_t mcs = block_opt_int(options, "min-cluster-size", 0);

    s->on_error = strcmp(policy, "break-snapshot")
                  ? CBW_ON_ERROR_BREAK_GUEST_WRITE
                  : CBW_ON_ERROR_BREAK_SNAPSHOT;
    if (timeout < 0 || timeout > UINT32_MAX) {
        err_setf(errp, "Parameter 'cbw-timeout' expects uint32_t");
        return false;
    }
    s->timeout_ns = timeout * 1000000000LL;
    if (mcs < 0) {
        err_setf(errp, "Parameter 'min-cluster-size' expects size");
        return false;
    }
    if (mcs && !is_power_of_2((uint64_t)mcs)) {
        err_setf(errp, "min-cluster-size needs to be a power of 2");
        return false;
    }
    *min_cluster = (uint64_t)mcs;
    return true;
}

/* access = the initial copy bitmap; done = empty. */
static bool
create_bitmaps(struct block_node *node, struct cbw_state *s,
               struct err **errp)
{
    uint64_t len = block_copy_length(s->bcs);
    uint64_t off = 0, a, n;

    s->done_bitmap = block_dirty_bitmap_create(node, NULL, s->cluster_size,
                                               errp);
    if (!s->done_bitmap) {
        return false;
    }
    block_dirty_bitmap_disable(s->done_bitmap);
    s->access_bitmap = block_dirty_bitmap_create(node, NULL, s->cluster_size,
                                                 errp);
    if (!s->access_bitmap) {
        return false;
    }
    block_dirty_bitmap_disable(s->access_bitmap);
    while (off < len &&
           block_copy_next_dirty_area(s->bcs, off, len - off, &a, &n)) {
        block_dirty_bitmap_set(s->access_bitmap, a, n);
        off = a + n;
    }
    return true;
}

static void
release_bitmaps(struct cbw_state *s)
{
    if (s->access_bitmap) {
        block_dirty_bitmap_release(s->access_bitmap);
        s->access_bitmap = NULL;
    }
    if (s->done_bitmap) {
        block_dirty_bitmap_release(s->done_bitmap);
        s->done_bitmap = NULL;
    }
}

static int
cbw_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct cbw_state *s = node->opaque;
    const struct cbw_private *priv = node->typed_private;
    struct block_dirty_bitmap *bm;
    struct err *local_err = NULL;
    struct block_node *file;
    uint64_t min_cluster;

    s->discard_source = priv && priv->discard_source;
    if (!parse_scalars(s, options, &min_cluster, errp) ||
        !lookup_bitmap(options, &bm, errp)) {
        return -EINVAL;
    }
    if (!block_node_open_child(node, options, "file", errp)) {
        return -EINVAL;
    }
    s->target = block_node_open_child(node, options, "target", errp);
    if (!s->target) {
        return -EINVAL;
    }
    file = node->file->node;
    s->bcs = block_copy_state_new(file, s->target->node, bm, min_cluster,
                                  s->discard_source, &local_err);
    if (!s->bcs) {
        err_propagate(errp, local_err);
        err_prepend(errp, "Cannot create block-copy-state: ");
        return -EINVAL;
    }
    s->cluster_size = block_copy_cluster_size(s->bcs);
    if (!create_bitmaps(node, s, errp)) {
        release_bitmaps(s);
        block_copy_state_free(s->bcs);
        return -ENOMEM;
    }
    lock_init(&s->lock, LOCK_CBW);
    cond_init(&s->cond);
    TAILQ_INIT(&s->frozen);
    node->limits = file->limits;
    node->supported_write_flags = BLOCK_REQ_FUA | BLOCK_REQ_WRITE_UNCHANGED;
    node->supported_zero_flags = BLOCK_REQ_FUA | BLOCK_REQ_MAY_UNMAP |
                                 BLOCK_REQ_WRITE_UNCHANGED;
    return 0;
}

static void
cbw_close(struct block_node *node)
{
    struct cbw_state *s = node->opaque;

    /* Waits for copies still running after a timeout. */
    block_copy_state_free(s->bcs);
    s->bcs = NULL;
    assert(TAILQ_EMPTY(&s->frozen));
    release_bitmaps(s);
    cond_destroy(&s->cond);
    mutex_destroy(&s->lock);
}

/* ---- Guest path ------------------------------------------------------- */

static bool
frozen_conflict_locked(struct cbw_state *s, uint64_t offset, uint64_t bytes)
{
    struct cbw_frozen_req *r;

    TAILQ_FOREACH(r, &s->frozen, link) {
        if (ranges_overlap(offset, bytes, r->offset, r->bytes)) {
            return true;
        }
    }
    return false;
}

/*
 * The copy-before-write step for a request that changes [offset, +bytes)
 * of the source.  0: go ahead with the request; -errno: fail it.
 */
static int
cbw_before_write(struct block_node *node, uint64_t offset, uint64_t bytes,
                 unsigned flags)
{
    struct cbw_state *s = node->opaque;
    uint64_t len = block_copy_length(s->bcs);
    uint64_t start, end;
    int ret;

    if ((flags & BLOCK_REQ_WRITE_UNCHANGED) || offset >= len || !bytes) {
        return 0;
    }
    mutex_lock(&s->lock);
    ret = s->snapshot_error;
    mutex_unlock(&s->lock);
    if (ret) {
        return 0;   /* the snapshot is broken: nothing left to protect */
    }
    start = align_down(offset, s->cluster_size);
    end = MIN(align_up(MIN(offset + bytes, len), s->cluster_size), len);

    ret = block_copy(s->bcs, start, end - start, false, s->timeout_ns, NULL);
    if (ret < 0 && s->on_error == CBW_ON_ERROR_BREAK_GUEST_WRITE) {
        return ret;
    }
    mutex_lock(&s->lock);
    if (ret < 0) {
        if (!s->snapshot_error) {
            s->snapshot_error = ret;
        }
    } else {
        block_dirty_bitmap_set(s->done_bitmap, start, end - start);
    }
    while (frozen_conflict_locked(s, start, end - start)) {
        cond_wait(&s->cond, &s->lock);
    }
    mutex_unlock(&s->lock);
    return 0;
}

static int
cbw_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
           const void *buf, unsigned flags)
{
    int ret = cbw_before_write(node, offset, bytes, flags);

    if (ret < 0) {
        return ret;
    }
    return block_pwrite(node->file->node, offset, bytes, buf, flags);
}

static int
cbw_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                  unsigned flags)
{
    int ret = cbw_before_write(node, offset, bytes, flags);

    if (ret < 0) {
        return ret;
    }
    return block_pwrite_zeroes(node->file->node, offset, bytes, flags);
}

static int
cbw_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    int ret = cbw_before_write(node, offset, bytes, 0);

    if (ret < 0) {
        return ret;
    }
    return block_pdiscard(node->file->node, offset, bytes);
}

static int
cbw_flush(struct block_node *node)
{
    (void)node;
    /* The core flushes the children after us. */
    return 0;
}

static int
cbw_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    (void)length;
    err_setf(errp, "Cannot resize '%s' while copy-before-write is active",
             node->node_name);
    return -ENOTSUP;
}

/* ---- Snapshot API ----------------------------------------------------- */

bool
cbw_is_cbw(struct block_node *node)
{
    return node && node->drv == &cbw_driver;
}

int
cbw_snapshot_lock(struct block_node *node, uint64_t offset, uint64_t bytes,
                  struct cbw_snapshot_lock *lk)
{
    struct cbw_state *s;
    uint64_t pnum;
    bool done;

    if (!cbw_is_cbw(node)) {
        return -ENOTSUP;
    }
    s = node->opaque;
    memset(lk, 0, sizeof(*lk));
    if (!bytes) {
        return -EINVAL;
    }
    SCOPED_LOCK(&s->lock);
    if (s->snapshot_error ||
        block_dirty_bitmap_next_zero(s->access_bitmap, offset, bytes) >= 0) {
        return -EACCES;
    }
    done = block_dirty_bitmap_status(s->done_bitmap, offset, bytes, &pnum);
    lk->offset = offset;
    lk->bytes = MIN(pnum, bytes);
    if (done) {
        lk->node = s->target->node;
    } else {
        lk->node = node->file->node;
        lk->frozen = true;
        lk->req.offset = offset;
        lk->req.bytes = lk->bytes;
        TAILQ_INSERT_TAIL(&s->frozen, &lk->req, link);
    }
    return 0;
}

void
cbw_snapshot_unlock(struct block_node *node, struct cbw_snapshot_lock *lk)
{
    struct cbw_state *s = node->opaque;

    if (!lk->frozen) {
        return;
    }
    SCOPED_LOCK(&s->lock);
    TAILQ_REMOVE(&s->frozen, &lk->req, link);
    lk->frozen = false;
    cond_broadcast(&s->cond);
}

int
cbw_snapshot_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
                   void *buf)
{
    struct cbw_snapshot_lock lk;
    int ret;

    while (bytes > 0) {
        ret = cbw_snapshot_lock(node, offset, bytes, &lk);
        if (ret < 0) {
            return ret;
        }
        ret = block_pread(lk.node, lk.offset, lk.bytes, buf, 0);
        cbw_snapshot_unlock(node, &lk);
        if (ret < 0) {
            return ret;
        }
        offset += lk.bytes;
        bytes -= lk.bytes;
        buf = (char *)buf + lk.bytes;
    }
    return 0;
}

int
cbw_snapshot_block_status(struct block_node *node, uint64_t offset,
                          uint64_t bytes, uint64_t *pnum)
{
    struct cbw_snapshot_lock lk;
    int ret;

    ret = cbw_snapshot_lock(node, offset, bytes, &lk);
    if (ret < 0) {
        return ret;
    }
    ret = block_status(lk.node, lk.offset, lk.bytes, pnum, NULL);
    cbw_snapshot_unlock(node, &lk);
    if (ret < 0) {
        return ret;
    }
    return ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO);
}

int
cbw_snapshot_pdiscard(struct block_node *node, uint64_t offset,
                      uint64_t bytes)
{
    struct cbw_state *s;
    uint64_t len, start, end;

    if (!cbw_is_cbw(node)) {
        return -ENOTSUP;
    }
    s = node->opaque;
    len = block_copy_length(s->bcs);
    if (offset >= len) {
        return 0;
    }
    bytes = MIN(bytes, len - offset);
    start = align_up(offset, s->cluster_size);
    end = offset + bytes == len ? len
                                : align_down(offset + bytes, s->cluster_size);
    if (start >= end) {
        return 0;
    }
    mutex_lock(&s->lock);
    if (s->snapshot_error) {
        mutex_unlock(&s->lock);
        return -EACCES;
    }
    block_dirty_bitmap_reset(s->access_bitmap, start, end - start);
    mutex_unlock(&s->lock);
    block_copy_reset(s->bcs, start, end - start);
    return block_pdiscard(s->target->node, start, end - start);
}

struct block_copy_state *
cbw_block_copy_state(struct block_node *node)
{
    return cbw_is_cbw(node) ? ((struct cbw_state *)node->opaque)->bcs : NULL;
}

int
cbw_snapshot_error(struct block_node *node)
{
    struct cbw_state *s;

    if (!cbw_is_cbw(node)) {
        return -ENOTSUP;
    }
    s = node->opaque;
    SCOPED_LOCK(&s->lock);
    return s->snapshot_error;
}

/* ---- For the backup job and replication -------------------------------- */

struct block_node *
cbw_new(struct block_node *source, struct block_node *target,
        const struct cbw_options *o, struct err **errp)
{
    struct block_setting set[8];
    const struct cbw_private priv = { .discard_source = o->discard_source };
    size_t n = 0;

    set[n++] = BLOCK_SET_NODE("file", source);
    set[n++] = BLOCK_SET_NODE("target", target);
    if (o->read_only) {
        set[n++] = BLOCK_SET_BOOL("read-only", true);
    }
    if (o->filter_node_name) {
        set[n++] = BLOCK_SET_STR("node-name", o->filter_node_name);
    }
    if (o->has_on_cbw_error) {
        set[n++] = BLOCK_SET_STR("on-cbw-error",
                                 cbw_on_error_names[o->on_cbw_error]);
    }
    if (o->min_cluster_size) {
        set[n++] = BLOCK_SET_INT("min-cluster-size",
                                 (int64_t)o->min_cluster_size);
    }
    set[n] = (struct block_setting) { .name = NULL };
    return block_node_new_typed_private("copy-before-write", set, &priv,
                                        sizeof(priv), errp);
}

struct block_node *
cbw_append(struct block_node *source, struct block_node *target,
           const struct cbw_options *o, struct err **errp)
{
    struct block_node *cbw = cbw_new(source, target, o, errp);

    if (!cbw) {
        return NULL;
    }
    if (block_replace_node(source, cbw, errp) < 0) {
        block_node_unref(cbw);
        return NULL;
    }
    return cbw;
}

void
cbw_drop(struct block_node *cbw)
{
    if (!cbw) {
        return;
    }
    /* Going back to the state before cbw_append cannot conflict. */
    block_replace_node(cbw, cbw->file->node, NULL);
    block_node_unref(cbw);
}

const struct block_driver cbw_driver = {
    .name = "copy-before-write",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct cbw_state),
    .options = cbw_opts,
    .open = cbw_open,
    .close = cbw_close,
    .pwrite = cbw_pwrite,
    .pwrite_zeroes = cbw_pwrite_zeroes,
    .pdiscard = cbw_pdiscard,
    .flush = cbw_flush,
    .truncate = cbw_truncate,
    .child_perm = cbw_child_perm,
};
