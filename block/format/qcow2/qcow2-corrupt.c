/* SPDX-License-Identifier: MIT */
/*
 * Never make a damaged image worse.  Every metadata write of the driver
 * goes through qcow2_meta_pwrite(), which first compares the target range
 * with every other metadata structure the driver knows (header, L1 table,
 * L2 tables, refcount table, refcount blocks, bitmap directory and bitmap
 * tables), as QEMU's overlap-check does in its default "cached" mode: all
 * from the in-memory tables, no I/O.  An overlap means the image lies about its layout (an L1
 * entry naming the refcount table, a refcount of 0 on a table, ...).
 * Writing on would destroy what "qemu-img check -r all" needs to repair
 * it, so instead the image is marked corrupt: the corrupt bit in the
 * header (v3), a BLOCK_IMAGE_CORRUPTED event, the request fails with -EIO
 * and so does every later write, metadata writes included (dirty cache
 * entries are never written back).  Reads go on.  The same happens for
 * metadata that breaks the format (qcow2_signal_corruption() callers).
 * All functions: caller holds s->lock.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "block/format/qcow2/qcow2-endian.h"
#include "block/format/qcow2/qcow2-int.h"
#include "runtime/event.h"
#include "util.h"

/* The names QEMU's overlap-check messages use, by kind bit. */
static const char *
meta_name(unsigned kind)
{
    switch (kind) {
    case QCOW2_META_HEADER:
        return "qcow2_header";
    case QCOW2_META_L1:
        return "active L1 table";
    case QCOW2_META_L2:
        return "active L2 table";
    case QCOW2_META_REFTABLE:
        return "refcount table";
    case QCOW2_META_REFBLOCK:
        return "refcount block";
    case QCOW2_META_BITMAP_DIR:
        return "bitmap directory";
    default:
        return "bitmap table";
    }
}

/* The bitmap directory (first range) and tables (qcow2-bitmap.c). */
static unsigned
bitmap_overlap(struct qcow2_state *s, unsigned ign, uint64_t off,
               uint64_t len)
{
    CLEANUP_FREE struct qcow2_host_range *r = NULL;
    size_t n = qcow2_bitmap_metadata_ranges(s, &r);

    for (size_t i = 0; i < n; i++) {
        unsigned kind = i == 0 ? QCOW2_META_BITMAP_DIR
                               : QCOW2_META_BITMAP_TABLE;

        if (!(ign & kind) && r[i].bytes &&
            ranges_overlap(off, len, r[i].offset, r[i].bytes)) {
            return kind;
        }
    }
    return 0;
}

unsigned
qcow2_overlap(struct qcow2_state *s, unsigned ign, uint64_t off, uint64_t len)
{
    uint64_t cs = s->cluster_size;

    if (!(ign & QCOW2_META_HEADER) && ranges_overlap(off, len, 0, cs)) {
        return QCOW2_META_HEADER;
    }
    if (!(ign & QCOW2_META_L1) && s->l1_size &&
        ranges_overlap(off, len, s->l1_offset,
                       align_up((uint64_t)s->l1_size * 8, cs))) {
        return QCOW2_META_L1;
    }
    if (!(ign & QCOW2_META_REFTABLE) &&
        ranges_overlap(off, len, s->reftable_offset,
                       (uint64_t)s->reftable_clusters * cs)) {
        return QCOW2_META_REFTABLE;
    }
    assert(s->reftable_used <= s->reftable_entries);
    for (uint64_t i = 0; !(ign & QCOW2_META_REFBLOCK) &&
         i < s->reftable_used; i++) {
        if (s->reftable[i] && ranges_overlap(off, len, s->reftable[i], cs)) {
            return QCOW2_META_REFBLOCK;
        }
    }
    for (uint32_t i = 0; !(ign & QCOW2_META_L2) && i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_L1E_OFFSET_MASK;

        if (l2 && ranges_overlap(off, len, l2, cs)) {
            return QCOW2_META_L2;
        }
    }
    return bitmap_overlap(s, ign, off, len);
}

bool
qcow2_overlaps_metadata(struct qcow2_state *s, uint64_t off, uint64_t len)
{
    return qcow2_overlap(s, 0, off, len) != 0;
}

int
qcow2_overlap_refuse(struct qcow2_state *s, unsigned ign, uint64_t off,
                     uint64_t len)
{
    unsigned kind = qcow2_overlap(s, ign, off, len);

    if (!kind) {
        return 0;
    }
    qcow2_signal_corruption(s, (int64_t)off, (int64_t)len,
                            "Preventing invalid write on metadata (overlaps "
                            "with %s)", meta_name(kind));
    return -EIO;
}

int
qcow2_meta_pwrite(struct qcow2_state *s, unsigned ign, uint64_t off,
                  uint64_t len, const void *buf)
{
    int ret;

    if (s->corrupt) {
        return -EIO;
    }
    ret = qcow2_overlap_refuse(s, ign, off, len);
    return ret < 0 ? ret : block_pwrite(s->file, off, len, buf, 0);
}

/*
 * BLOCK_IMAGE_CORRUPTED with QEMU's members, in its order; no device names
 * here.  Emitted under s->lock: the sink takes only leaf locks
 * (runtime/event.h), and the event must not wait for the request.  In a
 * program without a sink (the tools) it is dropped; the message still
 * goes to stderr.
 */
static void
send_event(struct qcow2_state *s, const char *msg, int64_t offset,
           int64_t size, bool fatal)
{
    struct event *ev = event_new("BLOCK_IMAGE_CORRUPTED");

    event_add_str(ev, "device", "");
    event_add_str(ev, "node-name", s->node->node_name);
    event_add_str(ev, "msg", msg);
    if (offset >= 0) {
        event_add_int(ev, "offset", offset);
    }
    if (size >= 0) {
        event_add_int(ev, "size", size);
    }
    event_add_bool(ev, "fatal", fatal);
    event_emit(ev);
}

/* Set the corrupt bit on disk: the one write allowed once corrupt. */
static void
mark_corrupt_on_disk(struct qcow2_state *s)
{
    uint8_t be[8];

    s->h.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    st_be64(be, s->h.incompatible_features);
    if (block_pwrite(s->file, QCOW2_HDR_OFF_INCOMPAT, 8, be, 0) == 0) {
        block_flush(s->file);
    }
}

void
qcow2_signal_corruption(struct qcow2_state *s, int64_t offset, int64_t size,
                        const char *fmt, ...)
{
    /* A read-only node cannot be marked; QEMU calls that non-fatal. */
    bool fatal = !s->node->read_only;
    CLEANUP_FREE char *msg = NULL;
    va_list ap;

    va_start(ap, fmt);
    msg = xvasprintf(fmt, ap);
    va_end(ap);
    /* One report per open, as QEMU suppresses the following ones. */
    if (!s->signaled_corruption) {
        s->signaled_corruption = true;
        fprintf(stderr, "qcow2: %s: %s; further corruption events will be "
                "suppressed\n", fatal ? "Marking image as corrupt"
                                      : "Image is corrupt",
                msg);
        send_event(s, msg, offset, size, fatal);
    }
    if (fatal && !s->corrupt && s->h.version >= 3) {
        mark_corrupt_on_disk(s);
    }
    s->corrupt = true;
}
