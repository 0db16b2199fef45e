/* SPDX-License-Identifier: MIT */
/*
 * User-creatable objects (object-add, object-del, --object, qom-list and
 * qom-get on /objects/ID), as far as qemu-storage-daemon scripts use them:
 *
 *   iothread        exports may name one ("iothread", "fixed-iothread");
 *                   lockstep's exports run their own threads, which poll
 *                   as the iothread's poll-max-ns, poll-grow and
 *                   poll-shrink say.  Its event loop's knobs
 *                   (aio-max-batch, thread-pool-*) have nothing to act
 *                   on: only QEMU's defaults are taken.
 *   tls-creds-x509, tls-creds-psk
 *                   TLS credentials (crypto/tls-creds.h) for the NBD
 *                   server (tls-creds) and the nbd driver (tls-creds).
 *   authz-simple, authz-list, authz-listfile
 *                   who may connect (crypto/authz.h; tls-authz).
 *
 * This file is the edge: it checks the JSON against each type's members,
 * QEMU's names and messages, and turns it into the crypto layer's typed
 * options.  Ids share one namespace, as QEMU's /objects container.
 * Main thread.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "crypto/authz.h"
#include "crypto/tls-creds.h"
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

struct object_type;

struct object {
    char *id;
    const struct object_type *type;
    json_t *props;              /* as given (typed), for qom-get */
    LIST_ENTRY(object) link;
};

struct object_type {
    const char *name;
    const struct qmp_arg *members;      /* with qom-type and id */
    bool (*add)(json_t *props, struct err **errp);
    bool (*del)(const char *id, struct err **errp);
    /* qom-get values not among the members (computed): may be NULL */
    json_t *(*computed)(const char *id, const char *prop);
};

static LIST_HEAD(, object) g_objects = LIST_HEAD_INITIALIZER(g_objects);

static const char *const qom_type_values[] = {
    "iothread", "tls-creds-x509", "tls-creds-psk", "authz-simple",
    "authz-list", "authz-listfile", NULL,
};

#define QMP_END { NULL, 0, false, NULL, NULL, NULL, NULL, NULL }
#define OBJECT_HEAD                                                          \
    { "qom-type", QMP_T_ENUM, false, "object type", "ObjectType",           \
      qom_type_values, NULL, NULL },                                        \
    { "id", QMP_T_STR, false, "object id", NULL, NULL, NULL, NULL }

/* ---- iothread ----------------------------------------------------------- */

/* IothreadProperties (with EventLoopBaseProperties). */
static const struct qmp_arg iothread_members[] = {
    OBJECT_HEAD,
    { "poll-max-ns", QMP_T_INT, true, "the longest busy-poll of an "
      "export's serving threads before they sleep; 0: no polling "
      "(default 32768)", NULL, NULL, NULL, NULL },
    { "poll-grow", QMP_T_INT, true, "the factor the poll time grows by "
      "when a sleep ended soon after the poll; 0: 2 (default 0)", NULL,
      NULL, NULL, NULL },
    { "poll-shrink", QMP_T_INT, true, "the divisor of the poll time after "
      "a long sleep; 0: stop polling (default 0)", NULL, NULL, NULL,
      NULL },
    { "aio-max-batch", QMP_T_INT, true, "only 0 (the default): the file "
      "driver's aio-max-batch caps io_uring batches", NULL, NULL, NULL,
      NULL },
    { "thread-pool-min", QMP_T_INT, true, "only 0 (the default): requests "
      "run on the export's threads, with no worker pool", NULL, NULL,
      NULL, NULL },
    { "thread-pool-max", QMP_T_INT, true, "only 64 (the default): requests "
      "run on the export's threads, with no worker pool", NULL, NULL,
      NULL, NULL },
    QMP_END,
};

#define IOTHREAD_THREAD_POOL_MAX_DEFAULT 64     /* QEMU's */

/* An integer property, QEMU's default when absent. */
static int64_t
iothread_int(json_t *props, const char *name)
{
    json_t *v = json_object_get(props, name);

    if (v) {
        return json_integer_value(v);
    }
    if (!strcmp(name, "poll-max-ns")) {
        return POLL_MAX_NS_DEFAULT;
    }
    if (!strcmp(name, "thread-pool-max")) {
        return IOTHREAD_THREAD_POOL_MAX_DEFAULT;
    }
    return 0;
}

/* Ranges first, with QEMU's messages; then what lockstep cannot honour.
 * Scripts that spell out QEMU's defaults keep working. */
