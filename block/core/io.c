/* SPDX-License-Identifier: MIT */
/*
 * The request layer: every read, write, zero, discard, flush and status
 * query on any node goes through here before it reaches a driver.
 *
 * Design notes.
 *
 * What the core does for drivers, so that each driver stays simple:
 *  - range checks: reads past the end return zeroes, writes past the end
 *    grow protocol nodes (a qcow2 image grows its file) and fail elsewhere;
 *  - alignment: requests are widened to limits.request_alignment (the
 *    last block of a node too, past its end: O_DIRECT knows no shorter
 *    I/O) and buffers not aligned to limits.mem_alignment are bounced; an
 *    unaligned write becomes read-modify-write under a serialising range
 *    lock so that two RMWs of one block cannot lose each other's bytes;
 *  - splitting at max_transfer / max_pwrite_zeroes / max_pdiscard;
 *  - batches: the pieces of one request (block_pread_segments()) go to a
 *    driver's *_segments callback together when they need none of the
 *    above, else one by one;
 *  - tracking: every request is in node->tracked while it runs; a
 *    serialising request waits for every overlapping one, and every request
 *    waits for overlapping serialising ones (copy-before-write and RMW need
 *    this);
 *  - emulation: FUA by a flush, write-zeroes by writing zeroes, detect-zeroes,
 *    discard=ignore, cache.no-flush;
 *  - dirty tracking: a completed change marks the node's enabled bitmaps.
 *
 * Locking: node->req_lock protects node->tracked and is never held while a
 * driver runs.  node->serial_lock is held around driver calls only for
 * drivers that declare serialize_requests.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "util.h"

/* Buffer of zeroes for emulated write-zeroes, in chunks of this size. */
#define ZERO_CHUNK (1 * MiB)

/* ---- Tracked requests ------------------------------------------------- */

static bool
tracked_conflict(struct block_node *node, uint64_t offset, uint64_t bytes,
                 bool serialising)
{
    struct block_tracked_req *t;

    TAILQ_FOREACH(t, &node->tracked, link) {
        if ((serialising || t->serialising) &&
            ranges_overlap(offset, bytes, t->offset, t->bytes)) {
            return true;
        }
    }
    return false;
}

static void
tracked_begin(struct block_node *node, struct block_tracked_req *req,
              uint64_t offset, uint64_t bytes, bool serialising)
{
    req->offset = offset;
    req->bytes = bytes ? bytes : 1;
    req->serialising = serialising;
    mutex_lock(&node->req_lock);
    while (tracked_conflict(node, req->offset, req->bytes, serialising)) {
        cond_wait(&node->req_cond, &node->req_lock);
    }
    TAILQ_INSERT_TAIL(&node->tracked, req, link);
    mutex_unlock(&node->req_lock);
}

static void
tracked_end(struct block_node *node, struct block_tracked_req *req)
{
    mutex_lock(&node->req_lock);
    TAILQ_REMOVE(&node->tracked, req, link);
    cond_broadcast(&node->req_cond);
    mutex_unlock(&node->req_lock);
}

static int flush_node(struct block_node *node, bool force);

/* ---- Driver calls ----------------------------------------------------- */

static void
serial_enter(struct block_node *node)
{
    if (node->drv->serialize_requests) {
        mutex_lock(&node->serial_lock);
    }
}

static void
serial_leave(struct block_node *node)
{
    if (node->drv->serialize_requests) {
        mutex_unlock(&node->serial_lock);
    }
}

/* Filters and formats without a callback pass to "file". */
static struct block_node *
passthrough_child(struct block_node *node)
{
    return node->file ? node->file->node : NULL;
}

static int
drv_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
          void *buf, unsigned flags)
{
    uint64_t max = node->limits.max_transfer;
    int ret = 0;

    if (!node->drv->pread) {
        struct block_node *child = passthrough_child(node);

        return child ? block_pread(child, offset, bytes, buf, flags)
                     : -ENOTSUP;
    }
    serial_enter(node);
    while (bytes > 0 && ret == 0) {
        uint64_t n = max ? MIN(bytes, max) : bytes;

        ret = node->drv->pread(node, offset, n, buf, flags);
        offset += n;
        bytes -= n;
        buf = (char *)buf + n;
    }
    serial_leave(node);
    return ret;
}

static int
drv_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
           const void *buf, unsigned flags)
{
    uint64_t max = node->limits.max_transfer;
    unsigned drv_flags = flags & node->supported_write_flags;
    int ret = 0;

    if (!node->drv->pwrite) {
        struct block_node *child = passthrough_child(node);

        return child ? block_pwrite(child, offset, bytes, buf, flags)
                     : -ENOTSUP;
    }
    serial_enter(node);
    while (bytes > 0 && ret == 0) {
        uint64_t n = max ? MIN(bytes, max) : bytes;

        ret = node->drv->pwrite(node, offset, n, buf, drv_flags);
        offset += n;
        bytes -= n;
        buf = (const char *)buf + n;
    }
    serial_leave(node);
    if (ret == 0 && (flags & BLOCK_REQ_FUA) && !(drv_flags & BLOCK_REQ_FUA)) {
        ret = flush_node(node, true);
    }
    return ret;
}

