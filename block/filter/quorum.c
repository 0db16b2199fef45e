/* SPDX-License-Identifier: MIT */
/*
 * The "quorum" driver: N children that should hold the same data.  Writes
 * go to every child and succeed when at least vote-threshold children
 * succeeded; reads either take the first child that answers
 * (read-pattern "fifo") or read every child and vote on the content
 * (read-pattern "quorum", the default).  Options follow QEMU's schema:
 * children (inline objects or node-names, attached as "children.0",
 * "children.1", ...), vote-threshold, blkverify (only false), rewrite-
 * corrupted, read-pattern.
 *
 * COLO replication uses it on both hosts: on the primary, children.0 is
 * the local disk and children.1 a replication node whose file is an NBD
 * client, with read-pattern fifo and vote-threshold 1, so a dead secondary
 * does not fail the guest's writes; the management then removes the child
 * with x-blockdev-change (quorum_del_child()).
 *
 * Design notes.
 *
 * - Fan-out.  A write, read (quorum mode) or flush runs on every child.
 *   Requests up to QUORUM_INLINE_MAX (not flushes) serve the children one
 *   after the other on the request's own thread, where a hand-off would
 *   cost more than it overlaps.  Others run on every child at once: the
 *   request's own thread serves children.0 and a helper thread per other
 *   child serves the rest; the request waits for them before it
 *   returns (so the graph lock the request holds covers their I/O; the
 *   helpers call node functions and never enter the graph themselves).
 *   Helpers are kept between requests in a process-wide pool (creating and
 *   joining a thread per write cost more than a 4 KiB write): a task goes
 *   to an idle helper, or to a new one while there are fewer than
 *   QUORUM_HELPERS_MAX, else the request serves that child inline, one
 *   after the other.  A request never waits for a helper to become free,
 *   so nested quorums cannot deadlock.  This is the one place outside the
 *   NBD server and jobs that makes threads.
 *
 * - Voting.  Every child that read successfully contributes its buffer;
 *   equal buffers (memcmp) form one version.  The version with the most
 *   votes wins (ties: the one containing the lowest child index) when it
 *   has at least vote-threshold votes; otherwise the read fails with -EIO
 *   and QUORUM_FAILURE.  Children in losing versions are reported with
 *   QUORUM_REPORT_BAD (no "error" member, as QEMU does) and, with
 *   rewrite-corrupted, get the winning data written back (best effort).
 *
 * - Errors.  A failing child is reported with QUORUM_REPORT_BAD {type,
 *   error, node-name, sector, sectors-count}.  When fewer than
 *   vote-threshold children succeed, the request fails with the most common
 *   errno among the failures and QUORUM_FAILURE {reference, sector,
 *   sectors-count} is sent (for writes too, unlike QEMU, which only sends
 *   it for reads; the management wants to know either way).
 *
 * - Block status: like QEMU, a range reads as zero when at least
 *   vote-threshold children say so; otherwise it is data.  No offsets are
 *   exposed (the data lives in several places).
 *
 * - Discard is not passed down (QEMU's quorum has no discard either).
 *
 * - Flush goes to every child with the same vote (type "flush" in
 *   QUORUM_REPORT_BAD, no QUORUM_FAILURE).  The core does not flush the
 *   children again after us (block_flush() leaves that to filters without
 *   a "file" child), so a dead NBD child on the primary does not fail the
 *   guest's flush when the threshold is met.
 *
 * Locking: the children array changes only on the main thread inside a
 * drained section (open, quorum_add_child, quorum_del_child), so requests
 * read it without a lock.  The other fields are set at open.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "block/filter/quorum.h"
#include "lockstep/driver.h"
#include "runtime/event.h"
#include "util.h"

extern const struct block_driver quorum_driver;

enum quorum_op {
    QUORUM_OP_READ,
    QUORUM_OP_WRITE,
    QUORUM_OP_ZEROES,
    QUORUM_OP_FLUSH,
};

static const char *const quorum_op_names[] = {
    [QUORUM_OP_READ] = "read",
    [QUORUM_OP_WRITE] = "write",
    [QUORUM_OP_ZEROES] = "write",
    [QUORUM_OP_FLUSH] = "flush",
};

struct quorum_state {
    /* Main thread, changed only while drained; requests read freely. */
    struct block_child **children;
    size_t nr_children;
    /* Set at open. */
    int threshold;
    bool rewrite_corrupted;
    bool fifo;
};

