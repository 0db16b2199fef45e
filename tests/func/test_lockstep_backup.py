# SPDX-License-Identifier: MIT
"""lockstep-backup: pull-mode (fleecing) full and incremental backups
across daemon restarts, against lockstepd and qemu-storage-daemon 7.2
(docs/backup.md).

A daemon serves a qcow2 image as node "disk" and exports it writable as
"guest" over NBD; qemu-io writes through that export stand in for the
guest.  Before each backup the test copies the guest's disk (idle) into a
raw file: the disk as of the snapshot.  The tool runs with
--progress=json; at its "snapshot" event the test stops it, writes more
through the guest export (those writes must not be in the backup), and
lets it go on.  Every chain is restored and compared byte for byte with
the disk as of its snapshot; qemu-img check must be clean on every image
the tool wrote; failures must leave no complete-looking backup, the
manifest unchanged, and the daemon without the fleecing nodes.
"""
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import built_program, run
from qmp_client import Daemon

MiB = 1 << 20
SIZE = 64 * MiB


def need(*tools):
    for t in tools:
        if not shutil.which(t):
            pytest.skip("%s is not installed" % t)


@pytest.fixture(scope="module")
def tool(build_dir):
    return built_program(build_dir, "lockstep-backup")


def no_sanitizer_report(text):
    for bad in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
        assert bad not in text, text


def run_tool(argv):
    """Run lockstep-backup (verify, restore, ...) to the end."""
    p = run(argv)
    no_sanitizer_report(p.stderr)
    return p


def qemu_img(*args):
    p = run(["qemu-img"] + list(args))
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def qemu_io_img(path, *cmds):
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + [path])
    assert p.returncode == 0 and "failed" not in p.stdout, \
        (p.stdout, p.stderr)


class Disk:
    """A daemon serving image as node "disk", exported as "guest"."""

    def __init__(self, binary, tmp_dir, image, name="d", nbd=True):
        self.nbd = os.path.join(tmp_dir, name + "-nbd.sock") if nbd else None
        args = ["--blockdev", json.dumps({
            "driver": "qcow2", "node-name": "disk",
            "file": {"driver": "file", "filename": image}})]
        # The tool's own monitor: QSD's serves one client at a time.
        self.tool_qmp = os.path.join(tmp_dir, name + "-tool.sock")
        args += ["--chardev", "socket,id=mon1,path=%s,server=on,wait=off"
                 % self.tool_qmp, "--monitor", "chardev=mon1"]
        if nbd:
            args += ["--nbd-server", "addr.type=unix,addr.path=%s" % self.nbd,
                     "--export", json.dumps({
                         "type": "nbd", "id": "guest", "node-name": "disk",
                         "name": "guest", "writable": True})]
        self.d = Daemon(binary, tmp_dir, name=name, args=args)
        self.c = self.d.client()

    @property
    def qmp(self):
        return self.tool_qmp

    def url(self):
        return "nbd+unix:///guest?socket=%s" % self.nbd

    def write(self, *cmds):
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        p = run(argv + [self.url()])
        assert p.returncode == 0 and "failed" not in p.stdout, \
            (p.stdout, p.stderr)

    def snapshot(self, path):
        """The guest's disk now (nothing writes), as a raw file."""
        qemu_img("convert", "-f", "raw", "-O", "raw", self.url(), path)
        return path

    def bitmaps(self):
        for n in self.c.cmd("query-named-block-nodes"):
            if n["node-name"] == "disk":
                return {b["name"]: b for b in n.get("dirty-bitmaps", [])}
        raise AssertionError("no node disk")

    def assert_clean(self):
        """Nothing of a backup is left on the daemon."""
        exports = [e["id"] for e in self.c.cmd("query-block-exports")]
        assert exports == (["guest"] if self.nbd else []), exports
        assert self.c.cmd("query-jobs") == []
        nodes = [n["node-name"] for n in
                 self.c.cmd("query-named-block-nodes")]
        assert not [n for n in nodes if n.startswith("lsbk-")], nodes

    def quit(self):
        self.c.cmd("quit")
        self.c.close()
        assert self.d.stop() == 0, self.d.stderr

    def kill(self):
        self.c.close()
        self.d.proc.send_signal(signal.SIGKILL)
        self.d.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.d.proc.poll() is None:
            self.c.close()
            self.d.stop()