/* ---- Bounds and alignment --------------------------------------------- */

int64_t
block_getlength(struct block_node *node)
{
    /* A filter is as long as what it filters, which may grow. */
    if (node->drv->kind == BLOCK_KIND_FILTER && !node->drv->getlength &&
        node->file) {
        return block_getlength(node->file->node);
    }
    return (int64_t)__atomic_load_n(&node->size, __ATOMIC_RELAXED);
}

static void
grow_size(struct block_node *node, uint64_t end)
{
    uint64_t cur = __atomic_load_n(&node->size, __ATOMIC_RELAXED);

    while (end > cur &&
           !__atomic_compare_exchange_n(&node->size, &cur, end, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* A change completed: dirty bitmaps and the write generation. */
static void
write_done(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    __atomic_add_fetch(&node->write_gen, 1, __ATOMIC_RELEASE);
    block_node_mark_dirty(node, offset, bytes);
}

static int
check_write_range(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    if (range_exceeds(offset, bytes, INT64_MAX)) {
        return -EINVAL;
    }
    if (node->read_only) {
        return -EPERM;
    }
    /* Only protocols grow, and filters pass the growth down to them. */
    if (offset + bytes > (uint64_t)block_getlength(node) &&
        node->drv->kind == BLOCK_KIND_FORMAT) {
        return -EIO;
    }
    return 0;
}

static void *
bounce_alloc(struct block_node *node, uint64_t bytes)
{
    void *p;
    size_t align = MAX(node->limits.mem_alignment, sizeof(void *));

    if (posix_memalign(&p, align, bytes ? bytes : 1) != 0) {
        return NULL;
    }
    return p;
}

static bool
buf_aligned(struct block_node *node, const void *buf)
{
    return is_aligned((uintptr_t)buf, node->limits.mem_alignment);
}

/*
 * The aligned range around [offset, end).  A protocol node gets its last
 * partial block whole, past its end: O_DIRECT cannot do less, so reads
 * there return zeroes and writes grow the file to the block boundary (as
 * in QEMU).  Filters and formats stop at their end, unaligned: a child
 * format could not take more, and the protocol below pads for itself.
 */
static void
align_range(struct block_node *node, uint64_t offset, uint64_t end,
            uint64_t *a_off, uint64_t *a_end)
{
    uint64_t align = node->limits.request_alignment;
    uint64_t size = (uint64_t)block_getlength(node);

    *a_off = align_down(offset, align);
    *a_end = align_up(end, align);
    if (*a_end > size && node->drv->kind != BLOCK_KIND_PROTOCOL) {
        *a_end = MAX(end, size);
    }
}

int
block_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
            void *buf, unsigned flags)
{
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t a_off, a_end, end;
    struct block_tracked_req req;
    void *bounce;
    int ret;

    if (range_exceeds(offset, bytes, INT64_MAX)) {
        return -EINVAL;
    }
    if (bytes == 0) {
        return 0;
    }
    /* Past the end reads as zeroes (QEMU does the same below the
     * backend). */
    if (offset >= size) {
        memset(buf, 0, bytes);
        return 0;
    }
    if (offset + bytes > size) {
        memset((char *)buf + (size - offset), 0, offset + bytes - size);
        bytes = size - offset;
    }
    end = offset + bytes;
    align_range(node, offset, end, &a_off, &a_end);
    tracked_begin(node, &req, a_off, a_end - a_off,
                  flags & BLOCK_REQ_SERIALISING);
    if (a_off == offset && a_end == end && buf_aligned(node, buf)) {
        ret = drv_pread(node, offset, bytes, buf, flags);
    } else {
        bounce = bounce_alloc(node, a_end - a_off);
        if (!bounce) {
            ret = -ENOMEM;
        } else {
            ret = drv_pread(node, a_off, a_end - a_off, bounce, flags);
            if (ret == 0) {
                memcpy(buf, (char *)bounce + (offset - a_off), bytes);
            }
            free(bounce);
        }
    }
    tracked_end(node, &req);
    return ret;
}

/*
 * QEMU's write-path events (blkdebug's "pwritev", "pwritev_rmw_head" ...,
 * which its rules and breakpoints name), told to this node's driver only:
 * each node on the path tells its own, as QEMU's bdrv_debug_event.
 */
static void
node_event(struct block_node *node, const char *event)
{
    if (node->drv->debug_event) {
        node->drv->debug_event(node, event);
    }
}

/* An aligned data write, between QEMU's "pwritev" and "pwritev_done". */
static int
pwrite_events(struct block_node *node, uint64_t offset, uint64_t bytes,
              const void *buf, unsigned flags)
{
    int ret;

    node_event(node, "pwritev");
    ret = drv_pwrite(node, offset, bytes, buf, flags);
    node_event(node, "pwritev_done");
    return ret;
}

/*
 * Write [offset, offset+bytes) as part of the aligned range [a_off, a_end):
 * read the partial first and last blocks, merge, write the whole range.
 * The caller holds a serialising tracked request over [a_off, a_end).
 * When both ends fall in one block, one read serves as head and tail.
 */
static int
pwrite_rmw(struct block_node *node, uint64_t offset, uint64_t bytes,
           const void *buf, unsigned flags, uint64_t a_off, uint64_t a_end)
{
    uint64_t align = node->limits.request_alignment;
    uint64_t end = offset + bytes;
    uint64_t head_end = MIN(a_off + align, a_end);
    uint64_t tail_start = MAX(align_down(end, align), a_off);
    bool merged = a_off < offset && end < a_end && tail_start == a_off;
    char *bounce = bounce_alloc(node, a_end - a_off);
    int ret = 0;

    if (!bounce) {
        return -ENOMEM;
    }
    if (a_off < offset) {
        node_event(node, "pwritev_rmw_head");
        if (merged) {
            node_event(node, "pwritev_rmw_tail");
        }
        ret = drv_pread(node, a_off, head_end - a_off, bounce, 0);
        if (ret == 0) {
            node_event(node, "pwritev_rmw_after_head");
        }
        if (ret == 0 && merged) {
            node_event(node, "pwritev_rmw_after_tail");
        }
    }
    if (ret == 0 && end < a_end && !merged) {
        node_event(node, "pwritev_rmw_tail");
        ret = drv_pread(node, tail_start, a_end - tail_start,
                        bounce + (tail_start - a_off), 0);
        if (ret == 0) {
            node_event(node, "pwritev_rmw_after_tail");
        }
    }
    if (ret == 0) {
        if (buf) {
            memcpy(bounce + (offset - a_off), buf, bytes);
        } else {
            memset(bounce + (offset - a_off), 0, bytes);
        }
        ret = pwrite_events(node, a_off, a_end - a_off, bounce, flags);
    }
    free(bounce);
    return ret;
}

/*
 * A compressed write goes to the first node that stores compressed data
 * (filters without a pwrite of their own pass it down), unsplit and
 * unpadded: the format checks its alignment rules.
 */
static int
pwrite_compressed(struct block_node *node, uint64_t offset, uint64_t bytes,
                  const void *buf, unsigned flags)
{
    struct block_tracked_req req;
    void *bounce = NULL;
    int ret;

    if (node->drv->pwrite &&
        !(node->supported_write_flags & BLOCK_REQ_WRITE_COMPRESSED)) {
        return -ENOTSUP;
    }
    if (!node->drv->pwrite) {
        struct block_node *child = passthrough_child(node);

        return child ? block_pwrite(child, offset, bytes, buf, flags)
                     : -ENOTSUP;
    }
    if (!buf_aligned(node, buf)) {
        bounce = bounce_alloc(node, bytes);
        if (!bounce) {
            return -ENOMEM;
        }
        memcpy(bounce, buf, bytes);
        buf = bounce;
    }
    tracked_begin(node, &req, offset, bytes, false);
    serial_enter(node);
    ret = node->drv->pwrite(node, offset, bytes, buf,
                            BLOCK_REQ_WRITE_COMPRESSED);
    serial_leave(node);
    if (ret == 0) {
        write_done(node, offset, bytes);
    }
    tracked_end(node, &req);
    free(bounce);
    return ret;
}

int
block_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
             const void *buf, unsigned flags)
{
    uint64_t end = offset + bytes;
    uint64_t a_off, a_end;
    struct block_tracked_req req;
    bool aligned;
    int ret;

    ret = check_write_range(node, offset, bytes);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (flags & BLOCK_REQ_WRITE_COMPRESSED) {
        return pwrite_compressed(node, offset, bytes, buf, flags);
    }
    if (node->detect_zeroes != BLOCK_DETECT_ZEROES_OFF &&
        buffer_is_zero(buf, bytes)) {
        unsigned zflags = flags & BLOCK_REQ_FUA;

        if (node->detect_zeroes == BLOCK_DETECT_ZEROES_UNMAP) {
            zflags |= BLOCK_REQ_MAY_UNMAP;
        }
        return block_pwrite_zeroes(node, offset, bytes, zflags);
    }
    align_range(node, offset, end, &a_off, &a_end);
    aligned = a_off == offset && a_end == end;
    tracked_begin(node, &req, a_off, a_end - a_off,
                  !aligned || (flags & BLOCK_REQ_SERIALISING));
    if (aligned && buf_aligned(node, buf)) {
        ret = pwrite_events(node, offset, bytes, buf, flags);
    } else if (aligned) {
        void *bounce = bounce_alloc(node, bytes);

        ret = -ENOMEM;
        if (bounce) {
            memcpy(bounce, buf, bytes);
            ret = pwrite_events(node, offset, bytes, bounce, flags);
            free(bounce);
        }
    } else {
        ret = pwrite_rmw(node, offset, bytes, buf, flags, a_off, a_end);
    }
    if (ret == 0) {
        grow_size(node, end);
        write_done(node, offset, bytes);
    }
    tracked_end(node, &req);
    return ret;
}

/* ---- Several pieces of one request ------------------------------------ */

/*
 * Can the driver take these pieces as they are: each inside the node,
 * aligned, within max_transfer, in an aligned buffer, and nothing that the
 * core must do piece by piece (serialising requests, whose waits could
 * cross those of another batch; detect-zeroes on writes)?  Else the
 * pieces go one by one through block_pread()/block_pwrite(), which do all
 * of that.
 */
static bool
segments_fit(struct block_node *node, const struct block_segment *seg,
             unsigned n, unsigned flags, bool write)
{
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t align = node->limits.request_alignment;
    uint64_t max = node->limits.max_transfer;

    if ((flags & BLOCK_REQ_SERIALISING) ||
        (write && (node->read_only ||
                   node->detect_zeroes != BLOCK_DETECT_ZEROES_OFF))) {
        return false;
    }
    for (unsigned i = 0; i < n; i++) {
        if (seg[i].bytes == 0 ||
            range_exceeds(seg[i].offset, seg[i].bytes, size) ||
            !is_aligned(seg[i].offset, align) ||
            !is_aligned(seg[i].bytes, align) ||
            (max && seg[i].bytes > max) || !buf_aligned(node, seg[i].buf)) {
            return false;
        }
    }
    return true;
}

/* At most BLOCK_MAX_SEGMENTS pieces that fit, to the driver at once. */
static int
segments_to_driver(struct block_node *node, const struct block_segment *seg,
                   unsigned n, unsigned flags, bool write)
{
    struct block_tracked_req req[BLOCK_MAX_SEGMENTS];
    unsigned drv_flags = write ? flags & node->supported_write_flags
                               : flags;
    int ret;

    for (unsigned i = 0; i < n; i++) {
        tracked_begin(node, &req[i], seg[i].offset, seg[i].bytes, false);
    }
    serial_enter(node);
    ret = write ? node->drv->pwrite_segments(node, seg, n, drv_flags)
                : node->drv->pread_segments(node, seg, n, drv_flags);
    serial_leave(node);
    for (unsigned i = 0; i < n; i++) {
        if (write && ret == 0) {
            write_done(node, seg[i].offset, seg[i].bytes);
        }
        tracked_end(node, &req[i]);
    }
    if (ret == 0 && write && (flags & BLOCK_REQ_FUA) &&
        !(drv_flags & BLOCK_REQ_FUA)) {
        ret = flush_node(node, true);
    }
    return ret;
}

static int
block_segments(struct block_node *node, const struct block_segment *seg,
               unsigned n, unsigned flags, bool write)
{
    bool batch = write ? node->drv->pwrite_segments != NULL
                       : node->drv->pread_segments != NULL;

    /* A filter without its own I/O passes the pieces down unchanged. */
    bool own_io = write ? node->drv->pwrite != NULL
                        : node->drv->pread != NULL;
    int ret = 0;

    if (!batch && !own_io && passthrough_child(node)) {
        return block_segments(passthrough_child(node), seg, n, flags, write);
    }
    while (n > 0 && ret == 0) {
        unsigned k = MIN(n, BLOCK_MAX_SEGMENTS);

        if (batch && k > 1 && segments_fit(node, seg, k, flags, write)) {
            ret = segments_to_driver(node, seg, k, flags, write);
        } else {
            for (unsigned i = 0; i < k && ret == 0; i++) {
                ret = write ? block_pwrite(node, seg[i].offset, seg[i].bytes,
                                           seg[i].buf, flags)
                            : block_pread(node, seg[i].offset, seg[i].bytes,
                                          seg[i].buf, flags);
            }
        }
        seg += k;
        n -= k;
    }
    return ret;
}

int
block_pread_segments(struct block_node *node, const struct block_segment *seg,
                     unsigned n, unsigned flags)
{
    return block_segments(node, seg, n, flags, false);
}

int
block_pwrite_segments(struct block_node *node,
                      const struct block_segment *seg, unsigned n,
                      unsigned flags)
{
    return block_segments(node, seg, n, flags, true);
}

/* Write zeroes from a buffer, for drivers that cannot zero efficiently. */
static int
zeroes_by_writing(struct block_node *node, uint64_t offset, uint64_t bytes,
                  unsigned flags)
{
    uint64_t chunk = MIN(bytes, ZERO_CHUNK);
    void *zeroes;
    int ret = 0;

    if (flags & BLOCK_REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    zeroes = bounce_alloc(node, chunk);
    if (!zeroes) {
        return -ENOMEM;
    }
    memset(zeroes, 0, chunk);
    while (bytes > 0 && ret == 0) {
        uint64_t n = MIN(bytes, chunk);

        ret = drv_pwrite(node, offset, n, zeroes, flags & BLOCK_REQ_FUA);
        offset += n;
        bytes -= n;
    }
    free(zeroes);
    return ret;
}

/* Zero a range through the driver, in pieces of max_pwrite_zeroes. */
static int
zeroes_aligned(struct block_node *node, uint64_t offset, uint64_t bytes,
               unsigned flags)
{
    uint64_t max = node->limits.max_pwrite_zeroes;
    unsigned drv_flags = flags & (node->supported_zero_flags |
                                  BLOCK_REQ_MAY_UNMAP | BLOCK_REQ_NO_FALLBACK);
    int ret = 0;

    /* Zeroing instead would wipe what others wrote into the range. */
    if ((flags & BLOCK_REQ_EXTEND) &&
        !(node->supported_zero_flags & BLOCK_REQ_EXTEND)) {
        return -ENOTSUP;
    }
    if (!node->drv->pwrite_zeroes) {
        struct block_node *child = passthrough_child(node);

        if (child && !node->drv->pwrite) {
            return block_pwrite_zeroes(child, offset, bytes, flags);
        }
        return zeroes_by_writing(node, offset, bytes, flags);
    }
    serial_enter(node);
    while (bytes > 0 && ret == 0) {
        uint64_t n = max ? MIN(bytes, max) : bytes;

        ret = node->drv->pwrite_zeroes(node, offset, n, drv_flags);
        if (ret == 0) {
            offset += n;
            bytes -= n;
        }
    }
    serial_leave(node);
    if (ret == -ENOTSUP && !(flags & BLOCK_REQ_EXTEND)) {
        /* The driver cannot zero this range cheaply: write zeroes. */
        return zeroes_by_writing(node, offset, bytes, flags);
    }
    if (ret == 0 && (flags & BLOCK_REQ_FUA) &&
        !(drv_flags & BLOCK_REQ_FUA)) {
        ret = flush_node(node, true);
    }
    return ret;
}

/*
 * Zero a range whose ends are aligned to request_alignment: pieces that are
 * not aligned to the driver's preferred zero alignment are still offered to
 * the driver on their own (it may zero them cheaply, e.g. qcow2
 * subclusters), as QEMU does.
 */
static int
zeroes_split(struct block_node *node, uint64_t offset, uint64_t bytes,
             unsigned flags)
{
    uint64_t align = MAX(node->limits.pwrite_zeroes_alignment, 1);
    uint64_t end = offset + bytes;
    int ret = 0;

    while (offset < end && ret == 0) {
        uint64_t next = MIN(align_up(offset + 1, align), end);

        if (is_aligned(offset, align) && end - offset >= align) {
            next = align_down(end, align);
        }
        ret = zeroes_aligned(node, offset, next - offset, flags);
        offset = next;
    }
    return ret;
}

int
block_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                    unsigned flags)
{
    uint64_t align = node->limits.request_alignment;
    uint64_t end = offset + bytes;
    uint64_t a_off, a_end, mid_start, mid_end;
    struct block_tracked_req req;
    bool aligned;
    int ret;

    ret = check_write_range(node, offset, bytes);
    if (ret < 0 || bytes == 0) {
        return ret;
    }
    if (!node->discard_unmap) {
        flags &= ~BLOCK_REQ_MAY_UNMAP;
    }
    align_range(node, offset, end, &a_off, &a_end);
    aligned = a_off == offset && a_end == end;
    if (!aligned && (flags & BLOCK_REQ_EXTEND)) {
        return -EINVAL;         /* its partial blocks would be written */
    }
    tracked_begin(node, &req, a_off, a_end - a_off,
                  !aligned || (flags & BLOCK_REQ_SERIALISING));
    flags &= ~BLOCK_REQ_SERIALISING;
    /* Partial blocks at either end are written as data. */
    mid_start = a_off < offset ? MIN(a_off + align, a_end) : offset;
    mid_end = MAX(end < a_end ? align_down(end, align) : end, mid_start);
    if (a_off < offset) {
        uint64_t head_end = MIN(mid_start, end);

        ret = pwrite_rmw(node, offset, head_end - offset, NULL,
                         flags & BLOCK_REQ_FUA, a_off, mid_start);
    }
    if (ret == 0 && mid_end > mid_start) {
        node_event(node, "pwritev_zero");
        ret = zeroes_split(node, mid_start, mid_end - mid_start, flags);
        node_event(node, "pwritev_done");
    }
    if (ret == 0 && end > mid_end && end < a_end) {
        uint64_t from = MAX(mid_end, offset);

        ret = pwrite_rmw(node, from, end - from, NULL,
                         flags & BLOCK_REQ_FUA, align_down(from, align),
                         a_end);
    }
    if (ret == 0) {
        grow_size(node, end);
        write_done(node, offset, bytes);
    }
    tracked_end(node, &req);
    return ret;
}

int
block_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    uint64_t align = MAX(node->limits.pdiscard_alignment,
                         node->limits.request_alignment);
    uint64_t max = node->limits.max_pdiscard;
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t start, end;
    struct block_tracked_req req;
    int ret = 0;

    if (range_exceeds(offset, bytes, INT64_MAX)) {
        return -EINVAL;
    }
    if (node->read_only) {
        return -EPERM;
    }
    /* discard=ignore (the default): a discard is a no-op, as in QEMU. */
    if (!node->discard_unmap || bytes == 0 || offset >= size) {
        return 0;
    }
    bytes = MIN(bytes, size - offset);
    /* Discard is advisory: shrink to whole aligned blocks, keeping the
     * partial block at the very end of the node. */
    start = align_up(offset, align);
    end = offset + bytes == size ? size : align_down(offset + bytes, align);
    if (start >= end) {
        return 0;
    }
    tracked_begin(node, &req, start, end - start, false);
    if (!node->drv->pdiscard) {
        struct block_node *child = passthrough_child(node);

        if (child && node->drv->kind == BLOCK_KIND_FILTER) {
            ret = block_pdiscard(child, start, end - start);
        }
    } else {
        serial_enter(node);
        for (uint64_t off = start; off < end && ret == 0;) {
            uint64_t n = max ? MIN(end - off, max) : end - off;

            ret = node->drv->pdiscard(node, off, n);
            /* A driver that cannot discard just keeps the data. */
            if (ret == -ENOTSUP) {
                ret = 0;
            }
            off += n;
        }
        serial_leave(node);
    }
    if (ret == 0) {
        write_done(node, start, end - start);
    }
    tracked_end(node, &req);
    return ret;
}

