/* SPDX-License-Identifier: MIT */
/*
 * The FUSE export: a node appears as one regular file, mounted over an
 * existing regular file (a FUSE file system may have a file as its root),
 * through libfuse3's low-level API.  Options, behaviour and messages are
 * qemu-storage-daemon's (--export type=fuse).
 *
 * Design notes.
 *
 *   The file: the mount's root (inode 1) is the only inode; lookups fail
 *   with ENOENT.  Its size is the node's length; its mode 0400, or 0600
 *   when writable; its owner the daemon's user.  mtime and ctime start at
 *   the export's creation and move to "now" at the first getattr after
 *   the node's content changed (its write generation moved), by whatever
 *   path it changed.  So a frozen snapshot keeps its times (tar -S sees no
 *   "file changed as we read it"), and the kernel's auto-invalidation
 *   drops the cached pages of a live disk once the attributes time out.
 *
 *   Requests (all through the export's block handle): read, write,
 *   fallocate (punch hole, zero range, grow at the end), fsync and flush
 *   (on every close, as QEMU), lseek (SEEK_DATA / SEEK_HOLE from block
 *   status), getattr and setattr (size; mode, and owner with allow-other;
 *   QEMU's rules).  Reads past the end are short; writes past the end grow
 *   the node when growable, and are short otherwise.  A writable export
 *   may also resize with truncate and fallocate, as QEMU's: it holds the
 *   resize permission (growable ones too).
 *
 *   Threads: FUSE_THREADS per export share a reader role, as the NBD
 *   server's connection threads do (docs/architecture.md): the holder
 *   polls /dev/fuse (non-blocking), reads one request and runs it itself;
 *   when the request is about to sleep (thread_may_block() in util.h) the
 *   holder first hands the role to an idle thread, which reads on.  So
 *   requests that do not block cost no thread switch, and slow ones do not
 *   stall the others.
 *
 *   Ending (del, and so quit and SIGTERM): quit is set, stop_fd wakes the
 *   reader and the threads are joined; requests being run finish and
 *   reply, requests still queued in the kernel are never read.  Then the
 *   mount is detached (lazily: it never fails with EBUSY) and /dev/fuse
 *   closed, which aborts the connection: a process that still has the
 *   file open gets ENOTCONN, the path shows the underlying file again.
 *   Not while drained: a request may wait for the drain, so joining its
 *   thread would never return.  After SIGKILL the kernel keeps a dead
 *   mount (ENOTCONN) until "fusermount3 -u PATH" (docs/exports.md).
 *
 * Locking: exp->lock (the reader role, quit) and exp->attr_lock (mode,
 * owner, times) are leaves.  exp->resize_lock serialises the export's own
 * resizes (a growing write must not race a truncate into shrinking the
 * node under another growing write); it is taken inside the graph read
 * lock and held across the truncate.
 */
#define FUSE_USE_VERSION 31

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "export/fuse.h"
#include "lockstep/block.h"
#include "util.h"

/* Threads per export: at most this many requests run at once. */
#define FUSE_THREADS 8
/* How long the kernel may cache the file's attributes (QEMU's value). */
#define FUSE_ATTR_TIMEOUT 1.0
/* Zeroing is done in pieces of this size, so that a huge fallocate does
 * not hold off a drain for its whole duration. */
#define FUSE_ZERO_CHUNK (256 * MiB)

struct fuse_export {
    char *id;
    char *mountpoint;          /* as given, for messages */
    char *abs_mountpoint;      /* absolute: --daemonize changes the cwd */
    bool writable;
    bool growable;
    bool writethrough;         /* every write is FUA */
    bool allow_other;          /* mounted with allow_other */
    struct block_handle *h;    /* main thread creates/frees; I/O any thread */
    struct fuse_session *se;
    int fd;                    /* the session's /dev/fuse, non-blocking */
    int stop_fd;               /* eventfd: readable once the export ends */
    dev_t st_dev;              /* the mounted file, to spot a second */
    ino_t st_ino;              /* mount on it by another path */
    pthread_t threads[FUSE_THREADS];
    int nthreads;              /* started */

