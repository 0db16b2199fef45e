/* SPDX-License-Identifier: MIT */
/*
 * In-process tests of the NBD server: a session runs on one end of a
 * socketpair (nbdsrv_serve_fds on a thread, with workers) and libnbd talks
 * to the other end.  Checked: negotiated flags and size, data round trips
 * with FUA, write-zeroes and trim, out-of-range errors, base:allocation
 * and qemu:dirty-bitmap extents, many requests in flight, export deletion
 * (safe refused while connected, hard disconnects) with the
 * BLOCK_EXPORT_DELETED event, query-block-exports, and how metadata
 * context queries match (LIST wildcards, exact SET names).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <libnbd.h>

#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "export/export.h"
#include "nbd/nbd-internal.h"
#include "nbd/server.h"
#include "qmp/qmp-event.h"
#include "qmp/qmp-internal.h"
#include "runtime/event.h"
#include "util.h"

#define DISK_SIZE (8 * MiB)

/* The events the server sent (recorded by our event sink). */
static pthread_mutex_t ev_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *g_events;

static void
record_event(const struct event *event)
{
    json_t *ev = json_pack("{s:s, s:o}", "event", event->name, "data",
                           qmp_event_data(event));

    mutex_lock(&ev_lock);
    json_array_append_new(g_events, ev);
    mutex_unlock(&ev_lock);
}

struct session {
    int fds[2];
    pthread_t thread;
    struct nbd_handle *h;
};

static void *
serve_thread(void *opaque)
{
    struct session *s = opaque;

    nbdsrv_serve_fds(s->fds[0], s->fds[0], 4, NULL, NULL);
    close(s->fds[0]);
    return NULL;
}

static void
session_start(struct session *s, const char *export, const char *ctx)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
                                s->fds), 0);
    thread_create(&s->thread, "test-nbd", serve_thread, s);
    s->h = nbd_create();
    assert_non_null(s->h);
    assert_int_equal(nbd_set_export_name(s->h, export), 0);
    if (ctx) {
        assert_int_equal(nbd_add_meta_context(s->h, ctx), 0);
    }
    if (nbd_connect_socket(s->h, s->fds[1]) < 0) {
        fail_msg("connect: %s", nbd_get_error());
    }
}

static void
session_end(struct session *s)
{
    nbd_shutdown(s->h, 0);
    nbd_close(s->h);   /* closes fds[1] */
    thread_join(s->thread);
}

static struct block_node *
g_node;

static int
setup(void **state)
{
    struct err *err = NULL;

    (void)state;
    g_events = json_array();
    event_set_sink(record_event);
    /* Writes must stick: a file node on an unlinked temporary file. */
    {
        char path[] = "/tmp/test-nbd-server-XXXXXX";
        int fd = mkstemp(path);
        char *opts;

        assert_true(fd >= 0);
        assert_int_equal(ftruncate(fd, DISK_SIZE), 0);
        close(fd);
        opts = xasprintf("driver=file,node-name=disk,filename=%s", path);
        g_node = block_node_new_keyval(opts, &err);
        free(opts);
        unlink(path);
    }
    if (!g_node) {
        fail_msg("node: %s", err->msg);
    }
    assert_non_null(block_dirty_bitmap_create(g_node, "b0", 65536, &err));
    if (!nbdexp_create(&(struct block_export_options) {
                           .type = "nbd", .id = "e0", .node_name = "disk",
                           .writable = true,
                           .driver_opts = &(struct nbd_export_options) {
                               .name = "disk", .allocation_depth = true,
                               .bitmaps = &(struct nbd_export_bitmap) {
                                   .name = "b0" },
                               .n_bitmaps = 1 } }, false, &err)) {
        fail_msg("export: %s", err->msg);
    }
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    block_export_close_all();
    block_node_unref(g_node);
    event_set_sink(NULL);
    json_decref(g_events);
    return 0;
}

static void
test_flags(void **state)
{
    struct session s;

    (void)state;
    session_start(&s, "disk", "base:allocation");
    assert_int_equal(nbd_get_size(s.h), DISK_SIZE);
    assert_int_equal(nbd_is_read_only(s.h), 0);
    assert_int_equal(nbd_can_flush(s.h), 1);
    assert_int_equal(nbd_can_fua(s.h), 1);
    assert_int_equal(nbd_can_trim(s.h), 1);
    assert_int_equal(nbd_can_zero(s.h), 1);
    assert_int_equal(nbd_can_fast_zero(s.h), 1);
    assert_int_equal(nbd_can_df(s.h), 1);
    assert_int_equal(nbd_can_cache(s.h), 1);
    assert_int_equal(nbd_can_meta_context(s.h, "base:allocation"), 1);
    assert_int_equal(nbd_get_block_size(s.h, LIBNBD_SIZE_MAXIMUM),
                     32 * MiB);
    session_end(&s);
}

