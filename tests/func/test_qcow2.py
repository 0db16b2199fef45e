# SPDX-License-Identifier: MIT
"""Interoperability tests of the qcow2 driver with QEMU's own tools.

Images created and written through lockstep (lockstep-img create, which
calls qcow2_create, and lockstep-io) must pass `qemu-img check` with no
errors and no leaks and read back through qemu-io; images written by
qemu-img/qemu-io (zero clusters, discards, refcount widths 1 and 64,
extended L2, compression, v2) must read back through lockstep; backing
chains mix both with relative backing names; a random workload is compared
with a raw reference; a crash test kills a writer with SIGKILL many times.
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import run
from qcow2_layout import Qcow2

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")

pytestmark = pytest.mark.skipif(not QEMU_IMG or not QEMU_IO,
                                reason="qemu-img/qemu-io not installed")

CLUSTER_SIZES = [512 << i for i in range(13)]     # 512 B .. 2 MiB


@pytest.fixture(scope="session")
def lockstep_img(build_dir):
    path = os.path.join(build_dir, "lockstep-img")
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % path)
    return path


def ok(res):
    assert res.returncode == 0, "stdout:\n%s\nstderr:\n%s" % (res.stdout,
                                                              res.stderr)
    return res


def lio(lockstep_io, img, *cmds, fmt="qcow2", extra=()):
    argv = [lockstep_io, "-f", fmt] + list(extra)
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [img])


def qio(img, *cmds, fmt="qcow2"):
    argv = [QEMU_IO, "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [img])


def check_clean(img):
    res = run([QEMU_IMG, "check", "--output=json", img])
    assert res.returncode == 0, res.stdout + res.stderr
    import json
    info = json.loads(res.stdout)
    assert info.get("corruptions", 0) == 0
    assert info.get("leaks", 0) == 0
    assert info.get("check-errors", 0) == 0
    return info


def assert_read_ok(res):
    ok(res)
    assert "Pattern verification failed" not in res.stdout, res.stdout


# ---- Images written by lockstep, checked by QEMU --------------------------

WRITES = [
    ("0x11", 0, 4096),
    ("0x22", 1000, 70000),
    ("0x33", 3 * 1048576 + 517, 2 * 1048576 + 3),
    ("0x44", 20 * 1048576 - 512, 1536),
    ("0x55", 31 * 1048576, 1048576),
]


@pytest.mark.parametrize("cs", CLUSTER_SIZES)
def test_lockstep_written_checks_clean(lockstep_io, lockstep_img, tmp_dir,
                                       cs):
    img = os.path.join(tmp_dir, "t.qcow2")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=%d" % cs, img, "32M"]))
    check_clean(img)
    cmds = ["write -P %s %d %d" % w for w in WRITES]
    cmds += ["write -z 8M 3M", "write -z -u 31M 64k", "discard 24M 4M",
             "write -P 0x66 25M 4097"]
    ok(lio(lockstep_io, img, *cmds))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0x11 0 1000",
                       "read -P 0x22 1000 70000",
                       "read -P 0x33 %d %d" % (3 * 1048576 + 517,
                                               2 * 1048576 + 3),
                       "read -P 0 8M 3M",
                       "read -P 0x44 %d 1536" % (20 * 1048576 - 512),
                       "read -P 0 24M 1M",
                       "read -P 0x66 25M 4097",
                       "read -P 0 31M 64k",
                       "read -P 0x55 %d %d" % (31 * 1048576 + 65536,
                                               1048576 - 65536)))


@pytest.mark.parametrize("opts", ["refcount_bits=1", "refcount_bits=64",
                                  "extended_l2=on",
                                  "extended_l2=on,cluster_size=16k",
                                  "cluster_size=512,refcount_bits=2",
                                  "preallocation=metadata",
                                  "compat=0.10"])
def test_lockstep_create_options(lockstep_io, lockstep_img, tmp_dir, opts):
    img = os.path.join(tmp_dir, "o.qcow2")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o", opts, img,
            "16M"]))
    check_clean(img)
    ok(lio(lockstep_io, img, "write -P 0xa5 4097 200000",
           "write -z 1M 1M", "write -P 0x5a 3M 12345"))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0xa5 4097 200000", "read -P 0 1M 1M",
                       "read -P 0x5a 3M 12345"))


# ---- Images written by QEMU, read by lockstep -----------------------------

@pytest.mark.parametrize("opts", ["cluster_size=65536", "refcount_bits=1",
                                  "refcount_bits=64", "extended_l2=on",
                                  "cluster_size=512", "cluster_size=2M",
                                  "compat=0.10"])
def test_qemu_written_read_by_lockstep(lockstep_io, tmp_dir, opts):
    img = os.path.join(tmp_dir, "q.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", opts, img,
            "32M"]))
    zero = "write -z 2M 1M" if "compat=0.10" not in opts else \
        "write -P 0 2M 1M"
    ok(qio(img, "write -P 0x71 0 3M", zero, "write -P 0x72 5M 100000",
           "discard 5M 64k", "write -P 0x73 9M 4k", "write -P 0x74 9M 512"))
    assert_read_ok(lio(lockstep_io, img, "read -P 0x71 0 2M",
                       "read -P 0 2M 1M", "read -P 0x71 2M 0",
                       "read -P 0x72 %d %d" % (5 * 1048576 + 65536,
                                               100000 - 65536),
                       "read -P 0x74 9M 512",
                       "read -P 0x73 %d 3584" % (9 * 1048576 + 512),
                       "read -P 0 20M 1M", extra=("-r",)))
    # And lockstep may keep writing to it.
    ok(lio(lockstep_io, img, "write -P 0x75 1M 65537", "write -z 0 4096"))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0 0 4096", "read -P 0x71 4096 1044480",
                       "read -P 0x75 1M 65537"))


@pytest.mark.parametrize("cs", ["512", "4096", "65536", "2M"])
def test_compressed_read(lockstep_io, lockstep_img, tmp_dir, cs):
    raw = os.path.join(tmp_dir, "src.raw")
    img = os.path.join(tmp_dir, "c.qcow2")
    with open(raw, "wb") as f:
        for i in range(64):
            f.write(bytes([i]) * 65536)
        f.write(os.urandom(65536 * 3))
    ok(run([QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
            "cluster_size=" + cs, raw, img]))
    res = run([QEMU_IMG, "info", "--output=json", img])
    # Everything back through lockstep's read path.
    ok(run([lockstep_img, "compare", "-f", "raw", "-F", "qcow2", raw, img]))
    res = ok(run([lockstep_io, "-r", "-f", "qcow2", "-c",
                  "read -v 65536 64", img]))
    assert "01 01 01 01" in res.stdout
    # Overwriting part of a compressed cluster copies the rest.
    ok(lio(lockstep_io, img, "write -P 0xee 65636 100"))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 1 65536 100", "read -P 0xee 65636 100",
                       "read -P 1 65736 65336", "read -P 2 131072 65536"))


# ---- Backing chains ----------------------------------------------------------

@pytest.mark.parametrize("top_tool", ["lockstep", "qemu"])
@pytest.mark.parametrize("ext", [False, True])
def test_backing_chain_relative(lockstep_io, lockstep_img, tmp_dir,
                                top_tool, ext):
    os.mkdir(os.path.join(tmp_dir, "d"))
    base = os.path.join(tmp_dir, "d", "base.qcow2")
    mid = os.path.join(tmp_dir, "d", "mid.qcow2")
    top = os.path.join(tmp_dir, "d", "top.qcow2")
    opts = "extended_l2=on" if ext else "cluster_size=65536"
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", base, "16M"]))
    ok(qio(base, "write -P 0x10 0 16M"))
    # mid by the other tool, top by this one, relative names everywhere.
    other = [QEMU_IMG] if top_tool == "lockstep" else [lockstep_img]
    this = [lockstep_img] if top_tool == "lockstep" else [QEMU_IMG]
    ok(run(other + ["create", "-q", "-f", "qcow2", "-o", opts, "-b",
                    "base.qcow2", "-F", "qcow2", mid, "16M"]))
    ok(run(this + ["create", "-q", "-f", "qcow2", "-o", opts, "-b",
                   "mid.qcow2", "-F", "qcow2", top, "16M"]))
    ok(qio(mid, "write -P 0x20 1M 1M"))
    cwd = os.getcwd()
    os.chdir("/")
    try:
        ok(lio(lockstep_io, top, "write -P 0x30 %d 1000" % (1048576 + 5000),
               "write -z 3M 64k", "discard 4M 64k"))
    finally:
        os.chdir(cwd)
    check_clean(top)
    check_clean(mid)
    expect = ["read -P 0x10 0 1M", "read -P 0x20 1M 5000",
              "read -P 0x30 %d 1000" % (1048576 + 5000),
              "read -P 0x20 %d %d" % (1048576 + 6000, 1048576 - 6000),
              "read -P 0 3M 64k", "read -P 0 4M 64k",
              "read -P 0x10 %d 64k" % (3 * 1048576 + 65536)]
    assert_read_ok(qio(top, *expect))
    assert_read_ok(lio(lockstep_io, top, *expect, extra=("-r",)))
    # The top layer only holds what was written there.
    res = ok(run([QEMU_IMG, "map", "--output=json", top]))
    assert '"depth": 0' in res.stdout.replace(" ", " ")


@pytest.mark.parametrize("cs", [512, 65536])
def test_open_cache_direct(lockstep_io, disk_dir, cs):
    """file.cache.direct=on on a disk: O_DIRECT refuses I/O that is not
    block aligned, also the header read of a whole image whose length is
    not ("Could not read qcow2 header: Invalid argument" before).  Writes
    that allocate, copy on write and end the file mid-block work too."""
    img = os.path.join(disk_dir, "d.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=%d" % cs, img, "64M"]))
    if cs == 65536:
        assert os.path.getsize(img) % 512 != 0      # 3 clusters + 8 bytes
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on" % img)
    ok(run([lockstep_io, "--image-opts", "-c", "read 0 4k", opts]))
    ok(run([lockstep_io, "--image-opts", "-c", "write -P 0x5a 1 5000",
            "-c", "write -P 0x5b 70000 1", "-c", "write -z 1M 3000",
            "-c", "discard 2M 1M", "-c", "read -P 0x5a 1 5000", opts]))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0 0 1", "read -P 0x5a 1 5000",
                       "read -P 0x5b 70000 1", "read -P 0 1M 3000"))


def test_commit_empties_overlay(lockstep_io, lockstep_img, tmp_dir):
    """lockstep-img commit ends with make_empty on the overlay."""
    base = os.path.join(tmp_dir, "base.qcow2")
    top = os.path.join(tmp_dir, "top.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", base, "64M"]))
    ok(qio(base, "write -P 1 0 64M"))
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2",
            "-F", "qcow2", top, "64M"]))
    ok(lio(lockstep_io, top, "write -P 2 1M 30M", "write -z 40M 1M"))
    ok(run([lockstep_img, "commit", "-q", top]))
    check_clean(top)
    check_clean(base)
    # Fresh-image layout again: header, reftable, refblock, L1.
    assert os.path.getsize(top) <= 3 * 65536 + 4096
    expect = ["read -P 1 0 1M", "read -P 2 1M 30M", "read -P 1 31M 9M",
              "read -P 0 40M 1M", "read -P 1 41M 23M"]
    assert_read_ok(qio(top, *expect))
    assert_read_ok(qio(base, *expect))
    res = ok(run([QEMU_IMG, "map", "--output=json", top]))
    assert '"depth": 0' not in res.stdout


def test_raw_backing_and_explicit_null(lockstep_io, tmp_dir):
    base = os.path.join(tmp_dir, "base.raw")
    top = os.path.join(tmp_dir, "top.qcow2")
    with open(base, "wb") as f:
        f.write(b"\x42" * (4 << 20))
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F",
            "raw", top, "8M"]))
    assert_read_ok(lio(lockstep_io, top, "read -P 0x42 0 4M",
                       "read -P 0 4M 4M", extra=("-r",)))
    opts = ('{"driver": "qcow2", "backing": null, "file": '
            '{"driver": "file", "filename": "%s"}}' % top)
    res = ok(run([lockstep_io, "-r", "--image-opts", "-c", "read -P 0 0 4M",
                  opts]))
    assert "Pattern verification failed" not in res.stdout


# ---- Random workload against a raw model ---------------------------------

@pytest.mark.parametrize("opts,cache", [
    ("cluster_size=65536", None),
    ("cluster_size=512", None),
    ("cluster_size=512,refcount_bits=16", "l2-cache-size=2048,"
     "refcount-cache-size=2048"),
    ("extended_l2=on", None),
    ("extended_l2=on,cluster_size=16384", "cache-size=65536"),
    ("cluster_size=4096,refcount_bits=1", None)])
def test_random_ops_compare(lockstep_io, lockstep_img, tmp_dir, opts, cache):
    size = 16 << 20
    img = os.path.join(tmp_dir, "r.qcow2")
    ref = os.path.join(tmp_dir, "r.raw")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o", opts, img,
            str(size)]))
    cs = 65536
    for o in opts.split(","):
        if o.startswith("cluster_size="):
            cs = int(o.split("=")[1])
    rnd = random.Random(hash(opts) & 0xffff)
    model = bytearray(size)
    cmds = []
    for i in range(3000):
        kind = rnd.random()
        off = rnd.randrange(size)
        length = min(rnd.choice([1, 511, 512, 4096, 65536, 300000]) +
                     rnd.randrange(3000), size - off)
        if kind < 0.6:
            pat = rnd.randrange(1, 256)
            cmds.append("write -P %d %d %d" % (pat, off, length))
            model[off:off + length] = bytes([pat]) * length
        elif kind < 0.8:
            cmds.append("write -z%s %d %d" % (" -u" if rnd.random() < 0.5
                                              else "", off, length))
            model[off:off + length] = bytes(length)
        elif kind < 0.95:
            # Only whole clusters are guaranteed to be discarded.
            start = (off + cs - 1) // cs * cs
            end = (off + length) // cs * cs
            if end > start:
                cmds.append("discard %d %d" % (start, end - start))
                model[start:end] = bytes(end - start)
        else:
            cmds.append("flush")
    with open(ref, "wb") as f:
        f.write(model)
    if cache:
        # Tiny caches: every table goes through eviction and write-back.
        argv = [lockstep_io, "--image-opts",
                "driver=qcow2,%s,file.driver=file,file.filename=%s" %
                (cache, img)]
    else:
        argv = [lockstep_io, "-f", "qcow2", img]
    res = run(argv, stdin="\n".join(cmds) + "\n", timeout=600)
    ok(res)
    check_clean(img)
    ok(run([QEMU_IMG, "compare", "-f", "raw", "-F", "qcow2", ref, img]))
    # And read back through lockstep's own read path.
    ok(run([lockstep_img, "compare", "-f", "raw", "-F", "qcow2", ref, img]))


# ---- Crash safety ------------------------------------------------------------

@pytest.mark.parametrize("opts", [
    "cluster_size=4096",
    # Tiny refcount blocks: the refcount table grows while being killed.
    "cluster_size=512,refcount_bits=64",
    "extended_l2=on,cluster_size=32768"])
def test_crash_sigkill(lockstep_io, lockstep_img, tmp_dir, opts):
    if not shutil.which("stdbuf"):
        pytest.skip("stdbuf missing")
    img = os.path.join(tmp_dir, "k.qcow2")
    size = 64 << 20
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o", opts, img,
            str(size)]))
    rnd = random.Random(7)
    deadline = time.time() + 20
    durable = {}          # region index -> pattern known to be stable
    region = 256 * 1024
    nregions = size // region
    rounds = 0
    while time.time() < deadline:
        rounds += 1
        cmds = []
        fua = {}
        for i in range(4000):
            r = rnd.randrange(nregions)
            pat = rnd.randrange(1, 256)
            off = r * region + rnd.randrange(region // 2)
            length = rnd.randrange(1, region // 2)
            k = rnd.random()
            if k < 0.05:
                cmds.append("flush")
            elif k < 0.15 and r not in durable and r * region not in fua:
                # A FUA write covering a whole region, never rewritten.
                cmds.append("write -f -P %d %d %d" % (pat, r * region,
                                                       region))
                fua[r * region] = (r, pat)
            elif k < 0.25:
                if r not in durable and r * region not in fua:
                    cmds.append("write -z %d %d" % (off, length))
            elif k < 0.3:
                if r not in durable and r * region not in fua:
                    cmds.append("discard %d %d" % (r * region, region))
            else:
                if r not in durable and r * region not in fua:
                    cmds.append("write -P %d %d %d" % (pat, off, length))
        p = subprocess.Popen(["stdbuf", "-oL", lockstep_io, "-f", "qcow2",
                              img], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        try:
            p.stdin.write("\n".join(cmds) + "\n")
            p.stdin.flush()
        except BrokenPipeError:
            pass
        time.sleep(rnd.uniform(0.02, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        for line in out.splitlines():
            if line.startswith("wrote %d/" % region):
                off = int(line.split()[-1])
                if off in fua:
                    r, pat = fua[off]
                    durable[r] = pat
        res = run([QEMU_IMG, "check", img])
        assert res.returncode in (0, 3), res.stdout + res.stderr
        if durable:
            reads = ["read -P %d %d %d" % (pat, r * region, region)
                     for r, pat in sorted(durable.items())]
            assert_read_ok(qio(img, *reads))
    assert rounds >= 3


# ---- Failing metadata writes (blkdebug events) ------------------------------

@pytest.mark.parametrize("event", ["l1_update", "l2_update", "l2_alloc_write",
                                   "refblock_update", "refblock_alloc",
                                   "cluster_alloc", "cow_write", "cow_read",
                                   "write_aio"])
def test_blkdebug_event_errors_leave_no_corruption(lockstep_io, tmp_dir,
                                                   event):
    img = os.path.join(tmp_dir, "e.qcow2")
    # 512-byte clusters, 64-bit refcounts: refcount blocks get allocated.
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=512,refcount_bits=64", img, "16M"]))
    opts = ("driver=qcow2,file.driver=blkdebug,"
            "file.inject-error.0.event=%s,file.inject-error.0.once=on,"
            "file.image.driver=file,file.image.filename=%s" % (event, img))
    res = run([lockstep_io, "--image-opts", "-c", "write -P 1 100 1M",
               "-c", "write -P 2 4M 100", "-c", "flush", "-c",
               "write -z -u 0 64k", "-c", "discard 4M 64k", "-c",
               "write -P 3 8M 200k", opts])
    if event not in ("cow_read",):
        # A failed write says so; a failed flush (metadata written back
        # in writeback mode, as -t none) only sets the exit status, as
        # qemu-io's flush prints nothing.
        assert ("Input/output error" in res.stdout + res.stderr or
                res.returncode == 1), res.stdout + res.stderr
    chk = run([QEMU_IMG, "check", img])
    assert chk.returncode in (0, 3), chk.stdout + chk.stderr
    # The image stays usable.
    ok(lio(lockstep_io, img, "write -P 4 12M 64k"))
    assert_read_ok(qio(img, "read -P 4 12M 64k"))


# ---- Discard passthrough -------------------------------------------------------

@pytest.mark.parametrize("passdown", [True, False])
def test_discard_passthrough(lockstep_io, lockstep_img, tmp_dir, passdown):
    img = os.path.join(tmp_dir, "p.qcow2")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", img, "64M"]))
    ok(lio(lockstep_io, img, "write -P 1 0 32M"))
    full = os.stat(img).st_blocks
    opts = ("driver=qcow2,discard=unmap,pass-discard-request=%s,"
            "file.driver=file,file.filename=%s" % ("on" if passdown else "off",
                                                   img))
    ok(run([lockstep_io, "--image-opts", "-c", "discard 0 32M", opts]))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0 0 32M"))
    if passdown:
        assert os.stat(img).st_blocks < full // 4
    else:
        assert os.stat(img).st_blocks >= full * 9 // 10


# ---- Header extensions ------------------------------------------------------

def add_unknown_extension(img):
    """Append an unknown header extension before the end marker."""
    with open(img, "r+b") as f:
        hdr = f.read(4096)
        off = struct.unpack(">I", hdr[100:104])[0]
        while True:
            magic, length = struct.unpack(">II", hdr[off:off + 8])
            if magic == 0:
                break
            off += 8 + (length + 7) // 8 * 8
        f.seek(off)
        f.write(struct.pack(">II", 0x7a7a7a7a, 5) + b"hello\0\0\0" +
                bytes(8))


def test_unknown_extension_and_compat_bit_preserved(lockstep_io, tmp_dir):
    img = os.path.join(tmp_dir, "x.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "16M"]))
    add_unknown_extension(img)
    with open(img, "r+b") as f:
        f.seek(80)
        f.write(struct.pack(">Q", 1 << 7))      # unknown compatible bit
    with open(img, "rb") as f:
        before = f.read(65536)
    ok(lio(lockstep_io, img, "write -P 9 0 3M", "write -z 1M 64k",
           "discard 2M 64k"))
    with open(img, "rb") as f:
        after = f.read(65536)
    assert before == after
    check_clean(img)
    assert_read_ok(qio(img, "read -P 9 0 1M", "read -P 0 1M 64k",
                       "read -P 0 2M 64k", "read -P 9 %d %d" % (
                           2 * 1048576 + 65536, 1048576 - 65536)))


# ---- Resize --------------------------------------------------------------------

def test_resize_grow(lockstep_io, lockstep_img, tmp_dir):
    img = os.path.join(tmp_dir, "g.qcow2")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=512", img, "16M"]))
    ok(lio(lockstep_io, img, "write -P 7 0 1M"))
    # 512-byte clusters: growing to 64M needs a bigger L1 table.
    ok(run([lockstep_img, "resize", img, "64M"]))
    ok(lio(lockstep_io, img, "write -P 8 60M 1M"))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 7 0 1M", "read -P 8 60M 1M",
                       "read -P 0 20M 1M"))
    # With a bigger backing file the new area must read as zeroes.
    base = os.path.join(tmp_dir, "b.qcow2")
    top = os.path.join(tmp_dir, "t.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", base, "32M"]))
    ok(qio(base, "write -P 9 0 32M"))
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F",
            "qcow2", top, "16M"]))
    ok(run([lockstep_img, "resize", top, "32M"]))
    check_clean(top)
    assert_read_ok(qio(top, "read -P 9 0 16M", "read -P 0 16M 16M"))


@pytest.mark.parametrize("opts", ["cluster_size=4096", "extended_l2=on"])
def test_resize_shrink_and_regrow(lockstep_io, lockstep_img, tmp_dir, opts):
    img = os.path.join(tmp_dir, "s.qcow2")
    ok(run([lockstep_img, "create", "-q", "-f", "qcow2", "-o", opts, img,
            "64M"]))
    ok(lio(lockstep_io, img, "write -P 5 0 64M"))
    # Not cluster aligned: the last cluster is cut in the middle.
    new = 10 * 1048576 + 512
    ok(run([lockstep_img, "resize", "--shrink", img, str(new)]))
    check_clean(img)
    res = ok(run([QEMU_IMG, "info", "--output=json", img]))
    assert '"virtual-size": %d' % new in res.stdout
    ok(run([lockstep_img, "resize", img, "32M"]))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 5 0 %d" % new,
                       "read -P 0 %d %d" % (new, 32 * 1048576 - new)))


def test_v2_discard_and_zero(lockstep_io, tmp_dir):
    img = os.path.join(tmp_dir, "v2.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "compat=0.10",
            img, "8M"]))
    ok(lio(lockstep_io, img, "write -P 3 0 2M", "discard 0 64k",
           "write -z -u 64k 64k", "write -z 128k 1000"))
    check_clean(img)
    assert_read_ok(qio(img, "read -P 0 0 128k", "read -P 0 128k 1000",
                       "read -P 3 %d %d" % (128 * 1024 + 1000,
                                            2 * 1048576 - 128 * 1024 - 1000)))


# ---- Corrupt and flagged images ---------------------------------------------

def set_incompat(img, bits):
    with open(img, "r+b") as f:
        f.seek(72)
        cur = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", cur | bits))


def test_corrupt_and_dirty_bits(lockstep_io, tmp_dir):
    img = os.path.join(tmp_dir, "c.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "1M"]))
    set_incompat(img, 2)
    res = lio(lockstep_io, img, "read 0 512")
    assert res.returncode != 0
    assert "corrupt" in res.stderr
    ok(lio(lockstep_io, img, "read 0 512", extra=("-r",)))
    img2 = os.path.join(tmp_dir, "d.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img2, "1M"]))
    set_incompat(img2, 1)
    # Dirty (lazy refcounts, not closed): a writable open repairs it first,
    # as QEMU does, and clears the bit.
    ok(lio(lockstep_io, img2, "read 0 512"))
    with open(img2, "rb") as f:
        f.seek(72)
        assert struct.unpack(">Q", f.read(8))[0] == 0


def test_unknown_feature_refused(lockstep_io, tmp_dir):
    img = os.path.join(tmp_dir, "u.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "1M"]))
    set_incompat(img, 1 << 9)
    res = lio(lockstep_io, img, "read 0 512", extra=("-r",))
    assert res.returncode != 0
    # QEMU's words for bits the image's feature table does not name.
    assert "Unknown incompatible feature: 200" in res.stderr


@pytest.mark.parametrize("what", ["encryption", "data_file"])
def test_unsupported_refused(lockstep_io, tmp_dir, what):
    img = os.path.join(tmp_dir, "n.qcow2")
    opts = "cluster_size=65536"
    if what == "data_file":
        opts = "data_file=" + os.path.join(tmp_dir, "n.data")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", opts, img, "1M"]))
    if what == "encryption":
        # LUKS creation benchmarks the CPU (flaky under load): set the
        # legacy AES method in the header instead; refused before use.
        with open(img, "r+b") as f:
            f.seek(32)
            f.write(struct.pack(">I", 1))
    res = lio(lockstep_io, img, "read 0 512", extra=("-r",))
    assert res.returncode != 0
    assert "not supported" in res.stderr


def test_overlap_write_marks_corrupt(lockstep_io, tmp_dir):
    img = os.path.join(tmp_dir, "ov.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "16M"]))
    ok(qio(img, "write -P 1 0 64k"))
    # Point guest cluster 0 at the L1 table (cluster 3) by hand.
    with open(img, "r+b") as f:
        f.seek(40)
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        f.seek(l2)
        f.write(struct.pack(">Q", l1 | (1 << 63)))
    res = lio(lockstep_io, img, "write -P 2 0 512")
    assert res.returncode != 0
    res = run([QEMU_IMG, "info", "--output=json", "-U", img])
    assert '"corrupt": true' in res.stdout


# ---- Damaged images are never made worse ------------------------------------
#
# Each image is damaged by hand so that a write through it would put
# metadata on top of other metadata (or free a table).  QEMU refuses such a
# write with its overlap check; lockstep must too: the request (or the flush
# that writes the metadata back) fails with EIO, the image is marked
# corrupt, and both `qemu-img check -r all` and `lockstep-img check -r all`
# repair it exactly when they repair QEMU's image after the same commands.

L2_MASK = 0x00fffffffffffe00
COPIED = 1 << 63


class Patch(Qcow2):
    """The layout of a fresh 64 KiB-cluster image, by the names the damage
    table below uses: l1, rt and the first L2 table and refcount block."""

    def __init__(self, path):
        super().__init__(path)
        self.l1 = self.l1_offset
        self.rt = self.rt_offset

    def refblock(self):
        return self.read64(self.rt)

    def l2(self):
        return self.read64(self.l1) & L2_MASK

    def set_refcount_of(self, off, v):
        """The refcount of the cluster at byte offset off."""
        self.set_refcount(off // self.cs, v)

    def bitmap_dir(self):
        """Offset of the bitmap directory (from the bitmaps extension)."""
        with open(self.path, "rb") as f:
            h = f.read(self.cs)
        off = struct.unpack(">I", h[100:104])[0]
        while True:
            magic, n = struct.unpack(">II", h[off:off + 8])
            if magic == 0x23852875:
                return struct.unpack(">Q", h[off + 24:off + 32])[0]
            assert magic != 0, "no bitmaps extension"
            off += 8 + (n + 7) // 8 * 8


def add_bitmap(p):
    ok(run([QEMU_IMG, "bitmap", "--add", p.path, "b0"]))
    return p


# name: (damage, lockstep-io/qemu-io commands, overlapped structure).  The
# image is 4 GiB with data at 0 and 128k (guest clusters 0 and 2).
DAMAGES = {
    # The issue's example: L1 entry 1 names the refcount table as its L2
    # table; the new L2 entry would land on the refcount table.
    "l1_to_reftable": (lambda p: p.write64(p.l1 + 8, p.rt | COPIED),
                       ["write 512M 64k"], "refcount table"),
    # An L2 table that the refcount table also lists as refcount block 1.
    "reftable_to_l2": (lambda p: p.write64(p.rt + 8, p.l2()),
                       ["write -P 3 2M 4k"], "refcount block"),
    # A refcount of 0 on a table: the allocator hands its cluster out.
    "l2_refcount_zero": (lambda p: p.set_refcount_of(p.l2(), 0),
                         ["write -P 3 2M 4k"], "active L2 table"),
    "l1_refcount_zero": (lambda p: p.set_refcount_of(p.l1, 0),
                         ["write -P 3 2M 4k"], "active L1 table"),
    "reftable_refcount_zero": (lambda p: p.set_refcount_of(p.rt, 0),
                               ["write -P 3 2M 4k"], "refcount table"),
    "refblock_refcount_zero": (lambda p: p.set_refcount_of(p.refblock(), 0),
                               ["write -P 3 2M 4k"], "refcount block"),
    # Guest cluster 1 maps the refcount table as data.
    "data_is_reftable": (lambda p: p.write64(p.l2() + 8, p.rt | COPIED),
                         ["write -P 3 64k 4k"], "refcount table"),
    # The bitmap directory with a refcount of 0.  QEMU finds it at the
    # data write; lockstep already when a read-write open rewrites the
    # directory (to mark the bitmap in use) into the lowest free cluster.
    "bitmap_dir_refcount_zero": (
        lambda p: add_bitmap(p).set_refcount_of(p.bitmap_dir(), 0),
        ["write -P 3 2M 4k"], "bitmap directory"),
}


def damaged_image(path, name):
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", path, "4G"]))
    ok(qio(path, "write -P 1 0 64k", "write -P 2 128k 64k"))
    DAMAGES[name][0](Patch(path))
    return path


def repair_rc(tool, img, tmp_dir):
    """Exit code of `tool check -r all` on a copy, then of qemu-img check."""
    copy = os.path.join(tmp_dir, "repair.qcow2")
    shutil.copy(img, copy)
    rc = run([tool, "check", "-r", "all", copy]).returncode
    return rc, run([QEMU_IMG, "check", copy]).returncode


def corrupt_flag(img):
    res = ok(run([QEMU_IMG, "info", "--output=json", "-U", img]))
    return json.loads(res.stdout)["format-specific"]["data"]["corrupt"]


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damaged_image_not_made_worse(lockstep_io, lockstep_img, tmp_dir,
                                      name):
    cmds = DAMAGES[name][1] + ["flush"]
    marked = "qcow2: Marking image as corrupt: Preventing invalid write on " \
        "metadata (overlaps with %s)" % DAMAGES[name][2]
    theirs = damaged_image(os.path.join(tmp_dir, "q.qcow2"), name)
    res = run([QEMU_IO, "-f", "qcow2", "-t", "writeback"] +
              sum([["-c", c] for c in cmds], []) + [theirs])
    assert marked in res.stderr, res.stdout + res.stderr
    ours = damaged_image(os.path.join(tmp_dir, "l.qcow2"), name)
    res = lio(lockstep_io, ours, *cmds)
    assert res.returncode != 0
    # The write (or flush) fails; or the open, where it writes metadata.
    assert "failed: Input/output error" in res.stdout or \
        "can't open device" in res.stderr, res.stdout + res.stderr
    assert marked in res.stderr
    assert corrupt_flag(ours)
    # Read-write opens are refused from now on; read-only ones work.
    res = lio(lockstep_io, ours, "read 0 4k")
    assert res.returncode != 0 and "corrupt" in res.stderr
    ok(lio(lockstep_io, ours, "read -P 1 0 4k", extra=("-r",)))
    # Exactly as repairable as what QEMU leaves, by both tools.
    want = repair_rc(QEMU_IMG, theirs, tmp_dir)
    assert repair_rc(QEMU_IMG, ours, tmp_dir) == want
    assert repair_rc(lockstep_img, ours, tmp_dir) == want


def test_issue_example_same_damage_as_qemu(lockstep_io, lockstep_img,
                                           tmp_dir):
    """L1 entry -> refcount table: `write 0 64k` leaves what QEMU leaves."""
    ours = damaged_image(os.path.join(tmp_dir, "l.qcow2"), "l1_to_reftable")
    theirs = damaged_image(os.path.join(tmp_dir, "q.qcow2"),
                           "l1_to_reftable")
    # Guest cluster 0 reaches the refcount table through L1 entry 0 here.
    for img in (ours, theirs):
        p = Patch(img)
        p.write64(p.l1, p.rt | COPIED)
    res = lio(lockstep_io, ours, "write 0 64k", "flush")
    assert "write failed: Input/output error" in res.stdout
    qio(theirs, "write 0 64k")
    a = run([QEMU_IMG, "check", "--output=json", ours])
    b = run([QEMU_IMG, "check", "--output=json", theirs])
    assert a.returncode == b.returncode == 2
    for k in ("corruptions", "leaks", "check-errors"):
        assert json.loads(a.stdout).get(k) == json.loads(b.stdout).get(k), k
    assert repair_rc(lockstep_img, ours, tmp_dir) == (0, 0)
    assert repair_rc(QEMU_IMG, ours, tmp_dir) == (0, 0)


def test_discard_of_table_refused(lockstep_io, tmp_dir):
    """Guest cluster 1 maps the L1 table (refcount 1): a discard with
    discard=unmap would free the L1 cluster and pass the discard down,
    zeroing the L1 table and losing every mapping."""
    img = os.path.join(tmp_dir, "d.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "4G"]))
    ok(qio(img, "write -P 1 0 64k"))
    p = Patch(img)
    p.write64(p.l2() + 8, p.l1 | COPIED)
    res = lio(lockstep_io, img, "discard 64k 64k", extra=("-d", "unmap"))
    assert "discard failed: Input/output error" in res.stdout
    assert "Preventing the release of cluster 0x%x, which holds metadata" \
        % p.l1 in res.stderr
    assert corrupt_flag(img)
    ok(run([QEMU_IMG, "check", "-r", "all", img]))
    assert_read_ok(qio(img, "read -P 1 0 64k"))
    ok(run([QEMU_IMG, "check", img]))


def _corruption_events(binary, tmp_dir, tag, img):
    """Run binary (lockstepd or qemu-storage-daemon) on img, write through
    an NBD export with qemu-io, return (BLOCK_IMAGE_CORRUPTED events, the
    qemu-io results)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from qmp_client import Daemon
    sock = os.path.join(tmp_dir, tag + ".nbd")
    d = Daemon(binary, tmp_dir, name=tag)
    results = []
    try:
        c = d.client()
        c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "disk0",
                               "file": {"driver": "file",
                                        "filename": img}})
        c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                            "data": {"path": sock}}})
        c.cmd("block-export-add", {"type": "nbd", "id": "e0",
                                   "node-name": "disk0", "writable": True})
        url = "nbd+unix:///disk0?socket=" + sock
        for cmd in ("write 512M 64k", "write -P 5 2M 4k"):
            results.append(run([QEMU_IO, "-f", "raw", "-c", cmd, url]))
        events = []
        while True:
            try:
                events.append(c.wait_event("BLOCK_IMAGE_CORRUPTED",
                                           timeout=1)["data"])
            except TimeoutError:
                break
        c.close()
    finally:
        d.stop()
    return events, results


