/* SPDX-License-Identifier: MIT */
/*
 * The "blklog" filter: a disk that records every change made to it, for
 * power-loss tests (tests/func/powerloss.py replays the record into crash
 * images).  Options: "file" (the child), "log" (the record's file name,
 * appended to) and "disk" (the name records carry; default the node-name).
 * Several nodes, in one process or several, may share one log: then the
 * log orders the requests of all of them.
 *
 * Every write, write-zeroes, discard, flush and truncate appends a record
 * when it is passed to the child and a DONE record with its result when
 * the child returned, so the log tells what a disk may hold at each
 * instant: a request may have reached the medium (in any part) once it
 * started; it is durable once a flush that started after it was DONE is
 * DONE itself.  Reads are not recorded.  FUA is left to the core, which
 * turns it into a (recorded) flush.
 *
 * Record layout, little-endian, one write(2) each on an O_APPEND file, so
 * records of concurrent requests never interleave:
 *   0  "LSBL"          magic
 *   4  u8  type        enum blklog_type below
 *   5  u8  name_len    bytes of the disk name after the header
 *   6  u16 flags       ZERO: BLKLOG_MAY_UNMAP
 *   8  i32 ret         DONE: 0 or -errno
 *   12 u32 reserved
 *   16 u64 id          pairs a DONE with its request (per disk)
 *   24 u64 offset      TRUNCATE and OPEN: the length
 *   32 u64 bytes       WRITE: the data follows the name
 *   40 name, then data
 *
 * No locks: the request id is an atomic counter, the log an O_APPEND fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lockstep/driver.h"
#include "util.h"

enum blklog_type {
    BLKLOG_OPEN = 1,
    BLKLOG_WRITE = 2,
    BLKLOG_ZERO = 3,
    BLKLOG_DISCARD = 4,
    BLKLOG_FLUSH = 5,
    BLKLOG_TRUNCATE = 6,
    BLKLOG_DONE = 7,
};

#define BLKLOG_MAY_UNMAP 0x1
#define BLKLOG_HEADER 40
#define BLKLOG_MAX_NAME 255

struct blklog_state {
    int fd;
    char *disk;
    uint64_t next_id;           /* atomic */
};

static const struct block_opt blklog_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"log", BLOCK_OPT_STRING, true, NULL},
    {"disk", BLOCK_OPT_STRING, false, NULL},
    {NULL, 0, false, NULL},
};

static void
put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* Append one record; -EIO when the log cannot take it. */
static int
log_record(struct blklog_state *s, enum blklog_type type, unsigned flags,
           int ret, uint64_t id, uint64_t offset, uint64_t bytes,
           const void *data)
{
    uint8_t h[BLKLOG_HEADER] = { 'L', 'S', 'B', 'L' };
    size_t name_len = strlen(s->disk);
    struct iovec iov[3] = {
        { h, sizeof(h) },
        { s->disk, name_len },
        { (void *)data, data ? bytes : 0 },
    };
    size_t total = sizeof(h) + name_len + (data ? bytes : 0);
    ssize_t r;

    h[4] = (uint8_t)type;
    h[5] = (uint8_t)name_len;
    put_le(h + 6, flags, 2);
    put_le(h + 8, (uint32_t)ret, 4);
    put_le(h + 16, id, 8);
    put_le(h + 24, offset, 8);
    put_le(h + 32, bytes, 8);
    do {
        r = writev(s->fd, iov, 3);
    } while (r < 0 && errno == EINTR);
    return r == (ssize_t)total ? 0 : -EIO;
}

/* The request record; *id for its DONE. */
static int
log_start(struct blklog_state *s, enum blklog_type type, unsigned flags,
          uint64_t offset, uint64_t bytes, const void *data, uint64_t *id)
{
    *id = __atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED);
    return log_record(s, type, flags, 0, *id, offset, bytes, data);
}

/* The DONE record; the request's result wins over a log failure. */
static int
log_done(struct blklog_state *s, uint64_t id, int ret)
{
    int lret = log_record(s, BLKLOG_DONE, 0, ret, id, 0, 0, NULL);

    return ret < 0 ? ret : lret;
}

