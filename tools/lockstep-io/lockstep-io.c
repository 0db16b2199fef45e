/* SPDX-License-Identifier: MIT */
/*
 * lockstep-io: a qemu-io compatible command line exerciser for the block
 * layer.  It opens one node (from "-f FMT FILE" or "--image-opts OPTIONS"),
 * takes a handle on it and runs qemu-io style commands (read, write,
 * discard, flush, map, length, info, help) given with -c or on stdin,
 * printing what qemu-io prints so that scripts and test expectations
 * written for qemu-io keep working.  All I/O goes through block_handle_*.
 * Unlike some qemu-io versions, the exit status is 1 when any command
 * failed.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lockstep/block.h"
#include "keyval.h"
#include "util.h"

#ifndef LOCKSTEP_VERSION
#define LOCKSTEP_VERSION "0.1.0"
#endif

/* qemu-io's limit for one request (BDRV_REQUEST_MAX_BYTES), for its message. */
#define IO_MAX_BYTES 2147483136ULL
/* Buffers are aligned for O_DIRECT so that the core need not bounce. */
#define IO_BUF_ALIGN 4096
/* qemu-io fills write buffers with 0xcd when no pattern is given. */
#define IO_DEFAULT_PATTERN 0xcd
/* ... and read buffers with 0xab before reading. */
#define IO_READ_FILL 0xab

struct io_ctx {
    struct block_node *node;
    struct block_handle *h;
    bool read_only;
};

struct io_cmd {
    const char *name;
    int (*fn)(struct io_ctx *ctx, int argc, char **argv);
    int argmin;
    int argmax;             /* -1: no maximum */
    bool writes;            /* refused on a read-only node */
    const char *args;       /* usage, after the name */
    const char *oneline;
    const char *help;       /* extended help, or NULL */
};

static const struct io_cmd *cmd_find(const char *name);
static void help_all(void);

/* ---- Output helpers, formatted like qemu-io's ------------------------- */

/* "4 KiB", "1.500 KiB", "40 bytes": three decimals unless they are zero. */
static void
fmt_size(char *buf, size_t len, double value)
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
    snprintf(buf, len, "%.3f %s", value, units[u]);
    dot = strstr(buf, ".000 ");
    if (dot) {
        memmove(dot, dot + 4, strlen(dot + 4) + 1);
    }
}

/* "00.00 sec" under a second, else "h:mm:ss.ss" (qemu-io's timestr). */
static void
fmt_time(char *buf, size_t len, int64_t ns)
{
    uint64_t secs = ns / 1000000000;
    double frac = (ns % 1000000000) / 1e9;

    if (secs == 0) {
        snprintf(buf, len, "%05.2f sec", frac);
    } else {
        snprintf(buf, len, "%u:%02u:%05.2f", (unsigned)(secs / 3600),
                 (unsigned)(secs / 60 % 60), (double)(secs % 60) + frac);
    }
}

static void
print_stats(uint64_t bytes, int64_t ns)
{
    char total[64], rate[64], when[64];
    double secs = ns > 0 ? ns / 1e9 : 1e-9;

    fmt_size(total, sizeof(total), bytes);
    fmt_size(rate, sizeof(rate), bytes / secs);
    fmt_time(when, sizeof(when), ns);
    printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", total, 1, when,
           rate, 1 / secs);
}

static void
print_done(const char *verb, uint64_t offset, uint64_t bytes, int64_t ns)
{
    printf("%s %" PRIu64 "/%" PRIu64 " bytes at offset %" PRIu64 "\n", verb,
           bytes, bytes, offset);
    print_stats(bytes, ns);
}

/* qemu-io's hexdump: 16 bytes a line, then their printable characters. */
static void
hexdump(const uint8_t *buf, uint64_t offset, uint64_t bytes)
{
    for (uint64_t i = 0; i < bytes; i += 16) {
        uint64_t n = MIN(16, bytes - i);

        printf("%08" PRIx64 ":  ", offset + i);
        for (uint64_t j = 0; j < n; j++) {
            printf("%02x ", buf[i + j]);
        }
        putchar(' ');
        for (uint64_t j = 0; j < n; j++) {
            putchar(isprint(buf[i + j]) ? buf[i + j] : '.');
        }
        putchar('\n');
    }
}

