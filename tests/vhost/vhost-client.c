/* SPDX-License-Identifier: MIT */
/*
 * vhost-client: a small vhost-user-blk front-end (the VMM's side), for
 * tests and benchmarks of lockstepd's vhost-user-blk export and, as the
 * reference, qemu-storage-daemon's.  It shares memfd "guest memory" with
 * the back-end, sets up split virtqueues and drives virtio-blk requests
 * with many in flight.  Written from QEMU's docs/interop/vhost-user.rst
 * and the virtio 1.1 specification.
 *
 * Usage: vhost-client [options] SOCKET COMMAND...
 *   info                      features, protocol features, config (JSON)
 *   write OFF LEN PAT         write LEN bytes of byte PAT at OFF
 *   read OFF LEN PAT          read and check they are all PAT
 *   flush | getid | discard OFF LEN | zero OFF LEN [unmap]
 *   verify N SEED             N random 4k writes in flight (qd), then
 *                             read them all back and compare
 *   bench RW BS SECS          RW: randread, randwrite, write (sequential);
 *                             prints JSON {iops, mibs, lat_us}
 *   burst N                   N reads made available at once; prints how
 *                             often the back-end called (JSON)
 *   hostile CASE              misbehave (see hostile_cases) and report
 *                             how the back-end reacted (JSON)
 * Options: -q QUEUES (1), -d DEPTH (1), -n QUEUE_SIZE (256), -i (indirect
 *   descriptors), -I (inflight buffer), -E (no EVENT_IDX), -s SIZE (the
 *   disk area used by verify/bench; default the whole disk).
 * Commands may be repeated: "write 0 4096 0xab read 0 4096 0xab".
 * Exit status 0 when every command succeeded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/vhost_types.h>
#include <linux/virtio_blk.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#define MAXQ        16
#define MEM_SIZE    (512UL << 20)
#define MAX_BS      (1UL << 20)
#define PROTO_F     30
#define PF_MQ       0
#define PF_REPLY_ACK 3
#define PF_CONFIG   9
#define PF_INFLIGHT 12
#define PF_STATUS   16

enum {
    GET_FEATURES = 1, SET_FEATURES = 2, SET_OWNER = 3, SET_MEM_TABLE = 5,
    SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10,
    GET_VRING_BASE = 11, SET_VRING_KICK = 12, SET_VRING_CALL = 13,
    GET_PROTOCOL_FEATURES = 15, SET_PROTOCOL_FEATURES = 16,
    GET_QUEUE_NUM = 17, SET_VRING_ENABLE = 18, GET_CONFIG = 24,
    GET_INFLIGHT_FD = 31, SET_INFLIGHT_FD = 32, GET_STATUS = 40,
};

struct msg {
    uint32_t request, flags, size;
    uint8_t payload[512];
} __attribute__((packed));

struct slot {
    uint16_t head;
    bool busy;
    uint8_t *hdr;            /* 16-byte header, then status byte at +16 */
    uint8_t *data;           /* MAX_BS */
    uint64_t t0;
    struct vring_desc *itable;  /* indirect table (3 entries) */
};

struct queue {
    unsigned index;
    uint16_t num;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    uint16_t avail_idx, last_used;
    int kick, call;
    struct slot *slots;
    unsigned nslots;
    uint16_t *head_to_slot;
};

static int g_sock = -1;
static uint8_t *g_mem;
static int g_memfd = -1;
static uint64_t g_bump;
static uint64_t g_features, g_pfeatures;
static struct queue g_q[MAXQ];
static unsigned g_nq = 1, g_depth = 1, g_qsize = 256;
static bool g_indirect, g_inflight, g_no_event_idx;
static uint64_t g_capacity, g_area;
static uint8_t g_wce_early;     /* config's writeback before SET_FEATURES */
static uint32_t g_blk_size = 512;
static int g_inflight_fd = -1;

static void
die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "vhost-client: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static uint64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- Messages --------------------------------------------------------- */

