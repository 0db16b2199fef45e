/* SPDX-License-Identifier: MIT */
/*
 * The "file" protocol driver: a POSIX file or block device.
 *
 * Reads and writes are pread/pwrite on worker threads (the core calls us
 * from many threads at once; pread/pwrite need no lock).  Zeroing and
 * discard use fallocate; block status uses SEEK_DATA/SEEK_HOLE.
 *
 * Image locking follows QEMU's file-posix protocol byte for byte, so that
 * QEMU and lockstep refuse to write one image at the same time: for each
 * permission bit i we hold, a shared OFD lock on byte 100 + i; for each bit
 * we do not share, one on byte 200 + i.  Before taking them we test that
 * nobody else holds the opposite byte.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "block/core/opts.h"
#include "lockstep/block.h"
#include "util.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define NUM_PERM_BITS 4

struct file_state {
    int fd;
    char *filename;
    bool is_block_device;
    bool memory_backed;       /* tmpfs/ramfs: I/O never waits for a device */
    bool locking;
    uint32_t locked_perm;     /* bits with a lock on 100 + i */
    uint32_t locked_unshared; /* bits with a lock on 200 + i */
};

static const char *const locking_values[] = {"auto", "on", "off", NULL};
static const char *const aio_values[] = {"threads", "native", "io_uring",
                                         NULL};

static const struct block_opt file_opts[] = {
    {"filename", BLOCK_OPT_STRING, true, NULL},
    {"locking", BLOCK_OPT_STRING, false, locking_values},
    {"aio", BLOCK_OPT_STRING, false, aio_values},
    {"aio-max-batch", BLOCK_OPT_INT, false, NULL},
    {"drop-cache", BLOCK_OPT_BOOL, false, NULL},
    {NULL, 0, false, NULL},
};

static const char *const perm_lock_names[NUM_PERM_BITS] = {
    "consistent read", "write", "write unchanged", "resize",
};

/* ---- Locks ------------------------------------------------------------ */

static int
lock_byte(int fd, off_t byte, short type)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = type,
    };

    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Does another open file description hold a lock on byte? */
static int
byte_locked_by_others(int fd, off_t byte)
{
    struct flock fl = {
        .l_whence = SEEK_SET,
        .l_start = byte,
        .l_len = 1,
        .l_type = F_WRLCK,
    };

    if (fcntl(fd, F_OFD_GETLK, &fl) < 0) {
        return -errno;
    }
    return fl.l_type != F_UNLCK;
}

/* QEMU checks every permission we want first, then every one we refuse
 * to share; we do the same so that the messages match. */
static int
check_locks(struct file_state *s, uint32_t perm, uint32_t unshared,
            struct err **errp)
{
    for (int i = 0; i < NUM_PERM_BITS; i++) {
        if ((perm & (1u << i)) &&
            byte_locked_by_others(s->fd, LOCK_SHARED_BASE + i) > 0) {
            err_setf(errp, "Failed to get \"%s\" lock: is another process "
                     "using the image [%s]?", perm_lock_names[i],
                     s->filename);
            return -EAGAIN;
        }
    }
    for (int i = 0; i < NUM_PERM_BITS; i++) {
        if ((unshared & (1u << i)) &&
            byte_locked_by_others(s->fd, LOCK_PERM_BASE + i) > 0) {
            err_setf(errp, "Failed to get shared \"%s\" lock: is another "
                     "process using the image [%s]?", perm_lock_names[i],
                     s->filename);
            return -EAGAIN;
        }
    }
    return 0;
}

static int
apply_locks(struct file_state *s, uint32_t perm, uint32_t unshared,
            struct err **errp)
{
    for (int i = 0; i < NUM_PERM_BITS; i++) {
        uint32_t bit = 1u << i;
        int ret = 0;

        if ((perm & bit) != (s->locked_perm & bit)) {
            ret = lock_byte(s->fd, LOCK_PERM_BASE + i,
                            (perm & bit) ? F_RDLCK : F_UNLCK);
        }
        if (ret == 0 && (unshared & bit) != (s->locked_unshared & bit)) {
            ret = lock_byte(s->fd, LOCK_SHARED_BASE + i,
                            (unshared & bit) ? F_RDLCK : F_UNLCK);
        }
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Failed to lock byte %d of '%s'",
                           LOCK_PERM_BASE + i, s->filename);
            return ret;
        }
    }
    s->locked_perm = perm;
    s->locked_unshared = unshared;
    return 0;
}

