/* SPDX-License-Identifier: MIT */
/*
 * Shared declarations of lockstep-io, the qemu-io compatible exerciser:
 * the open image (struct io_ctx), the command table entries and the
 * output helpers that every command uses.  lockstep-io.c holds main(),
 * the command loop and the commands that open, close and reopen images;
 * io-cmds.c the I/O commands; io-aio.c the requests that run in the
 * background (aio_read, aio_write).
 */
#ifndef LOCKSTEP_IO_H
#define LOCKSTEP_IO_H

#include <stdbool.h>
#include <stdint.h>

#include "lockstep/block.h"

/* qemu-io's limit for one request (BDRV_REQUEST_MAX_BYTES). */
#define IO_MAX_BYTES 2147483136ULL

/*
 * The open image, or none (node NULL: qemu-io started without a file,
 * or after "close").  Main thread only; aio workers use h.
 */
struct io_ctx {
    struct block_node *node;    /* the top node */
    struct block_handle *h;
    bool read_only;
    bool writethrough;          /* every write is FUA (cache mode) */
    const char *aio;            /* --aio for the file nodes, or NULL */
    bool copy_on_read;          /* -C: node is a copy-on-read filter */
    json_t *opts;               /* what opened it, for reopen */
    char *filename;             /* ... with this name, or NULL */
};

/* Command flags. */
enum {
    IO_CMD_WRITES = 1 << 0,     /* needs write permission */
    IO_CMD_RESIZE = 1 << 1,     /* needs resize permission */
    IO_CMD_NOFILE_OK = 1 << 2,  /* runs without an open image */
    IO_CMD_GLOBAL = 1 << 3,     /* never needs an image */
};

struct io_cmd {
    const char *name;
    const char *altname;        /* qemu-io's one-letter alias, or NULL */
    int (*fn)(struct io_ctx *ctx, int argc, char **argv);
    int argmin;                 /* -1 with argmax -1: anything */
    int argmax;                 /* -1: no maximum */
    unsigned flags;
    const char *args;           /* usage after the name, or NULL */
    const char *oneline;
    const char *help;           /* extended help, or NULL */
};

/* The program name in messages: "qemu-io" when started by that name. */
extern const char *io_prog;
/* qemu-io -m: buffers start 16 bytes off their alignment. */
extern bool io_misalign;

/* io-cmds.c: the table of I/O commands (NULL-terminated). */
extern const struct io_cmd io_data_cmds[];

/* Print the usage line of c ("read [-abCqv] ... -- reads ..."). */
void io_usage(const struct io_cmd *c);
/* "prog: " + message on stderr. */
void io_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* qemu-io's numbers (qemu_strtosz); false after printing the error. */
bool io_num(const char *s, int64_t *out);
/* "4 KiB", "1.500 MiB", "512 bytes" */
void io_fmt_size(char *buf, size_t len, double value);
/* The two lines after a request (or the -C line). */
void io_report(const char *op, int64_t ns, int64_t offset, int64_t count,
               int64_t total, int cnt, bool machine);
void io_hexdump(const uint8_t *buf, int64_t offset, int64_t bytes);
void *io_buf_alloc(uint64_t bytes, int fill);
void io_buf_free(void *buf);

/* Replace the handle by one that also holds perm (write, resize). */
int io_need_perm(struct io_ctx *ctx, uint32_t perm);

/* io-aio.c */
struct io_aio;
/* Start a request on a worker thread; completion is printed later. */
void io_aio_submit(struct io_aio *a);
struct io_aio *io_aio_new(struct io_ctx *ctx, bool write, int64_t offset,
                          uint64_t bytes);
void io_aio_set_read(struct io_aio *a, int pattern, bool verbose,
                     bool quiet, bool machine);
void io_aio_set_write(struct io_aio *a, int pattern, bool zero,
                      unsigned flags, bool quiet, bool machine);
void io_aio_init(void);
/* After a resume: wait a little for a request to complete, and print. */
void io_aio_settle(void);
/* Print the requests that have completed (in completion order). */
void io_aio_reap(void);
/* Wait for every request in flight, printing their completions. */
void io_aio_drain(void);
/* Requests submitted and not yet printed. */
unsigned io_aio_in_flight(void);

#endif
