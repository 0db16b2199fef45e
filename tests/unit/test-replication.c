/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the replication filter through the real block layer on
 * qcow2 images: QEMU's twelve original cases (primary and secondary x
 * read, write, start, stop, checkpoint, get_error) with exact pattern
 * checks (QEMU's test compares with memcmp <= 0, which hid that the
 * failover result is 0x11, not 0x22, in the upper half), the cases QEMU
 * never tested (stop without failover, mode mismatch, double start, bad
 * chain, failed primary writes, failover failure and retry), QEMU's COLO
 * recipe with quorums on both hosts in one process, a failover while the
 * secondary guest keeps writing, and a randomised model test.
 *
 * The secondary's setup is QEMU's: the secondary disk "sec-disk" (qcow2,
 * filled with 0x11) has a handle standing for the NBD export (the
 * primary's writes arrive through it); the replication node "rep" has the
 * active disk as file, whose backing is the hidden disk, whose backing is
 * sec-disk; the secondary guest uses a handle on "rep" (top-id = rep).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/filter/quorum.h"
#include "block/filter/replication.h"
#include "block/format/qcow2/qcow2.h"
#include "job/commit.h"
#include "job/job.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "qmp/qmp-internal.h"
#include "util.h"

#define IMG_SIZE (8 * MiB)
#define HALF (IMG_SIZE / 2)

static char dir[64];
static char p_local[128], s_local[128], s_active[128], s_hidden[128];
static char s_small[128];

/* ---- Images and nodes -------------------------------------------------- */

static void
create_qcow2(const char *path, uint64_t size)
{
    struct err *e = NULL;
    struct block_node *file;
    struct qcow2_create_opts o = { 0 };
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fclose(f);
    file = block_node_open_file(path, "file", false, &e);
    assert_null(e);
    assert_int_equal(qcow2_create(file, size, &o, &e), 0);
    block_node_unref(file);
}

static int
setup(void **state UNUSED)
{
    snprintf(dir, sizeof(dir), "/tmp/lockstep-repl-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(p_local, sizeof(p_local), "%s/p_local.qcow2", dir);
    snprintf(s_local, sizeof(s_local), "%s/s_local.qcow2", dir);
    snprintf(s_active, sizeof(s_active), "%s/s_active.qcow2", dir);
    snprintf(s_hidden, sizeof(s_hidden), "%s/s_hidden.qcow2", dir);
    snprintf(s_small, sizeof(s_small), "%s/s_small.qcow2", dir);
    return 0;
}

static int
teardown(void **state UNUSED)
{
    unlink(p_local);
    unlink(s_local);
    unlink(s_active);
    unlink(s_hidden);
    unlink(s_small);
    rmdir(dir);
    return 0;
}

static struct block_node *
node_new_json(char **msg, const char *fmt, ...)
{
    va_list ap;
    char *text;
    json_error_t jerr;
    json_t *opts;
    struct err *err = NULL;
    struct block_node *node;

    va_start(ap, fmt);
    text = xvasprintf(fmt, ap);
    va_end(ap);
    opts = json_loads(text, 0, &jerr);
    if (!opts) {
        fail_msg("bad JSON %s: %s", text, jerr.text);
    }
    free(text);
    node = block_node_new(opts, &err);
    json_decref(opts);
    if (msg) {
        *msg = err ? xstrdup(err->msg) : NULL;
    } else if (err) {
        fail_msg("unexpected error: %s", err->msg);
    }
    err_free(err);
    return node;
}

static struct block_handle *
handle(struct block_node *node, const char *owner)
{
    struct err *e = NULL;
    struct block_handle *h = block_handle_new(node, owner,
                                              BLOCK_PERM_CONSISTENT_READ |
                                              BLOCK_PERM_WRITE,
                                              BLOCK_PERM_ALL, &e);

    if (!h) {
        fail_msg("handle: %s", e->msg);
    }
    return h;
}

static int
do_write(struct block_handle *h, int pattern, uint64_t off, uint64_t len)
{
    void *buf = xmalloc(len);
    int ret;

    memset(buf, pattern, len);
    ret = pattern ? block_handle_pwrite(h, off, len, buf, 0)
                  : block_handle_pwrite_zeroes(h, off, len, 0);
    free(buf);
    return ret;
}

static void
write_ok(struct block_handle *h, int pattern, uint64_t off, uint64_t len)
{
    assert_int_equal(do_write(h, pattern, off, len), 0);
}

static void
write_fails(struct block_handle *h, uint64_t off, uint64_t len)
{
    assert_int_equal(do_write(h, 0x5a, off, len), -EIO);
}

/* Exact check: every byte of [off, off + len) is pattern. */
static void
read_expect(struct block_handle *h, int pattern, uint64_t off, uint64_t len)
{
    unsigned char *buf = xmalloc(len);

    memset(buf, 0xab, len);
    assert_int_equal(block_handle_pread(h, off, len, buf, 0), 0);
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != pattern) {
            fail_msg("byte %llu: 0x%02x, expected 0x%02x",
                     (unsigned long long)(off + i), buf[i], pattern);
        }
    }
    free(buf);
}

static void
read_fails(struct block_handle *h, uint64_t off, uint64_t len)
{
    void *buf = xmalloc(len);

    assert_int_equal(block_handle_pread(h, off, len, buf, 0), -EIO);
    free(buf);
}

static void
expect_err(bool ok, struct err **err, const char *msg)
{
    assert_false(ok);
    assert_non_null(*err);
    assert_string_equal((*err)->msg, msg);
    err_free(*err);
    *err = NULL;
}

/*
 * A failover is a job ("failover-NODE"): wait until it has ended; its
 * result (0 when there is none), with its message in *errp on failure.
 */
static int
failover_wait(struct block_node *node, struct err **errp)
{
    CLEANUP_FREE char *id = xasprintf("failover-%s", node->node_name);
    struct job *job = job_find(id);
    int ret;

    if (!job) {
        return 0;
    }
    job_ref(job);
    if (!job_wait_status(job, (1u << JOB_STATUS_CONCLUDED) |
                              (1u << JOB_STATUS_NULL),
                         60LL * 1000 * 1000 * 1000)) {
        fail_msg("failover job '%s' did not end", id);
    }
    ret = job->ret;
    if (ret < 0) {
        err_setf(errp, "%s", job->error ? job->error : "failover failed");
    }
    job_unref(job);
    return ret;
}

