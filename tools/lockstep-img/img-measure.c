/* SPDX-License-Identifier: MIT */
/*
 * lockstep-img measure: how big a new image of format -O (raw or qcow2)
 * would get, made by "create --size N" or by converting an image into it,
 * as qemu-img measure answers: "required size" (the file right after
 * create or convert) and "fully allocated size" (every cluster written),
 * and for a qcow2 target v3 from a qcow2 source, "bitmaps size" (what the
 * source's persistent bitmaps would take).
 *
 * A qcow2 file holds its header cluster, L2 tables for every cluster
 * (extended entries: 16 bytes), the L1 table, refcount blocks and table
 * for all of that, and the data clusters.  The refcount metadata counts
 * itself: its size is the fixed point of growing it until it covers every
 * cluster.  "required" keeps all the metadata of the fully allocated file
 * and only the data clusters the source holds (all of them with a backing
 * file, whose content is unknown, or with preallocation=full|falloc).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "img.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

#define L1E_SIZE 8
#define REFTABLE_ENTRY_SIZE 8
#define MAX_L1_BYTES (32 * 1024 * 1024ULL)
#define BITMAP_DIR_ENTRY 24         /* a bitmap directory entry's header */

/* The target as -O and -o describe it. */
struct measure_target {
    const char *fmt;
    uint64_t cluster_size;
    unsigned refcount_bits;
    bool extended_l2;
    int version;
    bool backing;
    bool prealloc_data;         /* preallocation=full or falloc */
};

static uint64_t
div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* Refcount blocks and table, in bytes, for clusters (their own too). */
static uint64_t
refcount_bytes(uint64_t clusters, uint64_t cs, unsigned refcount_bits)
{
    uint64_t per_block = cs * 8 / refcount_bits;
    uint64_t per_table = cs / REFTABLE_ENTRY_SIZE;
    uint64_t blocks = 0, table = 0, total = 0, prev;

    do {
        prev = total;
        blocks = div_up(clusters + blocks + table, per_block);
        table = div_up(blocks, per_table);
        total = clusters + blocks + table;
    } while (total != prev);
    return (blocks + table) * cs;
}

/* The fully allocated qcow2 file of a virtual size (cluster aligned). */
static uint64_t
qcow2_full_size(const struct measure_target *t, uint64_t vsize)
{
    uint64_t cs = t->cluster_size;
    uint64_t l2e = t->extended_l2 ? 16 : 8;
    uint64_t l2_entries = align_up(vsize / cs, cs / l2e);
    uint64_t l1_entries = align_up(l2_entries * l2e / cs, cs / L1E_SIZE);
    uint64_t meta = cs + l2_entries * l2e + l1_entries * L1E_SIZE;

    return vsize + meta +
           refcount_bytes((meta + vsize) / cs, cs, t->refcount_bits);
}

/* The source's data clusters in the target's cluster size, in bytes. */
static int
data_bytes(struct img *src, uint64_t cs, uint64_t *out)
{
    int64_t len = block_handle_getlength(src->h);
    uint64_t off = 0, sum = 0;

    if (len < 0) {
        return (int)len;
    }
    while (off < (uint64_t)len) {
        struct block_status_info info;
        uint64_t pnum;
        int ret = block_handle_status(src->h, off, (uint64_t)len - off,
                                      &pnum, &info);

        if (ret < 0) {
            return ret;
        }
        if (!(ret & BLOCK_STATUS_ZERO) && (ret & BLOCK_STATUS_DATA)) {
            /* Data here fills its target clusters up to the last one it
             * touches; the next look starts after that cluster.  QEMU
             * counts the offset into the first cluster once more. */
            uint64_t end = align_up(off + pnum, cs);

            sum += off % cs + (end - off);
            pnum = end - off;
        }
        off += pnum;
    }
    *out = sum;
    return 0;
}

/* What the source's persistent bitmaps take in a qcow2 target. */
static uint64_t
bitmaps_bytes(struct block_node *node, uint64_t cs)
{
    struct block_dirty_bitmap *bm;
    uint64_t total = 0, dir = 0;

    /* The list changes only on the main thread, which this is; the
     * accessors take bitmap_lock themselves. */
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        uint64_t bits, clusters;

        if (!bm->name || !block_dirty_bitmap_persistent(bm)) {
            continue;
        }
        bits = div_up(block_dirty_bitmap_size(bm),
                      block_dirty_bitmap_granularity(bm));
        clusters = div_up(div_up(bits, 8), cs);
        total += clusters * cs + align_up(clusters * 8, cs);
        dir += align_up(BITMAP_DIR_ENTRY + strlen(bm->name), 8);
    }
    return total + align_up(dir, cs);
}

static bool
parse_on_off(const char *v, bool *out)
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

