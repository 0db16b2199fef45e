# SPDX-License-Identifier: MIT
"""Hostile and stuck NBD clients against lockstepd (issue: "slow and
stuck clients").

- Clients that negotiate one byte per second, or send options and never
  read the replies, are dropped handshake-max-seconds after they connected
  (default 10 s, as QEMU's fix for CVE-2024-7409) and hold no thread while
  they wait; a fresh client is served meanwhile.
- A client that stops reading replies in transmission is dropped after
  the send timeout (30 s without progress) and costs at most two threads.
- Thousands of idle clients cost no threads, and SIGTERM with them
  connected ends within about two seconds, keeping acknowledged writes.

The daemon's threads are read from /proc/PID/status.  The clients are raw
sockets, nbdinfo and qemu-io.
"""
import errno
import os
import platform
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import make_image, run
from qmp_client import Daemon, QMPClient, wait_for_socket
from test_nbd_server import (CMD_READ, CMD_WRITE, FLAG_DF, IHAVEOPT,
                             OPT_GO, OPT_LIST, RawClient, free_port)

MiB = 1024 * 1024
SEND_TIMEOUT = 30        # NBDSRV_SEND_TIMEOUT_SECS


def threads_of(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


# x86_64 system calls that wait for a peer's bytes (or room for ours):
# read, write, readv, writev, sendto, recvfrom, sendmsg, recvmsg.
PEER_IO_SYSCALLS = {0, 1, 19, 20, 44, 45, 46, 47}


def threads_in_peer_io(pid):
    """Threads of pid asleep in a read or write system call (from
    /proc/PID/task/TID/syscall: only a sleeping thread shows its call).
    A server that gave a thread to each waiting client has one per
    client; ours waits for clients in epoll_wait."""
    if platform.machine() != "x86_64":
        pytest.skip("system call numbers are x86_64's")
    n = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/syscall" % (pid, tid)) as f:
                first = f.read().split()[0]
        except (OSError, IndexError):
            continue
        if first.isdigit() and int(first) in PEER_IO_SYSCALLS:
            n += 1
    return n


def need(prog):
    if not shutil.which(prog):
        pytest.skip("%s is not installed" % prog)


def want_fds(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, n))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def start(lockstepd, tmp_dir, server_opts="", writable=False, img=None):
    """lockstepd with one export "disk" (null-co, or the raw file img)
    on a UNIX socket; returns (daemon, socket path)."""
    sock = os.path.join(tmp_dir, "nbd.sock")
    node = ("driver=file,node-name=disk,filename=%s" % img if img else
            "null-co,node-name=disk,size=%d" % (1 << 30))
    d = Daemon(lockstepd, tmp_dir, [
        "--blockdev", node,
        "--nbd-server", "addr.type=unix,addr.path=%s%s" % (sock,
                                                            server_opts),
        "--export", "type=nbd,id=e0,node-name=disk,name=disk,writable=%s"
                    % ("on" if writable else "off")])
    wait_for_socket(sock, d.proc)
    with d.client() as c:     # the export exists once QMP answers
        assert [e["id"] for e in c.cmd("query-block-exports")] == ["e0"]
    return d, sock


def peer_closed(s):
    """True when the server has shut down or closed s.  Asked of the
    kernel (POLLRDHUP), without reading or sending, so that it does not
    unblock a server that waits for us to read."""
    p = select.poll()
    p.register(s, select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP)
               for _, ev in p.poll(0))


def fill_until_blocked(s, chunk, limit=10.0):
    """Send chunk repeatedly, never reading, until the socket stops taking
    bytes for half a second (the server stopped reading) or limit seconds
    passed."""
    s.setblocking(False)
    deadline = time.monotonic() + limit
    pending = b""
    idle_since = None
    while time.monotonic() < deadline:
        if not pending:
            pending = chunk
        try:
            pending = pending[s.send(pending):]
            idle_since = None
        except BlockingIOError:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 0.5:
                return True
            time.sleep(0.01)
    return False


def fill_once(s, chunk):
    """Send chunk repeatedly, never reading, until the first time the
    socket is full."""
    s.setblocking(False)
    sent = 0
    while True:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            return sent


# ---- Negotiation deadline -------------------------------------------------


