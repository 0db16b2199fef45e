/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img create and resize.  create makes a raw file (created or
 * truncated, optionally preallocated) or an image of a format with a
 * create hook (qcow2) through block_create() on a fresh file node, after
 * printing qemu-img's "Formatting 'FILE', fmt=..." line with the options
 * in the order of the driver's create_options.
 * Without a size, a qcow2 overlay takes the virtual size of its backing
 * file.  resize changes the virtual size through the format driver.
 * img_create_image() is shared with convert, which creates its target the
 * same way.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "img-create.h"
#include "img.h"
#include "util.h"

/* ---- Creation options ---------------------------------------------------- */

static bool
parse_bool_opt(const char *v, bool *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true")) {
        *out = true;
    } else if (!strcmp(v, "off") || !strcmp(v, "false")) {
        *out = false;
    } else {
        return false;
    }
    return true;
}

/* The format's create option called key, or NULL. */
static const struct block_create_opt *
find_create_opt(const char *fmt, const char *key)
{
    const struct block_create_opt *o = block_create_options(fmt);

    for (; o && o->name; o++) {
        if (!strcmp(o->name, key)) {
            return o;
        }
    }
    return NULL;
}

static bool
in_enum(const char *const *values, const char *v)
{
    for (; values && *values; values++) {
        if (!strcmp(*values, v)) {
            return true;
        }
    }
    return !values;
}

/* A format-specific option, typed as the driver's table says. */
static json_t *
typed_value(const struct block_create_opt *o, const char *val)
{
    uint64_t n;
    bool b;

    switch (o->type) {
    case BLOCK_OPT_SIZE:
    case BLOCK_OPT_INT:
        return img_parse_size(val, &n) && n <= INT64_MAX
               ? json_integer((json_int_t)n) : NULL;
    case BLOCK_OPT_BOOL:
        return parse_bool_opt(val, &b) ? json_boolean(b) : NULL;
    case BLOCK_OPT_STRING:
        return in_enum(o->enum_values, val) ? json_string(val) : NULL;
    default:
        return NULL;
    }
}

/*
 * One key=value of -o: the file's option (extent_size_hint), the ones
 * every format shares (size, preallocation, backing), or one of the
 * format's create_options.  false with *errp for unknown keys or bad
 * values.
 */
static bool
create_opt(struct img_create *c, const char *key, const char *val,
           struct err **errp)
{
    const struct block_create_opt *o = find_create_opt(c->fmt, key);
    uint64_t n;
    json_t *v;

    if (!strcmp(key, "extent_size_hint")) {
        if (!img_parse_size(val, &n)) {
            goto bad_value;
        }
        c->extent_size_hint = n;
        c->have_extent_size_hint = true;
        return true;
    }
    if (!o) {
        err_setf(errp, "Invalid parameter '%s'", key);
        return false;
    }
    if (!strcmp(key, "size")) {
        if (!img_parse_size(val, &n)) {
            goto bad_value;
        }
        c->size = n;
        c->have_size = true;
    } else if (!strcmp(key, "preallocation")) {
        c->prealloc = val;
    } else if (!strcmp(key, "backing_file")) {
        c->backing = val;
    } else if (!strcmp(key, "backing_fmt")) {
        c->backing_fmt = val;
    } else {
        v = typed_value(o, val);
        if (!v) {
            goto bad_value;
        }
        if (!c->fmt_opts) {
            c->fmt_opts = json_object();
        }
        json_object_set_new(c->fmt_opts, key, v);
    }
    return true;

bad_value:
    err_setf(errp, "Invalid value '%s' for parameter '%s'", val, key);
    return false;
}

void
img_create_add_opts(struct img_create *c, const char *opts)
{
    char *joined;

    if (!c->opts) {
        c->opts = opts;
        return;
    }
    joined = xasprintf("%s,%s", c->opts, opts);
    free(c->opts_joined);
    c->opts = c->opts_joined = joined;
}

