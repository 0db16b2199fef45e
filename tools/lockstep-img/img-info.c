/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img info: describe an image (and with --backing-chain every
 * image below it) in qemu-img info's human or JSON layout.  Images of a
 * format with an image_info hook (qcow2) are described by it from their
 * header, read through the file node (for a json:{...} name, the node its
 * "file" options open), so info works on any image the header decoder
 * accepts, including ones the driver would refuse (dirty, corrupt, with
 * snapshots); other formats are opened through their driver.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "img.h"
#include "util.h"

struct info {
    const char *filename;
    char *fmt;
    int64_t virtual_size;
    int64_t actual_size;          /* < 0: unavailable */
    bool from_header;             /* described by the driver's image_info */
    struct block_image_info h;
    char *full_backing;           /* resolved backing path, or NULL */
    char *owned_name;             /* filename, when the info owns it */
    char *shown_name;             /* the driver's name for it (nbd: URL) */
};

static void
info_free(struct info *in)
{
    free(in->fmt);
    free(in->full_backing);
    free(in->shown_name);
    block_image_info_clear(&in->h);
}

/* qemu's size_to_str: 3 significant digits, next unit from 1000 up. */
static void
fmt_size(char *buf, size_t len, uint64_t v)
{
    static const char *const units[] = {
        "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
    };
    unsigned i = 0;

    while (i + 1 < ARRAY_SIZE(units) &&
           (double)v >= 1000.0 * ldexp(1, 10 * i)) {
        i++;
    }
    snprintf(buf, len, "%0.3g %s", v / ldexp(1, 10 * i), units[i]);
}

/* What the driver reads from the header, through the file node. */
static bool
read_header(struct info *in, struct block_node *file, struct err **errp)
{
    if (block_image_info_read(in->fmt, file, true, &in->h, errp) < 0) {
        err_prepend(errp, "Could not open '%s': ", in->filename);
        return false;
    }
    in->from_header = true;
    in->virtual_size = (int64_t)in->h.virtual_size;
    in->actual_size = block_allocated_size(file);
    return true;
}

static bool
collect_header(struct info *in, struct err **errp)
{
    struct img img;
    bool ok;

    /* A handle, not just the node: it takes the image locks. */
    if (!img_open(&img, in->filename, "file", false, errp)) {
        return false;
    }
    ok = read_header(in, img.node, errp);
    img_close(&img);
    if (ok && in->h.backing_file) {
        in->full_backing = img_backing_path(in->filename, in->h.backing_file);
    }
    return ok;
}

/* Any image, opened through its driver (fmt NULL: probed). */
static bool
collect_opened(struct info *in, const char *fmt, struct err **errp)
{
    struct img img;

    if (!img_open(&img, in->filename, fmt, false, errp)) {
        return false;
    }
    free(in->fmt);
    in->fmt = xstrdup(img.fmt);
    /* Storage without a file name (an NBD export) shows under the name
     * its driver gives it, as with qemu-img. */
    if (!block_node_filename(img.node) &&
        block_node_exact_filename(img.node)) {
        in->shown_name = xstrdup(block_node_exact_filename(img.node));
        in->filename = in->shown_name;
    }
    in->virtual_size = block_handle_getlength(img.h);
    in->actual_size = block_allocated_size(img.node);
    img_close(&img);
    return true;
}

/*
 * A json:{...} name with more than a format over a file (a blkdebug or
 * quorum node below, other options): an image of a format with an
 * image_info hook is described from its header, read through the node its
 * "file" options open; another format is opened whole, as the name says.
 */
static bool
collect_json(struct info *in, const char *fmt, struct err **errp)
{
    json_t *opts = block_filename_options(in->filename, errp);
    json_t *file;
    const char *drv, *path;
    struct img img;
    bool ok;

    if (!opts) {
        return false;
    }
    drv = fmt ? fmt : json_string_value(json_object_get(opts, "driver"));
    file = json_object_get(opts, "file");
    if (!drv || !block_has_header_info(drv) || !json_is_object(file)) {
        ok = collect_opened(in, drv, errp);     /* drv lives in opts */
        json_decref(opts);
        return ok;
    }
    in->fmt = xstrdup(drv);
    if (!json_object_get(file, "driver") &&
        json_object_get(file, "filename")) {
        json_object_set_new(file, "driver", json_string("file"));
    }
    json_object_set_new(file, "read-only", json_true());
    if (img_force_share) {
        json_object_set_new(file, "force-share", json_true());
    }
    ok = img_open_json(&img, file, in->filename, false, false, errp);
    json_decref(opts);
    if (!ok) {
        return false;
    }
    ok = read_header(in, img.node, errp);
    path = block_node_filename(img.node);
    if (ok && in->h.backing_file && path) {
        in->full_backing = img_backing_path(path, in->h.backing_file);
    }
    img_close(&img);
    return ok;
}

static bool
collect(struct info *in, const char *filename, const char *fmt,
        struct err **errp)
{
    memset(in, 0, sizeof(*in));
    in->filename = filename;
    if (!strncmp(filename, "json:", 5)) {
        return collect_json(in, fmt, errp);
    }
    in->fmt = xstrdup(fmt ? fmt : block_probe_file(filename));
    if (block_has_header_info(in->fmt)) {
        return collect_header(in, errp);
    }
    return collect_opened(in, in->fmt, errp);
}

