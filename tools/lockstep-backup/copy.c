/* SPDX-License-Identifier: MIT */
/*
 * Reading the snapshot over NBD into the new image.
 *
 * 1. Plan: one connection asks block status for the whole export, of
 *    base:allocation and, for an incremental backup, of
 *    qemu:dirty-bitmap:SINCE.  The plan is a list of extents: READ what
 *    is allocated with data (and dirty), ZERO what is dirty but reads as
 *    zeroes (an overlay must hide the older data below it).  Nothing else
 *    is touched: a full backup leaves zero areas as holes, an incremental
 *    one reads only what the bitmap marks.
 * 2. Copy: "connections" worker threads, each with its own libnbd handle,
 *    take chunks of the plan in order and keep up to DEPTH reads in
 *    flight; each completed read is written into the image through
 *    liblockstep (qcow2 takes writes from many threads).  Runs of whole
 *    zero clusters in the data are not written (full) or written as zero
 *    clusters (incremental): zeroes stay sparse.
 *
 * Every wait on the server is bounded by the job's timeout; the first
 * failure stops every worker, and the caller throws the image away.
 * Locking: struct copier's lock protects the cursor, the first error and
 * the count of running workers; statistics are atomics; a worker's slots
 * are its own.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "backup.h"
#include "util.h"

#define CHUNK (2 * MiB)          /* one NBD read */
#define DEPTH 4                  /* reads in flight per connection */
#define ZERO_GRAIN (64 * KiB)    /* zero detection: the image's clusters */
#define STATUS_MAX (1 * GiB)     /* one block status request */
#define POLL_MS 1000

enum extent_kind { EXT_READ, EXT_ZERO };

struct extent {
    uint64_t off, len;
    enum extent_kind kind;
};

struct copier {
    struct copy_job *j;
    struct copy_stats *st;
    struct extent *ext;
    size_t n;

    struct lock lock;
    pthread_cond_t cond;         /* a worker ended */
    size_t next;                 /* cursor: extent and offset in it */
    uint64_t pos;
    struct err *err;             /* the first failure */
    bool stop;
    unsigned running;
};

/* Stop everyone; keep the first error (e may be NULL: just stop). */
static void
copier_fail(struct copier *c, struct err *e)
{
    SCOPED_LOCK(&c->lock);
    if (!c->err) {
        c->err = e;
    } else {
        err_free(e);
    }
    c->stop = true;
}

static bool
copier_stopped(struct copier *c)
{
    SCOPED_LOCK(&c->lock);
    return c->stop;
}

/* The next piece of work: false when there is none (or we stop). */
static bool
take(struct copier *c, struct extent *out)
{
    SCOPED_LOCK(&c->lock);
    while (!c->stop && c->next < c->n) {
        struct extent *e = &c->ext[c->next];
        uint64_t left = e->len - c->pos;
        uint64_t n = e->kind == EXT_READ ? MIN(left, CHUNK) : left;

        out->off = e->off + c->pos;
        out->len = n;
        out->kind = e->kind;
        c->pos += n;
        if (c->pos == e->len) {
            c->next++;
            c->pos = 0;
        }
        return true;
    }
    return false;
}

/* ---- NBD helpers ----------------------------------------------------- */

static void
nbd_err(struct err **errp, const char *what)
{
    err_setf(errp, "NBD: %s: %s", what, nbd_get_error());
}

/* Poll until cookie completes (1 done, -1 failed) within timeout_ms of
 * silence; interrupts and the copier's stop end it too. */
static bool
nbd_wait(struct nbd_handle *h, int64_t cookie, int timeout_ms,
         struct err **errp)
{
    int64_t deadline = clock_ns() + (int64_t)timeout_ms * 1000000;

    for (;;) {
        int r = nbd_aio_command_completed(h, (uint64_t)cookie);

        if (r == 1) {
            return true;
        }
        if (r < 0) {
            nbd_err(errp, "request failed");
            return false;
        }
        if (bk_check_interrupted(errp)) {
            return false;
        }
        if (clock_ns() > deadline) {
            err_setf(errp, "NBD: the server did not answer for %d s",
                     timeout_ms / 1000);
            return false;
        }
        if (nbd_poll(h, POLL_MS) < 0 && nbd_get_errno() != EINTR) {
            nbd_err(errp, "connection failed");
            return false;
        }
    }
}

