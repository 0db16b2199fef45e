/* SPDX-License-Identifier: MIT */
/*
 * The "blkdebug" filter: fault injection for tests, in a subset of QEMU's
 * schema: "image" (the child), "inject-error" and "set-state" rules,
 * "align" and "max-transfer", "take-child-perms" and "unshare-child-perms"
 * (permissions taken on, or refused to others on, the image, whatever the
 * parents need: tests make conflicts with them), plus our own
 * "x-delay-ns" for slow I/O.
 *
 * Rules and states follow QEMU's model.  The node has a state number
 * (starting at 1).  Each rule names an event and optionally a state in
 * which it applies.  When an event fires, set-state rules for it move the
 * state and inject-error rules for it become active; an active rule fails
 * the next request whose type is in its iotype list (default read and
 * write) and that covers its sector (or any request when no sector is set).
 * A "once" rule is dropped after it fired.
 *
 * Events: as in QEMU, formats fire them on their file with
 * block_debug_event(): "read_aio" and "write_aio" before guest data I/O
 * (raw and qcow2), metadata events ("l2_update", "refblock_alloc", ...)
 * from qcow2.  Metadata I/O fires nothing, so a read_aio rule does not
 * fail qcow2's header reads at open.  When no format sits above the
 * blkdebug node (an export or a filter uses it directly, which QEMU's
 * tests never do), blkdebug fires the data events itself: "read_aio"
 * before a read, "write_aio" before a write or write-zeroes, so that rules
 * still mean something; not for the format probe's read
 * (BLOCK_REQ_PROBE), which fires nothing in QEMU either.  "flush_to_disk" (before a flush) and "discard"
 * are always fired here, as QEMU's generic flush path does.
 *
 * Locking: s->lock protects the rules and the state (a leaf lock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block/filter/blkdebug.h"

extern const struct block_driver blkdebug_driver;
#include "lockstep/driver.h"
#include "util.h"

enum blkdebug_io {
    IO_READ = 1 << 0,
    IO_WRITE = 1 << 1,
    IO_WRITE_ZEROES = 1 << 2,
    IO_DISCARD = 1 << 3,
    IO_FLUSH = 1 << 4,
    IO_BLOCK_STATUS = 1 << 5,
};

struct blkdebug_rule {
    char *event;
    int64_t state;          /* 0: any state */
    bool set_state;         /* a set-state rule (else inject-error) */
    int64_t new_state;
    int error;              /* positive errno */
    int64_t offset;         /* -1: any offset */
    unsigned iotypes;
    bool once;
    bool active;
    bool removed;
};

/* A breakpoint ("break EVENT TAG"): the next request that fires EVENT
 * stops until "resume TAG". */
struct blkdebug_break {
    char *event;
    char *tag;
};

/*
 * A request stopped at a breakpoint.  It lives on the request's stack, so
 * its address comes back when the same thread stops again at the same
 * depth: id tells one stop from the next.
 */
struct blkdebug_suspended {
    char *tag;
    uint64_t id;            /* unique per stop */
    bool resume;            /* resume asked: wake up */
    struct blkdebug_suspended *next;
};

struct blkdebug_state {
    struct lock lock;
    pthread_cond_t cond;    /* a suspended request changed */
    int64_t state;          /* Protected by: lock */
    struct blkdebug_rule *rules;  /* Protected by: lock */
    size_t nr_rules;
    struct blkdebug_break *breaks;  /* Protected by: lock */
    size_t nr_breaks;
    struct blkdebug_suspended *suspended;  /* Protected by: lock */
    uint64_t next_suspend_id;              /* Protected by: lock */
    int64_t delay_ns;
    uint32_t take_perms;    /* take-child-perms; set before the child */
    uint32_t unshare_perms; /* unshare-child-perms */
};

