# SPDX-License-Identifier: MIT
"""Fleecing over QMP and NBD with real clients (docs/fleecing.md).

QEMU's image-fleecing flows (docs/fleecing.md "Examples") and its
copy-before-write error-policy tests (section 7.2), driven through
lockstepd's QMP monitor: x-blockdev-insert-filter / -remove-filter (also
as transaction actions) and fleecing-start / fleecing-stop.  The guest is
a writable NBD export on a raw shim over the disk; qemu-io, nbdinfo and
nbdcopy read the snapshot export.  Where cheap, the same flow runs on
qemu-storage-daemon with QEMU's recipe (blockdev-reopen) and the clients'
results are compared.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import run
from qmp_client import Daemon, QMPError

MiB = 1 << 20
SIZE = 64 * MiB

BASE = [(0x5d, 0, 64 << 10), (0xd5, 1 * MiB, 64 << 10),
        (0xdc, 32 * MiB, 64 << 10), (0xcd, SIZE - (64 << 10), 64 << 10)]
OVERWRITES = [(0xab, 0, 64 << 10), (0xad, 0xf8000, 64 << 10),
              (0x1d, 0x2008000, 64 << 10), (0xea, 0x3fe0000, 64 << 10)]
ZEROES = [(0, 0xf8000, 32 << 10), (0, 0x2010000, 32 << 10),
          (0, 0x3fe0000, 64 << 10)]
REMAINDER = [(0xd5, 0x108000, 32 << 10), (0xdc, 32 * MiB, 32 << 10),
             (0xcd, 0x3ff0000, 64 << 10)]


def need(*tools):
    for t in tools:
        if not shutil.which(t):
            pytest.skip("%s is not installed" % t)


def nbd_url(sock, name):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def qemu_io(url, cmds, read_only=False):
    """qemu-io over NBD; returns its output, one line per request result
    (timing lines dropped)."""
    need("qemu-io")
    argv = ["qemu-io", "-f", "raw"]
    if read_only:
        argv.append("-r")
    for c in cmds:
        argv += ["-c", c]
    argv.append(url)
    p = run(argv)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines()
             if not re.search(r"ops; |ops/sec", ln)]
    return "\n".join(lines)


def pattern_cmds(op, pats):
    return ["%s -P 0x%x %d %d" % (op, p, off, ln) for p, off, ln in pats]


def assert_clean(out):
    assert "failed" not in out and "error" not in out.lower(), out


def assert_reads(url, pats):
    for c in pattern_cmds("read", pats):
        assert_clean(qemu_io(url, [c], read_only=True))


def check_base_image(path, fmt, pats):
    p = run(["qemu-img", "info", "--output=json", path])
    assert p.returncode == 0, p.stderr
    for c in pattern_cmds("read", pats):
        out = run(["qemu-io", "-r", "-f", fmt, "-c", c, path])
        assert out.returncode == 0 and "failed" not in out.stdout, \
            (c, out.stdout, out.stderr)


def qemu_img_create(path, fmt, size):
    p = run(["qemu-img", "create", "-q", "-f", fmt, path, str(size)])
    assert p.returncode == 0, p.stderr


class Setup:
    """A daemon with disk0 (qcow2) under a raw shim exported as 'guest',
    and an NBD server on a unix socket."""

    def __init__(self, binary, tmp_dir, name, size=SIZE, fmt="qcow2",
                 disk=None):
        self.tmp = tmp_dir
        self.name = name
        self.nbd = os.path.join(tmp_dir, name + "-nbd.sock")
        self.disk = disk or os.path.join(tmp_dir, name + "-disk." + fmt)
        self.fmt = fmt
        if disk is None:
            qemu_img_create(self.disk, fmt, size)
        self.d = Daemon(binary, tmp_dir, name=name, args=[
            "--blockdev", json.dumps({
                "driver": "file", "node-name": "disk0-file",
                "filename": self.disk, "discard": "unmap"}),
            "--blockdev", json.dumps({
                "driver": fmt, "node-name": "disk0", "file": "disk0-file",
                "discard": "unmap"}),
            "--blockdev", json.dumps({
                "driver": "raw", "node-name": "disk0-front", "file": "disk0",
                "discard": "unmap"}),
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.nbd,
            "--export", json.dumps({
                "type": "nbd", "id": "guest", "node-name": "disk0-front",
                "name": "guest", "writable": True}),
        ])
        self.c = self.d.client()

    def url(self, export):
        return nbd_url(self.nbd, export)

    def guest_write(self, pats):
        out = qemu_io(self.url("guest"), pattern_cmds("write", pats))
        assert_clean(out)

    def close(self):
        self.c.close()
        rc = self.d.stop()
        assert rc == 0, self.d.stderr

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.c.close()
            self.d.stop()


def temp_opts(tmp_dir, name, kind, size=SIZE):
    path = os.path.join(tmp_dir, "%s-temp.%s" % (name, kind))
    if kind == "raw":
        with open(path, "wb") as f:
            f.truncate(size)
        # QEMU's fleecing-format variant: the file driver alone.
        return path, {"driver": "file", "node-name": "fl-temp",
                      "filename": path, "discard": "unmap"}
    qemu_img_create(path, "qcow2", size)
    return path, {"driver": "qcow2", "node-name": "fl-temp",
                  "discard": "unmap",
                  "file": {"driver": "file", "filename": path,
                           "discard": "unmap"}}


# ---- Snapshot, three ways ----------------------------------------------

def snapshot_begin(s, how, temp, bitmap=None, discard=False, extra=None):
    """Build the fleecing graph; returns the snapshot export name.
    how: "start" (fleecing-start), "insert" (x-blockdev-insert-filter in a
    transaction) or "reopen" (QEMU's recipe, also for qemu-storage-daemon).
    """
    c = s.c
    cbw = {"driver": "copy-before-write", "node-name": "fl-cbw",
           "file": "disk0", "target": "fl-temp"}
    if bitmap:
        cbw["bitmap"] = bitmap
    cbw.update(extra or {})
    if how == "start":
        args = {"id": "fl", "node": "disk0", "temp": temp,
                "discard": discard}
        if bitmap:
            args["bitmap"] = bitmap
        for k in ("on-cbw-error", "cbw-timeout"):
            if k in cbw:
                args[k] = cbw[k]
        info = c.cmd("fleecing-start", args)
        assert info["cbw"] == "fl-cbw" and info["snapshot-access"] == \
            "fl-access" and info["export"] == "fl"
        return info["export-name"]
    c.cmd("blockdev-add", temp)
    c.cmd("blockdev-add", cbw)
    if how == "insert":
        c.cmd("transaction", {"actions": [
            {"type": "x-blockdev-insert-filter",
             "data": {"node-name": "fl-cbw"}}]})
    else:
        c.cmd("blockdev-reopen", {"options": [
            {"driver": "raw", "node-name": "disk0-front", "file": "fl-cbw",
             "discard": "unmap"}]})
    c.cmd("blockdev-add", {"driver": "snapshot-access",
                           "node-name": "fl-access", "file": "fl-cbw",
                           "discard": "unmap" if discard else "ignore"})
    c.cmd("block-export-add", {"type": "nbd", "id": "fl",
                               "node-name": "fl-access", "name": "fl",
                               "writable": discard})
    return "fl"


def snapshot_end(s, how):
    c = s.c
    if how == "start":
        c.cmd("fleecing-stop", {"id": "fl"})
        assert c.cmd("query-fleecing") == []
        return
    c.cmd("block-export-del", {"id": "fl", "mode": "hard"})
    c.wait_event("BLOCK_EXPORT_DELETED")
    if how == "insert":
        # While the snapshot-access node reads through it, the filter keeps
        # the guest's writes off the disk: it goes first (QEMU's order).
        c.cmd("blockdev-del", {"node-name": "fl-access"})
        c.cmd("x-blockdev-remove-filter", {"node-name": "fl-cbw"})
    else:
        c.cmd("blockdev-del", {"node-name": "fl-access"})
        c.cmd("blockdev-reopen", {"options": [
            {"driver": "raw", "node-name": "disk0-front", "file": "disk0",
             "discard": "unmap"}]})
    c.cmd("blockdev-del", {"node-name": "fl-cbw"})
    c.cmd("blockdev-del", {"node-name": "fl-temp"})


def node_names(c):
    return sorted(n["node-name"] for n in c.cmd("query-named-block-nodes"))


def image_fleecing(binary, tmp_dir, name, how, temp_kind, use_bitmap):
    """QEMU's image-fleecing variants 3 and 4; returns what the clients saw."""
    seen = []
    with Setup(binary, tmp_dir, name) as s:
        bitmap = None
        if use_bitmap:
            s.c.cmd("block-dirty-bitmap-add", {"node": "disk0",
                                               "name": "bitmap0"})
            bitmap = {"node": "disk0", "name": "bitmap0"}
        s.guest_write(BASE)
        before = node_names(s.c)
        _, temp = temp_opts(tmp_dir, name, temp_kind)
        exp = snapshot_begin(s, how, temp, bitmap=bitmap)
        url = s.url(exp)
        if how != "reopen":
            assert {"fl-temp", "fl-cbw", "fl-access"} <= set(node_names(s.c))
            assert "fl" in [e["id"] for e in s.c.cmd("query-block-exports")]
        for phase in ("sanity", "after overwrites"):
            for c in pattern_cmds("read", BASE + ZEROES):
                seen.append((phase, c, qemu_io(url, [c], read_only=True)))
            if phase == "sanity":
                s.guest_write(OVERWRITES)
        snapshot_end(s, how)
        assert node_names(s.c) == before
        # The guest still reads and writes the disk itself.
        assert_clean(qemu_io(s.url("guest"),
                             pattern_cmds("read", OVERWRITES + REMAINDER)))
    check_base_image(s.disk, "qcow2", OVERWRITES + REMAINDER)
    return seen


def check_seen(seen, use_bitmap):
    zero_cmds = pattern_cmds("read", ZEROES)
    for phase, c, out in seen:
        if use_bitmap and c in zero_cmds:
            # Outside the bitmap: EACCES, EINVAL over NBD as in QEMU.
            assert "read failed: Invalid argument" in out, (phase, c, out)
        else:
            assert_clean(out)
            assert "read %d/" % int(c.split()[-1]) in out, (phase, c, out)


@pytest.mark.parametrize("how", ["start", "insert"])
@pytest.mark.parametrize("temp_kind", ["raw", "qcow2"])
def test_image_fleecing(lockstepd, tmp_dir, how, temp_kind):
    check_seen(image_fleecing(lockstepd, tmp_dir, "ours", how, temp_kind,
                              False), False)


@pytest.mark.parametrize("how", ["start", "insert"])
def test_image_fleecing_bitmap(lockstepd, tmp_dir, how):
    check_seen(image_fleecing(lockstepd, tmp_dir, "ours", how, "qcow2",
                              True), True)


@pytest.mark.parametrize("use_bitmap", [False, True])
def test_image_fleecing_like_qsd(lockstepd, qsd, tmp_dir, use_bitmap):
    """The clients see the same through fleecing-start on lockstepd as
    through QEMU's recipe on qemu-storage-daemon."""
    ours = image_fleecing(lockstepd, tmp_dir, "ours", "start", "raw",
                          use_bitmap)
    theirs = image_fleecing(qsd, tmp_dir, "qsd", "reopen", "raw", use_bitmap)
    check_seen(theirs, use_bitmap)
    assert ours == theirs


# ---- Discard through the snapshot export --------------------------------

def allocated(path):
    return os.stat(path).st_blocks * 512


def snapshot_discard(binary, tmp_dir, name, how):
    with Setup(binary, tmp_dir, name) as s:
        s.guest_write(BASE)
        path, temp = temp_opts(tmp_dir, name, "raw")
        exp = snapshot_begin(s, how, temp, discard=True)
        url = s.url(exp)
        s.guest_write(OVERWRITES)           # copies 6 clusters to the temp
        assert allocated(path) >= 6 * (64 << 10)
        held = allocated(path)
        assert_reads(url, BASE[:1])
        # Writes are refused, discard goes through.
        out = qemu_io(url, ["write -P 1 0 64k"])
        assert "write failed: Operation not supported" in out, out
        assert_clean(qemu_io(url, ["discard 0 64k"]))
        out = qemu_io(url, ["read 0 64k"], read_only=True)
        assert "read failed: Invalid argument" in out, out
        assert allocated(path) <= held - (64 << 10)
        # The rest still reads; a guest rewrite there copies nothing new.
        assert_reads(url, BASE[1:])
        s.guest_write([(0x77, 0, 64 << 10)])
        assert allocated(path) <= held - (64 << 10)
        # Discard everything: the temp is empty again.
        assert_clean(qemu_io(url, ["discard 0 %d" % SIZE]))
        assert allocated(path) == 0
        out = qemu_io(url, ["read 1M 64k"], read_only=True)
        assert "read failed: Invalid argument" in out, out
        snapshot_end(s, how)


@pytest.mark.parametrize("how", ["start", "insert"])
def test_snapshot_discard(lockstepd, tmp_dir, how):
    snapshot_discard(lockstepd, tmp_dir, "ours", how)


def test_snapshot_discard_qsd(qsd, tmp_dir):
    """The same checks hold for qemu-storage-daemon with QEMU's recipe."""
    snapshot_discard(qsd, tmp_dir, "qsd", "reopen")


# ---- Push backup with fleecing ------------------------------------------

def test_push_backup_with_fleecing(lockstepd, tmp_dir):
    """7.1 variant 5: blockdev-backup from the snapshot-access node while
    the guest overwrites; the backup equals the snapshot."""
    target = os.path.join(tmp_dir, "target.qcow2")
    qemu_img_create(target, "qcow2", SIZE)
    with Setup(lockstepd, tmp_dir, "ours") as s:
        c = s.c
        s.guest_write(BASE)
        _, temp = temp_opts(tmp_dir, "ours", "qcow2")
        snapshot_begin(s, "start", temp)
        c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "target",
                               "file": {"driver": "file",
                                        "filename": target}})
        try:
            c.cmd("blockdev-backup", {"job-id": "push-backup",
                                      "device": "fl-access",
                                      "target": "target", "sync": "full",
                                      "speed": 1})
        except QMPError as e:
            pytest.xfail("blockdev-backup from snapshot-access on main: %s"
                         % e)
        s.guest_write(OVERWRITES)
        jobs = c.cmd("query-block-jobs")
        assert len(jobs) == 1, "backup finished too fast, COW is not tested"
        c.cmd("block-job-set-speed", {"device": "push-backup", "speed": 0})
        ev = c.wait_event("BLOCK_JOB_COMPLETED", timeout=60)
        assert ev["data"]["device"] == "push-backup"
        assert ev["data"]["len"] == SIZE and ev["data"]["offset"] == SIZE
        assert "error" not in ev["data"], ev
        c.cmd("blockdev-del", {"node-name": "target"})
        snapshot_end(s, "start")
    check_base_image(target, "qcow2", BASE + ZEROES)
    check_base_image(s.disk, "qcow2", OVERWRITES + REMAINDER)


