/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the QMP schema validator and dispatcher: QEMU's messages
 * for missing, unexpected and ill-typed arguments, nested paths, enums,
 * alternates, the negotiation state and the request shape checks; the
 * typed-argument decoder, and the table's typed lists against their
 * structs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qmp/qmp-args.h"
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

/* A typed list describes its struct throughout: every member has a field,
 * nested lists describe their nested structs, elements their size. */
static void
check_typed_list(const struct qmp_arg *args)
{
    const struct qmp_arg *m;

    for (m = args; m->name; m++) {
        assert_true(m->typed);
        if (m->type == QMP_T_OBJECT) {
            check_typed_list(m->members);
            assert_int_equal(qmp_args_size(m->members), m->size);
        }
        if (m->type == QMP_T_ARRAY) {
            assert_true(m->elem->typed);
            assert_int_equal(m->elem->size, m->size);
            if (m->elem->members) {
                check_typed_list(m->elem->members);
                assert_int_equal(qmp_args_size(m->elem->members),
                                 m->elem->size);
            }
        }
    }
    assert_true(m->typed);
    assert_true(m->size > 0);
}

/* ---- The decoder, on a list of every kind of member -------------------- */

enum color { COLOR_RED, COLOR_GREEN, COLOR_BLUE };
static const char *const color_names[] = { "red", "green", "blue", NULL };

struct inner {
    bool has_n;
    int64_t n;
    const char *s;
};

struct test_args {
    const char *s;
    const char *opt_s;
    bool has_b;
    bool b;
    int64_t i;
    bool has_u;
    uint64_t u;
    bool has_c;
    enum color c;
    bool has_in;
    struct inner in;
    const char **strs;
    size_t n_strs;
    struct qmp_bitmap_or_str *refs;
    size_t n_refs;
    json_t *any;
};

#define T struct inner
static const struct qmp_arg inner_members[] = {
    QMP_INT_OPT(T, n, "n", .doc = "a number"),
    QMP_STR_OPT(T, s, "s", .doc = "a string"),
    QMP_END_OF(T),
};
#undef T

#define T struct qmp_bitmap_or_str
static const struct qmp_arg ref_members[] = {
    QMP_STR(T, node, "node", .doc = "node"),
    QMP_STR(T, name, "name", .doc = "name"),
    QMP_END_OF(T),
};
#undef T
static const struct qmp_arg ref_elem =
    QMP_ELEM_STR_OR_OBJ(struct qmp_bitmap_or_str, local, ref_members);
static const struct qmp_arg str_elem = QMP_ELEM_STR(.doc = NULL);

#define T struct test_args
static const struct qmp_arg test_list[] = {
    QMP_STR(T, s, "s", .doc = "required string"),
    QMP_STR_OPT(T, opt_s, "opt-s", .doc = "optional string"),
    QMP_BOOL_OPT(T, b, "b", .doc = "bool"),
    QMP_INT(T, i, "i", .doc = "int"),
    QMP_UINT_OPT(T, u, "u", .doc = "uint"),
    QMP_ENUM_OPT(T, c, "c", enum color, color_names, .doc = "enum"),
    QMP_OBJECT_OPT(T, in, "in", inner_members, .doc = "object"),
    QMP_ARRAY_OPT(T, strs, "strs", &str_elem, .doc = "strings"),
    QMP_ARRAY_OPT(T, refs, "refs", &ref_elem, .doc = "refs"),
    QMP_ANY_OPT(T, any, "any", .doc = "any"),
    QMP_END_OF(T),
};
#undef T

