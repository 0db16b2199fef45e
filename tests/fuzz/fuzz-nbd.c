/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the NBD server: every input is one whole client
 * byte stream (handshake and requests) served by nbdsrv_serve_fds() against
 * a writable null-co export with qemu:allocation-depth and a dirty bitmap,
 * requests run on the calling thread (no workers) so that runs are
 * deterministic.  Replies go to /dev/null.
 *
 * The first input byte picks a prefix so that the fuzzer reaches the
 * transmission phase without having to discover a handshake first:
 *   0: none, the input is the raw stream (greeting answer onwards);
 *   1: client flags + NBD_OPT_GO "disk" (simple replies);
 *   2: client flags + STRUCTURED_REPLY + SET_META_CONTEXT (all contexts)
 *      + GO, then the requests;
 *   3: a server with TLS (PSK credentials): the raw stream, which meets
 *      the TLS-required mode (every option but STARTTLS and ABORT);
 *   4: as 3, after client flags + STARTTLS: the input is the client's
 *      side of the TLS handshake (seeds: tests/fuzz/seeds-fuzz-nbd.sh).
 *
 * Build (clang-14 with libclang-rt-14-dev), e.g.:
 *   CC=clang meson setup build-fuzz -Dfuzz=true \
 *       -Db_sanitize=address,undefined -Db_lundef=false
 * or by hand against a liblockstep.a built with -fsanitize=fuzzer-no-link:
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude -Iutil -I. \
 *       tests/fuzz/fuzz-nbd.c build-fuzz/liblockstep.a \
 *       $(pkg-config --libs jansson libnbd gnutls zlib) -lpthread
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crypto/tls-creds.h"
#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int g_in_fd = -1;
static int g_out_fd = -1;
static struct tls_creds *g_tls;

/* Server PSK credentials from a keys.psk written to a temporary
 * directory (removed again: they are loaded once). */
static struct tls_creds *
fuzz_tls_creds(void)
{
    static const char line[] = "fuzz:00112233445566778899aabbccddeeff\n";
    char dir[] = "/tmp/fuzz-nbd-XXXXXX";
    struct tls_creds_options o = {
        .id = "tls0", .type = TLS_CREDS_PSK,
        .endpoint = TLS_ENDPOINT_SERVER, .dir = dir, .verify_peer = true,
    };
    struct err *err = NULL;
    struct tls_creds *c;
    char *path;
    FILE *f;

    if (!mkdtemp(dir)) {
        abort();
    }
    path = xasprintf("%s/keys.psk", dir);
    f = fopen(path, "w");
    if (!f || fputs(line, f) < 0 || fclose(f) != 0) {
        abort();
    }
    if (!tls_creds_add(&o, &err) || !(c = tls_creds_get("tls0", &err))) {
        err_report("fuzz-nbd", err);
        abort();
    }
    unlink(path);
    rmdir(dir);
    free(path);
    return c;
}

static void
fuzz_init(void)
{
    struct err *err = NULL;
    struct block_node *node;

    node = block_node_new_keyval("driver=null-co,node-name=disk,"
                                 "size=1048576,read-zeroes=on", &err);
    if (!node || !block_dirty_bitmap_create(node, "b0", 65536, &err)) {
        err_report("fuzz-nbd", err);
        abort();
    }
    if (!nbdexp_create(&(struct block_export_options) {
                           .type = "nbd", .id = "e0", .node_name = "disk",
                           .writable = true,
                           .driver_opts = &(struct nbd_export_options) {
                               .allocation_depth = true,
                               .description = "fuzz",
                               .bitmaps = &(struct nbd_export_bitmap) {
                                   .name = "b0" },
                               .n_bitmaps = 1 } }, false, &err)) {
        err_report("fuzz-nbd", err);
        abort();
    }
    g_tls = fuzz_tls_creds();
    g_in_fd = memfd_create("fuzz-nbd-in", MFD_CLOEXEC);
    g_out_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (g_in_fd < 0 || g_out_fd < 0) {
        abort();
    }
}

static size_t
put_opt(uint8_t *p, uint32_t opt, const uint8_t *payload, uint32_t len)
{
    put_be64(p, NBD_OPTS_MAGIC);
    put_be32(p + 8, opt);
    put_be32(p + 12, len);
    if (len) {
        memcpy(p + 16, payload, len);
    }
    return 16 + len;
}

/* The handshake prefix for mode; returns its length. */
static size_t
make_prefix(uint8_t *buf, int mode)
{
    static const char *const ctxs[] = {
        "base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0",
    };
    uint8_t go[4 + 4 + 2 + 2];
    uint8_t meta[256];
    size_t n = 0, m = 0;

    put_be32(buf, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
    n = 4;
    if (mode == 4) {
        return n + put_opt(buf + n, NBD_OPT_STARTTLS, NULL, 0);
    }
    if (mode == 2) {
        n += put_opt(buf + n, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
        put_be32(meta, 4);
        memcpy(meta + 4, "disk", 4);
        put_be32(meta + 8, ARRAY_SIZE(ctxs));
        m = 12;
        for (size_t i = 0; i < ARRAY_SIZE(ctxs); i++) {
            put_be32(meta + m, (uint32_t)strlen(ctxs[i]));
            memcpy(meta + m + 4, ctxs[i], strlen(ctxs[i]));
            m += 4 + strlen(ctxs[i]);
        }
        n += put_opt(buf + n, NBD_OPT_SET_META_CONTEXT, meta, (uint32_t)m);
    }
    put_be32(go, 4);
    memcpy(go + 4, "disk", 4);
    put_be16(go + 8, 1);
    put_be16(go + 10, NBD_INFO_BLOCK_SIZE);
    n += put_opt(buf + n, NBD_OPT_GO, go, sizeof(go));
    return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool initialised;
    uint8_t prefix[512];
    size_t plen = 0;
    int mode;

    if (!initialised) {
        fuzz_init();
        initialised = true;
    }
    if (size < 1) {
        return 0;
    }
    mode = data[0] % 5;
    if (mode != 0 && mode != 3) {
        plen = make_prefix(prefix, mode);
    }
    data++;
    size--;
    if (ftruncate(g_in_fd, 0) < 0 ||
        (plen && pwrite_full(g_in_fd, prefix, plen, 0) < 0) ||
        (size && pwrite_full(g_in_fd, data, size, plen) < 0) ||
        lseek(g_in_fd, 0, SEEK_SET) < 0) {
        abort();
    }
    nbdsrv_serve_fds(g_in_fd, g_out_fd, 0, mode >= 3 ? g_tls : NULL,
                     NULL);
    return 0;
}
