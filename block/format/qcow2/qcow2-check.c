/* SPDX-License-Identifier: MIT */
/*
 * qcow2 consistency check (see qcow2-check.h).  The walk follows the order
 * QEMU uses, so problem lines come out in the same order: header cluster,
 * active L1/L2 tables and data, snapshot L1s, snapshot table, refcount
 * table, encryption header, bitmaps, and last the refcount blocks (whose
 * own refcount must then be exactly 1).  The computed counts are compared
 * with the stored ones for every cluster inside the file; then the COPIED
 * flags of the active tables are compared with the (possibly repaired)
 * stored refcounts.  All metadata is read here with our own parsing of the
 * on-disk format, deliberately not with the driver's code; only the header
 * goes through qcow2_header_decode(), the format layer's decoder, so that
 * check refuses every header open refuses.
 *
 * Repair and crash safety (qcow2 spec, refcounts; docs/qcow2.md): raising
 * a refcount to its reference count and lowering a leaked one are single
 * in-place writes that never leave a refcount below its references.  A
 * rebuild writes the new refcount blocks and table past the last used
 * cluster, flushes, and only then switches the header to them in one
 * 12-byte write; a crash before the switch leaves the old structure in
 * force, and afterwards the old one is merely unreferenced space.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "block/format/qcow2/qcow2-check.h"
#include "block/format/qcow2/qcow2.h"
#include "util.h"

/* On-disk facts, from the qcow2 specification (docs/qcow2.md). */
#define CHK_MAX_CLUSTER_BITS 21
#define CHK_INCOMPAT_DIRTY 0x1ULL
#define CHK_INCOMPAT_CORRUPT 0x2ULL
#define CHK_INCOMPAT_DATA_FILE 0x4ULL
#define CHK_INCOMPAT_EXTL2 0x10ULL
#define CHK_AUTOCLEAR_BITMAPS 0x1ULL
#define CHK_OFLAG_COPIED (1ULL << 63)
#define CHK_OFLAG_COMPRESSED (1ULL << 62)
#define CHK_OFLAG_ZERO 1ULL
#define CHK_OFFSET_MASK 0x00fffffffffffe00ULL
#define CHK_L1_RESERVED 0x7f000000000001ffULL
#define CHK_L2_RESERVED 0x3f000000000001feULL
#define CHK_REFT_RESERVED 0x1ffULL
#define CHK_BMT_RESERVED 0xff000000000001feULL
#define CHK_EXT_BITMAPS 0x23852875U
#define CHK_EXT_CRYPTO 0x0537be77U
#define CHK_SNAPSHOT_HDR 40
#define CHK_MAX_SNAPSHOTS 65536
#define CHK_BITMAP_HDR 24
#define CHK_MAX_BITMAP_TABLE 0x8000000   /* QEMU's limit, in entries */
#define CHK_MAX_BITMAP_BYTES 0x20000000ULL  /* and in bytes of data */
#define CHK_BME_FLAGS 0x3U                  /* in_use, auto */

struct chk {
    struct block_node *file;
    FILE *log;
    unsigned fix;
    struct block_check_result *res;

    /* From the header. */
    unsigned version;
    unsigned cluster_bits;
    uint64_t cs;
    uint64_t size;
    uint64_t l1_offset;
    uint32_t l1_size;
    uint64_t rt_offset;
    uint32_t rt_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat;
    uint64_t autoclear;
    unsigned refcount_order;
    uint64_t refcount_max;      /* largest refcount the image can store */
    uint32_t header_length;
    uint64_t backing_offset;
    bool extended_l2;
    bool data_file;

    /* From header extensions. */
    bool has_bitmaps;
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_size;
    uint64_t bitmap_dir_offset;
    bool has_crypto;
    uint64_t crypto_offset;
    uint64_t crypto_length;

    uint64_t file_len;
    uint64_t nb_clusters;       /* clusters of the file */
    uint32_t *refs;             /* computed, nb_clusters entries */
    uint64_t *reftable;         /* host byte order */
    uint64_t rt_entries;

    /* One cached refcount block. */
    uint8_t *rb_buf;
    uint64_t rb_offset;         /* 0: nothing cached */

    bool fix_copied;            /* repair COPIED flags */
    bool rebuild;               /* the refcount structure is broken */
    bool rebuild_if_all;        /* broken in a way only -r all repairs */
    int64_t struct_errors;      /* corruptions of the refcount structure */
    int64_t read_errors;        /* refcounts that could not be read */
    int64_t mm_leaks;           /* mismatches left to the repair pass */
    int64_t mm_corrupt;

    /* Clusters whose stored refcount differs, for the repair pass. */
    uint64_t *mismatch;
    size_t nb_mismatch;
    size_t cap_mismatch;
};

/* ---- Helpers ----------------------------------------------------------- */

static inline uint16_t
rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t
rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
           p[3];
}

static inline uint64_t
rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) << 32 | rd32(p + 4);
}

static inline void
wr64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = v & 0xff;
        v >>= 8;
    }
}

static void PRINTF_FMT(2, 3)
chk_log(struct chk *c, const char *fmt, ...)
{
    va_list ap;

    if (!c->log) {
        return;
    }
    va_start(ap, fmt);
    vfprintf(c->log, fmt, ap);
    va_end(ap);
    fputc('\n', c->log);
}

/* A corruption: log it and count it. */
#define CORRUPT(c, ...) \
    do { chk_log(c, __VA_ARGS__); (c)->res->corruptions++; } while (0)

/* Reads must stay inside the file: the block layer would fail them. */
static int
chk_read(struct chk *c, uint64_t offset, uint64_t bytes, void *buf)
{
    if (range_exceeds(offset, bytes, c->file_len)) {
        return -EINVAL;
    }
    return block_pread(c->file, offset, bytes, buf, 0);
}

static int
chk_write(struct chk *c, uint64_t offset, uint64_t bytes, const void *buf)
{
    return block_pwrite(c->file, offset, bytes, buf, 0);
}

/*
 * Read a table of n big-endian u64 entries into host order.  What lies
 * past the end of the file reads as zeroes, as for the driver and QEMU,
 * so a table cut short by a truncated file is still walked.
 */
