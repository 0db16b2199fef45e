/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for util/hbitmap.c: the byte-based edges (partial granules,
 * the last partial granule, ranges crossing words and summary levels),
 * searches over sparse bitmaps of 16 TiB disks, counting, merge, copy,
 * the serialised byte layout, truncation, and long runs of random
 * operations checked against a naive one-byte-per-granule model.
 */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hbitmap.h"
#include "util.h"

/* ---- A naive model: one byte per granule ----------------------------- */

struct model {
    uint64_t size;
    unsigned gran_bits;
    uint64_t nbits;
    uint8_t *bits;
};

static uint64_t
model_granules(uint64_t size, unsigned gran_bits)
{
    return div_round_up(size, 1ULL << gran_bits);
}

static void
model_init(struct model *m, uint64_t size, unsigned gran_bits)
{
    m->size = size;
    m->gran_bits = gran_bits;
    m->nbits = model_granules(size, gran_bits);
    m->bits = xcalloc(m->nbits + 1, 1);
}

static void
model_free(struct model *m)
{
    free(m->bits);
}

static uint64_t
model_end(const struct model *m, uint64_t offset, uint64_t bytes)
{
    uint64_t end;

    if (__builtin_add_overflow(offset, bytes, &end) || end > m->size) {
        end = m->size;
    }
    return end;
}

static void
model_set(struct model *m, uint64_t offset, uint64_t bytes)
{
    uint64_t end = model_end(m, offset, bytes);

    for (uint64_t o = offset; o < end; o++) {
        /* Byte by byte would be slow: jump granule by granule. */
        m->bits[o >> m->gran_bits] = 1;
        o |= (1ULL << m->gran_bits) - 1;
    }
}

static void
model_reset(struct model *m, uint64_t offset, uint64_t bytes)
{
    uint64_t gran = 1ULL << m->gran_bits;
    uint64_t end = model_end(m, offset, bytes);

    if (offset >= end) {
        return;
    }
    for (uint64_t i = offset >> m->gran_bits;
         i <= (end - 1) >> m->gran_bits; i++) {
        uint64_t gs = i * gran;
        uint64_t ge = MIN(gs + gran, m->size);

        /* Fully covered, or the tail granule when the range reaches it. */
        if (gs >= offset && (ge <= end || end == m->size)) {
            m->bits[i] = 0;
        }
    }
}

static bool
model_get(const struct model *m, uint64_t offset)
{
    return offset < m->size && m->bits[offset >> m->gran_bits];
}

static uint64_t
model_granule_bytes(const struct model *m, uint64_t i)
{
    /* QEMU counts whole granules, even the partial last one. */
    (void)i;
    return 1ULL << m->gran_bits;
}

static uint64_t
model_count_range(const struct model *m, uint64_t offset, uint64_t bytes)
{
    uint64_t end = model_end(m, offset, bytes);
    uint64_t n = 0;

    if (offset >= end) {
        return 0;
    }
    for (uint64_t i = offset >> m->gran_bits;
         i <= (end - 1) >> m->gran_bits; i++) {
        if (m->bits[i]) {
            n += model_granule_bytes(m, i);
        }
    }
    return n;
}

static int64_t
model_next(const struct model *m, uint64_t offset, uint64_t bytes,
           bool dirty)
{
    uint64_t end = model_end(m, offset, bytes);

    if (offset >= end) {
        return -1;
    }
    for (uint64_t i = offset >> m->gran_bits;
         i <= (end - 1) >> m->gran_bits; i++) {
        if (m->bits[i] == dirty) {
            return MAX(i << m->gran_bits, offset);
        }
    }
    return -1;
}

static void
model_truncate(struct model *m, uint64_t size)
{
    uint64_t nbits = model_granules(size, m->gran_bits);

    m->bits = xrealloc(m->bits, nbits + 1);
    if (nbits > m->nbits) {
        memset(m->bits + m->nbits, 0, nbits - m->nbits);
    }
    m->nbits = nbits;
    m->size = size;
}

