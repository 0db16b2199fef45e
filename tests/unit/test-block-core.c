/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the block layer core: option checking, node names,
 * permissions, replacing a node under its parents, draining, alignment,
 * block status and the blkdebug and raw drivers; O_DIRECT files whose
 * length is not a multiple of the block size, read whole and written at
 * their end (on a disk-backed directory, skipped without one).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "block/filter/blkdebug.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "test-env.h"
#include "util.h"

static char img_path[64];

static int
setup_image(void **state UNUSED)
{
    int fd;

    snprintf(img_path, sizeof(img_path), "/tmp/lockstep-core-XXXXXX");
    fd = mkstemp(img_path);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 * MiB), 0);
    close(fd);
    return 0;
}

static int
remove_image(void **state UNUSED)
{
    unlink(img_path);
    return 0;
}

static struct block_node *
new_node(const char *keyval, char **msg)
{
    struct err *err = NULL;
    struct block_node *node = block_node_new_keyval(keyval, &err);

    if (msg) {
        *msg = err ? xstrdup(err->msg) : NULL;
    }
    err_free(err);
    return node;
}

static void
expect_error(const char *keyval, const char *expected)
{
    char *msg = NULL;
    struct block_node *node = new_node(keyval, &msg);

    assert_null(node);
    assert_non_null(msg);
    if (!strstr(msg, expected)) {
        fail_msg("'%s': expected '%s', got '%s'", keyval, expected, msg);
    }
    free(msg);
}

static void
test_option_errors(void **state UNUSED)
{
    expect_error("driver=null-co,bogus=1", "Parameter 'bogus' is unexpected");
    expect_error("driver=null-co,read-only=maybe",
                 "Invalid parameter type for 'read-only', expected: boolean");
    expect_error("driver=nosuch", "Parameter 'driver' does not accept value");
    expect_error("driver=file", "Parameter 'filename' is missing");
    expect_error("driver=raw,file.driver=file,file.bogus=1,file.filename=x",
                 "Parameter 'file.bogus' is unexpected");
    expect_error("driver=null-co,discard=sometimes",
                 "Parameter 'discard' does not accept value 'sometimes'");
    expect_error("driver=file,filename=/nonexistent/x",
                 "Could not open '/nonexistent/x'");
    expect_error("driver=null-co,node-name=1abc", "Invalid node-name");
}

static void
test_node_names(void **state UNUSED)
{
    struct block_node *a = new_node("driver=null-co,node-name=a", NULL);
    struct block_node *anon = new_node("driver=null-co", NULL);

    assert_non_null(a);
    assert_non_null(anon);
    assert_ptr_equal(block_node_find("a"), a);
    assert_true(anon->auto_named);
    assert_int_equal(anon->node_name[0], '#');
    expect_error("driver=null-co,node-name=a",
                 "Duplicate nodes with node-name='a'");
    block_node_unref(anon);
    block_node_unref(a);
    assert_null(block_node_find("a"));
}

static void
test_keyval_conversion(void **state UNUSED)
{
    struct block_node *n =
        new_node("driver=null-co,size=2M,read-only=on,read-zeroes=on", NULL);

    assert_non_null(n);
    assert_true(n->read_only);
    assert_int_equal(block_getlength(n), 2 * MiB);
    block_node_unref(n);
}

/* A handle, or NULL with the error's message in *msg. */
static struct block_handle *
try_handle(struct block_node *node, uint32_t perm, uint32_t shared,
           char **msg)
{
    struct err *err = NULL;
    struct block_handle *h = block_handle_new(node, "test", perm, shared,
                                              &err);

    *msg = err ? xstrdup(err->msg) : NULL;
    err_free(err);
    return h;
}

#define RW (BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE)

