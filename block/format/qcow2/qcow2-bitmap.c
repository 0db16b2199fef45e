/* SPDX-License-Identifier: MIT */
/*
 * Persistent dirty bitmaps in qcow2 images: the bitmaps header extension,
 * the bitmap directory and the bitmap tables (qcow2 spec, bitmaps
 * extension; docs/qcow2.md "Persistent bitmaps").  Written from the
 * specification, not from QEMU's code.
 *
 * Lifecycle (the one QEMU follows, so that both can take turns):
 *  - open: every directory entry becomes a named, persistent dirty bitmap
 *    of the node.  An entry with the in_use flag was not stored after its
 *    last writer: it loads as "inconsistent" (removable, otherwise
 *    unusable), without reading its data.  Entries without the "auto"
 *    flag load disabled.
 *  - read-write open: before any guest write can happen, every entry is
 *    marked in_use on disk (a new directory, then the header points to
 *    it), so a crash from then on can never leave a bitmap that looks
 *    current but misses writes.
 *  - close (also blockdev-del, quit, reopen read-only): every persistent,
 *    consistent bitmap is written to new clusters (data, then table), a
 *    new directory without in_use goes to new clusters, everything is
 *    flushed, and one header write switches to it; only then are the old
 *    directory, tables and data freed.
 *  - removal of a persistent bitmap rewrites the directory without it the
 *    same way and then frees its clusters; the last one drops the
 *    extension and the autoclear bit in one header write.
 *
 * Crash safety: every directory and table is written to clusters nothing
 * points to, made stable, and published by a single write of the header
 * area (the extension's fields and the autoclear bit, which lie within
 * one 4 KiB block of cluster 0), followed by a flush.  Before it the old
 * state is whole, after it the new one; freed clusters leak at worst.
 *
 * Locking: everything here runs on the main thread with no request in
 * flight on the node (open, close, QMP commands inside a drained
 * section), and takes s->lock for the metadata like the rest of the
 * driver: s->bitmaps is protected by s->lock (the overlap check reads it
 * from request threads).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

/* Limits of the format as QEMU enforces them (qcow2 spec, bitmaps). */
#define BM_MAX_BITMAPS 65535
#define BM_MAX_DIR_SIZE (1024ULL * BM_MAX_BITMAPS)
#define BM_MAX_TABLE_SIZE 0x8000000U          /* entries */
#define BM_MAX_PHYS_SIZE 0x20000000ULL         /* bytes of bitmap data */
#define BM_MIN_GRAN_BITS 9
#define BM_MAX_GRAN_BITS 31
#define BM_MAX_NAME 1023
#define BM_ENTRY_HDR 24
#define BM_TYPE_DIRTY_TRACKING 1
#define BM_EXT_LEN 24
#define BM_FLAGS_KNOWN (QCOW2_BME_IN_USE | QCOW2_BME_AUTO)
#define BMT_RESERVED 0xff000000000001feULL
#define BMT_OFFSET 0x00fffffffffffe00ULL
#define BMT_ALL_ONES 0x1ULL

/* ---- Sizes ------------------------------------------------------------- */

/* Bytes of serialised bitmap data for a disk of size bytes. */
static uint64_t
data_bytes(uint64_t size, unsigned gran_bits)
{
    return div_round_up(div_round_up(size, 1ULL << gran_bits), 8);
}

static uint64_t
table_entries(const struct qcow2_state *s, uint64_t size, unsigned gran_bits)
{
    return div_round_up(data_bytes(size, gran_bits), s->cluster_size);
}

static uint64_t
entry_size(size_t name_len)
{
    return align_up(BM_ENTRY_HDR + name_len, 8);
}

static uint64_t
clusters_of(const struct qcow2_state *s, uint64_t bytes)
{
    return div_round_up(bytes, s->cluster_size);
}

/* ---- Directory entries in memory -------------------------------------- */

static void
entries_free(struct qcow2_bitmap *e, uint32_t nb)
{
    for (uint32_t i = 0; i < nb; i++) {
        free(e[i].name);
    }
    free(e);
}

void
qcow2_bitmaps_free(struct qcow2_state *s)
{
    entries_free(s->bitmaps.e, s->bitmaps.nb);
    memset(&s->bitmaps, 0, sizeof(s->bitmaps));
}

static const struct qcow2_bitmap *
entry_find(const struct qcow2_bitmaps *b, const char *name)
{
    for (uint32_t i = 0; i < b->nb; i++) {
        if (!strcmp(b->e[i].name, name)) {
            return &b->e[i];
        }
    }
    return NULL;
}

/*
 * The checks QEMU makes on a directory entry before it uses it, so that an
 * image one accepts the other accepts too.
 */
static int
entry_check(const struct qcow2_state *s, const struct qcow2_bitmap *e,
            struct err **errp)
{
    uint64_t phys = (uint64_t)e->table_size * s->cluster_size;

