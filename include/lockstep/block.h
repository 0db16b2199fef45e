/* SPDX-License-Identifier: MIT */
/*
 * The block layer: nodes, drivers, the graph and the request path.
 *
 * A node is one instance of a driver (file, raw, qcow2, copy-before-write,
 * ...) with a unique node-name and named children ("file", "backing",
 * "target", "children.0", ...).  Nodes are created from a JSON object in
 * QEMU's blockdev-add schema.  Parents that are not nodes (NBD exports, jobs,
 * tools) reach a node through a handle (struct block_handle), which is where
 * requests enter the graph and where draining stops them.
 *
 * Threads (see docs/architecture.md):
 *   - The main thread owns the graph.  Creating, deleting, replacing and
 *     reattaching nodes happens only there, and only while drained.
 *   - I/O runs on any thread, blocking, start to finish.  Every request that
 *     enters through a handle holds the graph read lock for its duration;
 *     draining takes the write lock, so "drained" means "no request in the
 *     graph and none can enter".  A request must never wait for the main
 *     thread (that would deadlock against a drain).
 *
 * Errors: data path functions return 0 (or a documented non-negative value)
 * or -errno.  Control path functions take struct err **errp.
 *
 * Drivers (and code that looks inside one: node->drv) include
 * lockstep/driver.h, which holds the driver table and what a driver may
 * use; this header is for users of the block layer.
 */
#ifndef LOCKSTEP_BLOCK_H
#define LOCKSTEP_BLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/queue.h>

#include <jansson.h>

#include "lock.h"
#include "lockstep/err.h"

struct block_node;
struct block_child;
struct block_driver;
struct block_create_opt;
struct block_dirty_bitmap;

/*
 * Permissions, with QEMU's bit values (the file driver's image locks use
 * them, so that QEMU and lockstep see each other's locks).
 */
enum {
    BLOCK_PERM_CONSISTENT_READ = 0x01,
    BLOCK_PERM_WRITE = 0x02,
    BLOCK_PERM_WRITE_UNCHANGED = 0x04,
    BLOCK_PERM_RESIZE = 0x08,
    BLOCK_PERM_ALL = 0x0f,
};

/* Node lengths are whole sectors, as in QEMU (a 320-byte file is 512). */
#define BLOCK_SECTOR_SIZE 512

/* Request flags. */
enum {
    BLOCK_REQ_FUA = 0x01,         /* write: stable before it completes */
    BLOCK_REQ_MAY_UNMAP = 0x02,   /* zero: may deallocate (punch a hole) */
    BLOCK_REQ_NO_FALLBACK = 0x04, /* zero: fail with -ENOTSUP rather than
                                   * write a buffer of zeroes (NBD FAST_ZERO) */
    BLOCK_REQ_SERIALISING = 0x08, /* wait for and hold off overlapping
                                   * requests on this node */
    BLOCK_REQ_WRITE_UNCHANGED = 0x10, /* write does not change the content
                                       * (copy-on-read, block-copy) */
    BLOCK_REQ_WRITE_COMPRESSED = 0x20, /* write: store compressed (formats
                                        * that list it in
                                        * supported_write_flags: whole
                                        * clusters); else -ENOTSUP */
    BLOCK_REQ_ALLOCATE = 0x40,    /* zero: data follows there, reserve the
                                   * blocks now rather than leave a hole
                                   * (a hint; drivers that declare it) */
    BLOCK_REQ_PROBE = 0x80,       /* read: the format probe's look at the
                                   * head; blkdebug fires no event for it,
                                   * as QEMU's probe read fires none */
    BLOCK_REQ_EXTEND = 0x100,     /* zero: make the file reach over the
                                   * range, reserving blocks, and change
                                   * no byte already in it (other requests
                                   * may be writing there); -ENOTSUP where
                                   * the driver cannot (never emulated) */
};

/* Block status flags (block_status()). */
enum {
    BLOCK_STATUS_DATA = 0x01,      /* reads return data (maybe also zero) */
    BLOCK_STATUS_ZERO = 0x02,      /* reads return zeroes */
    BLOCK_STATUS_ALLOCATED = 0x04, /* this layer defines the content */
    /* Driver answers only: "ask node *file at offset *map" (raw, filters). */
    BLOCK_STATUS_RECURSE = 0x08,
    /* *map is the offset of the data in *file. */
    BLOCK_STATUS_OFFSET_VALID = 0x10,
    /* Driver answers only, with DATA|OFFSET_VALID: the file may have a
     * hole there (qcow2 preallocation=metadata), ask it whether it reads
     * zeroes.  Asking costs an lseek(2) pair per answer, which on tmpfs
     * scans the page cache to the end of the data. */
    BLOCK_STATUS_ASK_FILE = 0x20,
};

