/* SPDX-License-Identifier: MIT */
/*
 * Typed QMP arguments: every command parses its arguments once, here in
 * qmp/, into a C struct, and calls a typed function of job/, nbd/ or
 * block/.  JSON stays at the edge.
 *
 * Design.
 *
 * One table.  The schema (qmp/schema.c) stays the single description of a
 * command.  A typed command's argument list is written with the QMP_*
 * macros below, which record for every member, besides its QMP name, type
 * and documentation, where its value goes: the offset of a field in the
 * command's arguments struct.  Each macro checks at compile time that the
 * field has the C type the QMP type decodes to (__builtin_types_compatible_p
 * in a _Static_assert), so the table and the struct cannot drift apart: a
 * field renamed, retyped or missing is a build error.
 *
 *     QMP type            C field                  optional member
 *     str                 const char *F            NULL when absent
 *     bool                bool F                   bool has_F
 *     int (int64)         int64_t F                bool has_F
 *     uint64, uint32      uint64_t F               bool has_F
 *     enum                enum E F (values[i] is   bool has_F
 *                         enum value i)
 *     object              struct S F (members      bool has_F
 *                         described by their own
 *                         list, ending QMP_END_OF(S))
 *     array of X          X *F; size_t n_F         F NULL when absent
 *     alternate str|obj   (elements only) struct S with a const char *
 *                         field for the string form
 *     any, any object     json_t *F (borrowed;     NULL when absent
 *                         only in qmp/)
 *
 * A list ends with QMP_END_OF(T), which records sizeof(T).  The handler is
 * bound with QMP_TYPED_HANDLER(name, fn, T): fn takes const T *, checked
 * by the compiler, and the schema entry points at name; the dispatcher
 * (and test-qmp-schema, for every command) checks that the handler's T and
 * the list's T have the same size.
 *
 * Decoding.  The dispatcher validates the request against the list
 * exactly as before (QEMU's messages, byte for byte), then one generic
 * decoder (qmp_args_decode(), qmp/args.c) fills a zeroed struct, sets the
 * has_ flags of the optional members given and turns enum strings into
 * their index.  It cannot fail: everything was validated.  Defaults are
 * the handler's business (has_F ? F : default), as in QEMU's QAPI code.
 *
 * Lifetime.  Strings and json_t members point into the request, which
 * outlives the handler call; a handler that keeps one (a deferred
 * command, a job) copies it.  Arrays are allocated by the decoder and freed
 * with qmp_args_free() after the handler returns.
 *
 * Below qmp/, functions take typed options (struct backup_options,
 * struct nbd_export_options, ...).  When the lower layer's input is
 * exactly the QMP arguments (QEMU passes its QAPI struct: blockdev-backup),
 * the list may describe that struct directly; otherwise the command gets
 * a struct qmp_args_* from this file and its handler translates (exports).
 */
#ifndef LOCKSTEP_QMP_ARGS_H
#define LOCKSTEP_QMP_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "block/filter/copy-before-write.h"
#include "export/export.h"
#include "job/job.h"
#include "nbd/server.h"
#include "qmp/qmp-internal.h"

/* ---- Macros for typed argument lists ------------------------------------ */

