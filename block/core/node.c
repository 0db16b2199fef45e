/* SPDX-License-Identifier: MIT */
/*
 * The node graph: creating nodes from blockdev-add options, children and
 * parents, reference counts, permissions, replacing a node under its
 * parents, and draining.
 *
 * Design notes.
 *
 * All graph state (the node list, every node's children and parents lists,
 * refcounts, edges' perms) belongs to the main thread.  Requests read the
 * graph without locks: they hold the graph read lock (block_graph_enter)
 * for as long as they run, and every change of an edge that a request could
 * follow happens under the write lock (block_drain_begin).  So a request
 * sees the graph either wholly before or wholly after a change.
 *
 * Permissions are QEMU's model: every edge (a node's child, or a handle)
 * holds perm on its child node and shares shared with the node's other
 * users.  A handle's are what its user asked for; a node's edges to its
 * children are derived from what the node's own parents hold and share
 * (drv->child_perm, or block_default_child_perm), so needs propagate down
 * the graph: an export that writes a raw node makes the raw node write its
 * file, a copy-before-write filter that refuses resizing of its source
 * makes every node below refuse it too.  After any change (an edge added,
 * moved or removed, a handle's perms changed) refresh_perms() walks the
 * subtrees concerned, parents before children: it checks every pair of a
 * node's parents against each other (QEMU's "Permission conflict on node"
 * message), refuses writers on read-only nodes, tells drivers the new
 * union and intersection (set_perm: the file driver's image locks), and
 * recomputes the edges below.  A failed refresh is undone completely.
 * Jobs hold handles too (block_handle_new_job), and a job's handle blocks
 * operations on its node as QEMU's op blockers do.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block/core/core-internal.h"
#include "block/core/opts.h"
#include "lockstep/driver.h"
#include "lockstep/dirty-bitmap.h"
#include "keyval.h"
#include "runtime/loop.h"
#include "util.h"

/* All nodes, in creation order.  Main thread only. */
static TAILQ_HEAD(, block_node) all_nodes = TAILQ_HEAD_INITIALIZER(all_nodes);
static unsigned next_auto_id;

/*
 * The graph lock.  Readers are requests in flight (entered through a
 * handle or block_graph_enter); the writer is a drained section.  Writers
 * are preferred so that a drain cannot be starved by new requests.
 */
static pthread_rwlock_t graph_lock =
    PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;
static __thread int graph_read_depth;   /* this thread's nesting */
static __thread bool graph_is_writer;   /* this thread holds the drain */
static int drain_depth;                 /* main thread only */
static int64_t drain_since;             /* atomic; see header */
static int64_t shutdown_since;          /* atomic */

static struct block_node *node_new(json_t *options, const char *prefix,
                                   const char *role, const void *priv,
                                   size_t priv_size, struct err **errp);

/*
 * The nodes this thread is opening, innermost last: opening a node opens
 * its children from inside its driver's open, so every entry is an
 * ancestor of the next.  Backing chains are checked against it (loops,
 * depth) before they recurse any further.
 */
struct open_frame {
    struct block_node *node;
    bool is_backing;            /* opened as some node's "backing" child */
};
static __thread struct open_frame open_stack[BLOCK_MAX_OPEN_NESTING];
static __thread int open_depth;

/* ---- Draining --------------------------------------------------------- */

void
block_graph_enter(void)
{
    /* The drainer itself and nested entries do not lock again: taking a
     * writer-preferring read lock twice would deadlock against a drain. */
    if (graph_is_writer || graph_read_depth++ > 0) {
        return;
    }
    lock_order_enter(LOCK_GRAPH);
    if (pthread_rwlock_tryrdlock(&graph_lock) == 0) {
        return;
    }
    thread_may_block();     /* a drain is pending or running */
    if (pthread_rwlock_rdlock(&graph_lock) != 0) {
        abort();
    }
}

void
block_graph_leave(void)
{
    if (graph_is_writer) {
        return;
    }
    assert(graph_read_depth > 0);
    if (--graph_read_depth == 0) {
        pthread_rwlock_unlock(&graph_lock);
        lock_order_leave(LOCK_GRAPH);
    }
}

void
block_drain_begin(void)
{
    assert_main_thread();
    /* A thread inside a request must never drain: it would wait for
     * itself. */
    assert(graph_read_depth == 0);
    if (drain_depth++ == 0) {
        __atomic_store_n(&drain_since, clock_ns(), __ATOMIC_RELAXED);
        lock_order_enter(LOCK_GRAPH);
        if (pthread_rwlock_wrlock(&graph_lock) != 0) {
            abort();
        }
        graph_is_writer = true;
    }
}

void
block_drain_end(void)
{
    assert_main_thread();
    assert(drain_depth > 0 && graph_is_writer);
    if (--drain_depth == 0) {
        graph_is_writer = false;
        __atomic_store_n(&drain_since, 0, __ATOMIC_RELAXED);
        pthread_rwlock_unlock(&graph_lock);
        lock_order_leave(LOCK_GRAPH);
    }
}

int64_t
block_drain_waiting_since(void)
{
    int64_t since = __atomic_load_n(&drain_since, __ATOMIC_RELAXED);
    int64_t down = __atomic_load_n(&shutdown_since, __ATOMIC_RELAXED);

    return down && (!since || down < since) ? down : since;
}

void
block_shutdown_begin(void)
{
    __atomic_store_n(&shutdown_since, clock_ns(), __ATOMIC_RELAXED);
}

bool
block_drained(void)
{
    return graph_is_writer;
}

/* ---- Lookup ----------------------------------------------------------- */