    if (e->table_size == 0 || e->table_offset == 0 ||
        !is_aligned(e->table_offset, s->cluster_size) ||
        e->table_offset >= QCOW2_MAX_HOST_OFFSET ||
        e->table_size > BM_MAX_TABLE_SIZE ||
        e->granularity_bits < BM_MIN_GRAN_BITS ||
        e->granularity_bits > BM_MAX_GRAN_BITS ||
        (e->flags & ~BM_FLAGS_KNOWN) || phys > BM_MAX_PHYS_SIZE ||
        (!(e->flags & QCOW2_BME_IN_USE) &&
         e->table_size != table_entries(s, s->h.size, e->granularity_bits))) {
        err_setf(errp, "Bitmap '%s' doesn't satisfy the constraints",
                 e->name);
        return -EINVAL;
    }
    return 0;
}

/* Decode the directory in dir (size bytes, nb entries expected). */
static int
dir_decode(const struct qcow2_state *s, const uint8_t *dir, uint64_t size,
           uint32_t nb, struct qcow2_bitmap **out, struct err **errp)
{
    struct qcow2_bitmap *e = xcalloc(nb, sizeof(*e));
    uint64_t pos = 0;
    uint32_t i;
    int ret = -EINVAL;

    for (i = 0; i < nb && pos < size; i++) {
        const uint8_t *p = dir + pos;
        uint16_t name_len;
        uint32_t extra;

        if (size - pos < BM_ENTRY_HDR) {
            break;
        }
        name_len = ld_be16(p + 18);
        extra = ld_be32(p + 20);
        if (entry_size((uint64_t)name_len + extra) > size - pos) {
            break;
        }
        e[i].name = xasprintf("%.*s", (int)name_len,
                              (const char *)p + BM_ENTRY_HDR + extra);
        e[i].table_offset = ld_be64(p);
        e[i].table_size = ld_be32(p + 8);
        e[i].flags = ld_be32(p + 12);
        e[i].granularity_bits = p[17];
        if (extra) {
            err_setf(errp, "Bitmap extra data is not supported");
            goto fail;
        }
        if (p[16] != BM_TYPE_DIRTY_TRACKING || name_len == 0 ||
            name_len > BM_MAX_NAME || strlen(e[i].name) != name_len) {
            err_setf(errp, "Bitmap '%s' doesn't satisfy the constraints",
                     e[i].name);
            goto fail;
        }
        ret = entry_check(s, &e[i], errp);
        if (ret < 0) {
            goto fail;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (!strcmp(e[j].name, e[i].name)) {
                err_setf(errp, "Bitmap '%s' appears twice in the bitmap "
                         "directory", e[i].name);
                ret = -EINVAL;
                goto fail;
            }
        }
        pos += entry_size((uint64_t)name_len + extra);
    }
    if (i != nb || pos != size) {
        err_setf(errp, i != nb ? "Less bitmaps found than specified in "
                 "header extension" : "Broken bitmap directory");
        ret = -EINVAL;
        goto fail;
    }
    *out = e;
    return 0;

fail:
    entries_free(e, nb);
    return ret < 0 ? ret : -EINVAL;
}

/* The directory of entries e, in on-disk layout (*size bytes). */
static uint8_t *
dir_encode(const struct qcow2_state *s, const struct qcow2_bitmap *e,
           uint32_t nb, uint64_t *size)
{
    uint64_t len = 0, pos = 0;
    uint8_t *dir;

    for (uint32_t i = 0; i < nb; i++) {
        len += entry_size(strlen(e[i].name));
    }
    dir = xzalloc(clusters_of(s, len) * s->cluster_size);
    for (uint32_t i = 0; i < nb; i++) {
        uint8_t *p = dir + pos;
        size_t n = strlen(e[i].name);

        st_be64(p, e[i].table_offset);
        st_be32(p + 8, e[i].table_size);
        st_be32(p + 12, e[i].flags);
        p[16] = BM_TYPE_DIRTY_TRACKING;
        p[17] = (uint8_t)e[i].granularity_bits;
        st_be16(p + 18, (uint16_t)n);
        memcpy(p + BM_ENTRY_HDR, e[i].name, n);
        pos += entry_size(n);
    }
    *size = len;
    return dir;
}

/* ---- The header extension --------------------------------------------- */

/* Where the extensions of cluster 0 lie (offsets into cluster 0). */
struct hdr_area {
    uint8_t *buf;               /* cluster 0 as read */
    uint64_t len;
    uint64_t limit;             /* extensions end before: backing name */
    uint64_t bm_pos;            /* the bitmaps extension's magic; 0: none */
    uint32_t bm_len;
    uint64_t end_pos;           /* the end marker; 0: none */
};

static int
hdr_read(struct qcow2_state *s, struct hdr_area *a)
{
    int64_t flen = block_getlength(s->file);
    uint64_t pos = s->h.version >= 3 ? s->h.header_length
                                     : QCOW2_V2_HEADER_LEN;
    int ret;

    memset(a, 0, sizeof(*a));
    if (flen < 0) {
        return (int)flen;
    }
    a->len = MIN((uint64_t)flen, s->cluster_size);
    a->buf = xzalloc(s->cluster_size);
    ret = block_pread(s->file, 0, a->len, a->buf, 0);
    if (ret < 0) {
        free(a->buf);
        a->buf = NULL;
        return ret;
    }
    a->limit = a->len;
    if (ld_be64(a->buf + 8) && ld_be64(a->buf + 8) < a->limit) {
        a->limit = ld_be64(a->buf + 8);
    }
    while (pos + 8 <= a->limit) {
        uint32_t magic = ld_be32(a->buf + pos);
        uint32_t elen = ld_be32(a->buf + pos + 4);

        if (magic == QCOW2_EXT_END) {
            a->end_pos = pos;
            break;
        }
        if (elen > a->limit - pos - 8) {
            break;
        }
        if (magic == QCOW2_EXT_BITMAPS) {
            a->bm_pos = pos;
            a->bm_len = elen;
        }
        pos += 8 + align_up(elen, 8);
    }
    return 0;
}