/* Send; fds in ancillary data.  -1 when the back-end is gone. */
static int
send_msg(uint32_t req, uint32_t flags, const void *payload, uint32_t size,
         const int *fds, int nfds)
{
    struct msg m = { .request = req, .flags = 0x1 | flags, .size = size };
    struct iovec iov = { &m, 12 + size };
    union {
        char buf[CMSG_SPACE(8 * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

    if (size) {
        memcpy(m.payload, payload, size);
    }
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
    return sendmsg(g_sock, &mh, MSG_NOSIGNAL) == (ssize_t)(12 + size) ? 0
                                                                     : -1;
}

/* Receive a reply; its fd (if any) in *fd.  -1 on EOF. */
static int
recv_reply(struct msg *m, int *fd)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { m, 12 };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
    };
    ssize_t r = recvmsg(g_sock, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC);

    if (fd) {
        *fd = -1;
    }
    if (r != 12) {
        return -1;
    }
    if (mh.msg_controllen && fd) {
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

        if (c && c->cmsg_type == SCM_RIGHTS) {
            memcpy(fd, CMSG_DATA(c), sizeof(int));
        }
    }
    if (m->size > sizeof(m->payload) ||
        (m->size && recv(g_sock, m->payload, m->size, MSG_WAITALL) !=
                        (ssize_t)m->size)) {
        return -1;
    }
    return 0;
}

static uint64_t
get_u64(uint32_t req)
{
    struct msg m;
    uint64_t v;

    if (send_msg(req, 0, NULL, 0, NULL, 0) < 0 || recv_reply(&m, NULL) < 0 ||
        m.size != 8) {
        die("request %u: no reply", req);
    }
    memcpy(&v, m.payload, 8);
    return v;
}

/* A message, acknowledged when REPLY_ACK was negotiated: 0 or -1. */
static int
send_acked(uint32_t req, const void *payload, uint32_t size, const int *fds,
           int nfds)
{
    bool ack = g_pfeatures & (1ULL << PF_REPLY_ACK);
    struct msg m;
    uint64_t v;

    if (send_msg(req, ack ? 0x8 : 0, payload, size, fds, nfds) < 0) {
        return -1;
    }
    if (!ack) {
        return 0;
    }
    if (recv_reply(&m, NULL) < 0 || m.size != 8) {
        return -1;
    }
    memcpy(&v, m.payload, 8);
    return v == 0 ? 0 : -1;
}

static void
send_u64(uint32_t req, uint64_t v)
{
    if (send_acked(req, &v, 8, NULL, 0) < 0) {
        die("request %u refused", req);
    }
}

static void
send_state(uint32_t req, unsigned index, unsigned num)
{
    struct vhost_vring_state st = { index, num };

    if (send_acked(req, &st, sizeof(st), NULL, 0) < 0) {
        die("request %u (queue %u) refused", req, index);
    }
}

/* ---- Setup ------------------------------------------------------------ */

static void *
mem_alloc(uint64_t size, uint64_t align)
{
    void *p;

    g_bump = (g_bump + align - 1) & ~(align - 1);
    if (g_bump + size > MEM_SIZE) {
        die("out of guest memory");
    }
    p = g_mem + g_bump;
    g_bump += size;
    return p;
}

static uint64_t
gpa(const void *p)
{
    return (uint64_t)((const uint8_t *)p - g_mem);
}

static void
connect_socket(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };

    g_sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(g_sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        die("connect %s: %s", path, strerror(errno));
    }
}

static void get_config(struct virtio_blk_config *c);

static void
negotiate(void)
{
    uint64_t want = 1ULL << VIRTIO_F_VERSION_1 |
                    1ULL << VIRTIO_RING_F_EVENT_IDX |
                    1ULL << VIRTIO_RING_F_INDIRECT_DESC | 1ULL << PROTO_F |
                    1ULL << VIRTIO_BLK_F_FLUSH | 1ULL << VIRTIO_BLK_F_BLK_SIZE |
                    1ULL << VIRTIO_BLK_F_SEG_MAX |
                    1ULL << VIRTIO_BLK_F_SIZE_MAX | 1ULL << VIRTIO_BLK_F_MQ |
                    1ULL << VIRTIO_BLK_F_DISCARD |
                    1ULL << VIRTIO_BLK_F_WRITE_ZEROES |
                    1ULL << VIRTIO_BLK_F_RO | 1ULL << VIRTIO_BLK_F_CONFIG_WCE;
    uint64_t offered = get_u64(GET_FEATURES);
    struct virtio_blk_config c;

    if (g_no_event_idx) {
        want &= ~(1ULL << VIRTIO_RING_F_EVENT_IDX);
    }
    g_features = offered & want;
    if (!(g_features & (1ULL << PROTO_F))) {
        die("back-end lacks protocol features");
    }
    g_pfeatures = get_u64(GET_PROTOCOL_FEATURES) &
                  (1ULL << PF_MQ | 1ULL << PF_REPLY_ACK | 1ULL << PF_CONFIG |
                   1ULL << PF_INFLIGHT | 1ULL << PF_STATUS);
    if (!g_inflight) {
        g_pfeatures &= ~(1ULL << PF_INFLIGHT);
    }
    if (send_msg(SET_PROTOCOL_FEATURES, 0, &g_pfeatures, 8, NULL, 0) < 0 ||
        send_msg(SET_OWNER, 0, NULL, 0, NULL, 0) < 0) {
        die("back-end gone");
    }
    /* As QEMU: the config space is read before features are set (and
     * QEMU shows the guest this copy). */
    if (g_pfeatures & (1ULL << PF_CONFIG)) {
        get_config(&c);
        g_wce_early = c.wce;
    }
}

/* The config space up to the discard and write-zeroes fields (QEMU 7.2's
 * back-ends know no later ones, and refuse a longer read). */
#define CONFIG_SIZE offsetof(struct virtio_blk_config, max_secure_erase_sectors)

static void
get_config(struct virtio_blk_config *c)
{
    uint8_t buf[12 + CONFIG_SIZE] = {0};
    uint32_t size = CONFIG_SIZE;
    struct msg m;

    memcpy(buf + 4, &size, 4);
    if (send_msg(GET_CONFIG, 0, buf, sizeof(buf), NULL, 0) < 0 ||
        recv_reply(&m, NULL) < 0 || m.size != sizeof(buf)) {
        die("GET_CONFIG failed");
    }
    memset(c, 0, sizeof(*c));
    memcpy(c, m.payload + 12, CONFIG_SIZE);
}

static void
setup_memory(void)
{
    uint64_t region[5] = {0};

    g_memfd = memfd_create("guest", MFD_CLOEXEC);
    if (g_memfd < 0 || ftruncate(g_memfd, MEM_SIZE) < 0) {
        die("memfd: %s", strerror(errno));
    }
    g_mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
                 g_memfd, 0);
    if (g_mem == MAP_FAILED) {
        die("mmap: %s", strerror(errno));
    }
    /* One region: guest address 0, our own address as the "user"
     * address. */
    region[0] = 1;
    region[1] = 0;
    region[2] = MEM_SIZE;
    region[3] = (uint64_t)(uintptr_t)g_mem;
    region[4] = 0;
    if (send_acked(SET_MEM_TABLE, region, sizeof(region), &g_memfd, 1) < 0) {
        die("SET_MEM_TABLE refused");
    }
}

