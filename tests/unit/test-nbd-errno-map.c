/* SPDX-License-Identifier: MIT */
/*
 * Unit test of nbd/errno-map.c: every errno the block layer returns maps
 * to an NBD error value a client understands (NBD spec, "Error values").
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "nbd/errno-map.h"
#include "nbd/proto.h"

static void
test_known(void **state)
{
    (void)state;
    assert_int_equal(nbdsrv_errno_to_nbd(0), NBD_SUCCESS);
    assert_int_equal(nbdsrv_errno_to_nbd(-EPERM), NBD_EPERM);
    assert_int_equal(nbdsrv_errno_to_nbd(-EROFS), NBD_EPERM);
    assert_int_equal(nbdsrv_errno_to_nbd(-EIO), NBD_EIO);
    assert_int_equal(nbdsrv_errno_to_nbd(-ENOMEM), NBD_ENOMEM);
    assert_int_equal(nbdsrv_errno_to_nbd(-EINVAL), NBD_EINVAL);
    assert_int_equal(nbdsrv_errno_to_nbd(-ENOSPC), NBD_ENOSPC);
    assert_int_equal(nbdsrv_errno_to_nbd(-EDQUOT), NBD_ENOSPC);
    assert_int_equal(nbdsrv_errno_to_nbd(-EFBIG), NBD_ENOSPC);
    assert_int_equal(nbdsrv_errno_to_nbd(-EOVERFLOW), NBD_EOVERFLOW);
    assert_int_equal(nbdsrv_errno_to_nbd(-ENOTSUP), NBD_ENOTSUP);
    assert_int_equal(nbdsrv_errno_to_nbd(-ESHUTDOWN), NBD_ESHUTDOWN);
}

static void
test_sign(void **state)
{
    (void)state;
    /* Positive errnos are accepted too. */
    assert_int_equal(nbdsrv_errno_to_nbd(EPERM), NBD_EPERM);
    assert_int_equal(nbdsrv_errno_to_nbd(ENOSPC), NBD_ENOSPC);
}

static void
test_unknown_is_einval(void **state)
{
    (void)state;
    /* Nothing outside the spec's list may reach the wire; like QEMU, the
     * rest is EINVAL (EACCES from a snapshot-access node included). */
    static const int others[] = {
        EACCES, ENOENT, EBADF, EAGAIN, EBUSY, ENXIO, ECONNRESET, ETIMEDOUT,
        ECANCELED, EMFILE, E2BIG, ENODEV, ERANGE, 4095,
    };

    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        assert_int_equal(nbdsrv_errno_to_nbd(-others[i]), NBD_EINVAL);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known),
        cmocka_unit_test(test_sign),
        cmocka_unit_test(test_unknown_is_einval),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
