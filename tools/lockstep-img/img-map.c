/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img map and compare, the two read-only commands built on block
 * status.  map prints the allocation of every range with its depth in the
 * backing chain (qemu-img map's human and JSON layouts, adjacent ranges
 * merged the way qemu-img merges them).  compare reads two images side by
 * side, skipping ranges both report as zero, and stops at the first
 * difference, reported at 512-byte granularity like qemu-img.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "img.h"
#include "util.h"

/* qemu-img compare's exit codes. */
#define CMP_DIFFERENT 1
#define CMP_OPEN_ERROR 2
#define CMP_STATUS_ERROR 3
#define CMP_READ_ERROR 4

/* ---- map ----------------------------------------------------------------- */

struct map_entry {
    uint64_t start;
    uint64_t length;
    int depth;
    bool present;
    bool zero;
    bool data;
    bool has_offset;
    uint64_t offset;
    const char *file;             /* protocol file name, for human output */
};

/* Image layers below node (filters skipped): qemu's depth of a hole. */
static int
chain_depth(struct block_node *node)
{
    int depth = 0;

    node = block_skip_filters(node);
    while (node && node->backing) {
        node = block_skip_filters(node->backing->node);
        depth++;
    }
    return depth;
}

static bool
entries_mergeable(const struct map_entry *a, const struct map_entry *b)
{
    return a->start + a->length == b->start && a->depth == b->depth &&
           a->present == b->present && a->zero == b->zero &&
           a->data == b->data && a->has_offset == b->has_offset &&
           (!a->has_offset || a->offset + a->length == b->offset) &&
           !strcmp(a->file, b->file);
}

/* Returns false when the human format cannot show the entry. */
static bool
map_print(const struct map_entry *e, bool json, bool first)
{
    if (json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", "
               "\"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
               first ? "[" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false",
               e->data ? "true" : "false");
        if (e->has_offset) {
            printf(", \"offset\": %" PRIu64, e->offset);
        }
        printf("}");
    } else if (e->data && !e->has_offset) {
        img_error("File contains external, encrypted or compressed "
                  "clusters.");
        return false;
    } else if (e->data && !e->zero) {
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start,
               e->length, e->offset, e->file);
    }
    return true;
}

static int
map_status(struct img *img, uint64_t offset, uint64_t len, int holes,
           struct map_entry *e)
{
    struct block_status_info info = { 0 };
    uint64_t pnum = 0;
    int ret = block_handle_status(img->h, offset, len - offset, &pnum, &info);

    if (ret < 0) {
        return ret;
    }
    memset(e, 0, sizeof(*e));
    e->start = offset;
    e->length = MIN(pnum, len - offset);
    e->present = info.depth > 0;
    e->depth = e->present ? info.depth - 1 : holes;
    e->zero = ret & BLOCK_STATUS_ZERO;
    e->data = ret & BLOCK_STATUS_DATA;
    e->has_offset = ret & BLOCK_STATUS_OFFSET_VALID;
    e->offset = e->has_offset ? info.map : 0;
    e->file = e->has_offset && info.file && block_node_filename(info.file)
              ? block_node_filename(info.file) : "";
    return 0;
}

struct map_args {
    const char *fmt;
    bool json;
    uint64_t start;           /* --start-offset */
    uint64_t max_length;      /* --max-length, UINT64_MAX: to the end */
    bool image_opts;          /* FILENAME is an option string */
};

static int
map_run(struct img *img, const struct map_args *a)
{
    int64_t size = block_handle_getlength(img->h);
    int holes = chain_depth(img->node);
    struct map_entry cur = { 0 }, next;
    bool have = false, first = true, json = a->json;
    uint64_t len;

    if (size < 0) {
        img_error("%s: Could not get the image length: %s", img->filename,
                  strerror((int)-size));
        return 1;
    }
    /* The range ends at the image end or after max_length bytes. */
    len = a->start >= (uint64_t)size ? a->start
          : a->start + MIN((uint64_t)size - a->start, a->max_length);
    if (!json) {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to",
               "File");
    }
    for (uint64_t off = a->start; off < len; off += next.length) {
        int ret = map_status(img, off, len, holes, &next);

        if (ret < 0) {
            img_error("Could not read file metadata of '%s': %s",
                      img->filename, strerror(-ret));
            return 1;
        }
        if (have && entries_mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (have && !map_print(&cur, json, first)) {
            return 1;
        }
        first = !have && first;
        cur = next;
        have = true;
    }
    if (have && !map_print(&cur, json, first)) {
        return 1;
    }
    if (json && !have) {
        /* Nothing to describe: qemu-img prints one empty entry. */
        struct map_entry none = { .start = a->start, .file = "" };

        map_print(&none, true, true);
    }
    if (json) {
        printf("]\n");
    }
    return 0;
}