struct block_node *
block_node_find(const char *node_name)
{
    struct block_node *node;

    if (!node_name) {
        return NULL;
    }
    TAILQ_FOREACH(node, &all_nodes, all_link) {
        if (!strcmp(node->node_name, node_name)) {
            return node;
        }
    }
    return NULL;
}

struct block_node *
block_node_next(struct block_node *prev)
{
    return prev ? TAILQ_NEXT(prev, all_link) : TAILQ_FIRST(&all_nodes);
}

struct block_child *
block_node_child(struct block_node *node, const char *name)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &node->children, child_link) {
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}

const char *
block_node_filename(struct block_node *node)
{
    for (; node; node = node->file ? node->file->node : NULL) {
        const char *fn = block_opt_str(node->options, "filename", NULL);

        if (fn) {
            return fn;
        }
    }
    return NULL;
}

const char *
block_node_exact_filename(struct block_node *node)
{
    for (; node; node = node->file ? node->file->node : NULL) {
        const char *fn = block_opt_str(node->options, "filename", NULL);

        if (!fn && node->drv->refresh_filename) {
            fn = node->drv->refresh_filename(node);
        }
        if (fn) {
            return fn;
        }
    }
    return NULL;
}

struct block_node *
block_filtered(struct block_node *node)
{
    if (node && node->drv->kind == BLOCK_KIND_FILTER && node->file) {
        return node->file->node;
    }
    return NULL;
}

void
block_debug_event(struct block_node *node, const char *event)
{
    while (node) {
        if (node->drv->debug_event) {
            node->drv->debug_event(node, event);
        }
        node = block_filtered(node);
    }
}

struct block_node *
block_skip_filters(struct block_node *node)
{
    while (node && block_filtered(node)) {
        node = block_filtered(node);
    }
    return node;
}

bool
block_node_reaches(struct block_node *from, struct block_node *node)
{
    struct block_child *c;

    if (from == node) {
        return true;
    }
    TAILQ_FOREACH(c, &from->children, child_link) {
        if (block_node_reaches(c->node, node)) {
            return true;
        }
    }
    return false;
}

/* ---- Permissions ------------------------------------------------------ */

static const char *const perm_names[] = {
    "consistent read", "write", "write unchanged", "resize",
};

char *
block_perm_names(uint32_t perm)
{
    char buf[64] = "";

    for (unsigned i = 0; i < ARRAY_SIZE(perm_names); i++) {
        if (perm & (1u << i)) {
            if (buf[0]) {
                strcat(buf, ", ");
            }
            strcat(buf, perm_names[i]);
        }
    }
    return xstrdup(buf);
}

char *
block_child_parent_desc(const struct block_child *c)
{
    const struct block_handle *h = c->parent_handle;

    if (c->parent_node) {
        return xasprintf("node '%s'", c->parent_node->node_name);
    }
    if (h && h->job_type) {
        return xasprintf("%s job '%s'", h->job_type, h->job_id);
    }
    /* What QEMU calls a BlockBackend without a device name. */
    return xstrdup("an unnamed block device");
}

void
block_default_child_perm(struct block_node *node, const char *child_name,
                         uint32_t parent_perm, uint32_t parent_shared,
                         uint32_t *perm, uint32_t *shared)
{
    if (!strcmp(child_name, "backing")) {
        /* Read when the parents read; whoever may change the overlay's
         * data may also change what lies below it. */
        *perm = parent_perm & BLOCK_PERM_CONSISTENT_READ;
        *shared = BLOCK_PERM_CONSISTENT_READ | BLOCK_PERM_WRITE_UNCHANGED;
        if (parent_shared & BLOCK_PERM_WRITE) {
            *shared |= BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE;
        }
        return;
    }
    /* A filter passes its parents' needs through. */
    *perm = parent_perm & BLOCK_PERM_ALL;
    *shared = parent_shared & BLOCK_PERM_ALL;
    if (node->drv->kind == BLOCK_KIND_FORMAT && !strcmp(child_name, "file")) {
        /* A format's storage: metadata is read (and written, unless the
         * node is read-only) whatever the parents do, and nobody else
         * may change or resize the image under it. */
        *perm |= BLOCK_PERM_CONSISTENT_READ;
        if (!node->read_only) {
            *perm |= BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE;
        }
        if (*perm & BLOCK_PERM_WRITE_UNCHANGED) {
            *perm |= BLOCK_PERM_WRITE;
        }
        if (*perm & BLOCK_PERM_WRITE) {
            *perm |= BLOCK_PERM_RESIZE;
        }
        *shared &= ~(BLOCK_PERM_WRITE | BLOCK_PERM_RESIZE);
    }
}

void
block_node_cumulative_perm(struct block_node *node, uint32_t *perm,
                           uint32_t *shared)
{
    struct block_child *c;

    *perm = 0;
    *shared = BLOCK_PERM_ALL;
    TAILQ_FOREACH(c, &node->parents, parent_link) {
        *perm |= c->perm;
        *shared &= c->shared;
    }
}

/* What edge c should hold now: its parent node's needs, or as it is for
 * handles and fixed edges. */
static void
edge_wanted_perm(const struct block_child *c, uint32_t *perm,
                 uint32_t *shared)
{
    struct block_node *p = c->parent_node;
    uint32_t pp, ps;

    *perm = c->perm;
    *shared = c->shared;
    if (!p || c->perm_fixed) {
        return;
    }
    block_node_cumulative_perm(p, &pp, &ps);
    if (p->drv->child_perm) {
        p->drv->child_perm(p, c->name, pp, ps, perm, shared);
    } else {
        block_default_child_perm(p, c->name, pp, ps, perm, shared);
    }
    /* force-share on the child lets everyone in (QEMU's rule). */
    if (c->node && c->node->force_share) {
        *shared = BLOCK_PERM_ALL;
    }
}

