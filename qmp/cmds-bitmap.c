/* SPDX-License-Identifier: MIT */
/*
 * Dirty bitmap commands (block-dirty-bitmap-add/-remove/-clear/-enable/
 * -disable/-merge, x-debug-block-dirty-bitmap-sha256).  Each changing
 * command is written as a transaction action with prepare/commit/abort
 * (the standalone command runs it as a one-action transaction), so that
 * "transaction" can combine them all-or-nothing.  Checks and messages
 * follow QEMU 7.2's.  Main thread.
 */
#include <errno.h>
#include <string.h>

#include "hbitmap.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/* QEMU's limits for block-dirty-bitmap-add. */
#define BITMAP_MIN_GRANULARITY 512
#define BITMAP_NAME_MAX 1023

struct bm_state {
    struct block_dirty_bitmap *bm;
    struct hbitmap *backup;     /* content before clear/merge */
    bool was_disabled;
};

/* QEMU's block_dirty_bitmap_lookup(): "Node 'x' not found", then
 * "Dirty bitmap 'b' not found". */
static struct block_dirty_bitmap *
bitmap_lookup(const char *node_name, const char *name, struct err **errp)
{
    struct block_node *node = block_node_find(node_name);
    struct block_dirty_bitmap *bm;

    if (!node) {
        err_setf(errp, "Node '%s' not found", node_name);
        return NULL;
    }
    bm = block_dirty_bitmap_find(node, name);
    if (!bm) {
        err_setf(errp, "Dirty bitmap '%s' not found", name);
        return NULL;
    }
    return bm;
}

/* The checks QEMU makes with BDRV_BITMAP_ALLOW_RO: busy, inconsistent. */
static bool
check_allow_ro(struct block_dirty_bitmap *bm, struct err **errp)
{
    bool busy, inconsistent;

    mutex_lock(&bm->node->bitmap_lock);
    busy = bm->busy;
    inconsistent = bm->inconsistent;
    mutex_unlock(&bm->node->bitmap_lock);
    if (busy) {
        err_setf(errp, "Bitmap '%s' is currently in use by another "
                 "operation and cannot be used", bm->name);
        return false;
    }
    if (inconsistent) {
        err_setf(errp, "Bitmap '%s' is inconsistent and cannot be used",
                 bm->name);
        return false;
    }
    return true;
}

static void
state_clean(void *opaque)
{
    struct bm_state *s = opaque;

    if (s->backup) {
        hbitmap_free(s->backup);
    }
    free(s);
}

static void
nop(void *opaque UNUSED)
{
}

/* ---- add ----------------------------------------------------------------- */

static bool
add_prepare(const void *args, void **state, struct err **errp)
{
    const struct qmp_args_bitmap_add *a = args;
    const char *node_name = a->node;
    const char *name = a->name;
    bool persistent = a->has_persistent && a->persistent;
    bool disabled = a->has_disabled && a->disabled;
    struct block_node *node = block_node_find(node_name);
    struct block_dirty_bitmap *bm;
    struct bm_state *s;
    uint64_t granularity = 0;

    if (!node) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'",
                 node_name, node_name);
        return false;
    }
    if (!*name) {
        err_setf(errp, "Bitmap name cannot be empty");
        return false;
    }
    if (strlen(name) > BITMAP_NAME_MAX) {
        err_setf(errp, "Bitmap name too long: %s", name);
        return false;
    }
    if (a->has_granularity) {
        granularity = a->granularity;
        if (!is_power_of_2(granularity) ||
            granularity < BITMAP_MIN_GRANULARITY) {
            err_setf(errp, "Granularity must be power of 2 and at least "
                     "512");
            return false;
        }
    }
    bm = block_dirty_bitmap_create(node, name, granularity, errp);
    if (!bm) {
        return false;
    }
    /* Stored when the image is closed; the format says now whether it
     * can be. */
    if (persistent &&
        !block_dirty_bitmap_can_store(node, name,
                                      block_dirty_bitmap_granularity(bm),
                                      errp)) {
        block_dirty_bitmap_release(bm);
        return false;
    }
    mutex_lock(&node->bitmap_lock);
    bm->disabled = disabled;
    bm->persistent = persistent;
    mutex_unlock(&node->bitmap_lock);
    s = xzalloc(sizeof(*s));
    s->bm = bm;
    *state = s;
    return true;
}

static void
add_abort(void *opaque)
{
    struct bm_state *s = opaque;

    block_dirty_bitmap_release(s->bm);
}

const struct qmp_txn_action qmp_txn_bitmap_add = {
    .type = "block-dirty-bitmap-add",
    .args = qmp_args_bitmap_add,
    .prepare = add_prepare,
    .commit = nop,
    .abort = add_abort,
    .clean = state_clean,
};

/* ---- remove -------------------------------------------------------------- */

