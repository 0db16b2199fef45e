/* SPDX-License-Identifier: MIT */
/*
 * Ranked locks and the lock-order check (design in lock.h).
 *
 * Checked builds keep, per thread, the ranks of the locks it holds (a
 * small array: nesting is a few levels deep).  Locks are not always
 * released in the reverse order of taking, so a release removes its own
 * entry wherever it is.
 */
#include "lock.h"

#include <stdio.h>
#include <stdlib.h>

#include "util.h"

static const char *const rank_names[LOCK_RANK_COUNT] = {
#define LOCK_RANK_NAME(id, level, nesting, name, file) \
    [LOCK_##id] = #id ": " name " (" file ", level " #level ")",
    LOCK_ORDER(LOCK_RANK_NAME)
#undef LOCK_RANK_NAME
};

const char *
lock_rank_name(enum lock_rank rank)
{
    return rank < LOCK_RANK_COUNT ? rank_names[rank] : "(bad rank)";
}

#ifdef LOCKSTEP_LOCK_DEBUG

#define MAX_HELD 32

enum { NO, DOWN };
static const unsigned char rank_nesting[LOCK_RANK_COUNT] = {
#define LOCK_RANK_NESTING(id, level, nesting, name, file) \
    [LOCK_##id] = nesting,
    LOCK_ORDER(LOCK_RANK_NESTING)
#undef LOCK_RANK_NESTING
};

static __thread enum lock_rank held[MAX_HELD];
static __thread int n_held;

static void __attribute__((noreturn))
order_violation(const char *what, enum lock_rank taking, enum lock_rank held_rank)
{
    fprintf(stderr,
            "lockstep: lock order violation: %s %s while holding %s "
            "(docs/architecture.md, \"Lock order\")\n",
            what, lock_rank_name(taking), lock_rank_name(held_rank));
    abort();
}

void
lock_order_enter(enum lock_rank rank)
{
    for (int i = 0; i < n_held; i++) {
        if (held[i] > rank ||
            (held[i] == rank && rank_nesting[rank] != DOWN)) {
            order_violation("taking", rank, held[i]);
        }
    }
    if (n_held == MAX_HELD) {
        fprintf(stderr, "lockstep: more than %d locks held by one thread\n",
                MAX_HELD);
        abort();
    }
    held[n_held++] = rank;
}

void
lock_order_leave(enum lock_rank rank)
{
    for (int i = n_held - 1; i >= 0; i--) {
        if (held[i] == rank) {
            held[i] = held[--n_held];
            return;
        }
    }
    fprintf(stderr, "lockstep: releasing %s, which this thread does not "
            "hold\n", lock_rank_name(rank));
    abort();
}

/* A condition wait drops the lock and takes it again: nothing above it
 * may be held meanwhile. */
static void
check_wait(enum lock_rank rank)
{
    for (int i = 0; i < n_held; i++) {
        if (held[i] > rank) {
            order_violation("waiting on", rank, held[i]);
        }
    }
}

bool
lock_order_checked(void)
{
    return true;
}

#else

void lock_order_enter(enum lock_rank rank) { (void)rank; }
void lock_order_leave(enum lock_rank rank) { (void)rank; }
static inline void check_wait(enum lock_rank rank) { (void)rank; }

bool
lock_order_checked(void)
{
    return false;
}

#endif

void
lock_init(struct lock *l, enum lock_rank rank)
{
    (mutex_init)(&l->m);
    l->rank = rank;
}

void
lock_destroy(struct lock *l)
{
    (mutex_destroy)(&l->m);
}

void
lock_acquire(struct lock *l)
{
#ifdef LOCKSTEP_LOCK_DEBUG
    lock_order_enter(l->rank);
#endif
    (mutex_lock)(&l->m);
}

void
lock_release(struct lock *l)
{
#ifdef LOCKSTEP_LOCK_DEBUG
    lock_order_leave(l->rank);
#endif
    (mutex_unlock)(&l->m);
}

void
lock_acquire_may_block(struct lock *l)
{
#ifdef LOCKSTEP_LOCK_DEBUG
    lock_order_enter(l->rank);
#endif
    (mutex_lock_may_block)(&l->m);
}

void
lock_cond_wait(pthread_cond_t *c, struct lock *l)
{
    check_wait(l->rank);
    (cond_wait)(c, &l->m);
}

bool
lock_cond_timedwait_ns(pthread_cond_t *c, struct lock *l, int64_t deadline)
{
    check_wait(l->rank);
    return (cond_timedwait_ns)(c, &l->m, deadline);
}