/* Does edge a let edge b (same node) hold what b holds?  QEMU's check and
 * message. */
static bool
edge_allows(const struct block_child *a, const struct block_child *b,
            struct err **errp)
{
    uint32_t bad = b->perm & ~a->shared;
    const char *node_name;
    CLEANUP_FREE char *perms = NULL;
    CLEANUP_FREE char *a_user = NULL;
    CLEANUP_FREE char *b_user = NULL;

    if (!bad) {
        return true;
    }
    node_name = b->node->node_name;
    perms = block_perm_names(bad);
    a_user = block_child_parent_desc(a);
    b_user = block_child_parent_desc(b);
    err_setf(errp, "Permission conflict on node '%s': permissions '%s' are "
             "both required by %s (uses node '%s' as '%s' child) and "
             "unshared by %s (uses node '%s' as '%s' child).", node_name,
             perms, b_user, node_name, b->name, a_user, node_name, a->name);
    return false;
}

/* Any two parents of node at odds?  Newest parents first, as QEMU lists
 * them, so that the same graph gives the same message. */
static bool
parents_conflict(struct block_node *node, struct err **errp)
{
    struct block_child *a, *b;

    TAILQ_FOREACH_REVERSE(a, &node->parents, block_child_list, parent_link) {
        TAILQ_FOREACH_REVERSE(b, &node->parents, block_child_list,
                              parent_link) {
            if (a != b && !edge_allows(a, b, errp)) {
                return true;
            }
        }
    }
    return false;
}

/*
 * A refresh: the nodes to visit, parents before children, and what it
 * changed (edges, and nodes whose driver saw new permissions), to undo
 * it on failure.
 */
struct perm_undo {
    struct block_child *edge;      /* an edge's old perm/shared, or */
    struct block_node *node;       /* a node's old cur_perm/cur_shared */
    uint32_t perm, shared;
};

struct perm_refresh {
    struct block_node **seen;      /* every node entered */
    size_t nseen, seen_cap;
    struct block_node **nodes;     /* post-order: children first */
    size_t nnodes, cap;
    struct perm_undo *undo;
    size_t nundo, undo_cap;
};

static void
node_list_add(struct block_node ***list, size_t *n, size_t *cap,
              struct block_node *node)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        *list = xrealloc(*list, *cap * sizeof(**list));
    }
    (*list)[(*n)++] = node;
}

static void
refresh_add_subtree(struct perm_refresh *r, struct block_node *node)
{
    struct block_child *c;

    for (size_t i = 0; i < r->nseen; i++) {
        if (r->seen[i] == node) {
            return;
        }
    }
    node_list_add(&r->seen, &r->nseen, &r->seen_cap, node);
    /* What is below node is listed first (the graph has no cycles;
     * "seen" only keeps a broken one from recursing forever). */
    TAILQ_FOREACH(c, &node->children, child_link) {
        refresh_add_subtree(r, c->node);
    }
    node_list_add(&r->nodes, &r->nnodes, &r->cap, node);
}

static void
refresh_log(struct perm_refresh *r, struct block_child *edge,
            struct block_node *node, uint32_t perm, uint32_t shared)
{
    if (r->nundo == r->undo_cap) {
        r->undo_cap = r->undo_cap ? r->undo_cap * 2 : 16;
        r->undo = xrealloc(r->undo, r->undo_cap * sizeof(*r->undo));
    }
    r->undo[r->nundo++] = (struct perm_undo){ edge, node, perm, shared };
}

/* Check node's parents, tell its driver, and update its child edges. */
static int
refresh_node(struct perm_refresh *r, struct block_node *node,
             struct err **errp)
{
    struct block_child *c;
    uint32_t perm, shared;

    if (parents_conflict(node, errp)) {
        return -EPERM;
    }
    block_node_cumulative_perm(node, &perm, &shared);
    if ((perm & (BLOCK_PERM_WRITE | BLOCK_PERM_WRITE_UNCHANGED)) &&
        node->read_only) {
        err_setf(errp, "Block node is read-only");
        return -EPERM;
    }
    if (perm != node->cur_perm || shared != node->cur_shared) {
        if (node->drv->set_perm) {
            int ret = node->drv->set_perm(node, perm, shared, errp);

            if (ret < 0) {
                return ret;
            }
        }
        refresh_log(r, NULL, node, node->cur_perm, node->cur_shared);
        node->cur_perm = perm;
        node->cur_shared = shared;
    }
    TAILQ_FOREACH(c, &node->children, child_link) {
        uint32_t cp, cs;

        edge_wanted_perm(c, &cp, &cs);
        if (cp != c->perm || cs != c->shared) {
            refresh_log(r, c, NULL, c->perm, c->shared);
            c->perm = cp;
            c->shared = cs;
        }
    }
    return 0;
}

/* Put back every edge first, then tell the drivers the old values. */
static void
refresh_undo(struct perm_refresh *r)
{
    for (size_t i = r->nundo; i-- > 0;) {
        struct perm_undo *u = &r->undo[i];

        if (u->edge) {
            u->edge->perm = u->perm;
            u->edge->shared = u->shared;
        }
    }
    for (size_t i = r->nundo; i-- > 0;) {
        struct perm_undo *u = &r->undo[i];

        if (u->node) {
            if (u->node->drv->set_perm) {
                /* Going back to what held before; nothing to report. */
                u->node->drv->set_perm(u->node, u->perm, u->shared, NULL);
            }
            u->node->cur_perm = u->perm;
            u->node->cur_shared = u->shared;
        }
    }
}

