/* SPDX-License-Identifier: MIT */
/*
 * What a driver sees of the block layer, and what it declares: the driver
 * table (struct block_driver), the types of its options and the getters
 * that read them, and the blocking-hint contract.  A new driver includes
 * this header only (it brings lockstep/block.h for nodes and children);
 * users of the block layer include lockstep/block.h.
 *
 * Blocking hints: an I/O callback may run on a thread that also
 * serves an event source inline (the NBD server's reader).  Before it
 * sleeps on something slow -- a remote peer, a device, a lock held across
 * I/O -- a driver calls thread_may_block() (or takes such a lock with
 * mutex_lock_may_block(), or sleeps with sleep_ns()), so that the source
 * passes to another thread.  cond_wait() and cond_timedwait_ns() give
 * the hint themselves; a blocking syscall does not.  A driver never
 * waits for the main thread from an I/O callback (a drain holds it).
 */
#ifndef LOCKSTEP_DRIVER_H
#define LOCKSTEP_DRIVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "lockstep/block.h"
#include "lockstep/err.h"

/* Types of driver options, for validation and keyval conversion. */
enum block_opt_type {
    BLOCK_OPT_STRING,
    BLOCK_OPT_BOOL,       /* JSON bool, or "on"/"off" from keyval */
    BLOCK_OPT_INT,        /* JSON integer, or a decimal string */
    BLOCK_OPT_SIZE,       /* like INT, also accepts k/M/G suffixes */
    BLOCK_OPT_NUMBER,     /* JSON number (int or real) */
    BLOCK_OPT_CHILD,      /* a node: inline object or a node-name string */
    BLOCK_OPT_CHILD_OR_NULL, /* the same, or JSON null (no child) */
    BLOCK_OPT_CHILD_LIST, /* a JSON array of children */
    BLOCK_OPT_OBJECT,     /* the driver checks the contents itself */
    BLOCK_OPT_LIST,       /* the driver checks the contents itself */
    BLOCK_OPT_ANY,        /* anything; the driver checks */
};

struct block_opt {
    const char *name;
    enum block_opt_type type;
    bool required;
    const char *const *enum_values; /* STRING: allowed values, NULL-ended */
};

/* An option of image creation ("lockstep-img create -o name=value"). */
struct block_create_opt {
    const char *name;
    enum block_opt_type type;       /* SIZE, INT, BOOL or STRING */
    const char *const *enum_values; /* STRING: allowed values, NULL-ended */
    /* What the "Formatting ..." line of lockstep-img create shows when
     * the option is not given (NULL: shown only when given). */
    const char *def;
};

/*
 * A driver.  Control callbacks run on the main thread and take errp; I/O
 * callbacks run on any thread and return -errno.  The core guarantees for
 * every I/O callback: offset/bytes are aligned to limits.request_alignment
 * and start inside the node's length, except at its end: a protocol's
 * last block may reach past it (reads there return zeroes, writes grow
 * the node: O_DIRECT knows no shorter I/O), a filter's or format's ends
 * there unaligned; the buffer is aligned to limits.mem_alignment, bytes
 * does not exceed the relevant max_*, and the node is not being drained
 * out from under the call.
 */
struct block_driver {
    const char *name;               /* the QMP "driver" value */
    enum block_driver_kind kind;
    size_t state_size;              /* zeroed, at node->opaque */
    const struct block_opt *options;/* driver options, NULL-terminated */
    /* Set when the driver cannot run two requests on one node at once;
     * the core then serialises them with a per-node lock. */
    bool serialize_requests;
    /* Set when the node reads its "file" child's frozen point-in-time
     * view (snapshot-access on copy-before-write) rather than its
     * content: a fleecing removal that takes the filter out from under
     * its other parents leaves such a node on it. */
    bool reads_frozen_view;
    /* Set when the driver has no image information, as QEMU's null
     * drivers: qemu-io's info fails, query-named-block-nodes shows no
     * dirty-flag and 0 bytes allocated. */
    bool no_image_info;
    /* Set when the driver's nodes take BLOCK_REQ_WRITE_COMPRESSED (known
     * before a node exists: lockstep-img convert -c asks the output
     * format). */
    bool compressed_writes;