static bool
iothread_add(json_t *props, struct err **errp)
{
    int64_t min = iothread_int(props, "thread-pool-min");
    int64_t max = iothread_int(props, "thread-pool-max");

    for (const struct qmp_arg *m = iothread_members + 2; m->name; m++) {
        if (iothread_int(props, m->name) < 0) {
            err_setf(errp, "%s value must be in range [0, %" PRId64 "]",
                     m->name, INT64_MAX);
            return false;
        }
    }
    if (max < 1 || min > max) {
        err_setf(errp, "bad thread-pool-min/thread-pool-max values");
        return false;
    }
    if (iothread_int(props, "aio-max-batch") != 0) {
        err_setf(errp, "aio-max-batch is not supported (only 0, the "
                 "default): lockstep has no AIO engine per iothread; use "
                 "the file driver's aio-max-batch");
        return false;
    }
    if (min != 0 || max != IOTHREAD_THREAD_POOL_MAX_DEFAULT) {
        err_setf(errp, "%s is not supported (only the default, %d): "
                 "lockstep has no worker thread pool; requests run on the "
                 "export's own threads", min != 0 ? "thread-pool-min" :
                 "thread-pool-max",
                 min != 0 ? 0 : IOTHREAD_THREAD_POOL_MAX_DEFAULT);
        return false;
    }
    return true;
}

static bool
iothread_del(const char *id UNUSED, struct err **errp UNUSED)
{
    return true;
}

/* ---- TLS credentials ---------------------------------------------------- */

static const char *const endpoint_values[] = { "client", "server", NULL };

/* TlsCredsX509Properties, TlsCredsPskProperties. */
static const struct qmp_arg tls_x509_members[] = {
    OBJECT_HEAD,
    { "endpoint", QMP_T_ENUM, true, "client (default) or server",
      "QCryptoTLSCredsEndpoint", endpoint_values, NULL, NULL },
    { "dir", QMP_T_STR, true, "directory of the PEM files", NULL, NULL,
      NULL, NULL },
    { "verify-peer", QMP_T_BOOL, true, "check the peer's certificate "
      "(default on)", NULL, NULL, NULL, NULL },
    { "priority", QMP_T_STR, true, "GnuTLS priority string (default "
      "NORMAL's set, AES-128-GCM first, the server's order deciding)",
      NULL, NULL, NULL, NULL },
    { "sanity-check", QMP_T_BOOL, true, "check our own certificates when "
      "loading them (default on)", NULL, NULL, NULL, NULL },
    { "passwordid", QMP_T_STR, true, "not supported: refused", NULL, NULL,
      NULL, NULL },
    QMP_END,
};

static const struct qmp_arg tls_psk_members[] = {
    OBJECT_HEAD,
    { "endpoint", QMP_T_ENUM, true, "client (default) or server",
      "QCryptoTLSCredsEndpoint", endpoint_values, NULL, NULL },
    { "dir", QMP_T_STR, true, "directory of keys.psk", NULL, NULL, NULL,
      NULL },
    { "verify-peer", QMP_T_BOOL, true, "PSK always authenticates both "
      "sides: off is refused", NULL, NULL, NULL, NULL },
    { "priority", QMP_T_STR, true, "GnuTLS priority string (default "
      "NORMAL's set, AES-128-GCM first, the server's order deciding)",
      NULL, NULL, NULL, NULL },
    { "username", QMP_T_STR, true, "client: the user in keys.psk (default "
      "qemu)", NULL, NULL, NULL, NULL },
    QMP_END,
};

static bool
tls_creds_decode(json_t *props, enum tls_creds_type type, struct err **errp)
{
    const char *endpoint = qmp_str(props, "endpoint");
    struct tls_creds_options o = {
        .id = qmp_str(props, "id"),
        .type = type,
        .endpoint = endpoint && !strcmp(endpoint, "server") ?
                    TLS_ENDPOINT_SERVER : TLS_ENDPOINT_CLIENT,
        .dir = qmp_str(props, "dir"),
        .verify_peer = qmp_bool(props, "verify-peer", true),
        .priority = qmp_str(props, "priority"),
        .username = qmp_str(props, "username"),
        .sanity_check = qmp_bool(props, "sanity-check", true),
    };

    if (json_object_get(props, "passwordid")) {
        err_setf(errp, "passwordid is not supported: the private key must "
                 "not be encrypted");
        return false;
    }
    if (type == TLS_CREDS_PSK && !o.verify_peer) {
        err_setf(errp, "verify-peer=off is not supported with PSK "
                 "credentials: both sides always prove the key");
        return false;
    }
    return tls_creds_add(&o, errp);
}

