/* SPDX-License-Identifier: MIT */
/*
 * File names as QEMU's command line tools take them, turned into
 * blockdev-add options, and images opened from a name plus options the
 * way qemu-io and qemu-img do (format probing included).
 *
 * A name is one of:
 *   json:{...}             the options themselves (dotted keys allowed,
 *                          and QEMU's single-quoted strings)
 *   blkdebug:[CONFIG]:NAME a blkdebug filter over NAME, rules from CONFIG
 *   nbd://HOST[:PORT][/EXPORT], nbd+tcp://..., nbd+unix:///EXPORT?socket=P
 *   null-co://, null-aio:// the null driver
 *   file:PATH              a file
 *   PATH                   a file; a "PROTO:" prefix (no '/' before the
 *                          colon) that is none of the above is refused as
 *                          an unknown protocol, as QEMU does
 *
 * json: is the core's (the options themselves); every other prefix is a
 * driver's: its filename_prefixes and parse_filename hook.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block/core/opts.h"
#include "lockstep/driver.h"
#include "util.h"

/* ---- json: --------------------------------------------------------------- */

/* QEMU's JSON parser takes 'single-quoted' strings; jansson does not. */
static char *
json_requote(const char *s)
{
    char *out = xmalloc(strlen(s) * 2 + 1);
    char *o = out;
    char quote = 0;

    for (; *s; s++) {
        if (!quote) {
            if (*s == '\'' || *s == '"') {
                quote = *s;
                *o++ = '"';
            } else {
                *o++ = *s;
            }
            continue;
        }
        if (*s == '\\' && s[1]) {
            if (s[1] == '\'') {
                *o++ = '\'';
            } else {
                *o++ = *s;
                *o++ = s[1];
            }
            s++;
        } else if (*s == quote) {
            quote = 0;
            *o++ = '"';
        } else if (*s == '"') {
            *o++ = '\\';
            *o++ = '"';
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
    return out;
}

/*
 * Dotted keys ("file.filename") become nested objects, in place, in every
 * object below too.  A key used both ways is refused like QEMU does.
 */
static bool
json_crumple(json_t *obj, struct err **errp)
{
    const char *key;
    json_t *v, *dotted = json_object();
    void *tmp;

    json_object_foreach_safe(obj, tmp, key, v) {
        if (strchr(key, '.')) {
            json_object_set(dotted, key, v);
            json_object_del(obj, key);
        }
    }
    json_object_foreach(dotted, key, v) {
        json_t *cur = obj;
        const char *p = key;
        const char *dot;

        while ((dot = strchr(p, '.'))) {
            CLEANUP_FREE char *part = xasprintf("%.*s", (int)(dot - p), p);
            json_t *next = json_object_get(cur, part);

            if (!next) {
                next = json_object();
                json_object_set_new(cur, part, next);
            } else if (!json_is_object(next)) {
                err_setf(errp, "Cannot crumple options: '%s' is both a "
                         "value and an object", key);
                json_decref(dotted);
                return false;
            }
            cur = next;
            p = dot + 1;
        }
        if (json_is_object(json_object_get(cur, p))) {
            err_setf(errp, "Cannot crumple options: '%s' is both a value "
                     "and an object", key);
            json_decref(dotted);
            return false;
        }
        json_object_set(cur, p, v);
    }
    json_decref(dotted);
    json_object_foreach(obj, key, v) {
        if (json_is_object(v) && !json_crumple(v, errp)) {
            return false;
        }
    }
    return true;
}

static json_t *
json_filename(const char *text, struct err **errp)
{
    CLEANUP_FREE char *requoted = json_requote(text);
    json_error_t jerr;
    json_t *o = json_loads(requoted, JSON_REJECT_DUPLICATES, &jerr);

    if (!o || !json_is_object(o)) {
        err_setf(errp, "Could not parse the JSON options");
        json_decref(o);
        return NULL;
    }
    if (!json_crumple(o, errp)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- The dispatch ------------------------------------------------------- */

const struct block_driver *
block_filename_protocol(const char *filename)
{
    for (size_t i = 0; block_drivers[i]; i++) {
        const char *const *p = block_drivers[i]->filename_prefixes;

        for (; p && *p; p++) {
            if (!strncmp(filename, *p, strlen(*p))) {
                return block_drivers[i];
            }
        }
    }
    return NULL;
}

bool
block_filename_is_nbd_url(const char *filename)
{
    const struct block_driver *drv = block_filename_protocol(filename);

    return drv && !strcmp(drv->name, "nbd");
}

json_t *
block_filename_options(const char *filename, struct err **errp)
{
    const char *colon = strchr(filename, ':');
    const char *slash = strchr(filename, '/');
    const struct block_driver *drv;

    if (!strncmp(filename, "json:", 5)) {
        return json_filename(filename + 5, errp);
    }
    drv = block_filename_protocol(filename);
    if (drv) {
        return drv->parse_filename(filename, errp);
    }
    if (colon && colon > filename && (!slash || colon < slash)) {
        err_setf(errp, "Unknown protocol '%.*s'", (int)(colon - filename),
                 filename);
        return NULL;
    }
    return json_pack("{s:s, s:s}", "driver", "file", "filename", filename);
}

/* ---- Opening an image by name ------------------------------------------- */

/*
 * Children given as {"filename": NAME, ...} without a driver (json: and
 * dotted options often do) get one from their name, recursively.
 */
static bool
fill_drivers(json_t *opts, struct err **errp)
{
    static const char *const kids[] = { "file", "image", "backing",
                                        "data-file", NULL };
    const char *fn = json_string_value(json_object_get(opts, "filename"));

    if (!json_object_get(opts, "driver") && fn) {
        json_t *proto = block_filename_options(fn, errp);
        const char *key;
        json_t *v;

        if (!proto) {
            return false;
        }
        if (strcmp(json_string_value(json_object_get(proto, "driver")),
                   "file")) {
            json_object_del(opts, "filename");
        } else {
            json_object_set_new(proto, "filename", json_string(fn));
        }
        json_object_foreach(proto, key, v) {
            if (!json_object_get(opts, key)) {
                json_object_set(opts, key, v);
            }
        }
        json_decref(proto);
    }
    for (size_t i = 0; kids[i]; i++) {
        json_t *child = json_object_get(opts, kids[i]);

        if (json_is_object(child) && !fill_drivers(child, errp)) {
            return false;
        }
    }
    return true;
}

static bool is_protocol(const char *driver);

/*
 * Add the keys of from that into lacks (explicit options win).  A child
 * given a format driver explicitly ("image.driver=qcow2") over a name's
 * protocol node gets that node as its file.
 */
static void
merge_missing(json_t *into, json_t *from)
{
    const char *key;
    json_t *v;

    json_object_foreach(from, key, v) {
        json_t *have = json_object_get(into, key);
        const char *hd, *vd;

        if (!have) {
            json_object_set(into, key, v);
            continue;
        }
        if (!json_is_object(have) || !json_is_object(v)) {
            continue;
        }
        hd = json_string_value(json_object_get(have, "driver"));
        vd = json_string_value(json_object_get(v, "driver"));
        if (hd && vd && strcmp(hd, vd) && !is_protocol(hd) &&
            is_protocol(vd) && !json_object_get(have, "file")) {
            json_object_set(have, "file", v);
        } else {
            merge_missing(have, v);
        }
    }
}

static bool
is_protocol(const char *driver)
{
    const struct block_driver *drv = driver ? block_driver_find(driver)
                                            : NULL;

    return drv && drv->kind == BLOCK_KIND_PROTOCOL;
}

/*
 * Read the first bytes through proto (the file, blkdebug or NBD layer)
 * and name the format (block_probe_format).
 */
static const char *
read_and_probe(json_t *proto, bool *probed_raw, struct err **errp)
{
    json_t *o = json_deep_copy(proto);
    struct block_node *node;
    uint8_t head[BLOCK_PROBE_BYTES];
    int64_t len;
    int ret = 0;
    const char *fmt;

    json_object_set_new(o, "read-only", json_true());
    json_object_set_new(o, "force-share", json_true());
    node = block_node_new(o, errp);
    json_decref(o);
    if (!node) {
        return NULL;
    }
    len = block_getlength(node);
    if (len > 0) {
        block_graph_enter();
        ret = block_pread(node, 0, MIN((uint64_t)len, sizeof(head)), head,
                          BLOCK_REQ_PROBE);
        block_graph_leave();
    }
    block_node_unref(node);
    if (len < 0 || ret < 0) {
        err_setf_errno(errp, len < 0 ? (int)-len : -ret,
                       "Could not read image for determining its format");
        return NULL;
    }
    fmt = block_probe_format(head, len > 0 ? MIN((uint64_t)len,
                                                 sizeof(head)) : 0,
                             json_string_value(json_object_get(proto,
                                                               "filename")));
    *probed_raw = !strcmp(fmt, "raw");
    return fmt;
}

/*
 * The name of "driver=FMT,... NAME" belongs to the protocol node at the
 * bottom: formats and filters given with their driver pass it on to their
 * child ("file"; blkdebug's "image", which takes a plain name as QEMU's
 * blkdebug does), so that "driver=copy-on-read,file.driver=qcow2 NAME"
 * opens NAME below the qcow2 node.
 */
static void
name_below(json_t *opts, json_t *fopts)
{
    const char *drv = json_string_value(json_object_get(opts, "driver"));
    const char *key = drv && !strcmp(drv, "blkdebug") ? "image" : "file";
    json_t *child = json_object_get(opts, key);
    const char *cd;

    if (!child) {
        json_object_set(opts, key, fopts);
        return;
    }
    if (!json_is_object(child)) {
        return;     /* a node-name: the name is not used, as in QEMU */
    }
    cd = json_string_value(json_object_get(child, "driver"));
    if (cd && !is_protocol(cd)) {
        name_below(child, fopts);
    } else {
        merge_missing(child, fopts);
    }
}

/* Options of a protocol node that may stand at the top without a driver. */
static const char *const protocol_keys[] = {
    "filename", "locking", "aio", "aio-max-batch", "drop-cache", NULL,
};

struct block_node *
block_open_image(const char *filename, json_t *options, bool *probed_raw,
                 struct err **errp)
{
    json_t *opts = options ? json_deep_copy(options) : json_object();
    const char *driver = json_string_value(json_object_get(opts, "driver"));
    struct block_node *node = NULL;
    bool raw_guess = false;

    if (filename) {
        json_t *fopts = block_filename_options(filename, errp);
        const char *fdrv;

        if (!fopts) {
            goto out;
        }
        fdrv = json_string_value(json_object_get(fopts, "driver"));
        if (!strncmp(filename, "json:", 5) ||
            (driver && fdrv && !strcmp(driver, fdrv) &&
             strcmp(driver, "file"))) {
            /* "driver=blkdebug,... blkdebug::IMG": the name's options are
             * that node's own, as QEMU parses them. */
            merge_missing(opts, fopts);
        } else if (driver && is_protocol(driver)) {
            /* "-f file NAME": the name as that driver's file name. */
            if (!json_object_get(opts, "filename")) {
                json_t *fn = fdrv && !strcmp(fdrv, driver)
                             ? json_object_get(fopts, "filename") : NULL;

                json_object_set_new(opts, "filename",
                                    fn ? json_incref(fn)
                                       : json_string(filename));
            }
        } else if (driver) {
            name_below(opts, fopts);
        } else if (json_is_object(json_object_get(opts, "file"))) {
            merge_missing(json_object_get(opts, "file"), fopts);
        } else if (!json_object_get(opts, "file")) {
            json_object_set(opts, "file", fopts);
        }
        json_decref(fopts);
        driver = json_string_value(json_object_get(opts, "driver"));
    }
    if (!driver && !json_object_get(opts, "file")) {
        /* Protocol options at the top ("filename=x"): they go below. */
        json_t *file = json_object();
        json_t *v;

        for (size_t i = 0; protocol_keys[i]; i++) {
            if ((v = json_object_get(opts, protocol_keys[i]))) {
                json_object_set(file, protocol_keys[i], v);
                json_object_del(opts, protocol_keys[i]);
            }
        }
        if (json_object_size(file) == 0) {
            json_decref(file);
            err_setf(errp, "Must specify either driver or file");
            goto out;
        }
        json_object_set_new(opts, "file", file);
    }
    if (!fill_drivers(opts, errp)) {
        goto out;
    }
    if (!driver) {
        const char *fmt;

        if (!json_is_object(json_object_get(opts, "file"))) {
            err_setf(errp, "Must specify either driver or file");
            goto out;
        }
        fmt = read_and_probe(json_object_get(opts, "file"), &raw_guess, errp);
        if (!fmt) {
            goto out;
        }
        json_object_set_new(opts, "driver", json_string(fmt));
    }
    node = block_node_new(opts, errp);
out:
    if (probed_raw) {
        *probed_raw = node && raw_guess;
    }
    json_decref(opts);
    return node;
}
