# SPDX-License-Identifier: MIT
"""Persistent dirty bitmaps in qcow2 images (docs/qcow2.md, "Persistent
bitmaps"), against QEMU 7.2 as the peer.

Each test runs a daemon (lockstepd, or qemu-storage-daemon as the
reference) on a qcow2 image, with the image node "disk" exported writable
over NBD on a unix socket; guest writes go through that export with
qemu-io.  Bitmaps are compared by what QEMU itself reports: count,
granularity, the SHA-256 of x-debug-block-dirty-bitmap-sha256 and the
extents of the NBD context qemu:dirty-bitmap:NAME (nbdinfo --map), and
qemu-img info / check read the images lockstep wrote.
"""
import json
import os
import re
import shutil

import pytest

from conftest import run
from qmp_client import DiskDaemon

MiB = 1 << 20
SIZE = 64 * MiB


def need(*tools):
    for t in tools:
        if not shutil.which(t):
            pytest.skip("%s is not installed" % t)


def qemu_img(*args):
    p = run(["qemu-img"] + list(args))
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def qemu_check_clean(path):
    p = run(["qemu-img", "check", path])
    assert p.returncode == 0 and "No errors were found" in p.stdout, \
        (p.stdout, p.stderr)


def info_bitmaps(path):
    """The bitmap list of qemu-img info (name -> entry)."""
    info = json.loads(qemu_img("info", "--output=json", "-U", path))
    data = info["format-specific"]["data"]
    return {b["name"]: b for b in data.get("bitmaps", [])}


def qemu_io_img(path, *cmds):
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + [path])
    assert p.returncode == 0 and "failed" not in p.stdout, \
        (p.stdout, p.stderr)


class Disk(DiskDaemon):
    """A daemon serving image path as node "disk" and NBD export "disk"."""

    def __init__(self, binary, tmp_dir, path, name="d", extra=()):
        self.nbd = os.path.join(tmp_dir, name + "-nbd.sock")
        self.start(binary, tmp_dir, name, [
            "--blockdev", json.dumps({
                "driver": "qcow2", "node-name": "disk",
                "file": {"driver": "file", "filename": path,
                         "node-name": "disk-file"}}),
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.nbd,
            "--export", json.dumps({
                "type": "nbd", "id": "disk", "node-name": "disk",
                "name": "disk", "writable": True}),
        ] + list(extra))

    def add(self, name, **kw):
        args = {"node": "disk", "name": name, "persistent": True}
        args.update({k.replace("_", "-"): v for k, v in kw.items()})
        self.c.cmd("block-dirty-bitmap-add", args)

    def sha(self, name):
        return self.c.cmd("x-debug-block-dirty-bitmap-sha256",
                          {"node": "disk", "name": name})["sha256"]

    def dirty_map(self, name):
        """[(offset, length)] of the dirty extents, through NBD."""
        need("nbdinfo")
        exp = "map-" + name
        self.c.cmd("block-export-add", {
            "type": "nbd", "id": exp, "node-name": "disk", "name": exp,
            "writable": True, "bitmaps": [name]})
        try:
            p = run(["nbdinfo", "--json",
                     "--map=qemu:dirty-bitmap:" + name, self.url(exp)])
            assert p.returncode == 0, p.stderr
        finally:
            # hard: the client that just left may not be gone yet.
            self.c.cmd("block-export-del", {"id": exp, "mode": "hard"})
            self.c.wait_event("BLOCK_EXPORT_DELETED")
        return [(e["offset"], e["length"]) for e in json.loads(p.stdout)
                if e["type"] & 1]

    def describe(self):
        """What QEMU users see of every bitmap: {name: (count, granularity,
        recording, persistent, inconsistent, sha256)}."""
        res = {}
        for name, b in self.bitmaps().items():
            res[name] = (b["count"], b["granularity"], b["recording"],
                         b["persistent"], b.get("inconsistent", False),
                         None if b.get("inconsistent") else self.sha(name))
        return res


@pytest.fixture
def image(tmp_dir):
    path = os.path.join(tmp_dir, "disk.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", path, str(SIZE))
    return path