/* One child's part of a request. */
struct quorum_task {
    enum quorum_op op;
    struct block_node *child;
    uint64_t offset;
    uint64_t bytes;
    void *rbuf;
    const void *wbuf;
    unsigned flags;
    int ret;
    bool threaded;              /* given to a helper */
    bool done;                  /* Protected by: g_helper_lock */
    pthread_cond_t *done_cond;  /* signalled when done is set */
};

/* Largest piece one request hands to the children (voting reads keep a
 * buffer of this size per child). */
#define QUORUM_MAX_TRANSFER (4 * 1024 * 1024)

static const char *const read_patterns[] = {"quorum", "fifo", NULL};

static const struct block_opt quorum_opts[] = {
    {"children", BLOCK_OPT_CHILD_LIST, true, NULL},
    {"vote-threshold", BLOCK_OPT_INT, true, NULL},
    {"blkverify", BLOCK_OPT_BOOL, false, NULL},
    {"rewrite-corrupted", BLOCK_OPT_BOOL, false, NULL},
    {"read-pattern", BLOCK_OPT_STRING, false, read_patterns},
    {NULL, 0, false, NULL},
};

/* ---- Events ------------------------------------------------------------ */

static void
sector_range(uint64_t offset, uint64_t bytes, int64_t *sector,
             int64_t *count)
{
    uint64_t start = offset / 512;
    uint64_t end = div_round_up(offset + bytes, 512);

    *sector = (int64_t)start;
    *count = (int64_t)(end - start);
}

/* QUORUM_REPORT_BAD; ret < 0 adds "error". */
static void
report_bad(enum quorum_op op, uint64_t offset, uint64_t bytes,
           struct block_node *child, int ret)
{
    int64_t sector, count;
    struct event *ev = event_new("QUORUM_REPORT_BAD");

    sector_range(offset, bytes, &sector, &count);
    event_add_str(ev, "type", quorum_op_names[op]);
    event_add_str(ev, "node-name", child->node_name);
    event_add_int(ev, "sector", sector);
    event_add_int(ev, "sectors-count", count);
    if (ret < 0) {
        event_add_str(ev, "error", strerror(-ret));
    }
    event_emit(ev);
}

static void
report_failure(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    int64_t sector, count;
    struct event *ev = event_new("QUORUM_FAILURE");

    sector_range(offset, bytes, &sector, &count);
    event_add_str(ev, "reference", node->node_name);
    event_add_int(ev, "sector", sector);
    event_add_int(ev, "sectors-count", count);
    event_emit(ev);
}

/* ---- Fan-out ----------------------------------------------------------- */

static void
task_run(struct quorum_task *t)
{
    switch (t->op) {
    case QUORUM_OP_READ:
        t->ret = block_pread(t->child, t->offset, t->bytes, t->rbuf,
                             t->flags);
        break;
    case QUORUM_OP_WRITE:
        t->ret = block_pwrite(t->child, t->offset, t->bytes, t->wbuf,
                              t->flags);
        break;
    case QUORUM_OP_ZEROES:
        t->ret = block_pwrite_zeroes(t->child, t->offset, t->bytes,
                                     t->flags);
        break;
    case QUORUM_OP_FLUSH:
        t->ret = block_flush(t->child);
        break;
    }
}

#define QUORUM_HELPERS_MAX 64

/*
 * Requests up to this size run their children one after the other on the
 * request's thread.  Handing a child to a helper costs two wake-ups (the
 * helper's, then the request's when the helper is done), which is more
 * than a small write takes: measured on the primary of a replicated pair
 * (local qcow2 + NBD child), 4 KiB writes went from 58 to 36 us of daemon
 * CPU per request at queue depth 16 (10.7k -> 14.3k IOPS) and from 5.2k to
 * 7.4k IOPS at queue depth 1.  Large writes (1 MiB) keep the overlap:
 * they were 4 % faster with helpers.  Flushes always fan out: both sides
 * usually wait for a device.
 */