static struct nbd_handle *
nbd_open(const struct copy_job *j, bool contexts, struct err **errp)
{
    struct nbd_handle *h = nbd_create();
    int64_t deadline = clock_ns() + (int64_t)j->timeout_ms * 1000000;

    if (!h) {
        nbd_err(errp, "could not create a handle");
        return NULL;
    }
    if (nbd_set_export_name(h, j->export_name) < 0 ||
        (contexts && nbd_add_meta_context(h, "base:allocation") < 0)) {
        goto fail;
    }
    if (contexts && j->bitmap) {
        CLEANUP_FREE char *ctx = xasprintf("qemu:dirty-bitmap:%s", j->bitmap);

        if (nbd_add_meta_context(h, ctx) < 0) {
            goto fail;
        }
    }
    if (nbd_aio_connect_unix(h, j->socket) < 0) {
        goto fail;
    }
    while (nbd_aio_is_connecting(h) > 0) {
        if (clock_ns() > deadline) {
            err_setf(errp, "NBD: no answer from %s within %d s", j->socket,
                     j->timeout_ms / 1000);
            nbd_close(h);
            return NULL;
        }
        if (bk_check_interrupted(errp)) {
            nbd_close(h);
            return NULL;
        }
        if (nbd_poll(h, POLL_MS) < 0 && nbd_get_errno() != EINTR) {
            goto fail;
        }
    }
    if (nbd_aio_is_ready(h) > 0) {
        return h;
    }
fail:
    err_setf(errp, "NBD: could not connect to export '%s' on %s: %s",
             j->export_name, j->socket, nbd_get_error());
    nbd_close(h);
    return NULL;
}

/* Say goodbye (NBD_CMD_DISC, not waited for) and close. */
static void
nbd_bye(struct nbd_handle *h)
{
    if (nbd_aio_is_ready(h) > 0) {
        nbd_aio_disconnect(h, 0);
    }
    nbd_close(h);
}

/* ---- Plan ------------------------------------------------------------ */

struct extent_list {
    struct { uint64_t off, len; uint32_t flags; } *v;
    size_t n, cap;
    uint64_t end;                 /* covered up to here */
};

struct status_reply {
    struct extent_list alloc, dirty;
    const char *dirty_ctx;
};

static void
list_add(struct extent_list *l, uint64_t off, uint64_t len, uint32_t flags)
{
    if (l->n && l->v[l->n - 1].flags == flags &&
        l->v[l->n - 1].off + l->v[l->n - 1].len == off) {
        l->v[l->n - 1].len += len;
    } else {
        if (l->n == l->cap) {
            l->cap = l->cap * 2 + 64;
            l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
        }
        l->v[l->n].off = off;
        l->v[l->n].len = len;
        l->v[l->n].flags = flags;
        l->n++;
    }
    l->end = off + len;
}

/* Drop what lies past end (a reply may cover more than another's). */
static void
list_cut(struct extent_list *l, uint64_t end)
{
    while (l->n && l->v[l->n - 1].off >= end) {
        l->n--;
    }
    if (l->n && l->v[l->n - 1].off + l->v[l->n - 1].len > end) {
        l->v[l->n - 1].len = end - l->v[l->n - 1].off;
    }
    l->end = end;
}

static int
status_cb(void *opaque, const char *ctx, uint64_t off, uint32_t *entries,
          size_t n, int *error)
{
    struct status_reply *r = opaque;
    struct extent_list *l = !strcmp(ctx, "base:allocation") ? &r->alloc
                          : r->dirty_ctx && !strcmp(ctx, r->dirty_ctx)
                          ? &r->dirty : NULL;

    (void)error;
    if (!l || off != l->end) {
        return 0;       /* another context, or a repeat */
    }
    for (size_t i = 0; i + 1 < n; i += 2) {
        if (entries[i] == 0) {
            break;
        }
        list_add(l, off, entries[i], entries[i + 1]);
        off += entries[i];
    }
    return 0;
}

static bool
query_status(struct nbd_handle *h, const struct copy_job *j,
             struct status_reply *r, struct err **errp)
{
    uint64_t off = 0;

