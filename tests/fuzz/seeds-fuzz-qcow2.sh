#!/bin/sh
# SPDX-License-Identifier: MIT
# Seeds for fuzz-qcow2 (scripts/run-fuzz.sh runs this): a small qcow2 corpus made with qemu-img/qemu-io (binary images
# are never committed).  Usage: seeds-fuzz-qcow2.sh DIR
set -eu
dir=$1
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
seed() {
    n=$((n + 1))
    img="$dir/seed-$n.qcow2"
    qemu-img create -q -f qcow2 "$@" "$img" 4M
    qemu-io -f qcow2 -c 'write -P 0x11 0 70k' -c 'write -z 1M 64k' \
        -c 'write -P 0x22 2M 5k' -c 'discard 2M 64k' "$img" >/dev/null
}
seed
seed -o cluster_size=512
seed -o cluster_size=4096,refcount_bits=1
seed -o refcount_bits=64
seed -o extended_l2=on
seed -o compat=0.10
seed -o cluster_size=2M
head -c 1048576 /dev/urandom > "$tmp/src.raw"
qemu-img convert -c -f raw -O qcow2 "$tmp/src.raw" "$dir/seed-compressed.qcow2"
qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 "$dir/seed-backing.qcow2" 4M
# Persistent bitmaps: the extension, a directory and tables (in use too).
qemu-img create -q -f qcow2 -o cluster_size=512 "$dir/seed-bitmaps.qcow2" 4M
qemu-img bitmap --add -g 512 "$dir/seed-bitmaps.qcow2" b0
qemu-img bitmap --add --disable "$dir/seed-bitmaps.qcow2" b1
qemu-io -f qcow2 -c 'write -P 0x33 0 70k' -c 'write 3M 5k' \
    "$dir/seed-bitmaps.qcow2" >/dev/null
qemu-img bitmap --merge b0 "$dir/seed-bitmaps.qcow2" b1