static bool
tls_x509_add(json_t *props, struct err **errp)
{
    return tls_creds_decode(props, TLS_CREDS_X509, errp);
}

static bool
tls_psk_add(json_t *props, struct err **errp)
{
    return tls_creds_decode(props, TLS_CREDS_PSK, errp);
}

static json_t *
tls_computed(const char *id UNUSED, const char *prop)
{
    if (!strcmp(prop, "loaded")) {
        return json_true();   /* an object exists only once loaded */
    }
    return NULL;
}

/* ---- Authorization ------------------------------------------------------ */

static const char *const policy_values[] = { "deny", "allow", NULL };
static const char *const format_values[] = { "exact", "glob", NULL };

static const struct qmp_arg authz_rule_members[] = {
    { "match", QMP_T_STR, false, "identity, or glob pattern", NULL, NULL,
      NULL, NULL },
    { "policy", QMP_T_ENUM, false, "deny or allow", "QAuthZListPolicy",
      policy_values, NULL, NULL },
    { "format", QMP_T_ENUM, true, "exact (default) or glob",
      "QAuthZListFormat", format_values, NULL, NULL },
    QMP_END,
};
static const struct qmp_arg authz_rule_elem = {
    NULL, QMP_T_OBJECT, false, NULL, "QAuthZListRule", NULL,
    authz_rule_members, NULL,
};

/* AuthZListProperties without the object head: a list file's contents. */
static const struct qmp_arg authz_list_body[] = {
    { "policy", QMP_T_ENUM, true, "when no rule matches (default deny)",
      "QAuthZListPolicy", policy_values, NULL, NULL },
    { "rules", QMP_T_ARRAY, true, "rules in order: the first match decides",
      NULL, NULL, NULL, &authz_rule_elem },
    QMP_END,
};

static const struct qmp_arg authz_simple_members[] = {
    OBJECT_HEAD,
    { "identity", QMP_T_STR, false, "the identity allowed", NULL, NULL,
      NULL, NULL },
    QMP_END,
};

static const struct qmp_arg authz_list_members[] = {
    OBJECT_HEAD,
    { "policy", QMP_T_ENUM, true, "when no rule matches (default deny)",
      "QAuthZListPolicy", policy_values, NULL, NULL },
    { "rules", QMP_T_ARRAY, true, "rules in order: the first match decides",
      NULL, NULL, NULL, &authz_rule_elem },
    QMP_END,
};

static const struct qmp_arg authz_listfile_members[] = {
    OBJECT_HEAD,
    { "filename", QMP_T_STR, false, "absolute path of a JSON file "
      "{\"policy\", \"rules\"}", NULL, NULL, NULL, NULL },
    { "refresh", QMP_T_BOOL, true, "reload when the file changes (default "
      "on)", NULL, NULL, NULL, NULL },
    QMP_END,
};

/* policy and rules (validated) into l. */
static void
authz_list_decode(json_t *obj, struct authz_list *l)
{
    const char *policy = qmp_str(obj, "policy");
    json_t *rules = json_object_get(obj, "rules");

    l->policy = policy && !strcmp(policy, "allow") ? AUTHZ_ALLOW : AUTHZ_DENY;
    l->nrules = json_array_size(rules);
    l->rules = l->nrules ? xcalloc(l->nrules, sizeof(*l->rules)) : NULL;
    for (size_t i = 0; i < l->nrules; i++) {
        json_t *r = json_array_get(rules, i);
        const char *fmt = qmp_str(r, "format");

        l->rules[i].match = xstrdup(qmp_str(r, "match"));
        l->rules[i].policy = !strcmp(qmp_str(r, "policy"), "allow") ?
                             AUTHZ_ALLOW : AUTHZ_DENY;
        l->rules[i].format = fmt && !strcmp(fmt, "glob") ? AUTHZ_GLOB
                                                         : AUTHZ_EXACT;
    }
}

/* authz-listfile's loader (crypto/authz.h): any thread. */
static bool
authz_file_load(const char *filename, struct authz_list *out,
                struct err **errp)
{
    json_error_t jerr;
    json_t *obj = json_load_file(filename, 0, &jerr);
    bool ok = false;

    if (!obj) {
        err_setf(errp, "Unable to parse '%s': %s (line %d)", filename,
                 jerr.text, jerr.line);
        return false;
    }
    if (!json_is_object(obj)) {
        err_setf(errp, "File '%s' must contain a JSON object", filename);
    } else if (qmp_validate_members(authz_list_body, obj, "", errp)) {
        authz_list_decode(obj, out);
        ok = true;
    }
    json_decref(obj);
    return ok;
}

