/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img convert and commit, the two commands that copy data from
 * one image to another.  convert creates its target (raw or qcow2, with
 * -o options) and copies everything the source shows, skipping ranges the
 * source reports as zero and chunks that read as zeroes, so the target
 * stays sparse.  commit runs the daemon's block-commit job (job/commit.c:
 * an active commit of the top into the base, completed when ready, as
 * qemu-img runs QEMU's), then empties the top image (unless -d); with
 * --image-opts the layers' protocol nodes are the ones the options give
 * (blklog in the power-loss tests).  Both print qemu-img's progress line
 * with -p.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "img-create.h"
#include "img.h"
#include "job/commit.h"
#include "job/job.h"
#include "keyval.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

/* Deepest chain commit walks. */
#define COMMIT_MAX_CHAIN 64

/* How to write a copied range. */
struct copy_how {
    bool dst_is_zero;         /* skip zeroes: dst reads zero there */
    unsigned zero_flags;      /* for the zeroes written */
    uint64_t sparse;          /* zero runs of this size are not written as
                               * data; 0: everything is data */
    bool compress;            /* data as compressed clusters */
};

/* Length of the run at buf of pieces (of size g) all zero or all not. */
static uint64_t
zero_run(const uint8_t *buf, uint64_t n, uint64_t g, bool *zero)
{
    uint64_t i = MIN(g, n);

    *zero = buffer_is_zero(buf, i);
    while (i < n && buffer_is_zero(buf + i, MIN(g, n - i)) == *zero) {
        i += MIN(g, n - i);
    }
    return i;
}

static int
write_piece(struct img *dst, uint64_t off, uint64_t n, const uint8_t *buf,
            bool zero, const struct copy_how *how)
{
    if (zero && how->dst_is_zero) {
        return 0;
    }
    if (zero) {
        return block_handle_pwrite_zeroes(dst->h, off, n, how->zero_flags);
    }
    if (how->compress) {
        int ret = block_handle_pwrite(dst->h, off, n, buf,
                                      BLOCK_REQ_WRITE_COMPRESSED);

        /* Pieces that are no whole clusters go uncompressed. */
        if (ret != -EINVAL && ret != -ENOTSUP) {
            return ret;
        }
    }
    return block_handle_pwrite(dst->h, off, n, buf, 0);
}

/*
 * Copy [off, off+n) from src to dst.  Runs of zeroes of at least
 * how->sparse bytes (aligned as the chunk) are skipped where dst reads
 * zero, else written as zeroes; with sparse 0 everything is data.
 */
static int
copy_range(struct img *src, struct img *dst, uint64_t off, uint64_t n,
           uint8_t *buf, const struct copy_how *how)
{
    int ret = block_handle_pread(src->h, off, n, buf, 0);

    if (ret < 0) {
        img_error("error while reading '%s' at byte %" PRIu64 ": %s",
                  src->filename, off, strerror(-ret));
        return ret;
    }
    for (uint64_t done = 0, len; done < n && ret >= 0; done += len) {
        bool zero = false;

        len = how->sparse ? zero_run(buf + done, n - done, how->sparse,
                                     &zero)
                          : n - done;
        ret = write_piece(dst, off + done, len, buf + done, zero, how);
    }
    if (ret < 0) {
        img_error("error while writing '%s' at byte %" PRIu64 ": %s",
                  dst->filename, off, strerror(-ret));
    }
    return ret;
}

/* ---- convert ---------------------------------------------------------- */

struct convert_args {
    const char *src_fmt;
    struct img_create out;
    bool progress;
    bool quiet;
    bool no_create;           /* -n: the target exists */
    bool target_is_zero;      /* --target-is-zero: skip zeroes with -n */
    bool bitmaps;             /* --bitmaps: copy the persistent bitmaps */
    bool skip_broken;         /* --skip-broken-bitmaps */
    bool compress;            /* -c: compressed clusters (qcow2) */
    uint64_t sparse;          /* -S: zero runs this long are skipped;
                               * 0 writes everything */
    const char *snapshot;     /* -l: an internal snapshot of the source */
};

/*
 * -l SNAPSHOT: "snapshot.id=ID,snapshot.name=NAME" (either or both), or a
 * plain ID or name (the ID is tried first), as qemu-img takes it.
 * Returns 0, or -1 after printing qemu-img's message.
 */