static const struct block_opt blkdebug_opts[] = {
    {"image", BLOCK_OPT_CHILD, true, NULL},
    {"config", BLOCK_OPT_STRING, false, NULL},
    {"align", BLOCK_OPT_SIZE, false, NULL},
    {"max-transfer", BLOCK_OPT_SIZE, false, NULL},
    {"opt-write-zero", BLOCK_OPT_SIZE, false, NULL},
    {"max-write-zero", BLOCK_OPT_SIZE, false, NULL},
    {"opt-discard", BLOCK_OPT_SIZE, false, NULL},
    {"max-discard", BLOCK_OPT_SIZE, false, NULL},
    {"inject-error", BLOCK_OPT_LIST, false, NULL},
    {"set-state", BLOCK_OPT_LIST, false, NULL},
    {"take-child-perms", BLOCK_OPT_LIST, false, NULL},
    {"unshare-child-perms", BLOCK_OPT_LIST, false, NULL},
    {"x-delay-ns", BLOCK_OPT_INT, false, NULL},
    {NULL, 0, false, NULL},
};

static const struct {
    const char *name;
    unsigned bit;
} iotype_names[] = {
    {"read", IO_READ},
    {"write", IO_WRITE},
    {"write-zeroes", IO_WRITE_ZEROES},
    {"discard", IO_DISCARD},
    {"flush", IO_FLUSH},
    {"block-status", IO_BLOCK_STATUS},
};

static bool
parse_iotypes(json_t *list, unsigned *out, struct err **errp)
{
    size_t i;
    json_t *v;

    *out = 0;
    if (!json_is_array(list)) {
        err_setf(errp, "Invalid parameter type for 'iotype', expected: "
                 "array");
        return false;
    }
    json_array_foreach(list, i, v) {
        size_t j;

        for (j = 0; j < ARRAY_SIZE(iotype_names); j++) {
            if (json_is_string(v) &&
                !strcmp(json_string_value(v), iotype_names[j].name)) {
                *out |= iotype_names[j].bit;
                break;
            }
        }
        if (j == ARRAY_SIZE(iotype_names)) {
            err_setf(errp, "Parameter 'iotype' does not accept value '%s'",
                     json_is_string(v) ? json_string_value(v) : "?");
            return false;
        }
    }
    return true;
}

static bool
rule_int(json_t *rule, const char *key, int64_t def, int64_t *out,
         struct err **errp)
{
    json_t *v = json_object_get(rule, key);

    *out = def;
    if (v && !json_value_to_int(v, out)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: integer",
                 key);
        return false;
    }
    return true;
}

static bool
rule_bool(json_t *rule, const char *key, bool *out, struct err **errp)
{
    json_t *v = json_object_get(rule, key);

    *out = false;
    if (v && !json_value_to_bool(v, out)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: boolean",
                 key);
        return false;
    }
    return true;
}

static bool
parse_rule(json_t *obj, bool set_state, struct blkdebug_rule *r,
           struct err **errp)
{
    static const char *const inject_keys[] = {
        "event", "state", "iotype", "errno", "sector", "once", "immediately",
    };
    static const char *const set_state_keys[] = {"event", "state",
                                                 "new_state"};
    const char *const *keys = set_state ? set_state_keys : inject_keys;
    size_t nkeys = set_state ? ARRAY_SIZE(set_state_keys)
                             : ARRAY_SIZE(inject_keys);
    const char *key;
    json_t *v;
    int64_t err, sector;
    bool immediately;

