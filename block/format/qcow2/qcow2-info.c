/* SPDX-License-Identifier: MIT */
/*
 * The qcow2 driver's image_info hook: what lockstep-img info (and the
 * tools that follow backing chains) know of an image, read from its
 * header through the file node, so that it describes any image the header
 * decoder accepts, including ones the driver would refuse to open (dirty,
 * corrupt, with snapshots).  With details: the bitmap list (when the
 * autoclear bit vouches for it), the snapshot table and the
 * "format-specific" object of qemu-img info.  Main thread.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2.h"
#include "util.h"

/* QEMU's limits on the snapshot table. */
#define INFO_MAX_SNAPSHOTS 65536
#define INFO_MAX_SNAPSHOT_BYTES (64 * 1024 * 1024)


/* Where the bitmaps extension puts the directory; false if none. */
static bool
find_bitmap_dir(const uint8_t *head, size_t len, const struct qcow2_header *h,
                uint32_t *nb, uint64_t *size, uint64_t *offset)
{
    uint64_t pos = h->version >= 3 ? h->header_length : QCOW2_V2_HEADER_LEN;
    uint64_t end = MIN(len, h->cluster_size);

    while (pos + 8 <= end) {
        uint32_t magic = ld_be32(head + pos), elen = ld_be32(head + pos + 4);

        if (magic == QCOW2_EXT_END || pos + 8 + elen > end) {
            return false;
        }
        if (magic == QCOW2_EXT_BITMAPS && elen >= 24) {
            *nb = ld_be32(head + pos + 8);
            *size = ld_be64(head + pos + 16);
            *offset = ld_be64(head + pos + 24);
            return true;
        }
        pos += 8 + align_up(elen, 8);
    }
    return false;
}

static json_t *
bitmap_entry(const uint8_t *e, uint64_t avail)
{
    uint32_t flags = ld_be32(e + 12);
    uint16_t name_len = ld_be16(e + 18);
    json_t *fl = json_array(), *o;

    if (24 + (uint64_t)ld_be32(e + 20) + name_len > avail) {
        json_decref(fl);
        return NULL;
    }
    if (flags & 1) {
        json_array_append_new(fl, json_string("in-use"));
    }
    if (flags & 2) {
        json_array_append_new(fl, json_string("auto"));
    }
    o = json_object();
    json_object_set_new(o, "flags", fl);
    json_object_set_new(o, "name",
                        json_stringn((const char *)e + 24 + ld_be32(e + 20),
                                     name_len));
    json_object_set_new(o, "granularity",
                        json_integer((json_int_t)(1ULL << (e[17] & 63))));
    return o;
}

/* The bitmap list qemu-img shows; only when the autoclear bit vouches. */
static json_t *
read_bitmaps(struct block_node *file, const uint8_t *head, size_t len,
             const struct qcow2_header *h)
{
    uint64_t size, offset, pos = 0;
    uint32_t nb;
    CLEANUP_FREE uint8_t *dir = NULL;
    json_t *list;

    if (!(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS) ||
        !find_bitmap_dir(head, len, h, &nb, &size, &offset) ||
        size > 1024 * 65535 || !(dir = malloc(MAX(size, 1))) ||
        block_pread(file, offset, size, dir, 0) < 0) {
        return NULL;
    }
    list = json_array();
    for (uint32_t i = 0; i < nb && pos + 24 <= size; i++) {
        json_t *e = bitmap_entry(dir + pos, size - pos);

        if (!e) {
            break;
        }
        json_array_append_new(list, e);
        pos += align_up(24 + (uint64_t)ld_be32(dir + pos + 20) +
                        ld_be16(dir + pos + 18), 8);
    }
    return list;
}

/* One snapshot table entry at *pos (40-byte fixed part read in fix). */
static json_t *
snapshot_entry(struct block_node *file, uint64_t *pos)
{
    uint8_t fix[40], extra[24] = { 0 };
    uint32_t extra_len, id_len, name_len;
    uint64_t vm_clock, vm_size, icount = UINT64_MAX;
    CLEANUP_FREE char *id = NULL, *name = NULL;
    json_t *o;

    if (block_pread(file, *pos, 40, fix, 0) < 0) {
        return NULL;
    }
    extra_len = ld_be32(fix + 36);
    id_len = ld_be16(fix + 12);
    name_len = ld_be16(fix + 14);
    id = xzalloc(id_len + 1);
    name = xzalloc(name_len + 1);
    if (block_pread(file, *pos + 40, MIN(extra_len, 24), extra, 0) < 0 ||
        block_pread(file, *pos + 40 + extra_len, id_len, id, 0) < 0 ||
        block_pread(file, *pos + 40 + extra_len + id_len, name_len, name,
                    0) < 0) {
        return NULL;
    }
    *pos += align_up(40 + (uint64_t)extra_len + id_len + name_len, 8);
    vm_clock = ld_be64(fix + 24);
    vm_size = extra_len >= 8 ? ld_be64(extra) : ld_be32(fix + 32);
    if (extra_len >= 24) {
        icount = ld_be64(extra + 16);
    }
    o = json_object();
    if (icount != UINT64_MAX) {
        json_object_set_new(o, "icount", json_integer((json_int_t)icount));
    }
    json_object_set_new(o, "vm-clock-nsec",
                        json_integer(vm_clock % 1000000000));
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "date-sec", json_integer(ld_be32(fix + 16)));
    json_object_set_new(o, "date-nsec", json_integer(ld_be32(fix + 20)));
    json_object_set_new(o, "vm-clock-sec",
                        json_integer(vm_clock / 1000000000));
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "vm-state-size", json_integer((json_int_t)vm_size));
    return o;
}