/* One key=value of -o; false after printing qemu-img's message. */
static bool
target_opt(struct measure_target *t, const char *key, const char *val)
{
    static const char *const qcow2_only[] = {
        "lazy_refcounts", "compression_type", "backing_fmt",
        "extent_size_hint", NULL,
    };
    bool qcow2 = !strcmp(t->fmt, "qcow2");
    uint64_t n;

    if (!strcmp(key, "preallocation")) {
        if (strcmp(val, "off") && strcmp(val, "metadata") &&
            strcmp(val, "falloc") && strcmp(val, "full")) {
            img_error("invalid parameter value: %s", val);
            return false;
        }
        t->prealloc_data = !strcmp(val, "full") || !strcmp(val, "falloc");
        return true;
    }
    if (!strcmp(key, "extent_size_hint")) {
        return true;    /* the file's allocation unit, not its size */
    }
    if (qcow2 && !strcmp(key, "cluster_size")) {
        if (!img_parse_size(val, &n) || n < 512 || n > 2 * 1024 * 1024 ||
            (n & (n - 1))) {
            img_error("Cluster size must be a power of two between 512 and "
                      "2048k");
            return false;
        }
        t->cluster_size = n;
        return true;
    }
    if (qcow2 && !strcmp(key, "refcount_bits")) {
        if (!img_parse_size(val, &n) || n == 0 || n > 64 || (n & (n - 1))) {
            img_error("Refcount width must be a power of two and may not "
                      "exceed 64 bits");
            return false;
        }
        t->refcount_bits = (unsigned)n;
        return true;
    }
    if (qcow2 && !strcmp(key, "extended_l2")) {
        if (!parse_on_off(val, &t->extended_l2)) {
            img_error("Invalid value '%s' for parameter 'extended_l2'", val);
            return false;
        }
        return true;
    }
    if (qcow2 && !strcmp(key, "compat")) {
        if (!strcmp(val, "0.10") || !strcmp(val, "v2")) {
            t->version = 2;
        } else if (!strcmp(val, "1.1") || !strcmp(val, "v3")) {
            t->version = 3;
        } else {
            img_error("Invalid value '%s' for parameter 'compat'", val);
            return false;
        }
        return true;
    }
    if (qcow2 && !strcmp(key, "backing_file")) {
        t->backing = true;
        return true;
    }
    if (qcow2 && (!strcmp(key, "encryption") ||
                  !strncmp(key, "encrypt.", 8) ||
                  !strncmp(key, "data_file", 9))) {
        img_error("measure: '%s' is not supported (no encrypted images, no "
                  "external data files)", key);
        return false;
    }
    for (size_t i = 0; qcow2 && qcow2_only[i]; i++) {
        if (!strcmp(key, qcow2_only[i])) {
            return true;    /* no effect on the size */
        }
    }
    img_error("Invalid parameter '%s'", key);
    img_error("Invalid options for file format '%s'", t->fmt);
    return false;
}

static bool
target_opts(struct measure_target *t, const char *opts)
{
    CLEANUP_FREE char *copy = xstrdup(opts);
    char *next;

    if (!*opts || opts[strlen(opts) - 1] == ',' || opts[0] == ',') {
        img_error("Invalid option list: %s", opts);
        return false;
    }
    for (char *kv = copy; kv; kv = next) {
        char *eq;

        next = strchr(kv, ',');
        if (next) {
            *next++ = '\0';
        }
        eq = strchr(kv, '=');
        if (!eq) {
            img_error("Invalid parameter '%s'", kv);
            img_error("Invalid options for file format '%s'", t->fmt);
            return false;
        }
        *eq = '\0';
        if (!target_opt(t, kv, eq + 1)) {
            return false;
        }
    }
    if (t->extended_l2 && t->cluster_size < 16384) {
        img_error("Extended L2 entries are only supported with cluster "
                  "sizes of at least 16384 bytes");
        return false;
    }
    return true;
}

struct measure_args {
    const char *fmt, *out_fmt, *opts, *filename;
    uint64_t size;
    bool have_size, image_opts, json;
};