/*
 * Make the header say: nb bitmaps in the directory at dir_offset (nb 0:
 * no extension, autoclear bit clear), in one write followed by a flush.
 * Adding the extension may move the backing file name further out (same
 * write).  Caller holds s->lock.
 */
static int
hdr_write_ext(struct qcow2_state *s, uint32_t nb, uint64_t dir_size,
              uint64_t dir_offset)
{
    struct hdr_area a;
    uint64_t autoclear = s->h.autoclear_features;
    uint64_t lo, hi, backing = 0;
    int ret;

    if (s->h.version < 3) {
        return -ENOTSUP;
    }
    ret = hdr_read(s, &a);
    if (ret < 0) {
        return ret;
    }
    autoclear = nb ? autoclear | QCOW2_AUTOCLEAR_BITMAPS
                   : autoclear & ~QCOW2_AUTOCLEAR_BITMAPS;
    st_be64(a.buf + QCOW2_HDR_OFF_AUTOCLEAR, autoclear);
    lo = QCOW2_HDR_OFF_AUTOCLEAR;
    hi = lo + 8;
    if (a.bm_pos && nb) {
        /* In place: the common case. */
        st_be32(a.buf + a.bm_pos + 4, BM_EXT_LEN);
        st_be32(a.buf + a.bm_pos + 8, nb);
        st_be32(a.buf + a.bm_pos + 12, 0);
        st_be64(a.buf + a.bm_pos + 16, dir_size);
        st_be64(a.buf + a.bm_pos + 24, dir_offset);
        hi = a.bm_pos + 8 + BM_EXT_LEN;
    } else if (a.bm_pos) {
        /* Drop it: the extensions after it (and the end marker) move up. */
        uint64_t next = a.bm_pos + 8 + align_up(a.bm_len, 8);
        uint64_t end = a.end_pos ? a.end_pos + 8 : a.limit;

        memmove(a.buf + a.bm_pos, a.buf + next, end - next);
        memset(a.buf + a.bm_pos + (end - next), 0, next - a.bm_pos);
        hi = end;
    } else if (nb) {
        uint64_t need = a.end_pos + 8 + BM_EXT_LEN + 8;

        if (!a.end_pos) {
            free(a.buf);
            return -ENOSPC;
        }
        if (need > a.limit) {
            /* The backing file name is in the way: move it behind. */
            uint64_t boff = ld_be64(a.buf + 8);
            uint32_t blen = ld_be32(a.buf + 16);

            if (!boff || need + blen > a.len) {
                free(a.buf);
                return -ENOSPC;
            }
            memmove(a.buf + need, a.buf + boff, blen);
            backing = need;
            st_be64(a.buf + 8, backing);
            lo = 8;
            hi = MAX(hi, need + blen);
        }
        st_be32(a.buf + a.end_pos, QCOW2_EXT_BITMAPS);
        st_be32(a.buf + a.end_pos + 4, BM_EXT_LEN);
        st_be32(a.buf + a.end_pos + 8, nb);
        st_be32(a.buf + a.end_pos + 12, 0);
        st_be64(a.buf + a.end_pos + 16, dir_size);
        st_be64(a.buf + a.end_pos + 24, dir_offset);
        memset(a.buf + a.end_pos + 8 + BM_EXT_LEN, 0, 8);
        hi = MAX(hi, need);
    }
    block_debug_event(s->file, "bitmap_ext_update");
    ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, lo, hi - lo, a.buf + lo);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    free(a.buf);
    if (ret == 0) {
        s->h.autoclear_features = autoclear;
        if (backing) {
            s->h.backing_file_offset = backing;
        }
    }
    return ret;
}

/* ---- Publishing a new directory ---------------------------------------- */

/* Free the clusters a bitmap table names, and the table. */
static void
free_table(struct qcow2_state *s, uint64_t offset, uint32_t size)
{
    uint64_t bytes = (uint64_t)size * 8;
    CLEANUP_FREE uint8_t *t = malloc(MAX(bytes, 1));

    if (!t || block_pread(s->file, offset, bytes, t, 0) < 0) {
        return;     /* leaked, never wrongly freed */
    }
    for (uint32_t i = 0; i < size; i++) {
        uint64_t e = ld_be64(t + (uint64_t)i * 8);
        uint64_t off = e & BMT_OFFSET;

        /* Never free what the core metadata uses, whatever the table
         * claims: a damaged table must not make the allocator hand out an
         * L2 table. */
        if (off && !(e & BMT_RESERVED) && is_aligned(off, s->cluster_size) &&
            !qcow2_overlaps_metadata(s, off, s->cluster_size)) {
            qcow2_update_refcount(s, off, 1, -1, QCOW2_DISCARD_OTHER);
        }
    }
    qcow2_update_refcount(s, offset, clusters_of(s, bytes), -1,
                          QCOW2_DISCARD_OTHER);
}

