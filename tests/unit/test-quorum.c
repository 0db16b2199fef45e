/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the quorum driver through the real block layer: voting by
 * content (a child corrupted by writing its file directly), rewrite-
 * corrupted, the fifo read fallback, write thresholds with blkdebug
 * failures, the QUORUM_* events (seen through an event sink),
 * option errors and x-blockdev-change (quorum_add_child/del_child).
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
#include "lockstep/block.h"
#include "qmp/qmp-event.h"
#include "runtime/event.h"
#include "util.h"

#define IMG_SIZE (1 * MiB)
#define NR_IMGS 3

static char img[NR_IMGS][64];

/* ---- Events ------------------------------------------------------------ */

#define MAX_EVENTS 64
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *events[MAX_EVENTS];
static int nr_events;

/* The event sink: records each event's data with its name as "event". */
static void
observer(const struct event *ev)
{
    mutex_lock(&ev_lock);
    if (nr_events < MAX_EVENTS) {
        json_t *e = qmp_event_data(ev);

        json_object_set_new(e, "event", json_string(ev->name));
        events[nr_events++] = e;
    }
    mutex_unlock(&ev_lock);
}

static void
events_clear(void)
{
    for (int i = 0; i < nr_events; i++) {
        json_decref(events[i]);
    }
    nr_events = 0;
}

/* How many events named name (and, if given, about node-name node). */
static int
events_count(const char *name, const char *node)
{
    int n = 0;

    for (int i = 0; i < nr_events; i++) {
        const char *ev = json_string_value(json_object_get(events[i],
                                                           "event"));
        const char *nn = json_string_value(json_object_get(events[i],
                                                           "node-name"));

        if (!strcmp(ev, name) && (!node || (nn && !strcmp(nn, node)))) {
            n++;
        }
    }
    return n;
}

static json_t *
event_find(const char *name)
{
    for (int i = 0; i < nr_events; i++) {
        if (!strcmp(json_string_value(json_object_get(events[i], "event")),
                    name)) {
            return events[i];
        }
    }
    return NULL;
}

/* ---- Helpers ------------------------------------------------------------ */

static int
setup(void **state UNUSED)
{
    for (int i = 0; i < NR_IMGS; i++) {
        int fd;

        snprintf(img[i], sizeof(img[i]), "/tmp/lockstep-quorum-XXXXXX");
        fd = mkstemp(img[i]);
        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, IMG_SIZE), 0);
        close(fd);
    }
    event_set_sink(observer);
    return 0;
}