# ---- Error policies (7.2) ------------------------------------------------

def cbw_policy(lockstepd, tmp_dir, policy, how, failing):
    """1 MiB disk full of 0xcd; the temp is raw over blkdebug, failing
    its first write (failing) or slow (x-delay-ns 2 s, cbw-timeout 1)."""
    size = 1 * MiB
    with Setup(lockstepd, tmp_dir, "ours", size=size) as s:
        s.guest_write([(0xcd, 0, size)])
        path = os.path.join(tmp_dir, "temp.raw")
        with open(path, "wb") as f:
            f.truncate(size)
        bd = {"driver": "blkdebug",
              "image": {"driver": "file", "filename": path}}
        extra = {"on-cbw-error": policy}
        if failing:
            bd["inject-error"] = [{"event": "write_aio", "errno": 5,
                                   "once": True}]
        else:
            bd["x-delay-ns"] = 2 * 10**9
            extra["cbw-timeout"] = 1
        temp = {"driver": "raw", "node-name": "fl-temp", "file": bd}
        exp = snapshot_begin(s, how, temp, extra=extra)
        url = s.url(exp)
        out = qemu_io(s.url("guest"), ["write -P 0x11 0 64k"])
        snap = qemu_io(url, ["read -P 0xcd 0 1M"], read_only=True)
        snapshot_end(s, how)
    return out, snap