/* The flush itself; the caller is the node's only flusher. */
static int
flush_one(struct block_node *node)
{
    /* Every write that completed before the flush starts is covered. */
    uint64_t gen = __atomic_load_n(&node->write_gen, __ATOMIC_ACQUIRE);
    struct block_child *c;
    int ret = 0;

    if (node->drv->flush && !node->cache_no_flush) {
        serial_enter(node);
        ret = node->drv->flush(node);
        serial_leave(node);
        if (ret < 0) {
            return ret;
        }
    }
    /* Then everything below, as QEMU's bdrv_co_flush does; but a filter
     * over several children (quorum) flushes them itself and votes on the
     * results, like QEMU's "one driver function writes back all layers". */
    if (!(node->drv->flush && node->drv->kind == BLOCK_KIND_FILTER &&
          !node->file)) {
        TAILQ_FOREACH(c, &node->children, child_link) {
            /* The children this node writes (QEMU's rule), and any child
             * written since its last flush: permissions follow what the
             * parents hold now, not what was written before. */
            if ((c->perm & (BLOCK_PERM_WRITE | BLOCK_PERM_WRITE_UNCHANGED)) ||
                __atomic_load_n(&c->node->write_gen, __ATOMIC_ACQUIRE) !=
                __atomic_load_n(&c->node->flushed_gen, __ATOMIC_ACQUIRE)) {
                ret = block_flush(c->node);
                if (ret < 0) {
                    return ret;
                }
            }
        }
    }
    /* Writes that completed during the flush keep the next one due. */
    uint64_t cur = __atomic_load_n(&node->flushed_gen, __ATOMIC_RELAXED);
    while (cur < gen &&
           !__atomic_compare_exchange_n(&node->flushed_gen, &cur, gen, false,
                                        __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
    }
    return 0;
}

/*
 * Flush node and what is below it.  Unless forced, a node with nothing
 * written through it since its last flush is skipped (QEMU skips such
 * flushes too, and blkdebug's flush events with them).  FUA emulation
 * forces: its write has not been counted yet when it flushes.
 *
 * One flush at a time per node, as QEMU's flushing generation: concurrent
 * flushes (several clients, or a client and qcow2's ordering flushes)
 * wait for the one in flight, and each then needs its own only if writes
 * it must cover completed after that one started.  So N clients flushing
 * at once cost about two device flushes, not N.
 */
static int
flush_node(struct block_node *node, bool force)
{
    uint64_t gen = __atomic_load_n(&node->write_gen, __ATOMIC_ACQUIRE);
    int ret;

    if (!force &&
        gen == __atomic_load_n(&node->flushed_gen, __ATOMIC_ACQUIRE)) {
        return 0;
    }
    mutex_lock(&node->req_lock);
    while (node->flushing) {
        cond_wait(&node->req_cond, &node->req_lock);
    }
    if (!force &&
        gen <= __atomic_load_n(&node->flushed_gen, __ATOMIC_ACQUIRE)) {
        mutex_unlock(&node->req_lock);
        return 0;           /* the flush we waited for covered our writes */
    }
    node->flushing = true;
    mutex_unlock(&node->req_lock);
    ret = flush_one(node);
    mutex_lock(&node->req_lock);
    node->flushing = false;
    cond_broadcast(&node->req_cond);
    mutex_unlock(&node->req_lock);
    return ret;
}

int
block_flush(struct block_node *node)
{
    return flush_node(node, false);
}

/* ---- Block status ----------------------------------------------------- */

/* One layer's answer, following RECURSE through filters and raw. */
static int
layer_status(struct block_node *node, uint64_t offset, uint64_t bytes,
             uint64_t *pnum, uint64_t *map, struct block_node **file)
{
    int ret;

    if (node->drv->block_status) {
        ret = node->drv->block_status(node, offset, bytes, pnum, map, file);
    } else if (node->drv->kind == BLOCK_KIND_PROTOCOL || !node->file) {
        *pnum = bytes;
        *map = offset;
        *file = node;
        ret = BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    } else {
        *pnum = bytes;
        *map = offset;
        *file = node->file->node;
        ret = BLOCK_STATUS_RECURSE;
    }
    if (ret < 0) {
        return ret;
    }
    assert(*pnum > 0 && *pnum <= bytes);
    return ret;
}

static int status_above(struct block_node *node, uint64_t offset,
                        uint64_t bytes, uint64_t *pnum,
                        struct block_status_info *info, int depth);

/*
 * Data a format maps to [map, +*pnum) of file: does the file read it as
 * zeroes (a hole, as in preallocated clusters never written)?  Only when
 * the driver says ASK_FILE: QEMU asks the file too, only for qcow2 images
 * with metadata preallocation.  Clips *pnum to what the file tells;
 * errors tell nothing.
 */
static int
data_in_hole(struct block_node *file, uint64_t map, uint64_t *pnum)
{
    struct block_status_info info = { 0 };
    uint64_t fnum = 0;
    int ret;

    if (map >= (uint64_t)block_getlength(file)) {
        return 0;       /* past the file's end: raw's last sector */
    }
    ret = status_above(file, map, *pnum, &fnum, &info, 1);

    if (ret < 0) {
        return 0;
    }
    *pnum = MIN(*pnum, fnum);
    return ret & BLOCK_STATUS_ZERO;
}

static int
status_above(struct block_node *node, uint64_t offset, uint64_t bytes,
             uint64_t *pnum, struct block_status_info *info, int depth)
{
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t map = 0;
    struct block_node *file = NULL;
    int ret;

    if (offset >= size) {
        /* Beyond the end of a (shorter) backing file: zeroes. */
        *pnum = bytes;
        info->flags = BLOCK_STATUS_ZERO;
        info->depth = 0;
        return info->flags;
    }
    bytes = MIN(bytes, size - offset);
    ret = layer_status(node, offset, bytes, pnum, &map, &file);
    if (ret < 0) {
        return ret;
    }
    if (ret & BLOCK_STATUS_RECURSE) {
        /* Filters and raw do not count as a layer. */
        return status_above(file, map, *pnum, pnum, info, depth);
    }
    if ((ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO |
                BLOCK_STATUS_OFFSET_VALID | BLOCK_STATUS_ASK_FILE)) ==
        (BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID |
         BLOCK_STATUS_ASK_FILE) &&
        file && file != node) {
        ret |= data_in_hole(file, map, pnum);
    }
    if (ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO)) {
        info->flags = (ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO |
                              BLOCK_STATUS_OFFSET_VALID)) |
                      BLOCK_STATUS_ALLOCATED;
        info->node = node;
        info->map = map;
        info->file = file;
        info->depth = depth;
        return info->flags;
    }
    if (node->backing) {
        return status_above(node->backing->node, offset, *pnum, pnum, info,
                            depth + 1);
    }
    info->flags = BLOCK_STATUS_ZERO;
    info->depth = 0;
    return info->flags;
}