/*
 * Make entries e (nb of them; nb 0: none) the image's bitmap directory:
 * write it to new clusters, make it and everything allocated before it
 * stable, switch the header to it, and free the old directory.  On
 * success s->bitmaps takes e; on failure e stays the caller's and the
 * old directory is in force (what was allocated leaks at worst).
 */
static int
dir_publish(struct qcow2_state *s, struct qcow2_bitmap *e, uint32_t nb)
{
    uint64_t size = 0, old_off, old_size;
    int64_t off = 0;
    CLEANUP_FREE uint8_t *dir = NULL;
    int ret;

    if (nb) {
        dir = dir_encode(s, e, nb, &size);
        if (size > BM_MAX_DIR_SIZE) {
            return -EFBIG;
        }
        off = qcow2_alloc_clusters(s, clusters_of(s, size));
        if (off < 0) {
            return (int)off;
        }
        block_debug_event(s->file, "bitmap_dir_write");
        /* Only the directory's bytes, as QEMU writes it: the file may end
         * inside its last cluster, and measure -f raw sees its length. */
        ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, size, dir);
        if (ret < 0) {
            goto fail;
        }
    }
    /* Rule "refcount and content before pointer". */
    ret = qcow2_refcounts_stable(s);
    if (ret == 0) {
        ret = block_flush(s->file);
    }
    if (ret == 0) {
        ret = hdr_write_ext(s, nb, size, (uint64_t)off);
    }
    if (ret < 0) {
        goto fail;
    }
    old_off = s->bitmaps.dir_offset;
    old_size = s->bitmaps.dir_size;
    entries_free(s->bitmaps.e, s->bitmaps.nb);
    s->bitmaps.e = e;
    s->bitmaps.nb = nb;
    s->bitmaps.dir_offset = (uint64_t)off;
    s->bitmaps.dir_size = size;
    /* Freed once unpublished: live metadata is never freed. */
    if (old_size) {
        qcow2_update_refcount(s, old_off, clusters_of(s, old_size), -1,
                              QCOW2_DISCARD_OTHER);
    }
    return 0;

fail:
    if (off > 0) {
        qcow2_update_refcount(s, (uint64_t)off, clusters_of(s, size), -1,
                              QCOW2_DISCARD_OTHER);
    }
    return ret;
}

static struct qcow2_bitmap *
entries_copy(const struct qcow2_bitmap *e, uint32_t nb, uint32_t extra)
{
    struct qcow2_bitmap *c = xcalloc(nb + extra + 1, sizeof(*c));

    for (uint32_t i = 0; i < nb; i++) {
        c[i] = e[i];
        c[i].name = xstrdup(e[i].name);
    }
    return c;
}

/* ---- Loading ----------------------------------------------------------- */

/* Set the bits of one cluster of serialised data: granules from first. */
static void
load_chunk(struct block_dirty_bitmap *bm, const uint8_t *buf, uint64_t len,
           uint64_t first, unsigned gran_bits, uint64_t size)
{
    uint64_t run = 0, nrun = 0;

    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] == 0 && nrun == 0) {
            continue;
        }
        for (unsigned b = 0; b < 8; b++) {
            uint64_t g = first + i * 8 + b;

            if (buf[i] & (1u << b)) {
                if (nrun == 0) {
                    run = g;
                }
                nrun++;
            } else if (nrun) {
                block_dirty_bitmap_set(bm, run << gran_bits,
                                       nrun << gran_bits);
                nrun = 0;
            }
        }
    }
    if (nrun && (run << gran_bits) < size) {
        block_dirty_bitmap_set(bm, run << gran_bits,
                               MIN(nrun << gran_bits,
                                   size - (run << gran_bits)));
    }
}

/* Read the table and data of entry e into bm (empty, same geometry). */
static int
load_data(struct qcow2_state *s, const struct qcow2_bitmap *e,
          struct block_dirty_bitmap *bm)
{
    uint64_t bytes = (uint64_t)e->table_size * 8;
    uint64_t total = data_bytes(s->h.size, e->granularity_bits);
    uint64_t per = s->cluster_size * 8;     /* granules per data cluster */
    CLEANUP_FREE uint8_t *t = malloc(bytes);
    CLEANUP_FREE uint8_t *buf = malloc(s->cluster_size);
    int ret;

    if (!t || !buf) {
        return -ENOMEM;
    }
    ret = block_pread(s->file, e->table_offset, bytes, t, 0);
    if (ret < 0) {
        return ret;
    }
    for (uint32_t i = 0; i < e->table_size; i++) {
        uint64_t entry = ld_be64(t + (uint64_t)i * 8);
        uint64_t off = entry & BMT_OFFSET;
        uint64_t len = MIN(s->cluster_size, total - (uint64_t)i *
                           s->cluster_size);

        if ((entry & BMT_RESERVED) || (off && (entry & BMT_ALL_ONES)) ||
            !is_aligned(off, s->cluster_size)) {
            return -EINVAL;
        }
        if (!off && (entry & BMT_ALL_ONES)) {
            memset(buf, 0xff, len);
        } else if (!off) {
            continue;
        } else {
            ret = block_pread(s->file, off, len, buf, 0);
            if (ret < 0) {
                return ret;
            }
        }
        load_chunk(bm, buf, len, (uint64_t)i * per, e->granularity_bits,
                   s->h.size);
    }
    return 0;
}

