/* SPDX-License-Identifier: MIT */
/*
 * Metadata contexts (NBD spec, "Metadata querying"; QEMU's
 * docs/interop/nbd.rst for the qemu namespace): base:allocation on every
 * export, qemu:allocation-depth when the export enables it, and
 * qemu:dirty-bitmap:NAME per exported bitmap.  Context ids are fixed per
 * export (base:allocation 0, allocation-depth 1, bitmap i is 2 + i), so a
 * session needs no table.  Queries for unknown namespaces match nothing.
 */
#include <errno.h>
#include <string.h>

#include "lockstep/block.h"
#include "lockstep/dirty-bitmap.h"
#include "nbd/nbd-internal.h"
#include "nbd/proto.h"
#include "util.h"

static const char base_alloc[] = "base:allocation";
static const char alloc_depth[] = "qemu:allocation-depth";

bool
nbdsrv_meta_query(struct nbdexp *exp, const char *query, bool list,
                  void (*add)(uint32_t id, const char *name, void *opaque),
                  void *opaque)
{
    bool all = !*query;   /* LIST with no queries: everything */

    if (all || !strcmp(query, base_alloc) ||
        (list && !strcmp(query, "base:"))) {
        add(NBDSRV_CTX_BASE_ALLOCATION, base_alloc, opaque);
    }
    if (strncmp(query, "qemu:", 5) != 0 && !all) {
        return true;
    }
    if (exp->alloc_depth &&
        (all || !strcmp(query, alloc_depth) ||
         (list && !strcmp(query, "qemu:")))) {
        add(NBDSRV_CTX_ALLOCATION_DEPTH, alloc_depth, opaque);
    }
    for (size_t i = 0; i < exp->nbitmaps; i++) {
        const char *cname = exp->bitmaps[i].ctx_name;

        if (all || !strcmp(query, cname) ||
            (list && (!strcmp(query, "qemu:") ||
                      !strcmp(query, "qemu:dirty-bitmap:")))) {
            add(NBDSRV_CTX_BITMAP0 + (uint32_t)i, cname, opaque);
        }
    }
    return true;
}

const char *
nbdsrv_meta_name(struct nbdexp *exp, uint32_t id)
{
    if (id == NBDSRV_CTX_BASE_ALLOCATION) {
        return base_alloc;
    }
    if (id == NBDSRV_CTX_ALLOCATION_DEPTH) {
        return alloc_depth;
    }
    if (id - NBDSRV_CTX_BITMAP0 < exp->nbitmaps) {
        return exp->bitmaps[id - NBDSRV_CTX_BITMAP0].ctx_name;
    }
    return NULL;
}

/* Largest extent length we report: fits u32 and keeps 4 KiB alignment. */
#define MAX_EXTENT_LEN 0xfffff000U

/* Append (len, flags), merging with the previous extent when equal. */
static bool
add_extent(uint32_t *ext, size_t *n, size_t max, uint64_t len,
           uint32_t flags)
{
    if (*n > 0 && ext[2 * (*n - 1) + 1] == flags &&
        (uint64_t)ext[2 * (*n - 1)] + len <= MAX_EXTENT_LEN) {
        ext[2 * (*n - 1)] += (uint32_t)len;
        return true;
    }
    if (*n == max) {
        return false;
    }
    ext[2 * *n] = (uint32_t)len;
    ext[2 * *n + 1] = flags;
    (*n)++;
    return true;
}

int
nbdsrv_meta_extents(struct nbdexp *exp, uint32_t id, uint64_t offset,
                    uint64_t bytes, uint32_t *ext, size_t max_extents)
{
    size_t n = 0;

    if (bytes > MAX_EXTENT_LEN) {
        bytes = MAX_EXTENT_LEN;
    }
    while (bytes > 0) {
        uint64_t pnum = 0;
        uint32_t flags;

        if (id == NBDSRV_CTX_BASE_ALLOCATION ||
            id == NBDSRV_CTX_ALLOCATION_DEPTH) {
            struct block_status_info info;
            int ret;

            memset(&info, 0, sizeof(info));
            ret = block_handle_status(exp->h, offset, bytes, &pnum, &info);
            if (ret < 0) {
                if (n > 0) {
                    break;   /* report what we have; the client re-asks */
                }
                return ret;
            }
            if (pnum == 0 || pnum > bytes) {
                pnum = bytes;   /* defensive: never loop forever */
            }
            if (id == NBDSRV_CTX_BASE_ALLOCATION) {
                flags = (ret & BLOCK_STATUS_DATA ? 0 : NBD_STATE_HOLE) |
                        (ret & BLOCK_STATUS_ZERO ? NBD_STATE_ZERO : 0);
            } else {
                flags = info.depth < 0 ? 0 : (uint32_t)info.depth;
            }
        } else if (id - NBDSRV_CTX_BITMAP0 < exp->nbitmaps) {
            struct block_dirty_bitmap *bm =
                exp->bitmaps[id - NBDSRV_CTX_BITMAP0].bm;
            uint64_t bmsize = block_dirty_bitmap_size(bm);

            if (offset >= bmsize) {
                /* The bitmap is shorter than the export: clean. */
                pnum = bytes;
                flags = 0;
            } else {
                flags = block_dirty_bitmap_status(bm, offset,
                                                  MIN(bytes, bmsize - offset),
                                                  &pnum)
                        ? NBD_STATE_DIRTY : 0;
                if (pnum == 0 || pnum > bytes) {
                    pnum = MIN(bytes, bmsize - offset);
                }
            }
        } else {
            return -EINVAL;
        }
        if (!add_extent(ext, &n, max_extents, pnum, flags)) {
            break;
        }
        offset += pnum;
        bytes -= pnum;
    }
    return (int)n;
}