static int
load_snapshot(struct img *src, const char *param)
{
    CLEANUP_FREE char *copy = xstrdup(param);
    const char *id = NULL, *name = NULL;
    struct err *e = NULL;
    int ret;

    if (strncmp(param, "snapshot.", 9) == 0) {
        for (char *save = NULL, *kv = strtok_r(copy, ",", &save); kv;
             kv = strtok_r(NULL, ",", &save)) {
            if (strncmp(kv, "snapshot.id=", 12) == 0) {
                id = kv + 12;
            } else if (strncmp(kv, "snapshot.name=", 14) == 0) {
                name = kv + 14;
            } else {
                img_error("Failed in parsing snapshot param '%s'", param);
                return -1;
            }
        }
        if (!id && !name) {
            img_error("Failed in parsing snapshot param '%s'", param);
            return -1;
        }
        ret = block_snapshot_load_tmp(src->node, id, name, &e);
    } else {
        ret = block_snapshot_load_tmp(src->node, param, NULL, &e);
        if (ret == -ENOENT) {
            err_free(e);
            e = NULL;
            ret = block_snapshot_load_tmp(src->node, NULL, param, &e);
        }
    }
    if (ret < 0) {
        err_prepend(&e, "Failed to load snapshot: ");
        img_report(e);
        return -1;
    }
    return 0;
}

/* Can the output format store compressed clusters (convert -c)? */
static bool
format_compresses(const char *fmt)
{
    const struct block_driver *drv = block_driver_find(fmt);

    return drv && drv->compressed_writes;
}

static int
convert_parse(int argc, char **argv, struct convert_args *a)
{
    static const struct option longopts[] = {
        { "target-is-zero", no_argument, NULL, 'Z' },
        { "force-share", no_argument, NULL, 'U' },
        { "bitmaps", no_argument, NULL, 'M' },
        { "skip-broken-bitmaps", no_argument, NULL, 'K' },
        { NULL, 0, NULL, 0 },
    };
    struct err *e = NULL;
    int opt;

    a->out.fmt = "raw";
    a->sparse = 4096;
    while ((opt = getopt_long(argc, argv, "f:O:o:pqcUnB:F:S:t:T:l:",
                              longopts, NULL)) != -1) {
        switch (opt) {
        case 'l': a->snapshot = optarg; break;
        case 'B': a->out.backing = optarg; break;
        case 'F': a->out.backing_fmt = optarg; break;
        case 'S':
            if (!img_parse_size(optarg, &a->sparse) || a->sparse % 512 ||
                a->sparse > 32 * 1024 * 1024) {
                img_error("Invalid buffer size for sparse output specified. "
                          "Valid sizes are multiples of 512 up to 33554432. "
                          "Select 0 to disable sparse detection (fully "
                          "allocates output).");
                return -1;
            }
            break;
        case 'n': a->no_create = true; break;
        case 'Z': a->target_is_zero = true; break;
        case 'M': a->bitmaps = true; break;
        case 'K': a->skip_broken = true; break;
        case 'f': a->src_fmt = optarg; break;
        case 'O': a->out.fmt = optarg; break;
        case 'o': img_create_add_opts(&a->out, optarg); break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 'U': img_force_share = true; break;
        case 'c': a->compress = true; break;
        case 't':
            if (!img_set_cache(&img_cache, optarg)) {
                return -1;
            }
            break;
        case 'T':
            if (!img_set_cache(&img_src_cache, optarg)) {
                return -1;
            }
            break;
        default:
            return -1;
        }
    }
    if (argc - optind != 2) {
        img_error("Expecting a source and a target file name");
        return -1;
    }
    if (!a->no_create && !img_create_fmt_ok(a->out.fmt, &e)) {
        img_report(e);
        return -2;      /* no usage hint, as qemu-img */
    }
    if (a->target_is_zero && !a->no_create) {
        img_error("--target-is-zero requires use of -n flag");
        return -1;
    }
    if (a->skip_broken && !a->bitmaps) {
        img_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return -1;
    }
    a->out.filename = argv[optind + 1];
    if (a->out.opts && !img_create_parse_opts(&a->out, a->out.opts, &e)) {
        err_prepend(&e, "%s: ", a->out.filename);
        img_report(e);
        return -1;
    }
    if (a->out.backing && !a->out.backing_fmt) {
        img_error("Use of backing file requires explicit backing format");
        return -2;      /* no usage hint, as qemu-img */
    }
    if (a->compress && !format_compresses(a->out.fmt)) {
        img_error("Compression not supported for this file format");
        return -1;
    }
    return optind;
}