int
block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
             uint64_t *pnum, struct block_status_info *info)
{
    struct block_status_info local;

    if (!info) {
        info = &local;
    }
    memset(info, 0, sizeof(*info));
    if (bytes == 0 || range_exceeds(offset, bytes, INT64_MAX)) {
        return -EINVAL;
    }
    return status_above(node, offset, bytes, pnum, info, 1);
}

int
block_is_allocated(struct block_node *node, uint64_t offset, uint64_t bytes,
                   uint64_t *pnum)
{
    uint64_t size = (uint64_t)block_getlength(node);
    uint64_t map;
    struct block_node *file;
    int ret;

    if (offset >= size) {
        *pnum = bytes;
        return 0;
    }
    bytes = MIN(bytes, size - offset);
    for (;;) {
        ret = layer_status(node, offset, bytes, pnum, &map, &file);
        if (ret < 0) {
            return ret;
        }
        if (!(ret & BLOCK_STATUS_RECURSE)) {
            return (ret & (BLOCK_STATUS_DATA | BLOCK_STATUS_ZERO)) ? 1 : 0;
        }
        node = file;
        offset = map;
        bytes = *pnum;
    }
}

/* ---- Control-ish operations ------------------------------------------- */

int
block_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    int ret;

    if (!node->drv->truncate) {
        err_setf(errp, "Driver '%s' cannot resize", node->drv->name);
        return -ENOTSUP;
    }
    if (node->read_only) {
        err_setf(errp, "Block node '%s' is read-only", node->node_name);
        return -EPERM;
    }
    ret = node->drv->truncate(node, length, errp);
    if (ret == 0) {
        /* Metadata changed: the next flush must not be skipped. */
        int64_t len = node->drv->getlength ? node->drv->getlength(node)
                                           : (int64_t)length;

        /* The driver's view (raw counts whole sectors). */
        __atomic_add_fetch(&node->write_gen, 1, __ATOMIC_RELEASE);
        __atomic_store_n(&node->size, len >= 0 ? (uint64_t)len : length,
                         __ATOMIC_RELAXED);
        block_node_truncate_bitmaps(node, length);
    }
    return ret;
}