static void
setup_inflight(void)
{
    uint64_t req[3] = {0};
    uint16_t nq = (uint16_t)g_nq, qs = (uint16_t)g_qsize;
    struct msg m;
    int fd = -1;

    if (!(g_pfeatures & (1ULL << PF_INFLIGHT))) {
        return;
    }
    memcpy((uint8_t *)req + 16, &nq, 2);
    memcpy((uint8_t *)req + 18, &qs, 2);
    if (send_msg(GET_INFLIGHT_FD, 0, req, 24, NULL, 0) < 0 ||
        recv_reply(&m, &fd) < 0 || fd < 0 || m.size != 24) {
        die("GET_INFLIGHT_FD failed");
    }
    memcpy(req, m.payload, 24);
    if (send_acked(SET_INFLIGHT_FD, req, 24, &fd, 1) < 0) {
        die("SET_INFLIGHT_FD refused");
    }
    g_inflight_fd = fd;
}

static void
setup_queue(struct queue *q, unsigned index)
{
    struct vhost_vring_addr addr = {0};
    int kick = eventfd(0, EFD_CLOEXEC), call = eventfd(0, EFD_CLOEXEC);
    uint64_t v;

    q->index = index;
    q->num = (uint16_t)g_qsize;
    q->desc = mem_alloc(16 * q->num, 4096);
    q->avail = mem_alloc(6 + 2 * q->num, 4096);
    q->used = mem_alloc(6 + 8 * q->num, 4096);
    q->nslots = g_indirect ? q->num : q->num / 3;
    q->slots = calloc(q->nslots, sizeof(*q->slots));
    q->head_to_slot = calloc(q->num, sizeof(uint16_t));
    for (unsigned s = 0; s < q->nslots; s++) {
        struct slot *sl = &q->slots[s];

        sl->hdr = mem_alloc(32, 64);
        sl->head = (uint16_t)(g_indirect ? s : 3 * s);
        q->head_to_slot[sl->head] = (uint16_t)s;
        if (g_indirect) {
            sl->itable = mem_alloc(3 * 16, 16);
        }
    }
    /* Data buffers only for the slots in use (depth). */
    for (unsigned s = 0; s < q->nslots && s < g_depth; s++) {
        q->slots[s].data = mem_alloc(MAX_BS, 4096);
    }
    q->kick = kick;
    q->call = call;
    send_state(SET_VRING_NUM, index, q->num);
    send_state(SET_VRING_BASE, index, 0);
    addr.index = index;
    addr.desc_user_addr = (uint64_t)(uintptr_t)q->desc;
    addr.avail_user_addr = (uint64_t)(uintptr_t)q->avail;
    addr.used_user_addr = (uint64_t)(uintptr_t)q->used;
    if (send_acked(SET_VRING_ADDR, &addr, sizeof(addr), NULL, 0) < 0) {
        die("SET_VRING_ADDR refused");
    }
    v = index;
    if (send_acked(SET_VRING_CALL, &v, 8, &call, 1) < 0 ||
        send_acked(SET_VRING_KICK, &v, 8, &kick, 1) < 0) {
        die("ring fds refused");
    }
    send_state(SET_VRING_ENABLE, index, 1);
}

static void
client_setup(const char *path)
{
    struct virtio_blk_config c;

    connect_socket(path);
    negotiate();
    send_u64(SET_FEATURES, g_features);
    if (g_pfeatures & (1ULL << PF_MQ) && get_u64(GET_QUEUE_NUM) < g_nq) {
        die("back-end has fewer than %u queues", g_nq);
    }
    get_config(&c);
    g_capacity = le64toh(c.capacity) * 512;
    if (g_features & (1ULL << VIRTIO_BLK_F_BLK_SIZE)) {
        g_blk_size = le32toh(c.blk_size);
    }
    if (!g_area || g_area > g_capacity) {
        g_area = g_capacity;
    }
    setup_memory();
    setup_inflight();
    for (unsigned i = 0; i < g_nq; i++) {
        setup_queue(&g_q[i], i);
    }
}

/* ---- Requests --------------------------------------------------------- */

static void
set_desc(struct vring_desc *d, uint64_t addr, uint32_t len, uint16_t flags,
         uint16_t next)
{
    d->addr = htole64(addr);
    d->len = htole32(len);
    d->flags = htole16(flags);
    d->next = htole16(next);
}

/* Write the descriptors of slot s of q for a request (type, sector,
 * data of len bytes: read by the device for OUT/DISCARD/ZEROES, written
 * for IN/GET_ID) and put it in the avail ring, not yet published. */
static void
prepare(struct queue *q, unsigned s, uint32_t type, uint64_t sector,
        uint8_t *data, uint32_t len, uint16_t pos)
{
    struct slot *sl = &q->slots[s];
    struct virtio_blk_outhdr hdr = {
        .type = htole32(type), .sector = htole64(sector),
    };
    bool dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
    struct vring_desc *t = g_indirect ? sl->itable : q->desc;
    uint16_t b = g_indirect ? 0 : sl->head;
    unsigned n = 0;

    memcpy(sl->hdr, &hdr, sizeof(hdr));
    sl->hdr[16] = 0xff;
    set_desc(&t[b], gpa(sl->hdr), 16, VRING_DESC_F_NEXT, b + 1);
    if (len) {
        set_desc(&t[b + 1], gpa(data), len,
                 VRING_DESC_F_NEXT | (dev_writes ? VRING_DESC_F_WRITE : 0),
                 b + 2);
        n = 1;
    }
    set_desc(&t[b + 1 + n], gpa(sl->hdr + 16), 1, VRING_DESC_F_WRITE, 0);
    if (!n) {
        t[b].next = htole16(b + 1);
    }
    if (g_indirect) {
        set_desc(&q->desc[sl->head], gpa(sl->itable), (2 + n) * 16,
                 VRING_DESC_F_INDIRECT, 0);
    }
    sl->busy = true;
    sl->t0 = now_ns();
    q->avail->ring[pos % q->num] = htole16(sl->head);
}

