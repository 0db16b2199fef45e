/* SPDX-License-Identifier: MIT */
/*
 * The table of all drivers.  An explicit list rather than constructors, so
 * that static linking can never drop a driver silently.
 */
#include <string.h>

#include "lockstep/driver.h"

extern const struct block_driver blkdebug_driver;
extern const struct block_driver blklog_driver;
extern const struct block_driver cbw_driver;
extern const struct block_driver cor_driver;
extern const struct block_driver file_driver;
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