/* Refresh the subtrees of roots (NULL entries skipped), parents first. */
static int
refresh_perms(struct block_node *const *roots, size_t nroots,
              struct err **errp)
{
    struct perm_refresh r = {0};
    int ret = 0;

    assert_main_thread();
    for (size_t i = 0; i < nroots; i++) {
        if (roots[i]) {
            refresh_add_subtree(&r, roots[i]);
        }
    }
    for (size_t i = r.nnodes; i-- > 0 && ret == 0;) {
        ret = refresh_node(&r, r.nodes[i], errp);
    }
    if (ret < 0) {
        refresh_undo(&r);
    }
    free(r.seen);
    free(r.nodes);
    free(r.undo);
    return ret;
}

int
block_node_refresh_perm(struct block_node *node, struct err **errp)
{
    return refresh_perms(&node, 1, errp);
}

int
block_child_fix_perm(struct block_child *c, uint32_t perm, uint32_t shared,
                     struct err **errp)
{
    uint32_t old_perm = c->perm, old_shared = c->shared;
    bool old_fixed = c->perm_fixed;

    c->perm_fixed = true;
    c->perm = perm;
    c->shared = shared;
    if (block_node_refresh_perm(c->node, errp) < 0) {
        c->perm_fixed = old_fixed;
        c->perm = old_perm;
        c->shared = old_shared;
        block_node_refresh_perm(c->node, NULL);
        return -EPERM;
    }
    return 0;
}

void
block_child_unfix_perm(struct block_child *c)
{
    if (!c->perm_fixed) {
        return;
    }
    c->perm_fixed = false;
    /* Loosening or not, the edge follows its parent from now on; a
     * conflict here would come from a caller's order (jobs release their
     * handles first) and changes nothing. */
    block_node_refresh_perm(c->parent_node ? c->parent_node : c->node, NULL);
}

bool
block_node_op_blocked(struct block_node *node, struct err **errp)
{
    struct block_child *c;

    /* The newest job first, as QEMU lists its blockers. */
    TAILQ_FOREACH_REVERSE(c, &node->parents, block_child_list, parent_link) {
        struct block_handle *h = c->parent_handle;

        if (h && h->job_type) {
            err_setf(errp, "Node '%s' is busy: block device is in use by "
                     "block job: %s", node->node_name, h->job_type);
            return true;
        }
    }
    return false;
}

bool
block_node_has_backend(struct block_node *node)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &node->parents, parent_link) {
        if (c->parent_handle && !c->parent_handle->job_type) {
            return true;
        }
    }
    return false;
}

/* ---- Edges ------------------------------------------------------------ */

static void
edge_link(struct block_child *c, struct block_node *child)
{
    c->node = child;
    block_node_ref(child);
    TAILQ_INSERT_TAIL(&child->parents, c, parent_link);
}

static void
edge_unlink(struct block_child *c)
{
    struct block_node *child = c->node;

    TAILQ_REMOVE(&child->parents, c, parent_link);
    c->node = NULL;
    /* Dropping a permission cannot fail in a way we could act on. */
    block_node_refresh_perm(child, NULL);
    block_node_unref(child);
}

/* Link c (perm set) to child and refresh the permissions below;
 * -EPERM on conflict, with nothing changed. */
static int
edge_attach(struct block_child *c, struct block_node *child,
            struct err **errp)
{
    int ret;

    edge_link(c, child);
    ret = block_node_refresh_perm(child, errp);
    if (ret < 0) {
        edge_unlink(c);
    }
    return ret;
}

struct block_child *
block_node_attach_child(struct block_node *parent, struct block_node *child,
                        const char *name, struct err **errp)
{
    struct block_child *c = xzalloc(sizeof(*c));

    assert_main_thread();
    c->name = xstrdup(name);
    c->parent_node = parent;
    c->node = child;        /* for force-share; linked by edge_attach */
    edge_wanted_perm(c, &c->perm, &c->shared);
    c->node = NULL;
    if (edge_attach(c, child, errp) < 0) {
        free(c->name);
        free(c);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&parent->children, c, child_link);
    if (!strcmp(name, "file")) {
        parent->file = c;
    } else if (!strcmp(name, "backing")) {
        parent->backing = c;
    }
    return c;
}

void
block_node_detach_child(struct block_node *parent, struct block_child *c)
{
    assert_main_thread();
    TAILQ_REMOVE(&parent->children, c, child_link);
    if (parent->file == c) {
        parent->file = NULL;
    }
    if (parent->backing == c) {
        parent->backing = NULL;
    }
    edge_unlink(c);
    free(c->name);
    free(c);
}

/* Refuse an edge from parent to child that would close a cycle (the
 * request path and every walk down the graph would never end). */
static bool
edge_cycle_check(struct block_node *parent, const char *name,
                 struct block_node *child, struct err **errp)
{
    if (!parent || !block_node_reaches(child, parent)) {
        return true;
    }
    err_setf(errp, "Making '%s' a %s child of '%s' would create a cycle",
             child->node_name, name, parent->node_name);
    return false;
}

/* Move edge c from its node to "to" without permission checks. */
static void
edge_move(struct block_child *c, struct block_node *to)
{
    struct block_node *from = c->node;

    TAILQ_REMOVE(&from->parents, c, parent_link);
    block_node_ref(to);
    c->node = to;
    TAILQ_INSERT_TAIL(&to->parents, c, parent_link);
    block_node_unref(from);
}

