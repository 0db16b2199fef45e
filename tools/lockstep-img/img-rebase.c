/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img rebase: give an image (qcow2) another backing file.
 *
 * Safe mode (default): wherever the image itself holds nothing, the old
 * and the new backing file are compared, and what differs is copied from
 * the old one into the image first, so what the image reads does not
 * change.  Only then is the header rewritten: a crash before leaves the
 * old chain intact, with some data copied up.  -u (unsafe) only rewrites
 * the header, e.g. after a backing file was moved.  -b "" removes the
 * backing file (safe mode copies everything it showed).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "util.h"

struct rebase_args {
    const char *fmt;
    const char *backing;      /* -b: the name to store ("" removes it) */
    const char *backing_fmt;  /* -F */
    bool unsafe;
    bool progress;
    bool quiet;
    const char *filename;
};

static int
rebase_parse(int argc, char **argv, struct rebase_args *a)
{
    static const struct option longopts[] = {
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:F:b:upqt:T:U", longopts,
                              NULL)) != -1) {
        switch (opt) {
        case 'f': a->fmt = optarg; break;
        case 'F': a->backing_fmt = optarg; break;
        case 'b': a->backing = optarg; break;
        case 'u': a->unsafe = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 't': case 'T': break;      /* cache modes: ours need none */
        case 'U': img_force_share = true; break;
        default: return -1;
        }
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return -1;
    }
    if (!a->unsafe && !a->backing) {
        img_error("Must specify backing file (-b) or use unsafe mode (-u)");
        return -1;
    }
    a->filename = argv[optind];
    return 0;
}

/* ---- The header ---------------------------------------------------------- */

/* Store the new backing name and format in filename's header, through the
 * format driver's change_backing_file hook. */
static int
set_backing(const char *filename, const char *fmt, const char *name,
            const char *backing_fmt, struct err **errp)
{
    struct img file;
    int ret;

    if (!img_open(&file, filename, "file", true, errp)) {
        return -EIO;
    }
    ret = block_change_backing_file(fmt, file.node, name, backing_fmt, errp);
    img_close(&file);
    return ret;
}

/* ---- Copying what would change ----------------------------------------- */

/* Read [off, +n) of node (NULL or past its end: zeroes). */
static int
read_or_zero(struct block_node *node, int64_t size, uint64_t off,
             uint64_t n, uint8_t *buf)
{
    uint64_t have = node && (int64_t)off < size
                    ? MIN(n, (uint64_t)size - off) : 0;
    int ret = 0;

    memset(buf + have, 0, n - have);
    if (have) {
        block_graph_enter();
        ret = block_pread(node, off, have, buf, 0);
        block_graph_leave();
    }
    return ret;
}

/* Length of the run at the start of a and b that is equal (eq) or not. */
static uint64_t
run_length(const uint8_t *a, const uint8_t *b, uint64_t n, bool *eq)
{
    const uint64_t sector = 512;
    uint64_t i;

    *eq = !memcmp(a, b, MIN(sector, n));
    for (i = MIN(sector, n); i < n; i += MIN(sector, n - i)) {
        if (!memcmp(a + i, b + i, MIN(sector, n - i)) != *eq) {
            break;
        }
    }
    return i;
}

static int
copy_differences(struct img *top, struct block_node *old_b,
                 struct block_node *new_b, bool progress)
{
    int64_t size = block_handle_getlength(top->h);
    int64_t old_size = old_b ? block_getlength(old_b) : 0;
    int64_t new_size = new_b ? block_getlength(new_b) : 0;
    CLEANUP_FREE uint8_t *bold = img_buf_alloc(IMG_CHUNK);
    CLEANUP_FREE uint8_t *bnew = img_buf_alloc(IMG_CHUNK);
    struct img_progress prog;
    uint64_t n;
    int ret = 0;

