/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img: a qemu-img compatible image tool (create, info, check,
 * map, compare, commit, convert, dd, rebase, resize, amend, bitmap,
 * snapshot).  Each subcommand lives in its own
 * img-*.c file and is listed in the table below; this file holds main(),
 * the help texts and the helpers every subcommand shares.  Output, exit
 * codes and messages follow qemu-img 7.2 so that scripts written for
 * qemu-img keep working, with "lockstep-img: " where qemu-img prints
 * "qemu-img: ".  Images are opened as block nodes and all I/O goes through
 * block handles.
 */
#include <ctype.h>
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "img.h"
#include "keyval.h"
#include "util.h"

#ifndef LOCKSTEP_VERSION
#define LOCKSTEP_VERSION "0.1.0"
#endif

const char *img_prog = "lockstep-img";

/* The most of a file's head we read: cluster 0 of the largest clusters. */

static const struct img_cmd img_cmds[] = {
    { "amend", img_cmd_amend,
      "amend [-q] [-f FMT] -o OPTIONS FILENAME",
      "  -f FMT           image format (default: probed)\n"
      "  -o OPTIONS       creation options to change\n"
      "Not supported yet: refused with an error (raw has no options).\n" },
    { "bitmap", img_cmd_bitmap,
      "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | "
      "--disable)... [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] "
      "[-f FMT] FILENAME BITMAP",
      "  --add            add BITMAP, persistent and recording\n"
      "  -g GRANULARITY   with --add: bytes per bit (power of 2, >= 512;\n"
      "                   k, M, G suffixes; default: the cluster size,\n"
      "                   4k..64k)\n"
      "  --remove         remove BITMAP from the image\n"
      "  --clear          clear all its bits\n"
      "  --enable         make it record writes\n"
      "  --disable        stop it recording\n"
      "  --merge SOURCE   add the bits of bitmap SOURCE (of FILENAME, or of\n"
      "                   -b SOURCE_FILE, format -F SOURCE_FMT)\n"
      "  -f FMT           image format (default: probed)\n"
      "Actions run in the order given.\n" },
    { "check", img_cmd_check,
      "check [-q] [-f FMT] [-T SRC_CACHE] [--output=human|json] "
      "[-r leaks|all] FILENAME",
      "  -f FMT           image format (default: probed)\n"
      "  -T SRC_CACHE     cache mode: none (O_DIRECT), writeback (default)\n"
      "                   or unsafe (flushes ignored)\n"
      "  -r leaks|all     repair leaks only, or leaks and corruptions\n"
      "                   (refcounts, COPIED flags, a broken refcount\n"
      "                   structure; bad L1/L2 entries stay reported)\n"
      "  -U               share the image with its other users\n"
      "  --output=FMT     human (default) or json\n"
      "  -q               quiet\n"
      "Exit status: 0 consistent, 1 check failed, 2 corruptions, 3 leaks,\n"
      "63 the format has no check.\n" },
    { "commit", img_cmd_commit,
      "commit [-q] [-f FMT] [-t CACHE] [-b BASE] [-d] [-p] [--image-opts] "
      "FILENAME",
      "  -f FMT           format of FILENAME (default: probed)\n"
      "  --image-opts     FILENAME is the top image's options, key=value or\n"
      "                   JSON, its layers' \"backing\" inline (the headers\n"
      "                   name the rest)\n"
      "  -t CACHE         cache mode of every image (see check -T)\n"
      "  -b BASE          commit into BASE (default: the backing file)\n"
      "  -d               do not empty FILENAME afterwards\n"
      "  -p               show progress\n" },
    { "compare", img_cmd_compare,
      "compare [-f FMT] [-F FMT] [-T SRC_CACHE] [-p] [-q] [-s] FILENAME1 "
      "FILENAME2",
      "  -f FMT, -F FMT   formats of the first and second image\n"
      "  -T SRC_CACHE     cache mode of both (see check -T)\n"
      "  -s               strict: sizes and allocation must match too\n"
      "  -p               show progress\n"
      "Exit status: 0 identical, 1 different, 2 error.\n" },
    { "convert", img_cmd_convert,
      "convert [-p] [-q] [-n] [-c] [-S SPARSE_SIZE] [--target-is-zero] "
      "[-f FMT] [-O OUTPUT_FMT] [-B BACKING_FILE -F BACKING_FMT] "
      "[-o OPTIONS] [--bitmaps [--skip-broken-bitmaps]] [-t CACHE] "
      "[-T SRC_CACHE] [-l SNAPSHOT_PARAM] FILENAME OUTPUT_FILENAME",
      "  -f FMT           source format (default: probed)\n"
      "  -l SNAPSHOT      copy an internal snapshot of the (qcow2) source:\n"
      "                   ID or name, or snapshot.id=ID,snapshot.name=NAME\n"
      "  -t, -T CACHE     cache mode of the output and of the source\n"
      "                   (see check -T)\n"
      "  -O FMT           output format (default: raw)\n"
      "  -o OPTIONS       creation options of the output format\n"
      "  -n               write into the existing OUTPUT_FILENAME\n"
      "  -c               compressed clusters (qcow2 output)\n"
      "  -S SIZE          zero runs of SIZE bytes (default 4k) stay sparse;\n"
      "                   0 allocates everything\n"
      "  -B FILE -F FMT   output with backing file FILE: copies only what\n"
      "                   the source's top image holds\n"
      "  --target-is-zero with -n: the target reads as zeroes already\n"
      "  --bitmaps        copy the persistent bitmaps (qcow2 to qcow2)\n"
      "  --skip-broken-bitmaps  with --bitmaps: leave inconsistent ones\n"
      "  -p               show progress\n"
      "Names may be NBD URLs (nbd://HOST:PORT/EXPORT,\n"
      "nbd+unix:///EXPORT?socket=PATH) in every command.\n" },
    { "create", img_cmd_create,
      "create [-q] [-f FMT] [-b BACKING_FILE [-F BACKING_FMT]] [-o OPTIONS] "
      "[-t CACHE] FILENAME [SIZE]",
      "  -f FMT           qcow2 or raw (default: raw)\n"
      "  -t CACHE         cache mode of the new file (see check -T; not in\n"
      "                   qemu-img)\n"
      "  -b FILE, -F FMT  backing file and its format (qcow2)\n"
      "  -o OPTIONS       cluster_size, refcount_bits, extended_l2,\n"
      "                   preallocation, backing_file, backing_fmt, compat\n"
      "SIZE takes k, M, G, T suffixes; it defaults to the backing file's.\n" },
    { "dd", img_cmd_dd,
      "dd [-U] [-f FMT] [-O OUTPUT_FMT] [bs=BLOCK_SIZE] [count=BLOCKS] "
      "[skip=BLOCKS] if=INPUT of=OUTPUT",
      "  -f FMT           input format (default: probed)\n"
      "  -O FMT           output format (default: raw), created anew\n"
      "  bs=SIZE          block size (default 512; k, M, G suffixes)\n"
      "  count=N          copy at most N blocks\n"
      "  skip=N           skip N blocks of the input\n" },
    { "info", img_cmd_info,
      "info [-f FMT] [--output=human|json] [--backing-chain] FILENAME",
      "  -f FMT           image format (default: probed)\n"
      "  --output=FMT     human (default) or json\n"
      "  --backing-chain  describe every image of the backing chain\n" },
    { "map", img_cmd_map,
      "map [-f FMT | --image-opts] [-T SRC_CACHE] [--output=human|json] "
      "[-s OFFSET] [-l LENGTH] FILENAME",
      "  -f FMT           image format (default: probed)\n"
      "  --image-opts     FILENAME is an option string (driver=...)\n"
      "  -T SRC_CACHE     cache mode (see check -T; not in qemu-img)\n"
      "  --output=FMT     human (default) or json\n"
      "  -s, --start-offset=OFFSET  first byte to describe\n"
      "  -l, --max-length=LENGTH    bytes to describe at most\n" },
    { "measure", img_cmd_measure,
      "measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS] "
      "[--size N | [-f FMT | --image-opts] FILENAME]",
      "  -O OUTPUT_FMT    format of the new image: raw (default) or qcow2\n"
      "  -o OPTIONS       its creation options (cluster_size, preallocation,\n"
      "                   backing_file, compat, extended_l2, refcount_bits)\n"
      "  --size N         measure a new empty image of N bytes\n"
      "  -f FMT           format of FILENAME (default: probed)\n"
      "  --image-opts     FILENAME is an option string (driver=...)\n"
      "  --output=FMT     human (default) or json\n"
      "Prints the size of the file the image would need right after\n"
      "create or convert, and fully allocated.\n" },
    { "rebase", img_cmd_rebase,
      "rebase [-q] [-p] [-U] [-f FMT] [-u] -b BACKING_FILE [-F BACKING_FMT] "
      "FILENAME",
      "  -f FMT           format of FILENAME (default: probed; qcow2 only)\n"
      "  -b BACKING_FILE  the new backing file (\"\": none), stored as\n"
      "                   given; relative names are relative to FILENAME\n"
      "  -F BACKING_FMT   its format (needed with a backing file)\n"
      "  -u               unsafe: only rewrite the header, copy nothing\n"
      "  -p               show progress\n"
      "Safe mode copies into FILENAME whatever would read differently\n"
      "through the new backing file, then rewrites the header.\n" },
    { "resize", img_cmd_resize,
      "resize [-q] [-f FMT] [-t CACHE] [--preallocation=MODE] [--shrink] "
      "FILENAME [+|-]SIZE",
      "  -f FMT           image format (default: probed)\n"
      "  -t CACHE         cache mode (see check -T; not in qemu-img)\n"
      "  --preallocation=MODE  off (default), falloc or full: allocate\n"
      "                   the new end in the file (raw images on a file)\n"
      "  --shrink         allow the image to get smaller\n" },
    { "snapshot", img_cmd_snapshot,
      "snapshot [-U] [-q] [-f FMT] [--image-opts] [-l | -a SNAPSHOT | "
      "-c SNAPSHOT | -d SNAPSHOT] FILENAME",
      "  -l               list the internal snapshots (the default)\n"
      "  -c SNAPSHOT      create a snapshot named SNAPSHOT\n"
      "  -a SNAPSHOT      apply (revert the disk to) a snapshot, by ID or "
      "name\n"
      "  -d SNAPSHOT      delete a snapshot, by ID or name\n"
      "Internal snapshots are a qcow2 feature; the VM state is never "
      "written.\n" },
    { NULL, NULL, NULL, NULL },
};

