/* SPDX-License-Identifier: MIT */
/*
 * Validation of blockdev-add options against the common table and the
 * driver's table; see opts.h.
 */
#include <errno.h>
#include <string.h>

#include "block/core/opts.h"
#include "util.h"

static const char *const discard_values[] = {"ignore", "off", "unmap", "on",
                                             NULL};
static const char *const detect_zeroes_values[] = {"off", "on", "unmap", NULL};

const struct block_opt block_common_opts[] = {
    {"driver", BLOCK_OPT_STRING, true, NULL},
    {"node-name", BLOCK_OPT_STRING, false, NULL},
    {"read-only", BLOCK_OPT_BOOL, false, NULL},
    {"auto-read-only", BLOCK_OPT_BOOL, false, NULL},
    {"force-share", BLOCK_OPT_BOOL, false, NULL},
    {"discard", BLOCK_OPT_STRING, false, discard_values},
    {"cache", BLOCK_OPT_OBJECT, false, NULL},
    {"detect-zeroes", BLOCK_OPT_STRING, false, detect_zeroes_values},
    {NULL, 0, false, NULL},
};

static const struct block_opt cache_opts[] = {
    {"direct", BLOCK_OPT_BOOL, false, NULL},
    {"no-flush", BLOCK_OPT_BOOL, false, NULL},
    {NULL, 0, false, NULL},
};

bool
json_value_to_int(json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_string(v)) {
        return parse_int64(json_string_value(v), out) == 0;
    }
    return false;
}

bool
json_value_to_size(json_t *v, uint64_t *out)
{
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0) {
            return false;
        }
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_string(v)) {
        return parse_size(json_string_value(v), out) == 0;
    }
    return false;
}

bool
json_value_to_bool(json_t *v, bool *out)
{
    const char *s;

    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return true;
    }
    if (!json_is_string(v)) {
        return false;
    }
    s = json_string_value(v);
    /* QEMU's keyval accepts on/off, yes/no and true/false. */
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true")) {
        *out = true;
        return true;
    }
    if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false")) {
        *out = false;
        return true;
    }
    return false;
}

static const char *
type_name(enum block_opt_type type)
{
    switch (type) {
    case BLOCK_OPT_BOOL:
        return "boolean";
    case BLOCK_OPT_INT:
    case BLOCK_OPT_SIZE:
        return "integer";
    case BLOCK_OPT_NUMBER:
        return "number";
    case BLOCK_OPT_OBJECT:
        return "object";
    case BLOCK_OPT_LIST:
    case BLOCK_OPT_CHILD_LIST:
        return "array";
    case BLOCK_OPT_CHILD:
    case BLOCK_OPT_CHILD_OR_NULL:
        return "BlockdevRef";
    case BLOCK_OPT_STRING:
    case BLOCK_OPT_ANY:
    default:
        return "string";
    }
}

static bool
check_enum(json_t *v, const char *full_name, const char *const *values,
           struct err **errp)
{
    const char *s = json_string_value(v);

    for (size_t i = 0; values[i]; i++) {
        if (!strcmp(values[i], s)) {
            return true;
        }
    }
    err_setf(errp, "Parameter '%s' does not accept value '%s'", full_name, s);
    return false;
}

bool
block_opt_convert(enum block_opt_type type, json_t **value,
                  const char *full_name, const char *const *enum_values,
                  struct err **errp)
{
    json_t *v = *value;
    int64_t i;
    uint64_t u;
    bool b;
    bool ok;

    switch (type) {
    case BLOCK_OPT_STRING:
        ok = json_is_string(v);
        if (ok && enum_values) {
            return check_enum(v, full_name, enum_values, errp);
        }
        break;
    case BLOCK_OPT_BOOL:
        ok = json_value_to_bool(v, &b);
        if (ok && !json_is_boolean(v)) {
            *value = json_boolean(b);
            json_decref(v);
        }
        break;
    case BLOCK_OPT_INT:
        ok = json_value_to_int(v, &i);
        if (ok && !json_is_integer(v)) {
            *value = json_integer(i);
            json_decref(v);
        }
        break;
    case BLOCK_OPT_SIZE:
        ok = json_value_to_size(v, &u);
        if (ok && !json_is_integer(v)) {
            if (u > INT64_MAX) {
                err_setf(errp, "Parameter '%s' is too large", full_name);
                return false;
            }
            *value = json_integer((int64_t)u);
            json_decref(v);
        }
        break;
    case BLOCK_OPT_NUMBER:
        ok = json_is_number(v);
        if (!ok && json_is_string(v)) {
            char *end;
            double d = strtod(json_string_value(v), &end);

            ok = *json_string_value(v) && !*end;
            if (ok) {
                *value = json_real(d);
                json_decref(v);
            }
        }
        break;
    case BLOCK_OPT_CHILD:
        ok = json_is_object(v) || json_is_string(v);
        break;
    case BLOCK_OPT_CHILD_OR_NULL:
        ok = json_is_object(v) || json_is_string(v) || json_is_null(v);
        break;
    case BLOCK_OPT_OBJECT:
        ok = json_is_object(v);
        break;
    case BLOCK_OPT_LIST:
    case BLOCK_OPT_CHILD_LIST:
        ok = json_is_array(v);
        break;
    case BLOCK_OPT_ANY:
    default:
        ok = true;
        break;
    }
    if (!ok) {
        err_setf(errp, "Invalid parameter type for '%s', expected: %s",
                 full_name, type_name(type));
    }
    return ok;
}