@pytest.fixture
def image(tmp_dir):
    """64 MiB: data at 0 (4M), 20M (2M) and 60M (1M), the rest zero."""
    path = os.path.join(tmp_dir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", path, str(SIZE))
    qemu_io_img(path, "write -P 0x11 0 4M", "write -P 0x22 20M 2M",
                "write -P 0x33 60M 1M")
    return path


class Run:
    """One lockstep-backup run with --progress=json."""

    def __init__(self, tool, args, cwd=None):
        self.argv = [tool] + list(args) + ["--progress=json"]
        self.p = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=cwd)
        self.events = []

    def until(self, kind):
        """Read events until one of type kind (None at the end)."""
        for line in self.p.stdout:
            ev = json.loads(line)
            self.events.append(ev)
            if ev["type"] == kind:
                return ev
        return None

    def pause_at_snapshot(self):
        if not self.until("snapshot"):
            self.finish()
            raise AssertionError((self.rc, self.events, self.stderr))
        self.p.send_signal(signal.SIGSTOP)

    def resume(self):
        self.p.send_signal(signal.SIGCONT)

    def finish(self, timeout=120):
        out, self.stderr = self.p.communicate(timeout=timeout)
        for line in out.splitlines():
            self.events.append(json.loads(line))
        self.rc = self.p.returncode
        last = self.events[-1] if self.events else {}
        no_sanitizer_report(self.stderr)
        return last

    def done(self):
        last = self.finish()
        assert self.rc == 0 and last["type"] == "done", \
            (self.rc, self.events, self.stderr)
        return last


def backup(tool, disk, dirpath, kind, *extra, writes_after=()):
    """Run one backup; with writes_after, write those through the guest
    while the tool is stopped just after its snapshot."""
    args = [kind, "--socket", disk.qmp, "--node", "disk", "--to", dirpath]
    if disk.nbd:
        args += ["--nbd-socket", disk.nbd]
    r = Run(tool, args + list(extra))
    if writes_after:
        r.pause_at_snapshot()
        try:
            disk.write(*writes_after)
        finally:
            r.resume()
    return r


def manifest(dirpath):
    with open(os.path.join(dirpath, "manifest.json")) as f:
        return json.load(f)


def restore_equals(tool, dirpath, at, expected, tmp_dir):
    """Restore the chain ending at backup 'at' (raw) and compare it byte
    for byte with the raw file expected; the qcow2 restore too."""
    raw = os.path.join(tmp_dir, "restored-%s.raw" % at)
    q = os.path.join(tmp_dir, "restored-%s.qcow2" % at)
    for fmt, out in (("raw", raw), ("qcow2", q)):
        p = run_tool([tool, "restore", dirpath, "--at", at, "--to", out,
                 "--format", fmt])
        assert p.returncode == 0, (p.stdout, p.stderr)
    assert os.path.getsize(raw) == os.path.getsize(expected)
    assert filecmp.cmp(raw, expected, shallow=False), at
    p = run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", q, expected])
    assert p.returncode == 0, (p.stdout, p.stderr)
    qemu_check_clean(q)
    os.unlink(raw)
    os.unlink(q)


def qemu_check_clean(path):
    p = run(["qemu-img", "check", path])
    assert p.returncode == 0 and "No errors were found" in p.stdout, \
        (path, p.stdout, p.stderr)


def check_all(tool, dirpath):
    """qemu-img check on every image, verify on the chain, and each
    image's backing file is the previous backup (qemu-img info)."""
    m = manifest(dirpath)
    for e in m["backups"]:
        path = os.path.join(dirpath, e["file"])
        qemu_check_clean(path)
        info = json.loads(qemu_img("info", "--output=json", path))
        assert info.get("backing-filename") == e.get("backing"), (e, info)
        if e.get("backing"):
            assert info["backing-filename-format"] == "qcow2"
    p = run_tool([tool, "verify", dirpath])
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "%d backups ok" % len(m["backups"]) in p.stdout, p.stdout
    return m


def files_of(dirpath):
    return sorted(f for f in os.listdir(dirpath) if f != ".lock")


# ---- Flow 1: pull, across a restart -------------------------------------

