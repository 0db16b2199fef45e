#!/bin/sh
# Build the test guest for tests/func/test_guest_vhost.py: Debian's cloud
# kernel (vmlinuz taken out of the package with dpkg-deb, nothing is
# installed) and an initramfs of busybox-static with the virtio modules.
# Everything lands in a cache directory outside the repository; a second
# run reuses it.  Prints the directory holding vmlinuz and initrd.
#
# Usage: tests/guest/build-guest.sh [CACHE_DIR]
#   (default $LOCKSTEP_GUEST_CACHE or /var/cache/lockstep-test)
set -eu
cache=${1:-${LOCKSTEP_GUEST_CACHE:-/var/cache/lockstep-test}}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache"
cd "$cache"

# The versioned kernel package the meta package depends on.
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
      awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$pkg" ] || { echo "build-guest: no linux-image-cloud-amd64" >&2; exit 1; }
out="$cache/$pkg"
if [ -f "$out/vmlinuz" ] && [ -f "$out/initrd" ] &&
   [ "$out/initrd" -nt "$here/init.sh" ]; then
    echo "$out"
    exit 0
fi
deb=$(ls "$pkg"_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
    apt-get download "$pkg" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null 2>&1
        apt-get download "$pkg" >/dev/null
    }
    deb=$(ls "$pkg"_*.deb | head -n 1)
fi
rm -rf "$out" "$out.tmp"
mkdir -p "$out.tmp/kernel" "$out.tmp/root"
dpkg-deb -x "$deb" "$out.tmp/kernel"
cp "$out.tmp/kernel"/boot/vmlinuz-* "$out.tmp/vmlinuz"
mods=$(ls -d "$out.tmp/kernel"/lib/modules/*)/kernel/drivers

root="$out.tmp/root"
mkdir -p "$root/bin" "$root/lib" "$root/proc" "$root/sys" "$root/dev" \
         "$root/mnt" "$root/tmp"
cp /bin/busybox "$root/bin/busybox"
# Load order: each after the ones it uses.
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev \
         virtio/virtio_pci_legacy_dev virtio/virtio_pci block/virtio_blk; do
    cp "$mods/$m.ko" "$root/lib/"
done
cp "$here/init.sh" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null |
    gzip -1 >"$out.tmp/initrd")
rm -rf "$out.tmp/kernel" "$root"
mv "$out.tmp" "$out"
echo "$out"
