#!/bin/sh
# Run the whole test suite: C unit tests (meson test) and the functional
# tests (pytest, driving the programs with real clients), first on the
# normal build (then a selection again with O_DIRECT on a disk), then on a
# build with AddressSanitizer and UndefinedBehaviorSanitizer.  Ends with
# one line "N passed, N failed".
#
# Usage: scripts/run-tests.sh BUILD_DIR SANITIZER_BUILD_DIR
#   LOCKSTEP_NO_SAN=1   skip the sanitizer pass (quicker local runs)
#   LOCKSTEP_NO_FUZZ=1  skip the short fuzzing runs
#   LOCKSTEP_NO_DIRECT=1  skip the O_DIRECT pass (qcow2 unit tests and the
#                       functional tests marked "direct", cache.direct=on on
#                       a disk: LOCKSTEP_DIRECT_DIR, else /var/tmp or /tmp)
#   FUZZ_SECONDS=N      seconds per fuzz target (default 15)
#   PYTEST_ARGS=...     extra pytest arguments (e.g. -k qcow2)
#   LOCKSTEP_TEST_JOBS=N  pytest-xdist workers for the functional tests
#                       (default 4; 1 runs them one at a time)
#
# The functional tests run in LOCKSTEP_TEST_JOBS pytest-xdist workers at
# once (most of their time is spent waiting on sockets and sleeps), then
# those marked "serial" (wall-clock limits, a fixed port) alone.
set -u
build=${1:-build}
san=${2:-build-san}
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT

export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0

# Count a meson JSON log ($1) and a junit XML file ($2) into $3 and $4.
count_unit() {
    /usr/bin/python3 - "$1" >"$2" <<'PY'
import json, sys
p = f = 0
try:
    for line in open(sys.argv[1]):
        r = json.loads(line)
        if r.get("result") in ("OK", "EXPECTEDFAIL"):
            p += 1
        elif r.get("result") != "SKIP":
            f += 1
except FileNotFoundError:
    f += 1
print(p, f)
PY
}

count_func() {
    /usr/bin/python3 - "$1" >"$2" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (FileNotFoundError, ET.ParseError):
    print(0, 1)
    sys.exit()
p = f = 0
for suite in root.iter("testsuite"):
    t = int(suite.get("tests", 0))
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skip = int(suite.get("skipped", 0))
    p += t - bad - skip
    f += bad
print(p, f)
PY
}

run_pass() {
    dir=$1
    tag=$2
    echo "=== $tag: unit tests ($dir)"
    meson test -C "$dir" --suite unit --print-errorlogs \
        --logbase "unit-$tag" >"$results/meson-$tag.out" 2>&1
    tail -n 20 "$results/meson-$tag.out"
    # Meson writes one JSON line per test.
    count_unit "$dir/meson-logs/unit-$tag.json" "$results/unit-$tag.count"
    echo "=== $tag: functional tests ($dir)"
    # Scratch files go under our own directory, removed after the pass:
    # pytest would keep the last three runs' images (gigabytes) around.
    # The sanitizer pass skips tests of scripts and docs (script_only):
    # the plain pass ran them, and their programs' code runs there anyway.
    marks=""
    [ "$tag" = sanitizers ] && marks="not script_only"
    (export LOCKSTEP_BUILD="$top/$dir"
     func_tests "$tag" "$marks" "$results/tmp-$tag")
    rm -rf "$results/tmp-$tag"
}

# pytest-xdist's option to run in $jobs workers, or nothing (one process)
# when it is not installed or one job is asked for.
jobs=${LOCKSTEP_TEST_JOBS:-4}
xdist_opts() {
    [ "$jobs" -gt 1 ] 2>/dev/null &&
        /usr/bin/python3 -c "import xdist" 2>/dev/null &&
        echo "-n $jobs"
}

