/* SPDX-License-Identifier: MIT */
/*
 * Inside the QMP monitor: the command schema, the argument validator, the
 * dispatcher, the transaction action table and the command handlers.
 *
 * The schema (qmp/schema.c) is the single description of every command:
 * its arguments with their types, its documentation and its handler.  The
 * dispatcher validates the arguments against it before the handler runs;
 * for a typed command it then decodes them into the command's C struct
 * (qmp/qmp-args.h says how), so the handler reads C fields, never JSON.
 * Every command with arguments is typed, except the two whose arguments
 * are options (blockdev-add, object-add): their handlers get the JSON
 * object.  Commands without arguments have plain handlers.  docs/qmp.md is
 * generated from the same table (lockstepd --print-qmp-doc).
 *
 * Threads: everything here runs on the main thread.
 */
#ifndef LOCKSTEP_QMP_INTERNAL_H
#define LOCKSTEP_QMP_INTERNAL_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "lockstep/err.h"

struct poll_tuning;                /* util.h */

struct socket_address;

/* The version query-version and the greeting report. */
#define LOCKSTEP_VERSION_MAJOR 0
#define LOCKSTEP_VERSION_MINOR 1
#define LOCKSTEP_VERSION_MICRO 0
#define LOCKSTEP_VERSION_STRING "0.1.0"

/* Types of arguments and of members of object arguments. */
enum qmp_type {
    QMP_T_STR,
    QMP_T_BOOL,
    QMP_T_INT,        /* int64 */
    QMP_T_UINT,       /* uint64: "Parameter 'x' expects uint64" as QEMU */
    QMP_T_NUMBER,     /* int or real */
    QMP_T_ENUM,       /* a string from .values */
    QMP_T_OBJECT,     /* members in .members; others are unexpected */
    QMP_T_ARRAY,      /* elements of type *.elem */
    QMP_T_STR_OR_OBJ, /* a string, or an object with .members (alternate) */
    QMP_T_ANY,        /* anything; the handler checks */
    QMP_T_ANY_OBJECT, /* any object; the handler (or the block layer)
                       * checks the members */
};

struct qmp_arg {
    const char *name;
    enum qmp_type type;
    bool optional;
    const char *doc;
    const char *type_name;              /* for docs and messages: "uint32",
                                         * "BlockDirtyBitmapOrStr" */
    const char *const *values;          /* ENUM: NULL-terminated */
    const struct qmp_arg *members;      /* OBJECT, STR_OR_OBJ: {NULL}-ended */
    const struct qmp_arg *elem;         /* ARRAY: element type (name NULL) */

    /*
     * Typed decoding (qmp/qmp-args.h): written by the QMP_ARG_* macros,
     * zero in untyped lists.
     */
    bool typed;
    bool has_flag;          /* an optional scalar or object: has_ flag */
    size_t offset;          /* of the C field in the enclosing struct */
    size_t has_offset;      /* of its bool has_ flag */
    size_t aux_offset;      /* ARRAY: of the size_t count in the enclosing
                             * struct; STR_OR_OBJ: of the string form's
                             * field inside the value's struct */
    size_t size;            /* OBJECT, STR_OR_OBJ: the value's struct;
                             * array elements: one element; a list's END:
                             * the whole arguments struct */
};

/*
 * A command handler: args is the validated arguments object (an empty
 * object when the client sent none).  Returns the new "return" value, or
 * NULL with *errp set.
 */
typedef json_t *qmp_handler_fn(json_t *args, struct err **errp);

/*
 * Commands whose work waits on a remote peer (blockdev-add of an NBD node
 * connects) must not do it on the main thread.  Such a command also has
 * an async handler: it returns the result at once like a handler, or
 * QMP_DEFERRED after handing the slow part to another thread; that work
 * ends on the main thread with qmp_async_done(done, ...), which sends the
 * response.  The client that sent the command waits for it (its later
 * commands run in order, as in QEMU); everyone else goes on.
 */
struct qmp_async;
#define QMP_DEFERRED ((json_t *)&qmp_deferred_marker)
extern const int qmp_deferred_marker;
typedef json_t *qmp_async_fn(json_t *args, struct qmp_async *done,
                             struct err **errp);
/* Main thread: finish a deferred command with ret (a new reference) or,
 * when ret is NULL, err (consumed). */
void qmp_async_done(struct qmp_async *done, json_t *ret, struct err *err);

/*
 * A typed handler: gets the command's arguments decoded into its struct
 * (see qmp/qmp-args.h and QMP_TYPED_HANDLER there).
 */
struct qmp_typed {
    json_t *(*call)(const void *args, struct err **errp);
    size_t size;                /* sizeof the arguments struct */
};