static void
usage_line(const struct io_cmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args, c->oneline);
}

/* ---- Argument parsing --------------------------------------------------- */

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
 * than a byte ("1.5k").  Returns 0, -EINVAL or -ERANGE.
 */
static int
parse_num(const char *s, int64_t *out)
{
    bool hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *p;
    char *end;
    unsigned long long whole;
    double frac = 0, value;
    int shift = 0;

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

static bool
arg_num(const char *s, int64_t *out)
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

/* Parse "OFF LEN" of a data command; LEN is capped like qemu-io does. */
static bool
arg_range(char **argv, int64_t *offset, int64_t *bytes)
{
    if (!arg_num(argv[0], offset) || !arg_num(argv[1], bytes)) {
        return false;
    }
    if ((uint64_t)*bytes > IO_MAX_BYTES) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_BYTES,
               argv[1]);
        return false;
    }
    return true;
}

static bool
arg_pattern(const char *s, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 0);
    if (errno || end == s || *end || v < 0 || v > 0xff) {
        printf("%s is not a valid pattern byte\n", s);
        return false;
    }
    *out = (int)v;
    return true;
}

static void *
buf_alloc(uint64_t bytes)
{
    void *buf = NULL;

    if (posix_memalign(&buf, IO_BUF_ALIGN, MAX(bytes, 1)) != 0) {
        return NULL;
    }
    return buf;
}

/* ---- Commands ------------------------------------------------------------ */

struct read_opts {
    int pattern;           /* -1: no verification */
    int64_t pat_off;       /* -s */
    int64_t pat_len;       /* -l, -1: to the end */
    bool verbose;
    bool quiet;
};

/* Returns the index of the first non-option argument, or -1. */
static int
read_getopt(const struct io_cmd *c, int argc, char **argv,
            struct read_opts *o)
{
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, "P:s:l:vqp")) != -1) {
        switch (opt) {
        case 'P':
            if (!arg_pattern(optarg, &o->pattern)) {
                return -1;
            }
            break;
        case 's':
            if (!arg_num(optarg, &o->pat_off)) {
                return -1;
            }
            break;
        case 'l':
            if (!arg_num(optarg, &o->pat_len)) {
                return -1;
            }
            break;
        case 'v':
            o->verbose = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'p':
            break;
        default:
            usage_line(c);
            return -1;
        }
    }
    if (optind != argc - 2 ||
        ((o->pat_off || o->pat_len >= 0) && o->pattern < 0)) {
        usage_line(c);
        return -1;
    }
    return optind;
}

/* Check the -P pattern over [pat_off, pat_off + pat_len) of buf. */
static bool
read_verify(const struct read_opts *o, const uint8_t *buf, int64_t offset,
            int64_t bytes)
{
    int64_t len = o->pat_len >= 0 ? o->pat_len : bytes - o->pat_off;

    if (o->pat_off + len > bytes || len < 0) {
        printf("Pattern verification range exceeds end of read data\n");
        return false;
    }
    for (int64_t i = 0; i < len; i++) {
        if (buf[o->pat_off + i] != o->pattern) {
            printf("Pattern verification failed at offset %" PRId64 ", %"
                   PRId64 " bytes\n", offset + o->pat_off, len);
            return false;
        }
    }
    return true;
}