static void
test_data(void **state)
{
    struct session s;
    char *buf = xmalloc(MiB), *rd = xmalloc(MiB);

    (void)state;
    session_start(&s, "disk", NULL);
    memset(buf, 0x3c, MiB);
    assert_int_equal(nbd_pwrite(s.h, buf, MiB, MiB, LIBNBD_CMD_FLAG_FUA), 0);
    assert_int_equal(nbd_pread(s.h, rd, MiB, MiB, 0), 0);
    assert_memory_equal(buf, rd, MiB);
    assert_int_equal(nbd_zero(s.h, 4096, MiB + 4096, 0), 0);
    assert_int_equal(nbd_pread(s.h, rd, 8192, MiB, 0), 0);
    assert_memory_equal(rd, buf, 4096);
    assert_true(buffer_is_zero(rd + 4096, 4096));
    assert_int_equal(nbd_zero(s.h, 4096, MiB, LIBNBD_CMD_FLAG_NO_HOLE), 0);
    assert_int_equal(nbd_trim(s.h, 65536, 2 * MiB, 0), 0);
    assert_int_equal(nbd_flush(s.h, 0), 0);
    assert_int_equal(nbd_cache(s.h, 4096, 0, 0), 0);
    /* Out of range: reads EINVAL, writes ENOSPC (spec). */
    assert_int_equal(nbd_pread(s.h, rd, 4096, DISK_SIZE - 512, 0), -1);
    assert_int_equal(nbd_get_errno(), EINVAL);
    assert_int_equal(nbd_pwrite(s.h, buf, 4096, DISK_SIZE - 512, 0), -1);
    assert_int_equal(nbd_get_errno(), ENOSPC);
    /* The session is still fine. */
    assert_int_equal(nbd_pread(s.h, rd, 512, 0, 0), 0);
    session_end(&s);
    free(buf);
    free(rd);
}

struct extents {
    uint32_t e[64];
    size_t n;
};

static int
extent_cb(void *opaque, const char *ctx, uint64_t offset, uint32_t *entries,
          size_t nr, int *error)
{
    struct extents *x = opaque;

    (void)ctx;
    (void)offset;
    (void)error;
    for (size_t i = 0; i < nr && x->n < 64; i++) {
        x->e[x->n++] = entries[i];
    }
    return 0;
}

static void
test_block_status(void **state)
{
    struct session s;
    struct extents x = {.n = 0};
    char buf[4096];

    (void)state;
    memset(buf, 1, sizeof(buf));
    session_start(&s, "disk", "base:allocation");
    assert_int_equal(nbd_pwrite(s.h, buf, 4096, 6 * MiB, 0), 0);
    assert_int_equal(nbd_block_status(s.h, MiB + 4096, 5 * MiB,
                                      (nbd_extent_callback){
                                          .callback = extent_cb,
                                          .user_data = &x}, 0), 0);
    /* hole,zero up to 6 MiB, then 4 KiB of data. */
    assert_true(x.n >= 4);
    assert_int_equal(x.e[0], MiB);
    assert_int_equal(x.e[1], 3);
    assert_int_equal(x.e[2], 4096);
    assert_int_equal(x.e[3], 0);
    session_end(&s);

    memset(&x, 0, sizeof(x));
    session_start(&s, "disk", "qemu:dirty-bitmap:b0");
    assert_int_equal(nbd_block_status(s.h, MiB, 6 * MiB,
                                      (nbd_extent_callback){
                                          .callback = extent_cb,
                                          .user_data = &x},
                                      LIBNBD_CMD_FLAG_REQ_ONE), 0);
    /* One extent (REQ_ONE): the 64 KiB granule written at 6 MiB. */
    assert_int_equal(x.n, 2);
    assert_int_equal(x.e[0], 65536);
    assert_int_equal(x.e[1], 1);   /* dirty */
    memset(&x, 0, sizeof(x));
    assert_int_equal(nbd_block_status(s.h, 3 * MiB, 3 * MiB,
                                      (nbd_extent_callback){
                                          .callback = extent_cb,
                                          .user_data = &x},
                                      LIBNBD_CMD_FLAG_REQ_ONE), 0);
    assert_int_equal(x.n, 2);
    assert_int_equal(x.e[0], 3 * MiB);
    assert_int_equal(x.e[1], 0);   /* clean */
    session_end(&s);
}

/* Extents per context, for a session that asked for two. */
struct ctx_extents {
    struct extents alloc, dirty;
};

