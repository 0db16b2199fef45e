# SPDX-License-Identifier: MIT
"""Start the daemons under test and read their resource use from /proc.

lockstepd and qemu-storage-daemon share one command line shape, so both go
through tests/func/qmp_client.py's Daemon; qemu-system-x86_64 (for QEMU's
replication commands, which qemu-storage-daemon lacks) takes -chardev/-mon.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests", "func"))
from qmp_client import Daemon, wait_for_socket  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class QemuSystem(Daemon):
    """qemu-system-x86_64 -machine none, driven over QMP only."""

    def __init__(self, binary, tmp_dir, name="qmp"):
        self.qmp_path = os.path.join(tmp_dir, name + ".sock")
        self.argv = [binary, "-machine", "none", "-nodefaults",
                     "-display", "none",
                     "-chardev", "socket,id=mon0,path=%s,server=on,wait=off"
                     % self.qmp_path, "-mon", "chardev=mon0,mode=control"]
        self.stderr = None
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_for_socket(self.qmp_path, self.proc)


def start(kind, binaries, tmp_dir, name):
    """kind: 'lockstep', 'qsd', 'qemu' (qemu-system-x86_64 -M none) or
    'lockstep-nbd' (lockstepd as the reference: its own NBD export)."""
    if kind == "qemu":
        return QemuSystem(binaries["qemu"], tmp_dir, name=name)
    if kind == "lockstep-nbd":
        kind = "lockstep"
    return Daemon(binaries[kind], tmp_dir, name=name)


def cpu_seconds(d):
    """utime + stime of the daemon so far, in seconds."""
    with open("/proc/%d/stat" % d.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(d):
    """VmHWM (peak resident set) in KiB."""
    with open("/proc/%d/status" % d.proc.pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