    /* The reader role.  Protected by: lock. */
    struct lock lock;
    pthread_cond_t role_cond;  /* idle threads wait for the role */
    bool reading;              /* a thread holds the role */
    bool quit;                 /* also read without the lock (atomic) */

    /* What setattr may change, and the times.  Protected by: attr_lock. */
    struct lock attr_lock;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    struct timespec mtime;
    struct timespec ctime;
    uint64_t seen_gen;         /* the node's write_gen mtime stands for */

    struct lock resize_lock;

    TAILQ_ENTRY(fuse_export) link;
};

/* Every FUSE export.  Main thread only. */
static TAILQ_HEAD(, fuse_export) g_fuse_exports =
    TAILQ_HEAD_INITIALIZER(g_fuse_exports);

/* ---- Requests ---------------------------------------------------------- */

static void
reply_err(fuse_req_t req, int negerrno)
{
    fuse_reply_err(req, -negerrno);
}

static int64_t
export_length(struct fuse_export *exp)
{
    return block_handle_getlength(exp->h);
}

/*
 * Resize the node to size; with grow_only, only when it is shorter (a
 * growing write or fallocate must never cut off what a parallel one
 * wrote).
 */
static int
export_resize(struct fuse_export *exp, uint64_t size, bool grow_only)
{
    int64_t len;
    int ret = 0;

    if (size > INT64_MAX) {
        return -EFBIG;
    }
    block_graph_enter();
    mutex_lock_may_block(&exp->resize_lock);
    len = block_getlength(block_handle_node(exp->h));
    if (len < 0) {
        ret = (int)len;
    } else if (size > (uint64_t)len || (!grow_only && size != (uint64_t)len)) {
        ret = block_handle_truncate(exp->h, size, NULL);
    }
    mutex_unlock(&exp->resize_lock);
    block_graph_leave();
    return ret;
}

static void
fill_stat(struct fuse_export *exp, struct stat *st, int64_t len)
{
    struct block_node *node;
    uint64_t gen;
    int64_t alloc;
    uint32_t align;

    block_graph_enter();
    node = block_handle_node(exp->h);
    alloc = block_allocated_size(node);
    gen = __atomic_load_n(&node->write_gen, __ATOMIC_ACQUIRE);
    align = node->limits.request_alignment;
    block_graph_leave();

    memset(st, 0, sizeof(*st));
    st->st_ino = FUSE_ROOT_ID;
    st->st_nlink = 1;
    st->st_size = len;
    st->st_blksize = MAX(align, 4096);
    /* Unknown allocation (a remote node): say fully allocated, so that
     * tools do not take the file for sparse, as QEMU does. */
    st->st_blocks = (blkcnt_t)div_round_up(alloc > 0 ? (uint64_t)alloc
                                                     : (uint64_t)len, 512);
    mutex_lock(&exp->attr_lock);
    if (gen != exp->seen_gen) {
        exp->seen_gen = gen;
        clock_gettime(CLOCK_REALTIME, &exp->mtime);
        exp->ctime = exp->mtime;
    }
    st->st_mode = exp->mode;
    st->st_uid = exp->uid;
    st->st_gid = exp->gid;
    st->st_atim = exp->mtime;
    st->st_mtim = exp->mtime;
    st->st_ctim = exp->ctime;
    mutex_unlock(&exp->attr_lock);
}

static void
reply_attr(fuse_req_t req, struct fuse_export *exp)
{
    int64_t len = export_length(exp);
    struct stat st;

    if (len < 0) {
        reply_err(req, (int)len);
        return;
    }
    fill_stat(exp, &st, len);
    fuse_reply_attr(req, &st, FUSE_ATTR_TIMEOUT);
}

/* Only the mount's root (the file itself) exists. */
static void
fuse_op_lookup(fuse_req_t req, fuse_ino_t parent UNUSED,
               const char *name UNUSED)
{
    fuse_reply_err(req, ENOENT);
}

static void
fuse_op_getattr(fuse_req_t req, fuse_ino_t ino UNUSED,
                struct fuse_file_info *fi UNUSED)
{
    reply_attr(req, fuse_req_userdata(req));
}