enum block_driver_kind {
    BLOCK_KIND_PROTOCOL,   /* talks to something outside: a file, a server */
    BLOCK_KIND_FORMAT,     /* interprets the bytes of its "file" child */
    BLOCK_KIND_FILTER,     /* one child "file"; same content, other rules */
};

enum block_detect_zeroes {
    BLOCK_DETECT_ZEROES_OFF,
    BLOCK_DETECT_ZEROES_ON,
    BLOCK_DETECT_ZEROES_UNMAP,
};

/*
 * One piece of a request that reaches a node as several: [offset,
 * offset + bytes) of the node, to or from buf (block_pread_segments()).
 */
struct block_segment {
    uint64_t offset;
    uint64_t bytes;
    void *buf;
};

/* Pieces the core hands a driver's *_segments callback at once. */
#define BLOCK_MAX_SEGMENTS 32

/* Request limits, set by the driver's open (or refresh_limits). */
struct block_limits {
    uint32_t request_alignment;   /* reads and writes; default 1 */
    uint32_t mem_alignment;       /* buffer address alignment; default 1 */
    uint64_t max_transfer;        /* per read/write, 0 = no limit */
    uint32_t pdiscard_alignment;  /* 0 = request_alignment */
    uint64_t max_pdiscard;        /* 0 = no limit */
    uint32_t pwrite_zeroes_alignment; /* 0 = request_alignment */
    uint64_t max_pwrite_zeroes;   /* 0 = no limit */
    uint32_t opt_transfer;        /* preferred size, advisory; 0 = none */
};

/* What block_status() tells about a range. */
struct block_status_info {
    unsigned flags;               /* BLOCK_STATUS_DATA/ZERO/ALLOCATED */
    struct block_node *node;      /* the node whose layer holds the content
                                   * (format level), or NULL if unallocated */
    uint64_t map;                 /* offset in host file, if OFFSET_VALID */
    struct block_node *file;      /* node that map refers to */
    int depth;                    /* 0 = unallocated in the whole chain,
                                   * 1 = the queried node's layer, 2 = its
                                   * backing, ... (filters do not count) */
};

/*
 * An edge of the graph: parent -> child node.  The parent is a node (then
 * parent_node is set and name is the role: "file", "backing", ...) or a
 * handle (parent_node is NULL).  Graph fields: main thread only, and changed
 * only while drained.
 *
 * perm/shared: what the parent holds on the child and lets others do.  A
 * handle's are its user's; a node parent's are recomputed from that
 * node's own parents (drv->child_perm) whenever they change, unless
 * perm_fixed (block_child_fix_perm).
 */
struct block_child {
    char *name;
    struct block_node *node;          /* the child */
    struct block_node *parent_node;   /* NULL for handles */
    struct block_handle *parent_handle; /* NULL for node parents */
    uint32_t perm;
    uint32_t shared;
    bool perm_fixed;
    /* A job relies on this link (commit's chain): it may not point
     * elsewhere until the job lets go ("Cannot change frozen ..."). */
    bool frozen;
    TAILQ_ENTRY(block_child) parent_link;  /* in node->parents */
    TAILQ_ENTRY(block_child) child_link;   /* in parent_node->children */
};
TAILQ_HEAD(block_child_list, block_child);

/* A request in flight on a node (the reqlist for serialisation). */
struct block_tracked_req {
    uint64_t offset;
    uint64_t bytes;
    bool serialising;
    TAILQ_ENTRY(block_tracked_req) link;
};
TAILQ_HEAD(block_tracked_req_list, block_tracked_req);

struct block_node {
    const struct block_driver *drv;
    char *node_name;
    bool auto_named;           /* "#blockN", not given by the user */
    json_t *options;           /* as given (children as given too) */
    void *opaque;              /* driver state, drv->state_size bytes */
    void *typed_private;       /* block_node_new_typed_private()'s, or
                                * NULL; the driver's open reads it */

    /* Set at open from the common options. */
    bool read_only;
    bool auto_read_only;
    bool discard_unmap;        /* discard=unmap (default: ignore) */
    bool cache_direct;
    bool cache_no_flush;
    bool force_share;
    enum block_detect_zeroes detect_zeroes;
    /* Length in bytes, cached: set at open, by truncate, and when a write
     * grows a protocol node.  Atomic (any thread). */
    uint64_t size;

