/* SPDX-License-Identifier: MIT */
/*
 * The "file" protocol driver: a POSIX file or block device; and
 * "host_device" and "host_cdrom", the same driver for character and block
 * devices only, as QEMU's (host_cdrom opens with O_NONBLOCK so that an
 * empty drive opens; no media change, eject or door lock).
 *
 * Reads, writes and flushes run on the thread that issued them (the core
 * calls us from many threads at once), by one of QEMU's "aio" modes:
 * "threads", pread/pwrite/fdatasync; "io_uring", the same operations
 * through an io_uring of the calling thread (liburing), submitted and
 * waited for at once.  io_uring is the default with cache.direct=on where
 * the kernel has it; where it does not (old kernel, seccomp,
 * kernel.io_uring_disabled) we use threads, saying so once when io_uring
 * was asked for.  "native" (Linux AIO) is refused: not implemented.
 * Zeroing and discard use fallocate; block status uses SEEK_DATA/SEEK_HOLE.
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
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "lockstep/driver.h"
#include "util.h"

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200
#define NUM_PERM_BITS 4

struct file_state {
    int fd;
    char *filename;
    bool is_block_device;
    bool memory_backed;       /* tmpfs/ramfs: I/O never waits for a device */
    bool io_uring;            /* aio=io_uring in effect (else threads) */
    unsigned max_batch;       /* aio-max-batch: operations per submission */
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

/* ---- io_uring ----------------------------------------------------------- */

/*
 * One ring per thread, made on the thread's first request: a request runs
 * start to finish on its thread (docs/architecture.md, "Threads"), so it
 * submits its operation and waits for the completion on its own ring, with
 * no lock and no hand-off to another thread.  The ring goes away with the
 * thread (the key's destructor), and from a forked child.  A thread has
 * one request in flight at a time, of at most BLOCK_MAX_SEGMENTS
 * operations (ring_batch()).
 */
#define RING_ENTRIES BLOCK_MAX_SEGMENTS

struct thread_ring {
    struct io_uring ring;
    bool ok;                    /* io_uring_queue_init() succeeded */
};

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static __thread struct thread_ring *my_ring;
static int uring_state;         /* atomic: 0 unknown, 1 works, -1 does not */
static int uring_warned;        /* atomic: the fallback was reported */

static void
ring_free(void *p)
{
    struct thread_ring *r = p;

    if (r->ok) {
        io_uring_queue_exit(&r->ring);
    }
    free(r);
}

/*
 * A forked child shares the parent's rings (their queues are shared
 * memory): it drops its copy and makes its own when it does I/O.
 */
static void
ring_after_fork(void)
{
    struct thread_ring *r = my_ring;

    my_ring = NULL;
    pthread_setspecific(ring_key, NULL);
    if (r) {
        ring_free(r);
    }
}

static void
ring_key_init(void)
{
    if (pthread_key_create(&ring_key, ring_free) != 0 ||
        pthread_atfork(NULL, NULL, ring_after_fork) != 0) {
        abort();
    }
}

/* The calling thread's ring, or NULL where it cannot have one. */
static struct io_uring *
thread_ring(void)
{
    if (!my_ring) {
        pthread_once(&ring_once, ring_key_init);
        my_ring = xcalloc(1, sizeof(*my_ring));
        my_ring->ok = io_uring_queue_init(RING_ENTRIES, &my_ring->ring,
                                          0) == 0;
        pthread_setspecific(ring_key, my_ring);
    }
    return my_ring->ok ? &my_ring->ring : NULL;
}

/*
 * Can this process use io_uring?  Tried once, on the first open that asks:
 * set up a ring, run a no-op through it and ask for the operations.  LOCKSTEP_NO_IO_URING=1 says
 * no, to test the fallback on kernels that have io_uring.
 */