/*
 * QEMU's rules: size (writable exports only), mode (no access for others
 * without allow-other, no write bits on a read-only export), owner (only
 * with allow-other); nothing else (times: ENOTSUP).
 */
static void
fuse_op_setattr(fuse_req_t req, fuse_ino_t ino UNUSED, struct stat *attr,
                int to_set, struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);
    int supported = FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE;
    int ret;

    if (exp->allow_other) {
        supported |= FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID;
    }
    if (to_set & ~supported) {
        fuse_reply_err(req, ENOTSUP);
        return;
    }
    if (to_set & FUSE_SET_ATTR_MODE) {
        if (!exp->allow_other && (attr->st_mode & (S_IRWXG | S_IRWXO))) {
            fuse_reply_err(req, EPERM);
            return;
        }
        if (!exp->writable &&
            (attr->st_mode & (S_IWUSR | S_IWGRP | S_IWOTH))) {
            fuse_reply_err(req, EROFS);
            return;
        }
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
        if (!exp->writable) {
            fuse_reply_err(req, EACCES);
            return;
        }
        if (attr->st_size < 0) {
            fuse_reply_err(req, EINVAL);
            return;
        }
        ret = export_resize(exp, (uint64_t)attr->st_size, false);
        if (ret < 0) {
            reply_err(req, ret);
            return;
        }
    }
    mutex_lock(&exp->attr_lock);
    if (to_set & FUSE_SET_ATTR_MODE) {
        exp->mode = S_IFREG | (attr->st_mode & 07777);
    }
    if (to_set & FUSE_SET_ATTR_UID) {
        exp->uid = attr->st_uid;
    }
    if (to_set & FUSE_SET_ATTR_GID) {
        exp->gid = attr->st_gid;
    }
    clock_gettime(CLOCK_REALTIME, &exp->ctime);
    mutex_unlock(&exp->attr_lock);
    reply_attr(req, exp);
}

static void
fuse_op_open(fuse_req_t req, fuse_ino_t ino UNUSED,
             struct fuse_file_info *fi)
{
    fuse_reply_open(req, fi);
}

static void
fuse_op_read(fuse_req_t req, fuse_ino_t ino UNUSED, size_t size, off_t off,
             struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);
    int64_t len = export_length(exp);
    void *buf;
    int ret;

    if (len < 0) {
        reply_err(req, (int)len);
        return;
    }
    if (off < 0) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    /* Short at the end of the file, as readers expect. */
    if (off >= len || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    size = MIN(size, (uint64_t)(len - off));
    buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    ret = block_handle_pread(exp->h, (uint64_t)off, size, buf, 0);
    if (ret < 0) {
        reply_err(req, ret);
    } else {
        fuse_reply_buf(req, buf, size);
    }
    free(buf);
}

static void
fuse_op_write(fuse_req_t req, fuse_ino_t ino UNUSED, const char *buf,
              size_t size, off_t off, struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);
    int64_t len;
    uint64_t end;
    int ret = 0;

    if (!exp->writable) {
        fuse_reply_err(req, EACCES);
        return;
    }
    if (off < 0 || __builtin_add_overflow((uint64_t)off, size, &end) ||
        end > INT64_MAX) {
        fuse_reply_err(req, EFBIG);
        return;
    }
    len = export_length(exp);
    if (len < 0) {
        reply_err(req, (int)len);
        return;
    }
    if (end > (uint64_t)len) {
        if (exp->growable) {
            ret = export_resize(exp, end, true);
        } else {
            /* Short at the end (none at all past it), as QEMU's. */
            size = off >= len ? 0 : (size_t)(len - off);
        }
    }
    if (ret == 0 && size > 0) {
        ret = block_handle_pwrite(exp->h, (uint64_t)off, size, buf,
                                  exp->writethrough ? BLOCK_REQ_FUA : 0);
    }
    if (ret < 0) {
        reply_err(req, ret);
    } else {
        fuse_reply_write(req, size);
    }
}