    while (off < j->size) {
        nbd_extent_callback cb = { .callback = status_cb, .user_data = r };
        uint64_t len = MIN(j->size - off, STATUS_MAX);
        int64_t cookie = nbd_aio_block_status(h, len, off, cb,
                                              NBD_NULL_COMPLETION, 0);
        uint64_t end;

        if (cookie < 0) {
            nbd_err(errp, "block status");
            return false;
        }
        if (!nbd_wait(h, cookie, j->timeout_ms, errp)) {
            err_prepend(errp, "block status: ");
            return false;
        }
        end = r->alloc.end;
        if (r->dirty_ctx) {
            end = MIN(end, r->dirty.end);
        }
        if (end <= off) {
            err_setf(errp, "NBD: block status at %llu answered nothing",
                     (unsigned long long)off);
            return false;
        }
        end = MIN(end, j->size);
        list_cut(&r->alloc, end);
        if (r->dirty_ctx) {
            list_cut(&r->dirty, end);
        }
        off = end;
    }
    return true;
}

static void
plan_add(struct copier *c, uint64_t off, uint64_t len, enum extent_kind k)
{
    struct extent *last = c->n ? &c->ext[c->n - 1] : NULL;

    if (last && last->kind == k && last->off + last->len == off) {
        last->len += len;
        return;
    }
    c->ext = xrealloc(c->ext, (c->n + 1) * sizeof(*c->ext));
    c->ext[c->n++] = (struct extent){ off, len, k };
}

/* The allocation extents over [off, off+len), as READ/ZERO/nothing. */
static void
plan_range(struct copier *c, const struct extent_list *alloc, size_t *ai,
           uint64_t off, uint64_t len, bool overlay)
{
    uint64_t end = off + len;

    while (*ai < alloc->n && alloc->v[*ai].off + alloc->v[*ai].len <= off) {
        (*ai)++;
    }
    for (size_t i = *ai; i < alloc->n && alloc->v[i].off < end; i++) {
        uint64_t a = MAX(off, alloc->v[i].off);
        uint64_t b = MIN(end, alloc->v[i].off + alloc->v[i].len);
        bool zero = alloc->v[i].flags & LIBNBD_STATE_ZERO;

        if (!zero) {
            plan_add(c, a, b - a, EXT_READ);
            c->st->data_bytes += b - a;
        } else if (overlay) {
            plan_add(c, a, b - a, EXT_ZERO);
            c->st->zero_bytes += b - a;
        }
    }
}

static void
make_plan(struct copier *c, const struct status_reply *r)
{
    size_t ai = 0;

    if (!r->dirty_ctx) {
        plan_range(c, &r->alloc, &ai, 0, c->j->size, c->j->overlay);
        return;
    }
    for (size_t i = 0; i < r->dirty.n; i++) {
        if (r->dirty.v[i].flags & 1) {     /* NBD_STATE_DIRTY */
            c->st->dirty_bytes += r->dirty.v[i].len;
            plan_range(c, &r->alloc, &ai, r->dirty.v[i].off,
                       r->dirty.v[i].len, c->j->overlay);
        }
    }
}

static bool
plan(struct copier *c, struct err **errp)
{
    struct copy_job *j = c->j;
    CLEANUP_FREE char *ctx = j->bitmap ? xasprintf("qemu:dirty-bitmap:%s",
                                                   j->bitmap) : NULL;
    struct status_reply r = { .dirty_ctx = ctx };
    struct nbd_handle *h = nbd_open(j, true, errp);
    bool ok = false;
    int64_t size;

    if (!h) {
        return false;
    }
    size = nbd_get_size(h);
    if (size < 0 || (uint64_t)size != j->size) {
        err_setf(errp, "NBD: the export has %lld bytes, the disk %llu",
                 (long long)size, (unsigned long long)j->size);
    } else if (nbd_can_meta_context(h, "base:allocation") <= 0) {
        err_setf(errp, "NBD: the server offers no base:allocation");
    } else if (ctx && nbd_can_meta_context(h, ctx) <= 0) {
        err_setf(errp, "NBD: the export does not offer %s", ctx);
    } else if (query_status(h, j, &r, errp)) {
        make_plan(c, &r);
        ok = true;
    }
    free(r.alloc.v);
    free(r.dirty.v);
    nbd_bye(h);
    return ok;
}