/* ---- JSON -------------------------------------------------------------- */


static json_t *
info_json(const struct info *in)
{
    const struct block_image_info *h = &in->h;
    json_t *o = json_object();

    if (h->backing_fmt) {
        json_object_set_new(o, "backing-filename-format",
                            json_string(h->backing_fmt));
    }
    if (h->snapshots) {
        json_object_set(o, "snapshots", h->snapshots);
    }
    json_object_set_new(o, "virtual-size", json_integer(in->virtual_size));
    json_object_set_new(o, "filename", json_string(in->filename));
    if (h->cluster_size) {
        json_object_set_new(o, "cluster-size",
                            json_integer((json_int_t)h->cluster_size));
    }
    json_object_set_new(o, "format", json_string(in->fmt));
    if (in->actual_size >= 0) {
        json_object_set_new(o, "actual-size", json_integer(in->actual_size));
    }
    if (h->encrypted) {
        json_object_set_new(o, "encrypted", json_true());
    }
    if (h->format_specific) {
        json_object_set(o, "format-specific", h->format_specific);
    }
    if (in->full_backing) {
        json_object_set_new(o, "full-backing-filename",
                            json_string(in->full_backing));
    }
    if (h->backing_file) {
        json_object_set_new(o, "backing-filename",
                            json_string(h->backing_file));
    }
    /* qemu-img has no image info (and no dirty flag) for NBD exports. */
    if (in->from_header || !block_filename_is_nbd_url(in->filename)) {
        json_object_set_new(o, "dirty-flag", json_boolean(h->dirty));
    }
    return o;
}

/* ---- Human ------------------------------------------------------------- */

/*
 * qemu-img's dump of format-specific data: "key: value" lines, nested
 * objects and lists one level deeper, list items labelled "[i]", dashes
 * in keys shown as spaces.
 */
static void
dump_value(int indent, const char *label, json_t *v)
{
    CLEANUP_FREE char *name = xstrdup(label);
    const char *key;
    json_t *child;
    size_t i;

    for (char *p = name; *p; p++) {
        *p = *p == '-' ? ' ' : *p;
    }
    if (json_is_object(v) || json_is_array(v)) {
        printf("%*s%s:\n", indent, "", name);
    } else if (json_is_string(v)) {
        printf("%*s%s: %s\n", indent, "", name, json_string_value(v));
    } else if (json_is_integer(v)) {
        printf("%*s%s: %" JSON_INTEGER_FORMAT "\n", indent, "", name,
               json_integer_value(v));
    } else {
        printf("%*s%s: %s\n", indent, "", name,
               json_is_true(v) ? "true" : "false");
    }
    json_object_foreach(v, key, child) {
        dump_value(indent + 4, key, child);
    }
    json_array_foreach(v, i, child) {
        char idx[32];

        snprintf(idx, sizeof(idx), "[%zu]", i);
        dump_value(indent + 4, idx, child);
    }
}

static void
print_specific(json_t *spec)
{
    json_t *data = json_object_get(spec, "data"), *v;
    const char *key;

    printf("Format specific information:\n");
    json_object_foreach(data, key, v) {
        dump_value(4, key, v);
    }
}

/* qemu-img's snapshot table (also "snapshot -l"). */
void
img_print_snapshots(json_t *list)
{
    json_t *sn;
    size_t i;

    printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG",
           "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    json_array_foreach(list, i, sn) {
        time_t t = json_integer_value(json_object_get(sn, "date-sec"));
        json_int_t secs = json_integer_value(json_object_get(sn,
                                                             "vm-clock-sec"));
        json_int_t ns = json_integer_value(json_object_get(sn,
                                                           "vm-clock-nsec"));
        json_t *ic = json_object_get(sn, "icount");
        char size[32], date[32], clock[48], icount[32] = "";
        struct tm tm;

        fmt_size(size, sizeof(size),
                 json_integer_value(json_object_get(sn, "vm-state-size")));
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S",
                 localtime_r(&t, &tm));
        snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d",
                 (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
                 (int)(ns / 1000000));
        if (ic) {
            snprintf(icount, sizeof(icount), "%" JSON_INTEGER_FORMAT,
                     json_integer_value(ic));
        }
        printf("%-9s %-16s %8s%20s%13s%11s\n",
               json_string_value(json_object_get(sn, "id")),
               json_string_value(json_object_get(sn, "name")), size, date,
               clock, icount);
    }
}