bool
img_create_parse_opts(struct img_create *c, const char *opts,
                      struct err **errp)
{
    char *next;

    /* An unknown format is the error, not its options. */
    if (!block_create_options(c->fmt) && !img_create_fmt_ok(c->fmt, errp)) {
        return false;
    }
    free(c->opts_copy);
    c->opts_copy = xstrdup(opts);
    /* Split in place at commas; values point into opts_copy. */
    for (char *kv = c->opts_copy; kv; kv = next) {
        char *eq;

        next = strchr(kv, ',');
        if (next) {
            *next++ = '\0';
        }
        if (!*kv) {
            continue;
        }
        eq = strchr(kv, '=');
        if (!eq) {
            err_setf(errp, "Invalid parameter '%s'", kv);
            return false;
        }
        *eq = '\0';
        if (!create_opt(c, kv, eq + 1, errp)) {
            return false;
        }
    }
    return true;
}

/* ---- Creating -------------------------------------------------------------- */

/* The end of the "Formatting" line: the file's options come last. */
static void
print_extent_size_hint(const struct img_create *c)
{
    if (c->have_extent_size_hint) {
        printf(" extent_size_hint=%" PRIu64, c->extent_size_hint);
    }
    printf("\n");
    fflush(stdout);
}

/* The value of create option o for the "Formatting" line, or NULL. */
static const char *
formatting_value(const struct img_create *c, const struct block_create_opt *o,
                 char *buf, size_t len)
{
    json_t *v = json_object_get(c->fmt_opts, o->name);

    if (!strcmp(o->name, "size")) {
        snprintf(buf, len, "%" PRIu64, c->size);
        return buf;
    }
    if (!strcmp(o->name, "preallocation")) {
        return c->prealloc;
    }
    if (!strcmp(o->name, "backing_file")) {
        return c->backing;
    }
    if (!strcmp(o->name, "backing_fmt")) {
        return c->backing_fmt;
    }
    if (json_is_integer(v)) {
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    }
    if (json_is_boolean(v)) {
        return json_is_true(v) ? "on" : "off";
    }
    return json_is_string(v) ? json_string_value(v) : o->def;
}

/* qemu-img's line: the format's options in its order, given or default. */
static void
print_formatting(const struct img_create *c)
{
    const struct block_create_opt *o = block_create_options(c->fmt);
    const char *sep = "";

    printf("Formatting '%s', fmt=%s ", c->filename, c->fmt);
    for (; o && o->name; o++) {
        char buf[32];
        const char *v = formatting_value(c, o, buf, sizeof(buf));

        if (v) {
            printf("%s%s=%s", sep, o->name, v);
            sep = " ";
        }
    }
    print_extent_size_hint(c);
}

/* The backing file must open; without a size it gives the size. */
static bool
create_check_backing(struct img_create *c, struct err **errp)
{
    CLEANUP_FREE char *path = NULL;
    int64_t size;

    if (!c->backing) {
        return true;
    }
    if (!strcmp(c->fmt, "raw")) {
        err_setf(errp, "Backing file not supported for file format 'raw'");
        return false;
    }
    path = img_backing_path(c->filename, c->backing);
    if (!c->backing_fmt) {
        /* As qemu-img: a backing file that does not open says so first. */
        if (!strstr(path, "://") && strncmp(path, "json:", 5) &&
            access(path, R_OK) < 0) {
            err_setf(errp, "Could not open '%s': %s\n"
                     "Could not open backing image.", path, strerror(errno));
            return false;
        }
        err_setf(errp, "Backing file specified without backing format\n"
                 "Detected format of %s.", block_probe_file(path));
        return false;
    }
    size = img_virtual_size(path, c->backing_fmt, errp);
    if (size < 0) {
        err_prepend(errp, "Could not open backing image: ");
        return false;
    }
    if (!c->have_size) {
        c->size = (uint64_t)size;
        c->have_size = true;
    }
    return true;
}