def test_qemu_bitmaps_survive_lockstep(lockstepd, qsd, image, tmp_dir):
    """Bitmaps QEMU wrote are loaded, keep recording, and are stored back
    for QEMU: the autoclear bit stays, and QEMU then sees exactly what
    lockstep saw (the issue's broken-chain bug)."""
    need("qemu-io")
    qemu_img("bitmap", "--add", image, "b0")
    qemu_img("bitmap", "--add", "-g", "4096", "--disable", image, "frozen")
    qemu_io_img(image, "write -P 1 0 64k", "write -P 2 1M 100k")
    qemu_img("bitmap", "--add", image, "b1")
    with Disk(lockstepd, tmp_dir, image) as d:
        seen = d.describe()
        assert seen["b0"][:5] == (3 * 64 * 1024, 65536, True, True, False)
        assert seen["frozen"][:3] == (0, 4096, False)
        assert seen["b1"][0] == 0
        # While open read-write every stored bitmap is marked in use.
        flags = {n: b["flags"] for n, b in info_bitmaps(image).items()}
        assert flags == {"b0": ["in-use", "auto"], "frozen": ["in-use"],
                         "b1": ["in-use", "auto"]}
        d.write("write -P 3 8M 4k", "write -P 4 63M 1M")
        assert d.dirty_map("b1") == [(8 * MiB, 64 * 1024),
                                     (63 * MiB, MiB)]
        mine = d.describe()
        d.quit()
    assert info_bitmaps(image) == {
        "b0": {"flags": ["auto"], "name": "b0", "granularity": 65536},
        "frozen": {"flags": [], "name": "frozen", "granularity": 4096},
        "b1": {"flags": ["auto"], "name": "b1", "granularity": 65536}}
    qemu_check_clean(image)
    with Disk(qsd, tmp_dir, image, name="q") as q:
        assert q.describe() == mine
        assert q.dirty_map("b1") == [(8 * MiB, 64 * 1024),
                                     (63 * MiB, MiB)]
        q.quit()


def test_lockstep_bitmaps_for_qemu(lockstepd, qsd, image, tmp_dir):
    """Bitmaps added through lockstep are stored at quit with their state
    and content, and QEMU reads the same."""
    with Disk(lockstepd, tmp_dir, image) as d:
        d.add("a")
        d.add("small", granularity=512)
        d.write("write 0 512", "write 40M 3M")
        d.add("off", disabled=True)
        d.c.cmd("block-dirty-bitmap-merge", {
            "node": "disk", "target": "off", "bitmaps": ["a"]})
        d.add("gone")
        d.c.cmd("block-dirty-bitmap-remove", {"node": "disk",
                                              "name": "gone"})
        d.c.cmd("block-dirty-bitmap-add", {"node": "disk", "name": "tmp"})
        mine = d.describe()
        d.quit()
    del mine["tmp"]
    assert set(info_bitmaps(image)) == {"a", "small", "off"}
    qemu_check_clean(image)
    with Disk(qsd, tmp_dir, image, name="q") as q:
        assert q.describe() == mine
        q.write("write 1M 64k")
        q.quit()
    with Disk(lockstepd, tmp_dir, image) as d:
        now = d.describe()
        assert now["a"][0] == mine["a"][0] + 64 * 1024
        assert now["off"] == mine["off"]
        d.quit()
    qemu_check_clean(image)


def test_sigkill_leaves_bitmaps_inconsistent(lockstepd, qsd, image,
                                            tmp_dir):
    """A daemon killed while the image is open: the stored bitmaps are in
    use on disk, so both lockstep and QEMU load them as inconsistent; they
    can only be removed, which frees their clusters."""
    qemu_img("bitmap", "--add", image, "b0")
    with Disk(lockstepd, tmp_dir, image) as d:
        d.write("write 0 64k")
        d.kill()
    assert info_bitmaps(image)["b0"]["flags"] == ["in-use", "auto"]
    with Disk(qsd, tmp_dir, image, name="q") as q:
        theirs = q.bitmaps()
        assert theirs["b0"]["inconsistent"] is True
        q.c.close()
        q.d.stop()
    with Disk(lockstepd, tmp_dir, image) as d:
        # QEMU's fields, values and order.
        assert json.dumps(d.bitmaps()) == json.dumps(theirs)
        e = d.c.error("block-dirty-bitmap-clear", {"node": "disk",
                                                   "name": "b0"})
        assert e["desc"] == \
            "Bitmap 'b0' is inconsistent and cannot be used"
        d.c.cmd("block-dirty-bitmap-remove", {"node": "disk",
                                              "name": "b0"})
        d.quit()
    assert info_bitmaps(image) == {}
    qemu_check_clean(image)


