#!/bin/sh
# make demo: the first minute of a new user's life.  Creates a sample
# image, writes and reads patterns through lockstep-io, and shows the map.
# Once lockstepd is built, it also starts the daemon, exports the image
# over NBD, looks at it with nbdinfo and qemu-io, and stops cleanly.
set -eu
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/$build"
dir=$(mktemp -d /tmp/lockstep-demo.XXXXXX)
cleanup() {
    if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

img="$dir/disk.img"
if [ -x "$bin/lockstep-img" ]; then
    run "$bin/lockstep-img" create -f qcow2 "$img" 64M
    fmt=qcow2
else
    run truncate -s 64M "$img"
    fmt=raw
fi
run "$bin/lockstep-io" -f "$fmt" -c 'write -P 0xab 0 1M' \
    -c 'write -z 4M 1M' -c 'read -P 0xab 0 1M' -c map "$img"

if [ -x "$bin/lockstepd" ]; then
    sock="$dir/nbd.sock"
    qmp="$dir/qmp.sock"
    say "$bin/lockstepd --blockdev ... --nbd-server ... --export ... &"
    "$bin/lockstepd" \
        --blockdev "driver=$fmt,node-name=disk,file.driver=file,file.filename=$img" \
        --nbd-server "addr.type=unix,addr.path=$sock" \
        --export "type=nbd,id=exp0,node-name=disk,name=disk,writable=on" \
        --chardev "socket,id=mon0,path=$qmp,server=on,wait=off" \
        --monitor chardev=mon0 &
    pid=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    if command -v nbdinfo >/dev/null; then
        run nbdinfo "nbd+unix:///disk?socket=$sock"
    fi
    if command -v qemu-io >/dev/null; then
        run qemu-io -f raw -c 'read -P 0xab 0 1M' -c 'write -P 0xcd 1M 1M' \
            "nbd+unix:///disk?socket=$sock"
    fi
    say "kill -TERM $pid"
    kill -TERM "$pid"
    wait "$pid"
    pid=
    run "$bin/lockstep-io" -f "$fmt" -c 'read -P 0xcd 1M 1M' "$img"
    if [ "$fmt" = qcow2 ] && command -v qemu-img >/dev/null; then
        run qemu-img check "$img"
    fi
fi
printf '\nDemo finished.\n'