    /* Set by the driver at open. */
    struct block_limits limits;
    uint64_t cluster_size;            /* allocation unit of a format, or 0 */
    unsigned supported_write_flags;   /* BLOCK_REQ_FUA handled natively */
    unsigned supported_zero_flags;    /* FUA, MAY_UNMAP handled natively */

    /* Graph: main thread only, changed only while drained. */
    struct block_child_list children;
    struct block_child_list parents;
    struct block_child *file;         /* the child named "file", if any */
    struct block_child *backing;      /* the child named "backing", if any */
    int refcnt;
    bool monitor_owned;               /* added by blockdev-add */
    uint32_t cur_perm, cur_shared;    /* what drv->set_perm last saw */
    TAILQ_ENTRY(block_node) all_link;

    /*
     * Requests and flushes.  Protected by: req_lock.  Lock order:
     * req_lock is a leaf (never held while calling a driver).
     */
    struct lock req_lock;
    pthread_cond_t req_cond;
    struct block_tracked_req_list tracked;
    bool flushing;                    /* a flush in flight (io.c) */
    struct lock serial_lock;      /* drv->serialize_requests only */

    /*
     * Write generations (atomics): write_gen counts completed changes,
     * flushed_gen the generation the last successful flush covered.  A
     * flush with nothing new to flush does nothing, as in QEMU.
     */
    uint64_t write_gen;
    uint64_t flushed_gen;

    /* Dirty bitmaps.  Protected by: bitmap_lock (a leaf lock). */
    struct lock bitmap_lock;
    TAILQ_HEAD(, block_dirty_bitmap) bitmaps;
};

/* ---- Drivers ---------------------------------------------------------- */

const struct block_driver *block_driver_find(const char *name);
/* The NULL-terminated table of all drivers (block/core/drivers.c). */
extern const struct block_driver *const block_drivers[];

/*
 * Format probing, QEMU's bdrv_probe: the name of the format driver whose
 * probe hook scores highest for an image starting with head[0..len)
 * ("raw" when none is sure).  The one probe of the tree: opening images
 * by name (block_open_image), backing files named without a format and
 * the tools' "-f" default all come here.  block_probe_file() reads the
 * head of a host file first (unreadable or not a host file: "raw").
 */
#define BLOCK_PROBE_BYTES 512
const char *block_probe_format(const uint8_t *head, size_t len,
                               const char *filename);
const char *block_probe_file(const char *filename);

/*
 * Image-level operations of format drivers (block/core/image.c), for the
 * tools: each finds the driver by name and calls its hook (see
 * lockstep/driver.h), or fails with qemu-img's words when the format has
 * none.
 */

/* What a new image is made of (the driver's create hook). */
struct block_create_opts {
    uint64_t size;              /* virtual size in bytes */
    const char *backing_file;   /* NULL: none; stored as given */
    const char *backing_fmt;    /* NULL: none */
    const char *preallocation;  /* NULL/"off", "metadata", "falloc", "full" */
    json_t *options;            /* the format's own create options, typed;
                                 * NULL: none given */
};

/* The driver's create_options table, or NULL (it creates no images). */
const struct block_create_opt *block_create_options(const char *fmt);
/* Write a new image of format fmt into file (open, empty). */
int block_create(const char *fmt, struct block_node *file,
                 const struct block_create_opts *opts, struct err **errp);

/* What a consistency check found (QEMU's ImageCheck). */
enum {
    BLOCK_CHECK_FIX_LEAKS = 0x1,
    BLOCK_CHECK_FIX_ERRORS = 0x2,
};
struct block_check_result {
    int64_t check_errors;       /* the check itself failed somewhere */
    int64_t corruptions;        /* found and not repaired */
    int64_t leaks;              /* found and not repaired */
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    uint64_t image_end_offset;  /* 0: unknown */
    uint64_t total_clusters;    /* virtual size in clusters; 0: none */
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
};

/* Does format fmt have a consistency check? */
bool block_can_check(const char *fmt);
/* Check (and with fix, repair) the image of format fmt stored in file. */
int block_check(const char *fmt, struct block_node *file, unsigned fix,
                FILE *log, struct block_check_result *res, struct err **errp);

