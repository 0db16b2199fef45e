# SPDX-License-Identifier: MIT
"""The file driver's aio modes (QEMU's aio=threads|native|io_uring).

strace tells which system calls carry the guest's I/O: io_uring_enter for
aio=io_uring (the default with cache.direct=on), pread64/pwrite64/fdatasync
for aio=threads.  LOCKSTEP_NO_IO_URING=1 makes the driver believe the
kernel has no io_uring: it falls back to threads and says so once.
aio=native is refused with a message.  The files sit on a disk-backed
directory, opened with cache.direct=on.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from conftest import run
from qmp_client import Daemon

KiB = 1024
MiB = 1024 * KiB

pytestmark = pytest.mark.skipif(not shutil.which("qemu-img"),
                                reason="qemu-img not installed")


def syscalls(argv, env=None):
    """Run argv under strace -f; (result, {syscall: count})."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    # LeakSanitizer cannot run under ptrace (the sanitizer pass).
    env = dict(env if env is not None else os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    fd, out = tempfile.mkstemp(suffix=".strace")   # one per call: xdist
    os.close(fd)
    r = subprocess.run(["strace", "-f", "-qq", "-o", out, "-e",
                        "trace=io_uring_enter,pread64,pwrite64,fdatasync"]
                       + argv, capture_output=True, text=True, env=env,
                       timeout=120)
    counts = {}
    with open(out) as f:
        for line in f:
            m = re.search(r"\b(io_uring_enter|pread64|pwrite64|fdatasync)\(",
                          line)
            if m:
                counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    os.unlink(out)
    return r, counts


def io_argv(lockstep_io, opts):
    return [lockstep_io, "--image-opts", "-c", "write -P 0x5a 1000 300k",
            "-c", "flush", "-c", "read -P 0x5a 1000 300k",
            "-c", "read -P 0 400k 4k", opts]


def qcow2(disk_dir):
    img = os.path.join(disk_dir, "a.qcow2")
    r = run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
             "cluster_size=4096", img, "16M"])
    assert r.returncode == 0, r.stderr
    return img


def io_uring_here(lockstep_io, disk_dir):
    img = os.path.join(disk_dir, "probe.raw")
    with open(img, "wb") as f:
        f.truncate(MiB)
    r = run([lockstep_io, "--image-opts", "-c", "read 0 4k",
             "driver=file,filename=%s,cache.direct=on,aio=io_uring" % img])
    assert r.returncode == 0, r.stderr
    return "not available" not in r.stderr


def check_image(img):
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 1000 300k", img])
    assert r.returncode == 0 and "Pattern" not in r.stdout, r.stdout


@pytest.mark.parametrize("aio", ["io_uring", None])
def test_io_uring_carries_the_io(lockstep_io, disk_dir, aio):
    """aio=io_uring, and no aio at all with cache.direct=on: reads, writes
    and flushes go through io_uring_enter, none through pwrite64 or
    fdatasync."""
    if not io_uring_here(lockstep_io, disk_dir):
        pytest.skip("no io_uring on this kernel")
    img = qcow2(disk_dir)
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on" % img)
    if aio:
        opts += ",file.aio=" + aio
    r, calls = syscalls(io_argv(lockstep_io, opts))
    assert r.returncode == 0, r.stderr
    assert calls.get("io_uring_enter", 0) >= 3, calls
    assert not calls.get("pwrite64") and not calls.get("fdatasync"), calls
    check_image(img)


def test_threads_uses_system_calls(lockstep_io, disk_dir):
    img = qcow2(disk_dir)
    r, calls = syscalls(io_argv(
        lockstep_io, "driver=qcow2,file.driver=file,file.filename=%s,"
        "file.cache.direct=on,file.aio=threads" % img))
    assert r.returncode == 0, r.stderr
    assert not calls.get("io_uring_enter"), calls
    assert calls.get("pwrite64", 0) >= 1 and calls.get("fdatasync", 0) >= 1
    check_image(img)