/* ---- convert --bitmaps ------------------------------------------------ */

/* The persistent bitmaps of node, in the node's order; malloc'd. */
static size_t
persistent_bitmaps(struct block_node *node, struct block_dirty_bitmap ***out)
{
    struct block_dirty_bitmap *bm;
    size_t n = 0;

    *out = NULL;
    mutex_lock(&node->bitmap_lock);
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        if (bm->persistent && bm->name) {
            *out = xrealloc(*out, (n + 1) * sizeof(**out));
            (*out)[n++] = bm;
        }
    }
    mutex_unlock(&node->bitmap_lock);
    return n;
}

/* Before anything is written: can the bitmaps be copied (qemu-img's
 * checks and messages)?  Returns 0 or -1 (reported). */
static int
bitmaps_check(struct img *src, const char *out_fmt, bool skip_broken)
{
    const struct block_driver *drv = block_driver_find(out_fmt);
    CLEANUP_FREE struct block_dirty_bitmap **bms = NULL;
    size_t n;

    if (!src->node->drv->bitmap_can_store) {
        img_error("Source lacks bitmap support");
        return -1;
    }
    if (!drv || !drv->bitmap_can_store) {
        img_error("Format driver '%s' does not support bitmaps", out_fmt);
        return -1;
    }
    n = persistent_bitmaps(src->node, &bms);
    for (size_t i = 0; i < n && !skip_broken; i++) {
        if (block_dirty_bitmap_inconsistent(bms[i])) {
            img_error("Cannot copy inconsistent bitmap '%s'", bms[i]->name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use "
                    "'%s bitmap --remove' to delete it\n", IMG_PROG);
            return -1;
        }
    }
    return 0;
}

/* After the data: the same bitmaps on dst (stored when dst closes). */
static int
bitmaps_copy(struct img *src, struct img *dst)
{
    CLEANUP_FREE struct block_dirty_bitmap **bms = NULL;
    size_t n = persistent_bitmaps(src->node, &bms);
    struct err *e = NULL;

    /* In the node's order, as qemu-img: the stored order comes out the
     * same as the source's. */
    for (size_t i = 0; i < n; i++) {
        const char *name = bms[i]->name;
        struct block_dirty_bitmap *bm;

        if (block_dirty_bitmap_inconsistent(bms[i])) {
            img_error("warning: Skipping inconsistent bitmap '%s'", name);
            continue;
        }
        bm = block_dirty_bitmap_create(dst->node, name,
                                       block_dirty_bitmap_granularity(bms[i]),
                                       &e);
        if (bm && !block_dirty_bitmap_can_store(
                dst->node, name, block_dirty_bitmap_granularity(bm), &e)) {
            block_dirty_bitmap_release(bm);
            bm = NULL;
        }
        if (!bm) {
            err_prepend(&e, "Failed to create bitmap %s: ", name);
            img_report(e);
            return -1;
        }
        block_dirty_bitmap_set_persistent(bm, true);
        if (!block_dirty_bitmap_enabled(bms[i])) {
            block_dirty_bitmap_disable(bm);
        }
        if (!block_dirty_bitmap_merge_any(bm, bms[i], &e)) {
            err_prepend(&e, "Failed to populate bitmap %s: ", name);
            img_report(e);
            return -1;
        }
    }
    return 0;
}

/*
 * Bytes of data (not zero) in the source: qemu-img counts the progress of
 * a convert in those, so a mostly empty image moves in big steps.
 */
static uint64_t
data_bytes(struct img *src, uint64_t len)
{
    uint64_t total = 0, pnum;

    for (uint64_t off = 0; off < len; off += pnum) {
        struct block_status_info info = { 0 };
        int ret = block_handle_status(src->h, off, MIN(len - off, 1ULL << 30),
                                      &pnum, &info);

        if (ret < 0) {
            return 0;
        }
        total += ret & BLOCK_STATUS_ZERO ? 0 : pnum;
    }
    return total;
}