static uint64_t *
chk_read_table(struct chk *c, uint64_t offset, uint64_t n, int *ret)
{
    uint64_t *t;

    if (n > SIZE_MAX / 8 || !(t = malloc(MAX(n, 1) * 8))) {
        *ret = -ENOMEM;
        return NULL;
    }
    *ret = block_pread(c->file, offset, n * 8, t, 0);
    if (*ret < 0) {
        free(t);
        return NULL;
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = rd64((uint8_t *)&t[i]);
    }
    return t;
}

/* Entry size of L2 tables: 16 bytes with extended L2 entries. */
static inline uint64_t
l2_entry_size(const struct chk *c)
{
    return c->extended_l2 ? 16 : 8;
}

/* ---- Counting references ------------------------------------------------ */

/*
 * Count one reference to every cluster touched by [offset, offset+bytes).
 * A range past the end of the file is a corruption (and not counted).
 */
static void
inc_refs(struct chk *c, uint64_t offset, uint64_t bytes)
{
    uint64_t first, last;

    if (bytes == 0) {
        return;
    }
    if (__builtin_add_overflow(offset, bytes - 1, &last)) {
        /* Offsets come from the image: treat a wrap as past the end. */
        last = UINT64_MAX;
    }
    first = offset >> c->cluster_bits;
    last >>= c->cluster_bits;
    for (uint64_t k = first; k <= last; k++) {
        if (k >= c->nb_clusters) {
            CORRUPT(c, "ERROR: counting reference for region exceeding the "
                    "end of the file by one cluster or more: offset 0x%"
                    PRIx64 " size 0x%" PRIx64, offset, bytes);
            return;
        }
        if (c->refs[k] >= c->refcount_max) {
            /* The image could not store more: an error, as in QEMU. */
            CORRUPT(c, "ERROR: overflow cluster offset=0x%" PRIx64 "\n"
                    "Use qemu-img amend to increase the refcount entry width "
                    "or convert the image to a clean copy if it cannot be "
                    "opened for writing", k << c->cluster_bits);
            continue;
        }
        c->refs[k]++;
    }
}

/* Fragmentation statistics for the active tables (QEMU's definition). */
struct frag {
    bool active;
    uint64_t next;
};

static void
count_alloc(struct chk *c, struct frag *f, uint64_t offset)
{
    if (!f->active) {
        return;
    }
    c->res->allocated_clusters++;
    if (f->next && offset != f->next) {
        c->res->fragmented_clusters++;
    }
    f->next = offset + c->cs;
}

static void
check_compressed(struct chk *c, struct frag *f, uint64_t e, uint64_t bitmap,
                 uint64_t idx)
{
    unsigned x = 62 - (c->cluster_bits - 8);
    uint64_t coffset = e & ((1ULL << x) - 1);
    uint64_t sectors = ((e >> x) & ((1ULL << (c->cluster_bits - 8)) - 1)) + 1;

    if (e & CHK_OFLAG_COPIED) {
        CORRUPT(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be "
                "set for compressed clusters", coffset);
    }
    if (c->data_file) {
        CORRUPT(c, "ERROR compressed cluster with an external data file, "
                "entry=0x%" PRIx64, e);
        return;
    }
    if (bitmap) {
        CORRUPT(c, "ERROR compressed cluster %" PRIu64 " with non-zero "
                "subcluster allocation bitmap, entry=0x%" PRIx64, idx, e);
        return;
    }
    if (coffset >> 56) {
        CORRUPT(c, "ERROR compressed cluster offset 0x%" PRIx64 " is beyond "
                "the 56-bit limit", coffset);
        return;
    }
    inc_refs(c, coffset & ~511ULL, sectors * 512);
    if (f->active) {
        /* Compressed data is fragmented by nature, as QEMU counts it. */
        c->res->allocated_clusters++;
        c->res->compressed_clusters++;
        c->res->fragmented_clusters++;
    }
}

/*
 * The validity rules of the subcluster bitmap (extended L2 only).  Bit 0
 * of the first word is reserved there; QEMU ignores it, we report it.
 */
static void
check_subclusters(struct chk *c, uint64_t e, uint64_t bitmap, uint64_t idx)
{
    uint32_t alloc = (uint32_t)bitmap, zero = (uint32_t)(bitmap >> 32);
    uint64_t offset = e & CHK_OFFSET_MASK;

    if (offset && (alloc & zero)) {
        CORRUPT(c, "ERROR offset=%" PRIx64 ": Allocated cluster has "
                "corrupted subcluster allocation bitmap", offset);
    }
    if (!offset && alloc) {
        CORRUPT(c, "ERROR: Unallocated cluster has non-zero subcluster "
                "allocation map");
    }
    if (e & CHK_OFLAG_ZERO) {
        CORRUPT(c, "ERROR invalid cluster entry %" PRIu64 ": zero flag set "
                "in an extended L2 entry 0x%" PRIx64, idx, e);
    }
}

static void
check_standard(struct chk *c, struct frag *f, uint64_t e, uint64_t bitmap,
               uint64_t idx)
{
    uint64_t offset = e & CHK_OFFSET_MASK;

    if (c->extended_l2) {
        check_subclusters(c, e, bitmap, idx);
    }
    if (e & CHK_L2_RESERVED) {
        CORRUPT(c, "ERROR found l2 entry with reserved bits set: %" PRIx64,
                e);
    }
    if (!offset) {
        return;
    }
    count_alloc(c, f, offset);
    if (offset & (c->cs - 1)) {
        /* Still counted, over the clusters the entry would touch. */
        CORRUPT(c, "ERROR offset=%" PRIx64 ": Data cluster is not properly "
                "aligned; L2 entry corrupted.", offset);
    }
    if (!c->data_file) {
        inc_refs(c, offset, c->cs);
    }
}

static int
check_l2(struct chk *c, struct frag *f, uint64_t l2_offset)
{
    uint64_t esz = l2_entry_size(c), n = c->cs / esz;
    uint64_t *t;
    int ret;

    t = chk_read_table(c, l2_offset, c->cs / 8, &ret);
    if (!t) {
        chk_log(c, "ERROR: I/O error in check_refcounts_l2");
        c->res->check_errors++;
        return ret;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = t[i * esz / 8];
        uint64_t bitmap = c->extended_l2 ? t[i * 2 + 1] : 0;

        if (e & CHK_OFLAG_COMPRESSED) {
            check_compressed(c, f, e, bitmap, i);
        } else {
            check_standard(c, f, e, bitmap, i);
        }
    }
    free(t);
    return 0;
}