    /*
     * Open: parse node->options (already validated against .options; the
     * children named by CHILD options are attached by the driver with
     * block_node_open_child()).  Must set node->limits when they differ from
     * the defaults.  On failure the core undoes the children attached.
     */
    int (*open)(struct block_node *node, json_t *options, struct err **errp);
    void (*close)(struct block_node *node);

    /*
     * The part of opening that waits on a remote peer (the NBD client's
     * connect and handshake), run before open by block_prepare(): on a
     * thread of its own, with no lock held, so that neither the main
     * thread nor the graph waits on the peer.  Returns what open then
     * takes with block_prepared_take(), or NULL with *errp set; ends early
     * (failing) when cancel_fd becomes readable.  Optional.
     */
    void *(*prepare)(json_t *options, int cancel_fd, struct err **errp);
    /* Release what prepare returned and open did not take. */
    void (*prepared_free)(void *prepared);

    /* Length in bytes; may do I/O (protocol nodes). */
    int64_t (*getlength)(struct block_node *node);
    /* Bytes allocated on the host, or -ENOTSUP. */
    int64_t (*allocated_size)(struct block_node *node);

    int (*pread)(struct block_node *node, uint64_t offset, uint64_t bytes,
                 void *buf, unsigned flags);
    int (*pwrite)(struct block_node *node, uint64_t offset, uint64_t bytes,
                  const void *buf, unsigned flags);
    /*
     * Several reads (writes) of one request at once: n <=
     * BLOCK_MAX_SEGMENTS pieces, each meeting pread's guarantees and
     * inside the node.  The file driver submits them together (io_uring)
     * or merges neighbours into one preadv/pwritev.  Returns 0 or the
     * first error.  Optional: without it the core calls pread (pwrite)
     * once per piece.
     */
    int (*pread_segments)(struct block_node *node,
                          const struct block_segment *seg, unsigned n,
                          unsigned flags);
    int (*pwrite_segments)(struct block_node *node,
                           const struct block_segment *seg, unsigned n,
                           unsigned flags);
    /* -ENOTSUP makes the core write zeroes from a buffer (unless
     * BLOCK_REQ_NO_FALLBACK). */
    int (*pwrite_zeroes)(struct block_node *node, uint64_t offset,
                         uint64_t bytes, unsigned flags);
    int (*pdiscard)(struct block_node *node, uint64_t offset, uint64_t bytes);
    int (*flush)(struct block_node *node);
    /*
     * Status of [offset, offset+bytes): returns flags >= 0 (DATA, ZERO,
     * RECURSE, OFFSET_VALID) and the length *pnum (> 0, <= bytes) over which
     * they hold; *map and *file when OFFSET_VALID or RECURSE.  Neither
     * DATA nor ZERO means "not allocated in this layer": the core then asks
     * the backing child.  Without this callback: protocol nodes are all
     * DATA, filters and one-child formats RECURSE into "file".
     */
    int (*block_status)(struct block_node *node, uint64_t offset,
                        uint64_t bytes, uint64_t *pnum, uint64_t *map,
                        struct block_node **file);
    /* Resize (main thread or job). */
    int (*truncate)(struct block_node *node, uint64_t length,
                    struct err **errp);
    /* Drop all content of this layer (qcow2 overlays; replication). */
    int (*make_empty)(struct block_node *node, struct err **errp);

    /*
     * Permissions: the union of what all parents hold on this node changed
     * (perm) and the intersection of what they share (shared).  Protocol
     * drivers take image locks here.  May fail (another process holds a
     * conflicting lock).
     */
    int (*set_perm)(struct block_node *node, uint32_t perm, uint32_t shared,
                    struct err **errp);
    /*
     * What this node needs on its child child_name and lets others do,
     * given what the node's own parents hold (parent_perm, the union) and
     * share (parent_shared, the intersection): QEMU's bdrv_child_perm.
     * Called again whenever the node's parents change.  Without the
     * callback the core's defaults apply (see block_default_child_perm).
     */
    void (*child_perm)(struct block_node *node, const char *child_name,
                       uint32_t parent_perm, uint32_t parent_shared,
                       uint32_t *perm, uint32_t *shared);