/* replication_stop_all(), then the end of the failover jobs it started. */
static bool
stop_all(bool failover, struct err **errp)
{
    bool ok = replication_stop_all(failover, errp);

    for (struct block_node *n = replication_next(NULL); n;
         n = replication_next(n)) {
        failover_wait(n, NULL);
    }
    return ok;
}

static void
status_expect(const char *desc)
{
    json_t *st = replication_status();

    assert_non_null(st);
    assert_int_equal(json_is_true(json_object_get(st, "error")), desc != NULL);
    if (desc) {
        assert_string_equal(json_string_value(json_object_get(st, "desc")),
                            desc);
    } else {
        assert_null(json_object_get(st, "desc"));
    }
    json_decref(st);
}

/* ---- Primary ----------------------------------------------------------- */

struct primary {
    struct block_node *node;
    struct block_handle *h;
};

static void
start_primary(struct primary *p, const char *blkdebug)
{
    create_qcow2(p_local, IMG_SIZE);
    if (blkdebug) {
        p->node = node_new_json(NULL,
            "{\"driver\": \"replication\", \"node-name\": \"prim\", "
            "\"mode\": \"primary\", \"file\": {\"driver\": \"qcow2\", "
            "\"node-name\": \"p-local\", \"file\": {\"driver\": \"blkdebug\","
            " %s, \"image\": {\"driver\": \"file\", \"filename\": \"%s\"}}}}",
            blkdebug, p_local);
    } else {
        p->node = node_new_json(NULL,
            "{\"driver\": \"replication\", \"node-name\": \"prim\", "
            "\"mode\": \"primary\", \"file\": {\"driver\": \"qcow2\", "
            "\"node-name\": \"p-local\", \"file\": {\"driver\": \"file\", "
            "\"filename\": \"%s\"}}}", p_local);
    }
    assert_non_null(p->node);
    p->h = handle(p->node, "primary-id");
}

static void
stop_primary(struct primary *p)
{
    block_handle_free(p->h);
    block_node_unref(p->node);
    assert_null(block_node_find("prim"));
}

static void
test_primary_read(void **state UNUSED)
{
    struct primary p;

    start_primary(&p, NULL);
    read_fails(p.h, 0, IMG_SIZE);
    stop_primary(&p);
}

static void
test_primary_write(void **state UNUSED)
{
    struct primary p;

    start_primary(&p, NULL);
    write_fails(p.h, 0, IMG_SIZE);
    stop_primary(&p);
}

static void
test_primary_start(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;
    struct block_handle *lh;

    start_primary(&p, NULL);
    assert_true(replication_start_all(true, &err));
    assert_int_equal(replication_get_stage(p.node),
                     REPLICATION_STAGE_RUNNING);
    read_fails(p.h, 0, IMG_SIZE);
    write_ok(p.h, 0x22, 0, IMG_SIZE);
    /* The write reached the file (read it below the filter). */
    lh = handle(block_node_find("p-local"), "check");
    read_expect(lh, 0x22, 0, IMG_SIZE);
    block_handle_free(lh);
    /* A second start is refused. */
    expect_err(replication_start_all(true, &err), &err,
               "Block replication is running or done");
    /* Starting it as a secondary: QEMU's message and numbers. */
    stop_primary(&p);
}

static void
test_primary_stop(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;

    start_primary(&p, NULL);
    expect_err(stop_all(true, &err), &err,
               "Block replication is not running");
    assert_true(replication_start_all(true, &err));
    assert_true(stop_all(true, &err));
    assert_int_equal(replication_get_stage(p.node), REPLICATION_STAGE_DONE);
    /* After stop, primary writes fail (and reads still do). */
    write_fails(p.h, 0, 4096);
    read_fails(p.h, 0, 4096);
    /* DONE ignores everything. */
    assert_true(replication_start_all(true, &err));
    assert_true(replication_checkpoint_all(&err));
    assert_true(stop_all(false, &err));
    status_expect(NULL);
    stop_primary(&p);
}

static void
test_primary_do_checkpoint(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;

    start_primary(&p, NULL);
    /* A primary that was never started checkpoints fine. */
    assert_true(replication_checkpoint_all(&err));
    assert_true(replication_start_all(true, &err));
    assert_true(replication_checkpoint_all(&err));
    stop_primary(&p);
}

static void
test_primary_get_error(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;

    start_primary(&p, NULL);
    status_expect("Block replication is not running");
    assert_true(replication_start_all(true, &err));
    status_expect(NULL);
    stop_primary(&p);
    status_expect(NULL);   /* no replication node left */
}

/* A forwarding failure does not fail the guest write; it is recorded. */
static void
test_primary_write_error(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;

    start_primary(&p, "\"inject-error\": [{\"event\": \"write_aio\", "
                      "\"errno\": 5, \"iotype\": [\"write\"]}]");
    assert_true(replication_start_all(true, &err));
    status_expect(NULL);
    write_ok(p.h, 0x22, 0, 64 * KiB);
    status_expect("I/O error occurred");
    /* It survives a checkpoint; a stop clears it. */
    assert_true(replication_checkpoint_all(&err));
    status_expect("I/O error occurred");
    assert_true(stop_all(true, &err));
    status_expect(NULL);
    stop_primary(&p);
}

/*
 * Resync: the ranges whose write to the secondary failed end up in the
 * parent's "replication-resync" bitmap when the node is detached; other
 * nodes are left alone.
 */
