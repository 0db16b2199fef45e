# SPDX-License-Identifier: MIT
"""The NBD server inside lockstepd, driven over QMP, side by side with
qemu-storage-daemon: the same sequence of nbd-server-start,
block-export-add, block-export-del (safe refused while a client is
attached, hard disconnecting it), nbd-server-stop must give the same
answers, the same BLOCK_EXPORT_DELETED events and the same export flags as
seen by nbdinfo.

Every test runs under a SIGALRM guard; the daemons are stopped (and checked
for sanitizer reports) by qmp_client.Daemon.
"""
import json
import os
import shutil
import time

import pytest

from conftest import make_image, run
from qmp_client import Daemon
from test_nbd_server import (CMD_FLUSH, RawClient, need,  # noqa: F401
                             timeout_guard)

MiB = 1024 * 1024


def nbdinfo_json(uri):
    r = run(["nbdinfo", "--json", uri])
    assert r.returncode == 0, r.stderr
    e = json.loads(r.stdout)["exports"][0]
    return {k: v for k, v in e.items() if k.startswith(("can_", "is_",
                                                         "block_size",
                                                         "export-size"))}


def lifecycle(binary, tmp_dir, name):
    """Run the sequence on one daemon; returns what a client observes."""
    img = make_image(os.path.join(tmp_dir, name + ".raw"), 8 * MiB)
    nbd = os.path.join(tmp_dir, name + "-nbd.sock")
    seen = []
    with Daemon(binary, tmp_dir, name=name) as d:
        with d.client() as c:
            c.cmd("blockdev-add", {"driver": "file", "node-name": "f0",
                                   "filename": img})
            seen.append(c.error("block-export-add",
                                {"type": "nbd", "id": "e0",
                                 "node-name": "f0"})["desc"])
            c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                                "data": {"path": nbd}}})
            c.cmd("block-export-add", {"type": "nbd", "id": "e0",
                                       "node-name": "f0", "writable": True,
                                       "name": "rw"})
            c.cmd("block-export-add", {"type": "nbd", "id": "e1",
                                       "node-name": "f0", "name": "ro"})
            for args in ({"type": "nbd", "id": "e0", "node-name": "f0"},
                         {"type": "nbd", "id": "e2", "node-name": "f0",
                          "name": "ro"},
                         {"type": "nbd", "id": "e2", "node-name": "nope"}):
                seen.append(c.error("block-export-add", args)["desc"])
            seen.append(nbdinfo_json("nbd+unix:///rw?socket=" + nbd))
            seen.append(nbdinfo_json("nbd+unix:///ro?socket=" + nbd))

            client = RawClient(nbd)
            client.connect(name="rw")
            seen.append(c.error("block-export-del", {"id": "e0"})["desc"])
            assert client.simple(CMD_FLUSH) == 0
            c.cmd("block-export-del", {"id": "e0", "mode": "hard"})
            seen.append(c.wait_event("BLOCK_EXPORT_DELETED")["data"])
            with pytest.raises((EOFError, ConnectionResetError)):
                client.recv(1)
            seen.append(c.error("block-export-del", {"id": "e0"})["desc"])
            seen.append(sorted(e["id"] for e in
                               c.cmd("query-block-exports")))
            # Stopping the server deletes the remaining exports.
            c.cmd("nbd-server-stop")
            seen.append(c.wait_event("BLOCK_EXPORT_DELETED")["data"])
            seen.append(c.cmd("query-block-exports"))
            seen.append(c.error("nbd-server-stop")["desc"])
        assert d.stop() == 0
    return seen


def test_export_lifecycle_like_qsd(lockstepd, qsd, tmp_dir):
    need("nbdinfo")
    ours = lifecycle(lockstepd, tmp_dir, "ours")
    theirs = lifecycle(qsd, tmp_dir, "qsd")
    assert ours == theirs


def test_daemon_export_serves_real_clients(lockstepd, tmp_dir):
    """qemu-io writes through lockstepd's export, nbdcopy reads back."""
    need("qemu-io")
    need("nbdcopy")
    img = make_image(os.path.join(tmp_dir, "d.raw"), 16 * MiB)
    nbd = os.path.join(tmp_dir, "nbd.sock")
    with Daemon(lockstepd, tmp_dir, [
            "--blockdev", "driver=file,node-name=f0,filename=" + img,
            "--nbd-server", "addr.type=unix,addr.path=" + nbd,
            "--export", "type=nbd,id=e0,node-name=f0,writable=on"]) as d:
        uri = "nbd+unix:///f0?socket=" + nbd
        r = run(["qemu-io", "-f", "raw", "-c", "write -P 0x61 0 5M",
                 "-c", "write -P 0x62 9M 1M", uri])
        assert r.returncode == 0, r.stderr
        out = os.path.join(tmp_dir, "out.raw")
        r = run(["nbdcopy", uri, out])
        assert r.returncode == 0, r.stderr
        with open(out, "rb") as f:
            data = f.read()
        assert data[:5 * MiB] == b"\x61" * (5 * MiB)
        assert data[9 * MiB:10 * MiB] == b"\x62" * MiB
        assert data[5 * MiB:9 * MiB] == bytes(4 * MiB)
        with d.client() as c:
            assert [e["id"] for e in c.cmd("query-block-exports")] == ["e0"]


@pytest.mark.serial       # wall-clock limits
def test_blocking_requests_overlap_on_one_connection(lockstepd, qsd,
                                                     tmp_dir):
    """Eight reads sent at once on one connection to a null-co node with
    latency-ns=1 s: each request sleeps, so the connection's reader role
    moves on and they all sleep together, as in QEMU (coroutines)."""
    nbd = pytest.importorskip("nbd")
    for binary in (lockstepd, qsd):
        sock = os.path.join(tmp_dir, "lat-nbd.sock")
        with Daemon(binary, tmp_dir, name="lat") as d:
            with d.client() as c:
                c.cmd("blockdev-add", {"driver": "null-co",
                                       "node-name": "n0", "size": MiB,
                                       "latency-ns": 1000 * 1000 * 1000})
                c.cmd("nbd-server-start", {"addr": {"type": "unix",
                                                    "data": {"path": sock}}})
                c.cmd("block-export-add", {"type": "nbd", "id": "e0",
                                           "node-name": "n0"})
                h = nbd.NBD()
                h.connect_uri("nbd+unix:///n0?socket=" + sock)
                t0 = time.monotonic()
                for i in range(8):
                    h.aio_pread(nbd.Buffer(4096), i * 4096)
                while h.aio_in_flight() > 0:
                    h.poll(-1)
                elapsed = time.monotonic() - t0
                h.shutdown()
        # Together: 1 s; two at a time would take 4 s, serial 8 s.  The
        # 2 s of slack are for a loaded machine's scheduling delays (with
        # 200 ms sleeps the slack was 0.7 s).
        assert elapsed < 3, (binary, elapsed)