/*
 * The node's bitmap for entry e: an existing one (a reopen keeps the
 * node's bitmaps: they are current, take them as they are) or a new one
 * loaded from the image.
 */
static int
load_one(struct qcow2_state *s, const struct qcow2_bitmap *e,
         struct err **errp)
{
    struct block_node *node = s->node;
    struct block_dirty_bitmap *bm = block_dirty_bitmap_find(node, e->name);
    bool in_use = e->flags & QCOW2_BME_IN_USE;
    int ret;

    if (bm) {
        mutex_lock(&node->bitmap_lock);
        bm->persistent = true;
        mutex_unlock(&node->bitmap_lock);
        return 0;
    }
    bm = block_dirty_bitmap_create(node, e->name, 1ULL << e->granularity_bits,
                                   errp);
    if (!bm) {
        return -EINVAL;
    }
    if (!in_use) {
        ret = load_data(s, e, bm);
        if (ret < 0) {
            block_dirty_bitmap_release(bm);
            err_setf_errno(errp, -ret, "Could not read bitmap '%s' from "
                           "image", e->name);
            return ret;
        }
    }
    mutex_lock(&node->bitmap_lock);
    bm->persistent = true;
    bm->inconsistent = in_use;
    /* An inconsistent bitmap records nothing (QEMU shows it so). */
    bm->disabled = in_use || !(e->flags & QCOW2_BME_AUTO);
    mutex_unlock(&node->bitmap_lock);
    return 0;
}

/* Validate the extension's 24 bytes and read the directory. */
static int
load_dir(struct qcow2_state *s, const uint8_t *ext, uint32_t len,
         struct err **errp)
{
    uint32_t nb = ld_be32(ext);
    uint64_t size = ld_be64(ext + 8), offset = ld_be64(ext + 16);
    CLEANUP_FREE uint8_t *dir = NULL;
    int ret;

    if (len != BM_EXT_LEN) {
        err_setf(errp, "bitmaps_ext: Invalid extension length");
        return -EINVAL;
    }
    if (ld_be32(ext + 4) != 0) {
        err_setf(errp, "bitmaps_ext: Reserved field is not zero");
        return -EINVAL;
    }
    if (nb > BM_MAX_BITMAPS) {
        err_setf(errp, "bitmaps_ext: Image has %" PRIu32 " bitmaps, "
                 "exceeding the QEMU supported maximum of %d", nb,
                 BM_MAX_BITMAPS);
        return -EINVAL;
    }
    if (nb == 0) {
        err_setf(errp, "found bitmaps extension with zero bitmaps");
        return -EINVAL;
    }
    if (!is_aligned(offset, s->cluster_size) || offset == 0 ||
        offset >= QCOW2_MAX_HOST_OFFSET) {
        err_setf(errp, "bitmaps_ext: invalid bitmap directory offset");
        return -EINVAL;
    }
    if (size > BM_MAX_DIR_SIZE || size == 0) {
        err_setf(errp, "bitmaps_ext: bitmap directory size (%" PRIu64
                 ") exceeds the maximum supported size (%llu)", size,
                 BM_MAX_DIR_SIZE);
        return -EINVAL;
    }
    dir = xmalloc(size);
    ret = block_pread(s->file, offset, size, dir, 0);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Failed to read bitmap directory");
        return ret;
    }
    ret = dir_decode(s, dir, size, nb, &s->bitmaps.e, errp);
    if (ret < 0) {
        return ret;
    }
    s->bitmaps.nb = nb;
    s->bitmaps.dir_offset = offset;
    s->bitmaps.dir_size = size;
    return 0;
}

/*
 * Open, before the autoclear bits are settled: read the directory when
 * the extension is there and the autoclear bit vouches for it.  Sets
 * *drop when an extension is there that must go (a program without
 * bitmap support wrote the image: QEMU drops it as well).  Caller holds
 * no lock (nothing runs on the node yet).
 */
static int
read_ext(struct qcow2_state *s, bool *drop, struct err **errp)
{
    struct hdr_area a;
    int ret;

    *drop = false;
    if (!s->h.has_bitmaps_ext) {
        return 0;
    }
    if (s->h.version < 3 ||
        !(s->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
        fprintf(stderr, "qcow2: warning: a program lacking bitmap support "
                "modified this file, so all bitmaps are now considered "
                "inconsistent and are ignored; some clusters may be leaked, "
                "run 'qemu-img check -r' on the image file to fix\n");
        *drop = true;
        return 0;
    }
    ret = hdr_read(s, &a);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read the qcow2 header");
        return ret;
    }
    ret = a.bm_pos ? load_dir(s, a.buf + a.bm_pos + 8, a.bm_len, errp) : 0;
    free(a.buf);
    return ret;
}

