/* SPDX-License-Identifier: MIT */
/*
 * QMP "transaction": several actions applied all-or-nothing.
 *
 * Every action's "data" is validated first (QEMU checks the whole input
 * before acting).  Then, inside one drained section so that no request
 * sees a half-applied state, each action is prepared in order; when one
 * fails, the prepared ones are aborted in reverse order, otherwise all
 * are committed in order; clean runs for every prepared action in the
 * end.  Action types are the table below: later actions (blockdev-backup,
 * x-blockdev-insert-filter, ...) add an entry here and to
 * qmp_txn_action_types.  Every action's arguments are a typed list
 * (qmp-args.h): its prepare gets the decoded struct.  Main thread.
 */
#include <stdlib.h>
#include <string.h>

#include "lockstep/block.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "runtime/loop.h"
#include "util.h"

static bool
abort_prepare(const void *args UNUSED, void **state UNUSED,
              struct err **errp)
{
    err_setf(errp, "Transaction aborted using Abort action");
    return false;
}

static void
abort_nop(void *state UNUSED)
{
}

static const struct qmp_txn_action txn_abort = {
    .type = "abort",
    .args = qmp_args_none,
    .prepare = abort_prepare,
    .commit = abort_nop,
    .abort = abort_nop,
    .clean = abort_nop,
};

/* In the order of qmp_txn_action_types: an action's "type" is decoded to
 * its index. */
static const struct qmp_txn_action *const txn_actions[] = {
    &txn_abort,
    &qmp_txn_bitmap_add,
    &qmp_txn_bitmap_remove,
    &qmp_txn_bitmap_clear,
    &qmp_txn_bitmap_enable,
    &qmp_txn_bitmap_disable,
    &qmp_txn_bitmap_merge,
    &qmp_txn_blockdev_backup,
    &qmp_txn_insert_filter,
    &qmp_txn_remove_filter,
    NULL,
};

/* The same names, for the schema's enum (a unit test checks they match). */
const char *const qmp_txn_action_types[] = {
    "abort",
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "blockdev-backup",
    "x-blockdev-insert-filter",
    "x-blockdev-remove-filter",
    NULL,
};

/* One action to run: its type and its decoded arguments (owned when the
 * transaction decoded them). */
struct step {
    const struct qmp_txn_action *act;
    const void *args;
    void *owned;
    void *state;
};

static bool
run(struct step *steps, size_t n, bool grouped, struct err **errp)
{
    size_t ndone = 0;
    bool ok = true;

    assert_main_thread();
    block_drain_begin();
    for (size_t i = 0; i < n; i++) {
        if (grouped && !steps[i].act->supports_grouped) {
            err_setf(errp, "Action '%s' does not support Transaction "
                     "property completion-mode = grouped",
                     steps[i].act->type);
            ok = false;
            break;
        }
        if (!steps[i].act->prepare(steps[i].args, &steps[i].state, errp)) {
            ok = false;
            break;
        }
        ndone++;
    }
    if (ok) {
        for (size_t i = 0; i < ndone; i++) {
            steps[i].act->commit(steps[i].state);
        }
    } else {
        for (size_t i = ndone; i-- > 0;) {
            steps[i].act->abort(steps[i].state);
        }
    }
    for (size_t i = 0; i < ndone; i++) {
        steps[i].act->clean(steps[i].state);
    }
    block_drain_end();
    return ok;
}

bool
qmp_transaction_run(const struct qmp_txn_action_arg *actions, size_t n,
                    bool grouped, const struct qmp_txn_action *extra,
                    const void *extra_args, struct err **errp)
{
    size_t nsteps = n + (extra ? 1 : 0);
    struct step *steps = xcalloc(nsteps ? nsteps : 1, sizeof(*steps));
    bool ok = true;

    /* Every action's data is checked before any runs (QEMU checks the
     * whole input first). */
    for (size_t i = 0; i < n && ok; i++) {
        CLEANUP_FREE char *prefix = xasprintf("actions[%zu].data.", i);
        const struct qmp_txn_action *act = txn_actions[actions[i].type];

        ok = qmp_validate_members(act->args, actions[i].data, prefix, errp);
        if (ok) {
            steps[i].act = act;
            steps[i].owned = xzalloc(qmp_args_size(act->args));
            qmp_args_decode(act->args, actions[i].data, steps[i].owned);
            steps[i].args = steps[i].owned;
        }
    }
    if (ok && extra) {
        steps[n].act = extra;
        steps[n].args = extra_args;
    }
    if (ok) {
        ok = run(steps, nsteps, grouped, errp);
    }
    for (size_t i = 0; i < n; i++) {
        if (steps[i].owned) {
            qmp_args_free(steps[i].act->args, steps[i].owned);
            free(steps[i].owned);
        }
    }
    free(steps);
    return ok;
}

bool
qmp_transaction_run_one(const struct qmp_txn_action *act, const void *args,
                        struct err **errp)
{
    struct step step = { .act = act, .args = args };

    return run(&step, 1, false, errp);
}

static json_t *
transaction_cmd(const struct qmp_args_transaction *a, struct err **errp)
{
    bool grouped = a->has_properties &&
                   a->properties.has_completion_mode &&
                   a->properties.completion_mode ==
                   QMP_TXN_COMPLETION_GROUPED;

    if (!qmp_transaction_run(a->actions, a->n_actions, grouped, NULL, NULL,
                             errp)) {
        return NULL;
    }
    return json_object();
}
QMP_TYPED_HANDLER(qmp_transaction, transaction_cmd,
                  struct qmp_args_transaction);
