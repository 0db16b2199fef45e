# SPDX-License-Identifier: MIT
"""Power loss and persistent bitmaps (docs/qcow2.md, "Persistent bitmaps").

The qcow2 image lives on a recording NBD disk (nbd_recorder.py) that
lockstepd reaches through its nbd driver.  A workload of guest writes,
flushes and bitmap commands runs over two daemon sessions, each ended by
quit (which stores the bitmaps).  Crash images are then rebuilt from the
record at a few hundred points: everything up to the last flush, and a
random subset of the later writes in 4 KiB pieces.  For every crash image:

- qemu-img check finds no corruption (leaks are allowed);
- a bitmap that loads as consistent (not in use) misses no change that
  reached the disk: every granule where the guest content differs from
  the content when the bitmap started recording is dirty in it (recording
  bitmaps), or it holds exactly the bits it was given (a disabled one).

Bitmaps are read from the crash image by a small parser of the on-disk
format below, independent of the driver; guest contents by qemu-img
convert.
"""
import json
import os
import random
import struct
import subprocess

import pytest

from conftest import run
from nbd_recorder import Recorder
from qmp_client import Daemon

MiB = 1 << 20
SIZE = 8 * MiB
FILE_SIZE = 24 * MiB          # the recorded disk: room for the image
GRAN = 64 * 1024
SEED = int(os.environ.get("LOCKSTEP_CRASH_SEED", "1601"))
POINTS = int(os.environ.get("LOCKSTEP_CRASH_POINTS", "100"))


# ---- Reading bitmaps from an image, independently of the driver --------

def read_bitmaps(img):
    """{name: (flags, gran_bits, set of dirty granules or None)}: what the
    image stores, as QEMU would load it (nothing if the autoclear bit does
    not vouch for the extension)."""
    version, = struct.unpack_from(">I", img, 4)
    cbits, = struct.unpack_from(">I", img, 20)
    size, = struct.unpack_from(">Q", img, 24)
    autoclear, = struct.unpack_from(">Q", img, 88)
    hlen, = struct.unpack_from(">I", img, 100)
    boff, = struct.unpack_from(">Q", img, 8)
    cs = 1 << cbits
    if version < 3 or not autoclear & 1:
        return {}
    pos, end = hlen, min(cs, boff) if boff else cs
    ext = None
    while pos + 8 <= end:
        magic, ln = struct.unpack_from(">II", img, pos)
        if magic == 0:
            break
        if magic == 0x23852875:
            ext = struct.unpack_from(">IIQQ", img, pos + 8)
        pos += 8 + (ln + 7) // 8 * 8
    if ext is None:
        return {}
    nb, _, dsize, doff = ext
    res, p = {}, doff
    for _ in range(nb):
        toff, tsize, flags, _type, gbits, nlen, extra = struct.unpack_from(
            ">QIIBBHI", img, p)
        name = img[p + 24 + extra:p + 24 + extra + nlen].decode()
        p += (24 + extra + nlen + 7) // 8 * 8
        dirty = None
        if not flags & 1:
            dirty = set()
            for i in range(tsize):
                e, = struct.unpack_from(">Q", img, toff + 8 * i)
                off = e & 0x00fffffffffffe00
                if not off:
                    assert not e & 1, "all-ones entries are not written"
                    continue
                chunk = img[off:off + cs]
                for j, byte in enumerate(chunk):
                    if byte:
                        for b in range(8):
                            if byte >> b & 1:
                                dirty.add((i * cs + j) * 8 + b)
            assert all(g << gbits < size for g in dirty), name
        res[name] = (flags, gbits, dirty)
    assert p - doff == dsize
    return res


def guest_content(path):
    raw = path + ".raw"
    p = run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", path,
             raw])
    assert p.returncode == 0, p.stderr
    with open(raw, "rb") as f:
        data = f.read()
    os.unlink(raw)
    return data