/* Publish the next n prepared requests of q with one avail index update,
 * and kick when the back-end wants it. */
static void
publish(struct queue *q, uint16_t n)
{
    uint16_t old = q->avail_idx, ev;

    q->avail_idx += n;
    __atomic_store_n(&q->avail->idx, htole16(q->avail_idx), __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (g_features & (1ULL << VIRTIO_RING_F_EVENT_IDX)) {
        ev = le16toh(__atomic_load_n((uint16_t *)&q->used->ring[q->num],
                                     __ATOMIC_RELAXED));
        if (!vring_need_event(ev, q->avail_idx, old)) {
            return;
        }
    } else if (le16toh(q->used->flags) & VRING_USED_F_NO_NOTIFY) {
        return;
    }
    uint64_t one = 1;

    if (write(q->kick, &one, 8) < 0) {
        die("kick: %s", strerror(errno));
    }
}

/* One request on slot s of q, published at once. */
static void
submit(struct queue *q, unsigned s, uint32_t type, uint64_t sector,
       uint8_t *data, uint32_t len)
{
    prepare(q, s, type, sector, data, len, q->avail_idx);
    publish(q, 1);
}

/*
 * Wait until at least one request of q completes (timeout_ms, -1 for
 * ever); returns the slot of the first completion, its status in
 * *status, or -1 on timeout.
 */
static int
reap(struct queue *q, int timeout_ms, uint8_t *status, uint64_t *lat_ns)
{
    for (;;) {
        uint16_t used = le16toh(__atomic_load_n(&q->used->idx,
                                                __ATOMIC_ACQUIRE));

        if (used != q->last_used) {
            struct vring_used_elem e = q->used->ring[q->last_used % q->num];
            uint32_t id = le32toh(e.id);
            struct slot *sl;

            q->last_used++;
            if (id >= q->num) {
                die("used ring names descriptor %u", id);
            }
            sl = &q->slots[q->head_to_slot[id]];
            if (!sl->busy) {
                die("completion of a request not in flight");
            }
            sl->busy = false;
            *status = sl->hdr[16];
            if (lat_ns) {
                *lat_ns = now_ns() - sl->t0;
            }
            return q->head_to_slot[id];
        }
        /* Ask for an interrupt at the next completion, then sleep. */
        if (g_features & (1ULL << VIRTIO_RING_F_EVENT_IDX)) {
            __atomic_store_n(&q->avail->ring[q->num], htole16(q->last_used),
                             __ATOMIC_RELAXED);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (le16toh(__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE)) !=
            q->last_used) {
            continue;
        }
        struct pollfd p = { .fd = q->call, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);
        uint64_t v;

        if (r == 0) {
            return -1;
        }
        if (r > 0 && read(q->call, &v, 8) < 0) {
            /* raced with another reader: fine */
        }
    }
}

/* One request on queue 0, slot 0, synchronously.  The status, or -1 on
 * timeout (10 s). */
static int
sync_req(uint32_t type, uint64_t off, uint8_t *data, uint32_t len)
{
    struct queue *q = &g_q[0];
    uint8_t status;

    submit(q, 0, type, off / 512, data, len);
    if (reap(q, 10000, &status, NULL) < 0) {
        return -1;
    }
    return status;
}

/* ---- Commands --------------------------------------------------------- */

static int
parse_num(const char *s, uint64_t *out)
{
    char *end;
    uint64_t v = strtoull(s, &end, 0);

    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    }
    if (*end) {
        return -1;
    }
    *out = v;
    return 0;
}

static int
cmd_info(void)
{
    struct virtio_blk_config c;
    uint64_t status = 0;

    get_config(&c);
    if (g_pfeatures & (1ULL << PF_STATUS)) {
        status = get_u64(GET_STATUS);
    }
    printf("{\"features\": %" PRIu64 ", \"protocol_features\": %" PRIu64
           ", \"capacity\": %" PRIu64 ", \"blk_size\": %u, \"seg_max\": %u, "
           "\"size_max\": %u, \"num_queues\": %u, \"wce\": %u, "
           "\"wce_before_features\": %u, "
           "\"max_discard_sectors\": %u, \"max_write_zeroes_sectors\": %u, "
           "\"read_only\": %s, \"status\": %" PRIu64 "}\n",
           g_features, g_pfeatures, le64toh(c.capacity), g_blk_size,
           le32toh(c.seg_max), le32toh(c.size_max),
           g_features & (1ULL << VIRTIO_BLK_F_MQ) ? le16toh(c.num_queues) : 1,
           c.wce, g_wce_early, le32toh(c.max_discard_sectors),
           le32toh(c.max_write_zeroes_sectors),
           g_features & (1ULL << VIRTIO_BLK_F_RO) ? "true" : "false", status);
    return 0;
}