/* ---- Helpers ------------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t
rng(void)
{
    /* xorshift64*: small, deterministic for a fixed seed. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t
rng_below(uint64_t n)
{
    return n ? rng() % n : 0;
}

/* A granule index, often next to a word or summary-level boundary. */
static uint64_t
rng_granule(uint64_t nbits)
{
    static const uint64_t edges[] = { 64, 4096, 262144 };
    uint64_t e, i;

    if (nbits == 0) {
        return 0;
    }
    switch (rng_below(4)) {
    case 0:
        e = edges[rng_below(ARRAY_SIZE(edges))];
        i = rng_below(nbits / e + 1) * e + rng_below(3) - 1;
        return i < nbits ? i : nbits - 1;
    case 1:
        return nbits - 1 - rng_below(MIN(nbits, 130));
    default:
        return rng_below(nbits);
    }
}

static uint64_t
rng_offset(const struct model *m)
{
    uint64_t gran = 1ULL << m->gran_bits;
    uint64_t off = rng_granule(m->nbits) * gran;

    switch (rng_below(3)) {
    case 0:
        return off;
    case 1:
        return off + rng_below(gran);
    default:
        return off + gran - 1;
    }
}

static uint64_t
rng_bytes(const struct model *m)
{
    uint64_t gran = 1ULL << m->gran_bits;

    switch (rng_below(6)) {
    case 0:
        return rng_below(4);
    case 1:
        return UINT64_MAX - rng_below(2);     /* overflowing end */
    case 2:
        return rng_below(m->size + gran);
    default:
        return rng_below(200) * gran + rng_below(3) * (gran / 2);
    }
}

/* Every granule, and walks of the dirty and clean areas, agree. */
static void
check_equal(const struct hbitmap *hb, const struct model *m)
{
    uint64_t gran = 1ULL << m->gran_bits;
    uint64_t a, b;

    for (uint64_t i = 0; i < m->nbits; i++) {
        assert_int_equal(hbitmap_get(hb, i << m->gran_bits), m->bits[i]);
    }
    assert_int_equal(hbitmap_count(hb), model_count_range(m, 0, m->size));
    assert_int_equal(hbitmap_size(hb), m->size);
    for (uint64_t o = 0; hbitmap_next_dirty_area(hb, o, UINT64_MAX, 0,
                                                 &a, &b); o = a + b) {
        assert_int_equal(a, model_next(m, o, UINT64_MAX, true));
        assert_int_equal(a + b, a + b < m->size
                         ? (uint64_t)model_next(m, a, UINT64_MAX, false)
                         : m->size);
        assert_true(b >= MIN(gran, m->size - a));
    }
    /* Every start in the first words, then about 200 samples. */
    for (uint64_t i = 0; i < m->nbits;
         i += i < 130 ? 1 : 1 + rng_below(m->nbits / 100 + 1)) {
        assert_int_equal(hbitmap_next_zero(hb, i * gran, UINT64_MAX),
                         model_next(m, i * gran, UINT64_MAX, false));
    }
}

/* ---- Edge cases --------------------------------------------------------- */

static void
test_partial_last_granule(void **state)
{
    /* Two granules of 512: the second covers only bytes 512..999. */
    struct hbitmap *hb = hbitmap_new(1000, 9);

    (void)state;
    assert_non_null(hb);
    assert_int_equal(hbitmap_granularity(hb), 512);
    assert_int_equal(hbitmap_granularity_bits(hb), 9);
    assert_int_equal(hbitmap_count(hb), 0);

    hbitmap_set(hb, 999, 1);
    assert_true(hbitmap_get(hb, 512));
    assert_true(hbitmap_get(hb, 999));
    assert_false(hbitmap_get(hb, 511));
    assert_false(hbitmap_get(hb, 1000));
    assert_int_equal(hbitmap_count(hb), 512);

    /* Partly covered granule, range does not reach the end: kept. */
    hbitmap_reset(hb, 512, 100);
    assert_true(hbitmap_get(hb, 512));
    hbitmap_reset(hb, 513, 487);
    assert_true(hbitmap_get(hb, 512));
    /* Reaches the end (and beyond): the partial tail granule goes. */
    hbitmap_reset(hb, 512, 488);
    assert_false(hbitmap_get(hb, 512));
    hbitmap_set(hb, 600, 1);
    hbitmap_reset(hb, 512, UINT64_MAX);
    assert_int_equal(hbitmap_count(hb), 0);

    /* A range starting mid-granule does not clear that granule. */
    hbitmap_set(hb, 0, 1);
    hbitmap_reset(hb, 1, 511);
    assert_true(hbitmap_get(hb, 0));
    hbitmap_reset(hb, 0, 511);
    assert_true(hbitmap_get(hb, 0));
    hbitmap_reset(hb, 0, 512);
    assert_false(hbitmap_get(hb, 0));

    /* Set past the end is ignored; overflowing ranges are clamped. */
    hbitmap_set(hb, 1000, 10);
    hbitmap_set(hb, UINT64_MAX, UINT64_MAX);
    assert_int_equal(hbitmap_count(hb), 0);
    hbitmap_set(hb, 1, UINT64_MAX);
    assert_int_equal(hbitmap_count(hb), 1024);
    hbitmap_reset(hb, 0, 0);
    assert_int_equal(hbitmap_count(hb), 1024);
    hbitmap_set(hb, 0, 0);

    assert_int_equal(hbitmap_count_range(hb, 0, 512), 512);
    assert_int_equal(hbitmap_count_range(hb, 511, 2), 1024);
    assert_int_equal(hbitmap_count_range(hb, 700, 10), 512);
    assert_int_equal(hbitmap_count_range(hb, 1000, 10), 0);

    hbitmap_reset_all(hb);
    assert_int_equal(hbitmap_count(hb), 0);
    hbitmap_set_all(hb);
    assert_int_equal(hbitmap_count(hb), 1024);
    hbitmap_free(hb);
}