static void
test_primary_detach_resync_bitmap(void **state UNUSED)
{
    struct primary p;
    struct err *err = NULL;
    struct block_node *parent;
    struct block_dirty_bitmap *bm;

    start_primary(&p, "\"inject-error\": [{\"event\": \"write_aio\", "
                      "\"errno\": 5, \"iotype\": [\"write\"]}]");
    parent = node_new_json(NULL, "{\"driver\": \"null-co\", "
                           "\"node-name\": \"qparent\", \"size\": %d}",
                           IMG_SIZE);
    assert_true(replication_start_all(true, &err));
    write_ok(p.h, 0x22, 128 * KiB, 64 * KiB);
    write_ok(p.h, 0x22, 1024 * KiB, 1);
    /* Not a replication node: nothing happens. */
    assert_int_equal(replication_primary_detach(parent, parent, &err), 0);
    assert_null(block_dirty_bitmap_find(parent, REPLICATION_RESYNC_BITMAP));
    assert_int_equal(replication_primary_detach(p.node, parent, &err), 0);
    bm = block_dirty_bitmap_find(parent, REPLICATION_RESYNC_BITMAP);
    assert_non_null(bm);
    assert_false(bm->disabled);
    assert_int_equal(block_dirty_bitmap_count(bm), 128 * KiB);
    assert_true(block_dirty_bitmap_get(bm, 128 * KiB));
    assert_true(block_dirty_bitmap_get(bm, 1024 * KiB));
    assert_false(block_dirty_bitmap_get(bm, 0));
    /* A second detach finds the bitmap and adds nothing new. */
    assert_int_equal(replication_primary_detach(p.node, parent, &err), 0);
    assert_int_equal(block_dirty_bitmap_count(bm), 128 * KiB);
    assert_true(stop_all(true, &err));
    block_node_unref(parent);
    stop_primary(&p);
}

/* ---- Secondary --------------------------------------------------------- */

struct secondary {
    struct block_node *disk;       /* sec-disk */
    struct block_handle *export;   /* the NBD export's handle on it */
    struct block_node *rep;
    struct block_handle *top;      /* the secondary guest */
};

static bool sec_blkdebug;

/*
 * hidden_opts: extra options of the hidden disk (it must be read-write);
 * hidden_path: its image.  The secondary disk is filled with 0x11.
 */
static void
start_secondary_with(struct secondary *s, const char *hidden_opts,
                     const char *hidden_path, const char *top_id,
                     char **msg)
{
    create_qcow2(s_local, IMG_SIZE);
    create_qcow2(s_active, IMG_SIZE);
    create_qcow2(s_hidden, IMG_SIZE);
    if (sec_blkdebug) {
        /* Writes fail once after the event "colo_fail" (the test fires it
         * with block_debug_event()). */
        s->disk = node_new_json(NULL,
            "{\"driver\": \"qcow2\", \"node-name\": \"sec-disk\", "
            "\"file\": {\"driver\": \"blkdebug\", \"node-name\": "
            "\"sec-dbg\", \"inject-error\": [{\"event\": \"colo_fail\", "
            "\"iotype\": [\"write\"], \"once\": true}], \"image\": "
            "{\"driver\": \"file\", \"filename\": \"%s\"}}}", s_local);
    } else {
        s->disk = node_new_json(NULL,
            "{\"driver\": \"qcow2\", \"node-name\": \"sec-disk\", "
            "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}}",
            s_local);
    }
    assert_non_null(s->disk);
    s->export = handle(s->disk, "export 'sec-disk'");
    write_ok(s->export, 0x11, 0, IMG_SIZE);
    s->rep = node_new_json(msg,
        "{\"driver\": \"replication\", \"node-name\": \"rep\", \"mode\": "
        "\"secondary\", \"top-id\": \"%s\", \"file\": {\"driver\": "
        "\"qcow2\", \"node-name\": \"active\", \"file\": {\"driver\": "
        "\"file\", \"filename\": \"%s\"}, \"backing\": {\"driver\": "
        "\"qcow2\", \"node-name\": \"hidden\", %s \"file\": {\"driver\": "
        "\"file\", \"filename\": \"%s\"}, \"backing\": \"sec-disk\"}}}",
        top_id, s_active, hidden_opts, hidden_path);
    if (msg && *msg) {
        return;
    }
    assert_non_null(s->rep);
    s->top = handle(s->rep, "secondary-id");
}

static void
start_secondary(struct secondary *s)
{
    start_secondary_with(s, "\"read-only\": false,", s_hidden, "rep", NULL);
}

static void
stop_secondary(struct secondary *s)
{
    block_handle_free(s->top);
    block_node_unref(s->rep);
    block_handle_free(s->export);
    block_node_unref(s->disk);
    assert_null(block_node_find("rep"));
    assert_null(block_node_find("active"));
    assert_null(block_node_find("hidden"));
    assert_null(block_node_find("sec-disk"));
}

static void
test_secondary_read(void **state UNUSED)
{
    struct secondary s;

    start_secondary(&s);
    read_fails(s.top, 0, IMG_SIZE);
    stop_secondary(&s);
}

static void
test_secondary_write(void **state UNUSED)
{
    struct secondary s;

    start_secondary(&s);
    assert_int_equal(do_write(s.top, 0, 0, IMG_SIZE), -EIO);
    write_fails(s.top, 0, IMG_SIZE);
    stop_secondary(&s);
}

/* Start, a primary write, a secondary write (QEMU's secondary/start). */
static void
start_and_write(struct secondary *s)
{
    struct err *err = NULL;

    assert_true(replication_start_all(false, &err));
    assert_int_equal(replication_get_stage(s->rep),
                     REPLICATION_STAGE_RUNNING);
    /* The export now writes through the copy-before-write filter. */
    assert_non_null(replication_cbw_node(s->rep));
    assert_ptr_equal(block_handle_node(s->export),
                     replication_cbw_node(s->rep));
    read_expect(s->top, 0x11, 0, IMG_SIZE);
    /* A primary write lands in the secondary disk ... */
    write_ok(s->export, 0x22, HALF, HALF);
    read_expect(s->export, 0x22, HALF, HALF);
    /* ... but the secondary still sees the old data (hidden disk). */
    read_expect(s->top, 0x11, HALF, HALF);
    /* The secondary's own write is its alone. */
    write_ok(s->top, 0x33, 0, HALF);
    read_expect(s->top, 0x33, 0, HALF);
    read_expect(s->export, 0x11, 0, HALF);
}

