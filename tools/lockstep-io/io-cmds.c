/* SPDX-License-Identifier: MIT */
/*
 * lockstep-io's I/O commands: read, readv, write, writev, aio_read,
 * aio_write, aio_flush, discard, flush, truncate, length, info, alloc,
 * map, the blkdebug breakpoint commands, sleep, sigraise and abort.  Each
 * parses its options as qemu-io 7.2 does and prints the same lines, with
 * the same checks in the same order, so that the iotests' expected
 * outputs hold for us too.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "io.h"
#include "lockstep/driver.h"
#include "util.h"

/* Write buffers are filled with 0xcd when no pattern is given. */
#define IO_DEFAULT_PATTERN 0xcd
/* ... and read buffers with 0xab before reading. */
#define IO_READ_FILL 0xab
#define SECTOR 512

static const struct io_cmd *find(const char *name);

/* -P's byte: strtol's syntax, 0..255. */
static bool
arg_pattern(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 0);

    if (v < 0 || v > 0xff || *end) {
        printf("%s is not a valid pattern byte\n", s);
        return false;
    }
    *out = (int)v;
    return true;
}

/* The lengths of a vectored command, summed with qemu-io's checks. */
static bool
arg_lengths(char **argv, int n, uint64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        int64_t len;

        if (!io_num(argv[i], &len)) {
            return false;
        }
        if ((uint64_t)len > IO_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %llu\n", argv[i],
                   IO_MAX_BYTES);
            return false;
        }
        if (*total > IO_MAX_BYTES - (uint64_t)len) {
            printf("The total number of bytes exceed the maximum size "
                   "%llu\n", IO_MAX_BYTES);
            return false;
        }
        *total += (uint64_t)len;
    }
    return true;
}

static bool
sector_aligned(int64_t offset, int64_t count)
{
    if (offset % SECTOR) {
        printf("%" PRId64 " is not a sector-aligned value for 'offset'\n",
               offset);
        return false;
    }
    if (count % SECTOR) {
        printf("%" PRId64 " is not a sector-aligned value for 'count'\n",
               count);
        return false;
    }
    return true;
}

static bool
pattern_ok(const uint8_t *buf, int64_t len, int pattern)
{
    for (int64_t i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            return false;
        }
    }
    return true;
}

/* ---- read, readv -------------------------------------------------------- */

static int
cmd_read(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("read");
    bool machine = false, quiet = false, verbose = false, vmstate = false;
    bool has_pattern = false, has_off = false, has_len = false;
    int64_t offset, count, pat_off = 0, pat_len = 0, t0, ns;
    int pattern = 0, opt, ret;
    uint8_t *buf;

    while ((opt = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (opt) {
        case 'b':
            vmstate = true;
            break;
        case 'C':
            machine = true;
            break;
        case 'l':
            has_len = true;
            if (!io_num(optarg, &pat_len)) {
                return -EINVAL;
            }
            break;
        case 'p':
            break;
        case 'P':
            has_pattern = true;
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            has_off = true;
            if (!io_num(optarg, &pat_off)) {
                return -EINVAL;
            }
            break;
        case 'v':
            verbose = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset) || !io_num(argv[optind + 1], &count)) {
        return -EINVAL;
    }
    if ((uint64_t)count > IO_MAX_BYTES) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_BYTES,
               argv[optind + 1]);
        return -EINVAL;
    }
    if (!has_pattern && (has_len || has_off)) {
        io_usage(c);
        return -EINVAL;
    }
    if (!has_len) {
        pat_len = count - pat_off;
    }
    if (pat_len < 0 || pat_len + pat_off > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (vmstate && !sector_aligned(offset, count)) {
        return -EINVAL;
    }
    buf = io_buf_alloc((uint64_t)count, IO_READ_FILL);
    t0 = clock_ns();
    ret = vmstate ? block_vmstate_pread(block_handle_node(ctx->h),
                                        (uint64_t)offset, (uint64_t)count,
                                        buf)
                  : block_handle_pread(ctx->h, (uint64_t)offset,
                                       (uint64_t)count, buf, 0);
    ns = clock_ns() - t0;
    if (ret < 0) {
        printf("read failed: %s\n", strerror(-ret));
        goto out;
    }
    if (has_pattern && !pattern_ok(buf + pat_off, pat_len, pattern)) {
        printf("Pattern verification failed at offset %" PRId64 ", %" PRId64
               " bytes\n", offset + pat_off, pat_len);
        ret = -EINVAL;
    }
    if (!quiet) {
        if (verbose) {
            io_hexdump(buf, offset, count);
        }
        io_report("read", ns, offset, count, count, 1, machine);
    }
out:
    io_buf_free(buf);
    return ret;
}