static void
test_empty_bitmap(void **state)
{
    struct hbitmap *hb = hbitmap_new(0, 16);
    uint64_t a, b, pnum;

    (void)state;
    assert_non_null(hb);
    hbitmap_set_all(hb);
    hbitmap_set(hb, 0, 100);
    assert_int_equal(hbitmap_count(hb), 0);
    assert_false(hbitmap_get(hb, 0));
    assert_int_equal(hbitmap_next_dirty(hb, 0, 100), -1);
    assert_int_equal(hbitmap_next_zero(hb, 0, 100), -1);
    assert_false(hbitmap_next_dirty_area(hb, 0, 100, 0, &a, &b));
    assert_false(hbitmap_status(hb, 0, 100, &pnum));
    assert_int_equal(pnum, 100);
    assert_int_equal(hbitmap_serialized_size(hb), 0);
    hbitmap_truncate(hb, 65536 * 3);
    hbitmap_set(hb, 65536, 1);
    assert_int_equal(hbitmap_count(hb), 65536);
    hbitmap_truncate(hb, 0);
    assert_int_equal(hbitmap_count(hb), 0);
    hbitmap_free(hb);
    hbitmap_free(NULL);
}

/* 64^3 + 5 granules of 512 B: four levels, ranges across all of them. */
static void
test_crossing_words_and_levels(void **state)
{
    const uint64_t nbits = 64 * 64 * 64 + 5;
    const uint64_t g = 512;
    struct hbitmap *hb = hbitmap_new(nbits * g, 9);

    (void)state;
    assert_non_null(hb);

    /* Across one word boundary. */
    hbitmap_set(hb, 63 * g, 2 * g);
    assert_int_equal(hbitmap_count(hb), 2 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), 63 * g);
    assert_int_equal(hbitmap_next_zero(hb, 63 * g, UINT64_MAX), 65 * g);

    /* Across a level-1 word (4096 granules) and a level-2 word (262144). */
    hbitmap_set(hb, 4095 * g, 2 * g);
    hbitmap_set(hb, 262143 * g, 2 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 65 * g, UINT64_MAX), 4095 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 4097 * g, UINT64_MAX),
                     262143 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 262145 * g, UINT64_MAX), -1);
    assert_int_equal(hbitmap_count(hb), 6 * g);

    /* Clearing one granule of a pair leaves the summaries set. */
    hbitmap_reset(hb, 4095 * g, g);
    assert_int_equal(hbitmap_next_dirty(hb, 65 * g, UINT64_MAX), 4096 * g);
    hbitmap_reset(hb, 4096 * g, g);
    assert_int_equal(hbitmap_next_dirty(hb, 65 * g, UINT64_MAX),
                     262143 * g);

    /* A large range, then a reset of all but its two ends. */
    hbitmap_reset_all(hb);
    hbitmap_set(hb, 100 * g, 200000 * g);
    assert_int_equal(hbitmap_count(hb), 200000 * g);
    hbitmap_reset(hb, 101 * g, 199998 * g);
    assert_int_equal(hbitmap_count(hb), 2 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 101 * g, UINT64_MAX),
                     200099 * g);
    assert_int_equal(hbitmap_next_zero(hb, 100 * g, UINT64_MAX), 101 * g);

    /* The whole bitmap, then its very last granule. */
    hbitmap_set_all(hb);
    assert_int_equal(hbitmap_count(hb), nbits * g);
    assert_int_equal(hbitmap_next_zero(hb, 0, UINT64_MAX), -1);
    hbitmap_reset(hb, (nbits - 1) * g, g);
    assert_int_equal(hbitmap_next_zero(hb, 0, UINT64_MAX), (nbits - 1) * g);
    hbitmap_reset(hb, 0, nbits * g);
    assert_int_equal(hbitmap_count(hb), 0);
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);
    hbitmap_free(hb);
}