def test_byte_per_second_clients_dropped_fresh_client_served(lockstepd,
                                                             tmp_dir):
    """120 clients negotiate one byte per second (each byte within any
    per-read timeout): the 100 that fill max-connections (default 100) are
    dropped 10 s (the default deadline) after they connected, no thread
    waits for them meanwhile, and a fresh nbdinfo is served within the
    deadline."""
    need("nbdinfo")
    want_fds(1024)
    d, sock = start(lockstepd, tmp_dir)
    with d:
        base = threads_of(d.proc.pid)
        # An option that never ends: GO with 4 KiB of data, one byte a
        # second.
        trickle = (struct.pack(">I", 3) +
                   struct.pack(">QII", IHAVEOPT, OPT_GO, 4096) +
                   b"\0" * 4096)
        slow = []
        t0 = time.monotonic()
        for _ in range(120):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect(sock)
            slow.append(s)
        fresh = subprocess.Popen(["nbdinfo", "--size",
                                  "nbd+unix:///disk?socket=" + sock],
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        most_threads = most_in_io = 0
        closed_at = {}
        fresh_done = None
        for sec in range(16):
            for i, s in enumerate(slow):
                if i in closed_at:
                    continue
                if peer_closed(s):
                    closed_at[i] = time.monotonic() - t0
                    continue
                try:
                    s.send(trickle[sec:sec + 1])
                except OSError:
                    pass
            most_threads = max(most_threads, threads_of(d.proc.pid))
            most_in_io = max(most_in_io, threads_in_peer_io(d.proc.pid))
            if fresh_done is None and fresh.poll() is not None:
                fresh_done = time.monotonic() - t0
            time.sleep(1)
        out, err = fresh.communicate(timeout=30)
        if fresh_done is None:
            fresh_done = time.monotonic() - t0
        assert fresh.returncode == 0, err
        assert out.strip() == str(1 << 30)
        # Served once the first slow clients were dropped (10 s after they
        # connected), not after some later timeout.
        assert fresh_done < 10 + 3, fresh_done
        # The first hundred were accepted at once and dropped at their
        # deadline, never before.
        first = [closed_at.get(i) for i in range(100)]
        assert all(t is not None for t in first), closed_at
        assert min(first) >= 9, first
        assert max(first) < 10 + 3, first
        # Negotiating clients hold no thread: none waits in a read, and
        # the pool grows only with work running at once (bounded well
        # below one thread per client even on a loaded machine).
        assert most_in_io == 0
        assert most_threads - base < 40, (base, most_threads)
        for s in slow:
            s.close()
        assert d.stop() == 0


def test_client_that_never_reads_option_replies(lockstepd, tmp_dir):
    """Clients that send options without reading the replies hold no
    thread and are dropped at the deadline (here 3 s); others are served
    meanwhile."""
    need("nbdinfo")
    d, sock = start(lockstepd, tmp_dir, ",handshake-max-seconds=3")
    with d:
        base = threads_of(d.proc.pid)
        clients = []
        t0 = time.monotonic()
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            s.sendall(struct.pack(">I", 3))
            clients.append(s)
        for s in clients:
            # LIST, LIST, ...: every one gets replies we never read.
            assert fill_once(s, struct.pack(">QII", IHAVEOPT, OPT_LIST,
                                            0) * 256) > 0
        time.sleep(0.5)
        assert threads_in_peer_io(d.proc.pid) == 0
        assert threads_of(d.proc.pid) - base < 32
        assert not any(peer_closed(s) for s in clients)
        r = run(["nbdinfo", "--size", "nbd+unix:///disk?socket=" + sock],
                timeout=20)
        assert r.returncode == 0, r.stderr
        time.sleep(max(0, t0 + 3 + 1.5 - time.monotonic()))
        assert all(peer_closed(s) for s in clients)
        for s in clients:
            s.close()
        assert d.stop() == 0


def test_handshake_max_seconds_zero_waits(lockstepd, tmp_dir):
    """handshake-max-seconds=0: no deadline (QEMU's meaning)."""
    d, sock = start(lockstepd, tmp_dir, ",handshake-max-seconds=0")
    with d:
        c = RawClient(sock)
        time.sleep(2.5)
        c.connect(name="disk")
        assert c.simple(CMD_READ, 0, 4096) == 0
        c.close()
        assert d.stop() == 0


@pytest.mark.serial       # wall-clock limits
def test_short_deadline_drops_silent_client(lockstepd, tmp_dir):
    d, sock = start(lockstepd, tmp_dir, ",handshake-max-seconds=1")
    with d:
        c = RawClient(sock)
        t0 = time.monotonic()
        c.s.settimeout(10)
        assert len(c.recv(18)) == 18          # the greeting comes at once
        assert c.s.recv(1) == b""             # then EOF at the deadline
        assert 0.9 < time.monotonic() - t0 < 3
        # A client that negotiates in time keeps its connection.
        c = RawClient(sock)
        c.connect(name="disk")
        time.sleep(1.5)
        assert c.simple(CMD_READ, 0, 4096) == 0
        c.close()
        assert d.stop() == 0


# ---- Transmission: a client that stops reading ----------------------------


def test_stuck_reader_dropped_after_send_timeout(lockstepd, tmp_dir):
    """Clients that send READs and never read the replies: each holds at
    most two threads, others are served meanwhile, and each is dropped
    SEND_TIMEOUT seconds after its replies stopped moving."""
    need("nbdinfo")
    d, sock = start(lockstepd, tmp_dir)
    with d:
        base = threads_of(d.proc.pid)
        stuck = []
        stalled = []
        for _ in range(10):
            c = RawClient(sock)
            c.connect(name="disk")
            # DF: the reply is one 1 MiB data chunk, more than the socket
            # holds, so the server's send stalls at the first one.
            req = struct.pack(">IHHQQI", 0x25609513, FLAG_DF, CMD_READ, 1,
                              0, MiB)
            assert fill_until_blocked(c.s, req * 64, limit=10)
            stalled.append(time.monotonic())
            stuck.append(c)
        assert threads_of(d.proc.pid) - base <= 2 * len(stuck) + 4
        r = run(["nbdinfo", "--size", "nbd+unix:///disk?socket=" + sock],
                timeout=20)
        assert r.returncode == 0, r.stderr
        # Not before the timeout (the first stalled a little before we saw
        # it), and all soon after it.
        time.sleep(max(0, stalled[0] + SEND_TIMEOUT - 3 - time.monotonic()))
        assert not any(peer_closed(c.s) for c in stuck)
        time.sleep(max(0, stalled[-1] + SEND_TIMEOUT + 4 - time.monotonic()))
        assert all(peer_closed(c.s) for c in stuck)
        for c in stuck:
            c.s.close()
        r = run(["nbdinfo", "--size", "nbd+unix:///disk?socket=" + sock],
                timeout=20)
        assert r.returncode == 0, r.stderr
        assert d.stop() == 0


# ---- Thousands of clients ---------------------------------------------------


@pytest.mark.serial       # wall-clock limits
def test_thousands_of_idle_clients_and_prompt_sigterm(lockstepd, tmp_dir):
    """1200 clients (1000 in transmission, 200 negotiating) cost no thread
    each; SIGTERM with all of them connected ends within about two seconds
    and keeps the writes that were acknowledged."""
    want_fds(4096)
    img = make_image(os.path.join(tmp_dir, "disk.raw"), 64 * MiB)
    d, sock = start(lockstepd, tmp_dir, ",max-connections=0",
                    writable=True, img=img)
    pid = d.proc.pid
    base = threads_of(pid)
    idle = []
    try:
        for _ in range(1000):
            c = RawClient(sock)
            c.connect(name="disk")
            idle.append(c.s)
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock)
            idle.append(s)
        w = RawClient(sock)
        w.connect(name="disk")
        data = os.urandom(MiB)
        # Written without FUA or FLUSH: acknowledged, perhaps only in the
        # page cache; shutdown must flush it.
        assert w.simple(CMD_WRITE, 8 * MiB, MiB, data=data) == 0
        threads = threads_of(pid)
        assert threads - base < 16, (base, threads)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=30)
        took = time.monotonic() - t0
        assert rc == 0
        assert took < 2.5, took
    finally:
        for s in idle:
            s.close()
        d.stop()
    with open(img, "rb") as f:
        f.seek(8 * MiB)
        assert f.read(MiB) == data