static int
ctx_extent_cb(void *opaque, const char *ctx, uint64_t offset,
              uint32_t *entries, size_t nr, int *error)
{
    struct ctx_extents *x = opaque;

    return extent_cb(strcmp(ctx, "base:allocation") == 0 ? &x->alloc
                                                        : &x->dirty,
                     ctx, offset, entries, nr, error);
}

static void
status_alone(const char *ctx, struct extents *x)
{
    struct session s;

    memset(x, 0, sizeof(*x));
    session_start(&s, "disk", ctx);
    assert_int_equal(nbd_block_status(s.h, 512 * 1024, 6 * MiB,
                                      (nbd_extent_callback){
                                          .callback = extent_cb,
                                          .user_data = x}, 0), 0);
    session_end(&s);
}

static void
test_block_status_two_contexts(void **state)
{
    struct session s;
    struct ctx_extents both;
    struct extents alloc, dirty;
    char buf[4096];

    (void)state;
    memset(buf, 7, sizeof(buf));
    session_start(&s, "disk", "base:allocation");
    assert_int_equal(nbd_pwrite(s.h, buf, 4096, 6 * MiB, 0), 0);
    session_end(&s);
    status_alone("base:allocation", &alloc);
    status_alone("qemu:dirty-bitmap:b0", &dirty);

    /* One request, two contexts: every context's extents are found
     * before the reply is sent, each as it is alone. */
    memset(&both, 0, sizeof(both));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
                                s.fds), 0);
    thread_create(&s.thread, "test-nbd", serve_thread, &s);
    s.h = nbd_create();
    assert_non_null(s.h);
    assert_int_equal(nbd_set_export_name(s.h, "disk"), 0);
    assert_int_equal(nbd_add_meta_context(s.h, "base:allocation"), 0);
    assert_int_equal(nbd_add_meta_context(s.h, "qemu:dirty-bitmap:b0"), 0);
    if (nbd_connect_socket(s.h, s.fds[1]) < 0) {
        fail_msg("connect: %s", nbd_get_error());
    }
    assert_int_equal(nbd_block_status(s.h, 512 * 1024, 6 * MiB,
                                      (nbd_extent_callback){
                                          .callback = ctx_extent_cb,
                                          .user_data = &both}, 0), 0);
    session_end(&s);
    assert_true(alloc.n >= 2 && dirty.n >= 2);
    assert_int_equal(both.alloc.n, alloc.n);
    assert_memory_equal(both.alloc.e, alloc.e, alloc.n * sizeof(uint32_t));
    assert_int_equal(both.dirty.n, dirty.n);
    assert_memory_equal(both.dirty.e, dirty.e, dirty.n * sizeof(uint32_t));
}

static int
done_cb(void *opaque, int *error)
{
    int *errors = opaque;

    if (*error) {
        __atomic_add_fetch(errors, 1, __ATOMIC_SEQ_CST);
    }
    return 1;
}

static void
test_in_flight(void **state)
{
    struct session s;
    static char bufs[64][4096];
    int errors = 0;

    (void)state;
    session_start(&s, "disk", NULL);
    for (int i = 0; i < 64; i++) {
        memset(bufs[i], i, sizeof(bufs[i]));
        assert_true(nbd_aio_pwrite(s.h, bufs[i], 4096, (uint64_t)i * 65536,
                                   (nbd_completion_callback){
                                       .callback = done_cb,
                                       .user_data = &errors}, 0) > 0);
    }
    while (nbd_aio_in_flight(s.h) > 0) {
        assert_true(nbd_poll(s.h, -1) >= 0);
    }
    assert_int_equal(errors, 0);
    for (int i = 0; i < 64; i++) {
        char rd[4096];

        assert_int_equal(nbd_pread(s.h, rd, 4096, (uint64_t)i * 65536, 0),
                         0);
        assert_memory_equal(rd, bufs[i], 4096);
    }
    session_end(&s);
}

static void
collect_id(const struct block_export_info *info, void *opaque)
{
    json_array_append_new(opaque, json_string(info->id));
}

/* The ids query-block-exports would list. */
static json_t *
export_ids(void)
{
    json_t *ids = json_array();

    block_export_foreach(collect_id, ids);
    return ids;
}