static int
cmd_rw(bool write, uint64_t off, uint64_t len, int pat)
{
    uint8_t *buf = g_q[0].slots[0].data;
    int st;

    if (len > MAX_BS) {
        fprintf(stderr, "length too large\n");
        return 1;
    }
    if (write) {
        memset(buf, pat, len);
    } else {
        memset(buf, ~pat, len);
    }
    st = sync_req(write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, off, buf,
                  (uint32_t)len);
    if (st != VIRTIO_BLK_S_OK) {
        printf("%s %" PRIu64 " %" PRIu64 ": status %d\n",
               write ? "write" : "read", off, len, st);
        return 1;
    }
    if (!write) {
        for (uint64_t i = 0; i < len; i++) {
            if (buf[i] != (uint8_t)pat) {
                printf("read %" PRIu64 ": byte %" PRIu64 " is 0x%02x, not "
                       "0x%02x\n", off, i, buf[i], pat & 0xff);
                return 1;
            }
        }
    }
    printf("%s %" PRIu64 " %" PRIu64 ": ok\n", write ? "write" : "read", off,
           len);
    return 0;
}

static int
cmd_range(uint32_t type, uint64_t off, uint64_t len, bool unmap)
{
    uint8_t *buf = g_q[0].slots[0].data;
    struct virtio_blk_discard_write_zeroes seg = {
        .sector = htole64(off / 512),
        .num_sectors = htole32((uint32_t)(len / 512)),
        .flags = htole32(unmap ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0),
    };
    int st;

    memcpy(buf, &seg, sizeof(seg));
    st = sync_req(type, 0, buf, sizeof(seg));
    printf("%s %" PRIu64 " %" PRIu64 ": status %d\n",
           type == VIRTIO_BLK_T_DISCARD ? "discard" : "zero", off, len, st);
    return st != VIRTIO_BLK_S_OK;
}

static uint64_t g_rng;

static uint64_t
rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* Fill a 4k block with a pattern derived from its offset and seed. */
static void
fill_block(uint8_t *p, uint64_t off, uint64_t seed)
{
    uint64_t x = off * 0x9E3779B97F4A7C15ULL ^ seed;

    for (int i = 0; i < 4096; i += 8) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        memcpy(p + i, &x, 8);
    }
}

/* Many writes in flight at distinct 4k blocks, then read back. */
static int
cmd_verify(uint64_t n, uint64_t seed)
{
    struct queue *q = &g_q[0];
    uint64_t nblocks = g_area / 4096, *offs, done = 0, sent = 0;
    unsigned depth = g_depth;
    uint8_t expect[4096];
    int errors = 0;

    if (n > nblocks) {
        n = nblocks;
    }
    offs = calloc(n, sizeof(*offs));
    g_rng = seed | 1;
    /* Distinct blocks: a stride coprime with nblocks. */
    {
        uint64_t start = rnd() % nblocks, stride = 7919 % nblocks;

        if (!stride) {
            stride = 1;
        }
        while (nblocks % stride == 0 && stride > 1) {
            stride++;
        }
        for (uint64_t i = 0; i < n; i++) {
            offs[i] = ((start + i * stride) % nblocks) * 4096;
        }
    }
    for (int pass = 0; pass < 2; pass++) {
        uint64_t *slot_op = calloc(depth, sizeof(uint64_t));

        done = sent = 0;
        while (done < n) {
            for (unsigned s = 0; s < depth && sent < n; s++) {
                if (q->slots[s].busy) {
                    continue;
                }
                if (pass == 0) {
                    fill_block(q->slots[s].data, offs[sent], seed);
                }
                slot_op[s] = sent;
                submit(q, s, pass ? VIRTIO_BLK_T_IN : VIRTIO_BLK_T_OUT,
                       offs[sent] / 512, q->slots[s].data, 4096);
                sent++;
            }
            uint8_t st;
            int s = reap(q, 30000, &st, NULL);

            if (s < 0) {
                printf("verify: timeout with %" PRIu64 " done\n", done);
                return 1;
            }
            if (st != VIRTIO_BLK_S_OK) {
                errors++;
            } else if (pass == 1) {
                fill_block(expect, offs[slot_op[s]], seed);
                if (memcmp(expect, q->slots[s].data, 4096)) {
                    errors++;
                }
            }
            done++;
        }
        free(slot_op);
    }
    printf("verify: %" PRIu64 " blocks, depth %u, %d errors\n", n, depth,
           errors);
    free(offs);
    return errors != 0;
}

struct bench {
    struct queue *q;
    int rw;                  /* 0 randread, 1 randwrite, 2 seq write */
    uint64_t bs, deadline;
    uint64_t ops, lat_sum, errors;
    uint64_t seq_off;
};

static void *
bench_thread(void *opaque)
{
    struct bench *b = opaque;
    struct queue *q = b->q;
    uint64_t rng = 0x1234567 + q->index * 7777;
    uint64_t nblocks = g_area / b->bs;

    for (unsigned s = 0; s < g_depth; s++) {
        memset(q->slots[s].data, 0x5a, b->bs);
    }
    for (;;) {
        bool stop = now_ns() >= b->deadline;
        unsigned inflight = 0;

        for (unsigned s = 0; s < g_depth; s++) {
            uint64_t off;

            if (q->slots[s].busy) {
                inflight++;
                continue;
            }
            if (stop) {
                continue;
            }
            if (b->rw == 2) {
                off = b->seq_off;
                b->seq_off = (b->seq_off + b->bs) % (nblocks * b->bs);
            } else {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                off = (rng % nblocks) * b->bs;
            }
            submit(q, s, b->rw ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN,
                   off / 512, q->slots[s].data, (uint32_t)b->bs);
            inflight++;
        }
        if (!inflight) {
            break;
        }
        uint8_t st;
        uint64_t lat;
        int s = reap(q, 30000, &st, &lat);

        if (s < 0) {
            b->errors++;
            break;
        }
        if (st != VIRTIO_BLK_S_OK) {
            b->errors++;
        }
        if (!stop) {
            b->ops++;
            b->lat_sum += lat;
        }
    }
    return NULL;
}