/* ---- Workers --------------------------------------------------------- */

struct slot {
    uint8_t *buf;
    struct extent x;
    bool busy, done;
    int error;
};

struct worker {
    struct copier *c;
    struct nbd_handle *h;
    struct slot slots[DEPTH];
    pthread_t thread;
};

static int
read_done(void *opaque, int *error)
{
    struct slot *s = opaque;

    s->done = true;
    s->error = *error;
    return 1;
}

static void
stat_add(uint64_t *v, uint64_t n)
{
    __atomic_add_fetch(v, n, __ATOMIC_RELAXED);
}

/* A run of [off, off+len) that is all data or all zero clusters. */
static uint64_t
same_kind_run(const uint8_t *buf, uint64_t off, uint64_t len, bool *zero)
{
    uint64_t pos = 0;

    while (pos < len) {
        uint64_t piece = MIN(align_down(off + pos, ZERO_GRAIN) + ZERO_GRAIN,
                             off + len) - (off + pos);
        bool z = buffer_is_zero(buf + pos, piece);

        if (pos == 0) {
            *zero = z;
        } else if (z != *zero) {
            break;
        }
        pos += piece;
    }
    return pos;
}

static int
write_out(struct copier *c, const struct extent *x, const uint8_t *buf)
{
    struct block_handle *h = c->j->target->h;
    uint64_t pos = 0;

    while (pos < x->len) {
        bool zero;
        uint64_t n = same_kind_run(buf + pos, x->off + pos, x->len - pos,
                                   &zero);
        int ret = 0;

        if (!zero) {
            ret = block_handle_pwrite(h, x->off + pos, n, buf + pos, 0);
            stat_add(&c->st->bytes_written, n);
        } else if (c->j->overlay) {
            ret = block_handle_pwrite_zeroes(h, x->off + pos, n, 0);
        }
        if (ret < 0) {
            return ret;
        }
        pos += n;
    }
    return 0;
}

static void
progress_add(struct copier *c, uint64_t n, bool read)
{
    stat_add(&c->j->progress->done, n);
    if (read) {
        stat_add(&c->j->progress->bytes_read, n);
        stat_add(&c->st->bytes_read, n);
    }
}

static bool
write_error(struct copier *c, int ret, const struct extent *x)
{
    struct err *e = NULL;

    err_setf_errno(&e, -ret, "Could not write %llu bytes at %llu into the "
                   "backup", (unsigned long long)x->len,
                   (unsigned long long)x->off);
    copier_fail(c, e);
    return false;
}

/* Start reads (or do zero writes) while slots are free. */
static bool
fill(struct worker *w, unsigned *in_flight)
{
    for (unsigned i = 0; i < DEPTH; i++) {
        struct slot *s = &w->slots[i];
        struct extent x;

        while (!s->busy && take(w->c, &x)) {
            if (x.kind == EXT_ZERO) {
                int ret = block_handle_pwrite_zeroes(w->c->j->target->h,
                                                     x.off, x.len, 0);

                if (ret < 0) {
                    return write_error(w->c, ret, &x);
                }
                progress_add(w->c, x.len, false);
                continue;
            }
            nbd_completion_callback cb = { .callback = read_done,
                                           .user_data = s };
            s->x = x;
            s->done = false;
            if (nbd_aio_pread(w->h, s->buf, x.len, x.off, cb, 0) < 0) {
                struct err *e = NULL;

                nbd_err(&e, "read");
                copier_fail(w->c, e);
                return false;
            }
            s->busy = true;
            (*in_flight)++;
        }
    }
    return true;
}

/* Write out the reads that completed. */
static bool
reap(struct worker *w, unsigned *in_flight, bool *progress)
{
    for (unsigned i = 0; i < DEPTH; i++) {
        struct slot *s = &w->slots[i];
        int ret;

        if (!s->busy || !s->done) {
            continue;
        }
        s->busy = false;
        (*in_flight)--;
        *progress = true;
        if (s->error) {
            struct err *e = NULL;

            err_setf_errno(&e, s->error, "NBD: reading %llu bytes at %llu "
                           "failed", (unsigned long long)s->x.len,
                           (unsigned long long)s->x.off);
            copier_fail(w->c, e);
            return false;
        }
        ret = write_out(w->c, &s->x, s->buf);
        if (ret < 0) {
            return write_error(w->c, ret, &s->x);
        }
        progress_add(w->c, s->x.len, true);
    }
    return true;
}