/* 16 TiB at 64 KiB: 2^28 granules, 32 MiB at level 0, mostly untouched. */
static void
test_sparse_huge(void **state)
{
    const uint64_t size = 16 * TiB;
    const uint64_t g = 64 * KiB;
    struct hbitmap *hb = hbitmap_new(size, 16);
    uint64_t a, b, pnum;

    (void)state;
    assert_non_null(hb);
    assert_int_equal(hbitmap_next_dirty(hb, 0, size), -1);
    assert_int_equal(hbitmap_next_zero(hb, 0, size), 0);

    hbitmap_set(hb, 5 * TiB + 1, 1);
    hbitmap_set(hb, 9 * TiB, 3 * g);
    hbitmap_set(hb, size - 1, 1);
    assert_int_equal(hbitmap_count(hb), 5 * g);

    assert_int_equal(hbitmap_next_dirty(hb, 0, size), 5 * TiB);
    assert_int_equal(hbitmap_next_dirty(hb, 5 * TiB + 7, size),
                     5 * TiB + 7);
    assert_int_equal(hbitmap_next_dirty(hb, 5 * TiB + g, size), 9 * TiB);
    assert_int_equal(hbitmap_next_dirty(hb, 5 * TiB + g, 4 * TiB - g), -1);
    assert_int_equal(hbitmap_next_dirty(hb, 9 * TiB + 3 * g, UINT64_MAX),
                     size - g);
    assert_int_equal(hbitmap_next_zero(hb, 9 * TiB, size), 9 * TiB + 3 * g);
    assert_int_equal(hbitmap_next_zero(hb, size - g, g), -1);

    assert_true(hbitmap_next_dirty_area(hb, 6 * TiB, size, 0, &a, &b));
    assert_int_equal(a, 9 * TiB);
    assert_int_equal(b, 3 * g);
    assert_true(hbitmap_next_dirty_area(hb, 9 * TiB + 100, size, g, &a, &b));
    assert_int_equal(a, 9 * TiB + 100);
    assert_int_equal(b, g);
    assert_true(hbitmap_next_dirty_area(hb, 9 * TiB, 2 * g + 5, 0, &a, &b));
    assert_int_equal(a, 9 * TiB);
    assert_int_equal(b, 2 * g + 5);
    assert_false(hbitmap_next_dirty_area(hb, 9 * TiB + 3 * g, TiB, 0,
                                         &a, &b));

    assert_false(hbitmap_status(hb, 0, size, &pnum));
    assert_int_equal(pnum, 5 * TiB);
    assert_true(hbitmap_status(hb, 9 * TiB + 1, size, &pnum));
    assert_int_equal(pnum, 3 * g - 1);
    assert_false(hbitmap_status(hb, 9 * TiB + 3 * g, size, &pnum));
    assert_int_equal(pnum, size - g - (9 * TiB + 3 * g));
    assert_true(hbitmap_status(hb, size - g, UINT64_MAX, &pnum));
    assert_int_equal(pnum, g);

    assert_int_equal(hbitmap_count_range(hb, 4 * TiB, 6 * TiB), 4 * g);
    assert_int_equal(hbitmap_count_range(hb, 9 * TiB + g, 2), g);

    /* All set: next_zero has to scan, and still finds the one hole. */
    hbitmap_set_all(hb);
    assert_int_equal(hbitmap_count(hb), size);
    assert_int_equal(hbitmap_next_zero(hb, 0, size), -1);
    hbitmap_reset(hb, size - 2 * g, g);
    assert_int_equal(hbitmap_next_zero(hb, 0, size), size - 2 * g);
    assert_int_equal(hbitmap_count(hb), size - g);
    hbitmap_reset_all(hb);
    assert_int_equal(hbitmap_count(hb), 0);
    assert_int_equal(hbitmap_next_dirty(hb, 0, size), -1);
    hbitmap_free(hb);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif

/*
 * Sanitizer and valgrind allocators fill calloc'd memory themselves, which
 * turns the untouched gigabytes of the next test into real ones.
 */
static bool
allocator_touches_calloc(void)
{
#ifdef UNDER_SANITIZER
    return true;
#else
    const char *preload = getenv("LD_PRELOAD");

    return preload && strstr(preload, "vgpreload");
#endif
}

static void
restore_perturb(void)
{
#ifdef __GLIBC__
    const char *perturb = getenv("MALLOC_PERTURB_");

    mallopt(M_PERTURB, perturb ? (int)strtol(perturb, NULL, 0) : 0);
#endif
}

/*
 * 1 PiB at 64 KiB: level 0 is 2 GiB of address space, but everything here
 * visits only non-zero words, so almost none of it is ever touched.
 */
static void
test_petabyte(void **state)
{
    const uint64_t size = 1024 * TiB;
    const uint64_t g = 64 * KiB;
    struct hbitmap *hb;
    struct hbitmap *copy;
    uint64_t a, b;

    (void)state;
    if (allocator_touches_calloc()) {
        skip();
    }
#ifdef __GLIBC__
    /*
     * meson test sets MALLOC_PERTURB_, and glibc's calloc then clears the
     * whole block by hand.  Turn that off for the two big allocations.
     */
    mallopt(M_PERTURB, 0);
#endif
    hb = hbitmap_new(size, 16);
    if (!hb) {
        restore_perturb();
        skip();     /* no address space for it (32-bit host) */
    }
    hbitmap_set(hb, 700 * TiB, 1);
    hbitmap_set(hb, size - 1, 1);
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), 700 * TiB);
    assert_int_equal(hbitmap_next_dirty(hb, 700 * TiB + g, UINT64_MAX),
                     size - g);
    assert_true(hbitmap_next_dirty_area(hb, 1, UINT64_MAX, 0, &a, &b));
    assert_int_equal(a, 700 * TiB);
    assert_int_equal(b, g);

    copy = hbitmap_copy(hb);
    assert_non_null(copy);
    hbitmap_reset(copy, 700 * TiB, g);
    hbitmap_set(copy, 3 * TiB, g);
    assert_true(hbitmap_merge(hb, copy));
    assert_int_equal(hbitmap_count(hb), 3 * g);
    hbitmap_reset_all(copy);
    assert_int_equal(hbitmap_next_dirty(copy, 0, UINT64_MAX), -1);
    hbitmap_free(copy);

    hbitmap_truncate(hb, 2 * size);
    assert_int_equal(hbitmap_next_dirty(hb, 700 * TiB + g, UINT64_MAX),
                     size - g);
    assert_int_equal(hbitmap_next_dirty(hb, size, UINT64_MAX), -1);
    hbitmap_truncate(hb, 1 * TiB);
    assert_int_equal(hbitmap_count(hb), 0);
    hbitmap_free(hb);
    restore_perturb();
}

