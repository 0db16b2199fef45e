/* SPDX-License-Identifier: MIT */
/*
 * Hierarchical bitmap: one bit per granule at level 0, and summary levels
 * above it, so that dirty bitmaps of terabyte disks can be searched without
 * scanning them.  See util/hbitmap.h for the byte-based API.
 *
 * Design notes.
 *
 * Level 0 is an array of 64-bit words, bit i%64 of word i/64 for granule i.
 * Level k+1 has one bit per word of level k: the bit is set exactly when that
 * word is non-zero.  Levels are added until one has a single word (the top),
 * so a bitmap of 2^34 granules has levels of 2^28, 2^22, ... 4, 1 words and
 * the summaries cost 1/63 of level 0 on top of it.
 *
 * Invariants, checked by the unit test against a naive model:
 *   - bits past the last granule (and past the last word below, for summary
 *     levels) are zero, so counting, serialising and merging never need to
 *     mask them;
 *   - a summary bit is set if and only if the word it describes is non-zero;
 *   - hb->count is the number of set bits at level 0.
 *
 * Finding the next set bit climbs the levels until a word has a set bit at
 * or after the position, then descends following the lowest set bit: at
 * most two passes over the levels.  Finding the next clear bit cannot use
 * the summaries (they say "some bit set", not "all bits set"), so it scans
 * level 0 a word at a time, skipping all-ones words; callers bound the scan
 * with their range.
 *
 * Whole-bitmap operations (merge, copy, reset_all) visit only the non-zero
 * words, found through the level above, so a sparse bitmap of a huge disk
 * costs little even when level 0 is gigabytes of mostly untouched memory.
 */
#include <endian.h>
#include <stdlib.h>
#include <string.h>

#include "hbitmap.h"
#include "util.h"

/*
 * 2^64 bytes at 512-byte granules is 2^55 bits: 2^49 words at level 0 and
 * nine summary levels above it.  One spare level for safety.
 */
#define HB_MAX_LEVELS 12
#define HB_NONE UINT64_MAX

struct hbitmap {
    uint64_t size;                    /* bytes covered */
    unsigned gran_bits;
    uint64_t nbits;                   /* granules: level 0 bits in use */
    uint64_t count;                   /* set bits at level 0 */
    unsigned nlevels;
    uint64_t lbits[HB_MAX_LEVELS];    /* bits in use at each level */
    size_t nwords[HB_MAX_LEVELS];     /* words allocated at each level */
    uint64_t *words[HB_MAX_LEVELS];   /* [0] is level 0 */
};

struct hb_geometry {
    uint64_t nbits;
    unsigned nlevels;
    uint64_t lbits[HB_MAX_LEVELS];
    size_t nwords[HB_MAX_LEVELS];
};

static uint64_t
granules_for(uint64_t size, unsigned gran_bits)
{
    /* Written without "size + gran - 1", which overflows near 2^64. */
    return (size >> gran_bits) + ((size & ((1ULL << gran_bits) - 1)) != 0);
}

/* False when the bitmap cannot be addressed on this host (32-bit). */
static bool
hb_compute_geometry(uint64_t nbits, struct hb_geometry *geo)
{
    uint64_t bits = nbits;
    unsigned k = 0;

    geo->nbits = nbits;
    for (;;) {
        /* An empty bitmap still gets one word, so every level exists. */
        uint64_t w = bits ? ((bits - 1) >> 6) + 1 : 1;

        if (w > SIZE_MAX / sizeof(uint64_t)) {
            return false;
        }
        assert(k < HB_MAX_LEVELS);
        geo->lbits[k] = bits;
        geo->nwords[k] = w;
        k++;
        if (w == 1) {
            break;
        }
        bits = w;
    }
    geo->nlevels = k;
    return true;
}

static uint64_t
word_mask_from(uint64_t bit)
{
    return ~0ULL << (bit & 63);
}

static uint64_t
word_mask_upto(uint64_t bit)
{
    return ~0ULL >> (63 - (bit & 63));
}