@pytest.mark.parametrize("daemon", ["lockstepd", "qsd"])
def test_pull_incremental_across_restart(tool, lockstepd, qsd, image,
                                         tmp_dir, daemon):
    """Day 0: full backup through a fleecing export, bitmap created in
    the snapshot's transaction; the daemon restarts; the guest writes;
    day 1: incremental, reading only the extents qemu:dirty-bitmap marks,
    into an overlay of day 0's backup.  Each chain restores exactly the
    disk at its snapshot, though the guest wrote after it."""
    need("qemu-io", "qemu-img")
    binary = lockstepd if daemon == "lockstepd" else qsd
    bk = os.path.join(tmp_dir, "bk")
    with Disk(binary, tmp_dir, image) as d:
        s0 = d.snapshot(os.path.join(tmp_dir, "s0.raw"))
        full = backup(tool, d, bk, "full",
                      writes_after=["write -P 0x44 1M 64k",
                                    "write -P 0x45 30M 128k"]).done()
        assert full["bytes-read"] == 7 * MiB       # the allocated data
        assert full["kind"] == "full"
        b0 = full["bitmap"]
        bm = d.bitmaps()
        assert list(bm) == [b0] and bm[b0]["persistent"], bm
        assert bm[b0]["recording"] and bm[b0]["count"] == 3 * 64 * 1024
        d.assert_clean()
        d.quit()
    restore_equals(tool, bk, full["file"][:-6], s0, tmp_dir)

    with Disk(binary, tmp_dir, image, name="d1") as d:
        d.write("write -P 0x55 2M 64k", "write -P 0x56 40M 1M",
                "write -z 20M 64k")
        dirty = d.bitmaps()[b0]["count"]
        s1 = d.snapshot(os.path.join(tmp_dir, "s1.raw"))
        inc = backup(tool, d, bk, "incremental",
                     writes_after=["write -P 0x66 2M 64k",
                                   "write -P 0x67 50M 64k"]).done()
        # b0 holds the writes after day 0's snapshot and today's.
        assert dirty == 3 * 64 * 1024 + 64 * 1024 + MiB + 64 * 1024
        # Only dirty extents were read; the zeroed one was not.
        assert inc["dirty-bytes"] == dirty
        assert inc["zero-bytes"] == 64 * 1024
        assert inc["bytes-read"] == dirty - 64 * 1024
        b1 = inc["bitmap"]
        bm = d.bitmaps()
        assert list(bm) == [b1], bm          # b0 is removed
        assert bm[b1]["count"] == 2 * 64 * 1024   # the writes after it
        d.assert_clean()
        d.quit()
    m = check_all(tool, bk)
    assert [e["type"] for e in m["backups"]] == ["full", "incremental"]
    assert m["backups"][1]["backing"] == m["backups"][0]["file"]
    restore_equals(tool, bk, inc["file"][:-6], s1, tmp_dir)
    restore_equals(tool, bk, full["file"][:-6], s0, tmp_dir)
    assert files_of(bk) == sorted([full["file"], inc["file"],
                                   "manifest.json"])


# ---- QEMU interop: bitmaps made by the other side ------------------------

