/* SPDX-License-Identifier: MIT */
/*
 * lockstep-backup: full and incremental pull backups of a disk served by
 * lockstepd or qemu-storage-daemon, restore and verify (docs/backup.md).
 *
 * The tool speaks only the wire protocols: QMP on a unix socket to set up
 * a fleecing snapshot (QEMU's own recipe, so that both daemons run the
 * same commands), NBD through libnbd to read it.  It writes the backups
 * itself with liblockstep's qcow2 driver: one qcow2 image per backup in a
 * directory, each incremental one backed by the one before, and a small
 * manifest (manifest.json) that lists the chain.
 *
 * One file per concern:
 *   main.c      the command line and the help text
 *   backup.c    the full and incremental flows: setup, copy, commit,
 *               teardown and recovery
 *   qmp.c       a QMP client (commands, events, bounded waits)
 *   fleece.c    the fleecing recipe and the bitmap handling over QMP
 *   copy.c      reading the snapshot over NBD into the new image
 *   image.c     creating and opening the qcow2 images
 *   manifest.c  the manifest, the journal of a backup in progress, the lock
 *   progress.c  the progress bar and the JSON progress lines
 *   chain.c     restore and verify
 */
#ifndef LOCKSTEP_BACKUP_H
#define LOCKSTEP_BACKUP_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "lockstep/block.h"
#include "lockstep/err.h"

#define BK_PROG "lockstep-backup"
#define BK_MANIFEST "manifest.json"
#define BK_JOURNAL ".in-progress.json"
#define BK_LOCK ".lock"

/* Exit status of an incremental backup that cannot be done: no backup
 * yet, the disk changed size, the bitmap is missing, inconsistent or
 * disabled.  Scripts take a full backup then (docs/backup.md). */
#define BK_EXIT_NEEDS_FULL 3

/* Set by SIGINT/SIGTERM: every loop that waits checks it and fails. */
extern volatile sig_atomic_t bk_interrupted;

/* "lockstep-backup: " + message on stderr. */
void bk_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print e with the prefix, then free it. */
void bk_report(struct err *e);
/* Set *errp to "Interrupted" and return true when a signal came (not
 * during the teardown, which has to finish: bk_teardown_begin()). */
bool bk_check_interrupted(struct err **errp);
void bk_teardown_begin(void);

/* ---- Progress (progress.c) ------------------------------------------ */

enum progress_mode {
    PROGRESS_AUTO,     /* a bar when stderr is a terminal, else nothing */
    PROGRESS_BAR,
    PROGRESS_JSON,     /* one JSON object a line on stdout, every second */
    PROGRESS_NONE,
};

struct progress {
    enum progress_mode mode;
    const char *what;        /* "backup", "restore" */
    uint64_t total;          /* bytes to process */
    uint64_t done;           /* bytes processed */
    uint64_t bytes_read;     /* bytes read from the source */
    int64_t start_ns;
    int64_t last_ns;         /* last line printed */
    bool drawn;              /* a bar is on the terminal */
};

/* mode AUTO is resolved here. */
void progress_start(struct progress *p, enum progress_mode mode,
                    const char *what, uint64_t total);
/* Print a line if one is due (bar: 5 per second, JSON: 1 per second). */
void progress_tick(struct progress *p);
/* The last line; the bar's line is ended. */
void progress_end(struct progress *p);
/* With JSON progress: print obj (consumed) as one line. */
void progress_json_event(struct progress *p, json_t *obj);

/* ---- QMP client (qmp.c) ---------------------------------------------- */

struct qmp;

/* Connect, read the greeting, negotiate capabilities.  Every later wait
 * for the daemon is bounded by timeout_ms. */
struct qmp *qmp_connect(const char *path, int timeout_ms, struct err **errp);
void qmp_close(struct qmp *q);
/*
 * Run a command (args: NULL or an object, consumed).  Returns the
 * "return" value (a new reference), or NULL with *errp set: the daemon's
 * error ("desc"; errnum 0), or the connection's (errnum set: the daemon
 * is gone, or did not answer in time).
 */