/* For an inconsistent bitmap: busy, then read-only (QEMU's order). */
static bool
check_removable(struct block_dirty_bitmap *bm, struct err **errp)
{
    bool busy, readonly;

    mutex_lock(&bm->node->bitmap_lock);
    busy = bm->busy;
    readonly = bm->persistent && bm->node->read_only;
    mutex_unlock(&bm->node->bitmap_lock);
    if (busy) {
        err_setf(errp, "Bitmap '%s' is currently in use by another "
                 "operation and cannot be used", bm->name);
        return false;
    }
    if (readonly) {
        err_setf(errp, "Bitmap '%s' is readonly and cannot be modified",
                 bm->name);
        return false;
    }
    return true;
}

static bool
remove_prepare(const void *args, void **state, struct err **errp)
{
    const struct qmp_args_bitmap *a = args;
    struct block_dirty_bitmap *bm;
    struct bm_state *s;
    bool inconsistent;

    bm = bitmap_lookup(a->node, a->name, errp);
    if (!bm) {
        return false;
    }
    mutex_lock(&bm->node->bitmap_lock);
    inconsistent = bm->inconsistent;
    mutex_unlock(&bm->node->bitmap_lock);
    /* Removing is the one thing an inconsistent bitmap allows: QEMU
     * checks busy and read-only only. */
    if (!inconsistent && !block_dirty_bitmap_check_writable(bm, errp)) {
        return false;
    }
    if (inconsistent && !check_removable(bm, errp)) {
        return false;
    }
    /*
     * Out of the image now, as QEMU does (also inside a transaction: an
     * abort keeps the bitmap, which is then stored again at close).
     */
    if (block_dirty_bitmap_remove_stored(bm, errp) < 0) {
        return false;
    }
    /* Hidden until commit: a later action in the same transaction sees
     * it as in use, as in QEMU. */
    block_dirty_bitmap_set_busy(bm, true);
    s = xzalloc(sizeof(*s));
    s->bm = bm;
    *state = s;
    return true;
}

static void
remove_commit(void *opaque)
{
    struct bm_state *s = opaque;

    block_dirty_bitmap_release(s->bm);
    s->bm = NULL;
}

static void
remove_abort(void *opaque)
{
    struct bm_state *s = opaque;

    block_dirty_bitmap_set_busy(s->bm, false);
}

const struct qmp_txn_action qmp_txn_bitmap_remove = {
    .type = "block-dirty-bitmap-remove",
    .args = qmp_args_bitmap,
    .prepare = remove_prepare,
    .commit = remove_commit,
    .abort = remove_abort,
    .clean = state_clean,
};

/* ---- clear --------------------------------------------------------------- */

static bool
clear_prepare(const void *args, void **state, struct err **errp)
{
    const struct qmp_args_bitmap *a = args;
    struct block_dirty_bitmap *bm;
    struct bm_state *s;
    struct hbitmap *backup;

    bm = bitmap_lookup(a->node, a->name, errp);
    if (!bm || !block_dirty_bitmap_check_writable(bm, errp)) {
        return false;
    }
    backup = block_dirty_bitmap_copy_hbitmap(bm);
    if (!backup) {
        err_setf_errno(errp, ENOMEM, "Cannot clear bitmap '%s'", bm->name);
        return false;
    }
    block_dirty_bitmap_clear(bm);
    s = xzalloc(sizeof(*s));
    s->bm = bm;
    s->backup = backup;
    *state = s;
    return true;
}

static void
restore_abort(void *opaque)
{
    struct bm_state *s = opaque;

    block_dirty_bitmap_restore_hbitmap(s->bm, s->backup);
}

const struct qmp_txn_action qmp_txn_bitmap_clear = {
    .type = "block-dirty-bitmap-clear",
    .args = qmp_args_bitmap,
    .prepare = clear_prepare,
    .commit = nop,
    .abort = restore_abort,
    .clean = state_clean,
};

/* ---- enable / disable ---------------------------------------------------- */

static bool
set_enabled_prepare(const struct qmp_args_bitmap *a, void **state,
                    bool enable, struct err **errp)
{
    struct block_dirty_bitmap *bm;
    struct bm_state *s;

    bm = bitmap_lookup(a->node, a->name, errp);
    if (!bm || !check_allow_ro(bm, errp)) {
        return false;
    }
    s = xzalloc(sizeof(*s));
    s->bm = bm;
    mutex_lock(&bm->node->bitmap_lock);
    s->was_disabled = bm->disabled;
    bm->disabled = !enable;
    mutex_unlock(&bm->node->bitmap_lock);
    *state = s;
    return true;
}

static bool
enable_prepare(const void *args, void **state, struct err **errp)
{
    return set_enabled_prepare(args, state, true, errp);
}

static bool
disable_prepare(const void *args, void **state, struct err **errp)
{
    return set_enabled_prepare(args, state, false, errp);
}

