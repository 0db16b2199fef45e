/* SPDX-License-Identifier: MIT */
/*
 * lockstep-io: a qemu-io compatible command line exerciser for the block
 * layer.  It opens an image (a file name as QEMU's tools take it, with
 * -f FMT, or --image-opts OPTIONS; or none, and the "open" command later),
 * takes a handle on it and runs qemu-io's commands given with -c or on
 * standard input, printing what qemu-io 7.2 prints, so that scripts and
 * QEMU's own iotests written for qemu-io hold for it.  All I/O goes
 * through block_handle_*.
 *
 * Started as "qemu-io" (a symlink of that name) it says "qemu-io" in its
 * messages and prompt, as the iotests' filters expect; otherwise
 * "lockstep-io".  The exit status is 1 when any command failed.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io.h"
#include "lockstep/driver.h"
#include "keyval.h"
#include "util.h"

#ifndef LOCKSTEP_VERSION
#define LOCKSTEP_VERSION "0.1.0"
#endif

/* Buffers are aligned for O_DIRECT so that the core need not bounce. */
#define IO_BUF_ALIGN 4096
#define IO_MISALIGN 16

const char *io_prog = "lockstep-io";
bool io_misalign;

/* The run loop stops when this is set (the "quit" command). */
static bool g_quit;
/* --image-opts: the open command's path is an option string. */
static bool g_image_opts;

/* ---- Output helpers, formatted like qemu-io's ------------------------- */

void
io_error(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: ", io_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* "4 KiB", "1.500 KiB", "40 bytes": three decimals unless they are zero. */
void
io_fmt_size(char *buf, size_t len, double value)
{
    static const char *const units[] = {
        "bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB",
    };
    size_t u = 0;
    char *dot;

    while (u + 1 < ARRAY_SIZE(units) && value >= 1024.0) {
        value /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.*f %s", u ? 3 : 6, value, units[u]);
    dot = strstr(buf, ".000");
    if (dot) {
        memmove(dot, strchr(dot, ' '), strlen(strchr(dot, ' ')) + 1);
    }
}

/* "00.00 sec" under a second, else "h:mm:ss.ss" (qemu-io's timestr);
 * always the long form for -C. */
static void
fmt_time(char *buf, size_t len, int64_t ns, bool machine)
{
    uint64_t secs = (uint64_t)ns / 1000000000;
    double frac = (double)(ns % 1000000000) / 1e9;

    if (secs == 0 && !machine) {
        snprintf(buf, len, "%05.2f sec", frac);
    } else {
        snprintf(buf, len, "%u:%02u:%05.2f", (unsigned)(secs / 3600),
                 (unsigned)(secs / 60 % 60), (double)(secs % 60) + frac);
    }
}

void
io_report(const char *op, int64_t ns, int64_t offset, int64_t count,
          int64_t total, int cnt, bool machine)
{
    char s1[64], s2[64], ts[64];
    double secs = ns > 0 ? (double)ns / 1e9 : 1e-9;

    fmt_time(ts, sizeof(ts), ns, machine);
    if (machine) {
        printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, ts,
               (double)total / secs, cnt / secs);
        return;
    }
    io_fmt_size(s1, sizeof(s1), (double)total);
    io_fmt_size(s2, sizeof(s2), (double)total / secs);
    printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op,
           total, count, offset);
    printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, cnt, ts, s2,
           cnt / secs);
}

/* qemu-io's dump: 16 bytes a line, then the letters and digits among them. */
void
io_hexdump(const uint8_t *buf, int64_t offset, int64_t bytes)
{
    for (int64_t i = 0; i < bytes; i += 16) {
        int64_t n = MIN(16, bytes - i);

        printf("%08" PRIx64 ":  ", (uint64_t)(offset + i));
        for (int64_t j = 0; j < n; j++) {
            printf("%02x ", buf[i + j]);
        }
        putchar(' ');
        for (int64_t j = 0; j < n; j++) {
            putchar(isalnum(buf[i + j]) ? buf[i + j] : '.');
        }
        putchar('\n');
    }
}

void *
io_buf_alloc(uint64_t bytes, int fill)
{
    size_t extra = io_misalign ? IO_MISALIGN : 0;
    uint8_t *buf = NULL;

    if (posix_memalign((void **)&buf, IO_BUF_ALIGN, MAX(bytes + extra, 1))) {
        fprintf(stderr, "%s: out of memory\n", io_prog);
        exit(1);
    }
    memset(buf, fill, bytes + extra);
    return buf + extra;
}

void
io_buf_free(void *buf)
{
    if (buf) {
        free((uint8_t *)buf - (io_misalign ? IO_MISALIGN : 0));
    }
}

void
io_usage(const struct io_cmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args ? c->args : "", c->oneline);
}