def test_bitmaps_across_daemons(tool, lockstepd, qsd, image, tmp_dir):
    """Day 0 on lockstepd, day 1 on qemu-storage-daemon (it backs up what
    the bitmap lockstepd created marks), day 2 on lockstepd again (the
    bitmap QEMU created).  Every point restores exactly."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    points = []
    days = [(lockstepd, "full", []),
            (qsd, "incremental", ["write -P 0x71 3M 64k",
                                  "write -P 0x72 33M 256k"]),
            (lockstepd, "incremental", ["write -P 0x73 3M 128k",
                                        "write -z 60M 64k"])]
    for day, (binary, kind, writes) in enumerate(days):
        with Disk(binary, tmp_dir, image, name="d%d" % day) as d:
            if writes:
                d.write(*writes)
            before = d.bitmaps()
            s = d.snapshot(os.path.join(tmp_dir, "s%d.raw" % day))
            ev = backup(tool, d, bk, kind, writes_after=[
                "write -P 0x%x 10M 64k" % (0x80 + day)]).done()
            if kind == "incremental":
                assert list(before) == [points[-1][1]["bitmap"]]
                assert ev["dirty-bytes"] == \
                    before[points[-1][1]["bitmap"]]["count"]
            assert list(d.bitmaps()) == [ev["bitmap"]]
            d.assert_clean()
            d.quit()
        points.append((s, ev))
    check_all(tool, bk)
    for s, ev in points:
        restore_equals(tool, bk, ev["file"][:-6], s, tmp_dir)
    qemu_check_clean(image)


@pytest.mark.parametrize("img_tool,daemon", [("qemu-img", "lockstepd"),
                                             ("lockstep-img", "qsd")])
def test_bitmap_made_offline(tool, build_dir, lockstepd, qsd, image,
                             tmp_dir, img_tool, daemon):
    """A bitmap the user made offline with qemu-img bitmap (or
    lockstep-img bitmap) from the backup's own serves the next
    incremental backup (--since-bitmap), on either daemon; the bitmaps it
    replaces are removed afterwards."""
    need("qemu-io", "qemu-img")
    img = "qemu-img" if img_tool == "qemu-img" else \
        built_program(build_dir, "lockstep-img")
    binary = lockstepd if daemon == "lockstepd" else qsd
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = backup(tool, d, bk, "full").done()
        d.quit()
    p = run([img, "bitmap", "--add", "--merge", full["bitmap"], image,
             "mine"])
    assert p.returncode == 0, (p.stdout, p.stderr)
    qemu_io_img(image, "write -P 0x91 5M 64k")      # recorded by both
    with Disk(binary, tmp_dir, image, name="d1") as d:
        d.write("write -P 0x92 45M 128k")
        assert set(d.bitmaps()) == {full["bitmap"], "mine"}
        count = d.bitmaps()["mine"]["count"]
        assert count == 3 * 64 * 1024
        s1 = d.snapshot(os.path.join(tmp_dir, "s1.raw"))
        inc = backup(tool, d, bk, "incremental", "--since-bitmap", "mine",
                     writes_after=["write -P 0x93 5M 64k"]).done()
        assert inc["dirty-bytes"] == count == inc["bytes-read"]
        assert list(d.bitmaps()) == [inc["bitmap"]]
        d.quit()
    check_all(tool, bk)
    restore_equals(tool, bk, inc["file"][:-6], s1, tmp_dir)


def test_zero_extents_stay_sparse(tool, lockstepd, image, tmp_dir):
    """A full backup allocates only the data; an incremental one writes
    zero clusters (no data) where the guest zeroed, hiding the data of
    the backup below."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = backup(tool, d, bk, "full").done()
        d.write("write -z 0 1M", "write -P 0x5a 8M 64k")
        s1 = d.snapshot(os.path.join(tmp_dir, "s1.raw"))
        inc = backup(tool, d, bk, "incremental").done()
        d.quit()
    assert full["bytes-read"] == full["bytes-written"] == 7 * MiB
    assert full["zero-bytes"] == 0
    assert inc["zero-bytes"] == MiB and inc["bytes-read"] == 64 * 1024
    fmap = json.loads(qemu_img("map", "--output=json",
                               os.path.join(bk, full["file"])))
    assert sum(e["length"] for e in fmap if e["data"]) == 7 * MiB
    imap = json.loads(qemu_img("map", "--output=json",
                               os.path.join(bk, inc["file"])))
    top = [(e["start"], e["length"], e["zero"], e["data"]) for e in imap
           if e["depth"] == 0]
    assert top == [(0, MiB, True, False), (8 * MiB, 64 * 1024, False, True)]
    restore_equals(tool, bk, inc["file"][:-6], s1, tmp_dir)


# ---- Failures -----------------------------------------------------------

def snapshot_files(bk):
    """The directory's files and the manifest's bytes."""
    with open(os.path.join(bk, "manifest.json"), "rb") as f:
        return files_of(bk), f.read()


def day0(tool, d, bk, tmp_dir):
    full = backup(tool, d, bk, "full").done()
    d.write("write -P 0xa1 1M 1M", "write -P 0xa2 30M 2M")
    return full


def assert_rolled_back(d, full, extra):
    """Only the day-0 bitmap, recording, with every write since day 0."""
    bm = d.bitmaps()
    assert list(bm) == [full["bitmap"]], bm
    assert bm[full["bitmap"]]["recording"], bm
    assert bm[full["bitmap"]]["count"] == 3 * MiB + extra, bm


