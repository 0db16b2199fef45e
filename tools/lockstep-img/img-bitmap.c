/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img bitmap: change the persistent dirty bitmaps of a qcow2
 * image offline, as qemu-img bitmap does.  The actions run in the order
 * given on one bitmap; the image is opened read-write through the qcow2
 * driver, which loads its bitmaps at open and stores them at close
 * (docs/qcow2.md, "Persistent bitmaps").  --merge takes its source from
 * the same image, or from another one with -b FILE [-F FMT].
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

enum bitmap_act {
    ACT_ADD,
    ACT_REMOVE,
    ACT_CLEAR,
    ACT_ENABLE,
    ACT_DISABLE,
    ACT_MERGE,
};

static const char *const act_names[] = {
    [ACT_ADD] = "add", [ACT_REMOVE] = "remove", [ACT_CLEAR] = "clear",
    [ACT_ENABLE] = "enable", [ACT_DISABLE] = "disable",
    [ACT_MERGE] = "merge",
};

struct action {
    enum bitmap_act act;
    const char *src;            /* --merge SOURCE */
};

struct bitmap_args {
    struct action *acts;
    size_t n;
    const char *fmt, *src_file, *src_fmt;
    uint64_t granularity;       /* 0: the default */
    bool add, merge;
    const char *filename, *bitmap;
};

enum {
    OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE,
    OPT_MERGE,
};

static void
push(struct bitmap_args *a, enum bitmap_act act, const char *src)
{
    a->acts = xrealloc(a->acts, (a->n + 1) * sizeof(*a->acts));
    a->acts[a->n++] = (struct action){ act, src };
}

/* Returns 0, or -1 after printing qemu-img's message. */
static int
parse(int argc, char **argv, struct bitmap_args *a)
{
    static const struct option longopts[] = {
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:b:F:g:", longopts, NULL)) !=
           -1) {
        switch (opt) {
        case 'f': a->fmt = optarg; break;
        case 'b': a->src_file = optarg; break;
        case 'F': a->src_fmt = optarg; break;
        case 'g':
            if (!img_parse_size(optarg, &a->granularity)) {
                img_error("Invalid granularity specified. You may use k, M, "
                          "G, T, P or E suffixes for");
                img_error("kilobytes, megabytes, gigabytes, terabytes, "
                          "petabytes and exabytes.");
                return -1;
            }
            break;
        case OPT_ADD: push(a, ACT_ADD, NULL); a->add = true; break;
        case OPT_REMOVE: push(a, ACT_REMOVE, NULL); break;
        case OPT_CLEAR: push(a, ACT_CLEAR, NULL); break;
        case OPT_ENABLE: push(a, ACT_ENABLE, NULL); break;
        case OPT_DISABLE: push(a, ACT_DISABLE, NULL); break;
        case OPT_MERGE: push(a, ACT_MERGE, optarg); a->merge = true; break;
        default:
            img_usage_error("bitmap", NULL);
            return -1;
        }
    }
    /* qemu-img's checks, in its order. */
    if (a->n == 0) {
        img_error("Need at least one of --add, --remove, --clear, "
                  "--enable, --disable, or --merge");
        return -1;
    }
    if (a->granularity && !a->add) {
        img_error("granularity only supported with --add");
        return -1;
    }
    if (a->src_fmt && !a->src_file) {
        img_error("-F only supported with -b");
        return -1;
    }
    if (a->src_file && !a->merge) {
        img_error("Merge bitmap source file only supported with --merge");
        return -1;
    }
    if (argc - optind != 2) {
        img_error("Expecting filename and bitmap name");
        return -1;
    }
    a->filename = argv[optind];
    a->bitmap = argv[optind + 1];
    return 0;
}

static struct block_dirty_bitmap *
find(struct block_node *node, const char *name, struct err **errp)
{
    struct block_dirty_bitmap *bm = block_dirty_bitmap_find(node, name);

    if (!bm) {
        err_setf(errp, "Dirty bitmap '%s' not found", name);
    }
    return bm;
}

