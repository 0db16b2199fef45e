/* SPDX-License-Identifier: MIT */
/*
 * NBD wire constants, named as in the NBD protocol specification (proto.md)
 * so that readers can look each one up.  Only the server includes this
 * header; the client driver uses libnbd's LIBNBD_* names instead.  Every
 * integer on the wire is big-endian.
 */
#ifndef LOCKSTEP_NBD_PROTO_H
#define LOCKSTEP_NBD_PROTO_H

#include <stdint.h>

/* Handshake (NBD spec, "Newstyle negotiation"). */
#define NBD_MAGIC                   0x4e42444d41474943ULL  /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC              0x49484156454F5054ULL  /* "IHAVEOPT" */
#define NBD_REP_MAGIC               0x0003e889045565a9ULL

#define NBD_FLAG_FIXED_NEWSTYLE     0x0001
#define NBD_FLAG_NO_ZEROES          0x0002
#define NBD_FLAG_C_FIXED_NEWSTYLE   0x0001
#define NBD_FLAG_C_NO_ZEROES        0x0002

/* Options. */
#define NBD_OPT_EXPORT_NAME         1
#define NBD_OPT_ABORT               2
#define NBD_OPT_LIST                3
#define NBD_OPT_PEEK_EXPORT         4
#define NBD_OPT_STARTTLS            5
#define NBD_OPT_INFO                6
#define NBD_OPT_GO                  7
#define NBD_OPT_STRUCTURED_REPLY    8
#define NBD_OPT_LIST_META_CONTEXT   9
#define NBD_OPT_SET_META_CONTEXT    10
#define NBD_OPT_EXTENDED_HEADERS    11

/* Option replies. */
#define NBD_REP_ACK                 1
#define NBD_REP_SERVER              2
#define NBD_REP_INFO                3
#define NBD_REP_META_CONTEXT        4
#define NBD_REP_FLAG_ERROR          0x80000000U
#define NBD_REP_ERR_UNSUP           0x80000001U
#define NBD_REP_ERR_POLICY          0x80000002U
#define NBD_REP_ERR_INVALID         0x80000003U
#define NBD_REP_ERR_PLATFORM        0x80000004U
#define NBD_REP_ERR_TLS_REQD        0x80000005U
#define NBD_REP_ERR_UNKNOWN         0x80000006U
#define NBD_REP_ERR_SHUTDOWN        0x80000007U
#define NBD_REP_ERR_BLOCK_SIZE_REQD 0x80000008U
#define NBD_REP_ERR_TOO_BIG         0x80000009U

/* Info types (NBD_REP_INFO). */
#define NBD_INFO_EXPORT             0
#define NBD_INFO_NAME               1
#define NBD_INFO_DESCRIPTION        2
#define NBD_INFO_BLOCK_SIZE         3

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS          0x0001
#define NBD_FLAG_READ_ONLY          0x0002
#define NBD_FLAG_SEND_FLUSH         0x0004
#define NBD_FLAG_SEND_FUA           0x0008
#define NBD_FLAG_ROTATIONAL         0x0010
#define NBD_FLAG_SEND_TRIM          0x0020
#define NBD_FLAG_SEND_WRITE_ZEROES  0x0040
#define NBD_FLAG_SEND_DF            0x0080
#define NBD_FLAG_CAN_MULTI_CONN     0x0100
#define NBD_FLAG_SEND_RESIZE        0x0200
#define NBD_FLAG_SEND_CACHE         0x0400
#define NBD_FLAG_SEND_FAST_ZERO     0x0800

/* Transmission. */
#define NBD_REQUEST_MAGIC           0x25609513U
#define NBD_SIMPLE_REPLY_MAGIC      0x67446698U
#define NBD_STRUCTURED_REPLY_MAGIC  0x668e33efU

#define NBD_CMD_READ                0
#define NBD_CMD_WRITE               1
#define NBD_CMD_DISC                2
#define NBD_CMD_FLUSH               3
#define NBD_CMD_TRIM                4
#define NBD_CMD_CACHE               5
#define NBD_CMD_WRITE_ZEROES        6
#define NBD_CMD_BLOCK_STATUS        7

#define NBD_CMD_FLAG_FUA            0x0001
#define NBD_CMD_FLAG_NO_HOLE        0x0002
#define NBD_CMD_FLAG_DF             0x0004
#define NBD_CMD_FLAG_REQ_ONE        0x0008
#define NBD_CMD_FLAG_FAST_ZERO      0x0010

#define NBD_REPLY_FLAG_DONE         0x0001

#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        0x8001
#define NBD_REPLY_TYPE_ERROR_OFFSET 0x8002

/* Error values (NBD spec, "Error values"). */
#define NBD_SUCCESS                 0
#define NBD_EPERM                   1
#define NBD_EIO                     5
#define NBD_ENOMEM                  12
#define NBD_EINVAL                  22
#define NBD_ENOSPC                  28
#define NBD_EOVERFLOW               75
#define NBD_ENOTSUP                 95
#define NBD_ESHUTDOWN               108

/* base:allocation and qemu:dirty-bitmap:* flags. */
#define NBD_STATE_HOLE              0x1
#define NBD_STATE_ZERO              0x2
#define NBD_STATE_DIRTY             0x1

/* Limits of this server. */
#define NBDSRV_MAX_STRING           4096           /* names, descriptions */
#define NBDSRV_MAX_OPTION_LEN       (64 * 1024)    /* larger: disconnect */
#define NBDSRV_MAX_PAYLOAD          (32U * 1024 * 1024)  /* 2^25 */
#define NBDSRV_PREF_BLOCK           4096
#define NBDSRV_MAX_EXTENTS          (1U << 20)     /* per BLOCK_STATUS chunk */
#define NBDSRV_MAX_META_CONTEXTS    64             /* per SET_META_CONTEXT */

#endif
