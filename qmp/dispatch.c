/* SPDX-License-Identifier: MIT */
/*
 * The QMP dispatcher: check a request object's shape, the capabilities
 * negotiation state and the arguments against the schema, run the
 * handler, and build the response.  Messages and error classes are
 * QEMU's (qemu-storage-daemon 7.2 sends the same for the same input).
 * Main thread.
 */
#include <stdlib.h>
#include <string.h>

#include "keyval.h"
#include "qmp/qmp-internal.h"
#include "runtime/loop.h"
#include "util.h"

json_t *
qmp_error_response(struct err *err, json_t *id)
{
    json_t *resp = json_object();

    /* QEMU puts "id" first in error responses and last in returns. */
    if (id) {
        json_object_set(resp, "id", id);
    }
    json_object_set_new(resp, "error",
                        json_pack("{s:s, s:s}", "class",
                                  err_class_name(err->cls), "desc",
                                  err->msg));
    err_free(err);
    return resp;
}

/*
 * The command's name.  One with a NUL character is no command of ours
 * (and would otherwise be cut there: "quit\u0000x" is not quit); it is
 * shown with the NUL as \u0000.
 */
static bool
check_command_name(json_t *exec, struct err **errp)
{
    const char *name = json_string_value(exec);
    size_t len = json_string_length(exec);
    char *shown;

    if (!memchr(name, '\0', len)) {
        return true;
    }
    shown = xmalloc(len * 6 + 1);
    shown[0] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (name[i]) {
            strncat(shown, name + i, 1);
        } else {
            strcat(shown, "\\u0000");
        }
    }
    err_setf_class(errp, ERR_CLASS_COMMAND_NOT_FOUND,
                   "The command %s has not been found", shown);
    free(shown);
    return false;
}

static bool
check_request(json_t *req, bool oob_enabled, const char **name,
              json_t **args, bool *oob, struct err **errp)
{
    const char *key;
    json_t *v;
    json_t *exec = NULL;

    json_object_foreach(req, key, v) {
        if (!strcmp(key, "execute") ||
            (!strcmp(key, "exec-oob") && oob_enabled)) {
            if (!json_is_string(v)) {
                err_setf(errp, "QMP input member '%s' must be a string", key);
                return false;
            }
            if (exec) {
                err_setf(errp, "QMP input member 'execute' clashes with "
                         "'exec-oob'");
                return false;
            }
            exec = v;
            *oob = !strcmp(key, "exec-oob");
        } else if (!strcmp(key, "arguments")) {
            if (!json_is_object(v)) {
                err_setf(errp, "QMP input member 'arguments' must be an "
                         "object");
                return false;
            }
            *args = v;
        } else if (strcmp(key, "id")) {
            err_setf(errp, "QMP input member '%s' is unexpected", key);
            return false;
        }
    }
    if (!exec) {
        err_setf(errp, "QMP input lacks member 'execute'");
        return false;
    }
    *name = json_string_value(exec);
    return true;
}

const int qmp_deferred_marker;

struct qmp_async {
    json_t *id;                 /* the request's, or NULL */
    qmp_reply_fn *reply;
    void *opaque;
};

static json_t *
success_response(json_t *ret, json_t *id)
{
    json_t *resp = json_object();

    json_object_set_new(resp, "return", ret);
    if (id) {
        json_object_set(resp, "id", id);
    }
    return resp;
}

void
qmp_async_done(struct qmp_async *done, json_t *ret, struct err *err)
{
    json_t *resp;

    assert_main_thread();
    assert(ret || err);
    resp = ret ? success_response(ret, done->id)
               : qmp_error_response(err, done->id);
    done->reply(done->opaque, resp);
    json_decref(resp);
    json_decref(done->id);
    free(done);
}

static json_t *dispatch(json_t *req, struct qmp_session *session,
                        qmp_reply_fn *reply, void *opaque);

json_t *
qmp_dispatch(json_t *req, struct qmp_session *session)
{
    return dispatch(req, session, NULL, NULL);
}

json_t *
qmp_dispatch_async(json_t *req, struct qmp_session *session,
                   qmp_reply_fn *reply, void *opaque)
{
    return dispatch(req, session, reply, opaque);
}

/* Run a typed handler: decode args into its struct first. */
static json_t *
run_typed(const struct qmp_command *cmd, json_t *args, struct err **errp)
{
    const struct qmp_typed *t = cmd->typed;
    void *a;
    json_t *ret;

    /* The handler's struct is the one the argument list describes. */
    assert(!cmd->args || qmp_args_size(cmd->args) == t->size);
    a = xzalloc(t->size ? t->size : 1);
    if (cmd->args) {
        qmp_args_decode(cmd->args, args, a);
    }
    ret = t->call(a, errp);
    if (cmd->args) {
        qmp_args_free(cmd->args, a);
    }
    free(a);
    return ret;
}