static void
set_enabled_abort(void *opaque)
{
    struct bm_state *s = opaque;

    mutex_lock(&s->bm->node->bitmap_lock);
    s->bm->disabled = s->was_disabled;
    mutex_unlock(&s->bm->node->bitmap_lock);
}

const struct qmp_txn_action qmp_txn_bitmap_enable = {
    .type = "block-dirty-bitmap-enable",
    .args = qmp_args_bitmap,
    .prepare = enable_prepare,
    .commit = nop,
    .abort = set_enabled_abort,
    .clean = state_clean,
};

const struct qmp_txn_action qmp_txn_bitmap_disable = {
    .type = "block-dirty-bitmap-disable",
    .args = qmp_args_bitmap,
    .prepare = disable_prepare,
    .commit = nop,
    .abort = set_enabled_abort,
    .clean = state_clean,
};

/* ---- merge --------------------------------------------------------------- */

static bool
merge_prepare(const void *args, void **state, struct err **errp)
{
    const struct qmp_args_bitmap_merge *a = args;
    struct block_dirty_bitmap *dst, *src;
    struct hbitmap *backup;
    struct bm_state *s;

    dst = bitmap_lookup(a->node, a->target, errp);
    if (!dst || !block_dirty_bitmap_check_writable(dst, errp)) {
        return false;
    }
    backup = block_dirty_bitmap_copy_hbitmap(dst);
    if (!backup) {
        err_setf_errno(errp, ENOMEM, "Cannot merge into bitmap '%s'",
                       dst->name);
        return false;
    }
    for (size_t i = 0; i < a->n_bitmaps; i++) {
        const struct qmp_bitmap_or_str *ref = &a->bitmaps[i];
        bool inconsistent;

        if (ref->local) {
            src = bitmap_lookup(a->node, ref->local, errp);
        } else {
            src = bitmap_lookup(ref->node, ref->name, errp);
        }
        if (!src) {
            goto fail;
        }
        mutex_lock(&src->node->bitmap_lock);
        inconsistent = src->inconsistent;
        mutex_unlock(&src->node->bitmap_lock);
        if (inconsistent) {
            err_setf(errp, "Bitmap '%s' is inconsistent and cannot be used",
                     src->name);
            goto fail;
        }
        if (!block_dirty_bitmap_merge_any(dst, src, errp)) {
            goto fail;
        }
    }
    s = xzalloc(sizeof(*s));
    s->bm = dst;
    s->backup = backup;
    *state = s;
    return true;

fail:
    block_dirty_bitmap_restore_hbitmap(dst, backup);
    hbitmap_free(backup);
    return false;
}

const struct qmp_txn_action qmp_txn_bitmap_merge = {
    .type = "block-dirty-bitmap-merge",
    .args = qmp_args_bitmap_merge,
    .prepare = merge_prepare,
    .commit = nop,
    .abort = restore_abort,
    .clean = state_clean,
};

/* ---- Commands ------------------------------------------------------------ */

/* The standalone commands: one-action transactions. */
static json_t *
run_one(const struct qmp_txn_action *act, const void *args,
        struct err **errp)
{
    return qmp_transaction_run_one(act, args, errp) ? json_object() : NULL;
}

static json_t *
bitmap_add_cmd(const struct qmp_args_bitmap_add *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_add, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_add, bitmap_add_cmd,
                  struct qmp_args_bitmap_add);

static json_t *
bitmap_remove_cmd(const struct qmp_args_bitmap *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_remove, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_remove, bitmap_remove_cmd,
                  struct qmp_args_bitmap);

static json_t *
bitmap_clear_cmd(const struct qmp_args_bitmap *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_clear, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_clear, bitmap_clear_cmd,
                  struct qmp_args_bitmap);

static json_t *
bitmap_enable_cmd(const struct qmp_args_bitmap *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_enable, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_enable, bitmap_enable_cmd,
                  struct qmp_args_bitmap);

static json_t *
bitmap_disable_cmd(const struct qmp_args_bitmap *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_disable, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_disable, bitmap_disable_cmd,
                  struct qmp_args_bitmap);

static json_t *
bitmap_merge_cmd(const struct qmp_args_bitmap_merge *a, struct err **errp)
{
    return run_one(&qmp_txn_bitmap_merge, a, errp);
}
QMP_TYPED_HANDLER(qmp_block_dirty_bitmap_merge, bitmap_merge_cmd,
                  struct qmp_args_bitmap_merge);

static json_t *
bitmap_sha256_cmd(const struct qmp_args_bitmap *a, struct err **errp)
{
    struct block_dirty_bitmap *bm = bitmap_lookup(a->node, a->name, errp);
    char hex[65];

    if (!bm) {
        return NULL;
    }
    block_dirty_bitmap_sha256(bm, hex);
    return json_pack("{s:s}", "sha256", hex);
}
QMP_TYPED_HANDLER(qmp_x_debug_block_dirty_bitmap_sha256, bitmap_sha256_cmd,
                  struct qmp_args_bitmap);
