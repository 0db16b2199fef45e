/* SPDX-License-Identifier: MIT */
/*
 * The vhost-user back-end: session, messages, guest memory, split
 * virtqueues and inflight tracking (see vhost-user.h for the threads and
 * what is trusted).  Written from the protocol description in QEMU's
 * docs/interop/vhost-user.rst and the virtio 1.1 split-ring layout of
 * <linux/virtio_ring.h>.
 *
 * Design notes.
 *
 *   Lifetimes.  The control thread owns the session: the memory table,
 *   the queues' setup and the inflight buffer change only on it, and only
 *   while no queue thread runs (a running queue is stopped first and
 *   started again after: SET_MEM_TABLE on a live device is memory
 *   hotplug, rare).  So queue threads read the memory table and ring
 *   pointers without a lock.
 *
 *   A queue's threads share the poller role (q->lock protects who holds
 *   it, the stop flag and the used ring).  A request runs start to finish
 *   on the thread that popped it; stopping a queue therefore waits for its
 *   requests, which is what GET_VRING_BASE and a disconnect need: the
 *   guest memory stays mapped until the last request is done with it.
 *
 *   Guest-shared memory (rings, descriptors, the inflight buffer) is read
 *   once per field into locals and validated before use; the driver may
 *   change it at any time.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/vhost_types.h>
#include <linux/virtio_config.h>

#include "export/vhost-user.h"
#include "util.h"

/* Front-end requests (the spec's numbering). */
enum {
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_RESET_OWNER = 4,
    VU_SET_MEM_TABLE = 5,
    VU_SET_LOG_BASE = 6,
    VU_SET_LOG_FD = 7,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_GET_VRING_BASE = 11,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_SET_VRING_ERR = 14,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_GET_CONFIG = 24,
    VU_SET_CONFIG = 25,
    VU_GET_INFLIGHT_FD = 31,
    VU_SET_INFLIGHT_FD = 32,
    VU_RESET_DEVICE = 34,
    VU_GET_MAX_MEM_SLOTS = 36,
    VU_ADD_MEM_REG = 37,
    VU_REM_MEM_REG = 38,
    VU_SET_STATUS = 39,
    VU_GET_STATUS = 40,
};

/* Protocol feature bits. */
enum {
    VU_PF_MQ = 0,
    VU_PF_REPLY_ACK = 3,
    VU_PF_CONFIG = 9,
    VU_PF_INFLIGHT_SHMFD = 12,
    VU_PF_RESET_DEVICE = 13,
    VU_PF_CONFIGURE_MEM_SLOTS = 15,
    VU_PF_STATUS = 16,
};

#define VU_F_PROTOCOL_FEATURES 30
#define VU_VERSION             0x1
#define VU_FLAG_REPLY          0x4
#define VU_FLAG_NEED_REPLY     0x8
#define VU_HDR_SIZE            12
#define VU_MAX_PAYLOAD         4096
#define VU_MAX_FDS             VU_MAX_REGIONS
#define VU_VRING_NOFD          0x100
#define VU_VRING_IDX_MASK      0xff
#define VU_CONFIG_MAX          256
#define VU_STATUS_NEEDS_RESET  0x40

#define VU_THREADS_PER_QUEUE   16
/* The poller signals the call eventfd once per batch of requests it ran
 * itself, at the latest after this many: a call per request would wake
 * the driver (on a busy host: preempt us) once per request. */
#define VU_NOTIFY_BATCH        32

static const uint64_t vu_protocol_features =
    1ULL << VU_PF_MQ | 1ULL << VU_PF_REPLY_ACK | 1ULL << VU_PF_CONFIG |
    1ULL << VU_PF_INFLIGHT_SHMFD | 1ULL << VU_PF_RESET_DEVICE |
    1ULL << VU_PF_CONFIGURE_MEM_SLOTS | 1ULL << VU_PF_STATUS;

static const uint64_t vu_ring_features =
    1ULL << VIRTIO_F_VERSION_1 | 1ULL << VIRTIO_RING_F_INDIRECT_DESC |
    1ULL << VIRTIO_RING_F_EVENT_IDX | 1ULL << VU_F_PROTOCOL_FEATURES;

/* ---- Inflight buffer layout (the spec's split-queue region) ---------- */

struct vu_inflight_desc {
    uint8_t inflight;
    uint8_t padding[5];
    uint16_t next;
    uint64_t counter;
};

struct vu_inflight_queue {
    uint64_t features;
    uint16_t version;
    uint16_t desc_num;
    uint16_t last_batch_head;
    uint16_t used_idx;
    struct vu_inflight_desc desc[];
};

static size_t
inflight_queue_size(uint16_t queue_size)
{
    return align_up(sizeof(struct vu_inflight_queue) +
                    (size_t)queue_size * sizeof(struct vu_inflight_desc),
                    64);
}

/* ---- Structures ------------------------------------------------------- */

struct vu_msg {
    uint32_t request;
    uint32_t flags;
    uint32_t size;
    uint8_t payload[VU_MAX_PAYLOAD];
};

struct vu_queue {
    struct vu_dev *dev;
    unsigned index;

    /* Setup: control thread, while the queue is stopped. */
    uint16_t num;
    bool addr_set;
    uint64_t desc_uva, avail_uva, used_uva;
    uint16_t base;               /* SET_VRING_BASE */
    int kick_fd, call_fd, err_fd;
    bool started;                /* threads running */

    /* Running: ring pointers into guest memory (fixed while started). */
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
    bool event_idx, indirect;
    struct vu_inflight_queue *inflight;   /* NULL without the buffer */
    uint8_t *busy;               /* [num]: head in flight */

    /* The poller role's own state (one holder at a time). */
    uint16_t last_avail;
    uint16_t *resubmit;          /* heads to run again first (reconnect) */
    unsigned nresubmit, resubmit_pos;
    int64_t poll_ns;
    int wake_fd;                 /* eventfd: stop or enable changed */

    /* Protected by: lock. */
    struct lock lock;
    pthread_cond_t role_cond;
    bool reading;                /* a thread holds the poller role */
    bool stop;
    bool broken;                 /* the driver broke the ring */
    uint16_t used_idx;           /* our copy of used->idx */
    uint16_t signalled_used;     /* used_idx when we last decided to call */
    bool signalled_valid;        /* false: the next decision calls */
    unsigned running;            /* requests claimed, not completed */
    uint64_t inflight_counter;
    bool enabled;                /* also read without the lock */

    pthread_t threads[VU_THREADS_PER_QUEUE];
    int nthreads;
};

struct vu_dev {
    char *name;
    const struct vu_device_ops *ops;
    void *opaque;
    unsigned num_queues;
    int listen_fd;
    pthread_t thread;
    bool has_thread;
    /* Busy-polling of an empty ring before sleeping on the kick eventfd,
     * as the NBD server's reader polls its socket.  Fixed at creation. */
    struct poll_tuning poll;

    /* Protected by: conn_lock. */
    struct lock conn_lock;
    int conn_fd;                 /* -1 when no front-end */
    bool quit;

    /* Session state: control thread only. */
    uint64_t features;           /* accepted by SET_FEATURES */
    uint64_t protocol_features;
    struct vu_mem mem;
    struct vu_queue queues[VU_MAX_QUEUES];
    void *inflight_map;
    size_t inflight_size;
    uint16_t inflight_queue_size;
    uint16_t inflight_nqueues;
    uint8_t status;
    bool any_broken;             /* atomic: a queue was broken */
};

static void
vu_log(struct vu_dev *dev, const char *fmt, ...) PRINTF_FMT(2, 3);