static void
test_count(void **state)
{
    /* 10 granules of 4 KiB, the last one 100 bytes long. */
    const uint64_t size = 9 * 4096 + 100;
    struct hbitmap *hb = hbitmap_new(size, 12);

    (void)state;
    hbitmap_set(hb, 0, 1);
    hbitmap_set(hb, 4096 * 3, 4096 * 2);
    assert_int_equal(hbitmap_count(hb), 3 * 4096);
    hbitmap_set(hb, size - 1, 1);
    assert_int_equal(hbitmap_count(hb), 4 * 4096);
    assert_int_equal(hbitmap_count_range(hb, 4096 * 4, UINT64_MAX),
                     2 * 4096);
    assert_int_equal(hbitmap_count_range(hb, 4096 * 4 + 1, 1), 4096);
    assert_int_equal(hbitmap_count_range(hb, 4096, 4096 * 2), 0);
    hbitmap_free(hb);
}

static void
test_merge(void **state)
{
    const uint64_t size = 300000 * 512ULL + 17;
    struct hbitmap *a = hbitmap_new(size, 9);
    struct hbitmap *b = hbitmap_new(size, 9);
    struct hbitmap *other_size = hbitmap_new(size + 512, 9);
    struct hbitmap *other_gran = hbitmap_new(size, 10);

    (void)state;
    hbitmap_set(a, 0, 512);
    hbitmap_set(a, 4096 * 512, 512);
    hbitmap_set(b, 512, 512);
    hbitmap_set(b, 4096 * 512, 2 * 512);
    hbitmap_set(b, size - 1, 1);

    assert_true(hbitmap_merge(a, b));
    assert_int_equal(hbitmap_count(a), 5 * 512);
    assert_true(hbitmap_get(a, 0));
    assert_true(hbitmap_get(a, 512));
    assert_true(hbitmap_get(a, 4097 * 512));
    assert_int_equal(hbitmap_next_dirty(a, 4098 * 512, UINT64_MAX),
                     size - 17);
    /* The source is unchanged. */
    assert_int_equal(hbitmap_count(b), 4 * 512);
    assert_true(hbitmap_merge(a, a));
    assert_int_equal(hbitmap_count(a), 5 * 512);

    assert_false(hbitmap_merge(a, other_size));
    assert_false(hbitmap_merge(a, other_gran));
    assert_int_equal(hbitmap_count(a), 5 * 512);

    hbitmap_free(a);
    hbitmap_free(b);
    hbitmap_free(other_size);
    hbitmap_free(other_gran);
}

