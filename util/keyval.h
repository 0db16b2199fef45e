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
 * Strings and member names with a NUL character (\u0000) are refused as
 * json_check_nul() does.
 */
json_t *keyval_or_json_parse(const char *str, const char *implied_key,
                             struct err **errp);

/*
 * Refuse a JSON value that holds a string or a member name with a NUL
 * character anywhere: C strings end at the first NUL, so "exp0\u0000x"
 * would name "exp0" (names, ids and paths are all C strings here).  The
 * message names the member as QMP messages do ("Parameter
 * 'children[1].node-name' must not contain a NUL character"), NULs shown
 * as \u0000.  Returns true when v is clean.
 */
bool json_check_nul(json_t *v, struct err **errp);

#endif
