/* SPDX-License-Identifier: MIT */
/*
 * qcow2 format logic without I/O: header decoding and validation, feature
 * names, L2 entry classification and refcount entry packing for every
 * refcount width.  Everything read from disk is checked here before the
 * driver or the tools use it, so that a malformed image produces a clear
 * error rather than a wild offset.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2.h"
#include "util.h"

static const char *const incompat_names[] = {
    "dirty bit", "corrupt bit", "external data file", "compression type",
    "extended L2 entries",
};
static const char *const compat_names[] = { "lazy refcounts" };
static const char *const autoclear_names[] = {
    "bitmaps", "raw external data",
};

char *
qcow2_feature_names(int type, uint64_t bits)
{
    const char *const *names = type == 0 ? incompat_names :
                               type == 1 ? compat_names : autoclear_names;
    size_t nnames = type == 0 ? ARRAY_SIZE(incompat_names) :
                    type == 1 ? ARRAY_SIZE(compat_names) :
                    ARRAY_SIZE(autoclear_names);
    char *out = xstrdup("");

    for (unsigned i = 0; i < 64; i++) {
        char *next;

        if (!(bits & (1ULL << i))) {
            continue;
        }
        if (i < nnames) {
            next = xasprintf("%s%s%s", out, *out ? ", " : "", names[i]);
        } else {
            next = xasprintf("%s%sUnknown %s feature bit %u", out,
                             *out ? ", " : "",
                             type == 0 ? "incompatible" :
                             type == 1 ? "compatible" : "autoclear", i);
        }
        free(out);
        out = next;
    }
    return out;
}

/*
 * Unknown incompatible bits as QEMU names them: by the image's own
 * feature name table where it has them, the rest as one hex mask
 * ("Unknown incompatible feature: 8000000000000000").
 */
static char *
unknown_incompat_names(const uint8_t *b, size_t len, size_t off,
                       uint64_t mask)
{
    char *out = xstrdup("");

    while (off + 8 <= len) {
        uint32_t magic = ld_be32(b + off), elen = ld_be32(b + off + 4);

        if (magic == QCOW2_EXT_END || off + 8 + elen > len) {
            break;
        }
        /* A short last entry reads as if padded with zeroes (QEMU). */
        for (size_t e = 0; magic == QCOW2_EXT_FEATURE_TABLE && e < elen;
             e += 48) {
            uint8_t f[48] = { 0 };
            char *next;

            memcpy(f, b + off + 8 + e, MIN(48, elen - e));
            if (!f[2]) {
                break;
            }
            if (f[0] != 0 || f[1] > 63 || !(mask & (1ULL << f[1]))) {
                continue;
            }
            mask &= ~(1ULL << f[1]);
            next = xasprintf("%s%s%.46s", out, *out ? ", " : "",
                             (const char *)f + 2);
            free(out);
            out = next;
        }
        off += 8 + ((elen + 7) & ~7U);
    }
    if (mask) {
        char *next = xasprintf("%s%sUnknown incompatible feature: %" PRIx64,
                               out, *out ? ", " : "", mask);

        free(out);
        out = next;
    }
    return out;
}

static void
decode_fixed(const uint8_t *b, struct qcow2_header *h)
{
    memset(h, 0, sizeof(*h));
    h->magic = ld_be32(b);
    h->version = ld_be32(b + 4);
    h->backing_file_offset = ld_be64(b + 8);
    h->backing_file_size = ld_be32(b + 16);
    h->cluster_bits = ld_be32(b + 20);
    h->size = ld_be64(b + 24);
    h->crypt_method = ld_be32(b + 32);
    h->l1_size = ld_be32(b + 36);
    h->l1_table_offset = ld_be64(b + 40);
    h->refcount_table_offset = ld_be64(b + 48);
    h->refcount_table_clusters = ld_be32(b + 56);
    h->nb_snapshots = ld_be32(b + 60);
    h->snapshots_offset = ld_be64(b + 64);
    h->refcount_order = 4;
    h->header_length = QCOW2_V2_HEADER_LEN;
}