@pytest.mark.parametrize("how", ["start", "insert"])
@pytest.mark.parametrize("failing", [True, False],
                         ids=["inject-error", "timeout"])
def test_break_guest_write(lockstepd, tmp_dir, how, failing):
    out, snap = cbw_policy(lockstepd, tmp_dir, "break-guest-write", how,
                           failing)
    # EIO passes as it is; ETIMEDOUT has no NBD code and becomes EINVAL,
    # as QEMU's server maps it.
    err = "Input/output error" if failing else "Invalid argument"
    assert "write failed: %s" % err in out, out
    assert_clean(snap)


@pytest.mark.parametrize("how", ["start", "insert"])
@pytest.mark.parametrize("failing", [True, False],
                         ids=["inject-error", "timeout"])
def test_break_snapshot(lockstepd, tmp_dir, how, failing):
    out, snap = cbw_policy(lockstepd, tmp_dir, "break-snapshot", how,
                           failing)
    assert_clean(out)
    assert "read failed: Invalid argument" in snap, snap


# ---- fleecing-start / -stop: round trip and errors -----------------------

def test_fleecing_start_stop_round_trip(lockstepd, tmp_dir):
    need("nbdinfo", "nbdcopy")
    with Setup(lockstepd, tmp_dir, "ours") as s:
        c = s.c
        s.guest_write(BASE)
        path = os.path.join(tmp_dir, "temp.qcow2")
        qemu_img_create(path, "qcow2", SIZE)
        before = node_names(c)
        info = c.cmd("fleecing-start", {
            "id": "bk", "node": "disk0", "export-name": "disk0-snap",
            "temp": {"filename": path, "format": "qcow2"}})
        assert info == {"id": "bk", "node": "disk0", "temp": "bk-temp",
                        "cbw": "bk-cbw", "snapshot-access": "bk-access",
                        "export": "bk", "export-name": "disk0-snap",
                        "temp-created": True}
        assert c.cmd("query-fleecing") == [info]
        assert set(node_names(c)) == set(before) | {"bk-temp", "bk-temp-file",
                                                      "bk-cbw", "bk-access"}
        [e] = [e for e in c.cmd("query-block-exports") if e["id"] == "bk"]
        assert e["node-name"] == "bk-access"
        # The guest export now goes through the filter.
        graph = c.cmd("x-debug-query-block-graph")
        ids = {n["id"]: n["name"] for n in graph["nodes"]}
        parents = {(ids[e["parent"]], ids[e["child"]], e["name"])
                   for e in graph["edges"]}
        assert ("disk0-front", "bk-cbw", "file") in parents
        assert ("bk-cbw", "disk0", "file") in parents
        # Same id twice, unknown node: refused, nothing changes.
        e1 = c.error("fleecing-start", {"id": "bk", "node": "disk0",
                                        "temp": "bk-temp"})
        assert e1["desc"] == "Fleecing 'bk' already exists"
        e2 = c.error("fleecing-start", {"id": "x", "node": "nope",
                                        "temp": {"filename": path}})
        assert "nope" in e2["desc"]
        s.guest_write(OVERWRITES)
        url = s.url("disk0-snap")
        p = run(["nbdinfo", "--map", url])
        assert p.returncode == 0, p.stderr
        mapped = p.stdout
        copy = os.path.join(tmp_dir, "copy.raw")
        p = run(["nbdcopy", url, copy])
        assert p.returncode == 0, p.stderr
        c.cmd("fleecing-stop", {"id": "bk"})
        assert c.cmd("query-fleecing") == []
        assert node_names(c) == before
        assert all(e["id"] != "bk" for e in c.cmd("query-block-exports"))
        e3 = c.error("fleecing-stop", {"id": "bk"})
        assert e3["desc"] == "Fleecing 'bk' not found"
    check_base_image(copy, "raw", BASE + ZEROES)
    assert "data" in mapped, mapped