/* 0, after checking at compile time that field F of T has C type CT. */
#define QMP_FIELD_IS(T, F, CT)                                               \
    (0 * sizeof(struct {                                                     \
        _Static_assert(__builtin_types_compatible_p(                         \
                           __typeof__(((T *)0)->F), CT),                     \
                       "QMP argument field " #F " of " #T " must be " #CT);  \
        int unused_;                                                         \
    }))
/* The offset of field F of T, which must have C type CT. */
#define QMP_FIELD(T, F, CT) (offsetof(T, F) + QMP_FIELD_IS(T, F, CT))

/* The common part: member NAME stored in F (of C type CT); the rest of
 * the initializer (.doc, .type_name, ...) follows. */
#define QMP_M_(NAME, QT, OPT, T, F, CT, ...)                                 \
    { .name = NAME, .type = QT, .optional = OPT, .typed = true,             \
      .offset = QMP_FIELD(T, F, CT), __VA_ARGS__ }
/* An optional member with a bool has_F flag. */
#define QMP_MH_(NAME, QT, T, F, CT, ...)                                     \
    QMP_M_(NAME, QT, true, T, F, CT, .has_flag = true,                       \
           .has_offset = QMP_FIELD(T, has_##F, bool), __VA_ARGS__)

#define QMP_STR(T, F, NAME, ...)                                             \
    QMP_M_(NAME, QMP_T_STR, false, T, F, const char *, __VA_ARGS__)
#define QMP_STR_OPT(T, F, NAME, ...)                                         \
    QMP_M_(NAME, QMP_T_STR, true, T, F, const char *, __VA_ARGS__)
#define QMP_BOOL(T, F, NAME, ...)                                            \
    QMP_M_(NAME, QMP_T_BOOL, false, T, F, bool, __VA_ARGS__)
#define QMP_BOOL_OPT(T, F, NAME, ...)                                        \
    QMP_MH_(NAME, QMP_T_BOOL, T, F, bool, __VA_ARGS__)
#define QMP_INT(T, F, NAME, ...)                                             \
    QMP_M_(NAME, QMP_T_INT, false, T, F, int64_t, __VA_ARGS__)
#define QMP_INT_OPT(T, F, NAME, ...)                                         \
    QMP_MH_(NAME, QMP_T_INT, T, F, int64_t, __VA_ARGS__)
#define QMP_UINT(T, F, NAME, ...)                                            \
    QMP_M_(NAME, QMP_T_UINT, false, T, F, uint64_t, __VA_ARGS__)
#define QMP_UINT_OPT(T, F, NAME, ...)                                        \
    QMP_MH_(NAME, QMP_T_UINT, T, F, uint64_t, __VA_ARGS__)
/* Enum E (int-sized); VALUES[i] is the QMP name of value i. */
#define QMP_ENUM(T, F, NAME, E, VALUES, ...)                                 \
    QMP_M_(NAME, QMP_T_ENUM, false, T, F, E, .values = VALUES,               \
           .size = QMP_ENUM_SIZE_(E), __VA_ARGS__)
#define QMP_ENUM_OPT(T, F, NAME, E, VALUES, ...)                             \
    QMP_MH_(NAME, QMP_T_ENUM, T, F, E, .values = VALUES,                     \
            .size = QMP_ENUM_SIZE_(E), __VA_ARGS__)
#define QMP_ENUM_SIZE_(E)                                                    \
    (sizeof(E) + 0 * sizeof(struct {                                         \
        _Static_assert(sizeof(E) == sizeof(int), #E " is not int-sized");    \
        int unused_;                                                         \
    }))
/* A nested object: field F is a struct whose members MEMBERS describe. */
#define QMP_OBJECT(T, F, NAME, MEMBERS, ...)                                 \
    QMP_M_(NAME, QMP_T_OBJECT, false, T, F, __typeof__(((T *)0)->F),       \
           .members = MEMBERS, .size = sizeof(((T *)0)->F), __VA_ARGS__)
#define QMP_OBJECT_OPT(T, F, NAME, MEMBERS, ...)                             \
    QMP_MH_(NAME, QMP_T_OBJECT, T, F, __typeof__(((T *)0)->F),              \
            .members = MEMBERS, .size = sizeof(((T *)0)->F), __VA_ARGS__)
/* An array: F points to the elements (ELEM describes one), n_F counts. */
#define QMP_ARRAY_(OPT, T, F, NAME, ELEM, ...)                               \
    QMP_M_(NAME, QMP_T_ARRAY, OPT, T, F, __typeof__(((T *)0)->F),           \
           .elem = ELEM, .aux_offset = QMP_FIELD(T, n_##F, size_t),          \
           .size = sizeof(*((T *)0)->F), __VA_ARGS__)
#define QMP_ARRAY(T, F, NAME, ELEM, ...)                                     \
    QMP_ARRAY_(false, T, F, NAME, ELEM, __VA_ARGS__)
#define QMP_ARRAY_OPT(T, F, NAME, ELEM, ...)                                 \
    QMP_ARRAY_(true, T, F, NAME, ELEM, __VA_ARGS__)
/* Anything (validated by the handler): the JSON value itself. */
#define QMP_ANY_OBJECT(T, F, NAME, ...)                                      \
    QMP_M_(NAME, QMP_T_ANY_OBJECT, false, T, F, json_t *, __VA_ARGS__)
#define QMP_ANY_OBJECT_OPT(T, F, NAME, ...)                                  \
    QMP_M_(NAME, QMP_T_ANY_OBJECT, true, T, F, json_t *, __VA_ARGS__)
#define QMP_ANY(T, F, NAME, ...)                                             \
    QMP_M_(NAME, QMP_T_ANY, false, T, F, json_t *, __VA_ARGS__)
#define QMP_ANY_OPT(T, F, NAME, ...)                                         \
    QMP_M_(NAME, QMP_T_ANY, true, T, F, json_t *, __VA_ARGS__)

/* Array elements (static const struct qmp_arg, referenced by QMP_ARRAY). */
#define QMP_ELEM_STR(...)                                                    \
    { .type = QMP_T_STR, .typed = true, .size = sizeof(const char *),        \
      __VA_ARGS__ }
/* A string or an object (QEMU's alternate): the string goes to STRF. */
#define QMP_ELEM_STR_OR_OBJ(S, STRF, MEMBERS, ...)                           \
    { .type = QMP_T_STR_OR_OBJ, .typed = true, .members = MEMBERS,           \
      .aux_offset = QMP_FIELD(S, STRF, const char *), .size = sizeof(S),     \
      __VA_ARGS__ }

/* An enum element (E int-sized); VALUES[i] is the QMP name of value i. */
#define QMP_ELEM_ENUM(E, VALUES, ...)                                        \
    { .type = QMP_T_ENUM, .typed = true, .values = VALUES,                   \
      .size = QMP_ENUM_SIZE_(E), __VA_ARGS__ }
/* An object element: S, described by MEMBERS. */
#define QMP_ELEM_OBJECT(S, MEMBERS, ...)                                     \
    { .type = QMP_T_OBJECT, .typed = true, .members = MEMBERS,               \
      .size = sizeof(S), __VA_ARGS__ }
/* Any object (validated by the handler): the JSON value, borrowed. */
#define QMP_ELEM_ANY_OBJECT(...)                                             \
    { .type = QMP_T_ANY_OBJECT, .typed = true, .size = sizeof(json_t *),     \
      __VA_ARGS__ }

/* The end of a typed list for struct T. */
#define QMP_END_OF(T) { .name = NULL, .typed = true, .size = sizeof(T) }

/*
 * Bind handler fn (json_t *fn(const T *args, struct err **errp)) as the
 * typed handler NAME (a const struct qmp_typed the schema entry points
 * at; declare it in qmp-internal.h).
 */
#define QMP_TYPED_HANDLER(NAME, FN, T)                                       \
    static json_t *                                                          \
    NAME##_call_(const void *args, struct err **errp)                        \
    {                                                                        \
        return FN((const T *)args, errp);                                    \
    }                                                                        \
    const struct qmp_typed NAME = { NAME##_call_, sizeof(T) }

/* ---- Shared types ------------------------------------------------------- */

/* BlockDirtyBitmapOrStr: a bitmap name (looked up by the command), or
 * {node, name}. */
struct qmp_bitmap_or_str {
    const char *local;          /* the string form, or NULL */
    const char *node;           /* the object form */
    const char *name;
};

/* A command or action without arguments (its list is just the END). */
struct qmp_args_none {
    char unused_;
};

/* ---- The monitor (cmds-misc.c) ------------------------------------------ */

enum qmp_capability {
    QMP_CAPABILITY_OOB,
};

struct qmp_args_qmp_capabilities {
    enum qmp_capability *enable;
    size_t n_enable;
};

/* ---- Nodes (cmds-block.c, cmds-fleecing.c) ------------------------------ */

/* blockdev-del, x-blockdev-insert-filter, x-blockdev-remove-filter. */
struct qmp_args_node_name {
    const char *node_name;
};

/* blockdev-reopen: BlockdevOptions objects, checked by the handler
 * against the nodes as they are. */
struct qmp_args_blockdev_reopen {
    json_t **options;
    size_t n_options;
};

struct qmp_args_query_named_block_nodes {
    bool has_flat;
    bool flat;
};

struct qmp_args_block_resize {
    const char *device;
    const char *node_name;
    int64_t size;
};

/* ---- Dirty bitmaps (cmds-bitmap.c) -------------------------------------- */

/* block-dirty-bitmap-remove, -clear, -enable, -disable,
 * x-debug-block-dirty-bitmap-sha256. */
struct qmp_args_bitmap {
    const char *node;
    const char *name;
};

struct qmp_args_bitmap_add {
    const char *node;
    const char *name;
    bool has_granularity;
    uint64_t granularity;
    bool has_persistent;
    bool persistent;
    bool has_disabled;
    bool disabled;
};

struct qmp_args_bitmap_merge {
    const char *node;
    const char *target;
    struct qmp_bitmap_or_str *bitmaps;
    size_t n_bitmaps;
};

/* ---- Transactions (transaction.c) --------------------------------------- */

/* TransactionAction: type is an index in qmp_txn_action_types; data is
 * decoded against that action's own list when the transaction runs. */
struct qmp_txn_action_arg {
    int type;
    json_t *data;
};

enum qmp_txn_completion_mode {
    QMP_TXN_COMPLETION_INDIVIDUAL,
    QMP_TXN_COMPLETION_GROUPED,
};

struct qmp_txn_properties {
    bool has_completion_mode;
    enum qmp_txn_completion_mode completion_mode;
};

struct qmp_args_transaction {
    struct qmp_txn_action_arg *actions;
    size_t n_actions;
    bool has_properties;
    struct qmp_txn_properties properties;
};

/*
 * Run actions (validated against the schema) all-or-nothing: each
 * action's data is validated against its own list ("actions[i].data."
 * in messages) and decoded, then the actions run inside one drained
 * section.  extra, when not NULL, runs last in the same transaction with
 * extra_args already decoded (fleecing-start's insertion).
 */
bool qmp_transaction_run(const struct qmp_txn_action_arg *actions, size_t n,
                         bool grouped, const struct qmp_txn_action *extra,
                         const void *extra_args, struct err **errp);
/* One action with its decoded arguments, as a standalone command
 * (block-dirty-bitmap-add, x-blockdev-insert-filter, ...). */
bool qmp_transaction_run_one(const struct qmp_txn_action *act,
                             const void *args, struct err **errp);

/* ---- Fleecing (cmds-fleecing.c) ----------------------------------------- */

struct qmp_args_fleecing_start {
    const char *id;
    const char *node;
    json_t *temp;               /* BlockdevOptions, FleecingTemp or str */
    bool has_bitmap;
    struct qmp_bitmap_or_str bitmap;    /* the object form only */
    const char *export_name;
    bool has_on_cbw_error;
    enum cbw_on_error on_cbw_error;
    bool has_cbw_timeout;
    uint64_t cbw_timeout;
    bool has_discard;
    bool discard;
    struct qmp_txn_action_arg *actions;
    size_t n_actions;
};

struct qmp_args_fleecing_stop {
    const char *id;
};

/* ---- Replication (cmds-repl.c) ------------------------------------------ */

struct qmp_args_x_blockdev_change {
    const char *parent;
    const char *child;
    const char *node;
};

struct qmp_args_xen_set_replication {
    bool enable;
    bool primary;
    bool has_failover;
    bool failover;
};

struct qmp_args_replication_start {
    bool primary;
};

struct qmp_args_replication_stop {
    bool has_failover;
    bool failover;
};

/* ---- Objects (objects.c) ------------------------------------------------ */

struct qmp_args_object_del {
    const char *id;
};

struct qmp_args_qom_list {
    const char *path;
};

struct qmp_args_qom_get {
    const char *path;
    const char *property;
};

/* ---- Exports and the NBD server (cmds-export.c) ------------------------- */

/* QEMU's SocketAddressType; qmp_socket_type_names[type] (schema.c). */
enum qmp_socket_type {
    QMP_SOCKET_UNIX,
    QMP_SOCKET_INET,
    QMP_SOCKET_VSOCK,
    QMP_SOCKET_FD,
};
extern const char *const qmp_socket_type_names[];

/* SocketAddressLegacy: the type's members are nested in "data". */
struct qmp_socket_address_legacy {
    enum qmp_socket_type type;
    json_t *data;
};

struct qmp_args_nbd_server_start {
    struct qmp_socket_address_legacy addr;
    const char *tls_creds;
    const char *tls_authz;
    bool has_max_connections;
    uint64_t max_connections;
    bool has_handshake_max_seconds;
    uint64_t handshake_max_seconds;
};

/* BlockExportType; qmp_export_type_names[type] (schema.c). */
enum qmp_export_type {
    QMP_EXPORT_TYPE_NBD,
    QMP_EXPORT_TYPE_VHOST_USER_BLK,
    QMP_EXPORT_TYPE_FUSE,
};
extern const char *const qmp_export_type_names[];

/* FuseExportAllowOther, in the schema's order of values. */
enum qmp_fuse_allow_other {
    QMP_FUSE_ALLOW_OTHER_OFF,
    QMP_FUSE_ALLOW_OTHER_ON,
    QMP_FUSE_ALLOW_OTHER_AUTO,
};

/* block-export-add: QEMU's BlockExportOptions, a union on "type"; the
 * members of every type are here, the handler refuses the other types'. */
struct qmp_args_block_export_add {
    enum qmp_export_type type;
    const char *id;
    const char *node_name;
    bool has_writable;
    bool writable;
    bool has_writethrough;
    bool writethrough;
    /* nbd */
    const char *name;
    const char *description;
    struct qmp_bitmap_or_str *bitmaps;
    size_t n_bitmaps;
    bool has_allocation_depth;
    bool allocation_depth;
    /* common */
    const char *iothread;
    bool has_fixed_iothread;
    bool fixed_iothread;
    /* vhost-user-blk */
    json_t *addr;
    bool has_logical_block_size;
    uint64_t logical_block_size;
    bool has_num_queues;
    uint64_t num_queues;
    /* fuse */
    const char *mountpoint;
    bool has_growable;
    bool growable;
    bool has_allow_other;
    enum qmp_fuse_allow_other allow_other;
};

struct qmp_args_block_export_del {
    const char *id;
    bool has_mode;
    enum block_export_remove_mode mode;
};

struct qmp_args_nbd_server_add {
    const char *device;
    const char *name;
    const char *description;
    bool has_writable;
    bool writable;
    const char *bitmap;
};

struct qmp_args_nbd_server_remove {
    const char *name;
    bool has_mode;
    enum block_export_remove_mode mode;
};

/* ---- Jobs (cmds-job.c) --------------------------------------------------- */

/* job-*, block-job-dismiss, block-job-finalize. */
struct qmp_args_job_id {
    const char *id;
};

/* block-job-complete, -pause, -resume. */
struct qmp_args_block_job_device {
    const char *device;
};

struct qmp_args_block_job_set_speed {
    const char *device;
    int64_t speed;
};

struct qmp_args_block_job_cancel {
    const char *device;
    bool has_force;
    bool force;
};

/* blockdev-backup decodes into struct backup_options (job/backup.h). */

struct qmp_args_block_commit {
    const char *job_id;
    const char *device;
    const char *base_node;
    const char *base;
    const char *top_node;
    const char *top;
    const char *backing_file;
    bool has_speed;
    int64_t speed;
    bool has_on_error;
    enum job_on_error on_error;
    const char *filter_node_name;
    bool has_auto_finalize;
    bool auto_finalize;
    bool has_auto_dismiss;
    bool auto_dismiss;
};

struct qmp_args_x_replication_resync {
    const char *job_id;
    const char *device;
    const char *target;
    const char *bitmap;
    bool has_speed;
    int64_t speed;
    bool has_on_error;
    enum job_on_error on_error;
    bool has_auto_finalize;
    bool auto_finalize;
    bool has_auto_dismiss;
    bool auto_dismiss;
};

#endif