static int
map_parse(int argc, char **argv, struct map_args *a)
{
    static const struct option longopts[] = {
        { "output", required_argument, NULL, 'O' },
        { "format", required_argument, NULL, 'f' },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { "image-opts", no_argument, NULL, 'I' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:Us:l:T:", longopts, NULL)) != -1) {
        if (opt == 'I') {
            a->image_opts = true;
        } else if (opt == 'f') {
            a->fmt = optarg;
        } else if (opt == 'T') {
            if (!img_set_cache(&img_src_cache, optarg)) {
                return -1;
            }
        } else if (opt == 'O') {
            if (img_parse_output(optarg, &a->json) < 0) {
                return -1;
            }
        } else if (opt == 'U') {
            img_force_share = true;
        } else if (opt == 's' && !img_parse_size(optarg, &a->start)) {
            img_error("Invalid start offset specified! You may use k, M, G, "
                      "T, P or E suffixes for ");
            return -1;
        } else if (opt == 'l' && !img_parse_size(optarg, &a->max_length)) {
            img_error("Invalid length specified! You may use k, M, G, T, P "
                      "or E suffixes for ");
            return -1;
        } else if (opt != 's' && opt != 'l') {
            return -1;
        }
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return -1;
    }
    return optind;
}

int
img_cmd_map(int argc, char **argv)
{
    struct map_args a = { .max_length = UINT64_MAX };
    struct err *e = NULL;
    struct img img;
    int i = map_parse(argc, argv, &a), ret;

    if (i < 0) {
        return img_usage_error("map", NULL);
    }
    if (a.image_opts && a.fmt) {
        img_error("--image-opts and --format are mutually exclusive");
        return 1;
    }
    if (a.image_opts ? !img_open_opts(&img, argv[i], false, &e)
                     : !img_open(&img, argv[i], a.fmt, false, &e)) {
        img_report(e);
        return 1;
    }
    ret = map_run(&img, &a);
    img_close(&img);
    return ret;
}

/* ---- compare ------------------------------------------------------------ */

struct cmp_ctx {
    struct img a, b;
    bool strict;
    bool quiet;
    struct img_progress prog;
    uint8_t *buf_a, *buf_b;
};

/* Offset of the first differing 512-byte sector, or -1. */
static int64_t
first_difference(const uint8_t *a, const uint8_t *b, uint64_t n)
{
    for (uint64_t i = 0; i < n; i += 512) {
        uint64_t len = MIN(512, n - i);

        if (memcmp(a + i, b + i, len) != 0) {
            return (int64_t)i;
        }
    }
    return -1;
}

static int
cmp_read(struct img *img, uint64_t off, uint64_t n, uint8_t *buf)
{
    int ret = block_handle_pread(img->h, off, n, buf, 0);

    if (ret < 0) {
        img_error("Error while reading offset %" PRIu64 " of %s: %s", off,
                  img->filename, strerror(-ret));
        return CMP_READ_ERROR;
    }
    return 0;
}

static int
cmp_status(struct img *img, uint64_t off, uint64_t n, uint64_t *pnum,
           int *flags)
{
    struct block_status_info info = { 0 };
    int ret = block_handle_status(img->h, off, n, pnum, &info);

    if (ret < 0) {
        img_error("Sector allocation test failed for %s", img->filename);
        return CMP_STATUS_ERROR;
    }
    *flags = ret;
    return 0;
}

static int
cmp_mismatch(struct cmp_ctx *c, uint64_t offset)
{
    if (!c->quiet) {
        printf("Content mismatch at offset %" PRIu64 "!\n", offset);
    }
    return CMP_DIFFERENT;
}

/* Compare [off, off+n) of both images; n <= IMG_CHUNK. */
static int
cmp_chunk(struct cmp_ctx *c, uint64_t off, uint64_t *n)
{
    uint64_t pa, pb;
    int fa, fb, ret;
    int64_t d;

    if ((ret = cmp_status(&c->a, off, *n, &pa, &fa)) ||
        (ret = cmp_status(&c->b, off, *n, &pb, &fb))) {
        return ret;
    }
    *n = MIN(*n, MIN(pa, pb));
    if (c->strict && (fa & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO)) !=
                     (fb & (BLOCK_STATUS_ALLOCATED | BLOCK_STATUS_ZERO))) {
        if (!c->quiet) {
            printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n",
                   off);
        }
        return CMP_DIFFERENT;
    }
    if ((fa & BLOCK_STATUS_ZERO) && (fb & BLOCK_STATUS_ZERO)) {
        return 0;
    }
    if ((ret = cmp_read(&c->a, off, *n, c->buf_a)) ||
        (ret = cmp_read(&c->b, off, *n, c->buf_b))) {
        return ret;
    }
    d = first_difference(c->buf_a, c->buf_b, *n);
    return d < 0 ? 0 : cmp_mismatch(c, off + d);
}

