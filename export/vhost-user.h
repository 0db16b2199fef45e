/* SPDX-License-Identifier: MIT */
/*
 * The back-end side of the vhost-user protocol (QEMU's
 * docs/interop/vhost-user.rst) for one device: the listening socket, the
 * session with one front-end (a VMM) at a time, its messages, the guest
 * memory table, split virtqueues with their kick/call eventfds and the
 * inflight-tracking buffer.  The device (virtio-blk, vhost-user-blk.c)
 * plugs in through struct vu_device_ops: it offers feature bits and a
 * config space, and runs the requests the queues pop.
 *
 * Nothing the front-end sends is trusted: every guest address is
 * translated through the memory table with bounds checks, descriptor
 * chains are bounded by the queue size, message sizes and fds are checked
 * per message type.  A broken message drops the connection; a broken
 * virtqueue stops that queue and the device reports NEEDS_RESET (through
 * GET_STATUS and the queue's error eventfd).
 *
 * Threads: one control thread per device accepts a front-end and handles
 * its messages, one session at a time.  Each started queue has a small
 * pool of threads sharing a poller role, as the NBD server's reader role
 * (docs/architecture.md): the holder pops a request and runs it itself,
 * and hands the role to an idle thread only when the request is about to
 * block (thread_may_block() in util.h).  The requests it runs in one go
 * are signalled to the driver with one call when the batch ends.  Before
 * sleeping on the kick eventfd the holder busy-polls the ring briefly.
 */
#ifndef LOCKSTEP_EXPORT_VHOST_USER_H
#define LOCKSTEP_EXPORT_VHOST_USER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <linux/virtio_ring.h>

#include "lockstep/err.h"

struct poll_tuning;                /* util.h */

#define VU_MAX_REGIONS      8
#define VU_MAX_QUEUES       16
#define VU_MAX_QUEUE_SIZE   1024
/* The most iovec pieces one request may map to (a descriptor crossing
 * a region boundary takes two or more). */
#define VU_MAX_IOV          (2 * VU_MAX_QUEUE_SIZE)

struct vu_dev;
struct vu_queue;

/* ---- Guest memory ------------------------------------------------------- */

struct vu_region {
    uint64_t gpa;            /* guest physical address */
    uint64_t size;
    uint64_t uva;            /* the front-end's virtual address */
    uint8_t *host;           /* our mapping of gpa */
    void *map;               /* what mmap returned (includes mmap_offset) */
    size_t map_len;
};

struct vu_mem {
    unsigned nregions;
    struct vu_region regions[VU_MAX_REGIONS];
};

/*
 * Translate [gpa, gpa + len) into at most max host pieces appended to
 * iov (starting at *niov); pieces adjacent in our address space are
 * merged.  -EFAULT when any byte is outside the regions, -E2BIG when more
 * than max pieces would be needed.
 */
int vu_gpa_to_iov(const struct vu_mem *mem, uint64_t gpa, uint64_t len,
                  struct iovec *iov, unsigned *niov, unsigned max);
/* A host pointer to [uva, uva + len) when it lies inside one region,
 * else NULL. */
void *vu_uva_to_host(const struct vu_mem *mem, uint64_t uva, uint64_t len);
/* A host pointer to [gpa, gpa + len) when it lies inside one region. */
void *vu_gpa_to_host(const struct vu_mem *mem, uint64_t gpa, uint64_t len);

/* ---- Descriptor chains --------------------------------------------------- */

/* One request's buffers: out (device-readable) pieces first, then in
 * (device-writable) pieces. */
struct vu_chain {
    struct iovec iov[VU_MAX_IOV];
    unsigned nout, nin;
};

/*
 * Walk the chain that starts at head in the descriptor table desc of a
 * queue of num entries (desc is guest memory: every field is read once).
 * Follows NEXT and one level of INDIRECT; refuses (-EINVAL) a head out of
 * range, a loop or a chain longer than num (or than an indirect table),
 * nested indirect tables, INDIRECT with NEXT, a device-readable buffer
 * after a device-writable one, and (-EFAULT) any buffer outside guest
 * memory.  Pure: no state besides out.
 */
int vu_walk_chain(const struct vu_mem *mem, const struct vring_desc *desc,
                  uint16_t num, uint16_t head, bool indirect_ok,
                  struct vu_chain *out);

/* ---- Requests ------------------------------------------------------------ */

struct vu_turn;

struct vu_req {
    struct vu_queue *q;
    uint16_t head;
    struct vu_turn *turn;        /* the poller's batch it runs in */
    struct vu_chain chain;
};

/* Return the request to the driver with len bytes written into its in
 * buffers, and notify it when it wants that: at once when the request
 * completes after its thread passed the poller role on, else when the
 * poller's batch ends (the ring is empty, the poller is about to block,
 * or VU_NOTIFY_BATCH requests completed).  On the thread that ran it. */
void vu_req_complete(struct vu_req *req, uint32_t len);
/* The request is malformed (no room for a status, a header too short):
 * the device is broken and needs a reset; the request is not returned.
 * Any thread. */
void vu_req_fail(struct vu_req *req, const char *why);

/* ---- Devices ------------------------------------------------------------- */

struct vu_device_ops {
    /* Virtio feature bits the device offers (the protocol adds
     * VERSION_1, INDIRECT_DESC, EVENT_IDX and PROTOCOL_FEATURES). */
    uint64_t (*features)(void *opaque);
    /* Fill cfg (size bytes, zeroed) with the config space as it is now. */
    void (*get_config)(void *opaque, uint8_t *cfg, size_t size);
    /* The driver writes config bytes [offset, offset + size); -EINVAL for
     * a read-only field. */
    int (*set_config)(void *opaque, uint32_t offset, const uint8_t *data,
                      uint32_t size);
    /* Features the driver accepted (SET_FEATURES); control thread, while
     * no queue runs. */
    void (*set_features)(void *opaque, uint64_t features);
    /* Run a request popped from a queue: on a queue thread, which may
     * block; must end with vu_req_complete(). */
    void (*run)(void *opaque, struct vu_req *req);
};

/*
 * A device served on a listening socket: listen_fd is taken over (closed
 * by vu_dev_free).  num_queues is what GET_QUEUE_NUM reports; poll
 * tunes the queues' busy-polling (NULL: poll_tuning_default).  Starts
 * the control thread.  Main thread.
 */
struct vu_dev *vu_dev_new(int listen_fd, unsigned num_queues,
                          const struct vu_device_ops *ops, void *opaque,
                          const char *name, const struct poll_tuning *poll);
/* Is a front-end connected now?  Any thread. */
bool vu_dev_connected(struct vu_dev *dev);
/* Disconnect the front-end (its queued requests finish first), stop the
 * control thread, free.  Main thread. */
void vu_dev_free(struct vu_dev *dev);

/*
 * Handle one message as the session would, for the fuzzer: fd is the
 * session's socket or any fd the message is read from (a file gives no
 * ancillary fds).  Returns 0, or -1 when the session would end.
 */
int vu_dev_handle_one(struct vu_dev *dev, int fd);
/* Wait (at most a second) until every running queue has taken all the
 * requests the driver made available and finished them: the fuzzer runs
 * one message at a time and wants the queues' work to happen in
 * between. */
void vu_dev_settle(struct vu_dev *dev);
/* A device without socket or thread, for the fuzzer; free with
 * vu_dev_free. */
struct vu_dev *vu_dev_new_detached(unsigned num_queues,
                                   const struct vu_device_ops *ops,
                                   void *opaque);

#endif