static void
worker_loop(struct worker *w)
{
    struct copier *c = w->c;
    int64_t last = clock_ns();
    unsigned in_flight = 0;

    for (;;) {
        bool progress = false;

        if (!fill(w, &in_flight)) {
            return;
        }
        if (in_flight == 0) {
            return;     /* nothing left */
        }
        if (nbd_poll(w->h, POLL_MS) < 0 && nbd_get_errno() != EINTR) {
            struct err *e = NULL;

            nbd_err(&e, "connection failed");
            copier_fail(c, e);
            return;
        }
        if (!reap(w, &in_flight, &progress) || copier_stopped(c)) {
            return;
        }
        if (progress) {
            last = clock_ns();
        } else if (clock_ns() - last > (int64_t)c->j->timeout_ms * 1000000) {
            struct err *e = NULL;

            err_setf(&e, "NBD: the server did not answer for %d s",
                     c->j->timeout_ms / 1000);
            copier_fail(c, e);
            return;
        }
    }
}

static void *
worker_main(void *opaque)
{
    struct worker *w = opaque;
    struct copier *c = w->c;
    struct err *e = NULL;

    w->h = nbd_open(c->j, false, &e);
    if (!w->h) {
        copier_fail(c, e);
    } else {
        worker_loop(w);
        /* Reads still in flight write into our buffers: close first. */
        nbd_bye(w->h);
    }
    SCOPED_LOCK(&c->lock);
    c->running--;
    cond_signal(&c->cond);
    return NULL;
}

static void
run_workers(struct copier *c, unsigned n)
{
    struct worker *w = xcalloc(n, sizeof(*w));
    sigset_t block, old;

    /* Signals go to the waiting thread, whose waits they interrupt. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    c->running = n;
    for (unsigned i = 0; i < n; i++) {
        w[i].c = c;
        for (unsigned k = 0; k < DEPTH; k++) {
            w[i].slots[k].buf = xmalloc(CHUNK);
        }
        thread_create(&w[i].thread, "bk-copy", worker_main, &w[i]);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    mutex_lock(&c->lock);
    while (c->running) {
        cond_timedwait_ns(&c->cond, &c->lock, clock_ns() + 200000000);
        mutex_unlock(&c->lock);
        progress_tick(c->j->progress);
        if (bk_interrupted) {
            struct err *e = NULL;

            bk_check_interrupted(&e);
            copier_fail(c, e);
        }
        mutex_lock(&c->lock);
    }
    mutex_unlock(&c->lock);
    for (unsigned i = 0; i < n; i++) {
        thread_join(w[i].thread);
        for (unsigned k = 0; k < DEPTH; k++) {
            free(w[i].slots[k].buf);
        }
    }
    free(w);
}

bool
copy_snapshot(struct copy_job *j, struct copy_stats *st, struct err **errp)
{
    struct copier c = { .j = j, .st = st };
    uint64_t total = 0, chunks = 0;
    unsigned n;
    bool ok;
    int ret;

    memset(st, 0, sizeof(*st));
    if (!plan(&c, errp)) {
        free(c.ext);
        return false;
    }
    for (size_t i = 0; i < c.n; i++) {
        total += c.ext[i].len;
        chunks += div_round_up(c.ext[i].len, CHUNK);
    }
    j->progress->total = total;
    n = (unsigned)MAX(1, MIN(j->connections, chunks));
    lock_init(&c.lock, LOCK_BACKUP_CURSOR);
    cond_init(&c.cond);
    run_workers(&c, n);
    ok = !c.err;
    if (ok) {
        ret = block_handle_flush(j->target->h);
        if (ret < 0) {
            err_setf_errno(errp, -ret, "Could not flush the backup");
            ok = false;
        }
    } else {
        err_propagate(errp, c.err);
    }
    progress_end(j->progress);
    cond_destroy(&c.cond);
    mutex_destroy(&c.lock);
    free(c.ext);
    return ok;
}