static const struct block_opt *
find_opt(const struct block_opt *table, const char *key)
{
    for (size_t i = 0; table && table[i].name; i++) {
        if (!strcmp(table[i].name, key)) {
            return &table[i];
        }
    }
    return NULL;
}

/* Check one object against one table (plus an optional second one). */
static bool
validate_table(json_t *options, const struct block_opt *t1,
               const struct block_opt *t2, const char *prefix,
               struct err **errp)
{
    const char *key;
    json_t *value;
    void *iter;

    for (iter = json_object_iter(options); iter;
         iter = json_object_iter_next(options, iter)) {
        const struct block_opt *opt;
        CLEANUP_FREE char *full = NULL;

        key = json_object_iter_key(iter);
        value = json_object_iter_value(iter);
        full = xasprintf("%s%s", prefix, key);
        opt = find_opt(t1, key);
        if (!opt) {
            opt = find_opt(t2, key);
        }
        if (!opt) {
            err_setf(errp, "Parameter '%s' is unexpected", full);
            return false;
        }
        json_incref(value);
        if (!block_opt_convert(opt->type, &value, full, opt->enum_values,
                               errp)) {
            json_decref(value);
            return false;
        }
        json_object_iter_set(options, iter, value);
        json_decref(value);
    }
    for (const struct block_opt *tables[2] = {t1, t2}, **t = tables;
         t < tables + 2; t++) {
        for (size_t i = 0; *t && (*t)[i].name; i++) {
            if ((*t)[i].required && !json_object_get(options, (*t)[i].name)) {
                err_setf(errp, "Parameter '%s%s' is missing", prefix,
                         (*t)[i].name);
                return false;
            }
        }
    }
    return true;
}

bool
block_opts_validate(const struct block_driver *drv, json_t *options,
                    const char *prefix, struct err **errp)
{
    json_t *cache;

    if (!validate_table(options, block_common_opts, drv->options, prefix,
                        errp)) {
        return false;
    }
    cache = json_object_get(options, "cache");
    if (cache) {
        CLEANUP_FREE char *cache_prefix = xasprintf("%scache.", prefix);

        return validate_table(cache, cache_opts, NULL, cache_prefix, errp);
    }
    return true;
}

bool
block_opt_bool(json_t *options, const char *name, bool def)
{
    json_t *v = json_object_get(options, name);

    return json_is_boolean(v) ? json_is_true(v) : def;
}

int64_t
block_opt_int(json_t *options, const char *name, int64_t def)
{
    json_t *v = json_object_get(options, name);

    return json_is_integer(v) ? json_integer_value(v) : def;
}

const char *
block_opt_str(json_t *options, const char *name, const char *def)
{
    json_t *v = json_object_get(options, name);

    return json_is_string(v) ? json_string_value(v) : def;
}

size_t
block_opt_list_size(json_t *options, const char *name)
{
    return json_array_size(json_object_get(options, name));
}

json_t *
block_opt_object(json_t *options, const char *name)
{
    json_t *v = json_object_get(options, name);

    return json_is_object(v) ? v : NULL;
}

bool
block_opts_validate_object(json_t *options, const char *name,
                           const struct block_opt *members,
                           struct err **errp)
{
    json_t *obj = block_opt_object(options, name);
    CLEANUP_FREE char *prefix = NULL;

    if (!obj) {
        return true;
    }
    prefix = xasprintf("%s.", name);
    return validate_table(obj, members, NULL, prefix, errp);
}

int
block_opts_set_cache_mode(json_t *opts, const char *mode, struct err **errp)
{
    bool direct = false, no_flush = false;
    json_t *cache;

    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        direct = true;
    } else if (!strcmp(mode, "unsafe")) {
        no_flush = true;
    } else if (!strcmp(mode, "writethrough") ||
               !strcmp(mode, "directsync")) {
        err_setf(errp, "Cache mode '%s' is not supported", mode);
        return -ENOTSUP;
    } else if (strcmp(mode, "writeback")) {
        err_setf(errp, "Invalid cache option: %s", mode);
        return -EINVAL;
    }
    cache = json_object_get(opts, "cache");
    if (!cache) {
        cache = json_object();
        json_object_set_new(opts, "cache", cache);
    } else if (!json_is_object(cache)) {
        return 0;   /* validation will name the bad value */
    }
    if (!json_object_get(cache, "direct")) {
        json_object_set_new(cache, "direct", json_boolean(direct));
    }
    if (!json_object_get(cache, "no-flush")) {
        json_object_set_new(cache, "no-flush", json_boolean(no_flush));
    }
    return 0;
}