def test_backing_name_moves_for_the_extension(lockstepd, qsd, tmp_dir):
    """An image whose backing file name follows the header extensions
    (as lockstep-img and qemu-img create them) gets the bitmaps extension
    and keeps its backing file; removing the last bitmap drops it."""
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, str(SIZE))
    qemu_img("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    with Disk(lockstepd, tmp_dir, top) as d:
        d.add("x")
        d.write("write 0 4k")
        d.quit()
    info = json.loads(qemu_img("info", "--output=json", top))
    assert info["backing-filename"] == base
    assert info["format-specific"]["data"]["bitmaps"][0]["name"] == "x"
    qemu_check_clean(top)
    with Disk(qsd, tmp_dir, top, name="q") as q:
        assert q.bitmaps()["x"]["count"] == 65536
        q.quit()
    with Disk(lockstepd, tmp_dir, top) as d:
        d.c.cmd("block-dirty-bitmap-remove", {"node": "disk", "name": "x"})
        d.quit()
    info = json.loads(qemu_img("info", "--output=json", top))
    assert "bitmaps" not in info["format-specific"]["data"]
    assert info["backing-filename"] == base
    qemu_check_clean(top)


def test_foreign_writer_drops_bitmaps(lockstepd, image, tmp_dir):
    """The autoclear bit cleared by a program without bitmap support:
    the bitmaps are ignored (with QEMU's warning) and the extension goes
    at the first read-write open, as QEMU does; check then finds leaks
    only."""
    qemu_img("bitmap", "--add", image, "b0")
    with open(image, "r+b") as f:
        f.seek(88)
        f.write(b"\0" * 8)
    with Disk(lockstepd, tmp_dir, image) as d:
        assert d.bitmaps() == {}
        d.quit()
    assert "lacking bitmap support" in d.d.stderr
    assert info_bitmaps(image) == {}
    p = run(["qemu-img", "check", image])
    assert p.returncode == 3 and "leaked clusters" in p.stdout, p.stdout


def test_transaction_and_errors(lockstepd, image, tmp_dir):
    """Persistent bitmaps in a transaction are all-or-nothing; the image
    is unchanged after an aborted one; QEMU's errors."""
    qemu_img("bitmap", "--add", image, "keep")
    with Disk(lockstepd, tmp_dir, image) as d:
        d.write("write 0 1M")
        e = d.c.error("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk", "name": "new", "persistent": True}},
            {"type": "block-dirty-bitmap-remove",
             "data": {"node": "disk", "name": "keep"}},
            {"type": "abort", "data": {}}]})
        assert e["desc"] == "Transaction aborted using Abort action"
        assert set(d.bitmaps()) == {"keep"}
        assert d.bitmaps()["keep"]["count"] == MiB
        d.c.cmd("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk", "name": "new", "persistent": True}},
            {"type": "block-dirty-bitmap-clear",
             "data": {"node": "disk", "name": "keep"}}]})
        e = d.c.error("block-dirty-bitmap-add", {
            "node": "disk", "name": "x" * 1024, "persistent": True})
        assert e["desc"].startswith("Bitmap name too long: xxx")
        e = d.c.error("block-dirty-bitmap-add", {
            "node": "disk", "name": "new", "persistent": True})
        assert e["desc"] == "Bitmap already exists: new"
        d.write("write 2M 64k")
        d.quit()
    assert set(info_bitmaps(image)) == {"keep", "new"}
    with Disk(lockstepd, tmp_dir, image) as d:
        b = d.bitmaps()
        assert b["keep"]["count"] == b["new"]["count"] == 65536
        d.quit()
    qemu_check_clean(image)


def test_v2_and_raw_refuse_persistent(lockstepd, tmp_dir):
    v2 = os.path.join(tmp_dir, "v2.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M")
    with Disk(lockstepd, tmp_dir, v2) as d:
        e = d.c.error("block-dirty-bitmap-add", {
            "node": "disk", "name": "b", "persistent": True})
        assert e["desc"] == ("Can't make bitmap 'b' persistent in 'disk': "
                             "Cannot store dirty bitmaps in qcow2 v2 files")
        d.quit()