static int
decode_v3(const uint8_t *b, size_t len, struct qcow2_header *h,
          struct err **errp)
{
    if (len < QCOW2_V3_HEADER_LEN) {
        err_setf(errp, "qcow2 header truncated");
        return -EINVAL;
    }
    h->incompatible_features = ld_be64(b + 72);
    h->compatible_features = ld_be64(b + 80);
    h->autoclear_features = ld_be64(b + 88);
    h->refcount_order = ld_be32(b + 96);
    h->header_length = ld_be32(b + 100);
    if (h->header_length < QCOW2_V3_HEADER_LEN || h->header_length % 8) {
        err_setf(errp, "qcow2 header length %u is invalid",
                 h->header_length);
        return -EINVAL;
    }
    if (h->header_length > len || h->header_length > h->cluster_size) {
        err_setf(errp, "qcow2 header exceeds cluster size");
        return -EINVAL;
    }
    if (h->header_length > 104) {
        h->compression_type = b[104];
    }
    if (h->incompatible_features & ~QCOW2_INCOMPAT_MASK) {
        CLEANUP_FREE char *names =
            unknown_incompat_names(b, len, h->header_length,
                                   h->incompatible_features &
                                   ~QCOW2_INCOMPAT_MASK);

        err_setf(errp, "Unsupported qcow2 feature(s): %s", names);
        return -ENOTSUP;
    }
    if (h->refcount_order > 6) {
        err_setf(errp, "Refcount order %u is invalid (must be 0..6)",
                 h->refcount_order);
        return -EINVAL;
    }
    if (!!(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) !=
        (h->compression_type != 0)) {
        err_setf(errp, "qcow2 compression type %u does not match the "
                 "compression type feature bit", h->compression_type);
        return -EINVAL;
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD) {
        err_setf(errp, "Unknown qcow2 compression type %u",
                 h->compression_type);
        return -ENOTSUP;
    }
    return 0;
}

static bool
aligned_offset(uint64_t off, uint64_t cluster_size)
{
    return is_aligned(off, cluster_size) && off < QCOW2_MAX_HOST_OFFSET;
}

static int
check_tables(struct qcow2_header *h, struct err **errp)
{
    uint64_t cs = h->cluster_size;
    uint64_t need;

    if (h->size % 512) {
        err_setf(errp, "qcow2 virtual size %llu is not a multiple of 512",
                 (unsigned long long)h->size);
        return -EINVAL;
    }
    if (!aligned_offset(h->l1_table_offset, cs)) {
        err_setf(errp, "Invalid L1 table offset");
        return -EINVAL;
    }
    if ((uint64_t)h->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
        err_setf(errp, "Active L1 table too large");
        return -EFBIG;
    }
    need = div_round_up(h->size, cs * h->l2_entries);
    if (need > INT32_MAX) {
        /* QEMU's limit: no L1 index may pass INT_MAX. */
        err_setf(errp, "Image is too big");
        return -EFBIG;
    }
    if (h->l1_size < need) {
        err_setf(errp, "L1 table is too small (%u entries for a virtual "
                 "size needing %llu)", h->l1_size,
                 (unsigned long long)need);
        return -EINVAL;
    }
    if (h->l1_size && h->l1_table_offset == 0) {
        err_setf(errp, "Invalid L1 table offset");
        return -EINVAL;
    }
    if (!aligned_offset(h->refcount_table_offset, cs) ||
        h->refcount_table_offset == 0) {
        err_setf(errp, "Invalid reference count table offset");
        return -EINVAL;
    }
    if (h->refcount_table_clusters == 0 ||
        (uint64_t)h->refcount_table_clusters * cs >
        QCOW2_MAX_REFTABLE_BYTES) {
        err_setf(errp, "Reference count table too large or empty");
        return -EINVAL;
    }
    /* Alignment is checked even without snapshots, as QEMU does. */
    if (!is_aligned(h->snapshots_offset, cs) ||
        (h->nb_snapshots && !aligned_offset(h->snapshots_offset, cs))) {
        err_setf(errp, "Snapshot table offset invalid");
        return -EINVAL;
    }
    return 0;
}