static int
teardown(void **state UNUSED)
{
    for (int i = 0; i < NR_IMGS; i++) {
        unlink(img[i]);
    }
    event_set_sink(NULL);
    events_clear();
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

/*
 * file nodes f0..f2 (so that tests can write them directly).  A quorum
 * refuses other writers on its children (QEMU's rule); force-share lets
 * the tests corrupt them behind its back.
 */
static struct block_node *files[NR_IMGS];
static struct block_handle *file_h[NR_IMGS];

static void
open_files(void)
{
    for (int i = 0; i < NR_IMGS; i++) {
        files[i] = node_new_json(NULL, "{\"driver\": \"file\", \"node-name\":"
                                 " \"f%d\", \"filename\": \"%s\", "
                                 "\"force-share\": true}", i, img[i]);
        assert_non_null(files[i]);
        file_h[i] = block_handle_new(files[i], "test", BLOCK_PERM_ALL & ~
                                     BLOCK_PERM_RESIZE, BLOCK_PERM_ALL,
                                     NULL);
        assert_non_null(file_h[i]);
        assert_int_equal(block_handle_pwrite_zeroes(file_h[i], 0, IMG_SIZE,
                                                    0), 0);
    }
}

static void
close_files(void)
{
    for (int i = 0; i < NR_IMGS; i++) {
        block_handle_free(file_h[i]);
        block_node_unref(files[i]);
    }
}

static void
fill(struct block_handle *h, int pattern, uint64_t off, uint64_t len)
{
    void *buf = xmalloc(len);

    memset(buf, pattern, len);
    assert_int_equal(block_handle_pwrite(h, off, len, buf, 0), 0);
    free(buf);
}

static void
expect_pattern(struct block_handle *h, int pattern, uint64_t off,
               uint64_t len)
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

static struct block_handle *
handle(struct block_node *node)
{
    struct block_handle *h = block_handle_new(node, "test guest",
                                              BLOCK_PERM_CONSISTENT_READ |
                                              BLOCK_PERM_WRITE,
                                              BLOCK_PERM_ALL, NULL);

    assert_non_null(h);
    return h;
}

/* A quorum over raw children of f0..f2. */
static struct block_node *
quorum_of_three(int threshold, const char *extra)
{
    return node_new_json(NULL,
        "{\"driver\": \"quorum\", \"node-name\": \"q\", \"vote-threshold\": "
        "%d, %s \"children\": ["
        "{\"driver\": \"raw\", \"node-name\": \"c0\", \"file\": \"f0\"},"
        "{\"driver\": \"raw\", \"node-name\": \"c1\", \"file\": \"f1\"},"
        "{\"driver\": \"raw\", \"node-name\": \"c2\", \"file\": \"f2\"}]}",
        threshold, extra);
}

/* ---- Tests ---------------------------------------------------------------- */

static void
test_vote(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;

    open_files();
    q = quorum_of_three(2, "");
    h = handle(q);
    events_clear();
    fill(h, 0x11, 0, IMG_SIZE);
    for (int i = 0; i < NR_IMGS; i++) {
        expect_pattern(file_h[i], 0x11, 0, IMG_SIZE);
    }
    assert_int_equal(nr_events, 0);

    /* One child disagrees: the majority wins, the child is reported. */
    fill(file_h[1], 0x99, 4096, 4096);
    expect_pattern(h, 0x11, 0, 64 * KiB);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c1"), 1);
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 0);
    {
        json_t *e = event_find("QUORUM_REPORT_BAD");

        assert_string_equal(json_string_value(json_object_get(e, "type")),
                            "read");
        assert_null(json_object_get(e, "error"));
        assert_int_equal(json_integer_value(json_object_get(e, "sector")),
                         0);
        assert_int_equal(json_integer_value(json_object_get(
                             e, "sectors-count")), 128);
    }
    /* Without rewrite-corrupted the child stays corrupted. */
    expect_pattern(file_h[1], 0x99, 4096, 4096);

    /* Two disagree with each other and with c0: no version reaches 2. */
    events_clear();
    fill(file_h[2], 0x77, 4096, 512);
    {
        char buf[8192];

        assert_int_equal(block_handle_pread(h, 0, sizeof(buf), buf, 0),
                         -EIO);
    }
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 1);
    assert_string_equal(json_string_value(json_object_get(
                            event_find("QUORUM_FAILURE"), "reference")),
                        "q");
    /* Other ranges still read. */
    expect_pattern(h, 0x11, 64 * KiB, 64 * KiB);

    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

static void
test_rewrite_corrupted(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;

    open_files();
    q = quorum_of_three(2, "\"rewrite-corrupted\": true,");
    h = handle(q);
    fill(h, 0x22, 0, IMG_SIZE);
    fill(file_h[0], 0x00, 8192, 1024);
    events_clear();
    expect_pattern(h, 0x22, 0, 16384);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c0"), 1);
    /* Repaired. */
    expect_pattern(file_h[0], 0x22, 0, 16384);
    events_clear();
    expect_pattern(h, 0x22, 0, 16384);
    assert_int_equal(nr_events, 0);
    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

static void
test_fifo(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;

    open_files();
    fill(file_h[0], 0x10, 0, IMG_SIZE);
    fill(file_h[1], 0x20, 0, IMG_SIZE);
    q = node_new_json(NULL,
        "{\"driver\": \"quorum\", \"node-name\": \"q\", \"vote-threshold\": 1,"
        " \"read-pattern\": \"fifo\", \"children\": ["
        "{\"driver\": \"blkdebug\", \"node-name\": \"c0\", \"image\": "
        "{\"driver\": \"raw\", \"file\": \"f0\"}, \"inject-error\": "
        "[{\"event\": \"read_aio\", \"sector\": 16, \"iotype\": [\"read\"]}]},"
        "{\"driver\": \"raw\", \"node-name\": \"c1\", \"file\": \"f1\"}]}");
    assert_non_null(q);
    h = handle(q);
    events_clear();
    /* The first child answers where it can: no vote, no event. */
    expect_pattern(h, 0x10, 0, 4096);
    assert_int_equal(nr_events, 0);
    /* Sector 16 fails on c0: c1 answers, c0 is reported with an error. */
    expect_pattern(h, 0x20, 8192, 512);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c0"), 1);
    assert_non_null(json_object_get(event_find("QUORUM_REPORT_BAD"),
                                    "error"));
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 0);
    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

static struct block_node *
quorum_failing_writer(int threshold)
{
    return node_new_json(NULL,
        "{\"driver\": \"quorum\", \"node-name\": \"q\", \"vote-threshold\": "
        "%d, \"children\": ["
        "{\"driver\": \"raw\", \"node-name\": \"c0\", \"file\": \"f0\"},"
        "{\"driver\": \"blkdebug\", \"node-name\": \"c1\", \"image\": "
        "{\"driver\": \"raw\", \"file\": \"f1\"}, \"inject-error\": "
        "[{\"event\": \"write_aio\", \"errno\": 28}]},"
        "{\"driver\": \"raw\", \"node-name\": \"c2\", \"file\": \"f2\"}]}",
        threshold);
}

static void
test_write_threshold(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;
    char buf[4096];

    open_files();
    /* 2 of 3 succeed: enough for threshold 2. */
    q = quorum_failing_writer(2);
    h = handle(q);
    events_clear();
    fill(h, 0x33, 0, 4096);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c1"), 1);
    assert_string_equal(json_string_value(json_object_get(
                            event_find("QUORUM_REPORT_BAD"), "type")),
                        "write");
    assert_non_null(json_object_get(event_find("QUORUM_REPORT_BAD"),
                                    "error"));
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 0);
    expect_pattern(file_h[0], 0x33, 0, 4096);
    expect_pattern(file_h[2], 0x33, 0, 4096);
    expect_pattern(file_h[1], 0x00, 0, 4096);
    /* Reads vote: c0 and c2 agree. */
    expect_pattern(h, 0x33, 0, 4096);
    block_handle_free(h);
    block_node_unref(q);

    /* Threshold 3: the write fails with the child's errno. */
    q = quorum_failing_writer(3);
    h = handle(q);
    events_clear();
    memset(buf, 0x44, sizeof(buf));
    assert_int_equal(block_handle_pwrite(h, 8192, sizeof(buf), buf, 0),
                     -ENOSPC);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c1"), 1);
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 1);
    assert_int_equal(json_integer_value(json_object_get(
                         event_find("QUORUM_FAILURE"), "sector")), 16);
    assert_int_equal(json_integer_value(json_object_get(
                         event_find("QUORUM_FAILURE"), "sectors-count")), 8);
    /* Flush goes everywhere and works. */
    assert_int_equal(block_handle_flush(h), 0);
    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