def test_corrupted_event_as_qemu(lockstepd, qsd, tmp_dir):
    ours = damaged_image(os.path.join(tmp_dir, "l.qcow2"), "l1_to_reftable")
    theirs = damaged_image(os.path.join(tmp_dir, "q.qcow2"),
                           "l1_to_reftable")
    ev_ours, res_ours = _corruption_events(lockstepd, tmp_dir, "l", ours)
    ev_theirs, res_theirs = _corruption_events(qsd, tmp_dir, "q", theirs)
    assert ev_theirs == [{
        "device": "", "node-name": "disk0", "fatal": True,
        "msg": "Preventing invalid write on metadata (overlaps with "
               "refcount table)",
        "offset": Patch(theirs).rt, "size": 65536}]
    assert ev_ours == ev_theirs
    # Both writes fail (the second because the image is corrupt).
    for r in res_ours + res_theirs:
        assert "write failed" in r.stdout, r.stdout
    assert corrupt_flag(ours) and corrupt_flag(theirs)


def test_overlap_check_option(lockstep_io, tmp_dir):
    """The check is always on: QEMU's 'cached' and 'all' are what we do;
    asking for less is refused rather than ignored."""
    img = os.path.join(tmp_dir, "o.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "1M"]))
    opts = "driver=qcow2,file.driver=file,file.filename=%s,overlap-check=" \
        % img
    for mode in ("cached", "all"):
        ok(run([lockstep_io, "--image-opts", "-c", "write 0 4k",
                opts + mode]))
    for mode in ("none", "constant"):
        res = run([lockstep_io, "--image-opts", "-c", "write 0 4k",
                   opts + mode])
        assert res.returncode != 0
        assert "overlap-check must be 'cached' or 'all'" in res.stderr


def test_write_over_kept_zero_cluster_is_one_request(lockstep_io, tmp_dir):
    """Normal clusters around a zero cluster that kept its host cluster,
    all contiguous: a write over all of them goes in place with a single
    data request (QEMU's iotest 066 checks it with blkdebug: a rule armed
    by the first write_aio fails a second one), and the zero cluster
    becomes a data cluster again."""
    img = os.path.join(tmp_dir, "z.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", img, "192k"]))
    ok(qio(img, "write -P 42 0 192k"))
    before = ok(run([QEMU_IMG, "map", "--output=json", img])).stdout
    ok(qio(img, "write -z 64k 64k"))
    blk = ('json:{"driver": "qcow2", "file": {"driver": "blkdebug", '
           '"image.filename": "%s", "set-state": [{"event": "write_aio", '
           '"new_state": 2}], "inject-error": [{"event": "write_aio", '
           '"state": 2}]}}' % img)
    res = run([lockstep_io, "-c", "write -P 43 0 192k", blk])
    ok(res)
    assert "failed" not in res.stdout
    assert ok(run([QEMU_IMG, "map", "--output=json", img])).stdout == before
    ok(run([QEMU_IMG, "check", img]))
    res = ok(qio(img, "read -P 43 0 192k"))
    assert "Pattern verification failed" not in res.stdout