static void
test_secondary_start(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    start_and_write(&s);
    expect_err(replication_start_all(false, &err), &err,
               "Block replication is running or done");
    assert_true(stop_all(true, &err));
    stop_secondary(&s);
}

static void
check_failover_result(struct secondary *s)
{
    /* The view before failover: the secondary's 0x33, and 0x11 where the
     * primary wrote after the last checkpoint (QEMU's test says 0x22 but
     * only checks "<="). */
    read_expect(s->top, 0x33, 0, HALF);
    read_expect(s->top, 0x11, HALF, HALF);
    /* The secondary disk itself holds it. */
    read_expect(s->export, 0x33, 0, HALF);
    read_expect(s->export, 0x11, HALF, HALF);
}

static void
test_secondary_stop(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    start_and_write(&s);
    assert_true(stop_all(true, &err));
    assert_int_equal(replication_get_stage(s.rep), REPLICATION_STAGE_DONE);
    /* QMP's argument rule. */
    expect_err(qmp_xen_set_replication(true, false, true, true, &err), &err,
               "Parameter 'failover' is only for stopping replication");
    assert_true(qmp_xen_set_replication(false, false, true, true, &err));
    assert_int_equal(failover_wait(s.rep, &err), 0);
    /* The node now uses the secondary disk directly; the filter is gone. */
    assert_ptr_equal(s.rep->file->node, s.disk);
    assert_ptr_equal(block_handle_node(s.export), s.disk);
    assert_null(replication_cbw_node(s.rep));
    check_failover_result(&s);
    status_expect(NULL);
    stop_secondary(&s);
}

static void
test_secondary_continuous(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    start_and_write(&s);
    assert_true(stop_all(true, &err));
    /* A promoted secondary ignores COLO's later calls. */
    assert_true(replication_start_all(true, &err));
    assert_true(replication_checkpoint_all(&err));
    assert_true(stop_all(true, &err));
    assert_true(stop_all(false, &err));
    check_failover_result(&s);
    /* New writes go to the secondary disk. */
    write_ok(s.top, 0x55, 0, 64 * KiB);
    read_expect(s.export, 0x55, 0, 64 * KiB);
    stop_secondary(&s);
}

static void
test_secondary_do_checkpoint(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    expect_err(replication_checkpoint_all(&err), &err,
               "Backup job was cancelled unexpectedly");
    start_and_write(&s);
    assert_true(replication_checkpoint_all(&err));
    /* The primary's data is now the secondary's; its own write is gone. */
    read_expect(s.top, 0x22, HALF, HALF);
    read_expect(s.top, 0x11, 0, HALF);
    /* After the checkpoint, primary writes copy again. */
    write_ok(s.export, 0x44, HALF, 64 * KiB);
    read_expect(s.top, 0x22, HALF, HALF);
    assert_true(replication_checkpoint_all(&err));
    read_expect(s.top, 0x44, HALF, 64 * KiB);
    read_expect(s.top, 0x22, HALF + 64 * KiB, HALF - 64 * KiB);
    assert_true(stop_all(true, &err));
    stop_secondary(&s);
}

static void
test_secondary_get_error(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    status_expect("Block replication is not running");
    assert_true(replication_start_all(false, &err));
    status_expect(NULL);
    assert_true(stop_all(true, &err));
    status_expect(NULL);
    stop_secondary(&s);
}

/* Stop without failover works (QEMU's fails): a checkpoint, then DONE. */
static void
test_secondary_stop_no_failover(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    start_secondary(&s);
    start_and_write(&s);
    assert_true(stop_all(false, &err));
    assert_int_equal(replication_get_stage(s.rep), REPLICATION_STAGE_DONE);
    status_expect(NULL);
    read_expect(s.top, 0x11, 0, HALF);
    read_expect(s.top, 0x22, HALF, HALF);
    assert_ptr_equal(s.rep->file->node, s.disk);
    assert_ptr_equal(block_handle_node(s.export), s.disk);
    write_ok(s.top, 0x66, 0, 4096);
    read_expect(s.export, 0x66, 0, 4096);
    stop_secondary(&s);
}

/*
 * QEMU's recipe leaves the hidden disk read-only (the default for a
 * backing child): start reopens it read-write, and everything works.
 */
static void
test_secondary_hidden_read_only(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;
    struct block_node *hidden;

    start_secondary_with(&s, "", s_hidden, "rep", NULL);
    hidden = block_node_find("hidden");
    assert_true(hidden->read_only);
    start_and_write(&s);
    assert_false(hidden->read_only);
    assert_ptr_equal(block_node_find("hidden"), hidden);
    assert_true(replication_checkpoint_all(&err));
    read_expect(s.top, 0x11, 0, HALF);
    read_expect(s.top, 0x22, HALF, HALF);
    write_ok(s.export, 0x44, 0, 64 * KiB);
    write_ok(s.top, 0x33, HALF, 64 * KiB);
    read_expect(s.top, 0x11, 0, 64 * KiB);
    assert_true(stop_all(true, &err));
    read_expect(s.export, 0x11, 0, HALF);
    read_expect(s.export, 0x33, HALF, 64 * KiB);
    read_expect(s.export, 0x22, HALF + 64 * KiB, HALF - 64 * KiB);
    stop_secondary(&s);
}

