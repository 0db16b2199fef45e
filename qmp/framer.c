/* SPDX-License-Identifier: MIT */
/* QMP message framing; see framer.h. */
#include <stdlib.h>

#include "qmp/framer.h"
#include "qmp/monitor.h"
#include "util.h"

static void
buf_append(struct qmp_framer *f, char c)
{
    if (f->skipping) {
        return;
    }
    if (f->len + 1 > QMP_MAX_REQUEST) {
        f->skipping = true;
        f->skip_msg = "JSON token size limit exceeded";
        f->len = 0;
        return;
    }
    if (f->len + 1 > f->cap) {
        f->cap = MAX(f->cap * 2, 4096);
        f->buf = xrealloc(f->buf, f->cap);
    }
    f->buf[f->len++] = c;
}

static bool
value_done(struct qmp_framer *f, qmp_frame_fn *fn, void *opaque)
{
    bool go_on = f->skipping ? fn(opaque, NULL, 0, f->skip_msg)
                             : fn(opaque, f->buf, f->len, NULL);

    f->kind = QMP_SCAN_IDLE;
    f->len = 0;
    f->depth = 0;
    f->in_str = f->esc = false;
    f->skipping = false;
    return go_on;
}

static bool
is_delim(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '{' ||
           c == '}' || c == '[' || c == ']' || c == '"' || c == ',' ||
           c == ':';
}

/* One byte between values: start one, or report a stray closer. */
static bool
scan_idle(struct qmp_framer *f, char c, qmp_frame_fn *fn, void *opaque)
{
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        return true;
    }
    if (c == '}' || c == ']') {
        return fn(opaque, NULL, 0, "expecting value");
    }
    f->kind = c == '{' || c == '[' ? QMP_SCAN_NESTED :
              c == '"' ? QMP_SCAN_STRING : QMP_SCAN_BARE;
    f->depth = f->kind == QMP_SCAN_NESTED;
    buf_append(f, c);
    return true;
}

/* One byte inside { } or [ ]. */
static bool
scan_nested(struct qmp_framer *f, char c, qmp_frame_fn *fn, void *opaque)
{
    buf_append(f, c);
    if (f->in_str) {
        if (f->esc) {
            f->esc = false;
        } else if (c == '\\') {
            f->esc = true;
        } else if (c == '"') {
            f->in_str = false;
        }
    } else if (c == '"') {
        f->in_str = true;
    } else if (c == '{' || c == '[') {
        if (++f->depth > QMP_MAX_NESTING && !f->skipping) {
            f->skipping = true;
            f->skip_msg = "JSON nesting depth limit exceeded";
            f->len = 0;
        }
    } else if (c == '}' || c == ']') {
        if (--f->depth == 0) {
            return value_done(f, fn, opaque);
        }
    }
    return true;
}

size_t
qmp_framer_feed(struct qmp_framer *f, const char *data, size_t n,
                qmp_frame_fn *fn, void *opaque)
{
    bool go_on = true;
    size_t i;

    for (i = 0; i < n && go_on; i++) {
        char c = data[i];

        switch (f->kind) {
        case QMP_SCAN_IDLE:
            go_on = scan_idle(f, c, fn, opaque);
            break;
        case QMP_SCAN_STRING:
            buf_append(f, c);
            if (f->esc) {
                f->esc = false;
            } else if (c == '\\') {
                f->esc = true;
            } else if (c == '"') {
                go_on = value_done(f, fn, opaque);
            }
            break;
        case QMP_SCAN_BARE:
            if (is_delim(c)) {
                go_on = value_done(f, fn, opaque);
                i--;            /* the delimiter starts the next value */
            } else {
                buf_append(f, c);
            }
            break;
        case QMP_SCAN_NESTED:
            go_on = scan_nested(f, c, fn, opaque);
            break;
        }
    }
    /* A bare value's delimiter was put back (i--): it is not used yet. */
    return i;
}

void
qmp_framer_free(struct qmp_framer *f)
{
    free(f->buf);
    f->buf = NULL;
    f->len = f->cap = 0;
}
