/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-blk: a virtio-blk device (virtio 1.1, 5.2) on the vhost-user
 * back-end (vhost-user.c), and the export driver that creates it.
 *
 * Requests: IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES (with
 * unmap).  Data moves straight between guest memory and the block layer
 * when the request's data is one piece of guest memory (the usual case:
 * contiguous guest pages are contiguous in our mapping); a scattered
 * request goes through a bounce buffer.
 *
 * Write cache: with VIRTIO_BLK_F_FLUSH negotiated the device is
 * write-back (a write completes before it is stable, FLUSH makes it
 * stable) unless the driver turned the cache off through the config
 * space's writeback field (VIRTIO_BLK_F_CONFIG_WCE) or the export is
 * writethrough; otherwise every write is FUA, as the spec asks of a
 * device without FLUSH.  The writeback field says 1 from creation on
 * (0 for writethrough exports): VMMs read the config space before they
 * negotiate features and show the guest that copy, so a field that
 * changed at negotiation would have the guest skip its flushes.
 *
 * A request without room for its status byte or with a short header
 * breaks the device (NEEDS_RESET), as the spec says for malformed
 * requests; errors of the block layer become VIRTIO_BLK_S_IOERR.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>

#include "export/vhost-user-blk.h"
#include "export/vhost-user.h"
#include "util.h"

#define SECTOR 512
/* Config space answers. */
#define VUB_SEG_MAX        126          /* a queue of 128 minus 2 */
#define VUB_SIZE_MAX       (1U << 20)
#define VUB_MAX_DISCARD    (1U << 21)   /* sectors: 1 GiB */
/* A request's data larger than this fails (the bounce buffer). */
#define VUB_MAX_REQUEST    (64U << 20)
/* Moving this much data takes long (a 1 MiB copy between memory files
 * about 300 us) even where the block layer never sleeps: the queue's
 * next requests should not wait for it, so the poller role passes to
 * another thread first (thread_may_block()), at the cost of a wakeup. */
#define VUB_CONCURRENT_BYTES (128U << 10)

struct vub {
    char *id;
    char *path;                  /* to remove at deletion, or NULL */
    struct block_handle *h;
    bool writable;
    bool writethrough;
    uint32_t blk_size;
    uint16_t num_queues;
    struct vu_dev *dev;

    /* Set by the control thread while no queue runs; read by queues. */
    uint64_t features;
    bool writeback;              /* config field (CONFIG_WCE) */
};

static bool
has(const struct vub *b, unsigned bit)
{
    return b->features & (1ULL << bit);
}

/* Every write must be stable when it completes. */
static bool
write_through(const struct vub *b)
{
    return b->writethrough || !has(b, VIRTIO_BLK_F_FLUSH) ||
           (has(b, VIRTIO_BLK_F_CONFIG_WCE) &&
            !__atomic_load_n(&b->writeback, __ATOMIC_RELAXED));
}

/* ---- Device ops --------------------------------------------------------- */

static uint64_t
vub_features(void *opaque)
{
    struct vub *b = opaque;
    uint64_t f = 1ULL << VIRTIO_BLK_F_SIZE_MAX | 1ULL << VIRTIO_BLK_F_SEG_MAX |
                 1ULL << VIRTIO_BLK_F_BLK_SIZE | 1ULL << VIRTIO_BLK_F_FLUSH |
                 1ULL << VIRTIO_BLK_F_CONFIG_WCE | 1ULL << VIRTIO_BLK_F_MQ;

    if (b->writable) {
        f |= 1ULL << VIRTIO_BLK_F_DISCARD | 1ULL << VIRTIO_BLK_F_WRITE_ZEROES;
    } else {
        f |= 1ULL << VIRTIO_BLK_F_RO;
    }
    return f;
}

static void
vub_get_config(void *opaque, uint8_t *cfg, size_t size)
{
    struct vub *b = opaque;
    struct virtio_blk_config c;
    int64_t len = block_handle_getlength(b->h);

    memset(&c, 0, sizeof(c));
    c.capacity = htole64(len > 0 ? (uint64_t)len / SECTOR : 0);
    c.size_max = htole32(VUB_SIZE_MAX);
    c.seg_max = htole32(VUB_SEG_MAX);
    c.blk_size = htole32(b->blk_size);
    c.wce = __atomic_load_n(&b->writeback, __ATOMIC_RELAXED);
    c.num_queues = htole16(b->num_queues);
    c.max_discard_sectors = htole32(VUB_MAX_DISCARD);
    c.max_discard_seg = htole32(1);
    c.discard_sector_alignment = htole32(b->blk_size / SECTOR);
    c.max_write_zeroes_sectors = htole32(VUB_MAX_DISCARD);
    c.max_write_zeroes_seg = htole32(1);
    c.write_zeroes_may_unmap = 1;
    memcpy(cfg, &c, MIN(size, sizeof(c)));
}

