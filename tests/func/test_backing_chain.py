# SPDX-License-Identifier: MIT
"""Backing chains that loop or go too deep (issue 12).

A qcow2 image whose backing file is itself, or a longer loop, used to make
every open recurse until the process ran out of file descriptors (the
daemon's monitor stopped answering meanwhile).  Loops are found by device
and inode, whatever the names; chains are limited to
BLOCK_MAX_BACKING_CHAIN (256) images.
"""
import os
import time

import pytest

from conftest import built_program, host_tool, run
from qmp_client import Daemon, QMPError

LIMIT = 256


def qemu_img():
    return host_tool("qemu-img")


def create(path, backing=None, size="1M"):
    argv = [qemu_img(), "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-u", "-b", backing, "-F", "qcow2"]
    r = run(argv + [path, size])
    assert r.returncode == 0, r.stderr


def rebase(path, backing):
    r = run([qemu_img(), "rebase", "-u", "-b", backing, "-F", "qcow2", path])
    assert r.returncode == 0, r.stderr


@pytest.fixture
def self_backed(tmp_dir):
    path = os.path.join(tmp_dir, "a.qcow2")
    create(path)
    rebase(path, "a.qcow2")
    return path


@pytest.fixture
def two_loop(tmp_dir):
    """c -> b -> c, where b names c by another path (through a
    subdirectory), so that only the inode tells them apart."""
    os.mkdir(os.path.join(tmp_dir, "sub"))
    c = os.path.join(tmp_dir, "c.qcow2")
    b = os.path.join(tmp_dir, "b.qcow2")
    create(b)
    create(c, backing="b.qcow2")
    rebase(b, "sub/../c.qcow2")
    return c


def chain(tmp_dir, images):
    """l0000.img <- l0001.img <- ...: images files; returns the top.  Made
    from one template by patching the backing name (qemu-img create per
    image is slow)."""
    base = os.path.join(tmp_dir, "l0000.img")
    create(base)
    tmpl = os.path.join(tmp_dir, "tmpl.qcow2")
    create(tmpl, backing="XXXXXXXXX")
    data = open(tmpl, "rb").read()
    assert data.count(b"XXXXXXXXX") == 1
    for i in range(1, images):
        with open(os.path.join(tmp_dir, "l%04d.img" % i), "wb") as f:
            f.write(data.replace(b"XXXXXXXXX",
                                 ("l%04d.img" % (i - 1)).encode()))
    return os.path.join(tmp_dir, "l%04d.img" % (images - 1))


# ---- lockstep-io (the block layer's open) ---------------------------------

def test_io_self_backed_fails_with_loop(lockstep_io, self_backed):
    start = time.monotonic()
    r = run([lockstep_io, "-r", "-c", "read 0 512", self_backed], timeout=20)
    assert time.monotonic() - start < 10
    assert r.returncode != 0
    assert "creates an infinite loop" in r.stderr, r.stderr
    assert "a.qcow2" in r.stderr


def test_io_two_image_loop_by_inode(lockstep_io, two_loop):
    r = run([lockstep_io, "-r", "-c", "read 0 512", two_loop], timeout=20)
    assert r.returncode != 0
    assert "creates an infinite loop" in r.stderr, r.stderr
    # One prefix, not one per level.
    assert r.stderr.count("Could not open backing file") == 1, r.stderr


def test_io_chain_depth_limit(lockstep_io, tmp_dir):
    top = chain(tmp_dir, LIMIT + 1)
    r = run([lockstep_io, "-r", "-c", "read 0 512", top], timeout=60)
    assert r.returncode != 0
    assert "Backing chain deeper than %d images" % LIMIT in r.stderr
    assert r.stderr.count("Could not open backing file") == 1
    # The limit itself is fine.
    ok = os.path.join(tmp_dir, "l%04d.img" % (LIMIT - 1))
    r = run([lockstep_io, "-r", "-c", "read -P 0 0 512", ok], timeout=60)
    assert r.returncode == 0, r.stderr


# ---- the daemon ------------------------------------------------------------