/* A child whose flush fails: reported, and the vote decides. */
static void
test_flush(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;

    open_files();
    q = node_new_json(NULL,
        "{\"driver\": \"quorum\", \"node-name\": \"q\", \"vote-threshold\": 1,"
        " \"read-pattern\": \"fifo\", \"children\": ["
        "{\"driver\": \"raw\", \"node-name\": \"c0\", \"file\": \"f0\"},"
        "{\"driver\": \"blkdebug\", \"node-name\": \"c1\", \"image\": "
        "{\"driver\": \"raw\", \"file\": \"f1\"}, \"inject-error\": "
        "[{\"event\": \"flush_to_disk\", \"iotype\": [\"flush\"]}]}]}");
    assert_non_null(q);
    h = handle(q);
    /* Something to flush: a flush with nothing written is skipped. */
    {
        char buf[512] = {0};

        assert_int_equal(block_handle_pwrite(h, 0, sizeof(buf), buf, 0), 0);
    }
    events_clear();
    assert_int_equal(block_handle_flush(h), 0);
    assert_int_equal(events_count("QUORUM_REPORT_BAD", "c1"), 1);
    assert_string_equal(json_string_value(json_object_get(
                            event_find("QUORUM_REPORT_BAD"), "type")),
                        "flush");
    assert_int_equal(events_count("QUORUM_FAILURE", NULL), 0);
    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

static void
test_options(void **state UNUSED)
{
    static const struct {
        const char *opts;
        const char *msg;
    } cases[] = {
        {"\"vote-threshold\": 4,", "threshold may not exceed children count"},
        {"\"vote-threshold\": 0,",
         "Parameter 'vote-threshold' expects a value >= 1"},
        {"\"vote-threshold\": 2, \"blkverify\": true,",
         "blkverify mode is not supported"},
        {"\"vote-threshold\": 2, \"read-pattern\": \"fifo\", "
         "\"rewrite-corrupted\": true,",
         "rewrite-corrupted=on cannot be used with read-pattern=fifo"},
    };

    open_files();
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *msg = NULL;
        struct block_node *q = node_new_json(&msg,
            "{\"driver\": \"quorum\", %s \"children\": [\"f0\", \"f1\", "
            "\"f2\"]}", cases[i].opts);

        assert_null(q);
        assert_non_null(msg);
        assert_string_equal(msg, cases[i].msg);
        free(msg);
    }
    {
        char *msg = NULL;
        struct block_node *q = node_new_json(&msg,
            "{\"driver\": \"quorum\", \"children\": [\"f0\"]}");

        assert_null(q);
        assert_string_equal(msg, "Parameter 'vote-threshold' is missing");
        free(msg);
    }
    close_files();
}