/* Release the bitmaps this open created (not a reopen's old ones). */
static void
unload(struct qcow2_state *s, uint32_t upto, bool *existed)
{
    for (uint32_t i = 0; i < upto; i++) {
        struct block_dirty_bitmap *bm;

        if (existed[i]) {
            continue;
        }
        bm = block_dirty_bitmap_find(s->node, s->bitmaps.e[i].name);
        if (bm) {
            block_dirty_bitmap_release(bm);
        }
    }
}

/* Read-write open: mark every entry in_use (see the design notes). */
static int
mark_in_use(struct qcow2_state *s)
{
    struct qcow2_bitmap *e;
    bool change = false;
    int ret;

    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        change |= !(s->bitmaps.e[i].flags & QCOW2_BME_IN_USE);
    }
    if (!change) {
        return 0;
    }
    e = entries_copy(s->bitmaps.e, s->bitmaps.nb, 0);
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        e[i].flags |= QCOW2_BME_IN_USE;
    }
    ret = dir_publish(s, e, s->bitmaps.nb);
    if (ret < 0) {
        entries_free(e, s->bitmaps.nb);
    }
    return ret;
}

int
qcow2_bitmaps_open(struct qcow2_state *s, struct err **errp)
{
    struct block_node *node = s->node;
    CLEANUP_FREE bool *existed = NULL;
    bool drop;
    uint64_t clear;
    int ret;

    ret = read_ext(s, &drop, errp);
    if (ret < 0) {
        goto fail;
    }
    existed = xcalloc(s->bitmaps.nb + 1, sizeof(*existed));
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        existed[i] = block_dirty_bitmap_find(node, s->bitmaps.e[i].name);
        ret = load_one(s, &s->bitmaps.e[i], errp);
        if (ret < 0) {
            unload(s, i, existed);
            goto fail;
        }
    }
    if (node->read_only || s->h.version < 3) {
        return 0;
    }
    /*
     * Settle the autoclear bits before changing anything: unknown ones go
     * (as the spec asks of a writer that does not know them), the bitmaps
     * bit stays only with a valid extension.
     */
    clear = s->h.autoclear_features &
            ~(s->bitmaps.nb ? QCOW2_AUTOCLEAR_BITMAPS : 0);
    mutex_lock_may_block(&s->lock);
    if (drop) {
        ret = hdr_write_ext(s, 0, 0, 0);
    } else if (clear) {
        uint8_t be[8];

        st_be64(be, s->h.autoclear_features & ~clear);
        ret = qcow2_meta_pwrite(s, QCOW2_META_HEADER, QCOW2_HDR_OFF_AUTOCLEAR,
                                8, be);
        if (ret == 0) {
            ret = block_flush(s->file);
        }
        if (ret == 0) {
            s->h.autoclear_features &= ~clear;
        }
    }
    if (ret == 0) {
        ret = mark_in_use(s);
    }
    mutex_unlock(&s->lock);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Can't update bitmap directory");
        unload(s, s->bitmaps.nb, existed);
        goto fail;
    }
    return 0;

fail:
    qcow2_bitmaps_free(s);
    return ret;
}

/* ---- Storing ----------------------------------------------------------- */

/* Serialise the granules of data cluster i of bm into buf; false: zero. */
static bool
store_chunk(struct block_dirty_bitmap *bm, uint64_t i, uint8_t *buf,
            const struct qcow2_state *s, unsigned gran_bits, uint64_t size)
{
    uint64_t per = s->cluster_size * 8;
    uint64_t lo = (i * per) << gran_bits;
    uint64_t hi = MIN(((i + 1) * per) << gran_bits, size);
    uint64_t a, n;
    bool any = false;

    memset(buf, 0, s->cluster_size);
    while (lo < hi &&
           block_dirty_bitmap_next_dirty_area(bm, lo, hi - lo, hi - lo, &a,
                                              &n)) {
        uint64_t g0 = (a >> gran_bits) - i * per;
        uint64_t g1 = ((a + n - 1) >> gran_bits) - i * per;

        for (uint64_t g = g0; g <= g1; g++) {
            buf[g / 8] |= (uint8_t)(1u << (g % 8));
        }
        any = true;
        lo = a + n;
    }
    return any;
}

/*
 * Write bm's data and table to new clusters; fills e's table fields.
 * On failure what was allocated is given back.
 */
static int
store_one(struct qcow2_state *s, struct block_dirty_bitmap *bm,
          struct qcow2_bitmap *e)
{
    uint64_t size = block_dirty_bitmap_size(bm);
    uint64_t n = table_entries(s, size, e->granularity_bits);
    uint64_t tclusters = clusters_of(s, n * 8);
    CLEANUP_FREE uint8_t *t = NULL;
    CLEANUP_FREE uint8_t *buf = xmalloc(s->cluster_size);
    int64_t off;
    int ret = 0;