static int
cmd_bench(const char *rw, uint64_t bs, double secs)
{
    struct bench b[MAXQ];
    pthread_t t[MAXQ];
    uint64_t t0, ops = 0, lat = 0, errors = 0;
    double el;
    int mode = !strcmp(rw, "randread") ? 0 : !strcmp(rw, "randwrite") ? 1 :
               !strcmp(rw, "write") ? 2 : -1;

    if (mode < 0 || bs > MAX_BS || bs % 512) {
        fprintf(stderr, "bench: bad arguments\n");
        return 1;
    }
    t0 = now_ns();
    for (unsigned i = 0; i < g_nq; i++) {
        b[i] = (struct bench){ .q = &g_q[i], .rw = mode, .bs = bs,
                               .deadline = t0 + (uint64_t)(secs * 1e9),
                               .seq_off = (g_area / g_nq / bs) * bs * i };
        pthread_create(&t[i], NULL, bench_thread, &b[i]);
    }
    for (unsigned i = 0; i < g_nq; i++) {
        pthread_join(t[i], NULL);
        ops += b[i].ops;
        lat += b[i].lat_sum;
        errors += b[i].errors;
    }
    el = (double)(now_ns() - t0) / 1e9;
    printf("{\"iops\": %.0f, \"mibs\": %.1f, \"lat_us\": %.1f, "
           "\"errors\": %" PRIu64 "}\n", ops / el, ops * bs / el / 1048576.0,
           ops ? lat / 1e3 / ops : 0.0, errors);
    return errors != 0;
}

/* The call eventfd's count (0 when nothing was signalled); resets it. */
static uint64_t
take_calls(struct queue *q, int timeout_ms)
{
    struct pollfd p = { .fd = q->call, .events = POLLIN };
    uint64_t v = 0;

    if (poll(&p, 1, timeout_ms) > 0 && read(q->call, &v, 8) < 0) {
        v = 0;
    }
    return v;
}

/*
 * N 4 KiB reads on queue 0 made available with one index update and one
 * kick, the way a driver queues a burst; then wait for all of them
 * without sleeping on the call eventfd, and report how often the
 * back-end signalled it (JSON {"completed", "errors", "calls"}).  The
 * driver asks for a call at the first completion (used_event, or no
 * NO_INTERRUPT flag), as one that went to sleep does.
 */
static int
cmd_burst(unsigned n)
{
    struct queue *q = &g_q[0];
    unsigned done = 0, errors = 0;
    uint64_t deadline = now_ns() + 10000000000ULL, calls;

    if (n < 1 || n > g_depth) {
        fprintf(stderr, "burst: N must be between 1 and the depth\n");
        return 1;
    }
    take_calls(q, 0);
    if (g_features & (1ULL << VIRTIO_RING_F_EVENT_IDX)) {
        __atomic_store_n(&q->avail->ring[q->num], htole16(q->last_used),
                         __ATOMIC_RELAXED);
    }
    for (unsigned s = 0; s < n; s++) {
        prepare(q, s, VIRTIO_BLK_T_IN, s * 8, q->slots[s].data, 4096,
                (uint16_t)(q->avail_idx + s));
    }
    publish(q, (uint16_t)n);
    while (done < n && now_ns() < deadline) {
        uint16_t used = le16toh(__atomic_load_n(&q->used->idx,
                                                __ATOMIC_ACQUIRE));

        if (used == q->last_used) {
            usleep(100);
            continue;
        }
        uint8_t st;
        int s = reap(q, 0, &st, NULL);

        if (s < 0 || st != VIRTIO_BLK_S_OK) {
            errors++;
        }
        done++;
    }
    /* A call comes after the used index it is about: give it time. */
    calls = take_calls(q, 1000);
    usleep(100000);
    calls += take_calls(q, 0);
    printf("{\"completed\": %u, \"errors\": %u, \"calls\": %" PRIu64
           "}\n", done, errors, calls);
    return done != n || errors;
}

/* ---- Hostile front-end cases ------------------------------------------ */

/*
 * Each case misbehaves on purpose and reports, as JSON, whether the
 * request came back ("completed"), whether the back-end still answers
 * messages ("connected"), and GET_STATUS ("needs_reset").
 */