def test_daemon_killed_mid_backup(tool, lockstepd, image, tmp_dir):
    """The daemon dies after the snapshot: the tool fails with a clear
    message, deletes what it wrote, leaves the manifest alone and keeps
    its journal.  The next run cleans up; the bitmap the daemon could
    not store is inconsistent, so an incremental backup is refused and a
    full one works."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = day0(tool, d, bk, tmp_dir)
        d.quit()                    # the bitmap is stored in the image
    before = snapshot_files(bk)
    with Disk(lockstepd, tmp_dir, image, name="d1") as d:
        r = backup(tool, d, bk, "incremental")
        r.pause_at_snapshot()
        d.kill()
        r.resume()
        last = r.finish()
    assert r.rc == 1 and last["type"] == "error", (r.events, r.stderr)
    assert "QMP" in r.stderr or "NBD" in r.stderr, r.stderr
    assert "the next backup run" in r.stderr, r.stderr
    files, text = snapshot_files(bk)
    assert (files, text) == (sorted(before[0] + [".in-progress.json"]),
                             before[1])
    p = run_tool([tool, "verify", bk])
    assert p.returncode == 0 and "interrupted backup" in p.stdout, p.stdout
    with Disk(lockstepd, tmp_dir, image, name="d2") as d:
        assert d.bitmaps()[full["bitmap"]].get("inconsistent"), d.bitmaps()
        r = backup(tool, d, bk, "incremental")
        last = r.finish()
        assert r.rc == 3 and "inconsistent" in last["message"], r.events
        assert "cleaned up after the interrupted backup" in r.stderr
        assert snapshot_files(bk) == before
        d.assert_clean()
        s = d.snapshot(os.path.join(tmp_dir, "s.raw"))
        full2 = backup(tool, d, bk, "full").done()
        assert list(d.bitmaps()) == [full2["bitmap"]]
        d.quit()
    check_all(tool, bk)
    restore_equals(tool, bk, full2["file"][:-6], s, tmp_dir)


class DroppingProxy:
    """Forwards unix socket path to upstream; once the server has sent
    budget bytes in all, every connection is cut (a network failure)."""

    def __init__(self, path, upstream, budget):
        self.upstream, self.budget = upstream, budget
        self.sent = 0
        self.socks = []
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX)
            u.connect(self.upstream)
            with self.lock:
                self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True),
                             daemon=True).start()

    def _pump(self, src, dst, counted):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counted:
                    with self.lock:
                        self.sent += len(data)
                        over = self.sent > self.budget
                    if over:
                        self.cut()
                        return
                dst.sendall(data)
        except OSError:
            pass
        self.cut()

    def cut(self):
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()
        self.cut()


def test_nbd_connection_dropped(tool, lockstepd, image, tmp_dir):
    """The NBD connections break half way: the tool fails, tears the
    snapshot down, merges the new bitmap back into the old one, deletes
    the unfinished image and keeps the manifest.  The next incremental
    backup then has every change."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    proxy_path = os.path.join(tmp_dir, "proxy.sock")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = day0(tool, d, bk, tmp_dir)
        before = snapshot_files(bk)
        proxy = DroppingProxy(proxy_path, d.nbd, 1 * MiB)
        try:
            r = Run(tool, ["incremental", "--socket", d.qmp, "--node",
                           "disk", "--to", bk, "--nbd-socket", proxy_path])
            r.pause_at_snapshot()
            d.write("write -P 0xa3 50M 64k")
            r.resume()
            last = r.finish()
        finally:
            proxy.close()
        assert r.rc == 1 and last["type"] == "error", (r.events, r.stderr)
        assert "NBD" in last["message"], last
        assert snapshot_files(bk) == before
        d.assert_clean()
        assert_rolled_back(d, full, 64 * 1024)
        s = d.snapshot(os.path.join(tmp_dir, "s.raw"))
        inc = backup(tool, d, bk, "incremental").done()
        assert inc["dirty-bytes"] == 3 * MiB + 64 * 1024
        d.quit()
    check_all(tool, bk)
    restore_equals(tool, bk, inc["file"][:-6], s, tmp_dir)


@pytest.fixture
def small_fs(tmp_dir):
    """A tmpfs of 4 MiB (root only); remount(size) changes its size."""
    path = os.path.join(tmp_dir, "small")
    os.mkdir(path)
    if os.geteuid() != 0 or run(["mount", "-t", "tmpfs", "-o", "size=4M",
                                 "tmpfs", path]).returncode != 0:
        pytest.skip("cannot mount a tmpfs")

    def remount(size):
        p = run(["mount", "-o", "remount,size=%s" % size, path])
        assert p.returncode == 0, p.stderr
    yield path, remount
    run(["umount", "-l", path])