def test_blockdev_add_self_backed(lockstepd, tmp_dir, self_backed):
    with Daemon(lockstepd, tmp_dir) as d, d.client() as c:
        start = time.monotonic()
        with pytest.raises(QMPError) as e:
            c.cmd("blockdev-add", {
                "driver": "qcow2", "node-name": "a", "read-only": True,
                "file": {"driver": "file", "filename": self_backed}})
        assert time.monotonic() - start < 10
        assert "creates an infinite loop" in e.value.desc
        # Nothing left open, and the monitor still answers.
        assert c.cmd("query-named-block-nodes") == []
        assert "qemu" in c.cmd("query-version")
        fds = len(os.listdir("/proc/%d/fd" % d.proc.pid))
        assert fds < 64, fds


def test_blockdev_reopen_refuses_a_cycle(lockstepd, tmp_dir):
    paths = {}
    for name in ("base", "mid", "top"):
        paths[name] = os.path.join(tmp_dir, name + ".qcow2")
        create(paths[name])
    with Daemon(lockstepd, tmp_dir) as d, d.client() as c:
        c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "base",
                               "backing": None,
                               "file": {"driver": "file",
                                        "filename": paths["base"]}})
        c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "mid",
                               "backing": "base",
                               "file": {"driver": "file",
                                        "filename": paths["mid"]}})
        c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "top",
                               "backing": "mid",
                               "file": {"driver": "file",
                                        "filename": paths["top"]}})
        with pytest.raises(QMPError) as e:
            c.cmd("blockdev-reopen", {"options": [{
                "driver": "qcow2", "node-name": "mid", "backing": "top"}]})
        assert e.value.desc == ("Making 'top' a backing child of 'mid' "
                                "would create a cycle")
        # The graph is unchanged and still answers.
        nodes = {n["node-name"]: n for n in
                 c.cmd("query-named-block-nodes")}
        assert nodes["top"]["backing_file_depth"] == 2


# ---- lockstep-img ------------------------------------------------------------

def test_img_info_chain_loop_like_qemu_img(build_dir, tmp_dir):
    img = built_program(build_dir, "lockstep-img")
    c = os.path.join(tmp_dir, "c.qcow2")
    b = os.path.join(tmp_dir, "b.qcow2")
    create(b)
    create(c, backing="b.qcow2")
    rebase(b, "c.qcow2")
    for fmt in ([], ["--output=json"]):
        r = run([img, "info", "--backing-chain"] + fmt + [c])
        q = run([qemu_img(), "info", "--backing-chain"] + fmt + [c])
        assert r.returncode == q.returncode == 1
        # qemu-img prints nothing but the error, and so do we.
        assert r.stdout == q.stdout == ""
        assert r.stderr.replace("lockstep-img:", "qemu-img:") == q.stderr


def test_img_info_loop_by_inode(build_dir, two_loop):
    """qemu-img compares names: it follows c -> b -> sub/../c -> b ->
    sub/../sub/../c ... until the name is too long.  We compare inodes."""
    img = built_program(build_dir, "lockstep-img")
    r = run([img, "info", "--backing-chain", two_loop])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.endswith("sub/../c.qcow2' creates an infinite loop.\n")


def test_img_info_self_backed(build_dir, self_backed):
    img = built_program(build_dir, "lockstep-img")
    r = run([img, "info", "--backing-chain", self_backed])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("lockstep-img: Backing file '%s' creates an "
                        "infinite loop.\n" % self_backed)
    # Without --backing-chain the image alone is described.
    r = run([img, "info", self_backed])
    assert r.returncode == 0 and "backing file: a.qcow2" in r.stdout


def test_img_info_chain_depth(build_dir, tmp_dir):
    img = built_program(build_dir, "lockstep-img")
    top = chain(tmp_dir, LIMIT + 1)
    r = run([img, "info", "--backing-chain", top])
    assert r.returncode == 1 and r.stdout == ""
    assert "Backing chain deeper than %d images" % LIMIT in r.stderr


def test_img_check_reports_loop(build_dir, tmp_dir, self_backed, two_loop):
    img = built_program(build_dir, "lockstep-img")
    for path in (self_backed, two_loop):
        r = run([img, "check", path])
        assert r.returncode == 1, r.stdout
        assert "No errors" not in r.stdout
        assert r.stderr.startswith("lockstep-img: Could not open '%s': "
                                   % path), r.stderr
        assert "creates an infinite loop" in r.stderr
        r = run([img, "check", "--output=json", path])
        assert r.returncode == 1 and r.stdout == ""
    # A sane chain is still checked as before.
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    create(base)
    create(top, backing="base.qcow2")
    r = run([img, "check", top])
    assert r.returncode == 0, r.stderr
    assert "No errors were found on the image." in r.stdout
