#!/bin/sh
# Build the libFuzzer targets with clang, ASan and UBSan, and run each one
# for a short time on its seed corpus.  A crash, leak or sanitizer report
# fails the run.  Prints one line per target: "fuzz: NAME ok" or "FAILED".
#
# Usage: scripts/run-fuzz.sh [BUILD_DIR] [SECONDS_PER_TARGET]
set -u
dir=${1:-build-fuzz}
secs=${2:-20}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
if [ ! -f "$dir/build.ninja" ]; then
    CC=clang meson setup "$dir" -Dfuzz=true -Db_sanitize=address,undefined \
        -Db_lundef=false -Dwerror=true >/dev/null || exit 1
fi
ninja -C "$dir" >/dev/null || { echo "fuzz: build failed"; exit 1; }
failed=0
passed=0
for exe in "$dir"/tests/fuzz/fuzz-*; do
    [ -f "$exe" ] && [ -x "$exe" ] || continue
    name=$(basename "$exe")
    corpus=$(mktemp -d)
    # Seeds: committed text seeds plus what the target's seed script makes.
    if [ -d "tests/fuzz/corpus/$name" ]; then
        cp "tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null
    fi
    if [ -x "tests/fuzz/seeds-$name.sh" ]; then
        "tests/fuzz/seeds-$name.sh" "$corpus" >/dev/null 2>&1
    fi
    if "$exe" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$dir/$name-" "$corpus" >"$dir/$name.log" 2>&1; then
        echo "fuzz: $name ok"
        passed=$((passed + 1))
    else
        echo "fuzz: $name FAILED (see $dir/$name.log)"
        tail -n 30 "$dir/$name.log"
        failed=$((failed + 1))
    fi
    rm -rf "$corpus"
done
echo "$passed $failed" >"$dir/fuzz.count"
[ "$failed" = 0 ]
