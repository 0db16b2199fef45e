/* SPDX-License-Identifier: MIT */
/*
 * The table of all drivers.  An explicit list rather than constructors, so
 * that static linking can never drop a driver silently.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "lockstep/driver.h"

extern const struct block_driver blkdebug_driver;
extern const struct block_driver blklog_driver;
extern const struct block_driver cbw_driver;
extern const struct block_driver cor_driver;
extern const struct block_driver file_driver;
extern const struct block_driver host_cdrom_driver;
extern const struct block_driver host_device_driver;
extern const struct block_driver nbdcli_driver;
extern const struct block_driver null_co_driver;
extern const struct block_driver quorum_driver;
extern const struct block_driver qcow2_driver;
extern const struct block_driver raw_driver;
extern const struct block_driver replication_driver;
extern const struct block_driver snapshot_access_driver;

const struct block_driver *const block_drivers[] = {
    &blkdebug_driver,
    &blklog_driver,
    &cbw_driver,
    &cor_driver,
    &file_driver,
    &host_cdrom_driver,
    &host_device_driver,
    &nbdcli_driver,
    &null_co_driver,
    &quorum_driver,
    &qcow2_driver,
    &raw_driver,
    &replication_driver,
    &snapshot_access_driver,
    NULL,
};

const struct block_driver *
block_driver_find(const char *name)
{
    for (size_t i = 0; block_drivers[i]; i++) {
        if (!strcmp(block_drivers[i]->name, name)) {
            return block_drivers[i];
        }
    }
    return NULL;
}

const char *
block_probe_format(const uint8_t *head, size_t len, const char *filename)
{
    const char *best = "raw";
    int best_score = 0;

    for (size_t i = 0; block_drivers[i]; i++) {
        const struct block_driver *drv = block_drivers[i];
        int score = drv->probe ? drv->probe(head, len, filename) : 0;

        if (score > best_score) {
            best = drv->name;
            best_score = score;
        }
    }
    return best;
}

const char *
block_probe_file(const char *filename)
{
    uint8_t head[BLOCK_PROBE_BYTES];
    ssize_t len = 0;
    int fd = -1;

    if (!block_filename_is_nbd_url(filename)) {
        fd = open(filename, O_RDONLY | O_CLOEXEC);
    }
    if (fd >= 0) {
        len = read(fd, head, sizeof(head));
        close(fd);
    }
    return block_probe_format(head, len > 0 ? (size_t)len : 0, filename);
}
