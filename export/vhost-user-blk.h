/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user-blk export type: a node served as a virtio-blk device to
 * a VMM (QEMU, Cloud Hypervisor, crosvm) over vhost-user.  Its options,
 * as QEMU's BlockExportOptionsVhostUserBlk, parsed at the QMP edge.
 */
#ifndef LOCKSTEP_EXPORT_VHOST_USER_BLK_H
#define LOCKSTEP_EXPORT_VHOST_USER_BLK_H

#include <stdint.h>

#include "export/export.h"

#define VHOST_USER_BLK_DEFAULT_BLOCK_SIZE 512
#define VHOST_USER_BLK_MAX_QUEUES         16

struct vhost_user_blk_options {
    /* addr.type "unix": listen on path (an existing socket file there is
     * replaced); "fd": fd is a listening socket the daemon inherited. */
    const char *path;
    int fd;                      /* -1 unless addr.type is "fd" */
    uint32_t logical_block_size; /* power of 2, 512..32768 */
    uint16_t num_queues;         /* 1..VHOST_USER_BLK_MAX_QUEUES */
};

extern const struct export_driver vhost_user_blk_export_driver;

#endif