static int
cmd_readv(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("readv");
    bool machine = false, quiet = false, verbose = false, has_pattern = false;
    int64_t offset, t0, ns;
    uint64_t count;
    int pattern = 0, opt, ret;
    uint8_t *buf;

    while ((opt = getopt(argc, argv, "CP:qv")) != -1) {
        switch (opt) {
        case 'C':
            machine = true;
            break;
        case 'P':
            has_pattern = true;
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 'v':
            verbose = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset)) {
        return -EINVAL;
    }
    if (!arg_lengths(argv + optind + 1, argc - optind - 1, &count)) {
        return -EINVAL;
    }
    buf = io_buf_alloc(count, IO_READ_FILL);
    t0 = clock_ns();
    ret = block_handle_pread(ctx->h, (uint64_t)offset, count, buf, 0);
    ns = clock_ns() - t0;
    if (ret < 0) {
        printf("readv failed: %s\n", strerror(-ret));
        goto out;
    }
    if (has_pattern && !pattern_ok(buf, (int64_t)count, pattern)) {
        printf("Pattern verification failed at offset %" PRId64 ", %"
               PRIu64 " bytes\n", offset, count);
        ret = -EINVAL;
    }
    if (!quiet) {
        if (verbose) {
            io_hexdump(buf, offset, (int64_t)count);
        }
        io_report("read", ns, offset, (int64_t)count, (int64_t)count, 1,
                  machine);
    }
out:
    io_buf_free(buf);
    return ret;
}

/* ---- write, writev -------------------------------------------------------- */

/* -s FILE: the buffer holds the file's bytes, repeated to fill it. */
static uint8_t *
buf_from_file(uint64_t len, const char *name)
{
    uint8_t *buf;
    size_t n;
    FILE *f = fopen(name, "r");

    if (!f) {
        perror(name);
        return NULL;
    }
    buf = io_buf_alloc(len, 0);
    n = fread(buf, 1, len, f);
    if (ferror(f)) {
        perror(name);
        goto fail;
    }
    if (n == 0 && len > 0) {
        fprintf(stderr, "%s: file is empty\n", name);
        goto fail;
    }
    fclose(f);
    for (uint64_t i = n; i < len; i++) {
        buf[i] = buf[i % n];
    }
    return buf;

fail:
    fclose(f);
    io_buf_free(buf);
    return NULL;
}