static void
vu_log(struct vu_dev *dev, const char *fmt, ...)
{
    va_list ap;

    if (getenv("LOCKSTEP_VHOST_QUIET")) {
        return;
    }
    va_start(ap, fmt);
    fprintf(stderr, "lockstepd: vhost-user %s: ", dev->name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- Guest memory ----------------------------------------------------- */

int
vu_gpa_to_iov(const struct vu_mem *mem, uint64_t gpa, uint64_t len,
              struct iovec *iov, unsigned *niov, unsigned max)
{
    while (len > 0) {
        const struct vu_region *r = NULL;
        uint64_t off, n;
        uint8_t *p;

        for (unsigned i = 0; i < mem->nregions; i++) {
            const struct vu_region *c = &mem->regions[i];

            if (gpa >= c->gpa && gpa - c->gpa < c->size) {
                r = c;
                break;
            }
        }
        if (!r) {
            return -EFAULT;
        }
        off = gpa - r->gpa;
        n = MIN(len, r->size - off);
        p = r->host + off;
        if (*niov > 0 && (uint8_t *)iov[*niov - 1].iov_base +
                         iov[*niov - 1].iov_len == p) {
            iov[*niov - 1].iov_len += n;
        } else {
            if (*niov >= max) {
                return -E2BIG;
            }
            iov[*niov].iov_base = p;
            iov[*niov].iov_len = n;
            (*niov)++;
        }
        gpa += n;
        len -= n;
    }
    return 0;
}

void *
vu_gpa_to_host(const struct vu_mem *mem, uint64_t gpa, uint64_t len)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct vu_region *r = &mem->regions[i];

        if (gpa >= r->gpa && !range_exceeds(gpa - r->gpa, len, r->size)) {
            return r->host + (gpa - r->gpa);
        }
    }
    return NULL;
}

void *
vu_uva_to_host(const struct vu_mem *mem, uint64_t uva, uint64_t len)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct vu_region *r = &mem->regions[i];

        if (uva >= r->uva && !range_exceeds(uva - r->uva, len, r->size)) {
            return r->host + (uva - r->uva);
        }
    }
    return NULL;
}

static void
region_unmap(struct vu_region *r)
{
    if (r->map) {
        munmap(r->map, r->map_len);
    }
    memset(r, 0, sizeof(*r));
}

static void
mem_clear(struct vu_mem *mem)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        region_unmap(&mem->regions[i]);
    }
    mem->nregions = 0;
}

/*
 * Map one region from the wire (gpa, size, uva, mmap offset) and its fd.
 * The file must be at least offset + size long: touching a page past its
 * end would kill us with SIGBUS.
 */
static int
region_map(struct vu_dev *dev, struct vu_region *r, const uint8_t *wire,
           int fd)
{
    uint64_t gpa, size, uva, offset;
    struct stat st;
    void *p;

    memcpy(&gpa, wire, 8);
    memcpy(&size, wire + 8, 8);
    memcpy(&uva, wire + 16, 8);
    memcpy(&offset, wire + 24, 8);
    if (size == 0 || range_exceeds(gpa, size, UINT64_MAX) ||
        range_exceeds(uva, size, UINT64_MAX) ||
        range_exceeds(offset, size, (uint64_t)INT64_MAX)) {
        vu_log(dev, "memory region with a bad size or address");
        return -EINVAL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
        (uint64_t)st.st_size < offset + size) {
        vu_log(dev, "memory region fd is not a file of %" PRIu64 " bytes",
               offset + size);
        return -EINVAL;
    }
    p = mmap(NULL, offset + size, PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        vu_log(dev, "cannot map a memory region: %s", strerror(errno));
        return -errno;
    }
    r->gpa = gpa;
    r->size = size;
    r->uva = uva;
    r->map = p;
    r->map_len = offset + size;
    r->host = (uint8_t *)p + offset;
    return 0;
}

/* Regions must not overlap in guest or front-end addresses: a
 * translation must have one answer. */
static bool
region_overlaps(const struct vu_mem *mem, const struct vu_region *r)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct vu_region *o = &mem->regions[i];

        if (o != r && (ranges_overlap(o->gpa, o->size, r->gpa, r->size) ||
                       ranges_overlap(o->uva, o->size, r->uva, r->size))) {
            return true;
        }
    }
    return false;
}

/* ---- Descriptor chains ------------------------------------------------ */

static int
chain_add(const struct vu_mem *mem, uint64_t addr, uint32_t len,
          bool writable, struct vu_chain *out)
{
    unsigned base, n;
    int ret;

    if (!writable && out->nin > 0) {
        return -EINVAL;      /* readable after writable */
    }
    if (len == 0) {
        return 0;
    }
    /* The first writable piece must not merge into the last readable
     * one: translate it into a fresh sub-array. */
    base = writable && out->nin == 0 ? out->nout : 0;
    n = out->nout + out->nin - base;
    ret = vu_gpa_to_iov(mem, addr, len, out->iov + base, &n,
                        VU_MAX_IOV - base);
    if (ret < 0) {
        return ret == -E2BIG ? -EINVAL : ret;
    }
    n += base;
    if (writable) {
        out->nin = n - out->nout;
    } else {
        out->nout = n;
    }
    return 0;
}

int
vu_walk_chain(const struct vu_mem *mem, const struct vring_desc *desc,
              uint16_t num, uint16_t head, bool indirect_ok,
              struct vu_chain *out)
{
    const struct vring_desc *table = desc;
    uint32_t table_len = num;
    uint32_t i = head, count = 0;
    bool in_indirect = false;
    int ret;

    out->nout = out->nin = 0;
    if (head >= num) {
        return -EINVAL;
    }
    for (;;) {
        uint64_t addr;
        uint32_t len;
        uint16_t flags, next;

        if (i >= table_len || ++count > table_len) {
            return -EINVAL;  /* out of the table, or a loop */
        }
        addr = le64toh(__atomic_load_n(&table[i].addr, __ATOMIC_RELAXED));
        len = le32toh(__atomic_load_n(&table[i].len, __ATOMIC_RELAXED));
        flags = le16toh(__atomic_load_n(&table[i].flags, __ATOMIC_RELAXED));
        next = le16toh(__atomic_load_n(&table[i].next, __ATOMIC_RELAXED));

        if (flags & VRING_DESC_F_INDIRECT) {
            if (!indirect_ok || in_indirect ||
                (flags & VRING_DESC_F_NEXT) || len == 0 ||
                len % sizeof(struct vring_desc) ||
                len / sizeof(struct vring_desc) > VU_MAX_QUEUE_SIZE ||
                count != 1) {
                return -EINVAL;
            }
            table = vu_gpa_to_host(mem, addr, len);
            if (!table || (uintptr_t)table % 8) {
                return -EFAULT;
            }
            table_len = len / sizeof(struct vring_desc);
            in_indirect = true;
            i = 0;
            count = 0;
            continue;
        }
        ret = chain_add(mem, addr, len, flags & VRING_DESC_F_WRITE, out);
        if (ret < 0) {
            return ret;
        }
        if (!(flags & VRING_DESC_F_NEXT)) {
            return 0;
        }
        i = next;
    }
}

/* ---- Rings ------------------------------------------------------------ */

static uint16_t
avail_idx(struct vu_queue *q)
{
    return le16toh(__atomic_load_n(&q->avail->idx, __ATOMIC_ACQUIRE));
}

static uint16_t
avail_ring(struct vu_queue *q, uint16_t pos)
{
    return le16toh(__atomic_load_n(&q->avail->ring[pos % q->num],
                                   __ATOMIC_RELAXED));
}

/* The driver's used_event (EVENT_IDX): after the avail ring. */
static uint16_t
used_event(struct vu_queue *q)
{
    return le16toh(__atomic_load_n(&q->avail->ring[q->num],
                                   __ATOMIC_RELAXED));
}

