/* SPDX-License-Identifier: MIT */
/*
 * Errors on the control path.
 *
 * Functions on the control path (open, create, QMP handlers, job setup) take
 * a last parameter "struct err **errp".  On failure they set *errp exactly
 * once (when errp is not NULL) and return false, NULL or -errno; on success
 * they leave it alone.  Only the final consumer reports the message: the QMP
 * dispatcher turns it into {"error": {"class", "desc"}}, a tool prints it.
 *
 * The data path never uses this: I/O returns -errno.
 */
#ifndef LOCKSTEP_ERR_H
#define LOCKSTEP_ERR_H

#include <stdarg.h>
#include <stdbool.h>

/* QMP error classes that compatibility needs (QEMU's ErrorClass). */
enum err_class {
    ERR_CLASS_GENERIC,            /* GenericError */
    ERR_CLASS_COMMAND_NOT_FOUND,  /* CommandNotFound */
    ERR_CLASS_DEVICE_NOT_FOUND,   /* DeviceNotFound */
    ERR_CLASS_DEVICE_NOT_ACTIVE,  /* DeviceNotActive */
};

struct err {
    enum err_class cls;
    int errnum;        /* positive errno behind the error, or 0 */
    char *msg;         /* one phrase, no trailing period or newline */
};

#define ERR_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Set *errp to a new error; does nothing when errp is NULL. */
void err_setf(struct err **errp, const char *fmt, ...) ERR_PRINTF(2, 3);
/* The same, with ": strerror(errnum)" appended and errnum recorded. */
void err_setf_errno(struct err **errp, int errnum, const char *fmt, ...)
    ERR_PRINTF(3, 4);
void err_setf_class(struct err **errp, enum err_class cls,
                    const char *fmt, ...) ERR_PRINTF(3, 4);
/* Put "prefix" in front of an already set error (no-op if errp is NULL). */
void err_prepend(struct err **errp, const char *fmt, ...) ERR_PRINTF(2, 3);
/* Move src into *dst (or free it when dst is NULL). */
void err_propagate(struct err **dst, struct err *src);
void err_free(struct err *e);
/* Print "prog: message" to stderr and free it. */
void err_report(const char *prog, struct err *e);
const char *err_class_name(enum err_class cls);

#endif
