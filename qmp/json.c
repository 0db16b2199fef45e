/* SPDX-License-Identifier: MIT */
/*
 * The JSON helpers of the QMP edge, one set for every file in qmp/ (and
 * the daemon's command line): reading members of validated objects, and
 * the keyval spellings (on/off, numbers as strings) that command-line
 * options use for booleans and integers.  Messages are QEMU's.
 */
#include <stdint.h>
#include <string.h>

#include "qmp/qmp-internal.h"
#include "util.h"

const char *
qmp_str(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

bool
qmp_member_str(json_t *obj, const char *where, const char *key,
               const char **out, struct err **errp)
{
    json_t *v = json_object_get(obj, key);

    *out = json_string_value(v);
    if (!v) {
        err_setf(errp, "%sParameter '%s' is missing", where, key);
        return false;
    }
    if (!*out) {
        err_setf(errp, "%sInvalid parameter type for '%s', expected: "
                 "string", where, key);
        return false;
    }
    return true;
}

bool
qmp_bool(json_t *obj, const char *key, bool def)
{
    json_t *v = json_object_get(obj, key);

    return v ? json_is_true(v) : def;
}

int
qmp_opt_bool(json_t *obj, const char *key, bool *out, struct err **errp)
{
    json_t *v = json_object_get(obj, key);
    const char *s;

    if (!v) {
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 1;
    }
    s = json_string_value(v);
    if (s && (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true"))) {
        *out = true;
        return 1;
    }
    if (s && (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false"))) {
        *out = false;
        return 1;
    }
    err_setf(errp, "Parameter '%s' expects 'on' or 'off'", key);
    return -1;
}

bool
qmp_keyval_to_bool(json_t *obj, const char *key, struct err **errp)
{
    bool b;
    int ret = qmp_opt_bool(obj, key, &b, errp);

    if (ret > 0) {
        json_object_set_new(obj, key, json_boolean(b));
    }
    return ret >= 0;
}

bool
qmp_keyval_to_int(json_t *obj, const char *key, struct err **errp)
{
    json_t *v = json_object_get(obj, key);
    int64_t n;

    if (!v || json_is_integer(v)) {
        return true;
    }
    if (!json_is_string(v) || parse_int64(json_string_value(v), &n) < 0) {
        err_setf(errp, "Parameter '%s' expects an integer", key);
        return false;
    }
    json_object_set_new(obj, key, json_integer(n));
    return true;
}

bool
qmp_keyval_to_size(json_t *obj, const char *key, struct err **errp)
{
    json_t *v = json_object_get(obj, key);
    uint64_t n;

    if (!v || json_is_integer(v)) {
        return true;
    }
    if (!json_is_string(v) || parse_size(json_string_value(v), &n) < 0 ||
        n > INT64_MAX) {
        err_setf(errp, "Parameter '%s' expects a size", key);
        return false;
    }
    json_object_set_new(obj, key, json_integer((json_int_t)n));
    return true;
}