/* Zero [off, off + len) in pieces; MAY_UNMAP for punching holes. */
static int
zero_range(struct fuse_export *exp, uint64_t off, uint64_t len,
           unsigned flags)
{
    int ret = 0;

    if (exp->writethrough) {
        flags |= BLOCK_REQ_FUA;
    }
    while (len > 0 && ret == 0) {
        uint64_t n = MIN(len, FUSE_ZERO_CHUNK);

        ret = block_handle_pwrite_zeroes(exp->h, off, n, flags);
        off += n;
        len -= n;
    }
    return ret;
}

/*
 * fallocate, as QEMU's: mode 0 only at or past the end (grows the node);
 * PUNCH_HOLE (with KEEP_SIZE, as the kernel demands) zeroes and frees
 * where the node allows discard (discard=unmap), so the range reads as
 * zeroes either way; ZERO_RANGE zeroes, growing the node first unless
 * KEEP_SIZE.  Everything else is EOPNOTSUPP.
 */
static void
fuse_op_fallocate(fuse_req_t req, fuse_ino_t ino UNUSED, int mode,
                  off_t off, off_t length, struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);
    uint64_t end;
    int64_t len;
    int ret;

    if (!exp->writable) {
        fuse_reply_err(req, EACCES);
        return;
    }
    if (off < 0 || length <= 0 ||
        __builtin_add_overflow((uint64_t)off, (uint64_t)length, &end) ||
        end > INT64_MAX) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    len = export_length(exp);
    if (len < 0) {
        reply_err(req, (int)len);
        return;
    }
    if ((mode & FALLOC_FL_KEEP_SIZE) && end > (uint64_t)len) {
        end = MAX((uint64_t)len, (uint64_t)off);
    }
    if (mode == 0) {
        ret = off < len ? -EOPNOTSUPP : export_resize(exp, end, true);
    } else if (mode & FALLOC_FL_PUNCH_HOLE) {
        if (!(mode & FALLOC_FL_KEEP_SIZE)) {
            ret = -EINVAL;
        } else {
            ret = zero_range(exp, (uint64_t)off, end - (uint64_t)off,
                             BLOCK_REQ_MAY_UNMAP);
        }
    } else if (mode & FALLOC_FL_ZERO_RANGE) {
        ret = 0;
        if (!(mode & FALLOC_FL_KEEP_SIZE) && end > (uint64_t)len) {
            ret = export_resize(exp, end, true);
        }
        if (ret == 0) {
            ret = zero_range(exp, (uint64_t)off, end - (uint64_t)off, 0);
        }
    } else {
        ret = -EOPNOTSUPP;
    }
    if (ret == -ENOTSUP) {
        ret = -EOPNOTSUPP;   /* fallocate(2)'s word for "cannot" */
    }
    fuse_reply_err(req, -ret);
}

static void
fuse_op_fsync(fuse_req_t req, fuse_ino_t ino UNUSED, int datasync UNUSED,
              struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);

    fuse_reply_err(req, -block_handle_flush(exp->h));
}

/* Every close(2) of the file: QEMU flushes here too. */
static void
fuse_op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fuse_op_fsync(req, ino, 1, fi);
}

/*
 * SEEK_DATA / SEEK_HOLE: a range is data when block status says DATA;
 * zeroes and unallocated ranges are holes.  As QEMU's: ENXIO past the end
 * and for SEEK_DATA at the end; SEEK_HOLE finds the end at the latest.
 */
static void
fuse_op_lseek(fuse_req_t req, fuse_ino_t ino UNUSED, off_t off, int whence,
              struct fuse_file_info *fi UNUSED)
{
    struct fuse_export *exp = fuse_req_userdata(req);
    bool want_data = whence == SEEK_DATA;
    int64_t len;

    if (whence != SEEK_DATA && whence != SEEK_HOLE) {
        fuse_reply_err(req, EINVAL);
        return;
    }
    len = export_length(exp);
    if (len < 0) {
        reply_err(req, (int)len);
        return;
    }
    if (off < 0 || off > len) {
        fuse_reply_err(req, ENXIO);
        return;
    }
    while (off < len) {
        uint64_t pnum;
        int ret = block_handle_status(exp->h, (uint64_t)off,
                                      (uint64_t)(len - off), &pnum, NULL);

        if (ret < 0) {
            reply_err(req, ret);
            return;
        }
        if (!!(ret & BLOCK_STATUS_DATA) == want_data) {
            fuse_reply_lseek(req, off);
            return;
        }
        off += (off_t)pnum;
    }
    if (want_data) {
        fuse_reply_err(req, ENXIO);
    } else {
        fuse_reply_lseek(req, len);
    }
}

