/* SPDX-License-Identifier: MIT */
/*
 * The QMP schema: every command with its arguments, their types and their
 * documentation, in one static table.  The same table drives argument
 * validation in the dispatcher, query-commands, and the reference
 * documentation (docs/qmp.md, written by "lockstepd --print-qmp-doc").
 * Names and argument spellings are QEMU's; the text is ours.
 *
 * The validator's messages follow QEMU's QMP input visitor so that
 * clients see the same errors: "Parameter 'x' is missing", "Parameter 'x'
 * is unexpected", "Invalid parameter type for 'x', expected: integer",
 * "Parameter 'x' does not accept value 'y'".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/filter/copy-before-write.h"
#include "job/backup.h"
#include "job/job.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

/* ---- Argument lists ------------------------------------------------------ */

static const char *const capability_values[] = {
    [QMP_CAPABILITY_OOB] = "oob",
    NULL,
};
static const struct qmp_arg capability_elem =
    QMP_ELEM_ENUM(enum qmp_capability, capability_values,
                  .type_name = "QMPCapability");
#define T struct qmp_args_qmp_capabilities
static const struct qmp_arg args_qmp_capabilities[] = {
    QMP_ARRAY_OPT(T, enable, "enable", &capability_elem,
                  .doc = "capabilities to enable; only \"oob\" is known (and "
                         "has no effect)",
                  .type_name = "[QMPCapability]"),
    QMP_END_OF(T),
};
#undef T

const struct qmp_arg qmp_args_none[] = {
    QMP_END_OF(struct qmp_args_none),
};

#define T struct qmp_args_node_name
static const struct qmp_arg args_blockdev_del[] = {
    QMP_STR(T, node_name, "node-name", .doc = "the node to delete"),
    QMP_END_OF(T),
};

/* x-blockdev-insert-filter, x-blockdev-remove-filter. */
const struct qmp_arg qmp_args_node_name[] = {
    QMP_STR(T, node_name, "node-name",
            .doc = "the filter node (its 'file' child is the node it "
                   "filters)"),
    QMP_END_OF(T),
};
#undef T

static const struct qmp_arg reopen_elem =
    QMP_ELEM_ANY_OBJECT(.type_name = "BlockdevOptions");