def test_fleecing_start_needs_nbd_server(lockstepd, tmp_dir):
    with Daemon(lockstepd, tmp_dir) as d, d.client() as c:
        c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n0",
                               "size": MiB})
        c.cmd("blockdev-add", {"driver": "null-co", "node-name": "t0",
                               "size": MiB})
        before = node_names(c)
        e = c.error("fleecing-start", {"id": "f", "node": "n0",
                                       "temp": "t0"})
        assert e["desc"].startswith("NBD server not running")
        assert "nbd-server-start" in e["desc"]
        assert node_names(c) == before
        # A failure after the insertion (a clashing export id) undoes it.
        nbd = os.path.join(tmp_dir, "nbd.sock")
        c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                            "data": {"path": nbd}}})
        c.cmd("block-export-add", {"type": "nbd", "id": "f",
                                   "node-name": "t0"})
        e = c.error("fleecing-start", {"id": "f", "node": "n0",
                                       "temp": "t0"})
        assert node_names(c) == before, e
        assert c.cmd("query-fleecing") == []
        c.cmd("block-export-del", {"id": "f"})
        # A bad temp description.
        e = c.error("fleecing-start", {"id": "f", "node": "n0",
                                       "temp": {"filename": "/x",
                                                "format": "vmdk"}})
        assert e["desc"] == \
            "Parameter 'temp.format' does not accept value 'vmdk'"
        e = c.error("fleecing-start", {"id": "f", "node": "n0", "temp": 3})
        assert "temp" in e["desc"]
        c.cmd("nbd-server-stop")


