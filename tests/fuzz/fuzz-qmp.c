/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the QMP monitor's input path, everything a client
 * can reach before a command runs: the input is one client byte stream,
 * cut into values by the monitor's framer (qmp/framer.c), each value
 * parsed as the monitor parses it (json_loadb with JSON_ALLOW_NUL, so
 * that strings with \u0000 reach the checks) and checked by the
 * dispatcher (qmp_dispatch_check: request shape, negotiation, the
 * command's name, NUL characters in any string or member name, every
 * argument against the schema).  Commands that change nothing (the
 * queries, qmp_capabilities) also run for real through qmp_dispatch(),
 * and their response is encoded as the monitor sends it.
 *
 * Invariants checked (abort on violation): a value from the framer is
 * never longer than QMP_MAX_REQUEST; a command that passed the checks has
 * no NUL in its name, nor in any argument string or member name.
 *
 * The first input byte picks the session: bit 0 set starts it
 * negotiated (most inputs then reach the commands), clear starts it in
 * capabilities negotiation.  Build as the other targets (meson
 * -Dfuzz=true with clang; scripts/run-fuzz.sh), seeds from
 * tests/fuzz/seeds-fuzz-qmp.sh.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "keyval.h"
#include "qmp/framer.h"
#include "qmp/monitor.h"
#include "qmp/qmp-internal.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Commands without side effects: run for real. */
static const char *const harmless[] = {
    "qmp_capabilities", "query-version", "query-commands", "query-jobs",
    "query-block-jobs", "query-named-block-nodes", "query-block",
    "x-debug-query-block-graph", "query-block-exports", "query-fleecing",
    NULL,
};

static bool
is_harmless(const char *name)
{
    for (const char *const *h = harmless; *h; h++) {
        if (!strcmp(*h, name)) {
            return true;
        }
    }
    return false;
}

static void
check_clean(const struct qmp_command *cmd, json_t *req, json_t *args,
            bool oob)
{
    json_t *exec = json_object_get(req, oob ? "exec-oob" : "execute");

    if (!exec) {
        exec = json_object_get(req, "execute");
    }
    if (!json_is_string(exec) ||
        json_string_length(exec) != strlen(cmd->name) ||
        !json_check_nul(args, NULL)) {
        abort();
    }
}

static bool
frame_cb(void *opaque, const char *text, size_t len, const char *error)
{
    struct qmp_session *session = opaque;
    const struct qmp_command *cmd;
    struct err *err = NULL;
    json_error_t jerr;
    json_t *req, *args;

    if (!text) {
        return error != NULL;
    }
    if (len > QMP_MAX_REQUEST) {
        abort();
    }
    req = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!req) {
        return true;
    }
    cmd = qmp_dispatch_check(req, session, &args, &err);
    if (cmd) {
        check_clean(cmd, req, args, session->oob);
        json_decref(args);
        if (is_harmless(cmd->name)) {
            json_t *resp = qmp_dispatch(req, session);
            char *out = json_dumps(resp, JSON_PRESERVE_ORDER |
                                   JSON_ENCODE_ANY | JSON_ENSURE_ASCII);

            free(out);
            json_decref(resp);
        }
    } else {
        /* What the client would read. */
        json_t *resp = qmp_error_response(err, json_object_get(req, "id"));
        char *out = json_dumps(resp, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);

        free(out);
        json_decref(resp);
    }
    json_decref(req);
    return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qmp_framer framer = {0};
    struct qmp_session session = {0};

    if (size < 1) {
        return 0;
    }
    session.negotiated = data[0] & 1;
    qmp_framer_feed(&framer, (const char *)data + 1, size - 1, frame_cb,
                    &session);
    qmp_framer_free(&framer);
    return 0;
}
