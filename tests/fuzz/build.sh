#!/bin/sh
# SPDX-License-Identifier: MIT
# Build fuzz-qcow2 with clang (libFuzzer, ASan, UBSan) through the meson
# option -Dfuzz=true in a separate build directory, make its seed corpus
# with qemu-img, and optionally run it:
#   tests/fuzz/build.sh [BUILD_DIR]            build + seeds
#   FUZZ_SECONDS=60 tests/fuzz/build.sh        also fuzz for 60 s
# (scripts/run-fuzz.sh does the same for every target.)
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build-fuzz}

if [ ! -f "$out/build.ninja" ]; then
    CC=${CC:-clang} meson setup "$out" "$src" -Dfuzz=true \
        -Db_sanitize=address,undefined -Db_lundef=false >/dev/null
fi
ninja -C "$out" tests/fuzz/fuzz-qcow2 >/dev/null
rm -rf "$out/corpus-qcow2"
"$src/tests/fuzz/seeds-fuzz-qcow2.sh" "$out/corpus-qcow2"
echo "built $out/tests/fuzz/fuzz-qcow2; corpus in $out/corpus-qcow2"
if [ -n "${FUZZ_SECONDS:-}" ]; then
    "$out/tests/fuzz/fuzz-qcow2" -max_total_time="$FUZZ_SECONDS" \
        -rss_limit_mb=2048 -timeout=10 "$out/corpus-qcow2"
fi
