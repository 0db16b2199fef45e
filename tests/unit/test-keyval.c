/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for util/keyval.c: QEMU's dotted key=value syntax to JSON.
 * Each case compares the parse result, serialised with sorted keys, with
 * the expected JSON text, or the error message with the one QEMU 7.2's
 * qemu-storage-daemon prints for the same input.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keyval.h"
#include "util.h"

struct ok_case {
    const char *in;
    const char *implied;
    const char *json;   /* compact, keys sorted */
};

struct bad_case {
    const char *in;
    const char *implied;
    const char *msg;
};

static const struct ok_case ok_cases[] = {
    { "", NULL, "{}" },
    { "a=1", NULL, "{\"a\":\"1\"}" },
    { "a=1,b.c=x,b.d=y", NULL,
      "{\"a\":\"1\",\"b\":{\"c\":\"x\",\"d\":\"y\"}}" },
    { "a=", NULL, "{\"a\":\"\"}" },
    { "a=1,", NULL, "{\"a\":\"1\"}" },
    { "a=x,,y", NULL, "{\"a\":\"x,y\"}" },
    { "a=,,", NULL, "{\"a\":\",\"}" },
    { "a=x,,,b=2", NULL, "{\"a\":\"x,\",\"b\":\"2\"}" },
    { "a=1=2", NULL, "{\"a\":\"1=2\"}" },
    { "a=1,a=2", NULL, "{\"a\":\"2\"}" },
    { "a-b_c=1", NULL, "{\"a-b_c\":\"1\"}" },
    { "A9=1", NULL, "{\"A9\":\"1\"}" },
    { "a.b.c.d=deep", NULL, "{\"a\":{\"b\":{\"c\":{\"d\":\"deep\"}}}}" },
    { "a=with space", NULL, "{\"a\":\"with space\"}" },
    { "qcow2,file.filename=x", "driver",
      "{\"driver\":\"qcow2\",\"file\":{\"filename\":\"x\"}}" },
    { "qcow2", "driver", "{\"driver\":\"qcow2\"}" },
    { "a.b.c", "driver", "{\"driver\":\"a.b.c\"}" },
    { "a!b,c=1", "driver", "{\"c\":\"1\",\"driver\":\"a!b\"}" },
    { "driver=raw", "driver", "{\"driver\":\"raw\"}" },
    { "x,driver=file", "driver", "{\"driver\":\"file\"}" },
    { "children.0.driver=file,children.1=node2", NULL,
      "{\"children\":[{\"driver\":\"file\"},\"node2\"]}" },
    { "a.1=x,a.0=y", NULL, "{\"a\":[\"y\",\"x\"]}" },
    { "a.0.0=1,a.0.1=2,a.1.0=3", NULL, "{\"a\":[[\"1\",\"2\"],[\"3\"]]}" },
    { "a.00=x", NULL, "{\"a\":[\"x\"]}" },
    { "a.0=x,a.00=y", NULL, "{\"a\":[\"y\"]}" },
    { "a.0=x,a.0=y", NULL, "{\"a\":[\"y\"]}" },
    { "a.0=1,a.1=2,a.2=3,a.3=4,a.4=5,a.5=6,a.6=7,a.7=8,a.8=9,a.9=10,"
      "a.10=11", NULL,
      "{\"a\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
      "\"10\",\"11\"]}" },
    { "a.b0=1", NULL, "{\"a\":{\"b0\":\"1\"}}" },
};