static int
vub_set_config(void *opaque, uint32_t offset, const uint8_t *data,
               uint32_t size)
{
    struct vub *b = opaque;

    /* Only the writeback byte is the driver's to write. */
    if (offset != offsetof(struct virtio_blk_config, wce) || size != 1 ||
        !has(b, VIRTIO_BLK_F_CONFIG_WCE) || data[0] > 1) {
        return -EINVAL;
    }
    __atomic_store_n(&b->writeback, data[0] == 1, __ATOMIC_RELAXED);
    return 0;
}

/* A new driver: the cache mode starts from what the config space has
 * said since creation (VMMs read it before they negotiate features, and
 * keep that copy). */
static void
vub_set_features(void *opaque, uint64_t features)
{
    struct vub *b = opaque;

    b->features = features;
    __atomic_store_n(&b->writeback, !b->writethrough, __ATOMIC_RELAXED);
}

/* ---- Requests ----------------------------------------------------------- */

/* Copy len bytes at offset off of the iovec list into buf; false when
 * the list is shorter. */
static bool
iov_read(const struct iovec *iov, unsigned n, size_t off, void *buf,
         size_t len)
{
    uint8_t *p = buf;

    for (unsigned i = 0; i < n && len > 0; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = MIN(len, iov[i].iov_len - off);

        memcpy(p, (uint8_t *)iov[i].iov_base + off, k);
        p += k;
        len -= k;
        off = 0;
    }
    return len == 0;
}

static bool
iov_write(const struct iovec *iov, unsigned n, size_t off, const void *buf,
          size_t len)
{
    const uint8_t *p = buf;

    for (unsigned i = 0; i < n && len > 0; i++) {
        if (off >= iov[i].iov_len) {
            off -= iov[i].iov_len;
            continue;
        }
        size_t k = MIN(len, iov[i].iov_len - off);

        memcpy((uint8_t *)iov[i].iov_base + off, p, k);
        p += k;
        len -= k;
        off = 0;
    }
    return len == 0;
}

static size_t
iov_size(const struct iovec *iov, unsigned n)
{
    size_t s = 0;

    for (unsigned i = 0; i < n; i++) {
        s += iov[i].iov_len;
    }
    return s;
}

/*
 * The data of a request: [off, off + len) of an iovec list, as one
 * pointer: straight into guest memory when it lies in one piece, else a
 * new bounce buffer (*bounce, which the caller fills or drains and
 * frees).  NULL without memory.
 */
static void *
data_map(const struct iovec *iov, unsigned n, size_t off, size_t len,
         void **bounce)
{
    *bounce = NULL;
    for (unsigned i = 0; i < n; i++) {
        if (off < iov[i].iov_len) {
            if (len <= iov[i].iov_len - off) {
                return (uint8_t *)iov[i].iov_base + off;
            }
            break;
        }
        off -= iov[i].iov_len;
    }
    *bounce = malloc(len);
    return *bounce;
}

/* Range check in bytes: aligned to the logical block size, inside the
 * disk. */
static bool
range_ok(const struct vub *b, uint64_t sector, uint64_t bytes,
         uint64_t size)
{
    uint64_t off;

    if (sector > UINT64_MAX / SECTOR) {
        return false;
    }
    off = sector * SECTOR;
    return is_aligned(off, b->blk_size) && is_aligned(bytes, b->blk_size) &&
           !range_exceeds(off, bytes, size);
}

static int
do_read(struct vub *b, struct vu_req *req, uint64_t sector, size_t len,
        uint64_t size)
{
    const struct iovec *in = req->chain.iov + req->chain.nout;
    void *bounce, *p;
    int ret;

    if (!range_ok(b, sector, len, size) || len > VUB_MAX_REQUEST) {
        return -EINVAL;
    }
    if (len == 0) {
        return 0;
    }
    p = data_map(in, req->chain.nin, 0, len, &bounce);
    if (!p) {
        return -ENOMEM;
    }
    if (len >= VUB_CONCURRENT_BYTES) {
        thread_may_block();
    }
    ret = block_handle_pread(b->h, sector * SECTOR, len, p, 0);
    if (ret == 0 && bounce) {
        iov_write(in, req->chain.nin, 0, bounce, len);
    }
    free(bounce);
    return ret;
}