/* block_node_set_read_only() (block/core/reopen.c) on its own. */
static void
test_reopen(void **state UNUSED)
{
    struct block_node *n;
    struct block_handle *rh, *wh;
    struct err *err = NULL;
    char buf[4096];

    create_qcow2(s_small, IMG_SIZE);
    n = node_new_json(NULL, "{\"driver\": \"qcow2\", \"node-name\": \"ro\", "
                      "\"read-only\": true, \"file\": {\"driver\": \"file\","
                      " \"filename\": \"%s\"}}", s_small);
    rh = block_handle_new(n, "reader", BLOCK_PERM_CONSISTENT_READ,
                          BLOCK_PERM_ALL, &err);
    assert_non_null(rh);
    assert_null(block_handle_new(n, "writer", BLOCK_PERM_WRITE,
                                 BLOCK_PERM_ALL, &err));
    err_free(err);
    err = NULL;
    memset(buf, 0x5c, sizeof(buf));
    block_graph_enter();
    assert_int_equal(block_pwrite(n, 0, sizeof(buf), buf, 0), -EPERM);
    block_graph_leave();

    assert_int_equal(block_node_set_read_only(n, false, &err), 0);
    assert_false(n->read_only);
    assert_false(n->file->node->read_only);
    wh = handle(n, "writer");
    write_ok(wh, 0x5c, 0, 64 * KiB);
    read_expect(rh, 0x5c, 0, 64 * KiB);
    /* Not back to read-only while somebody writes. */
    assert_int_equal(block_node_set_read_only(n, true, &err), -EBUSY);
    assert_string_equal(err->msg, "Read-only block node 'ro' cannot support "
                        "read-write users");
    err_free(err);
    err = NULL;
    block_handle_free(wh);
    assert_int_equal(block_node_set_read_only(n, true, &err), 0);
    assert_true(n->read_only);
    read_expect(rh, 0x5c, 0, 64 * KiB);
    block_handle_free(rh);
    block_node_unref(n);
    assert_null(block_node_find("ro"));

    /* An inline child that somebody else uses cannot be opened again. */
    n = node_new_json(NULL, "{\"driver\": \"qcow2\", \"node-name\": \"ro\", "
                      "\"read-only\": true, \"file\": {\"driver\": \"file\","
                      " \"node-name\": \"ro-file\", \"filename\": \"%s\"}}",
                      s_small);
    rh = block_handle_new(block_node_find("ro-file"), "other",
                          BLOCK_PERM_CONSISTENT_READ, BLOCK_PERM_ALL, &err);
    assert_non_null(rh);
    assert_int_equal(block_node_set_read_only(n, false, &err), -EBUSY);
    assert_string_equal(err->msg, "Cannot reopen 'ro': its child 'file' "
                        "('ro-file') is used elsewhere");
    err_free(err);
    err = NULL;
    assert_true(n->read_only);
    block_handle_free(rh);
    block_node_unref(n);

    /* A child given by node-name is attached again, not recreated. */
    {
        struct block_node *f = node_new_json(NULL,
            "{\"driver\": \"file\", \"node-name\": \"ro-file\", "
            "\"filename\": \"%s\"}", s_small);

        n = node_new_json(NULL, "{\"driver\": \"qcow2\", \"node-name\": "
                          "\"ro\", \"read-only\": true, \"file\": "
                          "\"ro-file\"}");
        block_node_unref(f);    /* only the qcow2 node holds it now */
        assert_int_equal(block_node_set_read_only(n, false, &err), 0);
        assert_ptr_equal(n->file->node, f);
        wh = handle(n, "writer");
        write_ok(wh, 0x5d, 0, 4096);
        read_expect(wh, 0x5d, 0, 4096);
        block_handle_free(wh);
        block_node_unref(n);
        assert_null(block_node_find("ro-file"));
    }
}

/*
 * The secondary reads while primary writes arrive: its view must stay the
 * checkpoint's, even where a read falls through to the secondary disk at
 * the moment the copy-before-write filter copies the cluster away.
 */
struct primary_writer {
    struct block_handle *h;
    bool stop;
    unsigned long writes;
};

static void *
primary_writer_thread(void *opaque)
{
    struct primary_writer *w = opaque;
    unsigned char *buf = xmalloc(64 * KiB);
    uint64_t x = 0x2545f4914f6cdd1dULL;

    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        uint64_t len, off;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        len = (x % 16 + 1) * 4096;
        off = ((x >> 8) % ((IMG_SIZE - len) / 4096 + 1)) * 4096;
        memset(buf, 0x40 + (int)(x % 64), len);
        if (block_handle_pwrite(w->h, off, len, buf, 0) != 0) {
            abort();
        }
        __atomic_add_fetch(&w->writes, 1, __ATOMIC_RELEASE);
    }
    free(buf);
    return NULL;
}

static void
test_secondary_reads_during_primary_writes(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;
    struct primary_writer w = { 0 };
    unsigned char *buf = xmalloc(256 * KiB);
    uint64_t x = 99991;
    int64_t end;
    pthread_t t;
    unsigned long reads = 0;

    start_secondary(&s);
    assert_true(replication_start_all(false, &err));
    w.h = s.export;
    thread_create(&t, "primary", primary_writer_thread, &w);
    for (int round = 0; round < 3; round++) {
        end = clock_ns() + 700000000LL;
        while (clock_ns() < end) {
            uint64_t len, off;

            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            len = (x % 64 + 1) * 4096;
            off = ((x >> 8) % ((IMG_SIZE - len) / 4096 + 1)) * 4096;
            assert_int_equal(block_handle_pread(s.top, off, len, buf, 0), 0);
            for (uint64_t i = 0; i < len; i++) {
                if (buf[i] != 0x11) {
                    fail_msg("round %d: byte %llu is 0x%02x, not 0x11",
                             round, (unsigned long long)(off + i), buf[i]);
                }
            }
            reads++;
        }
        /* Checkpoint with the writer paused (as COLO does), then the view
         * is the primary's disk: copy it as the new 0x11 baseline is not
         * possible, so start a fresh replication view instead. */
        if (round < 2) {
            __atomic_store_n(&w.stop, true, __ATOMIC_RELEASE);
            thread_join(t);
            /* Make the whole disk 0x11 again, and the view with it. */
            write_ok(s.export, 0x11, 0, IMG_SIZE);
            assert_true(replication_checkpoint_all(&err));
            read_expect(s.top, 0x11, 0, IMG_SIZE);
            __atomic_store_n(&w.stop, false, __ATOMIC_RELEASE);
            thread_create(&t, "primary", primary_writer_thread, &w);
        }
    }
    __atomic_store_n(&w.stop, true, __ATOMIC_RELEASE);
    thread_join(t);
    print_message("%lu reads, %lu primary writes\n", reads, w.writes);
    assert_true(stop_all(true, &err));
    read_expect(s.export, 0x11, 0, IMG_SIZE);
    free(buf);
    stop_secondary(&s);
}