int
block_make_empty(struct block_node *node, struct err **errp)
{
    int ret;

    if (!node->drv->make_empty) {
        err_setf(errp, "Driver '%s' does not support emptying an image",
                 node->drv->name);
        return -ENOTSUP;
    }
    ret = node->drv->make_empty(node, errp);
    /* Even a failed attempt may have changed metadata: flush it next. */
    __atomic_add_fetch(&node->write_gen, 1, __ATOMIC_RELEASE);
    return ret;
}

int64_t
block_allocated_size(struct block_node *node)
{
    if (node->drv->allocated_size) {
        return node->drv->allocated_size(node);
    }
    if (node->file) {
        return block_allocated_size(node->file->node);
    }
    return -ENOTSUP;
}

/* ---- Handles ---------------------------------------------------------- */

static int
handle_check(struct block_handle *h, uint64_t offset, uint64_t bytes)
{
    if (range_exceeds(offset, bytes,
                      (uint64_t)block_getlength(block_handle_node(h)))) {
        return -EIO;
    }
    return 0;
}

int64_t
block_handle_getlength(struct block_handle *h)
{
    int64_t len;

    block_graph_enter();
    len = block_getlength(block_handle_node(h));
    block_graph_leave();
    return len;
}

int
block_handle_pread(struct block_handle *h, uint64_t offset, uint64_t bytes,
                   void *buf, unsigned flags)
{
    int ret;

    block_graph_enter();
    ret = handle_check(h, offset, bytes);
    if (ret == 0) {
        ret = block_pread(block_handle_node(h), offset, bytes, buf, flags);
    }
    block_graph_leave();
    return ret;
}