def differing_granules(a, b):
    return {g for g in range(len(a) // GRAN)
            if a[g * GRAN:(g + 1) * GRAN] != b[g * GRAN:(g + 1) * GRAN]}


# ---- The workload ------------------------------------------------------

class Session:
    """lockstepd on the recorded disk, the image exported for the guest."""

    def __init__(self, lockstepd, tmp_dir, rec_sock, name):
        self.nbd = os.path.join(tmp_dir, name + "-nbd.sock")
        self.d = Daemon(lockstepd, tmp_dir, name=name, args=[
            "--blockdev", json.dumps({
                "driver": "qcow2", "node-name": "disk",
                "file": {"driver": "nbd", "server": {
                    "type": "unix", "path": rec_sock}}}),
            "--nbd-server", "addr.type=unix,addr.path=%s" % self.nbd,
            "--export", json.dumps({
                "type": "nbd", "id": "disk", "node-name": "disk",
                "name": "disk", "writable": True}),
        ])
        self.c = self.d.client()

    def qemu_io(self, cmds):
        argv = ["qemu-io", "-f", "raw"]
        for c in cmds:
            argv += ["-c", c]
        p = run(argv + ["nbd+unix:///disk?socket=%s" % self.nbd])
        assert p.returncode == 0 and "failed" not in p.stdout, p.stdout

    def bitmap(self, cmd, **args):
        args.setdefault("node", "disk")
        self.c.cmd("block-dirty-bitmap-" + cmd, args)

    def quit(self):
        self.c.cmd("quit")
        self.c.close()
        assert self.d.stop() == 0, self.d.stderr


class Guest:
    """Random guest writes, mirrored in a model of the disk."""

    def __init__(self, rnd, content):
        self.rnd = rnd
        self.disk = bytearray(content)
        self.touched = set()     # granules written since mark()

    def writes(self, s, n):
        cmds = []
        for _ in range(n):
            ln = self.rnd.choice([512, 4096, 65536, 200 * 1024])
            off = self.rnd.randrange(0, SIZE - ln) // 512 * 512
            pat = self.rnd.randrange(1, 256)
            cmds.append("write -P %d %d %d" % (pat, off, ln))
            if self.rnd.random() < 0.3:
                cmds.append("flush")
            self.disk[off:off + ln] = bytes([pat]) * ln
            self.touched |= set(range(off // GRAN, (off + ln - 1) // GRAN + 1))
        s.qemu_io(cmds)


def run_workload(lockstepd, tmp_dir, rec, rnd, base):
    """Returns what each bitmap must satisfy: {name: ("since", content)}
    for recording ones, {name: ("exact", granules)} for disabled ones."""
    g = Guest(rnd, base)
    expect = {"b0": ("since", [bytes(base)])}

    s = Session(lockstepd, tmp_dir, rec.path, "s1")
    g.writes(s, 12)
    s.bitmap("add", name="b1", persistent=True)
    expect["b1"] = ("since", [bytes(g.disk)])
    g.touched = set()
    g.writes(s, 12)
    s.bitmap("add", name="frozen", persistent=True, disabled=True)
    s.bitmap("merge", target="frozen", bitmaps=["b1"])
    expect["frozen"] = ("exact", [set(g.touched)])
    g.writes(s, 8)
    s.quit()

    s = Session(lockstepd, tmp_dir, rec.path, "s2")
    g.writes(s, 10)
    s.bitmap("remove", name="b1")
    g.writes(s, 6)
    s.bitmap("clear", name="b0")
    # Stored at quit, b0 counts from here; a crash before leaves the copy
    # that counts from the base (in use, or consistent if the store of
    # the first session is still in force).
    expect["b0"][1].append(bytes(g.disk))
    g.writes(s, 6)
    s.quit()
    return expect


def check_crash_image(path, data, expect):
    with open(path, "wb") as f:
        f.write(data)
    p = run(["qemu-img", "check", "-f", "qcow2", path])
    assert p.returncode in (0, 3), p.stdout + p.stderr
    bitmaps = read_bitmaps(data)
    consistent = {n: b for n, b in bitmaps.items() if b[2] is not None}
    if not consistent:
        return bitmaps
    content = guest_content(path)
    for name, (flags, gbits, dirty) in consistent.items():
        assert gbits == 16, name
        kind, refs = expect[name]
        if kind == "exact":
            assert dirty in refs, name
        else:
            # Honest relative to one of the points it counted from.
            missed = [differing_granules(content, r) - dirty for r in refs]
            assert not all(missed), (name, [sorted(m)[:8] for m in missed])
    return bitmaps


@pytest.mark.parametrize("seed", [SEED])
def test_power_loss_keeps_bitmaps_honest(lockstepd, tmp_dir, seed):
    for tool in ("qemu-img", "qemu-io"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.skip("%s is not installed" % tool)
    rnd = random.Random(seed)
    img0 = os.path.join(tmp_dir, "start.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", img0, str(SIZE)])
    base = bytearray(SIZE)
    for i in range(8):
        off = rnd.randrange(0, SIZE // GRAN) * GRAN
        pat = rnd.randrange(1, 256)
        base[off:off + GRAN] = bytes([pat]) * GRAN
        p = run(["qemu-io", "-f", "qcow2", "-c",
                 "write -P %d %d %d" % (pat, off, GRAN), img0])
        assert p.returncode == 0, p.stderr
    assert run(["qemu-img", "bitmap", "--add", img0, "b0"]).returncode == 0
    with open(img0, "rb") as f:
        start = f.read()
    rec = Recorder(os.path.join(tmp_dir, "rec.sock"),
                   start + bytes(FILE_SIZE - len(start)))
    try:
        expect = run_workload(lockstepd, tmp_dir, rec, rnd, bytes(base))
    finally:
        rec.close()
    n_ops = len(rec.ops)
    flushes = rec.flush_points()
    # Every flush boundary (where ordering matters most), both sides, and
    # random points in between.
    points = set()
    for f in flushes:
        points.update((f, f + 1))
    while len(points) < POINTS + len(flushes):
        points.add(rnd.randrange(0, n_ops + 1))
    points = sorted(p for p in points if p <= n_ops)
    crash = os.path.join(tmp_dir, "crash.qcow2")
    seen = {"consistent": 0, "in-use": 0}
    for n, data in rec.crash_images(points, seed):
        for b in check_crash_image(crash, data, expect).values():
            seen["consistent" if b[2] is not None else "in-use"] += 1
    # The points cover both states of the bitmaps.
    assert seen["consistent"] > 0 and seen["in-use"] > 0, seen
    # The final image: all stored, all consistent.
    final = read_bitmaps(bytes(rec.disk))
    assert {n: b[0] for n, b in final.items()} == {"b0": 2, "frozen": 0}