static bool
authz_simple_add(json_t *props, struct err **errp)
{
    struct authz_options o = {
        .id = qmp_str(props, "id"),
        .type = AUTHZ_TYPE_SIMPLE,
        .identity = qmp_str(props, "identity"),
    };

    return authz_add(&o, errp);
}

static bool
authz_list_add(json_t *props, struct err **errp)
{
    struct authz_list l;
    struct authz_options o = {
        .id = qmp_str(props, "id"),
        .type = AUTHZ_TYPE_LIST,
        .list = &l,
    };
    bool ok;

    authz_list_decode(props, &l);
    ok = authz_add(&o, errp);
    authz_list_clear(&l);
    return ok;
}

static bool
authz_listfile_add(json_t *props, struct err **errp)
{
    struct authz_options o = {
        .id = qmp_str(props, "id"),
        .type = AUTHZ_TYPE_LISTFILE,
        .filename = qmp_str(props, "filename"),
        .refresh = qmp_bool(props, "refresh", true),
        .load = authz_file_load,
    };

    return authz_add(&o, errp);
}

static const struct object_type object_types[] = {
    { "iothread", iothread_members, iothread_add, iothread_del, NULL },
    { "tls-creds-x509", tls_x509_members, tls_x509_add, tls_creds_del,
      tls_computed },
    { "tls-creds-psk", tls_psk_members, tls_psk_add, tls_creds_del,
      tls_computed },
    { "authz-simple", authz_simple_members, authz_simple_add, authz_del,
      NULL },
    { "authz-list", authz_list_members, authz_list_add, authz_del, NULL },
    { "authz-listfile", authz_listfile_members, authz_listfile_add,
      authz_del, NULL },
};

const struct qmp_arg *
qmp_object_type_members(size_t i, const char **name)
{
    if (i >= ARRAY_SIZE(object_types)) {
        return NULL;
    }
    *name = object_types[i].name;
    return object_types[i].members + 2;
}

/* ---- The registry ------------------------------------------------------- */

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
qmp_iothread_poll(const char *id, struct poll_tuning *t)
{
    struct object *o = object_find(id);

    if (!o || strcmp(o->type->name, "iothread")) {
        return false;
    }
    t->max_ns = iothread_int(o->props, "poll-max-ns");
    t->grow = iothread_int(o->props, "poll-grow");
    t->shrink = iothread_int(o->props, "poll-shrink");
    return true;
}

/* keyval (--object) gives every value as a string: type the integers and
 * booleans the members declare. */
static bool
keyval_types(const struct qmp_arg *members, json_t *opts, struct err **errp)
{
    for (const struct qmp_arg *m = members; m->name; m++) {
        json_t *v = json_object_get(opts, m->name);
        const char *s = json_string_value(v);
        int64_t n;

        if (!s) {
            continue;
        }
        if (m->type == QMP_T_INT) {
            if (parse_int64(s, &n) < 0) {
                err_setf(errp, "Parameter '%s' expects an integer", m->name);
                return false;
            }
            json_object_set_new(opts, m->name, json_integer(n));
        } else if (m->type == QMP_T_BOOL) {
            if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true")) {
                json_object_set_new(opts, m->name, json_true());
            } else if (!strcmp(s, "off") || !strcmp(s, "no") ||
                       !strcmp(s, "false")) {
                json_object_set_new(opts, m->name, json_false());
            } else {
                err_setf(errp, "Parameter '%s' expects 'on' or 'off'",
                         m->name);
                return false;
            }
        }
    }
    return true;
}

static const struct object_type *
type_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(object_types); i++) {
        if (!strcmp(object_types[i].name, name)) {
            return &object_types[i];
        }
    }
    return NULL;
}

