# SPDX-License-Identifier: MIT
"""Fleecing under load, with real NBD clients.

* Torture: a 256 MiB qcow2 disk full of random data; fleecing-start; then
  at the same time fio writes random blocks of mixed sizes through the
  guest export (ioengine=nbd) and nbdcopy copies the snapshot export to a
  file.  The copy must equal the disk as it was at the snapshot, byte for
  byte (the reference is the raw data the image was made from: the daemon
  starts after it is written).
* Live insertion: writers (libnbd's Python bindings, many requests in
  flight) keep writing through the guest export while
  x-blockdev-insert-filter and x-blockdev-remove-filter run 20 times each;
  no request may fail and every block must hold its last write.
"""
import filecmp
import hashlib
import json
import os
import random
import subprocess
import threading
import time

import pytest

from conftest import run
from test_fleecing import Setup, need, qemu_img_create  # noqa: F401

MiB = 1 << 20


def random_disk(tmp_dir, seed, size):
    """A raw reference file of random data and a qcow2 image of it."""
    ref = os.path.join(tmp_dir, "ref-%d.raw" % seed)
    rng = random.Random(seed)
    with open(ref, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(rng.randbytes(16 * MiB))
    disk = os.path.join(tmp_dir, "disk-%d.qcow2" % seed)
    p = run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", ref,
             disk])
    assert p.returncode == 0, p.stderr
    return ref, disk


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_torture_fio_and_nbdcopy(lockstepd, tmp_dir, seed):  # noqa: F811
    need("fio", "nbdcopy", "qemu-img")
    size = 256 * MiB
    ref, disk = random_disk(tmp_dir, seed, size)
    temp = os.path.join(tmp_dir, "temp.qcow2")
    qemu_img_create(temp, "qcow2", size)
    copy = os.path.join(tmp_dir, "copy.raw")
    with Setup(lockstepd, tmp_dir, "ours", disk=disk) as s:
        s.c.cmd("fleecing-start", {"id": "fl", "node": "disk0",
                                   "temp": {"filename": temp,
                                            "format": "qcow2"}})
        fio = subprocess.Popen(
            ["fio", "--name=guest", "--ioengine=nbd",
             "--uri=" + s.url("guest"), "--rw=randwrite",
             "--bssplit=512/10:4k/30:64k/30:192k/10:1m/20",
             "--size=%d" % size, "--time_based", "--runtime=4",
             "--iodepth=16", "--randseed=%d" % seed,
             "--output-format=json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        p = run(["nbdcopy", "--requests=8", s.url("fl"), copy])
        out, err = fio.communicate(timeout=60)
        assert p.returncode == 0, p.stderr
        assert fio.returncode == 0, err
        job = json.loads(out[out.index("{"):])["jobs"][0]
        assert job["error"] == 0
        # fio wrote during the copy, and a lot.
        assert job["write"]["io_bytes"] > 16 * MiB, job["write"]
        s.c.cmd("fleecing-stop", {"id": "fl"})
    assert filecmp.cmp(ref, copy, shallow=False), \
        "the snapshot copy differs from the disk at snapshot time"
    # The guest's writes did reach the disk.
    now = os.path.join(tmp_dir, "now.raw")
    assert run(["qemu-img", "convert", "-q", "-O", "raw", disk,
                now]).returncode == 0
    assert not filecmp.cmp(ref, now, shallow=False)


# ---- Live insertion under writers ----------------------------------------

BLOCK = 64 << 10


def block_data(seed, block, gen):
    h = hashlib.sha256(b"%d:%d:%d" % (seed, block, gen)).digest()
    return (h * (BLOCK // len(h)))[:BLOCK]


class Writer(threading.Thread):
    """One NBD connection writing its own blocks (every nth), with up to
    depth requests in flight, never two on one block."""

    def __init__(self, url, idx, nthreads, nblocks, seed, depth=16):
        super().__init__(daemon=True)
        import nbd
        self.h = nbd.NBD()
        self.h.connect_uri(url)
        self.blocks = list(range(idx, nblocks, nthreads))
        self.rng = random.Random(seed * 100 + idx)
        self.seed = seed
        self.depth = depth
        self.last = {}          # block -> generation completed
        self.errors = []
        self.count = 0
        self.stop = threading.Event()

    def run(self):
        inflight = {}           # cookie -> (block, gen, buffer)
        gen = 0
        try:
            while not self.stop.is_set() or inflight:
                while not self.stop.is_set() and len(inflight) < self.depth:
                    busy = {b for b, _, _ in inflight.values()}
                    b = self.rng.choice(self.blocks)
                    if b in busy:
                        break
                    gen += 1
                    buf = __import__("nbd").Buffer.from_bytearray(
                        bytearray(block_data(self.seed, b, gen)))
                    cookie = self.h.aio_pwrite(buf, b * BLOCK)
                    inflight[cookie] = (b, gen, buf)
                self.h.poll(-1)
                for cookie in list(inflight):
                    try:
                        done = self.h.aio_command_completed(cookie)
                    except Exception as e:  # nbd.Error
                        self.errors.append((inflight.pop(cookie)[:2],
                                            str(e)))
                        continue
                    if done:
                        b, g, _ = inflight.pop(cookie)
                        self.last[b] = g
                        self.count += 1
            self.h.flush()
        except Exception as e:
            self.errors.append(("fatal", repr(e)))
        finally:
            self.h.shutdown()


def test_live_insertion_under_writers(lockstepd, tmp_dir):  # noqa: F811
    try:
        import nbd  # noqa: F401
    except ImportError:
        pytest.skip("libnbd's Python bindings (python3-libnbd) are missing")
    size = 64 * MiB
    seed = 7
    nblocks = size // BLOCK
    with Setup(lockstepd, tmp_dir, "ours", size=size) as s:
        c = s.c
        temp = os.path.join(tmp_dir, "temp.raw")
        with open(temp, "wb") as f:
            f.truncate(size)
        c.cmd("blockdev-add", {"driver": "file", "node-name": "fl-temp",
                               "filename": temp, "discard": "unmap"})
        c.cmd("blockdev-add", {"driver": "copy-before-write",
                               "node-name": "fl-cbw", "file": "disk0",
                               "target": "fl-temp"})
        writers = [Writer(s.url("guest"), i, 4, nblocks, seed)
                   for i in range(4)]
        for w in writers:
            w.start()
        counts = []
        for i in range(20):
            time.sleep(0.05)
            before = sum(w.count for w in writers)
            c.cmd("x-blockdev-insert-filter", {"node-name": "fl-cbw"})
            time.sleep(0.05)
            c.cmd("x-blockdev-remove-filter", {"node-name": "fl-cbw"})
            counts.append(sum(w.count for w in writers) - before)
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(30)
            assert not w.is_alive()
        errors = [e for w in writers for e in w.errors]
        assert errors == []
        # Writes went on across the changes (not just before or after).
        assert sum(1 for n in counts if n > 0) >= 15, counts
        # Copies happened while inserted: the temp holds data.
        assert os.stat(temp).st_blocks > 0
        for n in ("fl-cbw", "fl-temp"):
            c.cmd("blockdev-del", {"node-name": n})
    # Every block holds its last completed write (checked offline).
    raw = os.path.join(tmp_dir, "after.raw")
    assert run(["qemu-img", "convert", "-q", "-O", "raw", s.disk,
                raw]).returncode == 0
    checked = 0
    with open(raw, "rb") as f:
        for w in writers:
            for b, g in w.last.items():
                f.seek(b * BLOCK)
                assert f.read(BLOCK) == block_data(seed, b, g), \
                    "block %d lost generation %d" % (b, g)
                checked += 1
    assert checked > nblocks // 2