/* What an image's header says, read without opening the image. */
struct block_image_info {
    uint64_t virtual_size;
    uint64_t cluster_size;      /* 0: the format has no clusters */
    char *backing_file;         /* as stored; NULL: none */
    char *backing_fmt;          /* NULL: not stored */
    char *data_file;            /* external data file; NULL: none */
    bool encrypted;
    bool dirty;                 /* not cleanly shut down */
    /* With details: qemu-img info's "format-specific" ({"type", "data"})
     * and "snapshots" (a list; NULL: none). */
    json_t *format_specific;
    json_t *snapshots;
};

/* Does format fmt describe images by their header (image_info)? */
bool block_has_header_info(const char *fmt);
/* What the image of format fmt in file says of itself. */
int block_image_info_read(const char *fmt, struct block_node *file,
                          bool details, struct block_image_info *info,
                          struct err **errp);
void block_image_info_clear(struct block_image_info *info);
/* Store backing file name (NULL: none) and its format in the header of
 * the image of format fmt in file (the change_backing_file hook). */
bool block_can_change_backing_file(const char *fmt);
int block_change_backing_file(const char *fmt, struct block_node *file,
                              const char *name, const char *backing_fmt,
                              struct err **errp);

/* An internal snapshot, as query-block's SnapshotInfo describes it. */
struct block_snapshot {
    char *id, *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;            /* UINT64_MAX: not recorded */
};

/* Does node's format keep internal snapshots? */
bool block_has_snapshots(struct block_node *node);
/* The snapshot hooks of node's format; without them -ENOTSUP and
 * "Operation not supported". */
int block_snapshot_list(struct block_node *node, struct block_snapshot **out,
                        size_t *n, struct err **errp);
void block_snapshots_free(struct block_snapshot *sn, size_t n);
int block_snapshot_create(struct block_node *node, const char *name,
                          struct err **errp);
int block_snapshot_goto(struct block_node *node, const char *id_or_name,
                        struct err **errp);
int block_snapshot_delete(struct block_node *node, const char *id_or_name,
                          struct err **errp);
int block_snapshot_load_tmp(struct block_node *node, const char *id,
                            const char *name, struct err **errp);
/* Breakpoints of a debugging driver at or below node (its debug_* hooks;
 * -ENOTSUP, or false, when there is none). */
int block_debug_breakpoint(struct block_node *node, const char *event,
                           const char *tag);
int block_debug_remove_breakpoint(struct block_node *node, const char *tag);
int block_debug_resume(struct block_node *node, const char *tag);
bool block_debug_is_suspended(struct block_node *node, const char *tag);

/* The VM state area of node's format (-ENOTSUP without one). */
int block_vmstate_pread(struct block_node *node, uint64_t pos, uint64_t len,
                        void *buf);
int block_vmstate_pwrite(struct block_node *node, uint64_t pos, uint64_t len,
                         const void *buf);

/* ---- Graph (main thread) ---------------------------------------------- */

/*
 * Create a node from a blockdev-add JSON object (children inline or by
 * node-name).  Returns a new reference.  Unknown or ill-typed options are
 * refused with a message naming the option.
 */
struct block_node *block_node_new(json_t *options, struct err **errp);
/* The same from QEMU's dotted key=value syntax. */
struct block_node *block_node_new_keyval(const char *str, struct err **errp);

/*
 * A node made by the block layer's own users (a job's filter, a driver's
 * helper node) instead of from a blockdev-add object: its options, typed.
 * The core writes them, in this order, into the node's options (what
 * query-named-block-nodes and blockdev-reopen read back) and opens the
 * node as block_node_new() does, so they are checked against the
 * driver's table and the common options just the same.
 */
enum block_setting_type {
    BLOCK_SETTING_NODE,         /* a child: an existing node */
    BLOCK_SETTING_STR,
    BLOCK_SETTING_INT,
    BLOCK_SETTING_BOOL,
};

struct block_setting {
    const char *name;           /* the option; NULL ends a list */
    enum block_setting_type type;
    struct block_node *node;    /* NODE */
    const char *str;            /* STR */
    int64_t num;                /* INT */
    bool flag;                  /* BOOL */
};

#define BLOCK_SET_NODE(NAME, NODE)                                           \
    ((struct block_setting) { .name = NAME, .type = BLOCK_SETTING_NODE,      \
                              .node = NODE })
#define BLOCK_SET_STR(NAME, STR)                                             \
    ((struct block_setting) { .name = NAME, .type = BLOCK_SETTING_STR,       \
                              .str = STR })
#define BLOCK_SET_INT(NAME, NUM)                                             \
    ((struct block_setting) { .name = NAME, .type = BLOCK_SETTING_INT,       \
                              .num = NUM })