/* ---- Numbers ------------------------------------------------------------ */

static int
suffix_shift(char c)
{
    static const char suffixes[] = "bkmgtpe";
    const char *p = c ? strchr(suffixes, tolower((unsigned char)c)) : NULL;

    return p ? (int)(p - suffixes) * 10 : -1;
}

/*
 * qemu-io's number syntax (qemu_strtosz): decimal or 0x hex, an optional
 * binary suffix, and a decimal fraction only together with a unit larger
 * than a byte ("1.5k").  Leading white space is skipped, as strtoull
 * does: commands split at spaces only, so a tab stays in a word (iotest
 * 003 continues a command line with one).  Returns 0, -EINVAL or -ERANGE.
 */
static int
parse_num(const char *s, int64_t *out)
{
    bool hex;
    const char *p;
    char *end;
    unsigned long long whole;
    double frac = 0, value;
    int shift = 0;

    while (isspace((unsigned char)*s)) {
        s++;
    }
    hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    if (!isdigit((unsigned char)s[0])) {
        return -EINVAL;
    }
    errno = 0;
    whole = strtoull(s, &end, hex ? 16 : 10);
    if (errno == ERANGE) {
        return -ERANGE;
    }
    p = end;
    if (!hex && *p == '.') {
        frac = strtod(p, &end);
        if (end == p + 1) {
            return -EINVAL;
        }
        p = end;
    }
    if (*p) {
        shift = suffix_shift(*p++);
        if (shift < 0 || *p) {
            return -EINVAL;
        }
    }
    if (frac != 0 && shift == 0) {
        return -EINVAL;
    }
    value = ((double)whole + frac) * ldexp(1, shift);
    if (value >= 0x1p63 || whole > ((uint64_t)INT64_MAX >> shift)) {
        return -ERANGE;
    }
    *out = frac != 0 ? (int64_t)value : (int64_t)(whole << shift);
    return 0;
}

bool
io_num(const char *s, int64_t *out)
{
    int ret = parse_num(s, out);

    if (ret == -ERANGE) {
        printf("Parsing error: argument too large -- %s\n", s);
    } else if (ret < 0) {
        printf("Parsing error: non-numeric argument, or extraneous/"
               "unrecognized suffix -- %s\n", s);
    }
    return ret == 0;
}

/* ---- Opening and closing ------------------------------------------------- */

/* What the command line and "open" say about how to open. */
struct open_flags {
    bool read_only;
    bool snapshot;
    bool force_share;
    bool nocache;               /* cache.direct */
    bool no_flush;              /* cache.no-flush */
    bool writethrough;
    const char *discard;        /* "unmap" (qemu-io's default) or "ignore" */
    const char *aio;            /* QEMU's aio mode, or NULL: the default */
    bool copy_on_read;          /* -C */
};

/* QEMU's cache modes: what they mean for the node and for the writes. */
static bool
parse_cache(const char *mode, struct open_flags *f)
{
    if (!strcmp(mode, "none") || !strcmp(mode, "off")) {
        f->nocache = true, f->no_flush = false, f->writethrough = false;
    } else if (!strcmp(mode, "directsync")) {
        f->nocache = true, f->no_flush = false, f->writethrough = true;
    } else if (!strcmp(mode, "writeback")) {
        f->nocache = false, f->no_flush = false, f->writethrough = false;
    } else if (!strcmp(mode, "unsafe")) {
        f->nocache = false, f->no_flush = true, f->writethrough = false;
    } else if (!strcmp(mode, "writethrough")) {
        f->nocache = false, f->no_flush = false, f->writethrough = true;
    } else {
        return false;
    }
    return true;
}

static bool
parse_discard(const char *mode, struct open_flags *f)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        f->discard = "ignore";
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        f->discard = "unmap";
    } else {
        return false;
    }
    return true;
}

/*
 * QEMU's aio modes: passed down to every file node of the image (the file
 * driver says whether it can do them, and QEMU's error for aio=native
 * without cache.direct=on).
 */
static bool
parse_aio(const char *mode, struct open_flags *f)
{
    static const char *const modes[] = { "threads", "native", "io_uring" };

    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        if (!strcmp(mode, modes[i])) {
            f->aio = modes[i];
            return true;
        }
    }
    io_error("Invalid aio option: %s", mode);
    return false;
}