#define T struct qmp_args_blockdev_reopen
static const struct qmp_arg args_blockdev_reopen[] = {
    QMP_ARRAY(T, options, "options", &reopen_elem,
              .doc = "the nodes' new options, each a BlockdevOptions with "
                     "node-name; here only child references (file, "
                     "backing, ...: node-names) and read-only may change, "
                     "and options left out keep their values",
              .type_name = "[BlockdevOptions]"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_query_named_block_nodes
static const struct qmp_arg args_query_named_block_nodes[] = {
    QMP_BOOL_OPT(T, flat, "flat",
                 .doc = "do not nest the backing chain in \"image\" "
                        "(\"backing-image\"); default false"),
    QMP_END_OF(T),
};
#undef T

const char *const qmp_socket_type_names[] = {
    [QMP_SOCKET_UNIX] = "unix",
    [QMP_SOCKET_INET] = "inet",
    [QMP_SOCKET_VSOCK] = "vsock",
    [QMP_SOCKET_FD] = "fd",
    NULL,
};
#define T struct qmp_socket_address_legacy
static const struct qmp_arg socket_legacy_members[] = {
    QMP_ENUM(T, type, "type", enum qmp_socket_type, qmp_socket_type_names,
             .doc = "\"unix\" or \"inet\""),
    QMP_ANY_OBJECT(T, data, "data",
                   .doc = "unix: {\"path\"}; inet: {\"host\", \"port\"} "
                          "(port a string)"),
    QMP_END_OF(T),
};
#undef T
#define T struct qmp_args_nbd_server_start
static const struct qmp_arg args_nbd_server_start[] = {
    QMP_OBJECT(T, addr, "addr", socket_legacy_members,
               .doc = "where to listen, as a legacy SocketAddress: "
                      "{\"type\": \"unix\", \"data\": {\"path\": P}} or "
                      "{\"type\": \"inet\", \"data\": {\"host\": H, "
                      "\"port\": \"N\"}}",
               .type_name = "SocketAddressLegacy"),
    QMP_STR_OPT(T, tls_creds, "tls-creds",
                .doc = "id of a tls-creds-x509 or tls-creds-psk object with "
                       "endpoint=server: every client must then do TLS "
                       "before it learns anything (docs/security.md)"),
    QMP_STR_OPT(T, tls_authz, "tls-authz",
                .doc = "id of an authz-simple/list/listfile object that "
                       "must allow the client's x509 distinguished name or "
                       "PSK user name (needs tls-creds; looked up per "
                       "client: while missing, everyone is refused)"),
    QMP_UINT_OPT(T, max_connections, "max-connections",
                 .doc = "most clients at once (default 100, 0 = no limit); "
                        "at the limit new clients wait until one leaves",
                 .type_name = "uint32"),
    QMP_UINT_OPT(T, handshake_max_seconds, "handshake-max-seconds",
                 .doc = "seconds a client has from connecting to the end of "
                        "negotiation before it is dropped (default 10, 0 = "
                        "no limit; QEMU 9.1's argument)",
                 .type_name = "uint32"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_bitmap_or_str
static const struct qmp_arg bitmap_ref_members[] = {
    QMP_STR(T, node, "node", .doc = "node-name"),
    QMP_STR(T, name, "name", .doc = "bitmap name"),
    QMP_END_OF(T),
};
#undef T
static const struct qmp_arg bitmap_or_str_elem =
    QMP_ELEM_STR_OR_OBJ(struct qmp_bitmap_or_str, local, bitmap_ref_members,
                        .type_name = "BlockDirtyBitmapOrStr");

const char *const qmp_export_type_names[] = {
    [QMP_EXPORT_TYPE_NBD] = "nbd",
    [QMP_EXPORT_TYPE_VHOST_USER_BLK] = "vhost-user-blk",
    [QMP_EXPORT_TYPE_FUSE] = "fuse",
    NULL,
};
static const char *const fuse_allow_other_values[] = {
    [QMP_FUSE_ALLOW_OTHER_OFF] = "off",
    [QMP_FUSE_ALLOW_OTHER_ON] = "on",
    [QMP_FUSE_ALLOW_OTHER_AUTO] = "auto",
    NULL,
};
/* block-export-add is a union on "type" (QEMU's BlockExportOptions):
 * every variant's members are listed, each documented with its type;
 * qmp/cmds-export.c refuses the members of the other types. */
#define T struct qmp_args_block_export_add
static const struct qmp_arg args_block_export_add[] = {
    QMP_ENUM(T, type, "type", enum qmp_export_type, qmp_export_type_names,
             .doc = "export type: \"nbd\", \"vhost-user-blk\" or "
                    "\"fuse\"",
             .type_name = "BlockExportType"),
    QMP_STR(T, id, "id", .doc = "unique export id"),
    QMP_STR(T, node_name, "node-name", .doc = "the node to export"),
    QMP_BOOL_OPT(T, writable, "writable",
                 .doc = "clients may write (default false)"),
    QMP_BOOL_OPT(T, writethrough, "writethrough",
                 .doc = "flush after every write (default false)"),
    QMP_STR_OPT(T, name, "name",
                .doc = "NBD export name (default: node-name)"),
    QMP_STR_OPT(T, description, "description",
                .doc = "free text shown to NBD clients"),
    QMP_ARRAY_OPT(T, bitmaps, "bitmaps", &bitmap_or_str_elem,
                  .doc = "dirty bitmaps offered as qemu:dirty-bitmap:NAME "
                         "meta contexts; each a name (looked up from the "
                         "node down) or {\"node\", \"name\"}",
                  .type_name = "[BlockDirtyBitmapOrStr]"),
    QMP_BOOL_OPT(T, allocation_depth, "allocation-depth",
                 .doc = "offer the qemu:allocation-depth meta context "
                        "(default false)"),
    QMP_STR_OPT(T, iothread, "iothread",
                .doc = "an iothread object that must exist; its "
                       "poll-max-ns, poll-grow and poll-shrink tune how "
                       "the export's own threads busy-poll (NBD, "
                       "vhost-user-blk; FUSE threads do not poll)"),
    QMP_BOOL_OPT(T, fixed_iothread, "fixed-iothread",
                 .doc = "accepted either way: an export's work never moves "
                        "to other threads"),
    QMP_ANY_OBJECT_OPT(T, addr, "addr",
                       .doc = "vhost-user-blk: where to listen for the VMM "
                              "(required), a flat SocketAddress: "
                              "{\"type\": \"unix\", \"path\": P} or "
                              "{\"type\": \"fd\", \"str\": \"N\"} (an "
                              "inherited listening socket)",
                       .type_name = "SocketAddress"),
    QMP_UINT_OPT(T, logical_block_size, "logical-block-size",
                 .doc = "vhost-user-blk: the block size the guest sees, a "
                        "power of 2 from 512 to 32768 (default 512)",
                 .type_name = "size"),
    QMP_UINT_OPT(T, num_queues, "num-queues",
                 .doc = "vhost-user-blk: virtqueues offered, 1 to 16 "
                        "(default 1)",
                 .type_name = "uint16"),
    QMP_STR_OPT(T, mountpoint, "mountpoint",
                .doc = "fuse: an existing regular file the node appears at "
                       "(required)"),
    QMP_BOOL_OPT(T, growable, "growable",
                 .doc = "fuse: writes past the end grow the node (default "
                        "false)"),
    QMP_ENUM_OPT(T, allow_other, "allow-other", enum qmp_fuse_allow_other,
                 fuse_allow_other_values,
                 .doc = "fuse: let users other than the daemon's reach the "
                        "file (FUSE's allow_other; a daemon not running as "
                        "root needs user_allow_other in /etc/fuse.conf); "
                        "\"auto\" (default) tries on, then off",
                 .type_name = "FuseExportAllowOther"),
    QMP_END_OF(T),
};
#undef T

static const char *const export_del_mode_values[] = { "safe", "hard", NULL };

#define T struct qmp_args_nbd_server_add
static const struct qmp_arg args_nbd_server_add[] = {
    QMP_STR(T, device, "device", .doc = "the node to export"),
    QMP_STR_OPT(T, name, "name",
                .doc = "export name, also the export's id (default: "
                       "device)"),
    QMP_STR_OPT(T, description, "description",
                .doc = "free text shown to NBD clients"),
    QMP_BOOL_OPT(T, writable, "writable",
                 .doc = "clients may write (default false)"),
    QMP_STR_OPT(T, bitmap, "bitmap",
                .doc = "a dirty bitmap to offer as qemu:dirty-bitmap:NAME"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_nbd_server_remove
static const struct qmp_arg args_nbd_server_remove[] = {
    QMP_STR(T, name, "name", .doc = "export name"),
    QMP_ENUM_OPT(T, mode, "mode", enum block_export_remove_mode,
                 export_del_mode_values,
                 .doc = "\"safe\" (default) or \"hard\"",
                 .type_name = "BlockExportRemoveMode"),
    QMP_END_OF(T),
};
#undef T
#define T struct qmp_args_block_export_del
static const struct qmp_arg args_block_export_del[] = {
    QMP_STR(T, id, "id", .doc = "export id"),
    QMP_ENUM_OPT(T, mode, "mode", enum block_export_remove_mode,
                 export_del_mode_values,
                 .doc = "\"safe\" (default: fail while NBD clients are "
                        "connected) or \"hard\" (disconnect them); a FUSE "
                        "export is unmounted in either mode, files still "
                        "open on it get ENOTCONN",
                 .type_name = "BlockExportRemoveMode"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_bitmap
const struct qmp_arg qmp_args_bitmap[] = {
    QMP_STR(T, node, "node", .doc = "node-name"),
    QMP_STR(T, name, "name", .doc = "bitmap name"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_bitmap_add
const struct qmp_arg qmp_args_bitmap_add[] = {
    QMP_STR(T, node, "node", .doc = "node-name"),
    QMP_STR(T, name, "name", .doc = "bitmap name (1 to 1023 bytes)"),
    QMP_UINT_OPT(T, granularity, "granularity",
                 .doc = "bytes per bit: a power of 2, at least 512 (default: "
                        "the cluster size clamped to 4k..64k, else 64k)",
                 .type_name = "uint32"),
    QMP_BOOL_OPT(T, persistent, "persistent",
                 .doc = "store in the image (qcow2 v3 only; default false)"),
    QMP_BOOL_OPT(T, disabled, "disabled",
                 .doc = "create it not recording (default false)"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_bitmap_merge
const struct qmp_arg qmp_args_bitmap_merge[] = {
    QMP_STR(T, node, "node", .doc = "node-name of the target"),
    QMP_STR(T, target, "target", .doc = "name of the target bitmap"),
    QMP_ARRAY(T, bitmaps, "bitmaps", &bitmap_or_str_elem,
              .doc = "sources: names of bitmaps on the same node, or "
                     "{\"node\", \"name\"}",
              .type_name = "[BlockDirtyBitmapOrStr]"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_txn_action_arg
static const struct qmp_arg txn_action_members[] = {
    QMP_ENUM(T, type, "type", int, qmp_txn_action_types,
             .doc = "the action (a command name)"),
    QMP_ANY_OBJECT(T, data, "data",
                   .doc = "the action's arguments (those of the command of "
                          "the same name)"),
    QMP_END_OF(T),
};
#undef T
static const struct qmp_arg txn_action_elem =
    QMP_ELEM_OBJECT(struct qmp_txn_action_arg, txn_action_members,
                    .type_name = "TransactionAction");
static const char *const completion_mode_values[] = {
    [QMP_TXN_COMPLETION_INDIVIDUAL] = "individual",
    [QMP_TXN_COMPLETION_GROUPED] = "grouped",
    NULL,
};
#define T struct qmp_txn_properties
static const struct qmp_arg txn_properties_members[] = {
    QMP_ENUM_OPT(T, completion_mode, "completion-mode",
                 enum qmp_txn_completion_mode, completion_mode_values,
                 .doc = "\"individual\" (default) or \"grouped\" (jobs "
                        "only)"),
    QMP_END_OF(T),
};
#undef T
#define T struct qmp_args_transaction
static const struct qmp_arg args_transaction[] = {
    QMP_ARRAY(T, actions, "actions", &txn_action_elem,
              .doc = "the actions, each {\"type\": T, \"data\": {...}}; T "
                     "is one of abort, block-dirty-bitmap-add, "
                     "block-dirty-bitmap-remove, block-dirty-bitmap-clear, "
                     "block-dirty-bitmap-enable, block-dirty-bitmap-disable, "
                     "block-dirty-bitmap-merge, blockdev-backup, "
                     "x-blockdev-insert-filter, x-blockdev-remove-filter",
              .type_name = "[TransactionAction]"),
    QMP_OBJECT_OPT(T, properties, "properties", txn_properties_members,
                   .doc = "transaction properties",
                   .type_name = "TransactionProperties"),
    QMP_END_OF(T),
};
#undef T

/* ---- Fleecing (cmds-fleecing.c) ----------------------------------------- */

#define T struct qmp_args_fleecing_start
static const struct qmp_arg args_fleecing_start[] = {
    QMP_STR(T, id, "id",
            .doc = "name of this fleecing; also the NBD export's id, and the "
                   "prefix of the node-names created: ID-temp, ID-cbw, "
                   "ID-access"),
    QMP_STR(T, node, "node",
            .doc = "node-name of the live disk: the filter goes above it and "
                   "takes over its parents (guest exports, raw shims, ...)"),
    QMP_ANY(T, temp, "temp",
            .doc = "the temp (scratch) image, of the disk's size: a "
                   "BlockdevOptions object (node-name defaults to ID-temp), "
                   "or {\"filename\", \"format\": \"raw\"|\"qcow2\"} for an "
                   "existing image (opened with discard=unmap; its file node "
                   "is ID-temp-file), or the node-name of a node already "
                   "added (left in place by fleecing-stop)",
            .type_name = "BlockdevOptions or FleecingTemp or str"),
    QMP_OBJECT_OPT(T, bitmap, "bitmap", bitmap_ref_members,
                   .doc = "limit the snapshot to this bitmap's dirty clusters "
                          "(reads elsewhere fail with EINVAL over NBD); also "
                          "offered on the export as qemu:dirty-bitmap:NAME",
                   .type_name = "BlockDirtyBitmap"),
    QMP_STR_OPT(T, export_name, "export-name",
                .doc = "NBD export name (default: id)"),
    QMP_ENUM_OPT(T, on_cbw_error, "on-cbw-error", enum cbw_on_error,
                 cbw_on_error_names,
                 .doc = "when copying old data fails: break-guest-write "
                        "(default) or break-snapshot",
                 .type_name = "OnCbwError"),
    QMP_UINT_OPT(T, cbw_timeout, "cbw-timeout",
                 .doc = "seconds a guest write may wait for its copy, 0 = no "
                        "limit (default)", .type_name = "uint32"),
    QMP_BOOL_OPT(T, discard, "discard",
                 .doc = "let NBD clients discard what they have read, "
                        "freeing temp space (default true; the export is "
                        "then writable, writes fail with ENOTSUP)"),
    QMP_ARRAY_OPT(T, actions, "actions", &txn_action_elem,
                  .doc = "transaction actions (bitmap add/disable/...) run "
                         "atomically with the insertion of the filter: the "
                         "snapshot point",
                  .type_name = "[TransactionAction]"),
    QMP_END_OF(T),
};
#undef T
#define T struct qmp_args_fleecing_stop
static const struct qmp_arg args_fleecing_stop[] = {
    QMP_STR(T, id, "id", .doc = "the fleecing to stop"),
    QMP_END_OF(T),
};
#undef T

/* ---- Jobs (cmds-job.c) -------------------------------------------------- */

#define T struct qmp_args_job_id
static const struct qmp_arg args_job_id[] = {
    QMP_STR(T, id, "id", .doc = "the job's identifier"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_block_job_device
static const struct qmp_arg args_block_job_device[] = {
    QMP_STR(T, device, "device",
            .doc = "the job's identifier (QEMU's name)"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_block_job_set_speed
static const struct qmp_arg args_block_job_set_speed[] = {
    QMP_STR(T, device, "device", .doc = "the job's identifier"),
    QMP_INT(T, speed, "speed",
            .doc = "bytes per second for the background copy, 0 = "
                   "unlimited"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_block_job_cancel
static const struct qmp_arg args_block_job_cancel[] = {
    QMP_STR(T, device, "device", .doc = "the job's identifier"),
    QMP_BOOL_OPT(T, force, "force",
                 .doc = "also cancel a job that job-pause paused; default "
                        "false"),
    QMP_END_OF(T),
};
#undef T

#define T struct backup_perf
static const struct qmp_arg backup_perf_members[] = {
    QMP_BOOL_OPT(T, use_copy_range, "use-copy-range",
                 .doc = "accepted, no effect"),
    QMP_INT_OPT(T, max_workers, "max-workers",
                .doc = "parallel background copies (default 64; threads "
                       "are capped at 8)"),
    QMP_INT_OPT(T, max_chunk, "max-chunk",
                .doc = "largest background copy request, 0 = no limit"),
    QMP_INT_OPT(T, min_cluster_size, "min-cluster-size",
                .doc = "lower bound of the copy granularity (at most 64 KiB "
                       "here)", .type_name = "size"),
    QMP_END_OF(T),
};
#undef T
#define T struct backup_options
const struct qmp_arg qmp_args_blockdev_backup[] = {
    QMP_STR_OPT(T, job_id, "job-id",
                .doc = "the job's identifier (required: nodes have no "
                       "device name)"),
    QMP_STR(T, device, "device",
            .doc = "node to back up (a snapshot-access node for push backup "
                   "with fleecing)"),
    QMP_STR(T, target, "target", .doc = "node to write to, of the same size"),
    QMP_ENUM(T, sync, "sync", enum backup_sync, backup_sync_names,
             .doc = "what to copy: full, top (what device's own layer "
                    "allocates), none (only copy-before-write), bitmap, "
                    "incremental (bitmap + on-success)",
             .type_name = "MirrorSyncMode"),
    QMP_INT_OPT(T, speed, "speed", .doc = "bytes per second, 0 = unlimited"),
    QMP_STR_OPT(T, bitmap, "bitmap",
                .doc = "dirty bitmap on device: what to copy (sync=bitmap), "
                       "or an output (full, top)"),
    QMP_ENUM_OPT(T, bitmap_mode, "bitmap-mode", enum backup_bitmap_mode,
                 backup_bitmap_mode_names,
                 .doc = "what becomes of the bitmap: on-success, never, "
                        "always", .type_name = "BitmapSyncMode"),
    QMP_BOOL_OPT(T, compress, "compress",
                 .doc = "not supported (true is refused)"),
    QMP_ENUM_OPT(T, on_source_error, "on-source-error", enum job_on_error,
                 job_on_error_names,
                 .doc = "after a read error: report (default), ignore, stop, "
                        "enospc, auto", .type_name = "BlockdevOnError"),
    QMP_ENUM_OPT(T, on_target_error, "on-target-error", enum job_on_error,
                 job_on_error_names,
                 .doc = "after a write error: report (default), ignore, "
                        "stop, enospc, auto", .type_name = "BlockdevOnError"),
    QMP_ENUM_OPT(T, on_cbw_error, "on-cbw-error", enum cbw_on_error,
                 cbw_on_error_names,
                 .doc = "the job's copy-before-write filter's policy",
                 .type_name = "OnCbwError"),
    QMP_BOOL_OPT(T, auto_finalize, "auto-finalize",
                 .doc = "finalize without job-finalize; default true"),
    QMP_BOOL_OPT(T, auto_dismiss, "auto-dismiss",
                 .doc = "dismiss without job-dismiss; default true"),
    QMP_STR_OPT(T, filter_node_name, "filter-node-name",
                .doc = "node-name of the copy-before-write filter put above "
                       "device"),
    QMP_OBJECT_OPT(T, x_perf, "x-perf", backup_perf_members,
                   .doc = "performance knobs (unstable)",
                   .type_name = "BackupPerf"),
    QMP_BOOL_OPT(T, discard_source, "discard-source",
                 .doc = "discard each copied chunk on device (push backup "
                        "with fleecing)"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_object_del
static const struct qmp_arg args_object_del[] = {
    QMP_STR(T, id, "id", .doc = "the object's id"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_qom_list
static const struct qmp_arg args_qom_list[] = {
    QMP_STR(T, path, "path", .doc = "\"/objects/ID\""),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_qom_get
static const struct qmp_arg args_qom_get[] = {
    QMP_STR(T, path, "path", .doc = "\"/objects/ID\""),
    QMP_STR(T, property, "property", .doc = "a property qom-list shows"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_x_blockdev_change
static const struct qmp_arg args_x_blockdev_change[] = {
    QMP_STR(T, parent, "parent", .doc = "the quorum node"),
    QMP_STR_OPT(T, child, "child",
                .doc = "the child to remove (\"children.N\")"),
    QMP_STR_OPT(T, node, "node",
                .doc = "node-name of a node to add as a child"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_xen_set_replication
static const struct qmp_arg args_xen_set_replication[] = {
    QMP_BOOL(T, enable, "enable", .doc = "start (true) or stop (false)"),
    QMP_BOOL(T, primary, "primary", .doc = "this side is the primary"),
    QMP_BOOL_OPT(T, failover, "failover",
                 .doc = "when stopping: fail over (secondary takes over; "
                        "default false)"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_replication_start
static const struct qmp_arg args_replication_start[] = {
    QMP_BOOL(T, primary, "primary",
             .doc = "this side is the primary (true) or the secondary "
                    "(false)"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_replication_stop
static const struct qmp_arg args_replication_stop[] = {
    QMP_BOOL_OPT(T, failover, "failover",
                 .doc = "secondary: take over from a lost primary (commit "
                        "the active and hidden disks into the secondary "
                        "disk); default false"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_block_commit
static const struct qmp_arg args_block_commit[] = {
    QMP_STR_OPT(T, job_id, "job-id",
                .doc = "the job's id; needed, as in qemu-storage-daemon, "
                       "whose nodes have no device name to default to "
                       "(\"Invalid job ID ''\")"),
    QMP_STR(T, device, "device",
            .doc = "the node whose chain is committed (its first non-filter "
                   "node is the active layer)"),
    QMP_STR_OPT(T, base_node, "base-node",
                .doc = "node-name of the layer committed into (default: the "
                       "bottom of the chain)"),
    QMP_STR_OPT(T, base, "base",
                .doc = "the same as base-node, by node-name or file name "
                       "(exclusive with base-node)"),
    QMP_STR_OPT(T, top_node, "top-node",
                .doc = "node-name of the top layer committed (default: the "
                       "active layer, which makes it an active commit)"),
    QMP_STR_OPT(T, top, "top",
                .doc = "the same as top-node, by node-name or file name "
                       "(exclusive with top-node)"),
    QMP_STR_OPT(T, backing_file, "backing-file",
                .doc = "accepted and ignored: image headers keep their "
                       "backing file name"),
    QMP_INT_OPT(T, speed, "speed", .doc = "bytes per second, 0 = unlimited"),
    QMP_ENUM_OPT(T, on_error, "on-error", enum job_on_error,
                 job_on_error_names,
                 .doc = "action on an I/O error (default report)",
                 .type_name = "BlockdevOnError"),
    QMP_STR_OPT(T, filter_node_name, "filter-node-name",
                .doc = "accepted; no filter node is inserted (a dirty bitmap "
                       "on top tracks the guest's writes)"),
    QMP_BOOL_OPT(T, auto_finalize, "auto-finalize", .doc = "default true"),
    QMP_BOOL_OPT(T, auto_dismiss, "auto-dismiss", .doc = "default true"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_x_replication_resync
static const struct qmp_arg args_x_replication_resync[] = {
    QMP_STR_OPT(T, job_id, "job-id",
                .doc = "the job's id (default \"resync\")"),
    QMP_STR(T, device, "device",
            .doc = "the primary's node that holds the bitmap (the quorum "
                   "node, where the replication driver keeps "
                   "\"replication-resync\")"),
    QMP_STR(T, target, "target",
            .doc = "node-name of the node that reaches the returning "
                   "secondary (the new replication node's NBD client)"),
    QMP_STR_OPT(T, bitmap, "bitmap",
                .doc = "the dirty bitmap on device (default "
                       "\"replication-resync\")"),
    QMP_INT_OPT(T, speed, "speed", .doc = "bytes per second, 0 = unlimited"),
    QMP_ENUM_OPT(T, on_error, "on-error", enum job_on_error,
                 job_on_error_names,
                 .doc = "action on an I/O error (default report)",
                 .type_name = "BlockdevOnError"),
    QMP_BOOL_OPT(T, auto_finalize, "auto-finalize", .doc = "default true"),
    QMP_BOOL_OPT(T, auto_dismiss, "auto-dismiss", .doc = "default true"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_args_block_resize
static const struct qmp_arg args_block_resize[] = {
    QMP_STR_OPT(T, device, "device",
                .doc = "a device name (there are none here)"),
    QMP_STR_OPT(T, node_name, "node-name", .doc = "the node to resize"),
    QMP_INT(T, size, "size", .doc = "the new length in bytes"),
    QMP_END_OF(T),
};
#undef T

/* ---- The commands -------------------------------------------------------- */

const struct qmp_command qmp_commands[] = {
    { "qmp_capabilities", NULL, args_qmp_capabilities, false,
      "Leave capabilities negotiation mode.  Every other command fails with "
      "CommandNotFound until a client has sent this once.",
      "{}", NULL,
      &qmp_qmp_capabilities },
    { "query-version", qmp_query_version, NULL, false,
      "The daemon's version, in QEMU's VersionInfo shape.",
      "{\"qemu\": {\"major\", \"minor\", \"micro\"}, \"package\"}" },
    { "query-status", qmp_query_status, NULL, false,
      "QEMU's StatusInfo; a storage daemon runs no guest, so always "
      "running (monitors poll it to see that the daemon answers).",
      "{\"running\": true, \"singlestep\": false, \"status\": "
      "\"running\"}" },
    { "query-commands", qmp_query_commands, NULL, false,
      "The commands this daemon knows.", "[{\"name\"}]" },
    { "quit", qmp_quit, NULL, false,
      "Shut down as on SIGTERM: answer, stop the NBD server, close exports, "
      "flush and close every node, exit 0.", "{}" },
    { "blockdev-add", qmp_blockdev_add, NULL, true,
      "Create a node from QEMU's BlockdevOptions (driver, node-name, "
      "driver options; children inline or by node-name).  The node is "
      "owned by the monitor until blockdev-del.  Connections to NBD "
      "servers are made off the main thread, with no lock held: the "
      "monitor keeps serving meanwhile and the response comes when the "
      "connection is made or has failed (connect-timeout, open-timeout).",
      "{}", qmp_blockdev_add_async },
    { "blockdev-del", NULL, args_blockdev_del, false,
      "Delete a node added by blockdev-add that nothing uses any more.",
      "{}", NULL,
      &qmp_blockdev_del },
    { "blockdev-reopen", NULL, args_blockdev_reopen, false,
      "Change nodes' options atomically: point a child edge at another "
      "node (insert or remove a filter under a node) or toggle read-only.",
      "{}", NULL,
      &qmp_blockdev_reopen },
    { "object-add", qmp_object_add, NULL, true,
      "Create an object: an iothread (for exports that name one; its "
      "poll-max-ns, poll-grow and poll-shrink tune their threads' "
      "busy-polling, aio-max-batch and thread-pool-min/max take only "
      "QEMU's defaults), TLS credentials "
      "(tls-creds-x509, tls-creds-psk: loaded and checked now, QEMU's file "
      "names in dir) or an authorization list (authz-simple, authz-list, "
      "authz-listfile).  docs/security.md shows them in use.",
      "{}" },
    { "object-del", NULL, args_object_del, false,
      "Delete an object.  As in QEMU this is allowed while the object is "
      "in use: a running NBD server keeps the credentials it started "
      "with, and a deleted authz object refuses every new client.",
      "{}", NULL,
      &qmp_object_del },
    { "qom-list", NULL, args_qom_list, false,
      "The properties of an object made with object-add or --object.",
      "[{\"name\", \"type\"}]", NULL,
      &qmp_qom_list },
    { "qom-get", NULL, args_qom_get, false,
      "One property of an object made with object-add or --object: as "
      "given, QEMU's default otherwise; credentials also have \"loaded\" "
      "(always true: objects that do not load are not made).",
      "the value", NULL,
      &qmp_qom_get },
    { "block_resize", NULL, args_block_resize, false,
      "Change a node's length.", "{}", NULL,
      &qmp_block_resize },
    { "query-block", qmp_query_block, NULL, false,
      "Named block devices: always empty in a storage daemon, as in "
      "qemu-storage-daemon.", "[]" },
    { "x-blockdev-change", NULL, args_x_blockdev_change,
      false,
      "Add a node to a quorum as a new child, or remove a child (exactly "
      "one of node and child).", "{}", NULL,
      &qmp_x_blockdev_change_cmd },
    { "xen-set-replication", NULL,
      args_xen_set_replication, false,
      "Start or stop every replication node (COLO block replication).",
      "{}", NULL,
      &qmp_xen_set_replication_cmd },
    { "query-xen-replication-status", qmp_query_xen_replication_status,
      NULL, false, "The replication status.",
      "{\"error\": bool, \"desc\"?: string}" },
    { "xen-colo-do-checkpoint", qmp_xen_colo_do_checkpoint, NULL, false,
      "Take a replication checkpoint on every replication node.", "{}" },
    { "replication-start", NULL, args_replication_start,
      false,
      "Start every replication node of this process in the given role: "
      "xen-set-replication with enable=true, clearer.", "{}", NULL,
      &qmp_replication_start },
    { "replication-stop", NULL, args_replication_stop,
      false,
      "Stop every replication node; failover=true on the secondary takes "
      "over from a lost primary.  Unlike xen-set-replication, errors of a "
      "failover are reported.", "{}", NULL,
      &qmp_replication_stop },
    { "replication-checkpoint", qmp_xen_colo_do_checkpoint, NULL, false,
      "xen-colo-do-checkpoint: take a checkpoint on every replication "
      "node (the secondary's active and hidden disks are emptied).",
      "{}" },
    { "query-replication", qmp_query_replication, NULL, false,
      "query-xen-replication-status, and while a failover runs (a job of "
      "type \"commit\" with id \"failover-NODE\"), its progress.",
      "{\"error\": bool, \"desc\"?: string, \"failover\"?: "
      "[{\"node-name\", \"job-id\", \"status\", \"current-progress\", "
      "\"total-progress\"}]}" },
    { "x-replication-resync", NULL,
      args_x_replication_resync, false,
      "Beyond QEMU: after the secondary was lost and a secondary with its "
      "old disk is attached again (a new replication node, started, in "
      "the quorum), copy only the ranges the primary wrote meanwhile (the "
      "bitmap \"replication-resync\" on the quorum) to it.  A job (type "
      "\"replication-resync\"); at its end the bitmap is cleared and "
      "disabled.  See docs/replication.md.", "{}", NULL,
      &qmp_x_replication_resync },
    { "block-commit", NULL, args_block_commit, false,
      "Start a commit job: copy top (and the layers down to base) into "
      "base.  Intermediate commit completes by itself and points top's "
      "overlay at base; active commit (top = the active layer) mirrors the "
      "guest's writes, sends BLOCK_JOB_READY when converged and on "
      "job-complete replaces top by base for all its parents.", "{}", NULL,
      &qmp_block_commit },
    { "query-named-block-nodes", NULL,
      args_query_named_block_nodes, false,
      "Every node, newest first, in QEMU's BlockDeviceInfo shape (I/O "
      "throttling fields are zero).",
      "[BlockDeviceInfo]", NULL,
      &qmp_query_named_block_nodes },
    { "x-debug-query-block-graph", qmp_x_debug_query_block_graph, NULL,
      false,
      "The node graph: nodes (block-driver nodes and block-backend users "
      "such as exports and jobs) and the edges between them with their "
      "permissions.",
      "{\"nodes\": [{\"id\", \"type\", \"name\"}], \"edges\": [{\"parent\", "
      "\"child\", \"name\", \"perm\", \"shared-perm\"}]}" },
    { "nbd-server-start", NULL, args_nbd_server_start,
      false, "Start the NBD server.", "{}", NULL,
      &qmp_nbd_server_start },
    { "nbd-server-stop", qmp_nbd_server_stop, NULL, false,
      "Stop the NBD server (disconnects clients; exports stay).", "{}" },
    { "nbd-server-add", NULL, args_nbd_server_add, false,
      "Deprecated in QEMU: block-export-add with type nbd and id = name.",
      "{}", NULL,
      &qmp_nbd_server_add },
    { "nbd-server-remove", NULL, args_nbd_server_remove,
      false, "Deprecated in QEMU: block-export-del of the export name.",
      "{}", NULL,
      &qmp_nbd_server_remove },
    { "block-export-add", NULL, args_block_export_add, false,
      "Export a node: over the running NBD server (type \"nbd\": name, "
      "description, bitmaps, allocation-depth), to a VMM as a virtio-blk "
      "device over vhost-user (type \"vhost-user-blk\": addr, "
      "logical-block-size, num-queues), or as a regular file "
      "through FUSE (type \"fuse\": mountpoint, growable, allow-other; "
      "see docs/exports.md).", "{}", NULL,
      &qmp_block_export_add },
    { "block-export-del", NULL, args_block_export_del, false,
      "Remove an export; BLOCK_EXPORT_DELETED {id} follows when it is gone.",
      "{}", NULL,
      &qmp_block_export_del },
    { "query-block-exports", qmp_query_block_exports, NULL, false,
      "The exports.",
      "[{\"type\", \"id\", \"node-name\", \"shutting-down\"}]" },
    { "block-dirty-bitmap-add", NULL,
      qmp_args_bitmap_add, false,
      "Create a dirty bitmap on a node.  A persistent one (qcow2 v3) is "
      "stored in the image when the node is closed, deleted or reopened "
      "read-only, and loaded again at the next open (docs/qcow2.md).  "
      "Also a transaction action.", "{}", NULL,
      &qmp_block_dirty_bitmap_add },
    { "block-dirty-bitmap-remove", NULL,
      qmp_args_bitmap, false,
      "Remove a dirty bitmap (not while busy); a persistent one leaves the "
      "image at once.  The only change an inconsistent bitmap allows.  Also "
      "a transaction action.",
      "{}", NULL,
      &qmp_block_dirty_bitmap_remove },
    { "block-dirty-bitmap-clear", NULL,
      qmp_args_bitmap, false,
      "Clear every bit of a dirty bitmap.  Also a transaction action.",
      "{}", NULL,
      &qmp_block_dirty_bitmap_clear },
    { "block-dirty-bitmap-enable", NULL,
      qmp_args_bitmap, false,
      "Make a bitmap record writes.  Also a transaction action.", "{}", NULL,
      &qmp_block_dirty_bitmap_enable },
    { "block-dirty-bitmap-disable", NULL,
      qmp_args_bitmap, false,
      "Make a bitmap stop recording writes.  Also a transaction action.",
      "{}", NULL,
      &qmp_block_dirty_bitmap_disable },
    { "block-dirty-bitmap-merge", NULL,
      qmp_args_bitmap_merge, false,
      "OR the source bitmaps into the target (all or nothing).  Also a "
      "transaction action.", "{}", NULL,
      &qmp_block_dirty_bitmap_merge },
    { "x-debug-block-dirty-bitmap-sha256",
      NULL, qmp_args_bitmap, false,
      "SHA-256 of a bitmap's bits, for tests.", "{\"sha256\"}", NULL,
      &qmp_x_debug_block_dirty_bitmap_sha256 },
    { "transaction", NULL, args_transaction, false,
      "Run several actions atomically: every action is prepared, then all "
      "are committed, or all prepared ones are undone when one fails.",
      "{}", NULL,
      &qmp_transaction },
    { "x-blockdev-insert-filter", NULL,
      qmp_args_node_name, false,
      "Put a filter node that has no parents yet above its 'file' child: "
      "every other parent of that child (exports, nodes) now goes through "
      "the filter, in one drained step (for copy-before-write: the "
      "snapshot point).  Also a transaction action.", "{}", NULL,
      &qmp_x_blockdev_insert_filter },
    { "x-blockdev-remove-filter", NULL,
      qmp_args_node_name, false,
      "Take a filter out: its parents go back to its 'file' child, except "
      "snapshot-access nodes, which stay on a copy-before-write filter "
      "until deleted (while one does, the filter refuses writers on its "
      "source: delete it first when a guest writes).  Also a transaction "
      "action.", "{}", NULL,
      &qmp_x_blockdev_remove_filter },
    { "fleecing-start", NULL, args_fleecing_start, false,
      "Start pull-mode fleecing in one call: open the temp node, add a "
      "copy-before-write filter (ID-cbw) over node, insert it atomically "
      "with actions, add a snapshot-access node (ID-access) and an NBD "
      "export of it (id ID; reads and, with discard, trims: writes fail).  "
      "Needs a running NBD server.  "
      "On failure everything built is undone.",
      "{\"id\", \"node\", \"temp\", \"cbw\", \"snapshot-access\", "
      "\"export\", \"export-name\", \"temp-created\"}", NULL,
      &qmp_fleecing_start },
    { "fleecing-stop", NULL, args_fleecing_stop, false,
      "Tear down what fleecing-start built: delete the export (hard: "
      "clients are disconnected), remove the filter, delete the "
      "snapshot-access node, the filter and the temp node (when "
      "fleecing-start opened it).  Refused while anything else uses the "
      "snapshot-access node (an export added on it: delete that first).",
      "{}", NULL,
      &qmp_fleecing_stop },
    { "query-fleecing", qmp_query_fleecing, NULL, false,
      "The fleecings started by fleecing-start.",
      "[{\"id\", \"node\", \"temp\", \"cbw\", \"snapshot-access\", "
      "\"export\", \"export-name\", \"temp-created\"}]" },
    { "blockdev-backup", NULL, qmp_args_blockdev_backup, false,
      "Start a backup job: a copy-before-write filter goes above device "
      "for the job's lifetime, and the job copies the rest to target in "
      "the background.  Events: JOB_STATUS_CHANGE, BLOCK_JOB_PENDING "
      "(auto-finalize off), BLOCK_JOB_ERROR, BLOCK_JOB_COMPLETED or "
      "BLOCK_JOB_CANCELLED.",
      "{}", NULL,
      &qmp_blockdev_backup },
    { "query-jobs", qmp_query_jobs, NULL, false,
      "Every job, in QEMU's JobInfo shape.",
      "[{\"id\", \"type\", \"status\", \"current-progress\", "
      "\"total-progress\", \"error\"?}]" },
    { "query-block-jobs", qmp_query_block_jobs, NULL, false,
      "Every job, in QEMU's BlockJobInfo shape (\"device\" is the job id).",
      "[{\"type\", \"device\", \"len\", \"offset\", \"busy\", \"paused\", "
      "\"speed\", \"io-status\", \"ready\", \"status\", \"auto-finalize\", "
      "\"auto-dismiss\", \"error\"?}]" },
    { "job-pause", NULL, args_job_id, false,
      "Pause a job: its background I/O stops at the next chunk.", "{}", NULL,
      &qmp_job_pause },
    { "job-resume", NULL, args_job_id, false,
      "Resume a job that job-pause (or error action stop) paused.", "{}", NULL,
      &qmp_job_resume },
    { "job-cancel", NULL, args_job_id, false,
      "Cancel a job (also a paused or pending one).", "{}", NULL,
      &qmp_job_cancel },
    { "job-complete", NULL, args_job_id, false,
      "Complete a job in status ready (backup never is).", "{}", NULL,
      &qmp_job_complete },
    { "job-finalize", NULL, args_job_id, false,
      "Finalize a pending job (auto-finalize off): bitmaps and graph "
      "changes take effect.", "{}", NULL,
      &qmp_job_finalize },
    { "job-dismiss", NULL, args_job_id, false,
      "Remove a concluded job (auto-dismiss off).", "{}", NULL,
      &qmp_job_dismiss },
    { "block-job-set-speed", NULL,
      args_block_job_set_speed, false,
      "Change a job's speed limit.", "{}", NULL,
      &qmp_block_job_set_speed },
    { "block-job-cancel", NULL, args_block_job_cancel, false,
      "Cancel a job; a paused one only with force.", "{}", NULL,
      &qmp_block_job_cancel },
    { "block-job-complete", NULL, args_block_job_device,
      false, "Deprecated form of job-complete.", "{}", NULL,
      &qmp_block_job_complete },
    { "block-job-pause", NULL, args_block_job_device, false,
      "Deprecated form of job-pause.", "{}", NULL,
      &qmp_block_job_pause },
    { "block-job-resume", NULL, args_block_job_device, false,
      "Deprecated form of job-resume.", "{}", NULL,
      &qmp_block_job_resume },
    { "block-job-dismiss", NULL, args_job_id, false,
      "Deprecated form of job-dismiss.", "{}", NULL,
      &qmp_block_job_dismiss },
    { "block-job-finalize", NULL, args_job_id, false,
      "Deprecated form of job-finalize.", "{}", NULL,
      &qmp_block_job_finalize },
    { NULL, NULL, NULL, false, NULL, NULL },
};

const struct qmp_command *
qmp_command_find(const char *name)
{
    for (const struct qmp_command *c = qmp_commands; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

/* ---- Validation ---------------------------------------------------------- */

static const char *
json_kind_name(enum qmp_type t)
{
    switch (t) {
    case QMP_T_STR:
    case QMP_T_ENUM:
        return "string";
    case QMP_T_BOOL:
        return "boolean";
    case QMP_T_INT:
    case QMP_T_UINT:
        return "integer";
    case QMP_T_NUMBER:
        return "number";
    case QMP_T_OBJECT:
    case QMP_T_ANY_OBJECT:
        return "object";
    case QMP_T_ARRAY:
        return "array";
    case QMP_T_STR_OR_OBJ:
    case QMP_T_ANY:
        break;
    }
    return "value";
}

static bool
type_error(const struct qmp_arg *arg, const char *path, struct err **errp)
{
    const char *expected = arg->type == QMP_T_STR_OR_OBJ && arg->type_name ?
                           arg->type_name : json_kind_name(arg->type);

    err_setf(errp, "Invalid parameter type for '%s', expected: %s", path,
             expected);
    return false;
}

bool
qmp_validate_members(const struct qmp_arg *members, json_t *obj,
                     const char *prefix, struct err **errp)
{
    const char *key;
    json_t *v;

    /* Missing and ill-typed members first, in schema order (QEMU visits
     * the members in that order), then anything left over. */
    for (const struct qmp_arg *m = members; m && m->name; m++) {
        CLEANUP_FREE char *path = xasprintf("%s%s", prefix, m->name);

        v = json_object_get(obj, m->name);
        if (!v) {
            if (!m->optional) {
                err_setf(errp, "Parameter '%s' is missing", path);
                return false;
            }
            continue;
        }
        if (!qmp_validate(m, v, path, errp)) {
            return false;
        }
    }
    json_object_foreach(obj, key, v) {
        bool known = false;

        for (const struct qmp_arg *m = members; m && m->name; m++) {
            if (!strcmp(m->name, key)) {
                known = true;
                break;
            }
        }
        if (!known) {
            err_setf(errp, "Parameter '%s%s' is unexpected", prefix, key);
            return false;
        }
    }
    return true;
}

bool
qmp_validate(const struct qmp_arg *arg, json_t *value, const char *path,
             struct err **errp)
{
    switch (arg->type) {
    case QMP_T_STR:
        return json_is_string(value) ? true : type_error(arg, path, errp);
    case QMP_T_BOOL:
        return json_is_boolean(value) ? true : type_error(arg, path, errp);
    case QMP_T_INT:
        return json_is_integer(value) ? true : type_error(arg, path, errp);
    case QMP_T_NUMBER:
        return json_is_number(value) ? true : type_error(arg, path, errp);
    case QMP_T_UINT:
        if (!json_is_integer(value) || json_integer_value(value) < 0) {
            err_setf(errp, "Parameter '%s' expects uint64", path);
            return false;
        }
        if (arg->type_name && !strcmp(arg->type_name, "uint32") &&
            json_integer_value(value) > UINT32_MAX) {
            err_setf(errp, "Parameter '%s' expects uint32_t", path);
            return false;
        }
        return true;
    case QMP_T_ENUM: {
        /* QEMU names only the member here, and "null" for list elements. */
        const char *last = arg->name ? arg->name : "null";

        if (!json_is_string(value)) {
            return type_error(arg, path, errp);
        }
        for (const char *const *v = arg->values; *v; v++) {
            if (!strcmp(*v, json_string_value(value))) {
                return true;
            }
        }
        err_setf(errp, "Parameter '%s' does not accept value '%s'", last,
                 json_string_value(value));
        return false;
    }
    case QMP_T_OBJECT: {
        CLEANUP_FREE char *prefix = NULL;

        if (!json_is_object(value)) {
            return type_error(arg, path, errp);
        }
        prefix = xasprintf("%s.", path);
        return qmp_validate_members(arg->members, value, prefix, errp);
    }
    case QMP_T_STR_OR_OBJ: {
        CLEANUP_FREE char *prefix = NULL;

        if (json_is_string(value)) {
            return true;
        }
        if (!json_is_object(value)) {
            return type_error(arg, path, errp);
        }
        prefix = xasprintf("%s.", path);
        return qmp_validate_members(arg->members, value, prefix, errp);
    }
    case QMP_T_ARRAY: {
        size_t i;
        json_t *elem;

        if (!json_is_array(value)) {
            return type_error(arg, path, errp);
        }
        json_array_foreach(value, i, elem) {
            CLEANUP_FREE char *epath = xasprintf("%s[%zu]", path, i);

            if (!qmp_validate(arg->elem, elem, epath, errp)) {
                return false;
            }
        }
        return true;
    }
    case QMP_T_ANY_OBJECT:
        return json_is_object(value) ? true : type_error(arg, path, errp);
    case QMP_T_ANY:
        return true;
    }
    return true;
}

/* ---- Documentation ------------------------------------------------------- */

static const char *
type_doc(const struct qmp_arg *a)
{
    if (a->type_name) {
        return a->type_name;
    }
    switch (a->type) {
    case QMP_T_STR:
        return "string";
    case QMP_T_BOOL:
        return "boolean";
    case QMP_T_INT:
        return "int";
    case QMP_T_UINT:
        return "uint64";
    case QMP_T_NUMBER:
        return "number";
    case QMP_T_ENUM:
        return "enum";
    case QMP_T_OBJECT:
    case QMP_T_ANY_OBJECT:
        return "object";
    case QMP_T_ARRAY:
        return "array";
    case QMP_T_STR_OR_OBJ:
        return "string or object";
    case QMP_T_ANY:
        return "any";
    }
    return "any";
}

static void
print_members(FILE *f, const struct qmp_arg *members, int depth)
{
    for (const struct qmp_arg *a = members; a && a->name; a++) {
        fprintf(f, "%*s- `%s`%s (%s): %s", depth * 2, "", a->name,
                a->optional ? " *optional*" : "", type_doc(a),
                a->doc ? a->doc : "");
        if (a->type == QMP_T_ENUM && a->values) {
            fprintf(f, "; one of");
            for (const char *const *v = a->values; *v; v++) {
                fprintf(f, "%s `%s`", v == a->values ? "" : ",", *v);
            }
        }
        fprintf(f, "\n");
        if (a->members) {
            print_members(f, a->members, depth + 1);
        }
        if (a->elem && a->elem->members) {
            print_members(f, a->elem->members, depth + 1);
        }
    }
}

void
qmp_schema_print_doc(FILE *f)
{
    fprintf(f,
        "<!-- Generated by `lockstepd --print-qmp-doc` from qmp/schema.c; "
        "do not edit. -->\n"
        "<!-- tests/func/test_qmp_doc.py fails when this file is stale. "
        "-->\n\n"
        "# lockstepd QMP reference\n\n"
        "lockstepd speaks QMP, QEMU's JSON control protocol, with "
        "qemu-storage-daemon's command names, argument spellings, results "
        "and error messages, so that scripts written for "
        "qemu-storage-daemon run unchanged.\n\n"
        "## Protocol\n\n"
        "- Greeting: `{\"QMP\": {\"version\": {\"qemu\": {\"micro\", "
        "\"minor\", \"major\"}, \"package\"}, \"capabilities\": "
        "[\"oob\"]}}`.\n"
        "- Every command but `qmp_capabilities` fails with "
        "`CommandNotFound` until the client sent `qmp_capabilities`.\n"
        "- Request: `{\"execute\": NAME, \"arguments\": {...}, \"id\": "
        "ANY}`; `arguments` and `id` are optional and `id` is echoed.\n"
        "- Response: `{\"return\": ...}` or `{\"error\": {\"class\", "
        "\"desc\"}}`; classes are `GenericError`, `CommandNotFound`, "
        "`DeviceNotFound` and `DeviceNotActive`, as QEMU uses them.\n"
        "- Events: `{\"timestamp\": {\"seconds\", \"microseconds\"}, "
        "\"event\": NAME, \"data\": {...}}`, sent to every negotiated "
        "client: `BLOCK_EXPORT_DELETED`, `BLOCK_IMAGE_CORRUPTED`, "
        "`JOB_STATUS_CHANGE`, "
        "`BLOCK_JOB_COMPLETED`, `BLOCK_JOB_CANCELLED`, `BLOCK_JOB_ERROR`, "
        "`BLOCK_JOB_READY`, `BLOCK_JOB_PENDING`, `QUORUM_FAILURE`, "
        "`QUORUM_REPORT_BAD`.\n"
        "- Malformed JSON gets a `GenericError` (\"JSON parse error, ...\") "
        "and the connection stays usable.  A request larger than 1 MiB or "
        "nested deeper than 1024 levels is refused with an error.\n"
        "- Arguments are checked against the schema below before a command "
        "runs: unknown members (\"Parameter 'x' is unexpected\"), missing "
        "ones (\"Parameter 'x' is missing\") and wrong types (\"Invalid "
        "parameter type for 'x', expected: integer\") are errors.\n"
        "- No string argument (nor any string nested in one) may hold a NUL "
        "character (`\\u0000`): \"Parameter 'id' must not contain a NUL "
        "character\".  A command name with one is not found.\n\n"
        "## Command line\n\n"
        "lockstepd takes qemu-storage-daemon's options, processed in "
        "order (`lockstepd --help` lists them):\n\n"
        "- `--blockdev OPTS` (dotted key=value or JSON): `blockdev-add`.\n"
        "- `--chardev socket,id=ID,path=P,server=on,wait=off` (or "
        "`host=H,port=N` for TCP; `server,nowait` too) and "
        "`--monitor [chardev=]ID[,pretty=on]`: a QMP monitor on a unix "
        "socket; any number of monitors, each serving several clients at "
        "once.\n"
        "- `--nbd-server addr.type=unix,addr.path=P` or "
        "`addr.type=inet,addr.host=H,addr.port=N` (`,max-connections=N`, "
        "`,handshake-max-seconds=S`): `nbd-server-start` with a flat "
        "socket address.\n"
        "- `--export [type=]nbd,id=ID,node-name=N[,name=E][,writable=on|off]"
        "[,bitmap=B]`, `--export [type=]vhost-user-blk,id=ID,node-name=N,"
        "addr.type=unix,addr.path=P[,writable=on|off][,num-queues=N]"
        "[,logical-block-size=B]` (or `addr.type=fd,addr.str=N`) and "
        "`--export [type=]fuse,id=ID,node-name=N,"
        "mountpoint=FILE[,writable=on|off][,growable=on|off]"
        "[,allow-other=on|off|auto]` (or JSON): `block-export-add`.\n"
        "- `--daemonize`, `--pidfile PATH`, `--help`, `--version`; `-T` / "
        "`--trace` are accepted and ignored.\n"
        "- SIGTERM, SIGINT, SIGHUP and `quit`: stop the NBD server, close "
        "exports (unmounting FUSE ones) and jobs, flush and close every "
        "node, exit 0.\n\n"
        "## Differences from qemu-storage-daemon 7.2\n\n"
        "- A monitor socket serves several clients at once (QEMU serves "
        "one and queues the others).\n"
        "- After \"JSON parse error, \" the description is our parser's "
        "wording, not QEMU's.\n"
        "- Chardevs: only listening sockets (unix or TCP) with wait=off.  "
        "Objects: iothread, TLS credentials and authz lists; an "
        "iothread's aio-max-batch, thread-pool-min and thread-pool-max "
        "take only QEMU's defaults (0, 0, 64): requests run on the "
        "export's threads, with no AIO engine or worker pool per "
        "iothread.\n"
        "- `blockdev-reopen` changes only child references and read-only; "
        "options left out keep their values instead of reverting to "
        "defaults.\n"

        "- `max-connections` defaults to 100 (as later QEMU versions), not "
        "unlimited.\n"
        "- FUSE exports: a punched hole reads back as zeroes (7.2 discards, "
        "which `discard=ignore` drops); mtime moves only when the content "
        "changed (7.2: every stat says \"now\"); a relative mount point is "
        "made absolute, so `--daemonize` unmounts the right path; a start "
        "that fails on a later option unmounts (7.2 leaves a dead "
        "mount).\n"
        "- `handshake-max-seconds` (`nbd-server-start`, `--nbd-server`) is "
        "QEMU 9.1's argument; qemu-storage-daemon 7.2 refuses it and drops "
        "a client that has not finished negotiating after a fixed 10 s, "
        "our default.\n"
        "- An NBD client that reads none of its replies for 30 s is "
        "dropped (QEMU waits for it forever).\n"
        "- `x-debug-query-block-graph` numbers nodes in creation order.\n"
        "- QEMU takes strings with `\\u0000` and refuses them later "
        "(\"Invalid node-name\", \"Export ... is not found\"); here they "
        "are refused up front, see above.\n"
        "- Commit and active commit insert no filter node above the "
        "committed layers (QEMU's commit_top and mirror_top); exports stay "
        "on the top node, so `blockdev-del` of an actively committed top "
        "that is exported says \"Node top is in use\" where QEMU says the "
        "node is busy.  After a cancelled commit the nodes can be resized "
        "again (QEMU 7.2 keeps them blocked).\n\n"
        "## Commands\n\n");
    for (const struct qmp_command *c = qmp_commands; c->name; c++) {
        fprintf(f, "### %s\n\n%s\n\n", c->name, c->doc);
        if (c->args_are_options && !strcmp(c->name, "object-add")) {
            const struct qmp_arg *m;
            const char *type;

            fprintf(f, "Arguments: `qom-type`, `id` and the type's "
                    "properties:\n\n");
            for (size_t i = 0; (m = qmp_object_type_members(i, &type)); i++) {
                fprintf(f, "- `%s`:\n", type);
                print_members(f, m, 1);
            }
            fprintf(f, "\n");
        } else if (c->args_are_options) {
            fprintf(f, "Arguments: a BlockdevOptions object (`driver`, "
                    "`node-name`, common options and the driver's own).\n\n");
        } else if (c->args && c->args->name) {
            fprintf(f, "Arguments:\n\n");
            print_members(f, c->args, 0);
            fprintf(f, "\n");
        } else {
            fprintf(f, "Arguments: none.\n\n");
        }
        fprintf(f, "Returns: `%s`\n\n", c->returns);
    }
}
