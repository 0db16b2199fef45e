# SPDX-License-Identifier: MIT
"""Functional tests of the "nbd" protocol driver (block/protocol/nbd.c).

build/lockstep-io opens driver=nbd nodes against three servers: our own
(nbd-serve), qemu-nbd and nbdkit (memory plugin, with the error and delay
filters for faults).  Also checked: open-timeout, reconnect-delay after the
server dies, a dead server failing requests with EIO, read-only exports,
refused TLS, x-dirty-bitmap, and requests in flight in parallel through a
chain lockstep NBD server -> nbd driver -> nbdkit.

Every test runs under a SIGALRM guard and kills its servers.
"""
import json
import os
import select
import subprocess
import time

import pytest

from conftest import make_image, run
from test_nbd_server import NbdServe, free_port, need, timeout_guard  # noqa

MiB = 1024 * 1024


@pytest.fixture
def procs():
    """Background processes, killed at the end of the test."""
    started = []

    def start(argv, **kw):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, **kw)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def stop_checked(srv):
    """Shut nbd-serve down cleanly; fail on sanitizer reports (the nbd
    driver runs inside it in the chain tests)."""
    try:
        if srv.alive():
            srv.stop()
    finally:
        srv.kill()
    err = srv.proc.stderr.read()
    assert "Sanitizer" not in err and "runtime error" not in err, err[-4000:]


