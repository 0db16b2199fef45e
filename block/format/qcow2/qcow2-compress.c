/* SPDX-License-Identifier: MIT */
/*
 * The codecs of compressed clusters (qcow2 spec, header field
 * compression_type): zlib as a raw deflate stream (no zlib header, window
 * 2^15), or zstd as one zstd frame.  What is stored is rounded up to whole
 * sectors, so a reader takes a full cluster out of the stream and ignores
 * the bytes after it.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "block/format/qcow2/qcow2-int.h"

static size_t
zlib_compress(const uint8_t *in, size_t len, uint8_t *out, size_t max)
{
    z_stream z;
    size_t n = 0;

    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        return 0;
    }
    z.next_in = (uint8_t *)in;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)max;
    if (deflate(&z, Z_FINISH) == Z_STREAM_END) {
        n = max - z.avail_out;
    }
    deflateEnd(&z);
    return n;
}

static int
zlib_decompress(const uint8_t *src, size_t len, uint8_t *dst, size_t n)
{
    z_stream z;
    int zret;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -15) != Z_OK) {
        return -ENOMEM;
    }
    z.next_in = (uint8_t *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)n;
    zret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* A full cluster is enough; the stream may end in padding. */
    if (z.avail_out != 0 || (zret != Z_STREAM_END && zret != Z_OK &&
                             zret != Z_BUF_ERROR)) {
        return -EIO;
    }
    return 0;
}

static size_t
zstd_compress(const uint8_t *in, size_t len, uint8_t *out, size_t max)
{
    size_t n = ZSTD_compress(out, max, in, len, ZSTD_CLEVEL_DEFAULT);

    return ZSTD_isError(n) ? 0 : n;
}

/* Streaming, so that the padding after the frame is never looked at. */
static int
zstd_decompress(const uint8_t *src, size_t len, uint8_t *dst, size_t n)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = { src, len, 0 };
    ZSTD_outBuffer out = { dst, n, 0 };
    int ret = 0;

    if (!d) {
        return -ENOMEM;
    }
    while (out.pos < out.size) {
        size_t left = ZSTD_decompressStream(d, &out, &in);

        if (ZSTD_isError(left) ||
            (out.pos < out.size && (left == 0 || in.pos == in.size))) {
            /* Broken, or a frame (or the input) ended short of a cluster. */
            ret = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(d);
    return ret;
}

size_t
qcow2_compress(unsigned type, const uint8_t *in, size_t len, uint8_t *out,
               size_t max)
{
    return type == QCOW2_COMPRESSION_ZSTD ? zstd_compress(in, len, out, max)
                                          : zlib_compress(in, len, out, max);
}

int
qcow2_decompress(unsigned type, const uint8_t *src, size_t len, uint8_t *dst,
                 size_t n)
{
    return type == QCOW2_COMPRESSION_ZSTD
           ? zstd_decompress(src, len, dst, n)
           : zlib_decompress(src, len, dst, n);
}