def test_blockdev_del_and_reopen_store(lockstepd, qsd, image, tmp_dir):
    """blockdev-del stores the bitmaps (and clears in_use); so does a
    reopen read-only, after which they are read-only; back read-write
    they record again."""
    with Disk(lockstepd, tmp_dir, image) as d:
        d.add("b")
        d.write("write 0 64k")
        # hard: qemu-io's connection may not be closed yet.
        d.c.cmd("block-export-del", {"id": "disk", "mode": "hard"})
        d.c.wait_event("BLOCK_EXPORT_DELETED")
        d.c.cmd("blockdev-reopen", {"options": [{
            "driver": "qcow2", "node-name": "disk", "read-only": True,
            "file": "disk-file"}]})
        assert info_bitmaps(image)["b"]["flags"] == ["auto"]
        e = d.c.error("block-dirty-bitmap-clear", {"node": "disk",
                                                   "name": "b"})
        assert e["desc"] == "Bitmap 'b' is readonly and cannot be modified"
        d.c.cmd("blockdev-reopen", {"options": [{
            "driver": "qcow2", "node-name": "disk", "read-only": False,
            "file": "disk-file"}]})
        assert info_bitmaps(image)["b"]["flags"] == ["in-use", "auto"]
        d.c.cmd("block-export-add", {
            "type": "nbd", "id": "disk", "node-name": "disk",
            "name": "disk", "writable": True})
        d.write("write 1M 64k")
        assert d.bitmaps()["b"]["count"] == 2 * 65536
        d.c.cmd("block-export-del", {"id": "disk", "mode": "hard"})
        d.c.wait_event("BLOCK_EXPORT_DELETED")
        d.c.cmd("blockdev-del", {"node-name": "disk"})
        assert info_bitmaps(image)["b"]["flags"] == ["auto"]
        qemu_check_clean(image)
        d.quit()
    with Disk(qsd, tmp_dir, image, name="q") as q:
        assert q.bitmaps()["b"]["count"] == 2 * 65536
        q.quit()


# ---- lockstep-img ----------------------------------------------------------

def stored(path):
    """{name: (flags, granularity bits, dirty granules)} as stored."""
    from test_bitmap_crash import read_bitmaps
    with open(path, "rb") as f:
        return read_bitmaps(f.read())


def lockstep_img(build_dir):
    path = os.path.join(build_dir, "lockstep-img")
    if not os.access(path, os.X_OK):
        pytest.skip("lockstep-img is not built")
    return path


@pytest.fixture
def img_tool(build_dir):
    return lockstep_img(build_dir)


BITMAP_STEPS = [
    ["--add", "a"],
    ["--add", "-g", "4k", "--disable", "g4"],
    ["io", "write 0 100k", "write 5M 1k"],
    ["--merge", "a", "g4"],
    ["--add", "--remove", "--add", "b"],
    ["io", "write 3M 64k"],
    ["--clear", "a"],
    ["--disable", "--enable", "--disable", "b"],
    ["--merge", "src", "-b", "OTHER", "-F", "qcow2", "a"],
    ["--remove", "g4"],
]
BITMAP_ERRORS = [
    ["x.qcow2", "b"],
    ["-g", "4096", "--clear", "IMG", "b"],
    ["-b", "y", "--add", "IMG", "b"],
    ["-F", "qcow2", "--merge", "y", "IMG", "b"],
    ["--add", "IMG"],
    ["--clear", "IMG", "nope"],
    ["--add", "IMG", "a"],
    ["--add", "-g", "100", "IMG", "c"],
    ["--add", "-g", "1x", "IMG", "c"],
    ["--merge", "nope", "IMG", "a"],
]


def test_img_bitmap_like_qemu_img(img_tool, tmp_dir):
    """The same lockstep-img bitmap / qemu-img bitmap steps on two copies
    leave the same stored bitmaps; errors and exit codes match."""
    need("qemu-io")
    other = os.path.join(tmp_dir, "other.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", other, str(SIZE))
    qemu_img("bitmap", "--add", other, "src")
    qemu_io_img(other, "write 7M 64k")
    imgs = {}
    for tool in ("qemu-img", img_tool):
        path = os.path.join(tmp_dir, "%s.qcow2" % os.path.basename(tool))
        qemu_img("create", "-q", "-f", "qcow2", path, str(SIZE))
        for step in BITMAP_STEPS:
            if step[0] == "io":
                qemu_io_img(path, *step[1:])
                continue
            args = [other if a == "OTHER" else a for a in step]
            p = run([tool, "bitmap"] + args[:-1] + [path, args[-1]])
            assert p.returncode == 0, (step, p.stderr)
        errors = []
        for args in BITMAP_ERRORS:
            args = [path if a == "IMG" else a for a in args]
            p = run([tool, "bitmap"] + args)
            errors.append((p.returncode,
                           p.stderr.replace("qemu-img", "lockstep-img")))
        imgs[tool] = (stored(path), errors)
        qemu_check_clean(path)
    assert imgs["qemu-img"] == imgs[img_tool]
    assert set(imgs[img_tool][0]) == {"a", "b"}