static int
convert_copy(struct img *src, struct img *dst, uint64_t len, bool progress,
             const struct copy_how *how, bool has_backing)
{
    struct img_progress prog;
    uint8_t *buf = img_buf_alloc(IMG_CHUNK);
    uint64_t n;
    int ret = 0;

    uint64_t data_total = progress ? data_bytes(src, len) : 0, done = 0;

    if (!buf) {
        img_error("Could not allocate a copy buffer");
        return -ENOMEM;
    }
    img_progress_start(&prog, progress);
    for (uint64_t off = 0; off < len && ret >= 0; off += n) {
        struct block_status_info info = { 0 };
        uint64_t pnum = 0;
        int status;

        n = MIN(IMG_CHUNK, len - off);
        ret = block_handle_status(src->h, off, n, &pnum, &info);
        if (ret < 0) {
            img_error("error while reading block status of '%s' at offset %"
                      PRIu64 ": %s", src->filename, off, strerror(-ret));
            break;
        }
        n = MIN(n, pnum);
        status = ret;
        if (has_backing) {
            /* -B: what the source's top layer lacks comes from there. */
            uint64_t an = 0;

            ret = block_is_allocated(src->node, off, n, &an);
            n = MIN(n, MAX(an, 1));
            if (ret == 0) {
                img_progress_update(&prog, (off + n) * 100.0 / len);
                continue;
            }
        }
        if (ret < 0) {
            img_error("error while reading block status of '%s' at offset %"
                      PRIu64 ": %s", src->filename, off, strerror(-ret));
            break;
        }
        if (!(status & BLOCK_STATUS_ZERO) || !how->sparse) {
            ret = copy_range(src, dst, off, n, buf, how);
            done += status & BLOCK_STATUS_ZERO ? 0 : n;
        } else if (!how->dst_is_zero) {
            ret = block_handle_pwrite_zeroes(dst->h, off, n, 0);
        }
        if (data_total) {
            img_progress_update(&prog, done * 100.0 / data_total);
        }
    }
    if (ret >= 0) {
        img_progress_end(&prog);
    }
    free(buf);
    return ret < 0 ? ret : block_handle_flush(dst->h);
}

int
img_cmd_convert(int argc, char **argv)
{
    struct convert_args a = { 0 };
    struct err *e = NULL;
    struct img src, dst;
    int i = convert_parse(argc, argv, &a), ret = -1;
    int64_t len;

    if (i < 0) {
        img_create_free(&a.out);
        return i == -2 ? 1 : img_usage_error("convert", NULL);
    }
    if (!img_open(&src, argv[i], a.src_fmt, false, &e)) {
        img_report(e);
        img_create_free(&a.out);
        return 1;
    }
    if (a.snapshot && load_snapshot(&src, a.snapshot) < 0) {
        img_close(&src);
        img_create_free(&a.out);
        return 1;
    }
    len = block_handle_getlength(src.h);
    a.out.size = len < 0 ? 0 : (uint64_t)len;
    a.out.have_size = true;
    if (a.bitmaps && bitmaps_check(&src, a.out.fmt, a.skip_broken) < 0) {
        img_close(&src);
        img_create_free(&a.out);
        return 1;
    }
    if ((!a.no_create && !img_create_image(&a.out, true, &e)) ||
        !img_open(&dst, a.out.filename, a.out.fmt, true, &e)) {
        err_prepend(&e, "%s: ", a.out.filename);
        img_report(e);
    } else {
        struct copy_how how = {
            .dst_is_zero = (!a.no_create || a.target_is_zero) &&
                           !a.out.backing,
            .sparse = a.sparse,
            .compress = a.compress,
        };

        if (a.compress) {
            /* Compressed writes take whole clusters. */
            struct block_image_info h;
            bool shared = img_force_share, got;

            /* Read beside our own writable open of it. */
            img_force_share = true;
            got = img_header_info(a.out.filename, a.out.fmt, &h, &e);
            img_force_share = shared;
            if (!got) {
                img_report(e);
                img_close(&dst);
                img_close(&src);
                img_create_free(&a.out);
                return 1;
            }
            how.sparse = MAX(how.sparse, h.cluster_size);
            how.sparse = h.cluster_size * div_round_up(how.sparse,
                                                       h.cluster_size);
            block_image_info_clear(&h);
        }
        ret = convert_copy(&src, &dst, a.out.size, a.progress && !a.quiet,
                           &how, a.out.backing != NULL);
        if (ret == 0 && a.bitmaps) {
            ret = bitmaps_copy(&src, &dst);
        }
        img_close(&dst);
    }
    img_close(&src);
    img_create_free(&a.out);
    return ret < 0 ? 1 : 0;
}