/* Options qemu-io puts on the node, unless the user's options say. */
static void
apply_flags(json_t *opts, const struct open_flags *f)
{
    json_t *cache = json_object_get(opts, "cache");

    if (!json_object_get(opts, "read-only")) {
        json_object_set_new(opts, "read-only", json_boolean(f->read_only ||
                                                            f->snapshot));
    }
    if (!json_object_get(opts, "discard")) {
        json_object_set_new(opts, "discard", json_string(f->discard));
    }
    if (f->force_share) {
        json_object_set_new(opts, "force-share", json_true());
    }
    if (!cache && (f->nocache || f->no_flush)) {
        cache = json_object();
        json_object_set_new(opts, "cache", cache);
    }
    if (cache && !json_object_get(cache, "direct") && f->nocache) {
        json_object_set_new(cache, "direct", json_true());
    }
    if (cache && !json_object_get(cache, "no-flush") && f->no_flush) {
        json_object_set_new(cache, "no-flush", json_true());
    }
}

/*
 * -s: a temporary qcow2 overlay on top of node, removed from the
 * directory at once; writes land in it and vanish at close.
 */
static struct block_node *
temp_overlay(struct block_node *base, const struct open_flags *f,
             struct err **errp)
{
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/var/tmp";
    CLEANUP_FREE char *path = xasprintf("%s/lockstep-io.XXXXXX", dir);
    struct block_create_opts copts = { .size = base->size };
    struct block_node *file, *top = NULL;
    json_t *o;
    int fd = mkstemp(path);

    if (fd < 0) {
        err_setf_errno(errp, errno, "Could not create temporary overlay "
                       "in '%s'", dir);
        return NULL;
    }
    close(fd);
    o = json_pack("{s:s, s:s}", "driver", "file", "filename", path);
    file = block_node_new(o, errp);
    json_decref(o);
    if (!file) {
        goto out;
    }
    if (block_create("qcow2", file, &copts, errp) < 0) {
        block_node_unref(file);
        goto out;
    }
    block_node_unref(file);
    o = json_pack("{s:s, s:{s:s, s:s}, s:s, s:b}", "driver", "qcow2",
                  "file", "driver", "file", "filename", path,
                  "backing", base->node_name, "read-only", f->read_only);
    apply_flags(o, f);
    top = block_node_new(o, errp);
    json_decref(o);
out:
    unlink(path);
    return top;
}

/*
 * -C: reads copy what the image's own layer lacks from its backing chain
 * into it, through a copy-on-read filter on top (QEMU sets a flag on the
 * image's node instead; the effect is the same).
 */
static struct block_node *
copy_on_read_filter(struct block_node *node, struct err **errp)
{
    struct block_node *top;
    json_t *o;

    if (node->read_only) {
        err_setf(errp, "Can't use copy-on-read on read-only device");
        return NULL;
    }
    o = json_pack("{s:s, s:s}", "driver", "copy-on-read",
                  "file", node->node_name);
    top = block_node_new(o, errp);
    json_decref(o);
    return top;
}

static void
warn_probed_raw(const char *filename)
{
    fprintf(stderr, "WARNING: Image format was not specified for '%s' and "
            "probing guessed raw.\n"
            "         Automatically detecting the format is dangerous for "
            "raw images, write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the "
            "restrictions.\n", filename);
}

/* qemu-io's openfile(): prints its errors, returns false on failure. */
static bool
openfile(struct io_ctx *ctx, const char *name, json_t *opts,
         const struct open_flags *f)
{
    uint32_t perm = BLOCK_PERM_CONSISTENT_READ;
    struct err *e = NULL;
    struct block_node *node;
    bool probed_raw = false;
    json_t *o;

    if (ctx->node) {
        io_error("file open already, try 'help close'");
        return false;
    }
    o = opts ? json_incref(opts) : json_object();
    if (f->force_share) {
        json_t *fs = json_object_get(o, "force-share");

        if (fs && !json_is_true(fs) &&
            !(json_is_string(fs) && !strcmp(json_string_value(fs), "on"))) {
            io_error("-U conflicts with image options");
            json_decref(o);
            return false;
        }
    }
    apply_flags(o, f);
    block_file_set_default_aio(f->aio);
    node = block_open_image(name, o, &probed_raw, &e);
    if (node && f->snapshot) {
        struct block_node *top = temp_overlay(node, f, &e);

        block_node_unref(node);
        node = top;
    }
    if (node && f->copy_on_read) {
        struct block_node *top = copy_on_read_filter(node, &e);

        block_node_unref(node);
        node = top;
    }
    if (!node) {
        err_prepend(&e, "can't open%s%s: ", name ? " device " : "",
                    name ? name : "");
        err_report(io_prog, e);
        json_decref(o);
        return false;
    }
    if (probed_raw) {
        warn_probed_raw(name);
    }
    if (!node->read_only) {
        perm |= BLOCK_PERM_WRITE;
    }
    ctx->h = block_handle_new(node, io_prog, perm, BLOCK_PERM_ALL, &e);
    if (!ctx->h) {
        err_prepend(&e, "can't open%s%s: ", name ? " device " : "",
                    name ? name : "");
        err_report(io_prog, e);
        block_node_unref(node);
        json_decref(o);
        return false;
    }
    ctx->node = node;
    ctx->read_only = node->read_only;
    ctx->writethrough = f->writethrough;
    ctx->aio = f->aio;
    ctx->copy_on_read = f->copy_on_read;
    ctx->opts = o;
    ctx->filename = name ? xstrdup(name) : NULL;
    return true;
}