    if (!json_is_object(obj)) {
        err_setf(errp, "blkdebug rules must be objects");
        return false;
    }
    json_object_foreach(obj, key, v) {
        size_t i;

        for (i = 0; i < nkeys && strcmp(keys[i], key); i++) {
        }
        if (i == nkeys) {
            err_setf(errp, "Parameter '%s' is unexpected", key);
            return false;
        }
    }
    if (!json_is_string(json_object_get(obj, "event"))) {
        err_setf(errp, "Parameter 'event' is missing");
        return false;
    }
    r->event = xstrdup(json_string_value(json_object_get(obj, "event")));
    r->set_state = set_state;
    r->iotypes = IO_READ | IO_WRITE;
    if (!rule_int(obj, "state", 0, &r->state, errp)) {
        return false;
    }
    if (set_state) {
        if (!json_object_get(obj, "new_state")) {
            err_setf(errp, "Parameter 'new_state' is missing");
            return false;
        }
        return rule_int(obj, "new_state", 0, &r->new_state, errp);
    }
    if (!rule_int(obj, "errno", EIO, &err, errp) ||
        !rule_int(obj, "sector", -1, &sector, errp) ||
        !rule_bool(obj, "once", &r->once, errp) ||
        !rule_bool(obj, "immediately", &immediately, errp)) {
        return false;
    }
    if (err <= 0 || err > 4095) {
        err_setf(errp, "Invalid errno value %lld", (long long)err);
        return false;
    }
    r->error = (int)err;
    r->offset = sector < 0 ? -1 : sector * 512;
    if (json_object_get(obj, "iotype") &&
        !parse_iotypes(json_object_get(obj, "iotype"), &r->iotypes, errp)) {
        return false;
    }
    return true;
}

static bool
parse_rules(struct blkdebug_state *s, json_t *list, bool set_state,
            struct err **errp)
{
    size_t i;
    json_t *v;

    json_array_foreach(list, i, v) {
        struct blkdebug_rule *r;

        s->rules = xrealloc(s->rules, (s->nr_rules + 1) * sizeof(*s->rules));
        r = &s->rules[s->nr_rules++];
        memset(r, 0, sizeof(*r));
        if (!parse_rule(v, set_state, r, errp)) {
            err_prepend(errp, "%s.%zu: ", set_state ? "set-state" :
                        "inject-error", i);
            return false;
        }
    }
    return true;
}

static void
free_rules(struct blkdebug_state *s)
{
    for (size_t i = 0; i < s->nr_rules; i++) {
        free(s->rules[i].event);
    }
    free(s->rules);
    s->rules = NULL;
    s->nr_rules = 0;
}

/*
 * QEMU's blkdebug config files: "[inject-error]" and "[set-state]"
 * sections of 'key = "value"' lines, each section one rule; '#' starts a
 * comment.  The rules are appended to the option lists.
 */
static bool
read_config(const char *path, json_t *inject, json_t *set_state,
            struct err **errp)
{
    FILE *f = fopen(path, "r");
    json_t *rule = NULL;
    char line[1024];
    int lineno = 0;

    if (!f) {
        err_setf_errno(errp, errno, "Could not read blkdebug config file");
        return false;
    }
    while (fgets(line, sizeof(line), f)) {
        char *p = line + strspn(line, " \t"), *eq, *key, *val, *end;

        lineno++;
        p[strcspn(p, "\r\n")] = '\0';
        if (*p == '\0' || *p == '#') {
            continue;
        }
        if (*p == '[') {
            if (!strcmp(p, "[inject-error]")) {
                rule = json_object();
                json_array_append_new(inject, rule);
            } else if (!strcmp(p, "[set-state]")) {
                rule = json_object();
                json_array_append_new(set_state, rule);
            } else {
                err_setf(errp, "%s:%d: There is no option group '%.*s'",
                         path, lineno, (int)strcspn(p + 1, "]"), p + 1);
                goto fail;
            }
            continue;
        }
        eq = strchr(p, '=');
        if (!rule || !eq) {
            err_setf(errp, "%s:%d: Invalid parameter", path, lineno);
            goto fail;
        }
        key = p;
        end = eq;
        while (end > key && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        *end = '\0';
        val = eq + 1 + strspn(eq + 1, " \t");
        if (*val == '"') {
            val++;
            end = strchr(val, '"');
            if (!end) {
                err_setf(errp, "%s:%d: Unterminated string", path, lineno);
                goto fail;
            }
            *end = '\0';
        }
        json_object_set_new(rule, key, json_string(val));
    }
    fclose(f);
    return true;

fail:
    fclose(f);
    return false;
}

/* A list of QEMU's BlockPermission names into bits. */
static bool
parse_perms(json_t *options, const char *name, uint32_t *out,
            struct err **errp)
{
    static const char *const names[] = {
        "consistent-read", "write", "write-unchanged", "resize",
    };
    json_t *list = json_object_get(options, name);
    size_t i;
    json_t *v;