/* A parent node names its children by node-name in its options: keep that
 * in step with the edge, so that a reopen (which opens the node again
 * from its options) finds the same graph.  Children given inline stay. */
static void
edge_fix_parent_option(struct block_child *c)
{
    json_t *opts = c->parent_node ? c->parent_node->options : NULL;

    if (json_is_string(json_object_get(opts, c->name))) {
        json_object_set_new(opts, c->name, json_string(c->node->node_name));
    }
}

int
block_children_replace_node(struct block_child *const *edges, size_t n,
                            struct block_node *to, struct err **errp)
{
    struct block_node **from;
    int ret;

    assert_main_thread();
    for (size_t i = 0; i < n; i++) {
        struct block_child *c = edges[i];

        if (c->frozen && c->node != to) {
            err_setf(errp, "Cannot change frozen '%s' link from '%s' to '%s'",
                     c->name, c->parent_node ? c->parent_node->node_name : "",
                     c->node->node_name);
            return -EBUSY;
        }
        if (!edge_cycle_check(c->parent_node, c->name, to, errp)) {
            return -ELOOP;
        }
    }
    from = xcalloc(n + 1, sizeof(*from));
    block_drain_begin();
    from[n] = to;
    for (size_t i = 0; i < n; i++) {
        from[i] = edges[i]->node;
        block_node_ref(from[i]);
        edge_move(edges[i], to);
    }
    /* One refresh over all the subtrees concerned, parents before
     * children: "to" may sit above the old nodes (inserting a filter) or
     * below them (removing one). */
    ret = refresh_perms(from, n + 1, errp);
    if (ret < 0) {
        /* Going back to what was there before cannot conflict. */
        for (size_t i = 0; i < n; i++) {
            edge_move(edges[i], from[i]);
        }
        refresh_perms(from, n + 1, NULL);
    } else {
        for (size_t i = 0; i < n; i++) {
            edge_fix_parent_option(edges[i]);
        }
    }
    for (size_t i = 0; i < n; i++) {
        block_node_unref(from[i]);
    }
    free(from);
    block_drain_end();
    return ret;
}

int
block_child_replace_node(struct block_child *c, struct block_node *to,
                         struct err **errp)
{
    return block_children_replace_node(&c, 1, to, errp);
}

int
block_replace_node_except(struct block_node *from, struct block_node *to,
                          block_parent_stays_fn *stays, void *opaque,
                          struct block_moved_edges *moved, struct err **errp)
{
    struct block_child *c;
    struct block_child **edges;
    size_t n = 0, cap = 0;
    int ret;

    assert_main_thread();
    if (moved) {
        *moved = (struct block_moved_edges) { .from = from, .to = to };
    }
    if (from == to) {
        return 0;
    }
    TAILQ_FOREACH(c, &from->parents, parent_link) {
        cap++;
    }
    edges = xcalloc(cap ? cap : 1, sizeof(*edges));
    TAILQ_FOREACH(c, &from->parents, parent_link) {
        /* No edge whose parent lies below "to" moves, or we make a loop
         * (the new node's own link to "from"; a backup target whose
         * backing is the source); a job's use of a node stays with the
         * node (QEMU's stay_at_node), and so do its operation blockers. */
        if ((c->parent_node && block_node_reaches(to, c->parent_node)) ||
            (c->parent_handle && c->parent_handle->job_type) ||
            (stays && stays(c, opaque))) {
            continue;
        }
        edges[n++] = c;
    }
    /* Keep "from" in the refresh even when it had no parent to move. */
    block_node_ref(from);
    if (n) {
        ret = block_children_replace_node(edges, n, to, errp);
    } else {
        block_drain_begin();
        ret = refresh_perms((struct block_node *[]){ from, to }, 2, errp);
        block_drain_end();
    }
    block_node_unref(from);
    if (ret == 0 && moved) {
        moved->edges = edges;
        moved->n = n;
    } else {
        free(edges);
    }
    return ret;
}

int
block_replace_node(struct block_node *from, struct block_node *to,
                   struct err **errp)
{
    return block_replace_node_except(from, to, NULL, NULL, NULL, errp);
}

void
block_moved_edges_undo(struct block_moved_edges *m)
{
    /* Going back to where the edges were does not conflict. */
    block_children_replace_node(m->edges, m->n, m->from, NULL);
}

void
block_moved_edges_free(struct block_moved_edges *m)
{
    free(m->edges);
    m->edges = NULL;
    m->n = 0;
}

/* ---- Handles ---------------------------------------------------------- */

static struct block_handle *
handle_new(struct block_node *node, const char *owner, const char *job_type,
           const char *job_id, const char *role, uint32_t perm,
           uint32_t shared, struct err **errp)
{
    struct block_handle *h = xzalloc(sizeof(*h));

    assert_main_thread();
    h->owner = xstrdup(owner);
    h->job_type = job_type ? xstrdup(job_type) : NULL;
    h->job_id = job_id ? xstrdup(job_id) : NULL;
    h->child.name = xstrdup(role);
    h->child.parent_handle = h;
    h->child.perm = perm;
    h->child.shared = shared;
    if (edge_attach(&h->child, node, errp) < 0) {
        free(h->child.name);
        free(h->job_id);
        free(h->job_type);
        free(h->owner);
        free(h);
        return NULL;
    }
    return h;
}

struct block_handle *
block_handle_new(struct block_node *node, const char *owner, uint32_t perm,
                 uint32_t shared, struct err **errp)
{
    return handle_new(node, owner, NULL, NULL, "root", perm, shared, errp);
}