static int
cmd_read(struct io_ctx *ctx, int argc, char **argv)
{
    struct read_opts o = { .pattern = -1, .pat_len = -1 };
    int64_t offset, bytes, t0, ns;
    uint8_t *buf;
    int i, ret;
    bool ok = true;

    i = read_getopt(cmd_find("read"), argc, argv, &o);
    if (i < 0 || !arg_range(argv + i, &offset, &bytes)) {
        return -EINVAL;
    }
    buf = buf_alloc(bytes);
    if (!buf) {
        printf("read failed: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    /* Like qemu-io: bytes a driver leaves untouched read as 0xab. */
    memset(buf, IO_READ_FILL, bytes);
    t0 = clock_ns();
    ret = block_handle_pread(ctx->h, offset, bytes, buf, 0);
    ns = clock_ns() - t0;
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        free(buf);
        return ret;
    }
    if (o.pattern >= 0) {
        ok = read_verify(&o, buf, offset, bytes);
    }
    if (o.verbose) {
        hexdump(buf, offset, bytes);
    }
    if (!o.quiet) {
        print_done("read", offset, bytes, ns);
    }
    free(buf);
    return ok ? 0 : -EIO;
}

struct write_opts {
    int pattern;
    bool zero;
    bool unmap;
    bool fua;
    bool quiet;
};

static int
write_getopt(const struct io_cmd *c, int argc, char **argv,
             struct write_opts *o)
{
    bool have_pattern = false;
    int opt;

    optind = 0;
    while ((opt = getopt(argc, argv, "P:zufq")) != -1) {
        switch (opt) {
        case 'P':
            have_pattern = true;
            if (!arg_pattern(optarg, &o->pattern)) {
                return -1;
            }
            break;
        case 'z':
            o->zero = true;
            break;
        case 'u':
            o->unmap = true;
            break;
        case 'f':
            o->fua = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        default:
            usage_line(c);
            return -1;
        }
    }
    if (optind != argc - 2) {
        usage_line(c);
        return -1;
    }
    if (o->zero && have_pattern) {
        printf("Only one of -z, -P, and -s can be specified at the same "
               "time\n");
        return -1;
    }
    if (o->unmap && !o->zero) {
        printf("-u requires -z to be specified\n");
        return -1;
    }
    return optind;
}

static int
cmd_write(struct io_ctx *ctx, int argc, char **argv)
{
    struct write_opts o = { .pattern = IO_DEFAULT_PATTERN };
    unsigned flags;
    int64_t offset, bytes, t0, ns;
    uint8_t *buf = NULL;
    int i, ret;

    i = write_getopt(cmd_find("write"), argc, argv, &o);
    if (i < 0 || !arg_range(argv + i, &offset, &bytes)) {
        return -EINVAL;
    }
    flags = (o.fua ? BLOCK_REQ_FUA : 0) | (o.unmap ? BLOCK_REQ_MAY_UNMAP : 0);
    if (!o.zero) {
        buf = buf_alloc(bytes);
        if (!buf) {
            printf("write failed: %s\n", strerror(ENOMEM));
            return -ENOMEM;
        }
        memset(buf, o.pattern, bytes);
    }
    t0 = clock_ns();
    if (o.zero) {
        ret = block_handle_pwrite_zeroes(ctx->h, offset, bytes, flags);
    } else {
        ret = block_handle_pwrite(ctx->h, offset, bytes, buf, flags);
    }
    ns = clock_ns() - t0;
    free(buf);
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!o.quiet) {
        print_done("wrote", offset, bytes, ns);
    }
    return 0;
}

static int
cmd_discard(struct io_ctx *ctx, int argc, char **argv)
{
    int64_t offset, bytes, t0, ns;
    bool quiet = false;
    int opt, ret;

    optind = 0;
    while ((opt = getopt(argc, argv, "q")) != -1) {
        if (opt != 'q') {
            usage_line(cmd_find("discard"));
            return -EINVAL;
        }
        quiet = true;
    }
    if (optind != argc - 2) {
        usage_line(cmd_find("discard"));
        return -EINVAL;
    }
    if (!arg_range(argv + optind, &offset, &bytes)) {
        return -EINVAL;
    }
    t0 = clock_ns();
    ret = block_handle_pdiscard(ctx->h, offset, bytes);
    ns = clock_ns() - t0;
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!quiet) {
        print_done("discard", offset, bytes, ns);
    }
    return 0;
}

static int
cmd_flush(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    int ret = block_handle_flush(ctx->h);

    if (ret < 0) {
        printf("flush failed: %s\n", strerror(-ret));
    }
    return ret;
}

static int
cmd_length(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    int64_t len = block_handle_getlength(ctx->h);
    char buf[64];

    if (len < 0) {
        printf("getlength: %s\n", strerror((int)-len));
        return (int)len;
    }
    fmt_size(buf, sizeof(buf), len);
    printf("%s\n", buf);
    return 0;
}