    *out = 0;
    if (!list) {
        return true;
    }
    if (!json_is_array(list)) {
        err_setf(errp, "Invalid parameter type for '%s', expected: array",
                 name);
        return false;
    }
    json_array_foreach(list, i, v) {
        const char *str = json_string_value(v);
        unsigned bit;

        for (bit = 0; bit < ARRAY_SIZE(names); bit++) {
            if (str && !strcmp(str, names[bit])) {
                break;
            }
        }
        if (bit == ARRAY_SIZE(names)) {
            /* QEMU's visitor names list elements "null". */
            err_setf(errp, "Parameter 'null' does not accept value '%s'",
                     str ? str : "");
            return false;
        }
        *out |= 1u << bit;
    }
    return true;
}

/* A filter's pass-through, plus what the options take and refuse. */
static void
blkdebug_child_perm(struct block_node *node, const char *child_name,
                    uint32_t parent_perm, uint32_t parent_shared,
                    uint32_t *perm, uint32_t *shared)
{
    struct blkdebug_state *s = node->opaque;

    block_default_child_perm(node, child_name, parent_perm, parent_shared,
                             perm, shared);
    *perm |= s->take_perms;
    *shared &= ~s->unshare_perms;
}

static int
blkdebug_open(struct block_node *node, json_t *options, struct err **errp)
{
    struct blkdebug_state *s = node->opaque;
    int64_t align = block_opt_int(options, "align", 0);
    int64_t max_transfer = block_opt_int(options, "max-transfer", 0);
    const char *config = block_opt_str(options, "config", NULL);
    json_t *inject = json_array(), *set_state = json_array();
    size_t i;
    json_t *v;

    json_array_foreach(json_object_get(options, "inject-error"), i, v) {
        json_array_append(inject, v);
    }
    json_array_foreach(json_object_get(options, "set-state"), i, v) {
        json_array_append(set_state, v);
    }
    if (config && !read_config(config, inject, set_state, errp)) {
        json_decref(inject);
        json_decref(set_state);
        return -EINVAL;
    }
    if (align < 0 || (align && !is_power_of_2((uint64_t)align))) {
        err_setf(errp, "Cannot meet constraints with align %lld",
                 (long long)align);
        goto fail_lists;
    }
    if (max_transfer < 0 || (align && max_transfer % align)) {
        err_setf(errp, "Cannot meet constraints with max-transfer %lld",
                 (long long)max_transfer);
        goto fail_lists;
    }
    if (!parse_perms(options, "take-child-perms", &s->take_perms, errp) ||
        !parse_perms(options, "unshare-child-perms", &s->unshare_perms,
                     errp)) {
        goto fail_lists;
    }
    lock_init(&s->lock, LOCK_BLKDEBUG);
    cond_init(&s->cond);
    s->state = 1;
    s->delay_ns = block_opt_int(options, "x-delay-ns", 0);
    if (!parse_rules(s, inject, false, errp) ||
        !parse_rules(s, set_state, true, errp)) {
        goto fail;
    }
    json_decref(inject);
    json_decref(set_state);
    inject = set_state = NULL;
    if (!block_node_open_child_as(node, options, "image", "file", errp)) {
        goto fail;
    }
    node->limits = node->file->node->limits;
    if (align) {
        node->limits.request_alignment = MAX(node->limits.request_alignment,
                                             (uint32_t)align);
    }
    if (max_transfer) {
        node->limits.max_transfer = (uint64_t)max_transfer;
    }
    /* FUA only where the image has it natively (QEMU's rule): otherwise
     * the core emulates it here with a flush, which fires flush_to_disk. */
    node->supported_write_flags = node->file->node->supported_write_flags &
                                  BLOCK_REQ_FUA;
    node->supported_zero_flags = BLOCK_REQ_MAY_UNMAP |
                                 (node->file->node->supported_zero_flags &
                                  (BLOCK_REQ_FUA | BLOCK_REQ_EXTEND));
    return 0;

fail:
    free_rules(s);
    mutex_destroy(&s->lock);
    cond_destroy(&s->cond);
fail_lists:
    json_decref(inject);
    json_decref(set_state);
    return -EINVAL;
}

static void
blkdebug_close(struct block_node *node)
{
    struct blkdebug_state *s = node->opaque;

    free_rules(s);
    for (size_t i = 0; i < s->nr_breaks; i++) {
        free(s->breaks[i].event);
        free(s->breaks[i].tag);
    }
    free(s->breaks);
    mutex_destroy(&s->lock);
    cond_destroy(&s->cond);
}

static void
fire_event_locked(struct blkdebug_state *s, const char *event)
{
    int64_t state = s->state;

    for (size_t i = 0; i < s->nr_rules; i++) {
        struct blkdebug_rule *r = &s->rules[i];

        if (r->removed || strcmp(r->event, event) ||
            (r->state && r->state != state)) {
            continue;
        }
        if (r->set_state) {
            s->state = r->new_state;
        } else {
            r->active = true;
        }
    }
}

/*
 * A breakpoint on event stops the calling request here (its thread
 * waits) until blkdebug_resume(); the breakpoint is used up.  Messages
 * as QEMU's blkdebug prints them, on stdout.
 */
static void
suspend_locked(struct blkdebug_state *s, const char *event)
{
    struct blkdebug_suspended me = { 0 }, **pp;
    size_t i;

    for (i = 0; i < s->nr_breaks; i++) {
        if (!strcmp(s->breaks[i].event, event)) {
            break;
        }
    }
    if (i == s->nr_breaks) {
        return;
    }
    me.tag = s->breaks[i].tag;
    me.id = ++s->next_suspend_id;
    free(s->breaks[i].event);
    s->breaks[i] = s->breaks[--s->nr_breaks];
    me.next = s->suspended;
    s->suspended = &me;
    printf("blkdebug: Suspended request '%s'\n", me.tag);
    fflush(stdout);
    cond_broadcast(&s->cond);
    while (!me.resume) {
        cond_wait(&s->cond, &s->lock);
    }
    printf("blkdebug: Resuming request '%s'\n", me.tag);
    fflush(stdout);
    for (pp = &s->suspended; *pp != &me; pp = &(*pp)->next) {
    }
    *pp = me.next;
    free(me.tag);
    cond_broadcast(&s->cond);
}

static void
blkdebug_debug_event(struct block_node *node, const char *event)
{
    struct blkdebug_state *s = node->opaque;

    mutex_lock(&s->lock);
    fire_event_locked(s, event);
    suspend_locked(s, event);
    mutex_unlock(&s->lock);
}

/* The first blkdebug node at or below node (following "file"). */
static struct blkdebug_state *
find_blkdebug(struct block_node *node)
{
    while (node && node->drv != &blkdebug_driver) {
        node = node->file ? node->file->node : NULL;
    }
    return node ? node->opaque : NULL;
}

int
blkdebug_breakpoint(struct block_node *node, const char *event,
                    const char *tag)
{
    struct blkdebug_state *s = find_blkdebug(node);

    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock(&s->lock);
    s->breaks = xrealloc(s->breaks, (s->nr_breaks + 1) * sizeof(*s->breaks));
    s->breaks[s->nr_breaks].event = xstrdup(event);
    s->breaks[s->nr_breaks].tag = xstrdup(tag);
    s->nr_breaks++;
    mutex_unlock(&s->lock);
    return 0;
}

/* Wake the request suspended as tag and wait until it has left. */
static bool
resume_locked(struct blkdebug_state *s, const char *tag)
{
    for (struct blkdebug_suspended *r = s->suspended; r; r = r->next) {
        if (!strcmp(r->tag, tag) && !r->resume) {
            const struct blkdebug_suspended *p;
            uint64_t id = r->id;

            r->resume = true;
            cond_broadcast(&s->cond);
            /* It unlinks itself after its message; r is gone then, and
             * its address may already be the same thread's next stop. */
            do {
                cond_wait(&s->cond, &s->lock);
                for (p = s->suspended; p && p->id != id; p = p->next) {
                }
            } while (p);
            return true;
        }
    }
    return false;
}

int
blkdebug_remove_breakpoint(struct block_node *node, const char *tag)
{
    struct blkdebug_state *s = find_blkdebug(node);
    bool found = false;

    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock(&s->lock);
    for (size_t i = 0; i < s->nr_breaks;) {
        if (!strcmp(s->breaks[i].tag, tag)) {
            free(s->breaks[i].event);
            free(s->breaks[i].tag);
            s->breaks[i] = s->breaks[--s->nr_breaks];
            found = true;
        } else {
            i++;
        }
    }
    found |= resume_locked(s, tag);
    mutex_unlock(&s->lock);
    return found ? 0 : -ENOENT;
}

int
blkdebug_resume(struct block_node *node, const char *tag)
{
    struct blkdebug_state *s = find_blkdebug(node);
    bool found;

    if (!s) {
        return -ENOTSUP;
    }
    mutex_lock(&s->lock);
    found = resume_locked(s, tag);
    mutex_unlock(&s->lock);
    return found ? 0 : -ENOENT;
}

bool
blkdebug_is_suspended(struct block_node *node, const char *tag)
{
    struct blkdebug_state *s = find_blkdebug(node);
    bool found = false;

    if (!s) {
        return false;
    }
    mutex_lock(&s->lock);
    for (struct blkdebug_suspended *r = s->suspended; r; r = r->next) {
        found |= !strcmp(r->tag, tag) && !r->resume;
    }
    mutex_unlock(&s->lock);
    return found;
}

/*
 * Does a format above us fire the data events?  Parents change only while
 * drained, so reading them from a request is safe.
 */
static bool
format_parent_fires_events(struct block_node *node)
{
    struct block_child *c;

    TAILQ_FOREACH(c, &node->parents, parent_link) {
        if (c->parent_node &&
            c->parent_node->drv->kind == BLOCK_KIND_FORMAT) {
            return true;
        }
    }
    return false;
}

/* Fire the request's event, then fail it if an active rule says so. */
static int
rule_check(struct block_node *node, const char *event, unsigned iotype,
           uint64_t offset, uint64_t bytes)
{
    struct blkdebug_state *s = node->opaque;
    int error = 0;

    /* Flush events always come from the core, as QEMU's bdrv_co_flush
     * fires them; data events from the format when there is one. */
    if (event && (!strcmp(event, "read_aio") || !strcmp(event, "write_aio")) &&
        format_parent_fires_events(node)) {
        event = NULL;
    }

    if (s->delay_ns) {
        sleep_ns((int64_t)s->delay_ns);
    }
    mutex_lock(&s->lock);
    if (event) {
        fire_event_locked(s, event);
        suspend_locked(s, event);
    }
    for (size_t i = 0; i < s->nr_rules; i++) {
        struct blkdebug_rule *r = &s->rules[i];

        if (r->removed || !r->active || !(r->iotypes & iotype)) {
            continue;
        }
        if (r->offset >= 0 && !(bytes && (uint64_t)r->offset >= offset &&
                                (uint64_t)r->offset < offset + bytes)) {
            continue;
        }
        error = r->error;
        if (r->once) {
            r->removed = true;
        }
        break;
    }
    mutex_unlock(&s->lock);
    return -error;
}

static int
blkdebug_pread(struct block_node *node, uint64_t offset, uint64_t bytes,
               void *buf, unsigned flags)
{
    int ret = rule_check(node, flags & BLOCK_REQ_PROBE ? NULL : "read_aio",
                         IO_READ, offset, bytes);

    return ret ? ret : block_pread(node->file->node, offset, bytes, buf,
                                   flags);
}

static int
blkdebug_pwrite(struct block_node *node, uint64_t offset, uint64_t bytes,
                const void *buf, unsigned flags)
{
    int ret = rule_check(node, "write_aio", IO_WRITE, offset, bytes);

    return ret ? ret : block_pwrite(node->file->node, offset, bytes, buf,
                                    flags);
}

static int
blkdebug_pwrite_zeroes(struct block_node *node, uint64_t offset,
                       uint64_t bytes, unsigned flags)
{
    int ret = rule_check(node, "write_aio", IO_WRITE_ZEROES, offset, bytes);

    return ret ? ret : block_pwrite_zeroes(node->file->node, offset, bytes,
                                           flags);
}

static int
blkdebug_pdiscard(struct block_node *node, uint64_t offset, uint64_t bytes)
{
    int ret = rule_check(node, "discard", IO_DISCARD, offset, bytes);

    return ret ? ret : block_pdiscard(node->file->node, offset, bytes);
}

static int
blkdebug_flush(struct block_node *node)
{
    /* The core flushes the child after us. */
    return rule_check(node, "flush_to_disk", IO_FLUSH, 0, 0);
}

static int
blkdebug_block_status(struct block_node *node, uint64_t offset,
                      uint64_t bytes, uint64_t *pnum, uint64_t *map,
                      struct block_node **file)
{
    int ret = rule_check(node, NULL, IO_BLOCK_STATUS, offset, bytes);