static void
test_permissions(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *file, *fmt1, *fmt2;
    struct block_handle *h1, *h2;
    char *msg = NULL;

    kv = xasprintf("driver=file,node-name=f,filename=%s", img_path);
    file = new_node(kv, NULL);
    assert_non_null(file);
    /* raw has no metadata and shares its file, as in QEMU. */
    fmt1 = new_node("driver=raw,node-name=r1,file=f", NULL);
    assert_non_null(fmt1);
    fmt2 = new_node("driver=raw,node-name=r2,file=f", NULL);
    assert_non_null(fmt2);

    /* A user that does not share writing keeps other writers out... */
    h1 = try_handle(fmt1, RW, BLOCK_PERM_CONSISTENT_READ, &msg);
    assert_non_null(h1);
    assert_null(try_handle(fmt1, BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &msg));
    assert_string_equal(msg, "Permission conflict on node 'r1': permissions "
                        "'write' are both required by an unnamed block device"
                        " (uses node 'r1' as 'root' child) and unshared by an"
                        " unnamed block device (uses node 'r1' as 'root' "
                        "child).");
    free(msg);
    /* ...and a reader that refuses to share writing cannot come in. */
    assert_null(try_handle(fmt1, BLOCK_PERM_CONSISTENT_READ,
                           BLOCK_PERM_CONSISTENT_READ, &msg));
    assert_non_null(strstr(msg, "permissions 'write' are both required"));
    free(msg);

    /* Needs propagate down: r1 now writes f and lets nobody else write
     * it, so a writer of r2 (the same file) is refused, in f's name. */
    assert_int_equal(fmt1->file->perm & BLOCK_PERM_WRITE, BLOCK_PERM_WRITE);
    assert_int_equal(fmt1->file->shared, BLOCK_PERM_CONSISTENT_READ);
    assert_null(try_handle(fmt2, RW, BLOCK_PERM_ALL, &msg));
    assert_string_equal(msg, "Permission conflict on node 'f': permissions "
                        "'write' are both required by node 'r2' (uses node "
                        "'f' as 'file' child) and unshared by node 'r1' (uses"
                        " node 'f' as 'file' child).");
    free(msg);
    /* The failed attempt changed nothing below r2. */
    assert_int_equal(fmt2->file->perm, 0);
    assert_int_equal(fmt2->file->shared, BLOCK_PERM_ALL);
    /* A reader of r2 is fine. */
    h2 = try_handle(fmt2, BLOCK_PERM_CONSISTENT_READ, BLOCK_PERM_ALL, &msg);
    assert_non_null(h2);
    block_handle_free(h2);

    /* Loosening propagates too: once h1 shares writing, r2 may write. */
    assert_int_equal(block_handle_set_perm(h1, RW, BLOCK_PERM_ALL, NULL), 0);
    assert_int_equal(fmt1->file->shared, BLOCK_PERM_ALL);
    h2 = try_handle(fmt2, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(h2);
    /* Tightening again now conflicts, and is undone. */
    assert_int_equal(block_handle_set_perm(h1, RW, BLOCK_PERM_CONSISTENT_READ,
                                           NULL), -EPERM);
    assert_int_equal(h1->child.shared, BLOCK_PERM_ALL);
    assert_int_equal(fmt1->file->shared, BLOCK_PERM_ALL);
    block_handle_free(h2);
    block_handle_free(h1);
    /* No user left: raw holds nothing on its file. */
    assert_int_equal(fmt1->file->perm, 0);
    assert_int_equal(file->cur_perm, 0);
    block_node_unref(fmt2);

    /* Writing through a handle on a read-only node is refused. */
    fmt2 = new_node("driver=raw,node-name=r2,file=f,read-only=on", NULL);
    assert_non_null(fmt2);
    assert_null(try_handle(fmt2, BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &msg));
    assert_string_equal(msg, "Block node is read-only");
    free(msg);

    block_node_unref(fmt2);
    block_node_unref(fmt1);
    block_node_unref(file);
}

/*
 * Resize permissions: a window of raw (offset, size) refuses resizing of
 * its file, as a format does; a copy-before-write filter with a parent
 * refuses writing and resizing its source to others, down to the file.
 */
static void
test_permissions_filters(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *file, *win, *tgt, *src, *cbw;
    struct block_handle *h, *g;
    char *msg = NULL;

    kv = xasprintf("driver=file,node-name=f,filename=%s", img_path);
    file = new_node(kv, NULL);
    win = new_node("driver=raw,node-name=w,file=f,offset=4096", NULL);
    assert_non_null(win);
    assert_null(try_handle(file, BLOCK_PERM_RESIZE, BLOCK_PERM_ALL, &msg));
    assert_non_null(strstr(msg, "permissions 'resize' are both required by "
                           "an unnamed block device (uses node 'f' as 'root' "
                           "child) and unshared by node 'w'"));
    free(msg);
    block_node_unref(win);
    h = try_handle(file, BLOCK_PERM_RESIZE, BLOCK_PERM_ALL, &msg);
    assert_non_null(h);
    block_handle_free(h);

    tgt = new_node("driver=null-co,node-name=t,size=1M", NULL);
    src = new_node("driver=raw,node-name=s,file=f", NULL);
    cbw = new_node("driver=copy-before-write,node-name=c,file=s,target=t",
                   NULL);
    assert_non_null(cbw);
    /* Without parents the filter refuses nothing on its source... */
    g = try_handle(src, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(g);
    block_handle_free(g);
    /* ...with one, writing and resizing go through it only. */
    h = try_handle(cbw, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(h);
    assert_null(try_handle(src, RW, BLOCK_PERM_ALL, &msg));
    assert_string_equal(msg, "Permission conflict on node 's': permissions "
                        "'write' are both required by an unnamed block device"
                        " (uses node 's' as 'root' child) and unshared by "
                        "node 'c' (uses node 's' as 'file' child).");
    free(msg);
    assert_null(try_handle(file, BLOCK_PERM_RESIZE, BLOCK_PERM_ALL, &msg));
    assert_non_null(strstr(msg, "permissions 'resize' are both required by "
                           "an unnamed block device (uses node 'f' as 'root' "
                           "child) and unshared by node 's' (uses node 'f' "
                           "as 'file' child)"));
    free(msg);
    /* The target keeps its size, and may be written by others. */
    assert_null(try_handle(tgt, BLOCK_PERM_RESIZE, BLOCK_PERM_ALL, &msg));
    assert_non_null(strstr(msg, "unshared by node 'c' (uses node 't' as "
                           "'target' child)"));
    free(msg);
    g = try_handle(tgt, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(g);
    block_handle_free(g);
    block_handle_free(h);
    g = try_handle(src, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(g);
    block_handle_free(g);

    block_node_unref(cbw);
    block_node_unref(src);
    block_node_unref(tgt);
    block_node_unref(file);
}

/* blkdebug's take-child-perms and unshare-child-perms (QEMU's options). */
static void
test_blkdebug_child_perms(void **state UNUSED)
{
    struct block_node *f, *bd;
    struct block_handle *h;
    char *msg = NULL;

    f = new_node("driver=null-co,node-name=nf,size=1M", NULL);
    assert_non_null(f);
    bd = new_node("driver=blkdebug,node-name=bd,image=nf,"
                  "take-child-perms.0=write,unshare-child-perms.0=resize",
                  NULL);
    assert_non_null(bd);
    /* Taken whatever bd's parents need; refused to everyone else. */
    assert_int_equal(bd->file->perm & BLOCK_PERM_WRITE, BLOCK_PERM_WRITE);
    assert_null(try_handle(f, BLOCK_PERM_CONSISTENT_READ,
                           BLOCK_PERM_CONSISTENT_READ, &msg));
    assert_string_equal(msg, "Permission conflict on node 'nf': permissions "
                        "'write' are both required by node 'bd' (uses node "
                        "'nf' as 'file' child) and unshared by an unnamed "
                        "block device (uses node 'nf' as 'root' child).");
    free(msg);
    assert_null(try_handle(f, BLOCK_PERM_RESIZE, BLOCK_PERM_ALL, &msg));
    assert_non_null(strstr(msg, "permissions 'resize' are both required"));
    free(msg);
    h = try_handle(f, RW, BLOCK_PERM_ALL, &msg);
    assert_non_null(h);
    block_handle_free(h);
    block_node_unref(bd);
    expect_error("driver=blkdebug,image=nf,take-child-perms.0=foo",
                 "Parameter 'null' does not accept value 'foo'");
    expect_error("driver=blkdebug,image=nf,share-child-perms.0=write",
                 "Parameter 'share-child-perms' is unexpected");
    block_node_unref(f);
}

static void
test_replace_node(void **state UNUSED)
{
    struct block_node *a, *b, *filter;
    struct block_handle *h;
    struct err *err = NULL;
    char buf[512];

    a = new_node("driver=null-co,node-name=a,size=1M", NULL);
    b = new_node("driver=null-co,node-name=b,size=2M", NULL);
    h = block_handle_new(a, "test", BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &err);
    assert_non_null(h);
    assert_int_equal(block_handle_getlength(h), 1 * MiB);

    /* Insert a filter above a, as copy-before-write will. */
    filter = new_node("driver=blkdebug,node-name=flt,image=a", NULL);
    assert_non_null(filter);
    assert_int_equal(block_replace_node(a, filter, &err), 0);
    assert_ptr_equal(block_handle_node(h), filter);
    assert_ptr_equal(filter->file->node, a);
    assert_int_equal(block_handle_pread(h, 0, sizeof(buf), buf, 0), 0);

    /* And take it out again. */
    assert_int_equal(block_replace_node(filter, a, &err), 0);
    assert_ptr_equal(block_handle_node(h), a);
    block_node_unref(filter);

    /* Replace a by b entirely. */
    assert_int_equal(block_replace_node(a, b, &err), 0);
    assert_ptr_equal(block_handle_node(h), b);
    assert_int_equal(block_handle_getlength(h), 2 * MiB);
    block_handle_free(h);
    block_node_unref(a);
    block_node_unref(b);
}

struct slow_read {
    struct block_node *node;
    volatile int entered;
    volatile int done;
};

/* A request in flight, as a handle runs one: inside the graph lock. */
static void *
slow_read_thread(void *opaque)
{
    struct slow_read *sr = opaque;
    char buf[512];

    block_graph_enter();
    __atomic_store_n(&sr->entered, 1, __ATOMIC_SEQ_CST);
    assert_int_equal(block_pread(sr->node, 0, sizeof(buf), buf, 0), 0);
    __atomic_store_n(&sr->done, 1, __ATOMIC_SEQ_CST);
    block_graph_leave();
    return NULL;
}

static void
test_drain_waits(void **state UNUSED)
{
    struct slow_read sr = {0};
    pthread_t t;

    /* Reads take 200 ms. */
    sr.node = new_node("driver=blkdebug,x-delay-ns=200000000,"
                       "image.driver=null-co", NULL);
    assert_non_null(sr.node);
    thread_create(&t, "slow-read", slow_read_thread, &sr);
    while (!__atomic_load_n(&sr.entered, __ATOMIC_SEQ_CST)) {
        usleep(1000);
    }
    block_drain_begin();
    /* Drained: the request in flight has finished. */
    assert_int_equal(__atomic_load_n(&sr.done, __ATOMIC_SEQ_CST), 1);
    block_drain_end();
    thread_join(t);
    block_node_unref(sr.node);
}

static void
test_unaligned_rmw(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *n;
    unsigned char buf[10000], back[10000];

    kv = xasprintf("driver=blkdebug,align=4096,image.driver=file,"
                   "image.filename=%s", img_path);
    n = new_node(kv, NULL);
    assert_non_null(n);
    assert_int_equal(n->limits.request_alignment, 4096);
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(block_pwrite(n, 0, 4096, buf, 0), 0);
    memset(buf, 0xa5, sizeof(buf));
    assert_int_equal(block_pwrite(n, 100, 5000, buf, 0), 0);
    assert_int_equal(block_pread(n, 0, 8192, back, 0), 0);
    for (int i = 0; i < 8192; i++) {
        int want = (i >= 100 && i < 5100) ? 0xa5 : (i < 4096 ? 0x5a : 0);

        if (back[i] != want) {
            fail_msg("byte %d: 0x%x, want 0x%x", i, back[i], want);
        }
    }
    /* Zeroes with an unaligned head and tail. */
    assert_int_equal(block_pwrite_zeroes(n, 50, 4200, 0), 0);
    assert_int_equal(block_pread(n, 0, 8192, back, 0), 0);
    for (int i = 0; i < 8192; i++) {
        int want = (i >= 50 && i < 4250) ? 0 :
                   (i >= 100 && i < 5100) ? 0xa5 : (i < 4096 ? 0x5a : 0);

        if (back[i] != want) {
            fail_msg("after zero, byte %d: 0x%x, want 0x%x", i, back[i],
                     want);
        }
    }
    block_node_unref(n);
}

static void
test_blkdebug_inject(void **state UNUSED)
{
    struct block_node *n;
    char buf[4096];

    n = new_node("driver=blkdebug,image.driver=null-co,"
                 "inject-error.0.event=read_aio,inject-error.0.sector=8,"
                 "inject-error.0.once=on,inject-error.0.errno=28", NULL);
    assert_non_null(n);
    /* Does not cover sector 8. */
    assert_int_equal(block_pread(n, 0, 4096, buf, 0), 0);
    assert_int_equal(block_pread(n, 4096, 512, buf, 0), -ENOSPC);
    /* once: gone now. */
    assert_int_equal(block_pread(n, 4096, 512, buf, 0), 0);
    block_node_unref(n);

    n = new_node("driver=blkdebug,image.driver=null-co,"
                 "inject-error.0.event=write_aio,"
                 "inject-error.0.iotype.0=write", NULL);
    assert_non_null(n);
    assert_int_equal(block_pread(n, 0, 512, buf, 0), 0);
    assert_int_equal(block_pwrite(n, 0, 512, buf, 0), -EIO);
    block_node_unref(n);

    /* States: a flush moves 1 -> 2, only then reads fail. */
    n = new_node("driver=blkdebug,image.driver=null-co,"
                 "set-state.0.event=flush_to_disk,set-state.0.state=1,"
                 "set-state.0.new_state=2,"
                 "inject-error.0.event=read_aio,inject-error.0.state=2",
                 NULL);
    assert_non_null(n);
    assert_int_equal(block_pread(n, 0, 512, buf, 0), 0);
    /* With nothing written, a flush is skipped and fires nothing. */
    assert_int_equal(block_flush(n), 0);
    assert_int_equal(block_pread(n, 0, 512, buf, 0), 0);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(block_pwrite(n, 0, 512, buf, 0), 0);
    assert_int_equal(block_flush(n), 0);
    assert_int_equal(block_pread(n, 0, 512, buf, 0), -EIO);
    block_node_unref(n);
}

/* A request that fires the same event again and again (one stack frame). */
struct repeat_event {
    struct block_node *node;
    int rounds;
};

static void *
repeat_event_thread(void *opaque)
{
    struct repeat_event *re = opaque;

    for (int i = 0; i < re->rounds; i++) {
        block_debug_event(re->node, "pwritev");
    }
    return NULL;
}

/*
 * A request resumed from one breakpoint that stops at the next before
 * resume has seen it leave: resume waited for the same stack address to
 * leave the list and hung (lockstep-io's "break pwritev_done C; resume A").
 */
static void
test_blkdebug_resume_then_stop_again(void **state UNUSED)
{
    static const char *const tags[] = { "A", "B" };
    struct repeat_event re = { .rounds = 200 };
    pthread_t t;

    re.node = new_node("driver=blkdebug,image.driver=null-co", NULL);
    assert_non_null(re.node);
    alarm(30);      /* a hang fails the test instead of blocking the run */
    assert_int_equal(blkdebug_breakpoint(re.node, "pwritev", "A"), 0);
    thread_create(&t, "repeat-event", repeat_event_thread, &re);
    for (int i = 1; i <= re.rounds; i++) {
        const char *prev = tags[(i - 1) % 2], *next = tags[i % 2];

        while (!blkdebug_is_suspended(re.node, prev)) {
            usleep(100);
        }
        if (i < re.rounds) {
            assert_int_equal(blkdebug_breakpoint(re.node, "pwritev", next),
                             0);
        }
        assert_int_equal(blkdebug_resume(re.node, prev), 0);
    }
    thread_join(t);
    alarm(0);
    block_node_unref(re.node);
}

/* A FUA write is flushed even right after a flush (the core emulates FUA
 * with a flush that the "nothing new to flush" shortcut must not skip). */
static void
test_fua_always_flushes(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *n;
    char buf[512] = {0};

    kv = xasprintf("driver=blkdebug,image.driver=file,image.filename=%s,"
                   "set-state.0.event=flush_to_disk,set-state.0.state=1,"
                   "set-state.0.new_state=2,"
                   "set-state.1.event=flush_to_disk,set-state.1.state=2,"
                   "set-state.1.new_state=3,"
                   "inject-error.0.event=read_aio,inject-error.0.state=3",
                   img_path);
    n = new_node(kv, NULL);
    assert_non_null(n);
    assert_int_equal(n->supported_write_flags & BLOCK_REQ_FUA, 0);
    assert_int_equal(block_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(block_flush(n), 0);                      /* 1 -> 2 */
    assert_int_equal(block_pread(n, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(block_pwrite(n, 0, sizeof(buf), buf,
                                  BLOCK_REQ_FUA), 0);         /* 2 -> 3 */
    assert_int_equal(block_pread(n, 0, sizeof(buf), buf, 0), -EIO);
    block_node_unref(n);
}

static void
test_discard_and_status(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *n;
    struct block_status_info info;
    unsigned char buf[65536];
    uint64_t pnum;
    int ret;

    kv = xasprintf("driver=raw,discard=unmap,file.driver=file,"
                   "file.filename=%s", img_path);
    n = new_node(kv, NULL);
    assert_non_null(n);
    memset(buf, 1, sizeof(buf));
    assert_int_equal(block_pwrite(n, 0, sizeof(buf), buf, 0), 0);
    ret = block_status(n, 0, sizeof(buf), &pnum, &info);
    assert_true(ret & BLOCK_STATUS_DATA);
    assert_true(ret & BLOCK_STATUS_ALLOCATED);
    assert_int_equal(info.depth, 1);
    assert_int_equal(block_pdiscard(n, 0, sizeof(buf)), 0);
    assert_int_equal(block_pread(n, 0, sizeof(buf), buf, 0), 0);
    assert_true(buffer_is_zero(buf, sizeof(buf)));
    block_node_unref(n);

    /* discard=ignore (the default): data stays. */
    free(kv);
    kv = xasprintf("driver=raw,file.driver=file,file.filename=%s", img_path);
    n = new_node(kv, NULL);
    assert_non_null(n);
    memset(buf, 2, sizeof(buf));
    assert_int_equal(block_pwrite(n, 0, 4096, buf, 0), 0);
    assert_int_equal(block_pdiscard(n, 0, 4096), 0);
    assert_int_equal(block_pread(n, 0, 4096, buf, 0), 0);
    assert_int_equal(buf[0], 2);
    block_node_unref(n);
}

/* Byte i of the O_DIRECT test file. */
static unsigned char
odd_byte(uint64_t i)
{
    return (unsigned char)(i * 13 + 7);
}

/*
 * O_DIRECT refuses I/O that is not block aligned, also at the end of a
 * file whose length is not: a read of the whole file (what qcow2 does with
 * its header) and writes of its last partial block must still work.  The
 * request layer pads them past the end; the file driver reads zeroes there.
 */
static void
test_direct_odd_length(void **state UNUSED)
{
    const char *dir = test_direct_dir();
    const uint64_t len = 196616;        /* a fresh qcow2 image's length */
    CLEANUP_FREE char *path = NULL;
    CLEANUP_FREE char *kv = NULL;
    CLEANUP_FREE unsigned char *buf = xmalloc(len + 8192);
    struct block_node *n;
    int fd;

    if (!dir) {
        skip();
    }
    path = xasprintf("%s/lockstep-direct-XXXXXX", dir);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    for (uint64_t i = 0; i < len; i++) {
        buf[i] = odd_byte(i);
    }
    assert_int_equal(pwrite(fd, buf, len, 0), (ssize_t)len);
    close(fd);
    kv = xasprintf("driver=file,filename=%s,cache.direct=on", path);
    n = new_node(kv, NULL);
    assert_non_null(n);
    assert_true(n->limits.request_alignment >= 512);

    /* Whole, and from an unaligned offset to the end, into a buffer
     * that is not aligned either. */
    memset(buf, 0, len + 8192);
    assert_int_equal(block_pread(n, 0, len, buf, 0), 0);
    for (uint64_t i = 0; i < len; i++) {
        if (buf[i] != odd_byte(i)) {
            fail_msg("byte %llu: 0x%x", (unsigned long long)i, buf[i]);
        }
    }
    assert_int_equal(block_pread(n, len - 1000, 1000, buf + 1, 0), 0);
    assert_int_equal(buf[1], odd_byte(len - 1000));
    assert_int_equal(buf[1000], odd_byte(len - 1));

    /* The last partial block, then past the end to an odd length. */
    memset(buf, 0xa5, 100);
    assert_int_equal(block_pwrite(n, len - 50, 100, buf, 0), 0);
    assert_int_equal(block_pwrite(n, len + 5000, 3, buf, 0), 0);
    assert_int_equal(block_getlength(n), (int64_t)(len + 5003));
    assert_int_equal(block_pwrite_zeroes(n, len + 6000, 1234, 0), 0);
    assert_int_equal(block_pread(n, len - 60, 7300, buf, 0), 0);
    assert_int_equal(buf[9], odd_byte(len - 51));
    for (int i = 10; i < 110; i++) {
        assert_int_equal(buf[i], 0xa5);
    }
    assert_true(buffer_is_zero(buf + 110, 5000 - 50));
    assert_int_equal(buf[5060], 0xa5);
    assert_int_equal(buf[5062], 0xa5);
    assert_true(buffer_is_zero(buf + 5063, 7300 - 5063));
    block_node_unref(n);
    unlink(path);
}

/*
 * BLOCK_REQ_EXTEND (qcow2's growing ahead) over a range where another
 * request already wrote past the length the caller read: the file reaches
 * over the range and that write's data stays (zeroing would wipe it).  A
 * node that cannot extend says -ENOTSUP instead of writing zeroes.
 */
static void
test_extend_keeps_data(void **state UNUSED)
{
    CLEANUP_FREE char *kv = xasprintf("driver=file,filename=%s", img_path);
    struct block_node *n = new_node(kv, NULL);
    struct block_node *null = new_node("driver=null-co,size=16M", NULL);
    uint8_t buf[4096];

    assert_non_null(n);
    assert_non_null(null);
    assert_int_equal(block_truncate(n, 8192, NULL), 0);
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(block_pwrite(n, 64 * KiB, sizeof(buf), buf, 0), 0);
    assert_int_equal(block_pwrite_zeroes(n, 8192, 1 * MiB - 8192,
                                         BLOCK_REQ_EXTEND), 0);
    assert_int_equal(block_getlength(n), 1 * MiB);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(block_pread(n, 64 * KiB, sizeof(buf), buf, 0), 0);
    for (size_t i = 0; i < sizeof(buf); i++) {
        assert_int_equal(buf[i], 0x5a);
    }
    assert_int_equal(block_pread(n, 1 * MiB - 4096, 4096, buf, 0), 0);
    assert_true(buffer_is_zero(buf, sizeof(buf)));
    assert_int_equal(block_pwrite_zeroes(null, 0, 4096, BLOCK_REQ_EXTEND),
                     -ENOTSUP);
    block_node_unref(null);
    block_node_unref(n);
}

static void
test_dirty_tracking(void **state UNUSED)
{
    struct block_node *n = new_node("driver=null-co,size=16M", NULL);
    struct block_dirty_bitmap *bm;
    struct err *err = NULL;
    char buf[512] = {0};

    assert_non_null(n);
    bm = block_dirty_bitmap_create(n, "b0", 65536, &err);
    assert_non_null(bm);
    assert_int_equal(block_pwrite(n, 70000, 512, buf, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(bm), 65536);
    assert_true(block_dirty_bitmap_get(bm, 65536));
    block_dirty_bitmap_disable(bm);
    assert_int_equal(block_pwrite_zeroes(n, 0, 512, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(bm), 65536);
    block_dirty_bitmap_enable(bm);
    assert_int_equal(block_pwrite_zeroes(n, 0, 512, 0), 0);
    assert_int_equal(block_dirty_bitmap_count(bm), 2 * 65536);
    block_node_unref(n);
}

struct truncate_call {
    struct block_handle *h;
    uint64_t length;
    int ret;
};

static void *
truncate_thread(void *opaque)
{
    struct truncate_call *t = opaque;

    t->ret = block_handle_truncate(t->h, t->length, NULL);
    return NULL;
}

/* Resizing through a handle needs its resize permission, and works from
 * a thread that is not the main one (a FUSE export's request thread). */
static void
test_handle_truncate(void **state UNUSED)
{
    CLEANUP_FREE char *kv = NULL;
    struct block_node *node;
    struct block_handle *h;
    struct err *err = NULL;
    struct truncate_call t;
    pthread_t thread;
    struct stat st;

    kv = xasprintf("driver=raw,node-name=r,file.driver=file,"
                   "file.filename=%s", img_path);
    node = new_node(kv, NULL);
    assert_non_null(node);
    h = block_handle_new(node, "export 'e'", BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE, BLOCK_PERM_ALL, &err);
    assert_non_null(h);
    assert_int_equal(block_handle_truncate(h, 2 * MiB, &err), -EPERM);
    assert_string_equal(err->msg, "export 'e' may not resize node 'r'");
    err_free(err);
    err = NULL;
    block_handle_free(h);

    h = block_handle_new(node, "export 'e'", BLOCK_PERM_CONSISTENT_READ |
                         BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE,
                         BLOCK_PERM_ALL, &err);
    assert_non_null(h);
    t = (struct truncate_call){ .h = h, .length = 3 * MiB };
    thread_create(&thread, "truncate", truncate_thread, &t);
    thread_join(thread);
    assert_int_equal(t.ret, 0);
    assert_int_equal(block_handle_getlength(h), 3 * MiB);
    assert_int_equal(stat(img_path, &st), 0);
    assert_int_equal(st.st_size, 3 * MiB);
    block_handle_free(h);
    block_node_unref(node);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_option_errors),
        cmocka_unit_test(test_node_names),
        cmocka_unit_test(test_keyval_conversion),
        cmocka_unit_test_setup_teardown(test_permissions_filters,
                                        setup_image, remove_image),
        cmocka_unit_test_setup_teardown(test_permissions, setup_image,
                                        remove_image),
        cmocka_unit_test(test_blkdebug_child_perms),
        cmocka_unit_test(test_replace_node),
        cmocka_unit_test(test_drain_waits),
        cmocka_unit_test_setup_teardown(test_unaligned_rmw, setup_image,
                                        remove_image),
        cmocka_unit_test(test_blkdebug_inject),
        cmocka_unit_test(test_blkdebug_resume_then_stop_again),
        cmocka_unit_test_setup_teardown(test_fua_always_flushes, setup_image,
                                        remove_image),
        cmocka_unit_test_setup_teardown(test_discard_and_status, setup_image,
                                        remove_image),
        cmocka_unit_test(test_dirty_tracking),
        cmocka_unit_test_setup_teardown(test_extend_keeps_data, setup_image,
                                        remove_image),
        cmocka_unit_test_setup_teardown(test_handle_truncate, setup_image,
                                        remove_image),
        cmocka_unit_test(test_direct_odd_length),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