# ---- x-blockdev-insert-filter / -remove-filter ---------------------------

def parents_of(c, name):
    graph = c.cmd("x-debug-query-block-graph")
    ids = {n["id"]: n["name"] for n in graph["nodes"]}
    return sorted(ids[e["parent"]] for e in graph["edges"]
                  if ids[e["child"]] == name)


def test_insert_remove_filter_errors(lockstepd, tmp_dir):
    with Daemon(lockstepd, tmp_dir) as d, d.client() as c:
        c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n0",
                               "size": MiB})
        c.cmd("blockdev-add", {"driver": "raw", "node-name": "r0",
                               "file": "n0"})
        e = c.error("x-blockdev-insert-filter", {"node-name": "zz"})
        assert e["desc"] == "Cannot find device='' nor node-name='zz'"
        e = c.error("x-blockdev-insert-filter", {"node-name": "r0"})
        assert e["desc"] == "Node 'r0' is not a filter with a 'file' child"
        e = c.error("x-blockdev-insert-filter", {})
        assert e["desc"] == "Parameter 'node-name' is missing"
        c.cmd("blockdev-add", {"driver": "blkdebug", "node-name": "f0",
                               "image": "n0"})
        assert parents_of(c, "n0") == ["f0", "r0"]
        c.cmd("x-blockdev-insert-filter", {"node-name": "f0"})
        assert parents_of(c, "n0") == ["f0"]
        assert parents_of(c, "f0") == ["r0"]
        e = c.error("x-blockdev-insert-filter", {"node-name": "f0"})
        assert "already in use" in e["desc"]
        c.cmd("x-blockdev-remove-filter", {"node-name": "f0"})
        assert parents_of(c, "n0") == ["f0", "r0"]
        assert parents_of(c, "f0") == []
        c.cmd("blockdev-del", {"node-name": "f0"})