static void
copy_string(char *dst, size_t dstlen, const uint8_t *src, size_t n)
{
    n = MIN(n, dstlen - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* The bitmaps extension: its fields matter while the autoclear bit says
 * the bitmaps are valid (QEMU refuses such images otherwise). */
static int
check_bitmaps_ext(const uint8_t *d, uint32_t elen,
                  const struct qcow2_header *h, struct err **errp)
{
    uint32_t nb;
    uint64_t dir_size, dir_off;

    if (elen != 24) {
        err_setf(errp, "bitmaps_ext: Invalid extension length");
        return -EINVAL;
    }
    if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        return 0;
    }
    nb = ld_be32(d);
    dir_size = ld_be64(d + 8);
    dir_off = ld_be64(d + 16);
    if (ld_be32(d + 4)) {
        err_setf(errp, "bitmaps_ext: Reserved field is not zero");
    } else if (nb == 0 || nb > QCOW2_MAX_BITMAPS) {
        err_setf(errp, "bitmaps_ext: Invalid number of bitmaps %u", nb);
    } else if (!is_aligned(dir_off, h->cluster_size)) {
        err_setf(errp, "bitmaps_ext: invalid bitmap directory offset");
    } else if (dir_size > QCOW2_MAX_BITMAP_DIR_BYTES) {
        err_setf(errp, "bitmaps_ext: bitmap directory size (%llu) exceeds "
                 "the maximum supported size (%llu)",
                 (unsigned long long)dir_size,
                 (unsigned long long)QCOW2_MAX_BITMAP_DIR_BYTES);
    } else {
        return 0;
    }
    return -EINVAL;
}

/* Walk the extension list between header_length and the end of cluster 0
 * (or of what the caller read). */
static int
decode_extensions(const uint8_t *b, size_t len, struct qcow2_header *h,
                  struct err **errp)
{
    /* The list may fill the cluster, or end where the backing name is. */
    uint64_t end = h->cluster_size;
    uint64_t off = h->header_length;
    uint32_t magic, elen;

    if (h->version < 3) {
        /* v2: extensions follow the 72-byte header as well. */
        off = QCOW2_V2_HEADER_LEN;
    }
    if (h->has_backing_file && h->backing_file_offset < end) {
        end = h->backing_file_offset;
    }
    while (off < end) {
        if (end - off < 8) {
            err_setf(errp, "qcow2 header extension list is truncated");
            return -EINVAL;
        }
        if (off + 8 > len) {
            break;      /* the file ends: zeroes, the end marker */
        }
        magic = ld_be32(b + off);
        elen = ld_be32(b + off + 4);
        off += 8;
        /* Checked before the end marker too, as QEMU does. */
        if (elen > end - off || elen > len - off) {
            err_setf(errp, "qcow2 header extension 0x%08x is truncated",
                     magic);
            return -EINVAL;
        }
        if (magic == QCOW2_EXT_END) {
            break;
        }
        switch (magic) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (elen >= sizeof(h->backing_fmt)) {
                err_setf(errp, "ERROR: ext_backing_format: len=%u too large "
                         "(>=%zu)", elen, sizeof(h->backing_fmt));
                return -EINVAL;
            }
            copy_string(h->backing_fmt, sizeof(h->backing_fmt), b + off,
                        elen);
            h->has_backing_fmt = true;
            break;
        case QCOW2_EXT_BITMAPS:
            if (check_bitmaps_ext(b + off, elen, h, errp) < 0) {
                return -EINVAL;
            }
            h->has_bitmaps_ext = true;
            break;
        case QCOW2_EXT_DATA_FILE:
            if (elen > QCOW2_MAX_BACKING_NAME) {
                err_setf(errp, "External data file name too long");
                return -EINVAL;
            }
            copy_string(h->data_file, sizeof(h->data_file), b + off, elen);
            h->has_data_file_ext = true;
            break;
        case QCOW2_EXT_CRYPTO:
            if (h->crypt_method != QCOW2_CRYPT_LUKS) {
                err_setf(errp, "CRYPTO header extension only expected with "
                         "LUKS encryption method");
                return -EINVAL;
            }
            if (elen != 16) {
                err_setf(errp, "CRYPTO header extension size %u, but "
                         "expected size 16", elen);
                return -EINVAL;
            }
            h->has_crypto_ext = true;
            break;
        default:
            /* Feature table and unknown extensions: nothing to do; they
             * stay on disk because we never rewrite cluster 0 whole. */
            break;
        }
        off += align_up(elen, 8);
    }
    h->ext_end = MIN(off, end);
    return 0;
}

