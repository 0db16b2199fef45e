/* SPDX-License-Identifier: MIT */
/*
 * The one place where a -errno from the block layer becomes an NBD error
 * value on the wire (style guide E10).  Unit-tested in
 * tests/unit/test-nbd-errno-map.c.
 */
#ifndef LOCKSTEP_NBD_ERRNO_MAP_H
#define LOCKSTEP_NBD_ERRNO_MAP_H

#include <stdint.h>

/*
 * Map an errno (positive or negative; 0 gives 0) to an NBD error value.
 * Anything without an NBD equivalent becomes NBD_EIO, except a few that
 * the spec says to fold elsewhere (EDQUOT and EFBIG -> NBD_ENOSPC).
 * Pure function, any thread.
 */
uint32_t nbdsrv_errno_to_nbd(int err);

#endif