def disk_bitmaps(c):
    for n in c.cmd("query-named-block-nodes", {"flat": True}):
        if n["node-name"] == "disk0":
            return {b["name"]: b for b in n.get("dirty-bitmaps", [])}
    raise AssertionError("no disk0")


def test_transaction_insert_atomic(lockstepd, tmp_dir):
    """Insertion and bitmap rotation at one instant; a failing action
    rolls the insertion back."""
    with Setup(lockstepd, tmp_dir, "ours", size=4 * MiB) as s:
        c = s.c
        c.cmd("block-dirty-bitmap-add", {"node": "disk0", "name": "bk-1"})
        s.guest_write([(0x11, 0, 64 << 10)])
        path = os.path.join(tmp_dir, "temp.raw")
        with open(path, "wb") as f:
            f.truncate(4 * MiB)
        c.cmd("blockdev-add", {"driver": "file", "node-name": "fl-temp",
                               "filename": path})
        c.cmd("blockdev-add", {"driver": "copy-before-write",
                               "node-name": "fl-cbw", "file": "disk0",
                               "target": "fl-temp",
                               "bitmap": {"node": "disk0", "name": "bk-1"}})
        rotate = [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk0", "name": "bk-2"}},
            {"type": "block-dirty-bitmap-disable",
             "data": {"node": "disk0", "name": "bk-1"}},
            {"type": "x-blockdev-insert-filter",
             "data": {"node-name": "fl-cbw"}},
        ]
        # Fails at the last action: nothing happened.
        for bad in ({"type": "abort", "data": {}},
                    {"type": "block-dirty-bitmap-add",
                     "data": {"node": "disk0", "name": "bk-1"}},
                    {"type": "x-blockdev-insert-filter",
                     "data": {"node-name": "fl-cbw"}}):
            e = c.error("transaction", {"actions": rotate + [bad]})
            assert e["desc"], e
            assert parents_of(c, "disk0") == ["disk0-front", "fl-cbw"]
            assert parents_of(c, "fl-cbw") == []
            bms = disk_bitmaps(c)
            assert set(bms) == {"bk-1"} and bms["bk-1"]["recording"]
            # The guest did not go through the filter: a write does not
            # copy anything.
            s.guest_write([(0x22, 64 << 10, 64 << 10)])
            assert os.stat(path).st_blocks == 0
        # Now for real.
        c.cmd("transaction", {"actions": rotate})
        assert parents_of(c, "disk0") == ["fl-cbw"]
        assert parents_of(c, "fl-cbw") == ["disk0-front"]
        s.guest_write([(0x33, 0, 64 << 10)])
        assert os.stat(path).st_blocks > 0
        c.cmd("blockdev-add", {"driver": "snapshot-access",
                               "node-name": "fl-access", "file": "fl-cbw"})
        c.cmd("block-export-add", {"type": "nbd", "id": "fl",
                                   "node-name": "fl-access", "name": "fl"})
        assert_reads(s.url("fl"), [(0x11, 0, 64 << 10)])
        # While the snapshot is read through it, the filter cannot come
        # out from under the writing guest (QEMU's permissions: the
        # guest's writes would change the snapshot).
        e = c.error("transaction", {"actions": [
            {"type": "x-blockdev-remove-filter",
             "data": {"node-name": "fl-cbw"}}]})
        assert e["desc"] == (
            "Permission conflict on node 'disk0': permissions 'write' are "
            "both required by node 'disk0-front' (uses node 'disk0' as "
            "'file' child) and unshared by node 'fl-cbw' (uses node 'disk0' "
            "as 'file' child).")
        assert parents_of(c, "fl-cbw") == ["disk0-front", "fl-access"]
        c.cmd("block-export-del", {"id": "fl"})
        c.wait_event("BLOCK_EXPORT_DELETED")
        c.cmd("blockdev-del", {"node-name": "fl-access"})
        # Removal in a failing transaction is rolled back too.
        e = c.error("transaction", {"actions": [
            {"type": "x-blockdev-remove-filter",
             "data": {"node-name": "fl-cbw"}},
            {"type": "abort", "data": {}}]})
        assert e["desc"] == "Transaction aborted using Abort action"
        assert parents_of(c, "fl-cbw") == ["disk0-front"]
        c.cmd("transaction", {"actions": [
            {"type": "x-blockdev-remove-filter",
             "data": {"node-name": "fl-cbw"}}]})
        assert parents_of(c, "fl-cbw") == []
        assert parents_of(c, "disk0") == ["disk0-front", "fl-cbw"]
        for n in ("fl-cbw", "fl-temp"):
            c.cmd("blockdev-del", {"node-name": n})