static const struct fuse_lowlevel_ops fuse_ops = {
    .lookup = fuse_op_lookup,
    .getattr = fuse_op_getattr,
    .setattr = fuse_op_setattr,
    .open = fuse_op_open,
    .read = fuse_op_read,
    .write = fuse_op_write,
    .flush = fuse_op_flush,
    .fsync = fuse_op_fsync,
    .fallocate = fuse_op_fallocate,
    .lseek = fuse_op_lseek,
};

/* ---- Threads and the reader role --------------------------------------- */

/* The blocking hook (util.h) of a reader running a request: pass the
 * role to an idle thread before sleeping.  Takes exp->lock, a leaf. */
struct reader_turn {
    struct fuse_export *exp;
    bool handed_off;
};

static void
reader_hand_off(void *opaque)
{
    struct reader_turn *turn = opaque;
    struct fuse_export *exp = turn->exp;

    mutex_lock(&exp->lock);
    exp->reading = false;
    cond_signal(&exp->role_cond);
    mutex_unlock(&exp->lock);
    turn->handed_off = true;
}

/* The next request into buf: true, or false once the export ends (quit,
 * or the kernel ended the session: unmounted from outside). */
static bool
receive_request(struct fuse_export *exp, struct fuse_buf *buf)
{
    struct pollfd pfd[2] = {
        { .fd = exp->fd, .events = POLLIN },
        { .fd = exp->stop_fd, .events = POLLIN },
    };

    while (!__atomic_load_n(&exp->quit, __ATOMIC_ACQUIRE)) {
        int ret = fuse_session_receive_buf(exp->se, buf);

        if (ret > 0) {
            return true;
        }
        if (ret == -EAGAIN) {
            if (poll(pfd, 2, -1) < 0 && errno != EINTR) {
                return false;
            }
        } else if (ret != -EINTR) {
            return false;      /* 0: the session ended; or a broken read */
        }
    }
    return false;
}

/* Hold the reader role: read requests and run each on this thread until
 * one blocks (another thread then reads on: true) or the export ends. */
static bool
reader_loop(struct fuse_export *exp, struct fuse_buf *buf)
{
    struct reader_turn turn = { .exp = exp };

    while (!turn.handed_off) {
        if (!receive_request(exp, buf)) {
            return false;
        }
        thread_set_block_hook(reader_hand_off, &turn);
        fuse_session_process_buf(exp->se, buf);
        thread_set_block_hook(NULL, NULL);
    }
    return true;
}

static void *
fuse_thread(void *opaque)
{
    struct fuse_export *exp = opaque;
    struct fuse_buf buf;

    memset(&buf, 0, sizeof(buf));
    for (;;) {
        mutex_lock(&exp->lock);
        while (exp->reading && !exp->quit) {
            cond_wait(&exp->role_cond, &exp->lock);
        }
        if (exp->quit) {
            mutex_unlock(&exp->lock);
            break;
        }
        exp->reading = true;
        mutex_unlock(&exp->lock);
        if (!reader_loop(exp, &buf)) {
            mutex_lock(&exp->lock);
            __atomic_store_n(&exp->quit, true, __ATOMIC_RELEASE);
            cond_broadcast(&exp->role_cond);
            mutex_unlock(&exp->lock);
            break;
        }
    }
    free(buf.mem);
    return NULL;
}

/* Let every thread finish its request and leave. */
static void
stop_threads(struct fuse_export *exp)
{
    uint64_t one = 1;

    mutex_lock(&exp->lock);
    __atomic_store_n(&exp->quit, true, __ATOMIC_RELEASE);
    cond_broadcast(&exp->role_cond);
    mutex_unlock(&exp->lock);
    if (write(exp->stop_fd, &one, sizeof(one)) != sizeof(one)) {
        abort();               /* an eventfd write of 1 cannot fail */
    }
    for (int i = 0; i < exp->nthreads; i++) {
        thread_join(exp->threads[i]);
    }
    exp->nthreads = 0;
}