/* ---- commit ------------------------------------------------------------- */

/* One image of the chain, as its header names it (or --image-opts). */
struct layer {
    char *path;
    char *fmt;
    json_t *file;       /* its protocol node's options; NULL: a file */
};

struct chain {
    struct layer l[COMMIT_MAX_CHAIN];
    int n;
    const char *top_name;   /* as given (blkdebug:CONF:PATH); NULL: path */
};

static void
chain_free(struct chain *c)
{
    for (int i = 0; i < c->n; i++) {
        free(c->l[i].path);
        free(c->l[i].fmt);
        json_decref(c->l[i].file);
    }
}

/*
 * The file under a pseudo-filename's filters (blkdebug:CONF:PATH is a
 * blkdebug node over PATH), where the top's header is read; NULL if the
 * name is no local file (an NBD URL).
 */
static const char *
innermost_file(json_t *o)
{
    while (json_is_object(o)) {
        const char *drv = json_string_value(json_object_get(o, "driver"));

        if (drv && !strcmp(drv, "file")) {
            return json_string_value(json_object_get(o, "filename"));
        }
        o = json_object_get(o, json_object_get(o, "image") ? "image"
                                                           : "file");
    }
    return NULL;
}

/* Read the rest of the backing chain from the headers, from layer n-1. */
static bool
chain_read_headers(struct chain *c, const char *top, struct err **errp)
{
    for (; block_has_header_info(c->l[c->n - 1].fmt); c->n++) {
        struct block_image_info h;
        struct layer *cur = &c->l[c->n - 1];
        bool more;

        if (!img_header_info(cur->path, cur->fmt, &h, errp)) {
            return false;
        }
        more = h.backing_file && c->n < COMMIT_MAX_CHAIN;
        if (more) {
            c->l[c->n].path = img_backing_path(cur->path, h.backing_file);
            c->l[c->n].fmt = xstrdup(h.backing_fmt ? h.backing_fmt
                                     : block_probe_file(c->l[c->n].path));
        } else if (h.backing_file) {
            err_setf(errp, "Backing chain of '%s' is too long", top);
        }
        if (!more) {
            bool ok = !h.backing_file;

            block_image_info_clear(&h);
            return ok;
        }
        block_image_info_clear(&h);
    }
    return true;
}

/* Read the backing chain from the headers, top first. */
static bool
chain_read(struct chain *c, const char *top, const char *fmt,
           struct err **errp)
{
    json_t *proto = block_filename_options(top, errp);
    const char *path;

    if (!proto) {
        err_prepend(errp, "Could not open '%s': ", top);
        return false;
    }
    c->top_name = top;
    path = innermost_file(proto);
    c->l[0].path = xstrdup(path ? path : top);
    c->l[0].fmt = xstrdup(fmt ? fmt : block_probe_file(c->l[0].path));
    c->l[0].file = proto;
    c->n = 1;
    return chain_read_headers(c, top, errp);
}

/* The "filename" somewhere below a protocol node's options. */
static const char *
opts_filename(json_t *o)
{
    while (json_is_object(o)) {
        const char *f = json_string_value(json_object_get(o, "filename"));

        if (f) {
            return f;
        }
        o = json_object_get(o, "file");
    }
    return NULL;
}

/*
 * --image-opts: the chain as the options give it ("file" and "backing"
 * of each layer, as blockdev-add takes them); where they stop naming the
 * backing file, the headers go on from there.
 */
static bool
chain_from_opts(struct chain *c, const char *text, struct err **errp)
{
    json_t *top = keyval_or_json_parse(text, "driver", errp);
    json_t *o = top;
    bool ok = true;

    if (!top) {
        return false;
    }
    for (c->n = 0; ok && json_is_object(o); c->n++) {
        json_t *file = json_object_get(o, "file");
        const char *drv = json_string_value(json_object_get(o, "driver"));
        const char *path = opts_filename(file);

        if (!drv || !json_is_object(file) || !path) {
            err_setf(errp, "--image-opts: each image needs a driver and a "
                     "file with a filename");
            ok = false;
        } else if (c->n == COMMIT_MAX_CHAIN) {
            err_setf(errp, "Backing chain is too long");
            ok = false;
        } else {
            c->l[c->n].path = xstrdup(path);
            c->l[c->n].fmt = xstrdup(drv);
            c->l[c->n].file = json_deep_copy(file);
            o = json_object_get(o, "backing");
            if (!o && !strcmp(drv, "qcow2")) {
                c->n++;
                ok = chain_read_headers(c, c->l[0].path, errp);
                c->n--;
            }
        }
    }
    json_decref(top);
    return ok;
}

