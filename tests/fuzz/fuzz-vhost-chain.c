/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the vhost-user descriptor-chain walker
 * (vu_walk_chain, export/vhost-user.c): the input is guest memory; its
 * first bytes pick the queue size, the head and whether indirect tables
 * are allowed, the descriptor table sits at the start of a region.  Every
 * piece the walker returns must lie inside guest memory (checked here,
 * and every byte of it is touched so that ASan sees any stray pointer).
 * A second region right after the first (guest addresses contiguous,
 * host addresses not) makes buffers that straddle regions.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "export/vhost-user.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define GPA0 0x10000

static bool
inside(const struct vu_mem *mem, const struct iovec *v)
{
    for (unsigned i = 0; i < mem->nregions; i++) {
        const struct vu_region *r = &mem->regions[i];
        const uint8_t *p = v->iov_base;

        if (p >= r->host && p + v->iov_len <= r->host + r->size) {
            return true;
        }
    }
    return false;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct vu_chain chain;
    struct vu_mem mem = {0};
    uint8_t *a, *b;
    size_t half;
    uint16_t num, head;
    bool indirect;
    volatile uint8_t sink = 0;

    if (size < 4) {
        return 0;
    }
    num = (uint16_t)(1u << (data[0] % 11));      /* 1..1024 */
    head = (uint16_t)(data[1] | data[2] << 8);
    indirect = data[3] & 1;
    data += 4;
    size -= 4;
    half = size / 2;
    /* Exact-size copies: ASan flags a read one byte past either. */
    a = malloc(half ? half : 1);
    b = malloc(size - half ? size - half : 1);
    memcpy(a, data, half);
    memcpy(b, data + half, size - half);
    mem.nregions = 0;
    if (half) {
        mem.regions[mem.nregions++] = (struct vu_region){
            .gpa = GPA0, .size = half, .uva = GPA0, .host = a };
    }
    if (size - half) {
        mem.regions[mem.nregions++] = (struct vu_region){
            .gpa = GPA0 + half, .size = size - half, .uva = GPA0 + half,
            .host = b };
    }
    if (half >= (size_t)num * sizeof(struct vring_desc) &&
        vu_walk_chain(&mem, (const struct vring_desc *)a, num, head,
                      indirect, &chain) == 0) {
        unsigned n = chain.nout + chain.nin;

        if (n > VU_MAX_IOV) {
            abort();
        }
        for (unsigned i = 0; i < n; i++) {
            const uint8_t *p = chain.iov[i].iov_base;

            if (!inside(&mem, &chain.iov[i]) || chain.iov[i].iov_len == 0) {
                abort();
            }
            for (size_t k = 0; k < chain.iov[i].iov_len; k++) {
                sink ^= p[k];
            }
        }
    }
    (void)sink;
    free(a);
    free(b);
    return 0;
}