#define QUORUM_INLINE_MAX (64 * 1024)

struct quorum_helper {
    pthread_cond_t cond;                /* a task was handed over */
    struct quorum_task *task;           /* Protected by: g_helper_lock */
    struct quorum_helper *next_idle;    /* Protected by: g_helper_lock */
};

static struct lock g_helper_lock = LOCK_INITIALIZER(QUORUM_HELPER);
static struct quorum_helper *g_idle;    /* Protected by: g_helper_lock */
static unsigned g_nhelpers;             /* Protected by: g_helper_lock */

static void *
helper_main(void *opaque)
{
    struct quorum_helper *h = opaque;

    mutex_lock(&g_helper_lock);
    for (;;) {
        struct quorum_task *t;

        while (!h->task) {
            cond_wait(&h->cond, &g_helper_lock);
        }
        t = h->task;
        mutex_unlock(&g_helper_lock);
        task_run(t);
        mutex_lock(&g_helper_lock);
        /* t belongs to the waiting request again once done is seen. */
        t->done = true;
        cond_broadcast(t->done_cond);
        h->task = NULL;
        h->next_idle = g_idle;
        g_idle = h;
    }
    return NULL;
}

/* Hand t to an idle or new helper; false: run it yourself. */
static bool
helper_submit(struct quorum_task *t, pthread_cond_t *done_cond)
{
    struct quorum_helper *h;

    SCOPED_LOCK(&g_helper_lock);
    h = g_idle;
    if (h) {
        g_idle = h->next_idle;
    } else {
        pthread_attr_t attr;
        pthread_t tid;
        int ret;

        if (g_nhelpers >= QUORUM_HELPERS_MAX) {
            return false;
        }
        h = calloc(1, sizeof(*h));
        if (!h) {
            return false;
        }
        pthread_cond_init(&h->cond, NULL);
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        ret = pthread_create(&tid, &attr, helper_main, h);
        pthread_attr_destroy(&attr);
        if (ret != 0) {
            pthread_cond_destroy(&h->cond);
            free(h);
            return false;
        }
        g_nhelpers++;
    }
    t->done = false;
    t->done_cond = done_cond;
    h->task = t;
    cond_signal(&h->cond);
    return true;
}

/* Run every task on this thread, one after the other. */
static void
run_inline(struct quorum_task *tasks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        task_run(&tasks[i]);
    }
}

/* Run every task: small ones all on this thread, otherwise tasks[0] on
 * this thread and the others on helpers. */
static void
fan_out(struct quorum_task *tasks, size_t n)
{
    pthread_cond_t done_cond;

    if (n > 0 && tasks[0].op != QUORUM_OP_FLUSH &&
        tasks[0].bytes <= QUORUM_INLINE_MAX) {
        run_inline(tasks, n);
        return;
    }
    pthread_cond_init(&done_cond, NULL);
    for (size_t i = 1; i < n; i++) {
        tasks[i].threaded = helper_submit(&tasks[i], &done_cond);
    }
    if (n > 0) {
        task_run(&tasks[0]);
    }
    for (size_t i = 1; i < n; i++) {
        if (!tasks[i].threaded) {
            task_run(&tasks[i]);
        }
    }
    mutex_lock(&g_helper_lock);
    for (size_t i = 1; i < n; i++) {
        while (tasks[i].threaded && !tasks[i].done) {
            cond_wait(&done_cond, &g_helper_lock);
        }
    }
    mutex_unlock(&g_helper_lock);
    pthread_cond_destroy(&done_cond);
}

static struct quorum_task *
tasks_new(struct quorum_state *s, enum quorum_op op, uint64_t offset,
          uint64_t bytes, unsigned flags)
{
    struct quorum_task *tasks = calloc(s->nr_children, sizeof(*tasks));

    if (!tasks) {
        return NULL;
    }
    for (size_t i = 0; i < s->nr_children; i++) {
        tasks[i].op = op;
        tasks[i].child = s->children[i]->node;
        tasks[i].offset = offset;
        tasks[i].bytes = bytes;
        tasks[i].flags = flags;
    }
    return tasks;
}