/* Set bits [first, last] of one level; returns how many were clear. */
static uint64_t
bits_set(uint64_t *w, uint64_t first, uint64_t last)
{
    size_t i = first >> 6;
    size_t j = last >> 6;
    uint64_t lo = word_mask_from(first);
    uint64_t hi = word_mask_upto(last);
    uint64_t n = 0;

    if (i == j) {
        lo &= hi;
        n = __builtin_popcountll(lo & ~w[i]);
        w[i] |= lo;
        return n;
    }
    n += __builtin_popcountll(lo & ~w[i]);
    w[i] |= lo;
    for (size_t k = i + 1; k < j; k++) {
        n += 64 - __builtin_popcountll(w[k]);
        w[k] = ~0ULL;
    }
    n += __builtin_popcountll(hi & ~w[j]);
    w[j] |= hi;
    return n;
}

/* Clear bits [first, last] of one level; returns how many were set. */
static uint64_t
bits_clear(uint64_t *w, uint64_t first, uint64_t last)
{
    size_t i = first >> 6;
    size_t j = last >> 6;
    uint64_t lo = word_mask_from(first);
    uint64_t hi = word_mask_upto(last);
    uint64_t n = 0;

    if (i == j) {
        lo &= hi;
        n = __builtin_popcountll(lo & w[i]);
        w[i] &= ~lo;
        return n;
    }
    n += __builtin_popcountll(lo & w[i]);
    w[i] &= ~lo;
    for (size_t k = i + 1; k < j; k++) {
        n += __builtin_popcountll(w[k]);
        w[k] = 0;
    }
    n += __builtin_popcountll(hi & w[j]);
    w[j] &= ~hi;
    return n;
}

/*
 * First set bit at index >= pos on the given level, or HB_NONE.  Climbs to
 * the first level whose word holds a set bit at or after the position, then
 * descends along lowest set bits (each one names a non-zero word below).
 */
static uint64_t
hb_find_set(const struct hbitmap *hb, unsigned level, uint64_t pos)
{
    unsigned k = level;
    uint64_t cur;

    for (;;) {
        if (pos >= hb->lbits[k]) {
            return HB_NONE;
        }
        cur = hb->words[k][pos >> 6] & word_mask_from(pos);
        if (cur) {
            break;
        }
        if (k + 1 == hb->nlevels) {
            return HB_NONE;
        }
        /* Nothing left in this word: look for the next non-zero word. */
        pos = (pos >> 6) + 1;
        k++;
    }
    pos = (pos & ~63ULL) + __builtin_ctzll(cur);
    while (k > level) {
        k--;
        pos = (pos << 6) + __builtin_ctzll(hb->words[k][pos]);
    }
    return pos;
}

/*
 * Index of the next word of a level, at or after word i, that may be
 * non-zero (the level above says so), or HB_NONE.
 */
static uint64_t
hb_next_word(const struct hbitmap *hb, unsigned level, uint64_t i)
{
    if (level + 1 < hb->nlevels) {
        return hb_find_set(hb, level + 1, i);
    }
    return i < hb->nwords[level] ? i : HB_NONE;
}

/* First clear granule in [pos, limit), limit <= nbits, or HB_NONE. */
static uint64_t
hb_find_clear(const struct hbitmap *hb, uint64_t pos, uint64_t limit)
{
    const uint64_t *w = hb->words[0];
    uint64_t i;
    uint64_t cur;

    if (pos >= limit) {
        return HB_NONE;
    }
    i = pos >> 6;
    cur = ~w[i] & word_mask_from(pos);
    while (!cur) {
        i++;
        if (i << 6 >= limit) {
            return HB_NONE;
        }
        cur = ~w[i];
    }
    pos = (i << 6) + __builtin_ctzll(cur);
    return pos < limit ? pos : HB_NONE;
}