static int
measure_parse(int argc, char **argv, struct measure_args *a)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "image-opts", no_argument, NULL, 'I' },
        { "object", required_argument, NULL, 'B' },
        { "output", required_argument, NULL, 'J' },
        { "size", required_argument, NULL, 'S' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    bool have_file_opts = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "hf:O:o:l:U", longopts, NULL))
           != -1) {
        switch (opt) {
        case 'h':
            img_cmd_help("measure");
            exit(0);
        case 'f':
            a->fmt = optarg;
            have_file_opts = true;
            break;
        case 'O':
            a->out_fmt = optarg;
            break;
        case 'o':
            a->opts = optarg;
            break;
        case 'l':
            img_error("measure -l: internal snapshots are not supported");
            return -1;
        case 'I':
            a->image_opts = true;
            have_file_opts = true;
            break;
        case 'B':
            img_error("--object is not supported (no secrets, no "
                      "encryption)");
            return -1;
        case 'J':
            if (img_parse_output(optarg, &a->json) < 0) {
                return -1;
            }
            break;
        case 'S':
            if (!img_parse_size(optarg, &a->size) ||
                a->size > INT64_MAX) {
                img_error("Invalid image size specified. You may use k, M, "
                          "G, T, P or E suffixes for");
                img_error("kilobytes, megabytes, gigabytes, terabytes, "
                          "petabytes and exabytes.");
                return -1;
            }
            a->have_size = true;
            break;
        case 'U':
            img_force_share = true;
            break;
        default:
            img_usage_error("measure", NULL);
            return -1;
        }
    }
    if (argc - optind > 1) {
        img_error("At most one filename argument is allowed.");
        return -1;
    }
    a->filename = optind < argc ? argv[optind] : NULL;
    if (have_file_opts && !a->filename) {
        img_error("--image-opts, -f, and -l require a filename argument.");
        return -1;
    }
    if (a->filename && a->have_size) {
        img_error("--size N cannot be used together with a filename.");
        return -1;
    }
    if (!a->filename && !a->have_size) {
        img_error("Either --size N or one filename must be specified.");
        return -1;
    }
    return 0;
}

static void
print_result(bool json, uint64_t required, uint64_t full, bool has_bitmaps,
             uint64_t bitmaps)
{
    if (json) {
        printf("{\n");
        if (has_bitmaps) {
            printf("    \"bitmaps\": %" PRIu64 ",\n", bitmaps);
        }
        printf("    \"required\": %" PRIu64 ",\n"
               "    \"fully-allocated\": %" PRIu64 "\n}\n", required, full);
        return;
    }
    printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64
           "\n", required, full);
    if (has_bitmaps) {
        printf("bitmaps size: %" PRIu64 "\n", bitmaps);
    }
}

int
img_cmd_measure(int argc, char **argv)
{
    struct measure_args a = { .out_fmt = "raw" };
    struct measure_target t = { .cluster_size = 65536, .refcount_bits = 16,
                                .version = 3 };
    struct err *e = NULL;
    struct img src = { 0 };
    uint64_t vsize, data = 0, full, required, bitmaps = 0;
    bool has_bitmaps = false;
    int ret;

    if (measure_parse(argc, argv, &a) < 0) {
        return 1;
    }
    if (strcmp(a.out_fmt, "raw") && strcmp(a.out_fmt, "qcow2")) {
        if (block_driver_find(a.out_fmt)) {
            img_error("Block driver '%s' does not support size measurement",
                      a.out_fmt);
        } else {
            img_error("Unknown file format '%s'", a.out_fmt);
        }
        return 1;
    }
    t.fmt = a.out_fmt;
    if (a.opts && !target_opts(&t, a.opts)) {
        return 1;
    }
    if (a.filename) {
        if (a.image_opts ? !img_open_opts(&src, a.filename, false, &e)
                         : !img_open(&src, a.filename, a.fmt, false, &e)) {
            img_report(e);
            return 1;
        }
        vsize = (uint64_t)block_handle_getlength(src.h);
    } else {
        vsize = a.size;
    }
    if (!strcmp(t.fmt, "raw")) {
        /* Raw files hold every byte, allocated or not. */
        full = required = align_up(vsize, BLOCK_SECTOR_SIZE);
        goto print;
    }
    vsize = align_up(vsize, t.cluster_size);
    if (div_up(vsize / t.cluster_size,
               t.cluster_size / (t.extended_l2 ? 16 : 8)) * L1E_SIZE >
        MAX_L1_BYTES) {
        img_error("The image size is too large (try using a larger cluster "
                  "size)");
        img_close(&src);
        return 1;
    }
    if (src.node && !t.backing && !t.prealloc_data) {
        ret = data_bytes(&src, t.cluster_size, &data);
        if (ret < 0) {
            img_error("Unable to get block status: %s", strerror(-ret));
            img_close(&src);
            return 1;
        }
    } else if (src.node || t.prealloc_data) {
        data = vsize;
    }
    full = qcow2_full_size(&t, vsize);
    required = full - vsize + data;
    /* Bitmaps go only from a qcow2 source into a v3 image. */
    if (src.node && t.version >= 3) {
        struct block_node *fmt = block_skip_filters(src.node);

        has_bitmaps = fmt && fmt->drv->bitmap_can_store;
        if (has_bitmaps) {
            bitmaps = bitmaps_bytes(fmt, t.cluster_size);
        }
    }
print:
    print_result(a.json, required, full, has_bitmaps, bitmaps);
    if (src.node) {
        img_close(&src);
    }
    return 0;
}
