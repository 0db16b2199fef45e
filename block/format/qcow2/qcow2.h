/* SPDX-License-Identifier: MIT */
/*
 * qcow2 on-disk format: constants, the decoded header, header validation,
 * entry decoding helpers and image creation.  This is the stable interface
 * that lockstep-img (create/info/check) and the qcow2 driver share; it is
 * written from the qcow2 specification (docs/qcow2.md), not from QEMU's
 * code.
 *
 * Everything here is pure (no I/O) except qcow2_create(), which runs on the
 * main thread and writes a fresh image through a block node.
 */
#ifndef LOCKSTEP_QCOW2_H
#define LOCKSTEP_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lockstep/driver.h"
#include "lockstep/err.h"

/* ---- Header (qcow2 spec, header) ---------------------------------------- */

#define QCOW2_MAGIC 0x514649fbU          /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_HEADER_LEN 104          /* minimum for version 3 */
#define QCOW2_HEADER_LEN_WRITTEN 112     /* what we (and QEMU 7.2) write */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_REFTABLE_BYTES (8ULL * 1024 * 1024)   /* QEMU's limit */
#define QCOW2_MAX_L1_BYTES (32ULL * 1024 * 1024)        /* QEMU's limit */
#define QCOW2_MAX_BITMAPS 65535                         /* QEMU's limit */
#define QCOW2_MAX_BITMAP_DIR_BYTES (1024ULL * 65535)    /* QEMU's limit */
/* Host offsets of metadata must stay below 2^56 (L1/L2/reftable masks). */
#define QCOW2_MAX_HOST_OFFSET (1ULL << 56)

/* Byte offsets of header fields we rewrite in place. */
#define QCOW2_HDR_OFF_SIZE 24
#define QCOW2_HDR_OFF_L1_SIZE 36          /* l1_size + l1_table_offset */
#define QCOW2_HDR_OFF_REFTABLE 48         /* offset + clusters */
#define QCOW2_HDR_OFF_INCOMPAT 72
#define QCOW2_HDR_OFF_AUTOCLEAR 88

/* Incompatible feature bits. */
#define QCOW2_INCOMPAT_DIRTY 0x1ULL
#define QCOW2_INCOMPAT_CORRUPT 0x2ULL
#define QCOW2_INCOMPAT_DATA_FILE 0x4ULL
#define QCOW2_INCOMPAT_COMPRESSION 0x8ULL
#define QCOW2_INCOMPAT_EXTL2 0x10ULL
#define QCOW2_INCOMPAT_MASK 0x1fULL
/* Compatible feature bits. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS 0x1ULL
#define QCOW2_COMPAT_MASK 0x1ULL
/* Autoclear feature bits. */
#define QCOW2_AUTOCLEAR_BITMAPS 0x1ULL
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW 0x2ULL
#define QCOW2_AUTOCLEAR_MASK 0x3ULL

#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES 1
#define QCOW2_CRYPT_LUKS 2

#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Header extension magics (qcow2 spec, header extensions). */
#define QCOW2_EXT_END 0x00000000U
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE 0x6803f857U
#define QCOW2_EXT_BITMAPS 0x23852875U
#define QCOW2_EXT_CRYPTO 0x0537be77U
#define QCOW2_EXT_DATA_FILE 0x44415441U

/* Bitmap directory entry flags (qcow2 spec, bitmaps extension). */
#define QCOW2_BME_IN_USE 0x1U
#define QCOW2_BME_AUTO 0x2U

/* ---- L1 / L2 / refcount table entries ----------------------------------- */

#define QCOW2_OFLAG_COPIED (1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED (1ULL << 62)
#define QCOW2_OFLAG_ZERO 1ULL

#define QCOW2_L1E_OFFSET_MASK 0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK 0x7f000000000001ffULL
#define QCOW2_L2E_OFFSET_MASK 0x00fffffffffffe00ULL
#define QCOW2_L2E_STD_RESERVED_MASK 0x3f000000000001feULL
#define QCOW2_REFT_OFFSET_MASK 0xfffffffffffffe00ULL
#define QCOW2_REFT_RESERVED_MASK 0x1ffULL

/* Extended L2: 32 subclusters, bitmap word = zero bits << 32 | alloc bits. */
#define QCOW2_EXTL2_SUBCLUSTERS 32
#define QCOW2_SUB_ALLOC(i) (1ULL << (i))
#define QCOW2_SUB_ZERO(i) (1ULL << ((i) + 32))
#define QCOW2_SUB_ALLOC_ALL 0x00000000ffffffffULL
#define QCOW2_SUB_ZERO_ALL 0xffffffff00000000ULL

/* ---- Decoded header ------------------------------------------------------ */

