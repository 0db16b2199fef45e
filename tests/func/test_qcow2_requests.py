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
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from conftest import run
from direct import CACHE
from powerloss import DISCARD, DONE, FLUSH, WRITE, ZERO, Log
from qcow2_layout import Qcow2

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


def record(lockstep_io, img, log, cmds, extra=""):
    """Run lockstep-io commands on img through a blklog node; the requests
    recorded, as (kind, offset, bytes), DONE records left out.  extra:
    more qcow2 options ("name=value,")."""
    if os.path.exists(log):
        os.unlink(log)
    opts = ("driver=qcow2," + extra + "file.driver=blklog,file.log=%s,"
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


@pytest.mark.parametrize("second_table", [True, False])
def test_write_over_two_l2_tables(tmp_path, lockstep_io, second_table):
    """A write over two L2 tables (4 KiB clusters: 2 MiB each) into new
    clusters: where the second table exists already, the new clusters of
    both are one run, allocated together and written with one request (as
    QEMU, which extends its allocation at the next host cluster: the bench's
    requests workload had two such writes, two data requests each here
    before).  Where the second table is new, it is allocated between the
    two runs, in QEMU too: two requests."""
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    qcow2(img, 64 * MiB, 4096)
    if second_table:
        r = run([lockstep_io, "-c", "write -P 1 3M 4k", img])
        assert r.returncode == 0, r.stderr
    reqs = record(lockstep_io, img, log,
                  ["write -P 2 1984k 128k", "flush",
                   "read -P 2 1984k 128k"])
    data = big_writes(reqs, 64 * KiB)
    assert len(data) == (1 if second_table else 2), reqs
    assert sum(r[2] for r in data) == 128 * KiB, data
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr


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



def run_traced(prog, img, cmds, out, extra=""):
    """Run qemu-io or lockstep-io on img (aio=threads, writeback) under
    strace: the write requests that reached the file (pwrite*, fallocate).
    extra: more qcow2 options ("name=value,")."""
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    argv = ["strace", "-f", "-qq", "-o", out, "-e",
            "trace=pwrite64,pwritev,pwritev2,fallocate", prog, "-t",
            "writeback", "--image-opts"]
    for c in cmds:
        argv += ["-c", c]
    argv.append("driver=qcow2,%sfile.driver=file,file.filename=%s,"
                "file.aio=threads" % (extra, img))
    r = subprocess.run(argv, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        n = sum(1 for line in f
                if re.search(r"\b(pwrite64|pwritev2?|fallocate)\(", line))
    os.unlink(out)
    return n


def reftable(img):
    q = Qcow2(img)
    with open(img, "rb") as f:
        f.seek(56)
        clusters = struct.unpack(">I", f.read(4))[0]
    return [q.read64(q.rt_offset + 8 * i)
            for i in range(clusters * q.cs // 8)]


def layout(img):
    """qemu-img map's host layout and the refcount table."""
    r = run(["qemu-img", "map", "--output=json", img])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), reftable(img)


def both(tmp_path, lockstep_io, size, cmds):
    """The same commands through qemu-io and lockstep-io on fresh images
    (4 KiB clusters): {who: (image, write requests)}."""
    for tool in ("qemu-io", "strace"):
        if not shutil.which(tool):
            pytest.skip("%s not installed" % tool)
    out = {}
    for who, prog in (("qemu", shutil.which("qemu-io")),
                      ("lockstep", lockstep_io)):
        img = str(tmp_path / (who + ".qcow2"))
        qcow2(img, size, 4096)
        n = run_traced(prog, img, cmds, str(tmp_path / (who + ".strace")))
        r = run(["qemu-img", "check", "-q", img])
        assert r.returncode == 0, r.stdout + r.stderr
        out[who] = (img, n)
    return out


def test_refblock_goes_after_the_run(tmp_path, lockstep_io):
    """A run of new clusters that crosses into the range of a refcount
    block not yet allocated (4 KiB clusters: 2048 clusters, 8 MiB each)
    stays where it was found, and the new block goes on the cluster just
    past it, as in QEMU.  lockstepd put the block on the first cluster of
    its range, moved the run past it and left a gap that later allocations
    filled: the layouts differed from there on (the bench's requests
    workload: 1784 requests against QEMU's 1776).  Here the clusters up to
    2039 are used by 2 MiB writes, then 256 KiB need an L2 table (2040) and
    a run of 64 clusters (2041-2104)."""
    cmds = ["write -P 1 0 2M", "write -P 2 2M 2M", "write -P 3 4M 2M",
            "write -P 4 6M 1984K", "write -P 5 32M 256K",
            "write -P 6 40M 16K", "flush"]
    out = both(tmp_path, lockstep_io, 64 * MiB, cmds)
    (maps, table), (qmaps, qtable) = [layout(out[w][0])
                                      for w in ("lockstep", "qemu")]
    assert table[:2] == [8192, 2105 * 4096], table[:4]
    assert table == qtable
    assert maps == qmaps
    assert out["lockstep"][1] <= out["qemu"][1], out


def random_writes(seed, count, size):
    """qemu-io commands: count random writes of 512 B to 256 KiB into a
    disk of size, a flush after every third (the bench's fio job)."""
    import random
    rng = random.Random(seed)
    cmds = []
    for i in range(count):
        n = rng.randrange(1, 513) * 512
        off = rng.randrange(0, size - n) // 512 * 512
        cmds.append("write -P %d %d %d" % (i % 255 + 1, off, n))
        if i % 3 == 2:
            cmds.append("flush")
    return cmds


def test_random_writes_no_more_requests_than_qemu(tmp_path, lockstep_io):
    """The bench's requests workload, small: 150 random writes of 512 B to
    256 KiB (a flush after every third) on 256 MiB with 4 KiB clusters, so
    that the file grows past two refcount blocks' ranges.  No more write
    requests reach the file than QEMU's for the same commands, and the
    refcount blocks sit where QEMU's do but for one: a write over two L2
    tables whose first run ends on a range's first cluster, where QEMU
    puts the block first and the rest of the write after it, and lockstepd
    keeps the write contiguous and the block after it."""
    size = 256 * MiB
    out = both(tmp_path, lockstep_io, size, random_writes(42, 150, size))
    # QEMU 7.2: 8192, 2085 * 4096, 4096 * 4096.
    table = reftable(out["lockstep"][0])
    assert [t for t in table if t] == [8192, 2085 * 4096, 4119 * 4096]
    assert out["lockstep"][1] <= out["qemu"][1], out


def host_runs(img):
    """The host ranges holding guest data, sorted, neighbours merged."""
    r = run(["qemu-img", "map", "--output=json", img])
    assert r.returncode == 0, r.stderr
    runs = []
    for off, n in sorted((m["offset"], m["length"])
                         for m in json.loads(r.stdout) if m["data"]):
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1][1] += n
        else:
            runs.append([off, n])
    return [tuple(x) for x in runs]


@pytest.mark.parametrize("cluster", [4096, 65536])
def test_discard_is_one_request_per_run(tmp_path, lockstep_io, cluster):
    """A discard over clusters that lie one after the other on the host
    reaches the file as one request per contiguous run, as in QEMU, not
    one PUNCH_HOLE per cluster (4 KiB clusters: 304 requests here
    before): 1 MiB written at once (one run), 64 KiB written before it
    and behind it in the guest (its clusters precede the 1 MiB on the
    host: the same run), 128 KiB elsewhere (with 4 KiB clusters behind
    its new L2 table: a second run); then one discard over all of it.  No more
    write requests than qemu-io's for the same discard either."""
    img = str(tmp_path / "t.qcow2")
    log = str(tmp_path / "t.log")
    qcow2(img, 64 * MiB, cluster)
    r = run([lockstep_io, "-c", "write -P 3 1M 64k", "-c",
             "write -P 1 0 1M", "-c", "write -P 2 8M 128k", img])
    assert r.returncode == 0, r.stderr
    runs = host_runs(img)
    assert len(runs) == (2 if cluster == 4096 else 1), runs
    copy = str(tmp_path / "copy.qcow2")
    shutil.copyfile(img, copy)
    cmds = ["discard 0 16M", "flush", "read -P 0 0 16M"]
    reqs = record(lockstep_io, img, log, cmds, extra="discard=unmap,")
    discards = [(q[1], q[2]) for q in reqs if q[0] == DISCARD]
    assert sorted(discards) == runs, (discards, runs)
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
    if shutil.which("strace") and shutil.which("qemu-io"):
        calls = {}
        for who, prog in (("qemu", shutil.which("qemu-io")),
                          ("lockstep", lockstep_io)):
            img = str(tmp_path / (who + ".qcow2"))
            shutil.copyfile(copy, img)
            calls[who] = run_traced(prog, img, cmds,
                                    str(tmp_path / (who + ".strace")),
                                    extra="discard=unmap,")
        assert calls["lockstep"] <= calls["qemu"], calls