struct qmp_command {
    const char *name;
    qmp_handler_fn *handler;    /* untyped, or NULL when typed is set */
    /* The arguments, {NULL}-ended; NULL for none. */
    const struct qmp_arg *args;
    /* blockdev-add: the whole arguments object is an ANY_OBJECT passed on
     * as it is (the block layer validates it against the driver). */
    bool args_are_options;
    const char *doc;
    const char *returns;        /* doc of the return value */
    qmp_async_fn *async_handler;    /* monitors use it when set */
    const struct qmp_typed *typed;  /* instead of handler */
};

/* The table of commands, {NULL}-terminated (schema.c). */
extern const struct qmp_command qmp_commands[];
const struct qmp_command *qmp_command_find(const char *name);

/*
 * Validate value against arg (path is the member's full name for
 * messages: "bitmaps[0].name").  Messages follow QEMU's input visitor.
 */
bool qmp_validate(const struct qmp_arg *arg, json_t *value,
                  const char *path, struct err **errp);
/* Validate an arguments object against a {NULL}-ended member list;
 * prefix is "" or "actions[0].data." */
bool qmp_validate_members(const struct qmp_arg *members, json_t *obj,
                          const char *prefix, struct err **errp);

/* Write the reference documentation (Markdown) generated from the schema. */
void qmp_schema_print_doc(FILE *f);

/*
 * Typed decoding (qmp/args.c), after validation: fill the struct at out
 * (zeroed by the caller, the size of the list's END) from the validated
 * object.  Strings and JSON values point into obj and live as long as it;
 * arrays are allocated and go with qmp_args_free().
 */
void qmp_args_decode(const struct qmp_arg *args, json_t *obj, void *out);
void qmp_args_free(const struct qmp_arg *args, void *out);
/* The size of a typed list's struct (its END's size). */
size_t qmp_args_size(const struct qmp_arg *args);

/*
 * Run one command as a client's request would, without the protocol: the
 * arguments are validated (and decoded) against the schema, then the
 * handler runs.  For the daemon's command-line options and for tests.
 * Returns the "return" value or NULL with *errp set.  Main thread.
 */
json_t *qmp_execute(const char *name, json_t *args, struct err **errp);

/* A client's protocol state: capabilities negotiated, and "oob" enabled. */
struct qmp_session {
    bool negotiated;
    bool oob;
};

/*
 * Dispatch one request object from a client: returns the response object
 * ({"return"} or {"error"}, with "id" when given).  The session changes
 * when the request is a successful qmp_capabilities.
 */
json_t *qmp_dispatch(json_t *req, struct qmp_session *session);
/*
 * The same for a client that can wait: NULL when the command was
 * deferred, and reply(opaque, response) runs on the main thread when it
 * finishes (the response is borrowed).
 */
typedef void qmp_reply_fn(void *opaque, json_t *resp);
json_t *qmp_dispatch_async(json_t *req, struct qmp_session *session,
                           qmp_reply_fn *reply, void *opaque);
/*
 * Everything qmp_dispatch() checks before a handler runs: the request's
 * shape, negotiation, the command's name (no NUL in it), and its
 * arguments (no NUL in any string or member name; the schema).  Returns
 * the command and *args (a new reference; {} when none was given), or
 * NULL with *errp set.  Runs no handler: the QMP fuzz target uses it.
 */
const struct qmp_command *qmp_dispatch_check(json_t *req,
                                             const struct qmp_session *session,
                                             json_t **args,
                                             struct err **errp);
/* The error response for err (consumed), with id when not NULL. */
json_t *qmp_error_response(struct err *err, json_t *id);

/* ---- JSON helpers (json.c): the only ones in the tree ------------------ */

/* The string member key of obj, or NULL (absent, or not a string). */
const char *qmp_str(json_t *obj, const char *key);
/* A required string member of an object the schema left to the handler
 * (an "any" member): false with QEMU's messages, prefixed with where
 * ("addr: "), when it is missing or not a string. */
bool qmp_member_str(json_t *obj, const char *where, const char *key,
                    const char **out, struct err **errp);
/* The boolean member key of obj (validated), or def when absent. */
bool qmp_bool(json_t *obj, const char *key, bool def);
/* A boolean member, as JSON or keyval ("on", "off", "yes", "no", "true",
 * "false"): 1 with *out set, 0 when absent, -1 with *errp set
 * ("Parameter 'key' expects 'on' or 'off'"). */
int qmp_opt_bool(json_t *obj, const char *key, bool *out, struct err **errp);
/* Turn a keyval boolean, integer or size ("4k") member into its JSON
 * type in place (absent is fine); false with *errp set when it is not
 * one. */
