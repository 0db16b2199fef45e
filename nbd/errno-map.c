/* SPDX-License-Identifier: MIT */
/*
 * errno -> NBD error mapping.  The NBD spec defines a handful of error
 * values with Linux's numbers; every other errno is reported as NBD_EINVAL,
 * as QEMU's server does, so that clients see the same errors from both (a
 * snapshot-access read outside the snapshot, EACCES, shows up as "Invalid
 * argument" in qemu-io, as QEMU's fleecing tests expect).  ENOTSUP is only
 * meaningful for FAST_ZERO, and the server only produces it there (the
 * block layer returns -ENOTSUP for BLOCK_REQ_NO_FALLBACK).
 */
#include <errno.h>
#include <stdlib.h>

#include "nbd/errno-map.h"
#include "nbd/proto.h"

uint32_t
nbdsrv_errno_to_nbd(int err)
{
    err = abs(err);
    switch (err) {
    case 0:
        return NBD_SUCCESS;
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case EIO:
        return NBD_EIO;
    case ENOMEM:
        return NBD_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EOVERFLOW:
        return NBD_EOVERFLOW;
    case ENOTSUP:
        return NBD_ENOTSUP;
    case ESHUTDOWN:
        return NBD_ESHUTDOWN;
    case EINVAL:
    default:
        return NBD_EINVAL;
    }
}