    /*
     * File names as QEMU's tools take them (block_filename_options()):
     * a name that starts with one of filename_prefixes ("nbd://",
     * "file:", NULL-ended) is this driver's, and parse_filename turns it
     * into the blockdev-add options of the node it stands for (QEMU's
     * bdrv_parse_filename), or NULL with *errp set.  Main thread.
     */
    const char *const *filename_prefixes;
    json_t *(*parse_filename)(const char *filename, struct err **errp);
    /*
     * The name QEMU's tools show for a node of a driver that has no
     * "filename" option (QEMU's refresh_filename: an NBD export's URL),
     * owned by the node, valid until the next call or close; NULL: none.
     * block_node_exact_filename() asks it.  Main thread.
     */
    const char *(*refresh_filename)(struct block_node *node);

    /*
     * Formats: how sure is this driver that an image whose first bytes
     * are head[0..len) (len < BLOCK_PROBE_BYTES only for a shorter image)
     * is one of its own?  0: no; 100: certain (a magic number); raw, the
     * fallback, says 1.  filename (or NULL) for drivers that look at
     * names.  Pure: no I/O.  block_probe_format() asks every driver.
     */
    int (*probe)(const uint8_t *head, size_t len, const char *filename);

    /*
     * Formats: image creation, QEMU's bdrv_co_create.  create_options
     * lists what "lockstep-img create -o" takes for this format, in the
     * order qemu-img prints them (with their defaults), including the
     * common ones (size, preallocation, backing_file, backing_fmt) that
     * arrive in struct block_create_opts; the others arrive in
     * opts->options, typed (SIZE/INT: integer, BOOL: boolean, STRING:
     * one of enum_values).  create writes a new image of opts->size bytes
     * into file, an open and empty protocol node.  Main thread.
     */
    const struct block_create_opt *create_options;
    int (*create)(struct block_node *file, const struct block_create_opts *opts,
                  struct err **errp);

    /*
     * Formats: the consistency check of lockstep-img check (QEMU's
     * bdrv_co_check), run on the image's file node, not on an open image:
     * an image too broken to open is what it must describe.  fix:
     * BLOCK_CHECK_FIX_*.  Each problem gets a line on log (when not NULL).
     * Returns 0 with *res filled, or -errno with *errp when the check
     * could not run at all.  Main thread.
     */
    int (*check)(struct block_node *file, unsigned fix, FILE *log,
                 struct block_check_result *res, struct err **errp);

    /*
     * Formats: what the header of the image in file says (virtual size,
     * backing file, ...), read without opening the image or its backing
     * chain, so that it describes images the driver would refuse.  With
     * details also format_specific and snapshots (lockstep-img info).
     * 0, or -errno with *errp for a header the driver cannot decode.
     * Main thread.
     */
    int (*image_info)(struct block_node *file, bool details,
                      struct block_image_info *info, struct err **errp);
    /*
     * Formats: store another backing file name and format (name NULL:
     * none) in the header of the image in file, nothing else changed
     * (QEMU's bdrv_change_backing_file).  -ENOSPC when the header has no
     * room for them.  Main thread, the image not open elsewhere.
     */
    int (*change_backing_file)(struct block_node *file, const char *name,
                               const char *fmt, struct err **errp);

    /*
     * Formats with internal snapshots (qcow2), QEMU's bdrv_snapshot_*:
     * list (*out freed with block_snapshots_free()), create, go to (make
     * the image what the snapshot holds), delete, and load_tmp (this
     * read-only node reads the snapshot selected by id and/or name from
     * now on).  Main thread.  -errno with *errp on failure.
     */
    int (*snapshot_list)(struct block_node *node, struct block_snapshot **out,
                         size_t *n, struct err **errp);
    int (*snapshot_create)(struct block_node *node, const char *name,
                           struct err **errp);
    int (*snapshot_goto)(struct block_node *node, const char *id_or_name,
                         struct err **errp);
    int (*snapshot_delete)(struct block_node *node, const char *id_or_name,
                           struct err **errp);
    int (*snapshot_load_tmp)(struct block_node *node, const char *id,
                             const char *name, struct err **errp);
    /* The VM state area of savevm (past the disk's end): any thread.
     * vmstate_start: where it begins in the node's address space
     * (qemu-io's info). */
    uint64_t (*vmstate_start)(struct block_node *node);
    int (*vmstate_pread)(struct block_node *node, uint64_t pos, uint64_t len,
                         void *buf);
    int (*vmstate_pwrite)(struct block_node *node, uint64_t pos, uint64_t len,
                          const void *buf);

