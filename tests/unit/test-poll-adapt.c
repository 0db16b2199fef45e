/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for poll_adapt() (util/util.c): the busy-poll time of the
 * NBD reader and vhost-user queues, tuned by an iothread's poll-max-ns,
 * poll-grow and poll-shrink.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "util.h"

#define SOON 1000           /* a sleep that a longer poll would have saved */
#define LONG 10000000       /* an idle client: 10 ms */

/* From nothing, soon-ending sleeps double the poll up to 32768 ns. */
static void
test_default(void **state)
{
    const struct poll_tuning *t = &poll_tuning_default;
    int64_t ns = 0;

    (void)state;
    ns = poll_adapt(t, ns, SOON);
    assert_int_equal(ns, 4000);
    ns = poll_adapt(t, ns, SOON);
    assert_int_equal(ns, 8000);
    for (int i = 0; i < 10; i++) {
        ns = poll_adapt(t, ns, SOON);
    }
    assert_int_equal(ns, POLL_MAX_NS_DEFAULT);
    assert_int_equal(poll_adapt(t, ns, LONG), 0);
}

/* poll-max-ns=0: never poll, however soon sleeps end. */
static void
test_max_zero(void **state)
{
    const struct poll_tuning t = { .max_ns = 0 };

    (void)state;
    assert_int_equal(poll_adapt(&t, 0, SOON), 0);
    assert_int_equal(poll_adapt(&t, 0, 0), 0);
}

/* poll-grow multiplies, poll-shrink divides (below the start: off). */
static void
test_grow_shrink(void **state)
{
    const struct poll_tuning t = { .max_ns = 100000, .grow = 4,
                                   .shrink = 2 };
    int64_t ns;

    (void)state;
    ns = poll_adapt(&t, 0, SOON);
    assert_int_equal(ns, 4000);
    ns = poll_adapt(&t, ns, SOON);
    assert_int_equal(ns, 16000);
    ns = poll_adapt(&t, ns, SOON);
    assert_int_equal(ns, 64000);
    ns = poll_adapt(&t, ns, SOON);
    assert_int_equal(ns, 100000);
    ns = poll_adapt(&t, ns, LONG);
    assert_int_equal(ns, 50000);
    ns = poll_adapt(&t, 6000, LONG);
    assert_int_equal(ns, 0);
    /* A huge factor must not overflow past the cap. */
    {
        const struct poll_tuning big = { .max_ns = INT64_MAX,
                                         .grow = INT64_MAX };

        assert_int_equal(poll_adapt(&big, 4000, 0), INT64_MAX);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default),
        cmocka_unit_test(test_max_zero),
        cmocka_unit_test(test_grow_shrink),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
