/* SPDX-License-Identifier: MIT */
/*
 * Ranked locks: a mutex that knows its place in the lock order.
 *
 * LOCK_ORDER below IS the lock order of docs/architecture.md ("Lock
 * order"): one row per lock of that section's table, in the same order
 * (tests/func/test_layering.py compares the two).  A lock's rank is its
 * row: take locks only in increasing rank.  Within a level the table's
 * order is the order in which two locks of that level may nest.
 *
 * With the meson option lock_debug (on by default, off in the bench
 * build) every thread keeps the ranks it holds, and taking a lock whose
 * rank is not above all of them aborts with a message naming both locks:
 * every path the test suite runs is checked.  Two locks of one rank (two
 * nodes' req_lock) never nest, so that is refused too.  Without the
 * option a ranked lock costs what a plain mutex_lock() did.
 *
 * util.h's mutex_lock(), mutex_unlock(), mutex_lock_may_block(),
 * cond_wait(), cond_timedwait_ns(), mutex_destroy() and SCOPED_LOCK()
 * take either a struct lock * or a plain pthread_mutex_t *, so converting
 * a lock changes its declaration and its initialisation only.
 */
#ifndef LOCKSTEP_LOCK_H
#define LOCKSTEP_LOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* X(id, level, nesting, name in the doc's table, file that declares it).
 * nesting NO: two locks of the row never nest.  DOWN: a node's lock may
 * be taken under the same lock of a node above it (qcow2 reads its
 * backing chain's status under its metadata lock); the graph has no
 * cycles, so the order is the graph's. */
#define LOCK_ORDER(X)                                                       \
    X(GRAPH,          1, NO,   "graph_lock",    "block/core/node.c")         \
    X(NBDSRV_EXPORTS, 2, NO,   "g_nbdsrv_lock", "nbd/export.c")              \
    X(NBDSRV_WRITE,   2, NO,   "write_lock",    "nbd/server.c")              \
    X(JOB,            2, NO,   "g_job_lock",    "job/job.c")                 \
    X(BACKUP_PASS,    2, NO,   "lock",          "job/backup.c")              \
    X(VU_CONN,        2, NO,   "conn_lock",     "export/vhost-user.c")       \
    X(FUSE_RESIZE,    3, NO,   "resize_lock",   "export/fuse.c")             \
    X(CBW,            3, NO,   "lock",          "block/filter/copy-before-write.c") \
    X(BLOCK_COPY,     3, NO,   "lock",          "block/copy/block-copy.c")   \
    X(COR_COPY,       3, NO,   "copy_lock",     "block/filter/copy-on-read.c") \
    X(QCOW2_META,     3, DOWN, "lock",          "block/format/qcow2/qcow2-int.h") \
    X(QCOW2_RELEASE,  3, NO,   "lock",          "block/format/qcow2/qcow2-int.h") \
    X(NBDCLI_CONN,    3, NO,   "lock",          "block/protocol/nbd.c")      \
    X(NBDCLI_WAITER,  3, NO,   "lock",          "block/protocol/nbd.c")      \
    X(QUORUM_HELPER,  3, NO,   "g_helper_lock", "block/filter/quorum.c")     \
    X(NODE_SERIAL,    4, NO,   "serial_lock",   "include/lockstep/block.h")  \
    X(NODE_REQ,       5, NO,   "req_lock",      "include/lockstep/block.h")  \
    X(NODE_BITMAP,    5, NO,   "bitmap_lock",   "include/lockstep/block.h")  \
    X(BLKDEBUG,       5, NO,   "lock",          "block/filter/blkdebug.c")   \
    X(BACKUP_RL,      5, NO,   "rl_lock",       "job/backup.c")              \
    X(FUSE_READER,    5, NO,   "lock",          "export/fuse.c")             \
    X(FUSE_ATTR,      5, NO,   "attr_lock",     "export/fuse.c")             \
    X(NBDSRV_CONN,    5, NO,   "lock",          "nbd/server.c")              \
    X(VU_QUEUE,       5, NO,   "lock",          "export/vhost-user.c")       \
    X(NBD_POOL,       5, NO,   "lock",          "nbd/pool.c")                \
    X(NBDSRV_WAIT,    5, NO,   "lock",          "nbd/server.c")              \
    X(BACKUP_CURSOR,  5, NO,   "lock",          "tools/lockstep-backup/copy.c") \
    X(IO_AIO,         5, NO,   "lock",          "tools/lockstep-io/io-aio.c") \
    X(EVENT_QUEUE,    5, NO,   "lock",          "runtime/event.h")           \
    X(LOOP_CALLS,     5, NO,   "g_msg_lock",    "runtime/loop.c")            \
    X(MONITOR_EVENTS, 5, NO,   "g_events_lock", "qmp/monitor.c")             \
    X(TLS_CREDS,      5, NO,   "g_creds_lock",  "crypto/tls-creds.c")        \
    X(AUTHZ,          5, NO,   "g_authz_lock",  "crypto/authz.c")

enum lock_rank {
#define LOCK_RANK_ENUM(id, level, nesting, name, file) LOCK_##id,
    LOCK_ORDER(LOCK_RANK_ENUM)
#undef LOCK_RANK_ENUM
    LOCK_RANK_COUNT
};

struct lock {
    pthread_mutex_t m;
    enum lock_rank rank;
};

#define LOCK_INITIALIZER(id) { PTHREAD_MUTEX_INITIALIZER, LOCK_##id }

void lock_init(struct lock *l, enum lock_rank rank);
void lock_destroy(struct lock *l);
void lock_acquire(struct lock *l);
void lock_release(struct lock *l);
/* lock_acquire() for a lock whose holder may sleep on I/O: waiting for
 * it gives a blocking hint first (util.h's thread_may_block()). */
void lock_acquire_may_block(struct lock *l);
void lock_cond_wait(pthread_cond_t *c, struct lock *l);
bool lock_cond_timedwait_ns(pthread_cond_t *c, struct lock *l,
                            int64_t deadline);

/* For a lock that is not a struct lock (the graph's rwlock): note that
 * this thread is about to take it / has dropped it. */
void lock_order_enter(enum lock_rank rank);
void lock_order_leave(enum lock_rank rank);

/* The lock's name for messages:
 * "JOB: g_job_lock (job/job.c, level 2)". */
const char *lock_rank_name(enum lock_rank rank);
/* True when this build checks the order (meson -Dlock_debug=true). */
bool lock_order_checked(void);

#endif