struct block_handle *
block_handle_new_job(struct block_node *node, const char *job_type,
                     const char *job_id, const char *role, uint32_t perm,
                     uint32_t shared, struct err **errp)
{
    CLEANUP_FREE char *owner = xasprintf("%s job '%s'", job_type, job_id);

    return handle_new(node, owner, job_type, job_id, role, perm, shared,
                      errp);
}

int
block_handle_set_perm(struct block_handle *h, uint32_t perm, uint32_t shared,
                      struct err **errp)
{
    uint32_t old_perm = h->child.perm, old_shared = h->child.shared;

    h->child.perm = perm;
    h->child.shared = shared;
    if (block_node_refresh_perm(h->child.node, errp) < 0) {
        h->child.perm = old_perm;
        h->child.shared = old_shared;
        block_node_refresh_perm(h->child.node, NULL);
        return -EPERM;
    }
    return 0;
}

void
block_handle_free(struct block_handle *h)
{
    assert_main_thread();
    if (!h) {
        return;
    }
    edge_unlink(&h->child);
    free(h->child.name);
    free(h->job_id);
    free(h->job_type);
    free(h->owner);
    free(h);
}

/* ---- Creating nodes --------------------------------------------------- */

static bool
node_name_valid(const char *name)
{
    if (!((name[0] >= 'a' && name[0] <= 'z') ||
          (name[0] >= 'A' && name[0] <= 'Z'))) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') &&
            !(*p >= '0' && *p <= '9') && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}

static bool
assign_node_name(struct block_node *node, json_t *options, struct err **errp)
{
    const char *name = block_opt_str(options, "node-name", NULL);

    if (!name) {
        /* Like QEMU's "#blockNNN": '#' cannot start a user's name. */
        do {
            free(node->node_name);
            node->node_name = xasprintf("#block%03u", next_auto_id++);
        } while (block_node_find(node->node_name));
        node->auto_named = true;
        return true;
    }
    if (!node_name_valid(name)) {
        err_setf(errp, "Invalid node-name: '%s'", name);
        return false;
    }
    if (strlen(name) >= 32) {
        err_setf(errp, "Node name too long");
        return false;
    }
    if (block_node_find(name)) {
        err_setf(errp, "Duplicate nodes with node-name='%s'", name);
        return false;
    }
    node->node_name = xstrdup(name);
    return true;
}

static void
read_common_options(struct block_node *node, json_t *options)
{
    const char *discard = block_opt_str(options, "discard", "ignore");
    const char *dz = block_opt_str(options, "detect-zeroes", "off");
    json_t *cache = json_object_get(options, "cache");

    node->read_only = block_opt_bool(options, "read-only", false);
    node->auto_read_only = block_opt_bool(options, "auto-read-only", false);
    node->force_share = block_opt_bool(options, "force-share", false);
    node->discard_unmap = !strcmp(discard, "unmap") || !strcmp(discard, "on");
    node->cache_direct = block_opt_bool(cache, "direct", false);
    node->cache_no_flush = block_opt_bool(cache, "no-flush", false);
    if (!strcmp(dz, "on")) {
        node->detect_zeroes = BLOCK_DETECT_ZEROES_ON;
    } else if (!strcmp(dz, "unmap")) {
        node->detect_zeroes = BLOCK_DETECT_ZEROES_UNMAP;
    } else {
        node->detect_zeroes = BLOCK_DETECT_ZEROES_OFF;
    }
}

static struct block_node *
node_alloc(const struct block_driver *drv)
{
    struct block_node *node = xzalloc(sizeof(*node));

    node->drv = drv;
    node->refcnt = 1;
    node->cur_shared = BLOCK_PERM_ALL;
    TAILQ_INIT(&node->children);
    TAILQ_INIT(&node->parents);
    TAILQ_INIT(&node->tracked);
    TAILQ_INIT(&node->bitmaps);
    lock_init(&node->req_lock, LOCK_NODE_REQ);
    cond_init(&node->req_cond);
    lock_init(&node->serial_lock, LOCK_NODE_SERIAL);
    lock_init(&node->bitmap_lock, LOCK_NODE_BITMAP);
    node->limits.request_alignment = 1;
    node->limits.mem_alignment = 1;
    if (drv->state_size) {
        node->opaque = xzalloc(drv->state_size);
    }
    return node;
}

static void
node_free(struct block_node *node)
{
    struct block_child *c;

    block_node_release_bitmaps(node);
    while ((c = TAILQ_FIRST(&node->children))) {
        block_node_detach_child(node, c);
    }
    mutex_destroy(&node->req_lock);
    cond_destroy(&node->req_cond);
    mutex_destroy(&node->serial_lock);
    mutex_destroy(&node->bitmap_lock);
    json_decref(node->options);
    free(node->typed_private);
    free(node->opaque);
    free(node->node_name);
    free(node);
}

int
block_node_open_finish(struct block_node *node, struct err **errp)
{
    int64_t len;

    if (node->limits.request_alignment == 0) {
        node->limits.request_alignment = 1;
    }
    if (node->limits.mem_alignment == 0) {
        node->limits.mem_alignment = 1;
    }
    len = node->drv->getlength ? node->drv->getlength(node) :
          (node->file ? block_getlength(node->file->node) : 0);
    if (len < 0) {
        err_setf_errno(errp, (int)-len, "Could not get the length of '%s'",
                       node->node_name);
        if (node->drv->close) {
            node->drv->close(node);
        }
        return (int)len;
    }
    __atomic_store_n(&node->size, (uint64_t)len, __ATOMIC_RELAXED);
    return 0;
}