static bool
object_add(json_t *args, bool from_keyval, struct err **errp)
{
    json_t *type = json_object_get(args, "qom-type");
    const struct object_type *t;
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
    t = type_find(json_string_value(type));
    if (from_keyval && !keyval_types(t->members, args, errp)) {
        return false;
    }
    if (!qmp_validate_members(t->members, args, "", errp)) {
        return false;
    }
    id = json_string_value(json_object_get(args, "id"));
    if (object_find(id)) {
        err_setf(errp, "attempt to add duplicate property '%s' to object "
                 "(type 'container')", id);
        return false;
    }
    if (!t->add(args, errp)) {
        return false;
    }
    o = xzalloc(sizeof(*o));
    o->id = xstrdup(id);
    o->type = t;
    o->props = json_deep_copy(args);
    json_object_del(o->props, "qom-type");
    json_object_del(o->props, "id");
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

static void
object_free(struct object *o)
{
    LIST_REMOVE(o, link);
    free(o->id);
    json_decref(o->props);
    free(o);
}

static json_t *
object_del_cmd(const struct qmp_args_object_del *a, struct err **errp)
{
    const char *id = a->id;
    struct object *o = object_find(id);

    if (!o) {
        err_setf(errp, "object '%s' not found", id);
        return NULL;
    }
    /* Users keep what they hold (the NBD server its credentials); new
     * users find nothing, and an authz check by this id denies. */
    if (!o->type->del(id, errp)) {
        return NULL;
    }
    object_free(o);
    return json_object();
}
QMP_TYPED_HANDLER(qmp_object_del, object_del_cmd, struct qmp_args_object_del);

/* ---- qom-list, qom-get on /objects/ID ------------------------------------ */

static struct object *
object_at(const char *path, struct err **errp)
{
    const char *prefix = "/objects/";
    struct object *o = NULL;

    if (!strncmp(path, prefix, strlen(prefix))) {
        o = object_find(path + strlen(prefix));
    }
    if (!o) {
        err_setf_class(errp, ERR_CLASS_DEVICE_NOT_FOUND,
                       "Device '%s' not found", path);
    }
    return o;
}

static const char *
member_type(const struct qmp_arg *m)
{
    if (m->type_name) {
        return m->type_name;
    }
    switch (m->type) {
    case QMP_T_BOOL:
        return "bool";
    case QMP_T_INT:
        return "int";
    default:
        return "string";
    }
}

static json_t *
qom_list_cmd(const struct qmp_args_qom_list *a, struct err **errp)
{
    struct object *o = object_at(a->path, errp);
    json_t *ret;

    if (!o) {
        return NULL;
    }
    ret = json_array();
    json_array_append_new(ret, json_pack("{s:s, s:s}", "name", "type",
                                         "type", "string"));
    for (const struct qmp_arg *m = o->type->members + 2; m->name; m++) {
        json_array_append_new(ret, json_pack("{s:s, s:s}", "name", m->name,
                                             "type", member_type(m)));
    }
    if (o->type->computed) {
        json_array_append_new(ret, json_pack("{s:s, s:s}", "name", "loaded",
                                             "type", "bool"));
    }
    return ret;
}
QMP_TYPED_HANDLER(qmp_qom_list, qom_list_cmd, struct qmp_args_qom_list);

/* QEMU's defaults, for properties the object was made without. */
static json_t *
default_value(const struct object *o, const char *prop)
{
    static const char *const on_by_default[] = {
        "verify-peer", "sanity-check", "refresh", NULL,
    };

    if (!strcmp(prop, "endpoint")) {
        return json_string("client");
    }
    if (!strcmp(prop, "policy")) {
        return json_string("deny");
    }
    if (!strcmp(prop, "rules")) {
        return json_array();
    }
    for (size_t i = 0; on_by_default[i]; i++) {
        if (!strcmp(prop, on_by_default[i])) {
            return json_true();
        }
    }
    if (!strcmp(o->type->name, "iothread")) {
        return json_integer(iothread_int(o->props, prop));
    }
    return json_null();
}

static json_t *
qom_get_cmd(const struct qmp_args_qom_get *a, struct err **errp)
{
    const char *prop = a->property;
    struct object *o = object_at(a->path, errp);
    json_t *v;

    if (!o) {
        return NULL;
    }
    if (!strcmp(prop, "type")) {
        return json_string(o->type->name);
    }
    if (o->type->computed && (v = o->type->computed(o->id, prop))) {
        return v;
    }
    for (const struct qmp_arg *m = o->type->members + 2; m->name; m++) {
        if (!strcmp(m->name, prop)) {
            v = json_object_get(o->props, prop);
            return v ? json_incref(v) : default_value(o, prop);
        }
    }
    err_setf(errp, "Property '%s.%s' not found", o->type->name, prop);
    return NULL;
}
QMP_TYPED_HANDLER(qmp_qom_get, qom_get_cmd, struct qmp_args_qom_get);

void
qmp_objects_free_all(void)
{
    struct object *o;

    while ((o = LIST_FIRST(&g_objects))) {
        object_free(o);
    }
    tls_creds_free_all();
    authz_free_all();
}