static bool
uring_works(void)
{
    int state = __atomic_load_n(&uring_state, __ATOMIC_ACQUIRE);
    struct io_uring ring;

    if (state) {
        return state > 0;
    }
    state = -1;
    if (!getenv("LOCKSTEP_NO_IO_URING") &&
        io_uring_queue_init(2, &ring, 0) == 0) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        struct io_uring_cqe *cqe;

        struct io_uring_probe *probe = io_uring_get_probe_ring(&ring);

        io_uring_prep_nop(sqe);
        if (io_uring_submit_and_wait(&ring, 1) == 1 &&
            io_uring_wait_cqe(&ring, &cqe) == 0) {
            state = cqe->res == 0 ? 1 : -1;
            io_uring_cqe_seen(&ring, cqe);
        }
        /* The operations we use (read/write: Linux 5.6). */
        if (!probe || !io_uring_opcode_supported(probe, IORING_OP_READ) ||
            !io_uring_opcode_supported(probe, IORING_OP_WRITE) ||
            !io_uring_opcode_supported(probe, IORING_OP_FSYNC)) {
            state = -1;
        }
        if (probe) {
            io_uring_free_probe(probe);
        }
        io_uring_queue_exit(&ring);
    }
    __atomic_store_n(&uring_state, state, __ATOMIC_RELEASE);
    return state > 0;
}

enum ring_op { RING_READ, RING_WRITE, RING_FDATASYNC };

/*
 * Stop using the thread's ring after a failed submission: what was not
 * submitted would go with the next one, pointing at buffers that are gone
 * by then.  The system calls do the rest.
 */
static void
ring_drop(void)
{
    io_uring_queue_exit(&my_ring->ring);
    my_ring->ok = false;
}

static void
ring_prep(struct io_uring_sqe *sqe, int fd, enum ring_op op, void *buf,
          uint64_t bytes, uint64_t offset)
{
    switch (op) {
    case RING_READ:
        io_uring_prep_read(sqe, fd, buf, (unsigned)bytes, offset);
        break;
    case RING_WRITE:
        io_uring_prep_write(sqe, fd, buf, (unsigned)bytes, offset);
        break;
    case RING_FDATASYNC:
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        break;
    }
}

/*
 * One operation through the thread's ring: bytes done, or -errno.
 * -ENOSYS when the thread has no (working) ring: the caller uses the
 * system call.
 */
static int64_t
ring_io(int fd, enum ring_op op, void *buf, uint64_t bytes, uint64_t offset)
{
    struct io_uring *ring = thread_ring();
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    int64_t res;
    int ret;

    if (!ring) {
        return -ENOSYS;
    }
    sqe = io_uring_get_sqe(ring);
    ring_prep(sqe, fd, op, buf, bytes, offset);
    do {
        ret = io_uring_submit_and_wait(ring, 1);
    } while (ret == -EINTR);
    if (ret < 1) {
        ring_drop();    /* not submitted: see ring_drop() */
        return -ENOSYS;
    }
    do {
        ret = io_uring_wait_cqe(ring, &cqe);
    } while (ret == -EINTR);
    if (ret < 0) {
        return ret;
    }
    res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    return res;
}

/*
 * n reads or writes (n <= RING_ENTRIES) through the thread's ring: one
 * submission that also waits for all of them (one system call where the
 * kernel takes them all at once).  res[i]: bytes done or -errno; -ENOSYS
 * for those the ring did not take (the caller uses the system calls).
 * Returns -ENOSYS when the thread has no ring, else 0.
 */
