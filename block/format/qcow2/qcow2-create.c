/* SPDX-License-Identifier: MIT */
/*
 * Creating a qcow2 image: compute a self-consistent layout (header, refcount
 * table, refcount blocks, L1 and, with preallocation, L2 tables and data
 * clusters), build every table in memory and write them out.  The layout of
 * an image without preallocation is the one qemu-img produces: header @0,
 * reftable @1, refblock @2, L1 @3 clusters.  Main thread only.
 */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "util.h"

/* Where everything goes, in clusters. */
struct layout {
    uint64_t cs;              /* cluster size */
    uint64_t l1_entries;
    uint64_t rt_clusters, rb_clusters, l1_clusters, l2_clusters;
    uint64_t data_clusters;
    uint64_t rt_start, rb_start, l1_start, l2_start, data_start;
    uint64_t total;           /* clusters with refcount 1 */
};

static const struct {
    uint8_t type;
    uint8_t bit;
    const char *name;
} feature_table[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

char *
qcow2_resolve_backing(const char *image_filename, const char *backing)
{
    CLEANUP_FREE char *copy = NULL;

    if (backing[0] == '/' || !image_filename || strstr(backing, "://") ||
        !strncmp(backing, "json:", 5)) {
        return xstrdup(backing);
    }
    copy = xstrdup(image_filename);
    return xasprintf("%s/%s", dirname(copy), backing);
}

static int
check_opts(const struct qcow2_create_opts *o, uint64_t *cs, unsigned *order,
           struct err **errp)
{
    uint64_t c = o->cluster_size ? o->cluster_size : 64 * KiB;
    unsigned rb = o->refcount_bits ? o->refcount_bits : 16;
    int version = o->version ? o->version : 3;

    if (!is_power_of_2(c) || c < 512 || c > 2 * MiB) {
        err_setf(errp, "Cluster size must be a power of two between 512 and "
                 "2048k");
        return -EINVAL;
    }
    if (!is_power_of_2(rb) || rb > 64) {
        err_setf(errp, "Refcount width must be a power of two and may not "
                 "exceed 64 bits");
        return -EINVAL;
    }
    if (version != 2 && version != 3) {
        err_setf(errp, "Invalid compat version %d", version);
        return -EINVAL;
    }
    if (version == 2 && (rb != 16 || o->extended_l2)) {
        err_setf(errp, "Different refcount widths than 16 bits and extended "
                 "L2 entries require compatibility level 1.1 or above "
                 "(use compat=1.1 or greater)");
        return -EINVAL;
    }
    if (version == 2 && o->lazy_refcounts) {
        err_setf(errp, "Lazy refcounts only supported with compatibility "
                 "level 1.1 and above (use version=v3 or greater)");
        return -EINVAL;
    }
    if (version == 2 && o->compression_type != QCOW2_COMPRESSION_ZLIB) {
        err_setf(errp, "Non-zlib compression type is only supported with "
                 "compatibility level 1.1 and above (use version=v3 or "
                 "greater)");
        return -EINVAL;
    }
    if (o->extended_l2 && c < 16 * KiB) {
        err_setf(errp, "Extended L2 entries are only supported with cluster "
                 "sizes of at least 16384 bytes");
        return -EINVAL;
    }
    if (o->backing_fmt && !o->backing_file) {
        err_setf(errp, "Backing format cannot be used without backing file");
        return -EINVAL;
    }
    if (o->backing_file && strlen(o->backing_file) > QCOW2_MAX_BACKING_NAME) {
        err_setf(errp, "Backing file name too long");
        return -EINVAL;
    }
    if (o->backing_fmt && strlen(o->backing_fmt) > 15) {
        err_setf(errp, "Backing format name too long");
        return -EINVAL;
    }
    *cs = c;
    *order = log2_u64(rb);
    return 0;
}

static int
compute_layout(struct layout *l, uint64_t size, uint64_t cs, unsigned order,
               bool extended, bool prealloc, struct err **errp)
{
    uint64_t l2_entries = cs / (extended ? 16 : 8);
    uint64_t per_rb = cs * 8 / (1U << order);
    uint64_t prev = 0;

    memset(l, 0, sizeof(*l));
    l->cs = cs;
    l->l1_entries = div_round_up(size, cs * l2_entries);
    if (l->l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
        /* qemu-img's words (its iotests match them). */
        err_setf(errp, "The image size is too large for file format 'qcow2' "
                 "(try using a larger cluster size)");
        return -EFBIG;
    }
    l->l1_clusters = div_round_up(l->l1_entries * 8, cs);
    if (prealloc) {
        l->l2_clusters = l->l1_entries;
        l->data_clusters = div_round_up(size, cs);
    }
    l->rt_clusters = 1;
    l->rb_clusters = 1;
    /* The refcount structure must count itself: iterate to a fixpoint. */
    while (prev != l->rb_clusters + l->rt_clusters) {
        prev = l->rb_clusters + l->rt_clusters;
        l->total = 1 + l->rt_clusters + l->rb_clusters + l->l1_clusters +
                   l->l2_clusters + l->data_clusters;
        l->rb_clusters = div_round_up(l->total, per_rb);
        l->rt_clusters = div_round_up(l->rb_clusters * 8, cs);
    }
    if (l->rt_clusters * cs > QCOW2_MAX_REFTABLE_BYTES) {
        err_setf(errp, "Image size too large for this cluster size and "
                 "refcount width");
        return -EFBIG;
    }
    l->rt_start = 1;
    l->rb_start = l->rt_start + l->rt_clusters;
    l->l1_start = l->rb_start + l->rb_clusters;
    l->l2_start = l->l1_start + l->l1_clusters;
    l->data_start = l->l2_start + l->l2_clusters;
    return 0;
}

/* Bytes of cluster 0 that the header needs, with or without the optional
 * feature name table. */
static uint64_t
header_bytes(const struct qcow2_create_opts *o, int version,
             bool feature_table_too)
{
    uint64_t n = version == 3 ? QCOW2_HEADER_LEN_WRITTEN : QCOW2_V2_HEADER_LEN;

    if (o->backing_fmt) {
        n += 8 + align_up(strlen(o->backing_fmt), 8);
    }
    if (version == 3 && feature_table_too) {
        n += 8 + ARRAY_SIZE(feature_table) * 48;
    }
    n += 8;
    if (o->backing_file) {
        n += strlen(o->backing_file);
    }
    return n;
}

/*
 * Cluster 0: header, feature table, backing format, backing name.  The
 * feature name table is optional: like QEMU, leave it out when a long
 * backing name would not fit in a small cluster otherwise.
 */
static uint8_t *
build_header(const struct layout *l, uint64_t size, unsigned order,
             const struct qcow2_create_opts *o, int version)
{
    uint8_t *b = xzalloc(l->cs);
    bool with_table = header_bytes(o, version, true) <= l->cs;
    uint64_t off;

    st_be32(b, QCOW2_MAGIC);
    st_be32(b + 4, (uint32_t)version);
    st_be32(b + 20, log2_u64(l->cs));
    st_be64(b + 24, size);
    st_be32(b + 36, (uint32_t)l->l1_entries);
    st_be64(b + 40, l->l1_start * l->cs);
    st_be64(b + 48, l->rt_start * l->cs);
    st_be32(b + 56, (uint32_t)l->rt_clusters);
    off = QCOW2_V2_HEADER_LEN;
    if (version == 3) {
        st_be64(b + 72, (o->extended_l2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
                        (o->compression_type ? QCOW2_INCOMPAT_COMPRESSION
                                             : 0));
        b[104] = (uint8_t)o->compression_type;
        st_be64(b + 80, o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0);
        st_be32(b + 96, order);
        st_be32(b + 100, QCOW2_HEADER_LEN_WRITTEN);
        off = QCOW2_HEADER_LEN_WRITTEN;
    }
    if (o->backing_fmt) {
        size_t n = strlen(o->backing_fmt);

        st_be32(b + off, QCOW2_EXT_BACKING_FORMAT);
        st_be32(b + off + 4, (uint32_t)n);
        memcpy(b + off + 8, o->backing_fmt, n);
        off += 8 + align_up(n, 8);
    }
    if (version == 3 && with_table) {
        st_be32(b + off, QCOW2_EXT_FEATURE_TABLE);
        st_be32(b + off + 4, (uint32_t)(ARRAY_SIZE(feature_table) * 48));
        off += 8;
        for (size_t i = 0; i < ARRAY_SIZE(feature_table); i++) {
            b[off] = feature_table[i].type;
            b[off + 1] = feature_table[i].bit;
            memcpy(b + off + 2, feature_table[i].name,
                   strlen(feature_table[i].name));
            off += 48;
        }
    }
    off += 8;   /* end-of-extensions marker (zeroes) */
    if (o->backing_file) {
        size_t n = strlen(o->backing_file);

        st_be64(b + 8, off);
        st_be32(b + 16, (uint32_t)n);
        memcpy(b + off, o->backing_file, n);
    }
    return b;
}

static int
write_buf(struct block_node *file, uint64_t off, const void *buf,
          uint64_t len, const char *what, struct err **errp)
{
    int ret = block_pwrite(file, off, len, buf, 0);

    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not write qcow2 %s", what);
    }
    return ret;
}

/* Reftable + refblocks: clusters [0, total) have refcount 1. */
static int
write_refcounts(struct block_node *file, const struct layout *l,
                unsigned order, struct err **errp)
{
    uint64_t per_rb = l->cs * 8 / (1U << order);
    CLEANUP_FREE uint8_t *rt = xzalloc(l->rt_clusters * l->cs);
    CLEANUP_FREE uint8_t *rb = xzalloc(l->cs);
    int ret;

    for (uint64_t i = 0; i < l->rb_clusters; i++) {
        st_be64(rt + i * 8, (l->rb_start + i) * l->cs);
        memset(rb, 0, l->cs);
        for (uint64_t j = 0; j < per_rb && i * per_rb + j < l->total; j++) {
            qcow2_refcount_set(rb, j, order, 1);
        }
        ret = write_buf(file, (l->rb_start + i) * l->cs, rb, l->cs,
                        "refcount block", errp);
        if (ret < 0) {
            return ret;
        }
    }
    return write_buf(file, l->rt_start * l->cs, rt, l->rt_clusters * l->cs,
                     "refcount table", errp);
}

/* L1 (and with preallocation the L2 tables mapping every data cluster). */
static int
write_mapping(struct block_node *file, const struct layout *l, bool extended,
              struct err **errp)
{
    uint64_t l2_entries = l->cs / (extended ? 16 : 8);
    uint64_t esz = extended ? 16 : 8;
    CLEANUP_FREE uint8_t *l1 = xzalloc(MAX(l->l1_entries * 8, 1));
    CLEANUP_FREE uint8_t *l2 = xzalloc(l->cs);
    uint64_t data = 0;
    int ret;

    for (uint64_t i = 0; i < l->l2_clusters; i++) {
        st_be64(l1 + i * 8, ((l->l2_start + i) * l->cs) | QCOW2_OFLAG_COPIED);
        memset(l2, 0, l->cs);
        for (uint64_t j = 0; j < l2_entries && data < l->data_clusters;
             j++, data++) {
            st_be64(l2 + j * esz,
                    ((l->data_start + data) * l->cs) | QCOW2_OFLAG_COPIED);
            if (extended) {
                st_be64(l2 + j * esz + 8, QCOW2_SUB_ALLOC_ALL);
            }
        }
        ret = write_buf(file, (l->l2_start + i) * l->cs, l2, l->cs,
                        "L2 table", errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (l->l1_entries == 0) {
        return 0;
    }
    return write_buf(file, l->l1_start * l->cs, l1, l->l1_entries * 8,
                     "L1 table", errp);
}

static int
preallocate_data(struct block_node *file, const struct layout *l,
                 const char *mode, struct err **errp)
{
    uint64_t start = l->data_start * l->cs;
    uint64_t len = l->data_clusters * l->cs;
    int ret;

    if (!strcmp(mode, "metadata")) {
        ret = block_truncate(file, start + len, errp);
        return ret;
    }
    if (!strcmp(mode, "falloc")) {
        ret = block_pwrite_zeroes(file, start, len, 0);
    } else {
        CLEANUP_FREE uint8_t *z = xzalloc(MiB);

        ret = 0;
        for (uint64_t off = 0; off < len && ret == 0; off += MiB) {
            ret = block_pwrite(file, start + off, MIN(MiB, len - off), z, 0);
        }
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not preallocate data");
    }
    return ret;
}

static int
backing_size(struct block_node *file, const struct qcow2_create_opts *o,
             uint64_t *size, struct err **errp)
{
    CLEANUP_FREE char *path =
        qcow2_resolve_backing(block_node_filename(file), o->backing_file);
    struct block_node *b = block_node_open_file(path, o->backing_fmt, true,
                                                errp);
    int64_t len;

    if (!b) {
        err_prepend(errp, "Could not open backing image to determine "
                    "size: ");
        return -EINVAL;
    }
    len = block_getlength(b);
    block_node_unref(b);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Could not get the backing size");
        return (int)len;
    }
    *size = align_up((uint64_t)len, 512);
    return 0;
}

int
qcow2_create(struct block_node *file, uint64_t size,
             const struct qcow2_create_opts *opts, struct err **errp)
{
    const char *prealloc = opts->preallocation ? opts->preallocation : "off";
    bool pre = strcmp(prealloc, "off") != 0;
    int version = opts->version ? opts->version : 3;
    CLEANUP_FREE uint8_t *hdr = NULL;
    struct layout l;
    uint64_t cs;
    unsigned order;
    int ret;

    ret = check_opts(opts, &cs, &order, errp);
    if (ret < 0) {
        return ret;
    }
    if (pre && strcmp(prealloc, "metadata") && strcmp(prealloc, "falloc") &&
        strcmp(prealloc, "full")) {
        err_setf(errp, "Invalid preallocation mode: '%s'", prealloc);
        return -EINVAL;
    }
    if (pre && opts->backing_file) {
        err_setf(errp, "Backing file and preallocation can only be used at "
                 "the same time if extended_l2 is on");
        return -EINVAL;
    }
    if (size == 0 && opts->backing_file) {
        ret = backing_size(file, opts, &size, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if (size % 512) {
        err_setf(errp, "Image size must be a multiple of 512 bytes");
        return -EINVAL;
    }
    ret = compute_layout(&l, size, cs, order, opts->extended_l2, pre, errp);
    if (ret < 0) {
        return ret;
    }
    if (header_bytes(opts, version, false) > cs) {
        err_setf(errp, "The backing file name does not fit in a %llu-byte "
                 "cluster", (unsigned long long)cs);
        return -ENOSPC;
    }
    ret = block_truncate(file, 0, errp);
    if (ret < 0) {
        return ret;
    }
    hdr = build_header(&l, size, order, opts, version);
    ret = write_buf(file, 0, hdr, cs, "header", errp);
    if (ret == 0) {
        ret = write_refcounts(file, &l, order, errp);
    }
    if (ret == 0) {
        ret = write_mapping(file, &l, opts->extended_l2, errp);
    }
    if (ret == 0 && pre) {
        ret = preallocate_data(file, &l, prealloc, errp);
    }
    if (ret == 0) {
        ret = block_flush(file);
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Could not flush the new image");
        }
    }
    return ret;
}

/* ---- The driver's create hook -------------------------------------------- */

static const char *const qcow2_compat_values[] = {
    "1.1", "0.10", "v3", "v2", NULL,
};
static const char *const qcow2_compression_values[] = {
    "zlib", "zstd", NULL,
};

/* In the order of qemu-img's "Formatting ..." line. */
const struct block_create_opt qcow2_create_options[] = {
    {"cluster_size", BLOCK_OPT_SIZE, NULL, "65536"},
    {"extended_l2", BLOCK_OPT_BOOL, NULL, "off"},
    {"preallocation", BLOCK_OPT_STRING, NULL, NULL},
    {"compression_type", BLOCK_OPT_STRING, qcow2_compression_values,
     "zlib"},
    {"size", BLOCK_OPT_SIZE, NULL, NULL},
    {"backing_file", BLOCK_OPT_STRING, NULL, NULL},
    {"backing_fmt", BLOCK_OPT_STRING, NULL, NULL},
    {"compat", BLOCK_OPT_STRING, qcow2_compat_values, NULL},
    {"lazy_refcounts", BLOCK_OPT_BOOL, NULL, "off"},
    {"refcount_bits", BLOCK_OPT_INT, NULL, "16"},
    {NULL, 0, NULL, NULL},
};

int
qcow2_create_image(struct block_node *file,
                   const struct block_create_opts *opts, struct err **errp)
{
    json_t *o = opts->options;
    const char *compat = block_opt_str(o, "compat", NULL);
    const char *ctype = block_opt_str(o, "compression_type", "zlib");
    int64_t cs = block_opt_int(o, "cluster_size", 0);
    int64_t rb = block_opt_int(o, "refcount_bits", 0);
    struct qcow2_create_opts q = {
        .extended_l2 = block_opt_bool(o, "extended_l2", false),
        .lazy_refcounts = block_opt_bool(o, "lazy_refcounts", false),
        .backing_file = opts->backing_file,
        .backing_fmt = opts->backing_fmt,
        .preallocation = opts->preallocation,
    };

    /* Out of range here is out of range for check_opts() too. */
    q.cluster_size = cs < 0 ? UINT64_MAX : (uint64_t)cs;
    q.refcount_bits = rb < 0 || rb > 1024 ? 1024 : (unsigned)rb;
    if (compat) {
        q.version = !strcmp(compat, "0.10") || !strcmp(compat, "v2") ? 2 : 3;
    }
    q.compression_type = !strcmp(ctype, "zstd") ? QCOW2_COMPRESSION_ZSTD
                                                : QCOW2_COMPRESSION_ZLIB;
    return qcow2_create(file, opts->size, &q, errp);
}