/* Set bits of level 0 in granules [first, last]. */
static uint64_t
hb_popcount_range(const struct hbitmap *hb, uint64_t first, uint64_t last)
{
    const uint64_t *w = hb->words[0];
    uint64_t i = first >> 6;
    uint64_t j = last >> 6;
    uint64_t n;

    if (i == j) {
        return __builtin_popcountll(w[i] & word_mask_from(first) &
                                    word_mask_upto(last));
    }
    n = __builtin_popcountll(w[i] & word_mask_from(first));
    /* Skip the zero words in between through the summary. */
    for (uint64_t k = hb_next_word(hb, 0, i + 1); k < j;
         k = hb_next_word(hb, 0, k + 1)) {
        n += __builtin_popcountll(w[k]);
    }
    n += __builtin_popcountll(w[j] & word_mask_upto(last));
    return n;
}

static void
hb_set_granules(struct hbitmap *hb, uint64_t first, uint64_t last)
{
    hb->count += bits_set(hb->words[0], first, last);
    for (unsigned k = 1; k < hb->nlevels; k++) {
        /* Every word of the level below in this range is now non-zero. */
        first >>= 6;
        last >>= 6;
        if (!bits_set(hb->words[k], first, last)) {
            /* Already summarised, so the levels above are too. */
            break;
        }
    }
}

static void
hb_clear_granules(struct hbitmap *hb, uint64_t first, uint64_t last)
{
    hb->count -= bits_clear(hb->words[0], first, last);
    for (unsigned k = 1; k < hb->nlevels; k++) {
        const uint64_t *below = hb->words[k - 1];
        uint64_t wf = first >> 6;
        uint64_t wl = last >> 6;

        /*
         * The words strictly inside the range are now zero; the two edge
         * words may still have bits outside the range.  What to clear at
         * this level is therefore one contiguous run.
         */
        if (below[wl]) {
            if (wl == 0) {
                break;
            }
            wl--;
        }
        if (below[wf]) {
            wf++;
        }
        if (wf > wl) {
            break;
        }
        bits_clear(hb->words[k], wf, wl);
        first = wf;
        last = wl;
    }
}

/* Make bit i of a summary level agree with word i of the level below. */
static void
hb_update_summary_bit(struct hbitmap *hb, unsigned level, uint64_t i)
{
    uint64_t bit = 1ULL << (i & 63);

    if (hb->words[level - 1][i]) {
        hb->words[level][i >> 6] |= bit;
    } else {
        hb->words[level][i >> 6] &= ~bit;
    }
}

/* Zero the bits of a level's last word that lie past its end. */
static void
hb_mask_tail(struct hbitmap *hb, unsigned level)
{
    uint64_t bits = hb->lbits[level];
    uint64_t *last = &hb->words[level][hb->nwords[level] - 1];

    if (bits == 0) {
        *last = 0;
    } else if (bits & 63) {
        *last &= word_mask_upto(bits - 1);
    }
}

static void
hb_apply_geometry(struct hbitmap *hb, const struct hb_geometry *geo)
{
    hb->nbits = geo->nbits;
    hb->nlevels = geo->nlevels;
    for (unsigned k = 0; k < HB_MAX_LEVELS; k++) {
        hb->lbits[k] = k < geo->nlevels ? geo->lbits[k] : 0;
        hb->nwords[k] = k < geo->nlevels ? geo->nwords[k] : 0;
    }
}

/*
 * Allocate an empty bitmap, or NULL.  The level arrays scale with the disk
 * (32 MiB at level 0 for 16 TiB at 64 KiB granules), so this uses plain
 * calloc and reports failure instead of aborting.  calloc's fresh pages
 * stay untouched until a bit is set in them.
 */
static struct hbitmap *
hb_alloc(uint64_t size, unsigned gran_bits)
{
    struct hb_geometry geo;
    struct hbitmap *hb;

    if (!hb_compute_geometry(granules_for(size, gran_bits), &geo)) {
        return NULL;
    }
    hb = calloc(1, sizeof(*hb));
    if (!hb) {
        return NULL;
    }
    hb->size = size;
    hb->gran_bits = gran_bits;
    hb_apply_geometry(hb, &geo);
    for (unsigned k = 0; k < hb->nlevels; k++) {
        hb->words[k] = calloc(hb->nwords[k], sizeof(uint64_t));
        if (!hb->words[k]) {
            hbitmap_free(hb);
            return NULL;
        }
    }
    return hb;
}