static void
info_human(const struct info *in)
{
    const struct block_image_info *h = &in->h;
    char buf[64];

    printf("image: %s\nfile format: %s\n", in->filename, in->fmt);
    fmt_size(buf, sizeof(buf), in->virtual_size);
    printf("virtual size: %s (%" PRId64 " bytes)\n", buf, in->virtual_size);
    if (in->actual_size >= 0) {
        fmt_size(buf, sizeof(buf), in->actual_size);
        printf("disk size: %s\n", buf);
    } else {
        printf("disk size: unavailable\n");
    }
    if (!in->from_header) {
        return;
    }
    printf("cluster_size: %" PRIu64 "\n", h->cluster_size);
    if (h->encrypted) {
        printf("encrypted: yes\n");
    }
    if (h->dirty) {
        printf("cleanly shut down: no\n");
    }
    if (h->backing_file) {
        printf("backing file: %s", h->backing_file);
        if (!in->full_backing) {
            printf(" (cannot determine actual path)");
        } else if (strcmp(in->full_backing, h->backing_file) != 0) {
            printf(" (actual path: %s)", in->full_backing);
        }
        printf("\n");
    }
    if (h->backing_fmt) {
        printf("backing file format: %s\n", h->backing_fmt);
    }
    if (h->snapshots) {
        img_print_snapshots(h->snapshots);
    }
    if (h->format_specific) {
        print_specific(h->format_specific);
    }
}

/* ---- Command ------------------------------------------------------------ */

struct info_args {
    const char *fmt;
    const char *filename;
    bool json;
    bool chain;
    bool image_opts;
};

static int
info_parse(int argc, char **argv, struct info_args *a)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'O' },
        { "format", required_argument, NULL, 'f' },
        { "backing-chain", no_argument, NULL, 'B' },
        { "force-share", no_argument, NULL, 'U' },
        { "image-opts", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:U", longopts, NULL)) != -1) {
        switch (opt) {
        case 'I':
            a->image_opts = true;
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 'O':
            if (img_parse_output(optarg, &a->json) < 0) {
                return -1;
            }
            break;
        case 'B':
            a->chain = true;
            break;
        case 'U':
            img_force_share = true;
            break;
        default:
            return -1;
        }
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return -1;
    }
    a->filename = argv[optind];
    return 0;
}

/* Print one image (into list when printing a JSON chain). */
static void
info_print(const struct info_args *a, const struct info *in, json_t *list)
{
    if (a->json && list) {
        json_array_append_new(list, info_json(in));
    } else if (a->json) {
        json_t *o = info_json(in);

        img_json_print(o);
        json_decref(o);
    } else {
        info_human(in);
    }
}

/*
 * Collect filename (and with chain, every image below it) into *out.
 * Like qemu-img, nothing is printed until the whole chain is known: a
 * loop (the same file, by device and inode, reached again) or a chain
 * longer than BLOCK_MAX_BACKING_CHAIN is an error of its own.
 */
static bool
collect_chain(const char *filename, const char *fmt, bool chain,
              struct info **out, size_t *n, struct err **errp)
{
    struct img_chain seen = { 0 };
    char *name = xstrdup(filename);
    char *f = fmt ? xstrdup(fmt) : NULL;
    bool ok = true;

    *out = NULL;
    *n = 0;
    while (name) {
        struct info *in;

        if (!img_chain_visit(&seen, name, errp)) {
            ok = false;
            break;
        }
        *out = xrealloc(*out, (*n + 1) * sizeof(**out));
        in = &(*out)[*n];
        if (!collect(in, name, f, errp)) {
            info_free(in);
            ok = false;
            break;
        }
        (*n)++;
        in->owned_name = name;      /* in->filename points into it */
        free(f);
        f = NULL;
        name = NULL;
        if (chain && in->full_backing) {
            name = xstrdup(in->full_backing);
            f = in->h.backing_fmt ? xstrdup(in->h.backing_fmt) : NULL;
        }
    }
    free(name);
    free(f);
    img_chain_free(&seen);
    return ok;
}

static void
chain_free(struct info *chain, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(chain[i].owned_name);
        info_free(&chain[i]);
    }
    free(chain);
}

bool
img_backing_chain_ok(const char *filename, const char *fmt,
                     struct err **errp)
{
    struct info *chain;
    size_t n;
    struct err *e = NULL;
    bool ok = collect_chain(filename, fmt, true, &chain, &n, &e);

    chain_free(chain, n);
    if (!ok && e && e->errnum == ELOOP) {
        err_propagate(errp, e);
        return false;
    }
    /* Other failures (a missing backing file) are not check's business. */
    err_free(e);
    return true;
}

int
img_cmd_info(int argc, char **argv)
{
    struct info_args a = { 0 };
    struct info *chain;
    struct err *e = NULL;
    json_t *list;
    size_t n;

    if (info_parse(argc, argv, &a) < 0) {
        return img_usage_error("info", NULL);
    }
    if (!img_simple_name(&a.filename, &a.fmt, a.image_opts) &&
        a.image_opts) {
        img_error("--image-opts: only driver=FMT,file.filename=PATH is "
                  "supported by info");
        return 1;
    }
    if (!collect_chain(a.filename, a.fmt, a.chain, &chain, &n, &e)) {
        img_report(e);
        chain_free(chain, n);
        return 1;
    }
    list = a.chain && a.json ? json_array() : NULL;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && !a.json) {
            printf("\n");
        }
        info_print(&a, &chain[i], list);
    }
    if (list) {
        img_json_print(list);
    }
    json_decref(list);
    chain_free(chain, n);
    return 0;
}
