/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img check: run the format driver's consistency check (its
 * check hook, through block_check()) on the image's file node, optionally
 * repair, and report like qemu-img check does: problem lines on stderr, a
 * summary (human or JSON) on stdout, and exit status 0 clean, 1 check
 * failed, 2 corruptions, 3 leaks only, 63 the format has no check.  After
 * a repair the image is checked again ("Double checking the fixed image
 * now...") and that second result is reported, with the numbers fixed by
 * the first pass.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "img.h"
#include "util.h"

#define EXIT_NO_CHECK 63

struct check_args {
    const char *fmt;
    const char *filename;
    unsigned fix;
    bool json;
    bool quiet;
};

static void
print_human(const struct block_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    }
    if (r->corruptions) {
        printf("\n%" PRId64 " errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image may "
               "corrupt it.\n", r->corruptions);
    }
    if (r->leaks) {
        printf("\n%" PRId64 " leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n",
               r->leaks);
    }
    if (r->check_errors) {
        printf("\n%" PRId64 " internal errors have occurred during the "
               "check.\n", r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    }
    if (r->image_end_offset) {
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
    }
}

static void
json_set_nonzero(json_t *o, const char *key, int64_t v)
{
    if (v) {
        json_object_set_new(o, key, json_integer(v));
    }
}

/* QEMU's ImageCheck, keys in the order qemu-img prints them. */
static void
print_json(const struct check_args *a, const struct block_check_result *r)
{
    json_t *o = json_object();

    json_set_nonzero(o, "image-end-offset", (int64_t)r->image_end_offset);
    json_set_nonzero(o, "compressed-clusters",
                     (int64_t)r->compressed_clusters);
    json_set_nonzero(o, "total-clusters", (int64_t)r->total_clusters);
    json_set_nonzero(o, "corruptions", r->corruptions);
    json_object_set_new(o, "check-errors", json_integer(r->check_errors));
    json_set_nonzero(o, "corruptions-fixed", r->corruptions_fixed);
    json_set_nonzero(o, "leaks-fixed", r->leaks_fixed);
    json_set_nonzero(o, "leaks", r->leaks);
    json_set_nonzero(o, "allocated-clusters", (int64_t)r->allocated_clusters);
    json_object_set_new(o, "filename", json_string(a->filename));
    json_object_set_new(o, "format", json_string(a->fmt));
    json_set_nonzero(o, "fragmented-clusters",
                     (int64_t)r->fragmented_clusters);
    img_json_print(o);
    json_decref(o);
}

static int
check_parse(int argc, char **argv, struct check_args *a)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'O' },
        { "repair", required_argument, NULL, 'r' },
        { "format", required_argument, NULL, 'f' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:r:qT:U", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f':
            a->fmt = optarg;
            break;
        case 'r':
            if (!strcmp(optarg, "leaks")) {
                a->fix = BLOCK_CHECK_FIX_LEAKS;
            } else if (!strcmp(optarg, "all")) {
                a->fix = BLOCK_CHECK_FIX_LEAKS | BLOCK_CHECK_FIX_ERRORS;
            } else {
                img_error("Unknown option value for -r (expecting 'leaks' "
                          "or 'all'): %s", optarg);
                return -1;
            }
            break;
        case 'O':
            if (img_parse_output(optarg, &a->json) < 0) {
                return -1;
            }
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'T':
            /* A repair opens the image writable: the same mode. */
            if (!img_set_cache(&img_src_cache, optarg) ||
                !img_set_cache(&img_cache, optarg)) {
                return -1;
            }
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

/* Formats without a check: open to report open errors, then 63. */
static int
check_other_format(const struct check_args *a)
{
    struct err *e = NULL;
    struct img img;

    if (!img_open(&img, a->filename, a->fmt, false, &e)) {
        img_report(e);
        return 1;
    }
    img_close(&img);
    img_error("This image format does not support checks");
    return EXIT_NO_CHECK;
}

/* Open (and close) one file the image needs, read-only; NULL on success. */
static struct err *
open_needed(const char *fmt, const char *path)
{
    struct block_node *node;
    struct err *e = NULL;
    json_t *opts;

    if (!block_driver_find(fmt)) {
        err_setf(&e, "Unknown driver '%s'", fmt);
        return e;
    }
    if (!strcmp(fmt, "file")) {
        opts = json_pack("{s:s, s:b, s:s}", "driver", "file", "read-only", 1,
                         "filename", path);
    } else {
        opts = json_pack("{s:s, s:b, s:{s:s, s:s}}", "driver", fmt,
                         "read-only", 1, "file", "driver", "file",
                         "filename", path);
    }
    node = block_node_new(opts, &e);
    json_decref(opts);
    block_node_unref(node);
    return e;
}

/*
 * What qemu-img check opens besides the image file: the backing chain
 * (read-only, through the same drivers as every other open, the way the
 * driver opens it) and the external data file.  One that is missing or
 * cannot be opened makes the image unusable, so it is "could not check"
 * (exit 1) here too, never "no errors".  The header itself is validated by
 * the driver's check with the decoder open uses.
 */
static int
check_needed_files(const struct check_args *a)
{
    CLEANUP_FREE char *backing = NULL;
    CLEANUP_FREE char *data = NULL;
    struct block_image_info h;
    struct err *e = NULL;

    if (!block_has_header_info(a->fmt)) {
        return 0;
    }
    if (!img_header_info(a->filename, a->fmt, &h, &e)) {
        img_report(e);
        return -EINVAL;
    }
    if (h.backing_file) {
        backing = img_backing_path(a->filename, h.backing_file);
        e = open_needed(h.backing_fmt ? h.backing_fmt
                                      : block_probe_file(backing), backing);
        if (e) {
            err_prepend(&e, "Could not open backing file: ");
        }
    }
    if (!e && h.data_file) {
        data = img_backing_path(a->filename, h.data_file);
        e = open_needed("file", data);
    }
    block_image_info_clear(&h);
    if (e) {
        err_prepend(&e, "Could not open '%s': ", a->filename);
        img_report(e);
        return -EINVAL;
    }
    return 0;
}

/* One run of the check on a freshly opened file node. */
static int
check_run(const struct check_args *a, unsigned fix,
          struct block_check_result *r)
{
    struct err *e = NULL;
    struct img img;
    int ret;

    if (!img_open(&img, a->filename, "file", fix != 0, &e)) {
        img_report(e);
        return -EIO;
    }
    ret = block_check(a->fmt, block_handle_node(img.h), fix, stderr, r, &e);
    img_close(&img);
    if (ret < 0) {
        err_prepend(&e, "Could not open '%s': ", a->filename);
        img_report(e);
    }
    return ret;
}

/*
 * A backing chain that loops or is too deep makes the image unusable:
 * qemu-img (which opens the chain) cannot open such an image, and neither
 * can we, so say so as it does for an image it cannot open instead of
 * calling the image clean.  Found from the headers before
 * check_needed_files() opens the chain, for qemu-img's message.
 */
static bool
check_chain(const struct check_args *a)
{
    struct err *e = NULL;

    if (img_backing_chain_ok(a->filename, a->fmt, &e)) {
        return true;
    }
    err_prepend(&e, "Could not open '%s': Could not open backing file: ",
                a->filename);
    img_report(e);
    return false;
}

static int
check_with_repair(const struct check_args *a, struct block_check_result *r)
{
    int64_t lf, cf;
    int ret = check_run(a, a->fix, r);

    if (ret < 0 || !a->fix || (!r->leaks_fixed && !r->corruptions_fixed)) {
        return ret;
    }
    if (!a->json && !a->quiet) {
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRId64 " leaked clusters\n    %" PRId64
               " corruptions\n\nDouble checking the fixed image now...\n",
               r->leaks_fixed, r->corruptions_fixed);
    }
    lf = r->leaks_fixed;
    cf = r->corruptions_fixed;
    ret = check_run(a, 0, r);
    r->leaks_fixed = lf;
    r->corruptions_fixed = cf;
    return ret;
}

int
img_cmd_check(int argc, char **argv)
{
    struct check_args a = { 0 };
    struct block_check_result r;

    if (check_parse(argc, argv, &a) < 0) {
        return img_usage_error("check", NULL);
    }
    a.fmt = a.fmt ? a.fmt : block_probe_file(a.filename);
    if (!block_can_check(a.fmt)) {
        return check_other_format(&a);
    }
    if (!check_chain(&a)) {
        return 1;
    }
    if (check_needed_files(&a) < 0 || check_with_repair(&a, &r) < 0) {
        return 1;
    }
    if (a.json) {
        print_json(&a, &r);
    } else if (!a.quiet) {
        print_human(&r);
    }
    fflush(stdout);
    if (r.check_errors) {
        img_error("Check failed");
        return 1;
    }
    return r.corruptions ? 2 : r.leaks ? 3 : 0;
}
