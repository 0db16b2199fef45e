#!/bin/busybox sh
# /init of the test guest (tests/guest/build-guest.sh): load the virtio
# modules, then run a shell on the second serial port for the test to
# drive (tests/func/guest.py); the console (first port) gets the logs.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev \
         virtio_pci virtio_blk; do
    insmod /lib/$m.ko
done
# One command line at a time, read whole before it runs (a shell reading
# the port itself would act on partial lines); no prompt, no echo.  The
# port stays open from here on: closing it would drop input.
exec </dev/ttyS1 >/dev/ttyS1 2>&1
stty raw -echo 115200
echo "guest: ready"
while IFS= read -r line; do
    eval "$line" </dev/null
done
poweroff -f