static int
cmd_write(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("write");
    bool machine = false, quiet = false, vmstate = false, compressed = false;
    bool has_pattern = false, zero = false, has_file = false;
    unsigned flags = 0;
    int64_t offset, count, t0, ns;
    int pattern = IO_DEFAULT_PATTERN, opt, ret;
    const char *file_name = NULL;
    uint8_t *buf = NULL;

    while ((opt = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (opt) {
        case 'b':
            vmstate = true;
            break;
        case 'c':
            compressed = true;
            break;
        case 'C':
            machine = true;
            break;
        case 'f':
            flags |= BLOCK_REQ_FUA;
            break;
        case 'n':
            flags |= BLOCK_REQ_NO_FALLBACK;
            break;
        case 'p':
            break;
        case 'P':
            has_pattern = true;
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        case 'q':
            quiet = true;
            break;
        case 's':
            has_file = true;
            file_name = optarg;
            break;
        case 'u':
            flags |= BLOCK_REQ_MAY_UNMAP;
            break;
        case 'z':
            zero = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (vmstate && zero) {
        printf("-b and -z cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & BLOCK_REQ_FUA) && (vmstate || compressed)) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if ((flags & BLOCK_REQ_NO_FALLBACK) && !zero) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if ((flags & BLOCK_REQ_MAY_UNMAP) && !zero) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (zero + has_pattern + has_file > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same "
               "time\n");
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset) || !io_num(argv[optind + 1], &count)) {
        return -EINVAL;
    }
    if ((uint64_t)count > IO_MAX_BYTES && !(flags & BLOCK_REQ_NO_FALLBACK)) {
        printf("length cannot exceed %llu without -n, given %s\n",
               IO_MAX_BYTES, argv[optind + 1]);
        return -EINVAL;
    }
    if ((vmstate || compressed) && !sector_aligned(offset, count)) {
        return -EINVAL;
    }
    if (!zero) {
        buf = has_file ? buf_from_file((uint64_t)count, file_name)
                       : io_buf_alloc((uint64_t)count, pattern);
        if (!buf) {
            return -EINVAL;
        }
    }
    if (ctx->writethrough && !zero) {
        flags |= BLOCK_REQ_FUA;
    }
    t0 = clock_ns();
    if (vmstate) {
        ret = block_vmstate_pwrite(block_handle_node(ctx->h),
                                   (uint64_t)offset, (uint64_t)count, buf);
    } else if (zero) {
        ret = block_handle_pwrite_zeroes(ctx->h, (uint64_t)offset,
                                         (uint64_t)count, flags);
    } else if (compressed) {
        ret = block_handle_pwrite(ctx->h, (uint64_t)offset, (uint64_t)count,
                                  buf, BLOCK_REQ_WRITE_COMPRESSED);
    } else {
        ret = block_handle_pwrite(ctx->h, (uint64_t)offset, (uint64_t)count,
                                  buf, flags);
    }
    ns = clock_ns() - t0;
    io_buf_free(buf);
    if (ret < 0) {
        printf("write failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!quiet) {
        io_report("wrote", ns, offset, count, count, 1, machine);
    }
    return 0;
}

static int
cmd_writev(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("writev");
    bool machine = false, quiet = false;
    unsigned flags = 0;
    int64_t offset, t0, ns;
    uint64_t count;
    int pattern = IO_DEFAULT_PATTERN, opt, ret;
    uint8_t *buf;

    while ((opt = getopt(argc, argv, "CfqP:")) != -1) {
        switch (opt) {
        case 'C':
            machine = true;
            break;
        case 'f':
            flags |= BLOCK_REQ_FUA;
            break;
        case 'q':
            quiet = true;
            break;
        case 'P':
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset) ||
        !arg_lengths(argv + optind + 1, argc - optind - 1, &count)) {
        return -EINVAL;
    }
    if (ctx->writethrough) {
        flags |= BLOCK_REQ_FUA;
    }
    buf = io_buf_alloc(count, pattern);
    t0 = clock_ns();
    ret = block_handle_pwrite(ctx->h, (uint64_t)offset, count, buf, flags);
    ns = clock_ns() - t0;
    io_buf_free(buf);
    if (ret < 0) {
        printf("writev failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!quiet) {
        io_report("wrote", ns, offset, (int64_t)count, (int64_t)count, 1,
                  machine);
    }
    return 0;
}

/* ---- aio_read, aio_write, aio_flush ------------------------------------- */

static int
cmd_aio_read(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("aio_read");
    bool machine = false, quiet = false, verbose = false;
    int pattern = -1, opt;
    int64_t offset;
    uint64_t count;
    struct io_aio *a;

    while ((opt = getopt(argc, argv, "CP:iqv")) != -1) {
        switch (opt) {
        case 'C':
            machine = true;
            break;
        case 'P':
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid read request\n");
            return 0;
        case 'q':
            quiet = true;
            break;
        case 'v':
            verbose = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset) ||
        !arg_lengths(argv + optind + 1, argc - optind - 1, &count)) {
        return -EINVAL;
    }
    a = io_aio_new(ctx, false, offset, count);
    io_aio_set_read(a, pattern, verbose, quiet, machine);
    io_aio_submit(a);
    return 0;
}

static int
cmd_aio_write(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("aio_write");
    bool machine = false, quiet = false, zero = false, has_pattern = false;
    unsigned flags = 0;
    int pattern = IO_DEFAULT_PATTERN, opt;
    int64_t offset, zcount;
    uint64_t count;
    struct io_aio *a;

    while ((opt = getopt(argc, argv, "CfiqP:uz")) != -1) {
        switch (opt) {
        case 'C':
            machine = true;
            break;
        case 'f':
            flags |= BLOCK_REQ_FUA;
            break;
        case 'q':
            quiet = true;
            break;
        case 'u':
            flags |= BLOCK_REQ_MAY_UNMAP;
            break;
        case 'P':
            has_pattern = true;
            if (!arg_pattern(optarg, &pattern)) {
                return -EINVAL;
            }
            break;
        case 'i':
            printf("injecting invalid write request\n");
            return 0;
        case 'z':
            zero = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (zero && optind != argc - 2) {
        printf("-z supports only a single length parameter\n");
        return -EINVAL;
    }
    if ((flags & BLOCK_REQ_MAY_UNMAP) && !zero) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (zero && has_pattern) {
        printf("-z and -P cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset)) {
        return -EINVAL;
    }
    if (zero) {
        if (!io_num(argv[optind + 1], &zcount)) {
            return -EINVAL;
        }
        count = (uint64_t)zcount;
    } else if (!arg_lengths(argv + optind + 1, argc - optind - 1, &count)) {
        return -EINVAL;
    }
    if (ctx->writethrough && !zero) {
        flags |= BLOCK_REQ_FUA;
    }
    a = io_aio_new(ctx, true, offset, count);
    io_aio_set_write(a, pattern, zero, flags, quiet, machine);
    io_aio_submit(a);
    return 0;
}

static int
cmd_aio_flush(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv UNUSED)
{
    io_aio_drain();
    return 0;
}

/* ---- discard, flush, truncate, length ------------------------------------- */

static int
cmd_discard(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("discard");
    bool machine = false, quiet = false;
    int64_t offset, bytes, t0, ns;
    int opt, ret;

    while ((opt = getopt(argc, argv, "Cq")) != -1) {
        switch (opt) {
        case 'C':
            machine = true;
            break;
        case 'q':
            quiet = true;
            break;
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset) || !io_num(argv[optind + 1], &bytes)) {
        return -EINVAL;
    }
    if ((uint64_t)bytes > IO_MAX_BYTES) {
        printf("length cannot exceed %llu, given %s\n", IO_MAX_BYTES,
               argv[optind + 1]);
        return -EINVAL;
    }
    t0 = clock_ns();
    ret = block_handle_pdiscard(ctx->h, (uint64_t)offset, (uint64_t)bytes);
    ns = clock_ns() - t0;
    if (ret < 0) {
        printf("discard failed: %s\n", strerror(-ret));
        return ret;
    }
    if (!quiet) {
        io_report("discard", ns, offset, bytes, bytes, 1, machine);
    }
    return 0;
}

static int
cmd_flush(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    /* qemu-io prints nothing, even when the flush fails. */
    return block_handle_flush(ctx->h);
}

static const char *const prealloc_modes[] = {
    "off", "metadata", "falloc", "full", NULL,
};

static int
cmd_truncate(struct io_ctx *ctx, int argc, char **argv)
{
    const struct io_cmd *c = find("truncate");
    struct err *e = NULL;
    int64_t offset;
    int opt, ret;

    while ((opt = getopt(argc, argv, "m:")) != -1) {
        switch (opt) {
        case 'm': {
            size_t i;

            for (i = 0; prealloc_modes[i]; i++) {
                if (!strcmp(prealloc_modes[i], optarg)) {
                    break;
                }
            }
            if (!prealloc_modes[i]) {
                io_error("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            if (i != 0) {
                /* Honest refusal: the drivers grow without preallocating. */
                io_error("Unsupported preallocation mode '%s'", optarg);
                return -ENOTSUP;
            }
            break;
        }
        default:
            io_usage(c);
            return -EINVAL;
        }
    }
    if (optind >= argc) {
        io_usage(c);
        return -EINVAL;
    }
    if (!io_num(argv[optind], &offset)) {
        return -EINVAL;
    }
    ret = block_handle_truncate(ctx->h, (uint64_t)offset, &e);
    if (ret < 0) {
        if (!e) {
            err_setf_errno(&e, -ret, "Could not resize");
        }
        err_report(io_prog, e);
        return ret;
    }
    return 0;
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
    io_fmt_size(buf, sizeof(buf), (double)len);
    printf("%s\n", buf);
    return 0;
}

/* ---- info ---------------------------------------------------------------- */

/* qemu-io's (and qemu-img's) dump of format-specific data. */
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

static bool
is_qemu_protocol(const char *name)
{
    static const char *const protocols[] = {
        "file", "null-co", "blkdebug", "nbd", NULL,
    };

    for (size_t i = 0; protocols[i]; i++) {
        if (!strcmp(name, protocols[i])) {
            return true;
        }
    }
    return false;
}

static int
cmd_info(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    struct block_node *node = ctx->node;
    json_t *info = json_object(), *spec, *v;
    char cs[64], vm[64];
    uint64_t cluster = node->cluster_size, vm_off = 0;
    const char *key;

    /* qemu-io prints a driver's format name, then its protocol name:
     * twice for QEMU's protocol drivers.  null-co tells nothing more
     * (QEMU's has no image info: the command fails). */
    printf("format name: %s\n", node->drv->name);
    if (is_qemu_protocol(node->drv->name)) {
        printf("format name: %s\n", node->drv->name);
    }
    if (node->drv->no_image_info) {
        json_decref(info);
        return -ENOTSUP;
    }
    if (node->drv->query) {
        node->drv->query(node, info);
    }
    if (node->drv->vmstate_start) {
        vm_off = node->drv->vmstate_start(node);
    }
    io_fmt_size(cs, sizeof(cs), (double)cluster);
    io_fmt_size(vm, sizeof(vm), (double)vm_off);
    printf("cluster size: %s\n", cs);
    printf("vm state offset: %s\n", vm);
    spec = json_object_get(json_object_get(info, "format-specific"), "data");
    if (spec) {
        printf("Format specific information:\n");
        json_object_foreach(spec, key, v) {
            dump_value(4, key, v);
        }
    }
    json_decref(info);
    return 0;
}

/* ---- alloc, map --------------------------------------------------------- */

/* Is [offset, +bytes) allocated in the top layer?  1/0, -errno. */
static int
top_allocated(struct io_ctx *ctx, int64_t offset, int64_t bytes,
              int64_t *pnum)
{
    struct block_status_info info = { 0 };
    uint64_t n = 0;
    int ret;

    ret = block_handle_status(ctx->h, (uint64_t)offset, (uint64_t)bytes, &n,
                              &info);
    if (ret < 0) {
        return ret;
    }
    *pnum = (int64_t)n;
    return info.depth == 1;
}

static int
cmd_alloc(struct io_ctx *ctx, int argc, char **argv)
{
    int64_t offset, start, count = SECTOR, remaining, num, sum = 0;
    int64_t len = block_handle_getlength(ctx->h);
    char s[64];
    int ret;

    if (!io_num(argv[1], &offset)) {
        return -EINVAL;
    }
    if (argc == 3 && !io_num(argv[2], &count)) {
        return -EINVAL;
    }
    start = offset;
    remaining = count;
    while (remaining) {
        if (offset >= len) {
            /* Past the end: qemu-io counts only what it could ask about. */
            count -= remaining;
            break;
        }
        ret = top_allocated(ctx, offset, MIN(remaining, len - offset), &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum += num;
        }
    }
    io_fmt_size(s, sizeof(s), (double)start);
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum,
           count, s);
    return 0;
}

static int
cmd_map(struct io_ctx *ctx, int argc UNUSED, char **argv UNUSED)
{
    int64_t len = block_handle_getlength(ctx->h);
    int64_t offset = 0;

    if (len < 0) {
        io_error("Failed to query image length: %s", strerror((int)-len));
        return (int)len;
    }
    while (offset < len) {
        int64_t run = 0, num;
        int first = -1, ret;

        while (offset + run < len) {
            ret = top_allocated(ctx, offset + run, len - offset - run, &num);
            if (ret < 0) {
                io_error("Failed to get allocation status: %s",
                         strerror(-ret));
                return ret;
            }
            if (first >= 0 && ret != first) {
                break;
            }
            first = ret;
            run += num;
        }
        {
            char s1[64], s2[64];

            io_fmt_size(s1, sizeof(s1), (double)run);
            io_fmt_size(s2, sizeof(s2), (double)offset);
            printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64
                   ")\n", s1, (uint64_t)run,
                   first ? "    allocated" : "not allocated", s2,
                   (uint64_t)offset);
        }
        offset += run;
    }
    return 0;
}

/* ---- blkdebug breakpoints ------------------------------------------------ */

static int
cmd_break(struct io_ctx *ctx, int argc UNUSED, char **argv)
{
    int ret = block_debug_breakpoint(ctx->node, argv[1], argv[2]);

    if (ret < 0) {
        printf("Could not set breakpoint: %s\n", strerror(-ret));
    }
    return ret;
}

static int
cmd_remove_break(struct io_ctx *ctx, int argc UNUSED, char **argv)
{
    int ret = block_debug_remove_breakpoint(ctx->node, argv[1]);

    if (ret < 0) {
        printf("Could not remove breakpoint %s: %s\n", argv[1],
               strerror(-ret));
    }
    return ret;
}

static int
cmd_resume(struct io_ctx *ctx, int argc UNUSED, char **argv)
{
    int ret = block_debug_resume(ctx->node, argv[1]);

    if (ret < 0) {
        printf("Could not resume request: %s\n", strerror(-ret));
        return ret;
    }
    /* Give the resumed request the chance to finish, as qemu-io's
     * coroutine runs on at once. */
    io_aio_settle();
    return 0;
}

/*
 * Only a request in flight can reach a breakpoint: with none left, the
 * wait ends with an error (qemu-io would wait forever).
 */
static int
cmd_wait_break(struct io_ctx *ctx, int argc UNUSED, char **argv)
{
    while (!block_debug_is_suspended(ctx->node, argv[1])) {
        io_aio_reap();
        if (io_aio_in_flight() == 0) {
            printf("wait_break: no request in flight to stop at %s\n",
                   argv[1]);
            return -ENOENT;
        }
        sleep_ns(1000000);
    }
    return 0;
}

/* ---- sleep, sigraise, abort ---------------------------------------------- */

static int
cmd_sleep(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv)
{
    char *end;
    long ms = strtol(argv[1], &end, 0);
    int64_t until;

    if (ms < 0 || *end) {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    until = clock_ns() + ms * 1000000LL;
    while (clock_ns() < until) {
        sleep_ns(MIN(until - clock_ns(), 1000000LL));
        io_aio_reap();
    }
    return 0;
}

static int
cmd_sigraise(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv)
{
    int64_t sig;

    if (!io_num(argv[1], &sig)) {
        return -EINVAL;
    }
    if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n",
               argv[1]);
        return -EINVAL;
    }
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

static int
cmd_abort(struct io_ctx *ctx UNUSED, int argc UNUSED, char **argv UNUSED)
{
    fflush(stdout);
    abort();
}

/* ---- The table ------------------------------------------------------------ */

const struct io_cmd io_data_cmds[] = {
    { "abort", NULL, cmd_abort, 0, 0, IO_CMD_NOFILE_OK, NULL,
      "simulate a program crash using abort(3)", NULL },
    { "aio_flush", NULL, cmd_aio_flush, 0, 0, 0, NULL,
      "completes all outstanding aio requests", NULL },
    { "aio_read", NULL, cmd_aio_read, 2, -1, 0,
      "[-Ciqv] [-P pattern] off len [len..]",
      "asynchronously reads a number of bytes",
      " Starts a read in the background; its result is printed when it\n"
      " completes (aio_flush waits for all).  Lengths are added up.\n"
      " -C, -- machine-readable statistics\n"
      " -i, -- do nothing but say so (qemu-io's statistics test)\n"
      " -P, -- verify the data against a pattern byte\n"
      " -q, -- no statistics\n"
      " -v, -- hex dump of the data\n" },
    { "aio_write", NULL, cmd_aio_write, 2, -1, IO_CMD_WRITES,
      "[-Cfiquz] [-P pattern] off len [len..]",
      "asynchronously writes a number of bytes",
      " Starts a write in the background; its result is printed when it\n"
      " completes (aio_flush waits for all).  Lengths are added up.\n"
      " -C, -- machine-readable statistics\n"
      " -f, -- Force Unit Access\n"
      " -i, -- do nothing but say so (qemu-io's statistics test)\n"
      " -P, -- the pattern byte (default 0xcd)\n"
      " -q, -- no statistics\n"
      " -u, -- with -z, the zeroes may be unmapped\n"
      " -z, -- write zeroes (one length only)\n" },
    { "alloc", "a", cmd_alloc, 1, 2, 0, "offset [count]",
      "checks if offset is allocated in the file", NULL },
    { "break", NULL, cmd_break, 2, 2, 0, "event tag",
      "sets a breakpoint on event and tags the stopped request as tag",
      NULL },
    { "discard", "d", cmd_discard, 2, -1, IO_CMD_WRITES, "[-Cq] off len",
      "discards a number of bytes at a specified offset",
      " Discards the range (the node drops it only with discard=unmap).\n"
      " -C, -- machine-readable statistics\n"
      " -q, -- no statistics\n" },
    { "flush", "f", cmd_flush, 0, 0, 0, NULL,
      "flush all in-core file state to disk", NULL },
    { "info", "i", cmd_info, 0, 0, 0, NULL,
      "prints information about the current file", NULL },
    { "length", "l", cmd_length, 0, 0, 0, NULL,
      "gets the length of the current file", NULL },
    { "map", NULL, cmd_map, 0, 0, 0, "",
      "prints the allocated areas of a file", NULL },
    { "read", "r", cmd_read, 2, -1, 0,
      "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset",
      " Example: 'read -v 512 1k' dumps 1 KiB read at offset 512.\n"
      " -b, -- the VM state area of a qcow2 image (past the disk)\n"
      " -C, -- machine-readable statistics\n"
      " -l, -- length for pattern verification (only with -P)\n"
      " -p, -- ignored for backwards compatibility\n"
      " -P, -- verify the data against a pattern byte\n"
      " -q, -- no statistics\n"
      " -s, -- start offset for pattern verification (only with -P)\n"
      " -v, -- hex dump of the data\n" },
    { "readv", NULL, cmd_readv, 2, -1, 0,
      "[-Cqv] [-P pattern] off len [len..]",
      "reads a number of bytes at a specified offset",
      " Reads the lengths given, one after the other, as one request.\n"
      " -C, -- machine-readable statistics\n"
      " -P, -- verify the data against a pattern byte\n"
      " -q, -- no statistics\n"
      " -v, -- hex dump of the data\n" },
    { "remove_break", NULL, cmd_remove_break, 1, 1, 0, "tag",
      "remove a breakpoint by tag", NULL },
    { "resume", NULL, cmd_resume, 1, 1, 0, "tag",
      "resumes the request tagged as tag", NULL },
    { "sigraise", NULL, cmd_sigraise, 1, 1, IO_CMD_NOFILE_OK, "signal",
      "raises a signal", " Example: 'sigraise 15' raises SIGTERM.\n" },
    { "sleep", NULL, cmd_sleep, 1, 1, IO_CMD_NOFILE_OK, NULL,
      "waits for the given value in milliseconds", NULL },
    { "truncate", "t", cmd_truncate, 1, 3, IO_CMD_WRITES | IO_CMD_RESIZE,
      "[-m prealloc_mode] off",
      "truncates the current file at the given offset", NULL },
    { "wait_break", NULL, cmd_wait_break, 1, 1, 0, "tag",
      "waits for the suspension of a request", NULL },
    { "write", "w", cmd_write, 2, -1, IO_CMD_WRITES,
      "[-bcCfnquz] [-P pattern | -s source_file] off len",
      "writes a number of bytes at a specified offset",
      " Example: 'write -P 0xab 512 1k' writes 1 KiB of 0xab at 512.\n"
      " -b, -- the VM state area of a qcow2 image (past the disk)\n"
      " -c, -- write compressed clusters (qcow2)\n"
      " -C, -- machine-readable statistics\n"
      " -f, -- Force Unit Access\n"
      " -n, -- with -z, fail rather than write a buffer of zeroes\n"
      " -p, -- ignored for backwards compatibility\n"
      " -P, -- the pattern byte (default 0xcd)\n"
      " -q, -- no statistics\n"
      " -s, -- fill the buffer with the contents of a file\n"
      " -u, -- with -z, the zeroes may be unmapped\n"
      " -z, -- write zeroes\n" },
    { "writev", NULL, cmd_writev, 2, -1, IO_CMD_WRITES,
      "[-Cfq] [-P pattern] off len [len..]",
      "writes a number of bytes at a specified offset",
      " Writes the lengths given, one after the other, as one request.\n"
      " -C, -- machine-readable statistics\n"
      " -f, -- Force Unit Access\n"
      " -P, -- the pattern byte (default 0xcd)\n"
      " -q, -- no statistics\n" },
    { NULL, NULL, NULL, 0, 0, 0, NULL, NULL, NULL },
};

static const struct io_cmd *
find(const char *name)
{
    for (const struct io_cmd *c = io_data_cmds; c->name; c++) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    abort();
}
