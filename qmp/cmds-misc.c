/* SPDX-License-Identifier: MIT */
/*
 * QMP commands about the monitor and the daemon itself: qmp_capabilities,
 * query-version, query-status, query-commands, quit.  Main thread.
 */
#include "qmp/qmp-args.h"
#include "qmp/qmp-internal.h"
#include "util.h"

static json_t *
qmp_capabilities_cmd(const struct qmp_args_qmp_capabilities *a UNUSED,
                     struct err **errp UNUSED)
{
    /* "oob" is the only capability and the schema checked the names; the
     * dispatcher flips the client's negotiation state on success. */
    return json_object();
}
QMP_TYPED_HANDLER(qmp_qmp_capabilities, qmp_capabilities_cmd,
                  struct qmp_args_qmp_capabilities);

json_t *
qmp_query_version(json_t *args UNUSED, struct err **errp UNUSED)
{
    return json_pack("{s:{s:i, s:i, s:i}, s:s}", "qemu",
                     "micro", LOCKSTEP_VERSION_MICRO,
                     "minor", LOCKSTEP_VERSION_MINOR,
                     "major", LOCKSTEP_VERSION_MAJOR,
                     "package", "lockstep " LOCKSTEP_VERSION_STRING);
}

/* QEMU's StatusInfo.  A storage daemon runs no guest: it is running from
 * start-up to quit.  Monitors poll it to see that the daemon answers. */
json_t *
qmp_query_status(json_t *args UNUSED, struct err **errp UNUSED)
{
    return json_pack("{s:b, s:b, s:s}", "running", 1, "singlestep", 0,
                     "status", "running");
}

json_t *
qmp_query_commands(json_t *args UNUSED, struct err **errp UNUSED)
{
    json_t *list = json_array();

    for (const struct qmp_command *c = qmp_commands; c->name; c++) {
        json_array_append_new(list, json_pack("{s:s}", "name", c->name));
    }
    return list;
}

json_t *
qmp_quit(json_t *args UNUSED, struct err **errp UNUSED)
{
    /* The daemon leaves its loop after this response is queued, then
     * shuts down as on SIGTERM (and flushes the response first). */
    qmp_request_quit();
    return json_object();
}