def test_fallback_without_io_uring(lockstep_io, disk_dir):
    """No io_uring: aio=io_uring works through the system calls and says
    so once, however many nodes ask (here qcow2 and its backing file)."""
    base = os.path.join(disk_dir, "base.raw")
    with open(base, "wb") as f:
        f.truncate(16 * MiB)
    img = qcow2(disk_dir)
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on,file.aio=io_uring,backing.driver=raw,"
            "backing.file.driver=file,backing.file.filename=%s,"
            "backing.file.aio=io_uring" % (img, base))
    env = dict(os.environ, LOCKSTEP_NO_IO_URING="1")
    r, calls = syscalls(io_argv(lockstep_io, opts), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("io_uring is not available") == 1, r.stderr
    assert not calls.get("io_uring_enter"), calls
    assert calls.get("pwrite64", 0) >= 1, calls
    check_image(img)


def test_native_refused(lockstep_io, disk_dir):
    img = qcow2(disk_dir)
    r = run([lockstep_io, "--image-opts", "-c", "read 0 4k",
             "driver=qcow2,file.driver=file,file.filename=%s,"
             "file.cache.direct=on,file.aio=native" % img])
    assert r.returncode != 0
    assert "aio=native (Linux AIO) is not supported" in r.stderr
    r = run([lockstep_io, "--image-opts", "-c", "read 0 4k",
             "driver=file,filename=%s,aio=posix" % img])
    assert r.returncode != 0 and "aio" in r.stderr


def test_daemon_io_uring_over_nbd(lockstepd, disk_dir, tmp_path):
    """lockstepd serves a qcow2 image on a file node with aio=io_uring and
    cache.direct=on; qemu-io writes and reads it through NBD from
    several threads' worth of requests."""
    img = qcow2(disk_dir)
    sock = str(tmp_path / "nbd.sock")
    d = Daemon(lockstepd, str(tmp_path), [
        "--blockdev", "driver=file,node-name=f,filename=%s,"
        "cache.direct=on,aio=io_uring" % img,
        "--blockdev", "driver=qcow2,node-name=disk,file=f",
        "--nbd-server", "addr.type=unix,addr.path=%s" % sock,
        "--export", "type=nbd,id=e,node-name=disk,name=disk,writable=on"])
    try:
        uri = "nbd+unix:///disk?socket=%s" % sock
        cmds = []
        for i in range(16):
            cmds += ["-c", "aio_write -P %d %d 200k" % (i + 1, i * 256 * KiB)]
        cmds += ["-c", "aio_flush"]
        r = run(["qemu-io", "-f", "raw"] + cmds + [uri])
        assert r.returncode == 0 and "error" not in r.stdout.lower(), \
            r.stdout + r.stderr
        for i in range(16):
            r = run(["qemu-io", "-f", "raw", "-c", "read -P %d %d 200k"
                     % (i + 1, i * 256 * KiB), uri])
            assert r.returncode == 0 and "Pattern" not in r.stdout, r.stdout
    finally:
        assert d.stop() == 0, d.stderr
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr


def chain(disk_dir):
    """A qcow2 overlay on a qcow2 base that holds the data read back."""
    base = os.path.join(disk_dir, "base.qcow2")
    top = os.path.join(disk_dir, "top.qcow2")
    for argv in (["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"],
                 ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1000 300k",
                  base],
                 ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base,
                  "-F", "qcow2", top]):
        r = run(argv)
        assert r.returncode == 0, r.stdout + r.stderr
    return top


@pytest.mark.parametrize("flag", [["--aio", "threads"], ["-i", "threads"]])
def test_lockstep_io_aio_threads_reaches_every_file_node(lockstep_io,
                                                         disk_dir, flag):
    """qemu-io's --aio is an open flag for every file node, the backing
    file's too: with -t none (io_uring by default) --aio threads keeps all
    I/O on the system calls."""
    top = chain(disk_dir)
    argv = [lockstep_io, "-t", "none"] + flag + [
        "-f", "qcow2", "-c", "read -P 0x5a 1000 300k",
        "-c", "write -P 0x33 1M 64k", "-c", "flush", top]
    r, calls = syscalls(argv)
    assert r.returncode == 0 and "Pattern" not in r.stdout, \
        r.stdout + r.stderr
    assert not calls.get("io_uring_enter"), calls
    assert calls.get("pread64", 0) >= 2 and calls.get("pwrite64", 0) >= 1, \
        calls