/* Run cmd's handler: the async one when the caller can wait. */
static json_t *
run_handler(const struct qmp_command *cmd, json_t *args, json_t *id,
            qmp_reply_fn *reply, void *opaque, struct err **errp)
{
    struct qmp_async *done;
    json_t *ret;

    if (!cmd->async_handler || !reply) {
        return cmd->typed ? run_typed(cmd, args, errp)
                          : cmd->handler(args, errp);
    }
    done = xzalloc(sizeof(*done));
    done->id = id ? json_incref(id) : NULL;
    done->reply = reply;
    done->opaque = opaque;
    ret = cmd->async_handler(args, done, errp);
    if (ret != QMP_DEFERRED) {
        json_decref(done->id);
        free(done);
    }
    return ret;
}

json_t *
qmp_execute(const char *name, json_t *args, struct err **errp)
{
    const struct qmp_command *cmd = qmp_command_find(name);
    json_t *empty = NULL;
    json_t *ret = NULL;

    assert_main_thread();
    if (!cmd) {
        err_setf_class(errp, ERR_CLASS_COMMAND_NOT_FOUND,
                       "The command %s has not been found", name);
        return NULL;
    }
    if (!args) {
        args = empty = json_object();
    }
    if (cmd->args_are_options ||
        qmp_validate_members(cmd->args, args, "", errp)) {
        ret = run_handler(cmd, args, NULL, NULL, NULL, errp);
    }
    json_decref(empty);
    return ret;
}

const struct qmp_command *
qmp_dispatch_check(json_t *req, const struct qmp_session *session,
                   json_t **args_out, struct err **errp)
{
    bool oob = false;
    const struct qmp_command *cmd;
    const char *name = NULL;
    json_t *args = NULL;
    bool is_caps;

    assert_main_thread();
    *args_out = NULL;
    if (!json_is_object(req)) {
        err_setf(errp, "QMP input must be a JSON object");
        return NULL;
    }
    if (!check_request(req, session->oob, &name, &args, &oob, errp)) {
        return NULL;
    }
    /* A name with a NUL is no command, not even qmp_capabilities. */
    is_caps = !strcmp(name, "qmp_capabilities") &&
              json_string_length(json_object_get(req, oob ? "exec-oob"
                                                          : "execute")) ==
              strlen(name);
    if (!session->negotiated && !is_caps) {
        err_setf_class(errp, ERR_CLASS_COMMAND_NOT_FOUND,
                       "Expecting capabilities negotiation with "
                       "'qmp_capabilities'");
        return NULL;
    }
    if (session->negotiated && is_caps) {
        err_setf_class(errp, ERR_CLASS_COMMAND_NOT_FOUND,
                       "Capabilities negotiation is already complete, "
                       "command ignored");
        return NULL;
    }
    if (!check_command_name(json_object_get(req, oob ? "exec-oob"
                                                     : "execute"), errp)) {
        return NULL;
    }
    cmd = qmp_command_find(name);
    if (!cmd) {
        err_setf_class(errp, ERR_CLASS_COMMAND_NOT_FOUND,
                       "The command %s has not been found", name);
        return NULL;
    }
    if (oob) {
        /* No command here is safe to run out of band. */
        err_setf(errp, "The command %s does not support OOB", name);
        return NULL;
    }
    args = args ? json_incref(args) : json_object();
    /* Every argument of every command: no string and no member name may
     * hold a NUL (names, ids and paths are C strings below). */
    if (!json_check_nul(args, errp) ||
        (!cmd->args_are_options &&
         !qmp_validate_members(cmd->args, args, "", errp))) {
        json_decref(args);
        return NULL;
    }
    *args_out = args;
    return cmd;
}

static json_t *
dispatch(json_t *req, struct qmp_session *session, qmp_reply_fn *reply,
         void *opaque)
{
    const struct qmp_command *cmd;
    json_t *args;
    json_t *id = json_is_object(req) ? json_object_get(req, "id") : NULL;
    json_t *ret;
    struct err *err = NULL;

    cmd = qmp_dispatch_check(req, session, &args, &err);
    if (!cmd) {
        return qmp_error_response(err, id);
    }
    ret = run_handler(cmd, args, id, reply, opaque, &err);
    if (ret == QMP_DEFERRED) {
        json_decref(args);
        return NULL;
    }
    if (!ret) {
        json_decref(args);
        assert(err);
        return qmp_error_response(err, id);
    }
    if (!strcmp(cmd->name, "qmp_capabilities")) {
        json_t *enable = json_object_get(args, "enable");
        size_t i;
        json_t *cap;

        session->negotiated = true;
        json_array_foreach(enable, i, cap) {
            session->oob |= !strcmp(json_string_value(cap), "oob");
        }
    }
    json_decref(args);
    return success_response(ret, id);
}
