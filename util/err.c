/* SPDX-License-Identifier: MIT */
/* Error objects for the control path; see include/lockstep/err.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lockstep/err.h"
#include "util.h"

static void
err_set_va(struct err **errp, enum err_class cls, int errnum,
           const char *fmt, va_list ap)
{
    struct err *e;
    char *msg;

    if (!errp) {
        return;
    }
    /* Setting an error twice is a programmer error (QEMU's error.h rule). */
    assert(*errp == NULL);
    msg = xvasprintf(fmt, ap);
    if (errnum) {
        char *full = xasprintf("%s: %s", msg, strerror(errnum));
        free(msg);
        msg = full;
    }
    e = xmalloc(sizeof(*e));
    e->cls = cls;
    e->errnum = errnum;
    e->msg = msg;
    *errp = e;
}

void
err_setf(struct err **errp, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_set_va(errp, ERR_CLASS_GENERIC, 0, fmt, ap);
    va_end(ap);
}

void
err_setf_errno(struct err **errp, int errnum, const char *fmt, ...)
{
    va_list ap;

    if (errnum < 0) {
        errnum = -errnum;
    }
    va_start(ap, fmt);
    err_set_va(errp, ERR_CLASS_GENERIC, errnum, fmt, ap);
    va_end(ap);
}

void
err_setf_class(struct err **errp, enum err_class cls, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    err_set_va(errp, cls, 0, fmt, ap);
    va_end(ap);
}

void
err_prepend(struct err **errp, const char *fmt, ...)
{
    va_list ap;
    char *prefix, *msg;

    if (!errp || !*errp) {
        return;
    }
    va_start(ap, fmt);
    prefix = xvasprintf(fmt, ap);
    va_end(ap);
    msg = xasprintf("%s%s", prefix, (*errp)->msg);
    free(prefix);
    free((*errp)->msg);
    (*errp)->msg = msg;
}

void
err_propagate(struct err **dst, struct err *src)
{
    if (!src) {
        return;
    }
    if (dst && !*dst) {
        *dst = src;
    } else {
        err_free(src);
    }
}

void
err_free(struct err *e)
{
    if (e) {
        free(e->msg);
        free(e);
    }
}

void
err_report(const char *prog, struct err *e)
{
    if (e) {
        fprintf(stderr, "%s: %s\n", prog, e->msg);
        err_free(e);
    }
}

const char *
err_class_name(enum err_class cls)
{
    switch (cls) {
    case ERR_CLASS_COMMAND_NOT_FOUND:
        return "CommandNotFound";
    case ERR_CLASS_DEVICE_NOT_FOUND:
        return "DeviceNotFound";
    case ERR_CLASS_DEVICE_NOT_ACTIVE:
        return "DeviceNotActive";
    case ERR_CLASS_GENERIC:
    default:
        return "GenericError";
    }
}