def test_target_disk_full(tool, lockstepd, image, tmp_dir, small_fs):
    """The backup directory's file system fills up: the tool fails with
    ENOSPC's message and leaves nothing behind, the bitmaps as they
    were, for a full and for an incremental backup; with space again
    both work."""
    need("qemu-io", "qemu-img")
    bk, remount = small_fs
    scratch = os.path.join(tmp_dir, "scratch")
    os.mkdir(scratch)
    with Disk(lockstepd, tmp_dir, image) as d:
        r = backup(tool, d, bk, "full", "--scratch", scratch)
        last = r.finish()
        assert r.rc == 1 and "No space left" in last["message"], r.events
        assert files_of(bk) == []
        assert d.bitmaps() == {}
        d.assert_clean()
        remount("64M")
        full = backup(tool, d, bk, "full", "--scratch", scratch).done()
        d.write("write -P 0xb1 8M 8M")
        remount("9M")
        before = snapshot_files(bk)
        r = backup(tool, d, bk, "incremental", "--scratch", scratch)
        last = r.finish()
        assert r.rc == 1 and "No space left" in last["message"], r.events
        assert snapshot_files(bk) == before
        d.assert_clean()
        bm = d.bitmaps()
        assert list(bm) == [full["bitmap"]] and \
            bm[full["bitmap"]]["count"] == 8 * MiB, bm
        remount("64M")
        s = d.snapshot(os.path.join(tmp_dir, "s.raw"))
        inc = backup(tool, d, bk, "incremental", "--scratch", scratch).done()
        d.quit()
    assert os.listdir(scratch) == []
    check_all(tool, bk)
    restore_equals(tool, bk, inc["file"][:-6], s, tmp_dir)


def test_interrupted(tool, lockstepd, image, tmp_dir):
    """SIGINT during the copy: the same clean teardown."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = day0(tool, d, bk, tmp_dir)
        before = snapshot_files(bk)
        r = backup(tool, d, bk, "incremental")
        r.pause_at_snapshot()
        d.write("write -P 0xa4 52M 64k")
        r.p.send_signal(signal.SIGINT)
        r.resume()
        last = r.finish()
        assert r.rc == 1 and last["message"] == "Interrupted", r.events
        assert snapshot_files(bk) == before
        d.assert_clean()
        assert_rolled_back(d, full, 64 * 1024)
        d.quit()


def test_tool_killed_then_recovered(tool, lockstepd, image, tmp_dir):
    """The tool itself is killed after the snapshot: the fleecing nodes
    stay on the daemon and the journal in the directory.  The next run
    takes them down, puts the bitmaps back, and its backup has every
    change since day 0."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = day0(tool, d, bk, tmp_dir)
        before = snapshot_files(bk)
        r = backup(tool, d, bk, "incremental")
        r.pause_at_snapshot()
        r.p.send_signal(signal.SIGKILL)
        r.finish()
        assert [e["id"] for e in d.c.cmd("query-block-exports")] != \
            ["guest"]
        assert ".in-progress.json" in files_of(bk)
        assert snapshot_files(bk)[1] == before[1]
        d.write("write -P 0xc1 12M 64k")
        s = d.snapshot(os.path.join(tmp_dir, "s.raw"))
        inc = backup(tool, d, bk, "incremental")
        ev = inc.done()
        assert "cleaned up after the interrupted backup" in inc.stderr
        assert ev["dirty-bytes"] == 3 * MiB + 64 * 1024
        d.assert_clean()
        assert list(d.bitmaps()) == [ev["bitmap"]]
        d.quit()
    check_all(tool, bk)
    restore_equals(tool, bk, ev["file"][:-6], s, tmp_dir)


# ---- Other paths --------------------------------------------------------

