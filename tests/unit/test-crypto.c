/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for crypto/: authz matching (glob, first rule decides, the
 * default policy, a missing object denies) and TLS sessions with PSK
 * credentials over pipes (the NBD server's fd mode and the fuzzer use
 * pipes and files, not sockets): handshake, data both ways across
 * several records, a wrong key, and an authz denial.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "crypto/authz.h"
#include "crypto/tls-creds.h"
#include "crypto/tls-session.h"
#include "util.h"

static void
test_glob(void **state)
{
    (void)state;
    assert_true(authz_glob_match("*", ""));
    assert_true(authz_glob_match("*", "anything"));
    assert_true(authz_glob_match("a?c", "abc"));
    assert_false(authz_glob_match("a?c", "ac"));
    assert_true(authz_glob_match("O=*,CN=bob", "O=Acme,CN=bob"));
    assert_false(authz_glob_match("O=*,CN=bob", "O=Acme,CN=bobby"));
    assert_true(authz_glob_match("*b*b*", "abcbd"));
    assert_false(authz_glob_match("*b*b*", "abcd"));
    assert_true(authz_glob_match("", ""));
    assert_false(authz_glob_match("", "x"));
    assert_true(authz_glob_match("x**", "x"));
}

static void
test_authz_list(void **state)
{
    struct authz_rule rules[] = {
        {(char *)"carol", AUTHZ_DENY, AUTHZ_EXACT},
        {(char *)"c*", AUTHZ_ALLOW, AUTHZ_GLOB},
        {(char *)"d*", AUTHZ_ALLOW, AUTHZ_EXACT},   /* '*' literally */
    };
    struct authz_list l = {AUTHZ_DENY, rules, ARRAY_SIZE(rules)};
    struct authz_options o = {.id = "l0", .type = AUTHZ_TYPE_LIST,
                              .list = &l};
    struct authz_options simple = {.id = "s0", .type = AUTHZ_TYPE_SIMPLE,
                                   .identity = "alice"};
    struct err *err = NULL;

    (void)state;
    assert_true(authz_add(&o, NULL));
    assert_true(authz_add(&simple, NULL));
    assert_false(authz_is_allowed("l0", "carol", NULL));
    assert_true(authz_is_allowed("l0", "charlie", NULL));
    assert_false(authz_is_allowed("l0", "dave", NULL));
    assert_true(authz_is_allowed("l0", "d*", NULL));
    assert_false(authz_is_allowed("l0", "eve", NULL));
    assert_true(authz_is_allowed("s0", "alice", NULL));
    assert_false(authz_is_allowed("s0", "alice2", NULL));
    assert_true(authz_del("l0", NULL));
    assert_false(authz_is_allowed("l0", "charlie", &err));
    assert_non_null(err);
    assert_non_null(strstr(err->msg, "l0"));
    err_free(err);
    authz_free_all();
}

/* ---- TLS over pipes ----------------------------------------------------- */

struct end {
    struct tls_session *s;
    int hs;
    char *why;
    int *out_fd;        /* closed when the handshake fails: the peer
                         * then sees the end instead of waiting */
};

static char g_dir[64];

