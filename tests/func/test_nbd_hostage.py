# SPDX-License-Identifier: MIT
"""Nothing may hold the graph hostage (issue 12).

blockdev-add of an nbd node used to connect on the main thread with the
graph drained and no timeout: a server that accepted and never answered
froze the monitor and every export until it hung up, and the daemon's own
export deadlocked it for good.  Now connecting happens off the main
thread with no lock held, every wait on a peer is bounded (connect-timeout,
open-timeout, reconnect-delay, the drain patience), and the monitor, the
other exports and SIGTERM keep working meanwhile.
"""
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import host_tool, run
from qmp_client import Daemon, QMPError
from test_nbd_server import timeout_guard  # noqa: F401

PATIENCE = 5        # NBDCLI_DRAIN_PATIENCE_NS

# Every test here bounds how long something takes: make check runs them
# alone, not beside the tests running in parallel.
pytestmark = pytest.mark.serial


class SilentServer:
    """Accepts connections and never says a word (not even the NBD
    greeting)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent(tmp_dir):
    srv = SilentServer(os.path.join(tmp_dir, "silent.sock"))
    yield srv
    srv.close()


def nbd_node(name, path, **extra):
    opts = {"driver": "nbd", "node-name": name,
            "server": {"type": "unix", "path": path}}
    opts.update(extra)
    return opts


@pytest.fixture
def daemon(lockstepd, tmp_dir):
    """A daemon serving one export "other" (a null-co disk) over its own
    NBD server."""
    nbd = os.path.join(tmp_dir, "nbd.sock")
    d = Daemon(lockstepd, tmp_dir)
    c = d.client()
    c.cmd("blockdev-add", {"driver": "null-co", "node-name": "other",
                           "size": 1 << 20, "read-zeroes": True})
    c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                        "data": {"path": nbd}}})
    c.cmd("block-export-add", {"type": "nbd", "id": "e-other",
                               "node-name": "other", "name": "other"})
    d.nbd = nbd
    d.c = c
    yield d
    c.close()
    d.stop()


def other_export_reads(d):
    """qemu-io reads the daemon's other export; returns seconds taken."""
    qemu_io = host_tool("qemu-io")
    start = time.monotonic()
    r = run([qemu_io, "-r", "-f", "raw", "-c", "read -P 0 0 4k",
             "nbd+unix:///other?socket=" + d.nbd], timeout=20)
    assert r.returncode == 0 and "read 4096/4096" in r.stdout, r.stderr
    return time.monotonic() - start


def send_async(client, name, args):
    """Send a command without waiting; returns a function that waits for
    and returns its response."""
    client.send({"execute": name, "arguments": args, "id": name})
    return client.recv_response


def test_silent_server_does_not_block_monitor_or_exports(daemon, silent):
    """The reproducer of the issue, with connect-timeout 3: meanwhile the
    monitor (another client) answers and the other export serves."""
    slow = daemon.client()
    start = time.monotonic()
    wait = send_async(slow, "blockdev-add",
                      nbd_node("hung", silent.path, **{"connect-timeout": 3}))
    time.sleep(0.3)
    for _ in range(3):
        t = time.monotonic()
        assert "qemu" in daemon.c.cmd("query-version")
        assert time.monotonic() - t < 0.5
        daemon.c.cmd("query-named-block-nodes")
        assert other_export_reads(daemon) < 2
    resp = wait()
    took = time.monotonic() - start
    assert 2.5 < took < 6, took
    assert resp["error"]["class"] == "GenericError"
    desc = resp["error"]["desc"]
    assert desc.startswith("Failed to connect to '%s': timed out"
                           % silent.path), desc
    assert "connect-timeout is 3 s" in desc
    assert "hung" not in [n["node-name"] for n in
                          daemon.c.cmd("query-named-block-nodes")]
    slow.close()


def test_same_client_commands_stay_in_order(daemon, silent):
    """A client's commands answer in order, even when the first waits on
    a peer (as in QEMU)."""
    c = daemon.client()
    c.send({"execute": "blockdev-add", "id": 1,
            "arguments": nbd_node("hung", silent.path,
                                  **{"connect-timeout": 1})})
    c.send({"execute": "query-version", "id": 2})
    first = c.recv_response()
    second = c.recv_response()
    assert first["id"] == 1 and "error" in first
    assert second["id"] == 2 and "return" in second
    c.close()