struct hbitmap *
hbitmap_new(uint64_t size, unsigned granularity_bits)
{
    assert(granularity_bits >= 9 && granularity_bits <= 31);
    /* Offsets are returned as int64_t. */
    assert(size <= INT64_MAX);
    return hb_alloc(size, granularity_bits);
}

void
hbitmap_free(struct hbitmap *hb)
{
    if (!hb) {
        return;
    }
    for (unsigned k = 0; k < HB_MAX_LEVELS; k++) {
        free(hb->words[k]);
    }
    free(hb);
}

/*
 * Resizing keeps every level's content and repairs only the edges: the
 * bits past the new end of each level are dropped, and the summary bit of
 * each level's last word is recomputed (shrinking may have emptied it).
 * Growing may add levels; their only possibly non-zero word is word 0,
 * because the old top level had a single word.  Allocation failure here
 * aborts: the API has no way to report it and the size is the disk's.
 */
void
hbitmap_truncate(struct hbitmap *hb, uint64_t size)
{
    uint64_t *grown[HB_MAX_LEVELS] = { NULL };
    struct hb_geometry geo;
    unsigned old_nlevels = hb->nlevels;
    uint64_t nbits;

    assert(size <= INT64_MAX);
    nbits = granules_for(size, hb->gran_bits);
    if (!hb_compute_geometry(nbits, &geo)) {
        abort();
    }
    if (nbits < hb->nbits) {
        hb->count -= hb_popcount_range(hb, nbits, hb->nbits - 1);
    }
    /*
     * Growing levels get fresh zeroed arrays with only the non-zero words
     * copied over (found through the old summaries, so all levels are
     * copied before any is replaced).  realloc plus memset would touch
     * every page of the new tail: gigabytes for a petabyte disk.
     */
    for (unsigned k = 0; k < MIN(geo.nlevels, old_nlevels); k++) {
        if (geo.nwords[k] > hb->nwords[k]) {
            grown[k] = xcalloc(geo.nwords[k], sizeof(uint64_t));
            for (uint64_t i = hb_next_word(hb, k, 0); i != HB_NONE;
                 i = hb_next_word(hb, k, i + 1)) {
                grown[k][i] = hb->words[k][i];
            }
        }
    }
    for (unsigned k = 0; k < HB_MAX_LEVELS; k++) {
        if (k >= geo.nlevels) {
            free(hb->words[k]);
            hb->words[k] = NULL;
        } else if (k >= old_nlevels) {
            hb->words[k] = xcalloc(geo.nwords[k], sizeof(uint64_t));
        } else if (grown[k]) {
            free(hb->words[k]);
            hb->words[k] = grown[k];
        } else if (geo.nwords[k] < hb->nwords[k]) {
            hb->words[k] = xrealloc(hb->words[k],
                                    geo.nwords[k] * sizeof(uint64_t));
        }
    }
    hb->size = size;
    hb_apply_geometry(hb, &geo);
    for (unsigned k = 0; k < hb->nlevels; k++) {
        hb_mask_tail(hb, k);
        if (k + 1 < hb->nlevels) {
            if (k + 1 >= old_nlevels) {
                hb_update_summary_bit(hb, k + 1, 0);
            }
            hb_update_summary_bit(hb, k + 1, hb->nwords[k] - 1);
        }
    }
}

uint64_t
hbitmap_size(const struct hbitmap *hb)
{
    return hb->size;
}

unsigned
hbitmap_granularity_bits(const struct hbitmap *hb)
{
    return hb->gran_bits;
}

uint64_t
hbitmap_granularity(const struct hbitmap *hb)
{
    return 1ULL << hb->gran_bits;
}

