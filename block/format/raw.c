/* SPDX-License-Identifier: MIT */
/*
 * The "raw" format: the bytes of the "file" child as they are, optionally
 * a window of it ("offset", "size").  Everything passes through with the
 * offset added.
 */
#include <errno.h>

#include "lockstep/driver.h"
#include "util.h"

struct raw_state {
    uint64_t offset;
    uint64_t size;      /* 0: up to the end of the file */
    bool has_size;
};

static const struct block_opt raw_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"offset", BLOCK_OPT_SIZE, false, NULL},
    {"size", BLOCK_OPT_SIZE, false, NULL},
    {NULL, 0, false, NULL},
};

static int
raw_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct raw_state *s = node->opaque;
    struct block_node *file;
    uint64_t file_len;

    if (!block_node_open_child(node, options, "file", errp)) {
        return -EINVAL;
    }
    file = node->file->node;
    file_len = (uint64_t)block_getlength(file);
    s->offset = (uint64_t)block_opt_int(options, "offset", 0);
    s->has_size = json_object_get(options, "size") != NULL;
    s->size = (uint64_t)block_opt_int(options, "size", 0);
    if (s->offset > file_len) {
        err_setf(errp, "The sum of offset (%llu) and size (%llu) has to be "
                 "smaller or equal to the actual size of the containing "
                 "file (%llu)", (unsigned long long)s->offset,
                 (unsigned long long)s->size, (unsigned long long)file_len);
        return -EINVAL;
    }
    if (s->has_size && range_exceeds(s->offset, s->size, file_len)) {
        err_setf(errp, "The sum of offset (%llu) and size (%llu) has to be "
                 "smaller or equal to the actual size of the containing "
                 "file (%llu)", (unsigned long long)s->offset,
                 (unsigned long long)s->size, (unsigned long long)file_len);
        return -EINVAL;
    }
    node->limits = file->limits;
    /* Any byte range passes down: the file node below pads what it must
     * (and tells blkdebug's rmw events there, as in QEMU). */
    node->limits.request_alignment = 1;
    node->supported_write_flags = BLOCK_REQ_FUA;
    node->supported_zero_flags = BLOCK_REQ_FUA | BLOCK_REQ_MAY_UNMAP;
    return 0;
}

/*
 * raw has no metadata: it takes on its file exactly what its parents take
 * (QEMU's raw, whose file is a filtered child), so that an export that
 * writes the raw node writes the file, and nothing more.  A window
 * (offset or size) makes the file a data child whose length others must
 * not change.  Called before open parses the options, hence node->options.
 */
static void
raw_child_perm(struct block_node *node, const char *child_name UNUSED,
               uint32_t parent_perm, uint32_t parent_shared,
               uint32_t *perm, uint32_t *shared)
{
    bool window = block_opt_int(node->options, "offset", 0) != 0 ||
                  json_object_get(node->options, "size") != NULL;

    *perm = parent_perm & BLOCK_PERM_ALL;
    *shared = parent_shared & BLOCK_PERM_ALL;
    if (window) {
        *shared &= ~BLOCK_PERM_RESIZE;
    }
}

static int64_t
raw_getlength(struct block_node *node)
{
    struct raw_state *s = node->opaque;
    int64_t len;

    if (s->has_size) {
        return (int64_t)s->size;
    }
    len = block_getlength(node->file->node);
    if (len < 0) {
        return len;
    }
    /* Whole sectors, as QEMU counts a file's length: a 320-byte file is a
     * 512-byte image whose end reads as zeroes. */
    return (int64_t)align_up((uint64_t)len, BLOCK_SECTOR_SIZE) -
           (int64_t)s->offset;
}

static int
raw_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
          void *buf, unsigned flags)
{
    struct raw_state *s = node->opaque;

    block_debug_event(node->file->node, "read_aio");
    return block_pread(node->file->node, s->offset + offset, bytes, buf,
                       flags);
}

static int
raw_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
           const void *buf, unsigned flags)
{
    struct raw_state *s = node->opaque;

    block_debug_event(node->file->node, "write_aio");
    return block_pwrite(node->file->node, s->offset + offset, bytes, buf,
                        flags);
}

static int
raw_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                  unsigned flags)
{
    struct raw_state *s = node->opaque;

    return block_pwrite_zeroes(node->file->node, s->offset + offset, bytes,
                               flags);
}

static int
raw_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    struct raw_state *s = node->opaque;

    return block_pdiscard(node->file->node, s->offset + offset, bytes);
}

static int
raw_block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                 uint64_t *pnum, uint64_t *map, struct block_node **file)
{
    struct raw_state *s = node->opaque;
    int64_t flen = block_getlength(node->file->node);

    *pnum = bytes;
    *map = s->offset + offset;
    *file = node->file->node;
    if (flen >= 0 && *map >= (uint64_t)flen) {
        /*
         * The rest of the last sector, past the file's end, reads as
         * zeroes.  QEMU asks the file in blocks of its request alignment:
         * a block that starts with data is data to its end (O_DIRECT).
         */
        uint64_t align = MAX(node->file->node->limits.request_alignment, 1);
        uint64_t start = align_down(*map, align);
        uint64_t n;
        int ret = start < (uint64_t)flen
                  ? block_status(node->file->node, start,
                                 (uint64_t)flen - start, &n, NULL) : 0;

        return (ret > 0 && (ret & BLOCK_STATUS_DATA) ? BLOCK_STATUS_DATA
                                                     : BLOCK_STATUS_ZERO) |
               BLOCK_STATUS_OFFSET_VALID;
    }
    if (flen >= 0 && *map + bytes > (uint64_t)flen) {
        *pnum = (uint64_t)flen - *map;
    }
    return BLOCK_STATUS_RECURSE;
}

static int
raw_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    struct raw_state *s = node->opaque;

    if (s->has_size || s->offset) {
        err_setf(errp, "Cannot resize a raw node with 'offset' or 'size'");
        return -ENOTSUP;
    }
    return block_truncate(node->file->node, length, errp);
}

/* Anything is raw, but every other format is surer. */
static int
raw_probe(const uint8_t *head, size_t len, const char *filename)
{
    (void)head;
    (void)len;
    (void)filename;
    return 1;
}

/*
 * A raw image is its file: creating one is the file's business (sized,
 * preallocated), done by whoever creates the file; so raw lists its
 * create options but has no create hook.
 */
static const struct block_create_opt raw_create_options[] = {
    {"size", BLOCK_OPT_SIZE, NULL, NULL},
    {"preallocation", BLOCK_OPT_STRING, NULL, NULL},
    {NULL, 0, NULL, NULL},
};

const struct block_driver raw_driver = {
    .name = "raw",
    .kind = BLOCK_KIND_FORMAT,
    .state_size = sizeof(struct raw_state),
    .options = raw_opts,
    .open = raw_open,
    .getlength = raw_getlength,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .pdiscard = raw_pdiscard,
    .block_status = raw_block_status,
    .truncate = raw_truncate,
    .child_perm = raw_child_perm,
    .probe = raw_probe,
    .create_options = raw_create_options,
};