/* ---- Creating and deleting --------------------------------------------- */

static struct fuse_export *
find_by_path(const char *abs_path)
{
    struct fuse_export *exp;

    TAILQ_FOREACH(exp, &g_fuse_exports, link) {
        if (!strcmp(exp->abs_mountpoint, abs_path)) {
            return exp;
        }
    }
    return NULL;
}

/* Another path to a file one of our exports is mounted on. */
static struct fuse_export *
find_by_file(const struct stat *st)
{
    struct fuse_export *exp;

    TAILQ_FOREACH(exp, &g_fuse_exports, link) {
        if (exp->st_dev == st->st_dev && exp->st_ino == st->st_ino) {
            return exp;
        }
    }
    return NULL;
}

static char *
absolute_path(const char *path)
{
    char *cwd;
    char *abs;

    if (path[0] == '/') {
        return xstrdup(path);
    }
    cwd = getcwd(NULL, 0);
    if (!cwd) {
        return xstrdup(path);
    }
    abs = xasprintf("%s/%s", cwd, path);
    free(cwd);
    return abs;
}

/* Is user_allow_other set in /etc/fuse.conf (fusermount3 needs it to
 * mount with allow_other for anyone but root)? */
static bool
user_allow_other_set(void)
{
    FILE *f = fopen("/etc/fuse.conf", "re");
    char line[256];
    bool found = false;

    if (!f) {
        return false;
    }
    while (!found && fgets(line, sizeof(line), f)) {
        found = !strcmp(line, "user_allow_other\n") ||
                !strcmp(line, "user_allow_other");
    }
    fclose(f);
    return found;
}

/* A session mounted on the export's mount point, or false with *errp. */
static bool
session_mount(struct fuse_export *exp, bool allow_other, struct err **errp)
{
    CLEANUP_FREE char *mount_opts =
        xasprintf("default_permissions,fsname=lockstep%s",
                  allow_other ? ",allow_other" : "");
    char *argv[] = { "lockstepd", "-o", mount_opts, NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);

    exp->se = fuse_session_new(&args, &fuse_ops, sizeof(fuse_ops), exp);
    fuse_opt_free_args(&args);
    if (!exp->se) {
        err_setf(errp, "Failed to set up FUSE session");
        return false;
    }
    if (fuse_session_mount(exp->se, exp->abs_mountpoint) != 0) {
        fuse_session_destroy(exp->se);
        exp->se = NULL;
        if (allow_other && geteuid() != 0 && !user_allow_other_set()) {
            err_setf(errp, "Failed to mount FUSE session to export: "
                     "allow-other=on needs 'user_allow_other' in "
                     "/etc/fuse.conf");
        } else {
            err_setf(errp, "Failed to mount FUSE session to export");
        }
        return false;
    }
    exp->fd = fuse_session_fd(exp->se);
    if (fcntl(exp->fd, F_SETFL, fcntl(exp->fd, F_GETFL) | O_NONBLOCK) < 0) {
        abort();               /* a valid fd: cannot fail */
    }
    exp->allow_other = allow_other;
    return true;
}

static void
export_free(struct fuse_export *exp)
{
    if (exp->se) {
        fuse_session_unmount(exp->se);   /* also closes exp->fd */
        fuse_session_destroy(exp->se);
    }
    if (exp->stop_fd >= 0) {
        close(exp->stop_fd);
    }
    block_handle_free(exp->h);
    mutex_destroy(&exp->lock);
    cond_destroy(&exp->role_cond);
    mutex_destroy(&exp->attr_lock);
    mutex_destroy(&exp->resize_lock);
    free(exp->id);
    free(exp->mountpoint);
    free(exp->abs_mountpoint);
    free(exp);
}