static int
do_write(struct vub *b, struct vu_req *req, uint64_t sector, size_t len,
         uint64_t size)
{
    const struct iovec *out = req->chain.iov;
    size_t hdr = sizeof(struct virtio_blk_outhdr);
    void *bounce, *p;
    int ret;

    if (!b->writable) {
        return -EPERM;
    }
    if (!range_ok(b, sector, len, size) || len > VUB_MAX_REQUEST) {
        return -EINVAL;
    }
    if (len == 0) {
        return 0;
    }
    p = data_map(out, req->chain.nout, hdr, len, &bounce);
    if (!p) {
        return -ENOMEM;
    }
    if (len >= VUB_CONCURRENT_BYTES) {
        thread_may_block();
    }
    if (bounce) {
        iov_read(out, req->chain.nout, hdr, bounce, len);
    }
    ret = block_handle_pwrite(b->h, sector * SECTOR, len, p,
                              write_through(b) ? BLOCK_REQ_FUA : 0);
    free(bounce);
    return ret;
}

/* DISCARD and WRITE_ZEROES: one segment (max_*_seg is 1). */
static int
do_discard_zeroes(struct vub *b, struct vu_req *req, uint32_t type,
                  size_t payload, uint64_t size, uint8_t *status)
{
    struct virtio_blk_discard_write_zeroes seg;
    uint64_t sector, bytes;
    uint32_t flags;
    int ret;

    if (!b->writable) {
        return -EPERM;
    }
    if (payload != sizeof(seg) ||
        !iov_read(req->chain.iov, req->chain.nout,
                  sizeof(struct virtio_blk_outhdr), &seg, sizeof(seg))) {
        *status = VIRTIO_BLK_S_UNSUPP;   /* more segments than offered */
        return 0;
    }
    sector = le64toh(seg.sector);
    bytes = (uint64_t)le32toh(seg.num_sectors) * SECTOR;
    flags = le32toh(seg.flags);
    if (le32toh(seg.num_sectors) > VUB_MAX_DISCARD ||
        (flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) ||
        (type == VIRTIO_BLK_T_DISCARD && flags)) {
        *status = VIRTIO_BLK_S_UNSUPP;
        return 0;
    }
    if (!range_ok(b, sector, bytes, size)) {
        return -EINVAL;
    }
    if (bytes == 0) {
        return 0;
    }
    if (type == VIRTIO_BLK_T_DISCARD) {
        ret = block_handle_pdiscard(b->h, sector * SECTOR, bytes);
        return ret == -ENOTSUP ? 0 : ret;   /* a hint */
    }
    return block_handle_pwrite_zeroes(
        b->h, sector * SECTOR, bytes,
        (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP ? BLOCK_REQ_MAY_UNMAP : 0) |
        (write_through(b) ? BLOCK_REQ_FUA : 0));
}