static void
closefile(struct io_ctx *ctx)
{
    if (!ctx->node) {
        return;
    }
    io_aio_drain();
    if (!ctx->node->read_only) {
        block_handle_flush(ctx->h);
    }
    block_handle_free(ctx->h);
    block_node_unref(ctx->node);
    json_decref(ctx->opts);
    free(ctx->filename);
    ctx->node = NULL;
    ctx->h = NULL;
    ctx->opts = NULL;
    ctx->filename = NULL;
}

int
io_need_perm(struct io_ctx *ctx, uint32_t perm)
{
    struct block_child *c = &ctx->h->child;
    struct block_handle *h;
    struct err *e = NULL;

    if ((c->perm & perm) == perm) {
        return 0;
    }
    if ((perm & (BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE)) &&
        ctx->node->read_only) {
        io_error("Block node is read-only");
        return -EPERM;
    }
    io_aio_drain();
    h = block_handle_new(ctx->node, io_prog, c->perm | perm, c->shared, &e);
    if (!h) {
        err_report(io_prog, e);
        return -EPERM;
    }
    block_handle_free(ctx->h);
    ctx->h = h;
    return 0;
}

/* QEMU's option strings for "open -o" and "reopen -o" ("a=b,c.d=e"). */
static json_t *
parse_opts_implied(json_t *into, const char *str, const char *implied)
{
    struct err *e = NULL;
    json_t *o = keyval_or_json_parse(str, implied, &e);
    const char *key;
    json_t *v;

    if (!o) {
        err_report(io_prog, e);
        return NULL;
    }
    if (!into) {
        return o;
    }
    json_object_foreach(o, key, v) {
        json_object_set(into, key, v);
    }
    json_decref(o);
    return into;
}

static json_t *
parse_opts(json_t *into, const char *str)
{
    return parse_opts_implied(into, str, NULL);
}

/* ---- open, close, reopen, quit, help -------------------------------------- */

static const struct io_cmd open_cmd;