json_t *qmp_cmd(struct qmp *q, const char *cmd, json_t *args,
                struct err **errp);
/* The same, dropping the result: true on success. */
bool qmp_run(struct qmp *q, const char *cmd, json_t *args, struct err **errp);
/* Has the connection failed (the daemon is gone or hung)? */
bool qmp_broken(const struct qmp *q);
/*
 * Wait for the event name whose data members match the NULL-ended list
 * of KEY, VALUE string pairs; drop it and the events before it.  Events
 * that came while commands ran count.  false with *errp on timeout or a
 * broken connection.
 */
bool qmp_wait_event(struct qmp *q, struct err **errp, const char *name, ...)
    __attribute__((sentinel));

/* ---- Fleecing and bitmaps over QMP (fleece.c) ------------------------ */

/*
 * One backup's snapshot: QEMU's "blockdev-backup sync=none" fleecing
 * recipe (docs/backup.md), which lockstepd and qemu-storage-daemon 7.2
 * both run: a scratch qcow2 backed by the disk node, and a transaction
 * that creates the new bitmap, stops the old one and starts the job that
 * copies old data to the scratch image before the guest overwrites it.
 */
struct fleece {
    char *node;           /* the disk's node-name */
    char *scratch_file;   /* the scratch qcow2 (created by the tool) */
    char *temp_node;      /* its node: the snapshot */
    char *job;            /* the sync=none job */
    char *export_id;      /* NBD export id and name */
    char *nbd_socket;     /* the NBD server's unix socket */
    bool nbd_started;     /* we started the NBD server */
    char *since;          /* incremental: the bitmap the backup reads */
    char *bitmap;         /* the bitmap created at the snapshot */
    /* What exists now, for the teardown. */
    bool temp_added, started, exported;
};

/* Names derived from the node; nbd_socket NULL: start a server there. */
void fleece_init(struct fleece *f, const char *node, const char *since,
                 const char *bitmap, const char *scratch_file,
                 const char *nbd_socket, const char *own_socket);
void fleece_free(struct fleece *f);
json_t *fleece_to_json(const struct fleece *f);
bool fleece_from_json(struct fleece *f, json_t *o, struct err **errp);

/* Build the snapshot and export it; on failure, undo what was built. */
bool fleece_start(struct qmp *q, struct fleece *f, struct err **errp);
/* Take the export, the job and the scratch node down (what exists). */
bool fleece_stop(struct qmp *q, struct fleece *f, struct err **errp);
/* Remove bitmap name of the disk if it is there (after a recorded
 * backup, the bitmaps it made obsolete). */
bool fleece_bitmap_remove(struct qmp *q, struct fleece *f, const char *name,
                          struct err **errp);
/* After a failed one: back to the bitmaps as they were before. */
bool fleece_bitmaps_rollback(struct qmp *q, struct fleece *f,
                             struct err **errp);

/* Clean up after a run that stopped half way (the journal's fleece):
 * the same teardown as after a failure, then the bitmaps rolled back, or
 * committed when the backup made it into the manifest. */
bool fleece_recover(struct qmp *q, struct fleece *f, bool committed,
                    struct err **errp);

/* The node's entry of query-named-block-nodes (a new reference), its
 * virtual size, and one of its bitmaps (borrowed from node; NULL). */
json_t *qmp_find_node(struct qmp *q, const char *node, struct err **errp);
int64_t node_virtual_size(json_t *node);
json_t *node_bitmap(json_t *node, const char *name);

/* ---- Images (image.c) ------------------------------------------------ */

struct image {
    struct block_node *node;
    struct block_handle *h;
};

/*
 * Create a qcow2 image of size bytes at path (the file must not exist),
 * backed by backing (a file name relative to path's directory, format
 * qcow2) or by nothing.
 */
bool image_create_qcow2(const char *path, uint64_t size, const char *backing,
                        struct err **errp);
/* Create a raw image file of size bytes (sparse). */
bool image_create_raw(const char *path, uint64_t size, struct err **errp);
/* Open an image (fmt "qcow2" or "raw") with its backing chain. */
bool image_open(struct image *img, const char *path, const char *fmt,
                bool writable, struct err **errp);