static void
test_copy(void **state)
{
    struct hbitmap *hb = hbitmap_new(1 * TiB, 16);
    struct hbitmap *copy;

    (void)state;
    hbitmap_set(hb, 100 * GiB, 5 * 65536);
    hbitmap_set(hb, TiB - 1, 1);
    copy = hbitmap_copy(hb);
    assert_non_null(copy);
    assert_int_equal(hbitmap_size(copy), TiB);
    assert_int_equal(hbitmap_granularity(copy), 65536);
    assert_int_equal(hbitmap_count(copy), 6 * 65536);
    assert_int_equal(hbitmap_next_dirty(copy, 0, UINT64_MAX), 100 * GiB);
    assert_int_equal(hbitmap_next_dirty(copy, 101 * GiB, UINT64_MAX),
                     TiB - 65536);

    /* Independent of the original. */
    hbitmap_reset_all(hb);
    assert_int_equal(hbitmap_count(copy), 6 * 65536);
    hbitmap_reset(copy, 100 * GiB, 65536);
    assert_int_equal(hbitmap_count(hb), 0);
    assert_int_equal(hbitmap_count(copy), 5 * 65536);
    hbitmap_free(copy);
    hbitmap_free(hb);
}

static void
test_serialize_layout(void **state)
{
    /* 130 granules: three words, 24 bytes. */
    struct hbitmap *hb = hbitmap_new(130 * 512 - 3, 9);
    struct hbitmap *back = hbitmap_new(130 * 512 - 3, 9);
    static const unsigned granules[] = { 0, 9, 63, 64, 71, 129 };
    unsigned char expect[24] = { 0 };
    unsigned char buf[24];

    (void)state;
    assert_int_equal(hbitmap_serialized_size(hb), 24);
    for (size_t i = 0; i < ARRAY_SIZE(granules); i++) {
        hbitmap_set(hb, granules[i] * 512ULL, 1);
    }
    /* Granule i is bit i%8 of byte i/8: little-endian 64-bit words. */
    expect[0] = 0x01;        /* 0 */
    expect[1] = 0x02;        /* 9 */
    expect[7] = 0x80;        /* 63 */
    expect[8] = 0x81;        /* 64, 71 */
    expect[16] = 0x02;       /* 129 */
    memset(buf, 0xaa, sizeof(buf));
    hbitmap_serialize(hb, buf);
    assert_memory_equal(buf, expect, sizeof(expect));

    hbitmap_set(back, 512 * 5, 1);
    hbitmap_deserialize(back, buf);
    assert_int_equal(hbitmap_count(back), hbitmap_count(hb));
    for (unsigned i = 0; i < 130; i++) {
        assert_int_equal(hbitmap_get(back, i * 512ULL),
                         hbitmap_get(hb, i * 512ULL));
    }
    assert_int_equal(hbitmap_next_dirty(back, 72 * 512, UINT64_MAX),
                     129 * 512);

    /* Padding bits past granule 129 are ignored on the way in. */
    memset(buf, 0xff, sizeof(buf));
    hbitmap_deserialize(back, buf);
    assert_int_equal(hbitmap_count(back), 130 * 512);
    hbitmap_serialize(back, buf);
    assert_int_equal(buf[16], 0x03);
    assert_int_equal(buf[17], 0x00);
    assert_int_equal(buf[23], 0x00);

    memset(buf, 0, sizeof(buf));
    hbitmap_deserialize(back, buf);
    assert_int_equal(hbitmap_count(back), 0);
    assert_int_equal(hbitmap_next_dirty(back, 0, UINT64_MAX), -1);
    hbitmap_free(hb);
    hbitmap_free(back);
}