static void
test_typed_decode(void **state)
{
    json_t *obj = json_loads(
        "{\"s\": \"x\", \"b\": false, \"i\": -7, \"u\": 4294967296,"
        " \"c\": \"blue\", \"in\": {\"n\": 5}, \"strs\": [\"p\", \"q\"],"
        " \"refs\": [\"b0\", {\"node\": \"n1\", \"name\": \"b1\"}],"
        " \"any\": [1]}", 0, NULL);
    json_t *small = json_pack("{s:s, s:i}", "s", "y", "i", 1);
    struct test_args a;
    struct err *err = NULL;

    (void)state;
    check_typed_list(test_list);
    assert_int_equal(qmp_args_size(test_list), sizeof(struct test_args));
    assert_non_null(obj);
    /* Validation first, as the dispatcher does. */
    assert_true(qmp_validate_members(test_list, obj, "", &err));

    memset(&a, 0, sizeof(a));
    qmp_args_decode(test_list, obj, &a);
    assert_string_equal(a.s, "x");
    assert_null(a.opt_s);
    assert_true(a.has_b);
    assert_false(a.b);
    assert_int_equal(a.i, -7);
    assert_true(a.has_u);
    assert_true(a.u == 4294967296ULL);
    assert_true(a.has_c);
    assert_int_equal(a.c, COLOR_BLUE);
    assert_true(a.has_in);
    assert_true(a.in.has_n);
    assert_int_equal(a.in.n, 5);
    assert_null(a.in.s);
    assert_int_equal(a.n_strs, 2);
    assert_string_equal(a.strs[0], "p");
    assert_string_equal(a.strs[1], "q");
    assert_int_equal(a.n_refs, 2);
    assert_string_equal(a.refs[0].local, "b0");
    assert_null(a.refs[0].node);
    assert_null(a.refs[1].local);
    assert_string_equal(a.refs[1].node, "n1");
    assert_string_equal(a.refs[1].name, "b1");
    assert_ptr_equal(a.any, json_object_get(obj, "any"));
    qmp_args_free(test_list, &a);

    /* Absent optional members: no has_ flags, NULL pointers, no arrays. */
    memset(&a, 0, sizeof(a));
    assert_true(qmp_validate_members(test_list, small, "", &err));
    qmp_args_decode(test_list, small, &a);
    assert_string_equal(a.s, "y");
    assert_false(a.has_b || a.has_u || a.has_c || a.has_in);
    assert_null(a.strs);
    assert_int_equal(a.n_strs, 0);
    assert_null(a.any);
    qmp_args_free(test_list, &a);
    json_decref(small);
    json_decref(obj);
}

/* The schema's transaction enum and the action table agree. */
static void
test_schema_table(void **state)
{
    (void)state;
    for (const struct qmp_command *c = qmp_commands; c->name; c++) {
        assert_ptr_equal(qmp_command_find(c->name), c);
        /* One handler, typed or not. */
        assert_true(!c->handler != !c->typed);
        assert_non_null(c->doc);
        /* Arguments are decoded once, into the command's struct: only
         * blockdev-add and object-add pass their object on as options. */
        if (c->args || c->args_are_options) {
            assert_true(c->typed || c->args_are_options);
        }
        if (c->typed) {
            assert_false(c->args_are_options);
            assert_null(c->async_handler);
            if (c->args) {
                check_typed_list(c->args);
                assert_int_equal(qmp_args_size(c->args), c->typed->size);
            }
        }
        for (const struct qmp_command *d = c + 1; d->name; d++) {
            assert_string_not_equal(c->name, d->name);
        }
    }
    for (size_t i = 0; qmp_txn_action_types[i]; i++) {
        json_t *args = json_pack("{s:[{s:s, s:{s:i}}]}", "actions", "type",
                                 qmp_txn_action_types[i], "data",
                                 "zzz-unknown", 1);
        struct err *err = NULL;

        /* Every listed type is known to the runner: its data is checked
         * against the action's own arguments. */
        assert_null(qmp_execute("transaction", args, &err));
        assert_non_null(err);
        assert_null(strstr(err->msg, "does not accept value"));
        assert_non_null(strstr(err->msg, "actions[0].data."));
        err_free(err);
        json_decref(args);
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
        cmocka_unit_test(test_typed_decode),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