def test_img_convert_bitmaps(img_tool, tmp_dir):
    """convert --bitmaps copies them (content, granularity, state) as
    qemu-img convert --bitmaps does; inconsistent ones are refused, or
    skipped with --skip-broken-bitmaps."""
    need("qemu-io")
    src = os.path.join(tmp_dir, "src.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", src, str(SIZE))
    qemu_img("bitmap", "--add", src, "b0")
    qemu_img("bitmap", "--add", "-g", "512", "--disable", src, "fine")
    qemu_io_img(src, "write 1M 3k")
    qemu_img("bitmap", "--merge", "b0", src, "fine")
    qemu_io_img(src, "write 9M 64k")
    outs = {}
    for tool in ("qemu-img", img_tool):
        out = os.path.join(tmp_dir, "out-%s.qcow2" % os.path.basename(tool))
        p = run([tool, "convert", "--bitmaps", "-O", "qcow2", src, out])
        assert p.returncode == 0, p.stderr
        qemu_check_clean(out)
        outs[tool] = stored(out)
    assert outs["qemu-img"] == outs[img_tool] == stored(src)
    p = run([img_tool, "convert", "--skip-broken-bitmaps", "-O", "qcow2",
             src, os.path.join(tmp_dir, "x.qcow2")])
    assert p.returncode == 1
    assert "Use of --skip-broken-bitmaps requires --bitmaps" in p.stderr
    p = run([img_tool, "convert", "--bitmaps", "-O", "raw", src,
             os.path.join(tmp_dir, "x.raw")])
    assert p.returncode == 1
    assert "Format driver 'raw' does not support bitmaps" in p.stderr


def test_img_convert_inconsistent(lockstepd, img_tool, image, tmp_dir):
    qemu_img("bitmap", "--add", image, "b0")
    qemu_img("bitmap", "--add", image, "ok")
    with Disk(lockstepd, tmp_dir, image) as d:
        d.kill()
    qemu_img("bitmap", "--remove", image, "ok")
    qemu_img("bitmap", "--add", image, "ok")
    out = os.path.join(tmp_dir, "out.qcow2")
    p = run([img_tool, "convert", "--bitmaps", "-O", "qcow2", image, out])
    assert p.returncode == 1 and not os.path.exists(out)
    assert p.stderr == (
        "lockstep-img: Cannot copy inconsistent bitmap 'b0'\n"
        "Try --skip-broken-bitmaps, or use 'lockstep-img bitmap --remove' "
        "to delete it\n")
    p = run([img_tool, "convert", "--bitmaps", "--skip-broken-bitmaps",
             "-O", "qcow2", image, out])
    assert p.returncode == 0
    assert "warning: Skipping inconsistent bitmap 'b0'" in p.stderr
    assert set(info_bitmaps(out)) == {"ok"}


def test_img_info_and_check_bitmaps(img_tool, image, tmp_dir):
    """info lists the bitmaps as qemu-img info does (human and JSON);
    check validates the directory and tables."""
    qemu_img("bitmap", "--add", image, "b0")
    qemu_img("bitmap", "--add", "-g", "1M", "--disable", image, "b1")
    for fmt in ("human", "json"):
        mine = run([img_tool, "info", "--output=" + fmt, image])
        ref = run(["qemu-img", "info", "--output=" + fmt, image])
        assert mine.returncode == 0
        strip = re.compile(r'.*(disk size|actual-size|filename).*\n')
        assert strip.sub("", mine.stdout) == strip.sub("", ref.stdout)
    p = run([img_tool, "check", image])
    assert p.returncode == 0, p.stdout
    # A reserved flag, then a table of the wrong size.
    info = stored(image)
    assert set(info) == {"b0", "b1"}
    with open(image, "rb") as f:
        data = bytearray(f.read())
    pos = data.find(b"\x23\x85\x28\x75")
    doff = int.from_bytes(data[pos + 24:pos + 32], "big")
    bad = os.path.join(tmp_dir, "bad.qcow2")
    data[doff + 15] |= 4
    open(bad, "wb").write(data)
    p = run([img_tool, "check", bad])
    assert p.returncode == 2
    assert "ERROR bitmap 'b0' has reserved flags 0x4 set" in p.stderr
    p = run([os.path.join(os.path.dirname(img_tool), "lockstep-io"), "-c",
             "read 0 512", bad])
    assert p.returncode != 0
    assert "Bitmap 'b0' doesn't satisfy the constraints" in p.stderr
    data[doff + 15] &= ~4
    data[doff + 8:doff + 12] = (7).to_bytes(4, "big")
    open(bad, "wb").write(data)
    p = run([img_tool, "check", bad])
    assert p.returncode == 2
    assert ("ERROR bitmap 'b0' has a table of 7 entries, 1 expected for "
            "the disk size") in p.stderr