/* One map line: qemu-io pads "not" to three spaces when allocated. */
static void
map_print(uint64_t offset, uint64_t bytes, bool allocated)
{
    char s_bytes[64], s_off[64];

    fmt_size(s_bytes, sizeof(s_bytes), bytes);
    fmt_size(s_off, sizeof(s_off), offset);
    printf("%s (0x%" PRIx64 ") bytes %s allocated at offset %s (0x%" PRIx64
           ")\n", s_bytes, bytes, allocated ? "   " : "not", s_off, offset);
}

/*
 * Allocated anywhere in the chain (qemu-io uses is_allocated_above down to
 * the bottom).  Adjacent extents with the same answer are merged.
 */
static int
cmd_map(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    int64_t len = block_handle_getlength(ctx->h);
    uint64_t offset = 0, start = 0;
    bool run_alloc = false;

    if (len < 0) {
        printf("could not get image length: %s\n", strerror((int)-len));
        return (int)len;
    }
    while (offset < (uint64_t)len) {
        struct block_status_info info = { 0 };
        uint64_t pnum = 0;
        bool alloc;
        int ret;

        ret = block_handle_status(ctx->h, offset, len - offset, &pnum, &info);
        if (ret < 0) {
            printf("block_status failed: %s\n", strerror(-ret));
            return ret;
        }
        assert(pnum > 0);
        alloc = (ret & BLOCK_STATUS_ALLOCATED) || info.depth > 0;
        if (offset > start && alloc != run_alloc) {
            map_print(start, offset - start, run_alloc);
            start = offset;
        }
        run_alloc = alloc;
        offset += MIN(pnum, len - offset);
    }
    if (offset > start) {
        map_print(start, offset - start, run_alloc);
    }
    return 0;
}

/* The cluster size the driver reports in its query data, or 0. */
static int64_t
node_cluster_size(struct block_node *node)
{
    json_t *info, *v;
    int64_t cs = 0;

    if (!node->drv->query) {
        return 0;
    }
    info = json_object();
    node->drv->query(node, info);
    v = json_object_get(info, "cluster-size");
    if (!v) {
        v = json_object_get(json_object_get(info, "format-specific"),
                            "cluster-size");
    }
    if (json_is_integer(v)) {
        cs = json_integer_value(v);
    }
    json_decref(info);
    return cs;
}

static int
cmd_info(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    /* The top node's driver, filters included, as qemu-io prints it. */
    struct block_node *node = ctx->node;
    char buf[64];

    printf("format name: %s\n", node->drv->name);
    fmt_size(buf, sizeof(buf), node_cluster_size(node));
    printf("cluster size: %s\n", buf);
    printf("vm state offset: 0 bytes\n");
    return 0;
}

static int
cmd_help(struct io_ctx *ctx UNUSED, int argc, char **argv)
{
    const struct io_cmd *c;

    if (argc == 2) {
        c = cmd_find(argv[1]);
        if (!c) {
            printf("command %s not found\n", argv[1]);
            return -EINVAL;
        }
        usage_line(c);
        if (c->help) {
            printf("\n%s\n", c->help);
        }
        return 0;
    }
    help_all();
    return 0;
}

/* The run loop stops when this is set (the "quit" command). */
static bool g_quit;

static int
cmd_quit(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv UNUSED)
{
    g_quit = true;
    return 0;
}

