/* SPDX-License-Identifier: MIT */
/*
 * Parser for QEMU's dotted key=value syntax (see keyval.h).  The input is a
 * comma-separated list of key=value elements; ",," in a value is a literal
 * comma.  A key is a dot-separated path of fragments: the first fragment
 * starts with a letter, later ones start with a letter or are a decimal
 * index, and fragments use only letters, digits, '-' and '_'.  Parsing runs
 * in two passes: the first builds nested objects (string leaves), the second
 * turns objects whose keys are all indexes into arrays.  A key given twice
 * keeps the last value, as QEMU does.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "keyval.h"
#include "util.h"

/* QEMU refuses longer fragments; we match so the same command lines fail. */
#define KEYVAL_FRAGMENT_MAX 127

static bool
is_index(const char *s, size_t len)
{
    if (len == 0) {
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

static bool
is_key_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_';
}

/*
 * Check the key text key[0..len).  Returns 0 when valid, -EINVAL for a
 * malformed key, -ENAMETOOLONG (with *frag and *frag_len set) for a fragment
 * over the limit.
 */
static int
key_check(const char *key, size_t len, const char **frag, size_t *frag_len)
{
    size_t start = 0;

    while (start <= len) {
        size_t end = start;

        while (end < len && key[end] != '.') {
            if (!is_key_char(key[end])) {
                return -EINVAL;
            }
            end++;
        }
        if (end == start) {
            return -EINVAL;
        }
        /* Only fragments after the first may be list indexes. */
        if (!isalpha((unsigned char)key[start]) &&
            (start == 0 || !is_index(key + start, end - start))) {
            return -EINVAL;
        }
        if (end - start > KEYVAL_FRAGMENT_MAX) {
            *frag = key + start;
            *frag_len = end - start;
            return -ENAMETOOLONG;
        }
        start = end + 1;
    }
    return 0;
}

static char *
dup_n(const char *s, size_t len)
{
    char *p = xmalloc(len + 1);

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

/*
 * The fragment as an object key.  Indexes lose their leading zeros so that
 * "a.0" and "a.00" name the same element (QEMU accepts both spellings).
 */
static char *
fragment_name(const char *frag, size_t len)
{
    if (is_index(frag, len)) {
        while (len > 1 && *frag == '0') {
            frag++;
            len--;
        }
    }
    return dup_n(frag, len);
}

/* Store value at the dotted path key[0..len) (already checked) in root. */
static bool
keyval_insert(json_t *root, const char *key, size_t len, const char *value,
              struct err **errp)
{
    json_t *cur = root;
    size_t start = 0;
    json_t *str;

    str = json_string(value);
    if (!str) {
        err_setf(errp, "Parameter '%.*s' is not valid UTF-8", (int)len, key);
        return false;
    }
    for (;;) {
        const char *dot = memchr(key + start, '.', len - start);
        size_t end = dot ? (size_t)(dot - key) : len;
        CLEANUP_FREE char *name = fragment_name(key + start, end - start);
        json_t *next = json_object_get(cur, name);

        if (!dot) {
            if (json_is_object(next)) {
                break;
            }
            /* A repeated key: the last value wins, as in QEMU. */
            json_object_set_new(cur, name, str);
            return true;
        }
        if (!next) {
            next = json_object();
            json_object_set_new(cur, name, next);
        } else if (!json_is_object(next)) {
            len = end;
            break;
        }
        cur = next;
        start = end + 1;
    }
    json_decref(str);
    err_setf(errp, "Parameters '%.*s.*' used inconsistently", (int)len, key);
    return false;
}

/*
 * Copy a value up to an unescaped ',' or the end, turning ",," into ','.
 * Returns the copy; *pp is left at the terminating ',' or NUL.
 */
static char *
value_parse(const char **pp)
{
    const char *p = *pp;
    char *out = xmalloc(strlen(p) + 1);
    size_t n = 0;

    while (*p) {
        if (*p == ',') {
            if (p[1] != ',') {
                break;
            }
            p++;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
    *pp = p;
    return out;
}

/* Parse one element at *pp and store it; advances past a trailing ','. */
static bool
element_parse(json_t *root, const char **pp, const char *implied_key,
              struct err **errp)
{
    const char *p = *pp;
    size_t key_len = strcspn(p, "=,");
    const char *frag = NULL;
    size_t frag_len = 0;
    CLEANUP_FREE char *value = NULL;
    int ret;

    if (implied_key && key_len > 0 && p[key_len] != '=') {
        /*
         * A bare first value: it ends at the first ',' (no ",," escape),
         * and an empty one is an empty key, not a value (QEMU's rules).
         */
        value = dup_n(p, key_len);
        p += key_len;
        if (!keyval_insert(root, implied_key, strlen(implied_key), value,
                           errp)) {
            return false;
        }
    } else {
        ret = key_check(p, key_len, &frag, &frag_len);
        if (ret == -ENAMETOOLONG) {
            err_setf(errp, "Parameter fragment '%.*s' is too long",
                     (int)frag_len, frag);
            return false;
        } else if (ret < 0) {
            err_setf(errp, "Invalid parameter '%.*s'", (int)key_len, p);
            return false;
        }
        if (p[key_len] != '=') {
            err_setf(errp, "Expected '=' after parameter '%.*s'",
                     (int)key_len, p);
            return false;
        }
        *pp = p + key_len + 1;
        value = value_parse(pp);
        if (!keyval_insert(root, p, key_len, value, errp)) {
            return false;
        }
        p = *pp;
    }
    if (*p == ',') {
        p++;
    }
    *pp = p;
    return true;
}

static json_t *listify(json_t *obj, const char *prefix, struct err **errp);

/* Turn obj (all keys indexes) into an array, or fail naming a gap. */
static json_t *
object_to_array(json_t *obj, const char *prefix, struct err **errp)
{
    size_t n = json_object_size(obj);
    json_t **elt = xcalloc(n, sizeof(*elt));
    const char *key;
    json_t *val, *arr = NULL;

    json_object_foreach(obj, key, val) {
        unsigned long long idx;

        errno = 0;
        idx = strtoull(key, NULL, 10);
        /* Keys are distinct normalised indexes: any idx >= n leaves a gap. */
        if (errno == 0 && idx < n) {
            elt[idx] = val;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (!elt[i]) {
            err_setf(errp, "Parameter '%s%zu' missing", prefix, i);
            goto out;
        }
    }
    arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append(arr, elt[i]);
    }
out:
    free(elt);
    return arr;
}

/*
 * Convert, bottom up, every object whose keys are all indexes into an array.
 * prefix is the dotted path of obj with a trailing '.' ("" for the root).
 * Returns a new reference (obj itself or the array), NULL on error.
 */
static json_t *
listify(json_t *obj, const char *prefix, struct err **errp)
{
    const char *key;
    json_t *val;
    size_t nindex = 0;

    json_object_foreach(obj, key, val) {
        if (json_is_object(val)) {
            CLEANUP_FREE char *sub = xasprintf("%s%s.", prefix, key);
            json_t *conv = listify(val, sub, errp);

            if (!conv) {
                return NULL;
            }
            /* Replacing the value of an existing key keeps the iteration. */
            json_object_set_new(obj, key, conv);
        }
        if (is_index(key, strlen(key))) {
            nindex++;
        }
    }
    if (nindex == 0) {
        return json_incref(obj);
    }
    if (nindex != json_object_size(obj)) {
        err_setf(errp, "Parameters '%s*' used inconsistently", prefix);
        return NULL;
    }
    return object_to_array(obj, prefix, errp);
}

json_t *
keyval_parse(const char *str, const char *implied_key, struct err **errp)
{
    json_t *root = json_object();
    json_t *ret;
    const char *p = str;

    while (*p) {
        if (!element_parse(root, &p, p == str ? implied_key : NULL, errp)) {
            json_decref(root);
            return NULL;
        }
    }
    ret = listify(root, "", errp);
    json_decref(root);
    return ret;
}

json_t *
keyval_or_json_parse(const char *str, const char *implied_key,
                     struct err **errp)
{
    json_error_t jerr;
    json_t *obj;

    if (str[0] != '{') {
        return keyval_parse(str, implied_key, errp);
    }
    /* NUL is parsed, to be refused with a message that names where. */
    obj = json_loads(str, JSON_ALLOW_NUL, &jerr);
    if (!obj) {
        err_setf(errp, "JSON parse error, %s", jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        err_setf(errp, "JSON object expected");
        return NULL;
    }
    if (!json_check_nul(obj, errp)) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* ---- NUL characters in JSON strings ------------------------------------ */

/* s (len bytes) for a message: NUL as the six characters \u0000. */
static char *
nul_escaped(const char *s, size_t len)
{
    char *out = xmalloc(len * 6 + 1);
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        if (s[i]) {
            out[n++] = s[i];
        } else {
            memcpy(out + n, "\\u0000", 6);
            n += 6;
        }
    }
    out[n] = '\0';
    return out;
}

static bool
has_nul(const char *s, size_t len)
{
    return memchr(s, '\0', len) != NULL;
}

/* path: where v is ("" at the top). */
static bool
check_nul(json_t *v, const char *path, struct err **errp)
{
    if (json_is_string(v)) {
        if (has_nul(json_string_value(v), json_string_length(v))) {
            err_setf(errp, "Parameter '%s' must not contain a NUL character",
                     path);
            return false;
        }
        return true;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *e;

        json_array_foreach(v, i, e) {
            CLEANUP_FREE char *sub = xasprintf("%s[%zu]", path, i);

            if (!check_nul(e, sub, errp)) {
                return false;
            }
        }
        return true;
    }
    if (json_is_object(v)) {
        const char *key;
        size_t key_len;
        json_t *e;
        void *tmp;

        json_object_keylen_foreach_safe(v, tmp, key, key_len, e) {
            CLEANUP_FREE char *name = nul_escaped(key, key_len);
            CLEANUP_FREE char *sub = xasprintf("%s%s%s", path,
                                               *path ? "." : "", name);

            if (has_nul(key, key_len)) {
                err_setf(errp, "Parameter name '%s' must not contain a NUL "
                         "character", sub);
                return false;
            }
            if (!check_nul(e, sub, errp)) {
                return false;
            }
        }
    }
    return true;
}

bool
json_check_nul(json_t *v, struct err **errp)
{
    return check_nul(v, "", errp);
}