    if (ret < 0) {
        return ret;
    }
    *pnum = bytes;
    *map = offset;
    *file = node->file->node;
    return BLOCK_STATUS_RECURSE;
}

static int
blkdebug_truncate(struct block_node *node, uint64_t length,
                  struct err **errp)
{
    return block_truncate(node->file->node, length, errp);
}

/* "blkdebug:[CONFIG]:NAME": a blkdebug filter over NAME. */
static const char *const blkdebug_filename_prefixes[] = { "blkdebug:", NULL };

static json_t *
blkdebug_parse_filename(const char *filename, struct err **errp)
{
    const char *rest = filename + strlen("blkdebug:");
    const char *colon = strchr(rest, ':');
    json_t *image, *o;

    if (!colon) {
        err_setf(errp, "Invalid filename format: '%s'", rest);
        return NULL;
    }
    image = block_filename_options(colon + 1, errp);
    if (!image) {
        return NULL;
    }
    o = json_pack("{s:s, s:o}", "driver", "blkdebug", "image", image);
    if (colon > rest) {
        json_object_set_new(o, "config",
                            json_stringn(rest, (size_t)(colon - rest)));
    }
    return o;
}

const struct block_driver blkdebug_driver = {
    .name = "blkdebug",
    .kind = BLOCK_KIND_FILTER,
    .state_size = sizeof(struct blkdebug_state),
    .options = blkdebug_opts,
    .open = blkdebug_open,
    .close = blkdebug_close,
    .pread = blkdebug_pread,
    .pwrite = blkdebug_pwrite,
    .pwrite_zeroes = blkdebug_pwrite_zeroes,
    .pdiscard = blkdebug_pdiscard,
    .flush = blkdebug_flush,
    .block_status = blkdebug_block_status,
    .truncate = blkdebug_truncate,
    .child_perm = blkdebug_child_perm,
    .debug_event = blkdebug_debug_event,
    .debug_breakpoint = blkdebug_breakpoint,
    .debug_remove_breakpoint = blkdebug_remove_breakpoint,
    .debug_resume = blkdebug_resume,
    .debug_is_suspended = blkdebug_is_suspended,
    .filename_prefixes = blkdebug_filename_prefixes,
    .parse_filename = blkdebug_parse_filename,
};