static void
test_secondary_errors(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;
    char *msg = NULL;

    /* Mode mismatch: QEMU's numbers (primary 0, secondary 1). */
    start_secondary(&s);
    expect_err(replication_start_all(true, &err), &err,
               "The parameter mode's value is invalid, needs 1, but got 0");
    expect_err(stop_all(false, &err), &err,
               "Block replication is not running");
    stop_secondary(&s);


    /* Lengths differ. */
    create_qcow2(s_small, IMG_SIZE / 2);
    start_secondary_with(&s, "\"read-only\": false,", s_small, "rep", NULL);
    expect_err(replication_start_all(false, &err), &err,
               "Active disk, hidden disk, secondary disk's length are not "
               "the same");
    stop_secondary(&s);

    /* top-id that is not above the node. */
    start_secondary_with(&s, "\"read-only\": false,", s_hidden, "sec-disk",
                         NULL);
    expect_err(replication_start_all(false, &err), &err,
               "No top_bs or it is invalid");
    /* Nothing changed: the export still writes the disk directly. */
    assert_ptr_equal(block_handle_node(s.export), s.disk);
    stop_secondary(&s);

    /* Open errors. */
    assert_null(node_new_json(&msg, "{\"driver\": \"replication\", "
                              "\"file\": {\"driver\": \"null-co\"}}"));
    assert_string_equal(msg, "Missing the option mode");
    free(msg);
    assert_null(node_new_json(&msg, "{\"driver\": \"replication\", "
                              "\"mode\": \"secondary\", \"file\": "
                              "{\"driver\": \"null-co\"}}"));
    assert_string_equal(msg, "Missing the option top-id");
    free(msg);
    assert_null(node_new_json(&msg, "{\"driver\": \"replication\", "
                              "\"mode\": \"primary\", \"top-id\": \"x\", "
                              "\"file\": {\"driver\": \"null-co\"}}"));
    assert_string_equal(msg, "The primary side does not support option "
                        "top-id");
    free(msg);
    assert_null(node_new_json(&msg, "{\"driver\": \"replication\", "
                              "\"mode\": \"tertiary\", \"file\": "
                              "{\"driver\": \"null-co\"}}"));
    assert_string_equal(msg, "The option mode's value should be primary or "
                        "secondary");
    free(msg);
    {
        struct block_node *n = node_new_json(NULL,
            "{\"driver\": \"replication\", \"mode\": \"secondary\", "
            "\"top-id\": \"x\", \"file\": {\"driver\": \"null-co\"}}");
        struct block_handle *h = handle(n, "t");

        expect_err(replication_start_all(false, &err), &err,
                   "Active disk doesn't have backing file");
        block_handle_free(h);
        block_node_unref(n);
    }
}

/* ---- Randomised model test ---------------------------------------------- */

#define MODEL_SIZE (4 * MiB)

static uint64_t rng_state;

static uint64_t
rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void
model_compare(struct block_handle *h, const unsigned char *model,
              uint64_t off, uint64_t len, unsigned char *buf, int step)
{
    assert_int_equal(block_handle_pread(h, off, len, buf, 0), 0);
    if (memcmp(buf, model + off, len)) {
        for (uint64_t i = 0; i < len; i++) {
            if (buf[i] != model[off + i]) {
                fail_msg("step %d: byte %llu is 0x%02x, model 0x%02x", step,
                         (unsigned long long)(off + i), buf[i],
                         model[off + i]);
            }
        }
    }
}

static void
run_model(uint64_t seed, int steps, int64_t deadline)
{
    struct secondary s;
    struct err *err = NULL;
    unsigned char *disk = xzalloc(MODEL_SIZE);  /* the primary's disk */
    unsigned char *view = xzalloc(MODEL_SIZE);  /* the secondary's view */
    unsigned char *buf = xmalloc(MODEL_SIZE);
    unsigned char *wbuf = xmalloc(256 * KiB);
    int step;

    rng_state = seed;
    create_qcow2(s_local, MODEL_SIZE);
    create_qcow2(s_active, MODEL_SIZE);
    create_qcow2(s_hidden, MODEL_SIZE);
    s.disk = node_new_json(NULL,
        "{\"driver\": \"qcow2\", \"node-name\": \"sec-disk\", \"file\": "
        "{\"driver\": \"file\", \"filename\": \"%s\"}}", s_local);
    s.export = handle(s.disk, "export 'sec-disk'");
    s.rep = node_new_json(NULL,
        "{\"driver\": \"replication\", \"node-name\": \"rep\", \"mode\": "
        "\"secondary\", \"top-id\": \"rep\", \"file\": {\"driver\": "
        "\"qcow2\", \"node-name\": \"active\", \"file\": {\"driver\": "
        "\"file\", \"filename\": \"%s\"}, \"backing\": {\"driver\": "
        "\"qcow2\", \"node-name\": \"hidden\", \"read-only\": false, "
        "\"file\": {\"driver\": \"file\", \"filename\": \"%s\"}, "
        "\"backing\": \"sec-disk\"}}}", s_active, s_hidden);
    s.top = handle(s.rep, "secondary-id");
    /* Some initial content, identical on both hosts. */
    for (uint64_t off = 0; off < MODEL_SIZE; off += 256 * KiB) {
        memset(disk + off, (int)(off >> 18) + 1, 128 * KiB);
    }
    assert_int_equal(block_handle_pwrite(s.export, 0, MODEL_SIZE, disk, 0),
                     0);
    memcpy(view, disk, MODEL_SIZE);
    assert_true(replication_start_all(false, &err));

    for (step = 0; step < steps && clock_ns() < deadline; step++) {
        unsigned op = rng() % 100;
        uint64_t len = (rng() % 128 + 1) * 512;
        uint64_t off = (rng() % ((MODEL_SIZE - len) / 512 + 1)) * 512;
        int pattern = (int)(rng() % 255) + 1;

        if (op < 40) {
            /* A primary write arriving through the export. */
            if (rng() % 8 == 0) {
                assert_int_equal(block_handle_pwrite_zeroes(s.export, off,
                                                            len, 0), 0);
                memset(disk + off, 0, len);
            } else {
                memset(wbuf, pattern, len);
                wbuf[0] = (unsigned char)step;
                assert_int_equal(block_handle_pwrite(s.export, off, len,
                                                     wbuf, 0), 0);
                memcpy(disk + off, wbuf, len);
            }
        } else if (op < 75) {
            /* The secondary guest's write. */
            if (rng() % 8 == 0) {
                assert_int_equal(block_handle_pwrite_zeroes(s.top, off, len,
                                                            0), 0);
                memset(view + off, 0, len);
            } else {
                memset(wbuf, pattern, len);
                wbuf[len - 1] = (unsigned char)step;
                assert_int_equal(block_handle_pwrite(s.top, off, len, wbuf,
                                                     0), 0);
                memcpy(view + off, wbuf, len);
            }
        } else if (op < 80) {
            assert_true(replication_checkpoint_all(&err));
            memcpy(view, disk, MODEL_SIZE);
        } else if (op < 82) {
            /* The whole disk, both sides. */
            model_compare(s.top, view, 0, MODEL_SIZE, buf, step);
            model_compare(s.export, disk, 0, MODEL_SIZE, buf, step);
        } else {
            model_compare(s.top, view, off, len, buf, step);
        }
        /* Every step: the range it touched and a random one. */
        model_compare(s.top, view, off, len, buf, step);
        model_compare(s.export, disk, off, len, buf, step);
    }
    model_compare(s.top, view, 0, MODEL_SIZE, buf, step);
    assert_true(stop_all(true, &err));
    assert_int_equal(replication_get_stage(s.rep), REPLICATION_STAGE_DONE);
    /* The secondary disk is the secondary's view. */
    model_compare(s.export, view, 0, MODEL_SIZE, buf, step);
    model_compare(s.top, view, 0, MODEL_SIZE, buf, step);
    print_message("seed %llx: %d steps\n", (unsigned long long)seed, step);
    stop_secondary(&s);
    free(disk);
    free(view);
    free(buf);
    free(wbuf);
}