static bool
raw_prealloc(int fd, const struct img_create *c, struct err **errp)
{
    int ret = 0;

    if (!c->prealloc || !strcmp(c->prealloc, "off")) {
        /* qemu-img writes the first block of a new file (4 KiB, or a
         * sector when smaller): it shows as data in map and disk size. */
        static const char zeroes[4096];
        size_t n = c->size >= sizeof(zeroes) ? sizeof(zeroes) : 512;

        if (c->size && pwrite(fd, zeroes, n, 0) != (ssize_t)n) {
            err_setf_errno(errp, errno, "Could not write the first block");
            return false;
        }
        return true;
    }
    if (!strcmp(c->prealloc, "falloc") || !strcmp(c->prealloc, "full")) {
        ret = c->size ? -posix_fallocate(fd, 0, (off_t)align_up(c->size, 512))
                      : 0;
    } else {
        err_setf(errp, "Invalid preallocation mode: '%s'", c->prealloc);
        return false;
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not preallocate data");
        return false;
    }
    return true;
}

/*
 * The extent size hint (FS_IOC_FSSETXATTR, used by XFS): like qemu-img,
 * 1 MiB on every new file unless told otherwise (0: none), so that an
 * image growing by small writes fragments less.  Set while the file is
 * empty (XFS refuses it once there are extents).  A file system without
 * it is worth a warning only when the hint was asked for.
 */
static bool
set_extent_size_hint(int fd, const struct img_create *c, struct err **errp)
{
    uint64_t hint = c->have_extent_size_hint ? c->extent_size_hint : MiB;
    struct fsxattr attr;

    if (hint > UINT32_MAX) {
        err_setf(errp, "Extent size hint is too large");
        return false;
    }
    if (!hint) {
        return true;
    }
    if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) == 0) {
        attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
        attr.fsx_extsize = (uint32_t)hint;
        if (ioctl(fd, FS_IOC_FSSETXATTR, &attr) == 0) {
            return true;
        }
    }
    if (c->have_extent_size_hint) {
        img_error("warning: Failed to set extent size hint: %s",
                  strerror(errno));
    }
    return true;
}

/* Empty the file and give it its size (raw: with preallocation). */
static bool
reset_file(const struct img_create *c, uint64_t size, struct err **errp)
{
    int fd = open(c->filename, O_WRONLY | O_CLOEXEC);
    bool ok;

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not open '%s'", c->filename);
        return false;
    }
    ok = ftruncate(fd, 0) == 0;
    if (!ok) {
        err_setf_errno(errp, errno, "Could not resize file");
    } else if (!set_extent_size_hint(fd, c, errp)) {
        ok = false;
    } else if (ftruncate(fd, (off_t)size) < 0) {
        err_setf_errno(errp, errno, "Could not resize file");
        ok = false;
    } else if (!strcmp(c->fmt, "raw")) {
        ok = raw_prealloc(fd, c, errp);
    }
    close(fd);
    return ok;
}

/*
 * Create the file if needed and open it with its image locks held before
 * anything is truncated: an image in use elsewhere must survive a refused
 * create, as with qemu-img.
 */
static bool
open_new_file(const struct img_create *c, uint64_t size, struct img *file,
              struct err **errp)
{
    int fd = open(c->filename, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not create '%s'", c->filename);
        return false;
    }
    close(fd);
    if (!img_open(file, c->filename, "file", true, errp)) {
        return false;
    }
    if (!reset_file(c, size, errp)) {
        img_close(file);
        return false;
    }
    return true;
}

static bool
create_raw(struct img_create *c, struct err **errp)
{
    struct img file;

    /* Like qemu-img: sizes round up to whole 512-byte sectors. */
    if (!open_new_file(c, align_up(c->size, 512), &file, errp)) {
        return false;
    }
    img_close(&file);
    return true;
}

