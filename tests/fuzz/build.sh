#!/bin/sh
# SPDX-License-Identifier: MIT
# Build the libFuzzer targets with clang (ASan + libFuzzer) in a separate
# build directory, make a seed corpus with qemu-img, and optionally run:
#   tests/fuzz/build.sh [BUILD_DIR]            build + seeds
#   FUZZ_SECONDS=60 tests/fuzz/build.sh        also fuzz for 60 s
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build-fuzz}
cc=${CC:-clang-14}

if [ ! -f "$out/build.ninja" ]; then
    CC=$cc meson setup "$out" "$src" -Db_sanitize=address -Dwerror=false \
        -Dbuildtype=debugoptimized -Dc_args=-fsanitize=fuzzer-no-link >/dev/null
fi
ninja -C "$out" liblockstep.a >/dev/null
deps=$(pkg-config --cflags --libs jansson libnbd gnutls zlib)
# shellcheck disable=SC2086
$cc -g -O1 -fsanitize=fuzzer,address -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
    -I"$src/include" -I"$src/util" -I"$src" \
    "$src/tests/fuzz/fuzz-qcow2.c" "$out/liblockstep.a" $deps -lpthread \
    -o "$out/fuzz-qcow2"
"$src/tests/fuzz/make-seeds.sh" "$out/corpus-qcow2"
echo "built $out/fuzz-qcow2; corpus in $out/corpus-qcow2"
if [ -n "${FUZZ_SECONDS:-}" ]; then
    "$out/fuzz-qcow2" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 \
        -timeout=20 "$out/corpus-qcow2"
fi