static void
test_model(void **state UNUSED)
{
    static const uint64_t seeds[] = {
        0x9e3779b97f4a7c15ULL, 42, 0xdeadbeefcafeULL, 7, 1234567,
    };
    int64_t start = clock_ns();

    for (size_t i = 0; i < ARRAY_SIZE(seeds); i++) {
        /* About 20 s in all, whatever the machine. */
        int64_t deadline = start + (int64_t)(i + 1) * 4000000000LL;

        run_model(seeds[i], 3000, deadline);
    }
}

/* A failed failover copy: failover-failed, reported, and a retry works. */
static void
test_failover_failed_retry(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;

    sec_blkdebug = true;
    start_secondary(&s);
    sec_blkdebug = false;
    start_and_write(&s);
    block_debug_event(block_node_find("sec-dbg"), "colo_fail");
    assert_true(failover_start(s.rep, &err));
    assert_int_equal(failover_wait(s.rep, &err), -EIO);
    assert_non_null(err);
    err_free(err);
    err = NULL;
    assert_int_equal(replication_get_stage(s.rep),
                     REPLICATION_STAGE_FAILOVER_FAILED);
    status_expect("I/O error occurred");
    /* The secondary keeps its view and keeps writing (into active). */
    read_expect(s.top, 0x33, 0, HALF);
    read_expect(s.top, 0x11, HALF, HALF);
    write_ok(s.top, 0x77, HALF, 64 * KiB);
    expect_err(replication_checkpoint_all(&err), &err,
               "Block replication failover failed; stop it again to retry");
    /* Retry. */
    assert_true(stop_all(true, &err));
    assert_int_equal(replication_get_stage(s.rep), REPLICATION_STAGE_DONE);
    status_expect(NULL);
    read_expect(s.export, 0x33, 0, HALF);
    read_expect(s.export, 0x77, HALF, 64 * KiB);
    read_expect(s.export, 0x11, HALF + 64 * KiB, HALF - 64 * KiB);
    stop_secondary(&s);
}

/*
 * QEMU's COLO recipe in one process: the primary's quorum (local disk +
 * replication primary, fifo, vote-threshold 1) forwards to the secondary
 * disk (by node-name here, instead of over NBD; the filter takes that edge
 * over like the export's), and the secondary guest uses a one-child quorum
 * "top" over the replication node (top-id "top").
 */
