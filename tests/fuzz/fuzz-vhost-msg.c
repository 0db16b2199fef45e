/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the vhost-user message handling (export/
 * vhost-user.c): the input is a front-end's message stream, sent message
 * by message over a socketpair to a session of a device whose requests
 * complete at once.  The harness attaches what the messages need and a
 * byte stream cannot carry: an eventfd to SET_VRING_KICK/CALL/ERR, a
 * memfd to SET_MEM_TABLE (one fd per region named), ADD_MEM_REG and
 * SET_INFLIGHT_FD.  The first two input bytes give the length of a
 * prefix copied into that memfd: guest memory with rings and requests
 * for the queues the messages start.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "export/vhost-user.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MEM_SIZE (1 << 20)

static uint64_t
fz_features(void *opaque)
{
    (void)opaque;
    return 1ULL << 1;
}

static void
fz_get_config(void *opaque, uint8_t *cfg, size_t size)
{
    (void)opaque;
    memset(cfg, 0x5a, size);
}

static int
fz_set_config(void *opaque, uint32_t offset, const uint8_t *d, uint32_t n)
{
    (void)opaque;
    (void)d;
    return offset == 0 && n == 1 ? 0 : -22;
}

static void
fz_set_features(void *opaque, uint64_t f)
{
    (void)opaque;
    (void)f;
}

/* Touch every byte the request names, write the in part, complete. */
static void
fz_run(void *opaque, struct vu_req *req)
{
    volatile uint8_t sink = 0;
    uint32_t written = 0;

    (void)opaque;
    for (unsigned i = 0; i < req->chain.nout + req->chain.nin; i++) {
        uint8_t *p = req->chain.iov[i].iov_base;

        for (size_t k = 0; k < req->chain.iov[i].iov_len; k++) {
            sink ^= p[k];
        }
        if (i >= req->chain.nout) {
            memset(p, 0, req->chain.iov[i].iov_len);
            written += (uint32_t)req->chain.iov[i].iov_len;
        }
    }
    (void)sink;
    vu_req_complete(req, written);
}

static const struct vu_device_ops fz_ops = {
    .features = fz_features,
    .get_config = fz_get_config,
    .set_config = fz_set_config,
    .set_features = fz_set_features,
    .run = fz_run,
};

static int
fds_for(uint32_t request, const uint8_t *payload, uint32_t size, int memfd,
        int *fds)
{
    int n = 0;

    switch (request) {
    case 12: case 13: case 14:          /* SET_VRING_KICK/CALL/ERR */
        if (size >= 8 && !(payload[1] & 1)) {
            fds[n++] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        }
        break;
    case 5: {                           /* SET_MEM_TABLE */
        uint32_t regions = 0;

        if (size >= 4) {
            memcpy(&regions, payload, 4);
        }
        for (uint32_t i = 0; i < regions && i < 8; i++) {
            fds[n++] = memfd;
        }
        break;
    }
    case 32: case 37:                   /* SET_INFLIGHT_FD, ADD_MEM_REG */
        fds[n++] = memfd;
        break;
    }
    return n;
}

static void
send_one(int sock, const uint8_t *msg, size_t len, int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(8 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { (void *)msg, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (nfds) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    if (sendmsg(sock, &mh, MSG_NOSIGNAL) < 0) {
        /* The session ended early: the rest is dropped. */
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2], memfd, bufsize = 4 << 20;
    size_t prefix, pos;
    struct vu_dev *dev;
    uint8_t *mem;

    setenv("LOCKSTEP_VHOST_QUIET", "1", 0);
    if (size < 2) {
        return 0;
    }
    prefix = MIN((size_t)(data[0] | data[1] << 8), size - 2);
    data += 2;
    size -= 2;
    memfd = memfd_create("fuzz-guest", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, MEM_SIZE) < 0) {
        abort();
    }
    mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (mem == MAP_FAILED) {
        abort();
    }
    memcpy(mem, data, MIN(prefix, (size_t)MEM_SIZE));
    munmap(mem, MEM_SIZE);
    data += prefix;
    size -= prefix;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        abort();
    }
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof(bufsize));

    /* Frame the stream as the session will (header, then size bytes),
     * attaching fds per message; the session handles each one before the
     * next is sent, and the queues settle after each kick or enable. */
    dev = vu_dev_new_detached(2, &fz_ops, NULL);
    for (pos = 0; pos + 12 <= size;) {
        uint32_t request, msize;
        int fds[8], nfds;
        size_t len;

        memcpy(&request, data + pos, 4);
        memcpy(&msize, data + pos + 8, 4);
        len = 12 + MIN((size_t)msize, size - pos - 12);
        nfds = fds_for(request, data + pos + 12, (uint32_t)(len - 12), memfd,
                       fds);
        send_one(sv[0], data + pos, len, fds, nfds);
        for (int i = 0; i < nfds; i++) {
            if (fds[i] != memfd) {
                close(fds[i]);
            }
        }
        pos += len;
        if (pos + 12 > size) {
            shutdown(sv[0], SHUT_WR);   /* a cut-off last message: EOF */
        }
        if (vu_dev_handle_one(dev, sv[1]) < 0) {
            break;
        }
        if (request == 12 || request == 18) {
            vu_dev_settle(dev);
        }
    }
    vu_dev_free(dev);
    close(sv[0]);
    close(sv[1]);
    close(memfd);
    return 0;
}