def test_default_connect_timeout_is_bounded(daemon, silent):
    """Without connect-timeout the attempt still ends (10 s)."""
    start = time.monotonic()
    with pytest.raises(QMPError) as e:
        daemon.c.cmd("blockdev-add", nbd_node("hung", silent.path))
    assert 9 < time.monotonic() - start < 14
    assert "connect-timeout is 10 s" in e.value.desc


def test_open_timeout_retries_until_the_server_comes(daemon, tmp_dir):
    """open-timeout (QEMU's): attempts repeat until the server is up."""
    path = os.path.join(tmp_dir, "late.sock")
    wait = send_async(daemon.c, "blockdev-add",
                      nbd_node("late", path, export="other",
                               **{"open-timeout": 10}))
    time.sleep(1)
    # The server appears: the daemon's own NBD server, on a second
    # socket, is not possible; use qemu-nbd on a raw file.
    img = os.path.join(tmp_dir, "late.raw")
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    qemu_nbd = subprocess.Popen([host_tool("qemu-nbd"), "-k", path, "-x",
                                 "other", "-f", "raw", img],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        resp = wait()
        assert resp.get("return") == {}, resp
        daemon.c.cmd("blockdev-del", {"node-name": "late"})
    finally:
        qemu_nbd.kill()
        qemu_nbd.wait()


def test_open_timeout_expires_with_clear_error(daemon, tmp_dir):
    path = os.path.join(tmp_dir, "nobody.sock")
    start = time.monotonic()
    with pytest.raises(QMPError) as e:
        daemon.c.cmd("blockdev-add", nbd_node("x", path,
                                              **{"open-timeout": 2}))
    assert 1.8 < time.monotonic() - start < 5
    assert e.value.desc.startswith("Failed to connect to '%s'" % path)


def test_bad_timeouts_refused(daemon, silent):
    for key, val in (("connect-timeout", 0), ("connect-timeout", 3601),
                     ("open-timeout", -1), ("reconnect-delay", 4000)):
        with pytest.raises(QMPError) as e:
            daemon.c.cmd("blockdev-add", nbd_node("x", silent.path,
                                                  **{key: val}))
        assert "between" in e.value.desc


def test_own_export_works(daemon, tmp_dir):
    """Connecting to the daemon's own export used to deadlock it for
    good; now the node opens and reads through the loop."""
    daemon.c.cmd("blockdev-add", nbd_node("self", daemon.nbd,
                                          export="other", **{"read-only":
                                                             True}))
    nodes = [n["node-name"] for n in daemon.c.cmd("query-named-block-nodes")]
    assert "self" in nodes
    # Export the nbd node too and read through both hops.
    daemon.c.cmd("block-export-add", {"type": "nbd", "id": "e-self",
                                      "node-name": "self", "name": "self"})
    r = run([host_tool("qemu-io"), "-r", "-f", "raw", "-c",
             "read -P 0 0 64k", "nbd+unix:///self?socket=" + daemon.nbd],
            timeout=20)
    assert r.returncode == 0, r.stderr
    daemon.c.cmd("block-export-del", {"id": "e-self", "mode": "hard"})
    daemon.c.cmd("blockdev-del", {"node-name": "self"})
    assert other_export_reads(daemon) < 2


def test_format_over_own_export_ends(daemon, tmp_dir):
    """A format over the daemon's own export reads its header while the
    graph is drained, so its own server cannot answer: the open must end
    (here: fail after the drain patience), never deadlock."""
    img = os.path.join(tmp_dir, "q.qcow2")
    r = run([host_tool("qemu-img"), "create", "-q", "-f", "qcow2", img,
             "1M"])
    assert r.returncode == 0
    daemon.c.cmd("blockdev-add", {"driver": "file", "node-name": "qfile",
                                  "filename": img})
    daemon.c.cmd("block-export-add", {"type": "nbd", "id": "e-q",
                                      "node-name": "qfile", "name": "q"})
    start = time.monotonic()
    try:
        daemon.c.cmd("blockdev-add", {
            "driver": "qcow2", "node-name": "loopq",
            "read-only": True,
            "file": nbd_node("loopnbd", daemon.nbd, export="q")})
        daemon.c.cmd("blockdev-del", {"node-name": "loopq"})
    except QMPError as e:
        assert "qcow2" in e.desc or "header" in e.desc or "I/O" in \
            e.desc or "Input/output" in e.desc, e.desc
    assert time.monotonic() - start < PATIENCE + 5
    assert "qemu" in daemon.c.cmd("query-version")
    assert other_export_reads(daemon) < 2


def test_sigterm_during_hung_connect(lockstepd, tmp_dir, silent):
    d = Daemon(lockstepd, tmp_dir)
    c = d.client()
    send_async(c, "blockdev-add", nbd_node("hung", silent.path))
    time.sleep(0.5)
    start = time.monotonic()
    d.proc.terminate()
    rc = d.stop(timeout=10)
    assert time.monotonic() - start < 3
    assert rc == 0, d.stderr
    c.close()


@pytest.fixture
def stalling_nbdkit(tmp_dir):
    """nbdkit that answers the handshake, then sits on every read and
    write for a minute."""
    if not host_tool("nbdkit"):
        pytest.skip("no nbdkit")
    path = os.path.join(tmp_dir, "stall.sock")
    p = subprocess.Popen(["nbdkit", "-f", "-U", path, "--filter=delay",
                          "memory", "size=1M", "delay-read=60",
                          "delay-write=60", "delay-extents=60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < end and p.poll() is None
        time.sleep(0.05)
    yield path
    p.kill()
    p.wait()


def test_stalled_requests_bound_the_drain(daemon, stalling_nbdkit):
    """Requests stuck on a server that stopped answering: the monitor
    answers meanwhile; a graph change (which waits for requests) gives
    up on them after the drain patience, they fail with EIO, and
    blockdev-del of the node does not wait for the server."""
    daemon.c.cmd("blockdev-add", nbd_node("stall", stalling_nbdkit,
                                          **{"read-only": True}))
    daemon.c.cmd("block-export-add", {"type": "nbd", "id": "e-stall",
                                      "node-name": "stall",
                                      "name": "stall"})
    reader = subprocess.Popen([host_tool("qemu-io"), "-r", "-f", "raw",
                               "-c", "read 0 4k",
                               "nbd+unix:///stall?socket=" + daemon.nbd],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    t = time.monotonic()
    assert "qemu" in daemon.c.cmd("query-version")
    assert time.monotonic() - t < 0.5
    # A graph change while the read is stuck.
    start = time.monotonic()
    daemon.c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n2"})
    took = time.monotonic() - start
    assert PATIENCE - 1 < took < PATIENCE + 3, took
    out, err = reader.communicate(timeout=20)
    assert "read failed" in out + err, out + err
    assert other_export_reads(daemon) < 2
    daemon.c.cmd("block-export-del", {"id": "e-stall", "mode": "hard"})
    time.sleep(0.5)
    start = time.monotonic()
    daemon.c.cmd("blockdev-del", {"node-name": "stall"})
    assert time.monotonic() - start < 2


def test_reconnect_gives_up_for_a_drain(daemon, tmp_dir):
    """A request waiting for reconnect-delay (server gone) holds a drain
    for at most the drain patience, not reconnect-delay."""
    path = os.path.join(tmp_dir, "gone.sock")
    img = os.path.join(tmp_dir, "gone.raw")
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    srv = subprocess.Popen([host_tool("qemu-nbd"), "-k", path, "-f", "raw",
                            img], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < end
        time.sleep(0.05)
    daemon.c.cmd("blockdev-add", nbd_node("gone", path,
                                          **{"reconnect-delay": 300,
                                             "read-only": True}))
    daemon.c.cmd("block-export-add", {"type": "nbd", "id": "e-gone",
                                      "node-name": "gone", "name": "gone"})
    srv.kill()
    srv.wait()
    reader = subprocess.Popen([host_tool("qemu-io"), "-r", "-f", "raw",
                               "-c", "read 0 4k",
                               "nbd+unix:///gone?socket=" + daemon.nbd],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    start = time.monotonic()
    daemon.c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n3"})
    took = time.monotonic() - start
    assert took < PATIENCE + 3, took
    out, err = reader.communicate(timeout=20)
    assert "read failed" in out + err, out + err
