# SPDX-License-Identifier: MIT
"""O_DIRECT on a disk with 4096-byte logical sectors.

Most disks take 512-byte aligned I/O; some (and many cloud volumes) only
4096.  As root, these tests make such a disk from a loop device
(`losetup --sector-size 4096` over a sparse file) with ext4 on it, and run
the tools with cache=none there: the image's header, copy-on-write,
sub-sector writes at the end of odd-sized files, check, map, convert,
commit and resize must all work, and the unit tests of the request layer
and the qcow2 checker run there too.  Without root, losetup, mkfs.ext4 or
a free loop device they skip.
"""
import os
import shutil
import subprocess

import pytest

from conftest import build_dir_path, run

KiB = 1024
MiB = 1024 * KiB


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def disk4k(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (loop device)")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount", "blockdev"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices")
    d = str(tmp_path_factory.mktemp("disk4k"))
    backing = os.path.join(d, "disk.img")
    mnt = os.path.join(d, "mnt")
    os.mkdir(mnt)
    with open(backing, "wb") as f:
        f.truncate(512 * MiB)
    r = sh("losetup", "--find", "--show", "--sector-size", "4096", backing)
    if r.returncode != 0:
        pytest.skip("losetup: %s" % r.stderr.strip())
    dev = r.stdout.strip()
    try:
        if sh("blockdev", "--getss", dev).stdout.strip() != "4096":
            pytest.skip("the loop device does not have 4096-byte sectors")
        r = sh("mkfs.ext4", "-q", dev)
        if r.returncode != 0:
            pytest.skip("mkfs.ext4: %s" % r.stderr.strip())
        r = sh("mount", dev, mnt)
        if r.returncode != 0:
            pytest.skip("mount: %s" % r.stderr.strip())
        try:
            yield mnt
        finally:
            sh("umount", mnt)
    finally:
        sh("losetup", "-d", dev)


@pytest.fixture
def d4k(disk4k, request):
    d = os.path.join(disk4k, request.node.name.replace("[", "_")
                     .replace("]", ""))
    os.mkdir(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def tool(name):
    path = os.path.join(build_dir_path(), name)
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % name)
    return path


def ok(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def qemu_io_reads(img, *cmds, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    out = ok(sh(*(argv + [img]))).stdout
    assert "Pattern verification failed" not in out, out


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="no qemu-img")
def test_qcow2_tools(d4k):
    """A qcow2 chain made, written, checked, mapped, converted, committed
    and resized with cache=none."""
    img, io = tool("lockstep-img"), tool("lockstep-io")
    base = os.path.join(d4k, "base.qcow2")
    top = os.path.join(d4k, "top.qcow2")
    ok(run([img, "create", "-q", "-t", "none", "-f", "qcow2", "-o",
            "cluster_size=512", base, "16M"]))
    ok(run([io, "-t", "none", "-c", "write -P 0x11 1 5000",
            "-c", "write -P 0x12 1M 64k", "-c", "write -z 2M 1536",
            base]))
    ok(run([img, "create", "-q", "-t", "none", "-f", "qcow2", "-b",
            "base.qcow2", "-F", "qcow2", top]))
    # Copy-on-write from the backing file around sub-sector writes.
    ok(run([io, "-n", "-c", "write -P 0x21 1000 100",
            "-c", "write -P 0x22 1M 1", "-c", "discard 3M 1M",
            "-c", "read -P 0x11 1 999", "-c", "read -P 0x21 1000 100",
            "-c", "read -P 0x11 1100 3901", top]))
    ok(run([img, "check", "-T", "none", top]))
    ok(run([img, "map", "-T", "none", top]))
    out = os.path.join(d4k, "out.qcow2")
    ok(run([img, "convert", "-t", "none", "-T", "none", "-O", "qcow2", top,
            out]))
    ok(run([img, "compare", "-T", "none", top, out]))
    ok(run([img, "commit", "-t", "none", top]))
    ok(run([img, "resize", "-t", "none", base, "+1M"]))
    for f in (base, top, out):
        ok(sh("qemu-img", "check", "-q", f))
    qemu_io_reads(base, "read -P 0x11 1 999", "read -P 0x21 1000 100",
                  "read -P 0x22 1M 1", "read -P 0x12 1025k 63k",
                  "read -P 0 2M 1536")


def test_raw_odd_size(d4k):
    """Sub-sector writes at the end of a raw file that ends mid-sector."""
    io = tool("lockstep-io")
    raw = os.path.join(d4k, "odd.raw")
    with open(raw, "wb") as f:
        f.write(b"\x33" * (MiB + 1000))
    ok(run([io, "-t", "none", "-f", "raw", "-c", "write -P 0x44 1048577 999",
            "-c", "read -P 0x33 0 1048577", "-c", "read -P 0x44 1048577 999",
            "-c", "length", raw]))
    with open(raw, "rb") as f:
        data = f.read()
    assert data[:MiB + 1] == b"\x33" * (MiB + 1)
    assert data[MiB + 1:MiB + 1000] == b"\x44" * 999


@pytest.mark.parametrize("unit", ["test-block-core", "test-qcow2-check"])
def test_unit_tests_on_4k(disk4k, unit):
    """The request layer's odd-length O_DIRECT test and the qcow2 checker's
    tests, with their files on the 4 KiB disk."""
    exe = os.path.join(build_dir_path(), "tests", "unit", unit)
    if not os.access(exe, os.X_OK):
        pytest.skip("%s is not built" % unit)
    env = dict(os.environ, LOCKSTEP_TEST_DIR=disk4k,
               LOCKSTEP_TEST_CACHE_DIRECT="1")
    r = subprocess.run([exe], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SKIPPED" not in r.stdout + r.stderr