static const struct bad_case bad_cases[] = {
    { "a", NULL, "Expected '=' after parameter 'a'" },
    { "driver=file,filename", NULL,
      "Expected '=' after parameter 'filename'" },
    { "driver=file,a.b", NULL, "Expected '=' after parameter 'a.b'" },
    { "a..b=1", NULL, "Invalid parameter 'a..b'" },
    { ".a=1", NULL, "Invalid parameter '.a'" },
    { "a.=1", NULL, "Invalid parameter 'a.'" },
    { "=1", NULL, "Invalid parameter ''" },
    { ",", NULL, "Invalid parameter ''" },
    { ",", "driver", "Invalid parameter ''" },
    { "0=a", NULL, "Invalid parameter '0'" },
    { "0a=1", NULL, "Invalid parameter '0a'" },
    { "_a=1", NULL, "Invalid parameter '_a'" },
    { "-a=1", NULL, "Invalid parameter '-a'" },
    { "a.0b=1", NULL, "Invalid parameter 'a.0b'" },
    { "a._=1", NULL, "Invalid parameter 'a._'" },
    { "a.-1=1", NULL, "Invalid parameter 'a.-1'" },
    { "a.+1=1", NULL, "Invalid parameter 'a.+1'" },
    { "a!b=1", NULL, "Invalid parameter 'a!b'" },
    { "driver=file,a b", NULL, "Invalid parameter 'a b'" },
    { "driver=file,a!b", NULL, "Invalid parameter 'a!b'" },
    { "qcow2,,x", "driver", "Invalid parameter ''" },
    { "file.a=1,file=x", NULL, "Parameters 'file.*' used inconsistently" },
    { "file=x,file.a=1", NULL, "Parameters 'file.*' used inconsistently" },
    { "a.b=1,a.b.c=2", NULL, "Parameters 'a.b.*' used inconsistently" },
    { "a.b.c=2,a.b=1", NULL, "Parameters 'a.b.*' used inconsistently" },
    { "a.0=x,a.b=y", NULL, "Parameters 'a.*' used inconsistently" },
    { "a.x.0=1,a.x.y=2", NULL, "Parameters 'a.x.*' used inconsistently" },
    { "a.0=x,a.2=y", NULL, "Parameter 'a.1' missing" },
    { "a.1=x", NULL, "Parameter 'a.0' missing" },
    { "a.0.1=x", NULL, "Parameter 'a.0.0' missing" },
    { "a.99999999999999999999999=x", NULL, "Parameter 'a.0' missing" },
    { "a=\xff", NULL, "Parameter 'a' is not valid UTF-8" },
};

static void
check_ok(const struct ok_case *c)
{
    struct err *e = NULL;
    json_t *obj = keyval_parse(c->in, c->implied, &e);
    char *text;

    if (!obj) {
        fail_msg("'%s': unexpected error: %s", c->in, e->msg);
    }
    assert_null(e);
    text = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    if (strcmp(text, c->json) != 0) {
        fail_msg("'%s': got %s, expected %s", c->in, text, c->json);
    }
    free(text);
    json_decref(obj);
}

static void
check_bad(const char *in, const char *implied, const char *msg)
{
    struct err *e = NULL;
    json_t *obj = keyval_parse(in, implied, &e);

    if (obj) {
        char *text = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("'%s': expected error '%s', got %s", in, msg, text);
    }
    assert_non_null(e);
    if (strcmp(e->msg, msg) != 0) {
        fail_msg("'%s': got error '%s', expected '%s'", in, e->msg, msg);
    }
    err_free(e);
}

static void
test_ok_cases(void **state UNUSED)
{
    for (size_t i = 0; i < ARRAY_SIZE(ok_cases); i++) {
        check_ok(&ok_cases[i]);
    }
}

static void
test_bad_cases(void **state UNUSED)
{
    for (size_t i = 0; i < ARRAY_SIZE(bad_cases); i++) {
        check_bad(bad_cases[i].in, bad_cases[i].implied, bad_cases[i].msg);
    }
}

/* Four commas after a value: ",," twice, so the value is "1,," (QEMU). */
static void
test_many_commas(void **state UNUSED)
{
    struct ok_case c = { "a=1,,,,", NULL, "{\"a\":\"1,,\"}" };

    check_ok(&c);
}

/* 127 characters is the longest fragment QEMU accepts. */
static void
test_fragment_length(void **state UNUSED)
{
    char in[300], msg[300];
    char frag[129];
    struct ok_case c = { in, NULL, NULL };
    char json[300];

    memset(frag, 'b', 127);
    frag[127] = '\0';
    snprintf(in, sizeof(in), "a.%s=1", frag);
    snprintf(json, sizeof(json), "{\"a\":{\"%s\":\"1\"}}", frag);
    c.json = json;
    check_ok(&c);

    frag[127] = 'b';
    frag[128] = '\0';
    snprintf(in, sizeof(in), "a.%s=1", frag);
    snprintf(msg, sizeof(msg), "Parameter fragment '%s' is too long", frag);
    check_bad(in, NULL, msg);
    snprintf(in, sizeof(in), "%s=1", frag);
    check_bad(in, NULL, msg);
}

/* Values are kept byte for byte, apart from the ",," escape. */
static void
test_values_verbatim(void **state UNUSED)
{
    struct err *e = NULL;
    json_t *obj = keyval_parse("f=/tmp/a b/\xc3\xa9.img,g={\"x\":1}", NULL,
                               &e);

    assert_non_null(obj);
    assert_string_equal(json_string_value(json_object_get(obj, "f")),
                        "/tmp/a b/\xc3\xa9.img");
    assert_string_equal(json_string_value(json_object_get(obj, "g")),
                        "{\"x\":1}");
    json_decref(obj);
}