def test_lockstep_io_aio_io_uring_reaches_every_file_node(lockstep_io,
                                                          disk_dir):
    if not io_uring_here(lockstep_io, disk_dir):
        pytest.skip("no io_uring on this kernel")
    top = chain(disk_dir)
    # Without -t none our default is threads: --aio io_uring must change it.
    r, calls = syscalls([lockstep_io, "--aio", "io_uring", "-f", "qcow2",
                         "-c", "read -P 0x5a 1000 300k", top])
    assert r.returncode == 0 and "Pattern" not in r.stdout, \
        r.stdout + r.stderr
    assert calls.get("io_uring_enter", 0) >= 2, calls


@pytest.mark.parametrize("flag", [["-k"], ["--aio", "native"],
                                  ["--native-aio"]])
@pytest.mark.parametrize("tool", ["ours", "qemu-io"])
def test_lockstep_io_aio_native_needs_cache_direct(lockstep_io, disk_dir,
                                                   tmp_path, flag, tool):
    """QEMU refuses Linux AIO without O_DIRECT, at open, with this error;
    the open command says the same."""
    img = qcow2(disk_dir)
    prog = lockstep_io
    if tool == "qemu-io":
        prog = "qemu-io"
    else:
        prog = str(tmp_path / "qemu-io")
        os.symlink(lockstep_io, prog)
    r = run([prog] + flag + ["-f", "qcow2", "-c", "read 0 4k", img])
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == ("qemu-io: can't open device %s: aio=native was "
                        "specified, but it requires cache.direct=on, which "
                        "was not specified.\n" % img), r.stderr
    r = run([prog, "-c", "open -k -o driver=qcow2 %s" % img])
    assert ("qemu-io: can't open device %s: aio=native was specified, but "
            "it requires cache.direct=on" % img) in r.stderr + r.stdout, \
        r.stdout + r.stderr


def test_lockstep_io_aio_bad_mode(lockstep_io, disk_dir):
    img = qcow2(disk_dir)
    r = run([lockstep_io, "--aio", "posix", "-c", "read 0 4k", img])
    assert r.returncode == 1
    assert "Invalid aio option: posix" in r.stderr


def scattered_qcow2(disk_dir):
    """16 clusters of 4 KiB written last to first: on the host they lie
    in the opposite order, so a guest request over them is 16 pieces."""
    img = qcow2(disk_dir)
    cmds = []
    for c in reversed(range(16)):
        cmds += ["-c", "write -P %d %d 4k" % (c + 1, c * 4 * KiB)]
    r = run(["qemu-io", "-t", "none", "-f", "qcow2"] + cmds + [img])
    assert r.returncode == 0, r.stdout + r.stderr
    return img


def scattered_calls(lockstep_io, img, aio, cmd, extra=""):
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on,file.aio=%s%s" % (img, aio, extra))
    r, calls = syscalls([lockstep_io, "--image-opts", "-c", cmd, opts])
    assert r.returncode == 0 and "Pattern" not in r.stdout, \
        r.stdout + r.stderr
    return calls


@pytest.mark.parametrize("op", ["read", "write"])
def test_scattered_clusters_batched(lockstep_io, disk_dir, op):
    """A guest read over 16 clusters that lie apart on the host, and an
    in-place write over them, cost as many io_uring_enter calls as one
    cluster does: one batch for the 16 pieces.  With aio=threads, the
    fallback, one pread64 (pwrite64) per piece."""
    img = scattered_qcow2(disk_dir)
    one = "%s -P 1 0 4k" % op
    all16 = "%s -P 9 0 64k" % op if op == "write" else "read 0 64k"
    if io_uring_here(lockstep_io, disk_dir):
        a = scattered_calls(lockstep_io, img, "io_uring", one)
        b = scattered_calls(lockstep_io, img, "io_uring", all16)
        assert b.get("io_uring_enter", 0) == a.get("io_uring_enter", 0), \
            (a, b)
        assert a.get("io_uring_enter", 0) >= 1
    call = "pread64" if op == "read" else "pwrite64"
    a = scattered_calls(lockstep_io, img, "threads", one)
    b = scattered_calls(lockstep_io, img, "threads", all16)
    assert b.get(call, 0) - a.get(call, 0) == 15, (a, b)
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
    if op == "read":
        for c in range(16):
            r = run(["qemu-io", "-f", "qcow2", "-c", "read -P %d %d 4k"
                     % (c + 1, c * 4 * KiB), img])
            assert "Pattern" not in r.stdout, r.stdout
    else:
        r = run(["qemu-io", "-f", "qcow2", "-c", "read -P 9 0 64k", img])
        assert "Pattern" not in r.stdout, r.stdout