static int
ring_batch(int fd, enum ring_op op, const struct block_segment *seg,
           unsigned n, int64_t *res)
{
    struct io_uring *ring = thread_ring();
    unsigned submitted = 0;
    int ret;

    if (!ring) {
        return -ENOSYS;
    }
    for (unsigned i = 0; i < n; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

        ring_prep(sqe, fd, op, seg[i].buf, seg[i].bytes, seg[i].offset);
        io_uring_sqe_set_data64(sqe, i);
        res[i] = -ENOSYS;
    }
    do {
        ret = io_uring_submit_and_wait(ring, n);
    } while (ret == -EINTR);
    /* The kernel may take fewer (short of memory): offer the rest again. */
    while (ret > 0 && (submitted += (unsigned)ret) < n) {
        do {
            ret = io_uring_submit(ring);
        } while (ret == -EINTR);
    }
    for (unsigned k = 0; k < submitted; k++) {
        struct io_uring_cqe *cqe;

        do {
            ret = io_uring_wait_cqe(ring, &cqe);
        } while (ret == -EINTR);
        if (ret < 0) {
            /* Cannot happen with a ring set up by us; keep buffers safe. */
            abort();
        }
        res[io_uring_cqe_get_data64(cqe)] = cqe->res;
        io_uring_cqe_seen(ring, cqe);
    }
    if (submitted < n) {
        ring_drop();
    }
    return 0;
}