/* The tail of the longer image must read as zeroes. */
static int
cmp_tail(struct cmp_ctx *c, struct img *img, uint64_t off, uint64_t end)
{
    while (off < end) {
        uint64_t n = MIN(IMG_CHUNK, end - off), pnum;
        int flags, ret;

        if ((ret = cmp_status(img, off, n, &pnum, &flags))) {
            return ret;
        }
        n = MIN(n, pnum);
        if (!(flags & BLOCK_STATUS_ZERO)) {
            if ((ret = cmp_read(img, off, n, c->buf_a))) {
                return ret;
            }
            for (uint64_t i = 0; i < n; i += 512) {
                if (!buffer_is_zero(c->buf_a + i, MIN(512, n - i))) {
                    return cmp_mismatch(c, off + i);
                }
            }
        }
        off += n;
    }
    return 0;
}

static int
cmp_run(struct cmp_ctx *c)
{
    int64_t la = block_handle_getlength(c->a.h);
    int64_t lb = block_handle_getlength(c->b.h);
    uint64_t common = MIN(la, lb), n;
    int ret = 0;

    if (la != lb && c->strict) {
        printf("Strict mode: Image size mismatch!\n");
        return CMP_DIFFERENT;
    }
    img_progress_start(&c->prog, c->prog.enabled);
    for (uint64_t off = 0; off < common && !ret; off += n) {
        n = MIN(IMG_CHUNK, common - off);
        ret = cmp_chunk(c, off, &n);
        img_progress_update(&c->prog, (off + n) * 100.0 / MAX(la, lb));
    }
    /* As qemu-img: a content mismatch first, the sizes only after. */
    if (!ret && la != lb && !c->quiet) {
        printf("Warning: Image size mismatch!\n");
    }
    if (!ret && la != lb) {
        ret = cmp_tail(c, la > lb ? &c->a : &c->b, common, MAX(la, lb));
    }
    img_progress_end(&c->prog);
    if (!ret && !c->quiet) {
        printf("Images are identical.\n");
    }
    return ret;
}

static int
cmp_open(struct cmp_ctx *c, char **files, const char *fa, const char *fb)
{
    struct err *e = NULL;

    if (!img_open(&c->a, files[0], fa, false, &e)) {
        img_report(e);
        return CMP_OPEN_ERROR;
    }
    if (!img_open(&c->b, files[1], fb, false, &e)) {
        img_report(e);
        img_close(&c->a);
        return CMP_OPEN_ERROR;
    }
    c->buf_a = img_buf_alloc(IMG_CHUNK);
    c->buf_b = img_buf_alloc(IMG_CHUNK);
    if (!c->buf_a || !c->buf_b) {
        img_error("Could not allocate buffers: out of memory");
        return CMP_OPEN_ERROR;
    }
    return 0;
}

int
img_cmd_compare(int argc, char **argv)
{
    struct cmp_ctx c = { 0 };
    const char *fa = NULL, *fb = NULL;
    bool progress = false;
    int opt, ret;

    while ((opt = getopt(argc, argv, "f:F:spqUT:")) != -1) {
        switch (opt) {
        case 'f': fa = optarg; break;
        case 'F': fb = optarg; break;
        case 's': c.strict = true; break;
        case 'p': progress = true; break;
        case 'q': c.quiet = true; break;
        case 'U': img_force_share = true; break;
        case 'T':
            if (!img_set_cache(&img_src_cache, optarg)) {
                return CMP_OPEN_ERROR;
            }
            break;
        default: return img_usage_error("compare", NULL) + 1;
        }
    }
    if (argc - optind != 2) {
        img_usage_error("compare", "Expecting two image file names");
        return CMP_OPEN_ERROR;
    }
    c.prog.enabled = progress && !c.quiet;
    ret = cmp_open(&c, argv + optind, fa, fb);
    if (ret == 0) {
        ret = cmp_run(&c);
    }
    free(c.buf_a);
    free(c.buf_b);
    if (c.a.node) {
        img_close(&c.a);
    }
    if (c.b.node) {
        img_close(&c.b);
    }
    return ret;
}