static bool
still_connected(uint64_t *status)
{
    struct pollfd p = { .fd = g_sock, .events = POLLIN };
    struct msg m;

    *status = 0;
    if (poll(&p, 1, 200) > 0) {
        char c;

        if (recv(g_sock, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0) {
            return false;
        }
    }
    if (!(g_pfeatures & (1ULL << PF_STATUS))) {
        return true;
    }
    if (send_msg(GET_STATUS, 0, NULL, 0, NULL, 0) < 0 ||
        recv_reply(&m, NULL) < 0 || m.size != 8) {
        return false;
    }
    memcpy(status, m.payload, 8);
    return true;
}

static int
hostile_ring(const char *name)
{
    struct queue *q = &g_q[0];
    struct slot *sl = &q->slots[0];
    uint8_t *data = sl->data;
    uint8_t st;
    int completed;
    uint64_t status;
    bool conn;
    uint64_t one = 1;

    memset(sl->hdr, 0, 17);
    /* A valid read first, then break it in one place. */
    set_desc(&q->desc[0], gpa(sl->hdr), 16, VRING_DESC_F_NEXT, 1);
    set_desc(&q->desc[1], gpa(data), 4096,
             VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    set_desc(&q->desc[2], gpa(sl->hdr + 16), 1, VRING_DESC_F_WRITE, 0);
    q->avail->ring[q->avail_idx % q->num] = 0;
    if (!strcmp(name, "desc-outside")) {
        set_desc(&q->desc[1], MEM_SIZE - 100, 4096,
                 VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    } else if (!strcmp(name, "desc-wrap")) {
        set_desc(&q->desc[1], UINT64_MAX - 10, 4096,
                 VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2);
    } else if (!strcmp(name, "desc-loop")) {
        q->desc[2].flags = htole16(VRING_DESC_F_WRITE | VRING_DESC_F_NEXT);
        q->desc[2].next = htole16(0);
    } else if (!strcmp(name, "desc-next-range")) {
        q->desc[1].next = htole16(q->num + 5);
    } else if (!strcmp(name, "indirect-loop")) {
        struct vring_desc *t = mem_alloc(4 * 16, 16);

        set_desc(&t[0], gpa(sl->hdr), 16, VRING_DESC_F_NEXT, 1);
        set_desc(&t[1], gpa(data), 4096,
                 VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
        set_desc(&q->desc[0], gpa(t), 2 * 16, VRING_DESC_F_INDIRECT, 0);
    } else if (!strcmp(name, "indirect-nested")) {
        struct vring_desc *t = mem_alloc(2 * 16, 16);

        set_desc(&t[0], gpa(t), 32, VRING_DESC_F_INDIRECT, 0);
        set_desc(&q->desc[0], gpa(t), 32, VRING_DESC_F_INDIRECT, 0);
    } else if (!strcmp(name, "indirect-huge")) {
        set_desc(&q->desc[0], 0, 0x100000, VRING_DESC_F_INDIRECT, 0);
    } else if (!strcmp(name, "indirect-outside")) {
        set_desc(&q->desc[0], MEM_SIZE - 16, 64, VRING_DESC_F_INDIRECT, 0);
    } else if (!strcmp(name, "header-short")) {
        q->desc[0].len = htole32(8);
    } else if (!strcmp(name, "no-status")) {
        q->desc[1].flags = htole16(0);    /* nothing device-writable */
    } else if (!strcmp(name, "readable-after-writable")) {
        q->desc[2].flags = htole16(0);
    } else if (!strcmp(name, "head-range")) {
        q->avail->ring[q->avail_idx % q->num] = htole16(q->num + 1);
    } else if (!strcmp(name, "avail-jump")) {
        q->avail_idx += q->num + 3;
    } else {
        return -1;
    }
    q->avail_idx++;
    sl->busy = true;
    __atomic_store_n(&q->avail->idx, htole16(q->avail_idx), __ATOMIC_RELEASE);
    if (write(q->kick, &one, 8) < 0) {
        die("kick");
    }
    completed = reap(q, 1000, &st, NULL) >= 0;
    conn = still_connected(&status);
    printf("{\"case\": \"%s\", \"completed\": %s, \"status_byte\": %d, "
           "\"connected\": %s, \"needs_reset\": %s}\n", name,
           completed ? "true" : "false", completed ? st : -1,
           conn ? "true" : "false", status & 0x40 ? "true" : "false");
    return 0;
}

/* Message-level cases: the back-end should drop the connection. */
static int
hostile_msg(const char *name)
{
    uint64_t status;
    int efd = eventfd(0, EFD_CLOEXEC);
    bool sent = true;

    if (!strcmp(name, "msg-short")) {
        uint32_t half = 8;

        sent = send_msg(SET_VRING_NUM, 0, &half, 4, NULL, 0) == 0;
    } else if (!strcmp(name, "msg-fd")) {
        sent = send_msg(SET_OWNER, 0, NULL, 0, &efd, 1) == 0;
    } else if (!strcmp(name, "msg-unknown")) {
        sent = send_msg(999, 0, NULL, 0, NULL, 0) == 0;
    } else if (!strcmp(name, "msg-huge")) {
        struct msg m = { .request = SET_OWNER, .flags = 1,
                         .size = 1U << 30 };

        sent = send(g_sock, &m, 12, MSG_NOSIGNAL) == 12;
    } else if (!strcmp(name, "msg-version")) {
        struct msg m = { .request = SET_OWNER, .flags = 3, .size = 0 };

        sent = send(g_sock, &m, 12, MSG_NOSIGNAL) == 12;
    } else if (!strcmp(name, "mem-beyond-file")) {
        uint64_t region[5] = { 1, 0, MEM_SIZE * 2, 0x1000000, 0 };

        sent = send_msg(SET_MEM_TABLE, 0, region, sizeof(region), &g_memfd,
                        1) == 0;
    } else if (!strcmp(name, "mem-fd-count")) {
        uint64_t region[9] = { 2, 0, 4096, 0x1000, 0, 8192, 4096, 0x3000, 0 };

        sent = send_msg(SET_MEM_TABLE, 0, region, sizeof(region), &g_memfd,
                        1) == 0;
    } else if (!strcmp(name, "ring-outside")) {
        struct vhost_vring_addr a = { .index = 0,
                                      .desc_user_addr = 0xdead0000,
                                      .avail_user_addr = 0xdead0000,
                                      .used_user_addr = 0xdead0000 };

        sent = send_msg(SET_VRING_ADDR, 0, &a, sizeof(a), NULL, 0) == 0;
    } else if (!strcmp(name, "queue-index")) {
        struct vhost_vring_state st = { 200, 16 };

        sent = send_msg(SET_VRING_NUM, 0, &st, sizeof(st), NULL, 0) == 0;
    } else if (!strcmp(name, "queue-size")) {
        struct vhost_vring_state st = { 0, 100 };

        sent = send_msg(SET_VRING_NUM, 0, &st, sizeof(st), NULL, 0) == 0;
    } else {
        return -1;
    }
    usleep(100000);
    printf("{\"case\": \"%s\", \"sent\": %s, \"connected\": %s}\n", name,
           sent ? "true" : "false",
           still_connected(&status) ? "true" : "false");
    return 0;
}

/* Submit requests and leave without waiting for them. */
static int
hostile_vanish(void)
{
    struct queue *q = &g_q[0];

    for (unsigned s = 0; s < g_depth && s < q->nslots; s++) {
        submit(q, s, VIRTIO_BLK_T_OUT, (s * 8) % (g_capacity / 512),
               q->slots[s].data, 4096);
    }
    printf("{\"case\": \"vanish\", \"submitted\": %u}\n", g_depth);
    fflush(stdout);
    _exit(0);
}

static int
cmd_hostile(const char *name)
{
    int r;

    if (!strcmp(name, "vanish")) {
        return hostile_vanish();
    }
    r = hostile_ring(name);
    if (r < 0) {
        r = hostile_msg(name);
    }
    if (r < 0) {
        fprintf(stderr, "unknown case %s\n", name);
        return 1;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    const char *sock;
    int opt, failed = 0;
    uint64_t a, b;

    while ((opt = getopt(argc, argv, "q:d:n:iIEs:")) != -1) {
        switch (opt) {
        case 'q': g_nq = (unsigned)atoi(optarg); break;
        case 'd': g_depth = (unsigned)atoi(optarg); break;
        case 'n': g_qsize = (unsigned)atoi(optarg); break;
        case 'i': g_indirect = true; break;
        case 'I': g_inflight = true; break;
        case 'E': g_no_event_idx = true; break;
        case 's': if (parse_num(optarg, &g_area) < 0) die("bad -s"); break;
        default: die("bad option");
        }
    }
    if (optind + 2 > argc || g_nq < 1 || g_nq > MAXQ || g_depth < 1) {
        die("usage: vhost-client [-q N] [-d N] [-n N] [-i] [-I] [-E] [-s SIZE] "
            "SOCKET COMMAND...");
    }
    sock = argv[optind++];
    client_setup(sock);
    if (g_depth > g_q[0].nslots) {
        die("depth %u exceeds the %u slots of a queue", g_depth,
            g_q[0].nslots);
    }
    while (optind < argc) {
        const char *c = argv[optind++];
        int nargs = 0;
#define ARG(i) (optind + (i) < argc ? argv[optind + (i)] : "")
        if (!strcmp(c, "info")) {
            failed |= cmd_info();
        } else if (!strcmp(c, "write") || !strcmp(c, "read")) {
            if (parse_num(ARG(0), &a) < 0 || parse_num(ARG(1), &b) < 0) {
                die("%s OFF LEN PAT", c);
            }
            failed |= cmd_rw(c[0] == 'w', a, b, (int)strtol(ARG(2), NULL, 0));
            nargs = 3;
        } else if (!strcmp(c, "flush")) {
            int st = sync_req(VIRTIO_BLK_T_FLUSH, 0, NULL, 0);

            printf("flush: status %d\n", st);
            failed |= st != 0;
        } else if (!strcmp(c, "getid")) {
            uint8_t *buf = g_q[0].slots[0].data;
            int st;

            memset(buf, 0, 21);
            st = sync_req(VIRTIO_BLK_T_GET_ID, 0, buf, 20);
            printf("getid: status %d id '%.20s'\n", st, buf);
            failed |= st != 0;
        } else if (!strcmp(c, "discard") || !strcmp(c, "zero")) {
            bool unmap = !strcmp(ARG(2), "unmap");

            if (parse_num(ARG(0), &a) < 0 || parse_num(ARG(1), &b) < 0) {
                die("%s OFF LEN", c);
            }
            failed |= cmd_range(c[0] == 'd' ? VIRTIO_BLK_T_DISCARD
                                            : VIRTIO_BLK_T_WRITE_ZEROES,
                                a, b, unmap);
            nargs = 2 + unmap;
        } else if (!strcmp(c, "verify")) {
            if (parse_num(ARG(0), &a) < 0 || parse_num(ARG(1), &b) < 0) {
                die("verify N SEED");
            }
            failed |= cmd_verify(a, b);
            nargs = 2;
        } else if (!strcmp(c, "bench")) {
            if (parse_num(ARG(1), &b) < 0) {
                die("bench RW BS SECS");
            }
            failed |= cmd_bench(ARG(0), b, atof(ARG(2)));
            nargs = 3;
        } else if (!strcmp(c, "burst")) {
            failed |= cmd_burst((unsigned)atoi(ARG(0)));
            nargs = 1;
        } else if (!strcmp(c, "hostile")) {
            failed |= cmd_hostile(ARG(0));
            nargs = 1;
        } else if (!strcmp(c, "sleep")) {
            usleep((useconds_t)(atof(ARG(0)) * 1e6));
            nargs = 1;
        } else {
            die("unknown command %s", c);
        }
        optind += nargs;
        fflush(stdout);
    }
    return failed ? 1 : 0;
}
