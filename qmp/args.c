/* SPDX-License-Identifier: MIT */
/*
 * The typed-argument decoder: a validated JSON object into the C struct
 * that its typed argument list describes.  The design (how lists, fields
 * and has_ flags are written, lifetimes) is in qmp-args.h.
 *
 * Everything here runs after qmp_validate_members() accepted the object,
 * so types are right, required members are there and enum strings are
 * known; the decoder only copies.  Main thread.
 */
#include <stdlib.h>
#include <string.h>

#include "qmp/qmp-internal.h"
#include "util.h"

static void decode_members(const struct qmp_arg *members, json_t *obj,
                           char *base);

static int
enum_index(const struct qmp_arg *a, const char *s)
{
    for (int i = 0; a->values[i]; i++) {
        if (!strcmp(a->values[i], s)) {
            return i;
        }
    }
    /* Validated: cannot happen. */
    abort();
}

/* Store value v of member a into the struct at base. */
static void
decode_value(const struct qmp_arg *a, json_t *v, char *base)
{
    char *field = base + a->offset;

    assert(a->typed);
    switch (a->type) {
    case QMP_T_STR:
        *(const char **)field = json_string_value(v);
        break;
    case QMP_T_BOOL:
        *(bool *)field = json_is_true(v);
        break;
    case QMP_T_INT:
        *(int64_t *)field = json_integer_value(v);
        break;
    case QMP_T_UINT:
        *(uint64_t *)field = (uint64_t)json_integer_value(v);
        break;
    case QMP_T_NUMBER:
        *(double *)field = json_number_value(v);
        break;
    case QMP_T_ENUM:
        *(int *)field = enum_index(a, json_string_value(v));
        break;
    case QMP_T_OBJECT:
        decode_members(a->members, v, field);
        break;
    case QMP_T_STR_OR_OBJ:
        if (json_is_string(v)) {
            *(const char **)(field + a->aux_offset) = json_string_value(v);
        } else {
            decode_members(a->members, v, field);
        }
        break;
    case QMP_T_ARRAY: {
        size_t n = json_array_size(v);
        char *elems = xcalloc(n ? n : 1, a->elem->size);

        for (size_t i = 0; i < n; i++) {
            decode_value(a->elem, json_array_get(v, i),
                         elems + i * a->elem->size);
        }
        *(void **)field = elems;
        *(size_t *)(base + a->aux_offset) = n;
        break;
    }
    case QMP_T_ANY:
    case QMP_T_ANY_OBJECT:
        *(json_t **)field = v;
        break;
    }
}

static void
decode_members(const struct qmp_arg *members, json_t *obj, char *base)
{
    for (const struct qmp_arg *m = members; m && m->name; m++) {
        json_t *v = json_object_get(obj, m->name);

        if (!v) {
            continue;
        }
        decode_value(m, v, base);
        if (m->has_flag) {
            *(bool *)(base + m->has_offset) = true;
        }
    }
}

void
qmp_args_decode(const struct qmp_arg *args, json_t *obj, void *out)
{
    decode_members(args, obj, out);
}

/* Free what decoding allocated for member a of the struct at base. */
static void
free_value(const struct qmp_arg *a, char *base)
{
    char *field = base + a->offset;

    switch (a->type) {
    case QMP_T_OBJECT:
        qmp_args_free(a->members, field);
        break;
    case QMP_T_STR_OR_OBJ:
        /* Members of a string-or-object are scalars (strings). */
        break;
    case QMP_T_ARRAY: {
        char *elems = *(char **)field;
        size_t n = *(size_t *)(base + a->aux_offset);

        for (size_t i = 0; elems && i < n; i++) {
            free_value(a->elem, elems + i * a->elem->size);
        }
        free(elems);
        break;
    }
    default:
        break;
    }
}

void
qmp_args_free(const struct qmp_arg *args, void *out)
{
    for (const struct qmp_arg *m = args; m && m->name; m++) {
        free_value(m, out);
    }
}

size_t
qmp_args_size(const struct qmp_arg *args)
{
    const struct qmp_arg *m = args;

    while (m->name) {
        m++;
    }
    return m->size;
}