static void
test_change_children(void **state UNUSED)
{
    struct block_node *q, *extra;
    struct block_handle *h;
    struct err *err = NULL;

    open_files();
    q = quorum_of_three(2, "");
    h = handle(q);
    fill(h, 0x55, 0, IMG_SIZE);

    assert_false(qmp_x_blockdev_change("q", "children.7", NULL, &err));
    assert_string_equal(err->msg, "Node 'q' does not have child "
                        "'children.7'");
    err_free(err);
    err = NULL;
    assert_false(qmp_x_blockdev_change("q", "children.1", "c1", &err));
    assert_string_equal(err->msg, "The parameters child and node are in "
                        "conflict");
    err_free(err);
    err = NULL;
    assert_false(qmp_x_blockdev_change("nope", "children.1", NULL, &err));
    err_free(err);
    err = NULL;
    assert_false(qmp_x_blockdev_change("f0", NULL, "q", &err));
    assert_string_equal(err->msg, "The node f0 does not support adding a "
                        "child");
    err_free(err);
    err = NULL;

    /* Remove children.1 (the middle one): 2 left, threshold 2. */
    assert_true(qmp_x_blockdev_change("q", "children.1", NULL, &err));
    assert_null(block_node_find("c1"));
    assert_int_equal(quorum_del_child(q, "children.0", &err), -EINVAL);
    assert_string_equal(err->msg, "The number of children cannot be lower "
                        "than the vote threshold 2");
    err_free(err);
    err = NULL;
    /* I/O goes on with two children. */
    fill(h, 0x66, 0, 4096);
    expect_pattern(h, 0x66, 0, 4096);
    expect_pattern(file_h[1], 0x55, 0, 4096);

    /* Re-add a node: it becomes children.1 again (QEMU drifts). */
    extra = node_new_json(NULL, "{\"driver\": \"raw\", \"node-name\": "
                          "\"c9\", \"file\": \"f1\"}");
    assert_non_null(extra);
    assert_true(qmp_x_blockdev_change("q", NULL, "c9", &err));
    assert_non_null(block_node_child(q, "children.1"));
    assert_ptr_equal(block_node_child(q, "children.1")->node, extra);
    /* A node with a parent cannot be added. */
    assert_int_equal(quorum_add_child(q, extra, &err), -EBUSY);
    assert_string_equal(err->msg, "The node c9 already has a parent");
    err_free(err);
    err = NULL;
    block_node_unref(extra);
    /* Writes reach it. */
    fill(h, 0x67, 0, 4096);
    expect_pattern(file_h[1], 0x67, 0, 4096);

    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

/* Many threads writing and reading through a 3-child quorum at once. */
struct stress_arg {
    struct block_handle *h;
    int id;
};

static void *
stress_thread(void *opaque)
{
    struct stress_arg *a = opaque;
    unsigned char buf[4096];
    uint64_t off = (uint64_t)a->id * 64 * KiB;

    for (int i = 0; i < 200; i++) {
        memset(buf, (a->id * 16 + i) & 0xff, sizeof(buf));
        if (block_handle_pwrite(a->h, off + (i % 16) * 4096, sizeof(buf),
                                buf, 0) != 0) {
            abort();
        }
        memset(buf, 0, sizeof(buf));
        if (block_handle_pread(a->h, off + (i % 16) * 4096, sizeof(buf),
                               buf, 0) != 0 ||
            buf[0] != ((a->id * 16 + i) & 0xff)) {
            abort();
        }
    }
    return NULL;
}

static void
test_concurrent(void **state UNUSED)
{
    struct block_node *q;
    struct block_handle *h;
    pthread_t t[8];
    struct stress_arg args[8];

    open_files();
    q = quorum_of_three(3, "");
    h = handle(q);
    events_clear();
    for (int i = 0; i < 8; i++) {
        args[i].h = h;
        args[i].id = i;
        thread_create(&t[i], "stress", stress_thread, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        thread_join(t[i]);
    }
    assert_int_equal(nr_events, 0);
    block_handle_free(h);
    block_node_unref(q);
    close_files();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vote),
        cmocka_unit_test(test_rewrite_corrupted),
        cmocka_unit_test(test_fifo),
        cmocka_unit_test(test_write_threshold),
        cmocka_unit_test(test_flush),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_change_children),
        cmocka_unit_test(test_concurrent),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