#define BLOCK_SET_BOOL(NAME, FLAG)                                           \
    ((struct block_setting) { .name = NAME, .type = BLOCK_SETTING_BOOL,      \
                              .flag = FLAG })

/* Create a node of driver from settings ({NULL}-ended).  Returns a new
 * reference, or NULL with *errp set.  Main thread. */
struct block_node *block_node_new_typed(const char *driver,
                                        const struct block_setting *settings,
                                        struct err **errp);
/* The same with what the creator tells the driver beyond options (QEMU's
 * open flags, such as the backup job's discard-source): priv_size bytes
 * copied to node->typed_private for every open of the node, reopen
 * included. */
struct block_node *block_node_new_typed_private(
    const char *driver, const struct block_setting *settings,
    const void *priv, size_t priv_size, struct err **errp);
/* Shorthand for tools: "-f FMT FILE". */
struct block_node *block_node_open_file(const char *filename, const char *fmt,
                                        bool read_only, struct err **errp);
/*
 * The cache mode of QEMU's tools (-t/-T, qemu-io -t/-n) as options of the
 * top node of a graph, which its children inherit: "none" (or "off")
 * sets cache.direct (O_DIRECT), "writeback" is the default, "unsafe" sets
 * cache.no-flush.  What opts already says about "cache" wins.
 * "writethrough" and "directsync" (a flush after every write) are refused
 * with -ENOTSUP, unknown modes with -EINVAL, each with a message.
 */
int block_opts_set_cache_mode(json_t *opts, const char *mode,
                              struct err **errp);

/*
 * File names as QEMU's tools take them (block/core/filename.c): "json:{..}",
 * "blkdebug:[CONFIG]:NAME", NBD URLs, "null-co://", "file:PATH" or a path.
 * block_filename_options() gives the blockdev-add options of the node the
 * name stands for (a protocol or filter, no format); an unknown "proto:"
 * prefix is refused.  Main thread.
 */
json_t *block_filename_options(const char *filename, struct err **errp);
/* The driver whose filename_prefixes the name starts with, or NULL (a
 * plain path, json:, or an unknown protocol). */
const struct block_driver *block_filename_protocol(const char *filename);
bool block_filename_is_nbd_url(const char *filename);

/*
 * Open an image from a file name (or NULL) and options (or NULL) the way
 * qemu-io and qemu-img do: the name goes below the format given by
 * options' "driver" (or, for a protocol driver, is its file name); with
 * no driver the format is probed through the protocol layer (qcow2 by its
 * magic, else raw: *probed_raw tells, so that the caller can warn).
 * Children given by a "filename" without a driver get one from the name.
 */
struct block_node *block_open_image(const char *filename, json_t *options,
                                    bool *probed_raw, struct err **errp);

/*
 * The aio mode ("threads", "native", "io_uring") of every file node opened
 * from now on whose options name none, backing files included: qemu-io's
 * --aio, which QEMU passes down as an open flag.  NULL (the start): the
 * file driver's own default.  Main thread.
 */
void block_file_set_default_aio(const char *mode);

/*
 * Backing chains: at most BLOCK_MAX_BACKING_CHAIN images, the top one
 * included (QEMU 7.2 has no limit and recurses until it runs out of file
 * descriptors); opening a deeper one fails with a clear error.  Nested
 * node options (children of children) stop at BLOCK_MAX_OPEN_NESTING.
 */
#define BLOCK_MAX_BACKING_CHAIN 256
#define BLOCK_MAX_OPEN_NESTING (BLOCK_MAX_BACKING_CHAIN + 64)

/*
 * For a format's open, before it opens the backing file its image names
 * at path: -ELOOP with *errp set when that file (same device and inode)
 * is an image being opened above it on this thread, i.e. the chain would
 * loop.  Any thread.
 */
int block_backing_chain_check(const char *path, struct err **errp);

void block_node_ref(struct block_node *node);
void block_node_unref(struct block_node *node);

struct block_node *block_node_find(const char *node_name);
/* Iterate over all nodes: pass NULL first. */
struct block_node *block_node_next(struct block_node *prev);

/*
 * For drivers' open: attach the child given by option "name" in options
 * (inline object, node-name string).  Returns NULL with *errp set when the
 * option is missing or the child cannot be opened.  perm/shared default
 * from the driver's child_perm or the core's defaults.
 */
struct block_child *block_node_open_child(struct block_node *parent,
                                          json_t *options, const char *name,
                                          struct err **errp);
