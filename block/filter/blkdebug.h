/* SPDX-License-Identifier: MIT */
/*
 * blkdebug's breakpoints, for lockstep-io's break, remove_break, resume
 * and wait_break commands.  Each acts on the first blkdebug node at or
 * below node (following "file" children): -ENOTSUP when there is none.
 * Main thread; the requests they stop run on other threads.
 */
#ifndef LOCKSTEP_BLKDEBUG_H
#define LOCKSTEP_BLKDEBUG_H

#include <stdbool.h>

#include "lockstep/driver.h"

/* The next request that fires event stops until blkdebug_resume(tag). */
int blkdebug_breakpoint(struct block_node *node, const char *event,
                        const char *tag);
/* Drop the breakpoints tagged tag and resume a request stopped by one;
 * -ENOENT when there was neither. */
int blkdebug_remove_breakpoint(struct block_node *node, const char *tag);
/* Let the request stopped as tag go on (-ENOENT: none); returns once it
 * has left the breakpoint. */
int blkdebug_resume(struct block_node *node, const char *tag);
bool blkdebug_is_suspended(struct block_node *node, const char *tag);

#endif