static bool
do_add(struct block_node *node, const char *name, uint64_t gran,
       struct err **errp)
{
    struct block_dirty_bitmap *bm;

    if (gran && (!is_power_of_2(gran) || gran < 512)) {
        err_setf(errp, "Granularity must be power of 2 and at least 512");
        return false;
    }
    bm = block_dirty_bitmap_create(node, name, gran, errp);
    if (!bm) {
        return false;
    }
    if (!block_dirty_bitmap_can_store(node, name,
                                      block_dirty_bitmap_granularity(bm),
                                      errp)) {
        block_dirty_bitmap_release(bm);
        return false;
    }
    block_dirty_bitmap_set_persistent(bm, true);
    return true;
}

static bool
do_merge(struct block_node *node, struct block_node *src_node,
         const char *src, const char *name, struct err **errp)
{
    struct block_dirty_bitmap *dst = find(node, name, errp);
    struct block_dirty_bitmap *from;

    if (!dst || !block_dirty_bitmap_check_writable(dst, errp)) {
        return false;
    }
    from = find(src_node, src, errp);
    if (!from) {
        return false;
    }
    if (block_dirty_bitmap_inconsistent(from)) {
        err_setf(errp, "Bitmap '%s' is inconsistent and cannot be used",
                 src);
        return false;
    }
    return block_dirty_bitmap_merge_any(dst, from, errp);
}

static bool
run_action(const struct bitmap_args *a, const struct action *act,
           struct block_node *node, struct block_node *src_node,
           struct err **errp)
{
    struct block_dirty_bitmap *bm = NULL;

    if (act->act == ACT_ADD) {
        return do_add(node, a->bitmap, a->granularity, errp);
    }
    if (act->act == ACT_MERGE) {
        return do_merge(node, src_node, act->src, a->bitmap, errp);
    }
    bm = find(node, a->bitmap, errp);
    if (!bm) {
        return false;
    }
    switch (act->act) {
    case ACT_REMOVE:
        if (!block_dirty_bitmap_inconsistent(bm) &&
            !block_dirty_bitmap_check_writable(bm, errp)) {
            return false;
        }
        if (block_dirty_bitmap_remove_stored(bm, errp) < 0) {
            return false;
        }
        block_dirty_bitmap_release(bm);
        return true;
    case ACT_CLEAR:
        if (!block_dirty_bitmap_check_writable(bm, errp)) {
            return false;
        }
        block_dirty_bitmap_clear(bm);
        return true;
    case ACT_ENABLE:
    case ACT_DISABLE:
        if (block_dirty_bitmap_inconsistent(bm)) {
            err_setf(errp, "Bitmap '%s' is inconsistent and cannot be "
                     "used", a->bitmap);
            return false;
        }
        if (act->act == ACT_ENABLE) {
            block_dirty_bitmap_enable(bm);
        } else {
            block_dirty_bitmap_disable(bm);
        }
        return true;
    default:
        return false;
    }
}

int
img_cmd_bitmap(int argc, char **argv)
{
    struct bitmap_args a = { 0 };
    struct img img, src = { 0 };
    struct err *e = NULL;
    int ret = 1;

    if (parse(argc, argv, &a) < 0) {
        free(a.acts);
        return 1;
    }
    if (!img_open(&img, a.filename, a.fmt, true, &e)) {
        img_report(e);
        free(a.acts);
        return 1;
    }
    if (a.src_file && !img_open(&src, a.src_file, a.src_fmt, false, &e)) {
        img_report(e);
        goto out;
    }
    for (size_t i = 0; i < a.n; i++) {
        if (!run_action(&a, &a.acts[i], img.node,
                        src.node ? src.node : img.node, &e)) {
            err_prepend(&e, "Operation %s on bitmap %s failed: ",
                        act_names[a.acts[i].act], a.bitmap);
            img_report(e);
            goto out;
        }
    }
    ret = 0;

out:
    if (src.node) {
        img_close(&src);
    }
    img_close(&img);
    free(a.acts);
    return ret;
}