int
block_handle_pwrite(struct block_handle *h, uint64_t offset, uint64_t bytes,
                    const void *buf, unsigned flags)
{
    int ret;

    block_graph_enter();
    ret = handle_check(h, offset, bytes);
    if (ret == 0 && !(h->child.perm & BLOCK_PERM_WRITE)) {
        ret = -EPERM;
    }
    if (ret == 0) {
        ret = block_pwrite(block_handle_node(h), offset, bytes, buf, flags);
    }
    block_graph_leave();
    return ret;
}

int
block_handle_pwrite_zeroes(struct block_handle *h, uint64_t offset,
                           uint64_t bytes, unsigned flags)
{
    int ret;

    block_graph_enter();
    ret = handle_check(h, offset, bytes);
    if (ret == 0 && !(h->child.perm & BLOCK_PERM_WRITE)) {
        ret = -EPERM;
    }
    if (ret == 0) {
        ret = block_pwrite_zeroes(block_handle_node(h), offset, bytes, flags);
    }
    block_graph_leave();
    return ret;
}

int
block_handle_pdiscard(struct block_handle *h, uint64_t offset,
                      uint64_t bytes)
{
    int ret;

    block_graph_enter();
    ret = handle_check(h, offset, bytes);
    if (ret == 0 && !(h->child.perm & BLOCK_PERM_WRITE)) {
        ret = -EPERM;
    }
    if (ret == 0) {
        ret = block_pdiscard(block_handle_node(h), offset, bytes);
    }
    block_graph_leave();
    return ret;
}

int
block_handle_flush(struct block_handle *h)
{
    int ret;

    block_graph_enter();
    ret = block_flush(block_handle_node(h));
    block_graph_leave();
    return ret;
}

int
block_handle_truncate(struct block_handle *h, uint64_t length,
                      struct err **errp)
{
    int ret;

    if (!(h->child.perm & BLOCK_PERM_RESIZE)) {
        err_setf(errp, "%s may not resize node '%s'", h->owner,
                 block_handle_node(h)->node_name);
        return -EPERM;
    }
    block_graph_enter();
    ret = block_truncate(block_handle_node(h), length, errp);
    block_graph_leave();
    return ret;
}

int
block_handle_status(struct block_handle *h, uint64_t offset, uint64_t bytes,
                    uint64_t *pnum, struct block_status_info *info)
{
    int ret;

    block_graph_enter();
    ret = handle_check(h, offset, bytes);
    if (ret == 0) {
        ret = block_status(block_handle_node(h), offset, bytes, pnum, info);
    }
    block_graph_leave();
    return ret;
}