/* The most common errno among failed tasks (QEMU's "vote on errors"). */
static int
vote_error(const struct quorum_task *tasks, size_t n)
{
    int best = -EIO;
    size_t best_count = 0;

    for (size_t i = 0; i < n; i++) {
        size_t count = 0;

        if (tasks[i].ret >= 0) {
            continue;
        }
        for (size_t j = 0; j < n; j++) {
            count += tasks[j].ret == tasks[i].ret;
        }
        if (count > best_count) {
            best_count = count;
            best = tasks[i].ret;
        }
    }
    return best;
}

/*
 * Count successes, report failing children, and decide: 0 when at least
 * threshold children succeeded, else the voted error (and QUORUM_FAILURE
 * when failure is set).
 */
static int
collect(struct block_node *node, struct quorum_task *tasks, size_t n,
        bool failure_event)
{
    struct quorum_state *s = node->opaque;
    size_t ok = 0;

    for (size_t i = 0; i < n; i++) {
        if (tasks[i].ret < 0) {
            report_bad(tasks[i].op, tasks[i].offset, tasks[i].bytes,
                       tasks[i].child, tasks[i].ret);
        } else {
            ok++;
        }
    }
    if (ok >= (size_t)s->threshold) {
        return 0;
    }
    if (failure_event) {
        report_failure(node, tasks[0].offset, tasks[0].bytes);
    }
    return vote_error(tasks, n);
}

/* ---- I/O ----------------------------------------------------------------- */

static int
quorum_pread_fifo(struct block_node *node, uint64_t offset, uint64_t bytes,
                  void *buf, unsigned flags)
{
    struct quorum_state *s = node->opaque;
    int ret = -EIO;

    for (size_t i = 0; i < s->nr_children; i++) {
        struct block_node *child = s->children[i]->node;

        ret = block_pread(child, offset, bytes, buf, flags);
        if (ret >= 0) {
            return 0;
        }
        report_bad(QUORUM_OP_READ, offset, bytes, child, ret);
    }
    return ret;
}

/* Read every child and vote. */
static int
quorum_pread_vote(struct block_node *node, uint64_t offset, uint64_t bytes,
                  void *buf, unsigned flags)
{
    struct quorum_state *s = node->opaque;
    size_t n = s->nr_children;
    struct quorum_task *tasks = tasks_new(s, QUORUM_OP_READ, offset, bytes,
                                          flags);
    /* version[i]: the index of the first child with child i's content. */
    size_t *version = calloc(n, sizeof(*version));
    size_t winner = SIZE_MAX, winner_votes = 0;
    int ret = 0;

    if (!tasks || !version) {
        ret = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (posix_memalign(&tasks[i].rbuf, 4096, MAX(bytes, 1)) != 0) {
            tasks[i].rbuf = NULL;
            ret = -ENOMEM;
            goto out;
        }
    }
    fan_out(tasks, n);
    ret = collect(node, tasks, n, true);
    if (ret < 0) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        size_t votes = 0;

        if (tasks[i].ret < 0) {
            continue;
        }
        version[i] = i;
        for (size_t j = 0; j < i; j++) {
            if (tasks[j].ret >= 0 && version[j] == j &&
                !memcmp(tasks[i].rbuf, tasks[j].rbuf, bytes)) {
                version[i] = j;
                break;
            }
        }
        if (version[i] != i) {
            continue;
        }
        for (size_t j = i; j < n; j++) {
            if (tasks[j].ret >= 0 && (j == i ||
                                      !memcmp(tasks[i].rbuf, tasks[j].rbuf,
                                              bytes))) {
                votes++;
            }
        }
        if (votes > winner_votes) {
            winner_votes = votes;
            winner = i;
        }
    }
    if (winner == SIZE_MAX || winner_votes < (size_t)s->threshold) {
        report_failure(node, offset, bytes);
        ret = -EIO;
        goto out;
    }
    memcpy(buf, tasks[winner].rbuf, bytes);
    for (size_t i = 0; i < n; i++) {
        if (tasks[i].ret < 0 || version[i] == winner) {
            continue;
        }
        report_bad(QUORUM_OP_READ, offset, bytes, tasks[i].child, 0);
        if (s->rewrite_corrupted && !node->read_only) {
            /* Best effort, as in QEMU: the read already has its answer. */
            (void)block_pwrite(tasks[i].child, offset, bytes,
                               tasks[winner].rbuf, 0);
        }
    }
    ret = 0;

