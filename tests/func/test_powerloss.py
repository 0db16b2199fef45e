# SPDX-License-Identifier: MIT
"""Power-loss tests of the qcow2 driver (powerloss.py has the model).

lockstepd serves qcow2 images whose files sit on blklog nodes; a guest
writes through NBD (python3-libnbd), flushes now and then, and the test
then rebuilds crash images at a few hundred points of the record.  Every
one must pass `qemu-img check` (leaks allowed) and show each guest sector
as its last durable version or something written there later.

Workloads: cluster allocation with L2 table, refcount block, refcount
table and L1 growth (512-byte clusters); writes over many clusters, sent
as one request per contiguous host run; discard (of single clusters,
and of runs: one request per contiguous host run) and reuse of the freed
clusters; concurrent writes with flushes in flight; make_empty at
replication checkpoints with writes in between; active block-commit;
writes over the clusters an internal snapshot shares.

LOCKSTEP_POWERLOSS_POINTS=N sets the crash points per workload (default
150, a run of make check stays well under a minute);
LOCKSTEP_POWERLOSS_SEED=S replays one seed.
"""
import json
import os
import random

import pytest

import powerloss
from conftest import build_dir_path
from powerloss import DISCARD, Check, Guest, Log, snapshot
from qmp_client import Daemon

try:
    import nbd  # python3-libnbd
except ImportError:
    nbd = None

pytestmark = [
    pytest.mark.skipif(nbd is None, reason="python3-libnbd not installed"),
    pytest.mark.skipif(not __import__("shutil").which("qemu-img"),
                       reason="qemu-img not installed"),
]

KiB = 1024
MiB = 1024 * KiB
POINTS = int(os.environ.get("LOCKSTEP_POWERLOSS_POINTS", "25"))
SEED = os.environ.get("LOCKSTEP_POWERLOSS_SEED")


def lockstepd():
    path = os.path.join(build_dir_path(), "lockstepd")
    if not os.access(path, os.X_OK):
        pytest.skip("lockstepd is not built")
    return path


def seed_for(name):
    return int(SEED) if SEED else random.Random(name).randrange(1 << 30)


def create(path, size, opts="", backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if opts:
        argv += ["-o", opts]
    if backing:
        argv += ["-b", os.path.basename(backing), "-F", "qcow2"]
    powerloss.run_ok(argv + [path, str(size)])


class Recording:
    """Images (disk name -> path) about to be recorded into one blklog log,
    and the copy of their files taken before: the replay's start."""

    def __init__(self, d, images, log_name="blklog.log"):
        self.d = d
        self.log = os.path.join(d, log_name)
        self.files = {name: os.path.basename(path)
                      for name, path in images.items()}
        self.bases = snapshot(images, os.path.join(d, "before"))

    def logged_file(self, disk, path):
        """blockdev-add options of a file node recorded as disk."""
        return {"driver": "blklog", "log": self.log, "disk": disk,
                "file": {"driver": "file", "filename": path}}


class Recorder(Recording):
    """A Recording served by lockstepd (qcow2 nodes over blklog, an NBD
    server)."""

    def __init__(self, d, images, log_name="blklog.log"):
        super().__init__(d, images, log_name)
        self.daemon = Daemon(lockstepd(), d, name="rec")
        self.qmp = self.daemon.client()
        self.sock = os.path.join(d, "nbd.sock")
        self.qmp.cmd("nbd-server-start", {"addr": {
            "type": "unix", "data": {"path": self.sock}}})

    def add_qcow2(self, node, disk, path, backing=None, **opts):
        o = {"driver": "qcow2", "node-name": node, "discard": "unmap",
             "file": self.logged_file(disk, path)}
        if backing is not None:
            o["backing"] = backing
        o.update(opts)
        self.qmp.cmd("blockdev-add", o)

    def export(self, node, name):
        self.qmp.cmd("block-export-add", {"type": "nbd", "id": name,
                                          "name": name, "node-name": node,
                                          "writable": True})

    def connect(self, name):
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(self.sock)
        return h

    def stop(self):
        self.qmp.close()
        assert self.daemon.stop() == 0, self.daemon.stderr


class Writer:
    """A guest on one NBD connection that tells the model what it does."""

    def __init__(self, h, guest):
        self.h = h
        self.g = guest

    def write(self, off, n):
        op, data = self.g.issue(off, n)
        self.h.pwrite(data, off)
        self.g.ack(op)

    def zero(self, off, n, discard=False, keep=False):
        """Write zeroes (keep: NO_HOLE, the host clusters stay) or
        discard."""
        op, _ = self.g.issue(off, n, zero=True)
        if discard:
            self.h.trim(n, off)
        else:
            self.h.zero(n, off, nbd.CMD_FLAG_NO_HOLE if keep else 0)
        self.g.ack(op)

    def flush(self):
        covered = self.g.flush_start()
        self.h.flush()
        self.g.flush_done(covered)


def run_checks(rec, view, name, marks=()):
    log = Log(rec.log)
    seed = seed_for(name)
    points = powerloss.choose_points(
        log, POINTS, seed, [log.index_at(m) for m in marks])
    check = Check(os.path.join(rec.d, "crash"), rec.files, view)
    failures = check.run(log, rec.bases, points, seed)
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures))
    assert check.checked == len(points)