static void
vub_run(void *opaque, struct vu_req *req)
{
    struct vub *b = opaque;
    struct vu_chain *c = &req->chain;
    const struct iovec *in = c->iov + c->nout;
    struct virtio_blk_outhdr hdr;
    size_t out_len = iov_size(c->iov, c->nout);
    size_t in_len = iov_size(in, c->nin);
    size_t payload;
    uint8_t status = VIRTIO_BLK_S_OK;
    uint32_t written = 1, type;
    int64_t size;
    int ret = 0;

    if (in_len < 1) {
        vu_req_fail(req, "a request without room for its status");
        return;
    }
    if (!iov_read(c->iov, c->nout, 0, &hdr, sizeof(hdr))) {
        vu_req_fail(req, "a request header shorter than 16 bytes");
        return;
    }
    payload = out_len - sizeof(hdr);
    type = le32toh(hdr.type) & ~VIRTIO_BLK_T_BARRIER;
    size = block_handle_getlength(b->h);
    if (size < 0) {
        size = 0;
    }
    switch (type) {
    case VIRTIO_BLK_T_IN:
        ret = do_read(b, req, le64toh(hdr.sector), in_len - 1,
                      (uint64_t)size);
        if (ret == 0) {
            written += in_len - 1;
        }
        break;
    case VIRTIO_BLK_T_OUT:
        ret = do_write(b, req, le64toh(hdr.sector), payload,
                       (uint64_t)size);
        break;
    case VIRTIO_BLK_T_FLUSH:
        if (has(b, VIRTIO_BLK_F_FLUSH)) {
            ret = block_handle_flush(b->h);
        } else {
            status = VIRTIO_BLK_S_UNSUPP;
        }
        break;
    case VIRTIO_BLK_T_GET_ID: {
        char id[VIRTIO_BLK_ID_BYTES] = {0};
        size_t n = MIN(in_len - 1, sizeof(id));

        /* The export id, NUL-padded (not terminated at 20 bytes). */
        memcpy(id, b->id, MIN(strlen(b->id), sizeof(id)));
        iov_write(in, c->nin, 0, id, n);
        written += n;
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        if (!has(b, type == VIRTIO_BLK_T_DISCARD ? VIRTIO_BLK_F_DISCARD
                                                 : VIRTIO_BLK_F_WRITE_ZEROES)) {
            status = VIRTIO_BLK_S_UNSUPP;
            break;
        }
        ret = do_discard_zeroes(b, req, type, payload, (uint64_t)size,
                                &status);
        break;
    default:
        status = VIRTIO_BLK_S_UNSUPP;
        break;
    }
    if (ret < 0) {
        status = VIRTIO_BLK_S_IOERR;
    }
    iov_write(in, c->nin, in_len - 1, &status, 1);
    vu_req_complete(req, written);
}

static const struct vu_device_ops vub_ops = {
    .features = vub_features,
    .get_config = vub_get_config,
    .set_config = vub_set_config,
    .set_features = vub_set_features,
    .run = vub_run,
};

/* ---- The export driver -------------------------------------------------- */

static int
listen_unix(const char *path, struct err **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        err_setf(errp, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    /* A socket left by an earlier run is replaced, as QEMU does. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        unlink(path);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err_setf_errno(errp, errno, "Failed to create socket");
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        err_setf_errno(errp, errno, "Failed to bind socket to %s", path);
        close(fd);
        return -1;
    }
    if (listen(fd, 1) < 0) {
        err_setf_errno(errp, errno, "Failed to listen on socket");
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

/* An inherited fd must be a listening stream socket of ours. */
static int
listen_fd_check(int fd, struct err **errp)
{
    int acc = 0, type = 0;
    socklen_t len = sizeof(acc);

    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || !acc) {
        err_setf(errp, "File descriptor %d is not a listening socket", fd);
        return -1;
    }
    len = sizeof(type);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
        type != SOCK_STREAM) {
        err_setf(errp, "File descriptor %d is not a stream socket", fd);
        return -1;
    }
    return fd;
}

static void
vub_free(struct vub *b)
{
    if (b->dev) {
        vu_dev_free(b->dev);
    }
    if (b->path) {
        unlink(b->path);
    }
    if (b->h) {
        block_handle_free(b->h);
    }
    free(b->path);
    free(b->id);
    free(b);
}

static void *
vub_create(const struct block_export_options *opts, struct err **errp)
{
    const struct vhost_user_blk_options *o = opts->driver_opts;
    struct vub *b;
    int fd;

    if (o->logical_block_size < 512 || o->logical_block_size > 32768 ||
        !is_power_of_2(o->logical_block_size)) {
        err_setf(errp, "Logical block size must be a power of 2 between "
                 "512 and 32768, not %u", o->logical_block_size);
        return NULL;
    }
    if (o->num_queues == 0 || o->num_queues > VHOST_USER_BLK_MAX_QUEUES) {
        err_setf(errp, "num-queues must be between 1 and %d",
                 VHOST_USER_BLK_MAX_QUEUES);
        return NULL;
    }
    b = xzalloc(sizeof(*b));
    b->id = xstrdup(opts->id);
    b->writable = opts->writable;
    b->writethrough = opts->writethrough;
    b->blk_size = o->logical_block_size;
    b->num_queues = o->num_queues;
    b->writeback = !opts->writethrough;
    b->h = block_export_open_handle(opts, errp);
    if (!b->h) {
        vub_free(b);
        return NULL;
    }
    if (o->path) {
        fd = listen_unix(o->path, errp);
        if (fd >= 0) {
            b->path = xstrdup(o->path);
        }
    } else {
        fd = listen_fd_check(o->fd, errp);
    }
    if (fd < 0) {
        vub_free(b);
        return NULL;
    }
    {
        CLEANUP_FREE char *name = xasprintf("export '%s'", opts->id);

        b->dev = vu_dev_new(fd, b->num_queues, &vub_ops, b, name,
                            opts->poll);
    }
    return b;
}

static bool
vub_del(void *state, bool hard, struct err **errp)
{
    struct vub *b = state;

    if (vu_dev_connected(b->dev)) {
        if (!hard) {
            err_setf(errp, "export '%s' still in use", b->id);
            return false;
        }
        if (block_drained()) {
            /* Its requests wait for the drain to end. */
            err_setf(errp, "Cannot disconnect the client of export '%s' "
                     "while the graph is drained", b->id);
            return false;
        }
    }
    vub_free(b);
    return true;
}

static struct block_handle *
vub_handle(void *state)
{
    return ((struct vub *)state)->h;
}

const struct export_driver vhost_user_blk_export_driver = {
    .type = "vhost-user-blk",
    .create = vub_create,
    .del = vub_del,
    .handle = vub_handle,
};