# ---- Incremental push backups across restarts -----------------------------

def backup(d, target_path, sync, bitmap=None, mode=None, job="bk"):
    """blockdev-backup of disk into the existing image target_path (its
    backing file, the previous backup, is not opened); waits for the
    job's end and returns BLOCK_JOB_COMPLETED's data."""
    d.c.cmd("blockdev-add", {
        "driver": "qcow2", "node-name": "target", "backing": None,
        "file": {"driver": "file", "filename": target_path}})
    args = {"job-id": job, "device": "disk", "target": "target",
            "sync": sync}
    if bitmap:
        args["bitmap"] = bitmap
    if mode:
        args["bitmap-mode"] = mode
    d.c.cmd("blockdev-backup", args)
    ev = d.c.wait_event_match("BLOCK_JOB_COMPLETED", device=job)
    d.c.wait_event_match("JOB_STATUS_CHANGE", id=job, status="null")
    d.c.cmd("blockdev-del", {"node-name": "target"})
    return ev["data"]


def snapshot_of(image, path):
    """The guest content of image now, as a raw file."""
    qemu_img("convert", "-U", "-O", "raw", image, path)
    return path


def same_content(a, b):
    p = run(["qemu-img", "compare", "-U", a, b])
    assert p.returncode == 0, (a, b, p.stdout, p.stderr)


@pytest.mark.parametrize("peer", ["lockstepd", "qsd"])
def test_incremental_push_across_restarts(lockstepd, qsd, image, tmp_dir,
                                          peer):
    """Day 0 full backup with b0 created in the same transaction; each
    following day a new daemon (lockstepd, or on odd days the peer)
    writes, then backs up what b0 marks into an overlay of the previous
    backup.  Every chain restores exactly the disk as it was at its
    backup; bitmap-mode never keeps the bits, on-success and always clear
    them; qemu-img check is clean on every image."""
    need("qemu-io")
    daemons = [lockstepd, lockstepd if peer == "lockstepd" else qsd]
    qemu_io_img(image, "write -P 7 0 16M")
    chain = [os.path.join(tmp_dir, "day0.qcow2")]
    qemu_img("create", "-q", "-f", "qcow2", chain[0], str(SIZE))
    with Disk(lockstepd, tmp_dir, image) as d:
        d.c.cmd("blockdev-add", {
            "driver": "qcow2", "node-name": "target",
            "file": {"driver": "file", "filename": chain[0]}})
        d.c.cmd("transaction", {"actions": [
            {"type": "block-dirty-bitmap-add",
             "data": {"node": "disk", "name": "b0", "persistent": True}},
            {"type": "blockdev-backup",
             "data": {"job-id": "full", "device": "disk",
                      "target": "target", "sync": "full"}}]})
        d.c.wait_event_match("BLOCK_JOB_COMPLETED", device="full")
        d.c.wait_event_match("JOB_STATUS_CHANGE", id="full", status="null")
        d.c.cmd("blockdev-del", {"node-name": "target"})
        d.quit()
    same_content(chain[0], snapshot_of(image, os.path.join(tmp_dir,
                                                           "s0.raw")))
    days = [("incremental", None, None, ["write -P 1 1M 64k",
                                         "write -P 2 20M 1M"]),
            ("bitmap", "never", None, ["write -P 3 40M 4k"]),
            ("bitmap", "on-success", None, ["write -P 4 2M 64k"]),
            ("bitmap", "always", None, ["write -P 5 60M 128k"])]
    expect_count = 0
    for day, (sync, mode, _, writes) in enumerate(days, 1):
        binary = daemons[day % 2]
        top = os.path.join(tmp_dir, "day%d.qcow2" % day)
        qemu_img("create", "-q", "-f", "qcow2", "-b", chain[-1], "-F",
                 "qcow2", top)
        with Disk(binary, tmp_dir, image, name="d%d" % day) as d:
            assert d.bitmaps()["b0"]["count"] == expect_count
            d.write(*writes)
            before = d.bitmaps()["b0"]["count"]
            data = backup(d, top, sync, "b0", mode)
            assert "error" not in data, data
            after = d.bitmaps()["b0"]["count"]
            # The job's length: the dirty bytes.
            assert data["len"] == data["offset"] == before
            d.quit()
        expect_count = before if mode == "never" else 0
        assert after == expect_count, (day, before, after)
        chain.append(top)
        same_content(top, snapshot_of(image, os.path.join(
            tmp_dir, "s%d.raw" % day)))
        qemu_check_clean(top)
        qemu_check_clean(image)
        # Only dirty clusters went into the overlay.
        top_map = json.loads(qemu_img("map", "--output=json", top))
        copied = sum(e["length"] for e in top_map
                     if e["depth"] == 0 and e["data"])
        assert copied == before, (day, copied, before)