def random_io(rng, w, size, ops, max_len, flush_every, discard=0.0,
              cluster=64 * KiB, discard_clusters=1):
    """Random writes, write-zeroes and (a share of "discard") discards of
    1 to discard_clusters whole clusters."""
    for i in range(ops):
        r = rng.random()
        if r < discard:
            k = rng.randrange(1, discard_clusters + 1)
            c = rng.randrange(size // cluster - k + 1)
            w.zero(c * cluster, k * cluster, discard=True)
        elif r < discard + 0.05:
            n = rng.randrange(1, max_len // 512 + 1) * 512
            w.zero(rng.randrange((size - n) // 512 + 1) * 512, n)
        else:
            n = rng.randrange(1, max_len // 512 + 1) * 512
            w.write(rng.randrange((size - n) // 512 + 1) * 512, n)
        if rng.random() < 1.0 / flush_every:
            w.flush()


@pytest.mark.parametrize("opts", ["cluster_size=512,refcount_bits=64",
                                  "cluster_size=4096",
                                  "cluster_size=65536,extended_l2=on"])
def test_allocation_and_growth(tmp_path, opts):
    """Fresh clusters, new L2 tables and refcount blocks, refcount table
    growth (512-byte clusters: a one-cluster table covers 64 blocks of 64
    clusters) and an L1 table that grows with block_resize."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 4 * MiB
    create(img, size, opts)
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("alloc" + opts))
    random_io(rng, w, size, 60, 24 * KiB, 6)
    # An NBD export does not share resize (as in QEMU): resize between
    # two exports.
    w.h.shutdown()
    rec.qmp.cmd("block-export-del", {"id": "disk", "mode": "hard"})
    rec.qmp.cmd("block_resize", {"node-name": "disk", "size": 8 * MiB})
    rec.export("disk", "disk")
    w.h = rec.connect("disk")
    random_io(rng, w, size, 60, 64 * KiB, 6)
    w.flush()
    w.h.shutdown()
    rec.stop()
    run_checks(rec, lambda pos: ("disk.qcow2", guest), "alloc" + opts)


def test_discard_and_reuse(tmp_path):
    """Discarded clusters are reused for other guest data: a crash must
    never show one guest sector's data at another."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 2 * MiB
    create(img, size, "cluster_size=4096")
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("discard"))
    random_io(rng, w, size, 40, 32 * KiB, 5)
    w.flush()
    random_io(rng, w, size, 120, 16 * KiB, 8, discard=0.3, cluster=4096)
    w.flush()
    w.h.shutdown()
    rec.stop()
    run_checks(rec, lambda pos: ("disk.qcow2", guest), "discard")


def test_discard_runs_and_reuse(tmp_path):
    """Discards over runs of clusters contiguous on the host reach the
    file as one request per run, at the same point as one per cluster did
    (the L2 changes stable, the refcounts dropped in memory, s->lock
    held); the clusters are then reused: every crash image is consistent
    and shows no sector's data at another."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 4 * MiB
    create(img, size, "cluster_size=4096")
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("discard-runs"))
    # Large writes first: long runs on the host for the discards to meet.
    random_io(rng, w, size, 24, 256 * KiB, 4)
    w.flush()
    random_io(rng, w, size, 100, 64 * KiB, 6, discard=0.3, cluster=4096,
              discard_clusters=48)
    w.flush()
    w.h.shutdown()
    rec.stop()
    log = Log(rec.log)
    runs = [op for kind, op in log.records
            if kind == DISCARD and op is not None and op.bytes > 4096]
    assert runs, "no discard of more than one cluster reached the file"
    run_checks(rec, lambda pos: ("disk.qcow2", guest), "discard-runs")


def concurrent_io(h, guest, rng, size, ops, discard=0.0):
    """Writes (and whole-cluster discards) of several NBD requests at once
    on disjoint 64 KiB slots, with flushes sent while they are in flight."""
    inflight = {}       # slot -> (cookie, guest op)
    flushes = {}        # cookie -> what the flush covers

    def reap():
        for s, (cookie, op) in list(inflight.items()):
            if h.aio_command_completed(cookie):
                guest.ack(op)
                del inflight[s]
        for cookie, covered in list(flushes.items()):
            if h.aio_command_completed(cookie):
                guest.flush_done(covered)
                del flushes[cookie]

    for i in range(ops):
        slot = rng.randrange(size // (64 * KiB))
        if slot not in inflight:
            if rng.random() < discard:
                op, _ = guest.issue(slot * 64 * KiB, 64 * KiB, zero=True)
                cookie = h.aio_trim(64 * KiB, slot * 64 * KiB)
            else:
                n = rng.randrange(1, 17) * 4096
                off = slot * 64 * KiB + \
                    rng.randrange((64 * KiB - n) // 512 + 1) * 512
                op, data = guest.issue(off, n)
                cookie = h.aio_pwrite(
                    nbd.Buffer.from_bytearray(bytearray(data)), off)
            inflight[slot] = (cookie, op)
        if rng.random() < 0.1:
            flushes[h.aio_flush()] = guest.flush_start()
        while h.aio_in_flight() >= 12 or \
                (h.aio_in_flight() and rng.random() < 0.3):
            h.poll(-1)
            reap()
    while h.aio_in_flight():
        h.poll(-1)
        reap()


@pytest.mark.parametrize("backing", [False, True])
def test_concurrent_writes(tmp_path, backing):
    """Concurrent writes and discards; with a backing file every new
    cluster copies the backing data around the guest's, and a crash must
    never lose that (durable) data."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 4 * MiB
    initial = None
    unchanged = ()
    if backing:
        base = os.path.join(d, "base.qcow2")
        initial = powerloss.write_data(0, 0, size)
        with open(base + ".raw", "wb") as f:
            f.write(initial)
        powerloss.run_ok(["qemu-img", "convert", "-f", "raw", "-O",
                          "qcow2", "-o", "cluster_size=4096", base + ".raw",
                          base])
        create(img, size, "cluster_size=65536", backing=base)
        unchanged = (base,)
    else:
        create(img, size, "cluster_size=4096")
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size, initial)
    h = rec.connect("disk")
    name = "concurrent%s" % backing
    concurrent_io(h, guest, random.Random(seed_for(name)), size, 300,
                  discard=0.0 if backing else 0.15)
    h.shutdown()
    rec.stop()
    log = Log(rec.log)
    seed = seed_for(name)
    points = powerloss.choose_points(log, POINTS, seed)
    check = Check(os.path.join(d, "crash"), rec.files,
                  lambda pos: ("disk.qcow2", guest), unchanged)
    failures = check.run(log, rec.bases, points, seed)
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures))


@pytest.mark.parametrize("backing", [False, True])
def test_multi_cluster_writes(tmp_path, backing):
    """Guest writes over many 4 KiB clusters, which go down as one request
    per run of contiguous host clusters (new ones allocated together, or
    rewritten in place); unaligned, so a run has copy-on-write regions:
    zeroes, or with a backing file its data copied into the one write.
    The run's data must be durable before any L2 entry of it."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 4 * MiB
    initial = None
    unchanged = ()
    if backing:
        base = os.path.join(d, "base.qcow2")
        initial = powerloss.write_data(0, 0, size)
        with open(base + ".raw", "wb") as f:
            f.write(initial)
        powerloss.run_ok(["qemu-img", "convert", "-f", "raw", "-O",
                          "qcow2", base + ".raw", base])
        unchanged = (base,)
    create(img, size, "cluster_size=4096", backing=base if backing else None)
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size, initial)
    w = Writer(rec.connect("disk"), guest)
    name = "multicluster%s" % backing
    random_io(random.Random(seed_for(name)), w, size, 80, 256 * KiB, 5)
    w.flush()
    w.h.shutdown()
    rec.stop()
    log = Log(rec.log)
    assert any(op.kind == powerloss.WRITE and op.bytes > 64 * KiB
               for kind, op in log.records if op is not None)
    seed = seed_for(name)
    points = powerloss.choose_points(log, POINTS, seed)
    check = Check(os.path.join(d, "crash"), rec.files,
                  lambda pos: ("disk.qcow2", guest), unchanged)
    failures = check.run(log, rec.bases, points, seed)
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures))


def test_writes_over_snapshot(tmp_path):
    """An internal snapshot shares every L2 table and data cluster of the
    image; guest writes over many clusters then copy the shared tables and
    clusters (no run in place: their COPIED flags are clear), and later
    writes over the copies go down in place, batched.  A crash must keep
    the snapshot's data as it was and the active disk's durable writes."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 4 * MiB
    initial = powerloss.write_data(0, 0, size)
    image_with(img, initial, "cluster_size=4096")
    powerloss.run_ok(["qemu-img", "snapshot", "-c", "before", img])
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size, initial)
    frozen = Guest(rec.log, size, initial)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("snapshot"))
    random_io(rng, w, size, 60, 256 * KiB, 5, discard=0.05, cluster=4096)
    w.flush()
    random_io(rng, w, size, 40, 256 * KiB, 5)
    w.flush()
    w.h.shutdown()
    rec.stop()
    log = Log(rec.log)
    assert any(op.kind == powerloss.WRITE and op.bytes > 64 * KiB
               for kind, op in log.records if op is not None)
    run_checks(rec, lambda pos: [("disk.qcow2", guest),
                                 ("disk.qcow2:snap", frozen)], "snapshot")


def test_flush_races_allocation(tmp_path):
    """A flush that runs while a write into a new cluster is in flight
    writes back the refcount increase, so the next flush finds no dirty
    refcount block; the L2 entry it then writes must still not reach the
    disk before the data it maps (the data's copy-on-write from the
    backing file included)."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    base = os.path.join(d, "base.qcow2")
    size = 4 * MiB
    initial = powerloss.write_data(0, 0, size)
    with open(base + ".raw", "wb") as f:
        f.write(initial)
    powerloss.run_ok(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                      base + ".raw", base])
    create(img, size, "cluster_size=65536", backing=base)
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size, initial)
    h = rec.connect("disk")
    rng = random.Random(seed_for("race"))
    for c in rng.sample(range(size // (64 * KiB)), 40):
        off = c * 64 * KiB + rng.randrange(120) * 512
        op, data = guest.issue(off, 4096)
        wc = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)
        covered = guest.flush_start()
        fc = h.aio_flush()
        pending = {wc, fc}
        while True:
            pending = {c for c in pending if not h.aio_command_completed(c)}
            if not pending:
                break
            h.poll(-1)
        guest.ack(op)
        guest.flush_done(covered)
        covered = guest.flush_start()
        h.flush()
        guest.flush_done(covered)
    h.shutdown()
    rec.stop()
    log = Log(rec.log)
    seed = seed_for("race")
    points = powerloss.choose_points(log, POINTS, seed)
    check = Check(os.path.join(d, "crash"), rec.files,
                  lambda pos: ("disk.qcow2", guest), (base,))
    failures = check.run(log, rec.bases, points, seed)
    assert not failures, "seed %d:\n%s" % (seed, "\n".join(failures))


def test_rewrite_zeroed_cluster(tmp_path):
    """A write into a cluster zeroed with its host cluster kept writes in
    place and allocates nothing, so no refcount block is dirty at the next
    flush; the L2 entry that turns the cluster back into data must still
    not reach the disk before the data (else the old bytes from before
    the zeroing show)."""
    d = str(tmp_path)
    img = os.path.join(d, "disk.qcow2")
    size = 2 * MiB
    create(img, size, "cluster_size=65536")
    rec = Recorder(d, {"disk": img})
    rec.add_qcow2("disk", "disk", img)
    rec.export("disk", "disk")
    guest = Guest(rec.log, size)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("zeroed"))
    for c in range(size // (64 * KiB)):
        w.write(c * 64 * KiB, 64 * KiB)
    w.flush()
    for c in range(size // (64 * KiB)):
        w.zero(c * 64 * KiB, 64 * KiB, keep=True)
        w.flush()
        w.write(c * 64 * KiB + rng.randrange(120) * 512, 4096)
        w.flush()
    w.h.shutdown()
    rec.stop()
    run_checks(rec, lambda pos: ("disk.qcow2", guest), "zeroed")


def image_with(path, content, opts="cluster_size=65536"):
    """A qcow2 image holding content (written before any recording)."""
    with open(path + ".raw", "wb") as f:
        f.write(content)
    powerloss.run_ok(["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
                      "-o", opts, path + ".raw", path])
    os.unlink(path + ".raw")


def test_active_commit(tmp_path):
    """Active block-commit of top into base while the guest writes: up to
    the pivot the chain holds the guest's disk, after it base alone."""
    d = str(tmp_path)
    base = os.path.join(d, "base.qcow2")
    top = os.path.join(d, "top.qcow2")
    size = 4 * MiB
    initial = powerloss.write_data(0, 0, size)
    image_with(base, initial, "cluster_size=4096")
    create(top, size, "cluster_size=65536", backing=base)
    rec = Recorder(d, {"base": base, "top": top})
    rec.add_qcow2("top", "top", top,
                  backing={"driver": "qcow2", "node-name": "base",
                           "file": rec.logged_file("base", base)})
    rec.export("top", "disk")
    guest = Guest(rec.log, size, initial)
    w = Writer(rec.connect("disk"), guest)
    rng = random.Random(seed_for("commit"))
    random_io(rng, w, size, 40, 32 * KiB, 5)
    rec.qmp.cmd("block-commit", {"job-id": "c0", "device": "top"})
    rec.qmp.wait_event_match("BLOCK_JOB_READY", device="c0")
    random_io(rng, w, size, 20, 32 * KiB, 5)
    w.flush()
    rec.qmp.cmd("job-complete", {"id": "c0"})
    ev = rec.qmp.wait_event_match("BLOCK_JOB_COMPLETED", device="c0")
    assert "error" not in ev["data"], ev
    pivot = guest.position()
    random_io(rng, w, size, 30, 32 * KiB, 5)
    w.flush()
    w.h.shutdown()
    rec.stop()
    run_checks(rec, lambda pos: ("top.qcow2" if pos < pivot
                                 else "base.qcow2", guest), "commit",
               marks=[pivot])


class Emptied:
    """An overlay read alone that make_empty empties now and then: each
    sector reads as zeroes or as a write issued after the start of the
    last emptying that had finished, never as older data."""

    def __init__(self, guest):
        self.g = guest
        self.empties = []       # (start, done) log positions

    def verify(self, actual, pos):
        done = [s for s, e in self.empties if e <= pos]
        since = done[-1] if done else -1
        allowed = {}
        for o in self.g.ops:
            if since < o.issued < pos and not o.zero:
                for s in range(o.offset // powerloss.SECTOR,
                               (o.offset + o.bytes) // powerloss.SECTOR):
                    allowed.setdefault(s, set()).add(
                        powerloss.sector_data(o.wid, s))
        zero = bytes(powerloss.SECTOR)
        for s in range(len(actual) // powerloss.SECTOR):
            got = actual[s * powerloss.SECTOR:(s + 1) * powerloss.SECTOR]
            if got != zero and got not in allowed.get(s, ()):
                return "sector %d: %s after an emptying" % (
                    s, powerloss.describe(got))
        return None


def test_replication_checkpoints(tmp_path):
    """COLO's secondary: make_empty of the active and hidden disks at every
    checkpoint, with the primary's writes to the secondary disk and the
    secondary guest's writes in between.  The secondary disk keeps every
    flushed write; what a finished checkpoint emptied never comes back in
    the active disk."""
    d = str(tmp_path)
    size = 4 * MiB
    paths = {n: os.path.join(d, n + ".qcow2")
             for n in ("sec", "active", "hidden")}
    initial = powerloss.write_data(0, 0, size)
    image_with(paths["sec"], initial)
    for n in ("active", "hidden"):
        create(paths[n], size, "cluster_size=65536")
    rec = Recorder(d, paths)
    q = rec.qmp
    rec.add_qcow2("sec-disk", "sec", paths["sec"])
    rec.export("sec-disk", "sec-disk")
    q.cmd("blockdev-add", {
        "driver": "replication", "node-name": "rep", "mode": "secondary",
        "top-id": "top",
        "file": {"driver": "qcow2", "node-name": "active",
                 "file": rec.logged_file("active", paths["active"]),
                 "backing": {"driver": "qcow2", "node-name": "hidden",
                             "file": rec.logged_file("hidden",
                                                     paths["hidden"]),
                             "backing": "sec-disk"}}})
    q.cmd("blockdev-add", {"driver": "quorum", "node-name": "top",
                           "read-pattern": "fifo", "vote-threshold": 1,
                           "children": ["rep"]})
    rec.export("top", "top")
    q.cmd("xen-set-replication", {"enable": True, "primary": False})
    primary = Writer(rec.connect("sec-disk"), Guest(rec.log, size, initial))
    vm_guest = Guest(rec.log, size)
    vm = Writer(rec.connect("top"), vm_guest)
    emptied = Emptied(vm_guest)
    rng = random.Random(seed_for("replication"))
    for _ in range(8):
        random_io(rng, primary, size, 8, 32 * KiB, 3)
        for _ in range(rng.randrange(1, 5)):
            vm.write(rng.randrange(size // (64 * KiB)) * 64 * KiB, 64 * KiB)
        if rng.random() < 0.5:
            vm.flush()
        start = vm_guest.position()
        q.cmd("xen-colo-do-checkpoint")
        emptied.empties.append((start, vm_guest.position()))
    primary.flush()
    for w in (primary, vm):
        w.h.shutdown()
    rec.stop()
    run_checks(rec, lambda pos: [("sec.qcow2", primary.g),
                                 ("active.qcow2:alone", emptied)],
               "replication",
               marks=[e for _, e in emptied.empties])


def test_img_commit(tmp_path):
    """lockstep-img commit (--image-opts puts both files on blklog): the
    chain shows the guest's disk at every instant, while the data moves
    into base and while make_empty empties top."""
    d = str(tmp_path)
    base = os.path.join(d, "base.qcow2")
    top = os.path.join(d, "top.qcow2")
    size = 4 * MiB
    initial = powerloss.write_data(0, 0, size)
    image_with(base, initial, "cluster_size=4096")
    create(top, size, "cluster_size=65536", backing=base)
    # The guest's data in top, written before the recording: all durable.
    guest = Guest(os.path.join(d, "blklog.log"), size, initial)
    with Daemon(lockstepd(), d, name="pre") as dmn:
        q = dmn.client()
        sock = os.path.join(d, "pre-nbd.sock")
        q.cmd("nbd-server-start", {"addr": {"type": "unix",
                                            "data": {"path": sock}}})
        q.cmd("blockdev-add", {"driver": "qcow2", "node-name": "top",
                               "discard": "unmap",
                               "file": {"driver": "file",
                                        "filename": top}})
        q.cmd("block-export-add", {"type": "nbd", "id": "top",
                                   "node-name": "top", "writable": True})
        h = nbd.NBD()
        h.set_export_name("top")
        h.connect_unix(sock)
        w = Writer(h, guest)
        random_io(random.Random(seed_for("img-commit")), w, size, 60,
                  96 * KiB, 10)
        w.flush()
        h.shutdown()
        q.close()
    guest.all_durable()
    rec = Recording(d, {"base": base, "top": top})
    opts = {"driver": "qcow2", "file": rec.logged_file("top", top),
            "backing": {"driver": "qcow2",
                        "file": rec.logged_file("base", base)}}
    img = os.path.join(build_dir_path(), "lockstep-img")
    powerloss.run_ok([img, "commit", "--image-opts", json.dumps(opts)])
    run_checks(rec, lambda pos: ("top.qcow2", guest), "img-commit")


@pytest.mark.parametrize("opts", ["cluster_size=512", "extended_l2=on",
                                  "compat=0.10", "compressed", "snapshot"])
def test_reader_matches_qemu(tmp_path, opts):
    """The model's own qcow2 reader (powerloss.read_qcow2) reads what
    qemu-img reads: standard and extended L2, zero clusters, v2,
    compressed clusters, a backing chain, an internal snapshot."""
    d = str(tmp_path)
    raw = os.path.join(d, "a.raw")
    img = os.path.join(d, "a.qcow2")
    top = os.path.join(d, "t.qcow2")
    create(img, 4 * MiB, "" if opts in ("compressed", "snapshot")
           else opts)
    cmds = ["write -P 3 1000 70000", "write -P 5 2M 3000",
            "write -z 1M 64k", "discard 2M 512"]
    if opts == "compat=0.10":
        cmds = cmds[:2]
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    powerloss.run_ok(argv + [img])
    if opts == "compressed":
        powerloss.run_ok(["qemu-img", "convert", "-c", "-O", "qcow2", img,
                          img + ".c"])
        os.replace(img + ".c", img)
    if opts == "snapshot":
        snap = os.path.join(d, "snap.raw")
        powerloss.run_ok(["qemu-img", "snapshot", "-c", "s", img])
        powerloss.run_ok(["qemu-io", "-f", "qcow2", "-c",
                          "write -P 7 1500 90000", "-c", "write -z 3M 8k",
                          img])
        powerloss.run_ok(["qemu-img", "convert", "-O", "raw", "-l",
                          "snapshot.name=s", img, snap])
        with open(snap, "rb") as f:
            assert powerloss.read_qcow2(img, snap=0) == f.read()
    create(top, 4 * MiB, "", backing=img)
    powerloss.run_ok(["qemu-io", "-f", "qcow2", "-c", "write -P 9 4096 512",
                      top])
    for path in (img, top):
        powerloss.run_ok(["qemu-img", "convert", "-O", "raw", path, raw])
        with open(raw, "rb") as f:
            assert powerloss.read_qcow2(path) == f.read()