def wait_socket(path, proc=None, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited: %s" % proc.stderr.read())
        time.sleep(0.05)
    raise TimeoutError("no socket %s" % path)


def nbdkit(procs, sock, *args):
    need("nbdkit")
    if os.path.exists(sock):
        os.unlink(sock)
    p = procs(["nbdkit", "-f", "-U", sock] + list(args))
    wait_socket(sock, p)
    return p


def log_lines(logfile, skip=0):
    """nbdkit log lines, after the first skip bytes."""
    with open(logfile) as f:
        f.seek(skip)
        return f.readlines()


def max_in_flight(logfile, kind="Read", skip=0):
    """The most requests of a kind that nbdkit's log filter saw in flight at
    once: a request starts at "Read id=N" and ends at "...Read id=N"."""
    now = peak = 0
    for line in log_lines(logfile, skip):
        if " ...%s id=" % kind in line:
            now -= 1
        elif " %s id=" % kind in line:
            now += 1
            peak = max(peak, now)
    return peak


def qemu_nbd(procs, sock, img, *args):
    need("qemu-nbd")
    p = procs(["qemu-nbd", "-f", "raw", "-k", sock] + list(args) + [img])
    wait_socket(sock, p)
    return p


def opts(sock, export="", extra=""):
    return ("driver=nbd,server.type=unix,server.path=%s,export=%s%s"
            % (sock, export, extra))


def lio(lockstep_io, image_opts, cmds, read_only=False, timeout=60):
    argv = [lockstep_io] + (["-r"] if read_only else [])
    for c in cmds:
        argv += ["-c", c]
    return run(argv + ["--image-opts", image_opts], timeout=timeout)


def test_against_lockstep_server(lockstep_io, tmp_dir):
    img = make_image(os.path.join(tmp_dir, "d.raw"), 16 * MiB)
    sock = os.path.join(tmp_dir, "s.sock")
    srv = NbdServe(["-b", "driver=file,node-name=d0,filename=" + img,
                    "-n", "unix:" + sock,
                    "-e", "type=nbd,id=e0,node-name=d0,writable=on"])
    try:
        r = lio(lockstep_io, opts(sock, "d0"),
                ["write -P 0x42 1M 3M", "write -P 0x43 100 1000",
                 "write -z 2M 64k", "flush", "read -P 0x42 1M 1M",
                 "read -P 0 2M 64k", "read -P 0x43 100 1000",
                 "discard 8M 1M", "length"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "16 MiB" in r.stdout
        with open(img, "rb") as f:
            f.seek(3 * MiB)
            assert f.read(MiB) == b"\x42" * MiB
            f.seek(2 * MiB)
            assert f.read(65536) == bytes(65536)
        # x-dirty-bitmap naming a bitmap the export does not have.
        r = lio(lockstep_io, opts(sock, "d0", ",x-dirty-bitmap=nope"),
                ["length"])
        assert r.returncode == 1
        assert "requested x-dirty-bitmap nope not found" in r.stderr
        # Unknown export.
        r = lio(lockstep_io, opts(sock, "nope"), ["length"])
        assert r.returncode == 1
        assert "Failed to connect" in r.stderr
    finally:
        stop_checked(srv)


def test_against_qemu_nbd(lockstep_io, tmp_dir, procs):
    img = make_image(os.path.join(tmp_dir, "q.raw"), 8 * MiB)
    sock = os.path.join(tmp_dir, "q.sock")
    qemu_nbd(procs, sock, img, "-x", "qexp", "-e", "4")
    r = lio(lockstep_io, opts(sock, "qexp"),
            ["write -P 0x11 0 1M", "write -z 1M 1M", "write -P 0x12 5M 512",
             "read -P 0x11 0 1M", "read -P 0 1M 1M", "read -P 0x12 5M 512",
             "flush"])
    assert r.returncode == 0, r.stdout + r.stderr
    with open(img, "rb") as f:
        assert f.read(MiB) == b"\x11" * MiB


def test_read_only_export(lockstep_io, tmp_dir, procs):
    img = make_image(os.path.join(tmp_dir, "q.raw"), MiB, fill=0x77)
    sock = os.path.join(tmp_dir, "q.sock")
    qemu_nbd(procs, sock, img, "-r", "-t", "-x", "ro")
    r = lio(lockstep_io, opts(sock, "ro"), ["read -P 0x77 0 4k"])
    assert r.returncode == 1
    assert "NBD export is read-only" in r.stderr
    r = lio(lockstep_io, opts(sock, "ro"), ["read -P 0x77 0 4k"],
            read_only=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_tls_creds_must_exist(lockstep_io, tmp_dir):
    """tls-creds names an object (test_tls.py uses real ones); an unknown
    one is a clear error, never a connection without TLS."""
    r = lio(lockstep_io, opts(os.path.join(tmp_dir, "none"), "x",
                              ",tls-creds=tls0"), ["length"])
    assert r.returncode == 1
    assert "No TLS credentials with id 'tls0'" in r.stderr
    r = lio(lockstep_io, opts(os.path.join(tmp_dir, "none"), "x",
                              ",tls-hostname=h"), ["length"])
    assert r.returncode == 1
    assert "tls-hostname is only valid with tls-creds" in r.stderr


def test_nbdkit_memory_and_errors(lockstep_io, tmp_dir, procs):
    sock = os.path.join(tmp_dir, "k.sock")
    nbdkit(procs, sock, "memory", "8M")
    r = lio(lockstep_io, opts(sock),
            ["write -P 0x5 0 2M", "read -P 0x5 0 2M", "write -z 0 4k",
             "read -P 0 0 4k", "discard 1M 64k", "read -P 0 1M 64k"])
    assert r.returncode == 0, r.stdout + r.stderr
    # Fault injection: every read fails with EIO, every write with ENOSPC.
    sock2 = os.path.join(tmp_dir, "k2.sock")
    nbdkit(procs, sock2, "--filter=error", "memory", "8M",
           "error-pread=EIO", "error-pread-rate=100%",
           "error-pwrite=ENOSPC", "error-pwrite-rate=100%")
    r = lio(lockstep_io, opts(sock2), ["read 0 4k"])
    assert r.returncode == 1
    assert "Input/output error" in r.stdout + r.stderr
    r = lio(lockstep_io, opts(sock2), ["write 0 4k"])
    assert r.returncode == 1
    assert "No space left on device" in r.stdout + r.stderr


def test_open_timeout(lockstep_io, tmp_dir, procs):
    need("nbdkit")
    sock = os.path.join(tmp_dir, "late.sock")
    # Without open-timeout a missing server fails at once.
    r = lio(lockstep_io, opts(sock), ["length"])
    assert r.returncode == 1 and "Failed to connect" in r.stderr
    # With it, a server that appears a second later is found.
    p = subprocess.Popen([lockstep_io, "-c", "length", "--image-opts",
                          opts(sock, "", ",open-timeout=10")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        time.sleep(1)
        nbdkit(procs, sock, "memory", "4M")
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    assert "4 MiB" in out


def interactive(lockstep_io, image_opts):
    return subprocess.Popen([lockstep_io, "--image-opts", image_opts],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_dead_server_gives_eio(lockstep_io, tmp_dir, procs):
    sock = os.path.join(tmp_dir, "d.sock")
    k = nbdkit(procs, sock, "memory", "4M")
    p = interactive(lockstep_io, opts(sock))
    try:
        p.stdin.write("write -P 0x9 0 4k\n")
        p.stdin.flush()
        # The write is done before the server dies (however slow the
        # machine: lockstep-io flushes its output after each command).
        first = ""
        deadline = time.time() + 60
        while "wrote" not in first and time.time() < deadline:
            if select.select([p.stdout], [], [], 1)[0]:
                line = p.stdout.readline()
                if not line:
                    break
                first += line
        assert "wrote 4096/4096" in first, first
        k.kill()
        k.wait()
        t0 = time.time()
        out, err = p.communicate(input="read 0 4k\n", timeout=30)
        assert time.time() - t0 < 10
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "read failed: Input/output error" in out + err
    assert p.returncode == 1


def test_reconnect_delay(lockstep_io, tmp_dir, procs):
    sock = os.path.join(tmp_dir, "r.sock")
    img = make_image(os.path.join(tmp_dir, "r.raw"), 4 * MiB)
    k = qemu_nbd(procs, sock, img, "-x", "r", "-t")
    p = interactive(lockstep_io, opts(sock, "r", ",reconnect-delay=15"))
    try:
        p.stdin.write("write -P 0x9 0 4k\n")
        p.stdin.flush()
        time.sleep(0.5)
        k.kill()
        k.wait()
        os.unlink(sock)
        # The request waits for the server to come back.
        p.stdin.write("read -P 0x9 0 4k\n")
        p.stdin.flush()
        time.sleep(1.5)
        qemu_nbd(procs, sock, img, "-x", "r", "-t")
        out, err = p.communicate(input="", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, out + err
    assert "read 4096/4096 bytes at offset 0" in out


def test_parallel_requests_through_chain(tmp_dir, procs):
    """qemu-io -> lockstep NBD server -> nbd driver -> nbdkit (delay 0.5 s
    per read, multi-conn): the eight reads qemu-io sends at once reach
    nbdkit in parallel, as its log shows."""
    need("qemu-io")
    ksock = os.path.join(tmp_dir, "k.sock")
    klog = os.path.join(tmp_dir, "k.log")
    nbdkit(procs, ksock, "--filter=log", "--filter=delay", "memory", "16M",
           "rdelay=500ms", "logfile=" + klog)
    sock = os.path.join(tmp_dir, "s.sock")
    srv = NbdServe(["-b", "driver=nbd,node-name=n0,server.type=unix,"
                    "server.path=%s" % ksock,
                    "-n", "unix:" + sock,
                    "-e", "type=nbd,id=e0,node-name=n0,writable=on"])
    try:
        cmds = []
        for i in range(8):
            cmds += ["-c", "aio_read %d 4k" % (i * MiB)]
        cmds += ["-c", "aio_flush"]
        r = run(["qemu-io", "-f", "raw"] + cmds +
                ["nbd+unix:///n0?socket=" + sock], timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("read 4096/4096") == 8
        assert max_in_flight(klog) >= 4
    finally:
        stop_checked(srv)


def test_fast_zero_through_chain(tmp_dir, procs):
    """Raw client -> lockstep NBD server -> nbd driver -> nbdkit without
    zero support: WRITE_ZEROES with FAST_ZERO fails with NBD_ENOTSUP and
    leaves the data; without it the block layer falls back to writing
    zeroes."""
    from test_nbd_server import (CMD_WRITE, CMD_WRITE_ZEROES, RawClient)
    ksock = os.path.join(tmp_dir, "k.sock")
    nbdkit(procs, ksock, "--filter=nozero", "memory", "4M", "zeromode=none")
    sock = os.path.join(tmp_dir, "s.sock")
    srv = NbdServe(["-b", "driver=nbd,node-name=n0,server.type=unix,"
                    "server.path=%s" % ksock,
                    "-n", "unix:" + sock,
                    "-e", "type=nbd,id=e0,node-name=n0,writable=on"])
    try:
        c = RawClient(sock)
        c.connect(name="n0")
        assert c.simple(CMD_WRITE, 0, 8192, data=b"\x07" * 8192) == 0
        assert c.simple(CMD_WRITE_ZEROES, 0, 4096, 0x10) == 95  # ENOTSUP
        assert c.read(0, 8192) == (0, b"\x07" * 8192)
        assert c.simple(CMD_WRITE_ZEROES, 0, 4096) == 0
        assert c.read(0, 8192) == (0, bytes(4096) + b"\x07" * 4096)
        c.close()
    finally:
        stop_checked(srv)


def test_parallel_requests_one_connection(tmp_dir, procs):
    """Without CAN_MULTI_CONN the driver uses one connection, and still
    keeps many requests in flight on it."""
    need("qemu-io")
    ksock = os.path.join(tmp_dir, "k.sock")
    klog = os.path.join(tmp_dir, "k.log")
    nbdkit(procs, ksock, "--filter=log", "--filter=multi-conn",
           "--filter=delay", "memory", "16M", "rdelay=500ms",
           "multi-conn-mode=disable", "logfile=" + klog)
    sock = os.path.join(tmp_dir, "s.sock")
    srv = NbdServe(["-b", "driver=nbd,node-name=n0,server.type=unix,"
                    "server.path=%s" % ksock,
                    "-n", "unix:" + sock,
                    "-e", "type=nbd,id=e0,node-name=n0,writable=on"])
    try:
        r = run(["nbdinfo", "--json", "nbd+unix:///?socket=" + ksock])
        assert '"can_multi_conn": false' in r.stdout
        cmds = []
        for i in range(8):
            cmds += ["-c", "aio_write -P %d %d 4k" % (i + 1, i * MiB)]
        cmds += ["-c", "aio_flush"]
        for i in range(8):
            cmds += ["-c", "aio_read -P %d %d 4k" % (i + 1, i * MiB)]
        cmds += ["-c", "aio_flush"]
        skip = os.path.getsize(klog)   # nbdinfo's own connections
        r = run(["qemu-io", "-f", "raw"] + cmds +
                ["nbd+unix:///n0?socket=" + sock], timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("read 4096/4096") == 8
        assert "verification failed" not in r.stdout
        # All reads on one connection, several in flight on it at once.
        conns = {line.split("connection=")[1].split()[0]
                 for line in log_lines(klog, skip) if " Read id=" in line}
        assert len(conns) == 1, conns
        assert max_in_flight(klog, skip=skip) >= 4
    finally:
        stop_checked(srv)


def test_server_dies_with_requests_in_flight(tmp_dir, procs):
    """Requests waiting on a server that dies fail with EIO (no hang), and
    the exporting side survives."""
    need("qemu-io")
    ksock = os.path.join(tmp_dir, "k.sock")
    k = nbdkit(procs, ksock, "--filter=delay", "memory", "16M", "rdelay=3")
    sock = os.path.join(tmp_dir, "s.sock")
    srv = NbdServe(["-b", "driver=nbd,node-name=n0,server.type=unix,"
                    "server.path=%s" % ksock,
                    "-n", "unix:" + sock,
                    "-e", "type=nbd,id=e0,node-name=n0"])
    try:
        cmds = []
        for i in range(6):
            cmds += ["-c", "aio_read %d 4k" % (i * MiB)]
        cmds += ["-c", "aio_flush"]
        p = subprocess.Popen(["qemu-io", "-f", "raw", "-r"] + cmds +
                             ["nbd+unix:///n0?socket=" + sock],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        time.sleep(1)
        k.kill()
        t0 = time.time()
        out, err = p.communicate(timeout=30)
        assert time.time() - t0 < 10
        assert "Input/output error" in out + err
        assert srv.alive()
        # Later requests fail at once too (no reconnect-delay).
        r = run(["qemu-io", "-f", "raw", "-r", "-c", "read 0 4k",
                 "nbd+unix:///n0?socket=" + sock], timeout=30)
        assert "Input/output error" in r.stdout + r.stderr
        assert srv.alive()
    finally:
        stop_checked(srv)


@pytest.mark.serial       # port 10809 must be refused
def test_inet_server_address(lockstep_io, tmp_dir):
    """server.type=inet with the port as a string (keyval) against our
    server on TCP; a missing port means 10809 (refused here)."""
    img = make_image(os.path.join(tmp_dir, "t.raw"), 4 * MiB)
    port = free_port()
    srv = NbdServe(["-b", "driver=file,node-name=t0,filename=" + img,
                    "-n", "inet:127.0.0.1:%d" % port,
                    "-e", "type=nbd,id=e0,node-name=t0,writable=on"])
    try:
        o = ("driver=nbd,server.type=inet,server.host=127.0.0.1,"
             "server.port=%d,export=t0" % port)
        r = lio(lockstep_io, o, ["write -P 0x21 0 64k", "read -P 0x21 0 64k"])
        assert r.returncode == 0, r.stdout + r.stderr
        r = lio(lockstep_io, o.replace("server.port=%d," % port, "")
                .replace("127.0.0.1", "127.0.0.2"), ["length"])
        assert r.returncode == 1 and "Failed to connect" in r.stderr
        r = lio(lockstep_io, "driver=nbd,server.type=vsock,server.cid=3",
                ["length"])
        assert r.returncode == 1
    finally:
        stop_checked(srv)


def test_x_dirty_bitmap_through_chain(tmp_dir):
    """x-dirty-bitmap=b0 reads qemu:dirty-bitmap:b0 as if it were
    base:allocation (QEMU's hack): served again by a second server, dirty
    areas show up as holes in base:allocation."""
    need("nbdinfo")
    need("qemu-io")
    img = make_image(os.path.join(tmp_dir, "b.raw"), 4 * MiB)
    inner = os.path.join(tmp_dir, "inner.sock")
    outer = os.path.join(tmp_dir, "outer.sock")
    s1 = NbdServe(["-b", "driver=file,node-name=f0,filename=" + img,
                   "-m", "f0,b0", "-n", "unix:" + inner,
                   "-e", "type=nbd,id=e0,node-name=f0,writable=on,"
                   "bitmaps.0=b0"])
    s2 = None
    try:
        r = run(["qemu-io", "-f", "raw", "-c", "write 1M 64k",
                 "nbd+unix:///f0?socket=" + inner])
        assert r.returncode == 0, r.stderr
        s2 = NbdServe(["-b", "driver=nbd,node-name=n0,server.type=unix,"
                       "server.path=%s,export=f0,x-dirty-bitmap=b0" % inner,
                       "-n", "unix:" + outer,
                       "-e", "type=nbd,id=e1,node-name=n0"])
        r = run(["nbdinfo", "--map", "--json",
                 "nbd+unix:///n0?socket=" + outer])
        assert r.returncode == 0, r.stderr
        ext = [(e["offset"], e["length"], e["type"] & 1)
               for e in json.loads(r.stdout)]
        assert ext == [(0, MiB, 0), (MiB, 64 * 1024, 1),
                       (MiB + 64 * 1024, 3 * MiB - 64 * 1024, 0)]
    finally:
        if s2:
            stop_checked(s2)
        stop_checked(s1)
