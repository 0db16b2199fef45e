/* SPDX-License-Identifier: MIT */
/*
 * The "quorum" driver's control API: adding and removing children at run
 * time, as QEMU's x-blockdev-change does.  Its QUORUM_REPORT_BAD and
 * QUORUM_FAILURE events go out through the runtime (runtime/event.h).
 *
 * All functions here run on the main thread; they drain the graph
 * themselves.  Errors use QEMU's wording.
 */
#ifndef LOCKSTEP_QUORUM_H
#define LOCKSTEP_QUORUM_H

#include <stdbool.h>

#include "lockstep/driver.h"
#include "lockstep/err.h"

/* Is node a quorum node? */
bool block_node_is_quorum(struct block_node *node);

/*
 * Attach child as a new "children.N" of quorum (N = the smallest index not
 * in use, so that removing "children.1" and adding a node gives
 * "children.1" again).  Refused when quorum is not a quorum node ("The node
 * X does not support adding a child") or when child already has a parent
 * ("The node X already has a parent").  Returns 0 or -errno.
 */
int quorum_add_child(struct block_node *quorum, struct block_node *child,
                     struct err **errp);

/*
 * Detach the child named child_name ("children.N").  Refused when it would
 * leave fewer children than the vote threshold ("The number of children
 * cannot be lower than the vote threshold N"), or when there is no such
 * child ("Node 'Q' does not have child 'C'").
 */
int quorum_del_child(struct block_node *quorum, const char *child_name,
                     struct err **errp);

/*
 * x-blockdev-change {parent, child?, node?} as QEMU handles it: exactly one
 * of child (remove) and node (add, by node-name) must be given.
 */
bool qmp_x_blockdev_change(const char *parent, const char *child,
                           const char *node, struct err **errp);

#endif