out:
    if (tasks) {
        for (size_t i = 0; i < n; i++) {
            free(tasks[i].rbuf);
        }
    }
    free(tasks);
    free(version);
    return ret;
}

static int
quorum_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
             void *buf, unsigned flags)
{
    struct quorum_state *s = node->opaque;

    if (s->fifo) {
        return quorum_pread_fifo(node, offset, bytes, buf, flags);
    }
    return quorum_pread_vote(node, offset, bytes, buf, flags);
}

static int
quorum_write_op(struct block_node *node, enum quorum_op op, uint64_t offset,
                uint64_t bytes, const void *buf, unsigned flags)
{
    struct quorum_state *s = node->opaque;
    struct quorum_task *tasks = tasks_new(s, op, offset, bytes, flags);
    int ret;

    if (!tasks) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->nr_children; i++) {
        tasks[i].wbuf = buf;
    }
    fan_out(tasks, s->nr_children);
    ret = collect(node, tasks, s->nr_children, true);
    free(tasks);
    return ret;
}

static int
quorum_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
              const void *buf, unsigned flags)
{
    return quorum_write_op(node, QUORUM_OP_WRITE, offset, bytes, buf, flags);
}

static int
quorum_pwrite_zeroes(struct block_node *node, uint64_t offset,
                     uint64_t bytes, unsigned flags)
{
    return quorum_write_op(node, QUORUM_OP_ZEROES, offset, bytes, NULL,
                           flags);
}

static int
quorum_flush(struct block_node *node)
{
    struct quorum_state *s = node->opaque;
    struct quorum_task *tasks = tasks_new(s, QUORUM_OP_FLUSH, 0, 0, 0);
    int ret;

    if (!tasks) {
        return -ENOMEM;
    }
    fan_out(tasks, s->nr_children);
    ret = collect(node, tasks, s->nr_children, false);
    free(tasks);
    return ret;
}

static int
quorum_block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                    uint64_t *pnum, uint64_t *map UNUSED,
                    struct block_node **file UNUSED)
{
    struct quorum_state *s = node->opaque;
    uint64_t count = bytes;
    size_t zeroes = 0;

    for (size_t i = 0; i < s->nr_children; i++) {
        struct block_node *child = s->children[i]->node;
        uint64_t n = 0;
        int ret = block_status(child, offset, count, &n, NULL);

        if (ret < 0) {
            report_bad(QUORUM_OP_READ, offset, count, child, ret);
            continue;
        }
        count = MIN(count, n);
        if (ret & BLOCK_STATUS_ZERO) {
            zeroes++;
        }
    }
    *pnum = count;
    return zeroes >= (size_t)s->threshold ? BLOCK_STATUS_ZERO
                                          : BLOCK_STATUS_DATA;
}

/* ---- Control ----------------------------------------------------------- */

static int64_t
quorum_getlength(struct block_node *node)
{
    struct quorum_state *s = node->opaque;

    if (s->nr_children == 0) {
        return -ENOMEDIUM;
    }
    return block_getlength(s->children[0]->node);
}

/*
 * QEMU's rules: the parents' needs pass through to every child (plus
 * write, to repair corrupted children), and the children are written as
 * one, so nobody else may write or resize them.
 */
static void
quorum_child_perm(struct block_node *node, const char *child_name UNUSED,
                  uint32_t parent_perm, uint32_t parent_shared,
                  uint32_t *perm, uint32_t *shared)
{
    struct quorum_state *s = node->opaque;

    *perm = parent_perm & BLOCK_PERM_ALL;
    if (s->rewrite_corrupted && !node->read_only) {
        *perm |= BLOCK_PERM_WRITE;
    }
    *shared = parent_shared &
              (BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED);
}