/* A format with a create hook: the driver writes the image. */
static bool
create_format(struct img_create *c, struct err **errp)
{
    struct block_create_opts o = {
        /* Like qemu-img: sizes round up to whole 512-byte sectors. */
        .size = align_up(c->size, 512),
        .backing_file = c->backing,
        .backing_fmt = c->backing_fmt,
        .preallocation = c->prealloc,
        .options = c->fmt_opts,
    };
    struct img file;
    int ret;

    if (!open_new_file(c, 0, &file, errp)) {
        return false;
    }
    ret = block_create(c->fmt, file.node, &o, errp);
    if (ret == 0) {
        ret = block_handle_flush(file.h);
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Could not flush '%s'", c->filename);
        }
    }
    img_close(&file);
    return ret == 0;
}

bool
img_create_fmt_ok(const char *fmt, struct err **errp)
{
    /* QEMU's read-only formats: its words, so that scripts see them. */
    static const char *const no_create[] = {
        "bochs", "cloop", "dmg", "vvfat", "host_device", "host_cdrom", NULL,
    };

    const struct block_driver *drv = block_driver_find(fmt);

    if (drv && (drv->create || !strcmp(fmt, "raw"))) {
        return true;
    }
    for (size_t i = 0; no_create[i]; i++) {
        if (!strcmp(fmt, no_create[i])) {
            err_setf(errp, "Format driver '%s' does not support image "
                     "creation", fmt);
            return false;
        }
    }
    err_setf(errp, "Unknown file format '%s'", fmt);
    return false;
}

bool
img_create_image(struct img_create *c, bool quiet, struct err **errp)
{
    if (!img_create_fmt_ok(c->fmt, errp)) {
        return false;
    }
    if (!create_check_backing(c, errp)) {
        return false;
    }
    if (!c->have_size) {
        err_setf(errp, "Image creation needs a size parameter");
        return false;
    }
    if (!quiet) {
        print_formatting(c);
    }
    if (!strcmp(c->fmt, "raw")) {
        return create_raw(c, errp);
    }
    return create_format(c, errp);
}

void
img_create_free(struct img_create *c)
{
    free(c->opts_copy);
    c->opts_copy = NULL;
    free(c->opts_joined);
    c->opts_joined = NULL;
    json_decref(c->fmt_opts);
    c->fmt_opts = NULL;
}

/* ---- create command ------------------------------------------------------- */

static int
create_parse(int argc, char **argv, struct img_create *c, bool *quiet)
{
    int opt;

    while ((opt = getopt(argc, argv, "f:b:F:o:qut:")) != -1) {
        switch (opt) {
        case 'f':
            c->fmt = optarg;
            break;
        case 'b':
            c->backing = optarg;
            break;
        case 'F':
            c->backing_fmt = optarg;
            break;
        case 'o':
            img_create_add_opts(c, optarg);
            break;
        case 'q':
            *quiet = true;
            break;
        case 'u':
            break;
        case 't':
            if (!img_set_cache(&img_cache, optarg)) {
                return -1;
            }
            break;
        default:
            return -1;
        }
    }
    if (optind >= argc || argc - optind > 2) {
        img_error("Expecting image file name");
        return -1;
    }
    c->filename = argv[optind];
    return optind;
}

static bool
create_size_arg(struct img_create *c, const char *arg)
{
    if (!img_parse_size(arg, &c->size)) {
        img_error("Invalid image size specified. You may use k, M, G, T, P "
                  "or E suffixes for");
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
        return false;
    }
    c->have_size = true;
    return true;
}

int
img_cmd_create(int argc, char **argv)
{
    struct img_create c = { .fmt = "raw" };
    struct err *e = NULL;
    bool quiet = false;
    int i = create_parse(argc, argv, &c, &quiet);

    if (i < 0) {
        img_create_free(&c);
        return img_usage_error("create", NULL);
    }
    if (i + 1 < argc && !create_size_arg(&c, argv[i + 1])) {
        img_create_free(&c);
        return 1;
    }
    if ((c.opts && !img_create_parse_opts(&c, c.opts, &e)) ||
        !img_create_image(&c, quiet, &e)) {
        err_prepend(&e, "%s: ", c.filename);
        img_report(e);
        img_create_free(&c);
        return 1;
    }
    img_create_free(&c);
    return 0;
}