    /* Fill extra fields for query-named-block-nodes ("format-specific"). */
    void (*query)(struct block_node *node, json_t *info);

    /*
     * Persistent dirty bitmaps, for formats that store them (qcow2).  Main
     * thread, no request in flight.  The format loads its bitmaps at open
     * and stores the node's persistent ones at close.  bitmap_can_store:
     * may a new persistent bitmap be stored in the image (asked when it
     * is added).  bitmap_remove: take a stored bitmap out of the image
     * now (one that was never stored: 0).
     */
    bool (*bitmap_can_store)(struct block_node *node, const char *name,
                             uint64_t granularity, struct err **errp);
    int (*bitmap_remove)(struct block_node *node, const char *name,
                         struct err **errp);

    /* A named event happened below a format (blkdebug's rules fire on
     * them: "l2_update", "refblock_alloc", ...) or on the node's own write
     * path in the core ("pwritev", "pwritev_rmw_head", "pwritev_done",
     * ..., QEMU's names).  Any thread. */
    void (*debug_event)(struct block_node *node, const char *event);
    /*
     * qemu-io's break/remove_break/resume/wait_break (QEMU's
     * bdrv_debug_*), for drivers that stop requests at named events
     * (blkdebug): suspend a request at event under tag, drop tag's
     * breakpoints, let the request suspended under tag go on, is one
     * suspended there.  -ENOENT for an unknown tag.  Any thread.
     * block_debug_*() find the first driver with them down the "file"
     * children.
     */
    int (*debug_breakpoint)(struct block_node *node, const char *event,
                            const char *tag);
    int (*debug_remove_breakpoint)(struct block_node *node, const char *tag);
    int (*debug_resume)(struct block_node *node, const char *tag);
    bool (*debug_is_suspended)(struct block_node *node, const char *tag);
};


/* ---- Blocking hints (util/util.c; declared in util.h too) -------------- */

/* Call before sleeping on a peer, a device or a slow lock (see above). */
void thread_may_block(void);
/* mutex_lock for a lock whose holder may sleep on I/O: hints first. */
void mutex_lock_may_block(pthread_mutex_t *m);
/* Sleep for ns nanoseconds, hinting first. */
void sleep_ns(int64_t ns);

/* ---- Reading options (validated by the core before open) --------------- */

/* Typed getters for validated options: return def when absent. */
bool block_opt_bool(json_t *options, const char *name, bool def);
int64_t block_opt_int(json_t *options, const char *name, int64_t def);
const char *block_opt_str(json_t *options, const char *name, const char *def);
/* The length of a LIST or CHILD_LIST option (0 when absent). */
size_t block_opt_list_size(json_t *options, const char *name);
/* An OBJECT option (read its members with the getters above), or NULL. */
json_t *block_opt_object(json_t *options, const char *name);

/*
 * For a driver's OBJECT option with fixed members ({NULL}-ended, like a
 * driver table): check them as the top level is checked, with messages
 * naming "name.member".  Absent is fine.
 */
bool block_opts_validate_object(json_t *options, const char *name,
                                const struct block_opt *members,
                                struct err **errp);

/*
 * For drivers that check nested objects themselves: read a value that may
 * be a JSON integer/bool or a keyval string.  false when it is neither.
 */
bool json_value_to_int(json_t *v, int64_t *out);
bool json_value_to_size(json_t *v, uint64_t *out);
bool json_value_to_bool(json_t *v, bool *out);

#endif