/*
 * The header in host byte order, plus what the extensions and the backing
 * file name say.  Filled by qcow2_header_decode()/qcow2_header_parse().
 */
struct qcow2_header {
    uint32_t magic;
    uint32_t version;                 /* 2 or 3 */
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;                    /* virtual size in bytes */
    uint32_t crypt_method;
    uint32_t l1_size;                 /* entries */
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;   /* 0 for v2 */
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;          /* 4 for v2 */
    uint32_t header_length;           /* 72 for v2 */
    uint8_t compression_type;

    /* Derived. */
    uint64_t cluster_size;
    uint32_t refcount_bits;
    bool extended_l2;
    uint32_t l2_entry_size;           /* 8, or 16 with extended L2 */
    uint64_t l2_entries;              /* entries per L2 table */

    /* From the extensions and the backing name (NUL-terminated). */
    bool has_backing_file;
    char backing_file[QCOW2_MAX_BACKING_NAME + 1];
    bool has_backing_fmt;
    char backing_fmt[16];
    bool has_bitmaps_ext;
    bool has_data_file_ext;
    char data_file[QCOW2_MAX_BACKING_NAME + 1];   /* its name, if so */
    bool has_crypto_ext;
    /* End of the extension area (offset of the end marker + 8, or where
     * the list stopped): the backing name is expected after it. */
    uint64_t ext_end;
};

/*
 * Decode and validate the header in buf (the first bytes of the image, at
 * best the whole first cluster; len >= 72).  Checks the structure only:
 * magic, version 2/3, cluster_bits 9..21, header_length, refcount_order
 * 0..6, alignment of every table offset, l1_size against the virtual size,
 * table size limits, the extension list (lengths, the fields of the
 * bitmaps and crypto extensions, the external data file bits) and the
 * backing file name, and refuses unknown incompatible feature bits naming
 * them: everything QEMU's open refuses in the header.  Images with
 * features we do not implement (encryption, snapshots, ...) still decode,
 * so that "info" and "check" can describe them.  Returns 0 or -errno with
 * *errp set.  Pure; any thread.
 */
int qcow2_header_decode(const void *buf, size_t len, struct qcow2_header *h,
                        struct err **errp);

/*
 * Refuse (with a message naming the feature) what the lockstep driver does
 * not implement: external data files, encryption,
 * lazy refcounts, zstd compression.  Returns 0 or -ENOTSUP.
 */
int qcow2_header_check_supported(const struct qcow2_header *h,
                                 struct err **errp);

/* qcow2_header_decode() then qcow2_header_check_supported(). */
int qcow2_header_parse(const void *buf, size_t len, struct qcow2_header *h,
                       struct err **errp);

/*
 * The names of the feature bits set in bits, comma separated: the spec
 * names for known bits ("dirty bit", "lazy refcounts", ...) and
 * "Unknown incompatible feature bit N" style text for the others.
 * type: 0 incompatible, 1 compatible, 2 autoclear.  Returns a malloc'd
 * string (free it).
 */
char *qcow2_feature_names(int type, uint64_t bits);

/* ---- Entry decoding (pure helpers, unit-tested) -------------------------- */

/* How one standard L2 entry (first word) reads; see qcow2 spec B.4. */
enum qcow2_cluster_type {
    QCOW2_CLUSTER_UNALLOCATED,  /* falls through to the backing file */
    QCOW2_CLUSTER_ZERO_PLAIN,   /* reads as zeroes, no host cluster */
    QCOW2_CLUSTER_ZERO_ALLOC,   /* reads as zeroes, host cluster kept */
    QCOW2_CLUSTER_NORMAL,       /* data at the host offset */
    QCOW2_CLUSTER_COMPRESSED,   /* deflate stream at a byte offset */
};

/*
 * Classify an L2 entry; -EIO for entries that break the format (reserved
 * bits, unaligned host offset, zero flag in v2/extended L2).  For extended
 * L2 pass the bitmap word too; the result then describes the cluster as a
 * whole (use qcow2_subcluster_type() for parts).
 */
int qcow2_l2_entry_type(uint64_t entry, uint64_t bitmap, bool extended,
                        int version, unsigned cluster_bits,
                        enum qcow2_cluster_type *type);

/* Type of subcluster i of an extended L2 entry; -EIO for invalid bitmaps
 * (alloc and zero both set, alloc with host offset 0). */
int qcow2_subcluster_type(uint64_t entry, uint64_t bitmap, unsigned i,
                          enum qcow2_cluster_type *type);

/* Compressed descriptor: host byte offset and byte count to read. */
void qcow2_compressed_decode(uint64_t entry, unsigned cluster_bits,
                             uint64_t *host_offset, uint64_t *nb_bytes);

/*
 * Refcount entry i of a refcount block in on-disk layout, for refcount
 * width 1 << order (order 0..6; sub-byte widths packed LSB first).
 */