/* The external data file bits need the file's name, and each other. */
static int
check_data_file(const struct qcow2_header *h, struct err **errp)
{
    if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE) {
        if (!h->has_data_file_ext) {
            err_setf(errp, "'data-file' is required for this image");
            return -EINVAL;
        }
    } else if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) {
        err_setf(errp, "data-file-raw requires a data file");
        return -EINVAL;
    }
    return 0;
}

static int
decode_backing_name(const uint8_t *b, size_t len, struct qcow2_header *h,
                    struct err **errp)
{
    if (h->backing_file_offset == 0) {
        return 0;
    }
    if (h->backing_file_size > QCOW2_MAX_BACKING_NAME ||
        h->backing_file_size == 0) {
        err_setf(errp, "Backing file name too long or empty");
        return -EINVAL;
    }
    if (range_exceeds(h->backing_file_offset, h->backing_file_size,
                      MIN((uint64_t)len, h->cluster_size))) {
        err_setf(errp, "Backing file name is outside the header cluster");
        return -EINVAL;
    }
    copy_string(h->backing_file, sizeof(h->backing_file),
                b + h->backing_file_offset, h->backing_file_size);
    if (strlen(h->backing_file) != h->backing_file_size) {
        err_setf(errp, "Backing file name contains a NUL byte");
        return -EINVAL;
    }
    h->has_backing_file = true;
    return 0;
}

int
qcow2_header_decode(const void *buf, size_t len, struct qcow2_header *h,
                    struct err **errp)
{
    const uint8_t *b = buf;
    int ret;

    if (len < QCOW2_V2_HEADER_LEN) {
        err_setf(errp, "Image is not in qcow2 format (too short)");
        return -EINVAL;
    }
    decode_fixed(b, h);
    if (h->magic != QCOW2_MAGIC) {
        err_setf(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    if (h->version < 2 || h->version > 3) {
        err_setf(errp, "Unsupported qcow2 version %u", h->version);
        return -ENOTSUP;
    }
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        h->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        err_setf(errp, "Unsupported cluster size: 2^%u", h->cluster_bits);
        return -EINVAL;
    }
    h->cluster_size = 1ULL << h->cluster_bits;
    if (h->version == 3) {
        ret = decode_v3(b, len, h, errp);
        if (ret < 0) {
            return ret;
        }
    }
    h->refcount_bits = 1U << h->refcount_order;
    h->extended_l2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    if (h->extended_l2 && h->cluster_bits < 14) {
        err_setf(errp, "Extended L2 entries are only supported with cluster "
                 "sizes of at least 16384 bytes");
        return -EINVAL;
    }
    h->l2_entry_size = h->extended_l2 ? 16 : 8;
    h->l2_entries = h->cluster_size / h->l2_entry_size;
    ret = check_tables(h, errp);
    if (ret < 0) {
        return ret;
    }
    ret = decode_backing_name(b, len, h, errp);
    if (ret == 0) {
        ret = decode_extensions(b, len, h, errp);
    }
    if (ret < 0) {
        return ret;
    }
    return check_data_file(h, errp);
}

int
qcow2_header_check_supported(const struct qcow2_header *h,
                             struct err **errp)
{
    if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE ||
        h->has_data_file_ext) {
        err_setf(errp, "qcow2 images with an external data file are not "
                 "supported");
        return -ENOTSUP;
    }
    if (h->crypt_method != QCOW2_CRYPT_NONE) {
        err_setf(errp, "Encrypted qcow2 images are not supported");
        return -ENOTSUP;
    }
    return 0;
}