/* Index of the base in the chain: -b BASE, or the top's backing file. */
static int
chain_find_base(const struct chain *c, const char *base, struct err **errp)
{
    CLEANUP_FREE char *want = NULL;

    if (c->n < 2) {
        err_setf(errp, "Image does not have a backing file");
        return -1;
    }
    if (!base) {
        return 1;
    }
    want = realpath(base, NULL);
    for (int i = 1; want && i < c->n; i++) {
        CLEANUP_FREE char *have = realpath(c->l[i].path, NULL);

        if (have && !strcmp(have, want)) {
            return i;
        }
    }
    err_setf(errp, "Did not find '%s' in the backing chain of '%s'", base,
             c->l[0].path);
    return -1;
}

/* blockdev-add options of layer i, its backing given by node-name. */
static json_t *
layer_opts(const struct chain *c, int i, int base)
{
    json_t *file = c->l[i].file ? json_deep_copy(c->l[i].file)
                   : json_pack("{s:s, s:s}", "driver", "file", "filename",
                               c->l[i].path);
    json_t *o = json_pack("{s:s, s:o, s:b}", "driver", c->l[i].fmt, "file",
                          file, "read-only", i != 0 && i != base);
    char name[32];

    /* qemu-img commit opens with discard=unmap: zeroes free clusters. */
    json_object_set_new(o, "discard", json_string("unmap"));
    snprintf(name, sizeof(name), "img-layer%d", i);
    json_object_set_new(o, "node-name", json_string(name));
    if (i < base) {
        snprintf(name, sizeof(name), "img-layer%d", i + 1);
        json_object_set_new(o, "backing", json_string(name));
    }
    return o;
}

/* Open base..top bottom-up; imgs[base] and imgs[0] are writable. */
static bool
commit_open(const struct chain *c, int base, struct img *imgs,
            struct err **errp)
{
    for (int i = base; i >= 0; i--) {
        json_t *o = layer_opts(c, i, base);
        bool ok = img_open_json(&imgs[i], o,
                                i == 0 && c->top_name ? c->top_name
                                                      : c->l[i].path,
                                i == 0 || i == base, i < base, errp);

        json_decref(o);
        if (!ok) {
            while (++i <= base) {
                img_close(&imgs[i]);
            }
            return false;
        }
    }
    return true;
}

/* The job's progress, as qemu-img prints it. */
static void
commit_progress(struct job *job, struct img_progress *prog)
{
    uint64_t cur, total;

    job_get_progress(job, &cur, &total);
    if (total && cur < total) {     /* 100% is img_progress_end()'s */
        img_progress_update(prog, cur * 100.0 / total);
    }
}

/*
 * Run the commit job of job/commit.c (block-commit's), as qemu-img runs
 * QEMU's: an active commit of the top into the base, completed as soon as
 * it is ready.  The tool's own handles go first: the job takes QEMU's
 * permissions on the chain itself, as in the daemon.  At the end the top
 * has no user left (the job moved its parents to the base).
 */
static int
commit_job(struct img *imgs, int base, bool progress, struct err **errp)
{
    const unsigned done = (1u << JOB_STATUS_CONCLUDED) |
                          (1u << JOB_STATUS_NULL);
    struct commit_options o = {
        .job_id = "commit",
        .device = imgs[0].node->node_name,
        .base = imgs[base].node->node_name,
        .on_error = JOB_ON_ERROR_REPORT,
        .auto_finalize = true,
        .auto_dismiss = true,
    };
    struct img_progress prog;
    struct job *job;
    int ret;

    for (int i = 0; i <= base; i++) {
        block_handle_free(imgs[i].h);
        imgs[i].h = NULL;
    }
    if (!commit_start(&o, errp)) {
        return -EIO;
    }
    job = job_find(o.job_id);
    job_ref(job);
    img_progress_start(&prog, progress);
    for (bool completed = false;;) {
        enum job_status st;

        /* Completing is asynchronous: once asked, wait for the end. */
        job_wait_status(job, done | (completed ? 0 : 1u << JOB_STATUS_READY),
                        100LL * 1000 * 1000);
        commit_progress(job, &prog);
        st = job_get_status(job);
        if ((1u << st) & done) {
            break;
        }
        if (st == JOB_STATUS_READY && !completed) {
            if (!job_complete(job, errp)) {
                job_cancel_sync(job);
                job_unref(job);
                return -EIO;
            }
            completed = true;
        }
    }
    ret = job->ret;
    if (ret < 0) {
        err_setf(errp, "%s", job->error ? job->error : strerror(-ret));
    } else {
        img_progress_end(&prog);
    }
    job_unref(job);
    return ret;
}

