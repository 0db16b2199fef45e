/* SPDX-License-Identifier: MIT */
/*
 * The FUSE export type (export/fuse.c): a node appears as a regular file
 * at the path of an existing regular file, as qemu-storage-daemon's
 * --export type=fuse.  Options are QEMU's BlockExportOptionsFuse.
 */
#ifndef LOCKSTEP_EXPORT_FUSE_H
#define LOCKSTEP_EXPORT_FUSE_H

#include <stdbool.h>

#include "export/export.h"

/* QEMU's FuseExportAllowOther. */
enum fuse_export_allow_other {
    FUSE_EXPORT_ALLOW_OTHER_AUTO,   /* the default: try on, then off */
    FUSE_EXPORT_ALLOW_OTHER_ON,
    FUSE_EXPORT_ALLOW_OTHER_OFF,
};

/* The driver options (block_export_options.driver_opts) of type "fuse". */
struct fuse_export_options {
    const char *mountpoint;   /* an existing regular file */
    bool growable;            /* writes past the end grow the node */
    enum fuse_export_allow_other allow_other;
};

extern const struct export_driver fuse_export_driver;

#endif