static int
node_open(struct block_node *node, json_t *options, struct err **errp)
{
    int ret;

    ret = node->drv->open(node, options, errp);
    if (ret < 0 && node->auto_read_only && !node->read_only &&
        (ret == -EACCES || ret == -EROFS || ret == -EPERM)) {
        /* auto-read-only: fall back to read-only when writing is not
         * allowed (QEMU opens read-only and upgrades later; we decide
         * once). */
        struct block_child *c;

        while ((c = TAILQ_FIRST(&node->children))) {
            block_node_detach_child(node, c);
        }
        err_free(*errp);
        *errp = NULL;
        node->read_only = true;
        ret = node->drv->open(node, options, errp);
    }
    if (ret < 0) {
        return ret;
    }
    return block_node_open_finish(node, errp);
}

/* Device and inode of the image file under node (its "file" chain down
 * to a protocol node with a filename); false when there is none. */
static bool
image_file_id(struct block_node *node, struct stat *st)
{
    const char *fn = block_node_filename(node);

    return fn && stat(fn, st) == 0;
}

int
block_backing_chain_check(const char *path, struct err **errp)
{
    struct stat want, st;

    if (stat(path, &want) < 0) {
        return 0;   /* opening it reports the error */
    }
    for (int i = 0; i < open_depth; i++) {
        if (image_file_id(open_stack[i].node, &st) &&
            st.st_dev == want.st_dev && st.st_ino == want.st_ino) {
            err_setf(errp, "Backing file '%s' creates an infinite loop",
                     path);
            return -ELOOP;
        }
    }
    return 0;
}

/* Images in the chain that a new backing child would end: the top one
 * (the outermost frame) and every backing frame, plus the new one. */
static int
backing_chain_length(void)
{
    int n = 2;

    for (int i = 0; i < open_depth; i++) {
        n += open_stack[i].is_backing;
    }
    return n;
}

/* Push node on the open stack and open it; refuses nesting past the
 * limits before the driver recurses. */
static int
node_open_nested(struct block_node *node, json_t *opts, const char *role,
                 struct err **errp)
{
    bool is_backing = role && !strcmp(role, "backing");
    int ret;

    if (is_backing && backing_chain_length() > BLOCK_MAX_BACKING_CHAIN) {
        err_setf(errp, "Backing chain deeper than %d images (limit)",
                 BLOCK_MAX_BACKING_CHAIN);
        return -ELOOP;
    }
    if (open_depth == ARRAY_SIZE(open_stack)) {
        err_setf(errp, "Node options nested deeper than %zu levels",
                 ARRAY_SIZE(open_stack));
        return -ELOOP;
    }
    open_stack[open_depth].node = node;
    open_stack[open_depth].is_backing = is_backing;
    open_depth++;
    ret = node_open(node, opts, errp);
    open_depth--;
    return ret;
}

static struct block_node *
node_new(json_t *options, const char *prefix, const char *role,
         const void *priv, size_t priv_size, struct err **errp)
{
    const struct block_driver *drv;
    struct block_node *node;
    json_t *opts;
    const char *driver;
    struct err *local_err = NULL;

    if (!json_is_object(options)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: object",
                 *prefix ? prefix : "options");
        return NULL;
    }
    driver = json_string_value(json_object_get(options, "driver"));
    if (!json_object_get(options, "driver")) {
        err_setf(errp, "Parameter '%sdriver' is missing", prefix);
        return NULL;
    }
    if (!driver) {
        err_setf(errp, "Invalid parameter type for '%sdriver', expected: "
                 "string", prefix);
        return NULL;
    }
    drv = block_driver_find(driver);
    if (!drv) {
        err_setf(errp, "Parameter '%sdriver' does not accept value '%s'",
                 prefix, driver);
        return NULL;
    }
    opts = json_deep_copy(options);
    if (!block_opts_validate(drv, opts, prefix, errp)) {
        json_decref(opts);
        return NULL;
    }
    node = node_alloc(drv);
    node->options = opts;
    if (priv) {
        node->typed_private = xmalloc(priv_size);
        memcpy(node->typed_private, priv, priv_size);
    }
    read_common_options(node, opts);
    if (!assign_node_name(node, opts, errp)) {
        node_free(node);
        return NULL;
    }
    if (node_open_nested(node, opts, role, &local_err) < 0) {
        err_propagate(errp, local_err);
        node_free(node);
        return NULL;
    }
    TAILQ_INSERT_TAIL(&all_nodes, node, all_link);
    return node;
}

struct block_node *
block_node_new(json_t *options, struct err **errp)
{
    assert_main_thread();
    return node_new(options, "", NULL, NULL, 0, errp);
}

struct block_node *
block_node_new_keyval(const char *str, struct err **errp)
{
    struct block_node *node;
    json_t *options = keyval_or_json_parse(str, NULL, errp);

    assert_main_thread();
    if (!options) {
        return NULL;
    }
    node = block_node_new(options, errp);
    json_decref(options);
    return node;
}

struct block_node *
block_node_new_typed(const char *driver, const struct block_setting *settings,
                     struct err **errp)
{
    return block_node_new_typed_private(driver, settings, NULL, 0, errp);
}

struct block_node *
block_node_new_typed_private(const char *driver,
                             const struct block_setting *settings,
                             const void *priv, size_t priv_size,
                             struct err **errp)
{
    json_t *opts = json_pack("{s:s}", "driver", driver);
    struct block_node *node;