static int
file_set_perm(struct block_node *node, uint32_t perm, uint32_t shared,
              struct err **errp)
{
    struct file_state *s = node->opaque;
    uint32_t unshared = ~shared & BLOCK_PERM_ALL;
    int ret;

    if (!s->locking) {
        return 0;
    }
    ret = check_locks(s, perm, unshared, errp);
    if (ret < 0) {
        return ret;
    }
    return apply_locks(s, perm, unshared, errp);
}

/* ---- Open / close ----------------------------------------------------- */

/* The smallest read size O_DIRECT accepts on this file. */
static uint32_t
probe_direct_alignment(int fd)
{
    void *buf;
    uint32_t align = 4096;

    if (posix_memalign(&buf, 4096, 4096) != 0) {
        return align;
    }
    for (uint32_t a = 512; a <= 4096; a *= 2) {
        ssize_t r = pread(fd, buf, a, 0);

        if (r >= 0 || errno != EINVAL) {
            align = a;
            break;
        }
    }
    free(buf);
    return align;
}

static bool
is_memory_fs(int fd)
{
    struct statfs sf;

    return fstatfs(fd, &sf) == 0 &&
           (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC);
}

static int
file_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct file_state *s = node->opaque;
    const char *filename = block_opt_str(options, "filename", NULL);
    const char *locking = block_opt_str(options, "locking", "auto");
    int flags = O_CLOEXEC | (node->read_only ? O_RDONLY : O_RDWR);
    struct stat st;

    if (node->cache_direct) {
        flags |= O_DIRECT;
    }
    s->fd = open(filename, flags);
    if (s->fd < 0) {
        int e = errno;

        err_setf_errno(errp, e, "Could not open '%s'", filename);
        return -e;
    }
    s->filename = xstrdup(filename);
    s->locking = strcmp(locking, "off") != 0;
    if (fstat(s->fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        s->is_block_device = true;
    }
    s->memory_backed = is_memory_fs(s->fd);
    if (node->cache_direct) {
        uint32_t align = probe_direct_alignment(s->fd);

        node->limits.request_alignment = align;
        node->limits.mem_alignment = MAX(align, 4096);
    }
    node->limits.max_transfer = 32 * MiB;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP;
    return 0;
}

static void
file_close(struct block_node *node)
{
    struct file_state *s = node->opaque;

    if (s->fd >= 0) {
        close(s->fd);    /* drops the OFD locks too */
    }
    free(s->filename);
}

/* The file's own length in bytes, before rounding. */
static int64_t
file_bytes(struct file_state *s)
{
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
}

static int64_t
file_getlength(struct block_node *node)
{
    struct file_state *s = node->opaque;
    int64_t len;

    if (s->is_block_device) {
        uint64_t size;

        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0) {
            return -errno;
        }
        return (int64_t)size;
    }
    len = file_bytes(s);
    if (len < 0) {
        return len;
    }
    /*
     * Whole 512-byte sectors, as QEMU counts them: a file of 320 bytes
     * is a 512-byte image whose end reads as zeroes (pread_full fills
     * past the end of the file).
     */
    return (int64_t)align_up((uint64_t)len, BLOCK_SECTOR_SIZE);
}

static int64_t
file_allocated_size(struct block_node *node)
{
    struct file_state *s = node->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

/* ---- I/O -------------------------------------------------------------- */

/* Before a call that may sleep on the device (util.h: a thread serving a
 * socket passes it on first).  Memory-backed files only copy pages. */
static void
file_may_block(struct file_state *s)
{
    if (!s->memory_backed) {
        thread_may_block();
    }
}

static int
file_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
           void *buf, unsigned flags UNUSED)
{
    struct file_state *s = node->opaque;

    file_may_block(s);
    return pread_full(s->fd, buf, bytes, offset);
}

static int
file_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
            const void *buf, unsigned flags UNUSED)
{
    struct file_state *s = node->opaque;

    file_may_block(s);
    return pwrite_full(s->fd, buf, bytes, offset);
}

static int
do_fallocate(int fd, int mode, uint64_t offset, uint64_t bytes)
{
    if (fallocate(fd, mode, offset, bytes) == 0) {
        return 0;
    }
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
        return -ENOTSUP;
    }
    return -errno;
}