def test_batched_write_then_kept_zero_cluster(lockstep_io, tmp_dir):
    """A write over clusters in place that lie apart on the host (one
    batch of host requests) and then over a run that holds a zero cluster
    that kept its host cluster: that run is written after the batch and
    its zero cluster becomes data (it is not left in the batch, whose
    pieces change no entry)."""
    img = os.path.join(tmp_dir, "zb.qcow2")
    ok(run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o",
            "cluster_size=4k", img, "64k"]))
    # Clusters 3, 2, 1, 0 on the host in that order, then 4 and 5.
    ok(run([QEMU_IO, "-f", "qcow2"] +
           [a for c in (3, 2, 1, 0) for a in
            ("-c", "write -P 42 %dk 4k" % (4 * c))] +
           ["-c", "write -P 42 16k 8k", img]))
    before = ok(run([QEMU_IMG, "map", "--output=json", img])).stdout
    ok(qio(img, "write -z 20k 4k"))
    ok(run([lockstep_io, "-f", "qcow2", "-c", "write -P 43 0 24k", img]))
    assert ok(run([QEMU_IMG, "map", "--output=json", img])).stdout == before
    ok(run([QEMU_IMG, "check", img]))
    res = ok(qio(img, "read -P 43 0 24k"))
    assert "Pattern verification failed" not in res.stdout, res.stdout