/* ---- Messages ------------------------------------------------------------ */

/*
 * Messages go to stderr without flushing stdout first, as qemu-img's do:
 * when stdout is a pipe, what it printed comes after the messages, and
 * scripts (QEMU's iotests) that merge both see qemu-img's order.
 */
void
img_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", IMG_PROG);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void
img_report(struct err *e)
{
    err_report(IMG_PROG, e);
}

int
img_usage_error(const char *cmd, const char *msg)
{
    if (msg) {
        img_error("%s", msg);
    }
    /* qemu-img's hint names no command; "COMMAND --help" works too. */
    (void)cmd;
    fprintf(stderr, "Try '%s --help' for more information\n", IMG_PROG);
    return 1;
}

static const struct img_cmd *
cmd_find(const char *name)
{
    for (const struct img_cmd *c = img_cmds; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

void
img_cmd_help(const char *cmd)
{
    const struct img_cmd *c = cmd_find(cmd);

    printf("usage: %s %s\n\n%s", IMG_PROG, c->synopsis, c->help);
}

static void
usage(FILE *f)
{
    fprintf(f, "%s version %s\n"
            "usage: %s [standard options] command [command options]\n"
            "A qemu-img compatible disk image utility.\n\n"
            "    '-h', '--help'       display this help and exit\n"
            "    '-V', '--version'    output version information and exit\n"
            "\nCommand syntax:\n", IMG_PROG, LOCKSTEP_VERSION, IMG_PROG);
    for (const struct img_cmd *c = img_cmds; c->name; c++) {
        fprintf(f, "  %s\n", c->synopsis);
    }
    fprintf(f, "\nSee '%s COMMAND --help' for the options of a command.\n",
            IMG_PROG);
}

/* ---- Parsing ------------------------------------------------------------- */

/* The binary shift of a size suffix (b, k, M, G, T, P, E), or -1. */
static int
size_shift(char c)
{
    static const char units[] = "bkmgtpe";
    const char *u = c ? strchr(units, tolower((unsigned char)c)) : NULL;

    return u ? (int)(u - units) * 10 : -1;
}

int
img_parse_output(const char *arg, bool *json)
{
    if (strcmp(arg, "json") && strcmp(arg, "human")) {
        img_error("--output must be used with human or json as argument.");
        return -1;
    }
    *json = !strcmp(arg, "json");
    return 0;
}

/*
 * qemu-img's sizes: decimal digits, an optional fraction ("1.5G", only
 * with a unit above bytes) and an optional suffix; at most INT64_MAX.
 */
bool
img_parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v;
    int shift = 0;

    if (!isdigit((unsigned char)*s)) {
        return false;
    }
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || strchr(s, 'x') || strchr(s, 'X')) {
        return false;
    }
    if (*end) {
        shift = size_shift(*end);
        if (shift < 0 || end[1]) {
            return false;
        }
    }
    if (v != (double)(uint64_t)v && shift == 0) {
        return false;
    }
    v = ldexp(v, shift);
    if (v >= 0x1p63) {
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

/* ---- Opening images ---------------------------------------------------- */

bool img_force_share;

static bool
img_attach(struct img *img, const char *filename, bool writable,
           bool share_writes, struct err **errp)
{
    uint32_t perm = BLOCK_PERM_CONSISTENT_READ;
    uint32_t shared = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED;

    if (writable) {
        perm |= BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE;
    } else if (img_force_share) {
        shared = BLOCK_PERM_ALL;
    }
    if (share_writes) {
        shared = BLOCK_PERM_ALL;
    }
    img->h = block_handle_new(img->node, IMG_PROG, perm, shared, errp);
    if (!img->h) {
        err_prepend(errp, "Could not open '%s': ", filename);
        block_node_unref(img->node);
        img->node = NULL;
        return false;
    }
    img->filename = xstrdup(filename);
    return true;
}

/* The protocol node under an image: a file, or an NBD export (NULL with
 * *errp for an NBD name that does not parse). */
static json_t *
protocol_opts(const char *filename, struct err **errp)
{
    if (block_filename_is_nbd_url(filename)) {
        return block_filename_options(filename, errp);
    }
    return json_pack("{s:s, s:s}", "driver", "file", "filename", filename);
}

const char *img_cache;
const char *img_src_cache;

bool
img_set_cache(const char **which, const char *mode)
{
    json_t *o = json_object();
    struct err *e = NULL;
    bool ok = block_opts_set_cache_mode(o, mode, &e) == 0;

    json_decref(o);
    if (!ok) {
        img_report(e);
        return false;
    }
    *which = mode;
    return true;
}

/* -t / -T on the top node of an image about to be opened. */
static bool
apply_cache(json_t *opts, bool writable, struct err **errp)
{
    const char *mode = writable ? img_cache : img_src_cache;

    return !mode || block_opts_set_cache_mode(opts, mode, errp) == 0;
}

/* The graph "-f FMT FILE" means, with -U honoured on read-only opens. */
static json_t *
file_opts(const char *filename, const char *fmt, bool writable,
          struct err **errp)
{
    const struct block_driver *drv = block_driver_find(fmt);
    json_t *o = protocol_opts(filename, errp);

    if (!o) {
        return NULL;
    }
    if (!drv || drv->kind != BLOCK_KIND_PROTOCOL) {
        o = json_pack("{s:s, s:o}", "driver", fmt, "file", o);
    }
    json_object_set_new(o, "read-only", json_boolean(!writable));
    if (!writable && img_force_share) {
        json_object_set_new(o, "force-share", json_true());
    }
    return o;
}

/*
 * "PREFIX:..." names a protocol or a pseudo-file (json:{...},
 * blkdebug:CONF:FILE, null-co://, file:PATH), as in QEMU's tools; NBD URLs
 * have their own path (block_filename_options()).
 */
static bool
is_prefixed_name(const char *filename)
{
    size_t n = strspn(filename, "abcdefghijklmnopqrstuvwxyz"
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");

    return n > 0 && filename[n] == ':' && !block_filename_is_nbd_url(filename);
}

/* A prefixed name, opened (and probed) by the block layer's rules. */
static bool
open_prefixed(struct img *img, const char *filename, const char *fmt,
              bool writable, struct err **errp)
{
    json_t *opts = json_object();
    bool probed_raw;

    if (fmt) {
        json_object_set_new(opts, "driver", json_string(fmt));
    }
    json_object_set_new(opts, "read-only", json_boolean(!writable));
    if (!writable && img_force_share) {
        json_object_set_new(opts, "force-share", json_true());
    }
    if (apply_cache(opts, writable, errp)) {
        img->node = block_open_image(filename, opts, &probed_raw, errp);
    }
    json_decref(opts);
    if (!img->node) {
        err_prepend(errp, "Could not open '%s': ", filename);
        return false;
    }
    img->fmt = xstrdup(img->node->drv->name);
    return img_attach(img, filename, writable, false, errp);
}

bool
img_open(struct img *img, const char *filename, const char *fmt,
         bool writable, struct err **errp)
{
    json_t *opts;

    memset(img, 0, sizeof(*img));
    if (is_prefixed_name(filename)) {
        return open_prefixed(img, filename, fmt, writable, errp);
    }
    if (!fmt) {
        fmt = block_probe_file(filename);
    }
    if (!block_driver_find(fmt)) {
        err_setf(errp, "Could not open '%s': Unknown driver '%s'", filename,
                 fmt);
        return false;
    }
    opts = file_opts(filename, fmt, writable, errp);
    if (opts && apply_cache(opts, writable, errp)) {
        img->node = block_node_new(opts, errp);
    }
    json_decref(opts);
    if (!img->node) {
        err_prepend(errp, "Could not open '%s': ", filename);
        return false;
    }
    img->fmt = xstrdup(fmt);
    return img_attach(img, filename, writable, false, errp);
}

/* PATH and FMT of {"driver": FMT, "file": {"filename": PATH}} or NULL. */
static bool
simple_opts(json_t *o, const char **path, const char **drv)
{
    json_t *file = json_object_get(o, "file");
    const char *key, *fdrv;
    json_t *v;

    json_object_foreach(o, key, v) {
        if (strcmp(key, "driver") && strcmp(key, "file") &&
            strcmp(key, "file.filename") && strcmp(key, "file.driver")) {
            return false;
        }
    }
    *drv = json_string_value(json_object_get(o, "driver"));
    if (json_is_object(file)) {
        json_object_foreach(file, key, v) {
            if (strcmp(key, "driver") && strcmp(key, "filename")) {
                return false;
            }
        }
        *path = json_string_value(json_object_get(file, "filename"));
        fdrv = json_string_value(json_object_get(file, "driver"));
    } else {
        *path = json_string_value(json_object_get(o, "file.filename"));
        fdrv = json_string_value(json_object_get(o, "file.driver"));
    }
    return *drv && *path && (!fdrv || !strcmp(fdrv, "file"));
}

bool
img_simple_name(const char **filename, const char **fmt, bool image_opts)
{
    static char *kept;      /* lives as long as the program's arguments */
    const char *path, *drv;
    json_t *o;
    bool ok;

    if (image_opts) {
        o = keyval_or_json_parse(*filename, "driver", NULL);
    } else if (!strncmp(*filename, "json:", 5)) {
        /* QEMU's JSON: single quotes too, dotted keys. */
        o = block_filename_options(*filename, NULL);
    } else {
        return false;
    }
    ok = o && simple_opts(o, &path, &drv) && (!*fmt || !strcmp(*fmt, drv));
    if (ok) {
        free(kept);
        kept = xasprintf("%s%c%s", path, '\0', drv);
        *filename = kept;
        *fmt = kept + strlen(path) + 1;
    }
    json_decref(o);
    return ok;
}

bool
img_open_opts(struct img *img, const char *str, bool writable,
              struct err **errp)
{
    json_t *opts = keyval_or_json_parse(str, "driver", errp);
    bool probed_raw;

    memset(img, 0, sizeof(*img));
    if (!opts) {
        return false;
    }
    json_object_set_new(opts, "read-only", json_boolean(!writable));
    if (!writable && img_force_share) {
        json_object_set_new(opts, "force-share", json_true());
    }
    if (apply_cache(opts, writable, errp)) {
        img->node = block_open_image(NULL, opts, &probed_raw, errp);
    }
    json_decref(opts);
    if (!img->node) {
        err_prepend(errp, "Could not open '%s': ", str);
        return false;
    }
    img->fmt = xstrdup(img->node->drv->name);
    return img_attach(img, str, writable, false, errp);
}

bool
img_open_json(struct img *img, json_t *opts, const char *filename,
              bool writable, bool share_writes, struct err **errp)
{
    memset(img, 0, sizeof(*img));
    if (apply_cache(opts, writable, errp)) {
        img->node = block_node_new(opts, errp);
    }
    if (!img->node) {
        err_prepend(errp, "Could not open '%s': ", filename);
        return false;
    }
    img->fmt = xstrdup(img->node->drv->name);
    return img_attach(img, filename, writable, share_writes, errp);
}

void
img_close(struct img *img)
{
    if (img->h) {
        block_handle_free(img->h);
    }
    block_node_unref(img->node);
    free(img->filename);
    free(img->fmt);
    memset(img, 0, sizeof(*img));
}

bool
img_chain_visit(struct img_chain *c, const char *name, struct err **errp)
{
    struct stat st;

    if (c->n >= BLOCK_MAX_BACKING_CHAIN) {
        err_setf(errp, "Backing chain deeper than %d images (limit)",
                 BLOCK_MAX_BACKING_CHAIN);
        (*errp)->errnum = ELOOP;
        return false;
    }
    if (stat(name, &st) < 0) {
        return true;    /* not a local file, or missing: opening tells */
    }
    for (size_t i = 0; i < c->n; i++) {
        if (c->ids[i].dev == st.st_dev && c->ids[i].ino == st.st_ino) {
            err_setf(errp, "Backing file '%s' creates an infinite loop.",
                     name);
            (*errp)->errnum = ELOOP;
            return false;
        }
    }
    c->ids = xrealloc(c->ids, (c->n + 1) * sizeof(*c->ids));
    c->ids[c->n].dev = st.st_dev;
    c->ids[c->n].ino = st.st_ino;
    c->n++;
    return true;
}

void
img_chain_free(struct img_chain *c)
{
    free(c->ids);
    memset(c, 0, sizeof(*c));
}

char *
img_backing_path(const char *image, const char *backing)
{
    CLEANUP_FREE char *copy = xstrdup(image);
    const char *dir;

    if (backing[0] == '/' || strstr(backing, "://") ||
        !strncmp(backing, "json:", 5) || !strchr(image, '/')) {
        return xstrdup(backing);
    }
    dir = dirname(copy);
    return xasprintf("%s/%s", dir, backing);
}

bool
img_header_info(const char *filename, const char *fmt,
                struct block_image_info *info, struct err **errp)
{
    struct img file;
    int ret;

    if (!img_open(&file, filename, "file", false, errp)) {
        return false;
    }
    ret = block_image_info_read(fmt, file.node, false, info, errp);
    img_close(&file);
    if (ret < 0) {
        err_prepend(errp, "Could not open '%s': ", filename);
        return false;
    }
    return true;
}

int64_t
img_virtual_size(const char *filename, const char *fmt, struct err **errp)
{
    struct block_image_info h;
    struct img img;
    int64_t size;

    if (!fmt) {
        fmt = block_probe_file(filename);
    }
    if (block_has_header_info(fmt)) {
        if (!img_header_info(filename, fmt, &h, errp)) {
            return -EIO;
        }
        size = (int64_t)h.virtual_size;
        block_image_info_clear(&h);
        return size;
    }
    if (!img_open(&img, filename, fmt, false, errp)) {
        return -EIO;
    }
    size = block_handle_getlength(img.h);
    img_close(&img);
    return size;
}

/* ---- JSON output, formatted like QEMU's pretty printer ------------------- */

/* Decode one UTF-8 sequence; invalid input gives U+FFFD and one byte. */
static unsigned
utf8_next(const unsigned char **p)
{
    const unsigned char *s = *p;
    unsigned cp, n;

    if (s[0] < 0x80) {
        *p += 1;
        return s[0];
    }
    n = s[0] >= 0xf0 ? 3 : s[0] >= 0xe0 ? 2 : s[0] >= 0xc0 ? 1 : 0;
    cp = s[0] & (0x3f >> n);
    for (unsigned i = 1; i <= n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            n = 0;
            break;
        }
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (n == 0 || cp > 0x10ffff) {
        *p += 1;
        return 0xfffd;
    }
    *p += n + 1;
    return cp;
}

/* Strings: ASCII as is, the rest as upper-case \uXXXX escapes. */
static void
json_print_string(FILE *f, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;

    fputc('"', f);
    while (*p) {
        unsigned cp = utf8_next(&p);
        const char *esc = cp == '"' ? "\\\"" : cp == '\\' ? "\\\\"
                        : cp == '\b' ? "\\b" : cp == '\f' ? "\\f"
                        : cp == '\n' ? "\\n" : cp == '\r' ? "\\r"
                        : cp == '\t' ? "\\t" : NULL;

        if (esc) {
            fputs(esc, f);
        } else if (cp >= 0x20 && cp < 0x7f) {
            fputc((int)cp, f);
        } else if (cp > 0xffff) {
            cp -= 0x10000;
            fprintf(f, "\\u%04X\\u%04X", 0xd800 | (cp >> 10),
                    0xdc00 | (cp & 0x3ff));
        } else {
            fprintf(f, "\\u%04X", cp);
        }
    }
    fputc('"', f);
}

static void
json_print_value(FILE *f, json_t *v, int indent)
{
    bool obj = json_is_object(v), first = true;
    const char *key;
    json_t *child;
    size_t i;

    if (json_is_string(v)) {
        json_print_string(f, json_string_value(v));
        return;
    }
    if (json_is_integer(v)) {
        fprintf(f, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return;
    }
    if (!obj && !json_is_array(v)) {
        fputs(json_is_true(v) ? "true" : json_is_false(v) ? "false" : "null",
              f);
        return;
    }
    fputs(obj ? "{\n" : "[\n", f);
    json_object_foreach(v, key, child) {
        fprintf(f, "%s%*s", first ? "" : ",\n", indent + 4, "");
        json_print_string(f, key);
        fputs(": ", f);
        json_print_value(f, child, indent + 4);
        first = false;
    }
    json_array_foreach(v, i, child) {
        fprintf(f, "%s%*s", first ? "" : ",\n", indent + 4, "");
        json_print_value(f, child, indent + 4);
        first = false;
    }
    fprintf(f, "%s%*s%c", first ? "" : "\n", indent, "", obj ? '}' : ']');
}

void
img_json_print(json_t *v)
{
    json_print_value(stdout, v, 0);
    fputc('\n', stdout);
}

/* ---- Progress ------------------------------------------------------------ */

void
img_progress_start(struct img_progress *p, bool enabled)
{
    p->enabled = enabled;
    p->last = -100;
    img_progress_update(p, 0);
}

/* Like qemu-img: redraw when it moved by at least one percent. */
void
img_progress_update(struct img_progress *p, double percent)
{
    if (!p->enabled || percent == p->last ||
        (percent - p->last < 1.0 && percent < 100.0)) {
        return;
    }
    p->last = percent;
    printf("    (%3.2f/100%%)\r", percent);
    fflush(stdout);
}

void
img_progress_end(struct img_progress *p)
{
    if (!p->enabled) {
        return;
    }
    printf("    (%3.2f/100%%)\r\n", 100.0);
    fflush(stdout);
}

void *
img_buf_alloc(size_t bytes)
{
    void *buf = NULL;

    if (posix_memalign(&buf, 4096, MAX(bytes, 1)) != 0) {
        return NULL;
    }
    return buf;
}

/* ---- main ------------------------------------------------------------------ */

static bool
wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            return true;
        }
        if (!strcmp(argv[i], "--")) {
            break;
        }
    }
    return false;
}

int
main(int argc, char **argv)
{
    const struct img_cmd *c;

    if (!strcmp(basename(argv[0]), "qemu-img")) {
        img_prog = "qemu-img";
    }
    if (argc < 2) {
        img_error("Not enough arguments");
        fprintf(stderr, "Try '%s --help' for more information\n", IMG_PROG);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("%s version %s\n", IMG_PROG, LOCKSTEP_VERSION);
        return 0;
    }
    c = cmd_find(argv[1]);
    if (!c) {
        img_error("Command not found: %s", argv[1]);
        fprintf(stderr, "Try '%s --help' for more information\n", IMG_PROG);
        return 1;
    }
    if (wants_help(argc - 1, argv + 1)) {
        img_cmd_help(c->name);
        return 0;
    }
    return c->fn(argc - 1, argv + 1);
}