bool qmp_keyval_to_bool(json_t *obj, const char *key, struct err **errp);
bool qmp_keyval_to_int(json_t *obj, const char *key, struct err **errp);
bool qmp_keyval_to_size(json_t *obj, const char *key, struct err **errp);

/* ---- Transactions (transaction.c) ------------------------------------- */

/*
 * One action type of "transaction".  prepare does the work in a way that
 * can still be undone and saves what it needs in *state; then either
 * every action's commit runs or every prepared action's abort runs (in
 * reverse order); clean runs last for all prepared actions.
 */
struct qmp_txn_action {
    const char *type;
    const struct qmp_arg *args;     /* of "data" (the command's args): a
                                     * typed list (qmp-args.h) */
    /* args: the decoded "data" (a pointer to args' struct), valid until
     * clean has run. */
    bool (*prepare)(const void *args, void **state, struct err **errp);
    void (*commit)(void *state);
    void (*abort)(void *state);
    void (*clean)(void *state);
    bool supports_grouped;          /* completion-mode=grouped */
};

/* Running them: qmp_transaction_run() and qmp_transaction_run_one()
 * (qmp-args.h, with the types of their arguments). */
extern const char *const qmp_txn_action_types[];

/* ---- Monitor (monitor.c) ---------------------------------------------- */

/* The daemon's shutdown request (quit, SIGTERM): set by daemon/. */
void qmp_set_quit_handler(void (*fn)(void));
void qmp_request_quit(void);

/* Handlers, by file. */
/* cmds-misc.c */
extern const struct qmp_typed qmp_qmp_capabilities;
json_t *qmp_query_version(json_t *args, struct err **errp);
json_t *qmp_query_status(json_t *args, struct err **errp);
json_t *qmp_query_commands(json_t *args, struct err **errp);
json_t *qmp_quit(json_t *args, struct err **errp);
/* cmds-block.c */
json_t *qmp_blockdev_add(json_t *args, struct err **errp);
json_t *qmp_blockdev_add_async(json_t *args, struct qmp_async *done,
                               struct err **errp);
/* Shutdown: end the connects of pending blockdev-adds and wait for their
 * threads (their responses, if anyone still listens, are errors). */
void qmp_blockdev_add_cancel_all(void);
extern const struct qmp_typed qmp_blockdev_del;
extern const struct qmp_typed qmp_blockdev_reopen;
extern const struct qmp_typed qmp_query_named_block_nodes;
json_t *qmp_x_debug_query_block_graph(json_t *args, struct err **errp);
/* A node's dirty bitmaps as QMP BlockDirtyInfo objects (a JSON array). */
struct block_node;
json_t *qmp_dirty_bitmaps_info(struct block_node *node);
/* cmds-export.c */
extern const struct qmp_typed qmp_nbd_server_start;
json_t *qmp_nbd_server_stop(json_t *args, struct err **errp);
extern const struct qmp_typed qmp_block_export_add;
extern const struct qmp_typed qmp_block_export_del;
json_t *qmp_query_block_exports(json_t *args, struct err **errp);
extern const struct qmp_typed qmp_nbd_server_add;
extern const struct qmp_typed qmp_nbd_server_remove;
/*
 * A flat SocketAddress object ({"type": "unix", "path"} or {"type":
 * "inet", "host", "port"}; a legacy one with "data" is accepted too) into
 * addr, with the messages nbd-server-start and --nbd-server give.
 * Strings point into obj; an integer port is written to portbuf.
 */
bool qmp_socket_address_parse(json_t *obj, struct socket_address *addr,
                              char portbuf[32], struct err **errp);
/* --export (and nbd-serve -e): keyval (or JSON) options, with QSD's
 * single "bitmap", as block-export-add. */
bool qmp_export_add_keyval(json_t *opts, struct err **errp);
/* objects.c */
json_t *qmp_object_add(json_t *args, struct err **errp);
extern const struct qmp_typed qmp_object_del;
/* --object: keyval values are typed first. */
bool qmp_object_add_keyval(json_t *opts, struct err **errp);
/* The polling an iothread's properties ask for; false when there is no
 * such iothread. */
bool qmp_iothread_poll(const char *id, struct poll_tuning *t);
extern const struct qmp_typed qmp_qom_list;
extern const struct qmp_typed qmp_qom_get;
/* The i-th object type's properties (without qom-type and id), for the
 * docs; NULL past the last. */
const struct qmp_arg *qmp_object_type_members(size_t i, const char **name);
void qmp_objects_free_all(void);
/* cmds-repl.c */
extern const struct qmp_typed qmp_x_blockdev_change_cmd;
extern const struct qmp_typed qmp_xen_set_replication_cmd;
json_t *qmp_query_xen_replication_status(json_t *args, struct err **errp);
json_t *qmp_query_replication(json_t *args, struct err **errp);
/* Stop every replication node; with failover a secondary starts its
 * failover job (errors of a failover are the caller's to drop, as QEMU's
 * xen-set-replication does). */