uint64_t qcow2_refcount_get(const uint8_t *block, uint64_t i, unsigned order);
void qcow2_refcount_set(uint8_t *block, uint64_t i, unsigned order,
                        uint64_t value);
static inline uint64_t
qcow2_refcount_max(unsigned order)
{
    return order >= 6 ? UINT64_MAX : (1ULL << (1U << order)) - 1;
}

/* ---- Creation ------------------------------------------------------------ */

struct qcow2_create_opts {
    uint64_t cluster_size;       /* 0 = 64 KiB; power of 2, 512..2 MiB */
    unsigned refcount_bits;      /* 0 = 16; 1, 2, 4, ..., 64 */
    bool extended_l2;            /* needs cluster_size >= 16 KiB */
    int version;                 /* 0 or 3 = v3 ("compat=1.1"); 2 = v2 */
    bool lazy_refcounts;         /* the compatible bit; v3 only */
    unsigned compression_type;   /* QCOW2_COMPRESSION_*; zstd: v3 only */
    const char *backing_file;    /* NULL: none; stored as given */
    const char *backing_fmt;     /* NULL: none (QEMU 6.1+ wants one) */
    const char *preallocation;   /* NULL/"off", "metadata", "falloc",
                                  * "full" */
};

/*
 * Write a new, empty qcow2 image of virtual size "size" to file (a node
 * opened read-write, normally a "file" node; its old content is dropped).
 * Layout: header @0, reftable @1 cluster, refblocks, then L1, exactly like
 * a fresh qemu-img image; with preallocation L2 tables and data clusters
 * follow.  size 0 with a backing file takes the size of the backing file
 * (relative names resolved against file's directory).  The image passes
 * "qemu-img check".  Main thread; returns 0 or -errno with *errp set.
 */
int qcow2_create(struct block_node *file, uint64_t size,
                 const struct qcow2_create_opts *opts, struct err **errp);

/* The driver's create, check, image_info and change_backing_file hooks
 * (lockstep/driver.h). */
extern const struct block_create_opt qcow2_create_options[];
int qcow2_create_image(struct block_node *file,
                       const struct block_create_opts *opts,
                       struct err **errp);
int qcow2_image_info(struct block_node *file, bool details,
                     struct block_image_info *info, struct err **errp);
int qcow2_change_backing_file(struct block_node *file, const char *name,
                              const char *fmt, struct err **errp);

/* ---- Internal snapshots (qcow2-snapshot.c) -------------------------------- */

/* One snapshot table entry as read (strings NUL terminated). */
struct qcow2_snapshot {
    char *id, *name;
    uint64_t l1_offset;
    uint32_t l1_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;         /* the extra data's, else the image's */
    uint8_t *extra;             /* extra data, kept as read */
    uint32_t extra_len;
};

/*
 * The snapshots of an open qcow2 node (*out malloc'd; free with
 * qcow2_snapshots_free).  Create, apply (by ID, else by name) and delete
 * need the node read-write with nothing in flight; they write in the
 * crash-safe order of qcow2-snapshot.c.  Return 0 or -errno with *errp
 * set (qemu-img's texts where the iotests compare them).
 */
int qcow2_snapshot_list(struct block_node *node, struct qcow2_snapshot **out,
                        uint32_t *n, struct err **errp);
void qcow2_snapshots_free(struct qcow2_snapshot *sn, uint32_t n);
int qcow2_snapshot_create(struct block_node *node, const char *name,
                          struct err **errp);
int qcow2_snapshot_apply(struct block_node *node, const char *id_or_name,
                         struct err **errp);
int qcow2_snapshot_delete(struct block_node *node, const char *id_or_name,
                          struct err **errp);
/*
 * Read-only nodes: reads go through the L1 table of the snapshot with
 * this ID and/or name (NULL: any) from now on (qemu-img convert -l).
 */
int qcow2_snapshot_load_tmp(struct block_node *node, const char *id,
                            const char *name, struct err **errp);
/* The driver's snapshot_list hook. */
int qcow2_snapshot_list_hook(struct block_node *node,
                             struct block_snapshot **out, size_t *n,
                             struct err **errp);

/*
 * The VM state area (qemu-io read -b/write -b): pos bytes from its start,
 * which is the first L1 entry past the virtual disk.  Writes grow the L1
 * table as needed.  -ENOTSUP for other drivers and for images with a
 * backing file.  Main thread, nothing else writing.
 */
uint64_t qcow2_vmstate_start(struct block_node *node);
int qcow2_vmstate_pread(struct block_node *node, uint64_t pos, uint64_t len,
                        void *buf);
int qcow2_vmstate_pwrite(struct block_node *node, uint64_t pos, uint64_t len,
                         const void *buf);

#endif
