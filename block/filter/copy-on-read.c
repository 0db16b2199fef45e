/* SPDX-License-Identifier: MIT */
/*
 * The "copy-on-read" filter (QEMU's driver of that name, and what
 * lockstep-io -C puts on top of an image): a read of a region its child's
 * own layer does not hold is read from the backing chain and written into
 * the child, so that the next read finds it there.  Options: "file" (the
 * child) and "bottom" (a node of the child's backing chain: only what that
 * node or the layers above it hold is copied; default: everything).
 *
 * The copy works in whole clusters of the format below (a read of one byte
 * copies its cluster; never past the end of the node), so that a copied
 * cluster is complete.  Clusters the child already holds are read, never
 * written again.  A region that reads as zeroes is written as zeroes (the
 * format may record it without data: qcow2's zero clusters), others with
 * their data; either way the region is then allocated in the child.  The
 * writes carry BLOCK_REQ_WRITE_UNCHANGED, and blkdebug sees the event
 * "cor_write" before each one.
 *
 * Locking: a copy must not write old data over a write that went through
 * the filter since the copy read the backing file.  Writes through the
 * filter hold copy_lock shared for their duration; a copy holds it alone
 * from its allocation check to its write.  Reads of allocated clusters
 * take no lock.  copy_lock is only ever taken by this file, around calls
 * into the child, which never come back into this node.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "lockstep/driver.h"
#include "util.h"

/* The most one copy step reads into its bounce buffer. */
#define COR_MAX_STEP (16u << 20)

struct cor_state {
    pthread_rwlock_t copy_lock;
    struct block_node *bottom;     /* referenced, or NULL */
};

static const struct block_opt cor_opts[] = {
    {"file", BLOCK_OPT_CHILD, true, NULL},
    {"bottom", BLOCK_OPT_STRING, false, NULL},
    {NULL, 0, false, NULL},
};

/* The child's backing chain below its own layer, or NULL. */
static struct block_node *
below_child(struct block_node *node)
{
    struct block_node *fmt = block_skip_filters(node->file->node);

    return fmt && fmt->backing ? fmt->backing->node : NULL;
}

static int
find_bottom(struct block_node *node, const char *name, struct err **errp)
{
    struct cor_state *s = node->opaque;
    struct block_node *b = block_node_find(name);
    struct block_node *n;

    if (!b) {
        err_setf(errp, "Bottom node '%s' not found", name);
        return -ENOENT;
    }
    if (block_filtered(b)) {
        err_setf(errp, "Bottom node '%s' is a filter: name the node that "
                 "holds the data", name);
        return -EINVAL;
    }
    for (n = below_child(node); n; ) {
        struct block_node *fmt = block_skip_filters(n);

        if (fmt == b) {
            break;
        }
        n = fmt && fmt->backing ? fmt->backing->node : NULL;
    }
    if (!n) {
        err_setf(errp, "Bottom node '%s' is not in the backing chain below "
                 "the copy-on-read filter", name);
        return -EINVAL;
    }
    block_node_ref(b);
    s->bottom = b;
    return 0;
}

static int
cor_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct cor_state *s = node->opaque;
    const char *bottom = block_opt_str(options, "bottom", NULL);
    struct block_node *child;

    if (!block_node_open_child(node, options, "file", errp)) {
        return -EINVAL;
    }
    if (bottom && find_bottom(node, bottom, errp) < 0) {
        return -EINVAL;
    }
    child = node->file->node;
    node->limits = child->limits;
    node->supported_write_flags = child->supported_write_flags;
    node->supported_zero_flags = child->supported_zero_flags;
    if (pthread_rwlock_init(&s->copy_lock, NULL) != 0) {
        abort();
    }
    return 0;
}

static void
cor_close(struct block_node *node)
{
    struct cor_state *s = node->opaque;

    pthread_rwlock_destroy(&s->copy_lock);
    if (s->bottom) {
        block_node_unref(s->bottom);
    }
}

/* The child's own layer writes what it copies; others may keep reading. */
static void
cor_child_perm(struct block_node *node, const char *child_name,
               uint32_t parent_perm, uint32_t parent_shared,
               uint32_t *perm, uint32_t *shared)
{
    block_default_child_perm(node, child_name, parent_perm, parent_shared,
                             perm, shared);
    *perm |= BLOCK_PERM_WRITE_UNCHANGED;
    *shared |= BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED;
}

/*
 * Is [offset, +bytes) held by a layer from the one below the child down to
 * bottom (inclusive)?  1 or 0 for the first *pnum bytes, or -errno.
 */
static int
held_above_bottom(struct block_node *node, uint64_t offset, uint64_t bytes,
                  uint64_t *pnum)
{
    struct cor_state *s = node->opaque;
    struct block_node *n = below_child(node);

    *pnum = bytes;
    while (n) {
        struct block_node *fmt = block_skip_filters(n);
        uint64_t p;
        int ret = block_is_allocated(fmt, offset, *pnum, &p);

        if (ret < 0) {
            return ret;
        }
        if (ret) {
            *pnum = MIN(*pnum, p);
            return 1;
        }
        *pnum = MIN(*pnum, p);
        if (fmt == s->bottom) {
            break;
        }
        n = fmt->backing ? fmt->backing->node : NULL;
    }
    return 0;
}