def l1_calls(lockstep_io, img, l1_offset, cmds):
    """pread64/pwrite64 calls on the first cluster of the L1 table of a
    qcow2 image with 4 KiB clusters, cache.direct=on, aio=threads."""
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on,file.aio=threads" % img)
    out = img + ".strace"
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run(["strace", "-f", "-qq", "-o", out, "-e",
                        "trace=pread64,pwrite64", lockstep_io,
                        "--image-opts"] + cmds + [opts],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = {"pread64": 0, "pwrite64": 0}
    with open(out) as f:
        for line in f:
            m = re.search(r"\b(pread64|pwrite64)\(.*, (\d+), (\d+)\) = ",
                          line)
            if m and l1_offset <= int(m.group(3)) < l1_offset + 4096:
                calls[m.group(1)] += 1
    os.unlink(out)
    return calls


def test_l1_entry_written_without_reading(lockstep_io, disk_dir):
    """New L2 tables under cache.direct=on: each L1 entry goes to the disk
    as the aligned block around it, built from the table in memory, with
    no read of that block first (a read-modify-write was one more request
    to the disk per new L2 table).  The neighbouring entries survive."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    img = qcow2(disk_dir)               # 4 KiB clusters: 2 MiB per table
    with open(img, "rb") as f:
        l1_offset = int.from_bytes(f.read(48)[40:48], "big")
    writes = []
    for i in range(4):                  # four tables, entries side by side
        writes += ["-c", "write -P %d %d 4k" % (i + 1, i * 2 * MiB)]
    opened = l1_calls(lockstep_io, img, l1_offset, ["-c", "read 0 4k"])
    wrote = l1_calls(lockstep_io, img, l1_offset, writes)
    assert opened["pwrite64"] == 0
    assert wrote["pwrite64"] == 4, wrote
    assert wrote["pread64"] == opened["pread64"], (opened, wrote)
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(4):
        r = run(["qemu-io", "-f", "qcow2", "-c", "read -P %d %d 4k"
                 % (i + 1, i * 2 * MiB), img])
        assert r.returncode == 0 and "Pattern" not in r.stdout, r.stdout


def test_reused_clusters_zeroed_in_one_request(lockstep_io, disk_dir):
    """A write into two clusters reused inside the file (freed by a
    discard, their old data still there), with copy-on-write areas on both
    sides: the stale head and tail are zeroed by one request over both
    clusters, then the data is written (two requests, not three; QEMU
    zeroes the whole range so too).  The areas read back as zeroes."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    img = qcow2(disk_dir)
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=on,file.aio=threads" % img)
    r = run([lockstep_io, "--image-opts", "-c", "write -P 1 0 12k",
             "-c", "discard 0 12k", opts])
    assert r.returncode == 0, r.stdout + r.stderr
    out = img + ".strace"
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run(["strace", "-f", "-qq", "-o", out, "-e",
                        "trace=fallocate,pwrite64", lockstep_io,
                        "--image-opts", "-c", "write -P 7 1049088 7168",
                        opts], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        calls = [line.split(None, 1)[1].split("(")[0] for line in f
                 if "(" in line]
    os.unlink(out)
    assert calls.count("fallocate") == 1, calls
    r = run(["qemu-img", "check", "-q", img])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["qemu-io", "-f", "qcow2", "-c", "read -P 0 1048576 512",
             "-c", "read -P 7 1049088 7168", "-c", "read -P 0 1056256 1024",
             img])
    assert r.returncode == 0 and "Pattern" not in r.stdout, r.stdout


@pytest.mark.parametrize("batch,submissions", [(4, 4), (5, 4), (1, 16),
                                               (0, 1), (64, 1)])
def test_aio_max_batch_splits_submissions(lockstep_io, disk_dir, batch,
                                          submissions):
    """aio-max-batch caps the operations per io_uring submission (0: no
    cap): the 16 pieces of a read over scattered clusters take 16/batch
    io_uring_enter calls where one cluster takes one.  It used to be
    accepted and ignored."""
    if not io_uring_here(lockstep_io, disk_dir):
        pytest.skip("no io_uring on this kernel")
    img = scattered_qcow2(disk_dir)
    extra = ",file.aio-max-batch=%d" % batch
    a = scattered_calls(lockstep_io, img, "io_uring", "read -P 1 0 4k",
                        extra)
    b = scattered_calls(lockstep_io, img, "io_uring", "read 0 64k", extra)
    assert b.get("io_uring_enter", 0) - a.get("io_uring_enter", 0) == \
        submissions - 1, (a, b)
    for c in range(16):
        r = run([lockstep_io, "--image-opts", "-c", "read -P %d %d 4k"
                 % (c + 1, c * 4 * KiB), "driver=qcow2,file.driver=file,"
                 "file.filename=%s,file.cache.direct=on,file.aio=io_uring,"
                 "file.aio-max-batch=%d" % (img, batch)])
        assert r.returncode == 0 and "Pattern" not in r.stdout, r.stdout


def fallocates(lockstep_io, img, cmds, direct):
    """fallocate calls of lockstep-io running cmds on the qcow2 image img
    with aio=threads, O_DIRECT or not; and the file's length after."""
    opts = ("driver=qcow2,file.driver=file,file.filename=%s,"
            "file.cache.direct=%s,file.aio=threads"
            % (img, "on" if direct else "off"))
    out = img + ".strace"
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    r = subprocess.run(["strace", "-f", "-qq", "-o", out, "-e",
                        "trace=fallocate", lockstep_io, "-t", "writeback",
                        "--image-opts"] + cmds + [opts],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(out) as f:
        n = sum(1 for line in f if "fallocate(" in line)
    os.unlink(out)
    return n, os.path.getsize(img)


@pytest.mark.parametrize("whole", [False, True])
def test_file_grows_ahead_under_direct(lockstep_io, disk_dir, whole):
    """Under cache.direct=on the file grows 1 MiB ahead of the allocator
    (one fallocate per MiB of new clusters, not one per cluster; writes
    into new clusters then land inside the file, where ext4 runs them side
    by side instead of one at a time).  Clusters allocated in the reserved
    tail need no zeroing: their copy-on-write areas read as zeroes.  At
    close the file is cut back to the end of its last cluster, as without
    O_DIRECT.  whole: 64 KiB writes covering their clusters (which used to
    extend the file themselves), else 4 KiB writes into 64 KiB clusters."""
    if not shutil.which("strace"):
        pytest.skip("strace not installed")
    sizes = {}
    counts = {}
    for direct in (False, True):
        img = os.path.join(disk_dir, "grow-%d.qcow2" % direct)
        r = run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                 "cluster_size=65536", img, "64M"])
        assert r.returncode == 0, r.stderr
        cmds = []
        for i in range(48):             # 48 new clusters, 3 MiB, scattered
            off = (i * 37 % 48) * MiB + (0 if whole else 8 * KiB)
            cmds += ["-c", "write -P %d %d %s" % (i % 250 + 1, off,
                                                  "64k" if whole else "4k")]
        counts[direct], sizes[direct] = fallocates(lockstep_io, img, cmds,
                                                   direct)
        r = run(["qemu-img", "check", "-q", img])
        assert r.returncode == 0, r.stdout + r.stderr
        for i in range(48):
            off = (i * 37 % 48) * MiB
            if whole:
                reads = ["read -P %d %d 64k" % (i % 250 + 1, off)]
            else:
                reads = ["read -P 0 %d 8k" % off,
                         "read -P %d %d 4k" % (i % 250 + 1, off + 8 * KiB),
                         "read -P 0 %d 52k" % (off + 12 * KiB)]
            r = run(["qemu-io", "-f", "qcow2"] +
                    sum([["-c", c] for c in reads], []) + [img])
            assert r.returncode == 0 and "Pattern" not in r.stdout, \
                r.stdout
        os.unlink(img)
    # Without O_DIRECT: one fallocate per new cluster whose copy-on-write
    # area is zeroes, none for whole clusters (the write extends the file).
    assert counts[False] == (0 if whole else 48), counts
    # O_DIRECT: a few per MiB of new clusters (L2 and refcount metadata
    # sit at the start, data from about 256 KiB on: 4 steps for 3 MiB).
    assert 1 <= counts[True] <= 4, counts
    # Cut back at close: the same file either way.
    assert sizes[True] == sizes[False], sizes