/* errp may be NULL: the failure is still reported by the return value. */
static void
test_null_errp(void **state UNUSED)
{
    assert_null(keyval_parse("a", NULL, NULL));
    assert_null(keyval_parse("a.1=x", NULL, NULL));
    assert_null(keyval_or_json_parse("{", NULL, NULL));
}

static void
test_json_form(void **state UNUSED)
{
    struct err *e = NULL;
    json_t *obj;

    obj = keyval_or_json_parse("{\"driver\": \"raw\", \"file\": "
                               "{\"driver\": \"file\", \"filename\": \"x\"},"
                               " \"read-only\": true}", "driver", &e);
    assert_non_null(obj);
    assert_true(json_is_true(json_object_get(obj, "read-only")));
    assert_string_equal(json_string_value(json_object_get(
        json_object_get(obj, "file"), "filename")), "x");
    json_decref(obj);

    /* Not starting with '{': keyval, with the implied key. */
    obj = keyval_or_json_parse("raw,file.driver=file", "driver", &e);
    assert_non_null(obj);
    assert_string_equal(json_string_value(json_object_get(obj, "driver")),
                        "raw");
    json_decref(obj);

    obj = keyval_or_json_parse("{\"driver\":\"file\"", NULL, &e);
    assert_null(obj);
    assert_non_null(e);
    assert_true(strncmp(e->msg, "JSON parse error, ", 18) == 0);
    err_free(e);
    e = NULL;

    obj = keyval_or_json_parse("{} x", NULL, &e);
    assert_null(obj);
    assert_non_null(e);
    err_free(e);
    e = NULL;

    obj = keyval_or_json_parse("a=1,b", NULL, &e);
    assert_null(obj);
    assert_string_equal(e->msg, "Expected '=' after parameter 'b'");
    err_free(e);
}

/* A wide, random-ish list round-trips into an array in index order. */
static void
test_long_list(void **state UNUSED)
{
    enum { N = 300 };
    char *in = xstrdup("");
    struct err *e = NULL;
    json_t *obj, *arr;

    /* Insert in a scrambled order; 7 is coprime with 300. */
    for (int i = 0; i < N; i++) {
        int idx = (i * 7) % N;
        char *next = xasprintf("%s%sl.%d.v=%d", in, i ? "," : "", idx, idx);

        free(in);
        in = next;
    }
    obj = keyval_parse(in, NULL, &e);
    assert_non_null(obj);
    arr = json_object_get(obj, "l");
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), N);
    for (int i = 0; i < N; i++) {
        char want[16];

        snprintf(want, sizeof(want), "%d", i);
        assert_string_equal(json_string_value(json_object_get(
            json_array_get(arr, i), "v")), want);
    }
    json_decref(obj);
    free(in);
}

/* parse_size (util.c), which keyval's size options go through: QEMU's
 * fractions with a unit, rounded to the nearest byte. */
static void
test_parse_size(void **state UNUSED)
{
    static const struct {
        const char *in;
        int ret;
        uint64_t want;
    } cases[] = {
        { "65536", 0, 65536 },
        { "64k", 0, 65536 },
        { "1.25M", 0, 1310720 },
        { "0.25M", 0, 262144 },
        { "1.M", 0, 1048576 },
        { "1.0", 0, 1 },
        { "0.0005k", 0, 1 },            /* 0.512 bytes: rounds up */
        { "0.0004k", 0, 0 },
        { "15.5E", 0, UINT64_C(17870283321406128128) },
        { "0.5", -EINVAL, 0 },          /* a fraction of a byte */
        { "1.5b", -EINVAL, 0 },
        { ".5M", -EINVAL, 0 },
        { "1.5x", -EINVAL, 0 },
        { "1.5e3", -EINVAL, 0 },
        { "16E", -ERANGE, 0 },
        { "15.99999999999999999999E", -ERANGE, 0 },  /* rounds to 16E */
    };

    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t v = 0;
        int ret = parse_size(cases[i].in, &v);

        if (ret != cases[i].ret || (ret == 0 && v != cases[i].want)) {
            fail_msg("%s: %d %" PRIu64, cases[i].in, ret, v);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ok_cases),
        cmocka_unit_test(test_bad_cases),
        cmocka_unit_test(test_many_commas),
        cmocka_unit_test(test_fragment_length),
        cmocka_unit_test(test_values_verbatim),
        cmocka_unit_test(test_null_errp),
        cmocka_unit_test(test_json_form),
        cmocka_unit_test(test_long_list),
        cmocka_unit_test(test_parse_size),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
