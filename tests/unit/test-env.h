/* SPDX-License-Identifier: MIT */
/*
 * Where unit tests put their files and how they open them, so that a test
 * setup can run them again on a disk with O_DIRECT (meson test --setup
 * direct, scripts/run-tests.sh):
 *   LOCKSTEP_TEST_DIR=DIR          temporary files go to DIR (default /tmp,
 *                                  with cache.direct a disk-backed one)
 *   LOCKSTEP_TEST_CACHE_DIRECT=1   images are opened with cache.direct=on
 * test_direct_dir() finds a directory where O_DIRECT really applies (a
 * disk-backed file system, not tmpfs) for tests that need one.
 */
#ifndef LOCKSTEP_TEST_ENV_H
#define LOCKSTEP_TEST_ENV_H

#include <fcntl.h>
#include <linux/magic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <jansson.h>

#include "lockstep/block.h"
#include "util.h"

static inline bool
test_cache_direct(void)
{
    const char *v = getenv("LOCKSTEP_TEST_CACHE_DIRECT");

    return v && !strcmp(v, "1");
}

/* Is dir in memory (tmpfs, ramfs)? */
static inline bool
test_dir_in_memory(const char *dir)
{
    struct statfs sf;

    return statfs(dir, &sf) == 0 &&
           (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC);
}

/* Can dir hold files that O_DIRECT reaches the disk with? */
static inline bool
test_dir_is_direct(const char *dir)
{
    struct statfs sf;
    char *path;
    int fd;

    if (statfs(dir, &sf) < 0 || sf.f_type == TMPFS_MAGIC ||
        sf.f_type == RAMFS_MAGIC) {
        return false;
    }
    path = xasprintf("%s/direct-probe-XXXXXX", dir);
    fd = mkstemp(path);
    if (fd >= 0) {
        close(fd);
        fd = open(path, O_RDWR | O_DIRECT);
        unlink(path);
    }
    free(path);
    if (fd < 0) {
        return false;
    }
    close(fd);
    return true;
}

/* A disk-backed directory for O_DIRECT tests, or NULL (skip). */
static inline const char *
test_direct_dir(void)
{
    static const char *const dirs[] = { "/var/tmp", "/tmp" };
    const char *d = getenv("LOCKSTEP_TEST_DIR");

    if (d && *d) {
        return test_dir_is_direct(d) ? d : NULL;
    }
    for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
        if (test_dir_is_direct(dirs[i])) {
            return dirs[i];
        }
    }
    return NULL;
}

/* Where the test's files go: LOCKSTEP_TEST_DIR, else with
 * LOCKSTEP_TEST_CACHE_DIRECT a directory on a disk, else /tmp. */
static inline const char *
test_tmp_dir(void)
{
    const char *d = getenv("LOCKSTEP_TEST_DIR");

    if (d && *d) {
        return d;
    }
    if (test_cache_direct() && test_direct_dir()) {
        return test_direct_dir();
    }
    return "/tmp";
}

/*
 * block_node_open_file() with the test's cache mode: fmt over a "file"
 * node (or the file node itself for fmt "file").
 */
static inline struct block_node *
test_open_file(const char *path, const char *fmt, bool read_only,
               struct err **errp)
{
    struct block_node *node;
    json_t *opts;

    if (!strcmp(fmt, "file")) {
        opts = json_pack("{s:s, s:s, s:b}", "driver", "file", "filename",
                         path, "read-only", read_only);
    } else {
        opts = json_pack("{s:s, s:{s:s, s:s}, s:b}", "driver", fmt, "file",
                         "driver", "file", "filename", path, "read-only",
                         read_only);
    }
    if (test_cache_direct()) {
        block_opts_set_cache_mode(opts, "none", NULL);
    }
    node = block_node_new(opts, errp);
    json_decref(opts);
    return node;
}

#endif
