/* SPDX-License-Identifier: MIT */
/*
 * Block exports: the ways a node is offered outside the daemon (NBD,
 * vhost-user-blk, FUSE).  This layer owns the registry of export ids and
 * dispatches block-export-add, block-export-del and query-block-exports on
 * the export type; each type is a small driver (struct export_driver) in
 * its own file, which does the serving.
 *
 * Options arrive typed: the QMP edge (qmp/cmds-export.c, also behind the
 * daemon's --export) decodes JSON into struct block_export_options plus
 * the driver's own options struct (struct nbd_export_options,
 * struct fuse_export_options).
 *
 * Threads: everything here runs on the main thread; drivers run their own
 * serving threads and must not call back into this layer from them.
 */
#ifndef LOCKSTEP_EXPORT_H
#define LOCKSTEP_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "lockstep/block.h"
#include "lockstep/err.h"

struct poll_tuning;                /* util.h */

/* What every export type takes (QEMU's BlockExportOptions base). */
struct block_export_options {
    const char *type;            /* "nbd", "vhost-user-blk", ... */
    const char *id;
    const char *node_name;
    bool writable;
    bool writethrough;           /* every write is stable when it completes */
    /* The iothread's polling (NBD readers, vhost-user queues); NULL:
     * poll_tuning_default. */
    const struct poll_tuning *poll;
    /* The driver's own options: struct nbd_export_options * for nbd,
     * struct fuse_export_options * for fuse, ... */
    const void *driver_opts;
};

struct export_driver {
    const char *type;
    /*
     * Create the export and start serving it.  The id is known to be
     * free; the driver checks the rest with QEMU's messages.  Returns the
     * driver's state for the other callbacks, or NULL with *errp set.
     */
    void *(*create)(const struct block_export_options *opts,
                    struct err **errp);
    /*
     * Delete: when hard, disconnect the clients and wait until their
     * requests are done; otherwise refuse ("export 'ID' still in use")
     * while a client is attached.  After true the state is freed.
     */
    bool (*del)(void *state, bool hard, struct err **errp);
    /* The handle the export does its I/O through (its node-name is the
     * one query-block-exports reports). */
    struct block_handle *(*handle)(void *state);
    /* Optional, at shutdown after every export is gone: let go of
     * clients that never attached to an export. */
    void (*close_all)(void);
};

/* What query-block-exports reports about one export. */
struct block_export_info {
    const char *type;
    const char *id;
    const char *node_name;
    bool shutting_down;
};

/*
 * block-export-add: find the driver of opts->type, check the id, create.
 * Main thread.
 */
bool block_export_add(const struct block_export_options *opts,
                      struct err **errp);
/* BlockExportRemoveMode. */
enum block_export_remove_mode {
    BLOCK_EXPORT_REMOVE_SAFE,   /* refuse while clients are attached */
    BLOCK_EXPORT_REMOVE_HARD,   /* disconnect them, wait for their requests */
};

/*
 * block-export-del.  Sends BLOCK_EXPORT_DELETED {id} when the export is
 * gone.  Main thread, not while drained when clients may be attached
 * (their requests would wait for the drain).
 */
bool block_export_del(const char *id, enum block_export_remove_mode mode,
                      struct err **errp);
/* query-block-exports: fn for every export, in creation order. */
void block_export_foreach(void (*fn)(const struct block_export_info *info,
                                     void *opaque),
                          void *opaque);
/* Daemon shutdown: delete every export (hard), with events. */
void block_export_close_all(void);

/* ---- For drivers -------------------------------------------------------- */

/* Is there an export with this id?  (The first check, as in QEMU.) */
bool block_export_id_in_use(const char *id);
/* Register an export a driver created outside block_export_add (the NBD
 * driver's test entry point); fails when the id is taken. */
bool block_export_register(const char *id, const struct export_driver *drv,
                           void *state, struct err **errp);
/* Delete every export of one driver (hard), with events: nbd-server-stop
 * removes the NBD exports. */
void block_export_del_all_of(const struct export_driver *drv);
/*
 * The common part of creating an export that serves one node: find the
 * node, refuse writable on a read-only node, and open a handle with
 * consistent-read (and write) permission that shares everything, named
 * "export 'ID'".  Messages as QEMU's blk_exp_add.
 */
struct block_handle *block_export_open_handle(
    const struct block_export_options *opts, struct err **errp);
/* The same with more permissions (BLOCK_PERM_RESIZE for FUSE). */
struct block_handle *block_export_open_handle_perm(
    const struct block_export_options *opts, uint32_t extra_perm,
    struct err **errp);

/* The drivers (one file each). */
extern const struct export_driver nbd_export_driver;

#endif