/* Ask for kicks (before sleeping) or not (while polling or busy). */
static void
set_notification(struct vu_queue *q, bool enable)
{
    if (q->event_idx) {
        if (enable) {
            /* avail_event: after the used ring. */
            uint16_t *ev = (uint16_t *)&q->used->ring[q->num];

            __atomic_store_n(ev, htole16(q->last_avail), __ATOMIC_RELAXED);
        }
    } else {
        uint16_t f = le16toh(__atomic_load_n(&q->used->flags,
                                             __ATOMIC_RELAXED));

        f = enable ? (f & ~VRING_USED_F_NO_NOTIFY)
                   : (f | VRING_USED_F_NO_NOTIFY);
        __atomic_store_n(&q->used->flags, htole16(f), __ATOMIC_RELAXED);
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* The driver broke the ring: stop using it, tell the front-end. */
static void
queue_break(struct vu_queue *q, const char *why)
{
    uint64_t one = 1;

    mutex_lock(&q->lock);
    if (!q->broken) {
        q->broken = true;
        vu_log(q->dev, "queue %u: %s; the device needs a reset", q->index,
               why);
        __atomic_store_n(&q->dev->any_broken, true, __ATOMIC_RELAXED);
        if (q->err_fd >= 0 && write(q->err_fd, &one, 8) < 0) {
            /* Nobody listens: the connection ends anyway. */
        }
    }
    mutex_unlock(&q->lock);
}

/* The poller role's batch: completions of requests it ran itself are
 * signalled when the batch ends (queue_flush_calls). */
struct vu_turn {
    struct vu_queue *q;
    bool handed_off;
    unsigned unsignalled;        /* completed, call not decided yet */
};

static void
notify(struct vu_queue *q)
{
    uint64_t one = 1;

    if (q->call_fd >= 0 && write(q->call_fd, &one, 8) < 0) {
        /* EAGAIN: the counter is saturated, the driver wakes anyway. */
    }
}

/*
 * Does the driver want a call for the completions since the last
 * decision?  With EVENT_IDX: when used_event lies in the range of used
 * indexes published since then (the spec's vring_need_event() over the
 * whole batch); else unless it set NO_INTERRUPT.  Called with q->lock.
 */
static bool
need_call(struct vu_queue *q)
{
    uint16_t old = q->signalled_used;
    bool valid = q->signalled_valid;

    if (valid && old == q->used_idx) {
        return false;
    }
    q->signalled_used = q->used_idx;
    q->signalled_valid = true;
    /* The used index is visible before we read the driver's wish. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (q->event_idx) {
        return !valid || vring_need_event(used_event(q), q->used_idx, old);
    }
    return !(le16toh(__atomic_load_n(&q->avail->flags, __ATOMIC_RELAXED)) &
             VRING_AVAIL_F_NO_INTERRUPT);
}

/* End the poller's batch: call the driver if it wants to hear of the
 * completions so far.  Poller role. */
static void
queue_flush_calls(struct vu_queue *q, struct vu_turn *turn)
{
    bool call;

    if (!turn->unsignalled) {
        return;
    }
    turn->unsignalled = 0;
    mutex_lock(&q->lock);
    call = need_call(q);
    mutex_unlock(&q->lock);
    if (call) {
        notify(q);
    }
}

void
vu_req_complete(struct vu_req *req, uint32_t len)
{
    struct vu_queue *q = req->q;
    struct vring_used_elem elem = {
        .id = htole32(req->head), .len = htole32(len),
    };
    struct vu_turn *turn = req->turn;
    uint16_t old, new;
    bool batched = turn && !turn->handed_off;
    bool call = false;

    mutex_lock(&q->lock);
    old = q->used_idx;
    new = old + 1;
    q->used->ring[old % q->num] = elem;
    if (q->inflight) {
        q->inflight->desc[req->head].next = q->inflight->last_batch_head;
        q->inflight->last_batch_head = req->head;
    }
    __atomic_store_n(&q->used->idx, htole16(new), __ATOMIC_RELEASE);
    if (q->inflight) {
        q->inflight->desc[req->head].inflight = 0;
        __atomic_store_n(&q->inflight->used_idx, new, __ATOMIC_RELEASE);
    }
    q->used_idx = new;
    q->busy[req->head] = 0;
    q->running--;
    if (!batched) {
        call = need_call(q);
    }
    mutex_unlock(&q->lock);
    if (batched && ++turn->unsignalled >= VU_NOTIFY_BATCH) {
        queue_flush_calls(q, turn);
    } else if (call) {
        notify(q);
    }
}

/*
 * The next head to run: resubmissions first, then the avail ring.
 * -1 when there is none now.  -2 when the ring is broken.  Poller role.
 */
static int
queue_pop(struct vu_queue *q)
{
    uint16_t idx, head;

    if (q->resubmit_pos < q->nresubmit) {
        return q->resubmit[q->resubmit_pos++];
    }
    if (!__atomic_load_n(&q->enabled, __ATOMIC_ACQUIRE)) {
        return -1;
    }
    idx = avail_idx(q);
    if (idx == q->last_avail) {
        return -1;
    }
    if ((uint16_t)(idx - q->last_avail) > q->num) {
        queue_break(q, "avail index moved by more than the queue size");
        return -2;
    }
    head = avail_ring(q, q->last_avail);
    if (head >= q->num) {
        queue_break(q, "avail ring entry out of range");
        return -2;
    }
    __atomic_store_n(&q->last_avail, q->last_avail + 1, __ATOMIC_RELEASE);
    return head;
}

/* Mark head in flight (and in the inflight buffer) before running it. */
static bool
queue_claim(struct vu_queue *q, uint16_t head)
{
    bool ok;

    mutex_lock(&q->lock);
    ok = !q->busy[head];
    if (ok) {
        q->busy[head] = 1;
        q->running++;
        if (q->inflight) {
            q->inflight->desc[head].counter = ++q->inflight_counter;
            __atomic_store_n(&q->inflight->desc[head].inflight, 1,
                             __ATOMIC_RELEASE);
        }
    }
    mutex_unlock(&q->lock);
    return ok;
}

void
vu_req_fail(struct vu_req *req, const char *why)
{
    queue_break(req->q, why);
}

/* ---- Queue threads ---------------------------------------------------- */

/* Blocking hook (util.h): pass the poller role on before sleeping.
 * Takes q->lock, never held around block calls. */
static void
poller_hand_off(void *opaque)
{
    struct vu_turn *turn = opaque;
    struct vu_queue *q = turn->q;

    /* The batch so far must not wait for this request. */
    queue_flush_calls(q, turn);
    mutex_lock(&q->lock);
    q->reading = false;
    cond_signal(&q->role_cond);
    mutex_unlock(&q->lock);
    turn->handed_off = true;
}

static bool
queue_stopping(struct vu_queue *q)
{
    bool stop;

    mutex_lock(&q->lock);
    stop = q->stop || q->broken;
    mutex_unlock(&q->lock);
    return stop;
}

/* Drain an eventfd (kick or wake) without blocking. */
static void
drain_eventfd(int fd)
{
    uint64_t v;

    if (fd >= 0 && read(fd, &v, 8) < 0) {
        /* EAGAIN: nothing there. */
    }
}

/*
 * Wait for work: busy-poll the ring for a while, then ask for a kick and
 * sleep on it.  False when the queue is stopping.  Poller role.
 */
static bool
queue_wait(struct vu_queue *q)
{
    struct pollfd pfd[2] = {
        { .fd = q->kick_fd, .events = POLLIN },
        { .fd = q->wake_fd, .events = POLLIN },
    };
    int64_t t0, end;

    if (q->poll_ns > 0) {
        end = clock_ns() + q->poll_ns;
        while (clock_ns() < end) {
            if (__atomic_load_n(&q->enabled, __ATOMIC_ACQUIRE) &&
                avail_idx(q) != q->last_avail) {
                return true;
            }
            sched_yield();
        }
    }
    set_notification(q, true);
    if (queue_stopping(q)) {
        return false;
    }
    if (__atomic_load_n(&q->enabled, __ATOMIC_ACQUIRE) &&
        avail_idx(q) != q->last_avail) {
        set_notification(q, false);
        return true;
    }
    t0 = clock_ns();
    while (poll(pfd, 2, -1) < 0 && errno == EINTR) {
    }
    q->poll_ns = poll_adapt(&q->dev->poll, q->poll_ns, clock_ns() - t0);
    drain_eventfd(q->kick_fd);
    drain_eventfd(q->wake_fd);
    set_notification(q, false);
    return !queue_stopping(q);
}

/* Run one popped head on this thread. */
static void
run_head(struct vu_queue *q, struct vu_req *req, uint16_t head,
         struct vu_turn *turn)
{
    int ret;

    if (!queue_claim(q, head)) {
        queue_break(q, "a request was made available twice");
        return;
    }
    req->q = q;
    req->head = head;
    req->turn = turn;
    ret = vu_walk_chain(&q->dev->mem, q->desc, q->num, head, q->indirect,
                        &req->chain);
    if (ret < 0) {
        /* Not returned to the driver: the device is broken now. */
        queue_break(q, ret == -EFAULT ?
                    "a descriptor points outside guest memory" :
                    "a malformed descriptor chain");
        return;
    }
    thread_set_block_hook(poller_hand_off, turn);
    q->dev->ops->run(q->dev->opaque, req);
    thread_set_block_hook(NULL, NULL);
}

/* Hold the poller role until a request blocks (true) or the queue
 * stops (false). */
static bool
poller_loop(struct vu_queue *q, struct vu_req *req)
{
    struct vu_turn turn = { .q = q };

    while (!turn.handed_off) {
        int head = queue_pop(q);

        if (head == -2) {
            queue_flush_calls(q, &turn);
            return false;
        }
        if (head < 0) {
            /* The ring is empty: the batch ends. */
            queue_flush_calls(q, &turn);
            if (!queue_wait(q)) {
                return false;
            }
            continue;
        }
        run_head(q, req, (uint16_t)head, &turn);
    }
    return true;
}

static void *
queue_thread(void *opaque)
{
    struct vu_queue *q = opaque;
    struct vu_req *req = malloc(sizeof(*req));

    if (!req) {
        return NULL;     /* the other threads serve the queue */
    }
    for (;;) {
        mutex_lock(&q->lock);
        while (q->reading && !q->stop) {
            cond_wait(&q->role_cond, &q->lock);
        }
        if (q->stop) {
            mutex_unlock(&q->lock);
            break;
        }
        q->reading = true;
        mutex_unlock(&q->lock);
        if (!poller_loop(q, req)) {
            /* Stopping or broken: everybody leaves once idle. */
            mutex_lock(&q->lock);
            q->stop = true;
            q->reading = false;
            cond_broadcast(&q->role_cond);
            mutex_unlock(&q->lock);
            break;
        }
    }
    free(req);
    return NULL;
}

/* ---- Queue setup (control thread) ------------------------------------- */

static void
close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Stop the queue's threads; their requests finish first. */
static void
queue_stop(struct vu_queue *q)
{
    uint64_t one = 1;

    if (!q->started) {
        return;
    }
    mutex_lock(&q->lock);
    q->stop = true;
    cond_broadcast(&q->role_cond);
    mutex_unlock(&q->lock);
    if (write(q->wake_fd, &one, 8) < 0) {
        /* Cannot fail for an eventfd below its maximum. */
    }
    for (int i = 0; i < q->nthreads; i++) {
        thread_join(q->threads[i]);
    }
    q->nthreads = 0;
    q->started = false;
    q->base = q->last_avail;
    free(q->resubmit);
    q->resubmit = NULL;
    q->nresubmit = q->resubmit_pos = 0;
    free(q->busy);
    q->busy = NULL;
}

static int
cmp_counter(const void *a, const void *b, void *opaque)
{
    const struct vu_inflight_queue *r = opaque;
    uint64_t ca = r->desc[*(const uint16_t *)a].counter;
    uint64_t cb = r->desc[*(const uint16_t *)b].counter;

    return ca < cb ? -1 : ca > cb;
}

/*
 * Attach the queue to its part of the inflight buffer.  A fresh one is
 * initialised; one a previous back-end used (reconnect) says which heads
 * were popped but never completed: they are run again first, oldest
 * first, and last_avail follows from the used index.
 */
static void
queue_attach_inflight(struct vu_queue *q)
{
    struct vu_dev *dev = q->dev;
    struct vu_inflight_queue *r;
    uint16_t used = le16toh(__atomic_load_n(&q->used->idx,
                                            __ATOMIC_ACQUIRE));
    uint16_t batch, head;
    uint64_t max_counter = 0;

    q->inflight = NULL;
    if (!dev->inflight_map || q->index >= dev->inflight_nqueues ||
        dev->inflight_queue_size != q->num) {
        return;
    }
    r = (void *)((uint8_t *)dev->inflight_map +
                 q->index * inflight_queue_size(q->num));
    q->inflight = r;
    if (r->version != 1 || r->desc_num != q->num) {
        memset(r, 0, inflight_queue_size(q->num));
        r->version = 1;
        r->desc_num = q->num;
        r->used_idx = used;
        q->inflight_counter = 0;
        return;
    }
    /* The last batch reached the used ring but not used_idx: it is
     * complete.  (Batches are of one here; a foreign writer may have
     * made longer ones: walk at most the queue size.) */
    batch = used - r->used_idx;
    head = r->last_batch_head;
    for (uint16_t n = 0; n < batch && n < q->num && head < q->num; n++) {
        r->desc[head].inflight = 0;
        head = r->desc[head].next;
    }
    r->used_idx = used;

    q->resubmit = xcalloc(q->num, sizeof(uint16_t));
    for (uint16_t i = 0; i < q->num; i++) {
        if (r->desc[i].inflight == 1) {
            q->resubmit[q->nresubmit++] = i;
        } else {
            r->desc[i].inflight = 0;
        }
        max_counter = MAX(max_counter, r->desc[i].counter);
    }
    qsort_r(q->resubmit, q->nresubmit, sizeof(uint16_t), cmp_counter, r);
    q->inflight_counter = max_counter;
    q->last_avail = used + q->nresubmit;
    if (q->nresubmit) {
        vu_log(dev, "queue %u: resubmitting %u requests in flight at the "
               "last disconnect", q->index, q->nresubmit);
    }
    /* They stay marked until they complete: a disconnect before they
     * ran finds them again. */
}

/* Start the queue when all of it is set up.  -errno when the rings do
 * not map (the session ends). */
static int
queue_start(struct vu_queue *q)
{
    struct vu_dev *dev = q->dev;
    size_t desc_len, avail_len, used_len;

    if (q->started || !q->num || !q->addr_set || q->kick_fd < 0 ||
        !dev->mem.nregions) {
        return 0;
    }
    q->event_idx = dev->features & (1ULL << VIRTIO_RING_F_EVENT_IDX);
    q->indirect = dev->features & (1ULL << VIRTIO_RING_F_INDIRECT_DESC);
    desc_len = (size_t)q->num * sizeof(struct vring_desc);
    avail_len = sizeof(struct vring_avail) + (q->num + 1) * 2;
    used_len = sizeof(struct vring_used) +
               (size_t)q->num * sizeof(struct vring_used_elem) + 2;
    q->desc = vu_uva_to_host(&dev->mem, q->desc_uva, desc_len);
    q->avail = vu_uva_to_host(&dev->mem, q->avail_uva, avail_len);
    q->used = vu_uva_to_host(&dev->mem, q->used_uva, used_len);
    if (!q->desc || !q->avail || !q->used || (uintptr_t)q->desc % 16 ||
        (uintptr_t)q->avail % 2 || (uintptr_t)q->used % 4) {
        vu_log(dev, "queue %u: rings outside guest memory or misaligned",
               q->index);
        return -EFAULT;
    }
    q->last_avail = q->base;
    q->running = 0;
    q->used_idx = le16toh(__atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE));
    q->signalled_valid = false;
    q->busy = xcalloc(q->num, 1);
    queue_attach_inflight(q);
    q->stop = false;
    q->reading = false;
    q->broken = false;
    q->poll_ns = 0;
    q->enabled = !(dev->features & (1ULL << VU_F_PROTOCOL_FEATURES)) ||
                 q->enabled;
    set_notification(q, false);
    drain_eventfd(q->wake_fd);
    for (int i = 0; i < VU_THREADS_PER_QUEUE; i++) {
        char name[16];

        snprintf(name, sizeof(name), "vhost-q%u", q->index);
        thread_create(&q->threads[i], name, queue_thread, q);
    }
    q->nthreads = VU_THREADS_PER_QUEUE;
    q->started = true;
    if (getenv("LOCKSTEP_VHOST_DEBUG")) {
        vu_log(dev, "queue %u started: num %u last_avail %u used %u "
               "avail %u enabled %d event_idx %d inflight %d", q->index,
               q->num, q->last_avail, q->used_idx, avail_idx(q), q->enabled,
               q->event_idx, q->inflight != NULL);
    }
    return 0;
}

/* Forget everything a session set on the queue. */
static void
queue_reset(struct vu_queue *q)
{
    queue_stop(q);
    close_fd(&q->kick_fd);
    close_fd(&q->call_fd);
    close_fd(&q->err_fd);
    q->num = 0;
    q->addr_set = false;
    q->base = 0;
    q->enabled = false;
    q->broken = false;
    q->inflight = NULL;
}

static void
queues_stop_all(struct vu_dev *dev, bool *was_started)
{
    for (unsigned i = 0; i < dev->num_queues; i++) {
        was_started[i] = dev->queues[i].started;
        queue_stop(&dev->queues[i]);
    }
}

static int
queues_restart(struct vu_dev *dev, const bool *was_started)
{
    for (unsigned i = 0; i < dev->num_queues; i++) {
        if (was_started[i]) {
            int ret = queue_start(&dev->queues[i]);

            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static void
inflight_unmap(struct vu_dev *dev)
{
    if (dev->inflight_map) {
        munmap(dev->inflight_map, dev->inflight_size);
    }
    dev->inflight_map = NULL;
    dev->inflight_size = 0;
    dev->inflight_nqueues = dev->inflight_queue_size = 0;
}

/* End of a session: stop every queue (requests finish), unmap. */
static void
session_reset(struct vu_dev *dev)
{
    for (unsigned i = 0; i < dev->num_queues; i++) {
        queue_reset(&dev->queues[i]);
    }
    mem_clear(&dev->mem);
    inflight_unmap(dev);
    dev->features = 0;
    dev->protocol_features = 0;
    dev->status = 0;
    dev->any_broken = false;
}

/* ---- Messages --------------------------------------------------------- */

static int
send_reply(int fd, const struct vu_msg *req, const void *payload,
           uint32_t size, int pass_fd)
{
    struct vu_msg reply;
    struct iovec iov;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    ssize_t r;

    reply.request = req->request;
    reply.flags = VU_VERSION | VU_FLAG_REPLY;
    reply.size = size;
    if (size > 0)
        memcpy(reply.payload, payload, size);
    iov.iov_base = &reply;
    iov.iov_len = VU_HDR_SIZE + size;
    if (pass_fd >= 0) {
        struct cmsghdr *c;

        memset(&ctl, 0, sizeof(ctl));
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof(ctl.buf);
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    do {
        r = sendmsg(fd, &mh, MSG_NOSIGNAL);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno == ENOTSOCK && pass_fd < 0) {
        return write_full(fd, &reply, VU_HDR_SIZE + size);
    }
    return r == (ssize_t)(VU_HDR_SIZE + size) ? 0 : -EIO;
}

static int
reply_u64(int fd, const struct vu_msg *req, uint64_t v)
{
    return send_reply(fd, req, &v, 8, -1);
}

/* Receive one message with its fds.  0, or -1 at EOF or on a broken
 * frame (the session ends). */
static int
recv_msg(struct vu_dev *dev, int fd, struct vu_msg *msg, int *fds,
         int *nfds)
{
    union {
        char buf[CMSG_SPACE(VU_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = { .iov_base = msg, .iov_len = VU_HDR_SIZE };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = ctl.buf, .msg_controllen = sizeof(ctl.buf),
    };
    ssize_t r;

    *nfds = 0;
    do {
        r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno == ENOTSOCK) {
        r = read_full(fd, msg, VU_HDR_SIZE) < 0 ? -1 : VU_HDR_SIZE;
        mh.msg_controllen = 0;
    }
    if (r > 0 && mh.msg_controllen > 0) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
             c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

                for (size_t k = 0; k < n; k++) {
                    int f;

                    memcpy(&f, CMSG_DATA(c) + k * sizeof(int), sizeof(int));
                    if (*nfds < VU_MAX_FDS) {
                        fds[(*nfds)++] = f;
                    } else {
                        close(f);
                    }
                }
            }
        }
    }
    if (r != VU_HDR_SIZE || (mh.msg_flags & MSG_CTRUNC)) {
        if (r > 0) {
            vu_log(dev, "short or truncated message header");
        }
        return -1;
    }
    if ((msg->flags & 0x3) != VU_VERSION) {
        vu_log(dev, "message of unknown version 0x%x", msg->flags & 0x3);
        return -1;
    }
    if (msg->size > VU_MAX_PAYLOAD) {
        vu_log(dev, "message %u of %u bytes is too long", msg->request,
               msg->size);
        return -1;
    }
    if (msg->size && read_full(fd, msg->payload, msg->size) < 0) {
        return -1;
    }
    return 0;
}

/* Payload helpers: the wire is native-endian (spec). */
static uint64_t
payload_u64(const struct vu_msg *msg)
{
    uint64_t v;

    memcpy(&v, msg->payload, 8);
    return v;
}

static struct vu_queue *
msg_queue(struct vu_dev *dev, uint32_t index)
{
    return index < dev->num_queues ? &dev->queues[index] : NULL;
}

/* The payload size each request needs at least, and how many fds it
 * takes (-1: one unless the payload's NOFD bit is set; -2: the region
 * count of SET_MEM_TABLE).  Unknown requests are refused. */
static bool
msg_shape(uint32_t request, uint32_t *min_size, int *fds)
{
    *fds = 0;
    switch (request) {
    case VU_GET_FEATURES: case VU_SET_OWNER: case VU_RESET_OWNER:
    case VU_GET_PROTOCOL_FEATURES: case VU_GET_QUEUE_NUM:
    case VU_RESET_DEVICE: case VU_GET_MAX_MEM_SLOTS: case VU_GET_STATUS:
        *min_size = 0;
        return true;
    case VU_SET_FEATURES: case VU_SET_PROTOCOL_FEATURES:
    case VU_SET_STATUS:
        *min_size = 8;
        return true;
    case VU_SET_VRING_KICK: case VU_SET_VRING_CALL: case VU_SET_VRING_ERR:
        *min_size = 8;
        *fds = -1;
        return true;
    case VU_SET_VRING_NUM: case VU_SET_VRING_BASE: case VU_GET_VRING_BASE:
    case VU_SET_VRING_ENABLE:
        *min_size = sizeof(struct vhost_vring_state);
        return true;
    case VU_SET_VRING_ADDR:
        *min_size = sizeof(struct vhost_vring_addr);
        return true;
    case VU_SET_MEM_TABLE:
        *min_size = 8;
        *fds = -2;
        return true;
    case VU_GET_CONFIG: case VU_SET_CONFIG:
        *min_size = 12;
        return true;
    case VU_GET_INFLIGHT_FD:
        *min_size = 24;
        return true;
    case VU_SET_INFLIGHT_FD:
        *min_size = 24;
        *fds = 1;
        return true;
    case VU_ADD_MEM_REG:
        *min_size = 40;
        *fds = 1;
        return true;
    case VU_REM_MEM_REG:
        *min_size = 40;
        return true;
    default:
        return false;
    }
}

static int
do_set_mem_table(struct vu_dev *dev, const struct vu_msg *msg,
                 const int *fds, int nfds)
{
    uint32_t n;
    struct vu_mem mem = {0};
    bool was_started[VU_MAX_QUEUES];

    memcpy(&n, msg->payload, 4);
    if (n == 0 || n > VU_MAX_REGIONS || msg->size < 8 + n * 32 ||
        (int)n != nfds) {
        vu_log(dev, "SET_MEM_TABLE with %u regions, %d fds, %u bytes", n,
               nfds, msg->size);
        return -EINVAL;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (region_map(dev, &mem.regions[i], msg->payload + 8 + i * 32,
                       fds[i]) < 0) {
            mem_clear(&mem);
            return -EINVAL;
        }
        mem.nregions = i + 1;
        if (region_overlaps(&mem, &mem.regions[i])) {
            vu_log(dev, "SET_MEM_TABLE: overlapping regions");
            mem_clear(&mem);
            return -EINVAL;
        }
    }
    queues_stop_all(dev, was_started);
    mem_clear(&dev->mem);
    dev->mem = mem;
    return queues_restart(dev, was_started);
}

static int
do_add_mem_reg(struct vu_dev *dev, const struct vu_msg *msg, int fd)
{
    struct vu_mem mem = dev->mem;
    bool was_started[VU_MAX_QUEUES];
    struct vu_region *r;

    if (mem.nregions >= VU_MAX_REGIONS) {
        vu_log(dev, "ADD_MEM_REG: no free slot");
        return -ENOSPC;
    }
    r = &mem.regions[mem.nregions];
    if (region_map(dev, r, msg->payload + 8, fd) < 0) {
        return -EINVAL;
    }
    mem.nregions++;
    if (region_overlaps(&mem, r)) {
        vu_log(dev, "ADD_MEM_REG: region overlaps another");
        region_unmap(r);
        return -EINVAL;
    }
    queues_stop_all(dev, was_started);
    dev->mem = mem;
    return queues_restart(dev, was_started);
}

static int
do_rem_mem_reg(struct vu_dev *dev, const struct vu_msg *msg)
{
    uint64_t gpa, size, uva;
    bool was_started[VU_MAX_QUEUES];

    memcpy(&gpa, msg->payload + 8, 8);
    memcpy(&size, msg->payload + 16, 8);
    memcpy(&uva, msg->payload + 24, 8);
    for (unsigned i = 0; i < dev->mem.nregions; i++) {
        struct vu_region *r = &dev->mem.regions[i];

        if (r->gpa == gpa && r->size == size && r->uva == uva) {
            queues_stop_all(dev, was_started);
            region_unmap(r);
            dev->mem.regions[i] = dev->mem.regions[dev->mem.nregions - 1];
            memset(&dev->mem.regions[dev->mem.nregions - 1], 0,
                   sizeof(*r));
            dev->mem.nregions--;
            return queues_restart(dev, was_started);
        }
    }
    vu_log(dev, "REM_MEM_REG: no such region");
    return -EINVAL;
}

static int
do_get_inflight_fd(struct vu_dev *dev, int fd, const struct vu_msg *msg)
{
    uint16_t nq, qs;
    uint64_t reply[3] = {0};
    size_t size;
    int mfd, ret;
    void *p;

    memcpy(&nq, msg->payload + 16, 2);
    memcpy(&qs, msg->payload + 18, 2);
    if (nq == 0 || nq > VU_MAX_QUEUES || qs == 0 ||
        qs > VU_MAX_QUEUE_SIZE) {
        vu_log(dev, "GET_INFLIGHT_FD for %u queues of %u", nq, qs);
        return -EINVAL;
    }
    size = nq * inflight_queue_size(qs);
    mfd = memfd_create("vhost-inflight", MFD_CLOEXEC);
    if (mfd < 0 || ftruncate(mfd, (off_t)size) < 0) {
        ret = -errno;
        close_fd(&mfd);
        return ret;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (p == MAP_FAILED) {
        ret = -errno;
        close(mfd);
        return ret;
    }
    inflight_unmap(dev);
    dev->inflight_map = p;
    dev->inflight_size = size;
    dev->inflight_nqueues = nq;
    dev->inflight_queue_size = qs;
    reply[0] = size;
    reply[1] = 0;
    memcpy(&reply[2], &nq, 2);
    memcpy((uint8_t *)&reply[2] + 2, &qs, 2);
    ret = send_reply(fd, msg, reply, 24, mfd);
    close(mfd);
    return ret;
}

static int
do_set_inflight_fd(struct vu_dev *dev, const struct vu_msg *msg, int mfd)
{
    uint64_t size, offset;
    uint16_t nq, qs;
    struct stat st;
    void *p;

    memcpy(&size, msg->payload, 8);
    memcpy(&offset, msg->payload + 8, 8);
    memcpy(&nq, msg->payload + 16, 2);
    memcpy(&qs, msg->payload + 18, 2);
    if (nq == 0 || nq > VU_MAX_QUEUES || qs == 0 ||
        qs > VU_MAX_QUEUE_SIZE || size < nq * inflight_queue_size(qs) ||
        range_exceeds(offset, size, (uint64_t)INT64_MAX) ||
        offset % (uint64_t)sysconf(_SC_PAGESIZE) ||
        fstat(mfd, &st) < 0 || (uint64_t)st.st_size < offset + size) {
        vu_log(dev, "SET_INFLIGHT_FD with a bad size, offset or fd");
        return -EINVAL;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd,
             (off_t)offset);
    if (p == MAP_FAILED) {
        return -errno;
    }
    inflight_unmap(dev);
    dev->inflight_map = p;
    dev->inflight_size = size;
    dev->inflight_nqueues = nq;
    dev->inflight_queue_size = qs;
    return 0;
}

static int
do_get_config(struct vu_dev *dev, int fd, const struct vu_msg *msg)
{
    uint32_t offset, size;
    uint8_t cfg[VU_CONFIG_MAX] = {0};
    uint8_t out[12 + VU_CONFIG_MAX];

    memcpy(&offset, msg->payload, 4);
    memcpy(&size, msg->payload + 4, 4);
    if (range_exceeds(offset, size, VU_CONFIG_MAX) ||
        msg->size < 12 + size) {
        /* A zero-size reply is the spec's error answer. */
        return send_reply(fd, msg, NULL, 0, -1);
    }
    dev->ops->get_config(dev->opaque, cfg, sizeof(cfg));
    memcpy(out, msg->payload, 12);
    memcpy(out + 12, cfg + offset, size);
    return send_reply(fd, msg, out, 12 + size, -1);
}

static int
do_set_config(struct vu_dev *dev, const struct vu_msg *msg)
{
    uint32_t offset, size;

    memcpy(&offset, msg->payload, 4);
    memcpy(&size, msg->payload + 4, 4);
    if (range_exceeds(offset, size, VU_CONFIG_MAX) ||
        msg->size < 12 + size) {
        return -EINVAL;
    }
    return dev->ops->set_config(dev->opaque, offset, msg->payload + 12,
                                size);
}

/* A ring fd message: index, and the fd unless NOFD. */
static int
do_vring_fd(struct vu_dev *dev, const struct vu_msg *msg, int *fds,
            int nfds)
{
    uint64_t v = payload_u64(msg);
    struct vu_queue *q = msg_queue(dev, v & VU_VRING_IDX_MASK);
    bool nofd = v & VU_VRING_NOFD;
    int fd;
    int *slot;

    if (!q || (v & ~(uint64_t)(VU_VRING_IDX_MASK | VU_VRING_NOFD)) ||
        nfds != (nofd ? 0 : 1)) {
        vu_log(dev, "ring fd message with a bad index, flags or fd count");
        return -EINVAL;
    }
    fd = nofd ? -1 : fds[0];
    fds[0] = -1;
    if (msg->request == VU_SET_VRING_KICK) {
        if (fd < 0) {
            vu_log(dev, "queue %u: polling without a kick fd is not "
                   "supported", q->index);
            return -ENOTSUP;
        }
        queue_stop(q);
        close_fd(&q->kick_fd);
        q->kick_fd = fd;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return queue_start(q);
    }
    /* call and err change under the queue lock, so that a completion
     * never writes to a closed (or reused) fd number. */
    slot = msg->request == VU_SET_VRING_CALL ? &q->call_fd : &q->err_fd;
    mutex_lock(&q->lock);
    close_fd(slot);
    *slot = fd;
    mutex_unlock(&q->lock);
    return 0;
}

/*
 * Handle one message.  Returns 0, 1 when the message already sent its
 * reply, or -errno: -EINVAL and friends for a message the front-end
 * should not have sent (the session ends), positive errors are not used.
 */
static int
dispatch(struct vu_dev *dev, int fd, struct vu_msg *msg, int *fds, int nfds)
{
    struct vhost_vring_state st;
    struct vu_queue *q;
    uint64_t v;

    switch (msg->request) {
    case VU_GET_FEATURES:
        v = vu_ring_features | dev->ops->features(dev->opaque);
        return reply_u64(fd, msg, v) < 0 ? -EIO : 1;
    case VU_SET_FEATURES:
        v = payload_u64(msg);
        if (v & ~(vu_ring_features | dev->ops->features(dev->opaque))) {
            vu_log(dev, "SET_FEATURES with features not offered: 0x%" PRIx64,
                   v);
            return -EINVAL;
        }
        for (unsigned i = 0; i < dev->num_queues; i++) {
            if (dev->queues[i].started) {
                vu_log(dev, "SET_FEATURES while queue %u runs", i);
                return -EBUSY;
            }
        }
        dev->features = v;
        dev->ops->set_features(dev->opaque, v);
        return 0;
    case VU_GET_PROTOCOL_FEATURES:
        return reply_u64(fd, msg, vu_protocol_features) < 0 ? -EIO : 1;
    case VU_SET_PROTOCOL_FEATURES:
        v = payload_u64(msg);
        if (v & ~vu_protocol_features) {
            vu_log(dev, "SET_PROTOCOL_FEATURES with features not offered: "
                   "0x%" PRIx64, v);
            return -EINVAL;
        }
        dev->protocol_features = v;
        return 0;
    case VU_SET_OWNER:
        return 0;
    case VU_RESET_OWNER:
    case VU_RESET_DEVICE:
        for (unsigned i = 0; i < dev->num_queues; i++) {
            queue_reset(&dev->queues[i]);
        }
        inflight_unmap(dev);
        dev->status = 0;
        dev->any_broken = false;
        return 0;
    case VU_GET_QUEUE_NUM:
        return reply_u64(fd, msg, dev->num_queues) < 0 ? -EIO : 1;
    case VU_GET_MAX_MEM_SLOTS:
        return reply_u64(fd, msg, VU_MAX_REGIONS) < 0 ? -EIO : 1;
    case VU_SET_MEM_TABLE:
        return do_set_mem_table(dev, msg, fds, nfds);
    case VU_ADD_MEM_REG:
        return do_add_mem_reg(dev, msg, fds[0]);
    case VU_REM_MEM_REG:
        return do_rem_mem_reg(dev, msg);
    case VU_SET_VRING_NUM:
        memcpy(&st, msg->payload, sizeof(st));
        q = msg_queue(dev, st.index);
        if (!q || st.num == 0 || st.num > VU_MAX_QUEUE_SIZE ||
            !is_power_of_2(st.num) || q->started) {
            vu_log(dev, "SET_VRING_NUM %u for queue %u", st.num, st.index);
            return -EINVAL;
        }
        q->num = (uint16_t)st.num;
        return 0;
    case VU_SET_VRING_ADDR: {
        struct vhost_vring_addr a;

        memcpy(&a, msg->payload, sizeof(a));
        q = msg_queue(dev, a.index);
        if (!q || (a.flags & ~(1U << VHOST_VRING_F_LOG))) {
            vu_log(dev, "SET_VRING_ADDR for queue %u, flags 0x%x", a.index,
                   a.flags);
            return -EINVAL;
        }
        if (a.flags) {
            vu_log(dev, "dirty logging (migration) is not supported");
            return -ENOTSUP;
        }
        if (q->started) {
            queue_stop(q);
        }
        q->desc_uva = a.desc_user_addr;
        q->avail_uva = a.avail_user_addr;
        q->used_uva = a.used_user_addr;
        q->addr_set = true;
        return queue_start(q);
    }
    case VU_SET_VRING_BASE:
        memcpy(&st, msg->payload, sizeof(st));
        q = msg_queue(dev, st.index);
        if (!q || st.num > UINT16_MAX || q->started) {
            vu_log(dev, "SET_VRING_BASE %u for queue %u", st.num, st.index);
            return -EINVAL;
        }
        q->base = (uint16_t)st.num;
        return 0;
    case VU_GET_VRING_BASE:
        memcpy(&st, msg->payload, sizeof(st));
        q = msg_queue(dev, st.index);
        if (!q) {
            vu_log(dev, "GET_VRING_BASE for queue %u", st.index);
            return -EINVAL;
        }
        queue_stop(q);
        st.num = q->base;
        close_fd(&q->kick_fd);
        q->enabled = false;
        q->inflight = NULL;
        return send_reply(fd, msg, &st, sizeof(st), -1) < 0 ? -EIO : 1;
    case VU_SET_VRING_KICK:
    case VU_SET_VRING_CALL:
    case VU_SET_VRING_ERR:
        return do_vring_fd(dev, msg, fds, nfds);
    case VU_SET_VRING_ENABLE:
        memcpy(&st, msg->payload, sizeof(st));
        q = msg_queue(dev, st.index);
        if (!q || st.num > 1 ||
            !(dev->features & (1ULL << VU_F_PROTOCOL_FEATURES))) {
            vu_log(dev, "SET_VRING_ENABLE %u for queue %u", st.num,
                   st.index);
            return -EINVAL;
        }
        __atomic_store_n(&q->enabled, st.num == 1, __ATOMIC_RELEASE);
        if (q->started) {
            v = 1;
            if (write(q->wake_fd, &v, 8) < 0) {
                /* Cannot fail below the eventfd maximum. */
            }
        }
        return 0;
    case VU_GET_CONFIG:
        return do_get_config(dev, fd, msg) < 0 ? -EIO : 1;
    case VU_SET_CONFIG:
        return do_set_config(dev, msg);
    case VU_GET_INFLIGHT_FD:
        return do_get_inflight_fd(dev, fd, msg) < 0 ? -EIO : 1;
    case VU_SET_INFLIGHT_FD:
        return do_set_inflight_fd(dev, msg, fds[0]);
    case VU_SET_STATUS:
        dev->status = (uint8_t)payload_u64(msg);
        return 0;
    case VU_GET_STATUS:
        v = dev->status;
        if (__atomic_load_n(&dev->any_broken, __ATOMIC_RELAXED)) {
            v |= VU_STATUS_NEEDS_RESET;
        }
        return reply_u64(fd, msg, v) < 0 ? -EIO : 1;
    }
    return -EINVAL;
}

int
vu_dev_handle_one(struct vu_dev *dev, int fd)
{
    struct vu_msg *msg = malloc(sizeof(*msg));
    int fds[VU_MAX_FDS];
    int nfds = 0, want_fds, ret;
    uint32_t min_size;

    if (!msg) {
        return -1;
    }
    if (recv_msg(dev, fd, msg, fds, &nfds) < 0) {
        ret = -1;
        goto out;
    }
    if (!msg_shape(msg->request, &min_size, &want_fds)) {
        vu_log(dev, "unknown or unsupported request %u", msg->request);
        ret = -1;
        goto out;
    }
    if (msg->size < min_size) {
        vu_log(dev, "request %u with %u bytes of payload (needs %u)",
               msg->request, msg->size, min_size);
        ret = -1;
        goto out;
    }
    if ((want_fds >= 0 && nfds != want_fds) ||
        (want_fds == -1 && nfds > 1)) {
        vu_log(dev, "request %u with %d fds", msg->request, nfds);
        ret = -1;
        goto out;
    }
    if (getenv("LOCKSTEP_VHOST_DEBUG")) {
        vu_log(dev, "request %u flags 0x%x size %u fds %d", msg->request,
               msg->flags, msg->size, nfds);
    }
    ret = dispatch(dev, fd, msg, fds, nfds);
    if (ret == 0 && (msg->flags & VU_FLAG_NEED_REPLY) &&
        (dev->protocol_features & (1ULL << VU_PF_REPLY_ACK))) {
        ret = reply_u64(fd, msg, 0) < 0 ? -1 : 0;
    }
    if (ret < 0 && ret != -1 && (msg->flags & VU_FLAG_NEED_REPLY) &&
        (dev->protocol_features & (1ULL << VU_PF_REPLY_ACK))) {
        reply_u64(fd, msg, 1);
    }
    ret = ret < 0 ? -1 : 0;
out:
    /* fds a handler kept were set to -1 (kick/call/err) or dup'ed by
     * mmap (regions, inflight): close what is left. */
    for (int i = 0; i < nfds; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    free(msg);
    return ret;
}

/* ---- Devices and the control thread ----------------------------------- */

static void
dev_init(struct vu_dev *dev, unsigned num_queues,
         const struct vu_device_ops *ops, void *opaque, const char *name)
{
    dev->name = xstrdup(name);
    dev->ops = ops;
    dev->opaque = opaque;
    dev->num_queues = MIN(num_queues, (unsigned)VU_MAX_QUEUES);
    dev->listen_fd = -1;
    dev->conn_fd = -1;
    dev->poll = poll_tuning_default;
    lock_init(&dev->conn_lock, LOCK_VU_CONN);
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        struct vu_queue *q = &dev->queues[i];

        q->dev = dev;
        q->index = i;
        q->kick_fd = q->call_fd = q->err_fd = -1;
        q->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->wake_fd < 0) {
            abort();     /* out of fds at creation: nothing sane to do */
        }
        lock_init(&q->lock, LOCK_VU_QUEUE);
        cond_init(&q->role_cond);
    }
}

static void
serve_session(struct vu_dev *dev, int fd)
{
    while (vu_dev_handle_one(dev, fd) == 0) {
    }
    session_reset(dev);
}

static void *
control_thread(void *opaque)
{
    struct vu_dev *dev = opaque;

    for (;;) {
        int fd = accept4(dev->listen_fd, NULL, NULL, SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            break;       /* shut down (export deletion) */
        }
        mutex_lock(&dev->conn_lock);
        if (dev->quit) {
            mutex_unlock(&dev->conn_lock);
            close(fd);
            break;
        }
        dev->conn_fd = fd;
        mutex_unlock(&dev->conn_lock);

        serve_session(dev, fd);

        mutex_lock(&dev->conn_lock);
        dev->conn_fd = -1;
        mutex_unlock(&dev->conn_lock);
        close(fd);
    }
    return NULL;
}

struct vu_dev *
vu_dev_new(int listen_fd, unsigned num_queues,
           const struct vu_device_ops *ops, void *opaque, const char *name,
           const struct poll_tuning *poll)
{
    struct vu_dev *dev = xzalloc(sizeof(*dev));

    dev_init(dev, num_queues, ops, opaque, name);
    if (poll) {
        dev->poll = *poll;
    }
    dev->listen_fd = listen_fd;
    thread_create(&dev->thread, "vhost-ctl", control_thread, dev);
    dev->has_thread = true;
    return dev;
}

/* Has the queue nothing left to do for now? */
static bool
queue_settled(struct vu_queue *q)
{
    bool idle;

    if (!q->started || !__atomic_load_n(&q->enabled, __ATOMIC_ACQUIRE)) {
        return true;
    }
    mutex_lock(&q->lock);
    idle = q->broken || q->stop ||
           (q->running == 0 && q->resubmit_pos >= q->nresubmit &&
            avail_idx(q) == __atomic_load_n(&q->last_avail,
                                            __ATOMIC_ACQUIRE));
    mutex_unlock(&q->lock);
    return idle;
}

void
vu_dev_settle(struct vu_dev *dev)
{
    for (int tries = 0; tries < 1000; tries++) {
        bool all = true;

        for (unsigned i = 0; i < dev->num_queues && all; i++) {
            all = queue_settled(&dev->queues[i]);
        }
        if (all) {
            return;
        }
        sleep_ns(1000 * 1000);
    }
}

struct vu_dev *
vu_dev_new_detached(unsigned num_queues, const struct vu_device_ops *ops,
                    void *opaque)
{
    struct vu_dev *dev = xzalloc(sizeof(*dev));

    dev_init(dev, num_queues, ops, opaque, "fuzz");
    return dev;
}

bool
vu_dev_connected(struct vu_dev *dev)
{
    SCOPED_LOCK(&dev->conn_lock);
    return dev->conn_fd >= 0;
}

void
vu_dev_free(struct vu_dev *dev)
{
    if (dev->has_thread) {
        mutex_lock(&dev->conn_lock);
        dev->quit = true;
        shutdown(dev->listen_fd, SHUT_RDWR);
        if (dev->conn_fd >= 0) {
            shutdown(dev->conn_fd, SHUT_RDWR);
        }
        mutex_unlock(&dev->conn_lock);
        thread_join(dev->thread);
    } else {
        session_reset(dev);
    }
    if (dev->listen_fd >= 0) {
        close(dev->listen_fd);
    }
    for (unsigned i = 0; i < VU_MAX_QUEUES; i++) {
        close(dev->queues[i].wake_fd);
        mutex_destroy(&dev->queues[i].lock);
        cond_destroy(&dev->queues[i].role_cond);
    }
    mutex_destroy(&dev->conn_lock);
    free(dev->name);
    free(dev);
}