bool replication_stop_all(bool failover, struct err **errp);
/* The whole xen-set-replication command, as QEMU handles it: "failover"
 * only when stopping ("Parameter 'failover' is only for stopping
 * replication"); errors of a stop with failover=true are dropped (the
 * node's status reports them). */
bool qmp_xen_set_replication(bool enable, bool primary, bool has_failover,
                             bool failover, struct err **errp);
/* query-xen-replication-status: {"error": bool, "desc"?: str}. */
json_t *replication_status(void);
json_t *qmp_xen_colo_do_checkpoint(json_t *args, struct err **errp);
extern const struct qmp_typed qmp_replication_start;
extern const struct qmp_typed qmp_replication_stop;
extern const struct qmp_typed qmp_block_resize;
json_t *qmp_query_block(json_t *args, struct err **errp);
/* cmds-bitmap.c */
extern const struct qmp_typed qmp_block_dirty_bitmap_add;
extern const struct qmp_typed qmp_block_dirty_bitmap_remove;
extern const struct qmp_typed qmp_block_dirty_bitmap_clear;
extern const struct qmp_typed qmp_block_dirty_bitmap_enable;
extern const struct qmp_typed qmp_block_dirty_bitmap_disable;
extern const struct qmp_typed qmp_block_dirty_bitmap_merge;
extern const struct qmp_typed qmp_x_debug_block_dirty_bitmap_sha256;
extern const struct qmp_typed qmp_transaction;
/* Bitmap transaction actions (cmds-bitmap.c). */
extern const struct qmp_txn_action qmp_txn_bitmap_add;
extern const struct qmp_txn_action qmp_txn_bitmap_remove;
extern const struct qmp_txn_action qmp_txn_bitmap_clear;
extern const struct qmp_txn_action qmp_txn_bitmap_enable;
extern const struct qmp_txn_action qmp_txn_bitmap_disable;
extern const struct qmp_txn_action qmp_txn_bitmap_merge;

/* cmds-job.c */
struct job;
/* A job's JobInfo and BlockJobInfo objects (the elements of query-jobs
 * and query-block-jobs). */
json_t *qmp_job_info(struct job *job);
json_t *qmp_block_job_info(struct job *job);
json_t *qmp_query_jobs(json_t *args, struct err **errp);
json_t *qmp_query_block_jobs(json_t *args, struct err **errp);
extern const struct qmp_typed qmp_job_pause;
extern const struct qmp_typed qmp_job_resume;
extern const struct qmp_typed qmp_job_cancel;
extern const struct qmp_typed qmp_job_complete;
extern const struct qmp_typed qmp_job_finalize;
extern const struct qmp_typed qmp_job_dismiss;
extern const struct qmp_typed qmp_block_job_set_speed;
extern const struct qmp_typed qmp_block_job_cancel;
extern const struct qmp_typed qmp_block_job_complete;
extern const struct qmp_typed qmp_block_job_pause;
extern const struct qmp_typed qmp_block_job_resume;
extern const struct qmp_typed qmp_block_job_dismiss;
extern const struct qmp_typed qmp_block_job_finalize;
extern const struct qmp_typed qmp_blockdev_backup;
extern const struct qmp_typed qmp_block_commit;
extern const struct qmp_typed qmp_x_replication_resync;
/* blockdev-backup's arguments (schema.c), shared with its transaction
 * action (a job created at prepare, started at commit, cancelled at
 * abort). */
extern const struct qmp_arg qmp_args_blockdev_backup[];
extern const struct qmp_txn_action qmp_txn_blockdev_backup;

/* cmds-fleecing.c */
extern const struct qmp_typed qmp_x_blockdev_insert_filter;
extern const struct qmp_typed qmp_x_blockdev_remove_filter;
extern const struct qmp_typed qmp_fleecing_start;
extern const struct qmp_typed qmp_fleecing_stop;
json_t *qmp_query_fleecing(json_t *args, struct err **errp);
extern const struct qmp_txn_action qmp_txn_insert_filter;
extern const struct qmp_txn_action qmp_txn_remove_filter;
/* Daemon shutdown: tear every fleecing down (after the exports closed). */
void qmp_fleecing_stop_all(void);

/* Shared argument lists (schema.c), used by the action table too. */
extern const struct qmp_arg qmp_args_none[];
extern const struct qmp_arg qmp_args_node_name[];
extern const struct qmp_arg qmp_args_bitmap[];
extern const struct qmp_arg qmp_args_bitmap_add[];
extern const struct qmp_arg qmp_args_bitmap_merge[];

#endif