static void
export_init_attrs(struct fuse_export *exp)
{
    struct block_node *node = block_handle_node(exp->h);

    exp->mode = S_IFREG | S_IRUSR | (exp->writable ? S_IWUSR : 0);
    exp->uid = getuid();
    exp->gid = getgid();
    clock_gettime(CLOCK_REALTIME, &exp->mtime);
    exp->ctime = exp->mtime;
    exp->seen_gen = __atomic_load_n(&node->write_gen, __ATOMIC_ACQUIRE);
}

/*
 * The checks in QEMU's order (the handle with its permissions, the
 * mount point, then mounting), so that the first error is the same.
 */
static void *
fuse_export_create(const struct block_export_options *opts,
                   struct err **errp)
{
    const struct fuse_export_options *fo = opts->driver_opts;
    struct fuse_export *exp = xzalloc(sizeof(*exp));
    struct stat st;
    bool mounted;

    exp->stop_fd = -1;
    lock_init(&exp->lock, LOCK_FUSE_READER);
    cond_init(&exp->role_cond);
    lock_init(&exp->attr_lock, LOCK_FUSE_ATTR);
    lock_init(&exp->resize_lock, LOCK_FUSE_RESIZE);
    exp->id = xstrdup(opts->id);
    exp->mountpoint = xstrdup(fo->mountpoint);
    exp->abs_mountpoint = absolute_path(fo->mountpoint);
    exp->writable = opts->writable;
    exp->growable = fo->growable;
    exp->writethrough = opts->writethrough;

    /* Writable and growable exports may resize (QEMU's rule). */
    exp->h = block_export_open_handle_perm(
        opts, opts->writable || fo->growable ? BLOCK_PERM_RESIZE : 0, errp);
    if (!exp->h) {
        goto fail;
    }
    if (find_by_path(exp->abs_mountpoint)) {
        err_setf(errp, "There already is a FUSE export on '%s'",
                 fo->mountpoint);
        goto fail;
    }
    if (stat(fo->mountpoint, &st) < 0) {
        err_setf_errno(errp, errno, "Failed to stat '%s'", fo->mountpoint);
        goto fail;
    }
    if (find_by_file(&st)) {
        err_setf(errp, "There already is a FUSE export on '%s'",
                 fo->mountpoint);
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        err_setf(errp, "'%s' is not a regular file", fo->mountpoint);
        goto fail;
    }
    export_init_attrs(exp);

    if (fo->allow_other == FUSE_EXPORT_ALLOW_OTHER_AUTO) {
        mounted = session_mount(exp, true, NULL) ||
                  session_mount(exp, false, errp);
    } else {
        mounted = session_mount(exp, fo->allow_other ==
                                     FUSE_EXPORT_ALLOW_OTHER_ON, errp);
    }
    if (!mounted) {
        goto fail;
    }
    exp->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (exp->stop_fd < 0) {
        err_setf_errno(errp, errno, "Failed to create an eventfd");
        goto fail;
    }
    for (; exp->nthreads < FUSE_THREADS; exp->nthreads++) {
        thread_create(&exp->threads[exp->nthreads], "fuse", fuse_thread,
                      exp);
    }
    /* The mounted file as the threads serve it, for find_by_file(). */
    if (stat(exp->abs_mountpoint, &st) == 0) {
        exp->st_dev = st.st_dev;
        exp->st_ino = st.st_ino;
    }
    TAILQ_INSERT_TAIL(&g_fuse_exports, exp, link);
    return exp;

fail:
    export_free(exp);
    return NULL;
}

/*
 * Open files do not keep the export ("safe" deletes too, as QEMU's): they
 * get ENOTCONN afterwards.
 */
static bool
fuse_export_del(void *state, bool hard UNUSED, struct err **errp)
{
    struct fuse_export *exp = state;

    if (block_drained()) {
        err_setf(errp, "Cannot stop FUSE export '%s' while the graph is "
                 "drained", exp->id);
        return false;
    }
    stop_threads(exp);
    TAILQ_REMOVE(&g_fuse_exports, exp, link);
    export_free(exp);
    return true;
}

static struct block_handle *
fuse_export_handle(void *state)
{
    return ((struct fuse_export *)state)->h;
}

const struct export_driver fuse_export_driver = {
    .type = "fuse",
    .create = fuse_export_create,
    .del = fuse_export_del,
    .handle = fuse_export_handle,
};