static void
test_export_delete(void **state)
{
    struct session s;
    struct err *err = NULL;
    json_t *q, *args;
    char buf[512];

    (void)state;
    q = export_ids();
    assert_int_equal(json_array_size(q), 1);
    assert_string_equal(json_string_value(json_array_get(q, 0)), "e0");
    json_decref(q);

    session_start(&s, "disk", NULL);
    assert_false(block_export_del("e0", BLOCK_EXPORT_REMOVE_SAFE, &err));
    assert_string_equal(err->msg, "export 'e0' still in use");
    err_free(err);
    err = NULL;
    /* A mode that does not exist is refused (by the QMP edge now). */
    args = json_pack("{s:s, s:s}", "id", "e0", "mode", "bogus");
    assert_null(qmp_execute("block-export-del", args, &err));
    err_free(err);
    err = NULL;
    json_decref(args);
    assert_true(block_export_del("e0", BLOCK_EXPORT_REMOVE_HARD, &err));
    /* The client was disconnected. */
    assert_int_equal(nbd_pread(s.h, buf, sizeof(buf), 0, 0), -1);
    nbd_close(s.h);
    thread_join(s.thread);
    mutex_lock(&ev_lock);
    assert_int_equal(json_array_size(g_events), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(g_events, 0), "event")),
                        "BLOCK_EXPORT_DELETED");
    mutex_unlock(&ev_lock);
    q = export_ids();
    assert_int_equal(json_array_size(q), 0);
    json_decref(q);
    assert_false(block_export_del("e0", BLOCK_EXPORT_REMOVE_SAFE, &err));
    assert_string_equal(err->msg, "Export 'e0' is not found");
    err_free(err);
    err = NULL;

    /* The server is not running: block_export_add refuses. */
    assert_false(block_export_add(&(struct block_export_options) {
                                      .type = "nbd", .id = "e1",
                                      .node_name = "disk" }, &err));
    assert_string_equal(err->msg, "NBD server not running");
    err_free(err);
}

/* ---- Meta-context queries (pure: no I/O) ------------------------------ */

struct matches {
    char names[8][64];
    uint32_t ids[8];
    int n;
};

static void
match_cb(uint32_t id, const char *name, void *opaque)
{
    struct matches *m = opaque;

    assert_true(m->n < 8);
    snprintf(m->names[m->n], sizeof(m->names[0]), "%s", name);
    m->ids[m->n++] = id;
}

static int
query(struct nbdexp *exp, const char *q, bool list, struct matches *m)
{
    memset(m, 0, sizeof(*m));
    assert_true(nbdsrv_meta_query(exp, q, list, match_cb, m));
    return m->n;
}

static void
test_meta_query(void **state)
{
    struct nbdexp_bitmap bms[2] = {
        {.ctx_name = (char *)"qemu:dirty-bitmap:a"},
        {.ctx_name = (char *)"qemu:dirty-bitmap:b"},
    };
    struct nbdexp exp = {.alloc_depth = true, .bitmaps = bms, .nbitmaps = 2};
    struct matches m;

    (void)state;
    /* LIST with no query: everything, in id order. */
    assert_int_equal(query(&exp, "", true, &m), 4);
    assert_string_equal(m.names[0], "base:allocation");
    assert_int_equal(m.ids[0], 0);
    assert_string_equal(m.names[1], "qemu:allocation-depth");
    assert_int_equal(m.ids[1], 1);
    assert_int_equal(m.ids[3], 3);
    /* Wildcards only in LIST. */
    assert_int_equal(query(&exp, "base:", true, &m), 1);
    assert_int_equal(query(&exp, "base:", false, &m), 0);
    assert_int_equal(query(&exp, "qemu:", true, &m), 3);
    assert_int_equal(query(&exp, "qemu:", false, &m), 0);
    assert_int_equal(query(&exp, "qemu:dirty-bitmap:", true, &m), 2);
    assert_int_equal(query(&exp, "qemu:dirty-bitmap:", false, &m), 0);
    /* Exact names. */
    assert_int_equal(query(&exp, "qemu:dirty-bitmap:b", false, &m), 1);
    assert_int_equal(m.ids[0], 3);
    assert_string_equal(nbdsrv_meta_name(&exp, 3), "qemu:dirty-bitmap:b");
    assert_null(nbdsrv_meta_name(&exp, 4));
    assert_int_equal(query(&exp, "base:allocation", false, &m), 1);
    /* Unknown names and namespaces match nothing. */
    assert_int_equal(query(&exp, "qemu:dirty-bitmap:c", false, &m), 0);
    assert_int_equal(query(&exp, "base:other", true, &m), 0);
    assert_int_equal(query(&exp, "x-foo:bar", true, &m), 0);
    assert_int_equal(query(&exp, "nocolon", true, &m), 0);
    /* allocation-depth only when the export offers it. */
    exp.alloc_depth = false;
    assert_int_equal(query(&exp, "qemu:allocation-depth", false, &m), 0);
    assert_int_equal(query(&exp, "", true, &m), 3);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_data),
        cmocka_unit_test(test_block_status),
        cmocka_unit_test(test_block_status_two_contexts),
        cmocka_unit_test(test_in_flight),
        cmocka_unit_test(test_export_delete),
        cmocka_unit_test(test_meta_query),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
