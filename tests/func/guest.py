# SPDX-License-Identifier: MIT
"""A real Linux guest on a vhost-user-blk disk, for the functional tests.

The guest is Debian's cloud kernel and a busybox initramfs
(tests/guest/build-guest.sh builds them into a cache directory outside
the repository), booted by qemu-system-x86_64 under TCG with memfd-backed
shared memory, its disk a vhost-user-blk-pci device on a back-end's
socket.  The guest runs a shell on its second serial port; cmd() sends a
command line and returns what it printed and its exit status.  The first
serial port (the console) goes to a log file.
"""
import os
import re
import socket
import subprocess
import time

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_assets = None


def guest_assets():
    """(vmlinuz, initrd), built once per session."""
    global _assets
    if _assets is None:
        if not shutil_which("qemu-system-x86_64"):
            pytest.skip("qemu-system-x86_64 is not installed")
        p = subprocess.run([os.path.join(TOP, "tests/guest/build-guest.sh")],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, "cannot build the test guest: " + p.stderr
        d = p.stdout.strip().splitlines()[-1]
        _assets = (os.path.join(d, "vmlinuz"), os.path.join(d, "initrd"))
    return _assets


def shutil_which(name):
    import shutil
    return shutil.which(name)


class Guest:
    """One VM; boot() waits for its shell."""

    def __init__(self, tmp_dir, vhost_sock, name="vm", num_queues=1,
                 reconnect=False):
        self.tmp_dir = tmp_dir
        self.vhost_sock = vhost_sock
        self.name = name
        self.num_queues = num_queues
        self.reconnect = reconnect
        self.ctl_path = os.path.join(tmp_dir, name + "-ctl.sock")
        self.console = os.path.join(tmp_dir, name + "-console.log")
        self.proc = None
        self.sock = None
        self.buf = b""

    def argv(self):
        kernel, initrd = guest_assets()
        chardev = "socket,id=vu0,path=%s" % self.vhost_sock
        if self.reconnect:
            chardev += ",reconnect=1"
        return ["qemu-system-x86_64", "-accel", "tcg", "-m", "512",
                "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                "-machine", "q35,memory-backend=mem",
                "-kernel", kernel, "-initrd", initrd,
                "-append", "console=ttyS0 quiet panic=-1 no_timer_check",
                "-no-reboot", "-nographic", "-monitor", "none", "-nic", "none",
                "-serial", "file:" + self.console,
                "-chardev", "socket,id=ctl,path=%s,server=on,wait=off"
                % self.ctl_path,
                "-serial", "chardev:ctl",
                "-chardev", chardev,
                "-device", "vhost-user-blk-pci,chardev=vu0,num-queues=%d"
                % self.num_queues]

    def boot(self, timeout=120):
        if os.path.exists(self.ctl_path):
            os.unlink(self.ctl_path)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("qemu exited: " + self.proc.stderr.read())
            assert time.monotonic() < deadline, "qemu did not start"
            # QEMU binds the path a moment before it listens on it: a
            # refused connection on a loaded machine means "not yet".
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(self.ctl_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                time.sleep(0.05)
        self.buf = b""
        self._read_until(b"guest: ready\n", deadline)
        return self

    def _read_until(self, marker, deadline):
        while marker not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("guest: no %r; console:\n%s" %
                                   (marker, self.console_text()[-3000:]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError("guest gone; console:\n%s" %
                               self.console_text()[-3000:])
            self.buf += chunk
        before, self.buf = self.buf.split(marker, 1)
        return before

    def cmd(self, line, timeout=120, check=True):
        """Run a shell command line in the guest: (output, status)."""
        self.sock.sendall(("%s\necho __rc=$?__\n" % line).encode())
        out = self._read_until(b"__\n", time.monotonic() + timeout)
        out, _, rc = out.rpartition(b"__rc=")
        out, rc = out.decode(errors="replace"), int(rc)
        if check:
            assert rc == 0, "guest: %s: status %d: %s" % (line, rc, out)
        return out, rc

    def write_files(self, prefix, count, kib=256):
        """Write count files of random data, sync; returns {name: sha}."""
        out, _ = self.cmd(
            "for i in $(seq %d); do dd if=/dev/urandom of=/mnt/%s$i "
            "bs=1k count=%d 2>/dev/null || exit 1; done; sync; "
            "sha256sum /mnt/%s*" % (count, prefix, kib, prefix))
        return parse_sums(out)

    def console_text(self):
        try:
            with open(self.console, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill(self):
        """SIGKILL the VMM (the guest dies with it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.sock:
            self.sock.close()
            self.sock = None

    def poweroff(self, timeout=60):
        """Unmount what is mounted and power off."""
        self.cmd("umount /mnt 2>/dev/null; sync", check=False)
        self.sock.sendall(b"poweroff -f\n")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.sock = None


def parse_sums(text):
    """sha256sum output -> {basename: sha}."""
    sums = {}
    for line in text.splitlines():
        m = re.match(r"([0-9a-f]{64})\s+\S*/(\S+)$", line.strip())
        if m:
            sums[m.group(2)] = m.group(1)
    return sums


# What e2fsck may repair in an image taken from a running (or crashed)
# guest: ext4 updates the superblock's summary counters lazily (they are
# recomputed from the group descriptors at mount), so they are stale in
# any crash image.  Everything else is journaled and must be right.
BENIGN_FIXES = ("Free blocks count wrong (", "Free inodes count wrong (")


def fs_check(image_raw):
    """e2fsck after journal replay: the first pass may replay the journal,
    process orphans and correct the superblock's summary counters, and
    must not find anything else to fix; the second must find the file
    system clean."""
    p = subprocess.run(["e2fsck", "-fy", image_raw], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    lines = p.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.strip().endswith("? yes"):
            what = lines[i - 1] if i else ""
            assert what.startswith(BENIGN_FIXES), p.stdout
    p = subprocess.run(["e2fsck", "-fn", image_raw], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr


def file_sums(image_raw, names, tmp_dir):
    """sha256 of files in an ext4 image, read with debugfs (no mount)."""
    import hashlib
    sums = {}
    for n in names:
        out = os.path.join(tmp_dir, "dump-" + n)
        p = subprocess.run(["debugfs", "-R", "dump /%s %s" % (n, out),
                            image_raw], capture_output=True, text=True,
                           timeout=120)
        if not os.path.exists(out):
            sums[n] = None
            continue
        with open(out, "rb") as f:
            sums[n] = hashlib.sha256(f.read()).hexdigest()
        os.unlink(out)
        del p
    return sums


def make_ext4_qcow2(path, size_mib=256):
    """A qcow2 image holding a fresh ext4 file system."""
    raw = path + ".raw"
    with open(raw, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", raw], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, path],
                   check=True)
    os.unlink(raw)
    return path


def to_raw(src, dst, fmt="qcow2"):
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", src, dst],
                   check=True, timeout=300)
    return dst