static void
test_truncate(void **state)
{
    const uint64_t g = 512;
    struct hbitmap *hb = hbitmap_new(300000 * g, 9);
    struct hbitmap *copy;

    (void)state;
    hbitmap_set(hb, 10 * g, g);
    hbitmap_set(hb, 5000 * g, g);
    hbitmap_set(hb, 299999 * g, g);

    /* Shrink into the middle of a partial granule: it stays. */
    hbitmap_truncate(hb, 5000 * g + 100);
    assert_int_equal(hbitmap_size(hb), 5000 * g + 100);
    assert_int_equal(hbitmap_count(hb), 2 * g);
    assert_true(hbitmap_get(hb, 5000 * g));
    assert_int_equal(hbitmap_next_dirty(hb, 11 * g, UINT64_MAX), 5000 * g);

    /* Shrink to one level; the granule at 5000 is gone. */
    hbitmap_truncate(hb, 64 * g);
    assert_int_equal(hbitmap_count(hb), g);
    assert_int_equal(hbitmap_next_dirty(hb, 11 * g, UINT64_MAX), -1);

    /* Grow back to four levels: the new granules are clear. */
    hbitmap_truncate(hb, 300000 * g);
    assert_int_equal(hbitmap_count(hb), g);
    assert_false(hbitmap_get(hb, 5000 * g));
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), 10 * g);
    assert_int_equal(hbitmap_next_dirty(hb, 11 * g, UINT64_MAX), -1);
    hbitmap_set(hb, 299999 * g, g);
    assert_int_equal(hbitmap_next_dirty(hb, 11 * g, UINT64_MAX), 299999 * g);
    assert_int_equal(hbitmap_count(hb), 2 * g);

    /* A tail word emptied by shrinking must not stay in the summary. */
    hbitmap_reset_all(hb);
    hbitmap_set(hb, 100 * g, g);
    hbitmap_truncate(hb, 70 * g);
    assert_int_equal(hbitmap_count(hb), 0);
    hbitmap_truncate(hb, 300 * g);
    hbitmap_set(hb, 200 * g, g);
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), 200 * g);

    /* Growing from one level: word 0 must enter the new summary. */
    hbitmap_truncate(hb, 64 * g);
    hbitmap_set(hb, 3 * g, g);
    hbitmap_truncate(hb, 5000 * g);
    copy = hbitmap_copy(hb);
    assert_true(hbitmap_get(copy, 3 * g));
    assert_int_equal(hbitmap_count_range(hb, 0, 200 * g), g);
    hbitmap_reset_all(hb);
    assert_int_equal(hbitmap_next_dirty(hb, 0, UINT64_MAX), -1);
    hbitmap_set(hb, 10 * g, 1);
    hbitmap_free(copy);

    /* A set partial tail granule keeps its bit when the size grows. */
    hbitmap_truncate(hb, 10 * g + 1);
    assert_int_equal(hbitmap_count(hb), g);
    hbitmap_truncate(hb, 20 * g);
    assert_int_equal(hbitmap_count(hb), g);
    hbitmap_free(hb);
}

/* ---- Random operations against the model -------------------------------- */

