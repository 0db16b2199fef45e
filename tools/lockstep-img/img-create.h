/* SPDX-License-Identifier: MIT */
/*
 * Image creation shared by "lockstep-img create" and "convert": the
 * options of one new image (format, size, backing file, the format's own
 * options) and
 * the function that prints the "Formatting ..." line and writes the image.
 */
#ifndef LOCKSTEP_IMG_CREATE_H
#define LOCKSTEP_IMG_CREATE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "lockstep/err.h"

struct img_create {
    const char *filename;
    const char *fmt;             /* "raw" or a format with a create hook */
    uint64_t size;
    bool have_size;
    const char *backing;
    const char *backing_fmt;
    const char *prealloc;        /* NULL: not given */
    const char *opts;            /* -o as given (all of them, joined) */
    char *opts_joined;           /* owns opts when -o came more than once */
    uint64_t extent_size_hint;   /* of the new file; 0: none */
    bool have_extent_size_hint;  /* given: printed, and failures warned */
    json_t *fmt_opts;            /* the format's own -o options, typed
                                  * (driver's create_options); or NULL */
    char *opts_copy;             /* -o split in place; values point here */
};

/* One more -o: like qemu-img, later options add to (and win over) the
 * earlier ones. */
void img_create_add_opts(struct img_create *c, const char *opts);
/* Parse "-o key=value,..." into c (values stay owned by c). */
bool img_create_parse_opts(struct img_create *c, const char *opts,
                           struct err **errp);
/* Can we create images of format fmt?  Else qemu-img's error. */
bool img_create_fmt_ok(const char *fmt, struct err **errp);
/* Check the backing file, print "Formatting ..." unless quiet, create. */
bool img_create_image(struct img_create *c, bool quiet, struct err **errp);
void img_create_free(struct img_create *c);

#endif
