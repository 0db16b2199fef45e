/* SPDX-License-Identifier: MIT */
/* Helpers shared by the files of block/core, not for drivers. */
#ifndef LOCKSTEP_BLOCK_CORE_INTERNAL_H
#define LOCKSTEP_BLOCK_CORE_INTERNAL_H

#include "lockstep/driver.h"
#include "lockstep/err.h"

/*
 * The end of every open (first open and reopen), after drv->open succeeded:
 * default limits and the cached length.  On failure the driver is closed
 * again and -errno returned with *errp set.  Main thread.
 */
int block_node_open_finish(struct block_node *node, struct err **errp);

#endif