/* offset + bytes, saturated and clamped to the bitmap's size. */
static uint64_t
hb_range_end(const struct hbitmap *hb, uint64_t offset, uint64_t bytes)
{
    uint64_t end;

    if (__builtin_add_overflow(offset, bytes, &end) || end > hb->size) {
        end = hb->size;
    }
    return end;
}

void
hbitmap_set(struct hbitmap *hb, uint64_t offset, uint64_t bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);

    if (offset >= end) {
        return;
    }
    hb_set_granules(hb, offset >> hb->gran_bits, (end - 1) >> hb->gran_bits);
}

void
hbitmap_reset(struct hbitmap *hb, uint64_t offset, uint64_t bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    uint64_t first, end_granule;

    if (offset >= end) {
        return;
    }
    /* Only whole granules, except the partial one at the very end. */
    first = granules_for(offset, hb->gran_bits);
    end_granule = end == hb->size ? hb->nbits : end >> hb->gran_bits;
    if (first >= end_granule) {
        return;
    }
    hb_clear_granules(hb, first, end_granule - 1);
}

void
hbitmap_set_all(struct hbitmap *hb)
{
    if (hb->nbits) {
        hb_set_granules(hb, 0, hb->nbits - 1);
    }
}

void
hbitmap_reset_all(struct hbitmap *hb)
{
    /*
     * Bottom up, visiting only non-zero words: each level is cleared while
     * the level above still tells where its non-zero words are.
     */
    for (unsigned k = 0; k < hb->nlevels; k++) {
        uint64_t *w = hb->words[k];

        for (uint64_t i = hb_next_word(hb, k, 0); i != HB_NONE;
             i = hb_next_word(hb, k, i + 1)) {
            w[i] = 0;
        }
    }
    hb->count = 0;
}

bool
hbitmap_get(const struct hbitmap *hb, uint64_t offset)
{
    uint64_t i;

    if (offset >= hb->size) {
        return false;
    }
    i = offset >> hb->gran_bits;
    return (hb->words[0][i >> 6] >> (i & 63)) & 1;
}

uint64_t
hbitmap_count(const struct hbitmap *hb)
{
    /* QEMU reports whole granules, the last partial one included. */
    return hb->count << hb->gran_bits;
}

uint64_t
hbitmap_count_range(const struct hbitmap *hb, uint64_t offset,
                    uint64_t bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    uint64_t first, last;

    if (offset >= end) {
        return 0;
    }
    first = offset >> hb->gran_bits;
    last = (end - 1) >> hb->gran_bits;
    return hb_popcount_range(hb, first, last) << hb->gran_bits;
}

int64_t
hbitmap_next_dirty(const struct hbitmap *hb, uint64_t offset, uint64_t bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    uint64_t i;

    if (offset >= end) {
        return -1;
    }
    i = hb_find_set(hb, 0, offset >> hb->gran_bits);
    if (i == HB_NONE || i > (end - 1) >> hb->gran_bits) {
        return -1;
    }
    return MAX(i << hb->gran_bits, offset);
}

int64_t
hbitmap_next_zero(const struct hbitmap *hb, uint64_t offset, uint64_t bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    uint64_t i;

    if (offset >= end) {
        return -1;
    }
    i = hb_find_clear(hb, offset >> hb->gran_bits,
                      ((end - 1) >> hb->gran_bits) + 1);
    if (i == HB_NONE) {
        return -1;
    }
    return MAX(i << hb->gran_bits, offset);
}

/* max_bytes 0 means no limit other than the searched range. */
bool
hbitmap_next_dirty_area(const struct hbitmap *hb, uint64_t offset,
                        uint64_t bytes, uint64_t max_bytes,
                        uint64_t *area_offset, uint64_t *area_bytes)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    int64_t start, zero;

    if (offset >= end) {
        return false;
    }
    start = hbitmap_next_dirty(hb, offset, end - offset);
    if (start < 0) {
        return false;
    }
    if (max_bytes && max_bytes < end - (uint64_t)start) {
        end = start + max_bytes;
    }
    zero = hbitmap_next_zero(hb, start, end - start);
    if (zero >= 0) {
        end = zero;
    }
    *area_offset = start;
    *area_bytes = end - start;
    return true;
}

