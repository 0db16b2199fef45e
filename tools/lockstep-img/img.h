/* SPDX-License-Identifier: MIT */
/*
 * Shared declarations of lockstep-img, the qemu-img compatible image tool:
 * the subcommand table entries each img-*.c file provides, and the helpers
 * in lockstep-img.c that they all use for opening images, parsing sizes,
 * printing errors ("lockstep-img: FILE: reason", like qemu-img) and
 * showing progress ("    (42.00/100%)").
 */
#ifndef LOCKSTEP_IMG_H
#define LOCKSTEP_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "lockstep/block.h"
#include "lockstep/driver.h"
#include "lockstep/err.h"

/*
 * The name in messages: "lockstep-img", or "qemu-img" when started by
 * that name (a symlink), so that scripts and QEMU's iotests matching
 * "qemu-img:" work unchanged.
 */
extern const char *img_prog;
#define IMG_PROG img_prog
/* Copy and compare granularity: big enough to be fast, small in memory. */
#define IMG_CHUNK (2 * 1024 * 1024ULL)

/* One subcommand.  fn gets argv with argv[0] = the command name. */
struct img_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *synopsis;     /* after "lockstep-img " */
    const char *help;         /* option lines for "COMMAND --help" */
};

int img_cmd_amend(int argc, char **argv);
int img_cmd_bitmap(int argc, char **argv);
int img_cmd_create(int argc, char **argv);
int img_cmd_dd(int argc, char **argv);
int img_cmd_info(int argc, char **argv);
int img_cmd_check(int argc, char **argv);
int img_cmd_map(int argc, char **argv);
int img_cmd_measure(int argc, char **argv);
int img_cmd_compare(int argc, char **argv);
int img_cmd_commit(int argc, char **argv);
int img_cmd_convert(int argc, char **argv);
int img_cmd_rebase(int argc, char **argv);
int img_cmd_resize(int argc, char **argv);
int img_cmd_snapshot(int argc, char **argv);

/* qemu-img's "Snapshot list:" table of a JSON list of snapshots (the keys
 * of query-block's ImageInfo "snapshots"). */
void img_print_snapshots(json_t *list);

/* "lockstep-img: " + message + newline on stderr. */
void img_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print e with the prefix, then free it. */
void img_report(struct err *e);
/* For getopt failures: the "Try ... --help" hint; returns 1. */
int img_usage_error(const char *cmd, const char *msg);
/* Print the help of a command (for -h/--help in its option loop). */
void img_cmd_help(const char *cmd);

/* --output=human|json, with qemu-img's message for anything else; -1 on
 * error (reported). */
int img_parse_output(const char *arg, bool *json);

/* qemu-img's size syntax: digits with an optional k/M/G/T/P/E suffix. */
bool img_parse_size(const char *s, uint64_t *out);

/*
 * An open image: the node (a format over a "file" node) and a handle for
 * I/O.  writable asks for write and resize permission.
 */
struct img {
    struct block_node *node;
    struct block_handle *h;
    char *filename;
    char *fmt;
};

/* -U: read-only opens share everything (the image may be in use). */
extern bool img_force_share;

/*
 * -t CACHE and -T SRC_CACHE (qemu-img's cache modes, see
 * block_opts_set_cache_mode()): the mode of writable opens and of
 * read-only opens; NULL: writeback.  Set them with img_set_cache(), which
 * reports a bad mode and returns false.
 */
extern const char *img_cache;
extern const char *img_src_cache;
bool img_set_cache(const char **which, const char *mode);

bool img_open(struct img *img, const char *filename, const char *fmt,
              bool writable, struct err **errp);
/*
 * json:{"driver": FMT, "file": {"driver": "file", "filename": PATH}} (or
 * with image_opts "driver=FMT,file.filename=PATH") names the image PATH of
 * format FMT: then *filename and *fmt say so (QEMU shows such an image by
 * its plain name too) and true is returned.  Other names stay.
 */
bool img_simple_name(const char **filename, const char **fmt,
                     bool image_opts);
/* --image-opts: str is "driver=qcow2,file.filename=..." (or JSON). */
bool img_open_opts(struct img *img, const char *str, bool writable,
                   struct err **errp);
/*
 * Open from a blockdev-add object (chains built by the caller).
 * share_writes lets others write and resize the image: commit opens the
 * layers above its base so, since the base's own writer would otherwise
 * be refused down their backing chain (permissions propagate).
 */
bool img_open_json(struct img *img, json_t *opts, const char *filename,
                   bool writable, bool share_writes, struct err **errp);
void img_close(struct img *img);

/*
 * The backing file name of a qcow2 header resolved like QEMU does:
 * relative to the directory of the image that names it.  malloc'd.
 */
char *img_backing_path(const char *image, const char *backing);

/*
 * Walking a backing chain by the names the headers give: each file
 * (device and inode) may appear once, and the chain may hold at most
 * BLOCK_MAX_BACKING_CHAIN images.  Visiting a file seen before, or one
 * too many, fails with errnum ELOOP and qemu-img's message.
 */
struct img_chain {
    struct { dev_t dev; ino_t ino; } *ids;
    size_t n;
};
bool img_chain_visit(struct img_chain *c, const char *name,
                     struct err **errp);
void img_chain_free(struct img_chain *c);

/* img-info.c: false (*errp set) when filename's backing chain, as its
 * headers name it, loops or is too deep; other failures are ignored. */
bool img_backing_chain_ok(const char *filename, const char *fmt,
                          struct err **errp);

/* What the header of filename, an image of format fmt, says (read through
 * a file node; the format's header_info hook).  Clear info after use. */
bool img_header_info(const char *filename, const char *fmt,
                     struct block_image_info *info, struct err **errp);

/* Virtual size of an image file (from its header when the format has
 * one, as qcow2; raw: its length). */
int64_t img_virtual_size(const char *filename, const char *fmt,
                         struct err **errp);

/* Progress, printed only when enabled ("-p"). */
struct img_progress {
    bool enabled;
    double last;
};
void img_progress_start(struct img_progress *p, bool enabled);
void img_progress_update(struct img_progress *p, double percent);
void img_progress_end(struct img_progress *p);

/* Print v on stdout as qemu-img prints JSON (4-space indent, ASCII). */
void img_json_print(json_t *v);

/* Largest allocation for an I/O buffer, aligned for O_DIRECT. */
void *img_buf_alloc(size_t bytes);

#endif
