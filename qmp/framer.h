/* SPDX-License-Identifier: MIT */
/*
 * QMP message framing: cut a client's byte stream into top-level JSON
 * values without parsing them.  The scanner tracks brace/bracket depth
 * outside strings (and escapes inside them), so it knows where each value
 * ends; only a complete value is handed on, and a broken one costs one
 * error, never the stream.  Top-level scalars end at the next delimiter; a
 * stray closing brace is an error on its own.  A value longer than
 * QMP_MAX_REQUEST bytes or nested deeper than QMP_MAX_NESTING is not
 * buffered: the scanner skips to its end and reports one error.
 *
 * No I/O and no global state: the monitor feeds it what it reads, and the
 * QMP fuzz target feeds it arbitrary bytes.  One framer per stream, used
 * by one thread.
 */
#ifndef LOCKSTEP_QMP_FRAMER_H
#define LOCKSTEP_QMP_FRAMER_H

#include <stdbool.h>
#include <stddef.h>

enum qmp_scan_kind {
    QMP_SCAN_IDLE,          /* between values */
    QMP_SCAN_NESTED,        /* inside { } or [ ] */
    QMP_SCAN_STRING,        /* a top-level string */
    QMP_SCAN_BARE,          /* a top-level number/true/false/null/garbage */
};

struct qmp_framer {
    char *buf;              /* the current value so far: buf[0..len) */
    size_t len, cap;
    enum qmp_scan_kind kind;
    int depth;
    bool in_str, esc;
    bool skipping;          /* too large or too deep: not buffered */
    const char *skip_msg;
};

/*
 * Called for each complete value (text, len; not NUL-terminated) or, with
 * text NULL, for a framing error (error: the message after "JSON parse
 * error, " or the whole limit message, see qmp_framer_feed).  Returns
 * false to stop feeding (the client went away).
 */
typedef bool qmp_frame_fn(void *opaque, const char *text, size_t len,
                          const char *error);

/*
 * Feed n bytes; returns how many were used: n, or fewer when fn asked to
 * stop (the rest is the caller's to feed again later).  Errors passed to
 * fn: "expecting value" (a stray closing brace or bracket; the monitor
 * prefixes "JSON parse error, "), "JSON token size limit exceeded", "JSON
 * nesting depth limit exceeded".
 */
size_t qmp_framer_feed(struct qmp_framer *f, const char *data, size_t n,
                       qmp_frame_fn *fn, void *opaque);
void qmp_framer_free(struct qmp_framer *f);

#endif
