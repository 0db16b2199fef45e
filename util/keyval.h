/* SPDX-License-Identifier: MIT */
/*
 * QEMU's dotted key=value option syntax ("driver=qcow2,file.filename=x"),
 * converted to a JSON object in the shape blockdev-add expects: dotted keys
 * become nested objects, objects whose keys are 0..N-1 become arrays, and
 * every value is a JSON string (typing is the consumer's job, as with QEMU's
 * keyval input visitor).  The rules follow QEMU's keyval syntax and error
 * messages so that command lines written for QEMU keep working.
 */
#ifndef LOCKSTEP_KEYVAL_H
#define LOCKSTEP_KEYVAL_H

#include <jansson.h>

#include "lockstep/err.h"

/*
 * Parse str.  When implied_key is not NULL, the first element may be a bare
 * value ("qcow2,...") meaning implied_key=value; such a value ends at the
 * first ',' (no ",," escape, as in QEMU).  Returns a new reference to a JSON
 * object, or NULL with *errp set.  Any thread; no global state.
 */
json_t *keyval_parse(const char *str, const char *implied_key,
                     struct err **errp);

/*
 * Like keyval_parse(), but a string starting with '{' is parsed as a JSON
 * object instead (qemu-storage-daemon --blockdev accepts both forms).
 */
json_t *keyval_or_json_parse(const char *str, const char *implied_key,
                             struct err **errp);

#endif
