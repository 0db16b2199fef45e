/* SPDX-License-Identifier: MIT */
/*
 * Option checking for blockdev-add objects.  Validation checks every key of
 * an options object against the common options and the driver's table and
 * converts keyval strings ("on", "4096", "1G") to their JSON types in place,
 * so drivers read plain JSON.  Messages follow QEMU's QAPI wording
 * ("Parameter 'x' is unexpected", "Invalid parameter type for 'x',
 * expected: boolean", "Parameter 'x' is missing").  The getters drivers
 * use are in lockstep/driver.h.
 */
#ifndef LOCKSTEP_BLOCK_OPTS_H
#define LOCKSTEP_BLOCK_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "lockstep/driver.h"
#include "lockstep/err.h"

/* The options every node accepts. */
extern const struct block_opt block_common_opts[];

/*
 * Check and normalise options (a JSON object) for drv.  prefix names the
 * object in messages ("" at the top, "file." for a child).
 */
bool block_opts_validate(const struct block_driver *drv, json_t *options,
                         const char *prefix, struct err **errp);

/*
 * Check one value against a type, converting keyval strings in place.
 * *value may be replaced (the object or array slot is updated by the
 * caller).  Returns false with *errp naming full_name.
 */
bool block_opt_convert(enum block_opt_type type, json_t **value,
                       const char *full_name, const char *const *enum_values,
                       struct err **errp);

#endif
