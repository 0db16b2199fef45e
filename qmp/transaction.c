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
 * qmp_txn_action_types.  Main thread.
 */
#include <string.h>

#include "lockstep/block.h"
#include "qmp/qmp-internal.h"
#include "runtime/loop.h"
#include "util.h"

static bool
abort_prepare(json_t *data UNUSED, void **state UNUSED, struct err **errp)
{
    err_setf(errp, "Transaction aborted using Abort action");
    return false;
}

static void
abort_nop(void *state UNUSED)
{
}

static const struct qmp_arg abort_args[] = {
    { NULL, 0, false, NULL, NULL, NULL, NULL, NULL },
};

static const struct qmp_txn_action txn_abort = {
    .type = "abort",
    .args = abort_args,
    .prepare = abort_prepare,
    .commit = abort_nop,
    .abort = abort_nop,
    .clean = abort_nop,
};

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

static const struct qmp_txn_action *
action_find(const char *type)
{
    for (size_t i = 0; txn_actions[i]; i++) {
        if (!strcmp(txn_actions[i]->type, type)) {
            return txn_actions[i];
        }
    }
    return NULL;
}

struct prepared {
    const struct qmp_txn_action *act;
    void *state;
};

/* Prepare one action: typed actions get their data decoded (into *args,
 * freed by the caller after clean). */
static bool
prepare(const struct qmp_txn_action *act, json_t *data, void **args,
        void **state, struct err **errp)
{
    if (!act->prepare_typed) {
        return act->prepare(data, state, errp);
    }
    *args = xzalloc(qmp_args_size(act->args));
    qmp_args_decode(act->args, data, *args);
    return act->prepare_typed(*args, state, errp);
}

static bool
run(const struct qmp_txn_action **acts, json_t **datas, size_t n,
    bool grouped, struct err **errp)
{
    struct prepared *done = xcalloc(n ? n : 1, sizeof(*done));
    void **args = xcalloc(n ? n : 1, sizeof(*args));
    size_t ndone = 0;
    bool ok = true;

    assert_main_thread();
    block_drain_begin();
    for (size_t i = 0; i < n; i++) {
        if (grouped && !acts[i]->supports_grouped) {
            err_setf(errp, "Action '%s' does not support Transaction "
                     "property completion-mode = grouped", acts[i]->type);
            ok = false;
            break;
        }
        done[ndone].act = acts[i];
        if (!prepare(acts[i], datas[i], &args[i], &done[ndone].state,
                     errp)) {
            ok = false;
            break;
        }
        ndone++;
    }
    if (ok) {
        for (size_t i = 0; i < ndone; i++) {
            done[i].act->commit(done[i].state);
        }
    } else {
        for (size_t i = ndone; i-- > 0;) {
            done[i].act->abort(done[i].state);
        }
    }
    for (size_t i = 0; i < ndone; i++) {
        done[i].act->clean(done[i].state);
    }
    block_drain_end();
    for (size_t i = 0; i < n; i++) {
        if (args[i]) {
            qmp_args_free(acts[i]->args, args[i]);
            free(args[i]);
        }
    }
    free(args);
    free(done);
    return ok;
}

bool
qmp_transaction_run(json_t *actions, json_t *properties, struct err **errp)
{
    size_t n = json_array_size(actions);
    const struct qmp_txn_action **acts = xcalloc(n ? n : 1, sizeof(*acts));
    json_t **datas = xcalloc(n ? n : 1, sizeof(*datas));
    const char *mode = json_string_value(json_object_get(properties,
                                                         "completion-mode"));
    bool ok = true;

    for (size_t i = 0; i < n && ok; i++) {
        json_t *a = json_array_get(actions, i);
        const char *type = json_string_value(json_object_get(a, "type"));
        CLEANUP_FREE char *prefix = xasprintf("actions[%zu].data.", i);

        acts[i] = action_find(type);
        datas[i] = json_object_get(a, "data");
        if (!acts[i]) {
            /* The schema's enum lists only known types. */
            err_setf(errp, "Parameter 'type' does not accept value '%s'",
                     type);
            ok = false;
        } else {
            ok = qmp_validate_members(acts[i]->args, datas[i], prefix, errp);
        }
    }
    if (ok) {
        ok = run(acts, datas, n, mode && !strcmp(mode, "grouped"), errp);
    }
    free(acts);
    free(datas);
    return ok;
}

bool
qmp_transaction_run_one(const char *type, json_t *data, struct err **errp)
{
    const struct qmp_txn_action *act = action_find(type);

    assert(act);
    return run(&act, &data, 1, false, errp);
}

json_t *
qmp_transaction(json_t *args, struct err **errp)
{
    if (!qmp_transaction_run(json_object_get(args, "actions"),
                             json_object_get(args, "properties"), errp)) {
        return NULL;
    }
    return json_object();
}