/*
 * Make the file at least end bytes long by writing zeroes to its last
 * block, which lies inside the caller's own zeroed range.  Never
 * ftruncate here: a parallel write may have grown the file since we read
 * its length, and ftruncate would cut that write's data off.
 */
static int
grow_to(struct block_node *node, uint64_t end)
{
    struct file_state *s = node->opaque;
    size_t n = node->limits.request_alignment;  /* 1 without O_DIRECT */
    void *buf;
    int ret;

    if (posix_memalign(&buf, MAX(node->limits.mem_alignment,
                                 sizeof(void *)), n) != 0) {
        return -ENOMEM;
    }
    memset(buf, 0, n);
    ret = pwrite_full(s->fd, buf, n, end - n);
    free(buf);
    return ret;
}

static int
file_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                   unsigned flags)
{
    struct file_state *s = node->opaque;
    int64_t len = s->is_block_device ? -1 : file_bytes(s);
    int ret;

    file_may_block(s);

    /* Growing a regular file: the new part reads as zeroes anyway. */
    if (len >= 0 && offset >= (uint64_t)len) {
        return grow_to(node, offset + bytes);
    }
    if (flags & BLOCK_REQ_MAY_UNMAP) {
        ret = do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           offset, bytes);
        if (ret == 0 && len >= 0 && offset + bytes > (uint64_t)len) {
            ret = grow_to(node, offset + bytes);
        }
        if (ret != -ENOTSUP) {
            return ret;
        }
    }
    if (s->is_block_device) {
        uint64_t range[2] = {offset, bytes};

        return ioctl(s->fd, BLKZEROOUT, range) < 0 ? -ENOTSUP : 0;
    }
    return do_fallocate(s->fd, FALLOC_FL_ZERO_RANGE, offset, bytes);
}

static int
file_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    struct file_state *s = node->opaque;

    file_may_block(s);
    if (s->is_block_device) {
        uint64_t range[2] = {offset, bytes};

        return ioctl(s->fd, BLKDISCARD, range) < 0 ? -ENOTSUP : 0;
    }
    return do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        offset, bytes);
}

static int
file_flush(struct block_node *node)
{
    struct file_state *s = node->opaque;

    file_may_block(s);
    return fdatasync(s->fd) < 0 ? -errno : 0;
}

static int
file_block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                  uint64_t *pnum, uint64_t *map, struct block_node **file)
{
    struct file_state *s = node->opaque;
    off_t data, hole;

    *map = offset;
    *file = node;
    *pnum = bytes;
    if (s->is_block_device) {
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    data = lseek(s->fd, offset, SEEK_DATA);
    if (data < 0) {
        /* ENXIO: only a hole until the end of the file. */
        if (errno == ENXIO) {
            return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID;
        }
        return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
    }
    if ((uint64_t)data > offset) {
        *pnum = MIN(bytes, (uint64_t)data - offset);
        return BLOCK_STATUS_ZERO | BLOCK_STATUS_OFFSET_VALID;
    }
    hole = lseek(s->fd, offset, SEEK_HOLE);
    if (hole > (off_t)offset) {
        *pnum = MIN(bytes, (uint64_t)hole - offset);
    }
    return BLOCK_STATUS_DATA | BLOCK_STATUS_OFFSET_VALID;
}

static int
file_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    struct file_state *s = node->opaque;

    if (s->is_block_device) {
        err_setf(errp, "Cannot resize the block device '%s'", s->filename);
        return -ENOTSUP;
    }
    if (ftruncate(s->fd, length) < 0) {
        int e = errno;

        err_setf_errno(errp, e, "Failed to resize '%s'", s->filename);
        return -e;
    }
    return 0;
}

static void
file_query(struct block_node *node, json_t *info)
{
    struct file_state *s = node->opaque;

    json_object_set_new(info, "file", json_string(s->filename));
}

const struct block_driver file_driver = {
    .name = "file",
    .kind = BLOCK_KIND_PROTOCOL,
    .state_size = sizeof(struct file_state),
    .options = file_opts,
    .open = file_open,
    .close = file_close,
    .getlength = file_getlength,
    .allocated_size = file_allocated_size,
    .pread = file_pread,
    .pwrite = file_pwrite,
    .pwrite_zeroes = file_pwrite_zeroes,
    .pdiscard = file_pdiscard,
    .flush = file_flush,
    .block_status = file_block_status,
    .truncate = file_truncate,
    .set_perm = file_set_perm,
    .query = file_query,
};
