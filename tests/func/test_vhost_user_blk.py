# SPDX-License-Identifier: MIT
"""The vhost-user-blk export (docs/exports.md) with real front-ends.

tests/vhost/vhost-client is our own front-end: it shares memfd memory,
sets up split virtqueues and drives virtio-blk requests.  The same
client runs against qemu-storage-daemon's vhost-user-blk export, so that
the client is known to speak the protocol and not our dialect of it.
The hostile cases make the client misbehave on purpose; the daemon must
stay up, keep serving a second export, and serve the next front-end.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import built_program, run
from qmp_client import Daemon, QMPError, wait_for_socket

MiB = 1 << 20
SIZE = 64 * MiB


@pytest.fixture(scope="session")
def client(build_dir):
    return built_program(build_dir, "tests/vhost/vhost-client")


def vclient(client, sock, *cmds, opts=(), timeout=60):
    """Run vhost-client; returns the CompletedProcess."""
    return run([client] + list(opts) + [sock] + [str(c) for c in cmds],
               timeout=timeout)


def qcow2(tmp_dir, name, size=SIZE):
    path = os.path.join(tmp_dir, name)
    p = run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
    assert p.returncode == 0, p.stderr
    return path


def blockdev_args(path, node="disk"):
    return ["--blockdev", "driver=file,node-name=%s-file,filename=%s"
            % (node, path),
            "--blockdev", "driver=qcow2,node-name=%s,file=%s-file"
            % (node, node)]


def vhost_export(sock, node="disk", id="v0", extra=""):
    return ["--export", "type=vhost-user-blk,id=%s,node-name=%s,"
            "addr.type=unix,addr.path=%s,writable=on%s"
            % (id, node, sock, extra)]


class Server:
    """lockstepd (or QSD) with one vhost-user-blk export of a qcow2."""

    def __init__(self, binary, tmp_dir, extra_export="", args=(),
                 name="d"):
        self.sock = os.path.join(tmp_dir, name + "-vu.sock")
        self.image = qcow2(tmp_dir, name + ".qcow2")
        self.d = Daemon(binary, tmp_dir, blockdev_args(self.image) +
                        vhost_export(self.sock, extra=extra_export) +
                        list(args), name=name + "-qmp")
        wait_for_socket(self.sock, self.d.proc)
        self.c = self.d.client()

    def close(self):
        self.c.close()
        return self.d.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_io_commands(lockstepd, client, tmp_dir):
    with Server(lockstepd, tmp_dir) as s:
        p = vclient(client, s.sock, "info", "write", 0, "64k", 0xab,
                    "read", 0, "64k", 0xab, "getid", "flush",
                    "zero", 0, 4096, "unmap", "read", 0, 4096, 0,
                    "discard", "1M", "1M", "read", 65536 - 4096, 4096, 0xab)
        assert p.returncode == 0, p.stdout + p.stderr
        info = json.loads(p.stdout.splitlines()[0])
        assert info["capacity"] == SIZE // 512
        assert info["blk_size"] == 512
        assert info["num_queues"] == 1
        assert info["read_only"] is False
        assert info["wce"] == 1
        # Also before features are negotiated: QEMU reads it then and
        # shows the guest that copy (a guest shown 0 never flushes).
        assert info["wce_before_features"] == 1
        assert "getid: status 0 id 'v0'" in p.stdout
    # The data is in the image, as qemu-io sees it.
    p = run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 4096 60k",
             "-c", "read -P 0 0 4096", s.image])
    assert p.returncode == 0 and "Pattern verification failed" not in \
        p.stdout, p.stdout


@pytest.mark.parametrize("opts", [("-d", "32"), ("-d", "64", "-i"),
                                  ("-d", "16", "-i", "-I", "-q", "2")])
def test_many_in_flight(lockstepd, client, tmp_dir, opts):
    extra = ",num-queues=2" if "-q" in opts else ""
    with Server(lockstepd, tmp_dir, extra_export=extra) as s:
        p = vclient(client, s.sock, "verify", 3000, 11, opts=opts)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "0 errors" in p.stdout


@pytest.mark.parametrize("opts", [("-E",), ()], ids=["flags", "event-idx"])
def test_calls_batched(lockstepd, client, tmp_dir, opts):
    """Requests the queue's poller runs back to back are signalled with
    one call, not one per request: a call per request woke the driver
    per request (and on a busy host the woken driver preempted the
    daemon), which held a queue at qd16 to a third of its rate.  A disk
    that never sleeps (null-co), so the poller keeps its role through
    the burst; with EVENT_IDX the driver asks for a call at the first
    completion, without it it never sets NO_INTERRUPT."""
    sock = os.path.join(tmp_dir, "null-vu.sock")
    d = Daemon(lockstepd, tmp_dir,
               ["--blockdev", "driver=null-co,node-name=disk,size=%d" % SIZE]
               + vhost_export(sock), name="null-qmp")
    try:
        wait_for_socket(sock, d.proc)
        for _ in range(3):
            p = vclient(client, sock, "burst", 16, opts=("-d", "16") + opts)
            assert p.returncode == 0, p.stdout + p.stderr
            r = json.loads(p.stdout)
            assert r["completed"] == 16 and r["errors"] == 0
            assert r["calls"] == 1, r
    finally:
        d.stop()


def test_same_client_against_qsd(qsd, client, tmp_dir):
    """The reference: our front-end against qemu-storage-daemon 7.2."""
    with Server(qsd, tmp_dir, extra_export=",num-queues=2") as s:
        p = vclient(client, s.sock, "info", "write", 0, "64k", 0x5c,
                    "read", 0, "64k", 0x5c, "flush", "zero", 0, 4096,
                    "read", 0, 4096, 0)
        assert p.returncode == 0, p.stdout + p.stderr
        info = json.loads(p.stdout.splitlines()[0])
        assert info["capacity"] == SIZE // 512
        assert info["num_queues"] == 2
        p = vclient(client, s.sock, "verify", 2000, 5,
                    opts=("-q", "2", "-d", "32", "-i"))
        assert p.returncode == 0 and "0 errors" in p.stdout, p.stdout


def test_read_only_export(lockstepd, client, tmp_dir):
    sock = os.path.join(tmp_dir, "ro.sock")
    image = qcow2(tmp_dir, "ro.qcow2")
    args = blockdev_args(image) + [
        "--export", "type=vhost-user-blk,id=v0,node-name=disk,"
        "addr.type=unix,addr.path=%s" % sock]
    with Daemon(lockstepd, tmp_dir, args):
        wait_for_socket(sock)
        p = vclient(client, sock, "info", "read", 0, 4096, 0)
        assert p.returncode == 0, p.stdout + p.stderr
        assert json.loads(p.stdout.splitlines()[0])["read_only"] is True
        p = vclient(client, sock, "write", 0, 4096, 1)
        assert p.returncode == 1
        assert "status 1" in p.stdout      # VIRTIO_BLK_S_IOERR


def test_logical_block_size(lockstepd, client, tmp_dir):
    with Server(lockstepd, tmp_dir,
                extra_export=",logical-block-size=4096") as s:
        p = vclient(client, s.sock, "info", "write", 4096, 8192, 7,
                    "read", 4096, 8192, 7)
        assert p.returncode == 0, p.stdout + p.stderr
        assert json.loads(p.stdout.splitlines()[0])["blk_size"] == 4096
        # Not a multiple of the logical block size: an I/O error.
        p = vclient(client, s.sock, "write", 512, 512, 7)
        assert p.returncode == 1 and "status 1" in p.stdout, p.stdout


def test_qmp_add_query_del(lockstepd, client, tmp_dir):
    image = qcow2(tmp_dir, "q.qcow2")
    sock = os.path.join(tmp_dir, "q.sock")
    with Daemon(lockstepd, tmp_dir, blockdev_args(image)) as d:
        c = d.client()
        c.cmd("block-export-add", {
            "type": "vhost-user-blk", "id": "v1", "node-name": "disk",
            "writable": True, "num-queues": 2, "logical-block-size": 512,
            "addr": {"type": "unix", "path": sock}})
        assert c.cmd("query-block-exports") == [{
            "type": "vhost-user-blk", "id": "v1", "node-name": "disk",
            "shutting-down": False}]
        # A front-end holds the export: safe deletion is refused, hard
        # deletion disconnects it.
        proc = subprocess.Popen([client, "-d", "4", sock, "write", "0",
                                 "4096", "1", "sleep", "30"],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("write 0 4096: ok")
        e = c.error("block-export-del", {"id": "v1"})
        assert e["desc"] == "export 'v1' still in use"
        c.cmd("block-export-del", {"id": "v1", "mode": "hard"})
        c.wait_event_match("BLOCK_EXPORT_DELETED", id="v1")
        proc.kill()
        proc.wait()
        assert c.cmd("query-block-exports") == []
        assert not os.path.exists(sock)
        # The id is free again; the node can be written by others.
        c.cmd("block-export-add", {
            "type": "vhost-user-blk", "id": "v1", "node-name": "disk",
            "addr": {"type": "unix", "path": sock}})
        c.cmd("block-export-del", {"id": "v1"})
        c.wait_event_match("BLOCK_EXPORT_DELETED", id="v1")


@pytest.mark.parametrize("args,msg", [
    ({}, "Parameter 'addr' is missing"),
    ({"addr": {"type": "inet", "host": "127.0.0.1", "port": "1"}},
     "vhost-user-blk exports listen on 'unix' or 'fd' socket addresses, "
     "not 'inet'"),
    ({"addr": {"type": "unix"}}, "addr: Parameter 'path' is missing"),
    ({"addr": {"type": "unix", "path": "P", "str": "3"}},
     "Parameter 'addr.str' is unexpected"),
    ({"addr": {"type": "fd", "str": "name"}},
     "File descriptor 'name' is not a number (named fds are not supported)"),
    ({"addr": {"type": "fd", "str": "2"}},
     "File descriptor 2 is not a listening socket"),
    ({"addr": {"type": "unix", "path": "P"}, "logical-block-size": 1000},
     "Logical block size must be a power of 2 between 512 and 32768, "
     "not 1000"),
    ({"addr": {"type": "unix", "path": "P"}, "num-queues": 0},
     "num-queues must be between 1 and 16"),
    ({"addr": {"type": "unix", "path": "P"}, "name": "x"},
     "Parameter 'name' is unexpected"),
    ({"addr": {"type": "unix", "path": "P"}, "node-name": "nope"},
     "Cannot find device='' nor node-name='nope'"),
])
def test_add_errors(lockstepd, tmp_dir, args, msg):
    image = qcow2(tmp_dir, "e.qcow2")
    with Daemon(lockstepd, tmp_dir, blockdev_args(image)) as d:
        c = d.client()
        full = {"type": "vhost-user-blk", "id": "v", "node-name": "disk"}
        full.update(args)
        if "addr" in full and full["addr"].get("path") == "P":
            full["addr"]["path"] = os.path.join(tmp_dir, "e.sock")
        e = c.error("block-export-add", full)
        assert e["desc"] == msg
        assert c.cmd("query-block-exports") == []
        # A nbd-only member on nbd is fine, a vhost one is not.
        e = c.error("block-export-add", {
            "type": "nbd", "id": "n", "node-name": "disk", "num-queues": 1})
        assert e["desc"] == "Parameter 'num-queues' is unexpected"


def test_command_line_errors(lockstepd, tmp_dir):
    image = qcow2(tmp_dir, "c.qcow2")
    p = run([lockstepd] + blockdev_args(image) +
            ["--export", "type=vhost-user-blk,id=v,node-name=disk,"
             "addr.type=unix,addr.path=%s/x.sock,num-queues=many" % tmp_dir])
    assert p.returncode == 1
    assert "Parameter 'num-queues' expects an integer" in p.stderr


def test_listen_fd(lockstepd, client, tmp_dir):
    """addr.type=fd: a listening socket the daemon inherits."""
    import socket
    sock = os.path.join(tmp_dir, "fd.sock")
    image = qcow2(tmp_dir, "fd.qcow2")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(sock)
    ls.listen(1)
    fd = ls.fileno()
    argv = [lockstepd] + blockdev_args(image) + [
        "--export", "type=vhost-user-blk,id=v,node-name=disk,writable=on,"
        "addr.type=fd,addr.str=%d" % fd]
    proc = subprocess.Popen(argv, pass_fds=[fd], stderr=subprocess.PIPE,
                            text=True)
    try:
        ls.close()
        p = vclient(client, sock, "write", 0, 4096, 9, "read", 0, 4096, 9)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


RING_CASES = ["desc-outside", "desc-wrap", "desc-loop", "desc-next-range",
              "indirect-loop", "indirect-nested", "indirect-huge",
              "indirect-outside", "header-short", "no-status",
              "readable-after-writable", "head-range", "avail-jump"]
MSG_CASES = ["msg-short", "msg-fd", "msg-unknown", "msg-huge",
             "msg-version", "mem-beyond-file", "mem-fd-count",
             "ring-outside", "queue-index", "queue-size"]


@pytest.fixture
def two_exports(lockstepd, tmp_dir):
    """A daemon with two vhost-user-blk exports: one for the hostile
    front-end, one that must keep working meanwhile."""
    img2 = qcow2(tmp_dir, "other.qcow2")
    sock2 = os.path.join(tmp_dir, "other.sock")
    s = Server(lockstepd, tmp_dir, args=blockdev_args(img2, "other") +
               vhost_export(sock2, node="other", id="v2"))
    wait_for_socket(sock2)
    s.sock2 = sock2
    yield s
    s.close()


def after_hostile(client, s):
    """The daemon is alive, the other export works, and the attacked
    export serves the next (well-behaved) front-end."""
    assert s.d.proc.poll() is None
    p = vclient(client, s.sock2, "write", 0, 4096, 3, "read", 0, 4096, 3)
    assert p.returncode == 0, p.stdout + p.stderr
    p = vclient(client, s.sock, "write", 8192, 4096, 4, "read", 8192,
                4096, 4)
    assert p.returncode == 0, p.stdout + p.stderr
    assert s.c.cmd("query-block-exports")


@pytest.mark.parametrize("case", RING_CASES)
def test_hostile_ring(client, two_exports, case):
    s = two_exports
    opts = ("-i",) if case.startswith("indirect") else ()
    p = vclient(client, s.sock, "hostile", case, opts=opts)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    # The broken request never comes back, the device needs a reset and
    # the connection stays (the VMM decides what to do).
    assert r["completed"] is False, r
    assert r["connected"] is True and r["needs_reset"] is True, r
    after_hostile(client, s)


@pytest.mark.parametrize("case", MSG_CASES)
def test_hostile_messages(client, two_exports, case):
    s = two_exports
    p = vclient(client, s.sock, "hostile", case)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    assert r["connected"] is False, r
    after_hostile(client, s)


def test_front_end_vanishes_mid_request(client, two_exports):
    s = two_exports
    for _ in range(3):
        p = vclient(client, s.sock, "hostile", "vanish", opts=("-d", "64"))
        assert p.returncode == 0, p.stdout + p.stderr
    after_hostile(client, s)


def test_fleecing_under_vhost_io(lockstepd, client, tmp_dir):
    """Insert copy-before-write beneath the exported node while the
    front-end writes: the snapshot keeps the data of the moment."""
    nbd = os.path.join(tmp_dir, "nbd.sock")
    with Server(lockstepd, tmp_dir,
                args=["--nbd-server", "addr.type=unix,addr.path=%s" % nbd]) \
            as s:
        p = vclient(client, s.sock, "write", "32M", "1M", 0xaa)
        assert p.returncode == 0, p.stdout
        # Random writes at depth 16 below 32 MiB while the graph changes
        # under them.
        load = subprocess.Popen([client, "-d", "16", "-i", "-s", "32M",
                                 s.sock, "bench", "randwrite", "4096", "4"],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        temp = os.path.join(tmp_dir, "temp.qcow2")
        qcow2(tmp_dir, "temp.qcow2")
        s.c.cmd("fleecing-start", {"id": "fl", "node": "disk",
                                   "export-name": "snap",
                                   "temp": {"filename": temp,
                                            "format": "qcow2"}})
        out, _ = load.communicate(timeout=60)
        assert load.returncode == 0, out
        assert json.loads(out)["errors"] == 0
        p = vclient(client, s.sock, "write", "32M", "1M", 0xbb,
                    "read", "32M", "1M", 0xbb)
        assert p.returncode == 0, p.stdout
        url = "nbd+unix:///snap?socket=%s" % nbd
        p = run(["qemu-io", "-f", "raw", "-r", "-c", "read -P 0xaa 32M 1M",
                 url])
        assert p.returncode == 0 and "verification failed" not in \
            p.stdout, p.stdout
        s.c.cmd("fleecing-stop", {"id": "fl"})
        p = vclient(client, s.sock, "read", "32M", "1M", 0xbb)
        assert p.returncode == 0, p.stdout
