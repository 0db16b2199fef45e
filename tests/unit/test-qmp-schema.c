/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the QMP schema validator and dispatcher: QEMU's messages
 * for missing, unexpected and ill-typed arguments, nested paths, enums,
 * alternates, the negotiation state and the request shape checks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qmp/qmp-internal.h"
#include "util.h"

/* Dispatch text as a negotiated client; returns the error desc or NULL. */
static char *
dispatch_error(const char *text, bool negotiated)
{
    json_error_t jerr;
    json_t *req = json_loads(text, JSON_DECODE_ANY, &jerr);
    json_t *resp;
    char *desc = NULL;
    struct qmp_session session = { .negotiated = negotiated };

    assert_non_null(req);
    resp = qmp_dispatch(req, &session);
    if (json_object_get(resp, "error")) {
        desc = xstrdup(json_string_value(
            json_object_get(json_object_get(resp, "error"), "desc")));
    }
    json_decref(req);
    json_decref(resp);
    return desc;
}

static void
expect(const char *text, const char *desc)
{
    char *got = dispatch_error(text, true);

    if (!desc) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(got, desc);
    free(got);
}

static void
test_arguments(void **state)
{
    (void)state;
    expect("{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}",
           "Parameter 'x' is unexpected");
    expect("{\"execute\": \"block-dirty-bitmap-add\", \"arguments\": "
           "{\"node\": \"n\"}}", "Parameter 'name' is missing");
    expect("{\"execute\": \"block-dirty-bitmap-add\", \"arguments\": "
           "{\"node\": 1, \"name\": \"b\"}}",
           "Invalid parameter type for 'node', expected: string");
    expect("{\"execute\": \"block-dirty-bitmap-add\", \"arguments\": "
           "{\"node\": \"n\", \"name\": \"b\", \"granularity\": -1}}",
           "Parameter 'granularity' expects uint64");
    expect("{\"execute\": \"block-dirty-bitmap-add\", \"arguments\": "
           "{\"node\": \"n\", \"name\": \"b\", \"granularity\": "
           "8589934592}}", "Parameter 'granularity' expects uint32_t");
    expect("{\"execute\": \"query-named-block-nodes\", \"arguments\": "
           "{\"flat\": \"yes\"}}",
           "Invalid parameter type for 'flat', expected: boolean");
    expect("{\"execute\": \"block-dirty-bitmap-merge\", \"arguments\": "
           "{\"node\": \"n\", \"target\": \"t\", \"bitmaps\": [\"a\", 3]}}",
           "Invalid parameter type for 'bitmaps[1]', expected: "
           "BlockDirtyBitmapOrStr");
    expect("{\"execute\": \"block-dirty-bitmap-merge\", \"arguments\": "
           "{\"node\": \"n\", \"target\": \"t\", \"bitmaps\": "
           "[{\"node\": \"n\", \"name\": \"a\", \"x\": 1}]}}",
           "Parameter 'bitmaps[0].x' is unexpected");
    expect("{\"execute\": \"block-export-del\", \"arguments\": "
           "{\"id\": \"e\", \"mode\": \"soft\"}}",
           "Parameter 'mode' does not accept value 'soft'");
    expect("{\"execute\": \"nbd-server-start\", \"arguments\": "
           "{\"addr\": {\"type\": \"unix\"}}}",
           "Parameter 'addr.data' is missing");
    expect("{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
           "[{\"type\": \"block-dirty-bitmap-add\", \"data\": "
           "{\"node\": \"n\"}}]}}",
           "Parameter 'actions[0].data.name' is missing");
    expect("{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
           "[{\"type\": \"nope\", \"data\": {}}]}}",
           "Parameter 'type' does not accept value 'nope'");
    expect("{\"execute\": \"transaction\", \"arguments\": {\"actions\": "
           "[{\"type\": \"abort\", \"data\": {\"x\": 1}}]}}",
           "Parameter 'actions[0].data.x' is unexpected");
    expect("{\"execute\": \"query-version\"}", NULL);
}

static void
test_requests(void **state)
{
    char *got;

    (void)state;
    expect("[1]", "QMP input must be a JSON object");
    expect("{\"id\": 1}", "QMP input lacks member 'execute'");
    expect("{\"execute\": \"x\", \"y\": 1}",
           "QMP input member 'y' is unexpected");
    expect("{\"execute\": \"nope\"}", "The command nope has not been found");
    got = dispatch_error("{\"execute\": \"query-version\"}", false);
    assert_string_equal(got, "Expecting capabilities negotiation with "
                        "'qmp_capabilities'");
    free(got);
    expect("{\"execute\": \"qmp_capabilities\"}",
           "Capabilities negotiation is already complete, command ignored");
    got = dispatch_error("{\"execute\": \"qmp_capabilities\", "
                         "\"arguments\": {\"enable\": [\"foo\"]}}", false);
    assert_string_equal(got, "Parameter 'null' does not accept value 'foo'");
    free(got);
}

static void
test_negotiation_state(void **state)
{
    struct qmp_session session = { .negotiated = false };
    json_t *req = json_pack("{s:s, s:{s:[s]}, s:i}", "execute",
                            "qmp_capabilities", "arguments", "enable", "oob",
                            "id", 5);
    json_t *resp = qmp_dispatch(req, &session);

    (void)state;
    assert_true(session.negotiated);
    assert_true(session.oob);
    assert_int_equal(json_integer_value(json_object_get(resp, "id")), 5);
    assert_non_null(json_object_get(resp, "return"));
    json_decref(req);
    json_decref(resp);
}

/* The schema's transaction enum and the action table agree. */
static void
test_schema_table(void **state)
{
    (void)state;
    for (const struct qmp_command *c = qmp_commands; c->name; c++) {
        assert_ptr_equal(qmp_command_find(c->name), c);
        assert_non_null(c->handler);
        assert_non_null(c->doc);
        for (const struct qmp_command *d = c + 1; d->name; d++) {
            assert_string_not_equal(c->name, d->name);
        }
    }
    for (size_t i = 0; qmp_txn_action_types[i]; i++) {
        json_t *actions = json_pack("[{s:s, s:{s:i}}]", "type",
                                    qmp_txn_action_types[i], "data",
                                    "zzz-unknown", 1);
        struct err *err = NULL;

        /* Every listed type is known to the runner: its data is checked
         * against the action's own arguments. */
        assert_false(qmp_transaction_run(actions, NULL, &err));
        assert_non_null(err);
        assert_null(strstr(err->msg, "does not accept value"));
        assert_non_null(strstr(err->msg, "actions[0].data."));
        err_free(err);
        json_decref(actions);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_requests),
        cmocka_unit_test(test_negotiation_state),
        cmocka_unit_test(test_schema_table),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