static json_t *
read_snapshots(struct block_node *file, const struct qcow2_header *h)
{
    uint64_t pos = h->snapshots_offset;
    json_t *list;

    /* A damaged header must not make info read forever (QEMU's limits). */
    if (h->nb_snapshots == 0 || h->nb_snapshots > INFO_MAX_SNAPSHOTS) {
        return NULL;
    }
    list = json_array();
    for (uint32_t i = 0; i < h->nb_snapshots; i++) {
        json_t *e = pos - h->snapshots_offset < INFO_MAX_SNAPSHOT_BYTES
                    ? snapshot_entry(file, &pos) : NULL;

        if (!e) {
            break;
        }
        json_array_append_new(list, e);
    }
    return list;
}


static json_t *
qcow2_specific(const struct qcow2_header *h, json_t *bitmaps)
{
    json_t *d = json_object();

    json_object_set_new(d, "compat",
                        json_string(h->version >= 3 ? "1.1" : "0.10"));
    json_object_set_new(d, "compression-type",
                        json_string(h->compression_type ? "zstd" : "zlib"));
    if (h->version >= 3) {
        json_object_set_new(d, "lazy-refcounts",
                            json_boolean(h->compatible_features &
                                         QCOW2_COMPAT_LAZY_REFCOUNTS));
    }
    if (bitmaps) {
        json_object_set(d, "bitmaps", bitmaps);
    }
    json_object_set_new(d, "refcount-bits", json_integer(h->refcount_bits));
    if (h->version >= 3) {
        json_object_set_new(d, "corrupt",
                            json_boolean(h->incompatible_features &
                                         QCOW2_INCOMPAT_CORRUPT));
        json_object_set_new(d, "extended-l2", json_boolean(h->extended_l2));
    }
    return json_pack("{s:s, s:o}", "type", "qcow2", "data", d);
}

/* The first cluster (at most the largest one), read from file. */
static uint8_t *
read_head(struct block_node *file, size_t *len, struct err **errp)
{
    int64_t flen = block_getlength(file);
    uint8_t *buf;
    int ret;

    if (flen < 0) {
        err_setf_errno(errp, (int)-flen, "Could not get the file length");
        return NULL;
    }
    *len = (size_t)MIN((uint64_t)flen, 1ULL << QCOW2_MAX_CLUSTER_BITS);
    buf = xzalloc(MAX(*len, 1));
    ret = block_pread(file, 0, *len, buf, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read the image header");
        free(buf);
        return NULL;
    }
    return buf;
}

int
qcow2_image_info(struct block_node *file, bool details,
                 struct block_image_info *info, struct err **errp)
{
    CLEANUP_FREE uint8_t *head = NULL;
    struct qcow2_header h;
    json_t *bitmaps;
    size_t len;
    int ret;

    head = read_head(file, &len, errp);
    if (!head) {
        return -EIO;
    }
    ret = qcow2_header_decode(head, len, &h, errp);
    if (ret < 0) {
        return ret;
    }
    info->virtual_size = h.size;
    info->cluster_size = h.cluster_size;
    info->backing_file = h.has_backing_file ? xstrdup(h.backing_file) : NULL;
    info->backing_fmt = h.has_backing_fmt ? xstrdup(h.backing_fmt) : NULL;
    info->data_file = h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE
                      ? xstrdup(h.data_file) : NULL;
    info->encrypted = h.crypt_method != QCOW2_CRYPT_NONE;
    info->dirty = h.incompatible_features & QCOW2_INCOMPAT_DIRTY;
    if (details) {
        bitmaps = read_bitmaps(file, head, len, &h);
        info->format_specific = qcow2_specific(&h, bitmaps);
        json_decref(bitmaps);
        info->snapshots = read_snapshots(file, &h);
    }
    return 0;
}