/* The same, for a child given by option opt_name but attached in the role
 * child_name (blkdebug's "image" is its "file"). */
struct block_child *block_node_open_child_as(struct block_node *parent,
                                             json_t *options,
                                             const char *opt_name,
                                             const char *child_name,
                                             struct err **errp);
/* The same for element i of a CHILD_LIST option: attached as child
 * "list_name.i" ("children.0"). */
struct block_child *block_node_open_child_at(struct block_node *parent,
                                             json_t *options,
                                             const char *list_name, size_t i,
                                             struct err **errp);
/* Attach an existing node as child "name" of parent (takes a reference). */
struct block_child *block_node_attach_child(struct block_node *parent,
                                            struct block_node *child,
                                            const char *name,
                                            struct err **errp);
void block_node_detach_child(struct block_node *parent,
                             struct block_child *child);
struct block_child *block_node_child(struct block_node *node,
                                     const char *name);
/* The file name of the node's storage (QEMU's bs->filename when it is a
 * plain name): the "filename" option of the node or, failing that, of the
 * first node down its "file" children that has one; NULL when none does
 * (an NBD node, null-co).  The one file-name helper: callers that want
 * QEMU's json:{...} form for the NULL case build it from the options. */
const char *block_node_filename(struct block_node *node);
/* The name qemu-img shows for node: block_node_filename(), or down the
 * same "file" chain a driver's own (refresh_filename: nbd's URL); NULL
 * when neither exists. */
const char *block_node_exact_filename(struct block_node *node);
/*
 * Graph edits that move edges (main thread; they drain themselves).  Every
 * move checks permissions once all edges point to their new node (moving
 * them one by one could conflict half way) and is undone on failure; a
 * frozen edge or a loop is refused.  A parent node's options follow its
 * edges: an option naming the old child by node-name names the new one
 * afterwards, so that a reopen opens the same graph.
 */
/* Point an existing edge at another node. */
int block_child_replace_node(struct block_child *c, struct block_node *to,
                             struct err **errp);
/* The same for n edges at once. */
int block_children_replace_node(struct block_child *const *edges, size_t n,
                                struct block_node *to, struct err **errp);

/* Which parents of "from" stay where they are: true keeps edge c. */
typedef bool block_parent_stays_fn(const struct block_child *c,
                                   void *opaque);
/* The edges one replacement moved: to undo it, then free it. */
struct block_moved_edges {
    struct block_node *from;
    struct block_node *to;
    struct block_child **edges;
    size_t n;
};

/*
 * Every parent of "from" (nodes and handles) now points to "to", except:
 * parents below "to" (its own link to "from": inserting a filter, or a
 * loop), jobs (their use of a node stays with the node, as QEMU's
 * stay_at_node), and the parents for which stays(c, opaque) says true
 * (stays may be NULL).  Used to insert and remove filters above live
 * nodes (fleecing, backup's copy-before-write filter, replication).  When
 * moved is not NULL it receives the moved edges on success (undo with
 * block_moved_edges_undo(), then block_moved_edges_free()).
 */
int block_replace_node_except(struct block_node *from, struct block_node *to,
                              block_parent_stays_fn *stays, void *opaque,
                              struct block_moved_edges *moved,
                              struct err **errp);
/* block_replace_node_except() with no exception and no undo. */
int block_replace_node(struct block_node *from, struct block_node *to,
                       struct err **errp);
/* Move the edges back to "from" (cannot conflict: they were there). */
void block_moved_edges_undo(struct block_moved_edges *m);
void block_moved_edges_free(struct block_moved_edges *m);

/*
 * Make a node read-only or read-write in place (block/core/reopen.c): the
 * driver is closed and opened again from its options, inline children
 * too; drains itself.  Going read-only is refused while a parent writes.
 */
int block_node_set_read_only(struct block_node *node, bool read_only,
                             struct err **errp);

/*
 * The core's default perms for a child role of a node, from what the
 * node's parents hold and share (QEMU's bdrv_default_perms): "backing"
 * takes consistent read if the parents read and shares writing only if
 * they do; a format's "file" (its storage) takes what the parents take
 * plus consistent read, and write and resize unless the node is
 * read-only, and never shares write or resize; every other role is a
 * filter's: what the parents take and share passes through.
 */
void block_default_child_perm(struct block_node *node, const char *child_name,
                              uint32_t parent_perm, uint32_t parent_shared,
                              uint32_t *perm, uint32_t *shared);