/*
 * Whether an L1 entry's L2 table can be walked: reserved bits and alignment
 * are corruptions; a table past the end was already reported (one that
 * starts inside the file is walked, its missing part read as zeroes).
 */
static bool
l1_entry_usable(struct chk *c, uint64_t e)
{
    uint64_t l2 = e & CHK_OFFSET_MASK;

    if (e & CHK_L1_RESERVED) {
        CORRUPT(c, "ERROR found L1 entry with reserved bits set: %" PRIx64,
                e);
    }
    if (!l2) {
        return false;
    }
    inc_refs(c, l2, c->cs);
    if (l2 & (c->cs - 1)) {
        /* Reported, and still walked where it points, as QEMU does. */
        CORRUPT(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                "aligned; L1 entry corrupted", l2);
    }
    return l2 < c->file_len;
}

static int
check_l1(struct chk *c, uint64_t l1_offset, uint32_t l1_size, bool active)
{
    struct frag f = { .active = active };
    uint64_t *t;
    int ret;

    inc_refs(c, l1_offset, (uint64_t)l1_size * 8);
    if (l1_size == 0) {
        return 0;
    }
    t = chk_read_table(c, l1_offset, l1_size, &ret);
    if (!t) {
        chk_log(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        return ret;
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        if (l1_entry_usable(c, t[i])) {
            /* QEMU restarts the contiguity tracking at every L2 table. */
            f.next = 0;
            ret = check_l2(c, &f, t[i] & CHK_OFFSET_MASK);
            if (ret < 0) {
                break;
            }
        }
    }
    free(t);
    return ret < 0 ? ret : 0;
}

/* ---- Snapshots, bitmaps, encryption ------------------------------------- */

/* One snapshot table entry at *pos; advances *pos past it. */
static int
check_one_snapshot(struct chk *c, uint32_t i, uint64_t *pos)
{
    uint8_t h[CHK_SNAPSHOT_HDR];
    uint64_t l1_offset, len;
    uint32_t l1_size;
    int ret;

    ret = chk_read(c, *pos, sizeof(h), h);
    if (ret < 0) {
        CORRUPT(c, "ERROR snapshot table entry %" PRIu32 " at 0x%" PRIx64
                " cannot be read", i, *pos);
        return ret;
    }
    l1_offset = rd64(h);
    l1_size = rd32(h + 8);
    len = CHK_SNAPSHOT_HDR + (uint64_t)rd32(h + 36) + rd16(h + 12) +
          rd16(h + 14);
    *pos += align_up(len, 8);
    if (l1_offset & (c->cs - 1)) {
        CORRUPT(c, "ERROR snapshot %" PRIu32 " l1_offset=0x%" PRIx64 ": L1 "
                "table is not cluster aligned; snapshot table entry "
                "corrupted", i, l1_offset);
        return 0;
    }
    if ((uint64_t)l1_size * 8 > 32 * MiB) {
        CORRUPT(c, "ERROR snapshot %" PRIu32 " l1_size=%" PRIu32 ": L1 table "
                "is too big; snapshot table entry corrupted", i, l1_size);
        return 0;
    }
    return check_l1(c, l1_offset, l1_size, false);
}

static void
check_snapshots(struct chk *c)
{
    uint64_t pos = c->snapshots_offset;

    if (c->nb_snapshots == 0) {
        return;
    }
    if (c->nb_snapshots > CHK_MAX_SNAPSHOTS || (pos & (c->cs - 1))) {
        CORRUPT(c, "ERROR snapshot table at 0x%" PRIx64 " with %" PRIu32
                " entries is invalid", pos, c->nb_snapshots);
        return;
    }
    for (uint32_t i = 0; i < c->nb_snapshots; i++) {
        if (check_one_snapshot(c, i, &pos) < 0) {
            return;
        }
    }
    inc_refs(c, c->snapshots_offset, pos - c->snapshots_offset);
}

/* The clusters of one bitmap's table and data. */
static void
check_bitmap_table(struct chk *c, uint64_t offset, uint32_t size)
{
    uint64_t *t;
    int ret;

    inc_refs(c, offset, (uint64_t)size * 8);
    if ((offset & (c->cs - 1)) || offset == 0) {
        CORRUPT(c, "ERROR bitmap table offset 0x%" PRIx64 " is not cluster "
                "aligned", offset);
        return;
    }
    if (size > CHK_MAX_BITMAP_TABLE) {
        CORRUPT(c, "ERROR bitmap table at 0x%" PRIx64 " has %" PRIu32
                " entries, more than the format allows", offset, size);
        return;
    }
    t = chk_read_table(c, offset, size, &ret);
    if (!t) {
        c->res->check_errors++;
        chk_log(c, "ERROR: cannot read bitmap table at 0x%" PRIx64, offset);
        return;
    }
    for (uint32_t i = 0; i < size; i++) {
        uint64_t off = t[i] & CHK_OFFSET_MASK;

        if (t[i] & CHK_BMT_RESERVED || (off && (t[i] & 1))) {
            CORRUPT(c, "ERROR bitmap table entry 0x%" PRIx64 " is invalid",
                    t[i]);
        } else if (off) {
            inc_refs(c, off, c->cs);
        }
    }
    free(t);
}

/*
 * The constraints QEMU puts on a directory entry (it refuses to open an
 * image that breaks one): flags, type, granularity, name, extra data, and
 * for a bitmap not in use a table exactly as large as the disk needs.
 */
static void
check_bitmap_entry(struct chk *c, const uint8_t *e, uint64_t avail,
                   const char *name)
{
    uint32_t tsize = rd32(e + 8), flags = rd32(e + 12);
    unsigned gran = e[17];
    uint64_t need = 0;

    if (gran >= 9 && gran <= 31) {
        need = div_round_up(div_round_up(div_round_up(c->size,
                                                      1ULL << gran), 8),
                            c->cs);
    }
    if (flags & ~CHK_BME_FLAGS) {
        CORRUPT(c, "ERROR bitmap '%s' has reserved flags 0x%" PRIx32 " set",
                name, flags & ~CHK_BME_FLAGS);
    }
    if (e[16] != 1) {
        CORRUPT(c, "ERROR bitmap '%s' has unknown type %u", name, e[16]);
    }
    if (gran < 9 || gran > 31) {
        CORRUPT(c, "ERROR bitmap '%s' has granularity 2^%u, outside "
                "2^9..2^31", name, gran);
    }
    if (rd16(e + 18) == 0 || rd16(e + 18) > 1023 || rd32(e + 20) ||
        24 + (uint64_t)rd16(e + 18) > avail) {
        CORRUPT(c, "ERROR bitmap '%s' has an invalid name size or extra "
                "data", name);
    }
    if (tsize == 0 || (uint64_t)tsize * c->cs > CHK_MAX_BITMAP_BYTES ||
        (!(flags & 1) && need && tsize != need)) {
        CORRUPT(c, "ERROR bitmap '%s' has a table of %" PRIu32 " entries, "
                "%" PRIu64 " expected for the disk size", name, tsize, need);
    }
}

/*
 * Bitmaps count only when the autoclear bit says the extension is valid:
 * otherwise QEMU ignores them and their clusters show up as leaks.
 */
static void
check_bitmaps(struct chk *c)
{
    CLEANUP_FREE uint8_t *dir = NULL;
    uint64_t pos = 0;
    uint32_t i;

    if (!c->has_bitmaps || !(c->autoclear & CHK_AUTOCLEAR_BITMAPS)) {
        return;
    }
    inc_refs(c, c->bitmap_dir_offset, c->bitmap_dir_size);
    if (c->bitmap_dir_size > 1024 * 65535 ||
        (c->bitmap_dir_offset & (c->cs - 1)) || c->nb_bitmaps == 0 ||
        c->nb_bitmaps > 65535 ||
        !(dir = malloc(MAX(c->bitmap_dir_size, 1))) ||
        chk_read(c, c->bitmap_dir_offset, c->bitmap_dir_size, dir) < 0) {
        CORRUPT(c, "ERROR bitmap directory at 0x%" PRIx64 " size %" PRIu64
                " cannot be read", c->bitmap_dir_offset, c->bitmap_dir_size);
        return;
    }
    for (i = 0; i < c->nb_bitmaps; i++) {
        char name[1024];
        uint64_t len;

        if (pos + CHK_BITMAP_HDR > c->bitmap_dir_size) {
            CORRUPT(c, "ERROR bitmap directory is truncated");
            break;
        }
        len = CHK_BITMAP_HDR + (uint64_t)rd32(dir + pos + 20) +
              rd16(dir + pos + 18);
        snprintf(name, sizeof(name), "%.*s",
                 (int)MIN(rd16(dir + pos + 18),
                          c->bitmap_dir_size - pos - CHK_BITMAP_HDR),
                 (const char *)dir + pos + CHK_BITMAP_HDR +
                 MIN(rd32(dir + pos + 20),
                     c->bitmap_dir_size - pos - CHK_BITMAP_HDR));
        check_bitmap_entry(c, dir + pos, c->bitmap_dir_size - pos, name);
        check_bitmap_table(c, rd64(dir + pos), rd32(dir + pos + 8));
        pos += align_up(len, 8);
    }
    if (i == c->nb_bitmaps && pos != c->bitmap_dir_size) {
        CORRUPT(c, "ERROR bitmap directory size %" PRIu64 " does not match "
                "its %" PRIu32 " entries", c->bitmap_dir_size,
                c->nb_bitmaps);
    }
}

/*
 * Whether reftable entry i names a usable refcount block (then counted as a
 * reference) and its cluster.  Also used to undo that count in a rebuild.
 */
static bool
refblock_usable(const struct chk *c, uint64_t i, uint64_t *k)
{
    uint64_t off = c->reftable[i];

    *k = off >> c->cluster_bits;
    return off && !(off & CHK_REFT_RESERVED) && !(off & (c->cs - 1)) &&
           *k < c->nb_clusters;
}

static void
refblock_error(struct chk *c, uint64_t i)
{
    uint64_t off = c->reftable[i];

    if (off & CHK_REFT_RESERVED) {
        CORRUPT(c, "ERROR refcount table entry %" PRIu64 " has reserved "
                "bits set", i);
    } else if (off & (c->cs - 1)) {
        CORRUPT(c, "ERROR refcount block %" PRIu64 " is not cluster "
                "aligned; refcount table entry corrupted", i);
    } else {
        /* Only -r all acts on this one (QEMU grows the file). */
        CORRUPT(c, "ERROR refcount block %" PRIu64 " is outside image", i);
        c->rebuild_if_all = true;
        c->struct_errors++;
        return;
    }
    c->rebuild = true;
    c->struct_errors++;
}

/*
 * Refcount blocks are counted last: each must end up referenced exactly
 * once, by the refcount table.
 */
static void
check_refblocks(struct chk *c)
{
    for (uint64_t i = 0; i < c->rt_entries; i++) {
        uint64_t k;

        if (!refblock_usable(c, i, &k)) {
            if (c->reftable[i]) {
                refblock_error(c, i);
            }
            continue;
        }
        inc_refs(c, k << c->cluster_bits, c->cs);
        if (c->refs[k] != 1) {
            CORRUPT(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu32,
                    i, c->refs[k]);
            c->rebuild = true;
            c->struct_errors++;
        }
    }
}

static int
calculate_refcounts(struct chk *c)
{
    int ret;

    inc_refs(c, 0, c->cs);
    ret = check_l1(c, c->l1_offset, c->l1_size, true);
    if (ret < 0) {
        return ret;
    }
    check_snapshots(c);
    inc_refs(c, c->rt_offset, (uint64_t)c->rt_clusters * c->cs);
    if (c->has_crypto) {
        inc_refs(c, c->crypto_offset, c->crypto_length);
    }
    check_bitmaps(c);
    check_refblocks(c);
    return 0;
}

/* ---- Stored refcounts ------------------------------------------------- */

/* Where cluster k's refcount lives: refblock offset (0: none), index. */
static int
refcount_slot(struct chk *c, uint64_t k, uint64_t *rb, uint64_t *idx)
{
    unsigned shift = c->cluster_bits + 3 - c->refcount_order;
    uint64_t t = k >> shift;

    *idx = k & ((1ULL << shift) - 1);
    *rb = 0;
    if (t >= c->rt_entries) {
        return 0;
    }
    *rb = c->reftable[t] & ~CHK_REFT_RESERVED;
    if (*rb == 0) {
        return 0;
    }
    if (*rb & (c->cs - 1)) {
        return -EINVAL;
    }
    if (c->rb_offset != *rb) {
        /* A block (partly) past the end of the file reads as zeroes, as
         * for QEMU: its clusters show up with refcount 0. */
        int ret = block_pread(c->file, *rb, c->cs, c->rb_buf, 0);

        c->rb_offset = ret < 0 ? 0 : *rb;
        return ret;
    }
    return 0;
}

static int
get_refcount(struct chk *c, uint64_t k, uint64_t *val)
{
    unsigned bits = 1U << c->refcount_order;
    uint64_t rb, i;
    int ret = refcount_slot(c, k, &rb, &i);

    *val = 0;
    if (ret < 0 || rb == 0) {
        return ret;
    }
    if (bits < 8) {
        uint8_t byte = c->rb_buf[i * bits / 8];

        *val = (byte >> (i * bits % 8)) & ((1U << bits) - 1);
        return 0;
    }
    for (unsigned b = 0; b < bits / 8; b++) {
        *val = *val << 8 | c->rb_buf[i * bits / 8 + b];
    }
    return 0;
}

/* Store refcount entry i of a refcount block (sub-byte: LSB first). */
static void
encode_refcount(uint8_t *blk, uint64_t i, unsigned order, uint64_t val)
{
    unsigned bits = 1U << order;
    uint64_t pos = i * bits / 8;

    if (bits < 8) {
        unsigned sh = i * bits % 8, mask = ((1U << bits) - 1) << sh;

        blk[pos] = (blk[pos] & ~mask) | (unsigned)(val << sh);
        return;
    }
    for (unsigned b = bits / 8; b-- > 0; val >>= 8) {
        blk[pos + b] = val & 0xff;
    }
}

/* Write one refcount; the containing bytes go to disk at once. */
static int
set_refcount(struct chk *c, uint64_t k, uint64_t val)
{
    unsigned bits = 1U << c->refcount_order;
    uint64_t rb, i, pos;
    unsigned len = bits < 8 ? 1 : bits / 8;
    int ret = refcount_slot(c, k, &rb, &i);

    if (ret < 0) {
        return ret;
    }
    if (rb == 0) {
        return -ENOSPC;
    }
    if (bits < 64 && val >> bits) {
        return -ERANGE;
    }
    pos = i * bits / 8;
    encode_refcount(c->rb_buf, i, c->refcount_order, val);
    return chk_write(c, rb + pos, len, c->rb_buf + pos);
}

/* ---- Comparing and repairing -------------------------------------------- */

static bool
fixable(const struct chk *c, uint64_t stored, uint64_t computed)
{
    unsigned need = stored > computed ? BLOCK_CHECK_FIX_LEAKS
                                      : BLOCK_CHECK_FIX_ERRORS;

    return (c->fix & need) != 0;
}

static void
note_mismatch(struct chk *c, uint64_t k)
{
    if (c->nb_mismatch == c->cap_mismatch) {
        c->cap_mismatch = MAX(64, c->cap_mismatch * 2);
        c->mismatch = xrealloc(c->mismatch,
                               c->cap_mismatch * sizeof(*c->mismatch));
    }
    c->mismatch[c->nb_mismatch++] = k;
}

/* Report every difference; with repair, remember the fixable ones. */
static void
compare_refcounts(struct chk *c)
{
    uint64_t highest = 0;
    bool any = false;

    for (uint64_t k = 0; k < c->nb_clusters; k++) {
        uint64_t stored;
        int ret = get_refcount(c, k, &stored);

        if (ret < 0) {
            chk_log(c, "Can't get refcount for cluster %" PRIu64 ": %s", k,
                    strerror(-ret));
            c->res->check_errors++;
            c->read_errors++;
            continue;
        }
        if (stored || c->refs[k]) {
            highest = k;
            any = true;
        }
        if (stored == c->refs[k]) {
            continue;
        }
        chk_log(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%"
                PRIu32, stored < c->refs[k] ? "ERROR" : "Leaked", k, stored,
                c->refs[k]);
        if (stored == 0) {
            /* Lost allocations: QEMU rebuilds rather than patch. */
            c->rebuild = true;
        }
        if (fixable(c, stored, c->refs[k])) {
            note_mismatch(c, k);
            *(stored < c->refs[k] ? &c->mm_corrupt : &c->mm_leaks) += 1;
        } else if (stored < c->refs[k]) {
            c->res->corruptions++;
        } else {
            c->res->leaks++;
        }
    }
    c->res->image_end_offset = any ? (highest + 1) << c->cluster_bits : 0;
}

static void
repair_refcounts(struct chk *c)
{
    for (size_t m = 0; m < c->nb_mismatch; m++) {
        uint64_t k = c->mismatch[m], stored = 0;
        bool leak;
        int ret;

        get_refcount(c, k, &stored);
        leak = stored > c->refs[k];
        ret = set_refcount(c, k, c->refs[k]);
        if ((ret == -ENOSPC || ret == -EINVAL) &&
            (c->fix & BLOCK_CHECK_FIX_ERRORS)) {
            /* No refcount block to write into: rebuild them all. */
            c->rebuild = true;
            return;
        }
        chk_log(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64
                " reference=%" PRIu32, k, stored, c->refs[k]);
        if (ret == 0) {
            *(leak ? &c->res->leaks_fixed : &c->res->corruptions_fixed) += 1;
            continue;
        }
        chk_log(c, "ERROR could not repair cluster %" PRIu64 ": %s", k,
                ret == -ENOSPC ? "no refcount block covers it (only -r all "
                "rebuilds refcount blocks)" : strerror(-ret));
        *(leak ? &c->res->leaks : &c->res->corruptions) += 1;
    }
}

/* ---- Rebuilding the refcount structure --------------------------------- */

/* A cluster of the old structure: its count with and without it. */
struct old_cluster {
    uint64_t k;
    uint32_t with, without;
};

static int
cmp_old_cluster(const void *a, const void *b)
{
    const struct old_cluster *x = a, *y = b;

    return x->k < y->k ? -1 : x->k > y->k;
}

static void
uncount_one(struct chk *c, uint64_t k, struct old_cluster *old, size_t *n)
{
    size_t i;

    if (k >= c->nb_clusters || !c->refs[k]) {
        return;
    }
    for (i = 0; i < *n && old[i].k != k; i++) {
    }
    if (i == *n) {
        old[(*n)++] = (struct old_cluster){ k, c->refs[k], 0 };
    }
    old[i].without = --c->refs[k];
}

/*
 * The old reftable and refcount blocks will be free: drop their counts.
 * Returns them (malloc'd, sorted, *n entries) for the log: QEMU counts the
 * old structure into the new one and then repairs it as leaks, so its
 * output names each of them after the rebuild.
 */
static struct old_cluster *
uncount_old_structure(struct chk *c, size_t *n)
{
    uint64_t first = c->rt_offset >> c->cluster_bits;
    struct old_cluster *old = calloc(c->rt_clusters + c->rt_entries + 1,
                                     sizeof(*old));

    *n = 0;
    if (!old) {
        return NULL;
    }
    for (uint64_t k = first; k < first + c->rt_clusters; k++) {
        uncount_one(c, k, old, n);
    }
    for (uint64_t i = 0; i < c->rt_entries; i++) {
        uint64_t k;

        if (refblock_usable(c, i, &k)) {
            uncount_one(c, k, old, n);
        }
    }
    qsort(old, *n, sizeof(*old), cmp_old_cluster);
    return old;
}

/*
 * Place nrb refcount blocks and an nrt-cluster reftable after the last
 * used cluster, large enough to describe themselves too.
 */
static uint64_t
plan_structure(struct chk *c, uint64_t *nrb, uint64_t *nrt)
{
    uint64_t per_block = (c->cs * 8) >> c->refcount_order, end = 1;

    for (uint64_t k = 0; k < c->nb_clusters; k++) {
        if (c->refs[k]) {
            end = k + 1;
        }
    }
    *nrb = 1;
    *nrt = 1;
    for (;;) {
        uint64_t b = div_round_up(end + *nrb + *nrt, per_block);
        uint64_t t = div_round_up(b * 8, c->cs);

        if (b == *nrb && t == *nrt) {
            return end;
        }
        *nrb = b;
        *nrt = t;
    }
}

/* Write refcount blocks [first, first+nrb) describing all count clusters. */
static int
write_refblocks(struct chk *c, uint64_t first, uint64_t nrb, uint64_t count)
{
    uint64_t per_block = (c->cs * 8) >> c->refcount_order;
    uint8_t *blk = malloc(c->cs);
    int ret = 0;

    if (!blk) {
        return -ENOMEM;
    }
    for (uint64_t b = 0; b < nrb && ret == 0; b++) {
        memset(blk, 0, c->cs);
        for (uint64_t i = 0; i < per_block; i++) {
            uint64_t k = b * per_block + i;

            if (k < count) {
                encode_refcount(blk, i, c->refcount_order, c->refs[k]);
            }
        }
        ret = chk_write(c, (first + b) << c->cluster_bits, c->cs, blk);
    }
    free(blk);
    return ret;
}

static int
write_reftable(struct chk *c, uint64_t rt, uint64_t nrt, uint64_t first,
               uint64_t nrb)
{
    uint8_t *t = calloc(nrt, c->cs);
    int ret;

    if (!t) {
        return -ENOMEM;
    }
    for (uint64_t b = 0; b < nrb; b++) {
        wr64(t + b * 8, (first + b) << c->cluster_bits);
    }
    ret = chk_write(c, rt << c->cluster_bits, nrt * c->cs, t);
    free(t);
    return ret;
}

/* Switch the header to the new table in one write, after a flush. */
static int
switch_reftable(struct chk *c, uint64_t rt, uint64_t nrt)
{
    uint8_t h[12];
    int ret = block_flush(c->file);

    if (ret < 0) {
        return ret;
    }
    wr64(h, rt << c->cluster_bits);
    h[8] = nrt >> 24;
    h[9] = nrt >> 16;
    h[10] = nrt >> 8;
    h[11] = nrt;
    ret = chk_write(c, 48, sizeof(h), h);
    return ret < 0 ? ret : block_flush(c->file);
}

/* Make room in refs for the clusters of the new structure. */
static int
grow_refs(struct chk *c, uint64_t count)
{
    uint32_t *r;

    if (count <= c->nb_clusters) {
        return 0;
    }
    r = realloc(c->refs, count * sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    memset(r + c->nb_clusters, 0, (count - c->nb_clusters) * sizeof(*r));
    c->refs = r;
    return 0;
}

static int
write_new_structure(struct chk *c)
{
    uint64_t nrb, nrt, first = plan_structure(c, &nrb, &nrt);
    uint64_t count = first + nrb + nrt;
    int ret;

    if (nrt * c->cs > 8 * MiB) {
        return -EFBIG;
    }
    ret = grow_refs(c, count);
    for (uint64_t k = 0; ret == 0 && k < count; k++) {
        if (k >= first) {
            c->refs[k] = 1;
        } else if (c->refs[k] > c->refcount_max) {
            ret = -ERANGE;
        }
    }
    if (ret == 0) {
        ret = write_refblocks(c, first, nrb, count);
    }
    if (ret == 0) {
        ret = write_reftable(c, first + nrb, nrt, first, nrb);
    }
    if (ret == 0) {
        ret = switch_reftable(c, first + nrb, nrt);
    }
    if (ret == 0) {
        c->rt_offset = (first + nrb) << c->cluster_bits;
        c->rt_clusters = nrt;
    }
    return ret;
}

/* Re-read what the rest of the check needs from the new structure. */
static int
reload_structure(struct chk *c)
{
    int64_t len = block_getlength(c->file);
    int ret;

    if (len < 0) {
        return (int)len;
    }
    c->file_len = len;
    c->nb_clusters = div_round_up(c->file_len, c->cs);
    c->rb_offset = 0;
    free(c->reftable);
    c->rt_entries = (uint64_t)c->rt_clusters * c->cs / 8;
    c->reftable = chk_read_table(c, c->rt_offset, c->rt_entries, &ret);
    return c->reftable ? 0 : ret;
}

/*
 * -r all on a broken refcount structure: write fresh refcount blocks and
 * a fresh reftable with the computed counts at the end of the file, then
 * switch the header to them.  The old structure just becomes free space.
 */
static void
rebuild_refcounts(struct chk *c)
{
    struct old_cluster *old;
    size_t nold;
    int ret;

    chk_log(c, "Rebuilding refcount structure");
    old = uncount_old_structure(c, &nold);
    ret = old ? write_new_structure(c) : -ENOMEM;
    if (ret == 0) {
        ret = reload_structure(c);
    }
    for (size_t i = 0; ret == 0 && i < nold; i++) {
        chk_log(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu32
                " reference=%" PRIu32, old[i].k, old[i].with,
                old[i].without);
    }
    free(old);
    if (ret < 0) {
        chk_log(c, "ERROR could not rebuild the refcount structure: %s",
                strerror(-ret));
        c->res->check_errors++;
        c->res->corruptions += c->mm_corrupt;
        c->res->leaks += c->mm_leaks;
        return;
    }
    c->res->corruptions -= c->struct_errors;
    c->res->check_errors -= c->read_errors;
    c->res->corruptions_fixed = c->struct_errors + c->mm_corrupt;
    c->res->leaks_fixed = c->mm_leaks;
}

/*
 * Per-cluster repair when the refcount structure is sound; a rebuild with
 * -r all when it is not; with only -r leaks a broken structure stops the
 * repair (it would write through invalid refcount blocks).
 */
static void
repair_or_rebuild(struct chk *c)
{
    if (c->rebuild && !(c->fix & BLOCK_CHECK_FIX_ERRORS) && c->fix) {
        chk_log(c, "ERROR need to rebuild refcount structures");
        c->res->check_errors++;
        c->res->corruptions += c->mm_corrupt;
        c->res->leaks += c->mm_leaks;
        return;
    }
    if (c->rebuild_if_all && (c->fix & BLOCK_CHECK_FIX_ERRORS)) {
        c->rebuild = true;
    }
    if (!c->rebuild) {
        repair_refcounts(c);
    }
    if (c->rebuild && (c->fix & BLOCK_CHECK_FIX_ERRORS)) {
        rebuild_refcounts(c);
    }
}

/* ---- COPIED flags of the active tables ----------------------------------- */

/*
 * Compare the COPIED flag of one table entry with refcount == 1; when
 * c->fix_copied, rewrite the entry in place.  Returns the (maybe fixed)
 * entry.
 */
static uint64_t
check_copied(struct chk *c, const char *what, uint64_t entry, uint64_t host,
             uint64_t entry_pos, uint32_t l1_index, bool is_l1)
{
    uint64_t rc = 0;
    bool fix = c->fix_copied;
    uint8_t buf[8];

    if (get_refcount(c, host >> c->cluster_bits, &rc) < 0 ||
        (rc == 1) == !!(entry & CHK_OFLAG_COPIED)) {
        return entry;
    }
    if (is_l1) {
        chk_log(c, "%s OFLAG_COPIED %s: l1_index=%" PRIu32 " l1_entry=%"
                PRIx64 " refcount=%" PRIu64, fix ? "Repairing" : "ERROR",
                what, l1_index, entry, rc);
    } else {
        chk_log(c, "%s OFLAG_COPIED %s: l2_entry=%" PRIx64 " refcount=%"
                PRIu64, fix ? "Repairing" : "ERROR", what, entry, rc);
    }
    entry = rc == 1 ? entry | CHK_OFLAG_COPIED : entry & ~CHK_OFLAG_COPIED;
    wr64(buf, entry);
    if (fix && chk_write(c, entry_pos, 8, buf) == 0) {
        c->res->corruptions_fixed++;
    } else {
        c->res->corruptions++;
    }
    return entry;
}

static void
copied_l2(struct chk *c, uint64_t l2_offset)
{
    uint64_t esz = l2_entry_size(c), n = c->cs / esz;
    uint64_t *t;
    int ret;

    t = chk_read_table(c, l2_offset, c->cs / 8, &ret);
    if (!t) {
        c->res->check_errors++;
        return;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t e = t[i * esz / 8], host = e & CHK_OFFSET_MASK;

        if ((e & CHK_OFLAG_COMPRESSED) || !host || (host & (c->cs - 1)) ||
            c->data_file) {
            continue;
        }
        check_copied(c, "data cluster", e, host, l2_offset + i * esz, 0,
                     false);
    }
    free(t);
}

static void
check_copied_flags(struct chk *c)
{
    uint64_t *t;
    int ret;

    /*
     * -r all fixes flags; -r leaks too when nothing else is wrong, because
     * a flag that matches a correct refcount is then safe (QEMU's rule).
     */
    c->fix_copied = (c->fix & BLOCK_CHECK_FIX_ERRORS) ||
                    ((c->fix & BLOCK_CHECK_FIX_LEAKS) && !c->res->leaks &&
                     !c->res->corruptions && !c->res->check_errors);
    if (c->l1_size == 0) {
        return;
    }
    t = chk_read_table(c, c->l1_offset, c->l1_size, &ret);
    if (!t) {
        c->res->check_errors++;
        return;
    }
    for (uint32_t i = 0; i < c->l1_size; i++) {
        uint64_t l2 = t[i] & CHK_OFFSET_MASK;

        if (!l2 || (l2 & (c->cs - 1)) || l2 >= c->file_len) {
            continue;
        }
        check_copied(c, "L2 cluster", t[i], l2, c->l1_offset + i * 8ULL, i,
                     true);
        copied_l2(c, l2);
    }
    free(t);
}

/* ---- Header ---------------------------------------------------------- */

static void
parse_extensions(struct chk *c, const uint8_t *buf, uint64_t len)
{
    uint64_t pos = c->version >= 3 ? c->header_length : 72;
    uint64_t end = len;

    if (c->backing_offset && c->backing_offset < end) {
        end = c->backing_offset;
    }
    while (pos + 8 <= end) {
        uint32_t magic = rd32(buf + pos), elen = rd32(buf + pos + 4);
        const uint8_t *d = buf + pos + 8;

        if (magic == 0 || pos + 8 + elen > end) {
            break;
        }
        if (magic == CHK_EXT_BITMAPS && elen >= 24) {
            c->has_bitmaps = true;
            c->nb_bitmaps = rd32(d);
            c->bitmap_dir_size = rd64(d + 8);
            c->bitmap_dir_offset = rd64(d + 16);
        } else if (magic == CHK_EXT_CRYPTO && elen >= 16) {
            c->has_crypto = true;
            c->crypto_offset = rd64(d);
            c->crypto_length = rd64(d + 8);
        }
        pos += 8 + align_up(elen, 8);
    }
}

/*
 * The fields the walk needs, from a header that qcow2_header_decode()
 * accepted: the decoder the driver's open uses, so that the check refuses
 * ("could not check", exit 1) every header that open refuses as malformed.
 */
static void
take_header(struct chk *c, const struct qcow2_header *h)
{
    c->version = h->version;
    c->backing_offset = h->backing_file_offset;
    c->cluster_bits = h->cluster_bits;
    c->cs = h->cluster_size;
    c->size = h->size;
    c->l1_size = h->l1_size;
    c->l1_offset = h->l1_table_offset;
    c->rt_offset = h->refcount_table_offset;
    c->rt_clusters = h->refcount_table_clusters;
    c->nb_snapshots = h->nb_snapshots;
    c->snapshots_offset = h->snapshots_offset;
    c->incompat = h->incompatible_features;
    c->autoclear = h->autoclear_features;
    c->refcount_order = h->refcount_order;
    c->header_length = h->header_length;
    c->refcount_max = c->refcount_order >= 5 ? UINT32_MAX
                      : (1U << (1U << c->refcount_order)) - 1;
    c->extended_l2 = c->incompat & CHK_INCOMPAT_EXTL2;
    c->data_file = c->incompat & CHK_INCOMPAT_DATA_FILE;
}

static int
load_header(struct chk *c, struct err **errp)
{
    uint64_t len = MIN(c->file_len, 1ULL << CHK_MAX_CLUSTER_BITS);
    CLEANUP_FREE uint8_t *buf = malloc(MAX(len, 1));
    struct qcow2_header h;
    int ret;

    if (!buf) {
        err_setf(errp, "Cannot allocate memory for the header");
        return -ENOMEM;
    }
    ret = chk_read(c, 0, len, buf);
    if (ret < 0) {
        err_setf_errno(errp, -ret, "Could not read the qcow2 header");
        return ret;
    }
    ret = qcow2_header_decode(buf, len, &h, errp);
    if (ret < 0) {
        return ret;
    }
    if (h.crypt_method) {
        /* qemu-img cannot open these without the key either. */
        err_setf(errp, "Encrypted qcow2 images are not supported");
        return -ENOTSUP;
    }
    take_header(c, &h);
    parse_extensions(c, buf, MIN(len, c->cs));
    return 0;
}

static int
load_reftable(struct chk *c, struct err **errp)
{
    int ret;

    c->rt_entries = (uint64_t)c->rt_clusters * c->cs / 8;
    c->reftable = chk_read_table(c, c->rt_offset, c->rt_entries, &ret);
    if (!c->reftable) {
        err_setf_errno(errp, -ret, "Could not read the refcount table at "
                       "0x%" PRIx64, c->rt_offset);
        return ret;
    }
    return 0;
}

/* Clear the dirty and corrupt bits after a repair that left nothing. */
static void
mark_clean(struct chk *c)
{
    uint8_t buf[8];

    if (c->version < 3 ||
        !(c->incompat & (CHK_INCOMPAT_DIRTY | CHK_INCOMPAT_CORRUPT))) {
        return;
    }
    c->incompat &= ~(CHK_INCOMPAT_DIRTY | CHK_INCOMPAT_CORRUPT);
    wr64(buf, c->incompat);
    if (chk_write(c, 72, 8, buf) < 0 || block_flush(c->file) < 0) {
        c->res->check_errors++;
    }
}

/*
 * A repair opens the image for writing, and a writer clears the autoclear
 * bits it does not know (the spec asks it; QEMU does it on open).
 */
static void
clear_unknown_autoclear(struct chk *c)
{
    uint64_t known = 0x3;   /* bitmaps, raw external data */
    uint8_t buf[8];

    if (c->version < 3 || !(c->autoclear & ~known)) {
        return;
    }
    c->autoclear &= known;
    wr64(buf, c->autoclear);
    if (chk_write(c, 88 /* autoclear */, 8, buf) < 0 ||
        block_flush(c->file) < 0) {
        c->res->check_errors++;
    }
}

static int
chk_setup(struct chk *c, struct err **errp)
{
    int64_t len = block_getlength(c->file);
    int ret;

    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Could not get the image length");
        return (int)len;
    }
    c->file_len = len;
    ret = load_header(c, errp);
    if (ret < 0) {
        return ret;
    }
    ret = load_reftable(c, errp);
    if (ret < 0) {
        return ret;
    }
    c->nb_clusters = div_round_up(c->file_len, c->cs);
    c->refs = calloc(MAX(c->nb_clusters, 1), sizeof(*c->refs));
    c->rb_buf = malloc(c->cs);
    if (!c->refs || !c->rb_buf) {
        err_setf(errp, "Cannot allocate memory for %" PRIu64 " refcounts",
                 c->nb_clusters);
        return -ENOMEM;
    }
    c->res->total_clusters = div_round_up(c->size, c->cs);
    return 0;
}

int
qcow2_check(struct block_node *file, unsigned fix, FILE *log,
            struct block_check_result *res, struct err **errp)
{
    struct chk c = { .file = file, .log = log, .fix = fix, .res = res };
    int ret;

    memset(res, 0, sizeof(*res));
    ret = chk_setup(&c, errp);
    if (ret == 0) {
        ret = calculate_refcounts(&c);
        if (ret < 0) {
            /* check_errors says it; the check itself ran. */
            ret = 0;
        } else {
            compare_refcounts(&c);
            repair_or_rebuild(&c);
            check_copied_flags(&c);
        }
        if (fix && !res->corruptions && !res->check_errors) {
            mark_clean(&c);
            clear_unknown_autoclear(&c);
        }
        if (fix) {
            block_flush(file);
        }
    }
    free(c.refs);
    free(c.reftable);
    free(c.rb_buf);
    free(c.mismatch);
    return ret;
}