@pytest.mark.parametrize("cluster,gran", [(512, 512), (2 * MiB, 2 * MiB),
                                          (4096, 1 << 31)])
def test_geometry_like_qemu(lockstepd, qsd, tmp_dir, cluster, gran):
    """Tables of several clusters (512-byte clusters, 512-byte granules),
    a disk that ends inside a granule, and huge granules: the same bits as
    QEMU, both ways."""
    size = 9 * MiB + 1536
    path = os.path.join(tmp_dir, "g.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "cluster_size=%d" % cluster, path, str(size))
    writes = ["write 0 512", "write %d 512" % (size - 512),
              "write 4M 1M", "write %d 4096" % (2 * MiB - 1024)]
    with Disk(lockstepd, tmp_dir, path) as d:
        d.add("g", granularity=gran)
        d.write(*writes[:2])
        mine = d.describe()
        d.quit()
    with Disk(qsd, tmp_dir, path, name="q") as q:
        assert q.describe() == mine
        q.write(*writes[2:])
        theirs = q.describe()
        q.quit()
    qemu_check_clean(path)
    with Disk(lockstepd, tmp_dir, path) as d:
        assert d.describe() == theirs
        d.quit()
    qemu_check_clean(path)


def header_extensions(path):
    """[(magic, data)] of the header extensions, in order."""
    with open(path, "rb") as f:
        head = f.read(65536)
    pos = int.from_bytes(head[100:104], "big")
    exts = []
    while True:
        magic = int.from_bytes(head[pos:pos + 4], "big")
        ln = int.from_bytes(head[pos + 4:pos + 8], "big")
        if magic == 0:
            return exts
        exts.append((magic, head[pos + 8:pos + 8 + ln]))
        pos += 8 + (ln + 7) // 8 * 8


def test_unknown_extension_kept(lockstepd, image, tmp_dir):
    """Dropping the bitmaps extension (last bitmap removed) and adding it
    again keep an unknown extension behind it, as the spec asks."""
    qemu_img("bitmap", "--add", image, "b0")
    exts = header_extensions(image)
    assert exts[-1][0] == 0x23852875
    with open(image, "r+b") as f:
        head = bytearray(f.read(4096))
        end = head.find(b"\x23\x85\x28\x75") + 32
        assert head[end:end + 8] == bytes(8)
        head[end:end + 16] = (b"\x12\x34\x56\x78\x00\x00\x00\x03abc" +
                              bytes(5))
        head[end + 16:end + 24] = bytes(8)
        f.seek(0)
        f.write(head)
    unknown = (0x12345678, b"abc")
    assert header_extensions(image)[-1] == unknown
    with Disk(lockstepd, tmp_dir, image) as d:
        d.c.cmd("block-dirty-bitmap-remove", {"node": "disk", "name": "b0"})
        assert header_extensions(image) == exts[:-1] + [unknown]
        d.add("b1")
        d.quit()
    now = header_extensions(image)
    assert now[:-1] == exts[:-1] + [unknown] and now[-1][0] == 0x23852875
    assert set(info_bitmaps(image)) == {"b1"}
    qemu_check_clean(image)