    for (const struct block_setting *st = settings; st->name; st++) {
        json_t *v = NULL;

        switch (st->type) {
        case BLOCK_SETTING_NODE:
            v = json_string(st->node->node_name);
            break;
        case BLOCK_SETTING_STR:
            v = json_string(st->str);
            break;
        case BLOCK_SETTING_INT:
            v = json_integer((json_int_t)st->num);
            break;
        case BLOCK_SETTING_BOOL:
            v = json_boolean(st->flag);
            break;
        }
        json_object_set_new(opts, st->name, v);
    }
    assert_main_thread();
    node = node_new(opts, "", NULL, priv, priv_size, errp);
    json_decref(opts);
    return node;
}

/* Options a child opened inline inherits from its parent, unless set. */
static void
inherit_options(struct block_node *parent, json_t *child_opts,
                const char *child_name)
{
    json_t *cache;

    if (!json_object_get(child_opts, "read-only")) {
        /* Backing files are read-only unless the user says otherwise. */
        bool ro = parent->read_only || !strcmp(child_name, "backing");

        json_object_set_new(child_opts, "read-only", json_boolean(ro));
    }
    if (!json_object_get(child_opts, "auto-read-only") &&
        parent->auto_read_only) {
        json_object_set_new(child_opts, "auto-read-only", json_true());
    }
    /* As QEMU: every layer below passes discards on, since the parent
     * (the core at its own level, qcow2 by its pass-discard options)
     * decides which it sends. */
    if (!json_object_get(child_opts, "discard")) {
        json_object_set_new(child_opts, "discard", json_string("unmap"));
    }
    if (!json_object_get(child_opts, "force-share") && parent->force_share) {
        json_object_set_new(child_opts, "force-share", json_true());
    }
    cache = json_object_get(child_opts, "cache");
    if (!cache && (parent->cache_direct || parent->cache_no_flush)) {
        cache = json_object();
        json_object_set_new(child_opts, "cache", cache);
    }
    if (cache && !json_object_get(cache, "direct") && parent->cache_direct) {
        json_object_set_new(cache, "direct", json_true());
    }
    if (cache && !json_object_get(cache, "no-flush") &&
        parent->cache_no_flush) {
        json_object_set_new(cache, "no-flush", json_true());
    }
}

struct block_child *
block_node_open_child(struct block_node *parent, json_t *options,
                      const char *name, struct err **errp)
{
    return block_node_open_child_as(parent, options, name, name, errp);
}

/* Open child reference ref (given as option name) in the role
 * child_name. */
static struct block_child *
open_child_ref(struct block_node *parent, json_t *ref, const char *name,
               const char *child_name, struct err **errp)
{
    struct block_node *child;
    struct block_child *c;

    assert_main_thread();
    if (!ref) {
        err_setf(errp, "Parameter '%s' is missing", name);
        return NULL;
    }
    if (json_is_string(ref)) {
        const char *ref_name = json_string_value(ref);

        child = block_node_find(ref_name);
        if (!child) {
            err_setf(errp, "Cannot find device='%s' nor node-name='%s'",
                     ref_name, ref_name);
            return NULL;
        }
        block_node_ref(child);
    } else {
        CLEANUP_FREE char *prefix = xasprintf("%s.", name);
        json_t *child_opts = json_deep_copy(ref);

        inherit_options(parent, child_opts, child_name);
        child = node_new(child_opts, prefix, child_name, NULL, 0, errp);
        json_decref(child_opts);
        if (!child) {
            return NULL;
        }
    }
    c = block_node_attach_child(parent, child, child_name, errp);
    block_node_unref(child);
    return c;
}

struct block_child *
block_node_open_child_as(struct block_node *parent, json_t *options,
                         const char *name, const char *child_name,
                         struct err **errp)
{
    return open_child_ref(parent, json_object_get(options, name), name,
                          child_name, errp);
}

struct block_child *
block_node_open_child_at(struct block_node *parent, json_t *options,
                         const char *list_name, size_t i, struct err **errp)
{
    CLEANUP_FREE char *name = xasprintf("%s.%zu", list_name, i);
    json_t *ref = json_array_get(json_object_get(options, list_name), i);

    return open_child_ref(parent, ref, name, name, errp);
}

struct block_node *
block_node_open_file(const char *filename, const char *fmt, bool read_only,
                     struct err **errp)
{
    json_t *opts;
    struct block_node *node;
    const struct block_driver *drv;

    assert_main_thread();
    if (!fmt) {
        fmt = block_probe_file(filename);
    }
    drv = block_driver_find(fmt);
    if (!drv) {
        err_setf(errp, "Unknown driver '%s'", fmt);
        return NULL;
    }
    if (drv->kind == BLOCK_KIND_PROTOCOL) {
        opts = json_pack("{s:s, s:s, s:b}", "driver", fmt, "filename",
                         filename, "read-only", read_only);
    } else {
        opts = json_pack("{s:s, s:{s:s, s:s}, s:b}", "driver", fmt, "file",
                         "driver", "file", "filename", filename, "read-only",
                         read_only);
    }
    node = block_node_new(opts, errp);
    json_decref(opts);
    return node;
}

void
block_node_ref(struct block_node *node)
{
    node->refcnt++;
}

void
block_node_unref(struct block_node *node)
{
    assert_main_thread();
    if (!node) {
        return;
    }
    assert(node->refcnt > 0);
    if (--node->refcnt > 0) {
        return;
    }
    assert(TAILQ_EMPTY(&node->parents));
    TAILQ_REMOVE(&all_nodes, node, all_link);
    if (node->drv->close) {
        node->drv->close(node);
    }
    node_free(node);
}
