/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img info: describe an image (and with --backing-chain every
 * image below it) in qemu-img info's human or JSON layout.  qcow2 images
 * are described from their header, read through the file node, so info
 * works on any image the header parser accepts, including ones the driver
 * would refuse (dirty, corrupt, with snapshots); other formats are opened
 * through their driver.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "block/format/qcow2/qcow2.h"
#include "img.h"
#include "util.h"

/* Backing chains longer than this are taken for loops. */
#define INFO_MAX_CHAIN 256

struct info {
    const char *filename;
    char *fmt;
    int64_t virtual_size;
    int64_t actual_size;          /* < 0: unavailable */
    bool is_qcow2;
    struct qcow2_header h;
    char *full_backing;           /* resolved backing path, or NULL */
};

static void
info_free(struct info *in)
{
    free(in->fmt);
    free(in->full_backing);
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

static bool
collect_qcow2(struct info *in, struct err **errp)
{
    struct block_node *file = img_open_protocol(in->filename, false, errp);
    CLEANUP_FREE void *head = NULL;
    size_t len;

    if (!file) {
        return false;
    }
    head = img_read_head(file, &len, errp);
    if (!head || qcow2_header_decode(head, len, &in->h, errp) < 0) {
        block_node_unref(file);
        err_prepend(errp, "Could not open '%s': ", in->filename);
        return false;
    }
    in->is_qcow2 = true;
    in->virtual_size = (int64_t)in->h.size;
    in->actual_size = block_allocated_size(file);
    block_node_unref(file);
    if (in->h.has_backing_file) {
        in->full_backing = img_backing_path(in->filename, in->h.backing_file);
    }
    return true;
}

static bool
collect(struct info *in, const char *filename, const char *fmt,
        struct err **errp)
{
    struct img img;

    memset(in, 0, sizeof(*in));
    in->filename = filename;
    in->fmt = xstrdup(fmt ? fmt : img_probe(filename));
    if (!strcmp(in->fmt, "qcow2")) {
        return collect_qcow2(in, errp);
    }
    if (!img_open(&img, filename, in->fmt, false, errp)) {
        return false;
    }
    in->virtual_size = block_handle_getlength(img.h);
    in->actual_size = block_allocated_size(img.node);
    img_close(&img);
    return true;
}

/* ---- JSON -------------------------------------------------------------- */

static json_t *
qcow2_specific(const struct qcow2_header *h)
{
    json_t *d = json_object();

    json_object_set_new(d, "compat",
                        json_string(h->version >= 3 ? "1.1" : "0.10"));
    json_object_set_new(d, "compression-type",
                        json_string(h->compression_type ? "zstd" : "zlib"));
    if (h->version >= 3) {
        json_object_set_new(d, "lazy-refcounts",
                            json_boolean(h->compatible_features &
                                         QCOW2_COMPAT_LAZY_REFCOUNTS));
    }
    json_object_set_new(d, "refcount-bits", json_integer(h->refcount_bits));
    if (h->version >= 3) {
        json_object_set_new(d, "corrupt",
                            json_boolean(h->incompatible_features &
                                         QCOW2_INCOMPAT_CORRUPT));
        json_object_set_new(d, "extended-l2", json_boolean(h->extended_l2));
    }
    return json_pack("{s:s, s:o}", "type", "qcow2", "data", d);
}

static json_t *
info_json(const struct info *in)
{
    const struct qcow2_header *h = &in->h;
    json_t *o = json_object();

    if (in->is_qcow2 && h->has_backing_fmt) {
        json_object_set_new(o, "backing-filename-format",
                            json_string(h->backing_fmt));
    }
    json_object_set_new(o, "virtual-size", json_integer(in->virtual_size));
    json_object_set_new(o, "filename", json_string(in->filename));
    if (in->is_qcow2) {
        json_object_set_new(o, "cluster-size",
                            json_integer((json_int_t)h->cluster_size));
    }
    json_object_set_new(o, "format", json_string(in->fmt));
    if (in->actual_size >= 0) {
        json_object_set_new(o, "actual-size", json_integer(in->actual_size));
    }
    if (in->is_qcow2 && h->crypt_method) {
        json_object_set_new(o, "encrypted", json_true());
    }
    if (in->is_qcow2) {
        json_object_set_new(o, "format-specific", qcow2_specific(h));
    }
    if (in->full_backing) {
        json_object_set_new(o, "full-backing-filename",
                            json_string(in->full_backing));
        json_object_set_new(o, "backing-filename",
                            json_string(h->backing_file));
    }
    json_object_set_new(o, "dirty-flag",
                        json_boolean(in->is_qcow2 &&
                                     (h->incompatible_features &
                                      QCOW2_INCOMPAT_DIRTY)));
    return o;
}

/* ---- Human ------------------------------------------------------------- */

/* "compression-type": "zlib" becomes "    compression type: zlib". */
static void
print_specific(json_t *spec)
{
    json_t *data = json_object_get(spec, "data"), *v;
    const char *key;

    printf("Format specific information:\n");
    json_object_foreach(data, key, v) {
        CLEANUP_FREE char *name = xstrdup(key);

        for (char *p = name; *p; p++) {
            *p = *p == '-' ? ' ' : *p;
        }
        if (json_is_string(v)) {
            printf("    %s: %s\n", name, json_string_value(v));
        } else if (json_is_integer(v)) {
            printf("    %s: %" JSON_INTEGER_FORMAT "\n", name,
                   json_integer_value(v));
        } else {
            printf("    %s: %s\n", name, json_is_true(v) ? "true" : "false");
        }
    }
}

static void
info_human(const struct info *in)
{
    const struct qcow2_header *h = &in->h;
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
    if (!in->is_qcow2) {
        return;
    }
    printf("cluster_size: %" PRIu64 "\n", h->cluster_size);
    if (h->crypt_method) {
        printf("encrypted: yes\n");
    }
    if (h->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        printf("cleanly shut down: no\n");
    }
    if (in->full_backing) {
        printf("backing file: %s", h->backing_file);
        if (strcmp(in->full_backing, h->backing_file) != 0) {
            printf(" (actual path: %s)", in->full_backing);
        }
        printf("\n");
    }
    if (h->has_backing_fmt) {
        printf("backing file format: %s\n", h->backing_fmt);
    }
    json_t *spec = qcow2_specific(h);
    print_specific(spec);
    json_decref(spec);
}

/* ---- Command ------------------------------------------------------------ */

struct info_args {
    const char *fmt;
    const char *filename;
    bool json;
    bool chain;
};

static int
info_parse(int argc, char **argv, struct info_args *a)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'O' },
        { "format", required_argument, NULL, 'f' },
        { "backing-chain", no_argument, NULL, 'B' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:U", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            a->fmt = optarg;
            break;
        case 'O':
            if (strcmp(optarg, "json") && strcmp(optarg, "human")) {
                img_error("--output must be used with human or json as "
                          "argument.");
                return -1;
            }
            a->json = !strcmp(optarg, "json");
            break;
        case 'B':
            a->chain = true;
            break;
        case 'U':
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

/* Print one image; returns the next image of the chain (or NULL). */
static char *
info_one(const struct info_args *a, const struct info *in, json_t *list,
         char **next_fmt)
{
    if (a->json && list) {
        json_array_append_new(list, info_json(in));
    } else if (a->json) {
        json_t *o = info_json(in);

        json_dumpf(o, stdout, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
        printf("\n");
        json_decref(o);
    } else {
        info_human(in);
    }
    if (!a->chain || !in->full_backing) {
        return NULL;
    }
    *next_fmt = in->h.has_backing_fmt ? xstrdup(in->h.backing_fmt) : NULL;
    return xstrdup(in->full_backing);
}

int
img_cmd_info(int argc, char **argv)
{
    struct info_args a = { 0 };
    char *name, *fmt;
    json_t *list;
    int depth = 0, ret = 0;

    if (info_parse(argc, argv, &a) < 0) {
        return img_usage_error("info", NULL);
    }
    name = xstrdup(a.filename);
    fmt = a.fmt ? xstrdup(a.fmt) : NULL;
    list = a.chain && a.json ? json_array() : NULL;
    while (name) {
        struct err *e = NULL;
        struct info in;
        char *next, *next_fmt = NULL;

        if (++depth > INFO_MAX_CHAIN) {
            img_error("Backing file '%s' creates an infinite loop.", name);
            ret = 1;
            break;
        }
        if (!collect(&in, name, fmt, &e)) {
            img_report(e);
            info_free(&in);
            ret = 1;
            break;
        }
        if (depth > 1 && !a.json) {
            printf("\n");
        }
        next = info_one(&a, &in, list, &next_fmt);
        info_free(&in);
        free(name);
        free(fmt);
        name = next;
        fmt = next_fmt;
    }
    free(name);
    free(fmt);
    if (list && ret == 0) {
        json_dumpf(list, stdout, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
        printf("\n");
    }
    json_decref(list);
    return ret;
}