void image_close(struct image *img);

/* ---- Copying (copy.c) ------------------------------------------------ */

struct copy_stats {
    uint64_t dirty_bytes;     /* incremental: bytes the bitmap marks */
    uint64_t data_bytes;      /* bytes to read (allocated, maybe dirty) */
    uint64_t zero_bytes;      /* of those, bytes the source reads as zero */
    uint64_t bytes_read;      /* what was read over NBD */
    uint64_t bytes_written;   /* data written into the image */
};

struct copy_job {
    const char *socket;       /* NBD server */
    const char *export_name;
    const char *bitmap;       /* incremental: qemu:dirty-bitmap:BITMAP */
    uint64_t size;
    struct image *target;
    bool overlay;             /* zeroes must be written (a backing file) */
    unsigned connections;
    int timeout_ms;
    struct progress *progress;
};

/* Read the snapshot's allocated (and dirty) extents into the target. */
bool copy_snapshot(struct copy_job *j, struct copy_stats *st,
                   struct err **errp);

/* ---- Manifest, journal, lock (manifest.c) ---------------------------- */

struct manifest_entry {
    char *time;               /* "20250131T235900Z" (UTC) */
    char *file;               /* in the directory */
    bool incremental;
    char *backing;            /* the entry before (incremental), or NULL */
    char *bitmap;             /* records writes since this backup */
    uint64_t size;            /* virtual size */
    uint64_t bytes_read;
    uint64_t dirty_bytes;
};

struct manifest {
    char *node;               /* the disk's node-name (informative) */
    struct manifest_entry *e;
    size_t n;
};

/* Missing file: an empty manifest.  A manifest we cannot parse is an
 * error, never silently replaced. */
bool manifest_load(const char *dir, struct manifest *m, struct err **errp);
/* Write it atomically (temporary file, fsync, rename, fsync dir). */
bool manifest_save(const char *dir, const struct manifest *m,
                   struct err **errp);
void manifest_free(struct manifest *m);
void manifest_append(struct manifest *m, const struct manifest_entry *e);
/* The entry at time t, else the one of file t (t NULL: the last), or
 * NULL. */
const struct manifest_entry *manifest_find(const struct manifest *m,
                                           const char *t);
/* Parse a manifest from text (also the fuzz target's entry). */
bool manifest_parse(const char *text, size_t len, struct manifest *m,
                    struct err **errp);

/* Write obj (consumed) to DIR/name atomically; read it back (NULL with
 * *errp clear when the file does not exist). */
bool dir_write_json(const char *dir, const char *name, json_t *obj,
                    struct err **errp);
json_t *dir_read_json(const char *dir, const char *name, struct err **errp);
bool dir_remove(const char *dir, const char *name, struct err **errp);
/* fsync the directory, so that renames and unlinks in it are stable. */
bool dir_sync(const char *dir, struct err **errp);
/* An exclusive lock on DIR/.lock (another run: a clear error). */
int dir_lock(const char *dir, struct err **errp);

/* ---- Commands -------------------------------------------------------- */

struct backup_opts {
    bool incremental;
    const char *socket;       /* QMP */
    const char *node;
    const char *dir;
    const char *bitmap;       /* name of the new bitmap (NULL: automatic) */
    const char *since;        /* incremental: read this bitmap (NULL: the
                               * manifest's) */
    const char *nbd_socket;   /* the daemon's NBD server (NULL: start one) */
    const char *scratch_dir;  /* for the scratch image (NULL: dir) */
    unsigned connections;
    int timeout_ms;
    enum progress_mode progress;
};

int backup_run(const struct backup_opts *o);

struct restore_opts {
    const char *dir;
    const char *at;           /* NULL: the last backup */
    const char *to;
    const char *format;       /* "qcow2" (default) or "raw" */
    enum progress_mode progress;
};

int restore_run(const struct restore_opts *o);
int verify_run(const char *dir);

#endif
