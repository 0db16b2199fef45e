#!/bin/sh
# Install the Debian packages `make bench` needs, once (as scripts/install-deps.sh).
set -e
pkgs="qemu-utils qemu-system-x86 qemu-system-common fio libnbd-bin nbdkit
      gnuplot-nox time python3 meson ninja-build"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "bench/install-deps: missing packages:$missing (run as root)" >&2
    exit 1
fi
echo "bench/install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