/* The union of what node's parents hold and the intersection of what
 * they share. */
void block_node_cumulative_perm(struct block_node *node, uint32_t *perm,
                                uint32_t *shared);
/*
 * Recompute the permissions of node and of everything below it, from
 * node's parents down (QEMU's bdrv_refresh_perms): every node's parents
 * are checked against each other, drivers' set_perm see the new union,
 * and every edge below gets what its parent now needs.  On failure
 * nothing changed and *errp has QEMU's message ("Permission conflict on
 * node ...").
 */
int block_node_refresh_perm(struct block_node *node, struct err **errp);
/*
 * Freeze what edge c holds and shares at perm/shared, whatever its parent
 * needs (commit uses it instead of QEMU's commit_top filter: the overlay
 * above a committed range reads nothing below while the job runs), or let
 * it follow its parent again (block_child_unfix_perm, cannot fail).
 */
int block_child_fix_perm(struct block_child *c, uint32_t perm,
                         uint32_t shared, struct err **errp);
void block_child_unfix_perm(struct block_child *c);

/* Describe a parent for messages, in QEMU's words: "node 'x'", "an
 * unnamed block device", "backup job 'j0'". */
char *block_child_parent_desc(const struct block_child *c);

/* Names of the bits in perm, comma-separated ("write, resize"). */
char *block_perm_names(uint32_t perm);

/*
 * Jobs block operations on the nodes they use (QEMU's op blockers): true
 * and "Node 'x' is busy: block device is in use by block job: backup"
 * when a job's handle is a parent of node.
 */
bool block_node_op_blocked(struct block_node *node, struct err **errp);
/* Is a block backend (a handle that is not a job's) a parent of node?
 * blockdev-del refuses then ("Node x is in use"). */
bool block_node_has_backend(struct block_node *node);

/*
 * Opening in two steps, so that waits on remote peers happen outside the
 * graph lock and off the main thread (blockdev-add):
 *   1. block_prepare(options): any thread, no lock, no graph access: runs
 *      the prepare callback of every node in the options tree that has
 *      one (an NBD connection), in tree order.  cancel_fd (or -1) ends it
 *      early.  NULL with *errp set when one fails.
 *   2. block_node_new_prepared(options, prep): main thread, like
 *      block_node_new(); drivers' open takes its prepared state with
 *      block_prepared_take() (a node with nothing prepared for it opens
 *      the slow way).
 * block_prep_free() releases what was not taken.
 */
struct block_prep;
/* Does any node in options have a prepare step? */
bool block_needs_prepare(json_t *options);
struct block_prep *block_prepare(json_t *options, int cancel_fd,
                                 struct err **errp);
struct block_node *block_node_new_prepared(json_t *options,
                                           struct block_prep *prep,
                                           struct err **errp);
void block_prep_free(struct block_prep *prep);
/* For drv's open: the state prepared for options (fits tells whether
 * the options it was prepared for open the same thing), or NULL. */
void *block_prepared_take(const struct block_driver *drv, json_t *options,
                          bool (*fits)(json_t *prepared_for,
                                       json_t *options));

/*
 * Draining: after block_drain_begin() returns, no request runs anywhere in
 * the graph and none can enter through a handle until block_drain_end().
 * Main thread; nests.
 */
void block_drain_begin(void);
void block_drain_end(void);
bool block_drained(void);
/* clock_ns() when the current drain began to wait for requests (it may
 * hold the graph by now), 0 when none: drivers waiting on a remote peer
 * give up after a while so that a drain never waits on a peer for long.
 * Any thread. */
int64_t block_drain_waiting_since(void);
/* The process is shutting down: from now on block_drain_waiting_since()
 * reports at least this moment, so that requests waiting on a peer give
 * up (exports wait for their requests before they close). */
void block_shutdown_begin(void);

/* ---- Requests (any thread) -------------------------------------------- */

int64_t block_getlength(struct block_node *node);
int block_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
                void *buf, unsigned flags);
int block_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
                 const void *buf, unsigned flags);
/*
 * Several reads (writes) of one node that belong to one request, such as
 * the host clusters of a guest read that are not contiguous: submitted
 * together where the driver can (the file driver: one io_uring
 * submission, or one preadv/pwritev for neighbours), else one by one.
 * The pieces must not overlap.  Returns 0 or the first error (then some
 * pieces may be done and others not).
 */
int block_pread_segments(struct block_node *node,
                         const struct block_segment *seg, unsigned n,
                         unsigned flags);