static void
test_colo_recipe(void **state UNUSED)
{
    struct secondary s;
    struct block_node *qtop, *plocal, *prep, *ptop;
    struct block_handle *sg, *pg;
    struct err *err = NULL;

    create_qcow2(p_local, IMG_SIZE);
    start_secondary_with(&s, "\"read-only\": false,", s_hidden, "top", NULL);
    block_handle_free(s.top);
    s.top = NULL;
    qtop = node_new_json(NULL, "{\"driver\": \"quorum\", \"node-name\": "
                         "\"top\", \"read-pattern\": \"fifo\", "
                         "\"vote-threshold\": 1, \"children\": [\"rep\"]}");
    sg = handle(qtop, "secondary guest");
    plocal = node_new_json(NULL, "{\"driver\": \"qcow2\", \"node-name\": "
                           "\"p-local\", \"file\": {\"driver\": \"file\", "
                           "\"filename\": \"%s\"}}", p_local);
    prep = node_new_json(NULL, "{\"driver\": \"replication\", \"node-name\":"
                         " \"p-rep\", \"mode\": \"primary\", \"file\": "
                         "\"sec-disk\"}");
    ptop = node_new_json(NULL, "{\"driver\": \"quorum\", \"node-name\": "
                         "\"p-top\", \"read-pattern\": \"fifo\", "
                         "\"vote-threshold\": 1, \"children\": [\"p-local\", "
                         "\"p-rep\"]}");
    pg = handle(ptop, "primary guest");
    /* Both disks start equal: the secondary disk holds 0x11 already; the
     * not yet started p-rep fails its part, one child is enough. */
    write_ok(pg, 0x11, 0, IMG_SIZE);

    /* The secondary starts first, then the primary. */
    assert_int_equal(replication_start(s.rep, REPLICATION_MODE_SECONDARY,
                                       &err), 0);
    assert_int_equal(replication_start(prep, REPLICATION_MODE_PRIMARY, &err),
                     0);
    read_expect(sg, 0x11, 0, IMG_SIZE);
    write_ok(pg, 0x22, HALF, HALF);
    read_expect(pg, 0x22, HALF, HALF);
    read_expect(s.export, 0x22, HALF, HALF);
    read_expect(sg, 0x11, HALF, HALF);
    write_ok(sg, 0x33, 0, HALF);
    read_expect(sg, 0x33, 0, HALF);
    read_expect(pg, 0x11, 0, HALF);

    /* Checkpoint: the secondary's view becomes the primary's disk. */
    assert_true(replication_checkpoint_all(&err));
    read_expect(sg, 0x11, 0, HALF);
    read_expect(sg, 0x22, HALF, HALF);

    /* More writes on both sides, then the primary dies. */
    write_ok(pg, 0x44, 0, 64 * KiB);
    write_ok(sg, 0x55, HALF, 64 * KiB);
    assert_true(failover_start(s.rep, &err));
    assert_int_equal(failover_wait(s.rep, &err), 0);
    read_expect(sg, 0x11, 0, HALF);
    read_expect(sg, 0x55, HALF, 64 * KiB);
    read_expect(sg, 0x22, HALF + 64 * KiB, HALF - 64 * KiB);
    read_expect(s.export, 0x11, 0, HALF);
    read_expect(s.export, 0x55, HALF, 64 * KiB);
    read_expect(s.export, 0x22, HALF + 64 * KiB, HALF - 64 * KiB);

    /* On the primary: drop the replication child, go on alone. */
    assert_true(qmp_x_blockdev_change("p-top", "children.1", NULL, &err));
    assert_int_equal(replication_stop(prep, &err), 0);
    write_ok(pg, 0x66, 0, 4096);
    read_expect(pg, 0x66, 0, 4096);
    read_expect(pg, 0x44, 4096, 60 * KiB);
    read_expect(s.export, 0x11, 0, 64 * KiB);

    block_handle_free(pg);
    block_node_unref(ptop);
    block_node_unref(prep);
    block_node_unref(plocal);
    block_handle_free(sg);
    block_node_unref(qtop);
    stop_secondary(&s);
    assert_null(block_node_find("p-local"));
}

/* ---- Failover while the secondary guest writes ----------------------- */

#define BLK (16 * KiB)
#define NR_BLKS (IMG_SIZE / BLK)

struct writer {
    struct block_handle *h;
    volatile bool stop;
    unsigned char last[NR_BLKS];   /* 0: not written by the writer */
    unsigned long writes;
};

static void *
writer_thread(void *opaque)
{
    struct writer *w = opaque;
    unsigned char *buf = xmalloc(BLK);
    uint64_t x = 88172645463325252ULL;

    while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
        uint64_t blk;
        unsigned char pattern;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        blk = x % NR_BLKS;
        pattern = (unsigned char)(0x80 + w->writes % 0x7f);  /* own */
        memset(buf, pattern, BLK);
        if (block_handle_pwrite(w->h, blk * BLK, BLK, buf, 0) != 0) {
            abort();
        }
        w->last[blk] = pattern;
        __atomic_store_n(&w->writes, w->writes + 1, __ATOMIC_RELEASE);
    }
    free(buf);
    return NULL;
}

static void
test_failover_under_load(void **state UNUSED)
{
    struct secondary s;
    struct err *err = NULL;
    struct writer *w = xzalloc(sizeof(*w));
    pthread_t t;

    start_secondary(&s);
    start_and_write(&s);
    /* Plenty for the live copy to do: the whole lower half is in the
     * active disk, the upper half's old data in the hidden disk. */
    w->h = s.top;
    thread_create(&t, "writer", writer_thread, w);
    while (__atomic_load_n(&w->writes, __ATOMIC_RELAXED) < 50) {
        usleep(1000);
    }
    assert_true(stop_all(true, &err));
    {
        unsigned long after = __atomic_load_n(&w->writes, __ATOMIC_ACQUIRE);

        while (__atomic_load_n(&w->writes, __ATOMIC_ACQUIRE) < after + 50) {
            usleep(1000);
        }
    }
    __atomic_store_n(&w->stop, true, __ATOMIC_RELEASE);
    thread_join(t);
    assert_int_equal(replication_get_stage(s.rep), REPLICATION_STAGE_DONE);
    for (uint64_t b = 0; b < NR_BLKS; b++) {
        int expect = w->last[b] ? w->last[b]
                                : (b * BLK < HALF ? 0x33 : 0x11);

        read_expect(s.export, expect, b * BLK, BLK);
    }
    print_message("%lu writes during the test\n", w->writes);
    free(w);
    stop_secondary(&s);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_primary_read),
        cmocka_unit_test(test_primary_write),
        cmocka_unit_test(test_primary_start),
        cmocka_unit_test(test_primary_stop),
        cmocka_unit_test(test_primary_do_checkpoint),
        cmocka_unit_test(test_primary_get_error),
        cmocka_unit_test(test_primary_write_error),
        cmocka_unit_test(test_primary_detach_resync_bitmap),
        cmocka_unit_test(test_secondary_read),
        cmocka_unit_test(test_secondary_write),
        cmocka_unit_test(test_secondary_start),
        cmocka_unit_test(test_secondary_stop),
        cmocka_unit_test(test_secondary_continuous),
        cmocka_unit_test(test_secondary_do_checkpoint),
        cmocka_unit_test(test_secondary_get_error),
        cmocka_unit_test(test_secondary_stop_no_failover),
        cmocka_unit_test(test_secondary_hidden_read_only),
        cmocka_unit_test(test_secondary_reads_during_primary_writes),
        cmocka_unit_test(test_secondary_errors),
        cmocka_unit_test(test_reopen),
        cmocka_unit_test(test_failover_failed_retry),
        cmocka_unit_test(test_colo_recipe),
        cmocka_unit_test(test_failover_under_load),
        cmocka_unit_test(test_model),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
