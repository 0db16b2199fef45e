/* SPDX-License-Identifier: MIT */
/*
 * A hierarchical bitmap over a byte range: one bit per granule of
 * 2^granularity_bits bytes, with summary levels above it (one bit per
 * 64-bit word of the level below) so that finding the next set or clear
 * bit is O(levels) even on terabyte disks.
 *
 * Offsets and lengths are in bytes.  set() marks every granule the range
 * touches.  reset() clears every granule the range covers completely, and
 * also the last, partial granule when the range reaches the end of the
 * bitmap (clearing a partly covered granule would lose dirtiness).
 *
 * Not thread-safe: the owner locks (dirty bitmaps use node->bitmap_lock).
 */
#ifndef LOCKSTEP_HBITMAP_H
#define LOCKSTEP_HBITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hbitmap;

/* size: bytes covered; granularity_bits: 9 (512 B) to 31 (2 GiB). */
struct hbitmap *hbitmap_new(uint64_t size, unsigned granularity_bits);
void hbitmap_free(struct hbitmap *hb);
/* Change the covered size; new granules are clear. */
void hbitmap_truncate(struct hbitmap *hb, uint64_t size);

uint64_t hbitmap_size(const struct hbitmap *hb);
unsigned hbitmap_granularity_bits(const struct hbitmap *hb);
uint64_t hbitmap_granularity(const struct hbitmap *hb);

void hbitmap_set(struct hbitmap *hb, uint64_t offset, uint64_t bytes);
void hbitmap_reset(struct hbitmap *hb, uint64_t offset, uint64_t bytes);
void hbitmap_set_all(struct hbitmap *hb);
void hbitmap_reset_all(struct hbitmap *hb);
bool hbitmap_get(const struct hbitmap *hb, uint64_t offset);

/* Dirty bytes: number of set granules times the granularity, the last
 * partial granule counted whole (as QEMU reports "count"). */
uint64_t hbitmap_count(const struct hbitmap *hb);
/* Set granules in [offset, offset+bytes), in bytes as above. */
uint64_t hbitmap_count_range(const struct hbitmap *hb, uint64_t offset,
                             uint64_t bytes);

/* First set (resp. clear) byte offset in [offset, offset+bytes), aligned to
 * the granule (but never below offset), or -1 when there is none. */
int64_t hbitmap_next_dirty(const struct hbitmap *hb, uint64_t offset,
                           uint64_t bytes);
int64_t hbitmap_next_zero(const struct hbitmap *hb, uint64_t offset,
                          uint64_t bytes);
/*
 * Find the first dirty area in [offset, offset+bytes): on success returns
 * true with *area_offset and *area_bytes (at most max_bytes, clamped to the
 * searched range).
 */
bool hbitmap_next_dirty_area(const struct hbitmap *hb, uint64_t offset,
                             uint64_t bytes, uint64_t max_bytes,
                             uint64_t *area_offset, uint64_t *area_bytes);
/*
 * Is the byte at offset dirty?  Sets *pnum to the length of the run from
 * offset (at most bytes) that has the same state.
 */
bool hbitmap_status(const struct hbitmap *hb, uint64_t offset,
                    uint64_t bytes, uint64_t *pnum);

/* dst |= src.  Both must have the same size and granularity: false if not. */
bool hbitmap_merge(struct hbitmap *dst, const struct hbitmap *src);
/* A copy of hb. */
struct hbitmap *hbitmap_copy(const struct hbitmap *hb);

/*
 * Serialisation: one bit per granule, bit i of byte i/8 for granule i
 * (little-endian 64-bit words, as QEMU's level 0 array on x86-64), padded
 * to a multiple of 8 bytes.  This is also what x-debug-block-dirty-bitmap-
 * sha256 hashes, so the digest matches QEMU's.
 */
size_t hbitmap_serialized_size(const struct hbitmap *hb);
void hbitmap_serialize(const struct hbitmap *hb, void *buf);
/* Replace the content from buf (of hbitmap_serialized_size bytes). */
void hbitmap_deserialize(struct hbitmap *hb, const void *buf);

#endif
