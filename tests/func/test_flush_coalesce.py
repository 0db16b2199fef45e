# SPDX-License-Identifier: MIT
"""Concurrent flushes from several clients are coalesced, as QEMU does.

Eight NBD clients of one lockstepd export each write and flush in a loop
at the same time; the export's node sits on a blklog node
(block/filter/blklog.c) over a file on a disk-backed directory, and the
record says how many flushes reached the file.  One flush at a time per
node, and a flush that waited for another one is skipped when that one
covered its writes: far fewer device flushes than client flushes (all
200 reached the file before, about 80 now).  That a coalesced flush still makes each
client's writes durable is the power-loss model's check
(test_powerloss.py: concurrent writes with flushes in flight).
"""
import os
import threading

import pytest

from powerloss import FLUSH, Log
from qmp_client import Daemon, wait_for_socket

try:
    import nbd  # python3-libnbd
except ImportError:
    nbd = None

pytestmark = pytest.mark.skipif(nbd is None,
                                reason="python3-libnbd not installed")

CLIENTS = 8
ROUNDS = 25


def test_concurrent_flushes_coalesced(lockstepd, disk_dir, tmp_path):
    img = os.path.join(disk_dir, "d.raw")
    log = os.path.join(disk_dir, "d.log")
    with open(img, "wb") as f:
        f.truncate(CLIENTS * ROUNDS * 4096)
    sock = str(tmp_path / "nbd.sock")
    d = Daemon(lockstepd, str(tmp_path), [
        "--blockdev", "driver=file,node-name=f,filename=%s" % img,
        "--blockdev", "driver=blklog,node-name=l,file=f,log=%s,disk=d" % log,
        "--blockdev", "driver=raw,node-name=disk,file=l",
        "--nbd-server", "addr.type=unix,addr.path=%s" % sock,
        "--export", "type=nbd,id=e,node-name=disk,name=disk,writable=on"])
    errors = []
    start = threading.Barrier(CLIENTS, timeout=60)

    def client(i, h):
        try:
            start.wait()
            for r in range(ROUNDS):
                h.pwrite(bytes([i + 1]) * 4096, (r * CLIENTS + i) * 4096)
                h.flush()
            h.shutdown()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append("client %d: %r" % (i, e))
            start.abort()       # nobody waits for a client that failed

    try:
        # The monitor comes up first; the NBD server may be a moment later.
        wait_for_socket(sock, d.proc, timeout=30)
        handles = []
        for i in range(CLIENTS):
            h = nbd.NBD()
            h.set_export_name("disk")
            h.connect_unix(sock)
            handles.append(h)
        threads = [threading.Thread(target=client, args=(i, h))
                   for i, h in enumerate(handles)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    finally:
        assert d.stop() == 0, d.stderr
    assert not errors, errors

    records = Log(log).records
    flushes = [op for kind, op in records if kind == FLUSH]
    client_flushes = CLIENTS * ROUNDS
    print("file flushes: %d of %d" % (len(flushes), client_flushes))
    assert len(flushes) <= client_flushes * 3 // 4, len(flushes)
    assert all(op.ret == 0 for op in flushes)

