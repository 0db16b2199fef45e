/* SPDX-License-Identifier: MIT */
/*
 * The backup job (QMP blockdev-backup), as QEMU's: a copy-before-write
 * filter is put above the source for the job's lifetime, so that every
 * write to the source first copies the old data to the target, while the
 * job copies the rest in the background (docs/fleecing.md).
 */
#ifndef LOCKSTEP_JOB_BACKUP_H
#define LOCKSTEP_JOB_BACKUP_H

#include <stdbool.h>
#include <stdint.h>

#include "block/filter/copy-before-write.h"
#include "job/job.h"
#include "lockstep/err.h"

/* MirrorSyncMode, as blockdev-backup takes it; backup_sync_names[mode]. */
enum backup_sync {
    BACKUP_SYNC_FULL,
    BACKUP_SYNC_TOP,
    BACKUP_SYNC_NONE,
    BACKUP_SYNC_BITMAP,
    BACKUP_SYNC_INCREMENTAL,
};
extern const char *const backup_sync_names[];

/* BitmapSyncMode; backup_bitmap_mode_names[mode]. */
enum backup_bitmap_mode {
    BACKUP_BITMAP_MODE_ON_SUCCESS,
    BACKUP_BITMAP_MODE_NEVER,
    BACKUP_BITMAP_MODE_ALWAYS,
};
extern const char *const backup_bitmap_mode_names[];

/* BackupPerf (x-perf). */
struct backup_perf {
    bool has_use_copy_range;
    bool use_copy_range;            /* accepted, no effect */
    bool has_max_workers;
    int64_t max_workers;            /* default 64 */
    bool has_max_chunk;
    int64_t max_chunk;              /* 0: no limit */
    bool has_min_cluster_size;
    int64_t min_cluster_size;
};

/*
 * What blockdev-backup takes: QEMU's BlockdevBackup, member for member
 * (the QMP schema decodes into this struct directly, see qmp/qmp-args.h):
 * has_X says whether an optional X was given, and the defaults are
 * applied here (auto-finalize and auto-dismiss true, on-*-error report,
 * max-workers 64).  Strings are borrowed for the call.
 */
struct backup_options {
    const char *job_id;
    const char *device;
    const char *target;
    enum backup_sync sync;
    bool has_speed;
    int64_t speed;
    const char *bitmap;
    bool has_bitmap_mode;
    enum backup_bitmap_mode bitmap_mode;
    bool has_compress;
    bool compress;
    bool has_on_source_error;
    enum job_on_error on_source_error;
    bool has_on_target_error;
    enum job_on_error on_target_error;
    bool has_on_cbw_error;
    enum cbw_on_error on_cbw_error;
    bool has_auto_finalize;
    bool auto_finalize;
    bool has_auto_dismiss;
    bool auto_dismiss;
    const char *filter_node_name;
    bool has_x_perf;
    struct backup_perf x_perf;
    bool has_discard_source;
    bool discard_source;
};

/*
 * Start a backup job (blockdev-backup), with QEMU's checks and messages.
 * Main thread.  Returns the running job (a borrowed pointer: the job list
 * owns it) or NULL with *errp set.
 */
struct job *backup_start(const struct backup_options *opts,
                         struct err **errp);

/*
 * The same without starting it: the filter is in place and the job is in
 * status created (transaction prepare).  job_start() starts it, and a
 * cancel (job_cancel_sync()) undoes it.  Main thread.
 */
struct job *backup_create(const struct backup_options *opts,
                          struct err **errp);

/* The job's copy-before-write node (tests), or NULL. */
struct block_node *backup_filter_node(struct job *job);

#endif