static bool
child_name_used(struct quorum_state *s, const char *name)
{
    for (size_t i = 0; i < s->nr_children; i++) {
        if (!strcmp(s->children[i]->name, name)) {
            return true;
        }
    }
    return false;
}

/* Recompute limits from the children (open and after add/del). */
static void
quorum_refresh_limits(struct block_node *node)
{
    struct quorum_state *s = node->opaque;
    uint32_t align = 1, mem = 1;

    for (size_t i = 0; i < s->nr_children; i++) {
        struct block_node *c = s->children[i]->node;

        align = MAX(align, c->limits.request_alignment);
        mem = MAX(mem, c->limits.mem_alignment);
    }
    node->limits.request_alignment = align;
    node->limits.mem_alignment = mem;
    /* A voting read holds one buffer per child: bound it. */
    node->limits.max_transfer = MAX(QUORUM_MAX_TRANSFER, align);
    for (size_t i = 0; i < s->nr_children; i++) {
        uint64_t m = s->children[i]->node->limits.max_transfer;

        if (m && m < node->limits.max_transfer && m % align == 0) {
            node->limits.max_transfer = m;
        }
    }
}

static void
children_append(struct quorum_state *s, struct block_child *c)
{
    s->children = xrealloc(s->children,
                           (s->nr_children + 1) * sizeof(*s->children));
    s->children[s->nr_children++] = c;
}

static int
quorum_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct quorum_state *s = node->opaque;
    size_t n = block_opt_list_size(options, "children");
    int64_t threshold = block_opt_int(options, "vote-threshold", 0);
    const char *pattern = block_opt_str(options, "read-pattern", "quorum");
    int64_t len = -1;

    s->fifo = !strcmp(pattern, "fifo");
    s->rewrite_corrupted = block_opt_bool(options, "rewrite-corrupted",
                                          false);
    if (n < 1) {
        err_setf(errp, "Number of provided children must be 1 or more");
        return -EINVAL;
    }
    if (threshold < 1) {
        err_setf(errp, "Parameter 'vote-threshold' expects a value >= 1");
        return -EINVAL;
    }
    if ((size_t)threshold > n) {
        err_setf(errp, "threshold may not exceed children count");
        return -EINVAL;
    }
    if (block_opt_bool(options, "blkverify", false)) {
        err_setf(errp, "blkverify mode is not supported");
        return -ENOTSUP;
    }
    if (s->rewrite_corrupted && s->fifo) {
        err_setf(errp, "rewrite-corrupted=on cannot be used with "
                 "read-pattern=fifo");
        return -EINVAL;
    }
    s->threshold = (int)threshold;
    for (size_t i = 0; i < n; i++) {
        struct block_child *c = block_node_open_child_at(node, options,
                                                         "children", i, errp);

        if (!c) {
            goto fail;
        }
        children_append(s, c);
        if (len < 0) {
            len = block_getlength(c->node);
        } else if (block_getlength(c->node) != len) {
            err_setf(errp, "Quorum children must have the same length: "
                     "'%s' differs from '%s'", c->node->node_name,
                     s->children[0]->node->node_name);
            goto fail;
        }
    }
    quorum_refresh_limits(node);
    return 0;

fail:
    /* The core detaches the children; only our array goes. */
    free(s->children);
    s->children = NULL;
    s->nr_children = 0;
    return -EINVAL;
}

static void
quorum_close(struct block_node *node)
{
    struct quorum_state *s = node->opaque;

    free(s->children);
    s->children = NULL;
    s->nr_children = 0;
}

static void
quorum_query(struct block_node *node, json_t *info)
{
    struct quorum_state *s = node->opaque;
    json_t *children = json_array();

    for (size_t i = 0; i < s->nr_children; i++) {
        json_array_append_new(children,
                              json_pack("{s:s, s:s}", "child",
                                        s->children[i]->name, "node-name",
                                        s->children[i]->node->node_name));
    }
    json_object_set_new(info, "format-specific",
                        json_pack("{s:s, s:{s:i, s:s, s:o}}", "type",
                                  "quorum", "data", "vote-threshold",
                                  s->threshold, "read-pattern",
                                  s->fifo ? "fifo" : "quorum", "children",
                                  children));
}