/* A smaller base grows to the top's size first (qemu-img does too). */
static int
commit_run(struct img *imgs, int base, bool drop, bool progress,
           struct err **errp)
{
    int64_t top = block_handle_getlength(imgs[0].h);
    int64_t bl = block_handle_getlength(imgs[base].h);
    struct block_handle *h;
    struct err *e = NULL;
    int ret;

    if (top > bl && block_truncate(imgs[base].node, top, errp) < 0) {
        return -EIO;
    }
    ret = commit_job(imgs, base, progress, errp);
    if (ret < 0) {
        err_prepend(errp, "Could not commit '%s' into '%s': ",
                    imgs[0].filename, imgs[base].filename);
        return ret;
    }
    if (drop) {
        return 0;
    }
    /* Empty the old top through a writer of its own, as qemu-img does. */
    h = block_handle_new(imgs[0].node, IMG_PROG, BLOCK_PERM_WRITE,
                         BLOCK_PERM_ALL, errp);
    if (!h) {
        err_prepend(errp, "Could not empty %s: ", imgs[0].filename);
        return -EIO;
    }
    ret = block_make_empty(imgs[0].node, &e);
    block_handle_free(h);
    if (ret < 0) {
        /* qemu-img's words: the errno's text, not the details. */
        err_setf_errno(errp, -ret, "Failed to empty %s", imgs[0].filename);
        err_free(e);
    }
    return ret;
}

struct commit_args {
    const char *fmt;
    const char *base;
    bool drop;
    bool progress;
    bool quiet;
    bool image_opts;
};

static int
commit_parse(int argc, char **argv, struct commit_args *a)
{
    static const struct option longopts[] = {
        { "image-opts", no_argument, NULL, 'O' },
        { NULL, 0, NULL, 0 },
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "f:b:dpqt:", longopts,
                              NULL)) != -1) {
        switch (opt) {
        case 'O': a->image_opts = true; break;
        case 'f': a->fmt = optarg; break;
        case 'b': a->base = optarg; break;
        case 'd': a->drop = true; break;
        case 'p': a->progress = true; break;
        case 'q': a->quiet = true; break;
        case 't':
            /* The whole chain: top and base are written, the rest read. */
            if (!img_set_cache(&img_cache, optarg) ||
                !img_set_cache(&img_src_cache, optarg)) {
                return -1;
            }
            break;
        default: return -1;
        }
    }
    if (optind != argc - 1) {
        img_error("Expecting one image file name");
        return -1;
    }
    if (a->image_opts && a->fmt) {
        img_error("--image-opts and --format are mutually exclusive");
        return -1;
    }
    return optind;
}

int
img_cmd_commit(int argc, char **argv)
{
    struct commit_args a = { 0 };
    struct chain c = { .n = 0 };
    struct img imgs[COMMIT_MAX_CHAIN];
    struct err *e = NULL;
    int i = commit_parse(argc, argv, &a), base = -1, ret = -1;

    if (i < 0) {
        return img_usage_error("commit", NULL);
    }
    if ((a.image_opts ? chain_from_opts(&c, argv[i], &e)
                      : chain_read(&c, argv[i], a.fmt, &e)) &&
        (base = chain_find_base(&c, a.base, &e)) > 0 &&
        commit_open(&c, base, imgs, &e)) {
        ret = commit_run(imgs, base, a.drop, a.progress && !a.quiet, &e);
        for (int k = 0; k <= base; k++) {
            img_close(&imgs[k]);
        }
    }
    chain_free(&c);
    if (ret < 0) {
        img_report(e);
        return 1;
    }
    if (!a.quiet) {
        printf("Image committed.\n");
    }
    return 0;
}