# The functional tests selected by the marker expression $2 (may be
# empty): all but the "serial" ones in parallel, then those alone.  Writes
# and counts $results/func-$1.xml and func-$1-serial.xml; scratch files
# under $3.
func_tests() {
    tag=$1
    sel=${2:+$2 and }
    mkdir -p "$3"
    /usr/bin/python3 -m pytest -q -p no:cacheprovider $(xdist_opts) \
        -m "${sel}not serial" --basetemp="$3/p" \
        --junitxml="$results/func-$tag.xml" ${PYTEST_ARGS:-} tests/func
    count_func "$results/func-$tag.xml" "$results/func-$tag.count"
    echo "=== $tag: functional tests marked serial, one at a time"
    /usr/bin/python3 -m pytest -q -p no:cacheprovider \
        -m "${sel}serial" --basetemp="$3/s" \
        --junitxml="$results/func-$tag-serial.xml" ${PYTEST_ARGS:-} tests/func
    count_func "$results/func-$tag-serial.xml" \
        "$results/func-$tag-serial.count"
}

# A directory on a disk (not tmpfs) where O_DIRECT works, or nothing.
direct_dir() {
    for d in ${LOCKSTEP_DIRECT_DIR:-} /var/tmp /tmp; do
        case $(stat -f -c %T "$d" 2>/dev/null) in
            ""|tmpfs|ramfs) continue ;;
        esac
        if dd if=/dev/zero of="$d/.lockstep-direct-probe" bs=4096 count=1 \
                oflag=direct status=none 2>/dev/null; then
            rm -f "$d/.lockstep-direct-probe"
            echo "$d"
            return 0
        fi
        rm -f "$d/.lockstep-direct-probe"
    done
    return 1
}

# The qcow2 unit tests and the functional tests marked "direct" once more,
# with cache.direct=on and their files on a disk (tests/unit/test-env.h,
# tests/func/direct.py): tmpfs takes any alignment, a disk does not.
direct_pass() {
    dir=$1
    disk=$(direct_dir) || {
        echo "=== direct: skipped (no disk-backed directory with O_DIRECT)"
        return
    }
    work=$(mktemp -d "$disk/lockstep-direct.XXXXXX") || return
    echo "=== direct: qcow2 unit tests (cache.direct=on in $disk)"
    LOCKSTEP_TEST_DIR=$work meson test -C "$dir" --setup direct \
        --suite qcow2 --print-errorlogs --logbase unit-direct \
        >"$results/meson-direct.out" 2>&1
    tail -n 12 "$results/meson-direct.out"
    # Meson adds the setup's name to the log's: unit-direct-direct.json.
    count_unit "$dir/meson-logs/unit-direct-direct.json" \
        "$results/unit-direct.count"
    echo "=== direct: functional tests (cache.direct=on in $disk)"
    (export LOCKSTEP_TEST_CACHE=none LOCKSTEP_BUILD="$top/$dir"
     func_tests direct direct "$work/pytest")
    rm -rf "$work"
}

run_pass "$build" plain
if [ -z "${LOCKSTEP_NO_DIRECT:-}" ]; then
    direct_pass "$build"
fi
if [ -z "${LOCKSTEP_NO_SAN:-}" ]; then
    if [ ! -f "$san/build.ninja" ]; then
        meson setup "$san" -Db_sanitize=address,undefined \
            -Db_lundef=false >/dev/null || exit 1
    fi
    ninja -C "$san" >/dev/null || { echo "sanitizer build failed"; exit 1; }
    run_pass "$san" sanitizers
fi

# Fuzz targets, briefly, when clang is there (CI has it).
if [ -z "${LOCKSTEP_NO_FUZZ:-}" ] && command -v clang >/dev/null; then
    echo "=== fuzz targets"
    scripts/run-fuzz.sh build-fuzz "${FUZZ_SECONDS:-15}"
    cp build-fuzz/fuzz.count "$results/fuzz.count" 2>/dev/null ||
        echo "0 1" >"$results/fuzz.count"
fi

cat "$results"/*.count | awk '
    { p += $1; f += $2 }
    END { printf "%d passed, %d failed\n", p, f; exit (f > 0) }'