/* pread/pwrite/fdatasync by the node's aio mode: bytes done or -errno. */
static int64_t
sys_io(struct file_state *s, enum ring_op op, void *buf, uint64_t bytes,
       uint64_t offset)
{
    ssize_t r;

    if (s->io_uring) {
        int64_t res = ring_io(s->fd, op, buf, bytes, offset);

        if (res != -ENOSYS) {
            return res;
        }
    }
    do {
        switch (op) {
        case RING_READ:
            r = pread(s->fd, buf, bytes, offset);
            break;
        case RING_WRITE:
            r = pwrite(s->fd, buf, bytes, offset);
            break;
        default:
            r = fdatasync(s->fd);
            break;
        }
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

/* Write all of buf (a short write continues where it stopped). */
static int
file_write_full(struct file_state *s, const void *buf, uint64_t bytes,
           uint64_t offset)
{
    const char *p = buf;

    while (bytes > 0) {
        int64_t r = sys_io(s, RING_WRITE, (void *)p, bytes, offset);

        if (r < 0) {
            return (int)r;
        }
        if (r == 0) {
            return -EIO;
        }
        p += r;
        bytes -= (uint64_t)r;
        offset += (uint64_t)r;
    }
    return 0;
}

/* A tool's --aio for the file nodes it opens (main thread only). */
static const char *default_aio;

void
block_file_set_default_aio(const char *mode)
{
    default_aio = mode;
}

/*
 * The aio option: *uring set for io_uring.  Default: io_uring with
 * cache.direct=on where it works (page cache copies gain nothing from it),
 * else threads.  Linux AIO needs O_DIRECT: QEMU refuses aio=native
 * without cache.direct=on with this message; with it, we have no Linux
 * AIO to offer.
 */
static int
choose_aio(struct block_node *node, json_t *options, bool *uring,
           unsigned *max_batch, struct err **errp)
{
    const char *aio = block_opt_str(options, "aio", default_aio);
    int64_t batch = block_opt_int(options, "aio-max-batch", 0);

    *uring = false;
    if (batch < 0) {
        err_setf(errp, "aio-max-batch must be a positive number");
        return -EINVAL;
    }
    /* 0: as many as one request brings (at most RING_ENTRIES). */
    *max_batch = batch == 0 || batch > RING_ENTRIES ? RING_ENTRIES
                                                     : (unsigned)batch;
    if (aio && strcmp(aio, "native") == 0 && !node->cache_direct) {
        err_setf(errp, "aio=native was specified, but it requires "
                 "cache.direct=on, which was not specified.");
        return -EINVAL;
    }
    if (aio && strcmp(aio, "native") == 0) {
        err_setf(errp, "aio=native (Linux AIO) is not supported; use "
                 "aio=io_uring or aio=threads");
        return -ENOTSUP;
    }
    if (aio && strcmp(aio, "threads") == 0) {
        return 0;
    }
    if (!aio && !node->cache_direct) {
        return 0;
    }
    *uring = uring_works();
    if (!*uring && aio &&
        !__atomic_exchange_n(&uring_warned, 1, __ATOMIC_RELAXED)) {
        fprintf(stderr, "lockstep: io_uring is not available here; "
                "aio=io_uring falls back to aio=threads\n");
    }
    return 0;
}

/* ---- Open / close ----------------------------------------------------- */

/*
 * The alignment O_DIRECT needs on this file: *req for offsets and lengths,
 * *mem for buffer addresses.  The kernel says so itself (statx
 * STATX_DIOALIGN, Linux 6.1+, ext4/xfs/block devices); else a block
 * device's logical sector size; else we try reads at offset 0 with growing
 * sizes, which only tells the truth where the file has data: a hole reads
 * fine at any size on a 4 KiB-sector file system.  Without data there,
 * 4 KiB is safe everywhere.
 */
static void
probe_direct_alignment(struct file_state *s, uint32_t *req, uint32_t *mem)
{
    struct statx stx;
    int sector;
    void *buf;

    *req = 4096;
    *mem = 4096;
    if (statx(s->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
        (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
        *req = stx.stx_dio_offset_align;
        *mem = MAX(stx.stx_dio_mem_align, 1);
        return;
    }
    if (s->is_block_device && ioctl(s->fd, BLKSSZGET, &sector) == 0 &&
        sector > 0) {
        *req = (uint32_t)sector;
        *mem = MAX((uint32_t)sector, 4096);
        return;
    }
    if (lseek(s->fd, 0, SEEK_DATA) != 0 ||
        posix_memalign(&buf, 4096, 4096) != 0) {
        return;
    }
    for (uint32_t a = 512; a <= 4096; a *= 2) {
        ssize_t r = pread(s->fd, buf, a, 0);

        if (r >= 0 || errno != EINVAL) {
            *req = a;
            break;
        }
    }
    free(buf);
}

static bool
is_memory_fs(int fd)
{
    struct statfs sf;

    return fstatfs(fd, &sf) == 0 &&
           (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC);
}

/*
 * What each driver opens, with QEMU's words: "file" a regular file (and
 * a block device, which QEMU leaves to host_device: kept so that lockstep
 * users can name one as a plain file), the device drivers a character or
 * block device.
 */
static int
check_file_type(struct block_node *node, const char *filename,
                const struct stat *st, struct err **errp)
{
    bool device = strcmp(node->drv->name, "file") != 0;

    if (!device && !S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode)) {
        err_setf(errp, "'%s' driver requires '%s' to be a regular file",
                 node->drv->name, filename);
        return -EINVAL;
    }
    if (device && !S_ISCHR(st->st_mode) && !S_ISBLK(st->st_mode)) {
        err_setf(errp, "'%s' driver requires '%s' to be either a character "
                 "or block device", node->drv->name, filename);
        return -EINVAL;
    }
    return 0;
}

static int
file_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct file_state *s = node->opaque;
    const char *filename = block_opt_str(options, "filename", NULL);
    const char *locking = block_opt_str(options, "locking", "auto");
    int flags = O_CLOEXEC | (node->read_only ? O_RDONLY : O_RDWR);
    struct stat st;
    int ret;

    ret = choose_aio(node, options, &s->io_uring, &s->max_batch, errp);
    if (ret < 0) {
        return ret;
    }
    if (node->cache_direct) {
        flags |= O_DIRECT;
    }
    if (!strcmp(node->drv->name, "host_cdrom")) {
        flags |= O_NONBLOCK;
    }
    s->fd = open(filename, flags);
    if (s->fd < 0) {
        int e = errno;

        err_setf_errno(errp, e, "Could not open '%s'", filename);
        return -e;
    }
    if (fstat(s->fd, &st) < 0) {
        ret = -errno;
        err_setf_errno(errp, -ret, "Could not stat file");
    } else {
        ret = check_file_type(node, filename, &st, errp);
    }
    if (ret < 0) {
        close(s->fd);
        s->fd = -1;
        return ret;
    }
    s->filename = xstrdup(filename);
    s->locking = strcmp(locking, "off") != 0;
    s->is_block_device = S_ISBLK(st.st_mode);
    s->memory_backed = is_memory_fs(s->fd);
    if (node->cache_direct) {
        probe_direct_alignment(s, &node->limits.request_alignment,
                               &node->limits.mem_alignment);
    }
    node->limits.max_transfer = 32 * MiB;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP | BLOCK_REQ_ALLOCATE |
                                 (s->is_block_device ? 0 : BLOCK_REQ_EXTEND);
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

static int64_t
file_getlength(struct block_node *node)
{
    struct file_state *s = node->opaque;
    struct stat st;

    if (s->is_block_device) {
        uint64_t size;

        if (ioctl(s->fd, BLKGETSIZE64, &size) < 0) {
            return -errno;
        }
        return (int64_t)size;
    }
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return st.st_size;
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

/*
 * r more bytes were read at *offset into *p: move on.  Past the end of
 * the file reads as zeroes.  O_DIRECT stops short at an end of file that
 * is not block aligned, and the next read from there would fail
 * (unaligned offset): that is the end too.
 */
static void
read_moved(uint32_t align, char **p, uint64_t *bytes, uint64_t *offset,
           uint64_t r)
{
    *p += r;
    *bytes -= r;
    *offset += r;
    if (*bytes > 0 && (r == 0 || !is_aligned(*offset, align))) {
        memset(*p, 0, *bytes);
        *bytes = 0;
    }
}

/* pread until done (read_moved()). */
static int
read_rest(struct block_node *node, char *p, uint64_t bytes, uint64_t offset)
{
    struct file_state *s = node->opaque;

    while (bytes > 0) {
        int64_t r = sys_io(s, RING_READ, p, bytes, offset);

        if (r < 0) {
            return (int)r;
        }
        read_moved(node->limits.request_alignment, &p, &bytes, &offset,
                   (uint64_t)r);
    }
    return 0;
}

static int
file_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
           void *buf, unsigned flags UNUSED)
{
    file_may_block(node->opaque);
    return read_rest(node, buf, bytes, offset);
}

static int
file_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
            const void *buf, unsigned flags UNUSED)
{
    struct file_state *s = node->opaque;

    file_may_block(s);
    return file_write_full(s, buf, bytes, offset);
}

/* ---- Several pieces at once ------------------------------------------- */

/*
 * Piece g after res bytes of it were done by a batch (-ENOSYS: none, the
 * batch did not take it): the rest by the one-piece path.
 */
static int
finish_piece(struct block_node *node, const struct block_segment *g,
             int64_t res, bool write)
{
    struct file_state *s = node->opaque;
    char *p = g->buf;
    uint64_t bytes = g->bytes, offset = g->offset;

    if (res == -ENOSYS) {
        return write ? file_write_full(s, p, bytes, offset)
                     : read_rest(node, p, bytes, offset);
    }
    if (res < 0) {
        return (int)res;
    }
    if (write) {
        return file_write_full(s, p + res, bytes - (uint64_t)res,
                               offset + (uint64_t)res);
    }
    read_moved(node->limits.request_alignment, &p, &bytes, &offset,
               (uint64_t)res);
    return read_rest(node, p, bytes, offset);
}

/* How many pieces from seg on follow each other on the file. */
static unsigned
neighbours(const struct block_segment *seg, unsigned n)
{
    unsigned k = 1;

    while (k < n && seg[k - 1].offset + seg[k - 1].bytes == seg[k].offset) {
        k++;
    }
    return k;
}

/* Neighbouring pieces as one preadv/pwritev (aio=threads). */
static int
vector_io(struct block_node *node, const struct block_segment *seg,
          unsigned k, bool write)
{
    struct file_state *s = node->opaque;
    struct iovec iov[BLOCK_MAX_SEGMENTS];
    ssize_t r;
    int ret = 0;

    for (unsigned i = 0; i < k; i++) {
        iov[i].iov_base = seg[i].buf;
        iov[i].iov_len = seg[i].bytes;
    }
    do {
        r = write ? pwritev(s->fd, iov, (int)k, (off_t)seg[0].offset)
                  : preadv(s->fd, iov, (int)k, (off_t)seg[0].offset);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        return -errno;
    }
    /* Short (the end of the file): each piece finishes on its own. */
    for (unsigned i = 0; i < k && ret == 0; i++) {
        uint64_t done = MIN((uint64_t)r, seg[i].bytes);

        r -= (ssize_t)done;
        ret = finish_piece(node, &seg[i], done ? (int64_t)done : -ENOSYS,
                           write);
    }
    return ret;
}

/*
 * The pieces through the thread's ring, aio-max-batch at a time: false
 * when the thread has no ring.  A ring lost after the first submission
 * leaves the rest of the pieces to the system calls (res -ENOSYS).
 */
static bool
ring_segments(struct file_state *s, const struct block_segment *seg,
              unsigned n, bool write, int64_t *res)
{
    for (unsigned i = 0; i < n; i += s->max_batch) {
        unsigned k = MIN(s->max_batch, n - i);

        if (ring_batch(s->fd, write ? RING_WRITE : RING_READ, seg + i, k,
                       res + i) < 0) {
            if (i == 0) {
                return false;
            }
            for (unsigned j = i; j < n; j++) {
                res[j] = -ENOSYS;
            }
            break;
        }
    }
    return true;
}

/*
 * The pieces of one request (the core checked them: aligned, inside the
 * file, at most BLOCK_MAX_SEGMENTS).  io_uring: in submissions of
 * aio-max-batch pieces (default: all at once), each waiting for all of
 * its pieces; threads: neighbours as one preadv/pwritev, the rest one by
 * one.  One blocking hint first, as for a single request.
 */
static int
file_segments(struct block_node *node, const struct block_segment *seg,
              unsigned n, bool write)
{
    struct file_state *s = node->opaque;
    int64_t res[BLOCK_MAX_SEGMENTS];
    int ret = 0;

    file_may_block(s);
    if (s->io_uring && ring_segments(s, seg, n, write, res)) {
        for (unsigned i = 0; i < n; i++) {
            int r = finish_piece(node, &seg[i], res[i], write);

            ret = ret ? ret : r;
        }
        return ret;
    }
    for (unsigned i = 0; i < n && ret == 0;) {
        unsigned k = neighbours(seg + i, n - i);

        ret = k > 1 ? vector_io(node, seg + i, k, write)
                    : finish_piece(node, &seg[i], -ENOSYS, write);
        i += k;
    }
    return ret;
}

static int
file_pread_segments(struct block_node *node, const struct block_segment *seg,
                    unsigned n, unsigned flags UNUSED)
{
    return file_segments(node, seg, n, false);
}

static int
file_pwrite_segments(struct block_node *node,
                     const struct block_segment *seg, unsigned n,
                     unsigned flags UNUSED)
{
    return file_segments(node, seg, n, true);
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
 * Make the file at least end bytes long, zeroes from `from` on (past its
 * old end): fallocate its last block, no data I/O, as QEMU's zeroing past
 * the end; the rest is a hole.  With BLOCK_REQ_ALLOCATE, on a disk, the
 * whole range from `from` (unwritten extents, still no data I/O), so that
 * the writes that follow land inside the file on allocated blocks: ext4
 * runs such O_DIRECT writes under a shared inode lock, side by side,
 * where a write that extends the file (or fills a hole) holds the lock
 * exclusively, and one that extends it waits for the device under it.
 * In memory (tmpfs) never: a hole costs no memory.  Where the file system
 * cannot, zeroes are written into the last block.  Never ftruncate here:
 * a parallel write may have grown the file since we read its length, and
 * ftruncate would cut that write's data off; fallocate (mode 0) never
 * shrinks nor changes data.
 */
static int
grow_to(struct block_node *node, uint64_t from, uint64_t end, unsigned flags)
{
    struct file_state *s = node->opaque;
    size_t n = node->limits.request_alignment;  /* 1 without O_DIRECT */
    uint64_t start = (flags & BLOCK_REQ_ALLOCATE) && !s->memory_backed
                     ? MIN(from, end - n) : end - n;
    void *buf;
    int ret;

    if (!s->is_block_device &&
        do_fallocate(s->fd, 0, start, end - start) == 0) {
        return 0;
    }
    if (posix_memalign(&buf, MAX(node->limits.mem_alignment,
                                 sizeof(void *)), n) != 0) {
        return -ENOMEM;
    }
    memset(buf, 0, n);
    ret = file_write_full(s, buf, n, end - n);
    free(buf);
    return ret;
}

static int
file_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                   unsigned flags)
{
    struct file_state *s = node->opaque;
    int64_t len = s->is_block_device ? -1 : file_getlength(node);
    int ret;

    file_may_block(s);

    /* fallocate mode 0 allocates what is not, changes no byte and only
     * ever moves the end outwards: safe while others write in the range,
     * whatever the length is by now (unlike the paths below). */
    if (flags & BLOCK_REQ_EXTEND) {
        return s->is_block_device ? -ENOTSUP
                                  : do_fallocate(s->fd, 0, offset, bytes);
    }

    /* Growing a regular file: the new part reads as zeroes anyway. */
    if (len >= 0 && offset >= (uint64_t)len) {
        return grow_to(node, offset, offset + bytes, flags);
    }
    if (flags & BLOCK_REQ_MAY_UNMAP) {
        ret = do_fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           offset, bytes);
        if (ret == 0 && len >= 0 && offset + bytes > (uint64_t)len) {
            ret = grow_to(node, (uint64_t)len, offset + bytes, 0);
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
    int64_t r;

    file_may_block(s);
    r = sys_io(s, RING_FDATASYNC, NULL, 0, 0);
    return r < 0 ? (int)r : 0;
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

/* "file:PATH" (a plain PATH is the core's default, also a file). */
static const char *const file_filename_prefixes[] = { "file:", NULL };

static json_t *
file_parse_filename(const char *filename, struct err **errp)
{
    (void)errp;
    return json_pack("{s:s, s:s}", "driver", "file", "filename",
                     filename + strlen("file:"));
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
    .pread_segments = file_pread_segments,
    .pwrite_segments = file_pwrite_segments,
    .pwrite_zeroes = file_pwrite_zeroes,
    .pdiscard = file_pdiscard,
    .flush = file_flush,
    .block_status = file_block_status,
    .truncate = file_truncate,
    .set_perm = file_set_perm,
    .query = file_query,
    .filename_prefixes = file_filename_prefixes,
    .parse_filename = file_parse_filename,
};

/* The same driver under QEMU's names for devices (check_file_type()). */
#define DEVICE_DRIVER(var, drv_name)                                        \
    const struct block_driver var = {                                       \
        .name = drv_name,                                                   \
        .kind = BLOCK_KIND_PROTOCOL,                                        \
        .state_size = sizeof(struct file_state),                            \
        .options = file_opts,                                               \
        .open = file_open,                                                  \
        .close = file_close,                                                \
        .getlength = file_getlength,                                        \
        .allocated_size = file_allocated_size,                              \
        .pread = file_pread,                                                \
        .pwrite = file_pwrite,                                              \
        .pwrite_zeroes = file_pwrite_zeroes,                                \
        .pdiscard = file_pdiscard,                                          \
        .flush = file_flush,                                                \
        .block_status = file_block_status,                                  \
        .truncate = file_truncate,                                          \
        .set_perm = file_set_perm,                                          \
        .query = file_query,                                                \
    }

DEVICE_DRIVER(host_device_driver, "host_device");
DEVICE_DRIVER(host_cdrom_driver, "host_cdrom");