static const struct io_cmd io_cmds[] = {
    { "discard", cmd_discard, 2, -1, true, "[-q] off len",
      "discards a number of bytes at a specified offset",
      " Discards the range (the node drops it only with discard=unmap).\n"
      " -q, -- quiet mode, do not show I/O statistics\n" },
    { "flush", cmd_flush, 0, 0, false, "",
      "flush all in-core file state to disk", NULL },
    { "help", cmd_help, 0, 1, false, "[command]",
      "help for one or all commands", NULL },
    { "info", cmd_info, 0, 0, false, "",
      "prints information about the current file", NULL },
    { "length", cmd_length, 0, 0, false, "",
      "gets the length of the current file", NULL },
    { "map", cmd_map, 0, 0, false, "",
      "prints the allocated areas of a file", NULL },
    { "quit", cmd_quit, 0, 0, false, "", "exit the program", NULL },
    { "read", cmd_read, 2, -1, false, "[-qv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset",
      " Example:\n"
      " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the "
      "file\n\n"
      " -l, -- length for pattern verification (only with -P)\n"
      " -p, -- ignored for backwards compatibility\n"
      " -P, -- use a pattern to verify read data\n"
      " -q, -- quiet mode, do not show I/O statistics\n"
      " -s, -- start offset for pattern verification (only with -P)\n"
      " -v, -- dump buffer to standard output\n" },
    { "write", cmd_write, 2, -1, true, "[-fquz] [-P pattern] off len",
      "writes a number of bytes at a specified offset",
      " Example:\n"
      " 'write -P 0xab 512 1k' - writes 1 kilobyte of 0xab at 512 bytes\n\n"
      " -f, -- use Force Unit Access semantics\n"
      " -P, -- use different pattern to fill file (default 0xcd)\n"
      " -q, -- quiet mode, do not show I/O statistics\n"
      " -u, -- with -z, allow unmapping\n"
      " -z, -- write zeroes using the block layer's write zeroes\n" },
    { NULL, NULL, 0, 0, false, NULL, NULL, NULL },
};