@pytest.mark.parametrize("policy", ["break-guest-write", "break-snapshot"])
def test_cbw_error_policy_like_qsd(lockstepd, qsd, tmp_dir, policy):
    """A failing temp (blkdebug inject-error) under both policies: the
    clients see the same through lockstepd's fleecing-start as through
    QEMU's recipe on qemu-storage-daemon."""
    ours = cbw_policy(lockstepd, tmp_dir, policy, "start", True)
    theirs = cbw_policy(qsd, tmp_dir, policy, "reopen", True)
    assert ours == theirs


def test_fleecing_start_incremental_with_actions(lockstepd, tmp_dir):
    """fleecing-start with a bitmap and the bitmap rotation as actions:
    one instant; a failing action undoes everything."""
    need("nbdinfo")
    with Setup(lockstepd, tmp_dir, "ours") as s:
        c = s.c
        c.cmd("block-dirty-bitmap-add", {"node": "disk0", "name": "bk-1"})
        s.guest_write(BASE)
        path, temp = temp_opts(tmp_dir, "ours", "qcow2")
        rotate = [{"type": "block-dirty-bitmap-add",
                   "data": {"node": "disk0", "name": "bk-2"}},
                  {"type": "block-dirty-bitmap-disable",
                   "data": {"node": "disk0", "name": "bk-1"}}]
        args = {"id": "fl", "node": "disk0", "temp": temp,
                "bitmap": {"node": "disk0", "name": "bk-1"},
                "on-cbw-error": "break-snapshot", "cbw-timeout": 45}
        before = node_names(c)
        e = c.error("fleecing-start", dict(args, actions=rotate + [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk0", "name": "bk-1"}}]))
        assert e["desc"] == "Bitmap already exists: bk-1"
        assert node_names(c) == before
        assert set(disk_bitmaps(c)) == {"bk-1"}
        assert disk_bitmaps(c)["bk-1"]["recording"]
        assert parents_of(c, "disk0") == ["disk0-front"]
        c.cmd("fleecing-start", dict(args, actions=rotate))
        bms = disk_bitmaps(c)
        assert not bms["bk-1"]["recording"] and bms["bk-1"]["busy"]
        assert bms["bk-2"]["recording"] and bms["bk-2"]["count"] == 0
        url = s.url("fl")
        p = run(["nbdinfo", "--map=qemu:dirty-bitmap:bk-1", url])
        assert p.returncode == 0, p.stderr
        dirty = [tuple(int(x) for x in ln.split()[:2])
                 for ln in p.stdout.splitlines() if "dirty" in ln]
        assert dirty == [(off, 64 << 10) for _, off, _ in BASE], p.stdout
        s.guest_write(OVERWRITES)
        assert disk_bitmaps(c)["bk-2"]["count"] == 6 * (64 << 10)
        assert_reads(url, BASE)
        out = qemu_io(url, ["read 0x200000 64k"], read_only=True)
        assert "read failed: Invalid argument" in out, out
        c.cmd("fleecing-stop", {"id": "fl"})
        c.cmd("block-dirty-bitmap-remove", {"node": "disk0", "name": "bk-1"})
        assert node_names(c) == before


def test_fleecing_stop_with_connected_client(lockstepd, tmp_dir):
    """fleecing-stop deletes the export hard: a connected reader is cut
    off, the nodes go away, and the guest keeps its disk."""
    nbd = pytest.importorskip("nbd")
    with Setup(lockstepd, tmp_dir, "ours", size=4 * MiB) as s:
        c = s.c
        s.guest_write([(0x42, 0, 64 << 10)])
        path = os.path.join(tmp_dir, "temp.raw")
        with open(path, "wb") as f:
            f.truncate(4 * MiB)
        before = node_names(c)
        c.cmd("fleecing-start", {"id": "fl", "node": "disk0",
                                 "temp": {"filename": path}})
        h = nbd.NBD()
        h.connect_uri(s.url("fl"))
        assert h.pread(64 << 10, 0) == b"\x42" * (64 << 10)
        c.cmd("fleecing-stop", {"id": "fl"})
        ev = c.wait_event("BLOCK_EXPORT_DELETED")
        assert ev["data"] == {"id": "fl"}
        with pytest.raises(nbd.Error):
            h.pread(64 << 10, 0)
        del h
        assert node_names(c) == before
        s.guest_write([(0x43, 0, 64 << 10)])
        # fleecing-stop after block-export-del is fine too.
        c.cmd("fleecing-start", {"id": "fl", "node": "disk0",
                                 "temp": {"filename": path}})
        c.cmd("block-export-del", {"id": "fl"})
        c.wait_event("BLOCK_EXPORT_DELETED")
        c.cmd("fleecing-stop", {"id": "fl"})
        assert node_names(c) == before