/* ---- resize command ---------------------------------------------------------- */

/* "+SIZE" / "-SIZE" relative to cur, or an absolute size. */
static bool
resize_target(const char *arg, int64_t cur, uint64_t *out)
{
    uint64_t n;

    if (!img_parse_size(arg + (arg[0] == '+' || arg[0] == '-'), &n)) {
        img_error("Invalid size specified. You may use k, M, G, T, P or E "
                  "suffixes for");
        img_error("kilobytes, megabytes, gigabytes, terabytes, petabytes "
                  "and exabytes.");
        return false;
    }
    if (arg[0] == '-' && n > (uint64_t)cur) {
        img_error("New image size must be positive");
        return false;
    }
    *out = arg[0] == '+' ? cur + n : arg[0] == '-' ? cur - n : n;
    return true;
}

struct resize_args {
    const char *fmt;
    const char *prealloc;        /* --preallocation; NULL: off */
    bool shrink;
    bool quiet;
};

/*
 * The size is the last argument and taken out before getopt, as qemu-img
 * does, so that "-1M" is not read as an option.
 */
static int
resize_parse(int argc, char **argv, struct resize_args *a)
{
    static const struct option longopts[] = {
        { "shrink", no_argument, NULL, 'S' },
        { "format", required_argument, NULL, 'f' },
        { "preallocation", required_argument, NULL, 'P' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    if (argc < 3) {
        img_error("Expecting image file name and size");
        return -1;
    }
    while ((opt = getopt_long(argc - 1, argv, "f:qt:", longopts, NULL)) != -1) {
        if (opt == 'f') {
            a->fmt = optarg;
        } else if (opt == 't') {
            if (!img_set_cache(&img_cache, optarg)) {
                return -1;
            }
        } else if (opt == 'q') {
            a->quiet = true;
        } else if (opt == 'S') {
            a->shrink = true;
        } else if (opt == 'P') {
            a->prealloc = optarg;
        } else {
            return -1;
        }
    }
    if (optind != argc - 2) {
        img_error("Expecting image file name and size");
        return -1;
    }
    return optind;
}

/*
 * --preallocation: what qemu-img accepts, and for which images we do it
 * (raw on a file: the new end is allocated in the file after the resize).
 * 1: preallocate, 0: nothing to do, -1: refused (said).
 */
static int
resize_prealloc_ok(struct img *img, const struct resize_args *a,
                   int64_t cur, uint64_t size)
{
    const char *m = a->prealloc;
    struct block_node *file = img->node->file ? img->node->file->node : NULL;

    if (!m || !strcmp(m, "off")) {
        return 0;
    }
    if (strcmp(m, "metadata") && strcmp(m, "falloc") && strcmp(m, "full")) {
        img_error("Invalid preallocation mode '%s'", m);
        return -1;
    }
    if (size <= (uint64_t)cur) {
        img_error("Preallocation can only be used for growing images");
        return -1;
    }
    if (strcmp(img->node->drv->name, "raw") || !file ||
        strcmp(file->drv->name, "file") ||
        json_object_get(img->node->options, "offset")) {
        img_error("%s: resize --preallocation is only supported for raw "
                  "images on a file", img->filename);
        return -1;
    }
    if (!strcmp(m, "metadata")) {
        img_error("Unsupported preallocation mode: metadata");
        return -1;
    }
    return 1;
}

/* Allocate [from, to) of the raw image's file: falloc, or zeroes written. */
static int
resize_preallocate(struct img *img, const char *mode, uint64_t from,
                   uint64_t to)
{
    struct block_node *file = img->node->file->node;
    const char *path = block_node_filename(file);
    static const char zeroes[64 * 1024];
    int fd = path ? open(path, O_WRONLY | O_CLOEXEC) : -1;
    int ret = 0;

    if (fd < 0) {
        ret = -errno;
    } else if (!strcmp(mode, "falloc")) {
        ret = -posix_fallocate(fd, (off_t)from, (off_t)(to - from));
    } else {
        for (uint64_t o = from; o < to && ret == 0;) {
            size_t n = (size_t)MIN(sizeof(zeroes), to - o);
            ssize_t w = pwrite(fd, zeroes, n, (off_t)o);

            ret = w < 0 ? -errno : 0;
            o += w > 0 ? (uint64_t)w : 0;
        }
        if (ret == 0 && fdatasync(fd) < 0) {
            ret = -errno;
        }
    }
    if (fd >= 0) {
        close(fd);
    }
    if (ret < 0) {
        img_error("%s: Could not preallocate the new area: %s",
                  img->filename, strerror(-ret));
        return 1;
    }
    return 0;
}

static int
resize_apply(struct img *img, struct resize_args *a, const char *arg)
{
    int prealloc;
    int64_t cur = block_handle_getlength(img->h);
    struct err *e = NULL;
    uint64_t size;

    if (cur < 0) {
        img_error("%s: Could not get the image size: %s", img->filename,
                  strerror((int)-cur));
        return 1;
    }
    if (!resize_target(arg, cur, &size)) {
        return 1;
    }
    if (size < (uint64_t)cur && !a->shrink) {
        /* The warning only here, as qemu-img: --shrink says "I know". */
        img_error("Use the --shrink option to perform a shrink operation.");
        img_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        return 1;
    }
    prealloc = resize_prealloc_ok(img, a, cur, size);
    if (prealloc < 0) {
        return 1;
    }
    if (block_truncate(img->node, size, &e) < 0) {
        err_prepend(&e, "%s: ", img->filename);
        img_report(e);
        return 1;
    }
    if (prealloc && resize_preallocate(img, a->prealloc, (uint64_t)cur,
                                       size)) {
        return 1;
    }
    if (!a->quiet) {
        printf("Image resized.\n");
    }
    return 0;
}

int
img_cmd_resize(int argc, char **argv)
{
    struct resize_args a = { 0 };
    struct err *e = NULL;
    struct img img;
    int i = resize_parse(argc, argv, &a), ret;

    if (i < 0) {
        return img_usage_error("resize", NULL);
    }
    if (!img_open(&img, argv[i], a.fmt, true, &e)) {
        img_report(e);
        return 1;
    }
    ret = resize_apply(&img, &a, argv[i + 1]);
    img_close(&img);
    return ret;
}

/* ---- amend ---------------------------------------------------------------- */

/*
 * qemu-img amend changes creation options of an existing image.  A
 * format that creates no images (raw) has none (qemu-img's error);
 * changing a format's options in place (QEMU's amend hook) is not done
 * yet, and is refused rather than half done.
 */
int
img_cmd_amend(int argc, char **argv)
{
    const char *fmt = NULL, *opts = NULL;
    int opt;

    while ((opt = getopt(argc, argv, "f:o:pqt:U")) != -1) {
        switch (opt) {
        case 'f': fmt = optarg; break;
        case 'o': opts = optarg; break;
        case 'p': case 'q': case 't': break;
        case 'U': img_force_share = true; break;
        default: return img_usage_error("amend", NULL);
        }
    }
    if (!opts) {
        img_error("Must specify options (-o)");
        return img_usage_error("amend", NULL);
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return img_usage_error("amend", NULL);
    }
    if (!fmt) {
        fmt = block_probe_file(argv[optind]);
    }
    if (!block_driver_find(fmt) || !block_driver_find(fmt)->create) {
        img_error("Format driver '%s' does not support option amendment",
                  fmt);
        return 1;
    }
    img_error("Amending %s options is not supported by %s", fmt, IMG_PROG);
    return 1;
}