/*
 * Runs never cross the end of the bitmap; past the end everything reads as
 * clean, so a query there answers "clean for the whole range".
 */
bool
hbitmap_status(const struct hbitmap *hb, uint64_t offset, uint64_t bytes,
               uint64_t *pnum)
{
    uint64_t end = hb_range_end(hb, offset, bytes);
    int64_t next;
    bool dirty;

    if (offset >= hb->size) {
        *pnum = bytes;
        return false;
    }
    dirty = hbitmap_get(hb, offset);
    if (offset == end) {
        *pnum = 0;
        return dirty;
    }
    if (dirty) {
        next = hbitmap_next_zero(hb, offset, end - offset);
    } else {
        next = hbitmap_next_dirty(hb, offset, end - offset);
    }
    *pnum = (next < 0 ? end : (uint64_t)next) - offset;
    return dirty;
}

/*
 * The summary of an OR is the OR of the summaries (a word of the result is
 * non-zero when either input's word is), so every level is merged the same
 * way, visiting only the source's non-zero words.
 */
bool
hbitmap_merge(struct hbitmap *dst, const struct hbitmap *src)
{
    if (dst->size != src->size || dst->gran_bits != src->gran_bits) {
        return false;
    }
    if (dst == src) {
        return true;
    }
    for (unsigned k = 0; k < src->nlevels; k++) {
        uint64_t *d = dst->words[k];
        const uint64_t *s = src->words[k];

        for (uint64_t i = hb_next_word(src, k, 0); i != HB_NONE;
             i = hb_next_word(src, k, i + 1)) {
            if (k == 0) {
                dst->count += __builtin_popcountll(s[i] & ~d[i]);
            }
            d[i] |= s[i];
        }
    }
    return true;
}

/* Returns NULL when memory runs out (the size is the disk's). */
struct hbitmap *
hbitmap_copy(const struct hbitmap *hb)
{
    struct hbitmap *copy = hb_alloc(hb->size, hb->gran_bits);

    if (!copy) {
        return NULL;
    }
    for (unsigned k = 0; k < hb->nlevels; k++) {
        for (uint64_t i = hb_next_word(hb, k, 0); i != HB_NONE;
             i = hb_next_word(hb, k, i + 1)) {
            copy->words[k][i] = hb->words[k][i];
        }
    }
    copy->count = hb->count;
    return copy;
}

size_t
hbitmap_serialized_size(const struct hbitmap *hb)
{
    return ((hb->nbits + 63) >> 6) * sizeof(uint64_t);
}

void
hbitmap_serialize(const struct hbitmap *hb, void *buf)
{
    size_t n = (hb->nbits + 63) >> 6;
    unsigned char *p = buf;

    for (size_t i = 0; i < n; i++) {
        uint64_t le = htole64(hb->words[0][i]);

        memcpy(p + i * sizeof(le), &le, sizeof(le));
    }
}

void
hbitmap_deserialize(struct hbitmap *hb, const void *buf)
{
    size_t n = (hb->nbits + 63) >> 6;
    const unsigned char *p = buf;

    hb->count = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t le;

        memcpy(&le, p + i * sizeof(le), sizeof(le));
        hb->words[0][i] = le64toh(le);
    }
    /* Padding bits past the last granule must stay clear. */
    hb_mask_tail(hb, 0);
    for (size_t i = 0; i < n; i++) {
        hb->count += __builtin_popcountll(hb->words[0][i]);
    }
    for (unsigned k = 1; k < hb->nlevels; k++) {
        memset(hb->words[k], 0, hb->nwords[k] * sizeof(uint64_t));
        for (uint64_t i = 0; i < hb->nwords[k - 1]; i++) {
            if (hb->words[k - 1][i]) {
                hb->words[k][i >> 6] |= 1ULL << (i & 63);
            }
        }
    }
}
