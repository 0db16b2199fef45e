# SPDX-License-Identifier: MIT
"""How many requests a qcow2 guest write sends to the image file.

lockstep-io writes through qcow2 onto a blklog node (block/filter/blklog.c
records every request that reaches the file), and the test reads the
record: a guest write over several clusters whose host clusters are
contiguous (new clusters allocated together, or clusters mapped one after
the other) must reach the file as one data request, as in QEMU, not one
per cluster; flushes must not grow with it.  Also in the O_DIRECT pass
(direct.py): there the request layer may widen a request to the disk's
block, so the checks count requests and compare sizes with ">=".
"""
import os
import shutil

import pytest

from conftest import run
from direct import CACHE
from powerloss import DONE, FLUSH, WRITE, ZERO, Log

KiB = 1024
MiB = 1024 * KiB

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"),
                                reason="qemu-img not installed")


def qcow2(path, size, cluster, backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=%d" % cluster]
    if backing:
        argv += ["-b", backing, "-F", "raw"]
    r = run(argv + [path, str(size)])
    assert r.returncode == 0, r.stderr


def record(lockstep_io, img, log, cmds):
    """Run lockstep-io commands on img through a blklog node; the requests
    recorded, as (kind, offset, bytes), DONE records left out."""
    if os.path.exists(log):
        os.unlink(log)
    opts = ("driver=qcow2,file.driver=blklog,file.log=%s,"
            "file.file.driver=file,file.file.filename=%s" % (log, img))
    # Writeback (QEMU's cache=none in the O_DIRECT pass): lockstep-io's
    # default is qemu-io's writethrough, a flush after every write.
    argv = [lockstep_io, "-t", CACHE or "writeback", "--image-opts"]
    for c in cmds:
        argv += ["-c", c]
    r = run(argv + [opts])
    assert r.returncode == 0, r.stderr
    return [(kind, op.offset, op.bytes) for kind, op in Log(log).records
            if op is not None and kind != DONE]


def big_writes(reqs, nbytes):
    return [r for r in reqs if r[0] == WRITE and r[2] >= nbytes]


@pytest.mark.parametrize("cluster", [4096, 65536])
def test_allocating_write_is_one_request(tmp_path, lockstep_io, cluster):
    """1 MiB into a fresh image: the new clusters are allocated together
    and written with one request; metadata adds a handful."""
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    qcow2(img, 64 * MiB, cluster)
    reqs = record(lockstep_io, img, log,
                  ["write -P 0x5a 1M 1M", "flush",
                   "read -P 0x5a 1M 1M"])
    data = big_writes(reqs, MiB)
    assert len(data) == 1, reqs
    writes = [r for r in reqs if r[0] in (WRITE, ZERO)]
    # data + new L2 table + L1 entry + refcount block + L2 table; under
    # O_DIRECT one more: the file grows ahead over the new clusters
    # (qcow2.c grow_over(): one fallocate per MiB of new clusters).
    assert len(writes) <= (7 if CACHE else 6), writes
    if CACHE:
        assert sum(1 for r in writes if r[0] == ZERO) <= 1, writes
    # Before coalescing: 256 data writes (4 KiB clusters), same flushes.
    assert sum(1 for r in reqs if r[0] == FLUSH) <= 4, reqs


@pytest.mark.parametrize("backing", [False, True])
def test_unaligned_write_is_one_request(tmp_path, lockstep_io, backing):
    """An unaligned write over 75 new 4 KiB clusters: one data request
    (with a backing file the copy-on-write head and tail go into it)."""
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    base = None
    if backing:
        base = str(tmp_path / "base.raw")
        with open(base, "wb") as f:
            f.write(b"\x11" * (8 * MiB))
    qcow2(img, 8 * MiB, 4096, backing=base)
    off, n = 4096 * 10 + 1536, 300000
    reqs = record(lockstep_io, img, log,
                  ["write -P 0x5a %d %d" % (off, n), "flush",
                   "read -P 0x5a %d %d" % (off, n),
                   "read -P %d %d %d" % (0x11 if backing else 0,
                                         4096 * 10, 1536)])
    data = [r for r in reqs if r[0] == WRITE and r[2] >= n]
    assert len(data) == 1, reqs
    if backing:
        # The whole clusters, copy-on-write included.
        assert data[0][2] >= 74 * 4096, data
    writes = [r for r in reqs if r[0] in (WRITE, ZERO)]
    assert len(writes) <= 7, writes


def test_rewrite_in_place_is_one_request(tmp_path, lockstep_io):
    """Rewriting allocated clusters that lie one after the other on the
    host: one request and no metadata at all."""
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    qcow2(img, 64 * MiB, 4096)
    r = run([lockstep_io, "-c", "write -P 1 0 2M", img])
    assert r.returncode == 0, r.stderr
    reqs = record(lockstep_io, img, log,
                  ["write -P 2 4000 1M", "read -P 2 4000 1M"])
    writes = [r for r in reqs if r[0] in (WRITE, ZERO)]
    assert len(writes) == 1, writes
    assert writes[0][2] >= MiB, writes


def test_many_random_writes_few_requests(tmp_path, lockstep_io):
    """The issue's kind of workload, small: 60 random writes of 512 B to
    256 KiB with flushes, 4 KiB clusters.  Per guest write about four
    requests reach the file (data, the last byte of a new cluster run, L2
    table and refcount block at the next flush; QEMU 7.2: 172 writes and
    54 fallocates here); one per cluster and more (2216) before.  Flushes:
    81 before (a flush per dirty L2 table written back), 57 now, 65 in
    QEMU."""
    import random
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    qcow2(img, 16 * MiB, 4096)
    rng = random.Random(13)
    cmds = []
    for i in range(60):
        n = rng.randrange(1, 513) * 512
        off = rng.randrange(0, 16 * MiB - n) // 512 * 512
        cmds.append("write -P %d %d %d" % (i + 1, off, n))
        if rng.random() < 0.3:
            cmds.append("flush")
    reqs = record(lockstep_io, img, log, cmds)
    writes = [r for r in reqs if r[0] in (WRITE, ZERO)]
    assert len(writes) <= 4 * 60, len(writes)
    assert sum(1 for r in reqs if r[0] == FLUSH) <= 65, reqs
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