static int
cmd_open(struct io_ctx *ctx, int argc, char **argv)
{
    struct open_flags f = { .discard = "unmap", .writethrough = true };
    json_t *opts = NULL;
    int opt;
    bool ok;

    while ((opt = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        switch (opt) {
        case 's':
            f.snapshot = true;
            break;
        case 'n':
            f.nocache = true;
            f.writethrough = false;
            break;
        case 'C':
            f.copy_on_read = true;
            break;
        case 'r':
            f.read_only = true;
            break;
        case 'k':
            if (!parse_aio("native", &f)) {
                json_decref(opts);
                return -EINVAL;
            }
            break;
        case 't':
            if (!parse_cache(optarg, &f)) {
                io_error("Invalid cache option: %s", optarg);
                json_decref(opts);
                return -EINVAL;
            }
            break;
        case 'd':
            if (!parse_discard(optarg, &f)) {
                io_error("Invalid discard option: %s", optarg);
                json_decref(opts);
                return -EINVAL;
            }
            break;
        case 'i':
            if (!parse_aio(optarg, &f)) {
                json_decref(opts);
                return -EINVAL;
            }
            break;
        case 'o':
            if (g_image_opts) {
                printf("--image-opts and 'open -o' are mutually "
                       "exclusive\n");
                json_decref(opts);
                return -EINVAL;
            }
            opts = parse_opts(opts, optarg);
            if (!opts) {
                return -EINVAL;
            }
            break;
        case 'U':
            f.force_share = true;
            break;
        default:
            json_decref(opts);
            io_usage(&open_cmd);
            return -EINVAL;
        }
    }
    if (g_image_opts && optind == argc - 1) {
        /* "raw,file.filename=x" as qemu-io; JSON too (ours). */
        opts = parse_opts_implied(opts, argv[optind], "driver");
        if (!opts) {
            return -EINVAL;
        }
        optind++;
    }
    if (optind == argc - 1) {
        ok = openfile(ctx, argv[optind], opts, &f);
    } else if (optind == argc) {
        ok = openfile(ctx, NULL, opts, &f);
    } else {
        json_decref(opts);
        io_usage(&open_cmd);
        return -EINVAL;
    }
    json_decref(opts);
    return ok ? 0 : -EINVAL;
}

static int
cmd_close(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    closefile(ctx);
    return 0;
}

static const char *const reopen_fixed[] = {
    "driver", "node-name", NULL,
};

/*
 * Options a reopen must not change: QEMU refuses them with this message,
 * on the node and on its children named in the options ("file.driver",
 * "backing.node-name"): each is compared with the node it names.
 */
static bool
node_changes_fixed(struct block_node *node, json_t *opts)
{
    static const char *const kids[] = { "file", "backing", NULL };

    for (size_t i = 0; reopen_fixed[i]; i++) {
        json_t *want = json_object_get(opts, reopen_fixed[i]);
        const char *have;

        if (!want) {
            continue;
        }
        have = !strcmp(reopen_fixed[i], "driver") ? node->drv->name
               : node->auto_named ? NULL : node->node_name;
        if (!have || !json_is_string(want) ||
            strcmp(json_string_value(want), have)) {
            io_error("Cannot change the option '%s'", reopen_fixed[i]);
            return true;
        }
    }
    for (size_t i = 0; kids[i]; i++) {
        json_t *sub = json_object_get(opts, kids[i]);
        struct block_child *c = !strcmp(kids[i], "file") ? node->file
                                                         : node->backing;

        if (json_is_object(sub) && c && node_changes_fixed(c->node, sub)) {
            return true;
        }
    }
    return false;
}

/* Boolean options given as strings must say on or off (QEMU's keyval). */
static bool
reopen_bools_ok(json_t *opts)
{
    static const char *const bools[] = {
        "read-only", "auto-read-only", "cache.direct", "cache.no-flush",
        "force-share", NULL,
    };

    for (size_t i = 0; bools[i]; i++) {
        const char *dot = strchr(bools[i], '.');
        json_t *v = dot ? json_object_get(
                              json_object_get(opts, "cache"), dot + 1)
                        : json_object_get(opts, bools[i]);
        const char *s = json_string_value(v);

        if (s && strcmp(s, "on") && strcmp(s, "off")) {
            io_error("Parameter '%s' expects 'on' or 'off'", bools[i]);
            return false;
        }
    }
    return true;
}

static bool
reopen_changes_fixed(struct io_ctx *ctx, json_t *opts)
{
    return node_changes_fixed(ctx->node, opts);
}

/*
 * reopen [-r|-w] [-c cache] [-o options]: the image is closed and opened
 * again with the new options (requests drained first).  Going read-only
 * or read-write alone keeps the node (block_node_set_read_only).
 */
static int
cmd_reopen(struct io_ctx *ctx, int argc, char **argv)
{
    struct open_flags f = { .discard = "unmap" };
    bool has_rw = false, has_cache = false, ro = ctx->read_only;
    json_t *opts = json_object(), *o;
    struct err *e = NULL;
    int opt, ret = -EINVAL;

    f.writethrough = ctx->writethrough;
    f.aio = ctx->aio;
    f.copy_on_read = ctx->copy_on_read;
    f.nocache = ctx->node->cache_direct;
    f.no_flush = ctx->node->cache_no_flush;
    while ((opt = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (opt) {
        case 'c':
            if (!parse_cache(optarg, &f)) {
                io_error("Invalid cache option: %s", optarg);
                goto out;
            }
            has_cache = true;
            break;
        case 'o':
            if (!parse_opts(opts, optarg)) {
                goto out;
            }
            break;
        case 'r':
        case 'w':
            if (has_rw) {
                io_error("Only one -r/-w option may be given");
                goto out;
            }
            ro = opt == 'r';
            has_rw = true;
            break;
        default:
            io_usage(&(const struct io_cmd){ "reopen", NULL, NULL, 0, -1, 0,
                     "[(-r|-w)] [-c cache] [-o options]",
                     "reopens an image with new options", NULL });
            goto out;
        }
    }
    if (optind != argc) {
        io_usage(&(const struct io_cmd){ "reopen", NULL, NULL, 0, -1, 0,
                 "[(-r|-w)] [-c cache] [-o options]",
                 "reopens an image with new options", NULL });
        goto out;
    }
    if (!reopen_bools_ok(opts)) {
        goto out;
    }
    if (json_object_get(opts, "read-only")) {
        if (has_rw) {
            io_error("Cannot set both -r/-w and 'read-only'");
            goto out;
        }
        {
            json_t *v = json_object_get(opts, "read-only");
            const char *s = json_string_value(v);

            if (s && strcmp(s, "on") && strcmp(s, "off")) {
                io_error("Parameter 'read-only' expects 'on' or 'off'");
                goto out;
            }
            ro = s ? !strcmp(s, "on") : json_is_true(v);
            json_object_del(opts, "read-only");
        }
    }
    if (json_object_get(opts, "cache") && has_cache) {
        io_error("Cannot set both -c and the cache options");
        goto out;
    }
    if (reopen_changes_fixed(ctx, opts)) {
        goto out;
    }
    io_aio_drain();
    if (json_object_size(opts) == 0 && !has_cache &&
        f.nocache == ctx->node->cache_direct &&
        f.no_flush == ctx->node->cache_no_flush) {
        /* Only the read-only flag (or nothing) changes: keep the node. */
        if (ro != ctx->read_only) {
            uint32_t perm = BLOCK_PERM_CONSISTENT_READ |
                            (ro ? 0 : BLOCK_PERM_WRITE);
            struct block_handle *h;

            block_handle_free(ctx->h);
            ctx->h = NULL;
            ret = block_node_set_read_only(ctx->node, ro, &e);
            h = block_handle_new(ctx->node, io_prog, ret < 0 ?
                                 (ctx->read_only ? BLOCK_PERM_CONSISTENT_READ
                                  : BLOCK_PERM_CONSISTENT_READ |
                                    BLOCK_PERM_WRITE) : perm,
                                 BLOCK_PERM_ALL, NULL);
            ctx->h = h;
            if (ret < 0) {
                err_report(io_prog, e);
                goto out;
            }
            ctx->read_only = ro;
        }
        ctx->writethrough = f.writethrough;
        ret = 0;
        goto out;
    }
    /* Other options: open again with the old ones and the new ones. */
    o = json_deep_copy(ctx->opts);
    json_object_del(o, "cache");
    json_object_set_new(o, "read-only", json_boolean(ro));
    if (!parse_opts(o, "") && 0) {
        goto out;
    }
    {
        const char *key;
        json_t *v;

        json_object_foreach(opts, key, v) {
            json_object_set(o, key, v);
        }
    }
    {
        CLEANUP_FREE char *name = ctx->filename ? xstrdup(ctx->filename)
                                                : NULL;
        struct open_flags nf = f;

        nf.read_only = ro;
        closefile(ctx);
        ret = openfile(ctx, name, o, &nf) ? 0 : -EINVAL;
    }
    json_decref(o);
out:
    json_decref(opts);
    return ret;
}

static int
cmd_quit(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv UNUSED)
{
    g_quit = true;
    return 0;
}

static int cmd_help(struct io_ctx *ctx, int argc, char **argv);

static const struct io_cmd open_cmd = {
    "open", "o", cmd_open, 1, -1, IO_CMD_NOFILE_OK,
    "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    "open the file specified by path",
    " Opens an image for the other commands (the first one, when lockstep-io\n"
    " was started without a file).\n"
    " -r, -- read-only\n"
    " -s, -- writes go to a temporary overlay, dropped at close\n"
    " -C, -- copy-on-read: reads copy data from the backing chain\n"
    " -n, -- no host cache (cache.direct), like -t none\n"
    " -U, -- share the image with its other users\n"
    " -k, -- Linux AIO (refused: not supported)\n"
    " -i, -- AIO mode: threads, io_uring or native (refused)\n"
    " -t, -- cache mode: none, directsync, writeback, unsafe, writethrough\n"
    " -d, -- discard mode: unmap (default) or ignore\n"
    " -o, -- node options (key=value,...)\n",
};

static const struct io_cmd io_ctl_cmds[] = {
    { "close", "c", cmd_close, 0, 0, 0, NULL,
      "close the current open file", NULL },
    { "help", "?", cmd_help, 0, 1, IO_CMD_GLOBAL, "[command]",
      "help for one or all commands", NULL },
    { "quit", "q", cmd_quit, -1, -1, IO_CMD_GLOBAL, NULL,
      "exit the program", NULL },
    { "reopen", NULL, cmd_reopen, 0, -1, 0,
      "[(-r|-w)] [-c cache] [-o options]",
      "reopens an image with new options",
      " Changes the options of the open image.\n"
      " -r, -- read-only\n"
      " -w, -- read-write\n"
      " -c, -- cache mode (as open -t)\n"
      " -o, -- node options (key=value,...)\n" },
    { NULL, NULL, NULL, 0, 0, 0, NULL, NULL, NULL },
};

/* Every command, sorted by name as qemu-io lists them. */
static const struct io_cmd **all_cmds;
static size_t nr_cmds;

static int
cmd_compare(const void *a, const void *b)
{
    return strcmp((*(const struct io_cmd *const *)a)->name,
                  (*(const struct io_cmd *const *)b)->name);
}

static void
cmds_init(void)
{
    size_t n = 1;

    for (const struct io_cmd *c = io_data_cmds; c->name; c++) {
        n++;
    }
    for (const struct io_cmd *c = io_ctl_cmds; c->name; c++) {
        n++;
    }
    all_cmds = xcalloc(n, sizeof(*all_cmds));
    all_cmds[nr_cmds++] = &open_cmd;
    for (const struct io_cmd *c = io_data_cmds; c->name; c++) {
        all_cmds[nr_cmds++] = c;
    }
    for (const struct io_cmd *c = io_ctl_cmds; c->name; c++) {
        all_cmds[nr_cmds++] = c;
    }
    qsort(all_cmds, nr_cmds, sizeof(*all_cmds), cmd_compare);
}

static const struct io_cmd *
cmd_find(const char *name)
{
    for (size_t i = 0; i < nr_cmds; i++) {
        const struct io_cmd *c = all_cmds[i];

        if (!strcmp(c->name, name) || (c->altname &&
                                       !strcmp(c->altname, name))) {
            return c;
        }
    }
    return NULL;
}

static void
help_line(const char *name, const struct io_cmd *c)
{
    printf("%s %s%s-- %s\n", name, c->args ? c->args : "",
           c->args ? " " : "", c->oneline);
}

static int
cmd_help(struct io_ctx *ctx UNUSED, int argc, char **argv)
{
    const struct io_cmd *c;

    if (argc < 2) {
        for (size_t i = 0; i < nr_cmds; i++) {
            help_line(all_cmds[i]->name, all_cmds[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    c = cmd_find(argv[1]);
    if (!c) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_line(argv[1], c);
    if (c->help) {
        printf("\n%s\n", c->help);
    }
    return 0;
}

/* ---- Dispatch ------------------------------------------------------------ */

static bool
check_argc(const struct io_cmd *c, const char *name, int n)
{
    if (c->argmin < 0 ||
        (n >= c->argmin && (c->argmax < 0 || n <= c->argmax))) {
        return true;
    }
    if (c->argmax < 0) {
        fprintf(stderr, "bad argument count %d to %s, expected at least %d "
                "arguments\n", n, name, c->argmin);
    } else if (c->argmin == c->argmax) {
        fprintf(stderr, "bad argument count %d to %s, expected %d "
                "arguments\n", n, name, c->argmin);
    } else {
        fprintf(stderr, "bad argument count %d to %s, expected between %d "
                "and %d arguments\n", n, name, c->argmin, c->argmax);
    }
    return false;
}

/* Run one command line (words split at spaces, as qemu-io does). */
static int
run_line(struct io_ctx *ctx, const char *line)
{
    CLEANUP_FREE char *copy = xstrdup(line);
    CLEANUP_FREE char **argv = xcalloc(strlen(line) / 2 + 2, sizeof(*argv));
    const struct io_cmd *c;
    int argc = 0, ret;
    char *save = NULL;

    for (char *w = strtok_r(copy, " ", &save); w;
         w = strtok_r(NULL, " ", &save)) {
        argv[argc++] = w;
    }
    if (argc == 0) {
        return 0;
    }
    io_aio_reap();
    c = cmd_find(argv[0]);
    if (!c) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    if (!(c->flags & (IO_CMD_GLOBAL | IO_CMD_NOFILE_OK)) && !ctx->node) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (!check_argc(c, argv[0], argc - 1)) {
        return -EINVAL;
    }
    if (ctx->node && (c->flags & (IO_CMD_WRITES | IO_CMD_RESIZE))) {
        ret = io_need_perm(ctx, ((c->flags & IO_CMD_WRITES) ?
                                 BLOCK_PERM_WRITE : 0) |
                                ((c->flags & IO_CMD_RESIZE) ?
                                 BLOCK_PERM_RESIZE : 0));
        if (ret < 0) {
            return ret;
        }
    }
    optind = 0;
    ret = c->fn(ctx, argc, argv);
    io_aio_reap();
    fflush(stdout);
    return ret;
}

/* Commands from standard input, after a prompt (qemu-io prints it even
 * when stdin is no terminal; the iotests filter it out). */
static int
run_stdin(struct io_ctx *ctx)
{
    char *line = NULL;
    size_t cap = 0;
    int last = 0;

    while (!g_quit) {
        ssize_t n;
        int ret;

        printf("%s> ", io_prog);
        fflush(stdout);
        n = getline(&line, &cap, stdin);
        if (n < 0) {
            break;
        }
        if (n > 0 && line[n - 1] == '\n') {
            line[n - 1] = '\0';
        }
        ret = run_line(ctx, line);
        if (ret < 0) {
            last = ret;
        }
    }
    free(line);
    return last;
}

/* ---- main ---------------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(f,
        "Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
        "Exercise a block node with qemu-io's commands.\n"
        "\n"
        "  --image-opts         treat file as option string "
        "(key=value,... or JSON)\n"
        "  -c, --cmd STRING     execute a command (may be repeated); "
        "without -c,\n"
        "                       commands are read from standard input\n"
        "  -f, --format FMT     the format driver (default: probe qcow2, "
        "else raw)\n"
        "  -r, --read-only      open read-only\n"
        "  -s, --snapshot       writes go to a temporary overlay\n"
        "  -C, --copy-on-read   reads copy data from the backing chain into\n"
        "                       the image\n"
        "  -n, --nocache        no host cache, short for -t none\n"
        "  -m, --misalign       misalign buffers by 16 bytes\n"
        "  -i, --aio=MODE       AIO mode of the file nodes: threads,\n"
        "                       io_uring, native (refused: no Linux AIO)\n"
        "  -k, --native-aio     short for --aio=native\n"
        "  -t, --cache=MODE     cache mode: none, directsync, writeback,\n"
        "                       unsafe, writethrough (default)\n"
        "  -d, --discard=MODE   discard mode: unmap (default) or ignore\n"
        "  -U, --force-share    share the image with its other users\n"
        "  -h, --help           display this help and exit\n"
        "  -V, --version        output version information and exit\n"
        "\n"
        "FILE may be json:{...}, blkdebug:[CONFIG]:FILE, an NBD URL or a "
        "path.\n"
        "See '%s -c help' for the commands.  The exit status is 1 if the\n"
        "image could not be opened or a command failed.\n",
        io_prog, io_prog);
}

struct io_args {
    struct open_flags f;
    const char *fmt;
    char **cmds;
    int ncmds;
};

static void
parse_args(int argc, char **argv, struct io_args *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "copy-on-read", no_argument, NULL, 'C' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "trace", required_argument, NULL, 'T' },
        { "object", required_argument, NULL, 'O' },
        { "image-opts", no_argument, NULL, 'I' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    a->cmds = xcalloc(argc, sizeof(*a->cmds));
    while ((opt = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", longopts,
                              NULL)) != -1) {
        switch (opt) {
        case 's':
            a->f.snapshot = true;
            break;
        case 'n':
            a->f.nocache = true;
            a->f.writethrough = false;
            break;
        case 'C':
            a->f.copy_on_read = true;
            break;
        case 'd':
            if (!parse_discard(optarg, &a->f)) {
                io_error("Invalid discard option: %s", optarg);
                exit(1);
            }
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 'c':
            a->cmds[a->ncmds++] = optarg;
            break;
        case 'r':
            a->f.read_only = true;
            break;
        case 'm':
            io_misalign = true;
            break;
        case 'k':
            if (!parse_aio("native", &a->f)) {
                exit(1);
            }
            break;
        case 'i':
            if (!parse_aio(optarg, &a->f)) {
                exit(1);
            }
            break;
        case 't':
            if (!parse_cache(optarg, &a->f)) {
                io_error("Invalid cache option: %s", optarg);
                exit(1);
            }
            break;
        case 'T':
            io_error("tracing is not supported");
            exit(1);
        case 'V':
            printf("%s version %s\n", io_prog, LOCKSTEP_VERSION);
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        case 'U':
            a->f.force_share = true;
            break;
        case 'O':
            io_error("--object is not supported (no secrets, no "
                     "encryption)");
            exit(1);
        case 'I':
            g_image_opts = true;
            break;
        default:
            usage(stdout);
            exit(1);
        }
    }
    if (argc - optind > 1) {
        usage(stdout);
        exit(1);
    }
    if (a->fmt && g_image_opts) {
        io_error("--image-opts and -f are mutually exclusive");
        exit(1);
    }
}

int
main(int argc, char **argv)
{
    struct io_args a = { .f = { .discard = "unmap", .writethrough = true } };
    struct io_ctx ctx = { 0 };
    int last = 0;

    if (!strcmp(basename(argv[0]), "qemu-io")) {
        io_prog = "qemu-io";
    }
    cmds_init();
    io_aio_init();
    parse_args(argc, argv, &a);
    if (argc - optind == 1) {
        json_t *opts = NULL;
        const char *name = argv[optind];

        if (g_image_opts) {
            opts = parse_opts_implied(NULL, argv[optind], "driver");
            if (!opts) {
                exit(1);
            }
            name = NULL;
        } else if (a.fmt) {
            opts = json_pack("{s:s}", "driver", a.fmt);
        }
        if (!openfile(&ctx, name, opts, &a.f)) {
            json_decref(opts);
            exit(1);
        }
        json_decref(opts);
    }
    if (a.ncmds > 0) {
        for (int i = 0; i < a.ncmds && !g_quit; i++) {
            int ret = run_line(&ctx, a.cmds[i]);

            if (ret < 0) {
                last = ret;
            }
        }
    } else {
        last = run_stdin(&ctx);
    }
    io_aio_drain();
    closefile(&ctx);
    free(a.cmds);
    free(all_cmds);
    fflush(stdout);
    return last < 0 ? 1 : 0;
}