static const struct io_cmd *
cmd_find(const char *name)
{
    for (const struct io_cmd *c = io_cmds; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

static void
help_all(void)
{
    for (const struct io_cmd *c = io_cmds; c->name; c++) {
        usage_line(c);
    }
    printf("\nUse 'help commandname' for extended help.\n");
}

/* ---- Dispatch ------------------------------------------------------------ */

static bool
check_argc(const struct io_cmd *c, int n)
{
    if (n >= c->argmin && (c->argmax < 0 || n <= c->argmax)) {
        return true;
    }
    if (c->argmax < 0) {
        fprintf(stderr, "bad argument count %d to %s, expected at least %d "
                "arguments\n", n, c->name, c->argmin);
    } else if (c->argmin == c->argmax) {
        fprintf(stderr, "bad argument count %d to %s, expected %d "
                "arguments\n", n, c->name, c->argmin);
    } else {
        fprintf(stderr, "bad argument count %d to %s, expected between %d "
                "and %d arguments\n", n, c->name, c->argmin, c->argmax);
    }
    return false;
}

/*
 * Split a command line into words in place: blanks separate, double quotes
 * group.  Returns the number of words (at most max).
 */
static int
split_words(char *line, char **argv, int max)
{
    int argc = 0;
    char *p = line;

    while (argc < max) {
        char *out;

        p += strspn(p, " \t\r\n");
        if (!*p) {
            break;
        }
        argv[argc++] = out = p;
        while (*p && !strchr(" \t\r\n", *p)) {
            if (*p == '"') {
                for (p++; *p && *p != '"'; p++) {
                    *out++ = *p;
                }
                p += *p == '"';
            } else {
                *out++ = *p++;
            }
        }
        if (*p) {
            p++;
        }
        *out = '\0';
    }
    return argc;
}

/* Run one command line.  Returns 0, or -errno when the command failed. */
static int
run_line(struct io_ctx *ctx, const char *line)
{
    CLEANUP_FREE char *copy = xstrdup(line);
    char *argv[64];
    const struct io_cmd *c;
    int argc, ret;

    argc = split_words(copy, argv, ARRAY_SIZE(argv) - 1);
    if (argc == 0) {
        return 0;
    }
    argv[argc] = NULL;
    c = cmd_find(argv[0]);
    if (!c) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    if (!check_argc(c, argc - 1)) {
        return -EINVAL;
    }
    if (c->writes && ctx->read_only) {
        /* qemu-io refuses before parsing the command's arguments. */
        fprintf(stderr, "lockstep-io: Block node is read-only\n");
        return -EACCES;
    }
    ret = c->fn(ctx, argc, argv);
    fflush(stdout);
    return ret;
}

static bool
run_stdin(struct io_ctx *ctx)
{
    bool tty = isatty(STDIN_FILENO);
    char *line = NULL;
    size_t cap = 0;
    bool ok = true;

    while (!g_quit) {
        if (tty) {
            printf("lockstep-io> ");
            fflush(stdout);
        }
        if (getline(&line, &cap, stdin) < 0) {
            break;
        }
        ok &= run_line(ctx, line) == 0;
    }
    free(line);
    return ok;
}

/* ---- Opening the image -------------------------------------------------- */

/*
 * Options that qemu-io sets on the node it opens: read-only from -r and the
 * discard mode from -d (qemu-io defaults to unmap, unlike blockdev-add).
 * Inline children inherit both from the core.  Explicit options win.
 */
static void
set_default_opts(json_t *opts, bool read_only, const char *discard)
{
    if (read_only && !json_object_get(opts, "read-only")) {
        json_object_set_new(opts, "read-only", json_true());
    }
    if (!json_object_get(opts, "discard")) {
        json_object_set_new(opts, "discard", json_string(discard));
    }
}

/* The qemu-io probe we support: qcow2 by its magic, anything else raw. */
static const char *
probe_format(const char *filename)
{
    unsigned char magic[4] = { 0 };
    FILE *f = fopen(filename, "rb");

    if (f) {
        if (fread(magic, 1, sizeof(magic), f) != sizeof(magic)) {
            memset(magic, 0, sizeof(magic));
        }
        fclose(f);
    }
    return memcmp(magic, "QFI\xfb", 4) == 0 ? "qcow2" : "raw";
}

/*
 * "-f FMT FILE": the same graph block_node_open_file() builds, made here so
 * that the discard mode can be passed (open_file takes no options).
 */
static json_t *
file_opts(const char *filename, const char *fmt, struct err **errp)
{
    const struct block_driver *drv;

    if (!fmt) {
        fmt = probe_format(filename);
    }
    drv = block_driver_find(fmt);
    if (!drv) {
        err_setf(errp, "Unknown driver '%s'", fmt);
        return NULL;
    }
    if (drv->kind == BLOCK_KIND_PROTOCOL) {
        return json_pack("{s:s, s:s}", "driver", fmt, "filename", filename);
    }
    return json_pack("{s:s, s:{s:s, s:s}}", "driver", fmt, "file", "driver",
                     "file", "filename", filename);
}

struct io_args {
    const char *fmt;
    const char *discard;
    const char *cache;          /* -t/-n: a cache mode, or NULL */
    bool read_only;
    bool image_opts;
    const char *target;
    char **cmds;
    int ncmds;
};

static bool
io_open(struct io_ctx *ctx, const struct io_args *a, struct err **errp)
{
    uint32_t perm = BLOCK_PERM_CONSISTENT_READ;
    json_t *opts;

    if (a->image_opts) {
        opts = keyval_or_json_parse(a->target, "driver", errp);
    } else {
        opts = file_opts(a->target, a->fmt, errp);
    }
    if (!opts) {
        return false;
    }
    set_default_opts(opts, a->read_only, a->discard);
    if (a->cache && block_opts_set_cache_mode(opts, a->cache, errp) < 0) {
        json_decref(opts);
        return false;
    }
    ctx->node = block_node_new(opts, errp);
    json_decref(opts);
    if (!ctx->node) {
        return false;
    }
    ctx->read_only = ctx->node->read_only;
    if (!ctx->read_only) {
        perm |= BLOCK_PERM_WRITE;
    }
    ctx->h = block_handle_new(ctx->node, "lockstep-io", perm, BLOCK_PERM_ALL,
                              errp);
    if (!ctx->h) {
        block_node_unref(ctx->node);
        return false;
    }
    return true;
}

static void
io_close(struct io_ctx *ctx)
{
    if (!ctx->read_only) {
        block_handle_flush(ctx->h);
    }
    block_handle_free(ctx->h);
    block_node_unref(ctx->node);
}

/* ---- main ---------------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(f,
        "Usage: lockstep-io [OPTIONS]... [-c STRING]... FILE\n"
        "       lockstep-io [OPTIONS]... --image-opts OPTIONS\n"
        "Exercise a block node with qemu-io style commands.\n"
        "\n"
        "  --image-opts         FILE is a node's options: key=value,... or "
        "JSON\n"
        "  -c, --cmd STRING     execute a command (may be repeated); "
        "without -c,\n"
        "                       commands are read from standard input\n"
        "  -f, --format FMT     the format driver (default: probe qcow2, "
        "else raw)\n"
        "  -r, --read-only      open read-only\n"
        "  -d, --discard=MODE   discard mode: unmap (default) or ignore\n"
        "  -t, --cache=MODE     cache mode: none (O_DIRECT), writeback "
        "(default)\n"
        "                       or unsafe (flushes ignored)\n"
        "  -n, --nocache        the same as -t none\n"
        "  -U, --force-share    accepted for qemu-io compatibility\n"
        "  -h, --help           display this help and exit\n"
        "  -V, --version        output version information and exit\n"
        "\n"
        "See 'lockstep-io -c help FILE' for the commands.  The exit status "
        "is 1 if\nthe image could not be opened or any command failed.\n");
}

/* Refuse a bad -t at once, with qemu-io's message. */
static bool
cache_mode_ok(const char *mode)
{
    json_t *o = json_object();
    struct err *e = NULL;
    bool ok = block_opts_set_cache_mode(o, mode, &e) == 0;

    json_decref(o);
    if (!ok) {
        err_report("lockstep-io", e);
    }
    return ok;
}

static bool
parse_args(int argc, char **argv, struct io_args *a)
{
    static const struct option longopts[] = {
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "nocache", no_argument, NULL, 'n' },
        { "force-share", no_argument, NULL, 'U' },
        { "image-opts", no_argument, NULL, 'O' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    a->cmds = xcalloc(argc, sizeof(*a->cmds));
    while ((opt = getopt_long(argc, argv, "+c:f:rd:t:nUhV", longopts,
                              NULL)) != -1) {
        switch (opt) {
        case 'c':
            a->cmds[a->ncmds++] = optarg;
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 'r':
            a->read_only = true;
            break;
        case 'd':
            if (strcmp(optarg, "unmap") && strcmp(optarg, "on") &&
                strcmp(optarg, "ignore") && strcmp(optarg, "off")) {
                fprintf(stderr, "lockstep-io: Invalid discard option: %s\n",
                        optarg);
                return false;
            }
            a->discard = optarg;
            break;
        case 't':
            if (!cache_mode_ok(optarg)) {
                return false;
            }
            a->cache = optarg;
            break;
        case 'n':
            a->cache = "none";
            break;
        case 'U':
            break;
        case 'O':
            a->image_opts = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case 'V':
            printf("lockstep-io version %s\n", LOCKSTEP_VERSION);
            exit(0);
        default:
            fprintf(stderr, "Try 'lockstep-io --help' for more "
                    "information.\n");
            return false;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "lockstep-io: %s\nTry 'lockstep-io --help' for more "
                "information.\n", optind == argc ? "missing FILE argument"
                : "too many arguments");
        return false;
    }
    if (a->image_opts && a->fmt) {
        fprintf(stderr, "lockstep-io: --image-opts and -f are mutually "
                "exclusive\n");
        return false;
    }
    a->target = argv[optind];
    return true;
}

int
main(int argc, char **argv)
{
    struct io_args a = { .discard = "unmap" };
    struct io_ctx ctx = { 0 };
    struct err *e = NULL;
    bool ok = true;

    if (!parse_args(argc, argv, &a)) {
        free(a.cmds);
        return 1;
    }
    if (!io_open(&ctx, &a, &e)) {
        /* qemu-io's wording: no device name for --image-opts. */
        if (a.image_opts) {
            err_prepend(&e, "can't open: ");
        } else {
            err_prepend(&e, "can't open device %s: ", a.target);
        }
        err_report("lockstep-io", e);
        free(a.cmds);
        return 1;
    }
    if (a.ncmds == 0) {
        ok = run_stdin(&ctx);
    }
    for (int i = 0; i < a.ncmds && !g_quit; i++) {
        ok &= run_line(&ctx, a.cmds[i]) == 0;
    }
    io_close(&ctx);
    free(a.cmds);
    fflush(stdout);
    return ok ? 0 : 1;
}
