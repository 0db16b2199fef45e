/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img dd: copy an image into a new one the way dd(1) does, in
 * blocks of bs bytes (default 512), skipping skip blocks of the input and
 * copying at most count blocks.  The output (format -O, default raw) is
 * created as large as what is copied; every block is written, zeroes
 * included, as qemu-img dd does.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img-create.h"
#include "img.h"
#include "util.h"

struct dd_args {
    const char *in_fmt;
    const char *in;
    uint64_t bs;
    uint64_t count;
    bool have_count;
    uint64_t skip;
    struct img_create out;
};

/* One "name=value" operand; false (reported) when it is not one of ours. */
static bool
dd_operand(struct dd_args *a, const char *arg)
{
    const char *eq = strchr(arg, '=');
    const char *val = eq ? eq + 1 : "";
    size_t klen = eq ? (size_t)(eq - arg) : strlen(arg);
    uint64_t v;

    if (klen == 2 && !strncmp(arg, "if", 2)) {
        a->in = val;
    } else if (klen == 2 && !strncmp(arg, "of", 2)) {
        a->out.filename = val;
    } else if (klen == 2 && !strncmp(arg, "bs", 2)) {
        if (!img_parse_size(val, &v) || v == 0 || v > INT32_MAX) {
            img_error("invalid number: '%s'", val);
            return false;
        }
        a->bs = v;
    } else if (klen == 5 && !strncmp(arg, "count", 5)) {
        if (!img_parse_size(val, &a->count)) {
            img_error("invalid number: '%s'", val);
            return false;
        }
        a->have_count = true;
    } else if (klen == 4 && !strncmp(arg, "skip", 4)) {
        if (!img_parse_size(val, &a->skip)) {
            img_error("invalid number: '%s'", val);
            return false;
        }
    } else {
        img_error("unrecognized operand %s", arg);
        return false;
    }
    return true;
}

static int
dd_parse(int argc, char **argv, struct dd_args *a)
{
    static const struct option longopts[] = {
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    a->bs = 512;
    a->out.fmt = "raw";
    while ((opt = getopt_long(argc, argv, "f:O:U", longopts, NULL)) != -1) {
        switch (opt) {
        case 'f': a->in_fmt = optarg; break;
        case 'O': a->out.fmt = optarg; break;
        case 'U': img_force_share = true; break;
        default: return -1;
        }
    }
    for (int i = optind; i < argc; i++) {
        if (!dd_operand(a, argv[i])) {
            return -1;
        }
    }
    if (!a->in || !a->out.filename) {
        img_error("Must specify both input and output files");
        return -1;
    }
    return 0;
}

static int
dd_copy(struct img *in, struct img *out, uint64_t from, uint64_t end,
        uint64_t bs)
{
    uint8_t *buf = img_buf_alloc(bs);
    int ret = 0;

    for (uint64_t pos = from, opos = 0; pos < end && ret >= 0;
         pos += bs, opos += bs) {
        uint64_t n = MIN(bs, end - pos);

        ret = block_handle_pread(in->h, pos, n, buf, 0);
        if (ret < 0) {
            img_error("error while reading from input image file: %s",
                      strerror(-ret));
            break;
        }
        ret = block_handle_pwrite(out->h, opos, n, buf, 0);
        if (ret < 0) {
            img_error("error while writing to output image file: %s",
                      strerror(-ret));
        }
    }
    free(buf);
    return ret < 0 ? ret : block_handle_flush(out->h);
}

int
img_cmd_dd(int argc, char **argv)
{
    struct dd_args a = { 0 };
    struct err *e = NULL;
    struct img in, out;
    int64_t size;
    uint64_t from, end;
    int ret = -1;

    if (dd_parse(argc, argv, &a) < 0) {
        return img_usage_error("dd", NULL);
    }
    if (!img_open(&in, a.in, a.in_fmt, false, &e)) {
        img_report(e);
        return 1;
    }
    size = block_handle_getlength(in.h);
    if (size < 0) {
        img_error("Failed to get size for '%s'", a.in);
        img_close(&in);
        return 1;
    }
    end = (uint64_t)size;
    if (a.have_count && a.count <= UINT64_MAX / a.bs && a.count * a.bs < end) {
        end = a.count * a.bs;
    }
    from = a.skip <= UINT64_MAX / a.bs ? a.skip * a.bs : UINT64_MAX;
    a.out.size = from < end ? end - from : 0;
    a.out.have_size = true;
    if (!img_create_image(&a.out, true, &e)) {
        err_prepend(&e, "%s: error while creating output image: ",
                    a.out.filename);
        img_report(e);
    } else if (!img_open(&out, a.out.filename, a.out.fmt, true, &e)) {
        img_report(e);
    } else {
        if (from > end) {
            /* Like dd(1): an empty output, and a word about it. */
            img_error("%s: cannot skip to specified offset", a.in);
        }
        ret = dd_copy(&in, &out, MIN(from, end), end, a.bs);
        img_close(&out);
    }
    img_close(&in);
    img_create_free(&a.out);
    return ret < 0 ? 1 : 0;
}