    if (n > BM_MAX_TABLE_SIZE || n * s->cluster_size > BM_MAX_PHYS_SIZE) {
        return -EFBIG;
    }
    t = xzalloc(tclusters * s->cluster_size);
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        if (!store_chunk(bm, i, buf, s, e->granularity_bits, size)) {
            continue;
        }
        off = qcow2_alloc_clusters(s, 1);
        if (off < 0) {
            ret = (int)off;
            break;
        }
        st_be64(t + i * 8, (uint64_t)off);
        block_debug_event(s->file, "bitmap_data_write");
        ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, s->cluster_size, buf);
    }
    off = ret == 0 ? qcow2_alloc_clusters(s, tclusters) : 0;
    if (off < 0) {
        ret = (int)off;
    }
    if (ret == 0) {
        block_debug_event(s->file, "bitmap_table_write");
        ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, n * 8, t);
    }
    if (ret < 0) {
        for (uint64_t i = 0; i < n; i++) {
            if (ld_be64(t + i * 8)) {
                qcow2_update_refcount(s, ld_be64(t + i * 8), 1, -1,
                                      QCOW2_DISCARD_OTHER);
            }
        }
        if (off > 0) {
            qcow2_update_refcount(s, (uint64_t)off, tclusters, -1,
                                  QCOW2_DISCARD_OTHER);
        }
        return ret;
    }
    e->table_offset = (uint64_t)off;
    e->table_size = (uint32_t)n;
    return 0;
}

/* The node's persistent bitmaps to store: consistent ones. */
static size_t
collect_persistent(struct block_node *node, struct block_dirty_bitmap ***out)
{
    struct block_dirty_bitmap *bm;
    size_t n = 0;

    *out = NULL;
    mutex_lock(&node->bitmap_lock);
    TAILQ_FOREACH(bm, &node->bitmaps, link) {
        if (bm->persistent && bm->name && !bm->inconsistent) {
            *out = xrealloc(*out, (n + 1) * sizeof(**out));
            (*out)[n++] = bm;
        }
    }
    mutex_unlock(&node->bitmap_lock);
    return n;
}

/*
 * Store every persistent, consistent bitmap of the node and clear in_use
 * (see the design notes).  Entries of inconsistent bitmaps stay as they
 * are.  Caller holds s->lock; the node is writable.  Returns 0 or -errno;
 * on failure the image keeps its previous directory (the in_use flags say
 * the bitmaps were not stored).
 */
int
qcow2_bitmaps_store(struct qcow2_state *s)
{
    struct block_dirty_bitmap **bms;
    size_t nbm = collect_persistent(s->node, &bms);
    uint32_t nold = s->bitmaps.nb, nb = nold;
    struct qcow2_bitmap *e;
    CLEANUP_FREE struct qcow2_bitmap *drop = NULL;
    CLEANUP_FREE bool *stored = NULL;
    int ret = 0;

    if (nbm == 0 && nold == 0) {
        free(bms);
        return 0;
    }
    if (s->corrupt) {
        /* Nothing more is written to an image marked corrupt. */
        free(bms);
        return -EIO;
    }
    e = entries_copy(s->bitmaps.e, nold, (uint32_t)nbm);
    stored = xcalloc(nold + nbm + 1, sizeof(*stored));
    for (size_t i = 0; i < nbm && ret == 0; i++) {
        const char *name = bms[i]->name;
        uint32_t k;
        bool disabled;

        for (k = 0; k < nb && strcmp(e[k].name, name); k++) {
        }
        if (k == nb) {
            if (nb >= BM_MAX_BITMAPS) {
                ret = -EFBIG;
                break;
            }
            e[nb++].name = xstrdup(name);
        }
        mutex_lock(&s->node->bitmap_lock);
        disabled = bms[i]->disabled;
        mutex_unlock(&s->node->bitmap_lock);
        e[k].granularity_bits =
            (unsigned)log2_u64(block_dirty_bitmap_granularity(bms[i]));
        e[k].flags = disabled ? 0 : QCOW2_BME_AUTO;
        ret = store_one(s, bms[i], &e[k]);
        stored[k] = ret == 0;
    }
    free(bms);
    /* The tables the new directory replaces (copied before it frees the
     * old entries). */
    drop = xcalloc(nold + 1, sizeof(*drop));
    for (uint32_t k = 0; k < nold; k++) {
        if (stored[k]) {
            drop[k] = s->bitmaps.e[k];
        }
    }
    if (ret == 0) {
        ret = dir_publish(s, e, nb);
    }
    if (ret < 0) {
        /* Give back the new tables; the old directory stays in force. */
        for (uint32_t k = 0; k < nb; k++) {
            if (stored[k]) {
                free_table(s, e[k].table_offset, e[k].table_size);
            }
        }
        entries_free(e, nb);
        return ret;
    }
    for (uint32_t k = 0; k < nold; k++) {
        if (stored[k]) {
            free_table(s, drop[k].table_offset, drop[k].table_size);
        }
    }
    return 0;
}

/* ---- Driver callbacks ---------------------------------------------------- */

/*
 * May a new persistent bitmap be stored in this image?  QEMU's checks:
 * version 3, granularity 512 B..2 GiB, data size, name length, number of
 * bitmaps and directory size (counting the node's persistent bitmaps).
 */