int
qcow2_header_parse(const void *buf, size_t len, struct qcow2_header *h,
                   struct err **errp)
{
    int ret = qcow2_header_decode(buf, len, h, errp);

    return ret < 0 ? ret : qcow2_header_check_supported(h, errp);
}

/* Append one header extension (data padded to 8 bytes); false if no room. */
static bool
put_ext(uint8_t *buf, size_t cap, size_t *pos, uint32_t magic,
        const void *data, uint32_t len)
{
    size_t padded = (len + 7) & ~(size_t)7;

    if (*pos + 8 + padded > cap) {
        return false;
    }
    st_be32(buf + *pos, magic);
    st_be32(buf + *pos + 4, len);
    memset(buf + *pos + 8, 0, padded);
    memcpy(buf + *pos + 8, data, len);
    *pos += 8 + padded;
    return true;
}

/*
 * Cluster 0 with a new backing name and format (name NULL: none): the
 * header as it is, the backing format extension first, the other
 * extensions in their order, the end marker and the name.  -ENOSPC when
 * it no longer fits in the cluster (cs bytes of old and buf).
 */
static int
header_with_backing(const uint8_t *old, uint8_t *buf, size_t cs,
                    const struct qcow2_header *h, const char *name,
                    const char *fmt)
{
    size_t hlen = h->version >= 3 ? h->header_length : QCOW2_V2_HEADER_LEN;
    size_t pos = hlen, nlen = name ? strlen(name) : 0;

    memcpy(buf, old, hlen);
    if (name && fmt &&
        !put_ext(buf, cs, &pos, QCOW2_EXT_BACKING_FORMAT, fmt,
                 (uint32_t)strlen(fmt))) {
        return -ENOSPC;
    }
    for (size_t off = hlen; off + 8 <= cs;) {
        uint32_t magic = ld_be32(old + off), elen = ld_be32(old + off + 4);

        if (magic == QCOW2_EXT_END || off + 8 + elen > cs) {
            break;
        }
        if (magic != QCOW2_EXT_BACKING_FORMAT &&
            !put_ext(buf, cs, &pos, magic, old + off + 8, elen)) {
            return -ENOSPC;
        }
        off += 8 + ((elen + 7) & ~7U);
    }
    if (!put_ext(buf, cs, &pos, QCOW2_EXT_END, "", 0) || pos + nlen > cs) {
        return -ENOSPC;
    }
    st_be64(buf + 8, nlen ? pos : 0);
    st_be32(buf + 16, (uint32_t)nlen);
    memcpy(buf + pos, name ? name : "", nlen);
    return 0;
}

/* The driver's change_backing_file hook: rewrite the header cluster. */
int
qcow2_change_backing_file(struct block_node *file, const char *name,
                          const char *fmt, struct err **errp)
{
    CLEANUP_FREE uint8_t *old = NULL;
    CLEANUP_FREE uint8_t *buf = NULL;
    struct qcow2_header h;
    int64_t flen = block_getlength(file);
    size_t len, cs;
    int ret;

    if (name && strlen(name) > QCOW2_MAX_BACKING_NAME) {
        err_setf(errp, "Invalid argument");
        return -EINVAL;
    }
    if (flen < 0) {
        err_setf_errno(errp, (int)-flen, "Could not get the file length");
        return (int)flen;
    }
    len = (size_t)MIN((uint64_t)flen, 1ULL << QCOW2_MAX_CLUSTER_BITS);
    old = xzalloc(MAX(len, 1));
    ret = block_pread(file, 0, len, old, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read the image header");
        return ret;
    }
    ret = qcow2_header_decode(old, len, &h, errp);
    if (ret < 0) {
        return ret;
    }
    cs = MIN(h.cluster_size, len);
    buf = xzalloc(h.cluster_size);
    ret = header_with_backing(old, buf, cs, &h, name, fmt);
    if (ret < 0) {
        err_setf(errp, "No space left in the file header");
        return ret;
    }
    /* Cluster 0 holds nothing but the header: rewrite it whole. */
    ret = block_pwrite(file, 0, cs, buf, 0);
    if (ret == 0) {
        ret = block_flush(file);
    }
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not write the image header");
    }
    return ret;
}