int block_pwrite_segments(struct block_node *node,
                          const struct block_segment *seg, unsigned n,
                          unsigned flags);
int block_pwrite_zeroes(struct block_node *node, uint64_t offset,
                        uint64_t bytes, unsigned flags);
int block_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes);
int block_flush(struct block_node *node);
/*
 * Status of the range in node and, through unallocated parts, its backing
 * chain.  Returns BLOCK_STATUS_* flags and sets *pnum (> 0).  Unallocated
 * everywhere reads as zero: flags ZERO, depth 0.
 */
int block_status(struct block_node *node, uint64_t offset, uint64_t bytes,
                 uint64_t *pnum, struct block_status_info *info);
/* Only this layer: is [offset, +bytes) allocated here? returns 0/1, -errno. */
int block_is_allocated(struct block_node *node, uint64_t offset,
                       uint64_t bytes, uint64_t *pnum);
int block_truncate(struct block_node *node, uint64_t length,
                   struct err **errp);
int block_make_empty(struct block_node *node, struct err **errp);
int64_t block_allocated_size(struct block_node *node);

/* Tell the node (and filters below it) that event happened: blkdebug. */
void block_debug_event(struct block_node *node, const char *event);

/* Is node from itself or below it (through any children)? */
bool block_node_reaches(struct block_node *from, struct block_node *node);

/* The filtered child of a filter (or NULL), and the first non-filter. */
struct block_node *block_filtered(struct block_node *node);
struct block_node *block_skip_filters(struct block_node *node);

/* ---- Handles: how non-node parents use a node ------------------------- */

/*
 * A handle is either a block backend (QEMU's BlockBackend: an export, a
 * tool, the temporary user block_resize makes; its edge is "root") or a
 * job's use of a node (QEMU's block_job_add_bdrv: the edge is named after
 * the node's role in the job, "main node", "target", ...).  A job's
 * handle also blocks operations on the node (block_node_op_blocked).
 */
struct block_handle {
    struct block_child child;    /* child.node is the node in use */
    char *owner;                 /* ours, for logs: "export 'exp0'", ... */
    char *job_type;              /* a job's handle: "backup", ...; or NULL */
    char *job_id;                /* a job's handle: the job's id */
};

/* Main thread.  Fails when perm conflicts with other users of node. */
struct block_handle *block_handle_new(struct block_node *node,
                                      const char *owner, uint32_t perm,
                                      uint32_t shared, struct err **errp);
/* The same for a job: role names the edge ("main node", "target"). */
struct block_handle *block_handle_new_job(struct block_node *node,
                                          const char *job_type,
                                          const char *job_id,
                                          const char *role, uint32_t perm,
                                          uint32_t shared, struct err **errp);
/* Change what a handle holds and shares (refused on conflict). */
int block_handle_set_perm(struct block_handle *h, uint32_t perm,
                          uint32_t shared, struct err **errp);
void block_handle_free(struct block_handle *h);
static inline struct block_node *
block_handle_node(struct block_handle *h)
{
    return h->child.node;
}

/*
 * Requests through a handle: they enter the graph (waiting while it is
 * drained) and count as in flight until they return.  Any thread.
 */
int64_t block_handle_getlength(struct block_handle *h);
int block_handle_pread(struct block_handle *h, uint64_t offset,
                       uint64_t bytes, void *buf, unsigned flags);
int block_handle_pwrite(struct block_handle *h, uint64_t offset,
                        uint64_t bytes, const void *buf, unsigned flags);
int block_handle_pwrite_zeroes(struct block_handle *h, uint64_t offset,
                               uint64_t bytes, unsigned flags);
int block_handle_pdiscard(struct block_handle *h, uint64_t offset,
                          uint64_t bytes);
int block_handle_flush(struct block_handle *h);
int block_handle_status(struct block_handle *h, uint64_t offset,
                        uint64_t bytes, uint64_t *pnum,
                        struct block_status_info *info);

/*
 * Resize through a handle that holds BLOCK_PERM_RESIZE (-EPERM otherwise),
 * from any thread: inside the graph like a request, without a drain (a
 * FUSE export's truncate).  Drivers' truncate tolerate requests in
 * flight: qcow2 waits for them, a file's ftruncate is atomic.
 */
int block_handle_truncate(struct block_handle *h, uint64_t length,
                          struct err **errp);

/* Enter/leave the graph by hand for a sequence of node calls. */
void block_graph_enter(void);
void block_graph_leave(void);

#endif