bool
qcow2_bitmap_can_store(struct block_node *node, const char *name,
                       uint64_t granularity, struct err **errp)
{
    struct qcow2_state *s = node->opaque;
    struct block_dirty_bitmap **bms;
    size_t nbm = collect_persistent(node, &bms);
    uint64_t dir = entry_size(strlen(name)), bytes;
    unsigned bits = (unsigned)log2_u64(granularity);
    const char *why = NULL;

    for (size_t i = 0; i < nbm; i++) {
        dir += entry_size(strlen(bms[i]->name));
    }
    free(bms);
    bytes = data_bytes(s->h.size, bits);
    if (s->h.version < 3) {
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    } else if (node->read_only) {
        why = "The image is read-only";
    } else if (bits > BM_MAX_GRAN_BITS) {
        why = "Granularity exceeds maximum (2147483648 bytes)";
    } else if (bits < BM_MIN_GRAN_BITS) {
        why = "Granularity is under minimum (512 bytes)";
    } else if (bytes > BM_MAX_PHYS_SIZE ||
               bytes > (uint64_t)BM_MAX_TABLE_SIZE * s->cluster_size) {
        why = "Too much space will be occupied by the bitmap. Use larger "
              "granularity";
    } else if (strlen(name) > BM_MAX_NAME) {
        why = "Name length exceeds maximum (1023 characters)";
    } else if (nbm + 1 > BM_MAX_BITMAPS) {
        why = "Maximum number of persistent bitmaps is already reached";
    } else if (dir > BM_MAX_DIR_SIZE) {
        why = "Not enough space in the bitmap directory";
    }
    if (why) {
        err_setf(errp, "Can't make bitmap '%s' persistent in '%s': %s", name,
                 node->node_name, why);
        return false;
    }
    return true;
}

/*
 * Remove bitmap name from the image now (block-dirty-bitmap-remove): a
 * directory without it, then its clusters freed.  Not stored: nothing to
 * do.  Main thread, no request in flight.
 */
int
qcow2_bitmap_remove(struct block_node *node, const char *name,
                    struct err **errp)
{
    struct qcow2_state *s = node->opaque;
    struct qcow2_bitmap *e, gone = { 0 };
    uint32_t nb = 0;
    int ret;

    mutex_lock_may_block(&s->lock);
    if (!entry_find(&s->bitmaps, name)) {
        mutex_unlock(&s->lock);
        return 0;
    }
    if (node->read_only || s->corrupt) {
        mutex_unlock(&s->lock);
        err_setf(errp, "Cannot remove bitmap '%s' from '%s': the image is "
                 "%s", name, node->node_name,
                 s->corrupt ? "corrupt" : "read-only");
        return -EPERM;
    }
    e = entries_copy(s->bitmaps.e, s->bitmaps.nb, 0);
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        if (strcmp(e[i].name, name)) {
            e[nb++] = e[i];
        } else {
            gone = e[i];
        }
    }
    ret = dir_publish(s, e, nb);
    if (ret < 0) {
        entries_free(e, nb);
        free(gone.name);
        mutex_unlock(&s->lock);
        err_setf_errno(errp, -ret, "Failed to update bitmap extension");
        return ret;
    }
    free_table(s, gone.table_offset, gone.table_size);
    free(gone.name);
    /* The lower refcounts reach the disk with the next flush or close:
     * until then the clusters merely leak. */
    mutex_unlock(&s->lock);
    return 0;
}

/* format-specific "bitmaps", as the directory says (QEMU's order). */
void
qcow2_bitmaps_query(struct qcow2_state *s, json_t *data)
{
    json_t *list;

    mutex_lock_may_block(&s->lock);
    if (!s->bitmaps.nb) {
        mutex_unlock(&s->lock);
        return;
    }
    list = json_array();
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        const struct qcow2_bitmap *e = &s->bitmaps.e[i];
        json_t *flags = json_array();

        if (e->flags & QCOW2_BME_IN_USE) {
            json_array_append_new(flags, json_string("in-use"));
        }
        if (e->flags & QCOW2_BME_AUTO) {
            json_array_append_new(flags, json_string("auto"));
        }
        json_array_append_new(list, json_pack("{s:o, s:s, s:I}", "flags",
                                              flags, "name", e->name,
                                              "granularity",
                                              (json_int_t)(1ULL <<
                                                  e->granularity_bits)));
    }
    mutex_unlock(&s->lock);
    json_object_set_new(data, "bitmaps", list);
}

size_t
qcow2_bitmap_metadata_ranges(struct qcow2_state *s,
                             struct qcow2_host_range **out)
{
    struct qcow2_host_range *r;
    size_t n = 0;

    *out = NULL;
    if (!s->bitmaps.nb) {
        return 0;
    }
    r = xcalloc(s->bitmaps.nb + 1, sizeof(*r));
    r[n++] = (struct qcow2_host_range){ s->bitmaps.dir_offset,
                                        align_up(s->bitmaps.dir_size,
                                                 s->cluster_size) };
    for (uint32_t i = 0; i < s->bitmaps.nb; i++) {
        r[n++] = (struct qcow2_host_range){
            s->bitmaps.e[i].table_offset,
            align_up((uint64_t)s->bitmaps.e[i].table_size * 8,
                     s->cluster_size) };
    }
    *out = r;
    return n;
}