/*
 * One copy step at pos (unallocated in the child's layer a moment ago):
 * under copy_lock, check again, read up to *n bytes through the child
 * and write them back into it.  *n is set to the bytes the step covers;
 * *copied tells whether bounce holds them (else the child had them by
 * now and the caller reads them itself).
 */
static int
copy_step(struct block_node *node, uint64_t pos, uint64_t *n, void *bounce,
          bool *copied)
{
    struct cor_state *s = node->opaque;
    struct block_node *child = node->file->node;
    uint64_t p;
    int ret;

    *copied = false;
    lock_order_enter(LOCK_COR_COPY);
    if (pthread_rwlock_wrlock(&s->copy_lock) != 0) {
        abort();
    }
    ret = block_is_allocated(child, pos, *n, &p);
    if (ret != 0) {
        *n = MIN(*n, p);
        goto out;
    }
    *n = MIN(*n, p);
    ret = block_pread(child, pos, *n, bounce, 0);
    if (ret < 0) {
        goto out;
    }
    block_debug_event(child, "cor_write");
    if (buffer_is_zero(bounce, *n)) {
        ret = block_pwrite_zeroes(child, pos, *n, BLOCK_REQ_WRITE_UNCHANGED);
    } else {
        ret = block_pwrite(child, pos, *n, bounce, BLOCK_REQ_WRITE_UNCHANGED);
    }
    *copied = ret == 0;
out:
    pthread_rwlock_unlock(&s->copy_lock);
    lock_order_leave(LOCK_COR_COPY);
    return ret < 0 ? ret : 0;
}

/*
 * Read [offset, +bytes) into buf, copying what the child's layer lacks in
 * whole clusters: the step [pos, +n) covers part of the request, whose
 * overlap is copied out of bounce or read directly.
 */
static int
cor_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
          void *buf, unsigned flags)
{
    struct cor_state *s = node->opaque;
    struct block_node *child = node->file->node;
    struct block_node *fmt = block_skip_filters(child);
    uint64_t cs = fmt && fmt->cluster_size ? fmt->cluster_size : 1;
    int64_t len = block_getlength(child);
    uint64_t pos, end, req_end = offset + bytes;
    void *bounce = NULL;
    int ret = 0;

    if (len < 0) {
        return (int)len;
    }
    pos = align_down(offset, cs);
    end = MIN(align_up(req_end, cs), (uint64_t)len);
    while (pos < end && ret == 0) {
        uint64_t n, from, to;
        bool copy = false, copied = false;

        ret = block_is_allocated(child, pos, end - pos, &n);
        if (ret < 0) {
            break;
        }
        n = MIN(n, end - pos);
        if (ret == 0 && s->bottom) {
            ret = held_above_bottom(node, pos, n, &n);
            if (ret < 0) {
                break;
            }
            copy = ret == 1;
        } else {
            copy = ret == 0;
        }
        ret = 0;
        if (copy) {
            n = MIN(n, COR_MAX_STEP);
            if (!bounce) {
                bounce = xmalloc_page(COR_MAX_STEP);
            }
            ret = copy_step(node, pos, &n, bounce, &copied);
            if (ret < 0) {
                break;
            }
        }
        from = MAX(pos, offset);
        to = MIN(pos + n, req_end);
        if (from < to) {
            if (copied) {
                memcpy((char *)buf + (from - offset),
                       (char *)bounce + (from - pos), to - from);
            } else {
                ret = block_pread(child, from, to - from,
                                  (char *)buf + (from - offset), flags);
            }
        }
        pos += n;
    }
    free(bounce);
    return ret;
}

/* Guest writes: shared among themselves, never during a copy. */
static void
write_begin(struct block_node *node)
{
    struct cor_state *s = node->opaque;

    lock_order_enter(LOCK_COR_COPY);
    if (pthread_rwlock_rdlock(&s->copy_lock) != 0) {
        abort();
    }
}

static void
write_end(struct block_node *node)
{
    struct cor_state *s = node->opaque;

    pthread_rwlock_unlock(&s->copy_lock);
    lock_order_leave(LOCK_COR_COPY);
}

static int
cor_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
           const void *buf, unsigned flags)
{
    int ret;

    write_begin(node);
    ret = block_pwrite(node->file->node, offset, bytes, buf, flags);
    write_end(node);
    return ret;
}

static int
cor_pwrite_zeroes(struct block_node *node, uint64_t offset, uint64_t bytes,
                  unsigned flags)
{
    int ret;

    write_begin(node);
    ret = block_pwrite_zeroes(node->file->node, offset, bytes, flags);
    write_end(node);
    return ret;
}

static int
cor_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    int ret;

    write_begin(node);
    ret = block_pdiscard(node->file->node, offset, bytes);
    write_end(node);
    return ret;
}

static int
cor_truncate(struct block_node *node, uint64_t length, struct err **errp)
{
    return block_truncate(node->file->node, length, errp);
}

const struct block_driver cor_driver = {
    .name = "copy-on-read",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct cor_state),
    .options = cor_opts,
    .open = cor_open,
    .close = cor_close,
    .child_perm = cor_child_perm,
    .pread = cor_pread,
    .pwrite = cor_pwrite,
    .pwrite_zeroes = cor_pwrite_zeroes,
    .pdiscard = cor_pdiscard,
    .truncate = cor_truncate,
};