def test_own_nbd_server(tool, lockstepd, qsd, image, tmp_dir):
    """A daemon without an NBD server: the tool starts one for each
    backup and stops it afterwards.  Writes made offline by qemu-io
    between the backups are in the bitmap too."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    s0 = os.path.join(tmp_dir, "s0.raw")
    qemu_img("convert", "-O", "raw", image, s0)
    with Disk(lockstepd, tmp_dir, image, nbd=False) as d:
        full = backup(tool, d, bk, "full").done()
        assert "not running" in d.c.error("nbd-server-stop")["desc"]
        d.assert_clean()
        d.quit()
    qemu_io_img(image, "write -P 0xd1 7M 64k")
    s1 = os.path.join(tmp_dir, "s1.raw")
    qemu_img("convert", "-O", "raw", image, s1)
    with Disk(qsd, tmp_dir, image, name="q", nbd=False) as d:
        inc = backup(tool, d, bk, "incremental").done()
        assert inc["dirty-bytes"] == 64 * 1024
        assert "not running" in d.c.error("nbd-server-stop")["desc"]
        d.assert_clean()
        d.quit()
    check_all(tool, bk)
    # The server's socket was next to the scratch image, and is gone.
    assert files_of(bk) == sorted([full["file"], inc["file"],
                                   "manifest.json"])
    restore_equals(tool, bk, full["file"][:-6], s0, tmp_dir)
    restore_equals(tool, bk, inc["file"][:-6], s1, tmp_dir)


def test_relative_paths(tool, lockstepd, image, tmp_dir):
    """Relative names for the directories work, though the daemon (which
    opens the scratch image) runs elsewhere."""
    need("qemu-img")
    os.mkdir(os.path.join(tmp_dir, "scratch"))
    with Disk(lockstepd, tmp_dir, image) as d:
        s0 = d.snapshot(os.path.join(tmp_dir, "s0.raw"))
        for kind in ("full", "incremental"):
            r = Run(tool, [kind, "--socket", d.qmp, "--node", "disk",
                           "--to", "bk", "--scratch", "scratch",
                           "--nbd-socket", d.nbd], cwd=tmp_dir)
            last = r.done()
        d.quit()
    bk = os.path.join(tmp_dir, "bk")
    check_all(tool, bk)
    restore_equals(tool, bk, last["file"][:-6], s0, tmp_dir)


def test_restore_and_verify_errors(tool, lockstepd, image, tmp_dir):
    """restore refuses an unknown point and an existing output; verify
    finds a missing image, a wrong backing link, a corrupt image and a
    manifest that is not one."""
    need("qemu-io", "qemu-img")
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        full = day0(tool, d, bk, tmp_dir)
        inc = backup(tool, d, bk, "incremental").done()
        d.quit()
    out = os.path.join(tmp_dir, "out.qcow2")
    p = run_tool([tool, "restore", bk, "--at", "19990101T000000Z", "--to", out])
    assert p.returncode == 1 and "has no backup" in p.stderr, p.stderr
    open(out, "w").close()
    p = run_tool([tool, "restore", bk, "--to", out])
    assert p.returncode == 1 and "exists" in p.stderr, p.stderr
    p = run_tool([tool, "restore", bk, "--to", out + "2", "--format", "vmdk"])
    assert p.returncode == 1 and "format" in p.stderr, p.stderr

    incp = os.path.join(bk, inc["file"])
    fullp = os.path.join(bk, full["file"])
    other = os.path.join(tmp_dir, "other.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", other, str(SIZE))
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", other, "-F", "qcow2", incp)
    p = run_tool([tool, "verify", bk])
    assert p.returncode == 1 and "backing file" in p.stderr, p.stderr
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", full["file"], "-F",
             "qcow2", incp)
    assert run_tool([tool, "verify", bk]).returncode == 0
    # A refcount of the full backup's first cluster set to 0.
    info = json.loads(qemu_img("info", "--output=json", fullp))
    assert info["format"] == "qcow2"
    with open(fullp, "r+b") as f:
        f.seek(48)
        rt = int.from_bytes(f.read(8), "big")       # refcount table offset
        f.seek(rt)
        rb = int.from_bytes(f.read(8), "big")       # first refcount block
        f.seek(rb)
        f.write(b"\0\0")
    p = run_tool([tool, "verify", bk])
    assert p.returncode == 1 and "FAILED" in p.stdout and \
        "corruptions" in p.stderr, (p.stdout, p.stderr)
    os.unlink(fullp)
    p = run_tool([tool, "verify", bk])
    assert p.returncode == 1 and full["file"] in p.stderr, p.stderr
    with open(os.path.join(bk, "manifest.json"), "w") as f:
        f.write('{"format": "something else"}')
    for argv in (["verify", bk], ["restore", bk, "--to", out + "3"]):
        p = run_tool([tool] + argv)
        assert p.returncode == 1 and "not a lockstep-backup manifest" in \
            p.stderr, p.stderr


def test_command_line(tool, lockstepd, image, tmp_dir):
    """Usage errors (exit 2), options that do not apply are refused, the
    help is a manual page, and the checks before a backup say what to
    do."""
    p = run_tool([tool])
    assert p.returncode == 2 and "a command is needed" in p.stderr
    p = run_tool([tool, "backup"])
    assert p.returncode == 2 and "unknown command" in p.stderr
    p = run_tool([tool, "full", "--at", "x", "--socket", "s", "--node", "n",
             "--to", "d"])
    assert p.returncode == 2 and "--at does not apply" in p.stderr
    p = run_tool([tool, "verify", tmp_dir, "--progress=json"])
    assert p.returncode == 2 and "does not apply" in p.stderr
    p = run_tool([tool, "full", "--socket", "s", "--node", "n", "--to", "d",
             "--connections", "0"])
    assert p.returncode == 2 and "--connections" in p.stderr
    p = run_tool([tool, "full", "--progress=loud"])
    assert p.returncode == 2 and "--progress" in p.stderr
    p = run_tool([tool, "--help"])
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                    "BITMAPS", "FILES", "EXIT STATUS", "EXAMPLES"):
        assert "\n" + section + "\n" in "\n" + p.stdout, section
    assert run_tool([tool, "restore", "--help"]).stdout == p.stdout

    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        base = ["--socket", d.qmp, "--to", bk, "--nbd-socket", d.nbd]
        p = run_tool([tool, "incremental", "--node", "disk"] + base)
        assert p.returncode == 3 and "no backup yet" in p.stderr, p.stderr
        p = run_tool([tool, "full", "--node", "nope"] + base)
        assert p.returncode == 1 and "no node 'nope'" in p.stderr, p.stderr
        d.c.cmd("block-dirty-bitmap-add", {"node": "disk", "name": "x"})
        p = run_tool([tool, "full", "--node", "disk", "--bitmap", "x"] + base)
        assert p.returncode == 1 and "already has a bitmap 'x'" in p.stderr
        full = backup(tool, d, bk, "full").done()
        d.c.cmd("blockdev-add", {"driver": "null-co", "node-name": "other"})
        p = run_tool([tool, "full", "--node", "other"] + base)
        assert p.returncode == 1 and \
            "holds backups of node 'disk', not 'other'" in p.stderr
        p = run_tool([tool, "incremental", "--node", "disk", "--since-bitmap",
                 "nope"] + base)
        assert p.returncode == 3 and "no bitmap 'nope'" in p.stderr
        d.c.cmd("block-dirty-bitmap-disable", {"node": "disk",
                                               "name": full["bitmap"]})
        p = run_tool([tool, "incremental", "--node", "disk"] + base)
        assert p.returncode == 3 and "disabled" in p.stderr, p.stderr
        p = run_tool([tool, "full", "--node", "disk"] + base[:2] +
                ["--to", bk])
        assert p.returncode == 1 and "--nbd-socket" in p.stderr, p.stderr
        d.assert_clean()
        d.quit()
    assert len(manifest(bk)["backups"]) == 1


def test_progress_bar_on_a_terminal(tool, lockstepd, image, tmp_dir):
    """On a terminal the tool draws a bar with bytes, rate and time
    left; elsewhere it prints nothing unless asked."""
    import pty
    bk = os.path.join(tmp_dir, "bk")
    with Disk(lockstepd, tmp_dir, image) as d:
        master, slave = pty.openpty()
        p = subprocess.Popen([tool, "full", "--socket", d.qmp, "--node",
                              "disk", "--to", bk, "--nbd-socket", d.nbd],
                             stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(timeout=60) == 0, out
        os.close(master)
        text = out.decode()
        assert "backup 100% [" in text and "7.0 MiB / 7.0 MiB" in text, text
        assert "/s" in text and text.endswith("\n"), text
        p = run_tool([tool, "incremental", "--socket", d.qmp, "--node", "disk",
                 "--to", bk, "--nbd-socket", d.nbd])
        assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p
        d.quit()
