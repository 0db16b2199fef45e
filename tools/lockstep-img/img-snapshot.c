/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img snapshot: list, create, apply or delete the internal
 * snapshots of an image (qcow2), as qemu-img snapshot does.  The work is
 * the format driver's (its snapshot hooks, through block_snapshot_*());
 * this file parses the options and prints qemu-img's messages.  Formats
 * without internal snapshots: -l lists none, the others fail as
 * qemu-img's do.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "util.h"

enum sn_action { SN_LIST, SN_CREATE, SN_APPLY, SN_DELETE };

struct sn_args {
    enum sn_action act;
    bool have_act;
    const char *name;
    const char *fmt;
    const char *filename;
    bool image_opts;
    bool quiet;
};

static int
set_action(struct sn_args *a, enum sn_action act, const char *name)
{
    if (a->have_act) {
        img_error("Cannot mix '-l', '-a', '-c', '-d'");
        fprintf(stderr, "Try '%s --help' for more information\n", IMG_PROG);
        return -1;
    }
    a->have_act = true;
    a->act = act;
    a->name = name;
    return 0;
}

static int
parse(int argc, char **argv, struct sn_args *a)
{
    enum { OPT_IMAGE_OPTS = 256, OPT_OBJECT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "object", required_argument, NULL, OPT_OBJECT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts,
                              NULL)) != -1) {
        switch (opt) {
        case 'l':
            if (set_action(a, SN_LIST, NULL) < 0) {
                return -1;
            }
            break;
        case 'a':
        case 'c':
        case 'd':
            if (set_action(a, opt == 'a' ? SN_APPLY
                              : opt == 'c' ? SN_CREATE : SN_DELETE,
                           optarg) < 0) {
                return -1;
            }
            break;
        case 'f': a->fmt = optarg; break;
        case 'q': a->quiet = true; break;
        case 'U': img_force_share = true; break;
        case OPT_IMAGE_OPTS: a->image_opts = true; break;
        case OPT_OBJECT:
            img_error("--object is not supported");
            return -1;
        case 'h':
            img_cmd_help("snapshot");
            exit(0);
        case ':':
            img_usage_error("snapshot", "option requires an argument");
            return -1;
        default:
            img_usage_error("snapshot", "invalid option");
            return -1;
        }
    }
    if (optind != argc - 1) {
        img_usage_error("snapshot", "Expecting one image file name");
        return -1;
    }
    a->filename = argv[optind];
    return 0;
}

/* The snapshots as query-block's ImageInfo lists them. */
static json_t *
to_json(const struct block_snapshot *sn, size_t n)
{
    json_t *list = json_array();

    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        uint64_t icount = sn[i].icount;

        if (icount != UINT64_MAX) {
            json_object_set_new(o, "icount",
                                json_integer((json_int_t)icount));
        }
        json_object_set_new(o, "id", json_string(sn[i].id));
        json_object_set_new(o, "name", json_string(sn[i].name));
        json_object_set_new(o, "vm-state-size",
                            json_integer((json_int_t)sn[i].vm_state_size));
        json_object_set_new(o, "date-sec", json_integer(sn[i].date_sec));
        json_object_set_new(o, "date-nsec", json_integer(sn[i].date_nsec));
        json_object_set_new(o, "vm-clock-sec",
                            json_integer((json_int_t)(sn[i].vm_clock_nsec /
                                                      1000000000)));
        json_object_set_new(o, "vm-clock-nsec",
                            json_integer((json_int_t)(sn[i].vm_clock_nsec %
                                                      1000000000)));
        json_array_append_new(list, o);
    }
    return list;
}

static int
do_list(struct block_node *node, struct err **errp)
{
    struct block_snapshot *sn;
    size_t n;
    json_t *list;

    if (!block_has_snapshots(node)) {
        return 0;           /* qemu-img: no snapshots, nothing printed */
    }
    if (block_snapshot_list(node, &sn, &n, errp) < 0) {
        return -1;
    }
    if (n) {
        list = to_json(sn, n);
        img_print_snapshots(list);
        json_decref(list);
    }
    block_snapshots_free(sn, n);
    return 0;
}

/* Returns 0, or 1 after printing qemu-img's message. */
static int
run(const struct sn_args *a, struct block_node *node)
{
    struct err *e = NULL;
    int ret;

    switch (a->act) {
    case SN_LIST:
        if (do_list(node, &e) < 0) {
            img_report(e);
            return 1;
        }
        return 0;
    case SN_CREATE:
        if (!block_has_snapshots(node)) {
            img_error("Could not create snapshot '%s': %d (%s)", a->name,
                      -ENOTSUP, strerror(ENOTSUP));
            return 1;
        }
        ret = block_snapshot_create(node, a->name, &e);
        if (ret < 0) {
            err_prepend(&e, "Could not create snapshot '%s': ", a->name);
            img_report(e);
            return 1;
        }
        return 0;
    case SN_APPLY:
        ret = -ENOTSUP;
        if (block_has_snapshots(node)) {
            ret = block_snapshot_goto(node, a->name, &e);
        } else {
            err_setf(&e, "Failed to load snapshot: %s", strerror(ENOTSUP));
        }
        if (ret < 0) {
            err_prepend(&e, "Could not apply snapshot '%s': ", a->name);
            img_report(e);
            return 1;
        }
        return 0;
    case SN_DELETE:
        ret = -ENOENT;
        if (block_has_snapshots(node)) {
            ret = block_snapshot_delete(node, a->name, &e);
        } else {
            err_setf(&e, "snapshot not found");
        }
        if (ret < 0) {
            err_prepend(&e, "Could not delete snapshot '%s': ", a->name);
            img_report(e);
            return 1;
        }
        return 0;
    }
    return 1;
}

int
img_cmd_snapshot(int argc, char **argv)
{
    struct sn_args a = { 0 };
    struct err *e = NULL;
    struct img img;
    bool writable;
    bool ok;
    int ret;

    if (parse(argc, argv, &a) < 0) {
        return 1;
    }
    writable = a.have_act && a.act != SN_LIST;
    ok = a.image_opts ? img_open_opts(&img, a.filename, writable, &e)
                      : img_open(&img, a.filename, a.fmt, writable, &e);
    if (!ok) {
        img_report(e);
        return 1;
    }
    ret = run(&a, img.node);
    img_close(&img);
    return ret;
}