/* ---- x-blockdev-change ------------------------------------------------ */

bool
block_node_is_quorum(struct block_node *node)
{
    return node && node->drv == &quorum_driver;
}

int
quorum_add_child(struct block_node *quorum, struct block_node *child,
                 struct err **errp)
{
    struct quorum_state *s;
    struct block_child *c;
    char name[32];
    unsigned idx;

    if (!block_node_is_quorum(quorum)) {
        err_setf(errp, "The node %s does not support adding a child",
                 quorum->node_name);
        return -ENOTSUP;
    }
    s = quorum->opaque;
    if (!TAILQ_EMPTY(&child->parents)) {
        err_setf(errp, "The node %s already has a parent", child->node_name);
        return -EBUSY;
    }
    if (block_getlength(child) != block_getlength(quorum)) {
        err_setf(errp, "The node %s does not have the length of quorum "
                 "node %s", child->node_name, quorum->node_name);
        return -EINVAL;
    }
    for (idx = 0; idx < INT_MAX; idx++) {
        snprintf(name, sizeof(name), "children.%u", idx);
        if (!child_name_used(s, name)) {
            break;
        }
    }
    if (idx == INT_MAX) {
        err_setf(errp, "Too many children");
        return -E2BIG;
    }
    block_drain_begin();
    c = block_node_attach_child(quorum, child, name, errp);
    if (c) {
        children_append(s, c);
        quorum_refresh_limits(quorum);
    }
    block_drain_end();
    return c ? 0 : -EPERM;
}

int
quorum_del_child(struct block_node *quorum, const char *child_name,
                 struct err **errp)
{
    struct quorum_state *s;
    size_t i;

    if (!block_node_is_quorum(quorum)) {
        err_setf(errp, "The node %s does not support removing a child",
                 quorum->node_name);
        return -ENOTSUP;
    }
    s = quorum->opaque;
    for (i = 0; i < s->nr_children; i++) {
        if (!strcmp(s->children[i]->name, child_name)) {
            break;
        }
    }
    if (i == s->nr_children) {
        err_setf(errp, "Node '%s' does not have child '%s'",
                 quorum->node_name, child_name);
        return -ENOENT;
    }
    if (s->nr_children <= (size_t)s->threshold) {
        err_setf(errp, "The number of children cannot be lower than the "
                 "vote threshold %d", s->threshold);
        return -EINVAL;
    }
    block_drain_begin();
    block_node_detach_child(quorum, s->children[i]);
    memmove(&s->children[i], &s->children[i + 1],
            (s->nr_children - i - 1) * sizeof(*s->children));
    s->nr_children--;
    quorum_refresh_limits(quorum);
    block_drain_end();
    return 0;
}

bool
qmp_x_blockdev_change(const char *parent, const char *child,
                      const char *node, struct err **errp)
{
    struct block_node *p = block_node_find(parent);
    struct block_node *n;

    if (!p) {
        err_setf(errp, "Cannot find device='%s' nor node-name='%s'",
                 parent ? parent : "", parent ? parent : "");
        return false;
    }
    if (child && node) {
        err_setf(errp, "The parameters child and node are in conflict");
        return false;
    }
    if (child) {
        if (!block_node_child(p, child)) {
            err_setf(errp, "Node '%s' does not have child '%s'",
                     p->node_name, child);
            return false;
        }
        return quorum_del_child(p, child, errp) == 0;
    }
    if (node) {
        n = block_node_find(node);
        if (!n) {
            err_setf(errp, "Node '%s' not found", node);
            return false;
        }
        return quorum_add_child(p, n, errp) == 0;
    }
    err_setf(errp, "Either child or node must be given");
    return false;
}

const struct block_driver quorum_driver = {
    .name = "quorum",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct quorum_state),
    .options = quorum_opts,
    .open = quorum_open,
    .close = quorum_close,
    .getlength = quorum_getlength,
    .pread = quorum_pread,
    .pwrite = quorum_pwrite,
    .pwrite_zeroes = quorum_pwrite_zeroes,
    .flush = quorum_flush,
    .block_status = quorum_block_status,
    .child_perm = quorum_child_perm,
    .query = quorum_query,
};