static void
random_run(uint64_t seed, uint64_t size, unsigned gran_bits, int nops)
{
    struct hbitmap *hb = hbitmap_new(size, gran_bits);
    struct model m;

    rng_state = seed;
    model_init(&m, size, gran_bits);
    assert_non_null(hb);

    for (int op = 0; op < nops; op++) {
        uint64_t offset = rng_offset(&m);
        uint64_t bytes = rng_bytes(&m);
        uint64_t a, b, pnum;
        int64_t expect;
        bool ok;

        switch (rng_below(16)) {
        case 0: case 1: case 2: case 3:
            hbitmap_set(hb, offset, bytes);
            model_set(&m, offset, bytes);
            break;
        case 4: case 5: case 6:
            hbitmap_reset(hb, offset, bytes);
            model_reset(&m, offset, bytes);
            break;
        case 7:
            assert_int_equal(hbitmap_get(hb, offset), model_get(&m, offset));
            assert_int_equal(hbitmap_count(hb),
                             model_count_range(&m, 0, m.size));
            break;
        case 8:
            assert_int_equal(hbitmap_next_dirty(hb, offset, bytes),
                             model_next(&m, offset, bytes, true));
            break;
        case 9:
            assert_int_equal(hbitmap_next_zero(hb, offset, bytes),
                             model_next(&m, offset, bytes, false));
            break;
        case 10:
            assert_int_equal(hbitmap_count_range(hb, offset, bytes),
                             model_count_range(&m, offset, bytes));
            break;
        case 11: {
            uint64_t max = rng_below(3) ? rng_below(64ULL << gran_bits) : 0;
            uint64_t end = model_end(&m, offset, bytes);

            ok = hbitmap_next_dirty_area(hb, offset, bytes, max, &a, &b);
            expect = model_next(&m, offset, bytes, true);
            assert_int_equal(ok, expect >= 0);
            if (ok) {
                uint64_t lim = end;
                int64_t z;

                if (max && max < end - (uint64_t)expect) {
                    lim = expect + max;
                }
                z = model_next(&m, expect, lim - expect, false);
                assert_int_equal(a, expect);
                assert_int_equal(b, (z >= 0 ? (uint64_t)z : lim) - expect);
                assert_true(b > 0);
            }
            break;
        }
        case 12: {
            uint64_t end = model_end(&m, offset, bytes);
            bool dirty = model_get(&m, offset);

            ok = hbitmap_status(hb, offset, bytes, &pnum);
            assert_int_equal(ok, dirty);
            if (offset >= m.size) {
                assert_int_equal(pnum, bytes);
            } else if (offset == end) {
                assert_int_equal(pnum, 0);
            } else {
                expect = model_next(&m, offset, end - offset, !dirty);
                assert_int_equal(pnum, (expect >= 0 ? (uint64_t)expect
                                        : end) - offset);
            }
            break;
        }
        case 13:
            if (rng_below(8) == 0) {
                /* Grow or shrink by up to 20000 granules. */
                uint64_t gran = 1ULL << gran_bits;
                uint64_t delta = rng_below(20000) * gran + rng_below(gran);
                uint64_t nsize = rng_below(2) ? m.size + delta
                                 : (m.size > delta ? m.size - delta : 0);

                hbitmap_truncate(hb, nsize);
                model_truncate(&m, nsize);
                check_equal(hb, &m);
            }
            break;
        case 14: {
            struct hbitmap *other = hbitmap_new(m.size, gran_bits);
            struct hbitmap *copy;

            for (int i = 0; i < 3; i++) {
                uint64_t o = rng_offset(&m);
                uint64_t n = rng_bytes(&m) % (1000ULL << gran_bits);

                hbitmap_set(other, o, n);
                model_set(&m, o, n);
            }
            assert_true(hbitmap_merge(hb, other));
            hbitmap_free(other);
            copy = hbitmap_copy(hb);
            hbitmap_free(hb);
            hb = copy;
            break;
        }
        case 15: {
            size_t len = hbitmap_serialized_size(hb);
            unsigned char *buf = xmalloc(len);

            hbitmap_serialize(hb, buf);
            for (uint64_t i = 0; i < m.nbits; i++) {
                assert_int_equal((buf[i / 8] >> (i % 8)) & 1, m.bits[i]);
            }
            hbitmap_reset_all(hb);
            hbitmap_deserialize(hb, buf);
            free(buf);
            break;
        }
        }
    }
    check_equal(hb, &m);
    hbitmap_free(hb);
    model_free(&m);
}

static void
test_random_small(void **state)
{
    (void)state;
    /* One and two levels, odd sizes. */
    random_run(1, 37 * 512 + 5, 9, 4000);
    random_run(2, 4000 * 4096 + 4095, 12, 4000);
    random_run(3, 64 * 65536, 16, 4000);
}

static void
test_random_levels(void **state)
{
    (void)state;
    /* Three and four levels. */
    random_run(4, 20000 * 512ULL + 300, 9, 5000);
    random_run(5, 270000 * 1024ULL + 1, 10, 3000);
    random_run(6, 5000ULL << 31, 31, 3000);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partial_last_granule),
        cmocka_unit_test(test_empty_bitmap),
        cmocka_unit_test(test_crossing_words_and_levels),
        cmocka_unit_test(test_sparse_huge),
        cmocka_unit_test(test_petabyte),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_serialize_layout),
        cmocka_unit_test(test_truncate),
        cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_levels),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