# ---- Where the server listens ------------------------------------------------


@pytest.mark.serial       # wall-clock limits
def test_nbd_server_start_options(lockstepd, tmp_dir):
    """handshake-max-seconds on nbd-server-start (QEMU 9.1's argument) and
    --nbd-server; a TCP address needs its host (no silent wildcard)."""
    with Daemon(lockstepd, tmp_dir) as d, d.client() as c:
        sock = os.path.join(tmp_dir, "q.sock")
        e = c.error("nbd-server-start", {
            "addr": {"type": "unix", "data": {"path": sock}},
            "handshake-max-seconds": -1})
        assert "handshake-max-seconds" in e["desc"]
        e = c.error("nbd-server-start", {
            "addr": {"type": "inet", "data": {"port": str(free_port())}}})
        assert e["desc"] == "Parameter 'addr.data.host' is missing"
        c.cmd("nbd-server-start", {
            "addr": {"type": "unix", "data": {"path": sock}},
            "handshake-max-seconds": 1})
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(sock)
        t0 = time.monotonic()
        got = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert len(got) == 18 and time.monotonic() - t0 < 3
        s.close()
        c.cmd("nbd-server-stop")
    r = run([lockstepd, "--nbd-server",
             "addr.type=unix,addr.path=%s,handshake-max-seconds=soon"
             % os.path.join(tmp_dir, "x.sock")], timeout=20)
    assert r.returncode == 1
    assert "handshake-max-seconds" in r.stderr


def test_library_refuses_inet_without_host(tmp_dir):
    """The server itself refuses an inet address without host, whoever
    calls it (here the nbd-serve harness, which passes the address
    through): before, it listened on every interface."""
    from test_nbd_server import NbdServe
    srv = NbdServe(["-b", "null-co,node-name=n0"])
    try:
        port = free_port()
        r = srv.cmd("nbd-server-start", addr={"type": "inet",
                                              "port": str(port)})
        assert r["error"]["desc"] == "Parameter 'addr.host' is missing"
        r = srv.cmd("nbd-server-start", addr={"type": "inet",
                                              "host": "127.0.0.1",
                                              "port": str(port)})
        assert r == {"return": {}}
    finally:
        srv.stop()