/* ---- Entries --------------------------------------------------------- */

int
qcow2_l2_entry_type(uint64_t entry, uint64_t bitmap, bool extended,
                    int version, unsigned cluster_bits,
                    enum qcow2_cluster_type *type)
{
    uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;

    (void)bitmap;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        if (entry & QCOW2_OFLAG_COPIED) {
            return -EIO;
        }
        *type = QCOW2_CLUSTER_COMPRESSED;
        return 0;
    }
    if (entry & QCOW2_L2E_STD_RESERVED_MASK) {
        return -EIO;
    }
    if (!is_aligned(off, 1ULL << cluster_bits)) {
        return -EIO;
    }
    if (entry & QCOW2_OFLAG_ZERO) {
        if (version < 3 || extended) {
            return -EIO;
        }
        *type = off ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
        return 0;
    }
    if (off == 0) {
        /* COPIED without an offset is only valid with a data file. */
        if (entry & QCOW2_OFLAG_COPIED) {
            return -EIO;
        }
        *type = QCOW2_CLUSTER_UNALLOCATED;
        return 0;
    }
    *type = QCOW2_CLUSTER_NORMAL;
    return 0;
}

int
qcow2_subcluster_type(uint64_t entry, uint64_t bitmap, unsigned i,
                      enum qcow2_cluster_type *type)
{
    bool alloc = bitmap & QCOW2_SUB_ALLOC(i);
    bool zero = bitmap & QCOW2_SUB_ZERO(i);
    uint64_t off = entry & QCOW2_L2E_OFFSET_MASK;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        *type = QCOW2_CLUSTER_COMPRESSED;
        return 0;
    }
    if ((alloc && zero) || (alloc && !off)) {
        return -EIO;
    }
    if (alloc) {
        *type = QCOW2_CLUSTER_NORMAL;
    } else if (zero) {
        *type = off ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
    } else {
        *type = QCOW2_CLUSTER_UNALLOCATED;
    }
    return 0;
}

void
qcow2_compressed_decode(uint64_t entry, unsigned cluster_bits,
                        uint64_t *host_offset, uint64_t *nb_bytes)
{
    unsigned shift = 62 - (cluster_bits - 8);
    uint64_t sectors_mask = (1ULL << (cluster_bits - 8)) - 1;
    uint64_t off = entry & ((1ULL << shift) - 1);
    uint64_t nsect = ((entry >> shift) & sectors_mask) + 1;

    *host_offset = off;
    /* The data starts inside the first sector; count from its start. */
    *nb_bytes = nsect * 512 - (off & 511);
}

uint64_t
qcow2_refcount_get(const uint8_t *block, uint64_t i, unsigned order)
{
    unsigned bits = 1U << order;

    switch (order) {
    case 3:
        return block[i];
    case 4:
        return ld_be16(block + i * 2);
    case 5:
        return ld_be32(block + i * 4);
    case 6:
        return ld_be64(block + i * 8);
    default: {
        uint64_t bit = i * bits;

        return (block[bit / 8] >> (bit % 8)) & ((1U << bits) - 1);
    }
    }
}

void
qcow2_refcount_set(uint8_t *block, uint64_t i, unsigned order,
                   uint64_t value)
{
    unsigned bits = 1U << order;

    switch (order) {
    case 3:
        block[i] = (uint8_t)value;
        break;
    case 4:
        st_be16(block + i * 2, (uint16_t)value);
        break;
    case 5:
        st_be32(block + i * 4, (uint32_t)value);
        break;
    case 6:
        st_be64(block + i * 8, value);
        break;
    default: {
        uint64_t bit = i * bits;
        uint8_t mask = (uint8_t)(((1U << bits) - 1) << (bit % 8));

        block[bit / 8] = (uint8_t)((block[bit / 8] & ~mask) |
                                   ((value << (bit % 8)) & mask));
        break;
    }
    }
}
