/* SPDX-License-Identifier: MIT */
/*
 * The main loop: poll() over file descriptors with callbacks, one-shot
 * timers, signals delivered through a signalfd, and a thread-safe queue of
 * calls (loop_call) that any thread may post and the main thread runs,
 * woken by an eventfd.
 *
 * Threads: the main thread is the process's initial thread, the one that
 * runs main().  It alone owns control state (the graph, jobs, exports,
 * the monitors) and runs the loop: loop_init() and loop_run() are called
 * there.  Every function here except loop_call(), loop_quit() and
 * loop_is_main_thread() is main thread only; callbacks all run on the
 * main thread.
 */
#ifndef LOCKSTEP_RUNTIME_LOOP_H
#define LOCKSTEP_RUNTIME_LOOP_H

#include <assert.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>

struct loop_watch;
struct loop_timer;

typedef void loop_fd_fn(int fd, short revents, void *opaque);
typedef void loop_call_fn(void *opaque);
typedef void loop_signal_fn(int signo, void *opaque);

/*
 * Set up the loop and make the calling thread the main thread.  Blocks the
 * signals later given to loop_add_signal() in this thread (so threads
 * created afterwards inherit the mask): call it before creating threads.
 * Returns 0 or -errno.
 */
int loop_init(void);
/* Free what loop_init() allocated (after loop_run() returned). */
void loop_fini(void);
/*
 * True on the main thread, in every program (the daemon, the tools, the
 * tests), whether it runs the loop or not.  A process forks only before
 * it starts threads (--daemonize), so the answer is cached per thread.
 */
bool loop_is_main_thread(void);
/*
 * The first line of a function that only the main thread may run (QEMU's
 * GLOBAL_STATE_CODE()): graph changes, opening and closing nodes,
 * drained sections, job state changes, exports, QMP handlers.
 */
#define assert_main_thread() assert(loop_is_main_thread())

/* Watch fd for events (POLLIN, POLLOUT).  The watch may be removed or its
 * events changed from any callback, including its own. */
struct loop_watch *loop_add_fd(int fd, short events, loop_fd_fn *fn,
                               void *opaque);
void loop_watch_set_events(struct loop_watch *w, short events);
void loop_remove_fd(struct loop_watch *w);

/* Run fn once after delay_ns.  loop_timer_del() cancels a pending timer;
 * a timer is freed by the loop after it fired. */
struct loop_timer *loop_timer_add(int64_t delay_ns, loop_call_fn *fn,
                                  void *opaque);
void loop_timer_del(struct loop_timer *t);

/*
 * Call fn(opaque) on the main thread, in posting order.  Any thread;
 * never blocks for long (one short lock).  Safe before loop_init() only
 * in the sense that calls wait in the queue until the loop runs.
 */
void loop_call(loop_call_fn *fn, void *opaque);
/*
 * Run the queued call fn(opaque) now, out of turn, if it is still queued;
 * true when it ran.  For a main-thread wait that needs that one call (a
 * job's completion) but must not run the rest of the queue, which may
 * hold work that is unsafe to nest inside a command (another client's
 * commands).  Main thread.
 */
bool loop_call_run_now(loop_call_fn *fn, void *opaque);

/* Deliver signo to fn on the main thread (through a signalfd). */
int loop_add_signal(int signo, loop_signal_fn *fn, void *opaque);

/* Run until loop_quit() (which is final: once called, loop_run() returns
 * at once).  Returns after the current iteration. */
void loop_run(void);
/* Make loop_run() return.  Any thread. */
void loop_quit(void);
/* One iteration, waiting at most timeout_ms (-1: forever).  For tests. */
void loop_iterate(int timeout_ms);

#endif