static int
blklog_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct blklog_state *s = node->opaque;
    const char *log = block_opt_str(options, "log", NULL);
    const char *disk = block_opt_str(options, "disk", node->node_name);
    struct block_node *child;

    if (strlen(disk) > BLKLOG_MAX_NAME) {
        err_setf(errp, "blklog: the disk name is longer than %d bytes",
                 BLKLOG_MAX_NAME);
        return -EINVAL;
    }
    s->fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        int e = errno;

        err_setf_errno(errp, e, "Could not open the log '%s'", log);
        return -e;
    }
    s->disk = xstrdup(disk);
    if (!block_node_open_child(node, options, "file", errp)) {
        goto fail;
    }
    child = node->file->node;
    node->limits = child->limits;
    node->supported_write_flags = 0;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP |
                                 (child->supported_zero_flags &
                                  BLOCK_REQ_EXTEND);
    if (log_record(s, BLKLOG_OPEN, 0, 0, 0,
                   (uint64_t)MAX(block_getlength(child), 0), 0, NULL) < 0) {
        err_setf(errp, "Could not write to the log '%s'", log);
        goto fail;
    }
    return 0;

fail:
    close(s->fd);
    free(s->disk);
    return -EINVAL;
}

static void
blklog_close(struct block_node *node)
{
    struct blklog_state *s = node->opaque;

    close(s->fd);
    free(s->disk);
}

static int
blklog_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
              const void *buf, unsigned flags)
{
    struct blklog_state *s = node->opaque;
    uint64_t id;
    int ret = log_start(s, BLKLOG_WRITE, 0, offset, bytes, buf, &id);

    if (ret < 0) {
        return ret;
    }
    ret = block_pwrite(node->file->node, offset, bytes, buf, flags);
    return log_done(s, id, ret);
}

static int
blklog_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                     unsigned flags)
{
    struct blklog_state *s = node->opaque;
    uint64_t id;
    int ret;

    /* Changes no byte (only the length, over what reads as zeroes): a
     * crash image is the same with it or without, nothing to replay. */
    if (flags & BLOCK_REQ_EXTEND) {
        return block_pwrite_zeroes(node->file->node, offset, bytes, flags);
    }
    ret = log_start(s, BLKLOG_ZERO,
                    (flags & BLOCK_REQ_MAY_UNMAP) ? BLKLOG_MAY_UNMAP : 0,
                    offset, bytes, NULL, &id);
    if (ret < 0) {
        return ret;
    }
    ret = block_pwrite_zeroes(node->file->node, offset, bytes, flags);
    return log_done(s, id, ret);
}

static int
blklog_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    struct blklog_state *s = node->opaque;
    uint64_t id;
    int ret = log_start(s, BLKLOG_DISCARD, 0, offset, bytes, NULL, &id);

    if (ret < 0) {
        return ret;
    }
    ret = block_pdiscard(node->file->node, offset, bytes);
    return log_done(s, id, ret);
}

/* The child is flushed here, between the two records; the core's flush
 * of it afterwards finds nothing new and does nothing. */
static int
blklog_flush(struct block_node *node)
{
    struct blklog_state *s = node->opaque;
    uint64_t id;
    int ret = log_start(s, BLKLOG_FLUSH, 0, 0, 0, NULL, &id);

    if (ret < 0) {
        return ret;
    }
    ret = block_flush(node->file->node);
    return log_done(s, id, ret);
}

static int
blklog_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    struct blklog_state *s = node->opaque;
    uint64_t id;
    int ret = log_start(s, BLKLOG_TRUNCATE, 0, length, 0, NULL, &id);

    if (ret < 0) {
        err_setf(errp, "Could not write to the blklog log");
        return ret;
    }
    ret = block_truncate(node->file->node, length, errp);
    return log_done(s, id, ret);
}

const struct block_driver blklog_driver = {
    .name = "blklog",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct blklog_state),
    .options = blklog_opts,
    .open = blklog_open,
    .close = blklog_close,
    .pwrite = blklog_pwrite,
    .pwrite_zeroes = blklog_pwrite_zeroes,
    .pdiscard = blklog_pdiscard,
    .flush = blklog_flush,
    .truncate = blklog_truncate,
};
