/* SPDX-License-Identifier: MIT */
/*
 * User-creatable objects (object-add, object-del, --object), as far as
 * qemu-storage-daemon scripts use them: iothread objects, which exports
 * may name ("iothread", "fixed-iothread").  lockstep's NBD server runs
 * its own threads, so an iothread is only a name that must exist; its
 * polling knobs are accepted and have no effect.  Main thread.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "qmp/qmp-internal.h"
#include "util.h"

struct object {
    char *id;
    LIST_ENTRY(object) link;
};

static LIST_HEAD(, object) g_objects = LIST_HEAD_INITIALIZER(g_objects);

static const char *const qom_type_values[] = { "iothread", NULL };

/* IothreadProperties, plus the union's discriminator and id. */
static const struct qmp_arg iothread_members[] = {
    { "qom-type", QMP_T_ENUM, false, "object type", "ObjectType",
      qom_type_values, NULL, NULL },
    { "id", QMP_T_STR, false, "object id", NULL, NULL, NULL, NULL },
    { "poll-max-ns", QMP_T_INT, true, "ignored", NULL, NULL, NULL, NULL },
    { "poll-grow", QMP_T_INT, true, "ignored", NULL, NULL, NULL, NULL },
    { "poll-shrink", QMP_T_INT, true, "ignored", NULL, NULL, NULL, NULL },
    { "aio-max-batch", QMP_T_INT, true, "ignored", NULL, NULL, NULL, NULL },
    { "thread-pool-min", QMP_T_INT, true, "ignored", NULL, NULL, NULL,
      NULL },
    { "thread-pool-max", QMP_T_INT, true, "ignored", NULL, NULL, NULL,
      NULL },
    { NULL, 0, false, NULL, NULL, NULL, NULL, NULL },
};

static struct object *
object_find(const char *id)
{
    struct object *o;

    LIST_FOREACH(o, &g_objects, link) {
        if (!strcmp(o->id, id)) {
            return o;
        }
    }
    return NULL;
}

bool
qmp_iothread_exists(const char *id)
{
    return object_find(id) != NULL;
}

/* keyval (--object) gives every value as a string: type the integers. */
static bool
keyval_types(json_t *opts, struct err **errp)
{
    for (const struct qmp_arg *m = iothread_members; m->name; m++) {
        json_t *v = json_object_get(opts, m->name);
        int64_t n;

        if (m->type != QMP_T_INT || !json_is_string(v)) {
            continue;
        }
        if (parse_int64(json_string_value(v), &n) < 0) {
            err_setf(errp, "Parameter '%s' expects an integer", m->name);
            return false;
        }
        json_object_set_new(opts, m->name, json_integer(n));
    }
    return true;
}

static bool
object_add(json_t *args, bool from_keyval, struct err **errp)
{
    json_t *type = json_object_get(args, "qom-type");
    const char *id;
    struct object *o;

    /* The discriminator first, as QEMU's union visitor does. */
    if (!type) {
        err_setf(errp, "Parameter 'qom-type' is missing");
        return false;
    }
    if (!qmp_validate(&iothread_members[0], type, "qom-type", errp)) {
        return false;
    }
    if (from_keyval && !keyval_types(args, errp)) {
        return false;
    }
    if (!qmp_validate_members(iothread_members, args, "", errp)) {
        return false;
    }
    id = json_string_value(json_object_get(args, "id"));
    if (object_find(id)) {
        err_setf(errp, "attempt to add duplicate property '%s' to object "
                 "(type 'container')", id);
        return false;
    }
    o = xzalloc(sizeof(*o));
    o->id = xstrdup(id);
    LIST_INSERT_HEAD(&g_objects, o, link);
    return true;
}

bool
qmp_object_add_keyval(json_t *opts, struct err **errp)
{
    return object_add(opts, true, errp);
}

json_t *
qmp_object_add(json_t *args, struct err **errp)
{
    return object_add(args, false, errp) ? json_object() : NULL;
}

json_t *
qmp_object_del(json_t *args, struct err **errp)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    struct object *o = object_find(id);

    if (!o) {
        err_setf(errp, "object '%s' not found", id);
        return NULL;
    }
    LIST_REMOVE(o, link);
    free(o->id);
    free(o);
    return json_object();
}

void
qmp_objects_free_all(void)
{
    struct object *o;

    while ((o = LIST_FIRST(&g_objects))) {
        LIST_REMOVE(o, link);
        free(o->id);
        free(o);
    }
}
