#!/bin/sh
# Install the Debian packages lockstep needs to build and test, once.
# Runs as root on a fresh Debian 12 machine; does nothing when all is there.
# Extra package names given as arguments are installed too (make bench).
set -e
pkgs="$* meson ninja-build pkg-config gcc clang libclang-rt-14-dev libcmocka-dev
      libjansson-dev libnbd-dev libnbd-bin libgnutls28-dev gnutls-bin zlib1g-dev libzstd-dev nbdkit
      qemu-utils qemu-system-common fio python3 python3-pytest python3-pytest-xdist python3-libnbd
      libfuse3-dev fuse3 liburing-dev qemu-system-x86 busybox-static e2fsprogs strace"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