static void
write_file(const char *name, const char *text)
{
    char *path = xasprintf("%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
    free(path);
}

static void
add_creds(const char *id, enum tls_endpoint ep, const char *user,
          const char *keys)
{
    struct tls_creds_options o = {
        .id = id, .type = TLS_CREDS_PSK, .endpoint = ep, .dir = g_dir,
        .verify_peer = true, .username = user,
    };
    struct err *err = NULL;
    bool ok;

    write_file("keys.psk", keys);
    ok = tls_creds_add(&o, &err);
    if (!ok) {
        fail_msg("%s", err->msg);
    }
}

static void *
handshake_thread(void *opaque)
{
    struct end *e = opaque;
    struct err *err = NULL;

    e->hs = tls_session_handshake(e->s, &err);
    if (err) {
        e->why = xstrdup(err->msg);
        err_free(err);
    }
    if (e->hs != TLS_HS_DONE) {
        close(*e->out_fd);
        *e->out_fd = -1;
    }
    return NULL;
}

/* Handshake a client (c_id) with a server (s_id, authz) over two pipes;
 * fills both ends.  pipes[0]: client to server, pipes[1]: back. */
static void
pair_handshake(const char *c_id, const char *s_id, const char *authz,
               int pipes[2][2], struct end *c, struct end *s)
{
    struct tls_creds *cc = tls_creds_get(c_id, NULL);
    struct tls_creds *sc = tls_creds_get(s_id, NULL);
    pthread_t t;

    assert_non_null(cc);
    assert_non_null(sc);
    assert_int_equal(pipe(pipes[0]), 0);
    assert_int_equal(pipe(pipes[1]), 0);
    memset(c, 0, sizeof(*c));
    memset(s, 0, sizeof(*s));
    c->s = tls_session_new(cc, NULL, NULL, pipes[1][0], pipes[0][1], false,
                           NULL);
    s->s = tls_session_new(sc, NULL, authz, pipes[0][0], pipes[1][1], false,
                           NULL);
    assert_non_null(c->s);
    assert_non_null(s->s);
    tls_creds_put(cc);
    tls_creds_put(sc);
    c->out_fd = &pipes[0][1];
    s->out_fd = &pipes[1][1];
    assert_int_equal(pthread_create(&t, NULL, handshake_thread, s), 0);
    handshake_thread(c);
    pthread_join(t, NULL);
}

static void
pair_free(int pipes[2][2], struct end *c, struct end *s)
{
    tls_session_free(c->s);
    tls_session_free(s->s);
    free(c->why);
    free(s->why);
    for (int i = 0; i < 2; i++) {
        for (int j = 0; j < 2; j++) {
            if (pipes[i][j] >= 0) {
                close(pipes[i][j]);
            }
        }
    }
}

static void
recv_all(struct tls_session *s, uint8_t *buf, size_t len)
{
    size_t got = 0;

    while (got < len) {
        ssize_t r = tls_session_recv(s, buf + got, len - got);

        assert_true(r > 0);
        got += (size_t)r;
    }
}

static void *
send_big(void *opaque)
{
    struct tls_session *s = opaque;
    static uint8_t hdr[16];
    uint8_t *data = xmalloc(100000);
    size_t done = 0, total = sizeof(hdr) + 100000;

    memset(hdr, 0xab, sizeof(hdr));
    for (size_t i = 0; i < 100000; i++) {
        data[i] = (uint8_t)(i * 7);
    }
    while (done < total) {
        struct iovec v[2];
        int n = 0;
        ssize_t r;

        if (done < sizeof(hdr)) {
            v[n++] = (struct iovec){hdr + done, sizeof(hdr) - done};
            v[n++] = (struct iovec){data, 100000};
        } else {
            v[n++] = (struct iovec){data + done - sizeof(hdr),
                                    total - done};
        }
        r = tls_session_sendv(s, v, n);
        assert_true(r > 0);
        done += (size_t)r;
    }
    free(data);
    return NULL;
}

static void
test_tls_psk_pipes(void **state)
{
    int pipes[2][2];
    struct end c, s;
    uint8_t *buf = xmalloc(100016);
    pthread_t t;

    (void)state;
    add_creds("srv", TLS_ENDPOINT_SERVER, NULL,
              "alice:00112233445566778899aabbccddeeff\n"
              "bob:ffeeddccbbaa99887766554433221100\n");
    add_creds("alice", TLS_ENDPOINT_CLIENT, "alice",
              "alice:00112233445566778899aabbccddeeff\n");
    add_creds("wrong", TLS_ENDPOINT_CLIENT, "alice",
              "alice:0f112233445566778899aabbccddeeff\n");
    add_creds("bob", TLS_ENDPOINT_CLIENT, "bob",
              "bob:ffeeddccbbaa99887766554433221100\n");

    pair_handshake("alice", "srv", NULL, pipes, &c, &s);
    assert_int_equal(c.hs, TLS_HS_DONE);
    assert_int_equal(s.hs, TLS_HS_DONE);
    assert_string_equal(tls_session_peer(s.s), "alice");
    /* 100 KiB and a header from the server: several records, the header
     * gathered into the first. */
    assert_int_equal(pthread_create(&t, NULL, send_big, s.s), 0);
    recv_all(c.s, buf, 100016);
    pthread_join(t, NULL);
    for (size_t i = 0; i < 16; i++) {
        assert_int_equal(buf[i], 0xab);
    }
    for (size_t i = 0; i < 100000; i++) {
        assert_int_equal(buf[16 + i], (uint8_t)(i * 7));
    }
    /* And back, small, gathered from pieces one of which is empty with
     * no base (as the NBD server's replies have; UBSan checks memcpy). */
    {
        struct iovec v[3] = {{(void *)"pi", 2}, {NULL, 0}, {(void *)"ng", 2}};

        assert_int_equal(tls_session_sendv(c.s, v, 3), 4);
        recv_all(s.s, buf, 4);
        assert_memory_equal(buf, "ping", 4);
    }
    pair_free(pipes, &c, &s);

    pair_handshake("wrong", "srv", NULL, pipes, &c, &s);
    assert_int_equal(c.hs, TLS_HS_FAIL);
    assert_int_equal(s.hs, TLS_HS_FAIL);
    assert_non_null(s.why);
    pair_free(pipes, &c, &s);

    {
        struct authz_options o = {.id = "only-alice",
                                  .type = AUTHZ_TYPE_SIMPLE,
                                  .identity = "alice"};

        assert_true(authz_add(&o, NULL));
    }
    pair_handshake("bob", "srv", "only-alice", pipes, &c, &s);
    assert_int_equal(s.hs, TLS_HS_FAIL);
    assert_non_null(strstr(s.why, "authz check for bob is denied"));
    pair_free(pipes, &c, &s);
    pair_handshake("alice", "srv", "only-alice", pipes, &c, &s);
    assert_int_equal(s.hs, TLS_HS_DONE);
    pair_free(pipes, &c, &s);

    free(buf);
    tls_creds_free_all();
    authz_free_all();
}

static int
setup(void **state)
{
    (void)state;
    strcpy(g_dir, "/tmp/test-crypto-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int
teardown(void **state)
{
    char *path = xasprintf("%s/keys.psk", g_dir);

    (void)state;
    unlink(path);
    free(path);
    return rmdir(g_dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_authz_list),
        cmocka_unit_test(test_tls_psk_pipes),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
