/* SPDX-License-Identifier: MIT */
/*
 * Progress: a bar on stderr when it is a terminal ("  42% [#####   ]
 * 430.1 MiB / 1.0 GiB  210.3 MiB/s  0:03 left"), redrawn five times a
 * second; or with --progress=json one JSON object a line on stdout every
 * second ({"type": "progress", "done", "total", "bytes-read",
 * "bytes-per-second", "seconds-left"}), for tools; or nothing.  The
 * caller ticks it from the thread that waits for the work.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "util.h"

#define BAR_WIDTH 24

void
progress_start(struct progress *p, enum progress_mode mode, const char *what,
               uint64_t total)
{
    memset(p, 0, sizeof(*p));
    if (mode == PROGRESS_AUTO) {
        mode = isatty(STDERR_FILENO) ? PROGRESS_BAR : PROGRESS_NONE;
    }
    p->mode = mode;
    p->what = what;
    p->total = total;
    p->start_ns = clock_ns();
    p->last_ns = 0;
}

static double
rate(const struct progress *p, int64_t now)
{
    double secs = (double)(now - p->start_ns) / 1e9;

    return secs > 0 ? (double)__atomic_load_n(&p->done, __ATOMIC_RELAXED) /
                      secs : 0;
}

static void
human_size(char *buf, size_t len, double v)
{
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    unsigned u = 0;

    while (v >= 1024 && u < ARRAY_SIZE(units) - 1) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void
draw_bar(struct progress *p, int64_t now)
{
    uint64_t done = __atomic_load_n(&p->done, __ATOMIC_RELAXED);
    double frac = p->total ? (double)done / (double)p->total : 1;
    double r = rate(p, now);
    char bar[BAR_WIDTH + 1], d[32], t[32], rs[32], left[32];
    unsigned fill = (unsigned)(frac * BAR_WIDTH);

    memset(bar, '#', fill);
    memset(bar + fill, ' ', BAR_WIDTH - fill);
    bar[BAR_WIDTH] = '\0';
    human_size(d, sizeof(d), (double)done);
    human_size(t, sizeof(t), (double)p->total);
    human_size(rs, sizeof(rs), r);
    if (r > 0 && done < p->total) {
        unsigned secs = (unsigned)((double)(p->total - done) / r);

        snprintf(left, sizeof(left), "%u:%02u left", secs / 60, secs % 60);
    } else {
        snprintf(left, sizeof(left), "%s", done >= p->total ? "done" : "");
    }
    fprintf(stderr, "\r%s %3u%% [%s] %s / %s  %s/s  %-12s", p->what,
            (unsigned)(frac * 100), bar, d, t, rs, left);
    fflush(stderr);
    p->drawn = true;
}

static void
print_json(struct progress *p, int64_t now)
{
    uint64_t done = __atomic_load_n(&p->done, __ATOMIC_RELAXED);
    double r = rate(p, now);
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "type",
                          "progress", "what", p->what, "done",
                          (json_int_t)done, "total", (json_int_t)p->total,
                          "bytes-read", (json_int_t)__atomic_load_n(
                              &p->bytes_read, __ATOMIC_RELAXED),
                          "bytes-per-second", (json_int_t)r);

    if (r > 0) {
        json_object_set_new(o, "seconds-left", json_integer(
            (json_int_t)((double)(p->total - MIN(done, p->total)) / r)));
    }
    progress_json_event(p, o);
}

void
progress_tick(struct progress *p)
{
    int64_t now = clock_ns();
    int64_t period = p->mode == PROGRESS_JSON ? 1000000000 : 200000000;

    if (p->mode == PROGRESS_NONE || now - p->last_ns < period) {
        return;
    }
    p->last_ns = now;
    if (p->mode == PROGRESS_BAR) {
        draw_bar(p, now);
    } else {
        print_json(p, now);
    }
}

void
progress_end(struct progress *p)
{
    int64_t now = clock_ns();

    if (p->mode == PROGRESS_BAR) {
        draw_bar(p, now);
        fputc('\n', stderr);
        p->drawn = false;
    } else if (p->mode == PROGRESS_JSON) {
        print_json(p, now);
    }
}

void
progress_json_event(struct progress *p, json_t *obj)
{
    if (p->mode == PROGRESS_JSON) {
        char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);

        printf("%s\n", s);
        fflush(stdout);
        free(s);
    }
    json_decref(obj);
}