    if (size < 0 || old_size < 0 || new_size < 0) {
        img_error("Could not get size of '%s': %s", top->filename,
                  strerror((int)-MIN(size, MIN(old_size, new_size))));
        return -EIO;
    }
    img_progress_start(&prog, progress);
    for (uint64_t off = 0; off < (uint64_t)size; off += n) {
        n = MIN(IMG_CHUNK, (uint64_t)size - off);
        ret = block_is_allocated(top->node, off, n, &n);
        if (ret < 0) {
            img_error("error while reading image metadata: %s",
                      strerror(-ret));
            break;
        }
        if (ret) {
            continue;
        }
        ret = read_or_zero(old_b, old_size, off, n, bold);
        if (ret < 0) {
            img_error("error while reading from old backing file");
            break;
        }
        ret = read_or_zero(new_b, new_size, off, n, bnew);
        if (ret < 0) {
            img_error("error while reading from new backing file");
            break;
        }
        for (uint64_t done = 0, len; done < n && ret >= 0; done += len) {
            bool eq;

            len = run_length(bold + done, bnew + done, n - done, &eq);
            if (eq) {
                continue;
            }
            ret = buffer_is_zero(bold + done, len)
                  ? block_handle_pwrite_zeroes(top->h, off + done, len, 0)
                  : block_handle_pwrite(top->h, off + done, len,
                                        bold + done, 0);
            if (ret < 0) {
                img_error("Error while writing to COW image: %s",
                          strerror(-ret));
            }
        }
        if (ret < 0) {
            break;
        }
        img_progress_update(&prog, (off + n) * 100.0 / size);
    }
    img_progress_end(&prog);
    return ret < 0 ? ret : block_handle_flush(top->h);
}

static int
rebase_safe(const struct rebase_args *a)
{
    struct img top, nb = { 0 };
    struct block_node *old_b;
    struct err *e = NULL;
    int ret;

    if (!img_open(&top, a->filename, a->fmt, true, &e)) {
        img_report(e);
        return -EIO;
    }
    old_b = top.node->backing ? top.node->backing->node : NULL;
    if (a->backing[0]) {
        CLEANUP_FREE char *path = img_backing_path(a->filename, a->backing);

        if (!img_open(&nb, path, a->backing_fmt, false, &e)) {
            CLEANUP_FREE char *mine = xasprintf("Could not open '%s': ",
                                                path);
            CLEANUP_FREE char *msg = xstrdup(e->msg);

            /* qemu-img's words: the driver's error without our prefix. */
            if (!strncmp(msg, mine, strlen(mine))) {
                free(e->msg);
                e->msg = xstrdup(msg + strlen(mine));
            }
            err_prepend(&e, "Could not open new backing file '%s': ",
                        a->backing);
            img_report(e);
            img_close(&top);
            return -EIO;
        }
    }
    ret = copy_differences(&top, old_b, nb.node, a->progress && !a->quiet);
    if (nb.node) {
        img_close(&nb);
    }
    img_close(&top);
    return ret;
}

/* A format QEMU knows: the name may be stored even if we cannot open it. */
static bool
known_format(const char *fmt)
{
    static const char *const qemu_formats[] = {
        "host_device", "host_cdrom", "qcow", "vmdk", "vdi", "vpc", "vhdx",
        "qed", "luks", "parallels", "bochs", "cloop", "dmg", "vvfat", NULL,
    };

    for (size_t i = 0; qemu_formats[i]; i++) {
        if (!strcmp(fmt, qemu_formats[i])) {
            return true;
        }
    }
    return block_driver_find(fmt) != NULL;
}

static const char *
fmt_of(const char *filename, const char *fmt)
{
    return fmt ? fmt : block_probe_file(filename);
}

int
img_cmd_rebase(int argc, char **argv)
{
    struct rebase_args a = { 0 };
    struct err *e = NULL;
    const char *name, *fmt;
    int ret;

    if (rebase_parse(argc, argv, &a) < 0) {
        return img_usage_error("rebase", NULL);
    }
    if (a.backing_fmt && !known_format(a.backing_fmt)) {
        img_error("Invalid format name: '%s'", a.backing_fmt);
        return 1;
    }
    fmt = fmt_of(a.filename, a.fmt);
    if (!block_can_change_backing_file(fmt)) {
        struct img img;

        if (!img_open(&img, a.filename, a.fmt, true, &e)) {
            img_report(e);
            return 1;
        }
        img_close(&img);
        img_error("Could not change the backing file to '%s': Operation "
                  "not supported", a.backing ? a.backing : "");
        return 1;
    }
    if (!a.unsafe && rebase_safe(&a) < 0) {
        return 1;
    }
    name = a.backing && a.backing[0] ? a.backing : NULL;
    if (name && !a.backing_fmt) {
        img_error("Could not change the backing file to '%s': backing "
                  "format must be specified", name);
        return 1;
    }
    ret = set_backing(a.filename, fmt, name, a.backing_fmt, &e);
    if (ret == -ENOSPC) {
        err_free(e);
        img_error("Could not change the backing file to '%s': No space "
                  "left in the file header", name ? name : "");
        return 1;
    }
    if (ret < 0) {
        err_prepend(&e, "Could not change the backing file to '%s': ",
                    name ? name : "");
        img_report(e);
        return 1;
    }
    return 0;
}
