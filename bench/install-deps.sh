#!/bin/sh
# Install the Debian packages `make bench` needs on top of the build's:
# QEMU's system emulator (replication commands), gnuplot for the chart and
# GNU time.
exec "$(dirname "$0")/../scripts/install-deps.sh" qemu-system-x86 gnuplot-nox \
    time
