/* SPDX-License-Identifier: MIT */
/*
 * Option checking for blockdev-add objects.  Validation checks every key of
 * an options object against the common options and the driver's table and
 * converts keyval strings ("on", "4096", "1G") to their JSON types in place,
 * so drivers read plain JSON.  Messages follow QEMU's QAPI wording
 * ("Parameter 'x' is unexpected", "Invalid parameter type for 'x',
 * expected: boolean", "Parameter 'x' is missing").
 */
#ifndef LOCKSTEP_BLOCK_OPTS_H
#define LOCKSTEP_BLOCK_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "lockstep/block.h"
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

/* Typed getters for validated options: return def when absent. */
bool block_opt_bool(json_t *options, const char *name, bool def);
int64_t block_opt_int(json_t *options, const char *name, int64_t def);
const char *block_opt_str(json_t *options, const char *name, const char *def);
/* The length of a LIST or CHILD_LIST option (0 when absent). */
size_t block_opt_list_size(json_t *options, const char *name);
/* An OBJECT option (read its members with the getters above), or NULL. */
json_t *block_opt_object(json_t *options, const char *name);

/*
 * For a driver's OBJECT option with fixed members ({NULL}-ended, like a
 * driver table): check them as the top level is checked, with messages
 * naming "name.member".  Absent is fine.
 */
bool block_opts_validate_object(json_t *options, const char *name,
                                const struct block_opt *members,
                                struct err **errp);

/*
 * For drivers that check nested objects themselves: read a value that may
 * be a JSON integer/bool or a keyval string.  false when it is neither.
 */
bool json_value_to_int(json_t *v, int64_t *out);
bool json_value_to_size(json_t *v, uint64_t *out);
bool json_value_to_bool(json_t *v, bool *out);

#endif
